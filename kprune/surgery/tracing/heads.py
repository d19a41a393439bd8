"""Attention heads inside a traced layer: units on an axis other than the last.

An attention layer kprune has no handler for is traced into its parts
(`kprune.surgery.tracing`): projections, reshapes, einsums, a softmax. Its
heads live on an axis that is never a channel axis. A query projection
`Dense(N * H)` is reshaped to `(batch, seq, N, H)`; head `n` is the slice
`n` of axis 2 there, the projection's units `n * H .. n * H + H - 1`, the
rows `n * H ..` of the output projection after the heads are merged back;
or, with `EinsumDense("btm,mnh->btnh")`, slice `n` of the kernel's axis 1.

This module follows every axis of every tensor of one traced call (an
*axis analysis*, separate from the channel analysis, which follows the
last axis only):

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
import math
import re

import keras
import numpy as np
from scipy import sparse
from scipy.sparse import csgraph

from kprune.surgery.graph import NodeInfo, Slot, constant_arguments
from kprune.surgery.handlers.base import LayerHandler


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


class _Axes:
    """Union-find of axis entries over the tensors of one traced call."""

    def __init__(self):
        self.slots = {}  # (id(tensor), axis) -> (offset, size)
        self.tensors = {}
        self.size = 0
        self.rows, self.cols = [], []
        self.blocks = []  # (coarse slot, fine slot, stride)
        self.refused = {}  # slot -> reason
        self.kernel = []  # (node, slot, kernel letter)

    def slot(self, tensor, axis):
        """The slot of `tensor`'s axis (None: batch axis or unknown size)."""
        rank = len(tensor.shape)
        if rank < 1:
            return None
        axis %= rank
        size = tensor.shape[axis]
        if size is None:
            return None
        key = (id(tensor), axis)
        if key not in self.slots:
            self.slots[key] = (self.size, int(size))
            self.tensors[id(tensor)] = tensor
            self.size += int(size)
        return key

    def tie(self, a, b, index_b=None):
        """Tie entry `i` of slot `a` to entry `index_b[i]` of slot `b`."""
        if a is None or b is None:
            return
        (oa, na), (ob, nb) = self.slots[a], self.slots[b]
        if index_b is None:
            if na != nb:
                return  # broadcast (size 1) or unrelated sizes
            index_b = np.arange(nb)
        self.rows.append(oa + np.arange(na))
        self.cols.append(ob + np.asarray(index_b, dtype=np.int64))

    def refuse(self, tensors, reason):
        for tensor in tensors:
            for axis in range(len(tensor.shape)):
                self.refuse_axis(tensor, axis, reason)

    def refuse_axis(self, tensor, axis, reason):
        key = self.slot(tensor, axis)
        if key is not None:
            self.refused.setdefault(key, reason)

    def components(self):
        rows = np.concatenate(self.rows) if self.rows else np.zeros(0, np.int64)
        cols = np.concatenate(self.cols) if self.cols else np.zeros(0, np.int64)
        graph = sparse.coo_matrix(
            (np.ones(len(rows), np.int8), (rows, cols)), shape=(self.size, self.size)
        )
        return csgraph.connected_components(graph, directed=False)[1]

    def entries(self, key):
        offset, size = self.slots[key]
        return np.arange(offset, offset + size)


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
    axes = _Axes()
    for node in nodes:
        _follow(axes, node, handler_of)
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
    """slot -> class id: slots joined by ties (by their entries' components)."""
    owner = {}
    parent = {}

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for key in axes.slots:
        parent[key] = key
        for comp in np.unique(component[axes.entries(key)]):
            other = owner.setdefault(int(comp), key)
            if other != key:
                parent[find(key)] = find(other)
    roots = {}
    return {key: roots.setdefault(find(key), len(roots)) for key in axes.slots}


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


