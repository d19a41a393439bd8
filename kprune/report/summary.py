"""Parameters, non-zeros, MACs and widths of a Keras model, layer by layer."""

import keras
import numpy as np

from kprune.ops.macs import attention_macs, layer_macs, layer_width
from kprune.report.call_macs import call_macs
from kprune.surgery.compiling import clone_model
from kprune.surgery.errors import SurgeryError

#: Unknown input sizes (a sequence length, an image side) are counted at this.
UNKNOWN_SIZE = 128


def _is_graph_model(layer):
    """Functional or Sequential (a model whose layers we can walk)."""
    return isinstance(layer, keras.Sequential) or (
        isinstance(layer, keras.Model)
        and hasattr(layer, "_nodes_by_depth")
        and hasattr(layer, "operations")
    )


def _shape(tensors):
    """Shape of the first tensor of a call's inputs/outputs."""
    flat = keras.tree.flatten(tensors)
    if not flat or not hasattr(flat[0], "shape"):
        return None
    return tuple(flat[0].shape)


def _attention_shapes(node):
    """(query, value, key) shapes of a MultiHeadAttention call node."""
    arguments = getattr(node, "arguments", None)
    if arguments is None:
        return None
    args, kwargs = list(arguments.args), dict(arguments.kwargs)
    names = ("query", "value", "key")
    values = [
        args[i] if i < len(args) else kwargs.get(name) for i, name in enumerate(names)
    ]
    return tuple(None if v is None else _shape(v) for v in values)


def _node_macs(layer, node, in_shape, out_shape):
    """MACs of one graph node of `layer` (None: unknown)."""
    if isinstance(layer, keras.layers.MultiHeadAttention):
        shapes = _attention_shapes(node)
        if shapes is not None and shapes[0] is not None:
            return attention_macs(layer, *shapes)
    return layer_macs(layer, in_shape, out_shape)


def _calls(parent, layer):
    """(input_shape, output_shape, macs) of every call of `layer` in `parent`.

    Reads the parent's graph nodes (so a shared layer called twice counts
    twice); falls back to `layer.input` / `layer.output` (its first call).
    """
    graph = parent
    if isinstance(parent, keras.Sequential):
        graph = getattr(parent, "_functional", None)
    nodes_by_depth = getattr(graph, "_nodes_by_depth", None) or {}
    calls = []
    for nodes in nodes_by_depth.values():
        for node in nodes:
            if getattr(node, "operation", None) is layer:
                shapes = _shape(node.input_tensors), _shape(node.output_tensors)
                calls.append((*shapes, _node_macs(layer, node, *shapes)))
    if calls:
        return calls
    try:
        shapes = _shape(layer.input), _shape(layer.output)
    except (AttributeError, ValueError):
        return []
    return [(*shapes, layer_macs(layer, *shapes))]


def _count(weights, memo=None):
    """`(size, nonzero)` summed over `weights`; `memo` (id -> counts) makes
    each variable be read once per summary, however many totals it is in."""
    total = nonzero = 0
    for w in weights:
        counts = None if memo is None else memo.get(id(w))
        if counts is None:
            value = np.asarray(keras.ops.convert_to_numpy(w))
            counts = (value.size, int(np.count_nonzero(value)))
            if memo is not None:
                memo[id(w)] = counts
        total += counts[0]
        nonzero += counts[1]
    return total, nonzero


def _sparsity(nonzero, total):
    """`1 - nonzero / total` (0 for an empty count)."""
    return 1.0 - nonzero / total if total else 0.0


def _unique(weights):
    seen, out = set(), []
    for w in weights:
        if id(w) not in seen:
            seen.add(id(w))
            out.append(w)
    return out


