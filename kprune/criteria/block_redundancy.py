"""Block Redundancy: how little a block changes its input (Cannistraci et al.)."""

import dataclasses
import math

import numpy as np

from kprune.ops.least_squares import (
    fit_quality,
    moments_init,
    moments_update,
    solve_affine,
)
from kprune.surgery.blocks import Block, find_blocks, locate, run_tap, tap_model
from kprune.surgery.graph import Graph

RANK_BY = ("redundancy", "r2", "cosine")


def redundancy_terms(h_in, h_out):
    """Per-sample change of a block's representation.

    With `h_in`, `h_out` flattened per sample (all tokens / positions and
    channels), returns, per sample,

        change = ||h_out - h_in||²,   norm = ||h_in||²,
        cosine = <h_in, h_out> / (||h_in|| ||h_out||).

    Args:
        h_in: block inputs, shape `(batch, ...)`.
        h_out: block outputs, same shape.

    Returns:
        `(change, norm, cosine)`, three float64 arrays of shape `(batch,)`.

    Example:

    >>> x = np.ones((2, 3))
    >>> [a.tolist() for a in redundancy_terms(x, 2 * x)]
    [[3.0, 3.0], [3.0, 3.0], [1.0, 1.0]]
    """
    # Products in the activations' own precision, sums in float64: no
    # float64 copy of every activation (`kprune.prune(depth=...)` scores
    # feature maps of millions of entries per batch).
    a = np.asarray(h_in).reshape(len(h_in), -1)
    b = np.asarray(h_out).reshape(len(h_out), -1)
    if a.shape != b.shape:
        raise ValueError(
            "Block Redundancy compares a block's input and output, which "
            f"must have the same shape. Received: {a.shape} and {b.shape}"
        )

    def rowsum(x):
        return x.sum(axis=1, dtype=np.float64)

    change = rowsum(np.square(b - a))
    norm = rowsum(a * a)
    denom = np.sqrt(norm * rowsum(b * b))
    cosine = np.where(denom > 0, rowsum(a * b) / np.maximum(denom, 1e-300), 1.0)
    return change, norm, cosine


def redundancy_score(change, norm, normalize=True):
    """Block Redundancy from per-sample changes (higher = more redundant).

        BR = -(1/|D|) Σ_x ||h_out(x) - h_in(x)||²                (normalize=False)
        BR = -(1/|D|) Σ_x ||h_out(x) - h_in(x)||² / ||h_in(x)||²  (normalize=True)

    The paper's score is the first form: 0 for a block that leaves its
    input unchanged, more negative the more it changes it. Its value grows
    with the scale of the representation (which often grows with depth in
    residual networks), so by default each sample's change is taken
    relative to its input's energy, which makes blocks at different depths
    comparable.

    Args:
        change: per-sample `||h_out - h_in||²`.
        norm: per-sample `||h_in||²`.
        normalize: divide each change by its `||h_in||²`.

    Returns:
        A float (`<= 0`).

    Example:

    >>> redundancy_score(np.array([1.0, 3.0]), np.array([10.0, 10.0]))
    -0.2
    """
    change = np.asarray(change, np.float64)
    if normalize:
        change = change / np.maximum(np.asarray(norm, np.float64), 1e-30)
    return -float(change.mean())


@dataclasses.dataclass(eq=False)
class BlockCandidate:
    """A block with its redundancy scores.

    Attributes:
        block: the `Block` (`kprune.surgery.find_blocks`).
        redundancy: Block Redundancy (see `redundancy_score`), NaN when the
            block's input and output shapes differ.
        cosine: mean per-sample cosine similarity of input and output (NaN
            when the shapes differ).
        r2: R² of the closed-form affine fit from block input to output on
            the data (1 = exactly affine); NaN when not replaceable.
        mse: mean squared error of that fit.
        replaceable: whether a Dense on the last axis can replace the block.
        rank: position in the ranking (0 = most redundant).
    """

    block: Block
    redundancy: float
    cosine: float
    r2: float
    mse: float
    replaceable: bool
    rank: int = -1

    @property
    def name(self):
        return self.block.name

    def to_dict(self):
        """A JSON-able summary."""
        return {
            "name": self.block.name,
            "rank": self.rank,
            "redundancy": self.redundancy,
            "cosine": self.cosine,
            "r2": self.r2,
            "mse": self.mse,
            "replaceable": self.replaceable,
            "layers": self.block.num_layers,
            "size": self.block.size,
            "input_shape": list(self.block.input_shape),
            "output_shape": list(self.block.output_shape),
        }


def _sort_key(candidate, rank_by):
    value = getattr(candidate, rank_by)
    bad = value is None or (isinstance(value, float) and math.isnan(value))
    return (not candidate.replaceable, bad, 0.0 if bad else -value)