# ------------------------------------------------------------------- rules
def _follow(axes, node, handler_of):
    """Record how one call moves axes (ties, blocks, kernel axes)."""
    name = type(node.layer).__name__
    handler = handler_of(node.layer)
    rule = _RULES.get(name) or _generic_op_rule(handler)
    if rule is None and isinstance(node.layer, keras.layers.Layer):
        opaque = type(handler).connect is LayerHandler.connect
        rule = _probed if opaque and not node.layer.weights else _layer_rule
    if not node.inputs and node.outputs:
        axes.refuse(
            node.outputs,
            f"'{node.path}' ({name}) makes values for it from constants, which "
            "may depend on the number of heads",
        )
        return
    if rule is None or rule(axes, node) is False:
        axes.refuse(
            node.inputs + node.outputs,
            f"'{node.path}' ({name}) moves it in a way kprune does not follow",
        )


def _aligned(axes, node, tensors, out):
    """Broadcast: axes aligned from the right tie where the sizes agree."""
    rank = len(out.shape)
    for tensor in tensors:
        shift = rank - len(tensor.shape)
        for axis in range(len(tensor.shape)):
            if axis + shift >= 0 and tensor.shape[axis] == out.shape[axis + shift]:
                axes.tie(axes.slot(tensor, axis), axes.slot(out, axis + shift))


def _generic_op_rule(handler):
    from kprune.surgery.handlers.channelwise import ChannelwiseHandler
    from kprune.surgery.handlers.merging import MergeHandler
    from kprune.surgery.handlers.ops import (
        PassThroughOpHandler,
        ReductionOpHandler,
        SoftmaxOpHandler,
    )

    if isinstance(handler, ReductionOpHandler):
        return _reduction
    if isinstance(handler, (MergeHandler, SoftmaxOpHandler, ChannelwiseHandler)):
        return _elementwise
    if type(handler) in (PassThroughOpHandler,) or type(handler).__name__ in (
        "CastOpHandler",
    ):
        return _elementwise
    return None


def _elementwise(axes, node):
    if not node.outputs:
        return False
    for out in node.outputs:
        _aligned(axes, node, node.inputs, out)
        for value in constant_arguments(node):
            shape = np.shape(value)
            shift = len(out.shape) - len(shape)
            for axis, size in enumerate(shape):
                if size > 1 and axis + shift >= 0:
                    axes.refuse_axis(
                        out,
                        axis + shift,
                        f"'{node.path}' ({type(node.layer).__name__}) combines it "
                        "with constants that differ along it (per-head values "
                        "computed from the number of heads?)",
                    )
    return True


def _layer_rule(axes, node):
    """A sublayer: its non-channel axes pass through unchanged."""
    if len(node.inputs) != 1 or len(node.outputs) != 1:
        return False
    source, out = node.inputs[0], node.outputs[0]
    if len(source.shape) != len(out.shape):
        return False
    for axis in range(len(out.shape) - 1):
        axes.tie(axes.slot(source, axis), axes.slot(out, axis))
    # The last axes are the layer's own channels: its handler slices them.
    axes.slot(source, -1)
    axes.slot(out, -1)
    return True


def _probed(axes, node):
    """A weightless layer kprune has no rule for (a rotary embedding).

    Its outputs have the shapes of its inputs. An axis is followed when
    dropping entry 0 of it from every input drops exactly entry 0 of it from
    every output (checked by running the layer on random values), so the
    layer treats the entries of that axis independently.
    """
    shapes = [tuple(t.shape) for t in node.inputs]
    if len(node.inputs) != len(node.outputs) or shapes != [
        tuple(t.shape) for t in node.outputs
    ]:
        return False
    concrete = [tuple(8 if d is None else int(d) for d in s) for s in shapes]
    rng = np.random.default_rng(0)
    values = [rng.normal(size=s).astype(t.dtype) for s, t in zip(concrete, node.inputs)]
    try:
        full = [keras.ops.convert_to_numpy(y) for y in _flat(node.call(values))]
    except Exception:  # noqa: BLE001 - a layer we cannot run: not followed
        return False
    for axis in range(1, len(concrete[0])):
        size = concrete[0][axis]
        if size < 2 or any(len(s) <= axis or s[axis] != size for s in concrete):
            continue
        try:
            cut = [np.delete(v, 0, axis=axis) for v in values]
            part = [keras.ops.convert_to_numpy(y) for y in _flat(node.call(cut))]
        except Exception:  # noqa: BLE001 - the axis cannot shrink: not followed
            part = None
        same = part is not None and all(
            np.allclose(np.delete(a, 0, axis=axis), b, rtol=1e-4, atol=1e-5)
            for a, b in zip(full, part)
        )
        tensors = node.inputs + node.outputs
        if not same:
            for tensor in tensors:
                axes.refuse_axis(tensor, axis, f"'{node.path}' mixes its entries")
            continue
        for tensor in tensors[1:]:
            axes.tie(axes.slot(tensors[0], axis), axes.slot(tensor, axis))
    return True


