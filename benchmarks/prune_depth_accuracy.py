"""What removing whole residual blocks costs in accuracy (issue 21, depth).

A MobileNetV2 (`keras.applications`, `alpha=0.35`, 32x32 inputs: MNIST
zero-padded to 32x32) is trained on MNIST, then pruned with
`kprune.prune(importance="l2", round_to=8)` to 4x fewer MACs: widths
alone, `depth=2` and `depth=4` (the most redundant residual blocks removed
whole, the widths taking the rest of the budget), and `depth="auto"` with
the int8 estimate. Every pruned model is fine-tuned with the same recipe
(Adam, cosine learning rate; BatchNorm statistics recomputed on 2048
training images after each training) and its test error reported with its MACs and
its number of TFLite-relevant layers.

The first `--train-samples` training images train (nothing is tuned here,
so no validation split is read); the 10k test images are read once per row,
after fine-tuning (and once for the one-shot error before it).

    python benchmarks/prune_depth_accuracy.py --train-samples 55000 \
        --dense-epochs 3 --finetune-epochs 1

`--seeds 0 1 2` repeats the whole run (dense training, pruning,
fine-tuning) per seed and adds the mean and spread per depth. Writes
benchmarks/results/prune_depth_accuracy{--tag}.json / .md.
"""

import argparse
import time

import keras
import numpy as np
from common import (
    command_line,
    load_mnist,
    machine,
    md_table,
    now,
    test_error,
    write_results,
)
from prune_budget import recalibrate_bn

import kprune

L = keras.layers


def mobilenet(seed):
    keras.utils.set_random_seed(seed)
    return keras.applications.MobileNetV2(
        weights=None, input_shape=(32, 32, 1), alpha=0.35, classes=10
    )


