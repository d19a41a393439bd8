"""kprune: make trained Keras 3 models genuinely smaller and ship them as TFLite.

Modules:
    regularizers: group sparsity and HyperSparse penalties.
    constraints: keep-mask constraints (and proximal operators).
    callbacks: training-time pruning (proximal steps, magnitude pruning, logging).
    sparsity: `apply_group_sparsity`, a whole model under group sparsity.
    pruning: magnitude-pruning building blocks (masks, schedules, ART).
    criteria: per-unit importance scores.
    losses: training losses that compose with the callbacks (distillation).
    recovery: `Distiller`, a student trained on a frozen teacher inside `fit`.
    transformers: width and depth pruning of KerasHub backbones (same class).
    surgery: the rebuilder that physically removes units/filters.
    export: TFLite (LiteRT) export and verification.
    report: parameter / MAC / width summaries.
    data: the small MNIST subset shipped with kprune.

`import kprune` imports all of them (so every kprune object is registered
for `keras.models.load_model`) and changes nothing in the process: no
environment variable, no Keras setting. The one exception is the `kprune`
command itself (the process whose program is `kprune`): it is its own host,
and it asks TensorFlow, before TensorFlow loads, to keep its C++ info and
warning lines (a dozen per TFLite conversion) off the terminal; `kprune
export` also selects Keras' TensorFlow backend (the converter needs it), so
a `.keras` file trained on JAX or PyTorch converts whatever `KERAS_BACKEND`
says.

`kprune.multi_worker` (TensorFlow only: a workaround that lets Keras 3.15's
`fit` run under `tf.distribute.MultiWorkerMirroredStrategy`) is not
imported by `import kprune`: a training script imports it and applies it
explicitly.
"""

import os as _os
import sys as _sys


def _set_up_the_kprune_command():
    argv = getattr(_sys, "argv", None) or [""]
    program = _os.path.splitext(_os.path.basename(str(argv[0])))[0]
    if program != "kprune":
        return
    _os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    command = next((a for a in argv[1:] if not str(a).startswith("-")), None)
    if command == "export" and "keras" not in _sys.modules:
        # TFLite conversion runs through TensorFlow: `kprune export` converts
        # a `.keras` file saved on JAX or PyTorch too, whatever the user's
        # KERAS_BACKEND says for their own programs.
        _os.environ["KERAS_BACKEND"] = "tensorflow"


_set_up_the_kprune_command()

from kprune import (  # noqa: E402  (after the line above, before TensorFlow)
    callbacks,
    constraints,
    criteria,
    data,
    export,
    losses,
    ops,
    pruning,
    recovery,
    regularizers,
    report,
    sparsity,
    surgery,
    testing,
    transformers,
)
from kprune.pruning.budget import prune  # noqa: E402
from kprune.recovery import Distiller  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Distiller",
    "callbacks",
    "constraints",
    "criteria",
    "data",
    "export",
    "losses",
    "ops",
    "prune",
    "pruning",
    "recovery",
    "regularizers",
    "report",
    "sparsity",
    "surgery",
    "testing",
    "transformers",
]