def _flat(outputs):
    return keras.tree.flatten(outputs)


def _einsum_dense(axes, node):
    match = re.match(r"^\s*(\w+)\s*,\s*(\w+)\s*->\s*(\w+)\s*$", node.layer.equation)
    if match is None or len(node.inputs) != 1:
        return False
    spec_in, kernel, spec_out = match.groups()
    source, out = node.inputs[0], node.outputs[0]
    if len(spec_in) != len(source.shape) or len(spec_out) != len(out.shape):
        return False
    for i, letter in enumerate(spec_in):
        if letter in spec_out:
            axes.tie(axes.slot(source, i), axes.slot(out, spec_out.index(letter)))
    for i, letter in enumerate(spec_out[:-1]):
        if letter in kernel and letter not in spec_in:
            key = axes.slot(out, i)
            if key is not None:
                axes.kernel.append((node, key, letter))
    for i, letter in enumerate(spec_in[:-1]):
        if letter in kernel and letter not in spec_out:
            key = axes.slot(source, i)
            if key is not None:
                axes.kernel.append((node, key, letter))
    axes.slot(source, -1)
    axes.slot(out, -1)
    return True


def _einsum(axes, node):
    subscripts = getattr(node.layer, "subscripts", "")
    match = re.match(r"^\s*([\w,\s]+)->\s*(\w*)\s*$", subscripts)
    if match is None:
        return False
    specs = [s.strip() for s in match.group(1).split(",")]
    output = match.group(2)
    if len(specs) != len(node.inputs):
        return False
    places = {}
    for tensor, spec in zip(node.inputs, specs):
        if len(spec) != len(tensor.shape):
            return False
        for i, letter in enumerate(spec):
            places.setdefault(letter, []).append((tensor, i))
    out = node.outputs[0]
    for i, letter in enumerate(output):
        places.setdefault(letter, []).append((out, i))
    for found in places.values():
        first = axes.slot(*found[0])
        for other in found[1:]:
            axes.tie(first, axes.slot(*other))
    return True


def _matmul(axes, node):
    if len(node.inputs) != 2:
        return False
    a, b = node.inputs
    out = node.outputs[0]
    if len(a.shape) < 2 or len(b.shape) < 2 or len(out.shape) < 2:
        return False
    rank = len(out.shape)
    for tensor in (a, b):
        shift = rank - len(tensor.shape)
        for axis in range(len(tensor.shape) - 2):
            if tensor.shape[axis] == out.shape[axis + shift]:
                axes.tie(axes.slot(tensor, axis), axes.slot(out, axis + shift))
    axes.tie(axes.slot(a, -2), axes.slot(out, -2))
    axes.tie(axes.slot(b, -1), axes.slot(out, -1))
    axes.tie(axes.slot(a, -1), axes.slot(b, -2))
    return True


def _permutation(node):
    layer = node.layer
    rank = len(node.inputs[0].shape)
    if hasattr(layer, "axes"):
        if layer.axes is None:
            return list(reversed(range(rank)))
        return [int(a) % rank for a in layer.axes]
    if hasattr(layer, "source"):
        source = [int(a) % rank for a in np.atleast_1d(layer.source)]
        destination = [int(a) % rank for a in np.atleast_1d(layer.destination)]
        order = [a for a in range(rank) if a not in source]
        for dst, src in sorted(zip(destination, source)):
            order.insert(dst, src)
        return order
    if hasattr(layer, "axis1"):
        order = list(range(rank))
        i, j = int(layer.axis1) % rank, int(layer.axis2) % rank
        order[i], order[j] = order[j], order[i]
        return order
    return None


