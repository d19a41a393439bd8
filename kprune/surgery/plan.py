"""Pruning plans: which units go, expanded over coupled channels, as JSON."""

import dataclasses
import json

import numpy as np

from kprune._atomic import write_text
from kprune.surgery.checks import unit_indices
from kprune.surgery.errors import CouplingError, SurgeryError
from kprune.surgery.handlers import get_handler

_FORMAT = "kprune.pruning_plan"


@dataclasses.dataclass
class PruningPlan:
    """Units to remove, per layer, with the coupled groups they form.

    A plan names output units of unit-producing layers (Dense, Conv*,
    SeparableConv*, Embedding, ...) by layer path (`"block/conv"` for a layer
    inside a nested model). `groups` lists the coupled groups: units of
    different layers that are the same channel (joined by a residual `Add`,
    say) and leave together. Plans serialize to JSON and replay on a fresh
    copy of the model with `kprune.surgery.remove_units(model, plan)`.

    A plan made by `kprune.prune(depth=...)` also names residual blocks
    that leave whole (`blocks`, see `kprune.surgery.drop_blocks`): they go
    first, and `units` name layers of the model without them.

    Args:
        units: dict layer path -> sorted list of unit indices to remove.
        groups: list of dicts layer path -> unit indices, one per set of
            coupled layers.
        model_name: name of the model the plan was made for (informative).
        blocks: names of residual blocks removed whole
            (`"first_layer..last_layer"`), before the units.

    Example:

    >>> plan = PruningPlan({"dense": [0, 3]})
    >>> PruningPlan.from_json(plan.to_json()).units
    {'dense': [0, 3]}
    """

    units: dict
    groups: list = dataclasses.field(default_factory=list)
    model_name: str = None
    blocks: list = dataclasses.field(default_factory=list)

    def __post_init__(self):
        if not isinstance(self.units, dict):
            raise TypeError(
                "`units` must be a dict of layer name -> unit indices. "
                f"Received: units={self.units!r}"
            )
        self.units = {
            str(k): unit_indices(v, k).tolist() for k, v in self.units.items()
        }
        if isinstance(self.blocks, str) or not all(
            isinstance(name, str) for name in self.blocks
        ):
            raise TypeError(
                "`blocks` must be a list of block names "
                f"('first_layer..last_layer'). Received: blocks={self.blocks!r}"
            )
        self.blocks = list(self.blocks)

    @property
    def num_units(self):
        """Total number of units removed over all layers."""
        return sum(len(v) for v in self.units.values())

    def to_dict(self):
        return {
            "format": _FORMAT,
            "version": 1,
            "model": self.model_name,
            "units": self.units,
            "groups": self.groups,
            "blocks": self.blocks,
        }

    def to_json(self, indent=None):
        """The plan as a JSON string."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data):
        if not isinstance(data, dict) or "units" not in data:
            raise ValueError(
                "A pruning plan is a dict with a 'units' entry. "
                f"Received: {str(data)[:200]}"
            )
        if data.get("format", _FORMAT) != _FORMAT:
            raise ValueError(
                f"Not a kprune pruning plan. Received: format={data.get('format')!r}"
            )
        return cls(
            units=data["units"],
            groups=data.get("groups", []),
            model_name=data.get("model"),
            blocks=data.get("blocks", []),
        )

    @classmethod
    def from_json(cls, text):
        """Read a plan written by `to_json`."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"The pruning plan is not valid JSON: {error}") from None
        return cls.from_dict(data)

    def save(self, path):
        """Write the plan as JSON (atomically: all or nothing)."""
        write_text(path, self.to_json(indent=2))

    @classmethod
    def load(cls, path):
        with open(path) as f:
            return cls.from_json(f.read())


def unit_sources(analysis):
    """Plan key -> `(node, tensor)` for every set of removable units.

    Most unit-producing layers have one set, keyed by the layer's path:
    their output channels. Layers with units inside (attention heads) name
    more through their handler's `unit_tensors`.
    """
    found = {}
    for node in analysis.graph.nodes:
        handler = get_handler(node.layer)
        if not handler.produces_units:
            continue
        for key, tensor in handler.unit_tensors(node, analysis):
            if tensor.channels:
                found.setdefault(key, (node, tensor))
    for path, heads in getattr(analysis, "traced_heads", {}).items():
        found.setdefault(path, (heads.node, heads.tensor))
    return found


def producer_nodes(analysis):
    """Layer path -> first call, for every layer whose outputs are its units."""
    return {
        key: node
        for key, (node, tensor) in unit_sources(analysis).items()
        if node.outputs and tensor is node.outputs[0]
    }


