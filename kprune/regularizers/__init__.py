"""kprune.regularizers: Keras regularizers for training-time sparsity.

`GroupLasso` / `SparseGroupLasso` (Alvarez & Salzmann, NeurIPS 2016): one
group per output unit, `sqrt(P)` scaling, strength in a `keras.Variable`.
`HyperSparse` (Glandorf et al., 2023) with `refresh_hypersparse`, and
`MagnitudePenalty` (L1 / squared L2 with a live strength), driven by
`kprune.callbacks.AdaptiveRegularization`.
"""

from kprune.regularizers.group_lasso import (
    GroupLasso,
    SparseGroupLasso,
    is_group_regularizer,
)
from kprune.regularizers.hypersparse import (
    HyperSparse,
    MagnitudePenalty,
    hypersparse_kernels,
    refresh_hypersparse,
)

__all__ = [
    "GroupLasso",
    "HyperSparse",
    "MagnitudePenalty",
    "SparseGroupLasso",
    "hypersparse_kernels",
    "is_group_regularizer",
    "refresh_hypersparse",
]
