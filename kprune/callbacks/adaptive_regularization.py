"""`AdaptiveRegularization`: HyperSparse or L1/L2 under ART (Glandorf et al.)."""

import json
import os

import keras
import numpy as np
from keras import ops

from kprune import _backend
from kprune.pruning.art import ARTWindow, art_strength
from kprune.pruning.attach import attach_masks, prunable_layers
from kprune.pruning.masks import global_sparsity_masks
from kprune.regularizers.hypersparse import (
    HyperSparse,
    MagnitudePenalty,
    refresh_hypersparse,
)

_REGULARIZERS = ("hypersparse", "l1", "l2", None)
WARMUP, ART, FINE_TUNE = 0, 1, 2
_STATE_FILE = "kprune_art_state.npz"
_ART_KEYS = (
    "art_pruned_accuracy",
    "art_dense_accuracy",
    "art_window_accuracy",
    "art_best_epoch",
)


def _make_regularizer(kind, sparsity):
    if kind == "hypersparse":
        return HyperSparse(sparsity, strength=0.0)
    return MagnitudePenalty(p=1 if kind == "l1" else 2, strength=0.0)


@keras.saving.register_keras_serializable(package="kprune")
class AdaptiveRegularization(keras.callbacks.Callback):
    """Adaptive Regularized Training: regularize harder until pruning is free.

    The ART schedule (Glandorf et al. 2023), inside one `model.fit`:

    1. **Warm-up** (`warmup_epochs`): dense training, `lambda = 0`.
    2. **ART**: the loss is `CE + lambda_t * R(w)` with
       `lambda_t = lambda_0 * eta^t` growing every epoch (`R` is HyperSparse,
       L1 or squared L2 over all prunable kernels). After each ART epoch a
       copy globally magnitude-pruned to `sparsity` is evaluated on
       `eval_data` (training data) and fed to `kprune.pruning.ARTWindow`:
       the best window's middle epoch is remembered, and ART stops when that
       window's mean pruned accuracy exceeds the dense model's accuracy on
       the same data (or after `max_art_epochs`).
    3. **Fine-tuning**: the best epoch's weights come back, pruned globally to
       `sparsity`; `kprune.pruning.KeepMask` constraints hold the mask fixed
       (the optimizer re-applies it after every step) and `lambda` is 0.
       Fine-tuning runs for the rest of `fit`, or `fine_tune_epochs`.

    For HyperSparse, the global threshold scalars `s` and `c` are
    recomputed from all kernels at the start of every ART epoch and every
    `refresh_every` steps (a `top_k` over the kernels, or a sample of
    `sample_size` magnitudes). On the JAX backend the train step freezes
    those values when it compiles, so they (and `lambda_t`) change once per
    epoch there, at the cost of one recompilation per ART epoch.

    If `fit` ends during ART, the best epoch so far is pruned and kept, so the
    model always leaves `fit` at the target sparsity once ART has begun.

    Logs (every epoch): `art_phase` (0 warm-up, 1 ART, 2 fine-tuning),
    `art_lambda`, `art_pruned_accuracy`, `art_dense_accuracy`,
    `art_window_accuracy`, `art_best_epoch`, `hs_scale` (HyperSparse's `s`)
    and `sparsity` (fraction of zeros in the pruned kernels).

    Args:
        sparsity: target fraction of pruned kernel weights `kappa` in [0, 1).
        eval_data: training data for the pruned/dense accuracies: a tuple
            `(x, y)` or anything `model.evaluate` accepts (a dataset).
        regularizer: `"hypersparse"`, `"l1"` or `"l2"` attaches that
            regularizer to every pruned kernel without one; `None` uses the
            `HyperSparse` / `MagnitudePenalty` regularizers already on the
            model.
        initial_strength: `lambda_0`.
        growth: `eta >= 1`, the per-epoch growth of `lambda`.
        warmup_epochs: dense epochs before ART (absolute epoch numbers of
            `fit`, so a resumed run continues where it was).
        window: odd window length for the pruned accuracy.
        max_art_epochs: stop ART after this many epochs even if the rule
            has not fired (None: no limit).
        fine_tune_epochs: stop `fit` after this many fine-tuning epochs
            (None: fine-tune until `fit` ends).
        monitor: the compiled metric compared (`"accuracy"` by default).
        layers: names of the layers to prune (default: every prunable layer).
        refresh_every: steps between refreshes of HyperSparse's `s`, `c`
            inside an epoch (TensorFlow and PyTorch backends); None: once per
            epoch.
        sample_size: estimate the threshold from this many sampled
            magnitudes instead of an exact `top_k` (for very large models).
        eval_batch_size: batch size of the evaluations.
        reset_optimizer: zero the optimizer's slots (momentum, Adam moments)
            when fine-tuning begins, as the paper's fresh SGD optimizer does.
        backup_dir: a directory where the callback keeps its own state after
            every epoch (use the same as `keras.callbacks.BackupAndRestore`'s
            to resume an interrupted run exactly); deleted when `fit` ends.
        verbose: 1 prints a line per epoch of ART and at the hand-off.

    Example:

    >>> import numpy as np, keras, kprune
    >>> x = np.random.rand(64, 8).astype("float32"); y = (x[:, 0] > .5) * 1
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, "relu"),
    ...                           keras.layers.Dense(2)])
    >>> model.compile("adam", keras.losses.SparseCategoricalCrossentropy(True),
    ...               metrics=["accuracy"])
    >>> art = kprune.callbacks.AdaptiveRegularization(
    ...     0.9, eval_data=(x, y), initial_strength=1e-3, growth=2.0,
    ...     warmup_epochs=1, max_art_epochs=2)
    >>> h = model.fit(x, y, epochs=4, verbose=0, callbacks=[art])
    >>> h.history["art_phase"][0], h.history["art_phase"][-1]  # warm-up ... fine-tune
    (0.0, 2.0)
    >>> round(h.history["sparsity"][-1], 2)
    0.9

    Reference:
        Glandorf, Kaiser, Rosenhahn. HyperSparse Neural Networks: Shifting
        Exploration to Exploitation through Adaptive Regularization. ICCV
        2023 workshops, arXiv 2308.07163.
    """

    def __init__(
        self,
        sparsity,
        eval_data=None,
        regularizer="hypersparse",
        initial_strength=5e-6,
        growth=1.05,
        warmup_epochs=0,
        window=3,
        max_art_epochs=None,
        fine_tune_epochs=None,
        monitor="accuracy",
        layers=None,
        refresh_every=100,
        sample_size=None,
        eval_batch_size=1024,
        reset_optimizer=False,
        backup_dir=None,
        verbose=0,
    ):
        super().__init__()
        sparsity = float(sparsity)
        if not 0.0 < sparsity < 1.0:
            raise ValueError(
                f"`sparsity` must be in (0, 1). Received: sparsity={sparsity}"
            )
        if regularizer not in _REGULARIZERS:
            raise ValueError(
                f"`regularizer` must be one of {_REGULARIZERS}. "
                f"Received: regularizer={regularizer!r}"
            )
        if not float(initial_strength) >= 0.0:
            raise ValueError(
                "`initial_strength` must be >= 0. "
                f"Received: initial_strength={initial_strength}"
            )
        if not float(growth) >= 1.0:
            raise ValueError(f"`growth` must be >= 1. Received: growth={growth}")
        if int(warmup_epochs) < 0:
            raise ValueError(
                f"`warmup_epochs` must be >= 0. Received: warmup_epochs={warmup_epochs}"
            )
        for name, value in (
            ("max_art_epochs", max_art_epochs),
            ("fine_tune_epochs", fine_tune_epochs),
            ("refresh_every", refresh_every),
            ("sample_size", sample_size),
        ):
            if value is not None and int(value) < 1:
                raise ValueError(
                    f"`{name}` must be None or >= 1. Received: {name}={value}"
                )
        ARTWindow(window)  # validates
        self.sparsity = sparsity
        self.eval_data = eval_data
        self.regularizer = regularizer
        self.initial_strength = float(initial_strength)
        self.growth = float(growth)
        self.warmup_epochs = int(warmup_epochs)
        self.window = int(window)
        self.max_art_epochs = None if max_art_epochs is None else int(max_art_epochs)
        self.fine_tune_epochs = (
            None if fine_tune_epochs is None else int(fine_tune_epochs)
        )
        self.monitor = monitor
        self.layers = None if layers is None else list(layers)
        self.refresh_every = None if refresh_every is None else int(refresh_every)
        self.sample_size = None if sample_size is None else int(sample_size)
        self.eval_batch_size = int(eval_batch_size)
        self.reset_optimizer = bool(reset_optimizer)
        self.backup_dir = backup_dir
        self.verbose = int(verbose)
        self._targets = []
        self._reset_state()

    def _reset_state(self):
        self._art_logs = None
        self.phase = WARMUP
        self.art_start = None
        self.fine_tune_start = None
        self.handoff_pending = False
        self.art_window = ARTWindow(self.window)
        self._lambda = 0.0
        self._scale = 0.0
        self._masks = {}
        self._stats = {}

    # ------------------------------------------------------------------ setup
    @property
    def regularizers(self):
        """The regularizers this callback drives (one per pruned kernel)."""
        return [reg for _, reg in self._targets]

    def _layer_names(self):
        available = prunable_layers(self.model)
        names = self.layers if self.layers is not None else list(available)
        for name in names:
            if name not in available:
                raise ValueError(
                    f"AdaptiveRegularization: '{name}' is not a prunable layer of "
                    f"model '{self.model.name}' (prunable: {sorted(available)}). "
                    f"Received: layers={names}"
                )
        if not names:
            raise ValueError(
                f"AdaptiveRegularization: model '{self.model.name}' has no "
                f"prunable layer. Received: layers={self.layers}"
            )
        return names, available

    def _attach_regularizers(self):
        names, available = self._layer_names()
        targets = []
        changed = False
        for name in names:
            layer, weight_attr, constraint_attr = available[name]
            kernel = getattr(layer, weight_attr)
            reg = kernel.regularizer
            ours = isinstance(reg, (HyperSparse, MagnitudePenalty))
            if self.regularizer is None:
                if not ours:
                    raise ValueError(
                        f"AdaptiveRegularization(regularizer=None) needs a kprune "
                        f"HyperSparse or MagnitudePenalty on every pruned kernel; "
                        f"layer '{name}' has {reg!r}. Received: regularizer=None"
                    )
            elif not ours:
                if reg is not None:
                    raise ValueError(
                        f"Layer '{name}' already has the regularizer {reg!r} on its "
                        f"{weight_attr}; AdaptiveRegularization would replace it. "
                        "Remove it (use the optimizer's weight_decay for decay) or "
                        "pass your own HyperSparse with regularizer=None. "
                        f"Received: regularizer={self.regularizer!r}"
                    )
                reg = _make_regularizer(self.regularizer, self.sparsity)
                kernel.regularizer = reg
                # Keep the layer's config in step with its kernel.
                reg_attr = constraint_attr.replace("constraint", "regularizer")
                if hasattr(layer, reg_attr):
                    setattr(layer, reg_attr, reg)
                changed = True
            if isinstance(reg, HyperSparse) and reg.sparsity != self.sparsity:
                raise ValueError(
                    f"Layer '{name}': its HyperSparse targets sparsity {reg.sparsity}, "
                    f"the callback {self.sparsity}. Received: sparsity={self.sparsity}"
                )
            targets.append((name, reg))
        return targets, changed

    def set_model(self, model):
        super().set_model(model)
        if getattr(model, "built", False):
            self._layer_names()  # unknown names fail before training

    def on_train_begin(self, logs=None):
        if self.eval_data is None:
            raise ValueError(
                "AdaptiveRegularization needs `eval_data` (training data on which "
                "the pruned copy is evaluated after every ART epoch). "
                "Received: eval_data=None"
            )
        self._reset_state()
        strategy = getattr(self.model, "distribute_strategy", None)
        if strategy is not None:
            with strategy.scope():
                self._targets, changed = self._attach_regularizers()
        else:
            self._targets, changed = self._attach_regularizers()
        self._pruned = [n for n, _ in self._targets]
        restored = self._load_backup()
        if changed or restored:
            self.model.make_train_function(force=True)
        self._set_strength(self._lambda)

    # ----------------------------------------------------------------- events
    def on_epoch_begin(self, epoch, logs=None):
        if self.handoff_pending:
            self._hand_off(epoch)
        if self.phase == WARMUP and epoch >= self.warmup_epochs:
            self.phase = ART
            self.art_start = epoch
        if self.phase == ART:
            _backend.sync_weights(self.model)
            self._set_strength(
                art_strength(self.initial_strength, self.growth, epoch - self.art_start)
            )
            self._refresh()
            _backend.retrace(self.model)

    def on_train_batch_begin(self, batch, logs=None):
        if (
            self.phase == ART
            and self.refresh_every
            and batch > 0
            and batch % self.refresh_every == 0
            and self._hypersparse()
            and not _backend.bakes_variables()
        ):
            self._refresh()

    def on_epoch_end(self, epoch, logs=None):
        _backend.sync_weights(self.model)
        if self.phase == ART:
            self._art_epoch_end(epoch)
        elif self.phase == FINE_TUNE and self.fine_tune_epochs is not None:
            if epoch - self.fine_tune_start + 1 >= self.fine_tune_epochs:
                self.model.stop_training = True
        self._update_stats()
        if logs is not None:
            logs.update(self._stats)
        self._save_backup()

    def on_train_end(self, logs=None):
        if self.phase == ART and self.art_window.best_snapshot is not None:
            _backend.sync_weights(self.model)
            self._hand_off(None)
            self._update_stats()
        elif self.handoff_pending:
            self._hand_off(None)
            self._update_stats()
        if logs is not None:
            logs.update(self._stats)
        self._remove_backup()

    # -------------------------------------------------------------------- ART
    def _hypersparse(self):
        return any(isinstance(reg, HyperSparse) for _, reg in self._targets)

    def _set_strength(self, value):
        self._lambda = float(value)
        for _, reg in self._targets:
            reg.strength.assign(self._lambda)

    def _refresh(self):
        if self._hypersparse():
            self._scale, _ = refresh_hypersparse(
                self.model, sample_size=self.sample_size
            )

    def _kernels(self):
        available = prunable_layers(self.model)
        return [getattr(available[n][0], available[n][1]) for n in self._pruned]

    def _evaluate(self):
        data = self.eval_data
        kwargs = {"batch_size": self.eval_batch_size, "verbose": 0, "return_dict": True}
        if isinstance(data, tuple) and len(data) in (2, 3):
            result = self.model.evaluate(*data, **kwargs)
        else:
            kwargs.pop("batch_size")
            result = self.model.evaluate(data, **kwargs)
        if self.monitor not in result:
            raise ValueError(
                f"AdaptiveRegularization monitors '{self.monitor}', which the model "
                f"does not compute (it has {sorted(result)}). Compile with that "
                f"metric or set `monitor`. Received: monitor={self.monitor!r}"
            )
        return float(result[self.monitor])

    def _pruned_accuracy(self):
        kernels = self._kernels()
        saved = [ops.convert_to_numpy(k) for k in kernels]
        masks = global_sparsity_masks(saved, self.sparsity)
        for k, w, m in zip(kernels, saved, masks):
            k.assign(w * ops.convert_to_numpy(m))
        try:
            return self._evaluate()
        finally:
            for k, w in zip(kernels, saved):
                k.assign(w)

    def _art_epoch_end(self, epoch):
        pruned = self._pruned_accuracy()
        dense = self._evaluate()
        snapshot = [np.array(w) for w in self.model.get_weights()]
        stop = self.art_window.update(epoch, pruned, dense, snapshot)
        self._art_logs = {
            "art_pruned_accuracy": pruned,
            "art_dense_accuracy": dense,
            "art_window_accuracy": self.art_window.last_mean,
            "art_best_epoch": float(self.art_window.best_epoch),
        }
        art_epochs = epoch - self.art_start + 1
        if not stop and self.max_art_epochs is not None:
            stop = art_epochs >= self.max_art_epochs
        if self.verbose:
            print(
                f"ART epoch {art_epochs}: lambda {self._lambda:.3g}, pruned "
                f"{self.monitor} {pruned:.4f} "
                f"(window {self.art_window.last_mean:.4f}), "
                f"dense {dense:.4f}" + ("; stopping" if stop else "")
            )
        if stop:
            self.handoff_pending = True

    def _hand_off(self, epoch):
        """Best epoch's weights, pruned to `sparsity`, mask fixed, lambda 0."""
        self.handoff_pending = False
        self.model.set_weights(self.art_window.best_snapshot)
        kernels = self._kernels()
        masks = global_sparsity_masks(
            [ops.convert_to_numpy(k) for k in kernels], self.sparsity
        )
        self._apply_masks(
            {n: ops.convert_to_numpy(m) for n, m in zip(self._pruned, masks)}
        )
        self._set_strength(0.0)
        if self.reset_optimizer and self.model.optimizer is not None:
            opt = self.model.optimizer
            keep = {id(opt.iterations), id(getattr(opt, "_learning_rate", None))}
            for v in opt.variables:
                if id(v) not in keep:
                    v.assign(ops.zeros(v.shape, v.dtype))
        self.phase = FINE_TUNE
        self.fine_tune_start = epoch
        self.model.make_train_function(force=True)
        if self.verbose:
            print(
                f"ART hand-off: epoch {self.art_window.best_epoch}'s weights pruned "
                f"to sparsity {self.sparsity}; fine-tuning with the mask fixed"
            )

    def _apply_masks(self, masks):
        strategy = getattr(self.model, "distribute_strategy", None)
        if strategy is not None:
            with strategy.scope():
                keep, _ = attach_masks(self.model, self._pruned)
        else:
            keep, _ = attach_masks(self.model, self._pruned)
        for name, kernel in zip(self._pruned, self._kernels()):
            keep[name].set_mask(masks[name])
            kernel.assign(ops.multiply(kernel, ops.cast(keep[name].mask, kernel.dtype)))
        self._masks = keep

    def _update_stats(self):
        kernels = self._kernels()
        zeros = sum(int(np.sum(ops.convert_to_numpy(k) == 0)) for k in kernels)
        total = sum(int(np.prod(k.shape)) for k in kernels)
        stats = {
            "art_phase": float(self.phase),
            "art_lambda": self._lambda,
            "sparsity": zeros / max(total, 1),
        }
        if self._hypersparse():
            stats["hs_scale"] = self._scale
        # Every key from the first epoch on (CSVLogger fixes its columns
        # then): NaN until ART has measured it.
        stats.update(dict.fromkeys(_ART_KEYS, float("nan")))
        stats.update(self._art_logs or {})
        self._stats = stats

    # ------------------------------------------------------------- resuming
    def _state_path(self):
        return os.path.join(self.backup_dir, _STATE_FILE)

    def _save_backup(self):
        if self.backup_dir is None:
            return
        os.makedirs(self.backup_dir, exist_ok=True)
        meta = {
            "phase": self.phase,
            "art_start": self.art_start,
            "fine_tune_start": self.fine_tune_start,
            "handoff_pending": self.handoff_pending,
            "lambda": self._lambda,
            "scale": self._scale,
            "window": self.art_window.get_state(),
            "art_logs": self._art_logs,
            "masks": list(self._masks) if self.phase == FINE_TUNE else [],
        }
        arrays = {"meta": np.array(json.dumps(meta))}
        for j, (_, _, snap) in enumerate(self.art_window.entries):
            for k, w in enumerate(snap or []):
                arrays[f"entry{j}_{k}"] = w
        for k, w in enumerate(self.art_window.best_snapshot or []):
            arrays[f"best_{k}"] = w
        for name in meta["masks"]:
            arrays[f"mask_{name}"] = ops.convert_to_numpy(self._masks[name].mask)
        tmp = self._state_path() + ".tmp.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, self._state_path())

    def _load_backup(self):
        if self.backup_dir is None or not os.path.exists(self._state_path()):
            return False
        with np.load(self._state_path()) as data:
            meta = json.loads(str(data["meta"]))
            n = len(self.model.get_weights())

            def snapshot(prefix):
                if f"{prefix}0" not in data:
                    return None
                return [np.array(data[f"{prefix}{k}"]) for k in range(n)]

            entries = [
                snapshot(f"entry{j}_") for j in range(len(meta["window"]["entries"]))
            ]
            self.art_window.set_state(meta["window"], entries, snapshot("best_"))
            masks = {name: np.array(data[f"mask_{name}"]) for name in meta["masks"]}
        self.phase = meta["phase"]
        self.art_start = meta["art_start"]
        self.fine_tune_start = meta["fine_tune_start"]
        self.handoff_pending = meta["handoff_pending"]
        self._lambda = meta["lambda"]
        self._scale = meta["scale"]
        self._art_logs = meta["art_logs"]
        if masks:
            self._apply_masks(masks)
        return True

    def _remove_backup(self):
        if self.backup_dir is not None and os.path.exists(self._state_path()):
            os.remove(self._state_path())

    # ---------------------------------------------------------- serialization
    def get_config(self):
        return {
            "sparsity": self.sparsity,
            "regularizer": self.regularizer,
            "initial_strength": self.initial_strength,
            "growth": self.growth,
            "warmup_epochs": self.warmup_epochs,
            "window": self.window,
            "max_art_epochs": self.max_art_epochs,
            "fine_tune_epochs": self.fine_tune_epochs,
            "monitor": self.monitor,
            "layers": self.layers,
            "refresh_every": self.refresh_every,
            "sample_size": self.sample_size,
            "eval_batch_size": self.eval_batch_size,
            "reset_optimizer": self.reset_optimizer,
            "backup_dir": self.backup_dir,
            "verbose": self.verbose,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
