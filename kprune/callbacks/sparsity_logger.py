"""`SparsityLogger`: per-layer zero groups and live units into Keras `logs`."""

import collections
import warnings

import keras
import numpy as np
from keras import ops

from kprune._backend import sync_weights
from kprune.callbacks._unit_groups import UnitGroups
from kprune.ops.group_sparsity import zero_group_mask
from kprune.regularizers.coupling import coupled_units
from kprune.regularizers.targets import default_target, find_layer, iter_layers

# What `coupled_units` reads of a target: its layer, kernel and unit count.
_Counted = collections.namedtuple("_Counted", "layer kernel units")


@keras.saving.register_keras_serializable(package="kprune")
class SparsityLogger(keras.callbacks.Callback):
    """Logs how many units of each layer are still alive.

    A unit is *dead* when its whole incoming kernel group is zero
    (`max |W_n| <= atol`): its output is then a constant (its activated
    bias), which `kprune.surgery.slim` folds into the consumers and removes.
    Where the layer's kprune group regularizer / constraint joins a
    BatchNorm's `gamma` / `beta` to its groups (`partners`, as
    `kprune.sparsity.apply_group_sparsity` sets up for conv -> BN), those
    entries must be zero too: the groups the pruning uses. A unit coupled
    to others (the convs whose outputs a residual `Add` joins make one
    channel) is dead only when all of them are, and never when a layer
    that is not tracked, or a model output, also makes its channel: what
    `slim` can remove (`coupled=False` counts each layer on its own).
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
        coupled: count a coupled unit dead only with its whole group
            (`kprune.regularizers.coupling.coupled_units`, over every layer
            this callback could track); `False`: each layer on its own.

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

    def __init__(self, layers=None, per_layer=True, atol=0.0, coupled=True):
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
        self.coupled = bool(coupled)
        self.async_safe = True  # nothing runs per batch
        self._targets = None
        self._groups = None

    def _defaults(self):
        targets = [
            default_target(layer, self.model) for layer in iter_layers(self.model)
        ]
        return [t for t in targets if t is not None]

    def _resolve(self):
        """The tracked targets, then (when coupled) every other one."""
        if self.layers is None:
            targets = self._defaults()
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
        self._tracked = len(targets)
        if self.coupled:
            known = {id(t.layer) for t in targets}
            targets += [t for t in self._defaults() if id(t.layer) not in known]
        return targets

    def _dead(self, masks):
        """Per tracked target: the units that are dead with their group."""
        if not self.coupled:
            return masks[: self._tracked]
        if self._groups is None:
            counted = [
                _Counted(t.layer, t.kernel, int(m.size))
                for t, m in zip(self._targets, masks)
            ]
            with warnings.catch_warnings():  # unreadable graph: per layer
                warnings.simplefilter("ignore")
                coupling = coupled_units(self.model, counted)
            self._groups = UnitGroups([c.units for c in counted], coupling)
        return self._groups.complete(masks)[: self._tracked]

    def compute(self):
        """The figures this callback logs, as a dict (usable outside `fit`)."""
        if self._targets is None:
            self._targets = self._resolve()
        sync_weights(self.model)  # no-op except mid-epoch on JAX
        stats = {}
        live_total = units_total = zero_weights = weights_total = 0
        kernels, masks = [], []
        for target in self._targets:
            kernel = ops.convert_to_numpy(target.kernel)
            partners = [ops.convert_to_numpy(v) for v in target.partners]
            mask = zero_group_mask(
                kernel, axis=target.axis, atol=self.atol, partners=partners
            )
            kernels.append(kernel)
            masks.append(np.reshape(ops.convert_to_numpy(mask), -1))
        for target, kernel, mask in zip(self._targets, kernels, self._dead(masks)):
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
        self._groups = None
        for name in self.layers or []:
            find_layer(model, name)  # unknown names fail before training

    def on_train_begin(self, logs=None):
        self._targets = self._resolve()
        self._groups = None

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(self.compute())

    def get_config(self):
        return {
            "layers": None if self.layers is None else list(self.layers),
            "per_layer": self.per_layer,
            "atol": self.atol,
            "coupled": self.coupled,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
