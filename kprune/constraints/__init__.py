"""kprune.constraints: Keras constraints for training-time sparsity.

`GroupSoftThreshold` / `SparseGroupSoftThreshold` (Alvarez & Salzmann,
NeurIPS 2016): the group-sparsity proximal step inside every optimizer step,
kernel groups joined with their bias, strength in a `keras.Variable`.
"""

from kprune.constraints.group_soft_threshold import (
    GroupSoftThreshold,
    SparseGroupSoftThreshold,
    is_group_constraint,
)

__all__ = [
    "GroupSoftThreshold",
    "SparseGroupSoftThreshold",
    "is_group_constraint",
]