def _transpose(axes, node):
    order = _permutation(node)
    if order is None:
        return False
    source, out = node.inputs[0], node.outputs[0]
    for position, axis in enumerate(order):
        axes.tie(axes.slot(source, axis), axes.slot(out, position))
    return True


def _expand_or_squeeze(axes, node):
    source, out = node.inputs[0], node.outputs[0]
    kept_in = [a for a in range(len(source.shape)) if source.shape[a] != 1]
    kept_out = [a for a in range(len(out.shape)) if out.shape[a] != 1]
    if len(kept_in) != len(kept_out):
        return False
    for a, b in zip(kept_in, kept_out):
        axes.tie(axes.slot(source, a), axes.slot(out, b))
    return True


def _reduction(axes, node):
    source, out = node.inputs[0], node.outputs[0]
    rank = len(source.shape)
    axis = getattr(node.layer, "axis", None)
    reduced = (
        set(range(rank))
        if axis is None
        else {int(a) % rank for a in np.atleast_1d(axis)}
    )
    keep = bool(getattr(node.layer, "keepdims", False))
    position = 0
    for a in range(rank):
        if a in reduced:
            position += 1 if keep else 0
            continue
        axes.tie(axes.slot(source, a), axes.slot(out, position))
        position += 1
    return True


def _reshape(axes, node):
    source, out = node.inputs[0], node.outputs[0]
    a, b = list(source.shape), list(out.shape)

    def same(x, y):
        return x is None or y is None or x == y

    start = 0
    while start < min(len(a), len(b)) and same(a[start], b[start]):
        axes.tie(axes.slot(source, start), axes.slot(out, start))
        start += 1
    end = 0
    while end < min(len(a), len(b)) - start and same(
        a[len(a) - 1 - end], b[len(b) - 1 - end]
    ):
        axes.tie(axes.slot(source, len(a) - 1 - end), axes.slot(out, len(b) - 1 - end))
        end += 1
    mid_a = list(range(start, len(a) - end))
    mid_b = list(range(start, len(b) - end))
    if not mid_a and not mid_b:
        return True
    if len(mid_a) == 1 and _splits(a[mid_a[0]], [b[i] for i in mid_b]):
        _blocks(axes, out, mid_b, axes.slot(source, mid_a[0]))
        return True
    if len(mid_b) == 1 and _splits(b[mid_b[0]], [a[i] for i in mid_a]):
        _blocks(axes, source, mid_a, axes.slot(out, mid_b[0]))
        return True
    for axis in mid_a:
        axes.refuse_axis(source, axis, f"reshape '{node.path}' mixes axes")
    for axis in mid_b:
        axes.refuse_axis(out, axis, f"reshape '{node.path}' mixes axes")
    return True


def _splits(whole, parts):
    return (
        whole is not None
        and len(parts) > 1
        and all(p is not None for p in parts)
        and math.prod(parts) == whole
    )


def _blocks(axes, tensor, parts, fine):
    if fine is None:
        return
    sizes = [tensor.shape[i] for i in parts]
    for j, axis in enumerate(parts):
        coarse = axes.slot(tensor, axis)
        if coarse is not None:
            axes.blocks.append((coarse, fine, math.prod(sizes[j + 1 :])))


def _getitem(axes, node):
    if node.arguments is None or len(node.arguments[0]) < 2:
        return False
    source, out = node.inputs[0], node.outputs[0]
    key = node.arguments[0][1]
    entries = key if isinstance(key, tuple) else (key,)
    if any(isinstance(e, (Slot, list, np.ndarray)) for e in entries):
        return False
    consuming = [e for e in entries if e is not None and e is not Ellipsis]
    rank = len(source.shape)
    if len(consuming) > rank or sum(e is Ellipsis for e in entries) > 1:
        return False
    if Ellipsis not in entries:
        entries = tuple(entries) + (Ellipsis,)
    in_axis = out_axis = 0
    for entry in entries:
        if entry is None:
            out_axis += 1
        elif entry is Ellipsis:
            for _ in range(rank - len(consuming)):
                axes.tie(axes.slot(source, in_axis), axes.slot(out, out_axis))
                in_axis += 1
                out_axis += 1
        elif isinstance(entry, slice):
            if entry == slice(None):
                axes.tie(axes.slot(source, in_axis), axes.slot(out, out_axis))
            else:
                axes.refuse_axis(source, in_axis, f"'{node.path}' slices it")
            in_axis += 1
            out_axis += 1
        else:
            axes.refuse_axis(source, in_axis, f"'{node.path}' indexes it")
            in_axis += 1
    return True


