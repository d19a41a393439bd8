"""Transformer blocks replaced by fitted linear maps (Cannistraci et al.).

A block `y = f(x)` of a transformer stack (`x`, `y`: the residual stream
before and after it) whose output is almost an affine function of its
input can be replaced by one `Dense(hidden)` on the last axis, fitted in
closed form on calibration tokens. KerasHub's constructors have no place
for such a map in the residual stream (a pre-norm stack adds every block's
output to an un-normalized stream that the next block's norm reads; a
full `hidden x hidden` map cannot be folded into the neighbours' weights),
so the result is a Functional `keras.Model` with the backbone's inputs and
outputs: the backbone's own layers (copies), the chosen blocks swapped for
`Dense` layers. It saves, loads and trains like any Keras model; task
classes that need the backbone class (`GPT2CausalLM.generate`) do not take
it.
"""

import keras
import numpy as np

from kprune.criteria.calibration import Tap, collect_statistics, iterate_batches
from kprune.ops.least_squares import (
    as_rows,
    fit_quality,
    moments_init,
    moments_update,
    solve_affine,
)
from kprune.transformers.plan import TransformerPlan
from kprune.transformers.slicing import apply_plan
from kprune.transformers.spec import get_family


def _copy(backbone, spec):
    layers = len(spec.blocks(backbone))
    return apply_plan(backbone, TransformerPlan(spec.name, layers, range(layers)), spec)


def block_redundancy(backbone, data, batch_size=16, max_samples=None, ridge=0.0):
    """How well each block of a KerasHub backbone is an affine map (one pass).

    For block `b` with input `x` and output `y` on the calibration tokens:
    block influence `BI = mean(1 - cos(x, y))` (ShortGPT) and the R² / MSE
    of the closed-form affine fit `y ≈ x W + c` (Cannistraci et al.), every
    non-padding token a row.

    Args:
        backbone: a KerasHub backbone of a registered family (not modified).
        data: calibration inputs in the backbone's input format.
        batch_size: rows per forward pass.
        max_samples: use at most this many examples.
        ridge: ridge penalty of the fit.

    Returns:
        One dict per block, in block order: `index`, `name`, `influence`,
        `r2`, `mse`.

    Example:

    >>> import keras_hub, numpy as np
    >>> backbone = keras_hub.models.GPT2Backbone(
    ...     vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=8,
    ...     intermediate_dim=16, max_sequence_length=8)
    >>> data = {"token_ids": np.ones((4, 8), "int32"),
    ...         "padding_mask": np.ones((4, 8), "int32")}
    >>> [sorted(r) for r in block_redundancy(backbone, data)][0]
    ['index', 'influence', 'mse', 'name', 'r2']

    Reference:
        Cannistraci, Rodolà, Rieck, "Detecting and Approximating Redundant
        Computational Blocks in Neural Networks", arXiv 2410.04941 (2024).
    """
    spec = get_family(backbone)
    blocks = spec.blocks(backbone)
    taps = {}
    for i, block in enumerate(blocks):
        taps[f"bi/{i}"] = Tap(block, "influence")
        taps[f"m/{i}"] = Tap(block, "moments")
    stats = collect_statistics(backbone, data, taps, batch_size, max_samples)
    rows = []
    for i, block in enumerate(blocks):
        moments = stats[f"m/{i}"]
        kernel, _ = solve_affine(moments, ridge)
        quality = fit_quality(moments, kernel)
        rows.append(
            {
                "index": i,
                "name": block.name,
                "influence": float(stats[f"bi/{i}"]),
                "r2": quality["r2"],
                "mse": quality["mse"],
            }
        )
    return rows


def _functional(copy, replacements):
    """`copy`'s top-level graph with some block calls swapped for layers."""
    view = keras.Model(copy.input, copy.output)

    def call(layer, *args, **kwargs):
        if id(layer) in replacements:
            return replacements[id(layer)](args[0])
        return layer(*args, **kwargs)

    return keras.models.clone_model(
        view, clone_function=lambda layer: layer, call_function=call
    )


def _block_arrays(model, block, data, batch_size, max_samples, where):
    """Per batch, the block's input or output (NumPy), and the masks."""
    values, masks = [], []
    call = block.call

    def record(*args, **kwargs):
        outputs = call(*args, **kwargs)
        value = args[0] if where == "input" else outputs
        if isinstance(value, (list, tuple)):
            value = value[0]
        values.append(keras.ops.convert_to_numpy(value))
        return outputs

    block.call = record
    try:
        for x in iterate_batches(data, batch_size, max_samples):
            model(x, training=False)
            mask = x.get("padding_mask") if isinstance(x, dict) else None
            masks.append(None if mask is None else np.asarray(mask).astype(bool))
    finally:
        del block.call
    return values, masks


