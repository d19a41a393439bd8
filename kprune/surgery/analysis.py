"""Channel analysis: coupled channel groups, fixed channels and constants.

Every channel of every tensor in the graph is one *element*. Handlers tie
elements that must be removed together (a BatchNorm's input and output
channel, the inputs of a residual Add, a Flatten position and its channel);
the connected components of those ties are the *coupled groups*, the atoms
of removal. Elements that can never be removed are *pinned* (model inputs
and outputs, layers without a handler); elements whose removal cannot be
exact are *exact-pinned* (channels mixed by LayerNormalization).

A forward pass computes which elements carry a constant value on every input
(a unit with zero incoming weights outputs `activation(bias)`, a BatchNorm
turns that into another constant, ...) and what that constant is: removing
such a unit and folding its constant into the consumers' biases is exact.
"""

import inspect

import keras
import numpy as np
from scipy import sparse
from scipy.sparse import csgraph

from kprune.surgery.graph import Graph
from kprune.surgery.handlers import LayerHandler, get_handler
from kprune.surgery.handlers.base import cached_configs
from kprune.surgery.tracing.heads import find_heads

_SPATIAL_STANDIN = 8  # size used for unknown spatial dimensions


class ChannelAnalysis:
    """Coupled groups, pins and constants of a Functional/Sequential model.

    Args:
        model: a built Functional or Sequential `keras.Model` (not modified).
        keep_whole: layers with sublayers to treat as single layers (not
            looked into), so that the units inside them stay.

    Attributes:
        graph: the traced `Graph`.
        component: element -> coupled-group id.
        pinned: per group, True when it can never be removed.
        exact_pinned: per group, True when removing it cannot be exact.
        const_valid / const_value: per element, whether it is constant on
            every input, and the constant.
        internals: dict `(id(layer), name)` -> the `TensorInfo` of units
            that live inside a layer (attention heads), made by `internal`.
        traced_heads: dict path -> `TracedHeads` of traced attention layers
            (see `kprune.surgery.tracing.heads`).
    """

    @cached_configs()
    def __init__(self, model, keep_whole=()):
        self.graph = Graph(model, expand=True, keep_whole=keep_whole)
        self.graph.set_channel_axes(_channel_axes(self.graph))
        self.internals = {}
        self.refused = set()
        self._weights = {}
        self._tie_a = []
        self._tie_b = []
        self._pins = []
        self._exact_pins = []
        for node in self.graph.nodes:
            handler = get_handler(node.layer)
            reason = _axis_refusal(handler, node)
            if reason is not None:
                self.refused.add(id(node))
                self.pin_node(node, reason)
                continue
            handler.connect(node, self)
        self._traced_heads()
        self._tie_shared_layers()
        for tensor in self.graph.inputs:
            self.pin(tensor, "it is a model input")
        for tensor in self.graph.outputs:
            self.pin(tensor, "it is a model output (outputs never change shape)")
        self._components()
        self._constants()

    # ----------------------------------------------------------- handler API
    def tie(self, a, b):
        """Tie channel `c` of tensor `a` to channel `c` of tensor `b`."""
        if a.channels != b.channels:
            raise ValueError(
                f"cannot tie tensors with {a.channels} and {b.channels} channels"
            )
        self.tie_indices(a, np.arange(a.channels), b, np.arange(b.channels))

    def tie_indices(self, a, index_a, b, index_b):
        """Tie channels `index_a` of `a` to channels `index_b` of `b`."""
        self._tie_a.append(a.offset + np.asarray(index_a, dtype=np.int64))
        self._tie_b.append(b.offset + np.asarray(index_b, dtype=np.int64))

    def internal(self, node, name, size):
        """Elements for units that live inside a layer, not on a tensor.

        Attention heads are units of a `MultiHeadAttention` layer but no
        tensor between layers has them on its channel axis. A handler asks
        for a virtual tensor of `size` channels per layer (all calls of a
        shared layer share it); its channels take part in coupling, pins
        and removal plans like any other.

        Args:
            node: the layer call asking.
            name: what the units are ("heads", "key_dims", ...).
            size: how many there are.

        Returns:
            The layer's `TensorInfo` for these units.
        """
        key = (id(node.layer), name)
        if key not in self.internals:
            self.internals[key] = self.graph._new_tensor(
                (None, int(size)), "float32", f"{node.path}:{name}"
            )
        node.internal[name] = self.internals[key]
        return self.internals[key]

    def pin(self, tensor, reason):
        """Channels of `tensor` can never be removed, because `reason`."""
        if tensor.channels:
            self._pins.append((self.graph.elements(tensor), reason))

    def pin_exact(self, tensor, reason):
        """Removing channels of `tensor` can never be exact, because `reason`."""
        if tensor.channels:
            self._exact_pins.append((self.graph.elements(tensor), reason))

    def pin_node(self, node, reason):
        """Pin every input and output of a call, naming the layer."""
        message = f"layer '{node.path}' ({node.layer.__class__.__name__})"
        if node.parent is not None:
            message += (
                f" inside '{node.parent.path}' ({node.parent.layer.__class__.__name__})"
            )
        message = f"{message}: {reason}"
        for tensor in node.inputs + node.outputs:
            self.pin(tensor, message)

    def weights(self, layer):
        """The layer's weights as a dict name -> NumPy array (cached)."""
        key = id(layer)
        if key not in self._weights:
            self._weights[key] = {
                w.name: keras.ops.convert_to_numpy(w.value)
                for w in getattr(layer, "weights", [])
            }
        return self._weights[key]

    # -------------------------------------------------------------- internals
    def _traced_heads(self):
        """Heads of traced attention layers (see `tracing.heads`).

        They are units of their own, keyed by the layer's path, removed only
        when a plan names them: `slim` never does (exact-pinned).
        """
        self.traced_heads = {}
        seen, claimed = set(), set()
        for call in reversed(self.graph.composites):  # innermost first
            if id(call.layer) in seen:
                continue
            seen.add(id(call.layer))
            found = find_heads(self.graph, call, get_handler)
            if isinstance(found, str):
                self.graph.head_refusals[call.path] = found
                continue
            if found is None or found.touched & claimed:
                continue  # no heads, or those of a layer inside it
            claimed |= found.touched
            found.tensor = self.internal(found.node, "heads", found.count)
            self.pin_exact(
                found.tensor,
                f"the heads of traced layer '{call.path}' leave only when a "
                "plan names them",
            )
            self.traced_heads[call.path] = found

    def _tie_shared_layers(self):
        for nodes in self.graph.layer_nodes.values():
            first = nodes[0]
            handler = get_handler(first.layer)
            if handler.ties_calls or handler.calls_independent(first.layer):
                continue
            for other in nodes[1:]:
                for a, b in zip(
                    first.inputs + first.outputs, other.inputs + other.outputs
                ):
                    if a.channels == b.channels:
                        self.tie(a, b)
                    else:
                        self.pin_node(
                            first, "it is shared between calls of different widths"
                        )

    def _components(self):
        size = self.graph.size
        if self._tie_a:
            rows = np.concatenate(self._tie_a)
            cols = np.concatenate(self._tie_b)
        else:
            rows = cols = np.zeros(0, dtype=np.int64)
        adjacency = sparse.coo_matrix(
            (np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(size, size)
        )
        self.num_groups, self.component = csgraph.connected_components(
            adjacency, directed=False
        )
        self.pinned = np.zeros(self.num_groups, dtype=bool)
        for elements, _ in self._pins:
            self.pinned[self.component[elements]] = True
        self.exact_pinned = self.pinned.copy()
        for elements, _ in self._exact_pins:
            self.exact_pinned[self.component[elements]] = True

    def pin_reason(self, group, exact=False):
        """Why coupled group `group` is pinned (the first reason found)."""
        records = self._pins + (self._exact_pins if exact else [])
        for elements, reason in records:
            if np.any(self.component[elements] == group):
                return reason
        return None

    def values(self, array, tensor):
        """Slice a per-element array for one tensor."""
        return array[tensor.offset : tensor.offset + tensor.channels]

    def uses(self, node):
        """The handler's `uses` of one call (`[]` for a refused call)."""
        if id(node) in self.refused:
            return []
        return get_handler(node.layer).uses(node, self.weights(node.layer))

    def _constants(self):
        size = self.graph.size
        self.const_valid = np.zeros(size, dtype=bool)
        self.const_value = np.zeros(size, dtype=np.float64)
        for node in self.graph.nodes:
            handler = get_handler(node.layer)
            if not all(t.channels for t in node.outputs) or id(node) in self.refused:
                continue
            in_valid = [self.values(self.const_valid, t) for t in node.inputs]
            in_value = [self.values(self.const_value, t) for t in node.inputs]
            try:
                masks = _constant_mask(
                    handler, node, in_valid, self.weights(node.layer), in_value
                )
            except (KeyError, ValueError, IndexError):
                continue
            if len(masks) > len(node.outputs) or any(
                np.shape(m) != (t.channels,) for m, t in zip(masks, node.outputs)
            ):
                continue  # a handler that does not know this call: no constants
            if not any(m.any() for m in masks):
                continue
            try:
                outputs = handler.evaluate(node, self._constant_inputs(node))
            except Exception:  # noqa: BLE001 - a layer we cannot probe: no constants
                continue
            for tensor, mask, out in zip(node.outputs, masks, outputs):
                out = np.asarray(out)
                if out.ndim != len(tensor.shape) or out.shape[tensor.axis] != (
                    tensor.channels
                ):
                    continue
                out = np.moveaxis(out, tensor.axis, -1)
                flat = out.reshape(-1, tensor.channels).astype(np.float64)
                first = flat[0]
                spread = flat.max(axis=0) - flat.min(axis=0)
                constant = spread <= 1e-6 * (1.0 + np.abs(first))
                valid = mask & constant & np.isfinite(first)
                self.values(self.const_valid, tensor)[:] = valid
                self.values(self.const_value, tensor)[:] = np.where(valid, first, 0.0)

    def _constant_inputs(self, node):
        arrays = []
        for tensor in node.inputs:
            shape = [1] + [
                _SPATIAL_STANDIN if d is None else int(d) for d in tensor.shape[1:]
            ]
            if not tensor.channels:
                arrays.append(np.zeros(shape, dtype=tensor.dtype))
                continue
            values = self.values(self.const_value, tensor)
            layout = [1] * len(shape)
            layout[tensor.axis] = tensor.channels
            values = values.reshape(layout)
            arrays.append(np.broadcast_to(values, shape).astype(tensor.dtype))
        return arrays


_TAKES_VALUES = {}


def _constant_mask(handler, node, in_valid, weights, in_value):
    """`handler.constant_mask`, given the input constants when it takes them.

    A handler whose `constant_mask` has an `in_value` parameter gets the
    constant value of each input channel (0 where not constant): a product
    with a channel that is constantly zero is zero whatever the other factor.
    """
    method = handler.constant_mask
    key = type(handler)
    if key not in _TAKES_VALUES:
        try:
            _TAKES_VALUES[key] = "in_value" in inspect.signature(method).parameters
        except (TypeError, ValueError):
            _TAKES_VALUES[key] = False
    if _TAKES_VALUES[key]:
        return method(node, in_valid, weights, in_value=in_value)
    return method(node, in_valid, weights)


def _channel_axes(graph):
    """The `axes_of` callable of `Graph.set_channel_axes`, from the handlers.

    A call's outputs take the axes its handler's `channel_axes` gives (the
    default: the last axis). A model input takes axis 1 when a layer that
    reads it wants its channels there (a `channels_first` convolution).
    """
    readers = {}
    for node in graph.nodes:
        for position, tensor in enumerate(node.inputs):
            readers.setdefault(id(tensor), []).append((node, position))

    def axes_of(node, tensor=None):
        if node is None:
            for reader, position in readers.get(id(tensor), []):
                axis = get_handler(reader.layer).input_axis(reader, position)
                if axis is not None and axis != -1:
                    return axis
            return -1
        return get_handler(node.layer).channel_axes(node)

    return axes_of


def _axis_refusal(handler, node):
    """Why a call whose channels are not last cannot be followed, or None."""
    if handler.channel_axes_aware or type(handler).connect is LayerHandler.connect:
        return None  # aware, or opaque (its own connect pins everything)
    for tensor in node.inputs + node.outputs:
        if tensor.channels and not tensor.last:
            return (
                f"its input has its channels on axis {tensor.axis} "
                "(a channels_first layout), and kprune follows channels "
                f"through {node.layer.__class__.__name__} on the last axis only"
            )
    return None
