"""`kprune.prune`: one-shot (or iterative) structured pruning to a budget."""

import time
import warnings

import numpy as np

from kprune.criteria._autodiff import first_array
from kprune.criteria.budget import BudgetPlanner
from kprune.criteria.group_importance import group_importance, split_data
from kprune.pruning._checks import as_number
from kprune.pruning.depth import check_depth, op_cost_for, remove_depth
from kprune.report.summary import summary as model_summary
from kprune.surgery.groups import DependencyGroups
from kprune.surgery.plan import PruningPlan
from kprune.surgery.rebuild import remove_units

_SCOPES = ("global", "layer")
# A latency candidate is accepted within this fraction of the target.
LATENCY_TOLERANCE = 0.05
# `activation_cost` by the deployed number format (LiteRT XNNPACK, x86 CPU):
# float32 fitted on EfficientNetB0's blocks; int8 from side-by-side runs of
# 16 / 64 / 256 on MobileNetV2 and EfficientNetB0 (benchmarks/results/
# prune_speed_activation_cost.md, prune_speed.md): int8 convolutions run 2x
# faster than float32 ones, the ops that only move activations gain less.
ACTIVATION_COSTS = {"float32": 16.0, "int8": 64.0}


def _check_fraction(value, name):
    if value is None:
        return None
    value = as_number(value)
    if not 0.0 < value <= 1.0:
        raise ValueError(
            f"`{name}` is the fraction of the original model's {name} to keep, "
            f"in (0, 1] (0.5 = half). Received: {name}={value!r}"
        )
    return value


def _subset(data, calibration):
    """`data` limited to `calibration` samples (a seeded random subset)."""
    if calibration is None or data is None:
        return data
    valid = isinstance(calibration, (int, np.integer)) and not isinstance(
        calibration, bool
    )
    if not valid or calibration < 1:
        raise ValueError(
            "`calibration` is the most samples of `data` the importance "
            "reads, an integer >= 1 (or None: all). "
            f"Received: calibration={calibration!r}"
        )
    x, y = split_data(data)
    count = _count(x)
    if count <= calibration:
        return data
    keep = np.sort(np.random.default_rng(0).choice(count, calibration, replace=False))
    if isinstance(x, dict):
        x = {k: np.asarray(v)[keep] for k, v in x.items()}
    elif isinstance(x, (list, tuple)):
        x = [np.asarray(a)[keep] for a in x]
    else:
        x = np.asarray(x)[keep]
    return x if y is None else (x, np.asarray(y)[keep])


def _count(x):
    """Number of samples in inputs `x` (an array, a list or a dict of them)."""
    return len(np.asarray(first_array(x)))


def _compose(kept, units, plan_units):
    """Map removed indices of the current model back to the original's."""
    for path, indices in units.items():
        original = kept[path]
        gone = original[np.asarray(indices, dtype=np.int64)]
        plan_units.setdefault(path, []).extend(int(i) for i in gone)
        kept[path] = np.delete(original, indices)


