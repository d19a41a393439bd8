"""Attention heads inside a traced layer: units on an axis other than the last.

An attention layer kprune has no handler for is traced into its parts
(`kprune.surgery.tracing`): projections, reshapes, einsums, a softmax. Its
heads live on an axis that is never a channel axis. A query projection
`Dense(N * H)` is reshaped to `(batch, seq, N, H)`; head `n` is the slice
`n` of axis 2 there, the projection's units `n * H .. n * H + H - 1`, the
rows `n * H ..` of the output projection after the heads are merged back;
or, with `EinsumDense("btm,mnh->btnh")`, slice `n` of the kernel's axis 1.

This module (with the rules of `tracing.axes`) follows every axis of every
tensor of one traced call (an *axis analysis*, separate from the channel
analysis, which follows the last axis only):

- **ties**: slice `i` of one axis is slice `i` of another (an elementwise
  op, a transpose, the letter of an einsum, a repeat for grouped-query
  attention: slice `i` of the output is slice `i // r` of the input);
- **blocks**: a reshape that splits an axis of `L` entries into axes
  `(a_1, ..., a_k)` makes entry `i` of axis `a_j` the entries
  `{c : (c // stride_j) % a_j == i}` of the split axis (a merge the other
  way round).

The connected axes (*classes*) whose entries are split from, or merged into,
a projection's units are head candidates; one is accepted when every op and
layer on it (and on the unit axes it reaches through blocks) is understood,
none of them is an input or output of the traced call, and it reaches at
least one projection on each side. Its connected entries are the heads
(with grouped-query attention: a key/value head and its query group).

Removing heads then means: fewer units of the projections that make them,
fewer input rows of the projections that read them, slices of `EinsumDense`
kernel axes, and new sizes (`num_heads`) for the layer's constructor or
attributes (see `kprune.surgery.composite`). Heads found this way are
removed on request (`remove_units`) only: `slim` never removes them, since
the layer's own code may compute per-head values from the head count.

Reference:
    Michel, Levy & Neubig, "Are Sixteen Heads Really Better than One?",
    NeurIPS 2019, https://arxiv.org/abs/1905.10650
"""

import dataclasses
import re

import keras
import numpy as np
from scipy import sparse
from scipy.sparse import csgraph

from kprune.surgery.graph import NodeInfo
from kprune.surgery.tracing.axes import AxisGraph, follow


@dataclasses.dataclass(eq=False)
class HeadEffects:
    """What removing some heads does to the parts of a traced call.

    Attributes:
        in_removed: id(node) -> {input position: indices of its last axis}.
        out_removed: id(node) -> {output position: indices}.
        kernel_removed: id(node) -> {kernel letter: indices} for
            `EinsumDense` kernel axes that are not unit axes.
        sizes: `(old, new)` sizes of every axis that shrinks.
        channel_sets: `(size, removed indices)` of every axis that shrinks
            (for the layer's own weights; see `composite.ChannelSets`).
        head_sizes: `(old, new)` sizes of the head axes themselves (the
            layer's `num_heads`-like attributes).
    """

    in_removed: dict
    out_removed: dict
    kernel_removed: dict
    sizes: list
    channel_sets: list
    head_sizes: list


