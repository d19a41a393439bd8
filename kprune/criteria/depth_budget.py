"""How many residual blocks leave a model pruned to a budget
(`kprune.prune(depth="auto")`).

Narrower layers cut MACs and activation traffic but not the fixed cost of
each operation a runtime runs (dispatch, quantization parameters, cache
misses at a layer's start). At 4x fewer MACs that fixed cost is a floor
widths cannot lower: MobileNetV2 in int8 LiteRT kept about 0.4 ms of
3.2 ms at every width (benchmarks/results/prune_speed_int8.md). Removing a
residual block removes its operations. This module estimates a model's
time as

    T = MACs + k * elements + c * ops

(`k`: `activation_cost`, `c`: `op_cost`, both in MAC-equivalents; `ops`:
the calls a converter keeps as operations), and chooses the blocks that
leave, the rest of the budget going to widths, for the estimated speed-up
to reach a share of the MACs reduction.
"""

import numpy as np

from kprune.criteria.budget import MATMUL_LAYERS, memory_bound, output_makers
from kprune.ops.macs import layer_macs

# MAC-equivalent fixed cost of one operation, by deployed format: least
# squares fits of `T = a * (MACs + k * elements + c * ops)` to side-by-side
# LiteRT (XNNPACK, x86) timings of a model dense and with its first 0, 3, 5
# and 7 residual blocks removed, widths pruned to 4x fewer MACs in all
# (benchmarks/prune_depth_fit.py, results/prune_depth_fit.md). int8
# (k = 64): c = 4.7e5 / 1.6e6 on MobileNetV2 with 1 / 2 threads, 1.9e5 /
# 2.2e5 on EfficientNetB0 (an earlier fit: 7.1e5 / 1.5e6); 1e6 lies in that
# range, and its selections were measured end to end (prune_depth.md).
# float32 (k = 16): c between -1.1e5 and 3.1e5, counted as none.
OP_COSTS = {"float32": 0.0, "int8": 1.0e6}


def call_costs(graph):
    """Per layer call of a traced graph: `(macs, elements, ops)`.

    `macs`: the call's MACs per sample (`kprune.ops.macs.layer_macs`, 0
    when unknown); `elements`: the elements of its outputs when moving them
    is its cost (`kprune.criteria.budget.BudgetPlanner.group_costs`'s rule:
    separate activations, elementwise ops, pooling, depthwise convolutions);
    `ops`: 1 for a call a converter keeps as an operation (those, plus
    Dense and convolutions), 0 for calls folded or free at inference
    (BatchNormalization, a ReLU fused into the op before it, dropout,
    reshapes).

    Args:
        graph: a `kprune.surgery.graph.Graph`.

    Returns:
        `{id(node): (macs, elements, ops)}`.
    """
    makers = output_makers(graph)
    costs = {}
    for node in graph.nodes:
        macs = 0.0
        if node.inputs and node.outputs:
            try:
                count = layer_macs(
                    node.layer, node.inputs[0].shape, node.outputs[0].shape
                )
            except (TypeError, ValueError, AttributeError):
                count = None
            macs = float(count or 0)
        elements, ops = 0.0, 0.0
        if memory_bound(node, makers):
            ops = 1.0
            for tensor in node.outputs:
                dims = tensor.shape[1:]
                if dims and all(d is not None for d in dims):
                    elements += float(np.prod(dims))
        elif node.layer.__class__.__name__ in MATMUL_LAYERS:
            ops = 1.0
        costs[id(node)] = (macs, elements, ops)
    return costs


def block_costs(blocks, costs):
    """`(macs, elements, ops, add_elements)` per block: what its calls
    cost, and the elements of its `Add` calls alone."""
    out = np.zeros((len(blocks), 4))
    for i, block in enumerate(blocks):
        for node in block.nodes:
            macs, elements, ops = costs.get(id(node), (0.0, 0.0, 0.0))
            add = elements if node.layer.__class__.__name__ == "Add" else 0.0
            out[i] += (macs, elements, ops, add)
    return out


def block_groups(view, blocks):
    """Per block, the positions (into `view.ids`) of the groups made only
    inside it: the channels that leave with the block (a bottleneck's
    expanded channels), not the residual channels it reads and writes."""
    found = []
    for block in blocks:
        paths = {node.path for node in block.nodes}
        inside = [
            s for s, producers in enumerate(view.structures) if set(producers) <= paths
        ]
        found.append(np.flatnonzero(np.isin(view.structure, inside)))
    return found


