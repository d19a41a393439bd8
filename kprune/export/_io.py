"""Shared helpers: model inputs/outputs as flat lists, and LiteRT runners."""

import functools
import re
import time

import keras
import numpy as np


def _fail(message, arg, value):
    return ValueError(f"{message} Received: {arg}={_short(value)}")


def _short(value, limit=120):
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def model_inputs(model):
    """The model's input KerasTensors, in the order Keras flattens them."""
    try:
        inputs = list(model.inputs)
    except (AttributeError, ValueError):
        inputs = None
    if not inputs:
        raise ValueError(
            f"Model '{getattr(model, 'name', model)}' has no defined inputs. "
            "Build it from `keras.Input(...)` (Functional or Sequential with "
            "an Input) before exporting or reporting. "
            f"Received: model={_short(model)}"
        )
    return inputs


def pack_inputs(model, flat):
    """Pack a flat list of arrays into the structure `model` is called with."""
    try:
        struct = model.input
    except (AttributeError, ValueError):
        struct = None
    if struct is None:
        return flat[0] if len(flat) == 1 else list(flat)
    return keras.tree.pack_sequence_as(struct, list(flat))


def flatten_inputs(model, inputs, arg="sample_inputs"):
    """Turn user inputs (array, list/tuple, dict) into arrays in input order."""
    keras_inputs = model_inputs(model)
    n = len(keras_inputs)
    if isinstance(inputs, dict):
        try:
            struct = model.input
        except (AttributeError, ValueError):
            struct = None
        if isinstance(struct, dict) and set(inputs) >= set(struct):
            flat = keras.tree.flatten({k: inputs[k] for k in struct})
        else:
            names = [t.name for t in keras_inputs]
            missing = [name for name in names if name not in inputs]
            if missing:
                raise _fail(
                    f"`{arg}` is a dict but lacks the model inputs {missing} "
                    f"(expected keys: {names}).",
                    arg,
                    sorted(inputs),
                )
            flat = [inputs[name] for name in names]
    elif isinstance(inputs, (list, tuple)) and n > 1:
        flat = list(inputs)
    elif n == 1 and not isinstance(inputs, (list, tuple)):
        flat = [inputs]
    elif n == 1 and isinstance(inputs, (list, tuple)) and len(inputs) == 1:
        flat = list(inputs)
    else:
        raise _fail(
            f"`{arg}` must be an array (one input), a list/tuple of {n} "
            "arrays in the order of `model.inputs`, or a dict keyed by input "
            "name.",
            arg,
            inputs,
        )
    if len(flat) != n:
        raise _fail(
            f"`{arg}` has {len(flat)} arrays but the model has {n} inputs.",
            arg,
            inputs,
        )
    arrays = []
    for array, tensor in zip(flat, keras_inputs):
        dtype = keras.backend.standardize_dtype(tensor.dtype)
        if dtype == "string":  # text inputs: bytes objects, as TF takes them
            arrays.append(np.asarray(array, dtype=object))
            continue
        array = np.asarray(keras.ops.convert_to_numpy(array))
        arrays.append(array.astype(dtype))
    return arrays


def random_inputs(model, batch_size=4, seed=0):
    """Random inputs from the model's input shapes (fixed seed).

    Float inputs are drawn uniformly from [0, 1); integer inputs from {0, 1}
    (safe indices for any Embedding); booleans at random.
    """
    rng = np.random.default_rng(seed)
    arrays = []
    for tensor in model_inputs(model):
        shape = tuple(tensor.shape)
        if any(dim is None for dim in shape[1:]):
            raise ValueError(
                f"Input '{tensor.name}' has an unknown dimension {shape}: "
                "random sample inputs cannot be generated. Pass "
                f"`sample_inputs`. Received: input_shape={shape}"
            )
        shape = (batch_size,) + shape[1:]
        dtype = keras.backend.standardize_dtype(tensor.dtype)
        if dtype == "string":
            raise ValueError(
                f"Input '{tensor.name}' takes strings: random sample inputs "
                "cannot be generated. Pass `sample_inputs`. "
                f"Received: input_dtype={dtype}"
            )
        if "int" in dtype:
            arrays.append(rng.integers(0, 2, size=shape).astype(dtype))
        elif dtype == "bool":
            arrays.append(rng.random(shape) < 0.5)
        else:
            arrays.append(rng.random(shape).astype(dtype))
    return arrays


def keras_outputs(model, flat_inputs):
    """Run `model` in inference mode, return its outputs as numpy arrays."""
    outputs = model(pack_inputs(model, flat_inputs), training=False)
    return [
        np.asarray(keras.ops.convert_to_numpy(o)) for o in keras.tree.flatten(outputs)
    ]


def _sanitize(name, fallback):
    name = re.sub(r"[^A-Za-z0-9_]", "_", str(name or ""))
    if not name or not re.match(r"[A-Za-z]", name[0]):
        name = f"{fallback}_{name}" if name else fallback
    return name


