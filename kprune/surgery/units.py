"""`prunable_units`: the sets of units a model has, by the keys plans use."""

import dataclasses

import numpy as np

from kprune.surgery.analysis import ChannelAnalysis
from kprune.surgery.plan import unit_sources


@dataclasses.dataclass(frozen=True)
class UnitSet:
    """One set of removable units, as `remove_units` names it.

    Attributes:
        key: the plan key (`"dense_1"`, `"encoder/block_0/mlp/fc1"`, an
            attention layer's path for its heads, `".../key_dims"` ...).
        layer: the path of the layer that owns the units.
        kind: `"units"` (a layer's output units / filters), `"heads"`
            (attention heads; grouped-query attention: key/value heads,
            each leaving with its query group), or the name of another set
            inside an attention layer (`"key_dims"`, `"value_dims"`).
        count: how many units the set has.
        inside: the path of the composite layer the owner was traced from,
            or None for a layer of the model itself.
        pinned: why no unit of the set can be removed (a model output, a
            layer kprune cannot change ...), or None.
    """

    key: str
    layer: str
    kind: str
    count: int
    inside: str = None
    pinned: str = None


def prunable_units(model):
    """Every set of units of `model` that a pruning plan can name.

    Plans passed to `remove_units` are `{key: indices}`; this lists the keys,
    including units inside composite layers (the FFN of a transformer block,
    an MBConv expansion) and attention heads, which have no layer of their
    own at the model's top level.

    Args:
        model: a built Functional or Sequential `keras.Model` (not modified).

    Returns:
        A dict plan key -> `UnitSet`, in graph order.

    Example:

    >>> import keras, kprune
    >>> x = keras.Input((8, 16))
    >>> h = keras.layers.MultiHeadAttention(4, 8, name="mha")(x, x)
    >>> y = keras.layers.Dense(3, name="out")(keras.layers.Dense(32, name="fc")(h))
    >>> units = kprune.surgery.prunable_units(keras.Model(x, y))
    >>> units["mha"].kind, units["mha"].count, units["fc"].count
    ('heads', 4, 32)
    >>> small = kprune.surgery.remove_units(keras.Model(x, y), {"mha": [0]})
    """
    analysis = ChannelAnalysis(model)
    found = {}
    for key, (node, tensor) in unit_sources(analysis).items():
        kind = _kind(node, tensor)
        groups = np.unique(analysis.values(analysis.component, tensor))
        reason = None
        for group in groups:
            if analysis.pinned[group]:
                reason = analysis.pin_reason(group)
                break
        found[key] = UnitSet(
            key=key,
            layer=node.path,
            kind=kind,
            count=int(tensor.channels),
            inside=None if node.parent is None else node.parent.path,
            pinned=reason,
        )
    return found


def _kind(node, tensor):
    for name, internal in node.internal.items():
        if internal is tensor:
            return name
    return "units"
