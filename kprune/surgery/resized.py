"""`Resized`: a composite layer whose parts were resized beyond its arguments.

When a composite layer's constructor cannot express a change (one attention
head less in a KerasHub `TransformerEncoder`, whose `key_dim` is
`hidden_dim // num_heads`; fewer expansion filters in an `MBConvBlock`,
whose expansion width is `input_filters * expand_ratio`), the rebuilder
keeps the layer's own class and code and swaps the changed sublayers for
smaller ones. `Resized` holds such a layer so that it saves and loads: its
config is the layer's own config, the configs of the swapped sublayers, and
how the layer is called; loading builds the layer, swaps the sublayers again
and loads the weights.
"""

import json

import keras

from kprune.surgery.graph import Slot
from kprune.surgery.tracing.trace import (
    call_kwargs,
    none_outputs_recorded,
    standin_shape,
)

_SLOT = "__kprune_slot__"


def call_spec(arguments, inputs, input_shapes, strict=True):
    """A JSON-able description of one call: input specs, args and kwargs.

    Args:
        arguments: `(args, kwargs)` with `Slot`s for tensors (or None).
        inputs: the call's input `TensorInfo`s (their shapes are the shapes
            the layer was built on; their dtypes are kept).
        input_shapes: the new input shapes.
        strict: refuse arguments that are neither tensors nor JSON values
            (the spec is to be saved); otherwise keep them as they are.

    Raises:
        ValueError: `strict` and an argument is not a tensor nor a JSON value.
    """
    if arguments is None:
        slots = [Slot(i) for i in range(len(inputs))]
        arguments = ([slots] if len(slots) > 1 else slots, {})

    def encode(value):
        if isinstance(value, Slot):
            return {_SLOT: value.index}
        if isinstance(value, dict):
            return {str(k): encode(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [encode(v) for v in value]
        if strict:
            json.dumps(value)  # raises TypeError for anything else
        return value

    kwargs = {k: v for k, v in arguments[1].items() if k != "training"}
    try:
        args, kwargs = encode(list(arguments[0])), encode(kwargs)
    except TypeError as error:
        raise ValueError(f"an argument of the call cannot be saved ({error})") from None
    specs = [
        [list(shape), str(getattr(t.dtype, "name", t.dtype))]
        for shape, t in zip(input_shapes, inputs)
    ]
    built = [[list(t.shape), str(getattr(t.dtype, "name", t.dtype))] for t in inputs]
    return {"inputs": specs, "built_on": built, "args": args, "kwargs": kwargs}


def _decode(value, tensors):
    if isinstance(value, dict):
        if set(value) == {_SLOT}:
            return tensors[value[_SLOT]]
        return {k: _decode(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    return value


def call_symbolically(layer, spec):
    """Call `layer` on fresh `keras.Input`s as described by `spec`.

    Unknown sizes stay unknown; if the layer needs concrete shapes, stand-in
    sizes are used (as when it was traced).
    """
    error = None
    for concrete in (False, True):
        tensors = [
            keras.Input(
                batch_shape=standin_shape(shape) if concrete else tuple(shape),
                dtype=dtype,
            )
            for shape, dtype in spec["inputs"]
        ]
        args = _decode(spec["args"], tensors)
        kwargs = call_kwargs(layer, _decode(spec["kwargs"], tensors))
        try:
            with none_outputs_recorded():
                return layer(*args, **kwargs)
        except Exception as caught:  # noqa: BLE001 - retried with stand-ins
            error = caught
    raise error


def call_eagerly(layer, spec):
    """Call `layer` once on sample values shaped as in `spec`."""
    from kprune.surgery.tracing.verify import sample_values

    shapes = [tuple(shape) for shape, _ in spec["inputs"]]
    values = sample_values(shapes, [dtype for _, dtype in spec["inputs"]])
    args = _decode(spec["args"], values)
    kwargs = call_kwargs(layer, _decode(spec["kwargs"], values))
    return layer(*args, **kwargs)


def get_sublayer(obj, path):
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


def replace_sublayer(layer, path, new):
    """Put `new` where `path` (e.g. `"_feedforward_dense"`, `"_blocks.2"`)
    holds a sublayer of the built `layer`, keeping the tracking order."""
    *parents, last = path.split(".")
    owner = get_sublayer(layer, ".".join(parents)) if parents else layer
    old = owner[int(last)] if last.isdigit() else getattr(owner, last)
    tracked = layer._layers
    index = next((i for i, x in enumerate(tracked) if x is old), None)
    tracker = layer._tracker
    locked = tracker.locked
    tracker.unlock()
    try:
        tracker.untrack(old)
        if last.isdigit():
            owner[int(last)] = new
            if index is not None and all(x is not new for x in tracked):
                tracked.append(new)
                tracker.stored_ids["layers"].add(id(new))
        else:
            setattr(owner, last, new)
    finally:
        if locked:
            tracker.lock()
    if index is not None:
        position = next(i for i, x in enumerate(tracked) if x is new)
        tracked.insert(index, tracked.pop(position))


def apply_swap(layer, record):
    """Swap sublayers of a built `layer` as a swap record says, then build.

    Args:
        layer: a built layer (of the original widths).
        record: `{"swap": {attribute path: serialized sublayer or a nested
            swap record}, "call": call_spec}`.
    """
    for path, sub in record["swap"].items():
        if isinstance(sub, dict) and "swap" in sub:
            apply_swap(get_sublayer(layer, path), sub)
        else:
            sublayer = keras.saving.deserialize_keras_object(_unbuilt(sub))
            replace_sublayer(layer, path, sublayer)
    for name, value in record.get("attributes", {}).items():
        object.__setattr__(layer, name, value)
    call_eagerly(layer, record["call"])


def sublayer_paths(layer):
    """Attribute path of each direct sublayer of `layer` (by identity)."""
    found = {}
    # On the PyTorch backend a layer is a `torch.nn.Module`, which keeps
    # sublayers set as attributes in `_modules` rather than in `__dict__`.
    attributes = dict(vars(layer).get("_modules") or {})
    attributes.update(vars(layer))
    for name, value in attributes.items():
        if name in ("_layers", "_tracker") or name.startswith("__"):
            continue
        if isinstance(value, keras.layers.Layer):
            found.setdefault(id(value), name)
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                if isinstance(item, keras.layers.Layer):
                    found.setdefault(id(item), f"{name}.{i}")
    return found


@keras.saving.register_keras_serializable(package="kprune")
class Resized(keras.layers.Layer):
    """A layer of its own class whose sublayers were resized beyond its config.

    `y = layer(x)` with some of `layer`'s sublayers replaced by smaller
    ones: the layer's own `call` runs unchanged. Made by
    `kprune.surgery.remove_units` / `slim` when a composite layer's
    constructor cannot express the new widths; it saves to `.keras` and
    loads like any layer (after `import kprune`).

    Args:
        layer: the composite layer's serialized config
            (`keras.saving.serialize_keras_object`).
        sublayers: dict attribute path -> serialized config of the sublayer
            that replaces the one built there.
        call: how the layer is called (`call_spec`), to build it.
        attributes: attributes of the layer to set after the swap (head
            counts its `call` reshapes with).
        **kwargs: base layer arguments (`name`, ...).

    Example:

    >>> import keras
    >>> inner = keras.layers.Dense(4)
    >>> spec = {"inputs": [[None, 3], "float32"], "args": [{"__kprune_slot__": 0}],
    ...         "kwargs": {}}
    >>> layer = Resized(keras.saving.serialize_keras_object(inner), {}, spec)
    >>> tuple(layer.layer.kernel.shape)
    (3, 4)
    """

    def __init__(self, layer, sublayers, call, attributes=None, **kwargs):
        super().__init__(**kwargs)
        self._layer_config = layer
        self._sublayer_configs = dict(sublayers)
        self._call_spec = call
        self._attributes = dict(attributes or {})
        inner = keras.saving.deserialize_keras_object(_unbuilt(layer))
        # Built as it was (its own sublayers at their old widths), then the
        # changed sublayers are swapped and built by a call at the new widths.
        call_symbolically(
            inner, dict(call, inputs=call.get("built_on", call["inputs"]))
        )
        for path, config in self._sublayer_configs.items():
            replace_sublayer(
                inner, path, keras.saving.deserialize_keras_object(_unbuilt(config))
            )
        for name, value in self._attributes.items():
            object.__setattr__(inner, name, value)
        if self._sublayer_configs:
            call_eagerly(inner, call)  # a symbolic call builds no new sublayer
        self.layer = inner
        self.built = True

    def call(self, *args, **kwargs):
        return self.layer(*args, **kwargs)

    def compute_output_spec(self, *args, **kwargs):
        try:
            return self.layer.compute_output_spec(*args, **kwargs)
        except Exception:  # noqa: BLE001 - its shape rule may not know the swap
            # (a `compute_output_shape` written for its old sublayers): run it.
            return super().compute_output_spec(*args, **kwargs)

    def compute_output_shape(self, input_shape):
        try:
            return self.layer.compute_output_shape(input_shape)
        except Exception:  # noqa: BLE001 - its shape rule may not know the swap
            is_shape = isinstance(input_shape, (tuple, list)) and all(
                d is None or isinstance(d, int) for d in input_shape
            )
            shapes = [input_shape] if is_shape else list(input_shape)
            specs = [keras.KerasTensor(tuple(shape)) for shape in shapes]
            out = self.compute_output_spec(*specs[:1] if is_shape else [specs])
            return keras.tree.map_structure(lambda t: tuple(t.shape), out)

    def get_config(self):
        return {
            **super().get_config(),
            "layer": self._layer_config,
            "sublayers": self._sublayer_configs,
            "call": self._call_spec,
            "attributes": self._attributes,
        }


def _unbuilt(config):
    config = dict(config)
    config.pop("build_config", None)
    config.pop("compile_config", None)
    return config
