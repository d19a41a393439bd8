"""Greedy, iterative pruning by a per-unit criterion (CAR by default).

Abbasi-Asl & Yu's procedure: score every filter of a layer, remove the
least important one(s), score again on the smaller network, repeat;
optionally retrain in between. Scoring, selection, planning and surgery stay
apart: any criterion with `car_scores`' signature plugs in, `select_lowest`
picks the units, and the result is a `kprune.surgery.PruningPlan` plus the
smaller model built by `kprune.surgery.remove_units`.
"""

import numpy as np

from kprune.criteria.ablation import AblationScorer
from kprune.criteria.baselines import l1_scores, mean_activation_scores
from kprune.criteria.car import measure
from kprune.criteria.metrics import importance, resolve_metric
from kprune.surgery import ChannelAnalysis, plan_removal, remove_units
from kprune.surgery.compiling import compile_like
from kprune.surgery.plan import producer_nodes

CRITERIA = ("car", "l1", "mean_activation", "random")


def select_lowest(scores, k, eligible=None, tiebreak=None):
    """Indices of the `k` lowest scores among eligible units.

    Equal scores are ordered by `tiebreak` (lower first) when given, then by
    the lower index; `nan` and `inf` scores are never eligible.

    Args:
        scores: one score per unit.
        k: how many to pick (fewer if fewer are eligible).
        eligible: optional bool mask of units that may be picked.
        tiebreak: optional second score per unit, for equal scores.

    Returns:
        A sorted int array.

    Example:

    >>> select_lowest(np.array([0.3, 0.0, np.inf, 0.0, 0.1]), 2)
    array([1, 3])
    >>> select_lowest(np.array([0.0, 0.0, 0.1]), 1, tiebreak=np.array([0.2, 0.1, 0.0]))
    array([1])
    """
    scores = np.asarray(scores, dtype=np.float64)
    mask = np.isfinite(scores)
    if eligible is not None:
        mask &= np.asarray(eligible, dtype=bool)
    candidates = np.flatnonzero(mask)
    second = np.zeros(len(scores))
    if tiebreak is not None:
        second = np.nan_to_num(np.asarray(tiebreak, dtype=np.float64), nan=np.inf)
    order = candidates[np.lexsort((candidates, second[candidates], scores[candidates]))]
    return np.sort(order[: max(int(k), 0)])


def _ratios(layer_names, target_ratio):
    if isinstance(target_ratio, dict):
        missing = [n for n in layer_names if n not in target_ratio]
        if missing:
            raise ValueError(
                f"`target_ratio` has no entry for layers {missing}. "
                f"Received: target_ratio={target_ratio!r}"
            )
        ratios = {n: target_ratio[n] for n in layer_names}
    else:
        ratios = {n: target_ratio for n in layer_names}
    for name, ratio in ratios.items():
        if not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
            raise ValueError(
                f"Target ratios are fractions of units to remove, in [0, 1). "
                f"Received: target_ratio[{name!r}]={ratio!r}"
            )
    return ratios


class _State:
    """The current (rebuilt) model, pending removals and index bookkeeping."""

    def __init__(self, model):
        self.model = model
        analysis = ChannelAnalysis(model)
        self.alive = {
            path: np.arange(node.outputs[0].channels)
            for path, node in producer_nodes(analysis).items()
        }
        self.pending = []  # current-numbering units of the current layer
        self.scorer = None
        self.cache = None  # layer-local criterion values on the current model

    def materialize(self, layer_name):
        if not self.pending:
            return
        plan = plan_removal(self.model, {layer_name: self.pending})
        self.model = remove_units(self.model, plan)
        for path, units in plan.units.items():
            self.alive[path] = np.delete(self.alive[path], units)
        self.pending = []
        self.scorer = None
        self.cache = None

    def snapshot(self):
        return (
            self.model,
            dict(self.alive),
            list(self.pending),
            self.scorer,
            self.cache,
        )

    def restore(self, snap):
        self.model, self.alive, self.pending, self.scorer, self.cache = snap