def replace_blocks(
    backbone,
    blocks,
    data,
    ridge=0.0,
    fit_inputs="replaced",
    batch_size=16,
    max_samples=None,
    return_info=False,
):
    """Replace blocks of a KerasHub backbone by `Dense` maps fitted in closed form.

    Each chosen block with input `x` and output `y` (the residual stream,
    one row per non-padding calibration token) becomes
    `Dense(hidden)(x) = x W + c` with

        W, c = argmin Σ ||x W + c - y||² + ridge ||W||²

    (`kprune.ops.least_squares`). The result is a Functional
    `keras.Model` with the backbone's inputs and outputs, built from copies
    of its layers (the backbone is not modified); see the module docstring
    for why it cannot keep the backbone's class.

    Args:
        backbone: a KerasHub backbone of a registered family whose blocks are
            called at its top level (GPT-2, BERT, Llama, Gemma, ...).
        blocks: indices of the blocks to replace (e.g. the most linear ones
            from `block_redundancy`).
        data: calibration inputs in the backbone's input format.
        ridge: ridge penalty of the fit (`>= 0`).
        fit_inputs: `"replaced"` (default): each block is fitted, in order,
            on the inputs it receives once the earlier chosen blocks are
            replaced, against the original block outputs, so errors do not
            pile up; `"original"`: every block on the original activations.
        batch_size: rows per forward pass.
        max_samples: use at most this many examples.
        return_info: also return one dict per replaced block (`index`,
            `name`, `r2`, `mse` of its fit, `params_removed`, `params_added`).

    Returns:
        The Functional model (and the info list with `return_info=True`).

    Example:

    >>> import keras_hub, numpy as np
    >>> backbone = keras_hub.models.GPT2Backbone(
    ...     vocabulary_size=50, num_layers=3, num_heads=2, hidden_dim=8,
    ...     intermediate_dim=16, max_sequence_length=8)
    >>> data = {"token_ids": np.random.randint(0, 50, (8, 8)),
    ...         "padding_mask": np.ones((8, 8), "int32")}
    >>> model = replace_blocks(backbone, [1], data)
    >>> [layer.name for layer in model.layers if "linear" in layer.name]
    ['linear_transformer_layer_1']

    Reference:
        Cannistraci, Rodolà, Rieck, "Detecting and Approximating Redundant
        Computational Blocks in Neural Networks", arXiv 2410.04941 (2024).
    """
    if fit_inputs not in ("replaced", "original"):
        raise ValueError(
            "`fit_inputs` must be 'replaced' or 'original'. "
            f"Received: fit_inputs={fit_inputs!r}"
        )
    spec = get_family(backbone)
    spec.check(backbone)
    originals = spec.blocks(backbone)
    try:
        chosen = sorted({int(i) for i in blocks})
    except (TypeError, ValueError):
        chosen = []
    if not chosen or chosen[0] < 0 or chosen[-1] >= len(originals):
        raise ValueError(
            "`blocks` lists the indices of the blocks to replace (0 to "
            f"{len(originals) - 1}). Received: blocks={blocks!r}"
        )
    top_level = {id(op) for op in backbone.operations}
    for i in chosen:
        if id(originals[i]) not in top_level:
            raise ValueError(
                f"{spec.name}'s block {i} ({originals[i].name!r}) is called "
                "inside another layer, not by the backbone itself, so it "
                "cannot be swapped in the backbone's graph. Received: "
                f"blocks={chosen}"
            )
    copy = _copy(backbone, spec)
    copies = spec.blocks(copy)
    replacements, info = {}, []
    for i in chosen:
        block = copies[i]
        if fit_inputs == "replaced" and replacements:
            current = _functional(copy, replacements)
        else:
            current = copy
        xs, masks = _block_arrays(
            current, block, data, batch_size, max_samples, "input"
        )
        ys, _ = _block_arrays(copy, block, data, batch_size, max_samples, "output")
        moments = None
        for x, y, mask in zip(xs, ys, masks):
            if mask is not None and mask.shape == x.shape[:2]:
                x, y = x[mask], y[mask]
            if moments is None:
                moments = moments_init(x.shape[-1], y.shape[-1])
            moments = moments_update(moments, as_rows(x), as_rows(y))
        kernel, bias = solve_affine(moments, ridge)
        quality = fit_quality(moments, kernel)
        dense = keras.layers.Dense(
            kernel.shape[1], name=f"linear_{block.name}", dtype=block.dtype_policy
        )
        dense.build((None, kernel.shape[0]))
        dense.kernel.assign(kernel.astype("float32"))
        dense.bias.assign(bias.astype("float32"))
        replacements[id(block)] = dense
        info.append(
            {
                "index": i,
                "name": block.name,
                "r2": quality["r2"],
                "mse": quality["mse"],
                "params_removed": int(block.count_params()),
                "params_added": int(dense.count_params()),
            }
        )
    model = _functional(copy, replacements)
    return (model, info) if return_info else model
