"""Build the smaller model: `remove_units` and `slim`."""

import keras
import numpy as np

from kprune.surgery.analysis import ChannelAnalysis
from kprune.surgery.compiling import clone_model, compile_like
from kprune.surgery.composite import (
    ChannelSets,
    CompositeRebuildError,
    Replacement,
    int_attributes,
    rebuild_composite,
)
from kprune.surgery.copying import carry_keep_mask, copy_layer
from kprune.surgery.dead import dead_plan
from kprune.surgery.depth import drop_blocks
from kprune.surgery.errors import SurgeryError
from kprune.surgery.graph import CompositeCall
from kprune.surgery.handlers import LayerChange, get_handler
from kprune.surgery.handlers.base import SublayerChanges, cached_configs
from kprune.surgery.heads_check import check_heads_removed
from kprune.surgery.inputs import drop_input_features
from kprune.surgery.layouts import check_layouts
from kprune.surgery.plan import PruningPlan, build_plan, removed_groups
from kprune.surgery.pruned_model import (
    PrunedModel,
    input_tensors,
    needs_plan_format,
    record_of,
)
from kprune.surgery.tracing.heads import slice_kernel_axes


def plan_removal(model, units, allow_empty=False):
    """Expand a `{layer: indices}` request over coupled channels.

    Args:
        model: a Functional or Sequential `keras.Model`.
        units: dict layer path -> unit indices, or a `PruningPlan`.
        allow_empty: allow a request that empties a layer (one unit is then
            kept, since Keras layers cannot be zero-width).

    Returns:
        A `PruningPlan` naming every unit that leaves, coupled ones included.
    """
    analysis = ChannelAnalysis(model)
    return _plan(analysis, units, allow_empty)


def _plan(analysis, units, allow_empty):
    if isinstance(units, PruningPlan):
        units = units.units
    if not isinstance(units, dict):
        raise TypeError(
            "`plan` must be a dict {layer_name: indices} or a PruningPlan. "
            f"Received: plan={units!r}"
        )
    groups = removed_groups(analysis, units)
    return build_plan(analysis, groups, allow_empty=allow_empty)


def remove_units(model, plan, allow_empty=False, analysis=None):
    """A new model without the given units (coupled channels go with them).

    Output units/filters of Dense, Conv*, SeparableConv*, Embedding layers are
    physically removed, and every consumer is shrunk to match: BatchNorm and
    other channel-wise layers lose the same channels, Flatten positions go
    with their channel, residual `Add`s lose the channel on every branch,
    `Concatenate` shifts offsets, and the next Dense/Conv loses the matching
    input rows. A removed unit that outputs a known constant has that
    constant folded into the consumers' biases. Model outputs never change
    shape. The input model is not modified.

    Args:
        model: a Functional or Sequential `keras.Model`.
        plan: dict layer path -> unit indices (`"outer/inner"` for layers of
            nested models), or a `PruningPlan` (whose `blocks`, if any,
            leave first: `kprune.surgery.drop_blocks`; the result is then
            a Functional model).
        allow_empty: allow a plan that removes every unit of a layer.
        analysis: a `kprune.surgery.ChannelAnalysis` of `model` made before
            (read, not changed), to save tracing the model again; None: one
            is made.

    Returns:
        A new `keras.Model` of the same kind, compiled like `model` (with a
        fresh optimizer) when `model` is compiled.

    Example:

    >>> import keras, kprune
    >>> inputs = keras.Input((8,))
    >>> x = keras.layers.Dense(16, activation="relu", name="fc1")(inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(3, name="fc2")(x))
    >>> small = kprune.surgery.remove_units(model, {"fc1": [0, 1, 2, 3]})
    >>> small.get_layer("fc1").units
    12
    """
    if getattr(plan, "blocks", None):  # whole residual blocks leave first
        if analysis is not None:
            raise ValueError(
                "A plan that removes blocks rebuilds the model without them "
                "first, so an `analysis` of the original cannot be reused. "
                f"Received: plan.blocks={plan.blocks!r} and an analysis"
            )
        model = drop_blocks(model, plan.blocks)
    if analysis is None:
        analysis = ChannelAnalysis(model)
    elif analysis.graph.model is not model:
        raise ValueError(
            "`analysis` must be the ChannelAnalysis of `model`. Received: an "
            f"analysis of model '{analysis.graph.model.name}' for model "
            f"'{model.name}'"
        )
    return _rebuild(analysis, _plan(analysis, plan, allow_empty))


