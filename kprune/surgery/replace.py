"""Replace blocks by Dense layers fitted in closed form (`replace_blocks`)."""

import keras
import numpy as np

from kprune.ops.least_squares import (
    fit_quality,
    moments_init,
    moments_update,
    solve_affine,
)
from kprune.ops.macs import layer_macs
from kprune.surgery.blocks import (
    _safe_name,
    batches,
    block_positions,
    locate,
    tap_model,
    tap_outputs,
)
from kprune.surgery.graph import Graph

FIT_INPUTS = ("replaced", "original")


def _check_replaceable(block):
    if not block.replaceable:
        raise ValueError(
            f"Block '{block.name}' maps {block.input_shape} to "
            f"{block.output_shape}: axes other than the last differ (e.g. a "
            "spatial downsampling or a flattening), so a Dense layer on the "
            "last axis cannot replace it. Choose blocks whose input and output "
            f"differ in the last axis at most. Received: block={block.name!r}"
        )


def _ordered(blocks, graph):
    position = block_positions(graph)
    blocks = sorted(blocks, key=lambda b: position[id(b.start)])
    seen = {}
    for block in blocks:
        for node in block.nodes:
            if id(node) in seen:
                raise ValueError(
                    f"Blocks '{seen[id(node)]}' and '{block.name}' overlap "
                    f"(both contain layer '{node.path}'); replace a span of "
                    "consecutive blocks by passing them as one list instead. "
                    f"Received: blocks={[b.name for b in blocks]}"
                )
            seen[id(node)] = block.name
    return blocks


def _dense(block, kernel, bias, used):
    name = _safe_name(f"{block.name}_linear")
    while name in used:
        name += "_"
    used.add(name)
    layer = keras.layers.Dense(kernel.shape[1], use_bias=True, name=name)
    layer.build(tuple(block.start.shape))
    layer.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return layer


def _accumulate(pairs, data, batch_size, max_samples):
    """Fit statistics for `(block, x_tap, x_index, y_tap, y_index)` pairs."""
    moments = [
        moments_init(b.start.channels or 1, b.end.channels or 1) for b, *_ in pairs
    ]
    taps = []
    for _, x_tap, _, y_tap, _ in pairs:
        for tap in (x_tap, y_tap):
            if all(tap is not t for t in taps):
                taps.append(tap)
    rows = 0
    for x in batches(taps[0], data, batch_size, max_samples):
        by_tap = {id(tap): tap_outputs(tap, x) for tap in taps}
        for i, (block, x_tap, xi, y_tap, yi) in enumerate(pairs):
            x_in, y_out = by_tap[id(x_tap)][xi], by_tap[id(y_tap)][yi]
            if x_in.shape[:-1] != y_out.shape[:-1]:
                raise ValueError(
                    f"Block '{block.name}' maps inputs of shape {x_in.shape} to "
                    f"outputs of shape {y_out.shape} on this data: axes other "
                    "than the last differ, so a Dense layer on the last axis "
                    f"cannot replace it. Received: block={block.name!r}"
                )
            moments[i] = moments_update(moments[i], x_in, y_out)
        rows += 1
    if rows == 0:
        raise ValueError(
            "`data` gave no batches: the fit needs samples. "
            f"Received: data={type(data).__name__}"
        )
    return moments


def _block_cost(block, graph, all_replaced):
    """Params and MACs (per sample) of the layer calls inside the block."""
    inside = {id(n) for n in all_replaced}
    params = 0
    seen = set()
    for node in block.nodes:
        layer = node.layer
        if id(layer) in seen or not isinstance(layer, keras.layers.Layer):
            continue
        seen.add(id(layer))
        calls = graph.layer_nodes.get(id(layer), [])
        if all(id(c) in inside for c in calls):
            params += sum(int(np.prod(w.shape)) for w in layer.weights)
    macs = 0
    for node in block.nodes:
        if not isinstance(node.layer, keras.layers.Layer) or not node.inputs:
            continue
        count = layer_macs(node.layer, node.inputs[0].shape, node.outputs[0].shape)
        macs += count or 0
    return params, macs


def _dense_cost(block):
    d_in, d_out = block.start.channels, block.end.channels
    positions = block.start.shape[1:-1]
    positions = (
        int(np.prod(positions)) if all(p is not None for p in positions) else None
    )
    params = (d_in + 1) * d_out
    macs = None if positions is None else positions * d_in * d_out
    return params, macs


