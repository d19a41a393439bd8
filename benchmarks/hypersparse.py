"""HyperSparse + ART against L1 + ART, one-shot and iterative magnitude pruning.

Every method gets the same total epoch budget on the same data:

1. a shared dense warm-up of `--warmup` epochs (SGD with momentum), the
   same weights for every method and sparsity;
2. `--epochs - --warmup` further epochs, starting from those weights with a
   fresh optimizer, during which each method reaches the target sparsity
   and fine-tunes; the learning rate drops 10x for the last
   `--final-lr-epochs` epochs of every method.

Methods:

- `hs_art`: `kprune.callbacks.AdaptiveRegularization` with HyperSparse;
  ART is capped so that at least `--min-fine-tune` epochs remain.
- `l1_art`: the same with `regularizer="l1"` (one flag).
- `oneshot`: `kprune.callbacks.MagnitudePruning(sparsity=k, scope="global")`
  at the first step, then fine-tuning with the mask fixed.
- `iterative`: iterative magnitude pruning with retraining (Han et al.),
  global, pruning at the start of every epoch along Zhu & Gupta's cubic
  schedule from 0 to `k` over the first 60 % of the epochs, then
  fine-tuning.

Models and datasets are parameters (`MODELS`, `DATASETS`); a CIFAR-10
ResNet-32 row can be added there.

Usage:

    python benchmarks/hypersparse.py                       # the full grid
    python benchmarks/hypersparse.py --models lenet300 --sparsities 0.99 \\
        --methods hs_art l1_art --out hypersparse_quick    # one column
    python benchmarks/hypersparse.py --overhead            # step time only
    python benchmarks/hypersparse.py --plot                # table + plot from JSON

On a GPU machine without TensorFlow, `KERAS_BACKEND=jax` runs the same
training code (kprune's callbacks support JAX).
"""

import argparse
import json
import math
import os
import sys
import time

import keras
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

import kprune  # noqa: E402
from kprune.callbacks import AdaptiveRegularization, MagnitudePruning  # noqa: E402
from kprune.pruning import PolynomialDecay  # noqa: E402

MODELS = {"lenet300": (common.lenet_300_100, True), "lenet5": (common.lenet_5, False)}
DATASETS = {"mnist": common.load_mnist}
METHODS = ("hs_art", "l1_art", "oneshot", "iterative")
LABELS = {
    "hs_art": "HyperSparse + ART",
    "l1_art": "L1 + ART",
    "oneshot": "one-shot magnitude + fine-tune",
    "iterative": "iterative magnitude (Han)",
}


