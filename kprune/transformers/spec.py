"""What kprune needs to know about a KerasHub family to prune it.

A `FamilySpec` says which constructor arguments hold the widths and the
depth, where each block's FFN and attention sublayers are, and, for every
weight, which of its axes are hidden channels (`h`), FFN units (`f`), query
heads (`q`), key/value heads (`k`) or left whole (`.`). The slicing, the
scoring and the new constructor call are shared code; a family is a few
lines (see `kprune.transformers.family_specs`).
"""

import dataclasses
import typing

ROLES = "hfqk."
_REGISTRY = []


def _no_check(backbone):
    return None


def _no_extra(backbone):
    return {}


def _same_kind(config, index):
    return None


@dataclasses.dataclass(frozen=True)
class FamilySpec:
    """How to prune one KerasHub backbone family.

    Attributes:
        name: a readable family name ("GPT-2", "Llama", ...).
        classes: backbone class names this spec handles (subclasses of them
            match too).
        blocks: `backbone -> list of transformer blocks`, in call order.
        ffn_layer: `block -> layer` whose input holds the FFN intermediate
            activations (the down / output projection).
        heads_layer: `block -> layer` whose input has shape
            `(..., heads, head_dim)` (the attention output projection).
        block_rules: `{weight path suffix: roles}` for the weights inside a
            block; one role letter per axis (`h`, `f`, `q`, `k` or `.`).
            The first rule whose key equals the weight's path (relative to
            its block) or ends it after a `/` applies.
        backbone_rules: the same for the weights outside the blocks.
        layers, hidden, ffn, heads: the constructor arguments that hold the
            number of blocks, the hidden size, the FFN width and the number
            of (query) heads.
        kv_heads: the argument holding the number of key/value heads, or
            None when every head has its own (multi-head attention).
        head_dim: the argument holding the head size, or None when the
            family computes it as `hidden // heads` (then heads and hidden
            shrink together); a None value of that argument means the same.
        ffn_multiplier: the FFN argument is this many times the number of
            FFN units (Gemma's `intermediate_dim` is twice its width).
        block_kind: `(config, index) -> kind`; blocks whose kind depends on
            their position (e.g. sliding-window layers) can only move to a
            position of the same kind when blocks are dropped.
        check: `backbone -> None`, raising a ValueError for configurations
            kprune cannot prune (e.g. a vision tower).
        extra_config: `backbone -> dict` of constructor arguments that
            `get_config()` forgets.
        adjust: `(backbone, small, plan) -> None`, called after the weights
            are copied, to fix constants the constructor derives from the
            widths (e.g. Gemma's `sqrt(hidden_dim)` embedding scale).
    """

    name: str
    classes: tuple
    blocks: typing.Callable
    ffn_layer: typing.Callable
    heads_layer: typing.Callable
    block_rules: dict
    backbone_rules: dict
    layers: str = "num_layers"
    hidden: str = "hidden_dim"
    ffn: str = "intermediate_dim"
    heads: str = "num_heads"
    kv_heads: str | None = None
    head_dim: str | None = None
    ffn_multiplier: int = 1
    block_kind: typing.Callable = _same_kind
    check: typing.Callable = _no_check
    extra_config: typing.Callable = _no_extra
    adjust: typing.Callable | None = None

    def __post_init__(self):
        for rules in (self.block_rules, self.backbone_rules):
            for key, roles in rules.items():
                if not roles or any(r not in ROLES for r in roles):
                    raise ValueError(
                        f"Family {self.name!r}: the roles of {key!r} must be "
                        f"letters of {ROLES!r}. Received: {roles!r}"
                    )

    def tied_head_dim(self, config):
        """Whether `head_dim = hidden // heads` (heads and hidden tied)."""
        return self.head_dim is None or config.get(self.head_dim) is None

    def head_size(self, config):
        """The size of one attention head."""
        if self.tied_head_dim(config):
            return config[self.hidden] // config[self.heads]
        return config[self.head_dim]

    def num_kv_heads(self, config):
        """The number of key/value heads (= query heads without GQA)."""
        if self.kv_heads is None:
            return config[self.heads]
        return config[self.kv_heads]

    def ffn_units(self, config):
        """The number of FFN intermediate units of each block."""
        return config[self.ffn] // self.ffn_multiplier


def roles_of(rules, path, rank, family, where):
    """The axis roles of the weight at `path` (relative to its block).

    Args:
        rules: `{suffix: roles}`.
        path: the weight's path, relative to its block (or the backbone).
        rank: the weight's rank.
        family: the family name, for error messages.
        where: "a block" or "the backbone", for error messages.

    Returns:
        A string with one role letter per axis.

    Example:

    >>> roles_of({"query/kernel": "hq."}, "attn/query/kernel", 3, "X", "a block")
    'hq.'
    """
    for key, roles in rules.items():
        if path == key or path.endswith("/" + key):
            if len(roles) != rank:
                raise ValueError(
                    f"Family {family!r}: the rule {key!r} -> {roles!r} gives "
                    f"{len(roles)} axes to the weight {path!r} of {where}, "
                    f"which has {rank}. Received: rank={rank}"
                )
            return roles
    raise ValueError(
        f"Family {family!r} has no slicing rule for the weight {path!r} of "
        f"{where}: kprune cannot tell which of its axes to prune. Add a rule "
        "to the family's spec (kprune.transformers.register_family). "
        f"Received: path={path!r}"
    )


def register_family(spec):
    """Teach `kprune.transformers` a KerasHub backbone family.

    Args:
        spec: a `FamilySpec`. A spec registered later wins over an earlier
            one for the same class.

    Returns:
        The spec.

    Example:

    >>> import kprune
    >>> spec = kprune.transformers.get_family("GPT2Backbone")
    >>> kprune.transformers.register_family(spec).name
    'GPT-2'
    """
    if not isinstance(spec, FamilySpec):
        raise ValueError(
            "`register_family` takes a kprune.transformers.FamilySpec. "
            f"Received: {spec!r}"
        )
    _REGISTRY.insert(0, spec)
    return spec


def families():
    """The registered family specs, most recently registered first."""
    return list(_REGISTRY)


def get_family(backbone):
    """The `FamilySpec` for a backbone (or a backbone class or class name).

    Args:
        backbone: a KerasHub backbone, its class, or its class name.

    Returns:
        The registered `FamilySpec`.

    Example:

    >>> import kprune
    >>> kprune.transformers.get_family("LlamaBackbone").kv_heads
    'num_key_value_heads'
    """
    if isinstance(backbone, str):
        names = [backbone]
    else:
        cls = backbone if isinstance(backbone, type) else type(backbone)
        names = [c.__name__ for c in cls.__mro__]
    for name in names:
        for spec in _REGISTRY:
            if name in spec.classes:
                return spec
    supported = sorted({c for s in _REGISTRY for c in s.classes})
    raise ValueError(
        "kprune.transformers does not know this backbone family. Supported: "
        f"{', '.join(supported)}; register others with "
        f"kprune.transformers.register_family. Received: {names[0]}"
    )
