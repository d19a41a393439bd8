"""Importance of coupled channel groups, normalized for one global ranking.

A coupled group (a filter and everything that reads it: the BatchNorm
`gamma` after it, the rows of the next kernel, the other convs of a residual
stage) is scored as a whole, DepGraph-style: each member layer gives a
*local* importance of the group's channel, the locals are *reduced* over the
members, and the group scores are *normalized* within their structure (the
groups made by the same producer layers) so that a single threshold across
layers is meaningful.

What we chose (after Torch-Pruning's `GroupMagnitudeImportance`, whose
defaults are the same: `p=2`, `group_reduction="mean"`, `normalizer="mean"`):

- local importance per member entry: `l1`: `sum |w|`; `l2`: `sum w^2`;
  `taylor`: `sum |w * dL/dw|`; over all weights of the entry (a producer's
  kernel slice, a consumer's input rows, a BatchNorm `gamma`, depthwise taps);
- reduction `"mean"`: the sum of the locals over the members divided by the
  number of member layers that touch the group (`"sum"`, `"max"` also);
- normalization `"mean"`: `s / mean(s)` over the structure's groups, so a
  layer whose weights are 10x larger does not keep all its filters and a
  layer with tiny weights lose all of them. `lamp` uses LAMP's
  normalization (`s_i / sum_{s_j >= s_i} s_j`, within the structure);
  `car` and `random` are left as they are (CAR's accuracy drops are already
  on one scale). `"rank"` (the within-structure rank fraction) makes a
  global threshold prune every structure by the same fraction: that is
  `scope="layer"`.
"""

import numpy as np

from kprune.criteria.ablation import _as_list
from kprune.surgery.groups import DependencyGroups

IMPORTANCES = ("l1", "l2", "fpgm", "lamp", "taylor", "activation", "car", "random")
NORMALIZERS = ("mean", "max", "sum", "standardization", "lamp", "rank")
REDUCTIONS = ("mean", "sum", "max")
_DEFAULT_NORMALIZER = {"lamp": "lamp", "car": None, "random": None}


def split_data(data):
    """`(x, y)` from `x`, `(x,)` or `(x, y)` (y may be None)."""
    if data is None:
        return None, None
    if isinstance(data, tuple):
        if len(data) == 1:
            return data[0], None
        if len(data) == 2:
            return data
        raise ValueError(
            "`data` must be inputs `x` or a tuple `(x, y)`. "
            f"Received: a tuple of length {len(data)}"
        )
    if isinstance(data, dict) and "x" in data:
        return data["x"], data.get("y")
    return data, None


def normalize_scores(scores, structure, method="mean"):
    """Normalize group scores within each structure.

    `mean`: `s / mean(s)`; `max`: `s / max(s)`; `sum`: `s / sum(s)`;
    `standardization`: `(s - min(s)) / (max(s) - min(s))`; `lamp`:
    `s_i / sum_{j: s_j >= s_i} s_j` (Lee et al.); `rank`: `rank(s_i) / n`
    in `(0, 1]`; None: unchanged. Every statistic is taken over the groups
    of one structure (one entry of `structure`).

    Args:
        scores: float array, one score per group.
        structure: int array of the same length: the structure of each group.
        method: one of `NORMALIZERS`, or None.

    Returns:
        A float64 array.

    Example:

    >>> normalize_scores(np.array([1.0, 3.0, 10.0]), np.array([0, 0, 1]))
    array([0.5, 1.5, 1. ])
    """
    if method is not None and method not in NORMALIZERS:
        raise ValueError(
            f"`normalize` must be one of {NORMALIZERS} or None. "
            f"Received: normalize={method!r}"
        )
    scores = np.asarray(scores, dtype=np.float64)
    if method is None:
        return scores.copy()
    out = np.zeros_like(scores)
    eps = 1e-12
    for s in np.unique(structure):
        where = np.flatnonzero(structure == s)
        values = scores[where]
        if method == "mean":
            values = values / (np.mean(values) + eps)
        elif method == "max":
            values = values / (np.max(values) + eps)
        elif method == "sum":
            values = values / (np.sum(values) + eps)
        elif method == "standardization":
            span = np.max(values) - np.min(values)
            values = (values - np.min(values)) / (span + eps)
        elif method == "lamp":
            order = np.argsort(values, kind="stable")
            tail = np.cumsum(values[order][::-1])[::-1]
            lamp = np.empty_like(values)
            lamp[order] = values[order] / (tail + eps)
            values = lamp
        else:  # rank
            order = np.argsort(values, kind="stable")
            ranks = np.empty(len(values))
            ranks[order] = np.arange(1, len(values) + 1)
            values = ranks / len(values)
        out[where] = values
    return out


