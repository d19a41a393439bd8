"""Wrapper layers: `Bidirectional` and `TimeDistributed`.

`Bidirectional(rnn)` runs a forward and a backward copy of a recurrent
layer. Its units are numbered as in its `merge_mode="concat"` output, under
the plan key of the layer's path: forward units `0 .. u_f - 1`, then backward
units `u_f .. u_f + u_b - 1`, whatever the merge mode. With `"concat"` they
are the output channels; with `"sum"`, `"ave"` or `"mul"` forward unit `i`
and backward unit `i` are merged into output channel `i`, so they are
coupled and leave together; with `None` the forward and backward outputs are
separate tensors. Returned states follow their direction's units. Each
direction is resized like a plain recurrent layer (see `recurrent`), and the
rebuilt layer's config holds both directions' configs.

`TimeDistributed(layer)` applies `layer` to every step: its handler is the
wrapped layer's, called on a view of the call without the time axis (same
channels, same elements), and the rebuilt wrapper's config holds the
wrapped layer's new config.
"""

import keras
import numpy as np

from kprune.surgery.graph import NodeInfo, TensorInfo
from kprune.surgery.handlers import recurrent
from kprune.surgery.handlers.base import OPAQUE, LayerChange, LayerHandler, Use
from kprune.surgery.handlers.base import get_handler as _get_handler

_MERGED = ("concat", "sum", "ave", "mul")


class BidirectionalHandler(LayerHandler):
    """Handler for `keras.layers.Bidirectional` of SimpleRNN / LSTM / GRU."""

    produces_units = True

    def _directions(self, layer):
        return layer.forward_layer, layer.backward_layer

    def check(self, node):
        layer = node.layer
        for direction in self._directions(layer):
            reason = recurrent.layer_refusal(direction)
            if reason:
                return f"its {direction.name} layer: {reason}"
        forward, backward = self._directions(layer)
        if layer.merge_mode not in _MERGED + (None,):
            return f"merge_mode={layer.merge_mode!r} is not understood"
        if layer.merge_mode in ("sum", "ave", "mul") and (
            forward.cell.units != backward.cell.units
        ):
            return "its directions have different widths"
        if recurrent.states_of(forward) != recurrent.states_of(backward):
            return "its directions return different numbers of states"
        if len(node.outputs) != self._expected_outputs(layer):
            return "its outputs could not be matched to its directions"
        return None

    def _expected_outputs(self, layer):
        merged = 2 if layer.merge_mode is None else 1
        if not layer.return_state:
            return merged
        return merged + 2 * recurrent.states_of(layer.forward_layer)

    def _sizes(self, layer):
        forward, backward = self._directions(layer)
        return forward.cell.units, backward.cell.units

    def _parts(self, node):
        """`(sequence position, initial state positions, other positions)`."""
        return recurrent.RecurrentHandler._parts(self, node)

    def units(self, node):
        """The tensor of the layer's units (forward then backward)."""
        if node.layer.merge_mode == "concat":
            return node.outputs[0]
        return node.internal["units"]

    def connect(self, node, ctx):
        reason = self.check(node)
        if reason:
            ctx.pin_node(node, reason)
            return
        layer = node.layer
        forward, backward = self._sizes(layer)
        if layer.merge_mode == "concat":
            units = node.outputs[0]
        else:
            units = ctx.internal(node, "units", forward + backward)
        front = np.arange(forward)
        back = forward + np.arange(backward)
        merged = 1
        if layer.merge_mode is None:
            ctx.tie_indices(units, front, node.outputs[0], np.arange(forward))
            ctx.tie_indices(units, back, node.outputs[1], np.arange(backward))
            merged = 2
        elif layer.merge_mode != "concat":
            ctx.tie_indices(units, front, node.outputs[0], np.arange(forward))
            ctx.tie_indices(units, back, node.outputs[0], np.arange(backward))
        states = node.outputs[merged:]
        half = len(states) // 2
        for i, tensor in enumerate(states):
            ctx.tie_indices(
                units, front if i < half else back, tensor, np.arange(tensor.channels)
            )
        _, initial, others = self._parts(node)
        half = len(initial) // 2
        for i, position in enumerate(initial):
            tensor = node.inputs[position]
            part = front if i < half else back
            if tensor.channels == len(part):
                ctx.tie_indices(units, part, tensor, np.arange(tensor.channels))
            else:
                ctx.pin(tensor, f"it is an initial state of '{node.path}'")
        for position in others:
            ctx.pin(node.inputs[position], f"it is a mask of '{node.path}'")

    def unit_tensors(self, node, ctx):
        if self.check(node):
            return [(node.path, node.outputs[0])]
        return [(node.path, self.units(node))]

    def uses(self, node, weights):
        if self.check(node):
            return []
        forward, backward = self._directions(node.layer)
        u_f, u_b = self._sizes(node.layer)
        sequence, _, _ = self._parts(node)
        reads = np.concatenate(
            [recurrent.input_matrix(forward), recurrent.input_matrix(backward)], axis=1
        )
        loop = np.zeros((u_f + u_b, u_f + u_b), bool)
        loop[:u_f, :u_f] = recurrent.recurrent_matrix(forward)
        loop[u_f:, u_f:] = recurrent.recurrent_matrix(backward)
        units = self.units(node)
        return [Use(sequence, reads, True, units), Use(units, loop, False, units)]

    def rebuild(self, change):
        node = change.node
        layer = change.layer
        u_f, _ = self._sizes(layer)
        if layer.merge_mode == "concat":
            removed = np.asarray(change.out_removed[0], dtype=int)
        else:
            removed = np.asarray(change.internal_removed.get("units", []), dtype=int)
        sequence, _, _ = self._parts(node)
        config = change.config
        values = []
        for direction, key, part in (
            (layer.forward_layer, "layer", removed[removed < u_f]),
            (layer.backward_layer, "backward_layer", removed[removed >= u_f] - u_f),
        ):
            inner = config[key]["config"]
            inner, weights = recurrent.resize_recurrent(
                direction,
                inner,
                recurrent.cell_arrays(direction),
                change.in_removed[sequence],
                change.in_fill[sequence],
                part,
            )
            config[key]["config"] = inner
            config[key].pop("build_config", None)  # built on the new input
            values += [weights[w.name] for w in direction.weights]
        return config, values


