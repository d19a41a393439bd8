"""Streaming least squares for block replacement (moved to `kprune.ops`).

The pure math lives in `kprune.ops.least_squares`; this module keeps its
old import path.
"""

from kprune.ops.least_squares import (  # noqa: F401
    as_rows,
    covariances,
    fit_quality,
    moments_init,
    moments_update,
    solve_affine,
)
