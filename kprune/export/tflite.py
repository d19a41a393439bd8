"""Keras 3 -> TFLite (LiteRT) conversion, verified against the Keras model."""

import itertools
import os
import tempfile
import warnings

import keras
import numpy as np

from kprune._atomic import atomic_path
from kprune.export import _io
from kprune.export.select_ops import (
    SelectOpsUnavailableError,
    UnverifiedExportWarning,
    conversion_error,
    is_select_ops_failure,
    tf_select_ops,
)

QUANTIZE_MODES = (None, "dynamic", "float16", "int8")

# Largest accepted `max|tflite - keras| / max|keras|`, per quantization mode.
DEFAULT_TOLERANCES = {
    None: 1e-4,
    "float16": 1e-2,
    "dynamic": 5e-2,
    "int8": 0.25,
}


class VerificationError(AssertionError):
    """The exported TFLite file does not reproduce the Keras model's outputs.

    Raised by `to_tflite` (when `verify=True`) and `verify_tflite`. The
    message names the output, the largest absolute difference, the output
    scale and the tolerance that was exceeded. It subclasses
    `AssertionError`, so test code can treat it as a failed check.

    Example:

    >>> issubclass(VerificationError, AssertionError)
    True
    """


def _check_backend():
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise RuntimeError(
            "`to_tflite` converts through TensorFlow, so it needs Keras' "
            f"TensorFlow backend; this process runs {backend!r}. Save the model "
            "(`model.save('model.keras')`: the file is backend-neutral) and "
            "convert it in a TensorFlow process: `kprune export model.keras "
            "model.tflite` (the command always uses the TensorFlow backend). "
            f"Received: keras.backend.backend()={backend!r}"
        )


def _check_quantize(quantize):
    if quantize not in QUANTIZE_MODES:
        raise ValueError(
            f"`quantize` must be one of {list(QUANTIZE_MODES)}. "
            f"Received: quantize={quantize!r}"
        )


def _is_array(x):
    return hasattr(x, "shape") and hasattr(x, "dtype")


def _batches(model, data, arg):
    """Yield batches (flat lists of arrays in input order) from `data`."""
    n = len(_io.model_inputs(model))
    if callable(data) and not _is_array(data):
        data = data()
    if (
        _is_array(data)
        or isinstance(data, dict)
        or (
            n > 1
            and isinstance(data, (list, tuple))
            and len(data) == n
            and all(_is_array(x) for x in data)
        )
    ):
        yield _io.flatten_inputs(model, data, arg)
        return
    try:
        iterator = iter(data)
    except TypeError:
        raise ValueError(
            f"`{arg}` must be an array, a list/tuple/dict of arrays (the "
            "model inputs), an iterable of such batches (e.g. a "
            "`tf.data.Dataset`), or a function returning one. "
            f"Received: {arg}={_io._short(data)}"
        ) from None
    for batch in iterator:
        if isinstance(batch, tuple) and len(batch) in (2, 3):
            first = batch[0]
            if n == 1 or isinstance(first, (list, tuple, dict)):
                batch = first  # a Keras-style (x, y) or (x, y, w) batch
        yield _io.flatten_inputs(model, batch, arg)


def representative_samples(model, data, max_samples=100, arg="representative_data"):
    """Split `data` into at most `max_samples` samples of batch size 1.

    Args:
        model: the Keras model the data is for.
        data: an array (one input), a list/tuple of arrays or a dict keyed by
            input name (several inputs), an iterable of such batches (a
            `tf.data.Dataset`, Keras-style `(x, y)` batches are accepted and
            `y` is ignored), or a zero-argument function returning one.
        max_samples: how many samples to keep.
        arg: argument name used in error messages.

    Returns:
        A list of samples, each a list of arrays (batch 1) in the order of
        `model.inputs`.

    Example:

    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> len(representative_samples(model, np.zeros((10, 3)), max_samples=4))
    4
    """
    samples = []
    for batch in _batches(model, data, arg):
        size = len(batch[0])
        for i in range(size):
            samples.append([x[i : i + 1] for x in batch])
            if len(samples) >= max_samples:
                return samples
    if not samples:
        raise ValueError(f"`{arg}` yielded no samples. Received: {arg}=(empty)")
    return samples


