"""Blocks of a Functional graph: the sub-graphs between single-tensor cut points.

A tensor is a *cut point* when every path from the model's inputs to its
outputs passes through it: the output of a residual block (after its `Add`),
of a transformer block, of every layer of a plain chain. The layers between two
consecutive cut points form a *natural block*; runs of consecutive natural
blocks are *spans*. A block reads one tensor and writes one tensor, so it can
be cut out of the graph and replaced by anything with the same interface (see
`kprune.surgery.replace_blocks`).

This module also runs parts of a graph: `tap_model` builds a new Functional
model (copies of the layers with their weights; the input model is never
touched) that outputs chosen intermediate tensors, with some blocks already
swapped for Dense layers, and `batches` streams data through it.
"""

import dataclasses
import re

import keras
import numpy as np

from kprune.surgery.copying import copy_layer
from kprune.surgery.graph import Graph


@dataclasses.dataclass(eq=False)
class Block:
    """A single-input, single-output sub-graph of a traced model.

    Attributes:
        start: the `TensorInfo` the block reads (a cut point).
        end: the `TensorInfo` the block writes (a cut point).
        nodes: the `NodeInfo` layer calls inside, in topological order.
        name: a readable name (the group label, or `first..last` layer).
        index: position of its first natural block in the model.
        size: how many consecutive natural blocks it spans.
        graph: the traced `Graph` the block belongs to.
    """

    start: object
    end: object
    nodes: list
    name: str
    index: int
    size: int = 1
    graph: object = dataclasses.field(default=None, repr=False)

    @property
    def input_shape(self):
        """Shape of the block's input tensor (batch axis included)."""
        return tuple(self.start.shape)

    @property
    def output_shape(self):
        """Shape of the block's output tensor (batch axis included)."""
        return tuple(self.end.shape)

    @property
    def layer_names(self):
        """Paths (`"outer/inner"` inside nested models) of its layer calls."""
        return [node.path for node in self.nodes]

    @property
    def num_layers(self):
        """Number of layer calls inside the block."""
        return len(self.nodes)

    @property
    def replaceable(self):
        """True when only the last axis may differ between input and output.

        Only then is the block a candidate for a Dense layer on the last axis
        (tokens and spatial positions are mapped one by one).
        """
        a, b = self.input_shape, self.output_shape
        return len(a) == len(b) and len(a) >= 2 and a[1:-1] == b[1:-1]

    def __repr__(self):
        return (
            f"Block(name={self.name!r}, layers={self.num_layers}, "
            f"{self.input_shape} -> {self.output_shape})"
        )


def cut_points(model):
    """The single tensors every input-to-output path passes through.

    With the layer calls in topological order, the tensor `t` is a cut point
    after call `p` when it is the only tensor alive there: produced at or
    before `p` and consumed after `p` (model outputs stay alive to the end).

    Args:
        model: a Functional or Sequential `keras.Model`, or a traced `Graph`.

    Returns:
        A list of `(position, TensorInfo)`, in order: the position is the
        index of the producing call in `Graph.nodes` (-1 for a model input).

    Example:

    >>> import keras
    >>> model = keras.Sequential(
    ...     [keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(2)]
    ... )
    >>> [t.shape for _, t in cut_points(model)]
    [(None, 4), (None, 3), (None, 2)]
    """
    graph = model if isinstance(model, Graph) else Graph(model)
    nodes = graph.nodes
    last_use = {}
    for position, node in enumerate(nodes):
        for tensor in node.inputs:
            last_use[id(tensor)] = position
    end = len(nodes)
    for tensor in graph.outputs:
        last_use[id(tensor)] = end
    alive = {}
    for tensor in graph.inputs:
        if last_use.get(id(tensor), -1) > -1:
            alive[id(tensor)] = tensor
    cuts = []
    if len(alive) == 1:
        cuts.append((-1, next(iter(alive.values()))))
    for position, node in enumerate(nodes):
        for tensor in node.outputs:
            if last_use.get(id(tensor), position) > position:
                alive[id(tensor)] = tensor
        for tensor in node.inputs:
            if last_use.get(id(tensor)) == position:
                alive.pop(id(tensor), None)
        if len(alive) == 1:
            tensor = next(iter(alive.values()))
            if not cuts or cuts[-1][1] is not tensor:
                cuts.append((position, tensor))
    return cuts


