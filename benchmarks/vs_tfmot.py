"""kprune `MagnitudePruning` (Keras 3) vs TFMOT `prune_low_magnitude` (tf-keras).

Same LeNet-300-100, same full MNIST, same dense starting weights, same
optimizer (SGD, Nesterov momentum 0.9, lr 0.01 = 1/10 of the dense lr),
same batch size, same epochs, and the same Zhu & Gupta polynomial schedule
(initial 0, final 90 / 95 / 98 %, pruning every `frequency` steps from step
0 until the end of the second-to-last epoch; the last epoch fine-tunes with
the masks fixed), all three Dense kernels. TFMOT prunes each layer to the
scheduled sparsity; kprune runs twice, with the same layer-wise rule
(`scope="layer"`) and with one magnitude ranking over all layers
(`scope="global"`, same overall sparsity), which TFMOT does not offer.

TFMOT runs in its own process under a separate virtualenv with tf-keras
(importing TFMOT flips a process to legacy Keras):

    python3 -m venv .venv-tfmot
    .venv-tfmot/bin/pip install "tensorflow==2.21.*" "tf-keras==2.21.*" \
        tensorflow-model-optimization

Reported for both: test accuracy (mean over `--seeds`, runs interleaved),
seconds per epoch (the least-contended epoch, i.e. the minimum, and the
median, first epoch of each run left out since it traces; the machine is
shared, so minima are the fairer figure), a dense (no pruning) epoch in each
framework to separate the framework's own speed from the pruning overhead,
and TFLite bytes raw / gzipped / sparse-encoded (`EXPERIMENTAL_SPARSITY`).
kprune's files are given for the stripped model and after
`kprune.surgery.slim` (neurons without inputs or outputs removed), which
TFMOT cannot do.

Targets (issue 4): kprune accuracy >= TFMOT at every sparsity; kprune's
smallest file <= TFMOT's smallest; kprune's epoch time <= TFMOT's.

Run by hand (never in CI):

    python benchmarks/vs_tfmot.py                     # defaults
    python benchmarks/vs_tfmot.py --epochs 4 --dense-epochs 5

Writes benchmarks/results/vs_tfmot.json and .md.
"""

import argparse
import json
import os
import subprocess
import tempfile
import time

import keras
import numpy as np
from common import (
    HERE,
    REPO,
    EpochTimer,
    accuracy,
    command_line,
    compile_classifier,
    count_params,
    gzip_bytes,
    lenet_300_100,
    load_mnist,
    machine,
    md_table,
    mnist_path,
    nesterov_sgd,
    test_error,
    write_results,
)

import kprune
from kprune.callbacks import MagnitudePruning
from kprune.pruning import PolynomialDecay, strip_pruning

WORKER = os.path.join(HERE, "_tfmot_worker.py")
KPRUNE_KEYS = ("kprune", "kprune_global")
LABELS = {
    "kprune": "kprune (layer-wise)",
    "kprune_global": "kprune (global)",
    "tfmot": "tfmot",
}


def kprune_run(weights, data, args, sparsity, end_step, tmp, seed, scope="layer"):
    x, y, xt, yt = data
    keras.utils.set_random_seed(seed)
    model = lenet_300_100()
    model.set_weights(weights)
    compile_classifier(model, nesterov_sgd(args.lr / 10))
    timer = EpochTimer()
    callbacks = [timer]
    if sparsity is not None:
        schedule = PolynomialDecay(
            0.0, sparsity, begin_step=0, end_step=end_step, frequency=args.frequency
        )
        callbacks.insert(0, MagnitudePruning(sparsity=schedule, scope=scope))
    start = time.perf_counter()
    model.fit(
        x,
        y,
        batch_size=args.batch_size,
        epochs=args.epochs,
        verbose=0,
        callbacks=callbacks,
    )
    fit_seconds = time.perf_counter() - start
    result = {
        "framework": "kprune",
        "scope": scope,
        "keras": keras.__version__,
        "mode": "dense" if sparsity is None else "prune",
        "sparsity_target": sparsity,
        "seed": seed,
        "epoch_seconds": timer.seconds,
        "fit_seconds": fit_seconds,
    }
    if sparsity is None:
        return result
    stripped = strip_pruning(model)
    result["test_accuracy"] = accuracy(stripped, xt, yt)
    kernels = {layer.name: layer.kernel.numpy() for layer in stripped.layers}
    result["kept_per_layer"] = {
        n: float(np.count_nonzero(k)) / k.size for n, k in kernels.items()
    }
    small = kprune.surgery.slim(stripped)
    result["slim_params"] = count_params(small)[0]
    result["slim_widths"] = [int(lay.kernel.shape[-1]) for lay in small.layers]
    for prefix, m in (("", stripped), ("slim_", small)):
        for tag, sparse in (("raw", False), ("sparse", True)):
            path = os.path.join(
                tmp, f"kprune_{scope}_{sparsity}_{seed}_{prefix}{tag}.tflite"
            )
            kprune.export.to_tflite(m, path, sparse=sparse, sample_inputs=xt[:16])
            result[f"tflite_{prefix}{tag}_bytes"] = os.path.getsize(path)
            result[f"tflite_{prefix}{tag}_gzip_bytes"] = gzip_bytes(path)
    return result