def compile_model(model, lr):
    model.compile(
        keras.optimizers.SGD(lr, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def lr_drop(lr, epochs, final):
    def schedule(epoch):
        return lr if epoch < epochs - final else lr / 10

    return keras.callbacks.LearningRateScheduler(schedule)


def kernel_sparsity(model):
    layers = kprune.pruning.prunable_layers(model)
    zeros = total = 0
    for layer, attr, _ in layers.values():
        k = keras.ops.convert_to_numpy(getattr(layer, attr))
        zeros += int(np.sum(k == 0))
        total += k.size
    return zeros / total


def method_callbacks(method, sparsity, args, epochs, steps_per_epoch, eval_data):
    if method in ("hs_art", "l1_art"):
        hs = method == "hs_art"
        return [
            AdaptiveRegularization(
                sparsity,
                eval_data=eval_data,
                regularizer="hypersparse" if hs else "l1",
                initial_strength=args.hs_lambda if hs else args.l1_lambda,
                growth=args.growth,
                window=args.window,
                max_art_epochs=epochs - args.min_fine_tune,
                refresh_every=args.refresh_every,
                eval_batch_size=2048,
            )
        ]
    if method == "oneshot":
        return [MagnitudePruning(sparsity=sparsity, scope="global", log_layers=False)]
    if method == "iterative":
        prune_epochs = max(1, round(0.6 * epochs))
        schedule = PolynomialDecay(
            0.0, sparsity, begin_step=0, end_step=prune_epochs, frequency=1
        )
        return [
            MagnitudePruning(
                sparsity=schedule,
                scope="global",
                schedule_unit="epoch",
                log_layers=False,
            )
        ]
    raise ValueError(f"unknown method {method!r}")


def run_model(name, args, rows):
    build, flat = MODELS[name]
    x, y, xt, yt = DATASETS[args.dataset](flat)
    rng = np.random.default_rng(args.seed)
    eval_idx = rng.choice(len(x), args.eval_samples, replace=False)
    eval_data = (x[eval_idx], y[eval_idx])
    steps = math.ceil(len(x) / args.batch_size)
    keras.utils.set_random_seed(args.seed)
    model = compile_model(build(), args.lr)
    warm_path = args.warm_weights and f"{args.warm_weights}.{name}.npz"
    if warm_path and os.path.exists(warm_path):
        # A warm-up shared by several processes (parallel runs on one GPU).
        with np.load(warm_path) as f:
            model.set_weights([f[f"w{i}"] for i in range(len(f.files) - 1)])
            warm_seconds = float(f["seconds"])
    else:
        start = time.perf_counter()
        model.fit(x, y, batch_size=args.batch_size, epochs=args.warmup, verbose=0)
        warm_seconds = time.perf_counter() - start
        if warm_path:
            arrays = {f"w{i}": w for i, w in enumerate(model.get_weights())}
            np.savez(warm_path, seconds=warm_seconds, **arrays)
    warm = model.get_weights()
    dense_error = common.test_error(model, xt, yt)
    print(f"{name}: dense after {args.warmup} epochs: {100 * dense_error:.2f} %")
    rows.append(
        {
            "method": "dense",
            "model": name,
            "seed": args.seed,
            "sparsity": 0.0,
            "test_error": dense_error,
            "epochs": args.warmup,
            "seconds": warm_seconds,
        }
    )
    epochs = args.epochs - args.warmup
    for sparsity in args.sparsities:
        for method in args.methods:
            keras.utils.set_random_seed(args.seed + 1)
            model = compile_model(build(), args.lr)
            model.set_weights(warm)
            callbacks = method_callbacks(
                method, sparsity, args, epochs, steps, eval_data
            )
            callbacks.append(lr_drop(args.lr, epochs, args.final_lr_epochs))
            start = time.perf_counter()
            hist = model.fit(
                x,
                y,
                batch_size=args.batch_size,
                epochs=epochs,
                verbose=0,
                callbacks=callbacks,
            ).history
            seconds = time.perf_counter() - start
            error = common.test_error(model, xt, yt)
            row = {
                "method": method,
                "model": name,
                "seed": args.seed,
                "sparsity": sparsity,
                "test_error": error,
                "epochs": args.epochs,
                "seconds": seconds + warm_seconds,
                "measured_sparsity": kernel_sparsity(model),
            }
            if "art_phase" in hist:
                phases = hist["art_phase"]
                row["art_epochs"] = sum(1 for p in phases if p == 1)
                row["art_stopped_by_rule"] = bool(callbacks[0].art_window.terminated)
                row["art_best_epoch"] = callbacks[0].art_window.best_epoch
            rows.append(row)
            print(
                f"{name} {sparsity:.3f} {method:9s} error {100 * error:5.2f} % "
                f"(sparsity {row['measured_sparsity']:.4f}, {seconds:.0f} s"
                + (
                    f", ART {row['art_epochs']} epochs, rule "
                    f"{row['art_stopped_by_rule']}"
                    if "art_epochs" in row
                    else ""
                )
                + ")",
                flush=True,
            )


def overhead(args):
    """Epoch time of HyperSparse + ART (in its ART phase) vs plain `fit`."""
    out = []
    for name in args.models:
        build, flat = MODELS[name]
        x, y, _, _ = DATASETS[args.dataset](flat)
        eval_data = (x[: args.eval_samples], y[: args.eval_samples])
        times = {"plain": [], "hs_art": []}
        for _ in range(args.overhead_repeats):
            for kind in ("plain", "hs_art"):
                keras.utils.set_random_seed(args.seed)
                model = compile_model(build(), args.lr)
                timer = common.EpochTimer()
                callbacks = [timer]
                if kind == "hs_art":
                    callbacks.insert(
                        0,
                        AdaptiveRegularization(
                            0.99,
                            eval_data=eval_data,
                            initial_strength=args.hs_lambda,
                            growth=args.growth,
                            refresh_every=args.refresh_every,
                            max_art_epochs=100,
                            eval_batch_size=2048,
                        ),
                    )
                model.fit(
                    x,
                    y,
                    batch_size=args.batch_size,
                    epochs=args.overhead_epochs,
                    verbose=0,
                    callbacks=callbacks,
                )
                # Epoch 0 includes tracing; the callback's epoch-end
                # evaluations are part of its cost and are included.
                times[kind].extend(timer.seconds[1:])
        plain = float(np.median(times["plain"]))
        hs = float(np.median(times["hs_art"]))
        out.append(
            {
                "model": name,
                "plain_epoch_seconds": plain,
                "hs_art_epoch_seconds": hs,
                "ratio": hs / plain,
                "epochs_timed": len(times["plain"]),
            }
        )
        print(
            f"{name}: plain {plain:.2f} s/epoch, HS+ART {hs:.2f} s ({hs / plain:.2f}x)"
        )
    return out


def mean_errors(rows):
    """`{(model, method, sparsity): (mean test error, n seeds)}`."""
    groups = {}
    for r in rows:
        groups.setdefault((r["model"], r["method"], r["sparsity"]), []).append(
            r["test_error"]
        )
    return {k: (float(np.mean(v)), len(v)) for k, v in groups.items()}


def table(rows):
    means = mean_errors(rows)
    models = sorted({k[0] for k in means})
    methods = [m for m in METHODS if any(k[1] == m for k in means)]
    lines = [
        "| model | sparsity | " + " | ".join(LABELS[m] for m in methods) + " |",
        "| --- | --- |" + " --- |" * len(methods),
    ]
    for model in models:
        if (model, "dense", 0.0) in means:
            e = 100 * means[(model, "dense", 0.0)][0]
            lines.append(
                f"| {model} | dense (warm-up) | "
                + " | ".join(f"{e:.2f}" for _ in methods)
                + " |"
            )
        sparsities = sorted({k[2] for k in means if k[0] == model} - {0.0})
        for s in sparsities:
            row = {m: means.get((model, m, s)) for m in methods}
            best = min(v[0] for v in row.values() if v)
            cells = []
            for m in methods:
                if row[m] is None:
                    cells.append("")
                    continue
                cell = f"{100 * row[m][0]:.2f}"
                cells.append(f"**{cell}**" if row[m][0] == best else cell)
            lines.append(f"| {model} | {100 * s:g} % | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 3.6))
    axes = np.atleast_1d(axes)
    means = mean_errors(rows)
    for ax, model in zip(axes, models):
        for m in METHODS:
            pts = sorted(
                (k[2], 100 * v[0]) for k, v in means.items() if k[:2] == (model, m)
            )
            if pts:
                xs = [100 * (1 - s) for s, _ in pts]  # percent of weights kept
                ax.plot(xs, [e for _, e in pts], "o-", label=LABELS[m])
        if (model, "dense", 0.0) in means:
            dense = 100 * means[(model, "dense", 0.0)][0]
            ax.axhline(dense, color="gray", ls=":", label="dense warm-up")
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("weights kept (%)")
        ax.set_ylabel("test error (%)")
        ax.set_title(model)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write(args, rows, extra):
    os.makedirs(args.results_dir, exist_ok=True)
    json_path = os.path.join(args.results_dir, f"{args.out}.json")
    payload = {
        "command": "python " + " ".join(sys.argv),
        "machine": common.machine(),
        "args": vars(args),
        "rows": rows,
        **extra,
    }
    with open(json_path, "w") as f:
        json.dump(payload, f, indent=1)
    print("wrote", json_path)
    return payload


def markdown(payload, path):
    title = "HyperSparse + ART vs L1 + ART vs magnitude pruning: test error (%)"
    if not payload.get("rows"):
        title = "HyperSparse + ART: step-time overhead vs plain fit"
    lines = [
        f"# {title}",
        "",
        f"Command: `{payload['command']}`  ",
        f"Machine: {payload['machine']}",
        "",
    ]
    if payload.get("rows"):
        a = payload["args"]
        lines += [
            f"Budget: {a['epochs']} epochs per method ({a['warmup']} shared dense "
            f"warm-up epochs, then {a['epochs'] - a['warmup']}); SGD momentum 0.9, "
            f"lr {a['lr']} (/10 for the last {a['final_lr_epochs']}), batch "
            f"{a['batch_size']}; ART: growth {a['growth']}, HS lambda_0 "
            f"{a['hs_lambda']:g}, L1 lambda_0 {a['l1_lambda']:g}, window "
            f"{a['window']}, pruned accuracy on {a['eval_samples']} training "
            f"images. Seeds: {payload.get('seeds', [a['seed']])} (mean test "
            "error over seeds; per-seed rows in the JSON). Bold: lowest in the row.",
            "",
            table(payload["rows"]),
            "",
        ]
    for o in payload.get("overhead", []):
        lines.append(
            f"- Step time, {o['model']}: plain `fit` {o['plain_epoch_seconds']:.2f} "
            f"s/epoch, HyperSparse + ART {o['hs_art_epoch_seconds']:.2f} s/epoch "
            f"(**{o['ratio']:.2f}x**, median of {o['epochs_timed']} epochs)."
        )
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote", path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--dataset", default="mnist", choices=DATASETS)
    parser.add_argument(
        "--sparsities", nargs="*", type=float, default=[0.9, 0.95, 0.98, 0.99, 0.995]
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--final-lr-epochs", type=int, default=4)
    parser.add_argument("--min-fine-tune", type=int, default=6)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--hs-lambda", type=float, default=1e-4)
    parser.add_argument("--l1-lambda", type=float, default=1e-4)
    parser.add_argument("--growth", type=float, default=1.2)
    parser.add_argument("--window", type=int, default=3)
    parser.add_argument("--refresh-every", type=int, default=100)
    parser.add_argument("--eval-samples", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--warm-weights",
        default=None,
        help="path prefix: load the dense warm-up from PREFIX.<model>.npz if it "
        "exists, else train it and save it there",
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        default=None,
        help="merge these result JSON files (parallel runs) into --out",
    )
    parser.add_argument("--out", default="hypersparse")
    parser.add_argument("--results-dir", default=common.RESULTS)
    parser.add_argument("--overhead", action="store_true")
    parser.add_argument("--overhead-epochs", type=int, default=4)
    parser.add_argument("--overhead-repeats", type=int, default=2)
    parser.add_argument("--plot", action="store_true", help="redraw from JSON")
    args = parser.parse_args()

    json_path = os.path.join(args.results_dir, f"{args.out}.json")
    if args.plot:
        with open(json_path) as f:
            payload = json.load(f)
    elif args.merge:
        parts = []
        for path in args.merge:
            with open(path) as f:
                parts.append(json.load(f))
        payload = dict(parts[0])
        rows = [dict(r, seed=p["args"]["seed"]) for p in parts for r in p["rows"]]
        # One dense row per model and seed (the shared warm-up).
        seen = set()
        payload["rows"] = []
        for r in rows:
            key = (r["model"], r["method"], r["sparsity"], r["seed"])
            if key not in seen:
                seen.add(key)
                payload["rows"].append(r)
        payload["args"]["sparsities"] = sorted({r["sparsity"] for r in rows} - {0.0})
        payload["args"]["models"] = sorted({r["model"] for r in rows})
        payload["seeds"] = sorted({r["seed"] for r in rows})
        payload["commands"] = [p["command"] for p in parts]
        payload["command"] = (
            f"{len(parts)} result files merged with --merge (each run: "
            "`python benchmarks/hypersparse.py --seed S --warm-weights W "
            "--models M --sparsities K`; all commands in the JSON; driver: "
            "benchmarks/hypersparse_gpu.sh)"
        )
        with open(json_path, "w") as f:
            json.dump(payload, f, indent=1)
    elif args.overhead:
        payload = write(args, [], {"overhead": overhead(args)})
    else:
        rows = []
        for name in args.models:
            run_model(name, args, rows)
        payload = write(args, rows, {})
    markdown(payload, os.path.join(args.results_dir, f"{args.out}.md"))
    if payload.get("rows"):
        plot(payload["rows"], os.path.join(args.results_dir, f"{args.out}.png"))


if __name__ == "__main__":
    main()
