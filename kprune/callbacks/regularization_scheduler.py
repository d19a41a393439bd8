"""`RegularizationScheduler`: change regularization strength during `fit`."""

import warnings

import keras
from keras import ops

from kprune._backend import bakes_variables, retrace
from kprune.regularizers.targets import find_layer, group_regularizers

_FREQS = ("epoch", "batch")
_MAX_RETRACES = 10  # JAX compilations per epoch before a warning


@keras.saving.register_keras_serializable(package="kprune")
class RegularizationScheduler(keras.callbacks.Callback):
    """Sets the strength of the model's regularizers and constraints from a schedule.

    `strength(e) = schedule(e)`, assigned to the `strength` variable of every
    regularizer and constraint in the model that has one (kprune's
    `GroupLasso`, `SparseGroupLasso`, `GroupSoftThreshold`,
    `SparseGroupSoftThreshold`, and any regularizer or constraint whose
    `strength` attribute is a `keras.Variable`: see
    `kprune.regularizers.targets.strength_holders`). A fixed per-layer
    `scale` is kept, so layer `l` uses `lambda_l = schedule(e) * scale_l`.
    Penalty-mode regularizers (the loss changes), proximal-mode ones (the
    next `ProximalStep` threshold changes) and the constraints (the
    threshold of every following optimizer step changes) follow the
    schedule.

    With `update_freq="epoch"` (default) the schedule is called with the
    0-based epoch index at the start of each epoch; with `"batch"`, with the
    optimizer's `iterations` before each step (on JAX: its value at the
    start of the epoch plus the batch index, which needs no device read).

    Cost per backend: TensorFlow and PyTorch read the strength variable at
    run time, so an update costs one `assign` and never retraces. JAX's
    compiled train step bakes the strength in when it traces, so on JAX the
    callback recompiles the train step whenever the value *changes* (and
    once per `fit`), never when it stays the same. With `"epoch"` that is at
    most one compilation per epoch. With `"batch"` and a schedule that
    changes at every step it is one compilation per step, which makes
    training far slower: on JAX prefer `"epoch"` or a staircase schedule
    (e.g. `keras.optimizers.schedules.ExponentialDecay(...,
    staircase=True)` or `PiecewiseConstantDecay`). A warning is issued
    when more than 10 compilations happen in one epoch. `schedule` may be any
    `keras.optimizers.schedules.LearningRateSchedule` or a callable
    `f(index) -> float`. The value is logged as `reg_strength`. The callback
    keeps no state of its own, so it resumes correctly under
    `keras.callbacks.BackupAndRestore`.

    Args:
        schedule: a `LearningRateSchedule` or a callable `f(index) -> float`.
            To save the callback's config, use a schedule object or a
            function registered with `keras.saving.register_keras_serializable`.
        layers: optional list of layer names; only their regularizers are
            scheduled. `None` schedules every one in the model.
        update_freq: `"epoch"` or `"batch"`.

    Example:

    >>> import keras, kprune
    >>> reg = kprune.regularizers.GroupLasso(0.0)
    >>> model = keras.Sequential([keras.Input((4,)),
    ...     keras.layers.Dense(8, kernel_regularizer=reg), keras.layers.Dense(1)])
    >>> model.compile("sgd", "mse")
    >>> warmup = keras.optimizers.schedules.PolynomialDecay(
    ...     0.0, decay_steps=2, end_learning_rate=1e-3)  # 0 -> 1e-3 in 2 epochs
    >>> history = model.fit(keras.ops.ones((8, 4)), keras.ops.ones((8, 1)),
    ...     epochs=3, verbose=0,
    ...     callbacks=[kprune.callbacks.RegularizationScheduler(warmup)])
    >>> [round(v, 6) for v in history.history["reg_strength"]]
    [0.0, 0.0005, 0.001]
    """

    def __init__(self, schedule, layers=None, update_freq="epoch"):
        super().__init__()
        if not callable(schedule):
            raise ValueError(
                "`schedule` must be a keras.optimizers.schedules schedule or a "
                f"callable f(index) -> float. Received: schedule={schedule!r}"
            )
        if update_freq not in _FREQS:
            raise ValueError(
                f"`update_freq` must be one of {_FREQS}. "
                f"Received: update_freq={update_freq!r}"
            )
        if layers is not None:
            if isinstance(layers, str) or not isinstance(layers, (list, tuple)):
                raise ValueError(
                    "`layers` must be None or a list of layer names. "
                    f"Received: layers={layers!r}"
                )
            layers = [str(name) for name in layers]
        self.schedule = schedule
        self.layers = layers
        self.update_freq = update_freq
        self._regularizers = None
        self._value = None
        self._epoch_base = 0
        self._retraces = 0
        self._warned = False

    def _resolve(self):
        found = group_regularizers(self.model)
        if self.layers is not None:
            for name in self.layers:
                find_layer(self.model, name)
            wanted = set(self.layers)
            found = [(layer, reg) for layer, reg in found if layer.name in wanted]
        if not found:
            raise ValueError(
                "RegularizationScheduler found no regularizer or constraint with "
                f"a `strength` variable in model '{self.model.name}' (kprune's "
                "GroupLasso / SparseGroupLasso regularizers and "
                "GroupSoftThreshold / SparseGroupSoftThreshold constraints have "
                "one). "
                f"Received: layers={self.layers!r}"
            )
        return [reg for _, reg in found]

    def strength_at(self, index):
        """`schedule(index)` as a float, checked to be finite and >= 0."""
        value = self.schedule(index)
        value = float(ops.convert_to_numpy(value))
        if not value >= 0.0 or value == float("inf"):
            raise ValueError(
                "The regularization schedule must return a finite float >= 0. "
                f"Received: schedule({index})={value}"
            )
        return value

    def _assign(self, index):
        value = self.strength_at(index)
        baked = bakes_variables()
        if baked and value == self._value:
            # JAX: the compiled step already holds this value; do not
            # recompile (TensorFlow assigns anyway: it costs nothing).
            return
        for reg in self._regularizers:
            reg.strength.assign(value)
        self._value = value
        if baked:
            retrace(self.model)
            self._retraces += 1
            if self._retraces > _MAX_RETRACES and not self._warned:
                self._warned = True
                warnings.warn(
                    f"RegularizationScheduler recompiled the JAX train step "
                    f"{self._retraces} times in one epoch (the strength changed "
                    "at each update). On JAX use update_freq='epoch' or a "
                    "staircase schedule.",
                    stacklevel=2,
                )

    def _iterations(self):
        return int(ops.convert_to_numpy(self.model.optimizer.iterations))

    def set_model(self, model):
        super().set_model(model)
        for name in self.layers or []:
            find_layer(model, name)  # unknown names fail before training

    def on_train_begin(self, logs=None):
        self._regularizers = self._resolve()
        # Unknown until the first assignment: JAX may have baked another
        # value into a train step traced by an earlier `fit`.
        self._value = None
        self._warned = False

    def on_epoch_begin(self, epoch, logs=None):
        self._retraces = 0
        if self.update_freq == "epoch":
            self._assign(epoch)
        elif bakes_variables():
            # The step counter is in sync with the model here; mid-epoch on
            # JAX it lives in the train state, so batches add their index.
            self._epoch_base = self._iterations()

    def on_train_batch_begin(self, batch, logs=None):
        if self.update_freq == "batch":
            if bakes_variables():
                self._assign(self._epoch_base + int(batch))
            else:
                self._assign(self._iterations())

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self._value is not None:
            logs["reg_strength"] = self._value

    def get_config(self):
        return {
            "schedule": keras.saving.serialize_keras_object(self.schedule),
            "layers": None if self.layers is None else list(self.layers),
            "update_freq": self.update_freq,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["schedule"] = keras.saving.deserialize_keras_object(config["schedule"])
        return cls(**config)
