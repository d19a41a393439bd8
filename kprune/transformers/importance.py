"""Importance of a KerasHub backbone's channels, units, heads and blocks."""

import keras
import numpy as np

from kprune.criteria.transformer_scores import TransformerScores, activation_scores
from kprune.transformers.slicing import norm_layers, weight_infos
from kprune.transformers.spec import get_family

METHODS = ("activation", "magnitude")


def _magnitudes(backbone, spec):
    """Weight-norm scores: per unit, the L2 norm of every weight slice it owns."""
    config = backbone.get_config()
    num_blocks = len(spec.blocks(backbone))
    hidden = np.zeros(config[spec.hidden])
    ffn = [np.zeros(spec.ffn_units(config)) for _ in range(num_blocks)]
    heads = [np.zeros(config[spec.heads]) for _ in range(num_blocks)]
    group = config[spec.heads] // spec.num_kv_heads(config)
    for info in weight_infos(backbone, spec):
        value = keras.ops.convert_to_numpy(info.variable).astype(np.float64) ** 2
        for axis, role in enumerate(info.roles):
            if role == ".":
                continue
            other = tuple(a for a in range(value.ndim) if a != axis)
            sums = value.sum(axis=other) if other else value
            if role == "h":
                hidden += sums
            elif role == "f":
                ffn[info.block] += sums
            elif role == "q":
                heads[info.block] += sums
            elif role == "k":
                heads[info.block] += np.repeat(sums, group)
    return TransformerScores(
        hidden=np.sqrt(hidden),
        ffn=[np.sqrt(v) for v in ffn],
        heads=[np.sqrt(v) for v in heads],
    )


def importance_scores(
    backbone,
    data=None,
    importance="activation",
    batch_size=16,
    max_samples=None,
    need=("hidden", "ffn", "heads", "layers"),
):
    """Scores of every prunable unit of a KerasHub backbone (higher = keep).

    `importance="activation"` (Minitron): hidden channels by the mean size
    of every normalization layer's output channel, FFN units by their mean
    activation, heads by their output norm, all on the calibration `data`
    (`kprune.criteria.activation_scores`); blocks by block influence,
    `1 - cos(block input, block output)` (ShortGPT). `"magnitude"`: widths
    by the L2 norm of the weights each unit owns (no data needed), blocks
    still by block influence. A callable `importance(backbone, data)` must
    return a `kprune.criteria.TransformerScores`.

    Args:
        backbone: a KerasHub backbone of a registered family (not modified).
        data: calibration inputs in the backbone's input format (a dict of
            `token_ids` / `padding_mask` arrays, images, or batches).
        importance: `"activation"`, `"magnitude"` or a callable.
        batch_size: rows per forward pass.
        max_samples: use at most this many examples.
        need: which scores to compute (a subset of `("hidden", "ffn",
            "heads", "layers")`).

    Returns:
        A `kprune.criteria.TransformerScores`.

    Example:

    >>> import keras_hub, numpy as np
    >>> backbone = keras_hub.models.GPT2Backbone(
    ...     vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=8,
    ...     intermediate_dim=16, max_sequence_length=8)
    >>> data = {"token_ids": np.ones((4, 8), "int32"),
    ...         "padding_mask": np.ones((4, 8), "int32")}
    >>> scores = importance_scores(backbone, data)
    >>> scores.hidden.shape, len(scores.ffn), scores.layers.shape
    ((8,), 2, (2,))

    Reference:
        Muralidharan et al., "Compact Language Models via Pruning and
        Knowledge Distillation", arXiv 2407.14679 (2024); Men et al.,
        "ShortGPT", arXiv 2403.03853 (2024).
    """
    spec = get_family(backbone)
    spec.check(backbone)
    if callable(importance):
        scores = importance(backbone, data)
        if not isinstance(scores, TransformerScores):
            raise ValueError(
                "A callable `importance` must return a "
                "kprune.criteria.TransformerScores. Received: "
                f"{type(scores).__name__}"
            )
        return scores
    if importance not in METHODS:
        raise ValueError(
            f"`importance` must be one of {METHODS} or a callable. "
            f"Received: importance={importance!r}"
        )
    need = set(need)
    scores = TransformerScores()
    if importance == "magnitude":
        scores = _magnitudes(backbone, spec)
        need &= {"layers"}
    if not need:
        return scores
    if data is None:
        raise ValueError(
            f"Scoring {sorted(need)} needs calibration `data` (a few dozen "
            "examples in the backbone's input format). Received: data=None"
        )
    blocks = spec.blocks(backbone)
    measured = activation_scores(
        backbone,
        data,
        blocks,
        ffn_layers=[spec.ffn_layer(b) for b in blocks] if "ffn" in need else None,
        head_layers=[spec.heads_layer(b) for b in blocks] if "heads" in need else None,
        hidden_layers=norm_layers(backbone, spec) if "hidden" in need else None,
        batch_size=batch_size,
        max_samples=max_samples,
    )
    for field in ("hidden", "ffn", "heads", "layers"):
        if field in need:
            setattr(scores, field, getattr(measured, field))
    return scores