def prune(
    model,
    data=None,
    macs=None,
    params=None,
    latency=None,
    importance="l2",
    scope="global",
    round_to=None,
    steps=1,
    ignore=(),
    latency_table=None,
    reduction="mean",
    normalize="auto",
    loss=None,
    batch_size=128,
    seed=None,
    max_iterations=6,
    verbose=0,
    calibration=None,
    activation_cost=16.0,
    training=False,
    depth=None,
    op_cost=None,
    speed_share=0.9,
):
    """Structured pruning to a MACs, parameter or latency budget.

    Scores every removable coupled group (a filter with everything that
    reads it: `kprune.criteria.group_importance`), ranks the normalized
    scores globally (or per layer with `scope="layer"`), and removes the
    lowest until the rebuilt model meets the budget:

    - `macs=r` / `params=r`: `MACs(pruned) <= r * MACs(model)` (likewise
      parameters), checked on the rebuilt model with
      `kprune.report.summary`. The selection is a bisection on the number
      of groups removed under a per-layer cost estimate; when the rebuilt
      model misses the target the internal target is scaled by
      `target / achieved` and the search repeated (`max_iterations`).
    - `latency=ms`: the LiteRT latency of the pruned model, predicted from a
      per-layer table (`kprune.criteria.LatencyTable`, measured on this
      machine and cached), then measured on the exported model and
      corrected the same way until within 5 % of the target (the closest
      try when none is; half the 10 % a result is held to, so that the
      noise of a later re-measurement, about 5 % on a shared machine, keeps
      it within 10 %). A candidate
      is timed side by side with the original model (interleaved rounds:
      `LatencyTable.relative`) and its latency taken as that ratio times
      the original's, so a load change between two timings does not pass
      for a speed-up; each correction factor is kept within [0.5, 2]. The
      original's latency is the least of all its timings in the call
      (`LatencyTable.measure_model`, then every side-by-side round):
      `plan.report["latency_before_ms"]`. To check a result afterwards,
      time it the same way: `table.relative(pruned, model)["ratio"]` times
      that figure.

    Speed at a MACs (or parameter) budget: MACs miss the time a runtime
    spends moving activations (activations that are separate ops, such as
    swish; squeeze-excitation products; depthwise convolutions; additions;
    pooling), which shrinks only linearly with a channel's width. So with
    `activation_cost=k > 0` (and `scope="global"`), each group's cost is
    estimated as its MACs plus `k` times the activation elements its
    channel carries (`BudgetPlanner.group_costs`), and the ranking weights
    importance by the share of MACs in that cost, to the power `e`:
    `score * (macs / (macs + k * elements)) ** e`. `e` is the smallest in
    [0, 1] whose selection's estimated time falls at least as far as its
    MACs (`BudgetPlanner.search`): where importance alone already gives
    that (plain convolutional networks), nothing changes; where it does not
    (EfficientNet's swish and squeeze-excitation), memory-bound channels
    leave a little earlier. `plan.report["rank_exponent"]` is the `e` used.

    Depth (`depth=n` or `"auto"`): besides narrowing layers, residual
    blocks (`y = x + f(x)`, `kprune.surgery.residual_blocks`) can leave
    whole (`kprune.surgery.drop_blocks`: `y = x`), which removes operations
    and so the fixed cost each one has at run time (with int8 LiteRT on
    MobileNetV2, about 0.4 of 3.2 ms at any width: widths alone cannot give
    more than about 0.75 of a 4x MACs reduction there). Blocks are ranked by
    Block Redundancy on `data` (the least relative change of their input
    first; `kprune.criteria.block_redundancy`); widths then take the rest
    of the budget. `"auto"` estimates time as `MACs + k * elements + c *
    ops` (`c = op_cost`; `kprune.criteria.depth_budget`), keeps only the
    blocks that save more time per MAC than narrower layers do, orders
    them by change per unit of time saved and removes them greedily
    while the estimated speed-up is below `speed_share - 0.05` of the MACs
    reduction (the margin: the estimate's error), at most 80 % of the
    residual blocks. With `op_cost`
    0 (float32, whose operations measured no fixed cost here) it removes
    blocks only where narrower layers fall short of the estimate (none on
    MobileNetV2, ResNet50 and EfficientNetB0 at 2x and 4x).
    `plan.blocks` names them, and `plan.report["depth"]` holds the scores
    and estimates.

    With `steps=n`, the budget is reached in `n` rounds (geometric: round
    `i` keeps `r ** (i / n)` of the original), re-scoring the smaller model
    each round (without fine-tuning between rounds; pass through your own
    loop for that).

    Args:
        model: a trained Functional or Sequential `keras.Model` (not
            modified).
        data: `x` or `(x, y)` (NumPy): calibration data for `taylor`,
            `activation` and `car` importances.
        macs: fraction of the MACs to keep, in (0, 1].
        params: fraction of the parameters to keep, in (0, 1].
        latency: target latency in milliseconds (LiteRT, batch 1).
        importance: "l1", "l2", "fpgm", "lamp", "taylor", "activation",
            "car", "random", or `fn(model, layer, x, y) -> scores per unit`.
        scope: "global" (one ranking over all layers) or "layer" (every
            structure pruned by the same fraction).
        round_to: keep every pruned layer's width at a multiple of this.
        steps: number of pruning rounds.
        ignore: layer names (or paths) whose output channels must stay.
        latency_table: a `kprune.criteria.LatencyTable` for `latency=`
            (default: one for this model, 1 thread, float32).
        reduction: how a group's member importances combine ("mean",
            "sum", "max").
        normalize: per-structure normalization ("auto", see
            `group_importance`).
        loss: loss for `taylor`.
        batch_size: samples per pass.
        seed: seed for `random`.
        max_iterations: corrections after checking the rebuilt model.
        verbose: 1 prints one line per round.
        calibration: at most this many samples of `data` are read by the
            data-driven importances (`taylor`, `activation`, `car`): a
            random subset (seed 0, in the data's order) when `data` has
            more. Their cost is one forward (`activation`) or forward and
            backward (`taylor`) pass per sample and round, so this bounds
            it: ResNet50 at 224x224 costs about 4 GMACs per image forward.
            None (default): all of `data`.
        activation_cost: MACs-equivalent cost of one activation element in
            the ranking's time estimate (see above; 16 was measured for
            LiteRT XNNPACK float32 on an x86 CPU: one element of an
            unfused op cost as much time as about 15 MACs). 0: rank by
            importance alone. A name in `ACTIVATION_COSTS` takes the value
            for that deployed format: `"float32"` (16) or `"int8"` (64,
            for full-integer files: their convolutions are about twice as
            fast, the activation ops gain less).
        training: the mode the model is called in for `taylor`'s gradients:
            False (default: inference mode, BatchNormalization on its moving
            statistics and no dropout, the model being pruned) or True
            (batch statistics and dropout, as in `fit`). See
            `kprune.criteria.gradient_means`.
        depth: residual blocks to remove whole: None (default: widths
            only), an integer, or `"auto"` (MACs budgets; see above).
            Needs `data`.
        op_cost: MACs-equivalent fixed cost of one operation for
            `depth="auto"`: a number, a format name in
            `kprune.criteria.depth_budget.OP_COSTS`, or None (the format
            `activation_cost` names, else float32).
        speed_share: the estimated speed-up sought, as a share of the MACs
            reduction, by the ranking's tilt (`activation_cost`) and by
            `depth="auto"`.

    Returns:
        `(pruned_model, plan)`: a new `keras.Model` and the
        `kprune.surgery.PruningPlan` that `remove_units(model, plan)`
        replays. `plan.report` (not saved with the plan) holds the target,
        the achieved ratios, latency measurements and timings.

    Example:

    >>> import keras, numpy as np, kprune
    >>> model = keras.Sequential([keras.Input((16,)),
    ...     keras.layers.Dense(32, activation="relu", name="a"),
    ...     keras.layers.Dense(32, activation="relu", name="b"),
    ...     keras.layers.Dense(4, name="out")])
    >>> small, plan = kprune.prune(model, macs=0.5)
    >>> plan.report["macs_ratio"] <= 0.5
    True

    Reference:
        G. Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023.
    """
    macs = _check_fraction(macs, "macs")
    params = _check_fraction(params, "params")
    targets = [(n, v) for n, v in (("macs", macs), ("params", params)) if v is not None]
    if latency is not None:
        latency = as_number(latency)
        if not latency > 0:
            raise ValueError(
                "`latency` is a target in milliseconds, > 0. "
                f"Received: latency={latency!r}"
            )
        targets.append(("latency", latency))
    if len(targets) != 1:
        raise ValueError(
            "Give exactly one budget: macs=, params= or latency=. "
            f"Received: macs={macs}, params={params}, latency={latency}"
        )
    metric, target = targets[0]
    if scope not in _SCOPES:
        raise ValueError(f"`scope` must be one of {_SCOPES}. Received: scope={scope!r}")
    activation_name = activation_cost
    if isinstance(activation_cost, str):
        if activation_cost not in ACTIVATION_COSTS:
            raise ValueError(
                "`activation_cost` is a number >= 0 or the deployed format, "
                f"one of {sorted(ACTIVATION_COSTS)}. "
                f"Received: activation_cost={activation_cost!r}"
            )
        activation_cost = ACTIVATION_COSTS[activation_cost]
    activation_cost = as_number(activation_cost or 0.0)
    if not activation_cost >= 0:
        raise ValueError(
            "`activation_cost` is the MACs-equivalent cost of one activation "
            "element, a number >= 0 (0: rank by importance alone). "
            f"Received: activation_cost={activation_cost!r}"
        )
    if int(steps) < 1:
        raise ValueError(f"`steps` must be >= 1. Received: steps={steps!r}")
    depth = check_depth(depth)
    op_cost = op_cost_for(op_cost, activation_name)
    speed_share = as_number(speed_share)
    if not speed_share > 0:
        raise ValueError(
            "`speed_share` is the estimated speed-up sought as a share of the "
            "MACs reduction, a number > 0 (default 0.9). "
            f"Received: speed_share={speed_share!r}"
        )
    if depth is not None and data is None:
        raise ValueError(
            "`depth` ranks residual blocks by how much they change their input "
            "on calibration data: pass `data`. Received: data=None"
        )
    if depth == "auto" and metric != "macs":
        raise ValueError(
            "depth='auto' estimates speed at a MACs budget: use macs=, or "
            f"an integer depth. Received: depth='auto', {metric}={target!r}"
        )
    if isinstance(ignore, str):
        ignore = [ignore]
    names = _all_paths(model)
    unknown = [name for name in ignore if name not in names]
    if unknown:
        raise ValueError(
            f"`ignore` names layers that are not in model '{model.name}': "
            f"{unknown}. Received: ignore={list(ignore)!r}"
        )
    data = _subset(data, calibration)
    started = time.perf_counter()
    base = model_summary(model)
    table = None
    if metric == "latency":
        from kprune.criteria.latency_table import LatencyTable

        table = latency_table if latency_table is not None else LatencyTable()
        table_started = time.perf_counter()
        table.build(model)
        table_seconds = time.perf_counter() - table_started
        reference = {"ms": table.measure_model(model)}
        base_latency = reference["ms"]
        started += table_seconds

        def measure(pruned):
            # Side by side with the original (the same load on both), times
            # the original's latency: steadier than one absolute timing. The
            # original's latency is the least of all its timings so far (the
            # first one and each side-by-side round), so one slow first
            # timing does not shift the target's meaning.
            out = table.relative(pruned, model)
            reference["ms"] = min(reference["ms"], out.get("reference_ms", np.inf))
            return reference["ms"] * out["ratio"]

    current_latency = base_latency if metric == "latency" else None
    current = model
    current_summary = base
    kept = {}
    plan_units = {}
    report = {"metric": metric, "target": target, "rounds": []}
    if data is not None:
        report["calibration_samples"] = _count(split_data(data)[0])
    dropped, view = [], None
    if depth is not None:
        removed = remove_depth(
            model,
            data,
            depth,
            target,
            ignore,
            batch_size,
            activation_cost if scope == "global" else 0.0,
            op_cost,
            speed_share,
        )
        current, dropped, report["depth"] = (
            removed.model,
            removed.blocks,
            removed.report,
        )
        view = removed.groups  # the analysis `auto` made, when it kept all
        if dropped:
            current_summary = model_summary(current)
            ignore = [removed.names.get(name, name) for name in ignore]
            if metric == "latency":
                current_latency = measure(current)
    for step in range(1, int(steps) + 1):
        if metric == "latency":
            goal = base_latency * (target / base_latency) ** (step / steps)
        else:
            goal = target ** (step / steps)
        if view is None or step > 1:
            view = DependencyGroups(current)
        for path, member in ((m.path, m) for m in view.members if m.role == "producer"):
            kept.setdefault(path, np.arange(member.tensor.channels))
        scores = group_importance(
            current,
            importance,
            data,
            groups=view,
            reduction=reduction,
            normalize="rank" if scope == "layer" else normalize,
            loss=loss,
            batch_size=batch_size,
            seed=seed,
            training=training,
        )
        planner = BudgetPlanner(
            current,
            view,
            scores,
            ignore=view.groups_of_layers(ignore),
            round_to=round_to,
            latency_fn=None
            if table is None
            else table.predictor(current, latency=current_latency),
            summary=current_summary,
            activation_cost=activation_cost if scope == "global" else 0.0,
            speed_share=speed_share,
        )
        if step == 1 and metric == "macs" and planner.uncounted_macs:
            warnings.warn(
                "kprune.prune: the MACs of some layers inside composite layers "
                f"could not be counted ({planner.uncounted_macs[:3]} ...); "
                "their units are ranked but cost no MACs in the budget. Use "
                "params= for such models, or pass input_shape to count them.",
                stacklevel=2,
            )
        pruned, units, achieved, history, current_summary = _search(
            current,
            planner,
            metric,
            goal,
            base,
            current_summary,
            measure if metric == "latency" else None,
            max_iterations,
        )
        current_latency = achieved if metric == "latency" else None
        _compose(kept, units, plan_units)
        current = pruned
        report["rounds"].append(
            {
                "goal": goal,
                "achieved": achieved,
                "tries": history,
                "rank_exponent": next(
                    (h["rank_exponent"] for h in history if h["achieved"] == achieved),
                    history[-1]["rank_exponent"],
                ),
            }
        )
        if verbose:
            print(f"kprune.prune round {step}/{steps}: {metric} {achieved:.4g}")
    final = current_summary
    report["rank_exponent"] = report["rounds"][-1]["rank_exponent"]
    report.update(
        macs_before=base["macs"],
        macs_after=final["macs"],
        macs_ratio=final["macs"] / base["macs"] if base["macs"] else None,
        params_before=base["params"],
        params_after=final["params"],
        params_ratio=final["params"] / base["params"],
        seconds=time.perf_counter() - started,
    )
    if metric == "latency":
        report.update(
            latency_before_ms=reference["ms"],
            latency_first_ms=base_latency,
            latency_after_ms=report["rounds"][-1]["achieved"],
            latency_table_seconds=table_seconds,
        )
    plan = PruningPlan(plan_units, model_name=model.name, blocks=dropped)
    plan.report = report
    return current, plan


