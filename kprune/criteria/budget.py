"""Selection to a budget: which coupled groups leave so a model fits MACs,
parameters or latency.

`BudgetPlanner` ranks the removable groups of a `DependencyGroups` view by
their (normalized) importance and removes the `k` lowest, with two
structural rules applied per structure (the groups made by the same
producer layers): at least one unit stays, and with `round_to=n` the width
is rounded *up* to a multiple of `n` (the lowest-scored groups leave first,
so rounding re-keeps the best of the removed). The cost of a candidate is
estimated from the original model's per-layer MACs / parameters (from
`kprune.report.summary`) scaled by the kept fraction of each weighted
layer's input and output channels, or from a latency table; `search` finds
the smallest `k` whose estimate meets the target by bisection, then gives back
the best removed groups (whole `round_to` blocks) that still fit.
"""

import numpy as np

from kprune.report.summary import summary as model_summary

METRICS = ("macs", "params", "latency")


class BudgetPlanner:
    """Choose the groups to remove so that an estimated cost meets a target.

    For a weighted layer `l` (Dense, Conv, SeparableConv, Embedding: output
    units; DepthwiseConv: channels) with original cost `C_l`, kept input
    fraction `a_l` and kept output fraction `b_l`:

        cost = sum_l C_l * a_l * b_l + sum_(other layers) C_other

    (DepthwiseConv and per-channel layers such as BatchNormalization scale
    with one fraction). This is exact for MACs of Dense / Conv /
    DepthwiseConv and for their kernels' parameters; `kprune.prune` checks
    the rebuilt model and corrects the target where it is not.

    Args:
        model: the `keras.Model` the view was built from.
        groups: its `kprune.surgery.groups.DependencyGroups`.
        scores: one score per removable group (aligned with `groups.ids`);
            lower leaves first.
        ignore: group ids that must stay.
        round_to: keep widths at multiples of this (None: any width).
        latency_fn: optional `fn(widths) -> milliseconds`, where `widths`
            is `{layer path: (kept_in, kept_out)}`, for `metric="latency"`.
        input_shape: passed to `kprune.report.summary` (models built on
            unknown dimensions).
        summary: the model's `kprune.report.summary`, if already computed.
        activation_cost: MACs-equivalent cost of one activation element
            (`group_costs`, `rank_weights`); > 0 lets `search` tilt the
            ranking toward removing memory-bound groups until the estimated
            time falls as far as the MACs (0: importance alone).
        speed_share: the estimated speed-up `search` asks for, as a share
            of the MACs reduction, before it tilts the ranking.

    Example:

    >>> import keras, numpy as np
    >>> from kprune.surgery.groups import DependencyGroups
    >>> model = keras.Sequential([keras.Input((8,)),
    ...     keras.layers.Dense(16, name="a"), keras.layers.Dense(2, name="b")])
    >>> view = DependencyGroups(model)
    >>> planner = BudgetPlanner(model, view, np.arange(16.0))
    >>> removed = planner.search("macs", 0.5)
    >>> len(removed), planner.estimate(removed)["macs"] / planner.base["macs"]
    (8, 0.5)
    """

    def __init__(
        self,
        model,
        groups,
        scores,
        ignore=(),
        round_to=None,
        latency_fn=None,
        input_shape=None,
        summary=None,
        activation_cost=0.0,
        speed_share=0.9,
    ):
        self.view = groups
        self.scores = np.asarray(scores, dtype=np.float64)
        if self.scores.shape != (len(groups.ids),):
            raise ValueError(
                f"`scores` must have one value per removable group "
                f"({len(groups.ids)}). Received: shape {self.scores.shape}"
            )
        if round_to is not None and int(round_to) < 1:
            raise ValueError(f"`round_to` must be >= 1. Received: round_to={round_to}")
        self.round_to = None if round_to is None else int(round_to)
        self.latency_fn = latency_fn
        analysis = groups.analysis
        protected = np.zeros(len(groups.ids), dtype=bool)
        ignore = np.asarray(list(ignore), dtype=np.int64)
        if len(ignore):
            positions = groups.position[ignore]
            protected[positions[positions >= 0]] = True
        self.protected = protected
        num_structures = len(groups.structures)
        self.total = np.bincount(groups.structure, minlength=num_structures)
        self.fixed = groups.pinned_units + np.bincount(
            groups.structure[protected], minlength=num_structures
        )
        # Layers and what scales their cost.
        report = summary or model_summary(model, input_shape=input_shape)
        rows = {row["name"]: row for row in report["layers"]}
        self.base = {"macs": float(report["macs"]), "params": float(report["params"])}
        self._terms = []  # (macs, params, tensor_in, tensor_out)
        counted = set()
        producers = {m.path: m for m in groups.members if m.role == "producer"}
        consumers = {m.path: m for m in groups.members if m.role == "consumer"}
        per_channel = {
            m.path: m for m in groups.members if m.role in ("scale", "depthwise")
        }
        for path, row in rows.items():
            tensor_in = tensor_out = None
            if path in producers:
                tensor_out = producers[path].tensor
                if path in consumers:
                    tensor_in = consumers[path].tensor
            elif path in consumers:
                tensor_in = consumers[path].tensor
            elif path in per_channel:
                tensor_in = per_channel[path].tensor
            else:
                continue
            counted.add(path)
            self._terms.append(
                (float(row["macs"]), float(row["params"]), tensor_in, tensor_out, path)
            )
        # Layers inside composite layers (a KerasHub block's Dense layers)
        # have no row of their own: their parameters and MACs are part of
        # the composite's row. Their MACs come from the same count the
        # summary makes inside composites; `uncounted_macs` names those it
        # could not count.
        self.uncounted_macs = []
        members = {**per_channel, **consumers, **producers}
        inner_macs = _inner_macs(report, members, rows)
        for path in sorted(members):
            if path in counted or path in rows:
                continue
            if not any(path.startswith(name + "/") for name in rows):
                continue
            member = members[path]
            tensor_in = consumers[path].tensor if path in consumers else None
            tensor_out = producers[path].tensor if path in producers else None
            if path in per_channel and path not in consumers:
                tensor_in = per_channel[path].tensor
            params = sum(int(np.prod(w.shape)) for w in member.node.layer.weights)
            counted.add(path)
            macs = inner_macs.get(path)
            self._terms.append(
                (macs or 0.0, float(params), tensor_in, tensor_out, path)
            )
            if macs is None and (tensor_out is not None or path in consumers):
                self.uncounted_macs.append(path)
        self._fixed_cost = {
            "macs": self.base["macs"] - sum(t[0] for t in self._terms),
            "params": self.base["params"] - sum(t[1] for t in self._terms),
        }
        self._analysis = analysis
        self._index_terms()
        # The ranking: importance, weighted by the share of MACs in each
        # group's estimated time (`rank_weights`) to the power `exponent`,
        # chosen by `search` (0: importance alone); lowest leaves first.
        self.activation_cost = float(activation_cost or 0.0)
        self.speed_share = float(speed_share)
        self._candidates = np.flatnonzero(~protected)
        self.forced = np.zeros(0, dtype=np.int64)
        self._costs = None
        if self.activation_cost > 0:
            self._costs = self.group_costs(totals=True)
        self.rank(0.0)

    def force(self, positions):
        """Count these groups as removed in every selection (`select`,
        `search`): the groups of a block that leaves whole, say. They leave
        the ranking; `force([])` undoes it."""
        self.forced = np.unique(np.asarray(positions, dtype=np.int64))
        free = np.flatnonzero(~self.protected)
        self._candidates = free[~np.isin(free, self.forced)]
        self.rank(self.exponent)

    def rank(self, exponent):
        """Order the groups by importance times `rank_weights(...) ** exponent`
        (the order `select` and `search` use)."""
        self.exponent = float(exponent)
        self.rank_scores = self.scores
        if self._costs is not None and self.exponent > 0:
            macs, elements = self._costs[:2]
            self.rank_scores = self.scores * rank_weights(
                macs, elements, self.activation_cost, self.exponent
            )
        candidates = self._candidates
        order = candidates[np.argsort(self.rank_scores[candidates], kind="stable")]
        self.order = order  # removable positions, lowest first
        self.order_structure = self.view.structure[order]
        self.per_structure = [
            order[self.order_structure == s] for s in range(len(self.total))
        ]

    def time_estimate(self, positions, cost=None):
        """Estimated time without these groups, relative to the model's:
        `(MACs + k * elements) / (MACs_0 + k * elements_0)` with `k =
        activation_cost` (MACs alone when `k` is 0)."""
        cost = cost or self.estimate(positions)
        if self._costs is None:
            return cost["macs"] / self.base["macs"] if self.base["macs"] else 1.0
        total_elements = self._costs[2]
        kept = self.kept_elements(positions)
        k = self.activation_cost
        full = self.base["macs"] + k * total_elements
        return (cost["macs"] + k * kept) / full if full else 1.0

    def kept_elements(self, positions):
        """Activation elements (`group_costs`) of the model without these
        groups, all channels counted; None without an `activation_cost`."""
        if self._costs is None:
            return None
        _, elements, total = self._costs
        return total - float(np.sum(elements[np.asarray(positions, dtype=np.int64)]))

    # ------------------------------------------------------------------ API
    def select(self, k):
        """Positions (into `groups.ids`) removed when the `k` lowest leave."""
        k = int(np.clip(k, 0, len(self.order)))
        counts = np.bincount(self.order_structure[:k], minlength=len(self.total))
        removed = []
        for s, count in enumerate(counts):
            if not count:
                continue
            total = self.total[s] + self.view.pinned_units[s]
            width = max(1, total - count)
            if self.round_to:
                width = min(total, -(-width // self.round_to) * self.round_to)
            count = int(min(count, total - max(width, self.fixed[s])))
            if count > 0:
                removed.append(self.per_structure[s][:count])
        if not removed:
            return self.forced.copy()
        return np.union1d(np.concatenate(removed), self.forced)

    def removed_ids(self, positions):
        """Group ids of the given positions."""
        return self.view.ids[np.asarray(positions, dtype=np.int64)]

    def widths(self, positions):
        """`{layer path: (kept input channels, kept output units)}`."""
        keep = self._keep(positions)
        out = {}
        for _, _, tensor_in, tensor_out, path in self._terms:
            kin = _kept(self._analysis, tensor_in, keep)
            kout = _kept(self._analysis, tensor_out, keep)
            out[path] = (kin, kout)
        return out

    def estimate(self, positions):
        """Estimated `{"macs", "params"[, "latency"]}` without these groups."""
        keep = self._keep(positions)
        cost = dict(self._fixed_cost)
        frac = self._fractions(keep)
        cost["macs"] += float(np.dot(self._term_costs[0], frac))
        cost["params"] += float(np.dot(self._term_costs[1], frac))
        if self.latency_fn is not None:
            cost["latency"] = float(self.latency_fn(self.widths(positions)))
        return cost

    def search(self, metric, target, max_exponent=1.0, steps=7, fill=True):
        """Positions to remove: the fewest that bring `metric` to `target`.

        With `activation_cost > 0` and a MACs or parameter budget, the
        ranking's exponent (`rank`) is the smallest in `[0, max_exponent]`
        (bisection, `steps` halvings) whose selection's estimated speed-up
        (`1 / time_estimate`) is at least `speed_share` times its MACs
        reduction: importance alone decides wherever that already holds
        (plain convolutional networks, whose time is nearly all MACs), and
        the cost weighting only tilts the choice as far as needed
        (`max_exponent` when even that falls short).

        Args:
            metric: "macs" or "params" (`target` is a fraction of the
                original model's) or "latency" (`target` in the latency
                function's unit).
            target: the budget.
            fill: give back the best removed groups that still fit after
                the bisection (`_fill`; False: a quicker, coarser
                selection, for estimates).

        Returns:
            Sorted positions into `groups.ids` (as few groups as the
            budget allows; all candidates if even that misses it).
        """
        if metric not in METRICS:
            raise ValueError(f"`metric` must be one of {METRICS}. Received: {metric!r}")
        if metric == "latency" and self.latency_fn is None:
            raise ValueError("metric='latency' needs a latency_fn.")

        def search():
            return self._search(metric, target, fill)

        if self._costs is None or metric == "latency" or not self.base["macs"]:
            return search()

        def fast_enough(removed):
            cost = self.estimate(removed)
            macs_ratio = cost["macs"] / self.base["macs"]
            time_ratio = self.time_estimate(removed, cost)
            return macs_ratio >= self.speed_share * time_ratio * (1 - 1e-9)

        self.rank(0.0)
        removed = search()
        if fast_enough(removed):
            return removed
        lo, hi = 0.0, float(max_exponent)
        self.rank(hi)
        best = search()
        if fast_enough(best):
            for _ in range(int(steps)):
                mid = (lo + hi) / 2
                self.rank(mid)
                removed = search()
                if fast_enough(removed):
                    hi, best = mid, removed
                else:
                    lo = mid
        self.rank(hi)
        return best

    def _search(self, metric, target, fill=True):
        goal = target if metric == "latency" else target * self.base[metric]

        def meets(k):
            return self.estimate(self.select(k))[metric] <= goal

        lo, hi = 0, len(self.order)
        if meets(lo):
            return self.select(0)
        if not meets(hi):
            return self.select(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if meets(mid):
                hi = mid
            else:
                lo = mid
        removed = self.select(hi)
        if metric != "latency" and fill:
            removed = self._fill(removed, metric, goal)
        return removed

    def _fill(self, removed, metric, goal, tries=512):
        """Give back removed groups, best first, while the budget holds.

        Removing the `k`-th group can cost a lot at once (a filter of a
        large early layer), leaving the budget under-used; this re-keeps
        the best removed groups of a structure (`round_to` of them at a
        time, so widths stay multiples) wherever they still fit.
        """
        step = self.round_to or 1
        structure = self.view.structure
        gone = {}
        forced = set(self.forced.tolist())  # never given back
        for position in removed:
            if int(position) not in forced:
                gone.setdefault(int(structure[position]), []).append(int(position))
        for s in gone:
            gone[s].sort(key=lambda p: -self.rank_scores[p])  # best first

        def flat():
            items = [p for positions in gone.values() for p in positions]
            return np.union1d(np.array(items, dtype=np.int64), self.forced)

        changed = True
        while changed and tries > 0:
            changed = False
            order = sorted(gone, key=lambda s: -self.rank_scores[gone[s][0]])
            for s in order:
                tries -= 1
                block, rest = gone[s][:step], gone[s][step:]
                gone[s] = rest
                if self.estimate(flat())[metric] <= goal:
                    changed = True
                    if not rest:
                        del gone[s]
                    break
                gone[s] = block + rest
                if tries <= 0:
                    break
        return flat()

    def group_costs(self, totals=False):
        """Per removable group: the MACs and the activation elements it costs.

        `macs[g]`: the MACs that leave with group `g` at full widths (a
        weighted layer with original MACs `C` and `n` input channels costs
        `C / n` per input channel, likewise per output unit). `elements[g]`:
        the elements of `g`'s channel, summed over the outputs of the calls
        whose cost is memory traffic rather than MACs (activations that are
        separate ops, elementwise products and sums, pooling, depthwise
        convolutions, resizing): every call except those of Dense / Conv
        layers, BatchNormalization (folded into the conv before it), ReLU /
        ReLU6 right after a layer the converter fuses them into, and calls
        that are free at inference (dropout, noise, reshapes). A channel of
        a `H x W` map
        counts `H * W` per call.

        Args:
            totals: also return the model's total of such elements (all
                channels, removable or not).

        Returns:
            `(macs, elements)`: float64 arrays aligned with `groups.ids`
            (and the total with `totals=True`).
        """
        view, analysis = self.view, self._analysis
        macs = np.zeros(len(view.ids))
        for cost, _, tensor_in, tensor_out, _ in self._terms:
            for tensor in (tensor_in, tensor_out):
                if tensor is None or not tensor.channels or not cost:
                    continue
                positions = view.position[analysis.values(analysis.component, tensor)]
                keep = positions >= 0
                np.add.at(macs, positions[keep], cost / tensor.channels)
        elements = np.zeros(len(view.ids))
        total = 0.0
        graph = analysis.graph
        makers = output_makers(graph)
        for node in graph.nodes:
            if not memory_bound(node, makers):
                continue
            for tensor in node.outputs:
                if not tensor.channels or not tensor.last:
                    continue
                spatial = [d for d in tensor.shape[1:-1]]
                if any(d is None for d in spatial):
                    continue
                size = float(np.prod(spatial))
                positions = view.position[analysis.values(analysis.component, tensor)]
                keep = positions >= 0
                np.add.at(elements, positions[keep], size)
                total += size * tensor.channels
        return (macs, elements, total) if totals else (macs, elements)

    # ------------------------------------------------------------- internals
    def _index_terms(self):
        """Group ids of every term's input and output channels, flat, for
        `_fractions`."""
        comp = self._analysis.component
        index, sizes = [], []
        for _, _, tensor_in, tensor_out, _ in self._terms:
            for tensor in (tensor_in, tensor_out):
                ids = []
                if tensor is not None and tensor.channels:
                    ids = self._analysis.values(comp, tensor)
                index.append(np.asarray(ids, np.int64))
                sizes.append(len(ids))
        sizes = np.asarray(sizes, np.int64)
        self._term_index = (
            np.concatenate(index) if index else np.zeros(0, np.int64),
            np.repeat(np.arange(len(sizes)), sizes),
            sizes,
        )
        self._term_costs = (
            np.asarray([t[0] for t in self._terms], np.float64),
            np.asarray([t[1] for t in self._terms], np.float64),
        )

    def _fractions(self, keep):
        """Per term, the kept fraction of its input channels times that of
        its output channels (one vectorized pass: the budget search
        estimates hundreds of selections; a tensor without channels keeps
        1)."""
        index, owner, sizes = self._term_index
        kept = np.bincount(owner, weights=keep[index], minlength=len(sizes))
        frac = np.where(sizes > 0, kept / np.maximum(sizes, 1), 1.0)
        return frac[0::2] * frac[1::2]

    def _keep(self, positions):
        keep = np.ones(self._analysis.num_groups, dtype=bool)
        keep[self.view.ids[np.asarray(positions, dtype=np.int64)]] = False
        return keep


MATMUL_LAYERS = (
    "Dense",
    "EinsumDense",
    "Conv1D",
    "Conv2D",
    "Conv3D",
    "Conv1DTranspose",
    "Conv2DTranspose",
    "Conv3DTranspose",
    "SeparableConv1D",
    "SeparableConv2D",
)
_FREE = (
    "InputLayer",
    "BatchNormalization",
    "Dropout",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "SpatialDropout3D",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
    "Identity",
    "Reshape",
    "Flatten",
)
_FUSED = ("relu", "relu6")
# Ops the converter fuses a following ReLU / ReLU6 into.
_FUSES_RELU = MATMUL_LAYERS + (
    "DepthwiseConv1D",
    "DepthwiseConv2D",
    "Add",
    "Subtract",
    "Multiply",
)


def output_makers(graph):
    """`{id(tensor): the call that made it}` over a traced graph (the
    `makers` `memory_bound` reads)."""
    return {id(t): node for node in graph.nodes for t in node.outputs}


def memory_bound(node, makers):
    """True for a call whose cost is moving its elements (see
    `BudgetPlanner.group_costs`)."""
    import keras

    layer = node.layer
    name = layer.__class__.__name__
    if name in MATMUL_LAYERS or name in _FREE or isinstance(layer, keras.Model):
        return False
    activation = None
    if name == "ReLU":
        activation = "relu"
    elif name == "Activation":
        activation = getattr(layer.activation, "__name__", None)
        if activation == "linear":
            return False
    if activation in _FUSED and node.inputs:
        # The converter fuses ReLU / ReLU6 into the conv, depthwise conv,
        # dense or elementwise op before it (through a folded
        # BatchNormalization).
        maker = makers.get(id(node.inputs[0]))
        if maker is not None and maker.layer.__class__.__name__ == "BatchNormalization":
            maker = makers.get(id(maker.inputs[0])) if maker.inputs else None
        if maker is not None and maker.layer.__class__.__name__ in _FUSES_RELU:
            return False
    return True


def rank_weights(macs, elements, activation_cost, exponent=1.0):
    """The share of MACs in each group's cost: the ranking's weight.

        w_g = (macs_g / (macs_g + k * elements_g)) ** exponent

    with `k = activation_cost` (MACs-equivalent cost of one activation
    element). A group whose time is mostly memory-bound work (activations
    of wide, high-resolution maps that no MAC count sees) gets a small
    weight, so at equal importance it leaves before a group whose cost the
    MACs budget counts: the same MACs budget then removes more time.

    Args:
        macs: per-group MACs (`BudgetPlanner.group_costs`).
        elements: per-group activation elements.
        activation_cost: `k` (0: all weights 1).
        exponent: strength of the weighting.

    Returns:
        Float64 weights in (0, 1].

    Example:

    >>> rank_weights(np.array([100.0, 100.0]), np.array([0.0, 10.0]), 10.0)
    array([1. , 0.5])
    """
    macs = np.asarray(macs, dtype=np.float64)
    elements = np.asarray(elements, dtype=np.float64)
    total = macs + activation_cost * elements
    share = np.where(total > 0, macs / np.maximum(total, 1e-300), 1.0)
    return share**exponent


def _kept(analysis, tensor, keep):
    if tensor is None or not tensor.channels:
        return None
    return int(np.count_nonzero(keep[analysis.values(analysis.component, tensor)]))


def _inner_macs(report, members, rows):
    """MACs of each layer inside a composite layer, by path (None: unknown).

    Read from the summary's `inner_macs` (the count it makes inside layers).
    """
    found = dict(report.get("inner_macs") or {})
    inner = [p for p in members if p not in rows and "/" in p]
    for path in inner:
        # A sublayer of a layer counted whole (attention's output
        # projection): its MACs are in that layer's count.
        parents = [path.rsplit("/", k)[0] for k in range(1, path.count("/") + 1)]
        if path not in found and any(found.get(p) is not None for p in parents):
            found[path] = 0.0
    return found
