"""Copy a layer as it is: same class, same weights, no trip through a config.

`copy.deepcopy` of a Keras layer pickles it, and a Keras layer pickles by
saving itself: `from_config(get_config())` plus its weights. That fails for
layers whose config cannot rebuild them (some KerasHub layers, layers whose
`get_config` itself raises), re-creates a `Lambda` from its function's
source, and pays for initializing every variable before overwriting it. So
layers are copied structurally: every layer and Keras object reached from
the layer is re-created with `__new__` and a copy of its attributes, every
variable is copied with its value, and the layer's graph history (its call
nodes, which would drag the whole model along) is left behind. When that
fails, the config route is tried. Either way the copy shares nothing with
the original: training it never changes the original's weights.
"""

import copy
import types

import keras

from kprune.surgery.errors import SurgeryError

try:  # the base class of layers and models, whose pickling saves them
    from keras.src.saving.keras_saveable import KerasSaveable
except ImportError:  # pragma: no cover - older Keras
    KerasSaveable = keras.layers.Layer


def _node_lists(layer):
    objects = [layer]
    if isinstance(layer, keras.layers.Layer):
        objects = list(layer._flatten_layers(include_self=True, recursive=True))
    memo = {}
    for obj in objects:
        for name in ("_inbound_nodes", "_outbound_nodes"):
            nodes = getattr(obj, name, None)
            if isinstance(nodes, list):
                memo[id(nodes)] = []
    return memo


class _Copier:
    """A deep copy that re-creates Keras objects from their attributes."""

    def __init__(self, memo):
        self.memo = memo
        self.layers = []

    def copy(self, value):
        key = id(value)
        if key in self.memo:
            return self.memo[key]
        if isinstance(value, (list, dict, set, tuple)):
            return self._container(value)
        if isinstance(value, KerasSaveable) or _keras_object(value):
            return self._object(value)
        if isinstance(value, (types.ModuleType, types.FunctionType, type)):
            return value
        try:
            return copy.deepcopy(value, self.memo)
        except Exception:  # noqa: BLE001 - not copyable: not state, share it
            return value

    def _object(self, value):
        cls = type(value)
        new = object.__new__(cls)  # not cls.__new__: Keras' __new__ does work
        self.memo[id(value)] = new
        for name, item in vars(value).items():
            object.__setattr__(new, name, self.copy(item))
        if isinstance(new, keras.layers.Layer):
            self.layers.append(new)
        return new

    def _container(self, value):
        cls = type(value)
        if cls is tuple or (isinstance(value, tuple) and not hasattr(value, "_fields")):
            items = [self.copy(v) for v in value]
            new = tuple(items) if cls is tuple else cls(items)
            self.memo[id(value)] = new
            return new
        if isinstance(value, tuple):  # a namedtuple
            new = cls(*[self.copy(v) for v in value])
            self.memo[id(value)] = new
            return new
        new = cls.__new__(cls)
        self.memo[id(value)] = new
        for name, item in getattr(value, "__dict__", {}).items():
            object.__setattr__(new, name, self.copy(item))
        if isinstance(value, list):
            list.extend(new, [self.copy(v) for v in value])
        elif isinstance(value, dict):
            dict.update(new, {self.copy(k): self.copy(v) for k, v in value.items()})
        else:
            set.update(new, {self.copy(v) for v in value})
        return new


def _keras_object(value):
    """A Keras helper object (a tracker, a policy ...), not a variable."""
    module = type(value).__module__ or ""
    return (
        module.startswith(("keras.", "keras_hub."))
        and hasattr(value, "__dict__")
        and not isinstance(value, keras.Variable)
        and not isinstance(value, type)
    )


def _retrack(layers):
    """Point each copied tracker's id sets at the copied objects."""
    for layer in layers:
        tracker = getattr(layer, "_tracker", None)
        if tracker is None:
            continue
        for name, (_, store) in tracker.config.items():
            tracker.stored_ids[name] = {id(x) for x in store}


def copy_layer(layer):
    """An independent copy of `layer`, with its weights, not yet called.

    Args:
        layer: a `keras.layers.Layer` or `keras.ops` operation.

    Returns:
        A new object of the same class; its variables hold the same values
        as `layer`'s and are new variables.

    Raises:
        SurgeryError: the layer can be copied neither structurally nor
            through its config.

    Example:

    >>> import keras, numpy as np
    >>> dense = keras.layers.Dense(2)
    >>> _ = dense(np.ones((1, 3)))
    >>> twin = copy_layer(dense)
    >>> twin is dense, bool(np.all(twin.kernel.numpy() == dense.kernel.numpy()))
    (False, True)
    """
    errors = []
    try:
        copier = _Copier(_node_lists(layer))
        new = copier.copy(layer)
        _retrack(copier.layers)
        return new
    except Exception as error:  # noqa: BLE001 - try the config route next
        errors.append(f"copying its attributes ({_short(error)})")
    if not isinstance(layer, keras.layers.Lambda):
        try:
            return _through_config(layer)
        except Exception as error:  # noqa: BLE001
            errors.append(f"rebuilding it from its config ({_short(error)})")
    raise SurgeryError(
        f"Could not copy layer '{getattr(layer, 'name', layer)}' "
        f"({type(layer).__name__}): {' and '.join(errors)} failed."
    )


def _through_config(layer):
    """`from_config(get_config())`, built like `layer`, with its weights."""
    new = layer.__class__.from_config(layer.get_config())
    if getattr(new, "name", None) != getattr(layer, "name", None):
        new.name = layer.name
    if not isinstance(layer, keras.layers.Layer) or not layer.built:
        return new
    build_config = layer.get_build_config()
    if build_config:
        new.build_from_config(build_config)
    weights = layer.get_weights()
    if len(new.weights) != len(weights):
        raise ValueError(
            f"the copy has {len(new.weights)} weights, the layer {len(weights)}"
        )
    new.set_weights(weights)
    return new


def _short(error):
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:160]}"


def carry_keep_mask(layer):
    """Give a resized layer's `KeepMask` a mask of the new kernel's shape.

    A rebuilt layer's `KeepMask` comes from the old config: it holds the old
    mask (of the old shape), or none. Pruned weights are exactly zero, so the
    new kernel's zero pattern is the sliced mask.
    """
    pairs = (
        ("kernel", "kernel_constraint"),
        ("depthwise_kernel", "depthwise_constraint"),
    )
    for weight_attr, constraint_attr in pairs:
        constraint = getattr(layer, constraint_attr, None)
        if type(constraint).__name__ != "KeepMask":
            continue
        kernel = keras.ops.convert_to_numpy(getattr(layer, weight_attr))
        mask = constraint.mask
        if mask is not None and tuple(mask.shape) == kernel.shape:
            continue
        constraint.mask = None
        constraint.set_mask((kernel != 0).astype("float32"))


def forget_calls(layer):
    """Drop the call history of a layer built by calling it symbolically.

    Building a layer on throw-away `keras.Input`s records call nodes; once
    it is placed in a model, `layer.output` must refer to that model's call.
    """
    objects = [layer]
    if isinstance(layer, keras.layers.Layer):
        objects = list(layer._flatten_layers(include_self=True, recursive=True))
    for obj in objects:
        for name in ("_inbound_nodes", "_outbound_nodes"):
            nodes = getattr(obj, name, None)
            if isinstance(nodes, list):
                del nodes[:]
