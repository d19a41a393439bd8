"""Masks over the units of several layers, by the groups that couple them.

`SizeTarget` decides per unit (dead, frozen, given back, cut), but a unit
coupled to others (the convs whose outputs a residual `Add` joins) only
leaves the model with all of them. `UnitGroups` turns per-layer masks into
group decisions and back.
"""

import numpy as np


class UnitGroups:
    """The groups of the units of a list of layers.

    Args:
        sizes: the number of units of each layer.
        coupling: a `kprune.regularizers.coupling.Coupling` of those layers,
            or `None` (every unit its own group).
    """

    def __init__(self, sizes, coupling=None):
        if coupling is None:
            starts = np.cumsum([0] + list(sizes))
            self.components = [
                np.arange(a, a + n, dtype=np.int64) for a, n in zip(starts, sizes)
            ]
            self.held = np.zeros(int(starts[-1]), bool)
        else:
            self.components = list(coupling.components)
            self.held = np.asarray(coupling.held, bool)
        self.count = len(self.held)

    def complete(self, masks):
        """Per layer: True where every unit of the unit's group is True in
        `masks` and the group is not held."""
        missing = np.zeros(self.count, bool)
        for comp, mask in zip(self.components, masks):
            missing[comp[~np.asarray(mask, bool)]] = True
        whole = ~missing & ~self.held
        return [whole[comp] for comp in self.components]

    def spread(self, layer, mask):
        """Per layer: True on every unit of the groups of `layer`'s units
        where `mask` is True."""
        chosen = np.zeros(self.count, bool)
        chosen[self.components[layer][np.asarray(mask, bool)]] = True
        return [chosen[comp] for comp in self.components]

    def ranked(self, masks, scores, exclude=None):
        """The groups with a unit True in `masks`, weakest first.

        A group's score is the largest of its units' `scores` (one array
        per layer); ties go by the group's first unit (layer, index).

        Args:
            masks: per layer, bool: the units to rank.
            scores: per layer, float per unit.
            exclude: optional per layer bool: groups with such a unit are
                left out.

        Returns:
            A list of group ids.
        """
        best = np.full(self.count, -np.inf)
        first = np.full(self.count, np.iinfo(np.int64).max)
        banned = np.zeros(self.count, bool)
        for i, (comp, mask, score) in enumerate(zip(self.components, masks, scores)):
            units = np.flatnonzero(mask)
            np.maximum.at(best, comp[units], np.asarray(score, float)[units])
            order = i * (1 << 32) + units
            np.minimum.at(first, comp[units], order)
            if exclude is not None:
                banned[comp[np.asarray(exclude[i], bool)]] = True
        ids = np.flatnonzero(np.isfinite(best) & ~banned)
        return ids[np.lexsort((first[ids], best[ids]))].tolist()

    def members(self, ids):
        """Per layer: True on the units of the groups `ids`."""
        chosen = np.zeros(self.count, bool)
        chosen[np.asarray(list(ids), np.int64)] = True
        return [chosen[comp] for comp in self.components]