def tfmot_run(weights_path, args, sparsity, end_step, tmp, seed):
    out = os.path.join(tmp, f"tfmot_{sparsity}_{seed}.json")
    cmd = [
        args.tfmot_python,
        WORKER,
        "--data",
        mnist_path(),
        "--weights",
        weights_path,
        "--mode",
        "dense" if sparsity is None else "prune",
        "--sparsity",
        str(sparsity or 0.0),
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(args.batch_size),
        "--lr",
        str(args.lr / 10),
        "--end-step",
        str(end_step),
        "--frequency",
        str(args.frequency),
        "--seed",
        str(seed),
        "--out",
        out,
    ]
    if sparsity is not None:
        cmd += ["--tflite-dir", tmp]
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"TFMOT worker failed:\n{proc.stderr[-4000:]}")
    with open(out) as f:
        return json.load(f)


def _epochs(runs):
    # The first epoch of a run includes tracing: left out.
    return [t for r in runs for t in r["epoch_seconds"][1:]]


def _min_epoch(runs):
    """Least-contended epoch time (the machine is shared): min over runs."""
    return float(np.min(_epochs(runs)))


def _median_epoch(runs):
    return float(np.median(_epochs(runs)))


def _smallest(runs):
    return min(
        v
        for r in runs
        for k, v in r.items()
        if k.startswith("tflite_") and k.endswith("_bytes")
    )


def _mean(runs, key):
    return float(np.mean([r[key] for r in runs]))


