"""Redundant blocks replaced by fitted Dense layers, without retraining (MNIST).

A small ViT (patch 7x7 -> 16 tokens, dim 64, pre-norm MultiHeadAttention + MLP
blocks) and a small residual CNN are trained briefly on full MNIST (CPU). Then,
with no retraining, k of their blocks are replaced by Dense layers fitted in
closed form on a few hundred training samples
(`kprune.surgery.replace_blocks`), for k = 0 .. all, choosing the blocks by

- `score`: Block Redundancy ranking (`kprune.criteria.block_redundancy`),
- `r2`: the same call ranked by the affine fit's R² instead,
- `last`: the last k blocks,
- `random`: random blocks (several seeds; mean, min and max reported),

and test accuracy (all 10,000 test images), params, MACs and LiteRT latency are
recorded. Targets: at least a third of the blocks replaced with <= 1 %
accuracy drop; the score-chosen order beats random.

Run by hand (never in CI):

    python benchmarks/blocks.py            # ~10-15 min on 2 CPU cores
    python benchmarks/blocks.py --quick    # smoke run, small subsets

Writes benchmarks/results/blocks.json and .md and docs/blocks_curve.png.
MNIST: see `common.mnist_path` ($KPRUNE_MNIST, <repo>/.data/mnist.npz,
~/.keras/datasets/mnist.npz, ../shared/data/mnist.npz), read with numpy.
"""

import os

# One BLAS thread: the fit's small float64 products only slow down when
# OpenBLAS threads compete with TensorFlow's on a shared 2-core machine.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
from common import (  # noqa: E402
    REPO,
    RESULTS,
    accuracy,
    command_line,
    compile_classifier,
    load_mnist,
    machine,
    md_table,
    read_json,
    run_line,
    write_results,
)

import kprune  # noqa: E402

DOCS = os.path.join(REPO, "docs")
L = keras.layers


@keras.saving.register_keras_serializable(package="kprune_benchmarks")
class PositionEmbedding(L.Layer):
    """Adds a learned embedding per token position."""

    def build(self, input_shape):
        self.embedding = self.add_weight(
            name="embedding",
            shape=tuple(input_shape[1:]),
            initializer=keras.initializers.RandomNormal(stddev=0.02),
        )

    def call(self, x):
        return x + self.embedding


def vit(depth=6, dim=64, heads=4, mlp=128):
    inputs = keras.Input((28, 28, 1), name="image")
    x = L.Conv2D(dim, 7, strides=7, name="patch")(inputs)
    x = L.Reshape((16, dim), name="tokens")(x)
    x = PositionEmbedding(name="position")(x)
    for i in range(depth):
        h = L.LayerNormalization(epsilon=1e-6, name=f"block{i}_ln1")(x)
        h = L.MultiHeadAttention(heads, dim // heads, name=f"block{i}_mha")(h, h)
        x = L.Add(name=f"block{i}_add1")([x, h])
        h = L.LayerNormalization(epsilon=1e-6, name=f"block{i}_ln2")(x)
        h = L.Dense(mlp, activation="gelu", name=f"block{i}_fc1")(h)
        h = L.Dense(dim, name=f"block{i}_fc2")(h)
        x = L.Add(name=f"block{i}_add2")([x, h])
    x = L.LayerNormalization(epsilon=1e-6, name="final_ln")(x)
    x = L.GlobalAveragePooling1D(name="pool")(x)
    return keras.Model(inputs, L.Dense(10, name="logits")(x), name="vit")


def resnet(stages=((16, 3), (32, 3))):
    inputs = keras.Input((28, 28, 1), name="image")
    x = L.Conv2D(stages[0][0], 3, strides=2, padding="same", name="stem_conv")(inputs)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.ReLU(name="stem_relu")(x)
    index = 0
    for s, (channels, blocks) in enumerate(stages):
        if s > 0:
            p = f"down{s}"
            h = L.Conv2D(channels, 3, strides=2, padding="same", name=f"{p}_conv1")(x)
            h = L.BatchNormalization(name=f"{p}_bn1")(h)
            h = L.ReLU(name=f"{p}_relu1")(h)
            h = L.Conv2D(channels, 3, padding="same", name=f"{p}_conv2")(h)
            h = L.BatchNormalization(name=f"{p}_bn2")(h)
            shortcut = L.Conv2D(channels, 1, strides=2, name=f"{p}_proj")(x)
            x = L.Add(name=f"{p}_add")([shortcut, h])
            x = L.ReLU(name=f"{p}_out")(x)
        for _ in range(blocks):
            p = f"block{index}"
            h = L.Conv2D(channels, 3, padding="same", name=f"{p}_conv1")(x)
            h = L.BatchNormalization(name=f"{p}_bn1")(h)
            h = L.ReLU(name=f"{p}_relu1")(h)
            h = L.Conv2D(channels, 3, padding="same", name=f"{p}_conv2")(h)
            h = L.BatchNormalization(name=f"{p}_bn2")(h)
            x = L.Add(name=f"{p}_add")([x, h])
            x = L.ReLU(name=f"{p}_out")(x)
            index += 1
    x = L.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, L.Dense(10, name="logits")(x), name="resnet")


