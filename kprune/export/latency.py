"""LiteRT latency of single layers and whole models, for latency tables."""

import os
import tempfile

import keras
import numpy as np

from kprune.export.measure import measure_tflite
from kprune.export.tflite import to_tflite

DTYPES = ("float32", "int8")


def _convert_and_time(
    model, dtype, num_threads, runs, warmup, seed, clock="wall", rounds=1
):
    if dtype not in DTYPES:
        raise ValueError(f"`dtype` must be one of {DTYPES}. Received: dtype={dtype!r}")
    if int(rounds) < 1:
        raise ValueError(f"`rounds` must be >= 1. Received: rounds={rounds!r}")
    with tempfile.TemporaryDirectory(prefix="kprune_latency_") as folder:
        path = export_for_timing(
            model, os.path.join(folder, "model.tflite"), dtype, seed
        )
        every = [
            measure_tflite(
                path,
                num_threads=num_threads,
                runs=runs,
                warmup=warmup,
                seed=seed,
                clock=clock,
            )
            for _ in range(int(rounds))
        ]
    stats = dict(every[0])
    if len(every) > 1:
        stats.update(
            latency_ms_min=min(s["latency_ms_min"] for s in every),
            latency_ms_median=float(np.median([s["latency_ms_median"] for s in every])),
            latency_ms_p90=float(np.median([s["latency_ms_p90"] for s in every])),
            runs=sum(s["runs"] for s in every),
            rounds=len(every),
        )
    return stats


def model_latency(
    model,
    num_threads=1,
    dtype="float32",
    runs=20,
    warmup=3,
    seed=0,
    clock="wall",
    rounds=1,
):
    """Median LiteRT (XNNPACK) latency of a Keras model, batch 1, in ms.

    The model is exported with `to_tflite` (float32, or int8 calibrated on
    random inputs: the timing, not the accuracy, is what counts) into a
    temporary file and timed with `measure_tflite`, `rounds` times (each a
    fresh interpreter: `latency_ms_min` is the minimum over all rounds,
    `latency_ms_median` the median of the rounds' medians).

    Args:
        model: a `keras.Model` with one input of known shape.
        num_threads: interpreter threads.
        dtype: "float32" or "int8".
        runs: timed calls.
        warmup: untimed calls before.
        seed: seed of the random inputs.
        clock: "wall" or "cpu" (see `measure_tflite`).
        rounds: timing rounds of `runs` calls each.

    Returns:
        A dict from `measure_tflite` (`latency_ms_median`, ...).

    Example:

    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> model_latency(model, runs=3)["latency_ms_median"] > 0
    True
    """
    return _convert_and_time(
        model, dtype, num_threads, runs, warmup, seed, clock, rounds
    )


def layer_latency(
    class_name,
    config,
    input_shape,
    num_threads=1,
    dtype="float32",
    runs=20,
    warmup=3,
    seed=0,
    statistic="median",
    clock="wall",
):
    """Median (or minimum) LiteRT latency of one layer built from its config.

    A model `Input(input_shape) -> layer` is exported and timed; for a
    layer that reads channels, `input_shape[-1]` is its input width, and
    the config holds its output width (`filters` / `units`).

    Args:
        class_name: a Keras layer class name (`"Conv2D"`, `"Dense"`, ...).
        config: the layer's config (its `name` is ignored).
        input_shape: input shape without the batch axis.
        num_threads: interpreter threads.
        dtype: "float32" or "int8".
        runs: timed calls.
        warmup: untimed calls before.
        seed: seed of the random inputs.
        statistic: "median" or "min" (the least-contended run, for shared
            machines).
        clock: "wall" or "cpu" (see `measure_tflite`).

    Returns:
        The latency in milliseconds (float).

    Example:

    >>> ms = layer_latency("Dense", {"units": 4}, (8,), runs=3)
    >>> ms > 0
    True
    """
    config = {k: v for k, v in dict(config).items() if k != "name"}
    layer = keras.layers.deserialize(
        {"class_name": class_name, "config": config, "module": "keras.layers"}
    )
    model = keras.Sequential([keras.Input(tuple(input_shape)), layer])
    if statistic not in ("median", "min"):
        raise ValueError(
            f"`statistic` must be 'median' or 'min'. Received: statistic={statistic!r}"
        )
    stats = _convert_and_time(model, dtype, num_threads, runs, warmup, seed, clock)
    return float(stats[f"latency_ms_{statistic}"])