def slim(model, prune_inputs=False):
    """Remove every dead unit; the outputs do not change.

    `slim(model)` is `remove_units(model, dead_units(model))`: it removes the
    units nothing depends on (zero outgoing weights everywhere, or a constant
    output folded into the consumers' biases), so the result computes the
    same function (float32, up to rounding) with fewer parameters and MACs.
    A layer of sublayers that cannot be rebuilt smaller (see
    `CompositeRebuildError`) is kept whole, with the dead units inside it,
    and the rest of the model is slimmed.

    With `prune_inputs=True` it then calls `drop_input_features`: model
    inputs of shape `(batch, n)` read only by Dense layers stop being read
    where every reader's kernel row is zero (a `SelectFeatures` layer
    gathers the rest; the model still takes `n` features).

    Args:
        model: a Functional or Sequential `keras.Model` (not modified).
        prune_inputs: also drop input features nothing reads.

    Returns:
        A new, smaller `keras.Model`, compiled like `model` (with a fresh
        optimizer) when `model` is compiled.

    Example:

    >>> import keras, numpy as np, kprune
    >>> inputs = keras.Input((4,))
    >>> x = keras.layers.Dense(3, activation="relu", name="hidden")(inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(2, name="out")(x))
    >>> kernel, bias = model.get_layer("hidden").get_weights()
    >>> kernel[:, 0], bias[0] = 0.0, 0.5  # unit 0 outputs relu(0.5) = 0.5
    >>> model.get_layer("hidden").set_weights([kernel, bias])
    >>> small = kprune.surgery.slim(model)
    >>> small.get_layer("hidden").units
    2
    >>> x = np.random.rand(5, 4).astype("float32")
    >>> bool(np.allclose(model(x), small(x), atol=1e-6))
    True
    """
    small = _rebuild_dead(model)
    if prune_inputs:
        small = drop_input_features(small)
    return small


def _rebuild_dead(model):
    """Rebuild without the dead units, keeping whole what cannot shrink.

    A layer of sublayers that kprune cannot rebuild smaller (its
    constructor cannot express the widths and its sublayers cannot be
    swapped: a `CompositeRebuildError`) is kept whole, with the units
    inside it, and every layer of its class with it (the reason is the
    class's, so its other instances would fail the same way); the rest of
    the model is slimmed. `slim` removes what it can rather than nothing.
    """
    keep_whole = []
    while True:
        analysis = ChannelAnalysis(model, keep_whole=keep_whole)
        try:
            return _rebuild(analysis, dead_plan(analysis))
        except CompositeRebuildError as error:
            layer = error.layer
            if layer is None or any(layer is kept for kept in keep_whole):
                raise
            keep_whole += [
                sub
                for sub in model._flatten_layers(include_self=False, recursive=True)
                if type(sub) is type(layer)
            ]