class TracedHeads:
    """The heads of one traced call, found by `find_heads`.

    Attributes:
        call: the `CompositeCall`.
        count: the number of heads (key/value heads with grouped queries).
        node: a `NodeInfo` standing for the layer (its plan key is the
            layer's path; `node.internal["heads"]` is set by the analysis).
    """

    def __init__(self, call, nodes, axes, slots, component, groups):
        self.call = call
        self.nodes = nodes
        self._slots = set(slots)
        self.tensor = None
        self._axes = axes
        self._component = component
        self._groups = groups  # list of arrays of components, one per head
        self.count = len(groups)
        first = self.effects([0])
        #: ids of the calls whose weights a head removal changes.
        self.touched = (
            set(first.in_removed) | set(first.out_removed) | set(first.kernel_removed)
        )
        self.node = NodeInfo(
            call.layer,
            call.path,
            call.inputs,
            call.outputs,
            call.arguments,
            call.parent,
        )

    def projections(self):
        """True when heads are made by weights and read by weights.

        A head axis must run from a projection that makes it (output units,
        or an `EinsumDense` kernel axis) to one that reads it (input rows, or
        a contracted kernel axis); an axis that only splits positions (a
        window partition) is not a head axis.
        """
        effects = self.effects([0])
        weighted = {
            id(n)
            for n in self.nodes
            if isinstance(n.layer, keras.layers.Layer) and n.layer.weights
        }
        made = set(effects.out_removed) & weighted
        read = set(effects.in_removed) & weighted
        for node, _, letter in self._axes.kernel:
            if id(node) in effects.kernel_removed:
                out = node.layer.equation.split("->")[-1]
                (made if letter in out else read).add(id(node))
        return bool(made) and bool(read)

    def effects(self, removed):
        """`HeadEffects` of removing heads `removed` (indices)."""
        axes, component = self._axes, self._component
        gone = np.zeros(axes.size, bool)
        dead = set()
        for head in removed:
            dead.update(int(c) for c in self._groups[int(head)])
        gone[np.isin(component, list(dead))] = True
        # Blocks carry removals from coarse axes to the axes they split.
        changed = True
        while changed:
            changed = False
            for coarse, fine, stride in axes.blocks:
                lost = np.flatnonzero(gone[axes.entries(coarse)])
                if not len(lost):
                    continue
                size = axes.slots[coarse][1]
                entries = axes.entries(fine)
                index = (np.arange(len(entries)) // stride) % size
                hit = component[entries[np.isin(index, lost)]]
                new = np.isin(component, hit) & ~gone
                if new.any():
                    gone |= new
                    changed = True

        def lost(tensor, axis):
            key = (id(tensor), axis % len(tensor.shape))
            if key not in axes.slots:
                return np.zeros(0, np.int64)
            return np.flatnonzero(gone[axes.entries(key)])

        in_removed, out_removed, kernel_removed = {}, {}, {}
        for node in self.nodes:
            if not isinstance(node.layer, keras.layers.Layer):
                continue
            for position, tensor in enumerate(node.inputs):
                if len(tensor.shape) > 1 and len(lost(tensor, -1)):
                    in_removed.setdefault(id(node), {})[position] = lost(tensor, -1)
            for position, tensor in enumerate(node.outputs):
                if len(tensor.shape) > 1 and len(lost(tensor, -1)):
                    out_removed.setdefault(id(node), {})[position] = lost(tensor, -1)
        for node, key, letter in axes.kernel:
            offset, size = axes.slots[key]
            index = np.flatnonzero(gone[offset : offset + size])
            if len(index):
                kernel_removed.setdefault(id(node), {})[letter] = index
        sizes, channel_sets, head_sizes = set(), [], set()
        for key, (offset, size) in axes.slots.items():
            index = np.flatnonzero(gone[offset : offset + size])
            if not len(index):
                continue
            sizes.add((size, size - len(index)))
            channel_sets.append((size, index))
            if key in self._slots:
                head_sizes.add((size, size - len(index)))
        return HeadEffects(
            in_removed,
            out_removed,
            kernel_removed,
            sorted(sizes),
            channel_sets,
            sorted(head_sizes),
        )


def find_heads(graph, call, handler_of):
    """The heads of traced call `call`, or a reason string, or None.

    Args:
        graph: the `Graph` holding the call's parts.
        call: a `CompositeCall` of `graph`.
        handler_of: `get_handler` (layer -> handler).

    Returns:
        A `TracedHeads`; a string saying why heads that seem to be there
        cannot be removed; or None when the call has no head axis.
    """
    nodes = [n for n in graph.nodes if _inside(n, call)]
    if not any(isinstance(n.layer, keras.layers.Layer) for n in nodes):
        return None
    axes = AxisGraph()
    for node in nodes:
        follow(axes, node, handler_of)
    boundary = "it reaches the layer's inputs or outputs"
    axes.refuse(call.inputs + call.outputs, boundary)
    if not axes.slots:
        return None
    component = axes.components()
    classes = _classes(axes, component)
    fine_side = {c for _, fine, _ in axes.blocks for c in [classes[fine]]}
    reasons = []
    for cls in sorted(set(classes.values())):
        slots = [k for k, c in classes.items() if c == cls]
        if not _is_candidate(axes, slots, classes, fine_side):
            continue
        reason = _refusal(axes, cls, classes)
        if reason:
            reasons.append(reason)
            continue
        groups = _head_groups(axes, slots, component)
        if len(groups) < 2:
            continue
        found = TracedHeads(call, nodes, axes, slots, component, groups)
        if found.projections():
            return found
    return reasons[0] if reasons else None


def _inside(node, call):
    parent = node.parent
    while parent is not None:
        if parent is call:
            return True
        parent = parent.parent
    return False


def _classes(axes, component):
    """slot -> class id: slots joined by ties (sharing an entry component)."""
    keys = list(axes.slots)
    if not keys:
        return {}
    slot_of = np.empty(axes.size, dtype=np.int64)
    for number, key in enumerate(keys):
        slot_of[axes.entries(key)] = number
    # A bipartite graph slot -- component: slots joined through components.
    count = len(keys)
    graph = sparse.coo_matrix(
        (np.ones(axes.size, np.int8), (slot_of, count + component)),
        shape=(count + axes.size, count + axes.size),
    )
    labels = csgraph.connected_components(graph, directed=False)[1][:count]
    _, ids = np.unique(labels, return_inverse=True)
    return {key: int(i) for key, i in zip(keys, ids)}


def _is_candidate(axes, slots, classes, fine_side):
    """A class that splits units into heads (not head dims, not channels)."""
    cls = classes[slots[0]]
    if cls in fine_side:
        return False  # reached from a coarser axis (a query group)
    strides = [stride for coarse, _, stride in axes.blocks if classes[coarse] == cls]
    kernel = [k for _, k, _ in axes.kernel if classes[k] == cls]
    if any(stride == 1 for stride in strides):
        return False  # the last axis of a split: head dims
    return bool(kernel) or any(stride > 1 for stride in strides)


def _refusal(axes, cls, classes):
    """Why the heads of class `cls` cannot be removed (or None)."""
    reached = {cls}
    frontier = [cls]
    while frontier:
        current = frontier.pop()
        for coarse, fine, _ in axes.blocks:
            if classes[coarse] == current and classes[fine] not in reached:
                reached.add(classes[fine])
                frontier.append(classes[fine])
    for key, reason in axes.refused.items():
        if classes.get(key) in reached:
            return reason
    return None


def _head_groups(axes, slots, component):
    """Head `i`: the components of the entries of the smallest slot."""
    smallest = min(slots, key=lambda k: (axes.slots[k][1], axes.slots[k][0]))
    comps = component[axes.entries(smallest)]
    groups, seen = [], set()
    for comp in comps.tolist():
        if comp not in seen:
            seen.add(comp)
            groups.append(np.asarray([comp]))
    return groups


def slice_kernel_axes(layer, config, weights, removed):
    """Remove entries of `EinsumDense` kernel axes that are not unit axes.

    Args:
        layer: the `EinsumDense` layer.
        config: its (new) config, edited in place (`output_shape`).
        weights: dict name -> array (its new weights), edited in place.
        removed: dict kernel letter -> removed indices on that axis.
    """
    spec_in, kernel, spec_out = re.match(
        r"^\s*(\w+)\s*,\s*(\w+)\s*->\s*(\w+)\s*$", layer.equation
    ).groups()
    bias_axes = config.get("bias_axes") or ""
    for letter, index in removed.items():
        axis = kernel.index(letter)
        weights["kernel"] = np.delete(weights["kernel"], index, axis=axis)
        if letter not in spec_out:
            continue
        if "bias" in weights and letter in bias_axes:
            first = min(spec_out.index(b) for b in bias_axes)
            bias_axis = spec_out.index(letter) - first
            weights["bias"] = np.delete(weights["bias"], index, axis=bias_axis)
        shape = config.get("output_shape")
        if isinstance(shape, (list, tuple)):
            shape = list(shape)
            position = spec_out.index(letter) - 1
            shape[position] = shape[position] - len(index)
            config["output_shape"] = shape
    return config, weights
