"""Closed-form affine fits streamed over batches (pure functions).

A block with input `x` (last axis `d_in`) and output `y` (last axis `d_out`)
is approximated by one affine map on the last axis, shared by every leading
position (sample, token, pixel):

    y ≈ x @ W + b,   minimising  (1/n) Σ ||x_i W + b - y_i||² + ridge ||W||²

over all `n` rows (leading positions flattened). The minimiser is

    W = (Cxx + ridge I)⁺ Cxy,    b = ȳ - x̄ W,

with `Cxx`, `Cxy` the (population) covariances. They are accumulated batch by
batch in float64 (`moments_update`, an equivalent of accumulating the
augmented `[X 1]ᵀ[X 1]` and `[X 1]ᵀY`), so memory depends on `d_in`, `d_out`
only, never on the number of rows. The moments are kept around a shift (the
first batch's means) so that large means do not cancel the covariances.
"""

import typing

import numpy as np


class LinearMoments(typing.NamedTuple):
    """Sufficient statistics of an affine least-squares fit.

    Attributes:
        count: number of rows seen.
        shift_x / shift_y: the constant subtracted from every row.
        sx / sy: sums of the shifted rows.
        sxx: `Σ (x - shift_x)ᵀ (x - shift_x)`, shape `(d_in, d_in)`.
        sxy: `Σ (x - shift_x)ᵀ (y - shift_y)`, shape `(d_in, d_out)`.
        syy: per output column `Σ (y - shift_y)²`, shape `(d_out,)`.
    """

    count: int
    shift_x: np.ndarray
    shift_y: np.ndarray
    sx: np.ndarray
    sy: np.ndarray
    sxx: np.ndarray
    sxy: np.ndarray
    syy: np.ndarray


def moments_init(d_in, d_out):
    """Empty statistics for a `d_in -> d_out` fit.

    Args:
        d_in: input features (last axis of the block input).
        d_out: output features (last axis of the block output).

    Returns:
        A `LinearMoments` with `count == 0`.

    Example:

    >>> moments_init(3, 2).sxy.shape
    (3, 2)
    """
    zeros = np.zeros
    return LinearMoments(
        0,
        None,
        None,
        zeros(d_in),
        zeros(d_out),
        zeros((d_in, d_in)),
        zeros((d_in, d_out)),
        zeros(d_out),
    )


def as_rows(x):
    """Flatten every axis but the last: `(..., d) -> (rows, d)`, float64."""
    x = np.asarray(x)
    return x.reshape(-1, x.shape[-1]).astype(np.float64)


def moments_update(moments, x, y):
    """Add a batch of rows to the statistics (returns new statistics).

    `x` and `y` may have any leading axes (samples, tokens, pixels); they are
    flattened into rows, which must pair one to one.

    Args:
        moments: a `LinearMoments`.
        x: block inputs, shape `(..., d_in)`.
        y: block outputs, shape `(..., d_out)` with the same leading axes.

    Returns:
        The updated `LinearMoments`.

    Example:

    >>> m = moments_update(moments_init(2, 1), np.ones((4, 2)), np.ones((4, 1)))
    >>> m.count
    4
    """
    x, y = as_rows(x), as_rows(y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            "Block input and output must have the same leading axes (one "
            f"output row per input row). Received: {x.shape[0]} input rows, "
            f"{y.shape[0]} output rows"
        )
    shift_x, shift_y = moments.shift_x, moments.shift_y
    if shift_x is None:
        shift_x = x.mean(axis=0) if len(x) else np.zeros(x.shape[1])
        shift_y = y.mean(axis=0) if len(y) else np.zeros(y.shape[1])
    xc, yc = x - shift_x, y - shift_y
    return LinearMoments(
        moments.count + x.shape[0],
        shift_x,
        shift_y,
        moments.sx + xc.sum(axis=0),
        moments.sy + yc.sum(axis=0),
        moments.sxx + xc.T @ xc,
        moments.sxy + xc.T @ yc,
        moments.syy + (yc * yc).sum(axis=0),
    )


