"""`KeepMask` moved to `kprune.constraints.keep_mask`; kept here for old imports."""

from kprune.constraints.keep_mask import KeepMask

__all__ = ["KeepMask"]