def _reduce(totals, touched, how):
    totals = np.asarray(totals)
    if how == "sum":
        return totals.sum(axis=0)
    if how == "max":
        return totals.max(axis=0) if len(totals) else np.zeros(totals.shape[1:])
    count = np.maximum(np.asarray(touched).sum(axis=0), 1.0)
    return totals.sum(axis=0) / count


def _weight_locals(view, kind, gradients=None):
    totals, touched = [], []
    for member in view.members:
        rows = member.rows(view.analysis)
        if rows is None:
            continue
        if kind == "l1":
            local = np.abs(rows).sum(axis=1)
        elif kind == "l2":
            local = np.square(rows.astype(np.float64)).sum(axis=1)
        else:  # taylor
            grads = gradients.get(id(member.node.layer))
            grad_rows = None if grads is None else member.rows(view.analysis, grads)
            if grad_rows is None:
                continue
            local = np.abs(rows.astype(np.float64) * grad_rows).sum(axis=1)
        total, hit = view.scatter(member, local)
        totals.append(total)
        touched.append(hit)
    return totals, touched


def _fpgm_locals(view):
    from scipy.spatial.distance import cdist

    totals, touched = [], []
    for member in view.members:
        if member.role != "producer":
            continue
        rows = member.rows(view.analysis)
        if rows is None:
            continue
        rows = rows.astype(np.float64)
        local = cdist(rows, rows).sum(axis=1)
        total, hit = view.scatter(member, local)
        totals.append(total)
        touched.append(hit)
    return totals, touched


def _activation_locals(view, x, batch_size):
    from kprune.criteria._programs import Program

    graph = view.analysis.graph
    # Tensors that flow between calls (not units inside a layer, like heads).
    produced = {id(t) for t in graph.inputs}
    produced.update(id(t) for node in graph.nodes for t in node.outputs)
    tensors, seen = [], set()
    for member in view.members:
        if id(member.tensor) not in produced:
            continue
        if member.role in ("consumer", "depthwise") and id(member.tensor) not in seen:
            seen.add(id(member.tensor))
            tensors.append(member)
    wanted = {id(m.tensor) for m in tensors}
    nodes = []
    for node in reversed(graph.nodes):
        if any(id(t) in wanted for t in node.outputs):
            nodes.append(node)
            wanted.update(id(t) for t in node.inputs)
    nodes.reverse()
    outputs = [m.tensor for m in tensors]
    program = Program(_MeanAbs(list(graph.inputs), nodes, outputs))
    x_list = [np.asarray(a) for a in _as_list(x)]
    sums = [np.zeros(t.channels) for t in outputs]
    total = len(x_list[0])
    for lo in range(0, total, batch_size):
        chunk = [a[lo : lo + batch_size] for a in x_list]
        values = _as_list(program.predict_on_batch(chunk))
        for index, value in enumerate(values):
            sums[index] += np.asarray(value, dtype=np.float64)
    totals, touched = [], []
    for member, value in zip(tensors, sums):
        total_g, hit = view.scatter(member, value / max(total, 1))
        count, _ = view.scatter(member, None, reduce="count")
        totals.append(total_g / np.maximum(count, 1.0))
        touched.append(hit)
    return totals, touched


class _MeanAbs:
    """A `Slice` whose outputs are per-channel sums of |x| over batch and
    positions divided by the positions (so summing over batches and dividing
    by the number of samples gives the mean)."""

    def __init__(self, inputs, nodes, outputs):
        from kprune.criteria._programs import Slice

        self._slice = Slice(inputs, nodes, outputs)

    def run(self, values):
        import keras

        outs = []
        for value in self._slice.run(values):
            value = keras.ops.abs(keras.ops.cast(value, "float32"))
            rank = len(value.shape)
            if rank > 2:
                value = keras.ops.mean(value, axis=tuple(range(1, rank - 1)))
            outs.append(keras.ops.sum(value, axis=0))
        return outs


def _car_scores(model, view, x, y, **kwargs):
    from kprune.criteria.car import car_scores

    scores = np.zeros(len(view.ids))
    done = np.zeros(len(view.ids), dtype=bool)
    producers = {m.path: m for m in view.members if m.role == "producer"}
    for structure in view.structures:
        member = producers[structure[0]]
        values = car_scores(model, member.path, x, y, groups=True, **kwargs)
        positions = view.position[member.groups]
        keep = (positions >= 0) & ~done[np.maximum(positions, 0)]
        scores[positions[keep]] = values[keep]
        done[positions[keep]] = True
    return scores


