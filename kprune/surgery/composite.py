"""Rebuild a composite layer whose parts lost channels, keeping its class.

A traced composite layer (see `kprune.surgery.tracing`) is rebuilt from its
own class: `type(layer).from_config(config)` with the constructor arguments
that express the change (`intermediate_dim`, `num_heads`, `filters`, ...),
built on the new input shapes, then given the old weights sliced to the new
shapes. Which arguments to change is found, not declared: the candidates
are the config entries whose value equals a width that changed (a sublayer's
`units` 64 -> 48, an input's 32 channels -> 24); each candidate config is
built and accepted only when every weight of the new layer has exactly the
shape the sliced weights have. So a change the constructor cannot express
(one attention head less where `head_dim = hidden_dim // num_heads`) is
never forced into a wrong config: `rebuild_composite` raises
`CompositeRebuildError` naming the layer and the widths it could not set.

The layer's own weights (not in a sublayer: a class token, a norm scale, a
position table) are sliced on each axis whose size changed, by the removed
channels of the input or output tensor of that size.
"""

import itertools

import keras
import numpy as np

from kprune.surgery.copying import copy_layer, forget_calls
from kprune.surgery.errors import SurgeryError
from kprune.surgery.graph import fill_slots
from kprune.surgery.tracing.trace import (
    call_kwargs,
    none_outputs_recorded,
    standin_shape,
)

MAX_CANDIDATES = 64


class CompositeRebuildError(SurgeryError):
    """A composite layer's constructor cannot express the requested change.

    Attributes:
        layer: the layer that could not be rebuilt (set by
            `rebuild_composite`; None when unknown).
    """

    layer = None


class ChannelSets:
    """The removed channels of a call's inputs and outputs, by width.

    Args:
        sizes_and_removed: `(width, removed indices)` pairs.
    """

    def __init__(self, sizes_and_removed):
        self.by_size = {}
        for size, removed in sizes_and_removed:
            if not size or not len(removed):
                continue
            key = (int(size), int(size) - len(removed))
            self.by_size.setdefault(key, [])
            kept = np.setdiff1d(np.arange(size), removed)
            if not any(np.array_equal(kept, k) for k in self.by_size[key]):
                self.by_size[key].append(kept)

    def kept(self, old, new):
        """The kept indices for an axis going from `old` to `new` entries."""
        found = self.by_size.get((int(old), int(new)), [])
        return found[0] if len(found) == 1 else None


def slice_to(value, shape, channels, what):
    """Slice `value` down to `shape`, axis by axis, by the matching channels."""
    if tuple(value.shape) == tuple(shape):
        return value
    if len(value.shape) != len(shape):
        raise CompositeRebuildError(f"{what}: rank changed")
    for axis, (old, new) in enumerate(zip(value.shape, shape)):
        if old == new:
            continue
        kept = channels.kept(old, new)
        if kept is None:
            raise CompositeRebuildError(
                f"{what}: no removed channel set takes axis {axis} from {old} to {new}"
            )
        value = np.take(value, kept, axis=axis)
    return value


def int_pairs(old_config, new_config):
    """`(old, new)` for the int config entries (or int list items) that differ."""
    pairs = []
    for key, value in new_config.items():
        old = old_config.get(key)
        if isinstance(value, (list, tuple)) and isinstance(old, (list, tuple)):
            pairs += [
                (a, b)
                for a, b in zip(old, value)
                if isinstance(a, int) and isinstance(b, int) and a != b
            ]
        elif (
            isinstance(value, int)
            and not isinstance(value, bool)
            and isinstance(old, int)
            and old != value
        ):
            pairs.append((old, value))
    return pairs


class Replacement:
    """A direct sublayer of a composite that changed shape, and its new form.

    Attributes:
        old: the original sublayer.
        pairs: `(old, new)` widths from its config.
        make: zero-argument function giving the new sublayer (unbuilt for a
            leaf, built with its weights for a rebuilt composite).
        serialized: function giving its serialized config (for `Resized`).
    """

    def __init__(self, old, pairs, make, serialized):
        self.old = old
        self.pairs = pairs
        self.make = make
        self.serialized = serialized

    @classmethod
    def of_leaf(cls, layer, config, weights):
        """None when neither the config nor a weight shape changed."""
        try:
            old_config = layer.get_config()
        except Exception:  # noqa: BLE001 - a layer's own get_config bug
            old_config = None
        if isinstance(weights, dict):
            shapes_same = set(weights) == {w.name for w in layer.weights} and all(
                tuple(w.shape) == tuple(np.shape(weights[w.name]))
                for w in layer.weights
            )
        else:
            shapes_same = len(weights) == len(layer.weights) and all(
                tuple(w.shape) == tuple(np.shape(v))
                for w, v in zip(layer.weights, weights)
            )
        if old_config == config and shapes_same:
            return None

        def serialized():
            data = keras.saving.serialize_keras_object(layer)
            data["config"] = config
            data.pop("build_config", None)  # the old layer's input shape
            return data

        return cls(
            layer,
            int_pairs(old_config or {}, config),
            lambda: type(layer).from_config(config),
            serialized,
        )

    @classmethod
    def of_composite(cls, layer, new):
        try:
            pairs = int_pairs(layer.get_config(), new.get_config())
        except Exception:  # noqa: BLE001
            pairs = []

        def serialized():
            swap = getattr(new, "_kprune_swap", None)
            if swap is not None:
                if "unsaveable" in swap:
                    raise CompositeRebuildError(swap["unsaveable"])
                return swap
            return keras.saving.serialize_keras_object(new)

        return cls(layer, pairs, lambda: new, serialized)


