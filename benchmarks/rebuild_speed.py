"""How fast is the rebuilder, and does a smaller model run faster?

1. Wall time of `kprune.surgery.slim` on ResNet50 and DenseNet121 (224x224,
   weights=None, 30 % of every conv's filters zeroed, BatchNorm statistics
   randomized). Target: each under 10 s on 2 cores.
2. LiteRT latency of a VGG-style CNN with half the filters of every conv
   removed (lowest L1 norm) vs the original: latency speed-up vs MACs
   reduction. Target: speed-up >= 0.8 x the MACs reduction.

Run by hand (never in CI):

    python benchmarks/rebuild_speed.py

Writes benchmarks/results/rebuild_speed.json and .md.
"""

import argparse
import os
import tempfile
import time

import keras
import numpy as np
from common import command_line, machine, md_table, run_line, write_results

import kprune


def zero_filters(model, rng, fraction=0.3):
    for layer in model.layers:
        weights = layer.get_weights()
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = weights
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, gamma.shape),
                    rng.normal(0, 0.5, beta.shape),
                    rng.normal(0, 0.5, mean.shape),
                    rng.uniform(0.5, 2.0, var.shape),
                ]
            )
        elif type(layer) is keras.layers.Conv2D and weights[0].shape[-1] >= 8:
            kernel = weights[0].copy()
            dead = rng.choice(kernel.shape[-1], int(fraction * kernel.shape[-1]), False)
            kernel[..., dead] = 0.0
            weights[0] = kernel
            if len(weights) > 1:
                weights[1] = weights[1].copy()
                weights[1][dead] = 0.0
            layer.set_weights(weights)


def slim_timing(name, repeats):
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, name)(weights=None, classifier_activation=None)
    zero_filters(model, np.random.default_rng(0))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        small = kprune.surgery.slim(model)
        times.append(time.perf_counter() - start)
    x = np.random.default_rng(1).normal(size=(1, 224, 224, 3)).astype("float32")
    diff = kprune.testing.assert_same_outputs(model, small, x, rtol=1e-4)
    return {
        "model": name,
        "seconds_median": float(np.median(times)),
        "seconds_all": [round(t, 3) for t in times],
        "params_before": int(model.count_params()),
        "params_after": int(small.count_params()),
        "max_rel_diff": diff,
        "target_seconds": 10.0,
        "met": bool(np.median(times) < 10.0),
    }


def vgg(size=64, widths=(64, 128, 256)):
    inputs = keras.Input((size, size, 3))
    x = inputs
    for i, width in enumerate(widths):
        x = keras.layers.Conv2D(
            width, 3, padding="same", activation="relu", name=f"conv{i}a"
        )(x)
        x = keras.layers.Conv2D(
            width, 3, padding="same", activation="relu", name=f"conv{i}b"
        )(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="out")(x))


def latency_ratio(runs, threads):
    keras.utils.set_random_seed(0)
    model = vgg()
    plan = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            norms = np.abs(layer.get_weights()[0]).sum(axis=(0, 1, 2))
            plan[layer.name] = np.argsort(norms)[: layer.filters // 2]
    small = kprune.surgery.remove_units(model, plan)
    macs = kprune.report.summary(model)["macs"], kprune.report.summary(small)["macs"]
    with tempfile.TemporaryDirectory() as tmp:
        paths = [
            kprune.export.to_tflite(m, os.path.join(tmp, f"{n}.tflite"))
            for m, n in ((model, "original"), (small, "half"))
        ]
        # Interleave the two measurements so machine noise hits both alike.
        medians = {0: [], 1: []}
        for _ in range(3):
            for i, path in enumerate(paths):
                stats = kprune.export.measure_tflite(
                    path, num_threads=threads, runs=runs
                )
                medians[i].append(stats["latency_ms_median"])
    lat = [float(np.median(medians[0])), float(np.median(medians[1]))]
    mac_reduction = macs[0] / macs[1]
    speedup = lat[0] / lat[1]
    return {
        "model": "VGG-style CNN 64x64 (64-128-256, 2 convs each)",
        "macs_before": int(macs[0]),
        "macs_after": int(macs[1]),
        "macs_reduction": mac_reduction,
        "latency_ms_before": lat[0],
        "latency_ms_after": lat[1],
        "latency_speedup": speedup,
        "speedup_over_macs_reduction": speedup / mac_reduction,
        "num_threads": threads,
        "runs": runs,
        "target": 0.8,
        "met": bool(speedup / mac_reduction >= 0.8),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    result = {
        "benchmark": "rebuild_speed",
        "command": command_line(__file__, argv or None),
        "machine": machine(),
        "slim": [slim_timing(n, args.repeats) for n in ("ResNet50", "DenseNet121")],
        "latency": latency_ratio(args.runs, args.threads),
    }
    text = markdown(result)
    write_results("rebuild_speed", result, text)
    print(text, end="")


def markdown(result):
    lat = result["latency"]
    lines = [
        "# Rebuilder speed",
        "",
        run_line(result["command"], result["machine"]) + ".",
        "",
        *md_table(
            [
                "model",
                "slim seconds (median)",
                "params before",
                "params after",
                "max rel diff",
                "target < 10 s",
            ],
            [
                [
                    row["model"],
                    f"{row['seconds_median']:.2f}",
                    f"{row['params_before']:,}",
                    f"{row['params_after']:,}",
                    f"{row['max_rel_diff']:.1e}",
                    "met" if row["met"] else "NOT met",
                ]
                for row in result["slim"]
            ],
        ),
        "",
        *md_table(
            [
                "model",
                "MACs before",
                "MACs after",
                "MACs reduction",
                "LiteRT ms before",
                "LiteRT ms after",
                "speed-up",
                "speed-up / MACs reduction (target >= 0.8)",
            ],
            [
                [
                    f"{lat['model']}, half the filters removed",
                    f"{lat['macs_before']:,}",
                    f"{lat['macs_after']:,}",
                    f"{lat['macs_reduction']:.2f}x",
                    f"{lat['latency_ms_before']:.2f}",
                    f"{lat['latency_ms_after']:.2f}",
                    f"{lat['latency_speedup']:.2f}x",
                    f"{lat['speedup_over_macs_reduction']:.2f} "
                    f"({'met' if lat['met'] else 'NOT met'})",
                ]
            ],
        ),
        "",
        f"LiteRT: {lat['num_threads']} thread(s); latency = median over 3 "
        f"interleaved rounds of each round's median of {lat['runs']} runs.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