def train(model, x, y, epochs, batch_size, lr):
    steps = epochs * int(np.ceil(len(x) / batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(lr, steps, warmup_target=None)
    compile_classifier(model, keras.optimizers.AdamW(schedule, weight_decay=1e-4))
    start = time.perf_counter()
    model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=2)
    return time.perf_counter() - start


def export(model, sample, tmp):
    path = os.path.join(tmp, f"{model.name}_{time.monotonic_ns()}.tflite")
    return kprune.export.to_tflite(model, path, sample_inputs=sample[:8])


def measure_all(paths, sample, rounds=3):
    """LiteRT latency of every file, measured in interleaved rounds.

    Returns `{path: (median of the rounds' medians, min)}` in ms.
    """
    medians = {p: [] for p in paths}
    mins = {p: [] for p in paths}
    for _ in range(rounds):
        for p in paths:
            stats = kprune.export.measure_tflite(p, runs=100, sample_inputs=sample[:1])
            medians[p].append(stats["latency_ms_median"])
            mins[p].append(stats["latency_ms_min"])
    return {p: (float(np.median(medians[p])), float(np.min(mins[p]))) for p in paths}


def orders(candidates, blocks, seeds):
    """Block orders (lists of block names) for every strategy."""
    by_score = [c.name for c in candidates if c.replaceable]
    by_r2 = [
        c.name
        for c in sorted((c for c in candidates if c.replaceable), key=lambda c: -c.r2)
    ]
    names = [b.name for b in blocks]
    result = {"score": by_score, "r2": by_r2, "last": names[::-1]}
    for seed in seeds:
        result[f"random{seed}"] = list(np.random.default_rng(seed).permutation(names))
    return result


def group_consecutive(blocks, spans):
    """Blocks in model order; with `spans`, adjacent ones as one list (one Dense)."""
    blocks = sorted(blocks, key=lambda b: b.index)
    if not spans:
        return blocks
    groups = []
    for block in blocks:
        if groups and groups[-1][-1].end is block.start:
            groups[-1].append(block)
        else:
            groups.append([block])
    return groups


def evaluate(name, model, blocks, data, args, tmp):
    x_train, y_train, x_test, y_test = data
    fit_x = x_train[-args.fit_samples :]  # the last training images
    base_acc = accuracy(model, x_test, y_test)
    base = kprune.report.summary(model)
    base_path = export(model, x_test, tmp) if args.latency else None
    print(f"[{name}] baseline accuracy {base_acc:.4f}", flush=True)

    start = time.perf_counter()
    candidates = kprune.criteria.block_redundancy(
        model, fit_x, blocks=blocks, max_samples=args.score_samples
    )
    score_seconds = time.perf_counter() - start
    by_name = {b.name: b for b in blocks}
    strategies = orders(candidates, blocks, args.seeds)
    strategies["score_span"] = strategies["score"]
    rows = []
    cache = {}
    for strategy, order in strategies.items():
        for k in range(1, len(order) + 1):
            chosen = tuple(sorted(order[:k]))
            spans = strategy == "score_span"
            key = (chosen, spans)
            if key not in cache:
                t0 = time.perf_counter()
                new, info = kprune.surgery.replace_blocks(
                    model,
                    group_consecutive([by_name[n] for n in chosen], spans),
                    fit_x,
                    fit_inputs=args.fit_inputs,
                    return_info=True,
                )
                fit_s = time.perf_counter() - t0
                s = kprune.report.summary(new)
                cache[key] = {
                    "accuracy": accuracy(new, x_test, y_test),
                    "params": s["params"],
                    "macs": s["macs"],
                    "fit_seconds": fit_s,
                    "fit_r2": [i["r2"] for i in info],
                    "model": new if strategy.startswith("score") else None,
                }
            entry = cache[key]
            row = {
                "strategy": strategy,
                "k": k,
                "blocks": list(chosen),
                "dense_layers": len(entry["fit_r2"]),
                "accuracy": entry["accuracy"],
                "drop": base_acc - entry["accuracy"],
                "params": entry["params"],
                "macs": entry["macs"],
                "fit_seconds": entry["fit_seconds"],
                "fit_r2": entry["fit_r2"],
            }
            if strategy in ("score", "score_span") and args.latency:
                if "tflite" not in entry:
                    entry["tflite"] = export(entry["model"], x_test, tmp)
                row["tflite"] = entry["tflite"]
            rows.append(row)
            print(
                f"[{name}] {strategy:8s} k={k} acc={row['accuracy']:.4f} "
                f"drop={row['drop'] * 100:+.2f}% params={row['params']}",
                flush=True,
            )
    if args.latency:
        paths = [base_path] + [r["tflite"] for r in rows if "tflite" in r]
        timings = measure_all(list(dict.fromkeys(paths)), x_test)
        base_ms = timings[base_path]
        for r in rows:
            if "tflite" in r:
                r["latency_ms_median"], r["latency_ms_min"] = timings[r.pop("tflite")]
    else:
        base_ms = (None, None)
    # The paper's setting for comparison: every block fitted on the original
    # model's activations (one pass), score order.
    paper = []
    for k in range(1, len(strategies["score"]) + 1):
        chosen = [by_name[n] for n in strategies["score"][:k]]
        new = kprune.surgery.replace_blocks(model, chosen, fit_x, fit_inputs="original")
        paper.append({"k": k, "accuracy": accuracy(new, x_test, y_test)})
    return {
        "model": name,
        "blocks": [b.name for b in blocks],
        "baseline": {
            "accuracy": base_acc,
            "params": base["params"],
            "macs": base["macs"],
            "latency_ms_median": base_ms[0],
            "latency_ms_min": base_ms[1],
        },
        "candidates": [c.to_dict() for c in candidates],
        "score_seconds": score_seconds,
        "rows": rows,
        "original_inputs_score_order": paper,
    }


def best_within(result, strategy, tolerance=0.01):
    """Largest k whose accuracy drop is <= tolerance (for one strategy)."""
    ks = [
        r["k"]
        for r in result["rows"]
        if r["strategy"] == strategy and r["drop"] <= tolerance
    ]
    return max(ks, default=0)


def random_curve(result, seeds):
    by_k = {}
    for r in result["rows"]:
        if r["strategy"].startswith("random"):
            by_k.setdefault(r["k"], []).append(r["accuracy"])
    return {k: (np.mean(v), np.min(v), np.max(v)) for k, v in sorted(by_k.items())}


LABELS = {
    "score": "Block Redundancy order",
    "score_span": "same, adjacent blocks as one Dense",
    "r2": "fit R² order",
    "last": "last k",
}


def plot(results, seeds, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4))
    axes = np.atleast_1d(axes)
    for ax, result in zip(axes, results):
        base = result["baseline"]["accuracy"]
        for strategy, style in [
            ("score", "o-"),
            ("score_span", "D-."),
            ("r2", "s--"),
            ("last", "^:"),
        ]:
            rows = [r for r in result["rows"] if r["strategy"] == strategy]
            ax.plot(
                [0] + [r["k"] for r in rows],
                [100 * base] + [100 * r["accuracy"] for r in rows],
                style,
                label=LABELS[strategy],
            )
        curve = random_curve(result, seeds)
        ks = [0] + list(curve)
        ax.plot(
            ks,
            [100 * base] + [100 * v[0] for v in curve.values()],
            "x-",
            color="gray",
            label=f"random ({len(seeds)} seeds, mean, min-max)",
        )
        ax.fill_between(
            ks,
            [100 * base] + [100 * v[1] for v in curve.values()],
            [100 * base] + [100 * v[2] for v in curve.values()],
            color="gray",
            alpha=0.2,
        )
        ax.axhline(100 * base - 1, color="red", lw=0.8, ls="--", label="baseline - 1 %")
        ax.set_title(f"{result['model']}: blocks replaced by fitted Dense")
        ax.set_xlabel("blocks replaced (no retraining)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(max(0, 100 * base - 30), 100 * base + 1)
        ax.legend(fontsize=8, loc="lower left")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fmt_ms(ms):
    return "-" if ms is None else f"{ms:.3f}"


def markdown(report):
    m = report["machine"]
    lines = [
        "# Redundant blocks replaced by fitted Dense layers (MNIST)",
        "",
        run_line(report["command"], m) + ". "
        f"Fit: last {report['fit_samples']} training images "
        f"(`fit_inputs='{report['fit_inputs']}'`), no retraining; accuracy on "
        f"{report['test_samples']:,} test images. LiteRT: float32, 1 thread, "
        "batch 1, median of 100 runs (median over 3 interleaved rounds). MACs per image: `kprune.report.summary` (MultiHeadAttention "
        "included: projections and attention products).",
        "",
    ]
    for result in report["results"]:
        base = result["baseline"]
        n = len(result["blocks"])
        lines += [
            f"## {result['model']} ({n} blocks, trained {result['train_seconds']:.0f} s, "
            f"baseline accuracy {100 * base['accuracy']:.2f} %)",
            "",
        ]
        rows = [
            [
                "baseline",
                0,
                "-",
                0,
                f"{100 * base['accuracy']:.2f}",
                0,
                f"{base['params']:,}",
                f"{base['macs']:,}",
                fmt_ms(base["latency_ms_median"]),
            ]
        ]
        for r in result["rows"]:
            if r["strategy"].startswith("random"):
                continue
            rows.append(
                [
                    r["strategy"],
                    r["k"],
                    ", ".join(r["blocks"]),
                    r["dense_layers"],
                    f"{100 * r['accuracy']:.2f}",
                    f"{100 * r['drop']:.2f}",
                    f"{r['params']:,}",
                    f"{r['macs']:,}",
                    fmt_ms(r.get("latency_ms_median")),
                ]
            )
        for k, (mean, lo, hi) in random_curve(result, report["seeds"]).items():
            rows.append(
                [
                    f"random (mean of {len(report['seeds'])})",
                    k,
                    "-",
                    k,
                    f"{100 * mean:.2f} ({100 * lo:.2f}-{100 * hi:.2f})",
                    f"{100 * (base['accuracy'] - mean):.2f}",
                    "",
                    "",
                    "",
                ]
            )
        header = [
            "strategy",
            "k",
            "blocks",
            "Dense layers",
            "accuracy %",
            "drop (points)",
            "params",
            "MACs",
            "LiteRT ms",
        ]
        lines += md_table(header, rows)
        paper = ", ".join(
            f"k={p['k']}: {100 * p['accuracy']:.2f}"
            for p in result["original_inputs_score_order"]
        )
        lines += [
            "",
            f"Score order with every block fitted on the *original* model's "
            f"activations (the paper's setting): {paper}.",
            "",
            "Block Redundancy ranking (normalized BR; R² of the affine fit):",
            "",
            *md_table(
                ["rank", "block", "BR", "cosine", "R²"],
                [
                    [
                        c["rank"],
                        c["name"],
                        f"{c['redundancy']:.4f}",
                        f"{c['cosine']:.4f}",
                        f"{c['r2']:.4f}",
                    ]
                    for c in result["candidates"]
                ],
            ),
        ]
        lines.append("")
    lines += ["## Targets", ""]
    for t in report["targets"]:
        lines.append(f"- {t}")
    return "\n".join(lines) + "\n"


def target_lines(results, seeds):
    """The targets, one line per model, from the measured rows."""
    lines = []
    for result in results:
        n = len(result["blocks"])
        need = int(np.ceil(n / 3))
        k_score = best_within(result, "score")
        curve = random_curve(result, seeds)
        score_acc = {
            r["k"]: r["accuracy"] for r in result["rows"] if r["strategy"] == "score"
        }
        better = [k for k in curve if score_acc[k] > curve[k][0]]
        worse = [k for k in curve if score_acc[k] < curve[k][0]]
        met = "met" if k_score >= need else "NOT met"
        lines.append(
            f"{result['model']}: {k_score} of {n} blocks replaced with <= 1 point "
            f"accuracy drop by the Block Redundancy order (target >= {need}: {met}); "
            f"last-k reaches {best_within(result, 'last')}, R² order "
            f"{best_within(result, 'r2')}, random seeds "
            + ", ".join(str(best_within(result, f"random{s}")) for s in seeds)
            + f". Score order above the random mean at k = {better or 'none'}, "
            f"below it at k = {worse or 'none'} (equal elsewhere)."
        )
    return lines


def write_outputs(report, out, png_dir, suffix):
    report["targets"] = target_lines(report["results"], report["seeds"])
    write_results(f"blocks{suffix}", report, markdown(report), out=out, indent=1)
    plot(
        report["results"],
        report["seeds"],
        os.path.join(png_dir, f"blocks_curve{suffix}.png"),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run")
    parser.add_argument("--fit-samples", type=int, default=1000)
    parser.add_argument("--score-samples", type=int, default=500)
    parser.add_argument("--fit-inputs", default="replaced")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--vit-epochs", type=int, default=4)
    parser.add_argument("--cnn-epochs", type=int, default=2)
    parser.add_argument("--no-latency", dest="latency", action="store_false")
    parser.add_argument("--out", default=RESULTS)
    parser.add_argument(
        "--render", action="store_true", help="only rewrite .md/.png from the JSON"
    )
    args = parser.parse_args()
    if args.render:
        report = read_json(os.path.join(args.out, "blocks.json"))
        write_outputs(report, args.out, DOCS, "")
        return
    command = command_line(__file__)
    keras.utils.set_random_seed(0)
    data = load_mnist(flat=False)
    if args.quick:
        x_train, y_train, x_test, y_test = data
        data = (x_train[:2000], y_train[:2000], x_test[:500], y_test[:500])
        args.vit_epochs = args.cnn_epochs = 1
        args.fit_samples, args.score_samples = 200, 100
        if args.out == RESULTS:
            args.out = os.path.join(tempfile.gettempdir(), "kprune_blocks_quick")
    total = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, build, epochs, lr, key in [
            ("ViT", vit, args.vit_epochs, 2e-3, r"^(block\d+)_"),
            ("ResNet", resnet, args.cnn_epochs, 3e-3, r"^(block\d+|down\d+)_"),
        ]:
            keras.utils.set_random_seed(0)
            model = build()
            seconds = train(model, data[0], data[1], epochs, 128, lr)
            blocks = kprune.surgery.find_blocks(
                model, min_layers=2, key=key, replaceable_only=True
            )
            result = evaluate(name, model, blocks, data, args, tmp)
            result["train_seconds"] = seconds
            result["epochs"] = epochs
            results.append(result)
    targets = target_lines(results, args.seeds)
    report = {
        "command": command,
        "machine": machine(),
        "fit_samples": args.fit_samples,
        "score_samples": args.score_samples,
        "fit_inputs": args.fit_inputs,
        "test_samples": len(data[2]),
        "seeds": args.seeds,
        "results": results,
        "targets": targets,
        "total_seconds": time.perf_counter() - total,
    }
    suffix = "_quick" if args.quick else ""
    write_outputs(report, args.out, args.out if args.quick else DOCS, suffix)
    print("\n".join(targets))
    print(f"total {report['total_seconds']:.0f} s")


if __name__ == "__main__":
    main()
