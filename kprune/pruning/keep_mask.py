"""`KeepMask`: a kernel constraint that holds pruned weights at exactly zero.

Why a constraint (the design choice, measured against the alternatives):

- Keras 3 optimizers apply `variable.constraint` right after every update,
  inside the compiled train step (`BaseOptimizer.apply`:
  `variable.assign(variable.constraint(variable))`). So `w <- m * w` runs
  after every SGD / momentum / Adam / AdamW step, on every replica under
  `tf.distribute.MirroredStrategy`, in the same graph: the stored weights are
  exactly zero where `m == 0` after every step, with no Python work per batch
  (a callback's `on_train_batch_end` `assign` costs an eager op per layer per
  step). Momentum may keep moving a pruned weight inside the optimizer's
  slots, but the projection discards that move each step.
- A constraint's variables are not layer weights, so they do not change the
  number of variables a layer saves and loads (a mask added as a layer weight
  breaks `load_model`, which rebuilds the layer from its config without it).
  Instead `KeepMask` is also a `KerasSaveable` with its own
  `save_own_variables` / `load_own_variables`: Keras' saving walks the layer's
  attributes, finds it at `layer.kernel_constraint` and stores the mask in
  `model.weights.h5` next to the kernel (`layers/<layer>/kernel_constraint`).
  The `.keras` round-trip, `save_weights` / `load_weights` and therefore
  `keras.callbacks.BackupAndRestore` all carry the mask. A file without a
  mask loads into a masked model (the mask is kept), and a file with masks
  loads into an unmasked model (the masks are ignored).
- The config holds only the wrapped constraint, never the mask values.

`KerasSaveable` and `_obj_type` are Keras internals (`keras.src`); they are
used only to take part in weight saving, and a test guards the round-trip.
"""

import keras
import numpy as np
from keras import ops
from keras.src.saving.keras_saveable import KerasSaveable


@keras.saving.register_keras_serializable(package="kprune")
class KeepMask(keras.constraints.Constraint, KerasSaveable):
    """Multiply a weight by a fixed 0/1 mask after every optimizer step.

    `w <- m * c(w)`, where `c` is the wrapped constraint (identity if None).
    The mask is a non-trainable `keras.Variable` (updated with `.assign()` by
    `MagnitudePruning`); it is saved with the model's weights, not its config.
    Before a mask is set, the constraint is `c` alone.

    Args:
        mask: optional initial 0/1 array (the weight's shape).
        inner: optional constraint applied before the mask (e.g. `MaxNorm`).

    Example:

    >>> layer = keras.layers.Dense(2)
    >>> layer.build((None, 3))
    >>> km = KeepMask(mask=np.array([[1, 0], [0, 1], [1, 1]], "float32"))
    >>> ops.convert_to_numpy(km(ops.ones((3, 2)))).tolist()
    [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    """

    def __init__(self, mask=None, inner=None):
        self.inner = keras.constraints.get(inner)
        self.mask = None
        if mask is not None:
            self.set_mask(mask)

    def _obj_type(self):
        # Any type `saving_lib` accepts; used only to build its skip-set.
        return "Operation"

    def set_mask(self, value):
        """Create the mask variable from `value`, or assign `value` to it."""
        if self.mask is not None:
            if tuple(ops.shape(value)) != tuple(self.mask.shape):
                raise ValueError(
                    f"KeepMask: mask shape {tuple(self.mask.shape)} cannot take "
                    f"a value of shape {tuple(ops.shape(value))}. "
                    f"Received: value.shape={tuple(ops.shape(value))}"
                )
            self.mask.assign(ops.cast(value, self.mask.dtype))
            return self.mask
        dtype = "float32"
        if hasattr(value, "dtype") and "float" in str(value.dtype):
            dtype = keras.backend.standardize_dtype(value.dtype)
        self.mask = keras.Variable(
            ops.cast(value, dtype), trainable=False, dtype=dtype, name="keep_mask"
        )
        return self.mask

    def __call__(self, w):
        if self.inner is not None:
            w = self.inner(w)
        if self.mask is None:
            return w
        return ops.multiply(w, ops.cast(self.mask, w.dtype))

    def save_own_variables(self, store):
        if self.mask is not None:
            store["0"] = ops.convert_to_numpy(self.mask)

    def load_own_variables(self, store):
        if "0" in store.keys():
            self.set_mask(np.asarray(store["0"][...]))

    def __reduce__(self):
        # KerasSaveable pickles whole models; a constraint pickles as config
        # plus mask values (used by copy.deepcopy and pickle).
        mask = None if self.mask is None else ops.convert_to_numpy(self.mask)
        return (_rebuild_keep_mask, (self.get_config(), mask))

    def get_config(self):
        inner = None
        if self.inner is not None:
            inner = keras.constraints.serialize(self.inner)
        return {"inner": inner}


def _rebuild_keep_mask(config, mask):
    return KeepMask(mask=mask, **config)