def _is_trivial(nodes):
    """One weightless, shape-preserving, single-input call (e.g. a ReLU)."""
    if len(nodes) != 1:
        return False
    node = nodes[0]
    return (
        len(node.inputs) == 1
        and len(node.outputs) == 1
        and not getattr(node.layer, "weights", None)
        and tuple(node.inputs[0].shape) == tuple(node.outputs[0].shape)
    )


def _is_branched(nodes, start):
    """A segment whose input feeds several calls, or with a merge inside."""
    readers = sum(any(t is start for t in node.inputs) for node in nodes)
    return readers > 1 or any(len(node.inputs) > 1 for node in nodes)


def _label_fn(key):
    if key is None:
        return lambda path: None
    if callable(key):
        return key
    if isinstance(key, str):
        pattern = re.compile(key)

        def label(path):
            match = pattern.search(path)
            if match is None:
                return None
            return match.group(1) if pattern.groups else match.group(0)

        return label
    raise ValueError(
        "`key` must be None, a regular expression string or a callable "
        f"mapping a layer path to a group label. Received: key={key!r}"
    )


def _segment_name(nodes):
    if len(nodes) == 1:
        return nodes[0].path
    return f"{nodes[0].path}..{nodes[-1].path}"


def natural_blocks(model, key=None):
    """The blocks between consecutive cut points.

    Every segment of calls between two consecutive cut points is a block,
    except that a trailing weightless, shape-preserving call (the `ReLU`
    after a residual `Add`) joins the branched block before it. With `key`,
    consecutive blocks whose layers all carry the same group label are
    merged into one (e.g. the attention and MLP halves of a pre-norm
    transformer block, whose middle tensor is a cut point too).

    Args:
        model: a Functional or Sequential `keras.Model`, or a traced `Graph`.
        key: None, a regular expression (the first group, or the whole match,
            of `re.search` on a layer path is its label) or a callable
            `path -> label or None`.

    Returns:
        A list of `Block`, in order.
    """
    graph = model if isinstance(model, Graph) else Graph(model)
    label_of = _label_fn(key)
    cuts = cut_points(graph)
    segments = []  # [start, end, nodes, branched, label, name]
    for (p0, t0), (p1, t1) in zip(cuts[:-1], cuts[1:]):
        nodes = graph.nodes[p0 + 1 : p1 + 1]
        labels = {label_of(node.path) for node in nodes}
        label = labels.pop() if len(labels) == 1 else None
        segment = [t0, t1, list(nodes), _is_branched(nodes, t0), label]
        if segments and label is None and segments[-1][3] and _is_trivial(nodes):
            segments[-1][1] = t1
            segments[-1][2].extend(nodes)
            continue
        if segments and label is not None and segments[-1][4] == label:
            segments[-1][1] = t1
            segments[-1][2].extend(nodes)
            segments[-1][3] = segments[-1][3] or segment[3]
            continue
        segments.append(segment)
    blocks = []
    for index, (t0, t1, nodes, _, label) in enumerate(segments):
        name = label if label is not None else _segment_name(nodes)
        blocks.append(Block(t0, t1, nodes, str(name), index, 1, graph))
    return blocks


def merge_blocks(blocks, name=None):
    """One block spanning consecutive blocks (`blocks[i].end is blocks[i+1].start`).

    Args:
        blocks: consecutive `Block`s of the same graph, in order.
        name: optional name (default `first..last`).

    Returns:
        A `Block` from the first block's start to the last block's end.
    """
    blocks = list(blocks)
    if not blocks:
        raise ValueError("`blocks` must not be empty. Received: blocks=[]")
    if len(blocks) == 1 and name is None:
        return blocks[0]
    for a, b in zip(blocks[:-1], blocks[1:]):
        if a.graph is not b.graph or a.end is not b.start:
            raise ValueError(
                f"Blocks '{a.name}' and '{b.name}' are not consecutive blocks "
                "of the same model (the first must end where the second "
                f"starts). Received: blocks={[x.name for x in blocks]}"
            )
    nodes = [node for block in blocks for node in block.nodes]
    return Block(
        blocks[0].start,
        blocks[-1].end,
        nodes,
        name or f"{blocks[0].name}..{blocks[-1].name}",
        blocks[0].index,
        sum(block.size for block in blocks),
        blocks[0].graph,
    )