@cached_configs()
def _rebuild(analysis, plan):
    graph = analysis.graph
    groups = removed_groups(analysis, plan.units) if plan.units else set()
    is_removed = np.zeros(analysis.num_groups, dtype=bool)
    is_removed[list(groups)] = True
    removed = is_removed[analysis.component]
    fill = np.where(analysis.const_valid, analysis.const_value, 0.0)

    def removed_of(tensor):
        return np.flatnonzero(analysis.values(removed, tensor))

    heads = _head_effects(analysis, removed_of)
    changes = {}
    op_calls = {}
    for nodes in graph.layer_nodes.values():
        node = nodes[0]
        is_op = not isinstance(node.layer, keras.layers.Layer)
        if is_op and node.parent is not None:
            continue  # ops inside a traced layer: the layer is rebuilt whole
        change = LayerChange(
            node.layer,
            node,
            analysis.weights(node.layer),
            _with_heads([removed_of(t) for t in node.inputs], heads, "in", node),
            _with_heads([removed_of(t) for t in node.outputs], heads, "out", node),
            [analysis.values(fill, t) for t in node.inputs],
            {name: removed_of(t) for name, t in node.internal.items()},
        )
        if change.changed and is_op:
            # A keras.ops call of the model: replayed as is, or replaced.
            replacement = get_handler(node.layer).rebuild_op(change)
            if replacement is not None:
                op_calls[id(node.layer)] = replacement
        elif change.changed and not get_handler(node.layer).calls_independent(
            node.layer
        ):
            # (a layer without weights or widths in its config is copied as is)
            changes[id(node.layer)] = get_handler(node.layer).rebuild(change)
        kernel = _kernel_heads(heads, node)
        if kernel:
            config, weights = changes.get(id(node.layer)) or (
                node.layer.get_config(),
                dict(analysis.weights(node.layer)),
            )
            changes[id(node.layer)] = slice_kernel_axes(
                node.layer, config, dict(weights), kernel
            )
    check_layouts((graph.layer_nodes[key][0].layer, c) for key, c in changes.items())
    composites = _rebuild_layers_of_sublayers(graph, changes, removed_of)
    composites.update(
        _rebuild_composites(graph, changes, composites, removed_of, heads)
    )

    new_shapes = {}
    for call in graph.model_calls[1:]:
        new_shapes.setdefault(
            id(call.model), [_new_shape(t, removed_of(t)) for t in call.inputs]
        )
    paths = _top_level_paths(graph)
    cloner = _Cloner(changes, composites, new_shapes, paths, op_calls)
    return cloner.clone(graph.model)


class _Heads:
    """The heads a plan removes from one traced layer."""

    def __init__(self, found, removed):
        self.found = found
        self.removed = removed
        self.effects = found.effects(removed)


def _head_effects(analysis, removed_of):
    """id(traced layer) -> `_Heads` for each layer the plan takes heads from."""
    found = {}
    for heads in analysis.traced_heads.values():
        lost = removed_of(heads.tensor)
        if len(lost):
            found[id(heads.call.layer)] = _Heads(heads, lost)
    return found


def _with_heads(removed, heads, side, node):
    """Add the channels that removed heads take from a call's tensors."""
    for entry in heads.values():
        effects = entry.effects
        extra = (effects.in_removed if side == "in" else effects.out_removed).get(
            id(node), {}
        )
        for position, index in extra.items():
            removed[position] = np.union1d(removed[position], index).astype(int)
    return removed


def _kernel_heads(heads, node):
    for entry in heads.values():
        if id(node) in entry.effects.kernel_removed:
            return entry.effects.kernel_removed[id(node)]
    return None


def _top_level_paths(graph):
    """id(layer) -> path, for the layers a clone of the model walks."""
    paths = {}
    for call in graph.model_calls[1:]:
        paths.setdefault(id(call.model), call.path)
    for call in graph.composites:
        if call.parent is None:
            paths.setdefault(id(call.layer), call.path)
    for node in graph.nodes:
        if node.parent is None:
            paths.setdefault(id(node.layer), node.path)
    return paths


def _new_shape(tensor, removed):
    if not tensor.channels:
        return tuple(tensor.shape)
    return tensor.resized(tensor.channels - len(removed))


def _rebuild_layers_of_sublayers(graph, changes, removed_of):
    """Rebuild the layers whose handler returned `SublayerChanges`.

    They are rebuilt like traced composites (see `_rebuild_composites`);
    `changes` loses their entries.
    """
    rebuilt = {}
    for key, change in list(changes.items()):
        if not isinstance(change, SublayerChanges):
            continue
        del changes[key]
        node = graph.layer_nodes[key][0]
        call = CompositeCall(
            node.layer, node.path, node.inputs, node.outputs, node.arguments, None
        )
        new_values, pairs, replaced = {}, [], []
        for sublayer, config, weights in change.changes:
            new_values[id(sublayer)] = weights
            replacement = Replacement.of_leaf(sublayer, config, weights)
            if replacement is not None:
                pairs += replacement.pairs
                replaced.append(replacement)
        removed = [removed_of(t) for t in node.inputs + node.outputs]
        channels = ChannelSets(
            [(t.channels, r) for t, r in zip(node.inputs + node.outputs, removed)]
            + change.channel_sets
        )
        shapes = [_new_shape(t, removed_of(t)) for t in node.inputs]
        rebuilt[key] = rebuild_composite(
            call, new_values, pairs, replaced, channels, shapes, change.attributes
        )
    return rebuilt


