"""kprune.callbacks: Keras callbacks for training-time pruning.

Each file holds one callback; this module only imports them.
"""

from kprune.callbacks.adaptive_regularization import AdaptiveRegularization
from kprune.callbacks.magnitude_pruning import MagnitudePruning
from kprune.callbacks.proximal_step import ProximalStep
from kprune.callbacks.regularization_scheduler import RegularizationScheduler
from kprune.callbacks.size_target import SizeTarget
from kprune.callbacks.sparsity_logger import SparsityLogger

__all__ = [
    "AdaptiveRegularization",
    "MagnitudePruning",
    "ProximalStep",
    "RegularizationScheduler",
    "SizeTarget",
    "SparsityLogger",
]
