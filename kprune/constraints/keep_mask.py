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
- The config holds the mask too, compactly (a 0/1 mask as packed bits,
  zlib-compressed, base64: one bit per weight at most, far less for a
  structured or very sparse mask), so that everything that rebuilds a layer
  from its config keeps it: `keras.models.clone_model`,
  `get_config` / `from_config`, `copy.deepcopy`. Without it, a clone of a
  magnitude-pruned model would let its pruned weights grow back.

`KerasSaveable` and `_obj_type` are Keras internals (`keras.src`); they are
used only to take part in weight saving, and a test guards the round-trip.
"""

import base64
import zlib

import keras
import numpy as np
from keras import ops
from keras.src.saving.keras_saveable import KerasSaveable

_BITS = "packbits-zlib-base64"
_RAW = "raw-zlib-base64"


def encode_mask(mask):
    """A JSON-able, compact form of a mask array (see `decode_mask`).

    A 0/1 mask is stored as packed bits (`numpy.packbits`), zlib-compressed
    and base64-encoded; any other mask as its raw bytes, compressed the same
    way, so that `decode_mask(encode_mask(m))` equals `m` exactly.

    Args:
        mask: an array.

    Returns:
        A dict with `shape`, `dtype`, `encoding` and `data` (a string).

    Example:

    >>> encoded = encode_mask(np.ones((300, 100), "float32"))
    >>> encoded["encoding"], len(encoded["data"]) < 100
    ('packbits-zlib-base64', True)
    """
    mask = np.asarray(mask)
    binary = bool(np.all((mask == 0) | (mask == 1)))
    payload = np.packbits(mask.reshape(-1) != 0) if binary else mask.tobytes()
    data = base64.b64encode(zlib.compress(bytes(payload), 6)).decode("ascii")
    return {
        "shape": list(mask.shape),
        "dtype": str(mask.dtype),
        "encoding": _BITS if binary else _RAW,
        "data": data,
    }


def decode_mask(encoded):
    """The mask array stored by `encode_mask`.

    Args:
        encoded: the dict `encode_mask` returned.

    Returns:
        A NumPy array of the original shape and dtype.

    Example:

    >>> m = np.array([[1, 0], [0, 1]], "float32")
    >>> decode_mask(encode_mask(m)).tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """
    try:
        shape = tuple(int(d) for d in encoded["shape"])
        dtype = np.dtype(encoded["dtype"])
        raw = zlib.decompress(base64.b64decode(encoded["data"]))
        size = int(np.prod(shape))
        if encoded["encoding"] == _BITS:
            flat = np.unpackbits(np.frombuffer(raw, np.uint8), count=size)
            return flat.astype(dtype).reshape(shape)
        if encoded["encoding"] == _RAW:
            return np.frombuffer(raw, dtype).reshape(shape).copy()
        raise ValueError(f"unknown encoding {encoded['encoding']!r}")
    except (KeyError, TypeError, ValueError, zlib.error) as error:
        raise ValueError(
            f"KeepMask: the mask in this config cannot be decoded ({error}). "
            f"Received: mask={str(encoded)[:120]}"
        ) from None


@keras.saving.register_keras_serializable(package="kprune")
class KeepMask(keras.constraints.Constraint, KerasSaveable):
    """Multiply a weight by a fixed 0/1 mask after every optimizer step.

    `w <- m * c(w)`, where `c` is the wrapped constraint (identity if None).
    The mask is a non-trainable `keras.Variable` (updated with `.assign()` by
    `MagnitudePruning`); it is saved with the model's weights and, compactly
    (`encode_mask`), in the config, so clones and `from_config` keep it.
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
    >>> clone = KeepMask.from_config(km.get_config())
    >>> ops.convert_to_numpy(clone.mask).tolist()
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
        # KerasSaveable pickles whole models; a constraint pickles as its
        # config, mask included (used by copy.deepcopy and pickle).
        return (_rebuild_keep_mask, (self.get_config(),))

    def get_config(self):
        inner = None
        if self.inner is not None:
            inner = keras.constraints.serialize(self.inner)
        mask = None
        if self.mask is not None:
            mask = encode_mask(ops.convert_to_numpy(self.mask))
        return {"inner": inner, "mask": mask}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        mask = config.pop("mask", None)
        if isinstance(mask, dict):
            mask = decode_mask(mask)
        return cls(mask=mask, **config)


def _rebuild_keep_mask(config):
    return KeepMask.from_config(config)
