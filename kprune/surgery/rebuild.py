"""Build the smaller model: `remove_units` and `slim`."""

import keras
import numpy as np

from kprune.surgery.analysis import ChannelAnalysis
from kprune.surgery.compiling import clone_model
from kprune.surgery.dead import dead_plan
from kprune.surgery.handlers import LayerChange, get_handler
from kprune.surgery.plan import PruningPlan, build_plan, removed_groups


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


def remove_units(model, plan, allow_empty=False):
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
            nested models), or a `PruningPlan`.
        allow_empty: allow a plan that removes every unit of a layer.

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
    analysis = ChannelAnalysis(model)
    return _rebuild(analysis, _plan(analysis, plan, allow_empty))


def slim(model, prune_inputs=False):
    """Remove every dead unit; the outputs do not change.

    `slim(model)` is `remove_units(model, dead_units(model))`: it removes the
    units nothing depends on (zero outgoing weights everywhere, or a constant
    output folded into the consumers' biases), so the result computes the
    same function (float32, up to rounding) with fewer parameters and MACs.

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
    analysis = ChannelAnalysis(model)
    small = _rebuild(analysis, dead_plan(analysis))
    if prune_inputs:
        from kprune.surgery.inputs import drop_input_features

        small = drop_input_features(small)
    return small


def _rebuild(analysis, plan):
    graph = analysis.graph
    groups = removed_groups(analysis, plan.units) if plan.units else set()
    is_removed = np.zeros(analysis.num_groups, dtype=bool)
    is_removed[list(groups)] = True
    removed = is_removed[analysis.component]
    fill = np.where(analysis.const_valid, analysis.const_value, 0.0)

    changes = {}
    for nodes in graph.layer_nodes.values():
        node = nodes[0]
        in_removed = [np.flatnonzero(analysis.values(removed, t)) for t in node.inputs]
        out_removed = [
            np.flatnonzero(analysis.values(removed, t)) for t in node.outputs
        ]
        in_fill = [analysis.values(fill, t) for t in node.inputs]
        change = LayerChange(
            node.layer,
            node,
            analysis.weights(node.layer),
            in_removed,
            out_removed,
            in_fill,
        )
        if change.changed:
            changes[id(node.layer)] = get_handler(node.layer).rebuild(change)

    new_shapes = {}
    for call in graph.model_calls[1:]:
        new_shapes.setdefault(
            id(call.model),
            [
                t.shape[:-1]
                + (t.channels - len(np.flatnonzero(analysis.values(removed, t))),)
                if t.channels
                else t.shape
                for t in call.inputs
            ],
        )
    return _Cloner(changes, new_shapes).clone(graph.model)


def _carry_keep_mask(layer):
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


def _copy_layer(layer):
    """A fresh copy of an unchanged layer (weights are set afterwards)."""
    if isinstance(layer, keras.layers.Lambda):
        # The user's own in-memory Lambda: its Python function is trusted, and
        # Keras refuses to rebuild it from a config in safe mode.
        return keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(layer), safe_mode=False
        )
    return layer.__class__.from_config(layer.get_config())


class _Cloner:
    """Clone a model with `keras.models.clone_model`, swapping changed layers."""

    def __init__(self, changes, new_shapes):
        self.changes = changes
        self.new_shapes = new_shapes
        self.memo = {}
        self.weights = []

    def clone(self, model):
        new_model = clone_model(model, clone_function=self)
        for layer, values in self.weights:
            if isinstance(values, dict):
                values = [values[w.name] for w in layer.weights]
            layer.set_weights(values)
            _carry_keep_mask(layer)
        return new_model

    def __call__(self, layer):
        key = id(layer)
        if key in self.memo:
            return self.memo[key]
        if isinstance(layer, keras.Model):
            new = self._clone_nested(layer)
        else:
            change = self.changes.get(key)
            if not isinstance(layer, keras.layers.Layer):  # a keras.ops op
                new = layer.__class__.from_config(layer.get_config())
            elif change is None:
                new = _copy_layer(layer)
                self.weights.append((new, layer.get_weights()))
            else:
                config, weights = change
                new = layer.__class__.from_config(config)
                self.weights.append((new, weights))
        self.memo[key] = new
        return new

    def _clone_nested(self, model):
        shapes = self.new_shapes.get(id(model))
        inputs = [
            keras.Input(batch_shape=shape, dtype=x.dtype, name=x.name)
            for shape, x in zip(shapes, model.inputs)
        ]
        if isinstance(model, keras.Sequential):
            structure = inputs[0]
        else:
            structure = keras.tree.pack_sequence_as(model.input, inputs)
        return clone_model(
            model, compile=False, input_tensors=structure, clone_function=self
        )