def depth_for_speed(
    planner,
    target,
    totals,
    blocks,
    groups,
    activation_cost,
    op_cost,
    share,
    limit=None,
    changes=None,
):
    """Which blocks to remove for the estimated speed share.

    For a set `S` of removed blocks, the planner counts the groups made
    inside them as removed (`BudgetPlanner.force`) and narrows the other
    layers until the MACs meet `target` (`search`); its estimate of that
    selection's MACs and activation elements, less the elements of the
    blocks' `Add`s (which leave too), gives

        T_S = M_S + k E_S + c * ops_S,
        share_S = (T_0 / T_S) * MACs_S / MACs_0.

    A block is worth removing only when the time it costs per MAC,
    `(M_b + k E_b + c ops_b) / M_b`, exceeds what narrowing layers removes
    per MAC at this budget, `(T_0 - T_widths) / (MACs_0 - MACs_widths)`:
    otherwise its MACs would buy more time as widths (removing a
    low-resolution, MAC-heavy block leaves the high-resolution layers wider
    and the model slower). Those blocks are ordered by the change they
    make per unit of time they save beyond that, `change_b / (T_b -
    per_mac * M_b)` (a knapsack's greedy ratio; given order without
    `changes`) and taken greedily in that order: a block joins when it
    raises the estimate (else it is skipped), until `share_S` reaches
    `share`, the blocks run out or `limit` blocks are chosen (none when
    none beats widths alone).

    Args:
        planner: a `BudgetPlanner` of the whole model (its `forced` groups
            are reset on return).
        target: the kept fraction of MACs.
        totals: `(macs, elements, ops)` of the whole model (`call_costs`;
            MACs and elements are the planner's own counts when it has
            them).
        blocks: `(n_blocks, 4)` costs: `block_costs` and, last, the
            elements of each block's `Add`.
        groups: per block, the planner positions of its inner groups
            (`block_groups`).
        activation_cost: `k`.
        op_cost: `c`.
        share: the speed-up sought, as a share of the MACs reduction.
        limit: the most blocks to remove (None: no limit).
        changes: per block, how much removing it changes the model (the
            relative change of its input, `-redundancy`; None: keep the
            given order).

    Returns:
        `(indices, estimates)`: the rows of `blocks` to remove, and per
        set tried a dict (`blocks`: its indices, `macs`, `share`).
    """
    estimates = []
    m0 = float(planner.base["macs"])
    if not m0 or not len(blocks):
        return [], estimates
    n0 = float(totals[2])
    e0 = planner.kept_elements([])
    e0 = float(totals[1]) if e0 is None else e0
    k, c = float(activation_cost), float(op_cost)
    full = m0 + k * e0 + c * n0
    blocks = np.asarray(blocks, np.float64)

    def estimate(chosen):
        planner.force(np.concatenate([groups[i] for i in chosen]) if chosen else [])
        positions = planner.search("macs", target, fill=False)
        macs = planner.estimate(positions)["macs"]
        kept = planner.kept_elements(positions)
        kept = e0 if kept is None else kept
        adds = blocks[chosen, 3].sum() if chosen else 0.0
        ops = n0 - (blocks[chosen, 2].sum() if chosen else 0.0)
        time = macs + k * (kept - adds) + c * ops
        value = (full / time) * macs / m0 if time > 0 else 0.0
        estimates.append(
            {
                "blocks": [int(i) for i in chosen],
                "macs": float(macs / m0),
                "share": float(value),
            }
        )
        return value, time, macs

    try:
        base, widths_time, widths_macs = estimate([])
        if base >= share:
            return [], estimates
        per_mac = (full - widths_time) / max(m0 - widths_macs, 1e-300)
        cost = blocks[:, 0] + k * blocks[:, 1] + c * blocks[:, 2]
        excess = cost - per_mac * blocks[:, 0]
        worth = [i for i in range(len(blocks)) if blocks[i, 0] > 0 and excess[i] > 0]
        if changes is not None:  # least change per unit of time gained first
            changes = np.maximum(np.asarray(changes, np.float64), 0.0)
            worth.sort(key=lambda i: changes[i] / excess[i])
        best, chosen = base, []
        for index in worth:
            if limit is not None and len(chosen) >= int(limit):
                break
            value, _, _ = estimate(chosen + [index])
            if value > best + 1e-9:  # a block that does not help is skipped
                best, chosen = value, chosen + [index]
                if value >= share:
                    break
        return chosen, estimates
    finally:
        planner.force([])