def find_blocks(model, min_layers=1, span=1, key=None, replaceable_only=False):
    """Candidate blocks of a Functional graph, with the shapes at both ends.

    Candidates are the natural blocks (between consecutive single-tensor cut
    points; see `natural_blocks`) and, for `span > 1`, every run of 2 to
    `span` consecutive natural blocks.

    Args:
        model: a Functional or Sequential `keras.Model` (not modified).
        min_layers: keep blocks with at least this many layer calls.
        span: longest run of consecutive natural blocks to list.
        key: group label of a layer path (regular expression or callable):
            consecutive natural blocks with the same label become one block,
            e.g. `key=r"^(block\\d+)_"` for layers named `block3_attn`...
        replaceable_only: keep only blocks whose input and output differ in
            the last axis at most (replaceable by a Dense layer).

    Returns:
        A list of `Block`s, natural blocks first, then spans by length.

    Example:

    >>> import keras
    >>> inputs = keras.Input((8,))
    >>> x = keras.layers.Dense(8, name="stem")(inputs)
    >>> y = keras.layers.Dense(8, activation="relu", name="res_fc")(x)
    >>> x = keras.layers.Add(name="res_add")([x, y])
    >>> model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x))
    >>> [b.name for b in find_blocks(model)]
    ['stem', 'res_fc..res_add', 'head']
    """
    if int(min_layers) < 1:
        raise ValueError(
            f"`min_layers` must be >= 1. Received: min_layers={min_layers!r}"
        )
    if int(span) < 1:
        raise ValueError(f"`span` must be >= 1. Received: span={span!r}")
    natural = natural_blocks(model, key=key)
    found = list(natural)
    for length in range(2, int(span) + 1):
        for i in range(len(natural) - length + 1):
            found.append(merge_blocks(natural[i : i + length]))
    found = [b for b in found if b.num_layers >= int(min_layers)]
    if replaceable_only:
        found = [b for b in found if b.replaceable]
    return found


def locate(blocks, graph):
    """The same blocks in `graph` (matched by start/end tensor names).

    Blocks found on another trace of the same model are re-anchored on
    `graph`; a list of consecutive blocks becomes one merged block.
    """
    by_name = {t.name: t for t in graph.tensors}
    position = block_positions(graph)
    found = []
    for item in blocks:
        block = item
        if isinstance(item, (list, tuple)):
            block = merge_blocks([_as_block(b) for b in item])
        block = _as_block(block)
        if block.graph is graph:
            found.append(block)
            continue
        start = by_name.get(block.start.name)
        end = by_name.get(block.end.name)
        if start is None or end is None:
            raise ValueError(
                f"Block '{block.name}' does not belong to this model: its "
                f"tensors {block.start.name!r} -> {block.end.name!r} are not "
                f"in its graph. Received: blocks=[..., {block!r}, ...]"
            )
        p0, p1 = position[id(start)], position[id(end)]
        found.append(
            Block(
                start,
                end,
                graph.nodes[p0 + 1 : p1 + 1],
                block.name,
                block.index,
                block.size,
                graph,
            )
        )
    return found


def _as_block(item):
    block = getattr(item, "block", item)  # a scored candidate carries its block
    if not isinstance(block, Block):
        raise ValueError(
            "Each entry of `blocks` must be a Block (from "
            "kprune.surgery.find_blocks), a candidate from "
            "kprune.criteria.block_redundancy, or a list of consecutive "
            f"blocks. Received: {item!r}"
        )
    return block


def block_positions(graph):
    """`{id(tensor): index of producing call}` (-1 for model inputs)."""
    position = {id(t): -1 for t in graph.inputs}
    for i, node in enumerate(graph.nodes):
        for tensor in node.outputs:
            position[id(tensor)] = i
    return position


def _safe_name(text):
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", str(text))


def _copy_renamed(layer, name):
    """`copy_layer` under another name (nested models may repeat names)."""
    serialized = keras.saving.serialize_keras_object(layer)
    serialized["config"]["name"] = name
    return keras.saving.deserialize_keras_object(
        serialized, safe_mode=not isinstance(layer, keras.layers.Lambda)
    )