def greedy_prune(
    model,
    layer_names,
    x,
    y,
    criterion="car",
    step=1,
    target_ratio=0.5,
    max_accuracy_drop=None,
    metric="accuracy",
    fine_tune=None,
    fine_tune_every=None,
    train_data=None,
    fit_kwargs=None,
    batch_size=256,
    ablation_batch=8,
    seed=None,
    higher_is_better=None,
    tie_break=None,
    verbose=0,
):
    """Remove the least important units greedily, re-scoring after each step.

    Layers are pruned one after the other, in the order given. For each
    layer, repeatedly: score its remaining units with `criterion` on `(x, y)`
    (with the units removed so far gone), remove the `step` lowest-scoring
    ones (`step=1` is the paper's procedure), optionally fine-tune; stop when
    `target_ratio` of the layer's units are gone, or before a step that
    would make the metric on `(x, y)` worse than the original model's by more
    than `max_accuracy_drop`.

    Between fine-tunings nothing is rebuilt: removals are applied as masks
    exactly equal to the surgery (see `AblationScorer`), and only the
    network after the layer re-runs, so CAR re-scoring costs a fraction of a
    full pass per unit.

    Args:
        model: a Functional or Sequential `keras.Model` (not modified).
        layer_names: a layer name or a list of them.
        x: data to score and measure on (held out from training, ideally).
        y: its targets.
        criterion: "car", "l1", "mean_activation", "random", or a callable
            `fn(model, layer_name, x, y) -> scores` (higher = keep).
        step: units removed per step.
        target_ratio: fraction of each layer's units to remove (a float, or
            a dict layer -> fraction).
        max_accuracy_drop: largest allowed worsening of `metric` on `(x, y)`
            relative to the original model (in the metric's units, e.g.
            0.005 = half a percentage point of accuracy; for a loss, its
            largest increase), or None.
        metric: as in `car_scores` (used by "car" and for the budget).
        fine_tune: None, a number of epochs of `model.fit` on `train_data`
            (the pruned model is compiled with the original model's compile
            config), or a callable `fn(model) -> model or None` that trains
            the pruned model.
        fine_tune_every: None: fine-tune once, after all removals; an int
            `n`: after every `n` steps (and after the last one).
        train_data: `(x_train, y_train)` for integer `fine_tune`.
        fit_kwargs: extra keyword arguments of `fit` (batch_size, ...).
        batch_size: samples per scoring pass.
        ablation_batch: removals stacked per scoring pass.
        seed: seed of the "random" criterion.
        higher_is_better: override the metric's direction.
        tie_break: None (default): units of equal score go by index, as in
            the paper. "margin": with CAR, units of equal accuracy drop are
            ordered by how much their removal lowers the mean classification
            margin (true class minus the best other), a finer signal measured
            in the same pass (accuracy on a finite set ties often).
        verbose: 1 prints one line per step.

    Returns:
        `(pruned_model, plan, history)`: the smaller (and fine-tuned) model,
        compiled like the original when the original was compiled,
        the `kprune.surgery.PruningPlan` of the removed units in the
        original model's numbering (`remove_units(model, plan)` rebuilds the
        architecture with the original weights), and a list of dicts, one
        per step (step 0 = the original model): `step`, `layer`, `removed`
        (original indices removed at this step), `scores`, `num_removed`
        and `ratio` (so far, in that layer), `metric` (on `(x, y)`, after
        fine-tuning when there was some) and `fine_tuned`.

    Example:

    >>> import keras, numpy as np, kprune
    >>> model = keras.Sequential([keras.Input((6,)),
    ...     keras.layers.Dense(10, activation="relu", name="hidden"),
    ...     keras.layers.Dense(3, name="out")])
    >>> x = np.random.rand(64, 6).astype("float32")
    >>> y = np.random.randint(0, 3, 64)
    >>> small, plan, history = kprune.criteria.greedy_prune(
    ...     model, "hidden", x, y, target_ratio=0.5)
    >>> small.get_layer("hidden").units
    5

    Reference:
        R. Abbasi-Asl and B. Yu, "Structural Compression of Convolutional
        Neural Networks", arXiv:1705.07356.
    """
    if isinstance(layer_names, str):
        layer_names = [layer_names]
    layer_names = list(layer_names)
    if not layer_names:
        raise ValueError("Give at least one layer to prune. Received: layer_names=[]")
    if not isinstance(step, (int, np.integer)) or step < 1:
        raise ValueError(f"`step` must be a positive integer. Received: step={step!r}")
    if not (isinstance(criterion, str) and criterion in CRITERIA) and not callable(
        criterion
    ):
        raise ValueError(
            f"`criterion` must be one of {CRITERIA} or a callable "
            f"fn(model, layer_name, x, y). Received: criterion={criterion!r}"
        )
    if tie_break not in ("margin", None):
        raise ValueError(
            f"`tie_break` must be 'margin' or None. Received: tie_break={tie_break!r}"
        )
    if fine_tune_every is not None and (
        not isinstance(fine_tune_every, (int, np.integer)) or fine_tune_every < 1
    ):
        raise ValueError(
            "`fine_tune_every` must be None or a positive integer. "
            f"Received: fine_tune_every={fine_tune_every!r}"
        )
    tuner = _fine_tuner(model, fine_tune, train_data, fit_kwargs)
    ratios = _ratios(layer_names, target_ratio)
    state = _State(model)
    for name in layer_names:
        if name not in state.alive:
            raise ValueError(
                f"Layer '{name}' is not a layer with units of its own (Dense, "
                f"Conv ...). Layers with units: {sorted(state.alive)}. "
                f"Received: layer_names={layer_names!r}"
            )
    rng = np.random.default_rng(seed)
    options = {"batch_size": batch_size, "ablation_batch": ablation_batch}

    def scorer():
        if state.scorer is not None and state.scorer.layer_name != name:
            state.scorer = None
        if state.scorer is None:
            state.scorer = AblationScorer(
                state.model,
                name,
                x,
                y,
                metric=metric,
                higher_is_better=higher_is_better,
                **options,
            )
        return state.scorer

    spec = resolve_metric(metric, higher_is_better)
    name = layer_names[0]
    base = float(scorer().evaluate_each([], [])[0])
    higher = spec.higher_is_better
    history = [_entry(0, None, [], [], 0, 0.0, base, False)]
    steps = 0
    since_tune = 0
    for name in layer_names:
        total = len(state.alive[name])
        target = min(int(round(ratios[name] * total)), total - 1)
        while total - len(state.alive[name]) + len(state.pending) < target:
            removed_so_far = total - len(state.alive[name]) + len(state.pending)
            if callable(criterion):
                state.materialize(name)
            current = scorer()
            scores = _scores(criterion, state, name, x, y, rng, options)
            eligible = current.removable.copy()
            eligible[state.pending] = False
            tiebreak = None
            if criterion == "car" and tie_break == "margin":
                tiebreak = current.last_tiebreak
            picks = select_lowest(
                scores, min(step, target - removed_so_far), eligible, tiebreak
            )
            if not len(picks):
                break
            snap = state.snapshot()
            since_before = since_tune
            original = state.alive[name][picks].tolist()
            state.pending = sorted(state.pending + picks.tolist())
            steps += 1
            since_tune += 1
            tuned = (
                tuner is not None and fine_tune_every and since_tune >= fine_tune_every
            )
            if tuned:
                state.materialize(name)
                state.model = tuner(state.model)
                since_tune = 0
                value = measure(state.model, x, y, spec, batch_size)
            else:
                value = float(current.evaluate_each(state.pending, [])[0])
            drop = float(importance(base, value, higher))
            if max_accuracy_drop is not None and drop > max_accuracy_drop:
                state.restore(snap)
                steps -= 1
                since_tune = since_before
                if verbose:
                    print(f"{name}: stop, removing {original} would cost {drop:.4f}")
                break
            count = removed_so_far + len(picks)
            history.append(
                _entry(
                    steps,
                    name,
                    original,
                    scores[picks],
                    count,
                    count / total,
                    value,
                    bool(tuned),
                )
            )
            if verbose:
                print(
                    f"step {steps}: {name} -{original} ({count}/{total} removed), "
                    f"metric {value:.4f}"
                )
        state.materialize(name)
    if tuner is not None and since_tune and steps:
        state.model = tuner(state.model)
        value = measure(state.model, x, y, spec, batch_size)
        history[-1]["metric_after_fine_tune"] = value
        history[-1]["fine_tuned"] = True
    if state.model is model:
        state.model = remove_units(model, {})
    if not state.model.compiled and model.compiled:
        # Ready for `evaluate`, like the original (a fresh optimizer).
        compile_like(state.model, model)
    plan = _original_plan(model, state)
    return state.model, plan, history