def _int_entries(config):
    return {
        k: v
        for k, v in config.items()
        if isinstance(v, int) and not isinstance(v, bool) and v > 0
    }


def _width_changes(pairs):
    """`{old: {new, ...}}` from `(old, new)` int pairs that differ."""
    changes = {}
    for old, new in pairs:
        if old != new:
            changes.setdefault(int(old), set()).add(int(new))
    return changes


def candidate_configs(config, changes):
    """Configs with some entries set to new widths, fewest edits first.

    Args:
        config: the layer's config.
        changes: `{old_width: {new_width, ...}}`.

    Yields:
        `(edited_config, edits)` with `edits` a dict key -> new value; the
        unedited config comes first.
    """
    entries = [
        (key, new)
        for key, value in _int_entries(config).items()
        for new in sorted(changes.get(value, ()))
    ]
    count = 0
    for size in range(len(entries) + 1):
        for chosen in itertools.combinations(entries, size):
            keys = [k for k, _ in chosen]
            if len(set(keys)) != len(keys):
                continue
            edited = dict(config)
            edited.update(dict(chosen))
            yield edited, dict(chosen)
            count += 1
            if count >= MAX_CANDIDATES:
                return


def build_like(layer, call, input_shapes):
    """Build a fresh layer by calling it symbolically like `call` was."""
    args, kwargs = call.arguments if call.arguments is not None else (None, {})
    last = None
    for concrete in (False, True):
        shapes = [standin_shape(s) if concrete else s for s in input_shapes]
        symbolic = [
            keras.Input(batch_shape=shape, dtype=t.dtype)
            for shape, t in zip(shapes, call.inputs)
        ]
        if args is None:
            call_args = [symbolic] if len(symbolic) > 1 else symbolic
            call_kw = {}
        else:
            call_args = fill_slots(list(args), symbolic)
            call_kw = fill_slots(dict(kwargs), symbolic)
        try:
            with none_outputs_recorded():
                layer(*call_args, **call_kwargs(layer, call_kw))
            return
        except Exception as error:  # noqa: BLE001 - tried again, then reported
            last = error
    raise CompositeRebuildError(
        f"layer '{call.path}' ({type(layer).__name__}) could not be built on "
        f"its new input shapes: {type(last).__name__}: {last}"
    )


def rebuild_composite(
    call, new_values, config_pairs, replaced, channels, input_shapes, attributes=None
):
    """A new layer of the composite's class, with sliced weights.

    Args:
        call: the `CompositeCall` (its first call, if the layer is shared).
        new_values: dict id(old sublayer) -> its new weights (a dict by
            weight name or a list in its new order), for every sublayer
            whose weights changed.
        config_pairs: `(old, new)` widths of the sublayers that changed
            (config entries such as `units`, `num_heads`).
        replaced: a `Replacement` for each direct sublayer that changed
            shape, used when no config of the class fits.
        channels: the `ChannelSets` of the call's inputs and outputs.
        input_shapes: the new shapes of the call's inputs.
        attributes: attributes to set on a layer rebuilt by swapping its
            sublayers (head counts its `call` reshapes with): a dict, or a
            list of dicts tried in turn.

    Returns:
        The new, built layer with its weights set: of the layer's own class
        when a config expresses the change; else a `Resized` holding the
        layer with the changed sublayers swapped; else (the class cannot be
        rebuilt from its config at all) a copy of the layer with the
        sublayers swapped, which works but refuses to be saved.

    Raises:
        CompositeRebuildError: none of these works.
    """
    layer = call.layer
    config, config_error = _config_of(call)
    pairs = list(config_pairs)
    for tensor, shape in zip(call.inputs, input_shapes):
        if tensor.channels:
            pairs.append((tensor.channels, shape[-1]))
    changes = _width_changes(pairs)
    tried = []
    candidates = candidate_configs(config, changes) if config is not None else ()
    for edited, edits in candidates:
        try:
            new = _named_like(type(layer).from_config(edited), layer)
            build_like(new, call, input_shapes)
            new.set_weights(assemble(layer, new, new_values, channels))
        except Exception:  # noqa: BLE001 - this candidate does not fit
            tried.append(edits)
            continue
        forget_calls(new)
        return new
    try:
        return _swap_sublayers(
            call,
            replaced,
            new_values,
            channels,
            input_shapes,
            tried,
            config_error,
            attributes or {},
        )
    except CompositeRebuildError as error:
        error.layer = layer
        raise