def compile_(model, lr, steps):
    model.compile(
        optimizer=keras.optimizers.Adam(
            keras.optimizers.schedules.CosineDecay(lr, steps)
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=["accuracy"],
        jit_compile=False,
    )
    return model


def train(model, x, y, epochs, args, seed):
    steps = max(1, epochs * -(-len(x) // args.batch))
    compile_(model, args.lr, steps)
    keras.utils.set_random_seed(seed)
    model.fit(x, y, batch_size=args.batch, epochs=epochs, verbose=0)
    # MobileNetV2's BatchNormalization (momentum 0.999) lags by ~1000 steps:
    # recompute the moving statistics on training images (no weight update).
    return recalibrate_bn(model, x, args.bn_images)


def pad(images):
    return np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dense-epochs", type=int, default=2)
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--train-samples", type=int, default=55000)
    parser.add_argument("--calibration", type=int, default=256)
    parser.add_argument("--budget", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--tag", default="", help="suffix of the results' name")
    parser.add_argument(
        "--bn-images",
        type=int,
        default=2048,
        help="training images BatchNorm statistics are recomputed on",
    )
    parser.add_argument(
        "--depths", nargs="+", default=["none", "2", "4", "auto"], help="none, N, auto"
    )
    return parser.parse_args(argv)


def run(args, argv=None, name=None):
    x, y, xt, yt = load_mnist(flat=False)
    x, y, xt = pad(x), y, pad(xt)
    x, y = x[: args.train_samples], y[: args.train_samples]
    result = {
        "command": command_line(__file__, argv),
        "machine": machine(),
        "date": now(),
        "args": vars(args),
        "denses": [],
        "rows": [],
    }
    for seed in args.seeds:
        run_seed(args, seed, (x, y, xt, yt), result)
        result["dense"] = result["denses"][0]
        if name:  # after each seed: a long run that is stopped keeps its seeds
            write_results(name, result, "\n".join(render(result)) + "\n")
    return result


def run_seed(args, seed, data, result):
    """One seed: the dense model, then each depth pruned and fine-tuned."""
    x, y, xt, yt = data
    start = time.perf_counter()
    dense = train(mobilenet(seed), x, y, args.dense_epochs, args, seed)
    base = kprune.report.summary(dense)
    result["denses"].append(
        {
            "seed": seed,
            "test_error": test_error(dense, xt, yt),
            "macs": base["macs"],
            "params": base["params"],
            "layers": len(dense.layers),
            "seconds": time.perf_counter() - start,
        }
    )
    print("dense", result["denses"][-1], flush=True)
    cal = x[: args.calibration]
    for depth in args.depths:
        value = None if depth == "none" else depth if depth == "auto" else int(depth)
        start = time.perf_counter()
        small, plan = kprune.prune(
            dense,
            cal,
            macs=1.0 / args.budget,
            round_to=8,
            activation_cost="int8",
            depth=value,
        )
        one_shot = test_error(small, xt, yt)
        train(small, x, y, args.finetune_epochs, args, seed)
        row = {
            "seed": seed,
            "depth": depth,
            "blocks": plan.blocks,
            "macs_ratio": plan.report["macs_ratio"],
            "layers": len(small.layers),
            "one_shot_test_error": one_shot,
            "test_error": test_error(small, xt, yt),
            "seconds": time.perf_counter() - start,
        }
        result["rows"].append(row)
        print(row, flush=True)


def _over_seeds(result):
    """Rows of mean, spread and n per depth (in the order first run)."""
    depths, errors, blocks = [], {}, {}
    for row in result["rows"]:
        if row["depth"] not in errors:
            depths.append(row["depth"])
        errors.setdefault(row["depth"], []).append(100 * row["test_error"])
        blocks.setdefault(row["depth"], []).append(len(row["blocks"]))
    dense = [100 * d["test_error"] for d in result.get("denses", [])]
    lines = [["dense", "0", f"{np.mean(dense):.2f} %", _spread(dense), len(dense)]]
    for depth in depths:
        e = errors[depth]
        low, high = min(blocks[depth]), max(blocks[depth])
        removed = f"{low}-{high}" if low != high else str(low)
        lines.append([depth, removed, f"{np.mean(e):.2f} %", _spread(e), len(e)])
    return lines


def _spread(values):
    return f"{min(values):.2f}-{max(values):.2f}" if values else "-"


def render(result):
    """The markdown page of a result (its `notes`, if any, at the end)."""
    args = argparse.Namespace(**result["args"])
    lines = [
        "# Depth pruning: accuracy at 4x fewer MACs (issue 21)",
        "",
        f"Run: `{result['command']}` on {result['machine']['platform']}, "
        f"{result['machine']['cpu_count']} CPUs, {result['date']}.",
        "",
        "MobileNetV2 (alpha 0.35, 32x32 MNIST), `kprune.prune(importance='l2', "
        "round_to=8, activation_cost='int8', depth=...)`, then "
        f"{args.finetune_epochs} fine-tuning epoch(s); dense trained "
        f"{args.dense_epochs} epoch(s); test error on the 10k test images. "
        f"Dense (seed {result['dense'].get('seed', 0)}): "
        f"{100 * result['dense']['test_error']:.2f} %.",
        "",
    ]
    seeds = [d["seed"] for d in result.get("denses", [])]
    if len(seeds) > 1:
        lines += [
            f"Mean over seeds {seeds} (each seed its own "
            "dense model, pruning and fine-tuning; fine-tuned test error):",
            "",
        ]
        lines += md_table(
            ["depth", "blocks removed", "mean", "range", "n"], _over_seeds(result)
        )
        lines += ["", "Per seed:", ""]
    rows = [
        [
            r.get("seed", result["args"].get("seed", 0)),
            r["depth"],
            len(r["blocks"]),
            f"{r['macs_ratio']:.3f}",
            r["layers"],
            f"{100 * r['one_shot_test_error']:.2f} %",
            f"{100 * r['test_error']:.2f} %",
        ]
        for r in result["rows"]
    ]
    lines += md_table(
        [
            "seed",
            "depth",
            "blocks removed",
            "MACs ratio",
            "layers",
            "one-shot",
            "fine-tuned",
        ],
        rows,
    )
    if result.get("notes"):
        lines += ["", result["notes"].strip()]
    return lines


def main(argv=None):
    args = parse(argv)
    run(args, argv, name="prune_depth_accuracy" + args.tag)


if __name__ == "__main__":
    main()
