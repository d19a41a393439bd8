"""kprune.regularizers: Keras regularizers for training-time sparsity.

`GroupLasso` / `SparseGroupLasso` (Alvarez & Salzmann, NeurIPS 2016): one
group per output unit, `sqrt(P)` scaling, strength in a `keras.Variable`.
"""

from kprune.regularizers.group_lasso import (
    GroupLasso,
    SparseGroupLasso,
    is_group_regularizer,
)

__all__ = [
    "GroupLasso",
    "SparseGroupLasso",
    "is_group_regularizer",
]