def _named_like(new, layer):
    """Keep the layer's name (some classes' `from_config` renames them)."""
    if new.name != layer.name:
        new.name = layer.name
    return new


def assemble(old, new, new_values, channels):
    """The values for `new.weights`, walking `old` and `new` side by side.

    `new` has the structure of `old` (same class; sublayers in the same
    order). A sublayer in `new_values` (id of the old sublayer -> its new
    weights, a dict by weight name or a list in the new sublayer's order)
    takes those; every other variable keeps its value, sliced on the axes
    whose size changed.
    """
    values = []
    seen = set()
    _assemble(old, new, new_values, channels, values, seen)
    if len(values) != len(new.weights):
        raise CompositeRebuildError(
            f"{len(values)} values for the {len(new.weights)} weights of the new "
            f"'{new.name}'"
        )
    return values


def _own(layer):
    found, ids = [], set()
    for v in layer._trainable_variables + layer._non_trainable_variables:
        if id(v) not in ids:
            found.append(v)
            ids.add(id(v))
    return found


def _assemble(old, new, new_values, channels, values, seen):
    own_old, own_new = _own(old), _own(new)
    if len(own_old) != len(own_new):
        raise CompositeRebuildError(
            f"'{old.name}' has {len(own_old)} own weights, the new one {len(own_new)}"
        )
    for variable, fresh in zip(own_old, own_new):
        if id(variable) in seen:
            continue
        seen.add(id(variable))
        value = keras.ops.convert_to_numpy(variable.value)
        values.append(slice_to(value, fresh.shape, channels, variable.path))
    if len(old._layers) != len(new._layers):
        raise CompositeRebuildError(
            f"'{old.name}' has {len(old._layers)} sublayers, the new one "
            f"{len(new._layers)}"
        )
    for child_old, child_new in zip(old._layers, new._layers):
        given = new_values.get(id(child_old))
        if child_old.weights and all(id(w) in seen for w in child_old.weights):
            continue  # reached a second time (held in a list and a Sequential)
        if given is None:
            _assemble(child_old, child_new, new_values, channels, values, seen)
            continue
        if isinstance(given, dict):
            names = [w.name for w in child_new.weights]
            if sorted(given) != sorted(names):
                raise CompositeRebuildError(
                    f"'{child_new.name}' has weights {names}, the resized one "
                    f"{sorted(given)}"
                )
            given = [given[name] for name in names]
        for fresh, value in zip(child_new.weights, given):
            if tuple(np.shape(value)) != tuple(fresh.shape):
                raise CompositeRebuildError(
                    f"{fresh.path}: shape {np.shape(value)}, new {tuple(fresh.shape)}"
                )
        if len(given) != len(child_new.weights):
            raise CompositeRebuildError(
                f"'{child_new.name}': {len(given)} values for "
                f"{len(child_new.weights)} weights"
            )
        seen.update(id(w) for w in child_old.weights)
        values.extend(np.asarray(v) for v in given)


def _config_of(call):
    """`(config, None)`, or `(None, reason)` when `get_config()` raises."""
    try:
        return call.layer.get_config(), None
    except Exception as error:  # noqa: BLE001 - a layer's own get_config bug
        first = next((line for line in str(error).splitlines() if line.strip()), "")
        return None, f"its get_config() fails ({type(error).__name__}: {first})"


def _swap_sublayers(
    call,
    replaced,
    new_values,
    channels,
    input_shapes,
    tried,
    config_error=None,
    attributes=None,
):
    """A `Resized` layer, or a copy with swapped sublayers (unsaveable)."""
    from kprune.surgery.resized import (
        sublayer_paths,
    )

    layer = call.layer
    paths = sublayer_paths(layer)
    made_in_call = [r for r in replaced if id(r.old) not in paths]
    replaced = [r for r in replaced if id(r.old) in paths]
    # A sublayer made inside `call` (KerasHub's MBConv builds its
    # squeeze-and-excite `Reshape` from `self.filters` there) is made anew at
    # the new width when the attribute it is made from changes: each
    # attribute that holds the old width is tried.
    if not isinstance(attributes, (list, tuple)):
        attributes = [attributes]
    options = []
    for base in attributes:
        for option in _width_attribute_options(layer, made_in_call, dict(base or {})):
            if option not in options:
                options.append(option)
    if not options:
        raise CompositeRebuildError(
            f"layer '{call.path}' ({type(layer).__name__}) cannot express "
            f"its new widths through its constructor (tried {tried[:4]}), "
            f"and its sublayer '{made_in_call[0].old.name}' is not held in an "
            "attribute kprune can swap. Register a handler for its class."
        )
    errors = []
    for option in options:
        try:
            return _swap_with(
                call,
                layer,
                paths,
                replaced,
                new_values,
                channels,
                input_shapes,
                config_error,
                option,
                tried,
            )
        except CompositeRebuildError as error:
            errors.append(str(error))
    raise CompositeRebuildError(errors[0])


