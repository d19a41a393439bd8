"""Keras constraints: projections applied after every optimizer step.

- `GroupSoftThreshold` / `SparseGroupSoftThreshold` (Alvarez & Salzmann,
  NeurIPS 2016): the group-sparsity proximal step inside every optimizer
  step, kernel groups joined with their bias, strength in a `keras.Variable`.
- `KeepMask`: holds pruned weights at exactly zero (`w <- m * w`); the mask
  survives saving, `clone_model` and `get_config` / `from_config`.
"""

from kprune.constraints.group_soft_threshold import (
    GroupSoftThreshold,
    SparseGroupSoftThreshold,
    is_group_constraint,
)
from kprune.constraints.keep_mask import KeepMask

__all__ = [
    "GroupSoftThreshold",
    "KeepMask",
    "SparseGroupSoftThreshold",
    "is_group_constraint",
]
