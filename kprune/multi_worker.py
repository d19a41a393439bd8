"""Keras 3 `fit` under `tf.distribute.MultiWorkerMirroredStrategy` (opt-in).

TensorFlow backend only, and not imported by `import kprune`: import this
module yourself, in a training script that uses the strategy.

With Keras 3.15.1 (and TensorFlow 2.21), `model.fit` and `model.evaluate`
fail under `tf.distribute.MultiWorkerMirroredStrategy` with more than one
worker, before the first step and with or without kprune, in two places
of Keras' TensorFlow trainer (`keras/src/backend/tensorflow/trainer.py`):

1. `TensorFlowTrainer._maybe_symbolic_build` (line 713) takes the first
   batch of the distributed dataset and calls `strategy.reduce("MEAN",
   batch, axis=None)` on the whole `(x, y)` structure (line 731). The
   multi-worker strategy reduces one `PerReplica` value, not a tuple of
   them: "Attempt to convert a value (PerReplica ...) to a Tensor".
2. `reduce_per_replica` (line 778), which reduces the logs of every train
   and test step (line 135, `reduction="auto"`, that is `"mean"`), calls
   `strategy.reduce("MEAN", v, axis=0)` in multi-worker mode (line 841).
   The logs are scalars, which have no axis 0: "Invalid reduction
   dimension 0 for input with 0 dimensions" (tensorflow/tensorflow#72388).

No setting avoids them: the first runs whenever the model was created in
the strategy's scope, the second on every step in multi-worker mode.
`patch_keras_multi_worker()` replaces the two functions, while it is
active, by versions that differ only in multi-worker mode:

1. The symbolic build reads the shapes of the first batch from this
   worker's first replica (`strategy.experimental_local_results`), which
   is all it uses the batch for.
2. `"mean"` (and `"auto"`) reduces each value across replicas,
   `strategy.reduce("MEAN", v, axis=None)`: the element-wise mean over
   replicas, what Keras does with one worker
   (`tf.reduce_mean(local_results, axis=0)`).

Everything else (the train step, the optimizer's cross-replica gradient
sum, `predict`'s `"concat"`) is Keras' own. kprune's tests check that the
patch is still needed (an unpatched `fit` fails in two local workers) and
that, with it, kprune's callbacks, constraints and `kprune.transformers`
calibration give the same zero groups, masks and kept units as one device
(`tests/test_multi_worker.py`).
"""

import keras

_ACTIVE = None


class KerasMultiWorkerPatch:
    """The active `patch_keras_multi_worker()`; `undo()` restores Keras.

    Also a context manager: `with patch_keras_multi_worker(): model.fit(...)`
    undoes it on exit.

    Args:
        trainer_module: `keras.src.backend.tensorflow.trainer`.

    Example:

    >>> patch = patch_keras_multi_worker()
    >>> patch.active
    True
    >>> patch.undo()
    >>> patch.active
    False
    """

    def __init__(self, trainer_module):
        self._module = trainer_module
        self._trainer = trainer_module.TensorFlowTrainer
        self._reduce = trainer_module.reduce_per_replica
        self._build = self._trainer.__dict__["_maybe_symbolic_build"]
        self.active = False

    def apply(self):
        """Install the two replacements (see the module docstring)."""
        self._module.reduce_per_replica = _reduce_per_replica(self._module)
        self._trainer._maybe_symbolic_build = _maybe_symbolic_build(
            self._module, self._build
        )
        self.active = True

    def undo(self):
        """Give Keras back its own two functions (a no-op once undone)."""
        global _ACTIVE
        if not self.active:
            return
        self._module.reduce_per_replica = self._reduce
        self._trainer._maybe_symbolic_build = self._build
        self.active = False
        if _ACTIVE is self:
            _ACTIVE = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.undo()
        return False


def patch_keras_multi_worker():
    """Let Keras 3 `fit` / `evaluate` run under `MultiWorkerMirroredStrategy`.

    A workaround for two bugs of Keras 3.15's TensorFlow trainer (the
    module docstring names them, with line numbers): call it in each
    worker's script, before `fit`. It changes Keras' functions only in the
    process that calls it, only until `undo()`, and only where more than
    one worker trains; elsewhere the replacements call Keras' own code.
    Calling it again while it is active returns the same patch.

    Returns:
        The `KerasMultiWorkerPatch` (`.undo()`, or use it with `with`).

    Raises:
        RuntimeError: on a backend other than TensorFlow, or when this
            Keras has none of the functions the patch replaces (a newer
            Keras: check whether `fit` runs without it).

    Example:

    >>> with patch_keras_multi_worker() as patch:
    ...     patch.active
    True
    >>> patch.active
    False
    """
    global _ACTIVE
    if _ACTIVE is not None and _ACTIVE.active:
        return _ACTIVE
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            "kprune.multi_worker patches Keras' TensorFlow trainer for "
            "tf.distribute.MultiWorkerMirroredStrategy; this process runs the "
            f"{keras.backend.backend()!r} backend. Set KERAS_BACKEND=tensorflow "
            "before Keras is imported. Received: "
            f"backend={keras.backend.backend()!r}"
        )
    from keras.src.backend.tensorflow import trainer as trainer_module

    needed = ("reduce_per_replica", "_collective_all_reduce_multi_worker")
    missing = [name for name in needed if not hasattr(trainer_module, name)]
    trainer = getattr(trainer_module, "TensorFlowTrainer", None)
    if trainer is None or "_maybe_symbolic_build" not in trainer.__dict__:
        missing.append("TensorFlowTrainer._maybe_symbolic_build")
    if missing:
        raise RuntimeError(
            "kprune.multi_worker: this Keras has no "
            f"keras.src.backend.tensorflow.trainer.{', '.join(missing)}, which "
            "the workaround for Keras 3.15 replaces. A newer Keras may not "
            "need it: run `fit` under MultiWorkerMirroredStrategy without "
            f"it. Received: keras.__version__={keras.__version__!r}"
        )
    _ACTIVE = KerasMultiWorkerPatch(trainer_module)
    _ACTIVE.apply()
    return _ACTIVE


def _reduce_per_replica(module):
    keras_reduce = module.reduce_per_replica
    multi_worker = module._collective_all_reduce_multi_worker

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and multi_worker(strategy):
            from keras.src import tree

            # The element-wise mean over all replicas (Keras' `axis=0` asks
            # for a reduction over each value's first axis too).
            return tree.map_structure(
                lambda v: strategy.reduce("MEAN", v, axis=None), values
            )
        return keras_reduce(values, strategy, reduction)

    reduce_per_replica.__doc__ = keras_reduce.__doc__
    reduce_per_replica._kprune_patch = True
    return reduce_per_replica


def _maybe_symbolic_build(module, keras_build):
    multi_worker = module._collective_all_reduce_multi_worker

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if iterator is not None and strategy is not None and multi_worker(strategy):
            import tensorflow as tf
            from keras.src import tree

            def local(value):
                if isinstance(value, tf.distribute.DistributedValues):
                    return strategy.experimental_local_results(value)[0]
                return value

            # Only the batch's shapes and dtypes are used: this worker's
            # first replica has them.
            for _, _, batches in iterator:
                data_batch = tree.map_structure(local, next(batches))
                break
            iterator = None
        return keras_build(self, iterator=iterator, data_batch=data_batch)

    maybe_symbolic_build._kprune_patch = True
    return maybe_symbolic_build