def _signature_fn(model, input_names, out_names):
    import tensorflow as tf

    specs = [
        tf.TensorSpec(
            (None,) + tuple(t.shape[1:]),
            keras.backend.standardize_dtype(t.dtype),
            name=name,
        )
        for t, name in zip(_io.model_inputs(model), input_names)
    ]

    @tf.function(input_signature=specs)
    def serve(*args):
        outputs = model(_io.pack_inputs(model, list(args)), training=False)
        return dict(zip(out_names, keras.tree.flatten(outputs)))

    return serve


def _low_precision(model):
    """The model's compute dtype when it is float16 / bfloat16, else None."""
    for layer in model._flatten_layers(include_self=False):
        dtype = getattr(layer, "compute_dtype", None)
        if dtype in ("float16", "bfloat16"):
            return dtype
    return None


def _convert(
    model,
    quantize,
    sparse,
    samples,
    integer_io,
    input_names,
    out_names,
    select_tf_ops=False,
):
    import tensorflow as tf

    serve = _signature_fn(model, input_names, out_names)
    with tempfile.TemporaryDirectory() as saved_model_dir:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serving_default", serve)
        archive.write_out(saved_model_dir, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(
            saved_model_dir, signature_keys=["serving_default"]
        )
        ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        optimizations = []
        if quantize is not None:
            optimizations.append(tf.lite.Optimize.DEFAULT)
        if sparse:
            optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
        converter.optimizations = optimizations
        if quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if quantize == "int8":
            ops.append(tf.lite.OpsSet.TFLITE_BUILTINS_INT8)

            def representative_dataset():
                for sample in samples:
                    yield dict(zip(input_names, sample))

            converter.representative_dataset = representative_dataset
            if integer_io:
                converter.inference_input_type = tf.int8
                converter.inference_output_type = tf.int8
        if select_tf_ops:
            ops.append(tf.lite.OpsSet.SELECT_TF_OPS)
            # Keep RNN loops as TF tensor-list ops instead of failing.
            converter._experimental_lower_tensor_list_ops = False
        converter.target_spec.supported_ops = ops
        with warnings.catch_warnings():
            # int8 calibration runs TF's own (deprecated) tf.lite.Interpreter.
            warnings.filterwarnings(
                "ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated"
            )
            try:
                return converter.convert()
            except Exception as error:  # tf's ConverterError: dozens of lines
                raise conversion_error(
                    error, select_tf_ops, _low_precision(model)
                ) from None


def _compare(reference, actual, names, tolerance, quantize):
    worst = None
    for name, ref, got in zip(names, reference, actual):
        got = np.asarray(got, dtype=np.float64)
        ref = np.asarray(ref, dtype=np.float64)
        if ref.shape != got.shape:
            raise VerificationError(
                f"TFLite output '{name}' has shape {got.shape}, the Keras model "
                f"gives {ref.shape}."
            )
        if ref.size == 0:
            continue
        max_diff = float(np.max(np.abs(ref - got)))
        scale = float(np.max(np.abs(ref)))
        scale = scale if scale > 0 else 1.0
        rel = max_diff / scale
        if not np.isfinite(rel):
            rel = float("inf")
        if worst is None or rel > worst[0]:
            worst = (rel, name, max_diff, scale)
    if worst is None:
        return 0.0
    rel, name, max_diff, scale = worst
    if rel > tolerance:
        raise VerificationError(
            f"TFLite output '{name}' differs from the Keras model "
            f"(quantize={quantize!r}): max |tflite - keras| = {max_diff:.4g}, "
            f"output scale max|keras| = {scale:.4g}, relative difference "
            f"{rel:.4g} > tolerance {tolerance:.4g}. Pass `tolerance=` to "
            "accept it, or `verify=False` to skip the check."
        )
    return rel


def verify_tflite(
    path,
    model,
    sample_inputs=None,
    quantize=None,
    tolerance=None,
    seed=0,
):
    """Check that a TFLite file computes what the Keras model computes.

    Runs the file with the LiteRT interpreter (`ai_edge_litert`) and the
    model with `training=False` on the same inputs and checks, per output,

        max|tflite - keras| / max|keras| <= tolerance.

    Inputs and outputs are matched by name through the file's signature (the
    names `to_tflite` wrote), in the order of `model.inputs` /
    `model.outputs`.

    Args:
        path: the `.tflite` file, written by `to_tflite`.
        model: the Keras model it was exported from.
        sample_inputs: inputs as for `model.predict` (array, list/tuple in
            `model.inputs` order, or dict by input name). Default: 4 random
            samples from the model's input shapes (uniform in [0, 1),
            integers in {0, 1}) with a fixed seed.
        quantize: the mode the file was exported with; picks the default
            tolerance (`DEFAULT_TOLERANCES`).
        tolerance: the largest accepted relative difference; overrides the
            default.
        seed: seed for the random inputs.

    Returns:
        The largest relative difference seen (a float).

    Raises:
        VerificationError: the difference exceeds the tolerance, or an output
            has the wrong shape.

    Example:

    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> path = to_tflite(model, "/tmp/kprune_doc_verify.tflite", verify=False)
    >>> verify_tflite(path, model) < 1e-4
    True
    """
    _check_quantize(quantize)
    if tolerance is None:
        tolerance = DEFAULT_TOLERANCES[quantize]
    if sample_inputs is None:
        flat = _io.random_inputs(model, seed=seed)
    else:
        flat = _io.flatten_inputs(model, sample_inputs)
    inputs = _io.model_inputs(model)
    input_names = _io.unique_names([t.name for t in inputs], "input")
    out_names = _io.unique_names(_io.output_names(model), "output")
    runner = _io.Runner(path=path)
    if sorted(runner.input_names()) != sorted(input_names) or sorted(
        runner.output_details
    ) != sorted(out_names):
        raise VerificationError(
            f"The TFLite signature (inputs {runner.input_names()}, outputs "
            f"{list(runner.output_details)}) does not match the model (inputs "
            f"{input_names}, outputs {out_names}); was it written by "
            "`kprune.export.to_tflite` from this model?"
        )
    try:
        results = runner(dict(zip(input_names, flat)))
    except RuntimeError as error:
        if not is_select_ops_failure(error):
            raise
        raise SelectOpsUnavailableError(
            f"{path} uses TF Select ops ({', '.join(tf_select_ops(path))}), "
            "which the LiteRT interpreter in this Python cannot run (it has "
            "no Flex delegate), so it cannot be verified here. Check it on a "
            "runtime with the Select TF ops (e.g. Android with "
            "tensorflow-lite-select-tf-ops)."
        ) from None
    actual = [results[name] for name in out_names]
    reference = _keras_outputs(model, flat)
    return _compare(reference, actual, out_names, tolerance, quantize)


def _keras_outputs(model, flat):
    return _io.keras_outputs(model, flat)


def to_tflite(
    model,
    path,
    quantize=None,
    representative_data=None,
    sparse=False,
    verify=True,
    sample_inputs=None,
    tolerance=None,
    calibration_samples=100,
    integer_io=False,
    seed=0,
    select_tf_ops=False,
):
    """Convert a Keras 3 model to a TFLite (LiteRT) file and verify it.

    The model is exported through `keras.export.ExportArchive` (a SavedModel
    with one `serving_default` signature whose inputs are named after
    `model.inputs` and outputs after `model.output_names`), then converted by
    `tf.lite.TFLiteConverter` with builtin ops only (no Select TF ops, so the
    file runs on the plain LiteRT runtime) unless `select_tf_ops=True`.
    Unless `verify=False`, the file is then run with the LiteRT interpreter
    and compared with the model (see `verify_tflite`):
    `max|tflite - keras| / max|keras| <= tolerance`.

    The file is written atomically: it appears at `path` only once it is
    converted and verified. A failed conversion or verification (or a
    Ctrl-C) leaves nothing at `path`, and an existing file there is only
    replaced by a verified one.

    A conversion failure raises `ConversionError` with one line naming the
    ops that failed and the flag that would help. With
    `select_tf_ops=True`, ops LiteRT has no builtin kernel for are kept as
    TF Select ("Flex") ops (`tf_select_ops(path)` lists them); such a file
    needs the Select TF ops runtime on the device. When it actually uses
    them, the `ai_edge_litert` interpreter here cannot run it: it is written
    *unverified*, with an `UnverifiedExportWarning` saying so. A file that
    uses builtin ops only is verified as usual.

    Quantization modes:

    - `None`: float32. Default tolerance 1e-4.
    - `"float16"`: weights stored as float16. Default tolerance 1e-2.
    - `"dynamic"`: weights int8, activations quantized on the fly.
      Default tolerance 5e-2.
    - `"int8"`: full-integer quantization calibrated on
      `representative_data` (required). Weights and activations are int8;
      the interface stays **float32** (a quantize op at the input, a
      dequantize op at the output) unless `integer_io=True`, which makes
      inputs and outputs int8 too. Default tolerance 0.25 (int8 is coarse;
      the check is meant to catch broken conversions, not to measure
      accuracy: evaluate the file on your data for that).

    `sparse=True` adds `tf.lite.Optimize.EXPERIMENTAL_SPARSITY`: weight
    tensors with many exact zeros are stored in a compressed sparse format,
    so a magnitude-pruned model gives a genuinely smaller file.

    Args:
        model: a Keras 3 Functional or Sequential model (built from
            `keras.Input`). Not modified.
        path: where to write the `.tflite` file (parent folder must exist).
        quantize: `None`, `"dynamic"`, `"float16"` or `"int8"`.
        representative_data: calibration inputs for `"int8"`: an array (one
            input), a list/tuple of arrays or a dict by input name, an
            iterable of such batches (`tf.data.Dataset`, `(x, y)` batches
            accepted), or a function returning one. The first
            `calibration_samples` samples are used. When given and
            `sample_inputs` is not, the verification runs on its first 8
            samples.
        sparse: store mostly-zero weight tensors in sparse format.
        verify: run the file with LiteRT and compare with the model.
        sample_inputs: inputs for the verification (see `verify_tflite`).
        tolerance: overrides the default tolerance of the mode.
        calibration_samples: how many samples of `representative_data` to
            calibrate on.
        integer_io: with `"int8"`, make the file's inputs and outputs int8.
        seed: seed for random verification inputs.
        select_tf_ops: also allow TF Select ops (see above).

    Returns:
        `path`, as a string.

    Raises:
        RuntimeError: Keras runs another backend than TensorFlow (JAX,
            PyTorch): save the model and run `kprune export` instead.
        ValueError: bad `quantize`, missing `representative_data` for
            `"int8"`, a model without defined inputs, or bad sample data.
        ConversionError: the converter failed (a `ValueError`).
        VerificationError: the file's outputs differ from the model's.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> path = to_tflite(model, "/tmp/kprune_doc.tflite", quantize="float16")
    >>> path.endswith(".tflite")
    True
    """
    _check_backend()
    _check_quantize(quantize)
    if integer_io and quantize != "int8":
        raise ValueError(
            "`integer_io=True` needs `quantize='int8'`. "
            f"Received: integer_io={integer_io!r}, quantize={quantize!r}"
        )
    if quantize == "int8" and representative_data is None:
        raise ValueError(
            "`quantize='int8'` needs `representative_data` (a few hundred "
            "typical inputs) to calibrate the activation ranges. "
            "Received: representative_data=None"
        )
    if int(calibration_samples) < 1:
        raise ValueError(
            "`calibration_samples` must be >= 1. "
            f"Received: calibration_samples={calibration_samples!r}"
        )
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ValueError(
            f"The folder of `path` does not exist: {parent}. Received: path={path!r}"
        )
    inputs = _io.model_inputs(model)
    input_names = _io.unique_names([t.name for t in inputs], "input")
    out_names = _io.unique_names(_io.output_names(model), "output")

    samples = None
    if representative_data is not None:
        samples = representative_samples(
            model, representative_data, max_samples=int(calibration_samples)
        )
    content = _convert(
        model,
        quantize,
        sparse,
        samples,
        integer_io,
        input_names,
        out_names,
        select_tf_ops=bool(select_tf_ops),
    )
    if verify and sample_inputs is None and samples is not None:
        head = list(itertools.islice(samples, 8))
        sample_inputs = [np.concatenate(parts) for parts in zip(*head)]
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(content)
        if verify:
            try:
                verify_tflite(
                    tmp,
                    model,
                    sample_inputs=sample_inputs,
                    quantize=quantize,
                    tolerance=tolerance,
                    seed=seed,
                )
            except SelectOpsUnavailableError:
                warnings.warn(
                    f"{path} was written but NOT verified: it uses TF Select ops "
                    f"({', '.join(tf_select_ops(content))}), which the LiteRT "
                    "interpreter in this Python cannot run. Check it on a "
                    "runtime with the Select TF ops.",
                    UnverifiedExportWarning,
                    stacklevel=2,
                )
    return path
