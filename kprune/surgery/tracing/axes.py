"""How the ops and layers of a traced call move axes (see `tracing.heads`).

`AxisGraph` is a union-find over the entries of every axis of every tensor
of one traced call; `follow(axes, node, handler_of)` records what one call
does to them:

- ties: entry `i` of one axis is entry `index[i]` of another (element-wise
  ops with broadcasting, transposes, einsum letters, `matmul`, `repeat`,
  `dot_product_attention`, reshapes' untouched axes, `getitem` with full
  slices, the other axes of `split` / `concatenate` / `stack` / `unstack`);
- blocks: a reshape splitting an axis of `L` entries into `(a_1 .. a_k)`:
  entry `i` of `a_j` stands for the entries `{c : (c // stride_j) % a_j == i}`
  (merges likewise);
- kernel axes: `EinsumDense` kernel letters on non-unit axes;
- refusals: axes something touches in a way not followed (with the reason).
"""

import math
import re

import keras
import numpy as np
from scipy import sparse
from scipy.sparse import csgraph

from kprune.surgery.graph import Slot, constant_arguments
from kprune.surgery.handlers.base import LayerHandler
from kprune.surgery.handlers.ops import transpose_order


class AxisGraph:
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


def follow(axes, node, handler_of):
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


def _transpose(axes, node):
    order = transpose_order(node.layer, len(node.inputs[0].shape))
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
