"""Measure a model with units removed, many times, re-using its prefix.

`AblationScorer` is the engine behind `car_scores` and `greedy_prune`. The
graph is cut where the units of one layer first appear: the *prefix* (every
layer whose output cannot change when those units go) runs once over the
data and its outputs at the cut are cached; each ablation re-runs only the
*suffix*, and several ablations run stacked in one batch.

What "removed" means is what `kprune.surgery.remove_units` does, so the
measured metric equals the metric of the physically smaller model:

- the unit's whole coupled group leaves (its channel on every residual
  branch, through BatchNorm, activations, pooling, Flatten ...);
- a layer that mixes channels (Dense, Conv ...) reading a removed channel no
  longer sees it: the channel reads as zero at that layer's input, or as the
  unit's constant output when the unit is constant on every input (the
  constant the surgery folds into the consumer's bias);
- channel-wise layers (BatchNorm, ReLU, pooling, Add ...) never mix channels,
  so what they compute on a removed channel is never read;
- LayerNormalization and Softmax over channels are computed over the kept
  channels only, as the surgery's smaller layer computes them.

Hence the ablation sets removed channels to their fill value (zero) at the
input of every layer after the cut; nothing else changes. Two cases are
approximations, not equalities: channels mixed by other layers without
weights (custom layers registered with a `MixingHandler`), and constant
units folded into a `'same'`-padded convolution larger than 1x1.
"""

import numpy as np

from kprune.criteria._programs import DeltaSlice, Program, Slice
from kprune.criteria.metrics import importance, resolve_metric
from kprune.surgery import ChannelAnalysis
from kprune.surgery.plan import producer_nodes


def _as_list(x):
    if isinstance(x, dict):
        raise ValueError(
            "Give the inputs as an array, or a list of arrays in the order of "
            f"`model.inputs`. Received: a dict with keys {sorted(x)}"
        )
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _pad(array, size):
    """`array` with its first axis repeated cyclically up to `size` rows."""
    if len(array) == size:
        return array
    return np.take(array, np.arange(size) % len(array), axis=0)


def _num_samples(x, name):
    arrays = _as_list(x)
    sizes = {len(a) for a in arrays}
    if len(sizes) != 1:
        raise ValueError(
            f"All arrays of `{name}` must have the same number of samples. "
            f"Received: {name} lengths={sorted(sizes)}"
        )
    return sizes.pop()