def _callable_scores(fn, model, view, x, y):
    totals, touched = [], []
    for member in view.members:
        if member.role != "producer":
            continue
        values = np.asarray(fn(model, member.path, x, y), dtype=np.float64)
        if values.shape != (member.tensor.channels,):
            raise ValueError(
                f"The importance function must return one score per unit of "
                f"layer '{member.path}' ({member.tensor.channels}). Received: "
                f"an array of shape {values.shape}"
            )
        total, hit = view.scatter(member, values)
        totals.append(total)
        touched.append(hit)
    return totals, touched


def group_importance(
    model,
    importance="l2",
    data=None,
    groups=None,
    reduction="mean",
    normalize="auto",
    loss=None,
    batch_size=128,
    seed=None,
    training=False,
):
    """One importance score per removable coupled group (higher = keep).

    For a group `g` with member entries `m` (producer units, consumer rows,
    BatchNorm `gamma`, depthwise taps), `score_g = normalize(reduce_m
    local_m(g))`: see the module docstring for `local`, `reduce` and
    `normalize`. `fpgm` uses only the producers' kernels (the distance of a
    filter to the layer's other filters, `sum_j ||w_i - w_j||`, He et al.);
    `activation` is the mean `|x|` of the channel where weighted layers read
    it; `car` is `kprune.criteria.car_scores` of the structure's first
    layer; `taylor` needs gradients of the loss on `data`.

    Args:
        model: a Functional or Sequential `keras.Model` (not modified).
        importance: one of `IMPORTANCES`, or a callable `fn(model,
            layer_path, x, y) -> one score per unit` (like
            `kprune.criteria.l1_scores`), summed over a group's producers.
        data: `x` or `(x, y)`; needed by `taylor`, `activation`, `car`.
        groups: a `kprune.surgery.groups.DependencyGroups` of `model`
            (built when None).
        reduction: "mean", "sum" or "max" over member layers.
        normalize: "auto" (LAMP's for `lamp`, none for `car`, `random` and
            callables, "mean" otherwise), one of `NORMALIZERS`, or None.
        loss: the loss for `taylor` (default: the model's compiled loss, or
            sparse categorical cross-entropy).
        batch_size: samples per pass.
        seed: seed for `random`.
        training: the mode the model is called in for `taylor`'s gradients
            (`kprune.criteria.gradient_means`): False (default: inference,
            BatchNormalization on its moving statistics, as the pruned model
            runs) or True (batch statistics and dropout, as in `fit`).

    Returns:
        A float64 array aligned with `groups.ids`.

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((4,)),
    ...     keras.layers.Dense(3, name="a"), keras.layers.Dense(2, name="b")])
    >>> group_importance(model, "l2").shape
    (3,)

    Reference:
        G. Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023.
    """
    view = groups if groups is not None else DependencyGroups(model)
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"`reduction` must be one of {REDUCTIONS}. "
            f"Received: reduction={reduction!r}"
        )
    x, y = split_data(data)
    name = importance if isinstance(importance, str) else None
    if name is None and not callable(importance):
        raise ValueError(
            f"`importance` must be one of {IMPORTANCES} or a callable. "
            f"Received: importance={importance!r}"
        )
    if name is not None and name not in IMPORTANCES:
        raise ValueError(
            f"Unknown importance. Use one of {IMPORTANCES} or a callable "
            f"fn(model, layer, x, y). Received: importance={importance!r}"
        )
    if name in ("taylor", "activation", "car") and x is None:
        raise ValueError(
            f"importance={name!r} needs data: pass `data=(x, y)`. Received: data=None"
        )
    if name in ("taylor", "car") and y is None:
        raise ValueError(
            f"importance={name!r} needs labels: pass `data=(x, y)`. Received: y=None"
        )
    if not len(view.ids):
        return np.zeros(0)
    if name == "random":
        raw = np.random.default_rng(seed).random(len(view.ids))
    elif name == "car":
        raw = _car_scores(model, view, x, y, batch_size=batch_size)
    else:
        if name in ("l1", "l2", "lamp"):
            totals, touched = _weight_locals(view, "l1" if name == "l1" else "l2")
        elif name == "taylor":
            from kprune.criteria.gradients import gradient_means

            gradients = gradient_means(
                model, x, y, loss=loss, batch_size=batch_size, training=training
            )
            totals, touched = _weight_locals(view, "taylor", gradients)
        elif name == "fpgm":
            totals, touched = _fpgm_locals(view)
        elif name == "activation":
            totals, touched = _activation_locals(view, x, batch_size)
        else:
            totals, touched = _callable_scores(importance, model, view, x, y)
        if not totals:
            raw = np.zeros(len(view.ids))
        else:
            raw = _reduce(totals, touched, reduction)
    if normalize == "auto":
        normalize = _DEFAULT_NORMALIZER.get(name, "mean") if name else None
    return normalize_scores(raw, view.structure, normalize)
