"""The dependency-group view: per coupled group, who produces it and who reads it.

A *coupled group* (see `ChannelAnalysis`) is a set of channels that leave
the model together. Importance scoring and MAC accounting need to know, for
each group, every weighted layer it touches:

- *producer* units `(layer path, index)`: the Dense / Conv output units that
  make the channel (several when a residual `Add` joins branches);
- *consumer* rows: the input rows of every Dense / Conv kernel that reads
  the channel (after a `Flatten`, every position of the channel);
- *scale* entries: per-channel weights such as BatchNormalization /
  LayerNormalization `gamma`;
- *depthwise* taps: the DepthwiseConv kernel slice of the channel.

This module is structural only: it never scores. `kprune.criteria` turns
the weights of these members into group importances.
"""

import dataclasses

import keras
import numpy as np

from kprune.surgery.analysis import ChannelAnalysis
from kprune.surgery.handlers import get_handler
from kprune.surgery.handlers.base import as_use
from kprune.surgery.plan import unit_sources

ROLES = ("producer", "consumer", "scale", "depthwise")
_SCALE_WEIGHTS = ("gamma", "scale")
_DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)


@dataclasses.dataclass(eq=False)
class Member:
    """The weights of one layer that touch a set of channels.

    Attributes:
        path: the layer path (`"outer/inner"` in nested models).
        node: the layer's first call (`NodeInfo`).
        role: "producer", "consumer", "scale" or "depthwise".
        tensor: the `TensorInfo` whose channels index `groups`.
        groups: coupled-group id of each index (channel or unit).
    """

    path: str
    node: object
    role: str
    tensor: object
    groups: np.ndarray

    def rows(self, analysis, weights=None):
        """The member's weights as a 2-D array, one row per index (or None).

        producer: every kernel weight feeding output unit `k`; consumer:
        every kernel weight reading input channel `c`; scale: the channel's
        `gamma`; depthwise: the channel's depthwise taps.

        Args:
            analysis: the `ChannelAnalysis` (reads the layer's weights).
            weights: optional dict name -> array laid out like the layer's
                weights (e.g. their gradients) to read instead.
        """
        if weights is None:
            weights = analysis.weights(self.node.layer)
        handler = get_handler(self.node.layer)
        if self.role in ("producer", "consumer"):
            if not hasattr(handler, "node_matrix"):
                return None
            main = self.node.outputs if self.role == "producer" else self.node.inputs
            if not main or self.tensor is not main[0]:
                return None
            try:
                matrix = handler.node_matrix(self.node, weights)  # (taps, in, out)
            except (KeyError, ValueError, IndexError, TypeError):
                return None
            if matrix.ndim != 3:
                return None
            axis = 2 if self.role == "producer" else 1
            matrix = np.moveaxis(matrix, axis, 0)
            return matrix.reshape(matrix.shape[0], -1)
        if self.role == "scale":
            for name in _SCALE_WEIGHTS:
                if name in weights:
                    return weights[name].reshape(-1, 1)
            return None
        kernel = weights.get("kernel")  # depthwise: (*taps, in, mult)
        if kernel is None:
            return None
        kernel = np.moveaxis(kernel, -2, 0)
        return kernel.reshape(kernel.shape[0], -1)