def _rebuild_composites(graph, changes, rebuilt_layers, removed_of, heads=None):
    """id(composite layer) -> its rebuilt copy, innermost first.

    `rebuilt_layers` holds layers already rebuilt from their sublayers
    (attention layers); they count as rebuilt children here. `heads` maps
    id(layer) -> `_Heads` for traced layers that lose heads.
    """
    heads = heads or {}
    rebuilt = dict(rebuilt_layers)
    done = set()
    for call in reversed(graph.composites):
        key = id(call.layer)
        if key in done:
            continue  # a shared composite: its first call decides
        done.add(key)
        new_values = {}
        pairs = []
        replaced = []
        for node in graph.nodes:
            if node.parent is not call or any(node.layer is r.old for r in replaced):
                continue
            new = rebuilt.get(id(node.layer))
            if new is not None:
                replacement = Replacement.of_composite(node.layer, new)
                pairs += replacement.pairs
                replaced.append(replacement)
                new_values[id(node.layer)] = [
                    keras.ops.convert_to_numpy(w.value) for w in new.weights
                ]
                continue
            change = changes.get(id(node.layer))
            if change is None:
                continue
            config, weights = change
            new_values[id(node.layer)] = weights
            replacement = Replacement.of_leaf(node.layer, config, weights)
            if replacement is not None:
                pairs += replacement.pairs
                replaced.append(replacement)
        for child in graph.composites:
            new = rebuilt.get(id(child.layer)) if child.parent is call else None
            if new is None:
                continue
            replacement = Replacement.of_composite(child.layer, new)
            pairs += replacement.pairs
            replaced.append(replacement)
            new_values[id(child.layer)] = [
                keras.ops.convert_to_numpy(w.value) for w in new.weights
            ]
        removed = [removed_of(t) for t in call.inputs + call.outputs]
        if not new_values and not any(len(r) for r in removed):
            continue
        effects = _owner_effects(call, heads)
        sets = [(t.channels, r) for t, r in zip(call.inputs + call.outputs, removed)]
        attributes = None
        if effects is not None:
            pairs += effects.head_sizes
            sets += effects.channel_sets
            heads_only = _head_attributes(call.layer, effects.head_sizes)
            widths = _head_attributes(
                call.layer,
                [pair for pair in effects.sizes if pair not in effects.head_sizes],
            )
            attributes = [heads_only, {**widths, **heads_only}]
        shapes = [_new_shape(t, removed_of(t)) for t in call.inputs]
        rebuilt[key] = rebuild_composite(
            call, new_values, pairs, replaced, ChannelSets(sets), shapes, attributes
        )
        own = heads.get(key)
        if own is not None and _only_heads(graph, call, removed_of):
            try:
                check_heads_removed(own.found, own.effects, rebuilt[key], own.removed)
            except CompositeRebuildError as error:
                error.layer = call.layer
                raise
    return rebuilt


def _only_heads(graph, call, removed_of):
    """True when nothing but heads leaves inside `call` (so the rebuilt
    layer can be compared with the original on the same inputs)."""
    for node in graph.nodes:
        parent = node.parent
        while parent is not None and parent is not call:
            parent = parent.parent
        if parent is call and any(
            len(removed_of(t)) for t in node.inputs + node.outputs
        ):
            return False
    return not any(len(removed_of(t)) for t in call.inputs + call.outputs)


def _owner_effects(call, heads):
    """The `HeadEffects` of `call`'s layer, or of the nearest enclosing layer
    that owns heads reaching inside it."""
    while call is not None:
        if id(call.layer) in heads:
            return heads[id(call.layer)].effects
        call = call.parent
    return None


