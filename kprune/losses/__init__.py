"""kprune.losses: training losses that compose with kprune's callbacks.

`Distillation` trains a (sparse, or already slimmed) student on the soft
targets of a dense teacher (Hinton et al. 2015); `soft_targets` packs the
labels and the teacher's logits into the `y` it reads.
"""

from kprune.losses.distillation import Distillation, soft_targets

__all__ = ["Distillation", "soft_targets"]
