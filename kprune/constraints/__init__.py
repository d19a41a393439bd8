"""Keras constraints: projections applied after every optimizer step.

- `KeepMask`: holds pruned weights at exactly zero (`w <- m * w`); the mask
  survives saving, `clone_model` and `get_config` / `from_config`.
"""

from kprune.constraints.keep_mask import KeepMask

__all__ = ["KeepMask"]