def markdown(result):
    a = result["args"]
    lines = [
        "# kprune MagnitudePruning vs TFMOT prune_low_magnitude (LeNet-300-100, MNIST)",
        "",
        f"`{result['command']}` on {result['machine']['platform']}, "
        f"{result['machine']['cpu_count']} CPUs (shared with other jobs: load "
        f"average {result['load_average']}), {result['machine']['date']} "
        f"({result['total_seconds']:.0f} s in all). Dense start (Keras 3, same "
        f"weights for both): test error {100 * result['dense_test_error']:.2f} % "
        f"after {a['dense_epochs']} epochs. Pruning: {a['epochs']} epochs of "
        f"SGD (Nesterov 0.9, lr {a['lr'] / 10:g}), batch {a['batch_size']}, "
        f"polynomial schedule 0 -> target by step {result['end_step']}, every "
        f"{a['frequency']} steps; seeds {a['seeds']} (accuracy: mean over seeds).",
        "",
    ]

    def sizes(r, prefix=""):
        return [
            f"{r[f'tflite_{prefix}{kind}_bytes']:,}"
            for kind in ("raw", "raw_gzip", "sparse", "sparse_gzip")
        ]

    rows = []
    for row in result["rows"]:
        sparsity = f"{100 * row['sparsity']:.0f} %"
        for name in ("kprune", "kprune_global", "tfmot"):
            runs = row[name]
            accs = ", ".join(f"{100 * r['test_accuracy']:.2f}" for r in runs)
            rows.append(
                [
                    sparsity,
                    LABELS[name],
                    f"{100 * _mean(runs, 'test_accuracy'):.2f} % ({accs})",
                    f"{_min_epoch(runs):.2f} ({_median_epoch(runs):.2f})",
                    *sizes(runs[0]),
                ]
            )
        for key in KPRUNE_KEYS:
            r = row[key][0]
            rows.append(
                [
                    sparsity,
                    f"{LABELS[key]} + slim (widths {r['slim_widths']})",
                    "same",
                    "",
                    *sizes(r, "slim_"),
                ]
            )
    header = [
        "sparsity",
        "framework",
        "test accuracy (per seed)",
        "s / epoch min (median)",
        "TFLite raw",
        "raw gzip",
        "sparse-encoded",
        "sparse gzip",
    ]
    lines += md_table(header, rows)
    d = result["dense_epoch_seconds"]
    lines += [
        "",
        "File sizes are those of the first seed. Dense (no pruning) epochs, same "
        f"recipe, min (median): Keras 3 {d['kprune']['min']:.2f} "
        f"({d['kprune']['median']:.2f}) s, tf-keras {d['tfmot']['min']:.2f} "
        f"({d['tfmot']['median']:.2f}) s.",
        "",
        "Targets:",
        "",
    ]
    for name, met, detail in result["targets"]:
        lines.append(f"- {name}: {'met' if met else 'NOT met'} ({detail})")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsities", default="0.9,0.95,0.98")
    parser.add_argument("--dense-epochs", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--frequency", type=int, default=100)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument(
        "--tfmot-python",
        default=os.path.join(REPO, ".venv-tfmot", "bin", "python"),
    )
    parser.add_argument("--name", default="vs_tfmot")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.tfmot_python):
        raise SystemExit(
            f"No TFMOT virtualenv python at {args.tfmot_python}; create it as the "
            "module docstring says, or pass --tfmot-python."
        )
    seeds = [int(v) for v in args.seeds.split(",")]
    start = time.perf_counter()
    data = load_mnist(flat=True)
    x, y, xt, yt = data
    steps_per_epoch = int(np.ceil(len(x) / args.batch_size))
    end_step = steps_per_epoch * (args.epochs - 1)

    keras.utils.set_random_seed(seeds[0])
    dense = lenet_300_100()
    compile_classifier(
        dense, nesterov_sgd(args.lr, args.dense_epochs * steps_per_epoch)
    )
    dense.fit(x, y, batch_size=args.batch_size, epochs=args.dense_epochs, verbose=0)
    dense_err = test_error(dense, xt, yt)
    weights = [np.asarray(w) for w in dense.get_weights()]
    print(f"dense test error {dense_err:.4f}", flush=True)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        weights_path = os.path.join(tmp, "dense.npz")
        np.savez(weights_path, *weights)
        dense_k = kprune_run(weights, data, args, None, end_step, tmp, seeds[0])
        dense_t = tfmot_run(weights_path, args, None, end_step, tmp, seeds[0])
        for s in [float(v) for v in args.sparsities.split(",")]:
            row = {"sparsity": s, "kprune": [], "kprune_global": [], "tfmot": []}
            for seed in seeds:  # interleaved, so load changes hit both sides
                k = kprune_run(weights, data, args, s, end_step, tmp, seed)
                t = tfmot_run(weights_path, args, s, end_step, tmp, seed)
                g = kprune_run(weights, data, args, s, end_step, tmp, seed, "global")
                row["kprune"].append(k)
                row["tfmot"].append(t)
                row["kprune_global"].append(g)
                print(
                    json.dumps(
                        {
                            "sparsity": s,
                            "seed": seed,
                            "kprune_acc": k["test_accuracy"],
                            "kprune_global_acc": g["test_accuracy"],
                            "tfmot_acc": t["test_accuracy"],
                        }
                    ),
                    flush=True,
                )
            rows.append(row)

    def acc_check(key):
        ok = all(
            _mean(r[key], "test_accuracy") >= _mean(r["tfmot"], "test_accuracy")
            for r in rows
        )
        detail = ", ".join(
            f"{100 * r['sparsity']:.0f} %: "
            f"{100 * _mean(r[key], 'test_accuracy'):.2f} vs "
            f"{100 * _mean(r['tfmot'], 'test_accuracy'):.2f}"
            for r in rows
        )
        return ok, detail

    acc_ok, accs = acc_check("kprune_global")
    layer_ok, layer_accs = acc_check("kprune")
    k_small = min(_smallest(r[key]) for r in rows for key in KPRUNE_KEYS)
    t_small = min(_smallest(r["tfmot"]) for r in rows)
    # Epoch time: the layer-wise runs do exactly TFMOT's work.
    k_runs = [run for r in rows for run in r["kprune"]]
    g_runs = [run for r in rows for run in r["kprune_global"]]
    t_runs = [run for r in rows for run in r["tfmot"]]
    result = {
        "command": command_line(__file__, argv),
        "machine": machine(),
        "load_average": [round(v, 1) for v in os.getloadavg()],
        "args": vars(args),
        "end_step": end_step,
        "dense_test_error": dense_err,
        "dense_epoch_seconds": {
            name: {"min": _min_epoch([run]), "median": _median_epoch([run])}
            for name, run in (("kprune", dense_k), ("tfmot", dense_t))
        },
        "dense_runs": {"kprune": dense_k, "tfmot": dense_t},
        "rows": rows,
        "targets": [
            (
                "kprune accuracy >= TFMOT at every sparsity (mean over seeds; "
                'kprune with `scope="global"`, one magnitude ranking over all '
                "layers, which TFMOT does not offer)",
                acc_ok,
                accs,
            ),
            (
                "the same with kprune's layer-wise rule, TFMOT's own rule "
                "(for information)",
                layer_ok,
                layer_accs,
            ),
            (
                "kprune smallest file <= TFMOT smallest",
                k_small <= t_small,
                f"{k_small:,} vs {t_small:,} bytes",
            ),
            (
                "kprune epoch time <= TFMOT (least-contended epoch, layer-wise runs)",
                _min_epoch(k_runs) <= _min_epoch(t_runs),
                f"layer-wise: min {_min_epoch(k_runs):.2f} s vs "
                f"{_min_epoch(t_runs):.2f} s; median {_median_epoch(k_runs):.2f} s "
                f"vs {_median_epoch(t_runs):.2f} s; global: min "
                f"{_min_epoch(g_runs):.2f} s, median {_median_epoch(g_runs):.2f} s",
            ),
        ],
    }
    result["total_seconds"] = time.perf_counter() - start
    text = markdown(result)
    write_results(args.name, result, text)
    print(text)


if __name__ == "__main__":
    main()
