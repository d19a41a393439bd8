"""Depth for `kprune.prune(depth=...)`: which residual blocks leave whole."""

import collections
import warnings

import numpy as np

from kprune.criteria.block_redundancy import block_redundancy
from kprune.criteria.budget import BudgetPlanner
from kprune.criteria.depth_budget import (
    OP_COSTS,
    block_costs,
    block_groups,
    call_costs,
    depth_for_speed,
)
from kprune.criteria.group_importance import group_importance, split_data
from kprune.pruning._checks import as_number
from kprune.surgery.depth import drop_blocks, residual_blocks
from kprune.surgery.graph import Graph
from kprune.surgery.groups import DependencyGroups

# `depth="auto"` removes at most this share of the residual blocks (a guard
# against a wrong estimate; on MobileNetV2 / 32x32 MNIST 8 of 10 blocks
# removed fine-tuned best: benchmarks/results/prune_depth_accuracy.md).
AUTO_MAX_SHARE = 0.8
# `depth="auto"` removes blocks only while the estimated share is below
# `speed_share - DEPTH_MARGIN`: the estimate is off by up to about 0.1 (widths
# alone on ResNet50 int8: estimated 0.87, measured 0.78-0.85), and a block
# changes the model more than a few channels do. On ResNet50 (int8, 4x)
# the one block the estimate chose without the margin measured slower with
# 2 threads (0.73-0.78 vs 0.78-0.85 with widths alone: prune_depth.md).
DEPTH_MARGIN = 0.05

# What `remove_depth` gives `prune`: the model without the chosen blocks,
# their names, the report, `{old path or name: new name}` of the kept layers
# (empty when none left) and the `DependencyGroups` of the returned model
# when one was built for it (`"auto"` removing nothing), else None.
Depth = collections.namedtuple("Depth", "model blocks report names groups")


def check_depth(depth):
    """`depth` as None, an int >= 0 or "auto" (clear error otherwise)."""
    if depth is None or depth == "auto":
        return depth
    valid = isinstance(depth, (int, np.integer)) and not isinstance(depth, bool)
    if not valid or depth < 0:
        raise ValueError(
            "`depth` is the number of residual blocks to remove whole (an "
            "integer >= 0), 'auto' (as many as the speed estimate asks for), "
            f"or None (widths only). Received: depth={depth!r}"
        )
    return int(depth) or None


def op_cost_for(op_cost, activation_cost):
    """The MAC-equivalent cost of one operation (see `OP_COSTS`): a number,
    a format name, or None (the format `activation_cost` names, else
    float32)."""
    if op_cost is None:
        op_cost = activation_cost if isinstance(activation_cost, str) else "float32"
    if isinstance(op_cost, str):
        if op_cost not in OP_COSTS:
            raise ValueError(
                "`op_cost` is a number >= 0 or the deployed format, one of "
                f"{sorted(OP_COSTS)}. Received: op_cost={op_cost!r}"
            )
        return OP_COSTS[op_cost]
    value = as_number(op_cost)
    if not value >= 0:
        raise ValueError(
            "`op_cost` is the MACs-equivalent fixed cost of one operation, a "
            f"number >= 0. Received: op_cost={op_cost!r}"
        )
    return value


def remove_depth(
    model,
    data,
    depth,
    target,
    ignore,
    batch_size,
    activation_cost,
    op_cost,
    speed_share,
):
    """The model without the chosen blocks, as a `Depth`.

    Blocks are `kprune.surgery.residual_blocks` without an ignored layer,
    ranked by Block Redundancy on `data` (the smallest relative change of
    their input first). `depth=n` removes the first `n`. `"auto"` keeps
    the blocks whose removal buys more time per MAC than narrower layers
    do, orders them by change per unit of time gained, and adds them
    greedily while the estimated speed-up (an `l2` width plan with the
    chosen blocks' inner groups counted as removed) stays below
    `speed_share - DEPTH_MARGIN` of the MACs reduction, at most
    `AUTO_MAX_SHARE` of all residual blocks
    (`kprune.criteria.depth_budget.depth_for_speed`).
    """
    graph = Graph(model)
    ignored = set(ignore)
    blocks = [
        block
        for block in residual_blocks(graph)
        if not any(
            node.path in ignored or node.layer.name in ignored for node in block.nodes
        )
    ]
    report = {"depth": depth, "residual_blocks": len(blocks)}
    if not blocks:
        if depth != "auto":
            warnings.warn(
                f"kprune.prune(depth={depth!r}): model '{model.name}' has no "
                "residual block that can leave whole (an `Add` of a block's "
                "input and its branch); only widths are pruned. The blocks "
                "of a KerasHub transformer are layers of their own: "
                "kprune.transformers.prune(backbone, data, layers=n) "
                "removes them.",
                stacklevel=3,
            )
        report["blocks"] = []
        return Depth(model, [], report, {}, None)
    x = split_data(data)[0]
    ranked = block_redundancy(model, x, blocks=blocks, batch_size=batch_size, fit=False)
    report["block_redundancy"] = {c.name: c.redundancy for c in ranked}
    view = None
    if depth == "auto":
        limit = int(len(ranked) * AUTO_MAX_SHARE)
        costs = call_costs(ranked[0].block.graph)
        totals = np.sum(list(costs.values()), axis=0)
        view = DependencyGroups(model)
        planner = BudgetPlanner(
            model,
            view,
            group_importance(model, "l2", groups=view),
            ignore=view.groups_of_layers(ignore),
            activation_cost=activation_cost,
        )
        indices, estimates = depth_for_speed(
            planner,
            target,
            totals,
            block_costs([c.block for c in ranked], costs),
            block_groups(view, [c.block for c in ranked]),
            activation_cost,
            op_cost,
            speed_share - DEPTH_MARGIN,
            limit=limit,
            changes=[-c.redundancy for c in ranked],
        )
        report["estimates"] = estimates
        chosen = [ranked[i].name for i in indices]
    else:
        chosen = [c.name for c in ranked[: min(depth, len(ranked))]]
    report["blocks"] = chosen
    if not chosen:
        return Depth(model, [], report, {}, view)
    new, names = drop_blocks(model, chosen, return_names=True)
    return Depth(new, chosen, report, names, None)
