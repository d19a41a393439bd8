"""Export to TFLite (LiteRT), verified against Keras; size and latency.

- `to_tflite(model, path, quantize=None, ...)`: convert and verify.
- `verify_tflite(path, model, ...)`: compare a file with the Keras model.
- `measure_tflite(path, ...)`: file size, gzipped size, LiteRT latency.
- `sizes(path)`: raw and gzipped size.
- `layer_latency(...)`, `model_latency(model, ...)`: LiteRT latency of one
  layer at a given width / of a model (used by latency tables).
- `relative_latency(model, reference, ...)`: the latency ratio of two models
  timed side by side (interleaved rounds).
- `tf_select_ops(path)`: the TF Select ops a file needs (`select_tf_ops=True`).
- `ConversionError`: a converter failure, in one line naming the ops.

This is the only part of kprune that imports `tensorflow` (lazily, inside
the conversion).
"""

from kprune.export.latency import layer_latency, model_latency, relative_latency
from kprune.export.measure import measure_tflite, sizes
from kprune.export.select_ops import (
    ConversionError,
    SelectOpsUnavailableError,
    UnverifiedExportWarning,
    tf_select_ops,
)
from kprune.export.tflite import (
    DEFAULT_TOLERANCES,
    QUANTIZE_MODES,
    VerificationError,
    representative_samples,
    to_tflite,
    verify_tflite,
)

__all__ = [
    "ConversionError",
    "DEFAULT_TOLERANCES",
    "QUANTIZE_MODES",
    "SelectOpsUnavailableError",
    "UnverifiedExportWarning",
    "VerificationError",
    "layer_latency",
    "measure_tflite",
    "model_latency",
    "relative_latency",
    "representative_samples",
    "sizes",
    "tf_select_ops",
    "to_tflite",
    "verify_tflite",
]