def removed_groups(analysis, units):
    """Validate a `{layer: indices}` request; return the coupled group ids."""
    producers = unit_sources(analysis)
    groups = set()
    for path, indices in units.items():
        if path not in producers:
            layer = analysis.graph.layers_by_path.get(path)
            if layer is None:
                _raise_if_inside_opaque(analysis.graph, path)
                raise SurgeryError(
                    f"Layer '{path}' is not in model '{analysis.graph.model.name}' "
                    "(use 'outer/inner' for layers of nested models). "
                    f"Received: units[{path!r}]"
                )
            raise SurgeryError(_not_a_producer(analysis, path, layer, producers))
        tensor = producers[path][1]
        indices = unit_indices(indices, path, tensor.channels)
        for index in indices:
            group = analysis.component[tensor.offset + index]
            if analysis.pinned[group]:
                raise CouplingError(
                    f"Cannot remove unit {int(index)} of layer '{path}': it is "
                    f"coupled to channels that must stay, since "
                    f"{analysis.pin_reason(group)}."
                )
            groups.add(int(group))
    return groups


def _raise_if_inside_opaque(graph, path):
    """A clear error for a path inside a layer kprune cannot look inside."""
    parts = path.split("/")
    for end in range(len(parts) - 1, 0, -1):
        outer = "/".join(parts[:end])
        if outer in graph.opaque:
            layer = graph.layers_by_path.get(outer)
            name = f" ({layer.__class__.__name__})" if layer is not None else ""
            raise SurgeryError(
                f"Layer '{path}' is inside layer '{outer}'{name}, which kprune "
                f"cannot look inside ({graph.opaque[outer]}), so its units "
                "cannot be named. Register a handler for that layer's class "
                f"with kprune.surgery.register_handler. Received: units[{path!r}]"
            )


def _not_a_producer(analysis, path, layer, producers):
    """Why a plan cannot name `path`, and what it can name instead."""
    name = f"Layer '{path}' ({layer.__class__.__name__})"
    received = f"Received: units[{path!r}]"
    graph = analysis.graph
    if path in graph.opaque:
        return (
            f"{name} has no units kprune can remove: kprune cannot look inside "
            f"it ({graph.opaque[path]}). Register a handler for its class with "
            f"kprune.surgery.register_handler. {received}"
        )
    inside = sorted(key for key in producers if key.startswith(path + "/"))
    heads = graph.head_refusals.get(path)
    if heads:
        heads = f" Its heads cannot be removed: {heads}."
    if inside:
        shown = ", ".join(repr(key) for key in inside[:6])
        more = f" and {len(inside) - 6} more" if len(inside) > 6 else ""
        return (
            f"{name} is a layer of sublayers: its units are those of its "
            f"sublayers, named by their paths: {shown}{more} (see "
            f"kprune.surgery.prunable_units).{heads or ''} {received}"
        )
    return (
        f"{name} has no units of its own: it passes channels through. Remove "
        f"units of the layer that produces them. {received}"
    )


def build_plan(analysis, groups, allow_empty=False):
    """Expand coupled groups into a `PruningPlan` (and check no layer empties)."""
    is_removed = np.zeros(analysis.num_groups, dtype=bool)
    is_removed[list(groups)] = True
    producers = unit_sources(analysis)

    def comps_of(source):
        tensor = source[1]
        return analysis.component[tensor.offset : tensor.offset + tensor.channels]

    while True:
        emptied = [
            (path, comps_of(node)[0])
            for path, node in producers.items()
            if is_removed[comps_of(node)].all()
        ]
        if not emptied:
            break
        if not allow_empty:
            raise SurgeryError(
                f"Removing these units would leave layer '{emptied[0][0]}' with "
                "no units at all. Keep at least one, or pass allow_empty=True "
                "(Keras layers cannot be zero-width, so one unit is then kept)."
            )
        for _, group in emptied:
            is_removed[group] = False
    units = {}
    members = {}
    for path, node in producers.items():
        comps = comps_of(node)
        removed = np.flatnonzero(is_removed[comps])
        if len(removed):
            units[path] = removed.tolist()
            for index in removed:
                members.setdefault(int(comps[index]), []).append((path, int(index)))
    merged = {}
    for group_members in members.values():
        key = tuple(sorted({p for p, _ in group_members}))
        entry = merged.setdefault(key, {p: [] for p in key})
        for path, index in group_members:
            entry[path].append(index)
    coupled = [g for key, g in merged.items() if len(key) > 1]
    return PruningPlan(units, coupled, analysis.graph.model.name)
