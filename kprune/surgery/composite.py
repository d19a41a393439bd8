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

from kprune.surgery.errors import SurgeryError
from kprune.surgery.graph import fill_slots
from kprune.surgery.tracing.trace import call_kwargs, standin_shape

MAX_CANDIDATES = 64


class CompositeRebuildError(SurgeryError):
    """A composite layer's constructor cannot express the requested change."""


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
            layer(*call_args, **call_kwargs(layer, call_kw))
            return
        except Exception as error:  # noqa: BLE001 - tried again, then reported
            last = error
    raise CompositeRebuildError(
        f"layer '{call.path}' ({type(layer).__name__}) could not be built on "
        f"its new input shapes: {type(last).__name__}: {last}"
    )


def rebuild_composite(call, new_values, config_pairs, replaced, channels, input_shapes):
    """A new layer of the composite's class, with sliced weights.

    Args:
        call: the `CompositeCall` (its first call, if the layer is shared).
        new_values: dict id(old variable) -> new NumPy value, for every
            variable of a sublayer that changed.
        config_pairs: `(old, new)` widths of the sublayers that changed
            (config entries such as `units`, `num_heads`).
        replaced: `(old sublayer, serialized new sublayer)` for each direct
            sublayer that changed, used when no config of the class fits.
        channels: the `ChannelSets` of the call's inputs and outputs.
        input_shapes: the new shapes of the call's inputs.

    Returns:
        The new, built layer with its weights set: of the layer's own class
        when a config expresses the change, else a `Resized` wrapping it.

    Raises:
        CompositeRebuildError: neither works.
    """
    layer = call.layer
    config = _config_of(call)
    pairs = list(config_pairs)
    for tensor, shape in zip(call.inputs, input_shapes):
        if tensor.channels:
            pairs.append((tensor.channels, shape[-1]))
    changes = _width_changes(pairs)
    tried = []
    for edited, edits in candidate_configs(config, changes):
        try:
            new = type(layer).from_config(edited)
            build_like(new, call, input_shapes)
            new.set_weights(assemble(layer, new, new_values, channels))
        except Exception:  # noqa: BLE001 - this candidate does not fit
            tried.append(edits)
            continue
        return new
    return _swap_sublayers(call, replaced, new_values, channels, input_shapes, tried)


def assemble(old, new, new_values, channels):
    """The values for `new.weights`, paired by position with `old.weights`.

    A variable of a changed sublayer takes its value from `new_values`; any
    other keeps its value, sliced on the axes whose size changed.
    """
    old_weights, new_weights = list(old.weights), list(new.weights)
    if len(old_weights) != len(new_weights):
        raise CompositeRebuildError(
            f"{len(new_weights)} weights instead of {len(old_weights)}"
        )
    values = []
    for variable, fresh in zip(old_weights, new_weights):
        value = new_values.get(id(variable))
        if value is None:
            value = keras.ops.convert_to_numpy(variable.value)
            value = slice_to(value, fresh.shape, channels, variable.path)
        if tuple(value.shape) != tuple(fresh.shape):
            raise CompositeRebuildError(
                f"{variable.path}: shape {value.shape}, new {fresh.shape}"
            )
        values.append(value)
    return values


def _config_of(call):
    try:
        return call.layer.get_config()
    except Exception as error:  # noqa: BLE001 - a layer's own get_config bug
        raise CompositeRebuildError(
            f"layer '{call.path}' ({type(call.layer).__name__}) cannot be "
            f"rebuilt: its get_config() fails ({type(error).__name__}: {error})"
        ) from None


def _swap_sublayers(call, replaced, new_values, channels, input_shapes, tried):
    """A `Resized` layer: the original config with changed sublayers swapped."""
    from kprune.surgery.resized import Resized, call_spec, sublayer_paths

    layer = call.layer
    paths = sublayer_paths(layer)
    sublayers = {}
    for child, serialized in replaced:
        path = paths.get(id(child))
        if path is None:
            raise CompositeRebuildError(
                f"layer '{call.path}' ({type(layer).__name__}) cannot express "
                f"its new widths through its constructor (tried {tried[:4]}), "
                f"and its sublayer '{child.name}' is not held in an attribute "
                "kprune can swap. Register a handler for its class."
            )
        sublayers[path] = serialized
    try:
        spec = call_spec(call.arguments, call.inputs, input_shapes)
        original = keras.saving.serialize_keras_object(layer)
        new = Resized(original, sublayers, spec, name=layer.name)
        new.set_weights(assemble(layer, new.layer, new_values, channels))
    except Exception as error:  # noqa: BLE001 - reported with the layer's name
        raise CompositeRebuildError(
            f"layer '{call.path}' ({type(layer).__name__}) cannot express its "
            f"new widths through its constructor (tried {tried[:4]}), and "
            f"swapping its changed sublayers failed: {type(error).__name__}: "
            f"{error}. Remove units its arguments can express, or register a "
            "handler for its class."
        ) from None
    return new


def _describe(changes):
    return ", ".join(
        f"{old} -> {'/'.join(map(str, sorted(new)))}" for old, new in changes.items()
    )