def export_for_timing(model, path, dtype="float32", seed=0):
    """Export `model` to `path` as `model_latency` times it (float32, or int8
    calibrated on 8 random inputs); returns `path`."""
    if dtype not in DTYPES:
        raise ValueError(f"`dtype` must be one of {DTYPES}. Received: dtype={dtype!r}")
    kwargs = {}
    if dtype == "int8":
        rng = np.random.default_rng(seed)
        shape = [1 if d is None else int(d) for d in model.inputs[0].shape]
        kwargs = dict(
            quantize="int8",
            representative_data=rng.random([8] + shape[1:]).astype("float32"),
            calibration_samples=8,
        )
    to_tflite(model, path, verify=False, **kwargs)
    return path


def relative_latency(
    model,
    reference,
    num_threads=1,
    dtype="float32",
    runs=10,
    rounds=3,
    warmup=2,
    seed=0,
    statistic="min",
    clock="wall",
):
    """LiteRT latency of `model` relative to `reference`, timed side by side.

    Both are exported (a `reference` given as a `.tflite` path is used as it
    is) and timed in `rounds` interleaved rounds of `runs` calls each (the
    order alternating from round to round), so both see the same load on a
    shared machine:
    `ratio = stat(model) / stat(reference)` with `stat` the minimum (or
    median) over all runs of a file.

    Args:
        model: a `keras.Model` with one input of known shape.
        reference: a `keras.Model`, or the path of its `.tflite` file.
        num_threads: interpreter threads.
        dtype: "float32" or "int8".
        runs: timed calls per round and file.
        rounds: interleaved rounds.
        warmup: untimed calls before each round's runs.
        seed: seed of the random inputs.
        statistic: "min" (the least-contended run) or "median".
        clock: "wall" or "cpu" (see `measure_tflite`).

    Returns:
        A dict: `model_ms`, `reference_ms`, `ratio`.

    Example:

    >>> big = keras.Sequential([keras.Input((64,)), keras.layers.Dense(256)])
    >>> out = relative_latency(big, big, runs=3, rounds=1)
    >>> out["ratio"] > 0
    True
    """
    if statistic not in ("median", "min"):
        raise ValueError(
            f"`statistic` must be 'median' or 'min'. Received: statistic={statistic!r}"
        )
    if int(rounds) < 1:
        raise ValueError(f"`rounds` must be >= 1. Received: rounds={rounds!r}")
    with tempfile.TemporaryDirectory(prefix="kprune_latency_") as folder:
        paths = [export_for_timing(model, os.path.join(folder, "m.tflite"), dtype)]
        if isinstance(reference, (str, os.PathLike)):
            paths.append(os.fspath(reference))
        else:
            paths.append(
                export_for_timing(reference, os.path.join(folder, "r.tflite"), dtype)
            )
        times = [[], []]
        for round_index in range(int(rounds)):
            # Alternate which file goes first (ABBA...): no file is always
            # timed right after the other's run.
            order = (0, 1) if round_index % 2 == 0 else (1, 0)
            for index in order:
                path = paths[index]
                stats = measure_tflite(
                    path,
                    num_threads=num_threads,
                    runs=runs,
                    warmup=warmup,
                    seed=seed,
                    clock=clock,
                )
                times[index].append(stats[f"latency_ms_{statistic}"])
    pick = min if statistic == "min" else (lambda v: float(np.median(v)))
    model_ms, reference_ms = pick(times[0]), pick(times[1])
    return {
        "model_ms": float(model_ms),
        "reference_ms": float(reference_ms),
        "ratio": float(model_ms / reference_ms),
    }
