"""`SparsityLogger`: per-layer zero groups and live units into Keras `logs`."""

import keras
import numpy as np
from keras import ops

from kprune._backend import sync_weights
from kprune.ops.group_sparsity import zero_group_mask
from kprune.regularizers.targets import default_target, find_layer, iter_layers


@keras.saving.register_keras_serializable(package="kprune")
class SparsityLogger(keras.callbacks.Callback):
    """Logs how many units of each layer are still alive.

    A unit is *dead* when its whole incoming kernel group is zero
    (`max |W_n| <= atol`): its output is then a constant (its activated
    bias), which `kprune.surgery.slim` folds into the consumers and removes.
    Where the layer's kprune group regularizer / constraint joins a
    BatchNorm's `gamma` / `beta` to its groups (`partners`, as
    `kprune.sparsity.apply_group_sparsity` sets up for conv -> BN), those
    entries must be zero too: the groups the pruning uses.
    At the end of each epoch this callback adds to `logs`:

    - `live_units/<layer>`: units with a non-zero group;
    - `group_sparsity/<layer>`: fraction of dead units (`0..1`);
    - `live_units`, `group_sparsity`: the same over all tracked layers;
    - `weight_sparsity`: fraction of exactly-zero (`<= atol`) kernel entries
      over all tracked layers.

    The keys are plain strings that `CSVLogger` writes as columns and
    `TensorBoard` as scalars; they are the same at every epoch. Put this
    callback after `ProximalStep` and before `CSVLogger` / `TensorBoard` in
    `callbacks`. Units whose *outgoing* weights are all zero are not counted
    as dead here (`kprune.surgery.dead_units` finds those too).

    Backends: the figures are read at epoch end, when every backend has the
    current weights in the model's variables. `compute()` may also be
    called mid-epoch from another callback: on JAX it first writes the
    in-flight train state back (`kprune._backend.sync_weights`).

    Args:
        layers: list of layer names to track; `None` tracks every Dense,
            Conv*D, Conv*DTranspose, DepthwiseConv*D and SeparableConv*D
            layer (nested models included).
        per_layer: also log the per-layer keys (set `False` for very deep
            models to keep only the totals).
        atol: tolerance for "zero"; `0.0` counts exact zeros only.

    Example:

    >>> import keras, kprune
    >>> model = keras.Sequential([keras.Input((4,)),
    ...     keras.layers.Dense(3, name="hidden"), keras.layers.Dense(1)])
    >>> model.compile("sgd", "mse")
    >>> _ = model.get_layer("hidden").kernel.assign(keras.ops.zeros((4, 3)))
    >>> history = model.fit(keras.ops.zeros((8, 4)), keras.ops.zeros((8, 1)),
    ...     verbose=0, callbacks=[kprune.callbacks.SparsityLogger()])
    >>> history.history["live_units/hidden"]
    [0]
    """

    def __init__(self, layers=None, per_layer=True, atol=0.0):
        super().__init__()
        if layers is not None:
            if isinstance(layers, str) or not isinstance(layers, (list, tuple)):
                raise ValueError(
                    "`layers` must be None or a list of layer names. "
                    f"Received: layers={layers!r}"
                )
            layers = [str(name) for name in layers]
        atol = float(atol)
        if not atol >= 0.0:
            raise ValueError(f"`atol` must be a float >= 0. Received: atol={atol}")
        self.layers = layers
        self.per_layer = bool(per_layer)
        self.atol = atol
        self.async_safe = True  # nothing runs per batch
        self._targets = None

    def _resolve(self):
        if self.layers is None:
            targets = [
                default_target(layer, self.model) for layer in iter_layers(self.model)
            ]
            targets = [t for t in targets if t is not None]
        else:
            targets = []
            for name in self.layers:
                layer = find_layer(self.model, name)
                target = default_target(layer, self.model)
                if target is None:
                    raise ValueError(
                        f"SparsityLogger cannot group the weights of layer "
                        f"'{name}' ({type(layer).__name__}). "
                        f"Received: layers containing {name!r}"
                    )
                targets.append(target)
        return targets

    def compute(self):
        """The figures this callback logs, as a dict (usable outside `fit`)."""
        if self._targets is None:
            self._targets = self._resolve()
        sync_weights(self.model)  # no-op except mid-epoch on JAX
        stats = {}
        live_total = units_total = zero_weights = weights_total = 0
        for target in self._targets:
            kernel = ops.convert_to_numpy(target.kernel)
            partners = [ops.convert_to_numpy(v) for v in target.partners]
            mask = ops.convert_to_numpy(
                zero_group_mask(
                    kernel, axis=target.axis, atol=self.atol, partners=partners
                )
            )
            units = int(mask.size)
            live = units - int(np.sum(mask))
            live_total += live
            units_total += units
            zero_weights += int(np.sum(np.abs(kernel) <= self.atol))
            weights_total += int(kernel.size)
            if self.per_layer:
                stats[f"live_units/{target.name}"] = live
                stats[f"group_sparsity/{target.name}"] = (
                    (units - live) / units if units else 0.0
                )
        stats["live_units"] = live_total
        stats["group_sparsity"] = (
            (units_total - live_total) / units_total if units_total else 0.0
        )
        stats["weight_sparsity"] = (
            zero_weights / weights_total if weights_total else 0.0
        )
        return stats

    def set_model(self, model):
        super().set_model(model)
        self._targets = None
        for name in self.layers or []:
            find_layer(model, name)  # unknown names fail before training

    def on_train_begin(self, logs=None):
        self._targets = self._resolve()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(self.compute())

    def get_config(self):
        return {
            "layers": None if self.layers is None else list(self.layers),
            "per_layer": self.per_layer,
            "atol": self.atol,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
