"""`MagnitudePruning`: prune small weights, hold them at zero, retrain."""

import math

import keras
from keras import ops

from kprune._backend import bakes_variables, retrace, sync_weights
from kprune.pruning.attach import attach_masks, prunable_layers
from kprune.pruning.masks import global_sparsity_masks, sparsity_mask, threshold_mask
from kprune.pruning.thresholds import global_std_threshold, std_threshold

_SCOPES = ("layer", "global")
_UNITS = ("step", "epoch")
_FREEZE = (None, "conv", "dense")


def _check_fraction(name, value):
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"`{name}` must be in [0, 1). Received: {name}={value}")
    return value


def _rescaled_rate(rate, kept, total):
    """Han et al.'s retraining dropout: `D_r = D_o * sqrt(C_r / C_o)`."""
    return float(rate) * math.sqrt(kept / max(total, 1))


@keras.saving.register_keras_serializable(package="kprune")
class MagnitudePruning(keras.callbacks.Callback):
    """Prune connections by magnitude during `fit`; keep them at exactly zero.

    Two ways to choose what to prune, applied per layer or globally:

    - **quality** (Han et al.): prune `|w| < q x std(kept weights)`, with
      `q` per layer (a dict) or one float. Pruning happens at the beginning
      of epochs `0, k, 2k, ..., (cycles - 1) k` (`k = epochs_per_cycle`,
      absolute epoch numbers, so a resumed run does not prune twice); the
      epochs in between retrain the survivors (use ~1/10 of the original
      learning rate). The standard deviation is that of the survivors, so
      every cycle removes a further share.
    - **sparsity**: a target fraction of pruned weights, as a float, a dict
      per layer, or a schedule (`kprune.pruning.PolynomialDecay`,
      `ConstantSparsity`, any `keras.optimizers.schedules`
      `LearningRateSchedule`, or any callable `f(step) -> sparsity`).
      The step is `model.optimizer.iterations`, so schedules resume
      correctly. Shipped schedules say when to prune (`should_prune`);
      other callables are evaluated every `frequency` steps. With
      `schedule_unit="epoch"`, the callable gets the epoch number and pruning
      happens at the beginning of each epoch. The `k` smallest weights are
      pruned exactly, with `k = round(s x n)`; pruned weights never grow back.

    With `scope="global"` one threshold (quality) or one ranking (sparsity)
    covers all pruned kernels together.

    How zeros are held: each pruned layer gets a `kprune.pruning.KeepMask`
    kernel constraint, which the optimizer applies after every update inside
    the compiled train step (`w <- m * w`), so weights are exactly zero after
    every SGD / momentum / Adam step with no per-batch Python work, and the
    masks are saved with the model (`.keras`, `save_weights`,
    `BackupAndRestore`). The masks stay attached after `fit` so that later
    training keeps the zeros; `kprune.pruning.strip_pruning(model)` returns a
    copy without them.

    Backends: on TensorFlow (and PyTorch) the train step reads the masks at
    run time. JAX's compiled train step bakes the masks in when it traces, so
    on JAX every pruning event (and the start of each `fit`) recompiles the
    train step once (`kprune._backend.retrace`); with a step schedule that is
    one compilation per pruning event (every `frequency` steps), not per
    step. A pruning event in the middle of a JAX epoch first writes the
    in-flight training state back into the model (`sync_weights`).

    Logs (every batch and epoch): `sparsity` (fraction of pruned entries over
    the pruned kernels) and `kept/<layer>` (kept fraction per layer, when
    `log_layers`).

    Args:
        quality: float or `{layer_name: float}` for the `q x std` rule.
        sparsity: float, `{layer_name: float}` or schedule (see above).
            Exactly one of `quality` and `sparsity` must be given.
        scope: `"layer"` (a threshold per layer) or `"global"`.
        layers: names of the layers to prune. Default: the dict's keys, else
            every prunable layer (Dense, Conv*, DepthwiseConv, EinsumDense).
        frequency: steps between pruning events for callables without
            `should_prune`.
        schedule_unit: `"step"` or `"epoch"` (what the schedule is called with).
        cycles: number of pruning rounds in quality mode.
        epochs_per_cycle: epochs from one quality round to the next.
        dropout_rescale: during this `fit`, set each `Dropout` rate to
            `D_r = D_o sqrt(C_r / C_o)`, where `C` counts the connections
            (kernel entries) of the first pruned layer after the `Dropout`
            (the one that reads the dropped activations); `C_o` is the full
            kernel size. Rates are restored at the end of `fit`.
        freeze: `None`, `"conv"` or `"dense"`: layers of that kind (conv: a
            kernel of rank > 2) are not trained during this `fit` while the
            other kind retrains; restored at the end of `fit`.
        log_layers: also log `kept/<layer>`.
        verbose: 1 prints a line per pruning event.

    Example:

    >>> import numpy as np
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> model.compile("adam", "mse")
    >>> x, y = np.ones((16, 8)), np.ones((16, 4))
    >>> h = model.fit(x, y, epochs=2, verbose=0,
    ...               callbacks=[MagnitudePruning(sparsity=0.75)])
    >>> float(np.mean(model.layers[0].kernel.numpy() == 0))
    0.75

    Reference:
        Han, Pool, Tran, Dally. Learning both Weights and Connections for
        Efficient Neural Networks. NeurIPS 2015, arXiv 1506.02626.
        Zhu, Gupta. To prune, or not to prune. arXiv 1710.01878.
    """

    # on_train_batch_end only copies cached Python floats into `logs`: safe to
    # run on Keras' async callback thread, so training never waits for it.
    async_safe = True

    def __init__(
        self,
        quality=None,
        sparsity=None,
        scope="layer",
        layers=None,
        frequency=100,
        schedule_unit="step",
        cycles=1,
        epochs_per_cycle=1,
        dropout_rescale=False,
        freeze=None,
        log_layers=True,
        verbose=0,
    ):
        super().__init__()
        if (quality is None) == (sparsity is None):
            raise ValueError(
                "Give exactly one of `quality` and `sparsity`. "
                f"Received: quality={quality}, sparsity={sparsity}"
            )
        if scope not in _SCOPES:
            raise ValueError(
                f"`scope` must be one of {_SCOPES}. Received: scope={scope}"
            )
        if schedule_unit not in _UNITS:
            raise ValueError(
                f"`schedule_unit` must be one of {_UNITS}. "
                f"Received: schedule_unit={schedule_unit}"
            )
        if freeze not in _FREEZE:
            raise ValueError(
                f"`freeze` must be one of {_FREEZE}. Received: freeze={freeze}"
            )
        for name, value in (
            ("frequency", frequency),
            ("cycles", cycles),
            ("epochs_per_cycle", epochs_per_cycle),
        ):
            if int(value) < 1:
                raise ValueError(f"`{name}` must be >= 1. Received: {name}={value}")
        if quality is not None:
            if isinstance(quality, dict):
                quality = {k: float(v) for k, v in quality.items()}
                bad = {k: v for k, v in quality.items() if v < 0}
            else:
                quality = float(quality)
                bad = quality if quality < 0 else None
            if bad:
                raise ValueError(f"`quality` must be >= 0. Received: quality={bad}")
        if sparsity is not None and not callable(sparsity):
            if isinstance(sparsity, dict):
                sparsity = {
                    k: _check_fraction(f"sparsity['{k}']", v)
                    for k, v in sparsity.items()
                }
            else:
                sparsity = _check_fraction("sparsity", sparsity)
        value = quality if quality is not None else sparsity
        if isinstance(value, dict) and scope == "global":
            raise ValueError(
                "`scope='global'` uses one value for all layers; a per-layer dict "
                f"needs scope='layer'. Received: {value}"
            )
        if isinstance(value, dict) and layers is not None:
            missing = [n for n in layers if n not in value]
            if missing:
                raise ValueError(
                    f"Layers {missing} have no entry in the per-layer dict. "
                    f"Received: layers={list(layers)}"
                )
        self.quality = quality
        self.sparsity = sparsity
        self.scope = scope
        self.layers = None if layers is None else list(layers)
        self.frequency = int(frequency)
        self.schedule_unit = schedule_unit
        self.cycles = int(cycles)
        self.epochs_per_cycle = int(epochs_per_cycle)
        self.dropout_rescale = bool(dropout_rescale)
        self.freeze = freeze
        self.log_layers = bool(log_layers)
        self.verbose = int(verbose)
        self._masks = {}
        self._stats = {}
        self._counts = {}
        self._frozen = []
        self._dropout = {}
        self._first_batch = True
        self._steps_per_execution = 1

    # ------------------------------------------------------------------ setup
    @property
    def masks(self):
        """`{layer_name: KeepMask}` of the model being trained."""
        return dict(self._masks)

    def _value(self):
        return self.quality if self.quality is not None else self.sparsity

    def _layer_names(self):
        available = prunable_layers(self.model)
        value = self._value()
        if self.layers is not None:
            names = self.layers
        elif isinstance(value, dict):
            names = list(value)
        else:
            names = list(available)
        for name in names:
            if name not in available:
                raise ValueError(
                    f"MagnitudePruning: layer '{name}' is not a prunable layer of "
                    f"model '{self.model.name}' (prunable: {sorted(available)}). "
                    f"Received: layers={names}"
                )
        if not names:
            raise ValueError(
                f"MagnitudePruning: model '{self.model.name}' has no prunable "
                f"layer. Received: layers={self.layers}"
            )
        return names

    def set_model(self, model):
        super().set_model(model)
        if getattr(model, "built", False):
            self._layer_names()  # unknown names fail before training

    def on_train_begin(self, logs=None):
        names = self._layer_names()
        strategy = getattr(self.model, "distribute_strategy", None)
        if strategy is not None:
            with strategy.scope():
                self._masks, changed = attach_masks(self.model, names)
        else:
            self._masks, changed = attach_masks(self.model, names)
        changed = self._apply_freeze() or changed
        if self.dropout_rescale:
            self._find_dropout()
        if changed:
            # A train function traced before the constraints existed (an
            # earlier `fit`) would not apply them: trace again.
            self.model.make_train_function(force=True)
        elif bakes_variables():
            # JAX froze the masks' values when it last traced (an earlier
            # `fit`); they may have changed since (`load_weights`).
            retrace(self.model)
        self._first_batch = True
        # Read once: on JAX every `self.model` access in a batch hook writes
        # the whole train state back into the model (Keras' Callback.model).
        self._steps_per_execution = int(
            getattr(self.model, "steps_per_execution", 1) or 1
        )
        self._update_stats()

    def _apply_freeze(self):
        self._frozen = []
        if self.freeze is None:
            return False
        for layer, weight_attr, _ in prunable_layers(self.model).values():
            rank = len(getattr(layer, weight_attr).shape)
            is_conv = rank > 2
            if layer.trainable and is_conv == (self.freeze == "conv"):
                layer.trainable = False
                self._frozen.append(layer)
        return bool(self._frozen)

    def _find_dropout(self):
        """Map each Dropout layer to the first pruned layer after it."""
        self._dropout = {}
        flat = list(_flat_layers(self.model))
        for i, layer in enumerate(flat):
            if not isinstance(layer, keras.layers.Dropout):
                continue
            for later in flat[i + 1 :]:
                if later.name in self._masks:
                    self._dropout[layer.name] = (layer, float(layer.rate), later.name)
                    break

    # ----------------------------------------------------------------- events
    def _iterations(self):
        sync_weights(self.model)  # JAX: `iterations` lives in the train state
        return int(ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_epoch_begin(self, epoch, logs=None):
        # One read of the step counter per epoch; batches add their index, so
        # no batch hook waits for the device (keeps Keras' async dispatch).
        self._epoch_base = self._iterations()
        if self._first_batch:
            # BackupAndRestore may have loaded weights after on_train_begin.
            self._update_stats()
        if self.quality is not None:
            k = self.epochs_per_cycle
            if epoch % k == 0 and epoch // k < self.cycles:
                self._prune(self.quality, f"epoch {epoch}")
        elif self.schedule_unit == "epoch":
            target = self.sparsity
            if callable(target):
                target = float(ops.convert_to_numpy(target(epoch)))
            self._prune(target, f"epoch {epoch}")
        if self.dropout_rescale:
            self._rescale_dropout()

    def on_train_batch_begin(self, batch, logs=None):
        if self.sparsity is None or self.schedule_unit != "step":
            self._first_batch = False
            return
        if not callable(self.sparsity):
            if self._first_batch:
                self._prune(self.sparsity, "first step")
        else:
            first = self._epoch_base + int(batch)
            spe = self._steps_per_execution
            should = getattr(self.sparsity, "should_prune", None)
            for step in range(first, first + spe):
                due = should(step) if should else step % self.frequency == 0
                if due:
                    target = float(ops.convert_to_numpy(self.sparsity(step)))
                    self._prune(target, f"step {step}")
                    break
        self._first_batch = False

    def on_train_batch_end(self, batch, logs=None):
        if logs is not None:
            logs.update(self._stats)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(self._stats)

    def on_train_end(self, logs=None):
        # Optimizer finalization (EMA) may have overwritten kernels: re-mask.
        self._hold_zeros()
        changed = False
        for layer in self._frozen:
            layer.trainable = True
            changed = True
        self._frozen = []
        for layer, rate, _ in self._dropout.values():
            if layer.rate != rate:
                layer.rate = rate
                changed = True
        if changed:
            self.model.make_train_function(force=True)
        if logs is not None:
            logs.update(self._stats)

    # ---------------------------------------------------------------- pruning
    def _kernels(self):
        layers = prunable_layers(self.model)
        return {n: getattr(layers[n][0], layers[n][1]) for n in self._masks}

    def _hold_zeros(self):
        sync_weights(self.model)
        for name, kernel in self._kernels().items():
            mask = self._masks[name].mask
            kernel.assign(ops.multiply(kernel, ops.cast(mask, kernel.dtype)))

    def _prune(self, value, when):
        # JAX, mid-epoch: the current weights are in the train state, and the
        # model's variables are empty; write them back first. After this, the
        # next step reads the variables again, so the assignments below count.
        sync_weights(self.model)
        names = list(self._masks)
        kernels = self._kernels()
        weights = [kernels[n] for n in names]
        old = [self._masks[n].mask for n in names]
        if self.quality is not None:
            if self.scope == "global":
                t = global_std_threshold(weights, value, old)
                new = [threshold_mask(w, t, m) for w, m in zip(weights, old)]
            else:
                new = []
                for n, w, m in zip(names, weights, old):
                    q = value[n] if isinstance(value, dict) else value
                    new.append(threshold_mask(w, std_threshold(w, q, m), m))
        else:
            if self.scope == "global":
                new = global_sparsity_masks(
                    weights, _check_fraction("sparsity", value), old
                )
            else:
                new = []
                for n, w, m in zip(names, weights, old):
                    s = value[n] if isinstance(value, dict) else value
                    new.append(sparsity_mask(w, _check_fraction("sparsity", s), m))
        before = dict(self._counts)
        for n, w, m in zip(names, weights, new):
            self._masks[n].set_mask(m)
            w.assign(ops.multiply(w, ops.cast(m, w.dtype)))
        self._update_stats()
        if self._counts != before:
            # JAX baked the old masks into the compiled step: compile again.
            # (A new mask is a subset of the old one: same count, same mask.)
            retrace(self.model)
        if self.verbose:
            kept = (
                ", ".join(f"{n} {self._stats.get('kept/' + n, 0):.3f}" for n in names)
                if self.log_layers
                else ""
            )
            print(
                f"MagnitudePruning ({when}): sparsity "
                f"{self._stats['sparsity']:.4f}; kept {kept}"
            )

    def _update_stats(self):
        stats = {}
        counts = {}
        kept_total = 0
        size_total = 0
        for name, keep in self._masks.items():
            kept = int(ops.convert_to_numpy(ops.sum(keep.mask)))
            counts[name] = kept
            size = int(math.prod(keep.mask.shape))
            kept_total += kept
            size_total += size
            if self.log_layers:
                stats[f"kept/{name}"] = kept / max(size, 1)
        stats["sparsity"] = 1.0 - kept_total / max(size_total, 1)
        self._stats = stats
        self._counts = counts

    def _rescale_dropout(self):
        changed = False
        for layer, rate, target in self._dropout.values():
            mask = self._masks[target].mask
            total = int(math.prod(mask.shape))
            new_rate = _rescaled_rate(rate, self._counts[target], total)
            if abs(new_rate - float(layer.rate)) > 1e-6:
                layer.rate = new_rate
                changed = True
        if changed:
            self.model.make_train_function(force=True)

    # ---------------------------------------------------------- serialization
    def get_config(self):
        sparsity = self.sparsity
        if callable(sparsity):
            sparsity = keras.saving.serialize_keras_object(sparsity)
        return {
            "quality": self.quality,
            "sparsity": sparsity,
            "scope": self.scope,
            "layers": self.layers,
            "frequency": self.frequency,
            "schedule_unit": self.schedule_unit,
            "cycles": self.cycles,
            "epochs_per_cycle": self.epochs_per_cycle,
            "dropout_rescale": self.dropout_rescale,
            "freeze": self.freeze,
            "log_layers": self.log_layers,
            "verbose": self.verbose,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        sparsity = config.get("sparsity")
        if isinstance(sparsity, (dict, str)) and (
            isinstance(sparsity, str) or "class_name" in sparsity
        ):
            config["sparsity"] = keras.saving.deserialize_keras_object(sparsity)
        return cls(**config)


def _flat_layers(model):
    for layer in model.layers:
        if hasattr(layer, "layers") and isinstance(layer, keras.Model):
            yield from _flat_layers(layer)
        else:
            yield layer