def _entry(step, layer, removed, scores, count, ratio, value, tuned):
    return {
        "step": int(step),
        "layer": layer,
        "removed": [int(u) for u in removed],
        "scores": [float(s) for s in np.asarray(scores, dtype=np.float64)],
        "num_removed": int(count),
        "ratio": float(ratio),
        "metric": float(value),
        "fine_tuned": bool(tuned),
    }


def _scores(criterion, state, name, x, y, rng, options):
    if callable(criterion):
        return np.asarray(criterion(state.model, name, x, y), dtype=np.float64)
    if criterion == "car":
        return state.scorer.scores(state.pending)
    if criterion == "random":
        return rng.random(state.scorer.num_units)
    if state.cache is None or state.cache[0] != name:
        # Unchanged by removals within the layer: computed once per model.
        if criterion == "l1":
            values = l1_scores(state.model, name)
        else:
            values = mean_activation_scores(
                state.model, name, x, batch_size=options["batch_size"]
            )
        state.cache = (name, values)
    return state.cache[1]


def _fine_tuner(model, fine_tune, train_data, fit_kwargs):
    if fine_tune is None:
        return None
    if callable(fine_tune):

        def tune(pruned):
            result = fine_tune(pruned)
            return pruned if result is None else result

        return tune
    if not isinstance(fine_tune, (int, np.integer)) or fine_tune < 1:
        raise ValueError(
            "`fine_tune` must be None, a positive number of epochs or a "
            f"callable fn(model). Received: fine_tune={fine_tune!r}"
        )
    if train_data is None or len(train_data) != 2:
        raise ValueError(
            "Fine-tuning for a number of epochs needs "
            "`train_data=(x_train, y_train)`. Received: train_data="
            f"{type(train_data).__name__}"
        )
    if not model.compiled:
        raise ValueError(
            "Fine-tuning for a number of epochs compiles the pruned model like "
            "the original one, but the original model is not compiled. "
            "Compile it, or pass fine_tune=fn(model) that compiles and trains. "
            f"Received: model={model.name} (not compiled)"
        )
    kwargs = dict(fit_kwargs or {})
    kwargs.setdefault("verbose", 0)

    def tune(pruned):
        compile_like(pruned, model)
        pruned.fit(train_data[0], train_data[1], epochs=int(fine_tune), **kwargs)
        return pruned

    return tune


def _original_plan(model, state):
    analysis_units = {}
    reference = _State(model).alive
    for path, alive in state.alive.items():
        gone = np.setdiff1d(reference[path], alive)
        if len(gone):
            analysis_units[path] = gone.tolist()
    return plan_removal(model, analysis_units)
