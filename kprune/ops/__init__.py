"""kprune.ops: pure `keras.ops` math shared by regularizers and callbacks.

Group sparsity (Alvarez & Salzmann, NeurIPS 2016): group norms, element-wise
and group soft-thresholding, the sparse group Lasso proximal operator and
penalties. A group is one output unit's incoming weights (and its bias).
"""

from kprune.ops.group_sparsity import (
    group_lasso_penalty,
    group_norms,
    group_size,
    group_soft_threshold,
    num_units,
    soft_threshold,
    sparse_group_lasso_penalty,
    sparse_group_prox,
    unit_axes,
    zero_group_mask,
)

__all__ = [
    "group_lasso_penalty",
    "group_norms",
    "group_size",
    "group_soft_threshold",
    "num_units",
    "soft_threshold",
    "sparse_group_lasso_penalty",
    "sparse_group_prox",
    "unit_axes",
    "zero_group_mask",
]
