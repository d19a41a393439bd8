"""`kprune.transformers.prune`: width and depth pruning of KerasHub backbones."""

import numbers

import numpy as np

from kprune.transformers.importance import importance_scores
from kprune.transformers.plan import (
    TransformerPlan,
    check_fraction,
    plan_heads,
    round_count,
    top_indices,
)
from kprune.transformers.slicing import apply_plan, weight_infos
from kprune.transformers.spec import get_family
from kprune.transformers.task import is_task, rebuild_task


def _kept_layers(layers, num_layers, scores):
    if layers is None:
        return list(range(num_layers))
    if isinstance(layers, numbers.Integral) and not isinstance(layers, bool):
        if not 1 <= layers <= num_layers:
            raise ValueError(
                f"`layers` (an int) is the number of blocks to keep, between 1 "
                f"and the backbone's {num_layers}. Received: layers={layers}"
            )
        if layers == num_layers:
            return list(range(num_layers))
        return top_indices(scores.layers, layers).tolist()
    try:
        kept = sorted({int(i) for i in layers})
    except (TypeError, ValueError):
        kept = None
    if not kept or kept[0] < 0 or kept[-1] >= num_layers:
        raise ValueError(
            "`layers` is the number of blocks to keep or the list of their "
            f"indices (0 to {num_layers - 1}). Received: layers={layers!r}"
        )
    return kept


def _check_kinds(spec, config, kept, new_config):
    for position, original in enumerate(kept):
        old_kind = spec.block_kind(config, original)
        new_kind = spec.block_kind(new_config, position)
        if old_kind != new_kind:
            raise ValueError(
                f"{spec.name} builds block {position} as {new_kind!r}, but the "
                f"block that would move there (original block {original}) is "
                f"{old_kind!r} (e.g. sliding-window vs global attention, fixed "
                "by position); the constructor cannot express this depth. Keep "
                "blocks whose kind matches their new position. Received: "
                f"layers={kept}"
            )


def _needed(spec, config, ffn, heads, hidden, layers):
    need = []
    if hidden < 1.0:
        need.append("hidden")
    if ffn < 1.0:
        need.append("ffn")
    if heads < 1.0:
        need.append("heads")
    if (
        isinstance(layers, numbers.Integral)
        and not isinstance(layers, bool)
        and layers < config[spec.layers]
    ):
        need.append("layers")
    return need


def _widths(spec, config, ffn, heads, hidden, round_to):
    """The new hidden size, FFN width and query heads (checked)."""
    num_heads = config[spec.heads]
    new_q = num_heads if heads >= 1.0 else max(1, int(round(heads * num_heads)))
    if spec.tied_head_dim(config):
        head_size = spec.head_size(config)
        if abs(heads - hidden) > 1e-9:
            raise ValueError(
                f"{spec.name} computes head_dim = {spec.hidden} // {spec.heads} "
                f"(= {head_size} here), so heads and hidden channels must "
                "shrink together to keep head_dim: pass the same fraction for "
                f"both (e.g. heads={heads}, hidden={heads}). Received: "
                f"heads={heads}, hidden={hidden}"
            )
        new_hidden = new_q * head_size
    else:
        new_hidden = round_count(hidden, config[spec.hidden], round_to)
    new_ffn = round_count(ffn, spec.ffn_units(config), round_to)
    return new_hidden, new_ffn, new_q


def make_plan(
    backbone,
    data=None,
    ffn=1.0,
    heads=1.0,
    hidden=1.0,
    layers=None,
    importance="activation",
    round_to=1,
    batch_size=16,
    max_samples=None,
    scores=None,
):
    """What `prune` keeps, as a `TransformerPlan` (nothing is built).

    Same arguments as `kprune.transformers.prune`; `scores` (a
    `kprune.criteria.TransformerScores`) skips the scoring pass.

    Returns:
        A `TransformerPlan`.
    """
    spec = get_family(backbone)
    spec.check(backbone)
    ffn = check_fraction(ffn, "ffn")
    heads = check_fraction(heads, "heads")
    hidden = check_fraction(hidden, "hidden")
    config = backbone.get_config()
    num_layers = config[spec.layers]
    num_q, num_kv = config[spec.heads], spec.num_kv_heads(config)
    new_hidden, new_ffn, new_q = _widths(spec, config, ffn, heads, hidden, round_to)
    need = _needed(spec, config, ffn, heads, hidden, layers)
    if scores is None and need:
        scores = importance_scores(
            backbone, data, importance, batch_size, max_samples, need=need
        )
    for field in need:
        if getattr(scores, field) is None:
            raise ValueError(
                f"Pruning needs {field!r} scores, and the importance gave none. "
                f"Received: {field}=None"
            )
    kept = _kept_layers(layers, num_layers, scores)
    changes = {spec.layers: len(kept)}
    plan = TransformerPlan(spec.name, num_layers, kept)
    if new_hidden < config[spec.hidden]:
        plan.hidden = top_indices(scores.hidden, new_hidden)
        changes[spec.hidden] = int(new_hidden)
    if new_ffn < spec.ffn_units(config):
        plan.ffn = [top_indices(scores.ffn[i], new_ffn) for i in kept]
        changes[spec.ffn] = int(new_ffn * spec.ffn_multiplier)
    if new_q < num_q:
        pairs = [
            plan_heads(scores.heads[i], num_q, num_kv, new_q, spec.name) for i in kept
        ]
        plan.heads = [q for q, _ in pairs]
        plan.kv_heads = [kv for _, kv in pairs]
        changes[spec.heads] = int(new_q)
        if spec.kv_heads is not None:
            changes[spec.kv_heads] = int(len(pairs[0][1]))
    new_config = dict(config, **changes)
    _check_kinds(spec, config, kept, new_config)
    plan.config = changes
    return plan