def tap_model(graph, outputs=None, replacements=(), name=None, return_names=False):
    """A new Functional model re-running `graph` with some blocks swapped.

    Every layer call outside the replaced blocks is re-made on new
    `KerasTensor`s with a copy of its layer (same config and weights; a
    shared layer stays shared); the calls inside a replaced block are
    skipped and the given layer is called on the block's input instead.
    The input model and its layers are not touched.

    Args:
        graph: a traced `Graph`.
        outputs: `TensorInfo`s of `graph` to output (default: the model's
            outputs, with the model's output structure).
        replacements: `(Block, layer)` pairs; blocks must not overlap. A
            `None` layer makes the block the identity (its output is its
            input; the shapes must agree).
        name: the new model's name.
        return_names: also return `{path: name}`, the name in the new model
            of each kept layer by its path in `graph` (`"outer/inner"` for
            a layer of a nested model, which is inlined and renamed
            `"outer_inner"` where its own name is taken) and, where no path
            is the same, by its own name.

    Returns:
        A `keras.Model`, or `(model, names)` with `return_names=True`.
    """
    replacements = list(replacements)
    skipped = set()
    by_start = {}
    for block, layer in replacements:
        ids = {id(node) for node in block.nodes}
        if ids & skipped:
            raise ValueError(
                f"Block '{block.name}' overlaps another replaced block. "
                f"Received: blocks={[b.name for b, _ in replacements]}"
            )
        skipped |= ids
        by_start.setdefault(id(block.start), []).append((block, layer))

    model = graph.model
    values = {}
    new_inputs = []
    for tensor, original in zip(graph.inputs, model.inputs):
        # The input layer's name (a tensor's own name may be generated).
        history = getattr(original, "_keras_history", None)
        name = getattr(getattr(history, "operation", None), "name", original.name)
        new = keras.Input(batch_shape=tensor.shape, dtype=tensor.dtype, name=name)
        values[id(tensor)] = new
        new_inputs.append(new)

    used = set()
    copies = {}
    names = {}

    def splice(tensor):
        for block, layer in by_start.pop(id(tensor), []):
            if layer is None:  # the identity
                values[id(block.end)] = values[id(tensor)]
                splice(block.end)
                continue
            if getattr(layer, "name", None) in used:
                raise ValueError(f"Duplicate layer name '{layer.name}'.")
            used.add(layer.name)
            values[id(block.end)] = layer(values[id(tensor)])
            splice(block.end)  # a replaced block may start where this one ends

    for tensor in graph.inputs:
        splice(tensor)
    for node in graph.nodes:
        if id(node) in skipped:
            continue
        layer = copies.get(id(node.layer))
        fresh = layer is None
        if fresh:
            layer_name = getattr(node.layer, "name", None)
            if layer_name in used:
                layer_name = _safe_name(node.path.replace("/", "_"))
                while layer_name in used:
                    layer_name += "_"
                layer = _copy_renamed(node.layer, layer_name)
            else:
                layer = copy_layer(node.layer)
            used.add(layer_name)
            copies[id(node.layer)] = layer
        names[node.path] = layer.name
        inputs = [values[id(t)] for t in node.inputs]
        out = dataclasses.replace(node, layer=layer).call(inputs)
        if fresh and isinstance(layer, keras.layers.Layer):
            layer.set_weights(node.layer.get_weights())
        for tensor, value in zip(node.outputs, keras.tree.flatten(out)):
            values[id(tensor)] = value
            splice(tensor)
    if outputs is None:
        flat = [values[id(t)] for t in graph.outputs]
        structure = flat[0] if len(flat) == 1 else flat
        if len(flat) > 1:
            try:
                structure = keras.tree.pack_sequence_as(model.output, flat)
            except (AttributeError, ValueError, TypeError):
                structure = flat
    else:
        missing = [t.name for t in outputs if id(t) not in values]
        if missing:
            raise ValueError(
                f"Tensors {missing} are inside a replaced block and cannot be output."
            )
        structure = [values[id(t)] for t in outputs]
    inputs = new_inputs[0] if len(new_inputs) == 1 else new_inputs
    if len(new_inputs) > 1:
        try:
            inputs = keras.tree.pack_sequence_as(model.input, new_inputs)
        except (AttributeError, ValueError, TypeError):
            inputs = new_inputs
    new_model = keras.Model(inputs, structure, name=name or model.name)
    if not return_names:
        return new_model
    for node in graph.nodes:  # a nested layer's own name, where no path is
        if id(node) not in skipped and hasattr(node.layer, "name"):
            names.setdefault(node.layer.name, names[node.path])
    return new_model, names