def replace_blocks(
    model,
    blocks,
    data,
    ridge=0.0,
    batch_size=256,
    max_samples=None,
    fit_inputs="replaced",
    return_info=False,
):
    """Replace blocks by Dense layers fitted in closed form, without retraining.

    Each chosen block (or span of consecutive blocks) with input `x` and
    output `y` is replaced by one `keras.layers.Dense` on the last axis,

        y ≈ x @ W + b,   min (1/n) Σ ||x_i W + b - y_i||² + ridge ||W||²,

    where every leading position (sample, token, pixel) is a row and all rows
    share `W`, `b` (so vectors, token sequences and feature maps all work).
    `W`, `b` come from the normal equations accumulated batch by batch
    (`kprune.ops.least_squares`), so memory does not grow with the
    number of samples. The rest of the network keeps its layers and weights;
    the result is a new Functional model (nested models are inlined) made of
    standard Keras layers: it saves, loads and exports to TFLite.

    Args:
        model: a Functional or Sequential `keras.Model` (never modified).
        blocks: the blocks to replace: `Block`s from
            `kprune.surgery.find_blocks`, candidates from
            `kprune.criteria.block_redundancy`, or lists of consecutive
            blocks (one Dense for the whole list). Blocks must not overlap.
        data: inputs to fit on: an array, a list/dict of arrays, `(x, y)`, or
            a re-iterable of batches (a few hundred to a few thousand
            samples are enough).
        ridge: L2 penalty on the Dense kernel (`>= 0`).
        batch_size: rows per forward pass when `data` holds arrays.
        max_samples: use at most this many samples of `data`.
        fit_inputs: `"replaced"` (default): block `k` is fitted on the inputs
            it sees once the earlier chosen blocks are replaced (targets from
            the original model), so errors do not pile up; `"original"`: all
            blocks are fitted on the original model's activations in one pass
            (the paper's setting).
        return_info: also return one dict per replaced block.

    Returns:
        The new `keras.Model`; with `return_info=True`, `(model, info)` where
        `info[i]` has `name`, `layers` (paths of the removed calls),
        `input_shape`, `output_shape`, `r2` and `mse` of the fit on `data`,
        `params_removed`, `params_added`, `macs_removed`, `macs_added`
        (MACs per sample as counted by `kprune.report.layer_macs`) and
        `dense` (the new layer's name).

    Raises:
        ValueError: a block whose input and output differ in an axis other
            than the last (named in the message), overlapping blocks, a
            block of another model, bad arguments.

    Example:

    >>> import keras, numpy as np, kprune
    >>> inputs = keras.Input((8,))
    >>> x = keras.layers.Dense(8, name="stem")(inputs)
    >>> y = keras.layers.Dense(8, name="res_fc")(x)   # linear: exactly affine
    >>> x = keras.layers.Add(name="res_add")([x, y])
    >>> model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x))
    >>> block = kprune.surgery.find_blocks(model)[1]
    >>> block.name
    'res_fc..res_add'
    >>> data = np.random.rand(64, 8).astype("float32")
    >>> small = kprune.surgery.replace_blocks(model, [block], data)
    >>> bool(np.allclose(model(data), small(data), atol=1e-4))
    True

    Reference:
        Cannistraci, Rodolà, Rieck. Detecting and Approximating Redundant
        Computational Blocks in Neural Networks. arXiv:2410.04941 (2024).
    """
    if fit_inputs not in FIT_INPUTS:
        raise ValueError(
            f"`fit_inputs` must be one of {FIT_INPUTS}. "
            f"Received: fit_inputs={fit_inputs!r}"
        )
    if not isinstance(ridge, (int, float)) or ridge < 0:
        raise ValueError(f"`ridge` must be a number >= 0. Received: ridge={ridge!r}")
    if not isinstance(blocks, (list, tuple)) or not blocks:
        raise ValueError(
            f"`blocks` must be a non-empty list of blocks. Received: blocks={blocks!r}"
        )
    graph = Graph(model)
    chosen = _ordered(locate(blocks, graph), graph)
    for block in chosen:
        _check_replaceable(block)
    if fit_inputs == "replaced" and len(chosen) > 1 and hasattr(data, "__next__"):
        raise ValueError(
            "`fit_inputs='replaced'` reads `data` once per block, but `data` "
            "is a one-shot iterator. Pass arrays, a list of batches or a "
            "tf.data.Dataset, or use fit_inputs='original' (one pass). "
            f"Received: data={type(data).__name__}"
        )

    used = {getattr(node.layer, "name", None) for node in graph.nodes}
    original = tap_model(
        graph,
        outputs=_unique([t for b in chosen for t in (b.start, b.end)]),
        name="kprune_original_tap",
    )
    index = {
        id(t): i
        for i, t in enumerate(_unique([t for b in chosen for t in (b.start, b.end)]))
    }
    fitted = []
    qualities = []
    if fit_inputs == "original":
        pairs = [
            (b, original, index[id(b.start)], original, index[id(b.end)])
            for b in chosen
        ]
        moments = _accumulate(pairs, data, batch_size, max_samples)
        for block, m in zip(chosen, moments):
            kernel, bias = solve_affine(m, ridge)
            qualities.append(fit_quality(m, kernel))
            fitted.append((block, _dense(block, kernel, bias, used)))
    else:
        for block in chosen:
            if fitted:
                x_tap = tap_model(
                    graph, [block.start], fitted, name="kprune_replaced_tap"
                )
                x_index = 0
            else:
                x_tap, x_index = original, index[id(block.start)]
            pair = (block, x_tap, x_index, original, index[id(block.end)])
            (m,) = _accumulate([pair], data, batch_size, max_samples)
            kernel, bias = solve_affine(m, ridge)
            qualities.append(fit_quality(m, kernel))
            fitted.append((block, _dense(block, kernel, bias, used)))

    # Fresh Dense layers for the result (those above also fed the taps).
    final = []
    for block, dense in fitted:
        copy = keras.layers.Dense(dense.units, use_bias=True, name=dense.name)
        copy.build(tuple(block.start.shape))
        copy.set_weights(dense.get_weights())
        final.append((block, copy))
    new_model = tap_model(graph, None, final, name=model.name)
    if not return_info:
        return new_model
    all_nodes = [n for b in chosen for n in b.nodes]
    info = []
    for (block, dense), quality in zip(fitted, qualities):
        params, macs = _block_cost(block, graph, all_nodes)
        dense_params, dense_macs = _dense_cost(block)
        info.append(
            {
                "name": block.name,
                "layers": block.layer_names,
                "input_shape": list(block.input_shape),
                "output_shape": list(block.output_shape),
                "r2": quality["r2"],
                "mse": quality["mse"],
                "params_removed": int(params),
                "params_added": int(dense_params),
                "macs_removed": int(macs),
                "macs_added": dense_macs,
                "dense": dense.name,
            }
        )
    return new_model, info


def _unique(tensors):
    seen, out = set(), []
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out