def block_redundancy(
    model,
    data,
    blocks=None,
    batch_size=256,
    max_samples=None,
    normalize=True,
    rank_by="redundancy",
    ridge=0.0,
    fit=True,
    **find_kwargs,
):
    """Score every candidate block by how little it changes its input.

    For each block `b` with input `h_in` and output `h_out` on the samples
    `D` of `data`, Block Redundancy (higher = more redundant)

        BR(b) = -(1/|D|) Σ_x ||h_out(x) - h_in(x)||² [/ ||h_in(x)||²],

    plus the quality of the closed-form affine fit `h_out ≈ h_in W + b` on
    the last axis (R², pooled over output columns; every sample, token and
    position is a row), which says how well the Dense layer of
    `kprune.surgery.replace_blocks` would approximate the block. One pass
    over `data` computes everything (statistics accumulated per batch).

    Args:
        model: a Functional or Sequential `keras.Model` (not modified).
        data: inputs (array, list/dict of arrays, `(x, y)`, or re-iterable
            batches); a few hundred samples suffice.
        blocks: candidate `Block`s; default `find_blocks(model, **find_kwargs)`.
        batch_size: rows per forward pass when `data` holds arrays.
        max_samples: use at most this many samples.
        normalize: BR relative to the input energy (see `redundancy_score`);
            `False` gives the paper's raw squared change.
        rank_by: `"redundancy"` (default), `"r2"` or `"cosine"`.
        ridge: ridge penalty of the fit used for R².
        fit: compute the affine fit (`r2`, `mse`; NaN when False). Its
            statistics cost `channels²` per row: skip it when only the
            redundancy or cosine ranks (`kprune.prune(depth=...)`).
        **find_kwargs: passed to `find_blocks` (`min_layers`, `span`, `key`).

    Returns:
        A list of `BlockCandidate`, most redundant first (blocks that cannot
        be replaced, or whose score is undefined, last).

    Example:

    >>> import keras, numpy as np
    >>> inputs = keras.Input((8,))
    >>> x = keras.layers.Dense(8, name="stem")(inputs)
    >>> y = keras.layers.Dense(8, activation="relu", name="fc")(x)
    >>> x = keras.layers.Add(name="add")([x, keras.layers.Dropout(0.1)(y)])
    >>> model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x))
    >>> data = np.random.rand(32, 8).astype("float32")
    >>> ranked = block_redundancy(model, data)
    >>> [c.name for c in ranked][:1]
    ['fc..add']

    Reference:
        Cannistraci, Rodolà, Rieck. Detecting and Approximating Redundant
        Computational Blocks in Neural Networks. arXiv:2410.04941 (2024).
    """
    if rank_by not in RANK_BY:
        raise ValueError(
            f"`rank_by` must be one of {RANK_BY}. Received: rank_by={rank_by!r}"
        )
    if rank_by == "r2" and not fit:
        raise ValueError(
            "rank_by='r2' ranks by the affine fit, which fit=False skips. "
            f"Received: rank_by={rank_by!r}, fit={fit!r}"
        )
    graph = Graph(model)
    if blocks is None:
        blocks = find_blocks(graph, **find_kwargs)
    elif find_kwargs:
        raise ValueError(
            "Pass either `blocks` or options for find_blocks, not both. "
            f"Received: {sorted(find_kwargs)}"
        )
    blocks = locate(blocks, graph)
    if not blocks:
        return []
    tensors, index = [], {}
    for block in blocks:
        for t in (block.start, block.end):
            if id(t) not in index:
                index[id(t)] = len(tensors)
                tensors.append(t)
    tap = tap_model(graph, outputs=tensors, name="kprune_redundancy_tap")
    same = [tuple(b.start.shape) == tuple(b.end.shape) for b in blocks]
    moments = [
        moments_init(b.start.channels, b.end.channels)
        if fit and b.replaceable
        else None
        for b in blocks
    ]
    sums = np.zeros((len(blocks), 3))  # change/norm, change, cosine
    count = 0
    for outs in run_tap(tap, data, batch_size, max_samples):
        count += len(outs[0])
        for i, block in enumerate(blocks):
            h_in, h_out = outs[index[id(block.start)]], outs[index[id(block.end)]]
            if same[i]:
                change, norm, cosine = redundancy_terms(h_in, h_out)
                sums[i, 0] += (change / np.maximum(norm, 1e-30)).sum()
                sums[i, 1] += change.sum()
                sums[i, 2] += cosine.sum()
            if moments[i] is not None:
                moments[i] = moments_update(moments[i], h_in, h_out)
    if count == 0:
        raise ValueError(
            f"`data` gave no samples. Received: data={type(data).__name__}"
        )
    candidates = []
    for i, block in enumerate(blocks):
        nan = float("nan")
        score = cos = nan
        if same[i]:
            score = -float(sums[i, 0 if normalize else 1] / count)
            cos = float(sums[i, 2] / count)
        r2 = mse = nan
        if moments[i] is not None:
            kernel, _ = solve_affine(moments[i], ridge)
            quality = fit_quality(moments[i], kernel)
            r2, mse = quality["r2"], quality["mse"]
        candidates.append(BlockCandidate(block, score, cos, r2, mse, block.replaceable))
    candidates.sort(key=lambda c: _sort_key(c, rank_by))
    for rank, candidate in enumerate(candidates):
        candidate.rank = rank
    return candidates


def select_blocks(candidates, k, replaceable_only=True):
    """The `k` best-ranked candidates that do not overlap.

    Walks `candidates` in order (as ranked by `block_redundancy`) and keeps
    a candidate when none of its layer calls is in an already kept one.

    Args:
        candidates: `BlockCandidate`s (or `Block`s), best first.
        k: how many to keep.
        replaceable_only: skip blocks a Dense cannot replace.

    Returns:
        A list of at most `k` `Block`s, in ranking order.

    Example:

    >>> select_blocks([], 2)
    []
    """
    if int(k) < 0:
        raise ValueError(f"`k` must be >= 0. Received: k={k!r}")
    chosen, taken = [], set()
    for candidate in candidates:
        if len(chosen) >= int(k):
            break
        block = getattr(candidate, "block", candidate)
        if replaceable_only and not block.replaceable:
            continue
        ids = {id(node) for node in block.nodes}
        if ids & taken:
            continue
        taken |= ids
        chosen.append(block)
    return chosen