class DependencyGroups:
    """Every removable coupled group with its producers and readers.

    A group is *removable* when it holds at least one producer unit and is
    not pinned (model inputs/outputs, layers kprune does not understand).
    Layers inside composite layers (the Dense layers of a KerasHub
    transformer block, the convs of an MBConv block) take part like any
    other: the graph is traced with `Graph(model, expand=True)`. Units that
    live inside a layer (attention heads and their key / value dimensions)
    are held: `kprune.transformers.prune` removes those.
    Groups are further sorted into *structures*: groups made by the same set
    of producer layers (all filters of one Conv; the channels of a residual
    stage, made by several convs joined by `Add`). A structure's groups are
    the units of those layers; `round_to` and per-layer fractions act on it.

    Args:
        model: a Functional or Sequential `keras.Model`, or a
            `ChannelAnalysis` of one (not modified).

    Attributes:
        analysis: the `ChannelAnalysis`.
        ids: removable group ids (sorted).
        members: list of `Member` (producers, consumers, scales, depthwise).
        structures: list of tuples of producer layer paths.
        structure: structure index of each removable group (aligned with
            `ids`).
        pinned_units: per structure, the number of its units that are pinned
            or held (they stay; they count toward the layer width).
        producers: dict layer path -> first call, of layers whose output
            channels are their units.
        internal: dict plan key -> `(node, tensor)` of held internal units.

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((4,)),
    ...     keras.layers.Dense(3, name="a"), keras.layers.Dense(2, name="b")])
    >>> view = DependencyGroups(model)
    >>> len(view.ids), view.structures
    (3, [('a',)])
    >>> view.units(view.ids[0]), view.readers(view.ids[0])
    ([('a', 0)], [('b', 'consumer', 0)])
    """

    def __init__(self, model):
        if isinstance(model, ChannelAnalysis):
            self.analysis = model
        else:
            self.analysis = ChannelAnalysis(model)
        analysis = self.analysis
        self.producers = {}
        self.internal = {}
        for key, (node, tensor) in unit_sources(analysis).items():
            if node.outputs and tensor is node.outputs[0]:
                self.producers[key] = node
            else:
                self.internal[key] = (node, tensor)
        self.members = []
        self._collect_members()
        # Removable groups: with a producer unit, not pinned, and not units
        # that live inside a layer (attention heads and their dimensions:
        # `kprune.transformers.prune` scores and removes those).
        has_unit = np.zeros(analysis.num_groups, dtype=bool)
        for member in self.members:
            if member.role == "producer":
                has_unit[member.groups] = True
        held = analysis.pinned.copy()
        for _, tensor in self.internal.values():
            held[self._comps(tensor)] = True
        removable = has_unit & ~held
        self.ids = np.flatnonzero(removable)
        self.position = np.full(analysis.num_groups, -1, dtype=np.int64)
        self.position[self.ids] = np.arange(len(self.ids))
        self._structures(has_unit & held)

    # ---------------------------------------------------------------- public
    def __len__(self):
        return len(self.ids)

    def units(self, group):
        """Producer units `(layer path, index)` of a group."""
        return [
            (m.path, int(i))
            for m in self.members
            if m.role == "producer"
            for i in np.flatnonzero(m.groups == group)
        ]

    def readers(self, group):
        """`(layer path, role, index)` of every non-producer member entry."""
        return [
            (m.path, m.role, int(i))
            for m in self.members
            if m.role != "producer"
            for i in np.flatnonzero(m.groups == group)
        ]

    def scatter(self, member, values, reduce="sum"):
        """Add one value per member index into a per-removable-group array.

        Args:
            member: a `Member`.
            values: array with one value per index of the member.
            reduce: "sum" or "count" (count the indices per group).

        Returns:
            `(total, touched)`: float64 arrays aligned with `ids`; `touched`
            is 1 where the member reaches the group.
        """
        positions = self.position[member.groups]
        keep = positions >= 0
        total = np.zeros(len(self.ids))
        values = np.ones(len(positions)) if reduce == "count" else values
        np.add.at(total, positions[keep], np.asarray(values, np.float64)[keep])
        touched = np.zeros(len(self.ids))
        touched[positions[keep]] = 1.0
        return total, touched

    def kept_fraction(self, tensor, keep_group):
        """Fraction of a tensor's channels kept, given kept groups (bool per
        group id, all groups)."""
        comps = self.analysis.values(self.analysis.component, tensor)
        if not len(comps):
            return 1.0
        return float(np.mean(keep_group[comps]))

    def removed_units(self, removed_ids):
        """`{layer path: [unit indices]}` of producer units in these groups."""
        mask = np.zeros(self.analysis.num_groups, dtype=bool)
        mask[np.asarray(removed_ids, dtype=np.int64)] = True
        units = {}
        for member in self.members:
            if member.role != "producer":
                continue
            hit = np.flatnonzero(mask[member.groups])
            if len(hit):
                units[member.path] = hit.tolist()
        return units

    def groups_of_layers(self, paths):
        """Removable group ids touching the outputs of the named layers."""
        wanted = set(paths)
        found = set()
        for node in self.analysis.graph.nodes:
            if node.path in wanted or node.layer.name in wanted:
                for tensor in node.outputs:
                    if tensor.channels:
                        comps = self.analysis.values(self.analysis.component, tensor)
                        found.update(int(g) for g in comps)
        return np.array(sorted(g for g in found if self.position[g] >= 0), np.int64)

    # ------------------------------------------------------------- internals
    def _collect_members(self):
        analysis = self.analysis
        seen = set()
        for path, node in self.producers.items():
            tensor = node.outputs[0]
            self.members.append(
                Member(path, node, "producer", tensor, self._comps(tensor))
            )
        for node in analysis.graph.nodes:
            if node.path in seen:
                continue
            seen.add(node.path)
            handler = get_handler(node.layer)
            try:
                uses = handler.uses(node, analysis.weights(node.layer)) or []
            except (KeyError, ValueError, IndexError, TypeError):
                uses = []
            read = []
            for use in map(as_use, uses):
                source = use.source
                tensor = source if hasattr(source, "offset") else node.inputs[source]
                if not tensor.channels or any(tensor is t for t in read):
                    continue
                read.append(tensor)
                self.members.append(
                    Member(node.path, node, "consumer", tensor, self._comps(tensor))
                )
            if not node.inputs or not node.inputs[0].channels:
                continue
            tensor = node.inputs[0]
            if isinstance(node.layer, _DEPTHWISE):
                self.members.append(
                    Member(node.path, node, "depthwise", tensor, self._comps(tensor))
                )
                continue
            if handler.produces_units or uses:
                continue
            weights = analysis.weights(node.layer)
            if any(
                name in weights and weights[name].shape == (tensor.channels,)
                for name in _SCALE_WEIGHTS
            ):
                self.members.append(
                    Member(node.path, node, "scale", tensor, self._comps(tensor))
                )

    def _comps(self, tensor):
        return np.asarray(
            self.analysis.values(self.analysis.component, tensor), dtype=np.int64
        )

    def _structures(self, held_units):
        keys = [[] for _ in range(self.analysis.num_groups)]
        for member in self.members:
            if member.role == "producer":
                for group in np.unique(member.groups):
                    keys[group].append(member.path)
        index = {}
        self.structures = []
        self.structure = np.zeros(len(self.ids), dtype=np.int64)
        for position, group in enumerate(self.ids):
            key = tuple(sorted(set(keys[group])))
            if key not in index:
                index[key] = len(self.structures)
                self.structures.append(key)
            self.structure[position] = index[key]
        self.pinned_units = np.zeros(len(self.structures), dtype=np.int64)
        for group in np.flatnonzero(held_units):
            key = tuple(sorted(set(keys[group])))
            if key in index:
                self.pinned_units[index[key]] += 1
