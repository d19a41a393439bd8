"""File size and LiteRT latency of a `.tflite` file."""

import gzip
import os

import numpy as np

from kprune.export import _io


def sizes(path):
    """Raw and gzipped size of a file, in bytes.

    The gzipped size (gzip level 9, in memory) is what an app download
    costs: it also rewards exact zeros in weight tensors that the TFLite
    file itself stores densely.

    Args:
        path: the file (any file; usually a `.tflite`).

    Returns:
        `{"bytes": int, "gzip_bytes": int}`.

    Example:

    >>> import keras
    >>> from kprune.export import to_tflite
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> s = sizes(to_tflite(model, "/tmp/kprune_doc_sizes.tflite"))
    >>> s["gzip_bytes"] < s["bytes"]
    True
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"No such file. Received: path={path!r}")
    with open(path, "rb") as f:
        content = f.read()
    return {
        "bytes": len(content),
        "gzip_bytes": len(gzip.compress(content, compresslevel=9, mtime=0)),
    }


def _feed(runner, sample_inputs, seed):
    details = runner.input_details
    names = list(details)
    if sample_inputs is None:
        rng = np.random.default_rng(seed)
        feed = {}
        for name in names:
            shape = [int(d) for d in details[name]["shape_signature"]]
            if shape and shape[0] == -1:
                shape[0] = 1
            if any(d < 0 for d in shape):
                raise ValueError(
                    f"Input '{name}' has an unknown dimension {shape}; pass "
                    f"`sample_inputs`. Received: sample_inputs=None"
                )
            dtype = np.dtype(details[name]["dtype"])
            scale = details[name]["quantization"][0]
            if dtype.kind in "iu" and not scale:
                feed[name] = rng.integers(0, 2, size=shape).astype(dtype)
            elif dtype.kind == "b":
                feed[name] = rng.random(shape) < 0.5
            else:  # float, or quantized int fed as float and quantized
                feed[name] = rng.random(shape).astype(np.float32)
        return feed
    if isinstance(sample_inputs, dict):
        missing = [n for n in names if n not in sample_inputs]
        if missing:
            raise ValueError(
                f"`sample_inputs` lacks the signature inputs {missing} "
                f"(signature inputs: {names}). "
                f"Received: sample_inputs keys={sorted(sample_inputs)}"
            )
        return {n: np.asarray(sample_inputs[n]) for n in names}
    if isinstance(sample_inputs, (list, tuple)) and len(names) > 1:
        if len(sample_inputs) != len(names):
            raise ValueError(
                f"`sample_inputs` has {len(sample_inputs)} arrays, the file has "
                f"{len(names)} inputs {names}. "
                f"Received: sample_inputs of length {len(sample_inputs)}"
            )
        return {n: np.asarray(x) for n, x in zip(names, sample_inputs)}
    if len(names) != 1:
        raise ValueError(
            f"The file has {len(names)} inputs {names}: pass `sample_inputs` as "
            "a dict by name or a list in this order. "
            f"Received: sample_inputs={_io._short(sample_inputs)}"
        )
    return {names[0]: np.asarray(sample_inputs)}


def measure_tflite(
    path,
    num_threads=1,
    runs=50,
    warmup=5,
    sample_inputs=None,
    seed=0,
    clock="wall",
):
    """Size and CPU latency of a `.tflite` file under the LiteRT interpreter.

    Latency is the wall time of `interpreter.invoke()` (inputs already set),
    measured `runs` times after `warmup` calls, with a fixed thread count.
    The default XNNPACK delegate is used; where it refuses the file (some
    sparse or quantized kernels), the plain builtin kernels are used and
    `"delegate"` is `"none"`.

    Args:
        path: the `.tflite` file.
        num_threads: interpreter threads (fixed, for comparable numbers).
        runs: timed calls.
        warmup: untimed calls before.
        sample_inputs: a dict by signature input name, a list in signature
            input order, or an array (one input). Default: one random sample
            (batch 1) with a fixed seed.
        seed: seed for the random sample.
        clock: "wall" (default: the wall time of each call) or "cpu" (the
            CPU time the process spent in each call, all threads). On a
            machine shared with other jobs, a wall-time figure includes the
            time the call waited for a core, and long calls are preempted
            more often than short ones, so a busy machine distorts ratios
            (not only the level); with 1 thread the CPU time is what the
            call costs on an idle core. With n threads it is the sum over
            the threads, not a latency.

    Returns:
        A dict: `path`, `bytes`, `gzip_bytes`, `latency_ms_median`,
        `latency_ms_p90`, `latency_ms_min`, `num_threads`, `runs`,
        `delegate`.

    Example:

    >>> import keras
    >>> from kprune.export import to_tflite
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> path = to_tflite(model, "/tmp/kprune_doc_measure.tflite")
    >>> stats = measure_tflite(path, runs=5)
    >>> stats["latency_ms_median"] > 0
    True
    """
    if int(runs) < 1:
        raise ValueError(f"`runs` must be >= 1. Received: runs={runs!r}")
    if int(num_threads) < 1:
        raise ValueError(
            f"`num_threads` must be >= 1. Received: num_threads={num_threads!r}"
        )
    result = {"path": os.fspath(path), **sizes(path)}
    runner = _io.Runner(path=path, num_threads=int(num_threads))
    feed = _feed(runner, sample_inputs, seed)
    if clock not in ("wall", "cpu"):
        raise ValueError(f"`clock` must be 'wall' or 'cpu'. Received: clock={clock!r}")
    times = np.asarray(
        runner.time_invocations(feed, int(runs), int(warmup), clock=clock)
    )
    result.update(
        latency_ms_median=float(np.median(times)),
        latency_ms_p90=float(np.percentile(times, 90)),
        latency_ms_min=float(np.min(times)),
        num_threads=int(num_threads),
        runs=int(runs),
        clock=clock,
        delegate=runner.delegate,
    )
    return result