def _search(model, planner, metric, goal, base, current, measure, max_iterations):
    """Bisection under the estimate, then check the rebuilt model.

    A miss re-targets the estimate by `goal / achieved` (for latency, a
    factor kept within [0.5, 2]: one timing on a busy machine can be far
    off, and a wild factor would prune everything or nothing). Once one
    try landed below the goal and another above, the measured value is
    bracketed (it grows with the internal target): the next internal
    target interpolates between the two nearest tries (regula falsi, kept
    inside the middle half of the bracket), or bisects it when the last two
    tries fell on the same side, so a wrong timing at one end cannot stall
    it.
    """
    internal = goal
    if metric != "latency":
        internal = goal * base[metric] / current[metric]
    history = []
    best = None
    for _ in range(max(1, int(max_iterations))):
        positions = planner.search(metric, internal)
        units = planner.view.removed_units(planner.removed_ids(positions))
        pruned = (
            remove_units(model, units, analysis=planner.view.analysis)
            if units
            else model
        )
        report = model_summary(pruned) if units else current
        entry = {"internal": internal, "rank_exponent": planner.exponent}
        if metric == "latency":
            entry["predicted"] = planner.estimate(positions)["latency"]
            achieved = measure(pruned)
            ok = abs(achieved - goal) <= LATENCY_TOLERANCE * goal
            miss = abs(achieved - goal)
        else:
            achieved = report[metric] / base[metric]
            ok = achieved <= goal * (1 + 1e-9)
            miss = achieved
        entry["achieved"] = achieved
        history.append(entry)
        if ok:
            return pruned, units, achieved, history, report
        if best is None or miss < best[0]:
            best = (miss, pruned, units, achieved, report)
        internal = _next_internal(history, goal, metric)
    _, pruned, units, achieved, report = best
    return pruned, units, achieved, history, report