def _is_array(x):
    return hasattr(x, "shape") and hasattr(x, "dtype") and not isinstance(x, dict)


def _num_rows(x):
    flat = keras.tree.flatten(x)
    return int(flat[0].shape[0])


def _slice(x, start, stop):
    return keras.tree.map_structure(lambda a: np.asarray(a[start:stop]), x)


def _all_arrays(values):
    values = list(values)
    return bool(values) and all(_is_array(v) for v in values)


def _array_inputs(data, num_inputs):
    """The model inputs when `data` holds whole arrays (not batches), else None."""
    if _is_array(data):
        return data
    if isinstance(data, dict):
        return data if _all_arrays(data.values()) else None
    if not isinstance(data, (list, tuple)) or not data:
        return None
    if _all_arrays(data):
        if num_inputs > 1 and len(data) == num_inputs:
            return list(data)  # one array per input
        return data[0]  # (x, y) or (x, y, sample_weight)
    first = data[0]
    if num_inputs > 1 and isinstance(first, (list, tuple, dict)):
        values = first.values() if isinstance(first, dict) else first
        if _all_arrays(values):
            return first  # ([x1, x2], y)
    return None


def _split_xy(item, num_inputs):
    """The model inputs of one element of `data` (drops targets)."""
    if isinstance(item, dict) or _is_array(item):
        return item
    if isinstance(item, (list, tuple)):
        if num_inputs == 1:
            return item[0]
        first = item[0]
        if isinstance(first, (list, tuple, dict)):
            return first
        return list(item)
    raise ValueError(
        "Cannot read model inputs from an element of `data`. "
        f"Received: {type(item).__name__}"
    )


def batches(model, data, batch_size=256, max_samples=None):
    """Stream model inputs from `data` in batches.

    Args:
        model: the model the inputs are for.
        data: an array (one input), a list of arrays or a dict by input name
            (several inputs), `(x, y)` (targets ignored), or a re-iterable of
            such batches (a `tf.data.Dataset`, a list of batches).
        batch_size: rows per batch when `data` holds arrays.
        max_samples: stop after this many samples.

    Yields:
        Input batches (numpy).
    """
    if int(batch_size) < 1:
        raise ValueError(
            f"`batch_size` must be >= 1. Received: batch_size={batch_size!r}"
        )
    num_inputs = len(model.inputs)
    limit = None if max_samples is None else int(max_samples)
    if limit is not None and limit < 1:
        raise ValueError(
            f"`max_samples` must be >= 1 or None. Received: max_samples={max_samples!r}"
        )
    x = _array_inputs(data, num_inputs)
    if x is not None:
        total = _num_rows(x)
        if limit is not None:
            total = min(total, limit)
        for start in range(0, total, int(batch_size)):
            yield _slice(x, start, min(start + int(batch_size), total))
        return
    if data is None or not hasattr(data, "__iter__"):
        raise ValueError(
            "`data` must be an array, a list/dict of arrays, (x, y), or an "
            f"iterable of batches. Received: data={type(data).__name__}"
        )
    seen = 0
    for item in data:
        x = keras.tree.map_structure(
            lambda a: np.asarray(keras.ops.convert_to_numpy(a)),
            _split_xy(item, num_inputs),
        )
        rows = _num_rows(x)
        if limit is not None and seen + rows > limit:
            x = _slice(x, 0, limit - seen)
            rows = limit - seen
        yield x
        seen += rows
        if limit is not None and seen >= limit:
            return


def tap_outputs(tap, x):
    """The tap model's outputs on one batch, as a list of numpy arrays."""
    out = tap(x, training=False)
    if not isinstance(out, (list, tuple)):
        out = [out]
    return [np.asarray(keras.ops.convert_to_numpy(o)) for o in out]


def run_tap(tap, data, batch_size=256, max_samples=None):
    """Yield the tap model's outputs (a list of numpy arrays) batch by batch."""
    for x in batches(tap, data, batch_size, max_samples):
        yield tap_outputs(tap, x)
