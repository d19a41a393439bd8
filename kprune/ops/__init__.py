"""kprune.ops: pure `keras.ops` math shared by regularizers and callbacks.

Group sparsity (Alvarez & Salzmann, NeurIPS 2016): group norms, element-wise
and group soft-thresholding, the sparse group Lasso proximal operator (one
strength, or one per group), its reweighting (the log penalty) and
penalties. A group is one output unit's incoming weights (and its bias).

HyperSparse (Glandorf et al., ICCV-W 2023): the threshold quantile, the
scale `s`, the factor `c`, per-kernel terms, the paper's penalty and its
analytic gradient.

Distillation (Hinton et al. 2015): the per-example loss of a student
against hard labels and a teacher's soft targets.
"""

from kprune.ops.distillation import distillation_loss
from kprune.ops.group_sparsity import (
    group_lasso_penalty,
    group_norms,
    group_reweights,
    group_size,
    group_soft_threshold,
    num_units,
    soft_threshold,
    sparse_group_lasso_penalty,
    sparse_group_prox,
    unit_axes,
    zero_group_mask,
)
from kprune.ops.hypersparse import (
    hypersparse_factor,
    hypersparse_gradient,
    hypersparse_penalty,
    hypersparse_scalars,
    hypersparse_scale,
    hypersparse_term,
    magnitude_quantile,
)

__all__ = [
    "distillation_loss",
    "group_lasso_penalty",
    "group_norms",
    "group_reweights",
    "group_size",
    "group_soft_threshold",
    "hypersparse_factor",
    "hypersparse_gradient",
    "hypersparse_penalty",
    "hypersparse_scalars",
    "hypersparse_scale",
    "hypersparse_term",
    "magnitude_quantile",
    "num_units",
    "soft_threshold",
    "sparse_group_lasso_penalty",
    "sparse_group_prox",
    "unit_axes",
    "zero_group_mask",
]