def unique_names(names, fallback):
    """Sanitized, unique TF signature names, one per entry of `names`."""
    out, seen = [], set()
    for i, name in enumerate(names):
        candidate = _sanitize(name, f"{fallback}_{i}")
        if candidate in seen:
            candidate = f"{candidate}_{i}"
        while candidate in seen:
            candidate += "_"
        seen.add(candidate)
        out.append(candidate)
    return out


def output_names(model):
    """One name per flattened model output (dict keys, else layer names)."""
    try:
        struct = model.output
    except (AttributeError, ValueError):
        struct = None
    if isinstance(struct, dict):
        return sorted(struct)
    names = getattr(model, "output_names", None)
    try:
        n = len(model.outputs)
    except (AttributeError, ValueError, TypeError):
        n = len(names or [])
    if not names or len(names) != n:
        names = [f"output_{i}" for i in range(n)]
    return list(names)


class Runner:
    """A LiteRT signature runner that falls back to no delegate if needed.

    XNNPACK (the default CPU delegate) refuses some sparse / quantized
    kernels at prepare time; then the plain builtin kernels are used and
    `delegate` says so.
    """

    def __init__(self, path=None, content=None, num_threads=None):
        self.path = path
        self.content = content
        self.num_threads = num_threads
        self._make(use_default_delegates=True)

    def _make(self, use_default_delegates):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        kwargs = {"num_threads": self.num_threads}
        if self.path is not None:
            kwargs["model_path"] = str(self.path)
        else:
            kwargs["model_content"] = self.content
        if not use_default_delegates:
            kwargs["experimental_op_resolver_type"] = (
                OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
            )
        self.interpreter = Interpreter(**kwargs)
        self.delegate = "xnnpack" if use_default_delegates else "none"
        signatures = self.interpreter.get_signature_list()
        if not signatures:
            raise ValueError(
                "The TFLite file has no signature; kprune needs one to match "
                f"inputs by name. Received: path={self.path}"
            )
        self.signature_key = (
            "serving_default"
            if "serving_default" in signatures
            else sorted(signatures)[0]
        )
        self.runner = self.interpreter.get_signature_runner(self.signature_key)
        self.input_details = self.runner.get_input_details()
        self.output_details = self.runner.get_output_details()

    def input_names(self):
        return list(self.input_details)

    def __call__(self, feed):
        """Run once; `feed` maps signature input names to float/int arrays.

        Float arrays are quantized for int8/uint8 inputs, and quantized
        outputs are dequantized, so callers always see real values.
        """
        feed = {name: self._quantize(name, value) for name, value in feed.items()}
        try:
            results = self.runner(**feed)
        except RuntimeError:
            if self.delegate == "none":
                raise
            self._make(use_default_delegates=False)
            results = self.runner(**feed)
        return {name: self._dequantize(name, value) for name, value in results.items()}

    def _quantize(self, name, value):
        detail = self.input_details[name]
        dtype = np.dtype(detail["dtype"])
        value = np.asarray(value)
        scale, zero_point = detail["quantization"]
        if dtype.kind in "iu" and scale and value.dtype.kind == "f":
            info = np.iinfo(dtype)
            value = np.clip(np.round(value / scale + zero_point), info.min, info.max)
        return value.astype(dtype)

    def _dequantize(self, name, value):
        scale, zero_point = self.output_details[name]["quantization"]
        if np.asarray(value).dtype.kind in "iu" and scale:
            return (value.astype(np.float32) - zero_point) * scale
        return value

    def time_invocations(self, feed, runs, warmup, clock="wall"):
        """Latencies in ms of `runs` calls after `warmup` calls.

        `clock="cpu"`: the process's CPU time per call (all its threads)
        instead of the wall time.
        """
        timer = time.process_time if clock == "cpu" else time.perf_counter
        for _ in range(max(1, warmup)):
            self(feed)  # also settles the delegate choice
        feed = {name: self._quantize(name, value) for name, value in feed.items()}
        if len(self.interpreter.get_signature_list()) != 1:
            call = functools.partial(self.runner, **feed)
        else:
            # One signature = subgraph 0: time `invoke()` alone, without
            # input/output copies, on a plain interpreter (a signature runner
            # holds a reference that makes `invoke()` refuse to run).
            delegate = self.delegate
            self._make(use_default_delegates=delegate != "none")
            details = self.input_details
            interpreter = self.interpreter
            del self.runner  # drop the runner's reference to the interpreter
            for name, value in feed.items():
                interpreter.resize_tensor_input(details[name]["index"], value.shape)
            interpreter.allocate_tensors()
            for name, value in feed.items():
                interpreter.set_tensor(details[name]["index"], value)
            call = interpreter.invoke
            call()
        times = []
        for _ in range(runs):
            start = timer()
            call()
            times.append((timer() - start) * 1e3)
        return times