class TimeDistributedHandler(LayerHandler):
    """Handler for `keras.layers.TimeDistributed`: the wrapped layer's own."""

    produces_units = True
    channel_axes_aware = True

    def inner(self, node):
        """`(handler, view)`: the wrapped layer's handler and call view."""
        if not hasattr(node, "_time_view"):
            node._time_view = _step_view(node)
        view = node._time_view
        if view is not None:
            _sync_axes(node.inputs + node.outputs, view.inputs + view.outputs)
        return _get_handler(node.layer.layer), view

    def _refusal(self, node):
        handler, view = self.inner(node)
        if handler is OPAQUE:
            layer = node.layer.layer
            return (
                f"the layer it wraps, '{layer.name}' ({type(layer).__name__}), "
                "has no kprune handler"
            )
        if view is None:
            return "its steps could not be separated from its time axis"
        if not handler.channel_axes_aware and any(
            t.channels and not t.last for t in view.inputs
        ):
            return "the layer it wraps reads channels on the last axis only"
        return None

    def channel_axes(self, node):
        handler, view = self.inner(node)
        if view is None or handler is OPAQUE:
            return [-1] * len(node.outputs)
        axes = handler.channel_axes(view)
        return [a if a == -1 else a + 1 for a in axes]

    def connect(self, node, ctx):
        reason = self._refusal(node)
        if reason:
            ctx.pin_node(node, reason)
            return
        handler, view = self.inner(node)
        handler.connect(view, ctx)

    def unit_tensors(self, node, ctx):
        handler, view = self.inner(node)
        if self._refusal(node) or not handler.produces_units:
            return []
        real = {id(v): t for v, t in zip(view.outputs, node.outputs)}
        return [
            (key, real.get(id(tensor), tensor))
            for key, tensor in handler.unit_tensors(view, ctx)
        ]

    def uses(self, node, weights):
        if self._refusal(node):
            return []
        handler, view = self.inner(node)
        return handler.uses(view, weights)

    def constant_mask(self, node, in_valid, weights):
        if self._refusal(node):
            return super().constant_mask(node, in_valid, weights)
        handler, view = self.inner(node)
        return handler.constant_mask(view, in_valid, weights)

    def rebuild(self, change):
        handler, view = self.inner(change.node)
        inner = change.layer.layer
        step = LayerChange(
            inner,
            view,
            change.weights,
            change.in_removed,
            change.out_removed,
            change.in_fill,
            change.internal_removed,
        )
        inner_config, weights = handler.rebuild(step)
        config = change.config
        config["layer"]["config"] = inner_config
        config["layer"].pop("build_config", None)  # built on the new input
        return config, weights


def _step_view(node):
    """The call of a `TimeDistributed` layer as one step: no time axis."""

    def step(tensor):
        if len(tensor.shape) < 3:
            return None
        shape = (tensor.shape[0],) + tuple(tensor.shape[2:])
        view = TensorInfo(shape, tensor.dtype, tensor.name, tensor.offset)
        return view

    inputs = [step(t) for t in node.inputs]
    outputs = [step(t) for t in node.outputs]
    if any(t is None for t in inputs + outputs):
        return None
    return NodeInfo(
        node.layer.layer,
        node.path,
        inputs,
        outputs,
        node.arguments,
        node.parent,
        node.internal,
    )


def _sync_axes(tensors, views):
    """Give each step view its tensor's offset and channel axis."""
    for tensor, view in zip(tensors, views):
        view.offset = tensor.offset
        view.axis = tensor.axis if tensor.axis == -1 else tensor.axis - 1


def _register():
    from kprune.surgery.handlers.base import register_handler

    register_handler(keras.layers.Bidirectional, BidirectionalHandler())
    register_handler(keras.layers.TimeDistributed, TimeDistributedHandler())


_register()
