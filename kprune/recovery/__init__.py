"""kprune.recovery: win back what pruning cost.

`Distiller` trains a pruned student on its task and on the outputs of the
frozen original (logits per example or per token; optionally hidden states),
inside an ordinary `fit`, on any backend.
"""

from kprune.recovery.distiller import Distiller, feature_loss

__all__ = ["Distiller", "feature_loss"]
