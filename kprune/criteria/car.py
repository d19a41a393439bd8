"""CAR / RAR: importance of a unit = how much worse the model gets without it.

Abbasi-Asl & Yu's classification accuracy reduction (CAR) index of a filter
is the drop in classification accuracy when that filter alone is removed;
with a loss instead of accuracy the same index is their RAR (regression
accuracy reduction: the increase of the loss).
"""

import keras
import numpy as np

from kprune.criteria.ablation import AblationScorer, _as_list
from kprune.criteria.metrics import importance, resolve_metric


def car_scores(
    model,
    layer_name,
    x,
    y,
    metric="accuracy",
    batch_size=256,
    ablation_batch=8,
    groups=True,
    method="cached",
    higher_is_better=None,
):
    """CAR index of every unit of a layer: the metric drop without that unit.

    For each unit `k` (Conv filter, Dense unit) of `layer_name`:

        CAR_k = metric(model) - metric(model without unit k)

    for a metric where higher is better (accuracy: the paper's CAR), and
    `metric(model without k) - metric(model)` for a loss or a metric where
    lower is better (RAR for regression). Higher = more important, always;
    negative = the model gets *better* without the unit.

    "Without unit k" is exactly `kprune.surgery.remove_units(model,
    {layer_name: [k]})`: the unit leaves with its coupled channels (residual
    branches), and every layer that read it no longer sees it. The network
    up to the layer runs once over `x` (its output and any tensor the rest
    of the graph needs are cached); each removal re-runs only the rest, with
    `ablation_batch` removals stacked per pass, and the first Dense/Conv
    layers after the cut apply each removal as a cheap correction to their
    pre-activation. `method="surgery"` is the naive reference: rebuild the
    model without each unit and run it whole.

    Args:
        model: a Functional or Sequential `keras.Model` with one output (not
            modified).
        layer_name: the layer whose units are scored (`"outer/inner"` inside
            nested models).
        x: inputs (array, or list of arrays).
        y: targets.
        metric: "accuracy" (CAR), any `keras.metrics.Metric` instance or
            name, a `keras.losses.Loss` (RAR) or "loss:<name>", or a
            callable `fn(y_true, y_pred)` treated as a loss.
        batch_size: samples per pass.
        ablation_batch: removals stacked in one pass.
        groups: True: a unit leaves with its coupled group, as the surgery
            removes it; coupled units get the same score; units that can
            never leave (their channel reaches a model output or a layer
            kprune does not know) get `inf`. False: only the unit's own
            output channel is zeroed at the layer's output.
        method: "cached" (fast, default) or "surgery" (naive reference).
        higher_is_better: override the metric's direction.

    Returns:
        A float64 NumPy array, one score per unit.

    Example:

    >>> import keras, numpy as np, kprune
    >>> model = keras.Sequential([keras.Input((8, 8, 1)),
    ...     keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
    ...     keras.layers.Flatten(), keras.layers.Dense(3, name="out")])
    >>> x = np.random.rand(64, 8, 8, 1).astype("float32")
    >>> y = np.random.randint(0, 3, 64)
    >>> scores = kprune.criteria.car_scores(model, "conv", x, y)
    >>> scores.shape
    (4,)

    Reference:
        R. Abbasi-Asl and B. Yu, "Structural Compression of Convolutional
        Neural Networks", arXiv:1705.07356.
    """
    if method == "cached":
        scorer = AblationScorer(
            model,
            layer_name,
            x,
            y,
            metric=metric,
            batch_size=batch_size,
            ablation_batch=ablation_batch,
            groups=groups,
            higher_is_better=higher_is_better,
        )
        return scorer.scores()
    if method == "surgery":
        if not groups:
            raise ValueError(
                "method='surgery' removes units with their coupled groups; it "
                "cannot score groups=False. Received: groups=False"
            )
        return surgery_scores(
            model, layer_name, x, y, metric, batch_size, higher_is_better
        )
    raise ValueError(
        f"`method` must be 'cached' or 'surgery'. Received: method={method!r}"
    )


def surgery_scores(
    model, layer_name, x, y, metric="accuracy", batch_size=256, higher_is_better=None
):
    """The naive CAR: rebuild the model without each unit, run it whole.

    The reference definition `car_scores` is checked against; one
    `kprune.surgery.remove_units` and one full pass over `x` per unit.

    Args:
        model: a Functional or Sequential `keras.Model`.
        layer_name: the layer whose units are scored.
        x: inputs.
        y: targets.
        metric: as in `car_scores`.
        batch_size: samples per pass.
        higher_is_better: override the metric's direction.

    Returns:
        A float64 array, one score per unit (`inf` for units that cannot be
        removed, `nan` when removing the unit would empty the layer).

    Example:

    >>> import keras, numpy as np
    >>> model = keras.Sequential([keras.Input((4,)),
    ...     keras.layers.Dense(5, activation="relu", name="hidden"),
    ...     keras.layers.Dense(2, name="out")])
    >>> x = np.random.rand(16, 4).astype("float32")
    >>> y = np.random.randint(0, 2, 16)
    >>> surgery_scores(model, "hidden", x, y).shape
    (5,)
    """
    from kprune.surgery import ChannelAnalysis, remove_units
    from kprune.surgery.plan import producer_nodes

    spec = resolve_metric(metric, higher_is_better)
    analysis = ChannelAnalysis(model)
    producers = producer_nodes(analysis)
    if layer_name not in producers:
        raise ValueError(
            f"Layer '{layer_name}' is not a layer with units of its own in model "
            f"'{model.name}'. Received: layer_name={layer_name!r}"
        )
    tensor = producers[layer_name].outputs[0]
    comps = analysis.values(analysis.component, tensor)
    base = measure(model, x, y, spec, batch_size)
    scores = np.full(tensor.channels, np.inf)
    if tensor.channels == 1:
        scores[:] = np.nan
        return scores
    for unit in range(tensor.channels):
        if analysis.pinned[comps[unit]]:
            continue
        small = remove_units(model, {layer_name: [unit]})
        scores[unit] = importance(
            base, measure(small, x, y, spec, batch_size), spec.higher_is_better
        )
    return scores


def measure(model, x, y, metric="accuracy", batch_size=256):
    """The metric of `model` on `(x, y)` (a full forward pass).

    Args:
        model: a `keras.Model`.
        x: inputs.
        y: targets.
        metric: as in `car_scores`, or a resolved `MetricSpec`.
        batch_size: samples per pass.

    Returns:
        A float.

    Example:

    >>> import keras, numpy as np
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    >>> 0.0 <= measure(model, np.ones((4, 2)), np.array([0, 1, 0, 1])) <= 1.0
    True
    """
    spec = metric if hasattr(metric, "accumulator") else resolve_metric(metric)
    accumulator = spec.accumulator(1)
    x_list = _as_list(x)
    y = np.asarray(y)
    for lo in range(0, len(y), batch_size):
        chunk = [np.asarray(a[lo : lo + batch_size]) for a in x_list]
        # An eager call: no compiled function to trace for every new model.
        pred = model(chunk if len(chunk) > 1 else chunk[0], training=False)
        pred = keras.ops.convert_to_numpy(_as_list(pred)[0])
        accumulator.update(y[lo : lo + batch_size], pred[None])
    return float(accumulator.result()[0])
