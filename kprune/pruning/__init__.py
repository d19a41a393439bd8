"""Magnitude pruning building blocks (Han et al. 2015; Zhu & Gupta 2017).

Pure functions (keras.ops) compose into `kprune.callbacks.MagnitudePruning`:

- thresholds: `kept_std`, `std_threshold` (`quality x std`),
  `global_std_threshold`.
- masks: `threshold_mask`, `sparsity_mask`, `global_sparsity_masks`,
  `num_to_prune`, `kept_fraction`.
- schedules: `SparsitySchedule`, `ConstantSparsity`, `PolynomialDecay`.
- `KeepMask`: the constraint that holds pruned weights at exactly zero.
- `prunable_layers`, `attach_masks`, `get_masks`, `strip_pruning`.
- ART (Glandorf et al. 2023): `art_strength`, `ARTWindow`.
"""

from kprune.constraints.keep_mask import KeepMask
from kprune.pruning.art import ARTWindow, art_strength
from kprune.pruning.attach import (
    attach_masks,
    get_masks,
    prunable_layers,
    strip_pruning,
)
from kprune.pruning.masks import (
    global_sparsity_masks,
    kept_fraction,
    num_to_prune,
    sparsity_mask,
    threshold_mask,
)
from kprune.pruning.schedules import ConstantSparsity, PolynomialDecay, SparsitySchedule
from kprune.pruning.thresholds import global_std_threshold, kept_std, std_threshold

__all__ = [
    "ARTWindow",
    "ConstantSparsity",
    "KeepMask",
    "PolynomialDecay",
    "SparsitySchedule",
    "art_strength",
    "attach_masks",
    "get_masks",
    "global_sparsity_masks",
    "global_std_threshold",
    "kept_fraction",
    "kept_std",
    "num_to_prune",
    "prunable_layers",
    "sparsity_mask",
    "std_threshold",
    "strip_pruning",
    "threshold_mask",
]
