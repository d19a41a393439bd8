"""`Distiller`: a pruned student learns from its frozen original during `fit`."""

import keras
from keras import ops

from kprune._backend import scale_loss_for_distribution
from kprune.ops.distillation import soft_target_loss


def _split(outputs):
    """`(logits, [features...])` from a model's outputs."""
    if isinstance(outputs, dict):
        if "logits" not in outputs:
            raise ValueError(
                "A model with dict outputs must name its logits 'logits'. "
                f"Received: keys={sorted(outputs)}"
            )
        rest = [outputs[k] for k in sorted(outputs) if k != "logits"]
        return outputs["logits"], rest
    if isinstance(outputs, (list, tuple)):
        return outputs[0], list(outputs[1:])
    return outputs, []


def _masked_mean(values, weights):
    if weights is None:
        return ops.mean(values)
    weights = ops.cast(weights, values.dtype)
    while len(weights.shape) > len(values.shape):
        weights = ops.squeeze(weights, axis=-1)
    weights = ops.broadcast_to(weights, ops.shape(values))
    return ops.sum(values * weights) / ops.maximum(ops.sum(weights), 1e-9)


def feature_loss(teacher_features, features):
    """Relative squared error of student features against the teacher's.

    `||s - t||² / ||t||²` per example, mean over examples: 0 when the
    student reproduces the teacher's hidden states, 1 when it outputs
    zeros; independent of their scale.

    Args:
        teacher_features: the teacher's features, shape `(batch, ...)`.
        features: the student's, same shape.

    Returns:
        A scalar.

    Example:

    >>> import numpy as np
    >>> t = np.ones((2, 3), "float32")
    >>> float(feature_loss(t, np.zeros((2, 3), "float32")))
    1.0
    """
    t = ops.cast(teacher_features, "float32")
    s = ops.cast(features, "float32")
    batch = ops.shape(t)[0]
    t = ops.reshape(t, (batch, -1))
    s = ops.reshape(s, (batch, -1))
    error = ops.sum(ops.square(s - t), axis=-1)
    scale = ops.maximum(ops.sum(ops.square(t), axis=-1), 1e-12)
    return ops.mean(error / scale)


