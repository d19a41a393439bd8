"""kprune: make trained Keras 3 models genuinely smaller and ship them as TFLite.

Modules:
    regularizers: group sparsity and HyperSparse penalties.
    constraints: keep-mask constraints (and proximal operators).
    callbacks: training-time pruning (proximal steps, magnitude pruning, logging).
    sparsity: `apply_group_sparsity`, a whole model under group sparsity.
    pruning: magnitude-pruning building blocks (masks, schedules, ART).
    criteria: per-unit importance scores.
    losses: training losses that compose with the callbacks (distillation).
    surgery: the rebuilder that physically removes units/filters.
    export: TFLite (LiteRT) export and verification.
    report: parameter / MAC / width summaries.
    data: the small MNIST subset shipped with kprune.

`import kprune` imports all of them (so every kprune object is registered
for `keras.models.load_model`) and changes nothing in the process: no
environment variable, no Keras setting.
"""

from kprune import (
    callbacks,
    constraints,
    criteria,
    data,
    export,
    losses,
    ops,
    pruning,
    regularizers,
    report,
    sparsity,
    surgery,
    testing,
)

__version__ = "0.1.0"

__all__ = [
    "callbacks",
    "constraints",
    "criteria",
    "data",
    "export",
    "losses",
    "ops",
    "pruning",
    "regularizers",
    "report",
    "sparsity",
    "surgery",
    "testing",
]
