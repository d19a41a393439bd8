"""Build the pruned backbone with its own constructor and copy sliced weights."""

import dataclasses

import keras
import numpy as np

from kprune.transformers.spec import get_family, roles_of


@dataclasses.dataclass(eq=False)
class WeightInfo:
    """One weight of a backbone and what its axes are.

    Attributes:
        variable: the `keras.Variable`.
        path: its path relative to its block (or the full path outside).
        roles: one role letter per axis (see `FamilySpec`).
        block: the index of its block, or None outside the blocks.
    """

    variable: object
    path: str
    roles: str
    block: object = None


def _relative(path, block):
    marker = block.name + "/"
    at = path.find(marker)
    return path[at + len(marker) :] if at >= 0 else path


def weight_infos(backbone, spec=None):
    """Every weight of `backbone` with its axis roles, blocks first.

    Args:
        backbone: a KerasHub backbone of a registered family.
        spec: its `FamilySpec` (default: looked up).

    Returns:
        A list of `WeightInfo`.

    Example:

    >>> import keras_hub
    >>> backbone = keras_hub.models.GPT2Backbone(
    ...     vocabulary_size=50, num_layers=1, num_heads=2, hidden_dim=8,
    ...     intermediate_dim=16, max_sequence_length=8)
    >>> [w.roles for w in weight_infos(backbone) if w.path.endswith("query/kernel")]
    ['hq.']
    """
    spec = spec or get_family(backbone)
    infos, seen = [], set()
    for index, block in enumerate(spec.blocks(backbone)):
        for variable in block.weights:
            if id(variable) in seen:
                continue
            seen.add(id(variable))
            path = _relative(variable.path, block)
            roles = roles_of(
                spec.block_rules, path, len(variable.shape), spec.name, "a block"
            )
            infos.append(WeightInfo(variable, path, roles, index))
    for variable in backbone.weights:
        if id(variable) in seen:
            continue
        seen.add(id(variable))
        roles = roles_of(
            spec.backbone_rules,
            variable.path,
            len(variable.shape),
            spec.name,
            "the backbone",
        )
        infos.append(WeightInfo(variable, variable.path, roles, None))
    return infos


def norm_layers(backbone, spec=None):
    """The normalization layers whose outputs are hidden channels.

    A layer counts when each of its own weights is a vector of role `h`
    (a LayerNorm's gamma/beta, an RMS norm's scale).

    Args:
        backbone: a KerasHub backbone of a registered family.
        spec: its `FamilySpec` (default: looked up).

    Returns:
        A list of layers, in the order of their weights.
    """
    spec = spec or get_family(backbone)
    roles = {id(info.variable): info.roles for info in weight_infos(backbone, spec)}
    layers = []
    for layer in backbone._flatten_layers(include_self=False, recursive=True):
        own = list(layer._trainable_variables) + list(layer._non_trainable_variables)
        if own and all(roles.get(id(v)) == "h" for v in own):
            layers.append(layer)
    return layers


def _index(plan, role, block, spec):
    if role == "h":
        return plan.hidden
    if role == ".":
        return None
    if block is None:
        raise ValueError(
            f"Family {spec.name!r}: role {role!r} outside a block is not "
            "supported (only hidden channels are shared by the whole stack)."
        )
    if role == "f":
        return None if plan.ffn is None else plan.ffn[block]
    if role == "q":
        return None if plan.heads is None else plan.heads[block]
    if role == "k":
        source = plan.kv_heads if spec.kv_heads is not None else plan.heads
        return None if source is None else source[block]


def sliced_value(info, plan, spec, block=None):
    """The weight's value with the plan's indices taken on each axis."""
    value = keras.ops.convert_to_numpy(info.variable)
    for axis, role in enumerate(info.roles):
        keep = _index(plan, role, block, spec)
        if keep is not None:
            value = np.take(value, keep, axis=axis)
    return value


def new_config(backbone, plan, spec):
    """The constructor arguments of the pruned backbone."""
    config = backbone.get_config()
    config.update(spec.extra_config(backbone))
    config.update(plan.config)
    return config


def apply_plan(backbone, plan, spec=None):
    """A new backbone of the same class, built and filled as the plan says.

    The new backbone comes from the class's own constructor
    (`type(backbone).from_config(...)` with the widths and depth of the
    plan); each of its weights is the original weight with the kept
    indices taken on each axis (blocks renumbered as the plan keeps them).
    The original backbone is not modified.

    Args:
        backbone: a KerasHub backbone of a registered family.
        plan: a `TransformerPlan`.
        spec: the family's `FamilySpec` (default: looked up).

    Returns:
        The pruned backbone, same class as `backbone`.
    """
    spec = spec or get_family(backbone)
    small = type(backbone).from_config(new_config(backbone, plan, spec))
    old = weight_infos(backbone, spec)
    new = weight_infos(small, spec)
    old_blocks = {}
    old_outside = {}
    for info in old:
        if info.block is None:
            old_outside[info.path] = info
        else:
            old_blocks.setdefault(info.block, []).append(info)
    new_blocks = {}
    values = []
    for info in new:
        if info.block is None:
            source = old_outside.get(info.path)
            block = None
        else:
            position = len(new_blocks.setdefault(info.block, []))
            new_blocks[info.block].append(info)
            original = plan.layers[info.block]
            candidates = old_blocks.get(original, [])
            source = candidates[position] if position < len(candidates) else None
            if source is not None and source.path != info.path:
                source = None
            block = info.block
        if source is None:
            raise ValueError(
                f"The pruned {type(small).__name__} has a weight "
                f"{info.variable.path!r} with no counterpart in the original "
                "backbone; the family spec does not describe this "
                f"configuration. Received: family={spec.name!r}"
            )
        value = sliced_value(source, plan, spec, block)
        if tuple(value.shape) != tuple(info.variable.shape):
            raise ValueError(
                f"Family {spec.name!r}: the weight {info.variable.path!r} of the "
                f"pruned backbone has shape {tuple(info.variable.shape)}, the "
                f"sliced original {tuple(value.shape)} (roles {source.roles!r}); "
                "the family spec's rules are wrong for this weight. Received: "
                f"original shape={tuple(source.variable.shape)}"
            )
        values.append((info.variable, value))
    for variable, value in values:
        variable.assign(value)
    if spec.adjust is not None:
        spec.adjust(backbone, small, plan)
    return small
