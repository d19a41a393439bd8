"""`SizeTarget`: raise the group-sparsity strength until the slimmed model
meets a MACs / parameter target, then hold it."""

import keras
import numpy as np

from kprune._backend import bakes_variables, retrace, sync_weights
from kprune.regularizers.targets import group_regularizers

_ATTRS = (
    "kernel_regularizer",
    "depthwise_regularizer",
    "pointwise_regularizer",
    "kernel_constraint",
    "depthwise_constraint",
    "pointwise_constraint",
)


def has_strength(obj):
    """Whether `obj` has a `strength` attribute that is a `keras.Variable`."""
    return isinstance(getattr(obj, "strength", None), keras.Variable)


def strength_objects(model):
    """Every regularizer / constraint of `model` with a `strength` Variable.

    Args:
        model: a `keras.Model`.

    Returns:
        A list of objects, each once.

    Example:

    >>> import keras, kprune
    >>> reg = kprune.regularizers.GroupLasso(1e-3)
    >>> model = keras.Sequential([keras.Input((4,)),
    ...     keras.layers.Dense(3, kernel_regularizer=reg)])
    >>> strength_objects(model) == [reg]
    True
    """
    found, seen = [], set()

    def add(obj):
        if has_strength(obj) and id(obj) not in seen:
            seen.add(id(obj))
            found.append(obj)

    for _, regularizer in group_regularizers(model):
        add(regularizer)
    for layer in model._flatten_layers(include_self=False):
        for attr in _ATTRS:
            add(getattr(layer, attr, None))
    return found


@keras.saving.register_keras_serializable(package="kprune")
class SizeTarget(keras.callbacks.Callback):
    """Raise the group-sparsity strength until the model is small enough.

    Every `check_every` epochs the callback slims a copy of the model
    (`kprune.surgery.slim`: units whose weights are all zero leave) and
    counts its MACs or parameters with `kprune.report.summary`. While
    `size(slim(model)) / size(model at train start) > target`, it multiplies
    the strength of every controlled object by `growth`:

        strength <- strength * growth        (strength 0: <- `initial`)

    Once the ratio reaches the target the strength is held (never raised
    again), so training then settles the surviving units at that size: a
    user chooses a size, not a strength. The controlled objects are any
    objects with a `strength` attribute that is a `keras.Variable`: kprune's
    `GroupLasso` / `SparseGroupLasso` regularizers (a `ProximalStep()`
    without its own `strength=` reads theirs), group-sparsity constraints,
    or objects you pass. Units must become *exactly* zero for `slim` to
    remove them: use proximal mode (`ProximalStep`) or a soft-thresholding
    constraint, not a penalty alone.

    Logs `size_ratio` (the slimmed model's ratio), `reg_strength` and
    `size_target_reached` (0/1) into `logs`.

    Args:
        macs: target fraction of the MACs, in (0, 1].
        params: target fraction of the parameters, in (0, 1].
        growth: factor applied to the strength per check while above the
            target (> 1).
        initial: strength used when the current one is 0.
        check_every: epochs between checks.
        objects: optional list of objects with a `strength` Variable (default:
            every regularizer / constraint of the model that has one).
        input_shape: passed to `kprune.report.summary` (models built on
            unknown dimensions).

    Example:

    >>> import keras, numpy as np, kprune, kprune.sparsity
    >>> model = keras.Sequential([keras.Input((8,)),
    ...     keras.layers.Dense(32, activation="relu"), keras.layers.Dense(2)])
    >>> model = kprune.sparsity.apply_group_sparsity(model, strength=1e-3)
    >>> model.compile(keras.optimizers.SGD(0.1), "mse")
    >>> target = kprune.callbacks.SizeTarget(macs=0.5, growth=4.0)
    >>> history = model.fit(np.ones((16, 8)), np.ones((16, 2)), epochs=8,
    ...     verbose=0, callbacks=[kprune.callbacks.ProximalStep(), target])
    >>> history.history["size_target_reached"][-1]
    1
    """

    def __init__(
        self,
        macs=None,
        params=None,
        growth=1.5,
        initial=1e-5,
        check_every=1,
        objects=None,
        input_shape=None,
    ):
        super().__init__()
        given = [(k, v) for k, v in (("macs", macs), ("params", params)) if v]
        if len(given) != 1:
            raise ValueError(
                "SizeTarget needs exactly one of macs= or params= (a fraction "
                f"in (0, 1]). Received: macs={macs!r}, params={params!r}"
            )
        self.metric, self.target = given[0][0], float(given[0][1])
        if not 0.0 < self.target <= 1.0:
            raise ValueError(
                f"The target is a fraction in (0, 1]. Received: "
                f"{self.metric}={self.target!r}"
            )
        if not float(growth) > 1.0:
            raise ValueError(f"`growth` must be > 1. Received: growth={growth!r}")
        if not float(initial) > 0.0:
            raise ValueError(f"`initial` must be > 0. Received: initial={initial!r}")
        if int(check_every) < 1:
            raise ValueError(
                f"`check_every` must be >= 1. Received: check_every={check_every!r}"
            )
        if objects is not None:
            bad = [o for o in objects if not has_strength(o)]
            if bad:
                raise ValueError(
                    "Every object in `objects` needs a `strength` attribute that "
                    f"is a keras.Variable. Received: {bad[0]!r}"
                )
        self.growth = float(growth)
        self.initial = float(initial)
        self.check_every = int(check_every)
        self.objects = objects
        self.input_shape = input_shape
        self.reached = False
        self._controlled = None
        self._base = None
        self._ratio = None

    def _size(self, model):
        from kprune.report.summary import summary

        return float(summary(model, input_shape=self.input_shape)[self.metric])

    def on_train_begin(self, logs=None):
        controlled = self.objects or strength_objects(self.model)
        if not controlled:
            raise ValueError(
                f"SizeTarget found nothing with a `strength` keras.Variable in "
                f"model '{self.model.name}': use kprune.sparsity."
                "apply_group_sparsity, kprune.regularizers.GroupLasso or pass "
                "objects=[...]. Received: objects=None"
            )
        self._controlled = controlled
        if self._base is None:
            self._base = self._size(self.model)

    def strength(self):
        """The (first) controlled strength, as a float (None before `fit`)."""
        if not self._controlled:
            return None
        return float(keras.ops.convert_to_numpy(self._controlled[0].strength))

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.check_every == 0:
            from kprune.surgery.rebuild import slim

            sync_weights(self.model)
            self._ratio = self._size(slim(self.model)) / self._base
            if self._ratio <= self.target:
                self.reached = True
            elif not self.reached:
                for obj in self._controlled:
                    value = float(keras.ops.convert_to_numpy(obj.strength))
                    value = value * self.growth if value > 0 else self.initial
                    obj.strength.assign(np.float32(value))
                if bakes_variables():
                    retrace(self.model)
        if logs is not None:
            if self._ratio is not None:
                logs["size_ratio"] = self._ratio
            logs["reg_strength"] = self.strength()
            logs["size_target_reached"] = int(self.reached)

    def get_config(self):
        return {
            "macs": self.target if self.metric == "macs" else None,
            "params": self.target if self.metric == "params" else None,
            "growth": self.growth,
            "initial": self.initial,
            "check_every": self.check_every,
            "input_shape": self.input_shape,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
