"""Find prunable kernels, attach `KeepMask` constraints, strip them again."""

import keras
from keras import ops

from kprune.constraints.keep_mask import KeepMask
from kprune.surgery.compiling import clone_model

# (weight attribute, constraint attribute) pairs that kprune knows how to mask.
_PRUNABLE_ATTRS = (
    ("kernel", "kernel_constraint"),
    ("depthwise_kernel", "depthwise_constraint"),
)


def _walk_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model) or (
            hasattr(layer, "layers") and not _prunable_attr(layer)
        ):
            yield from _walk_layers(layer)
        else:
            yield layer


def _prunable_attr(layer):
    if getattr(layer, "lora_enabled", False):
        return None
    if getattr(layer, "quantization_mode", None):
        return None
    for weight_attr, constraint_attr in _PRUNABLE_ATTRS:
        if not hasattr(layer, constraint_attr):
            continue
        try:
            weight = getattr(layer, weight_attr, None)
        except Exception:  # an unbuilt layer's property may raise
            weight = None
        if isinstance(weight, keras.Variable) and len(weight.shape) >= 2:
            return weight_attr, constraint_attr
    return None


def prunable_layers(model):
    """The layers whose kernel can be masked, by name.

    A layer qualifies when it has a built kernel of rank >= 2 with a matching
    constraint attribute: `Dense`, `EinsumDense`, `Conv1D/2D/3D`, the
    transposed convolutions (`kernel`), `DepthwiseConv2D` (`depthwise_kernel`).
    Nested models are searched too.

    Args:
        model: a built Keras model.

    Returns:
        A dict `{layer_name: (layer, weight_attr, constraint_attr)}` in layer
        order.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> list(prunable_layers(model).values())[0][1]
    'kernel'
    """
    out = {}
    for layer in _walk_layers(model):
        attrs = _prunable_attr(layer)
        if attrs is None:
            continue
        if layer.name in out:
            raise ValueError(
                f"Two prunable layers are named '{layer.name}'; rename one. "
                f"Received: model={model.name}"
            )
        out[layer.name] = (layer, *attrs)
    return out


def attach_masks(model, layer_names):
    """Give each named layer a `KeepMask` kernel constraint (mutates `model`).

    A layer that already has a `KeepMask` keeps it (and its mask). Otherwise
    the layer's existing constraint is wrapped, and the mask starts as
    `kernel != 0`: all ones for a dense kernel, the old mask for a kernel
    restored from a pruned checkpoint.

    Args:
        model: a built Keras model (the one being trained).
        layer_names: names of layers from `prunable_layers(model)`.

    Returns:
        `(masks, changed)`: a dict `{name: KeepMask}` and whether any new
        constraint was attached (a traced train function must then be rebuilt).

    Example:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> masks, changed = attach_masks(model, [model.layers[0].name])
    >>> changed
    True
    """
    layers = prunable_layers(model)
    out = {}
    changed = False
    for name in layer_names:
        if name not in layers:
            raise ValueError(
                f"Layer '{name}' has no prunable kernel (Dense, Conv, "
                f"DepthwiseConv, EinsumDense). Prunable layers: "
                f"{sorted(layers)}. Received: layer_names={list(layer_names)}"
            )
        layer, weight_attr, constraint_attr = layers[name]
        weight = getattr(layer, weight_attr)
        current = getattr(layer, constraint_attr, None)
        if isinstance(current, KeepMask):
            keep = current
        else:
            keep = KeepMask(inner=current)
            setattr(layer, constraint_attr, keep)
            changed = True
        if keep.mask is None:
            keep.set_mask(ops.cast(ops.not_equal(weight, 0), weight.dtype))
            changed = True
        if weight.constraint is not keep:
            weight.constraint = keep
            changed = True
        out[name] = keep
    return out, changed


def get_masks(model):
    """The masks currently attached to a model.

    Args:
        model: a Keras model.

    Returns:
        A dict `{layer_name: numpy 0/1 array}` for every layer with a
        `KeepMask` that holds a mask.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> get_masks(model)
    {}
    """
    out = {}
    for name, (layer, _, constraint_attr) in prunable_layers(model).items():
        keep = getattr(layer, constraint_attr, None)
        if isinstance(keep, KeepMask) and keep.mask is not None:
            out[name] = ops.convert_to_numpy(keep.mask)
    return out


def _strip_config(config):
    for key, value in list(config.items()):
        if (
            isinstance(value, dict)
            and value.get("class_name") in ("KeepMask", "kprune>KeepMask")
        ) or (
            isinstance(value, dict)
            and value.get("registered_name") == "kprune>KeepMask"
        ):
            config[key] = value.get("config", {}).get("inner")
    return config


def strip_pruning(model):
    """A copy of `model` without `KeepMask` constraints (the input is untouched).

    The wrapped constraints come back; weights are copied, so pruned weights
    stay exactly zero. Use it before surgery or export, like TFMOT's
    `strip_pruning`. Sequential and Functional models only.

    Args:
        model: a Keras model, possibly trained with `MagnitudePruning`.

    Returns:
        A new `keras.Model`.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> _ = attach_masks(model, [model.layers[0].name])
    >>> get_masks(strip_pruning(model))
    {}
    """

    def clone(layer):
        if isinstance(layer, keras.Model):
            return strip_pruning(layer)
        config = _strip_config(layer.get_config())
        return layer.__class__.from_config(config)

    try:
        new = clone_model(model, clone_function=clone)
    except ValueError as e:
        raise ValueError(
            "strip_pruning supports Sequential and Functional models "
            f"({e}). Received: model={model.__class__.__name__}"
        ) from e
    new.set_weights(model.get_weights())
    return new
