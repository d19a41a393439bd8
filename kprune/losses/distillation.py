"""Distillation loss on packed `[label, teacher logits]` targets."""

import keras
import numpy as np

from kprune.ops.distillation import distillation_loss


def soft_targets(teacher, x, y, batch_size=1024):
    """Packs labels and a teacher's logits into `Distillation`'s targets.

    Row `i` is `[y[i], teacher(x[i])...]`: the label, then the teacher's
    logits, computed once in inference mode. Use with in-memory `x` and no
    data augmentation (the teacher saw each image as it is).

    Args:
        teacher: a Keras model that outputs logits, shape `(batch, classes)`.
        x: the training inputs (what `teacher.predict` accepts).
        y: integer class labels, shape `(n,)` or `(n, 1)`.
        batch_size: the batch size of `teacher.predict`.

    Returns:
        A float32 NumPy array of shape `(n, 1 + classes)`.

    Example:

    >>> import numpy as np, keras
    >>> teacher = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> soft_targets(teacher, np.zeros((5, 4)), np.arange(5) % 3).shape
    (5, 4)

    Reference:
        Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural
        Network", arXiv 1503.02531 (2015).
    """
    labels = np.asarray(y).reshape(-1)
    logits = keras.ops.convert_to_numpy(
        teacher.predict(x, batch_size=batch_size, verbose=0)
    )
    if logits.ndim != 2 or len(logits) != len(labels):
        raise ValueError(
            "`teacher` must output logits of shape (n, classes) for the n "
            f"labels of `y`. Received: teacher output shape={logits.shape}, "
            f"y shape={np.shape(y)}"
        )
    return np.concatenate([labels[:, None], logits], axis=1).astype("float32")


@keras.saving.register_keras_serializable(package="kprune")
class Distillation(keras.losses.Loss):
    """Knowledge distillation loss: hard labels plus a teacher's soft targets.

    `y_true` holds `[label, teacher logits...]` per example
    (`kprune.losses.soft_targets`); `y_pred` are the student's logits. With
    `T = temperature`:

    `loss = alpha * CE(label, softmax(y_pred))
            + (1 - alpha) * T**2 * KL(softmax(t / T) || softmax(y_pred / T))`.

    A plain, stateless Keras loss, so kprune's callbacks need nothing
    special for it: the group-sparse student learns from a dense teacher
    under `ProximalStep`, then `slim` removes its dead units as usual
    (tested on TensorFlow and JAX). Soft targets keep
    more units alive than hard labels, so a stronger sparsity `lambda` is
    usually needed for the same width.

    Args:
        temperature: `T > 0`; the softening of both distributions.
        alpha: weight of the hard-label cross-entropy, in `[0, 1]`.
        reduction, name, dtype: as for any `keras.losses.Loss`.

    Example:

    >>> import numpy as np, keras
    >>> x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    >>> y = (x[:, 0] > 0).astype("int64")
    >>> teacher = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
    >>> student = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
    >>> student.compile("sgd", loss=Distillation(temperature=2.0, alpha=0.5))
    >>> history = student.fit(x, soft_targets(teacher, x, y), verbose=0)

    Reference:
        Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural
        Network", arXiv 1503.02531 (2015).
    """

    def __init__(
        self,
        temperature=4.0,
        alpha=0.3,
        reduction="sum_over_batch_size",
        name="distillation",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        temperature = float(temperature)
        if not temperature > 0.0:
            raise ValueError(
                f"`temperature` must be > 0. Received: temperature={temperature}"
            )
        alpha = float(alpha)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"`alpha` must be in [0, 1]. Received: alpha={alpha}")
        self.temperature = temperature
        self.alpha = alpha

    def call(self, y_true, y_pred):
        classes, packed = y_pred.shape[-1], y_true.shape[-1]
        if classes is not None and packed is not None and packed != classes + 1:
            raise ValueError(
                "`y_true` must be [label, teacher logits] per example, one "
                f"column more than the {classes} logits of `y_pred` (see "
                f"kprune.losses.soft_targets). Received: y_true shape="
                f"{tuple(y_true.shape)}"
            )
        y_true = keras.ops.cast(y_true, y_pred.dtype)
        return distillation_loss(
            y_true[:, 0], y_true[:, 1:], y_pred, self.temperature, self.alpha
        )

    def get_config(self):
        config = super().get_config()
        config.update({"temperature": self.temperature, "alpha": self.alpha})
        return config
