"""kprune: make trained Keras 3 models genuinely smaller and ship them as TFLite.

Modules:
    regularizers: group sparsity and HyperSparse penalties.
    constraints: proximal operators and keep-mask constraints.
    callbacks: training-time pruning (proximal steps, magnitude pruning, logging).
    criteria: per-unit importance scores.
    losses: training losses that compose with the callbacks (distillation).
    surgery: the rebuilder that physically removes units/filters.
    export: TFLite (LiteRT) export and verification.
    report: parameter / MAC / width summaries.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kprune import (
    callbacks,  # noqa: E402
    constraints,  # noqa: E402
    criteria,  # noqa: E402
    export,  # noqa: E402
    losses,  # noqa: E402
    ops,  # noqa: E402
    regularizers,  # noqa: E402
    report,  # noqa: E402
    surgery,  # noqa: E402
    testing,  # noqa: E402
)
from kprune.pruning.budget import prune  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "callbacks",
    "constraints",
    "criteria",
    "export",
    "losses",
    "ops",
    "prune",
    "pruning",
    "regularizers",
    "report",
    "sparsity",
    "surgery",
    "testing",
]