def _along(axes, node):
    """split / concatenate / stack / unstack: other axes tie across."""
    layer = node.layer
    name = type(layer).__name__
    joins = name in ("Stack", "Concatenate")
    one = node.outputs[0] if joins else node.inputs[0]
    many = node.inputs if joins else node.outputs
    axis = int(getattr(layer, "axis", 0)) % len(one.shape)
    for tensor in many:
        if name in ("Stack", "Unstack"):
            for a in range(len(tensor.shape)):
                axes.tie(axes.slot(tensor, a), axes.slot(one, a + (a >= axis)))
            continue
        for a in range(len(tensor.shape)):
            if a != axis:
                axes.tie(axes.slot(tensor, a), axes.slot(one, a))
            else:
                axes.refuse_axis(tensor, a, f"'{node.path}' cuts along it")
    axes.refuse_axis(one, axis, f"'{node.path}' cuts along it")
    return True


def _repeat(axes, node):
    layer = node.layer
    source, out = node.inputs[0], node.outputs[0]
    repeats = getattr(layer, "repeats", None)
    axis = getattr(layer, "axis", None)
    if not isinstance(repeats, int) or axis is None:
        return False
    axis = int(axis) % len(source.shape)
    for a in range(len(source.shape)):
        if a != axis:
            axes.tie(axes.slot(source, a), axes.slot(out, a))
    out_slot = axes.slot(out, axis)
    in_slot = axes.slot(source, axis)
    if out_slot is not None and in_slot is not None:
        size = axes.slots[out_slot][1]
        axes.tie(out_slot, in_slot, np.arange(size) // repeats)
    return True


def _dot_product_attention(axes, node):
    """`ops.dot_product_attention(q, k, v, ...)`: (batch, seq, heads, dim)."""
    if len(node.inputs) < 3:
        return False
    q, k, v = node.inputs[:3]
    out = node.outputs[0]
    if any(len(t.shape) != 4 for t in (q, k, v, out)):
        return False
    for axis in (0, 1, 2, 3):
        axes.tie(axes.slot(q, axis), axes.slot(out, axis))
    axes.tie(axes.slot(q, 0), axes.slot(k, 0))
    axes.tie(axes.slot(k, 0), axes.slot(v, 0))
    axes.tie(axes.slot(k, 1), axes.slot(v, 1))
    axes.tie(axes.slot(q, 3), axes.slot(k, 3))
    heads_q, heads_kv = q.shape[2], k.shape[2]
    if heads_q is None or heads_kv is None or heads_q % heads_kv:
        return False
    for tensor in (k, v):
        key = axes.slot(tensor, 2)
        query = axes.slot(q, 2)
        if key is not None and query is not None:
            axes.tie(query, key, np.arange(heads_q) // (heads_q // heads_kv))
    axes.refuse(node.inputs[3:], f"'{node.path}' reads it as a mask or bias")
    return True


_RULES = {
    "EinsumDense": _einsum_dense,
    "Einsum": _einsum,
    "Matmul": _matmul,
    "Transpose": _transpose,
    "Moveaxis": _transpose,
    "Swapaxes": _transpose,
    "ExpandDims": _expand_or_squeeze,
    "Squeeze": _expand_or_squeeze,
    "Reshape": _reshape,
    "GetItem": _getitem,
    "Split": _along,
    "Concatenate": _along,
    "Stack": _along,
    "Unstack": _along,
    "Repeat": _repeat,
    "DotProductAttention": _dot_product_attention,
}


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
