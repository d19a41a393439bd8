"""MACs of every call in a model's graph, layers inside layers included.

`kprune.report.summary` counts a model's MACs here: the graph is read by
`kprune.surgery.Graph` with every layer that has sublayers traced into its
parts (`expand="all"`), so a KerasHub `TransformerEncoder`, a decoder block
with grouped-query attention or an `MBConvBlock` counts the Dense,
EinsumDense, convolution and attention calls inside it, plus the
`keras.ops.einsum` / `matmul` calls that compute attention scores.
"""

import dataclasses
import math
import re

import keras

from kprune.ops.macs import attention_macs, layer_macs
from kprune.surgery.errors import SurgeryError
from kprune.surgery.graph import Graph, Slot, call_output_specs

# Layers with weights whose inference costs no multiply-accumulate we count.
_FREE = (
    keras.layers.Embedding,
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.GroupNormalization,
    keras.layers.UnitNormalization,
    keras.layers.Normalization,
    keras.layers.PReLU,
)
# KerasHub layers whose weights are added or looked up, not multiplied.
_FREE_NAMES = ("PositionEmbedding", "RotaryEmbedding", "ReversibleEmbedding")
# Gates per recurrent cell: units of `kernel` / `recurrent_kernel` columns.
_GATES = {"SimpleRNN": 1, "LSTM": 4, "GRU": 3}


def call_macs(model, input_shapes):
    """MACs of each leaf call of `model` at the given input shapes.

    Args:
        model: a built Functional or Sequential model.
        input_shapes: full input shapes (batch axis 1), one per input.

    Returns:
        `(graph, counts)`: the traced `Graph` and a list of `(path, macs,
        output_shape)` per call, `macs` None where it could not be counted.
    """
    graph = Graph(model, expand="all", input_shapes=input_shapes)
    shapes = _refined_shapes(graph)

    def shape(tensor):
        return None if tensor is None else shapes[id(tensor)]

    counts = []
    for node in graph.nodes:
        macs = _node_macs(node, shape)
        out = shape(node.outputs[0]) if node.outputs else None
        counts.append((node.path, macs, out))
    return graph, counts


def _refined_shapes(graph):
    """Every tensor's shape, sizes left unknown by a layer's spec filled in.

    Some layers declare unknown sizes in their output spec although their
    input's are known (an `EinsumDense` built with `output_shape=(None, h,
    d)`, as KerasHub's attention does): each call whose output has an
    unknown size is inferred again from its inputs' refined shapes.
    """
    shapes = {id(t): tuple(t.shape) for t in graph.tensors}
    for node in graph.nodes:
        if not any(None in shapes[id(t)][1:] for t in node.outputs):
            continue
        inputs = [dataclasses.replace(t, shape=shapes[id(t)]) for t in node.inputs]
        arguments = node.arguments
        if arguments is None:
            slots = [Slot(i) for i in range(len(inputs))]
            arguments = ([slots] if len(slots) > 1 else slots, {})
        try:
            if isinstance(node.layer, keras.layers.EinsumDense) and inputs:
                specs = [(_einsum_dense_shape(node.layer, inputs[0].shape), None)]
            else:
                specs = call_output_specs(node.layer, node.path, arguments, inputs)
        except SurgeryError:
            continue
        for tensor, (new, _) in zip(node.outputs, specs):
            old = shapes[id(tensor)]
            if len(new) == len(old):
                shapes[id(tensor)] = tuple(
                    o if n is None else int(n) for o, n in zip(old, new)
                )
    return shapes


def _einsum_dense_shape(layer, input_shape):
    """An `EinsumDense` call's output shape from its equation and input."""
    match = re.match(r"\s*(\w+)\s*,\s*(\w+)\s*->\s*(\w+)\s*$", layer.equation)
    if match is None:
        return (None,)
    sizes = {}
    for letters, dims in ((match.group(1), input_shape), (match.group(2), ())):
        for letter, dim in zip(letters, dims):
            if dim is not None:
                sizes[letter] = int(dim)
    for letter, dim in zip(match.group(2), layer.kernel.shape):
        sizes.setdefault(letter, int(dim))
    return tuple(sizes.get(letter) for letter in match.group(3))


def _node_macs(node, shape):
    layer = node.layer
    if not isinstance(layer, keras.layers.Layer):
        return _op_macs(node, shape)
    in_shape = shape(node.inputs[0]) if node.inputs else None
    out_shape = shape(node.outputs[0]) if node.outputs else None
    if isinstance(layer, keras.layers.MultiHeadAttention):
        query = node.argument("query", 0) or (node.inputs[0] if node.inputs else None)
        value = node.argument("value", 1)
        key = node.argument("key", 2)
        return attention_macs(layer, shape(query), shape(value), shape(key))
    if type(layer).__name__ in _GATES and isinstance(layer, keras.layers.RNN):
        return _recurrent_macs(layer, in_shape)
    if isinstance(layer, keras.layers.Embedding) and _is_float(node.inputs):
        # A reversible embedding used as the output projection (tied weights).
        if None in (in_shape or (None,)) or None in (out_shape or (None,)):
            return None
        return int(math.prod(out_shape[1:])) * int(in_shape[-1])
    macs = layer_macs(layer, in_shape, out_shape)
    if type(layer).__name__ in _FREE_NAMES:
        return macs
    if macs == 0 and _has_kernels(layer) and not isinstance(layer, _FREE):
        return None  # weights we do not know how to count
    return macs


def _is_float(tensors):
    return bool(tensors) and "float" in str(tensors[0].dtype)


def _has_kernels(layer):
    return any(len(w.shape) >= 2 for w in layer.weights)


def _recurrent_macs(layer, input_shape):
    """`T * gates * units * (features + units)` for SimpleRNN / LSTM / GRU."""
    if input_shape is None or len(input_shape) != 3 or input_shape[1] is None:
        return None
    gates = _GATES[type(layer).__name__]
    units = int(layer.cell.units)
    return int(input_shape[1]) * gates * units * (int(input_shape[2]) + units)


def _op_macs(node, shape):
    """`keras.ops.einsum` and `matmul`: the product of all sizes involved."""
    name = type(node.layer).__name__
    shapes = [shape(t) for t in node.inputs]
    if any(s is None or None in s for s in shapes):
        return 0 if name not in ("Einsum", "Matmul") else None
    if name == "Einsum":
        return _einsum_op_macs(node.layer.subscripts, shapes)
    if name == "Matmul" and len(shapes) == 2:
        a, b = shapes
        if len(a) < 2 or len(b) < 2:
            return None
        batch = _broadcast(a[:-2], b[:-2])
        return int(math.prod(batch)) * a[-2] * a[-1] * b[-1]
    return 0


def _einsum_op_macs(subscripts, shapes):
    match = re.match(r"^\s*([\w,\s]+?)\s*(->\s*\w*)?\s*$", subscripts)
    if match is None or "..." in subscripts:
        return None
    operands = [s.strip() for s in match.group(1).split(",")]
    if len(operands) != len(shapes):
        return None
    sizes = {}
    for letters, shape in zip(operands, shapes):
        if len(letters) != len(shape):
            return None
        for letter, dim in zip(letters, shape):
            sizes[letter] = max(sizes.get(letter, 1), int(dim))
    return int(math.prod(sizes.values()))


def _broadcast(a, b):
    n = max(len(a), len(b))
    a = (1,) * (n - len(a)) + tuple(a)
    b = (1,) * (n - len(b)) + tuple(b)
    return [max(x, y) for x, y in zip(a, b)]