def covariances(moments):
    """Means and population covariances from the statistics.

    Returns:
        `(mean_x, mean_y, cxx, cxy, var_y)` with `var_y` per output column.
    """
    n = moments.count
    if n < 1:
        raise ValueError("No rows were seen: the fit needs data. Received: 0 rows")
    mx, my = moments.sx / n, moments.sy / n
    cxx = moments.sxx / n - np.outer(mx, mx)
    cxy = moments.sxy / n - np.outer(mx, my)
    var_y = moments.syy / n - my * my
    return mx + moments.shift_x, my + moments.shift_y, cxx, cxy, var_y


def solve_affine(moments, ridge=0.0, rcond=1e-10):
    """The least-squares affine map from the statistics.

    `W = (Cxx + ridge I)⁺ Cxy`, `b = ȳ - x̄ W`: with `ridge=0` the ordinary
    least-squares solution of `[X 1] θ = Y` (the minimum-norm one when
    features are collinear, as for LayerNorm outputs); eigenvalues of
    `Cxx + ridge I` below `rcond x` the largest are treated as zero.

    Args:
        moments: a `LinearMoments` with at least one row.
        ridge: L2 penalty on `W` per row (`>= 0`).
        rcond: relative eigenvalue cut-off of the pseudo-inverse.

    Returns:
        `(kernel, bias)`: float64 arrays of shape `(d_in, d_out)`, `(d_out,)`.

    Example:

    >>> x = np.random.default_rng(0).normal(size=(50, 3))
    >>> y = x @ np.array([[1.0], [2.0], [3.0]]) + 0.5
    >>> kernel, bias = solve_affine(moments_update(moments_init(3, 1), x, y))
    >>> np.round(kernel.ravel(), 6).tolist(), round(float(bias[0]), 6)
    ([1.0, 2.0, 3.0], 0.5)
    """
    if ridge < 0:
        raise ValueError(f"`ridge` must be >= 0. Received: ridge={ridge!r}")
    mean_x, mean_y, cxx, cxy, _ = covariances(moments)
    a = cxx + ridge * np.eye(cxx.shape[0])
    values, vectors = np.linalg.eigh(a)
    top = max(float(values.max()), 0.0) if values.size else 0.0
    keep = values > rcond * top if top > 0 else np.zeros_like(values, bool)
    inverse = (vectors[:, keep] / values[keep]) @ vectors[:, keep].T
    kernel = inverse @ cxy
    bias = mean_y - mean_x @ kernel
    return kernel, bias


def fit_quality(moments, kernel):
    """Mean squared error and R² of `x @ kernel + b` (optimal `b`) on the data.

    `mse = (1/(n d_out)) Σ ||x W + b - y||²` from the statistics alone:
    `Σ_j Var(y_j) - 2 tr(Wᵀ Cxy) + tr(Wᵀ Cxx W)` per row;
    `R² = 1 - SSE / SST` pooled over all output columns
    (`SST = n Σ_j Var(y_j)`): 1 for an exactly affine block.

    Args:
        moments: a `LinearMoments`.
        kernel: `(d_in, d_out)`, e.g. from `solve_affine`.

    Returns:
        `{"mse": float, "r2": float, "rows": int}`.

    Example:

    >>> x = np.random.default_rng(0).normal(size=(50, 2))
    >>> m = moments_update(moments_init(2, 2), x, 3 * x + 1)
    >>> round(fit_quality(m, solve_affine(m)[0])["r2"], 6)
    1.0
    """
    _, _, cxx, cxy, var_y = covariances(moments)
    sst = float(var_y.sum())
    sse = (
        sst - 2.0 * float(np.sum(kernel * cxy)) + float(np.sum(kernel * (cxx @ kernel)))
    )
    sse = max(sse, 0.0)
    r2 = 1.0 - sse / sst if sst > 0 else (1.0 if sse <= 1e-30 else 0.0)
    return {
        "mse": sse / max(len(var_y), 1),
        "r2": float(r2),
        "rows": int(moments.count),
    }