def _head_attributes(layer, sizes):
    """The layer's int attributes holding a head count, at the new count.

    Constructor arguments (`num_heads`) first: only when none holds the
    count are other attributes of that value taken.
    """
    try:
        config = set(layer.get_config())
    except Exception:  # noqa: BLE001 - a layer's own get_config bug
        config = set()
    found = {}
    for old, new in sizes:
        names = int_attributes(layer, old)
        named = [name for name in names if name in config]
        found.update({name: new for name in (named or names)})
    return found


def _ordered_values(layer, values):
    """A handler's new weights (a list, or a dict by name) in `layer.weights`
    order. Variables created without a name (`add_weight(shape=...)`, as in
    ConvNeXt's LayerScale) get a fresh `variable_N` name in every instance:
    those are matched by creation order."""
    if not isinstance(values, dict):
        return values
    names = [w.name for w in layer.weights]
    if all(name in values for name in names):
        return [values[name] for name in names]
    if len(values) == len(names):
        return list(values.values())
    raise SurgeryError(
        f"Could not match the new weights of layer '{layer.name}' "
        f"({type(layer).__name__}) to its variables: it has {names}, the "
        f"rebuild gave {list(values)}. Register a handler for this layer "
        "class with kprune.surgery.register_handler."
    )


def _add_positions(records, model, prefix="", at=()):
    """Give each record its layer's position in `model` (see `PrunedModel`)."""
    for i, layer in enumerate(model.layers):
        path = prefix + layer.name
        if isinstance(records.get(path), dict):
            records[path].setdefault("at", list(at + (i,)))
        if isinstance(layer, keras.Model):
            _add_positions(records, layer, path + "/", at + (i,))


class _Cloner:
    """Clone a model with `keras.models.clone_model`, swapping changed layers.

    Records how each changed layer changed (by path), so that a Functional
    subclass can be returned as a `PrunedModel` that saves and loads.
    `op_calls` maps a `keras.ops` call of the model itself to the callable
    replayed in its place (a slice with shifted indices).
    """

    def __init__(self, changes, composites, new_shapes, paths, op_calls=None):
        self.changes = changes
        self.composites = composites
        self.new_shapes = new_shapes
        self.paths = paths
        self.op_calls = op_calls or {}
        self.records = {}
        self.memo = {}
        self.weights = []

    def clone(self, model):
        new_model = clone_model(
            model, input_tensors=input_tensors(model), clone_function=self
        )
        for layer, values in self.weights:
            layer.set_weights(_ordered_values(layer, values))
            carry_keep_mask(layer)
        if not needs_plan_format(model):
            return new_model
        try:
            base = keras.saving.serialize_keras_object(model)
        except Exception:  # noqa: BLE001 - the original does not save either
            return new_model
        _add_positions(self.records, model)
        pruned = PrunedModel(base, self.records, _built=new_model)
        compile_like(pruned, model)
        return pruned

    def __call__(self, layer):
        key = id(layer)
        if key in self.memo:
            return self.memo[key]
        path = self.paths.get(key)
        if isinstance(layer, keras.Model):
            new = self._clone_nested(layer, path)
        elif key in self.composites:
            new = self.composites[key]
            self.records[path] = record_of(new)
        elif key in self.op_calls:
            new = self.op_calls[key]
            self.records[path] = {
                "unsaveable": "a keras.ops call that slices or splits the "
                "channel axis is replayed with new indices, which the "
                "original model's constructor cannot express"
            }
        elif key in self.changes:
            config, weights = self.changes[key]
            new = layer.__class__.from_config(config)
            if new.name != layer.name:
                new.name = layer.name
            self.records[path] = {"config": keras.saving.serialize_keras_object(new)}
            self.weights.append((new, weights))
        else:
            new = copy_layer(layer)
        self.memo[key] = new
        return new

    def _clone_nested(self, model, path):
        shapes = self.new_shapes.get(id(model))
        if shapes != [tuple(x.shape) for x in model.inputs]:
            self.records[path] = {"inputs": [list(shape) for shape in shapes]}
        return clone_model(
            model,
            compile=False,
            input_tensors=input_tensors(model, shapes),
            clone_function=self,
        )