def _leaves(model, prefix="", multiplier=1):
    """Yield (path, layer, calls, multiplier) for every leaf layer."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        path = prefix + layer.name
        calls = _calls(model, layer)
        if _is_graph_model(layer):
            yield from _leaves(layer, path + "/", multiplier * max(1, len(calls)))
        else:
            yield path, layer, calls, multiplier


def _rows(model, shape_model, memo=None):
    """One row per leaf layer; shapes (MACs) from `shape_model`."""
    weights_of = {path: layer for path, layer, _, _ in _leaves(model)}
    rows, unknown = [], []
    for path, layer, calls, multiplier in _leaves(shape_model):
        owner = weights_of.get(path, layer)
        params, nonzero = _count(_unique(owner.weights), memo)
        macs = 0
        output_shape = calls[0][1] if calls else None
        if not calls and layer_macs(layer, None, None) != 0:
            unknown.append(path)
        for _, _, count in calls:
            if count is None:
                unknown.append(path)
                count = 0
            macs += count * multiplier
        rows.append(
            {
                "name": path,
                "class_name": layer.__class__.__name__,
                "params": params,
                "nonzero_params": nonzero,
                "macs": int(macs),
                "width": layer_width(layer, output_shape),
                "output_shape": None if output_shape is None else list(output_shape),
                "calls": len(calls) * multiplier,
            }
        )
    return rows, unknown


def _input_shapes(model, input_shape, unknown_size):
    """Full input shapes (batch 1) to count MACs at, one per model input."""
    inputs = list(model.inputs)
    if input_shape is None:
        shapes = [tuple(x.shape[1:]) for x in inputs]
    elif isinstance(input_shape, dict):
        names = [x.name for x in inputs]
        struct = getattr(model, "_inputs_struct", None)
        if isinstance(struct, dict):
            names = [k for k in sorted(struct)]
        missing = [n for n in names if n not in input_shape]
        if missing or len(input_shape) != len(names):
            raise ValueError(
                f"`input_shape` as a dict needs one shape per model input, by "
                f"name: {names}. Received: input_shape={input_shape!r}"
            )
        shapes = [tuple(input_shape[n]) for n in names]
    else:
        shapes = [input_shape] if len(inputs) == 1 else list(input_shape)
    valid = len(shapes) == len(inputs) and all(
        isinstance(shape, (tuple, list))
        and len(shape) == len(x.shape) - 1
        and all(d is None or isinstance(d, (int, np.integer)) for d in shape)
        for shape, x in zip(shapes, inputs)
    )
    if not valid:
        raise ValueError(
            f"`input_shape` must be one shape (without the batch axis) per "
            f"model input ({len(inputs)}). Received: input_shape={input_shape!r}"
        )
    filled = []
    for shape, x in zip(shapes, inputs):
        known = [d if d is not None else s for d, s in zip(shape, x.shape[1:])]
        if unknown_size is not None:
            known = [unknown_size if d is None else d for d in known]
        filled.append((1, *(None if d is None else int(d) for d in known)))
    return filled


def _graph_rows(model, input_shapes, memo=None):
    """One row per leaf layer, MACs from the traced graph (inside layers)."""
    graph, counts = call_macs(model, input_shapes)
    leaves = list(_leaves(model))
    names = {path for path, _, _, _ in leaves}
    macs, calls, shapes, unknown, inside = {}, {}, {}, [], {}
    for path, count, shape in counts:
        if "/" in path and path not in names:
            before = inside.get(path, 0)
            inside[path] = None if None in (count, before) else before + count
        owner = path
        while owner not in names and "/" in owner:
            owner = owner.rsplit("/", 1)[0]
        if owner not in names:
            owner = _OPS_ROW  # a keras.ops call of the model itself
        if count is None:
            unknown.append(owner if owner == path else f"{owner} ({path})")
            count = 0
        macs[owner] = macs.get(owner, 0) + count
        if owner == path:
            calls[owner] = calls.get(owner, 0) + 1
            shapes.setdefault(owner, shape)
    for call in graph.composites:
        if call.path in names:
            calls[call.path] = calls.get(call.path, 0) + 1
            shapes.setdefault(call.path, tuple(call.outputs[0].shape))
    for path, reason in graph.opaque.items():
        if path in names and _kernels(graph.layers_by_path.get(path)):
            unknown.append(f"{path} ({reason})")
    rows = []
    for path, layer, _, _ in leaves:
        params, nonzero = _count(_unique(layer.weights), memo)
        output_shape = shapes.get(path)
        rows.append(
            {
                "name": path,
                "class_name": layer.__class__.__name__,
                "params": params,
                "nonzero_params": nonzero,
                "macs": int(macs.get(path, 0)),
                "width": layer_width(layer, output_shape),
                "output_shape": None if output_shape is None else list(output_shape),
                "calls": calls.get(path, 0),
            }
        )
    if macs.get(_OPS_ROW):
        rows.append(
            {
                "name": _OPS_ROW,
                "class_name": "Operation",
                "params": 0,
                "nonzero_params": 0,
                "macs": int(macs[_OPS_ROW]),
                "width": None,
                "output_shape": None,
                "calls": calls.get(_OPS_ROW, 0),
            }
        )
    return rows, unknown, inside


#: The row of `keras.ops` calls (einsum, matmul) made by the model itself.
_OPS_ROW = "(keras.ops)"


def _kernels(layer):
    return layer is not None and any(len(w.shape) >= 2 for w in layer.weights)


def _with_input_shape(model, input_shape):
    """A clone of `model` (new layers, same names) on concrete input shapes."""
    inputs = list(model.inputs)
    shapes = [input_shape] if len(inputs) == 1 else list(input_shape)
    valid = len(shapes) == len(inputs) and all(
        isinstance(shape, (tuple, list))
        and all(d is None or isinstance(d, (int, np.integer)) for d in shape)
        for shape in shapes
    )
    if not valid:
        raise ValueError(
            f"`input_shape` must be one shape (without the batch axis) per "
            f"model input ({len(inputs)}). Received: input_shape={input_shape!r}"
        )
    new_inputs = [
        keras.Input(tuple(shape), dtype=tensor.dtype)
        for shape, tensor in zip(shapes, inputs)
    ]
    try:
        struct = model.input
    except (AttributeError, ValueError):
        struct = new_inputs
    packed = keras.tree.pack_sequence_as(struct, new_inputs)
    return clone_model(model, compile=False, input_tensors=packed)


def summary(model, input_shape=None, unknown_size=UNKNOWN_SIZE):
    """Parameters, non-zero parameters, MACs and widths of a Keras model.

    `sparsity = 1 - nonzero_params / params` over all weights;
    `kernel_sparsity` is the same over kernels only (weights with 2 or more
    dimensions: Dense / Conv kernels, embeddings), which is what magnitude
    pruning and HyperSparse drive to zero.

    MACs are multiply-accumulates per sample (batch size 1) of inference,
    counted per layer call from the call's output shape (see
    `kprune.report.layer_macs` for the rules: Dense, EinsumDense, Conv1D/2D/3D
    with strides/dilation/groups, Conv transpose, DepthwiseConv,
    SeparableConv, MultiHeadAttention, SimpleRNN / LSTM / GRU; Embedding and
    normalization count 0). A layer made of sublayers (a KerasHub
    transformer block, an MBConv block, grouped-query attention) is traced
    into its parts and counts the MACs of the calls inside it, the
    `keras.ops.einsum` / `matmul` of its attention scores included. A
    shared layer counts once per call; layers of a nested
    Functional/Sequential model appear as `"outer/inner"` and count once
    per call of the nested model. Layers with kernels whose MACs cannot be
    counted are named in `unknown_macs`.

    MACs depend on the input size: an unknown size in the model's inputs
    (a KerasHub backbone's sequence length, an image model built on
    `(None, None, 3)`) is counted at `unknown_size` unless `input_shape`
    gives it; the shapes used are in the result's `input_shapes`.

    Args:
        model: a built Keras model (Functional, Sequential, possibly
            nested). Not modified.
        input_shape: optional input shape without the batch axis (a list
            of shapes for several inputs, or a dict by input name such as
            `{"token_ids": (512,), "padding_mask": (512,)}`) to count MACs
            at.
        unknown_size: the size unknown input dimensions are counted at
            when `input_shape` does not give them (None: not counted; the
            layers that depend on them are then listed in `unknown_macs`).

    Returns:
        A JSON-able dict with keys `model`, `params`, `trainable_params`,
        `non_trainable_params`, `nonzero_params`, `sparsity`,
        `kernel_params`, `kernel_nonzero_params`, `kernel_sparsity`, `macs`,
        `layers` (one dict per leaf layer: `name`, `class_name`, `params`,
        `nonzero_params`, `macs`, `width`, `output_shape`, `calls`),
        `widths` (`{layer name: width}` for layers that define one),
        `input_shapes` (the input shapes MACs were counted at, without the
        batch axis), `inner_macs` (`{path: MACs}` of each call inside a
        layer of sublayers, None where not counted; part of that layer's
        row) and `unknown_macs` (layers whose MACs could not be
        counted: a dimension was unknown, or a layer kprune cannot count).

    Example:

    >>> model = keras.Sequential(
    ...     [
    ...         keras.Input((784,)),
    ...         keras.layers.Dense(300, name="fc1"),
    ...         keras.layers.Dense(10, name="fc2"),
    ...     ]
    ... )
    >>> s = summary(model)
    >>> s["params"], s["macs"], s["widths"]
    (238510, 238200, {'fc1': 300, 'fc2': 10})
    """
    if not isinstance(model, keras.layers.Layer):
        raise ValueError(
            f"`model` must be a Keras model. Received: model={type(model).__name__}"
        )
    if not model.built:
        raise ValueError(
            f"Model '{model.name}' is not built; build it (call it on data or "
            "create it from `keras.Input`) before `summary`. "
            f"Received: model={model.name}"
        )
    weights = _unique(model.weights)
    memo = {}  # each variable is read once
    params, nonzero = _count(weights, memo)
    trainable, _ = _count(_unique(model.trainable_weights), memo)
    kernels = [w for w in weights if len(w.shape) >= 2]
    kernel_params, kernel_nonzero = _count(kernels, memo)
    rows, unknown, shapes, inside = [], [], None, {}
    if _is_graph_model(model):
        shapes = _input_shapes(model, input_shape, unknown_size)
        try:
            rows, unknown, inside = _graph_rows(model, shapes, memo)
        except SurgeryError:
            # A graph kprune cannot trace: counted layer by layer instead.
            shape_model = model
            if input_shape is not None:
                shape_model = _with_input_shape(model, input_shape)
            rows, unknown = _rows(model, shape_model, memo)
    else:
        # A subclassed model or a single layer: weights only, no graph.
        unknown.append(model.name)
    return {
        "model": model.name,
        "params": params,
        "trainable_params": trainable,
        "non_trainable_params": params - trainable,
        "nonzero_params": nonzero,
        "sparsity": _sparsity(nonzero, params),
        "kernel_params": kernel_params,
        "kernel_nonzero_params": kernel_nonzero,
        "kernel_sparsity": _sparsity(kernel_nonzero, kernel_params),
        "macs": int(sum(row["macs"] for row in rows)),
        "layers": rows,
        "widths": {r["name"]: r["width"] for r in rows if r["width"] is not None},
        "input_shapes": None if shapes is None else [list(s[1:]) for s in shapes],
        "inner_macs": inside,
        "unknown_macs": sorted(set(unknown)),
    }
