"""What to keep: from scores and target sizes to a `TransformerPlan`."""

import dataclasses
import json
import numbers

import numpy as np


def _indices(values):
    return None if values is None else np.asarray(values, np.int64)


def _index_list(values):
    return None if values is None else [_indices(v) for v in values]


@dataclasses.dataclass
class TransformerPlan:
    """The blocks, channels, units and heads a pruned backbone keeps.

    Indices refer to the original backbone; per-block lists follow the
    kept blocks, in order. `None` means "all".

    Attributes:
        family: the family name.
        num_layers: the original number of blocks.
        layers: indices of the kept blocks (increasing).
        hidden: kept hidden channels, or None.
        ffn: per kept block, the kept FFN units, or None.
        heads: per kept block, the kept query heads, or None.
        kv_heads: per kept block, the kept key/value heads, or None.
        config: the constructor arguments that change.
    """

    family: str
    num_layers: int
    layers: list
    hidden: object = None
    ffn: list = None
    heads: list = None
    kv_heads: list = None
    config: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.layers = [int(i) for i in self.layers]
        self.hidden = _indices(self.hidden)
        self.ffn = _index_list(self.ffn)
        self.heads = _index_list(self.heads)
        self.kv_heads = _index_list(self.kv_heads)

    def to_dict(self):
        """A JSON-able dict."""

        def plain(value):
            if value is None:
                return None
            if isinstance(value, list):
                return [v.tolist() for v in value]
            return value.tolist()

        return {
            "family": self.family,
            "num_layers": self.num_layers,
            "layers": list(self.layers),
            "hidden": plain(self.hidden),
            "ffn": plain(self.ffn),
            "heads": plain(self.heads),
            "kv_heads": plain(self.kv_heads),
            "config": dict(self.config),
        }

    @classmethod
    def from_dict(cls, data):
        """The plan saved by `to_dict` (or read from `to_json`)."""
        return cls(**data)

    def to_json(self, path=None):
        """The plan as JSON text; also written to `path` when given."""
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            with open(path, "w") as f:
                f.write(text)
        return text


def check_fraction(value, name):
    """A width fraction in (0, 1]; clear error otherwise."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not 0.0 < float(value) <= 1.0
    ):
        raise ValueError(
            f"`{name}` is the fraction of units to keep, a number in (0, 1]. "
            f"Received: {name}={value!r}"
        )
    return float(value)


def round_count(fraction, total, round_to=1):
    """`fraction * total` rounded to a multiple of `round_to` in [1, total].

    Args:
        fraction: the kept fraction, in (0, 1].
        total: the original count.
        round_to: the multiple (a count that is a multiple of it, at least
            `round_to`, unless `total` is smaller).

    Returns:
        An int.

    Example:

    >>> round_count(0.5, 100, 8), round_count(1.0, 100, 8), round_count(0.01, 10)
    (48, 100, 1)
    """
    if fraction >= 1.0:
        return int(total)
    step = max(int(round_to or 1), 1)
    count = int(round(fraction * total / step)) * step
    return int(min(max(count, min(step, total), 1), total))


def top_indices(scores, count):
    """The `count` highest-scoring indices, in increasing order.

    Ties go to the lower index.

    Example:

    >>> top_indices(np.array([0.1, 0.9, 0.5, 0.9]), 2).tolist()
    [1, 3]
    """
    scores = np.asarray(scores, np.float64)
    order = np.argsort(-scores, kind="stable")
    return np.sort(order[: int(count)])


def plan_heads(scores, num_q, num_kv, new_q, family):
    """Kept query and key/value heads of one block (grouped-query aware).

    With `g = num_q / num_kv` query heads per key/value head: when `new_q`
    is a multiple of `g`, whole groups leave (a key/value head with its
    query heads; a group scores the sum of its query heads); otherwise,
    when `new_q` is a multiple of `num_kv`, every key/value head stays and
    each group keeps its best `new_q / num_kv` query heads. Either way the
    result has `new_q % new_kv == 0`.

    Args:
        scores: one score per query head.
        num_q, num_kv: the block's query and key/value heads.
        new_q: the query heads to keep.
        family: the family name, for error messages.

    Returns:
        `(kept query heads, kept key/value heads)`, increasing.

    Example:

    >>> q, kv = plan_heads(np.array([1.0, 2.0, 9.0, 8.0]), 4, 2, 2, "Llama")
    >>> q.tolist(), kv.tolist()
    ([2, 3], [1])
    """
    scores = np.asarray(scores, np.float64)
    group = num_q // num_kv
    if new_q % group == 0:
        group_scores = scores.reshape(num_kv, group).sum(axis=1)
        kept_kv = top_indices(group_scores, new_q // group)
        kept_q = (kept_kv[:, None] * group + np.arange(group)[None, :]).ravel()
        return kept_q, kept_kv
    if new_q % num_kv == 0:
        per_group = new_q // num_kv
        kept_q = [
            g * group + top_indices(scores[g * group : (g + 1) * group], per_group)
            for g in range(num_kv)
        ]
        return np.concatenate(kept_q), np.arange(num_kv)
    raise ValueError(
        f"{family} uses grouped-query attention with {num_q} query heads "
        f"sharing {num_kv} key/value heads ({group} per group); keeping "
        f"{new_q} query heads fits neither whole groups (a multiple of "
        f"{group}) nor the same number per group (a multiple of {num_kv}), "
        "and the result must keep num_query_heads % num_key_value_heads == 0. "
        f"Choose `heads` accordingly. Received: {new_q} query heads"
    )