class AblationScorer:
    """Metric of a model with units of one layer removed, fast and exact.

    The network up to the layer runs once over `x` and the tensors the rest
    of the graph needs are cached (the layer's output, and e.g. skip
    connections that bypass it); each ablation re-runs only the rest, with
    `ablation_batch` ablations stacked in one batch. The metric of an
    ablation equals the metric of `kprune.surgery.remove_units(model,
    {layer_name: units})` (see the module docstring for the two exceptions).

    Args:
        model: a Functional or Sequential `keras.Model` with one output (not
            modified).
        layer_name: the layer whose units (Dense units, Conv filters) are
            ablated (`"outer/inner"` inside nested models).
        x: inputs (an array, or a list of arrays for several inputs).
        y: targets for `metric`.
        metric: "accuracy", a `keras.metrics.Metric`, a `keras.losses.Loss`
            or a callable `fn(y_true, y_pred)` (see
            `kprune.criteria.metrics.resolve_metric`).
        batch_size: samples per data chunk.
        ablation_batch: ablations stacked in one pass (each pass holds
            `batch_size * ablation_batch` rows).
        groups: True: a unit leaves with its coupled group, as the surgery
            removes it (units joined to channels that can never leave, e.g.
            model outputs, cannot be ablated). False: only the unit's own
            output channel is zeroed at the layer's output (its weights and
            bias set to zero); coupled channels on other branches stay.
        higher_is_better: override the metric's direction.

    Attributes:
        num_units: units of the layer.
        removable: bool per unit, whether it can be ablated.
        metric: the resolved `MetricSpec`.

    Example:

    >>> import keras, numpy as np
    >>> model = keras.Sequential([keras.Input((4,)),
    ...     keras.layers.Dense(6, activation="relu", name="hidden"),
    ...     keras.layers.Dense(3, name="out")])
    >>> x = np.random.rand(32, 4).astype("float32")
    >>> y = np.random.randint(0, 3, 32)
    >>> scorer = AblationScorer(model, "hidden", x, y)
    >>> scorer.evaluate([[], [0, 1]]).shape
    (2,)
    >>> scorer.scores().shape
    (6,)
    """

    def __init__(
        self,
        model,
        layer_name,
        x,
        y,
        metric="accuracy",
        batch_size=256,
        ablation_batch=8,
        groups=True,
        higher_is_better=None,
    ):
        if y is None:
            raise ValueError(
                "Ablation scores need targets `y` to measure the metric. "
                "Received: y=None"
            )
        for name, value in (
            ("batch_size", batch_size),
            ("ablation_batch", ablation_batch),
        ):
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(
                    f"`{name}` must be a positive integer. Received: {name}={value!r}"
                )
        self.metric = resolve_metric(metric, higher_is_better)
        self.batch_size = int(batch_size)
        self.ablation_batch = int(ablation_batch)
        self.groups = bool(groups)
        self.layer_name = layer_name
        self.analysis = ChannelAnalysis(model)
        graph = self.analysis.graph
        if len(graph.outputs) != 1:
            raise ValueError(
                "Ablation scores need a model with a single output; score a "
                "sub-model with the output you care about. "
                f"Received: model with {len(graph.outputs)} outputs"
            )
        node = _producer(self.analysis, layer_name)
        self._setup_slots(node)
        self._setup_slices()
        self.y = np.asarray(y)
        num = _num_samples(x, "x")
        if len(self.y) != num:
            raise ValueError(
                "`x` and `y` must hold the same number of samples. "
                f"Received: len(x)={num}, len(y)={len(self.y)}"
            )
        self.num_samples = num
        prefix = Program(self._prefix)
        x = [np.asarray(a) for a in _as_list(x)]
        cached = prefix.predict(
            x if len(x) > 1 else x[0], batch_size=self.batch_size, verbose=0
        )
        self._cache = [np.asarray(c) for c in _as_list(cached)]
        self._suffix = Program(self._suffix_slice)
        self._delta = Program(
            DeltaSlice(
                self.frontier,
                self._suffix_slice.nodes,
                graph.outputs[0],
                self._masks,
                self.num_slots,
                coupled=self.groups,
            )
        )

    # ------------------------------------------------------------- set-up
    def _setup_slots(self, node):
        analysis = self.analysis
        graph = analysis.graph
        out = node.outputs[0]
        self.num_units = out.channels
        slot_of_element = np.full(graph.size, -1, dtype=np.int64)
        if self.groups:
            comps = analysis.values(analysis.component, out)
            self.removable = ~analysis.pinned[comps]
            slot_groups, inverse = np.unique(comps[self.removable], return_inverse=True)
            self.unit_slot = np.full(self.num_units, -1, dtype=np.int64)
            self.unit_slot[self.removable] = inverse
            group_slot = np.full(analysis.num_groups, -1, dtype=np.int64)
            group_slot[slot_groups] = np.arange(len(slot_groups))
            slot_of_element = group_slot[analysis.component]
            fill = np.where(analysis.const_valid, analysis.const_value, 0.0)
            self.num_slots = len(slot_groups)
        else:
            self.removable = np.ones(self.num_units, dtype=bool)
            self.unit_slot = np.arange(self.num_units)
            for call in graph.layer_nodes[id(node.layer)]:
                tensor = call.outputs[0]
                slot_of_element[graph.elements(tensor)] = np.arange(tensor.channels)
            fill = np.zeros(graph.size)
            self.num_slots = self.num_units
        self._masks = {}
        for tensor in graph.tensors:
            if not tensor.channels:
                continue
            slots = analysis.values(slot_of_element, tensor)
            if np.any(slots >= 0):
                values = analysis.values(fill, tensor)
                self._masks[id(tensor)] = (
                    np.where(slots >= 0, slots, self.num_slots).astype("int32"),
                    values.astype("float32") if np.any(values) else None,
                )

    def _setup_slices(self):
        graph = self.analysis.graph
        dirty = set(self._masks)
        affected = []
        for node in graph.nodes:
            if any(id(t) in dirty for t in node.inputs):
                affected.append(node)
                dirty.update(id(t) for t in node.outputs)
        made_by_affected = {id(t) for n in affected for t in n.outputs}
        frontier, seen = [], set()
        needed = [t for n in affected for t in n.inputs] + list(graph.outputs)
        for tensor in needed:
            if id(tensor) not in made_by_affected and id(tensor) not in seen:
                seen.add(id(tensor))
                frontier.append(tensor)
        # The prefix: the nodes the frontier tensors depend on.
        wanted = {id(t) for t in frontier}
        prefix_nodes = []
        for node in reversed(graph.nodes):
            if any(id(t) in wanted for t in node.outputs):
                prefix_nodes.append(node)
                wanted.update(id(t) for t in node.inputs)
        prefix_nodes.reverse()
        self._prefix = Slice(list(graph.inputs), prefix_nodes, frontier)
        self._suffix_slice = Slice(frontier, affected, list(graph.outputs), self._masks)
        self.frontier = frontier

    # ------------------------------------------------------------ queries
    def _rows(self, removals):
        rows = np.zeros((len(removals), self.num_slots + 1), dtype="float32")
        for index, units in enumerate(removals):
            units = np.asarray(units, dtype=np.int64).reshape(-1)
            if len(units):
                bad = units[(units < 0) | (units >= self.num_units)]
                if len(bad):
                    raise ValueError(
                        f"Layer '{self.layer_name}' has {self.num_units} units. "
                        f"Received: units={bad.tolist()}"
                    )
                pinned = units[~self.removable[units]]
                if len(pinned):
                    raise ValueError(
                        f"Units {pinned.tolist()} of layer '{self.layer_name}' are "
                        "coupled to channels that can never be removed (e.g. model "
                        f"outputs). Received: units={units.tolist()}"
                    )
                rows[index, self.unit_slot[units]] = 1.0
        return rows

    def evaluate(self, removals):
        """The metric with each set of units removed.

        Args:
            removals: a list of unit-index lists (`[]`: nothing removed).

        Returns:
            A float64 array, one metric value per set.
        """
        rows = self._rows(list(removals))

        def feed(chunk, block):
            count = len(block)
            n = len(chunk[0])
            inputs = [np.tile(c, (count,) + (1,) * (c.ndim - 1)) for c in chunk]
            inputs.append(np.repeat(block, n, axis=0))
            return self._suffix.predict_on_batch(inputs)

        return self._run(feed, rows)

    def _run(self, feed, blocks):
        """Metric per entry of `blocks`, fed `ablation_batch` at a time.

        Every call has the same shapes (the last ablation block and the last
        data chunk are padded, the padding discarded), so the compiled
        function is traced once.
        """
        size = min(self.batch_size, self.num_samples)
        results = np.zeros(len(blocks))
        secondary = np.zeros(len(blocks))
        for start in range(0, len(blocks), self.ablation_batch):
            block = blocks[start : start + self.ablation_batch]
            count = len(block)
            block = _pad(block, min(self.ablation_batch, len(blocks)))
            accumulator = self.metric.accumulator(count)
            for lo in range(0, self.num_samples, size):
                hi = min(lo + size, self.num_samples)
                chunk = [_pad(c[lo:hi], size) for c in self._cache]
                pred = np.asarray(_as_list(feed(chunk, block))[0])
                pred = pred.reshape((len(block), size) + pred.shape[1:])
                accumulator.update(self.y[lo:hi], pred[:count, : hi - lo])
            results[start : start + count] = accumulator.result()
            extra = accumulator.secondary()
            if extra is None:
                secondary = None
            elif secondary is not None:
                secondary[start : start + count] = extra
        self.last_secondary = secondary
        return results

    def evaluate_each(self, removed=(), units=()):
        """The metric with `removed` gone, then with each unit also gone.

        The fast path of `scores`: layers that cannot mix channels run once
        per data chunk, and the first Dense/Conv layers after the cut apply
        each unit's removal as a correction to their pre-activation (see
        `kprune.criteria._programs`); equal to `evaluate([removed] +
        [removed + [u] for u in units])` up to float rounding.

        Args:
            removed: units already removed (the baseline).
            units: units to remove one at a time on top of `removed`.

        Returns:
            A float64 array: the baseline first, then one value per unit.
        """
        base = self._rows([removed])
        units = np.asarray(units, dtype=np.int64).reshape(-1)
        self._rows([[u] for u in units])  # validates
        extra = np.concatenate([[self.num_slots], self.unit_slot[units]])
        extra = extra.astype("int32")

        def feed(chunk, block):
            return self._delta.predict_on_batch(chunk + [base, block])

        return self._run(feed, extra)

    def scores(self, removed=(), fast=True):
        """Importance of each unit: how much worse the metric gets without it.

        `importance = metric(removed) - metric(removed + [unit])` for a metric
        where higher is better (accuracy: CAR), the other way round for a
        loss (RAR). Units that cannot be removed get `inf`; units already in
        `removed` get `nan`.

        Args:
            removed: units already removed (the baseline of the scores).
            fast: use `evaluate_each` (default); False re-runs the whole
                suffix for every unit (`evaluate`), for checking.

        Returns:
            A float64 array of shape `(num_units,)`. With accuracy, the drop of
            the mean classification margin (true class minus the best other)
            is kept in `last_tiebreak`: a finer signal that tells apart units
            whose CAR is equal.
        """
        removed = sorted({int(u) for u in np.asarray(removed).reshape(-1)})
        gone = set(removed)
        candidates = [
            u for u in range(self.num_units) if self.removable[u] and u not in gone
        ]
        if fast:
            values = self.evaluate_each(removed, candidates)
        else:
            values = self.evaluate([removed] + [removed + [u] for u in candidates])
        self.last_baseline = float(values[0])
        result = np.full(self.num_units, np.inf)
        result[removed] = np.nan
        result[candidates] = importance(
            values[0], values[1:], self.metric.higher_is_better
        )
        self.last_tiebreak = None
        if self.last_secondary is not None:
            margins = self.last_secondary
            self.last_tiebreak = np.full(self.num_units, np.inf)
            self.last_tiebreak[removed] = np.nan
            self.last_tiebreak[candidates] = importance(margins[0], margins[1:])
        return result


def _producer(analysis, layer_name):
    producers = producer_nodes(analysis)
    if layer_name not in producers:
        known = sorted(producers)
        raise ValueError(
            f"Layer '{layer_name}' is not a layer with units of its own (Dense, "
            f"Conv ...) in model '{analysis.graph.model.name}'. Layers with "
            f"units: {known}. Received: layer_name={layer_name!r}"
        )
    return producers[layer_name]