def _next_internal(history, goal, metric):
    """The next internal target after the tries in `history`."""
    last = history[-1]
    below = [h for h in history if h["achieved"] < goal]
    above = [h for h in history if h["achieved"] > goal]
    if below and above:
        lo = max(below, key=lambda h: h["internal"])
        hi = min(above, key=lambda h: h["internal"])
        if lo["internal"] < hi["internal"]:
            span = hi["internal"] - lo["internal"]
            rise = hi["achieved"] - lo["achieved"]
            t = (goal - lo["achieved"]) / rise if rise > 0 else 0.5
            side = [h["achieved"] > goal for h in history[-2:]]
            if len(side) == 2 and side[0] == side[1]:
                t = 0.5  # the same end moved twice: bisect (Illinois-like)
            return lo["internal"] + span * min(max(t, 0.25), 0.75)
    factor = goal / last["achieved"] if last["achieved"] > 0 else 2.0
    if metric == "latency":
        factor = min(max(factor, 0.5), 2.0)
    return last["internal"] * factor


def _all_paths(model):
    import keras

    names = set()

    def visit(layer, prefix):
        for sub in getattr(layer, "layers", []):
            names.add(sub.name)
            names.add(prefix + sub.name)
            if isinstance(sub, keras.Model):
                visit(sub, prefix + sub.name + "/")

    visit(model, "")
    return names
