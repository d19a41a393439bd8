"""Which units of group-sparsity targets leave the model together.

A unit of a layer is removable on its own unless its channel is coupled to
other layers' units: the convs whose outputs an `Add` joins make one
channel together, and a depthwise conv's channel is the channel of the
conv before it. `kprune.surgery` removes such a channel only when all of
them stop making it. Group sparsity that shrinks each layer on its own
zeroes units that `slim` cannot remove (the other branch still needs the
channel): the model loses accuracy and gains no speed. `coupled_units`
tells the training-time pieces (`ProximalStep`, `SizeTarget`) which units
form one group.
"""

import dataclasses
import warnings

import numpy as np

from kprune.regularizers.targets import default_slot
from kprune.surgery.errors import SurgeryError
from kprune.surgery.groups import DependencyGroups

_ROLES = ("producer", "depthwise")


@dataclasses.dataclass
class Coupling:
    """Group ids of the units of a list of targets.

    Attributes:
        components: one int array per target: the group id of each unit.
            Units that share an id leave the model together; an id used by
            one unit only is a per-layer group.
        held: bool per id: the group cannot leave the model (pinned, such
            as a model output, or also made by a layer that is not a
            target), so group sparsity should not shrink it.
        held_by: dict target index -> names of the layers outside the
            targets that hold some of its units (for messages).
    """

    components: list
    held: np.ndarray
    held_by: dict
    _sizes: object = dataclasses.field(default=None, init=False, repr=False)

    def shared(self, index):
        """Whether target `index` has a unit in a group of several units or
        a held group."""
        comp = self.components[index]
        if not comp.size:
            return False
        if self._sizes is None:
            self._sizes = np.bincount(
                np.concatenate(self.components), minlength=len(self.held)
            )
        return bool((self._sizes[comp] > 1).any() or self.held[comp].any())


def coupled_units(model, targets):
    """Group ids of the output units of `targets`, from the model's graph.

    Args:
        model: a Functional or Sequential `keras.Model`.
        targets: objects with `layer` (a layer of `model`), `kernel` (the
            variable grouped) and `units` (its number of output units, as
            group sparsity counts them), such as
            `kprune.regularizers.targets.GroupTarget`. A target whose kernel
            does not make the layer's output units keeps per-layer groups.

    Returns:
        A `Coupling`, or `None` when kprune cannot read the model's graph
        (then every unit is its own group, as `slim` cannot run either).

    Example:

    >>> import keras
    >>> from kprune.regularizers.targets import default_target
    >>> inputs = keras.Input((4,))
    >>> a = keras.layers.Dense(3, name="a")(inputs)
    >>> b = keras.layers.Dense(3, name="b")(a)
    >>> out = keras.layers.Dense(2)(keras.layers.Add()([a, b]))
    >>> model = keras.Model(inputs, out)
    >>> targets = [default_target(model.get_layer(n)) for n in ("a", "b")]
    >>> coupling = coupled_units(model, targets)
    >>> [c.tolist() for c in coupling.components]
    [[0, 1, 2], [0, 1, 2]]

    Reference:
        Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023
        (arXiv 2301.12900).
    """
    try:
        view = DependencyGroups(model)
    except (SurgeryError, ValueError, TypeError, KeyError) as error:
        warnings.warn(
            f"kprune could not read the graph of model '{model.name}' "
            f"({type(error).__name__}: {error}); group sparsity treats every "
            "unit as its own group.",
            stacklevel=3,
        )
        return None
    # A target takes part when its kernel is the one that makes the layer's
    # output units (a SeparableConv's depthwise kernel, say, does not).
    index_of = {}
    for i, target in enumerate(targets):
        slot = default_slot(target.layer)
        made_by = getattr(target.layer, slot[0], None) if slot else None
        if made_by is not None and made_by is target.kernel:
            index_of[id(target.layer)] = i
    raw = [None] * len(targets)
    outside = {}  # analysis group -> names of non-target producer layers
    for member in view.members:
        if member.role not in _ROLES:
            continue
        i = index_of.get(id(member.node.layer))
        if i is None:
            if member.role == "producer":
                for group in np.unique(member.groups):
                    outside.setdefault(int(group), set()).add(member.path)
            continue
        if raw[i] is None and member.groups.size == int(targets[i].units):
            raw[i] = member.groups
    removable = np.zeros(view.analysis.num_groups, bool)
    removable[view.ids] = True
    # Renumber: analysis groups first, then a fresh id per unit kprune
    # found no group for.
    known = np.unique(np.concatenate([r for r in raw if r is not None] or [[]]))
    known = known.astype(np.int64)
    count = len(known)
    components, held_by = [], {}
    for i, groups in enumerate(raw):
        if groups is None:
            units = int(targets[i].units)
            components.append(np.arange(count, count + units, dtype=np.int64))
            count += units
            continue
        components.append(np.searchsorted(known, groups).astype(np.int64))
        names = set()
        for g in np.unique(groups):
            names |= outside.get(int(g), set())
        if names:
            held_by[i] = sorted(names)
    flags = np.zeros(count, bool)  # fresh ids are never held
    flags[: len(known)] = ~removable[known] | np.isin(known, list(outside))
    return Coupling(components, flags, held_by)