@keras.saving.register_keras_serializable(package="kprune")
class Distiller(keras.Model):
    """A student model trained on its task and on a frozen teacher's outputs.

    `Distiller(student, teacher)` is a `keras.Model` whose forward pass is
    the student's. Its `compute_loss` runs the teacher on the same inputs
    (inference mode, no gradient) and combines, with `T = temperature`,

        loss = alpha * task_loss(y, student(x))
               + (1 - alpha) * T² KL(softmax(t / T) || softmax(s / T))
               + feature_weight * Σ_k ||s_k - t_k||² / ||t_k||²,

    the task loss being the one passed to `compile` (needed only when
    `alpha > 0`). The KL term is computed on the last axis, so it is
    per example for a classifier and per token for a causal language
    model, averaged with `sample_weight` (the padding mask) when given.
    When the models return several outputs (a list, or a dict with a
    `"logits"` entry), the first (or `"logits"`) are the logits and the
    others hidden states, matched in order.

    Overriding `compute_loss`, not `train_step`, keeps `fit` itself: any
    backend, `tf.data` pipelines, augmentation layers, callbacks,
    `steps_per_execution`, `tf.distribute` strategies (each term is scaled
    by `1 / replicas` as Keras scales its own losses, so several replicas
    train as one device does). The teacher is never trained and never changed:
    only the student's weights are trainable variables of the Distiller
    (the teacher's `trainable` flag is left as it is). After `fit`, use
    `distiller.student`.

    Args:
        student: the model to train (e.g. a pruned copy of the teacher).
        teacher: the reference model; same inputs, logits of the same shape.
        temperature: `T > 0`, the softening of both distributions.
        alpha: weight of the compiled task loss, in `[0, 1]`; 0 (default)
            distils only (Minitron's logit-only distillation).
        feature_weight: weight of the hidden-state term (multi-output
            models), `>= 0`.
        **kwargs: passed to `keras.Model` (e.g. `name`).

    Example:

    >>> import numpy as np, keras, kprune
    >>> x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    >>> y = (x[:, 0] > 0).astype("int32")
    >>> teacher = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
    >>> student = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
    >>> distiller = kprune.Distiller(student, teacher, temperature=2.0, alpha=0.5)
    >>> distiller.compile(
    ...     "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    >>> history = distiller.fit(x, y, epochs=1, verbose=0)
    >>> sorted(history.history)
    ['loss']

    Reference:
        Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural
        Network", arXiv 1503.02531 (2015); Muralidharan et al., "Compact
        Language Models via Pruning and Knowledge Distillation", arXiv
        2407.14679 (2024).
    """

    def __init__(
        self,
        student,
        teacher,
        temperature=1.0,
        alpha=0.0,
        feature_weight=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, model in (("student", student), ("teacher", teacher)):
            if not isinstance(model, keras.layers.Layer):
                raise ValueError(
                    f"`{name}` must be a Keras model. Received: {name}={model!r}"
                )
        if student is teacher:
            raise ValueError(
                "`student` and `teacher` must be different models (the teacher "
                "stays frozen while the student trains). Received: the same "
                "object twice"
            )
        temperature = float(temperature)
        if not temperature > 0.0:
            raise ValueError(
                f"`temperature` must be > 0. Received: temperature={temperature}"
            )
        alpha = float(alpha)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"`alpha` must be in [0, 1]. Received: alpha={alpha}")
        feature_weight = float(feature_weight)
        if feature_weight < 0.0:
            raise ValueError(
                f"`feature_weight` must be >= 0. Received: {feature_weight}"
            )
        self.student = student
        self.teacher = teacher
        self.temperature = temperature
        self.alpha = alpha
        self.feature_weight = feature_weight
        if getattr(student, "built", False):
            self.built = True

    # Only the student trains: the teacher's weights are state, not parameters.
    @property
    def trainable_variables(self):
        if not self.trainable:
            return []
        return list(self.student.trainable_variables)

    @property
    def trainable_weights(self):
        if not self.trainable:
            return []
        return list(self.student.trainable_weights)

    @property
    def non_trainable_variables(self):
        trainable = {id(v) for v in self.trainable_variables}
        return [v for v in self.variables if id(v) not in trainable]

    @property
    def non_trainable_weights(self):
        trainable = {id(v) for v in self.trainable_weights}
        return [v for v in self.weights if id(v) not in trainable]

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        if y_pred is None:
            y_pred = self(x, training=training)
        logits, features = _split(y_pred)
        teacher_logits, teacher_features = _split(self.teacher(x, training=False))
        teacher_logits = ops.stop_gradient(teacher_logits)
        if tuple(teacher_logits.shape[1:]) != tuple(logits.shape[1:]):
            raise ValueError(
                "The teacher's and the student's logits must have the same "
                f"shape. Received: teacher {tuple(teacher_logits.shape)}, "
                f"student {tuple(logits.shape)}"
            )
        soft = soft_target_loss(teacher_logits, logits, self.temperature)
        # Each of these terms is this replica's batch mean; Keras' compiled
        # losses and regularization losses are scaled by 1 / replicas under
        # `tf.distribute` (the gradients are summed over replicas): so are
        # these (a no-op with one replica and on JAX and PyTorch).
        total = (1.0 - self.alpha) * scale_loss_for_distribution(
            _masked_mean(soft, sample_weight)
        )
        if self.alpha > 0.0:
            if y is None or self._compile_loss is None:
                raise ValueError(
                    "`alpha` > 0 weighs the task loss: compile the Distiller "
                    "with a `loss` and pass targets `y` to fit. Received: "
                    f"y={'None' if y is None else 'given'}, alpha={self.alpha}"
                )
            task = self._compile_loss(y, logits, sample_weight)
            total = total + self.alpha * ops.cast(task, total.dtype)
        if self.feature_weight > 0.0:
            if len(features) != len(teacher_features):
                raise ValueError(
                    "Hidden-state distillation matches the student's extra "
                    "outputs to the teacher's, in order. Received: "
                    f"{len(features)} and {len(teacher_features)} extra outputs"
                )
            for s, t in zip(features, teacher_features):
                total = total + self.feature_weight * scale_loss_for_distribution(
                    feature_loss(ops.stop_gradient(t), s)
                )
        for loss in self.losses:
            total = total + ops.cast(self._aggregate_additional_loss(loss), "float32")
        return total

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        logits, _ = _split(y_pred)
        return super().compute_metrics(x, y, logits, sample_weight)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "student": keras.saving.serialize_keras_object(self.student),
                "teacher": keras.saving.serialize_keras_object(self.teacher),
                "temperature": self.temperature,
                "alpha": self.alpha,
                "feature_weight": self.feature_weight,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["student"] = keras.saving.deserialize_keras_object(config["student"])
        config["teacher"] = keras.saving.deserialize_keras_object(config["teacher"])
        return cls(**config)