def int_attributes(layer, value):
    """Names of the layer's public int attributes equal to `value`."""
    return [
        name
        for name, held in vars(layer).items()
        if not name.startswith("_")
        and isinstance(held, int)
        and not isinstance(held, bool)
        and held == value
    ]


def _width_attribute_options(layer, made_in_call, attributes):
    """Attribute settings to try: `[attributes]`, or one per candidate."""
    options = [attributes]
    config_keys = set()
    try:
        config_keys = set(layer.get_config())
    except Exception:  # noqa: BLE001 - a layer's own get_config bug
        pass
    for replacement in made_in_call:
        grown = []
        for old, new in replacement.pairs:
            if old == new:
                continue
            names = int_attributes(layer, old)
            # Attributes derived in __init__ first: the config route already
            # tried the constructor's own arguments.
            names.sort(key=lambda name: name in config_keys)
            grown += [
                dict(option, **{name: int(new)}) for option in options for name in names
            ]
        options = grown[:8]
        if not options:
            return []
    return options


def _swap_with(
    call,
    layer,
    paths,
    replaced,
    new_values,
    channels,
    input_shapes,
    config_error,
    attributes,
    tried,
):
    """`_swap_sublayers` with one setting of the attributes."""
    from kprune.surgery.resized import (
        Resized,
        call_eagerly,
        call_spec,
        call_symbolically,
        replace_sublayer,
    )

    errors = [config_error] if config_error else []
    try:
        if config_error:
            raise CompositeRebuildError(config_error)
        spec = call_spec(call.arguments, call.inputs, input_shapes)
        sublayers = {paths[id(r.old)]: r.serialized() for r in replaced}
        original = keras.saving.serialize_keras_object(layer)
        new = Resized(original, sublayers, spec, attributes, name=layer.name)
        new.set_weights(assemble(layer, new.layer, new_values, channels))
        forget_calls(new)
        return new
    except Exception as error:  # noqa: BLE001 - next: swap in a copy
        if not config_error:
            errors.append(f"{type(error).__name__}: {error}")
    spec = call_spec(call.arguments, call.inputs, input_shapes, strict=False)
    try:
        new = copy_layer(layer)
        if not new.built:
            call_symbolically(new, dict(spec, inputs=spec["built_on"]))
        for replacement in replaced:
            replace_sublayer(new, paths[id(replacement.old)], replacement.make())
        for name, value in attributes.items():
            object.__setattr__(new, name, value)
        call_eagerly(new, spec)
        new.set_weights(assemble(layer, new, new_values, channels))
        new.get_config = _unsaveable(call.path, type(layer).__name__, errors[0])
        try:
            new._kprune_swap = {
                "swap": {paths[id(r.old)]: r.serialized() for r in replaced},
                "call": call_spec(call.arguments, call.inputs, input_shapes),
                "attributes": dict(attributes),
            }
        except Exception as error:  # noqa: BLE001 - noted, raised when saving
            new._kprune_swap = {"unsaveable": f"{type(error).__name__}: {error}"}
        forget_calls(new)
        return new
    except Exception as error:  # noqa: BLE001 - reported with the layer's name
        errors.append(f"{type(error).__name__}: {error}")
    raise CompositeRebuildError(
        f"layer '{call.path}' ({type(layer).__name__}) cannot express its new "
        f"widths through its constructor (tried {tried[:4]}), and swapping its "
        f"changed sublayers failed ({'; then '.join(errors)}). Remove units "
        "its arguments can express, or register a handler for its class."
    )


def _unsaveable(path, class_name, reason):
    def get_config():
        raise CompositeRebuildError(
            f"Layer '{path}' ({class_name}) was resized beyond what its "
            "constructor can express and its class cannot be rebuilt from its "
            f"config ({reason[:200]}), so the model cannot be saved to .keras; "
            "it runs, exports to TFLite and saves its weights "
            "(model.save_weights) as usual."
        )

    return get_config


def _describe(changes):
    return ", ".join(
        f"{old} -> {'/'.join(map(str, sorted(new)))}" for old, new in changes.items()
    )