def prune(
    backbone,
    data=None,
    ffn=1.0,
    heads=1.0,
    hidden=1.0,
    layers=None,
    importance="activation",
    round_to=1,
    batch_size=16,
    max_samples=None,
):
    """Width and depth pruning of a KerasHub backbone; the result keeps its class.

    Keeps the fraction `ffn` of every block's FFN intermediate units, the
    fraction `heads` of its attention heads (grouped-query aware), the
    fraction `hidden` of the hidden (embedding) channels across the whole
    stack (embeddings, every norm and projection, the tied output
    embedding), and `layers` blocks. Units are ranked by `importance`
    (Minitron activation statistics on the calibration `data` by default;
    blocks by block influence, `1 - cos(block input, block output)`), the
    new backbone is built with the class's own constructor
    (`type(backbone).from_config(...)` with the new `intermediate_dim`,
    `num_heads`, `hidden_dim`, `num_layers` ...) and its weights are the
    original ones with the kept indices taken. Keeping everything gives a
    copy with identical outputs. The result drops into the family's task
    models (`GPT2CausalLM(backbone=small, ...)`) and saves as `.keras`.

    Where the family computes `head_dim = hidden_dim // num_heads` (GPT-2,
    BERT, ViT, Llama, Qwen, ...), heads and hidden shrink together (pass
    the same fraction); families with their own `head_dim` (Gemma, Qwen3)
    prune heads alone. A combination the constructor cannot express is an
    error naming the constraint.

    A KerasHub task model (`GPT2CausalLM`, `BertTextClassifier`,
    `ViTImageClassifier`, ...) can be passed instead of its backbone: its
    backbone is pruned and the task rebuilt around it (its head keeps the
    kept hidden channels).

    Args:
        backbone: a KerasHub backbone of a registered family (see
            `kprune.transformers.families()`), or a task model holding one;
            not modified.
        data: calibration inputs in the backbone's input format (a dict of
            `token_ids` / `padding_mask` arrays, images, or an iterable of
            batches); a few dozen to a few hundred examples.
        ffn: fraction of FFN units kept, in (0, 1].
        heads: fraction of (query) heads kept, in (0, 1].
        hidden: fraction of hidden channels kept, in (0, 1].
        layers: None (all), the number of blocks to keep (the highest block
            influence), or the list of block indices to keep.
        importance: `"activation"` (Minitron), `"magnitude"` (weight norms)
            or a callable `(backbone, data) -> TransformerScores`.
        round_to: FFN and (untied) hidden widths are rounded to a multiple.
        batch_size: rows per calibration forward pass.
        max_samples: use at most this many calibration examples.

    Returns:
        A new backbone (or task model) of the same class.

    Example:

    >>> import keras_hub, numpy as np, kprune
    >>> backbone = keras_hub.models.GPT2Backbone(
    ...     vocabulary_size=50, num_layers=4, num_heads=4, hidden_dim=32,
    ...     intermediate_dim=64, max_sequence_length=16)
    >>> data = {"token_ids": np.random.randint(0, 50, (8, 16)),
    ...         "padding_mask": np.ones((8, 16), "int32")}
    >>> small = kprune.transformers.prune(
    ...     backbone, data, ffn=0.5, heads=0.5, hidden=0.5, layers=3)
    >>> type(small).__name__, small.num_layers, small.hidden_dim, small.num_heads
    ('GPT2Backbone', 3, 16, 2)

    Reference:
        Muralidharan et al., "Compact Language Models via Pruning and
        Knowledge Distillation", arXiv 2407.14679 (2024); Men et al.,
        "ShortGPT: Layers in Large Language Models are More Redundant Than
        You Expect", arXiv 2403.03853 (2024).
    """
    task = None
    if is_task(backbone) and not _registered(backbone):
        task, backbone = backbone, backbone.backbone
    plan = make_plan(
        backbone,
        data,
        ffn=ffn,
        heads=heads,
        hidden=hidden,
        layers=layers,
        importance=importance,
        round_to=round_to,
        batch_size=batch_size,
        max_samples=max_samples,
    )
    small = apply_plan(backbone, plan)
    return small if task is None else rebuild_task(task, small, plan)


def _registered(model):
    try:
        get_family(model)
    except ValueError:
        return False
    return True


def non_embedding_params(backbone):
    """Parameters of a backbone outside its embedding tables.

    Leaves out the token / position / segment embeddings and an untied
    output embedding (the backbone-level matrices with one hidden axis and
    one vocabulary or position axis): the size that width and depth
    pruning change.

    Args:
        backbone: a KerasHub backbone of a registered family.

    Returns:
        An int.

    Example:

    >>> import keras_hub
    >>> backbone = keras_hub.models.GPT2Backbone(
    ...     vocabulary_size=50, num_layers=1, num_heads=2, hidden_dim=8,
    ...     intermediate_dim=16, max_sequence_length=8)
    >>> non_embedding_params(backbone) == backbone.count_params() - 50 * 8 - 8 * 8
    True
    """
    total = 0
    for info in weight_infos(backbone):
        if info.block is None and info.roles in (".h", "h."):
            continue
        total += int(np.prod(info.variable.shape))
    return total
