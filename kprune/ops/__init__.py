"""kprune.ops: pure `keras.ops` math shared by regularizers and callbacks.

Group sparsity (Alvarez & Salzmann, NeurIPS 2016): group norms, element-wise
and group soft-thresholding, the sparse group Lasso proximal operator (one
strength, or one per group), its reweighting (the log penalty) and
penalties. A group is one output unit's incoming weights (and its bias);
`coupled_group_prox` takes groups that span several kernels (a residual
channel made by every conv an `Add` joins).

HyperSparse (Glandorf et al., ICCV-W 2023): the threshold quantile, the
scale `s`, the factor `c`, per-kernel terms, the paper's penalty and its
analytic gradient.

Distillation (Hinton et al. 2015): the per-example loss of a student
against hard labels and a teacher's soft targets; the temperature-scaled
KL divergence at any rank (per token for language models).

Calibration statistics (Minitron, ShortGPT): per-unit mean activation over
a sequence's tokens, per-head output norms, block influence terms.

Also here, imported by module: `kprune.ops.macs` (multiply-accumulates of
one layer call, from its shapes) and `kprune.ops.least_squares` (streaming
moments and the closed-form affine fit of seed 004's block replacement).
"""

from kprune.ops.calibration import block_influence_terms, head_norms, token_mean
from kprune.ops.coupled_group_sparsity import coupled_group_prox
from kprune.ops.distillation import distillation_loss, soft_target_loss
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
    "block_influence_terms",
    "coupled_group_prox",
    "distillation_loss",
    "group_lasso_penalty",
    "group_norms",
    "group_reweights",
    "group_size",
    "group_soft_threshold",
    "head_norms",
    "hypersparse_factor",
    "hypersparse_gradient",
    "hypersparse_penalty",
    "hypersparse_scalars",
    "hypersparse_scale",
    "hypersparse_term",
    "magnitude_quantile",
    "num_units",
    "soft_target_loss",
    "soft_threshold",
    "sparse_group_lasso_penalty",
    "sparse_group_prox",
    "token_mean",
    "unit_axes",
    "zero_group_mask",
]
