"""CAR filter pruning (Abbasi-Asl & Yu, arXiv 1705.07356) on MNIST LeNet-5.

1. Train Caffe's LeNet-5 (conv 20 5x5, pool, conv 50 5x5, pool, fc 500,
   fc 10) on 55,000 MNIST training images (cached in a temp directory).
2. For conv1 and conv2 separately, prune greedily one filter at a time
   (`kprune.criteria.greedy_prune`, step=1) with CAR, L1 norm, mean
   activation and random order (3 seeds), scoring on the 55,000 training
   images the model was trained on (as the paper does; `--score-source
   heldout` scores on the held-out images instead). Accuracy on the 5,000
   held-out training images (55,000-59,999: neither trained nor scored on,
   the validation set) and on the 10,000 test images (never used to choose
   anything) at 10 ... 90 % of the layer's filters removed, without
   fine-tuning, and after one epoch of fine-tuning at a few ratios.
3. Cost of scoring every filter of a layer: kprune's cached prefix vs the
   naive way (one full-model pass per filter), side by side.
4. Pictures: conv1 filters kept/removed by CAR, per-filter CAR bars, curves.

Targets: CAR >= every baseline at every ratio without fine-tuning; >= 75 %
of conv2's filters removed with <= 0.5 % accuracy loss after fine-tuning;
cached scoring <= 0.5x the naive time.

Run by hand (never in CI):

    python benchmarks/car.py            # about 25 minutes on 2 shared cores
    python benchmarks/car.py --scoring-sets heldout:5000,train:5000,train:20000,train:55000

Writes benchmarks/results/car.json, car.md and car_*.png; `--scoring-sets`
instead compares greedy CAR on conv2 scored on each set (validation and test
accuracy vs the baselines) and writes car_scoring_sets.json / .md.
"""

import argparse
import os
import tempfile
import time

import keras
import numpy as np
from common import (
    RESULTS,
    command_line,
    compile_classifier,
    lenet_5,
    load_mnist,
    machine,
    md_table,
    read_json,
    run_line,
    write_results,
)

import kprune

CRITERIA = ["car", "l1", "mean_activation", "random"]
# CAR with equal scores ordered by the margin drop, shown alongside.
VARIANTS = {"car_margin_ties": {"criterion": "car", "tie_break": "margin"}}
RATIOS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
LAYERS = ["conv1", "conv2"]


def compile_model(model, lr=1e-3):
    return compile_classifier(model, keras.optimizers.Adam(lr))


def trained_lenet(x, y, epochs, seed):
    path = os.path.join(
        tempfile.gettempdir(), "kprune_bench", f"car_lenet5_e{epochs}_s{seed}.keras"
    )
    if os.path.exists(path):
        print(f"trained LeNet-5 from cache {path}")
        return keras.models.load_model(path), path, None
    keras.utils.set_random_seed(seed)
    model = compile_model(lenet_5())
    start = time.perf_counter()
    model.fit(x, y, epochs=epochs, batch_size=128, verbose=2)
    seconds = time.perf_counter() - start
    os.makedirs(os.path.dirname(path), exist_ok=True)
    model.save(path)
    return model, path, seconds


def test_accuracy(model, xt, yt):
    return kprune.criteria.measure(model, xt, yt, batch_size=1000)


def order_of(history):
    """Original indices in the order greedy_prune removed them."""
    return [u for entry in history[1:] for u in entry["removed"]]


def count(ratio, total):
    return int(round(ratio * total))


def load_data(source, samples):
    """MNIST split as the benchmark uses it.

    train: images 0-54,999 (the model is trained on them); validation:
    55,000-59,999 (never trained on); test: the 10,000 test images (only
    reported, never used to choose anything). The scoring set is the first
    `samples` training images (`source="train"`, as the paper scores on
    training data) or the first `samples` validation images
    (`source="heldout"`; then the validation accuracy is not independent).
    """
    x, y, xt, yt = load_mnist(flat=False)
    train = (x[:55000], y[:55000])
    validation = (x[55000:], y[55000:])
    pool = train if source == "train" else validation
    if not 0 < samples <= len(pool[1]):
        raise SystemExit(
            f"--score-samples must be in 1..{len(pool[1])} for --score-source "
            f"{source}. Received: {samples}"
        )
    return {
        "train": train,
        "validation": validation,
        "test": (xt, yt),
        "score": (pool[0][:samples], pool[1][:samples]),
    }


def prune_curve(model, layer, options, xs, ys, seeds, batch_size, evals):
    """Greedy order(s) to 90 % and the accuracy on `evals` at every ratio.

    Returns `(runs, curve)`: runs = [(order, history, seconds)] (one per
    seed); curve = one dict per ratio with `<name>_accuracy` for every
    evaluation set (mean over runs) and `score_set_accuracy`.
    """
    total = model.get_layer(layer).filters
    runs = []
    for seed in seeds:
        t0 = time.perf_counter()
        _, _, history = kprune.criteria.greedy_prune(
            model,
            layer,
            xs,
            ys,
            target_ratio=max(RATIOS),
            seed=seed,
            batch_size=batch_size,
            **options,
        )
        runs.append((order_of(history), history, time.perf_counter() - t0))
    curve = []
    for ratio in RATIOS:
        k = count(ratio, total)
        point = {"ratio": ratio, "removed": k}
        smaller = [
            kprune.surgery.remove_units(model, {layer: order[:k]})
            for order, _, _ in runs
        ]
        for name, (xe, ye) in evals.items():
            accs = [test_accuracy(m, xe, ye) for m in smaller]
            point[f"{name}_accuracy"] = float(np.mean(accs))
            point[f"{name}_accuracy_runs"] = accs
        point["score_set_accuracy"] = float(
            np.mean([h[k]["metric"] for _, h, _ in runs])
        )
        curve.append(point)
    return runs, curve


def cost_comparison(model, layer, xs, ys, repeats):
    """Seconds to score every filter: cached prefix vs two naive ways."""
    n = model.get_layer(layer).filters
    weights = model.get_layer(layer).get_weights()
    zeroed = keras.models.clone_model(model)
    zeroed.set_weights(model.get_weights())

    def cached():
        return kprune.criteria.car_scores(model, layer, xs, ys)

    def naive_surgery():
        return kprune.criteria.car_scores(model, layer, xs, ys, method="surgery")

    def naive_zeroed():
        def acc(m):
            return kprune.criteria.measure(m, xs, ys)

        base = acc(zeroed)
        scores = []
        for k in range(n):
            kernel, bias = (w.copy() for w in weights)
            kernel[..., k], bias[k] = 0.0, 0.0
            zeroed.get_layer(layer).set_weights([kernel, bias])
            scores.append(base - acc(zeroed))
        zeroed.get_layer(layer).set_weights(weights)
        return np.array(scores)

    ways = {
        "cached": cached,
        "naive_zeroed": naive_zeroed,
        "naive_surgery": naive_surgery,
    }
    times = {k: [] for k in ways}
    cpu = {k: [] for k in ways}
    results = {}
    for _ in range(repeats):  # interleaved rounds
        for name, fn in ways.items():
            start = time.perf_counter()
            start_cpu = time.process_time()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    same = all(np.allclose(results["cached"], results[k], atol=1e-9) for k in results)
    return {
        "filters": n,
        "samples": len(ys),
        "seconds": {k: float(np.median(v)) for k, v in times.items()},
        "all_seconds": times,
        "cpu_seconds": {k: float(np.median(v)) for k, v in cpu.items()},
        "all_cpu_seconds": cpu,
        "scores_equal": bool(same),
    }


def plot_curves(results, path):
    from matplotlib.figure import Figure

    colors = {
        "car": "C3",
        "l1": "C0",
        "mean_activation": "C2",
        "random": "C7",
        "car_margin_ties": "C1",
    }
    fig = Figure(figsize=(11, 4.2), dpi=100)
    for index, layer in enumerate(LAYERS):
        ax = fig.add_subplot(1, 2, index + 1)
        entry = results["layers"][layer]
        base = 100 * results["baseline_test_accuracy"]
        for criterion in entry["criteria"]:
            curve = entry["criteria"][criterion]
            ratios = [100 * r["ratio"] for r in curve["no_fine_tune"]]
            acc = [100 * r["test_accuracy"] for r in curve["no_fine_tune"]]
            ax.plot(
                ratios,
                acc,
                "-o" if criterion in CRITERIA else "--",
                ms=3,
                color=colors[criterion],
                label=f"{criterion}",
                zorder=3 if criterion == "car" else 2,
            )
            ft = curve["fine_tuned"]
            if ft:
                ax.plot(
                    [100 * r["ratio"] for r in ft],
                    [100 * r["test_accuracy"] for r in ft],
                    "s--",
                    ms=5,
                    color=colors[criterion],
                    alpha=0.8,
                    label=f"{criterion} + 1 epoch",
                )
        ax.axhline(base, color="black", lw=0.7, ls=":", label="original")
        ax.axhline(base - 0.5, color="grey", lw=0.7, ls="--", label="original - 0.5")
        ax.set_title(f"LeNet-5 {layer} ({entry['filters']} filters)")
        ax.set_xlabel("% of the layer's filters removed")
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(max(0, min(base - 30, ax.get_ylim()[0])), 100)
        ax.grid(alpha=0.3)
        if index == 0:
            ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    return path


def compute_targets(results):
    """The three targets of the issue, from the measured results."""
    base_test = results["baseline_test_accuracy"]
    failures, points = [], {}
    for key in ("test", "validation", "score_set"):
        points[key] = 0
        for layer in LAYERS:
            crit = results["layers"][layer]["criteria"]
            curves = {c: crit[c]["no_fine_tune"] for c in CRITERIA}
            ok, worse = wins(curves, f"{key}_accuracy")
            points[key] += sum(ok)
            if key == "test":
                failures += [f"{layer} {w}" for w in worse]
    conv2_ft = [
        r
        for r in results["layers"]["conv2"]["criteria"]["car"]["fine_tuned"]
        if r["ratio"] >= 0.75
    ]
    best = max(
        (r for r in conv2_ft if base_test - r["test_accuracy"] <= 0.005),
        key=lambda r: r["ratio"],
        default=None,
    )
    costs = results["cost"]
    worst = max(
        c["seconds"]["cached"] / c["seconds"]["naive_zeroed"] for c in costs.values()
    )
    return {
        "car_ge_baselines": {
            "met": not failures,
            "detail": "; ".join(failures) if failures else "all 18 layer/ratio points",
            "failures": failures,
            "score_set_points": int(points["score_set"]),
            "validation_points": int(points["validation"]),
            "test_points": int(points["test"]),
        },
        "conv2_75": {
            "met": best is not None,
            "detail": (
                f"CAR, {100 * best['ratio']:.0f} % of conv2 removed ({best['removed']} filters): "
                f"{100 * best['test_accuracy']:.2f} % vs {100 * base_test:.2f} %"
                if best
                else "; ".join(
                    f"{100 * r['ratio']:.0f} %: {100 * r['test_accuracy']:.2f} % vs {100 * base_test:.2f} %"
                    for r in conv2_ft
                )
            ),
        },
        "cost": {
            "met": worst <= 0.5,
            "detail": "cached / naive zeroed: "
            + ", ".join(
                f"{layer} {c['seconds']['cached'] / c['seconds']['naive_zeroed']:.2f}x"
                for layer, c in costs.items()
            )
            + "; cached / naive surgery: "
            + ", ".join(
                f"{layer} {c['seconds']['cached'] / c['seconds']['naive_surgery']:.2f}x"
                for layer, c in costs.items()
            )
            + "; in CPU time, cached / naive zeroed: "
            + ", ".join(
                f"{layer} {c['cpu_seconds']['cached'] / c['cpu_seconds']['naive_zeroed']:.2f}x"
                for layer, c in costs.items()
                if "cpu_seconds" in c
            ),
        },
    }


def scoring_sentence(results):
    n = results["score_samples"]
    if results.get("score_source", "heldout") == "heldout":
        return (
            f"Scores on {n:,} held-out training images (55,000-59,999, also "
            "the validation images); accuracy on the 10,000 test images."
        )
    return (
        f"Scores on {'all ' if n == 55000 else 'the first '}{n:,} training "
        "images the model was trained on (the paper scores on training data; "
        "see `car_scoring_sets.md` for why); accuracy on the 5,000 held-out "
        "validation images (55,000-59,999, neither trained nor scored on) and "
        "on the 10,000 test images (used for nothing else)."
    )


def accuracy_table(entry, shown, key):
    rows = []
    for i, ratio in enumerate(RATIOS):
        row = [entry["criteria"][c]["no_fine_tune"][i] for c in shown]
        ok = row[0][key] >= max(r[key] for r in row[1 : len(CRITERIA)])
        rows.append(
            [f"{100 * ratio:.0f} % ({row[0]['removed']})"]
            + [f"{100 * r[key]:.2f}" for r in row]
            + ["yes" if ok else "no"]
        )
    return md_table(["removed", *shown, "CAR >= all baselines"], rows)


def markdown(results, command):
    m = results["machine"]
    lines = [
        "# CAR filter pruning on MNIST LeNet-5",
        "",
        run_line(command, m) + ".",
        "",
        f"LeNet-5 (conv 20 5x5, pool, conv 50 5x5, pool, fc 500, fc 10) trained "
        f"{results['train_epochs']} epochs on 55,000 MNIST training images: test "
        f"accuracy {100 * results['baseline_test_accuracy']:.2f} % (validation "
        f"{100 * results['baseline_validation_accuracy']:.2f} %). "
        + scoring_sentence(results)
        + " Greedy, one filter per step (`step=1`), each layer "
        "pruned on its own; random = mean of "
        f"{len(results['random_seeds'])} seeds. `car` is the paper's procedure "
        "(equal CAR scores go by filter index, kprune's default)"
        + (
            "; `car_margin_ties` orders equal CAR scores by the drop of the mean "
            'classification margin (`tie_break="margin"`).'
            if results.get("variants", ["car_margin_ties"])
            else "."
        ),
        "",
    ]
    for layer in LAYERS:
        entry = results["layers"][layer]
        lines += [
            f"## {layer} ({entry['filters']} filters): test accuracy (%) without fine-tuning",
            "",
        ]
        shown = list(entry["criteria"])
        lines += accuracy_table(entry, shown, "test_accuracy")
        if "validation_accuracy" in entry["criteria"]["car"]["no_fine_tune"][0]:
            lines += [
                "",
                f"{layer}: accuracy (%) on the {results.get('validation_samples', 5000):,} "
                "validation images"
                + (
                    " (also the scoring images)"
                    if results.get("score_source") == "heldout"
                    else " (neither trained nor scored on)"
                )
                + ", without fine-tuning:",
                "",
            ]
            lines += accuracy_table(entry, shown, "validation_accuracy")
        lines += [
            "",
            f"{layer}: after 1 epoch of fine-tuning (55,000 images, Adam "
            f"{results['fine_tune_learning_rate']:g}, batch 128), test accuracy (%):",
            "",
        ]
        fine = {c: entry["criteria"][c]["fine_tuned"] for c in CRITERIA}
        rows = [
            [f"{100 * r['ratio']:.0f} % ({r['removed']})"]
            + [f"{100 * fine[c][i]['test_accuracy']:.2f}" for c in CRITERIA]
            for i, r in enumerate(fine["car"])
        ]
        lines += md_table(["removed", *CRITERIA], rows)
        lines.append("")
    t = results["targets"]
    lines += [
        "## Targets",
        "",
        f"- CAR >= every baseline at every ratio without fine-tuning: "
        f"**{'met' if t['car_ge_baselines']['met'] else 'not met'}** "
        f"({t['car_ge_baselines']['detail']}).",
        f"  Test: CAR >= every baseline at {t['car_ge_baselines'].get('test_points', '?')} "
        "of 18 points; on the validation images at "
        f"{t['car_ge_baselines'].get('validation_points', '?')} of 18; on the "
        f"{results['score_samples']:,} scoring images the greedy CAR "
        f"selection is fitted to, at "
        f"{t['car_ge_baselines']['score_set_points']} of 18.",
        f"- >= 75 % of conv2's filters removed with <= 0.5 % test accuracy loss "
        f"after fine-tuning: **{'met' if t['conv2_75']['met'] else 'not met'}** "
        f"({t['conv2_75']['detail']}).",
        f"- Cached scoring <= 0.5x the naive time: "
        f"**{'met' if t['cost']['met'] else 'not met'}** ({t['cost']['detail']}).",
        "",
        "## Cost of scoring every filter of a layer",
        "",
        f"{results['cost_samples']} validation images; median wall time of "
        f"{results['cost_repeats']} interleaved rounds (CPU time: user + system "
        "of this process, less sensitive to other jobs on the machine; the "
        "machine's cores are shared with other jobs, so wall times vary with "
        "their load"
        + (
            f", 1-minute load average {results['load_average']['start']:.1f} at "
            f"the start of the run and {results['load_average']['end']:.1f} at the end"
            if "load_average" in results
            else ""
        )
        + "). naive zeroed = one full-model pass per filter "
        "(`kprune.criteria.measure`, batches of 256) with the filter's weights "
        "and bias set to zero (one model object); naive surgery "
        '= `remove_units` + a full pass per filter (`method="surgery"`).',
        "",
    ]
    rows = []
    for layer in LAYERS:
        c = results["cost"][layer]
        s = c["seconds"]
        rows.append(
            [
                layer,
                c["filters"],
                f"{s['cached']:.2f}",
                f"{s['naive_zeroed']:.2f}",
                f"{s['naive_surgery']:.2f}",
                f"{s['cached'] / s['naive_zeroed']:.2f}",
                f"{s['cached'] / s['naive_surgery']:.2f}",
                " / ".join(
                    f"{c['cpu_seconds'][k]:.2f}"
                    for k in ("cached", "naive_zeroed", "naive_surgery")
                ),
                c["scores_equal"],
            ]
        )
    header = [
        "layer",
        "filters",
        "cached s",
        "naive zeroed s",
        "naive surgery s",
        "cached / zeroed",
        "cached / surgery",
        "CPU s: cached / zeroed / surgery",
        "same scores",
    ]
    lines += md_table(header, rows)
    lines += [
        "",
        "Greedy pruning wall time (to 90 %, all steps): "
        + ", ".join(
            f"{layer} CAR {results['layers'][layer]['criteria']['car']['greedy_seconds']:.1f} s"
            for layer in LAYERS
        )
        + (
            f"; whole run {results['total_seconds'] / 60:.0f} min (`--no-margin-ties` "
            "skips the `car_margin_ties` variant, about a quarter of it)"
            if "total_seconds" in results
            else ""
        )
        + ".",
        "",
        "![curves](car_curves.png)",
        "",
        "![conv1 filters](car_conv1_filters.png)",
        "",
    ]
    return "\n".join(lines)


def wins(curves, key):
    """Ratios at which CAR >= every baseline on `key`, and the failures."""
    ok, failures = [], []
    for i, ratio in enumerate(RATIOS):
        car = curves["car"][i][key]
        worse = [
            f"{100 * ratio:.0f} %: CAR {100 * car:.2f} < {other} "
            f"{100 * curves[other][i][key]:.2f}"
            for other in CRITERIA[1:]
            if car < curves[other][i][key]
        ]
        ok.append(not worse)
        failures += worse
    return ok, failures


def scoring_sets(args, command, layer="conv2"):
    """Greedy CAR and the baselines on `layer`, scored on each set."""
    specs = []
    for spec in args.scoring_sets.split(","):
        source, _, n = spec.partition(":")
        if source not in ("train", "heldout") or not n.isdigit():
            raise SystemExit(
                f"--scoring-sets: 'train:N' or 'heldout:N'. Received: {spec}"
            )
        specs.append((source, int(n)))
    out = {
        "command": command,
        "machine": machine(),
        "layer": layer,
        "scoring_batch_size": args.batch_size,
        "random_seeds": list(range(args.random_seeds)),
        "sets": [],
    }
    model = None
    for source, n in specs:
        data = load_data(source, n)
        if model is None:
            model, out["model_cache"], _ = trained_lenet(
                *data["train"], args.train_epochs, args.seed
            )
        xs, ys = data["score"]
        evals = {"test": data["test"], "validation": data["validation"]}
        curves, seconds = {}, {}
        for criterion in CRITERIA:
            seeds = out["random_seeds"] if criterion == "random" else [None]
            runs, curves[criterion] = prune_curve(
                model,
                layer,
                {"criterion": criterion},
                xs,
                ys,
                seeds,
                args.batch_size,
                evals,
            )
            seconds[criterion] = float(np.mean([t for _, _, t in runs]))
        entry = {"source": source, "samples": n, "curves": curves, "seconds": seconds}
        for key in ("score_set", "validation", "test"):
            ok, failures = wins(curves, f"{key}_accuracy")
            entry[f"{key}_points"] = int(sum(ok))
            entry[f"{key}_failures"] = failures
            entry[f"{key}_ok"] = ok
        out["sets"].append(entry)
        print(
            source,
            n,
            {k: entry[f"{k}_points"] for k in ("score_set", "validation", "test")},
            flush=True,
        )
    lines = [
        f"# CAR on LeNet-5 {layer}: which images to score on",
        "",
        run_line(command, out["machine"]) + ".",
        "",
        f"Greedy CAR (one filter per step) on {layer} of the LeNet-5 of "
        "`car.md`, scored on each set; the baselines (L1, mean activation on "
        f"the same set, random: mean of {args.random_seeds} seeds) likewise. "
        "Points (of 9 ratios, 10 ... 90 % removed) where CAR >= every "
        "baseline, on the scoring set itself, on the 5,000 held-out "
        "validation images (55,000-59,999; not independent when they are the "
        "scoring set) and on the 10,000 test images. train:N = the first N "
        "of the 55,000 training images.",
        "",
    ]
    rows = [
        [
            f"{e['source']}:{e['samples']}",
            e["score_set_points"],
            e["validation_points"]
            if e["source"] == "train"
            else f"({e['validation_points']})",
            e["test_points"],
            ", ".join(
                f"{100 * r:.0f} %"
                for r, ok in zip(RATIOS, e["test_ok"], strict=True)
                if not ok
            )
            or "-",
            f"{e['seconds']['car']:.0f}",
        ]
        for e in out["sets"]
    ]
    lines += md_table(
        [
            "scoring set",
            "score set",
            "validation",
            "test",
            "test: CAR below a baseline at",
            "greedy CAR s",
        ],
        rows,
    )
    lines += ["", "CAR test accuracy (%) at 10 ... 90 % removed:", ""]
    lines += md_table(
        ["scoring set", *[f"{100 * r:.0f} %" for r in RATIOS]],
        [
            [f"{e['source']}:{e['samples']}"]
            + [f"{100 * c['test_accuracy']:.2f}" for c in e["curves"]["car"]]
            for e in out["sets"]
        ],
    )
    lines.append("")
    text = "\n".join(lines)
    write_results("car_scoring_sets", out, text, indent=1)
    print(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-epochs", type=int, default=3)
    parser.add_argument(
        "--score-source",
        choices=["train", "heldout"],
        default="train",
        help="score on the training images (the paper) or the held-out ones",
    )
    parser.add_argument(
        "--score-samples",
        type=int,
        default=55000,
        help="scoring images (first N of --score-source)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=1024, help="samples per scoring pass"
    )
    parser.add_argument(
        "--no-margin-ties",
        action="store_true",
        help="skip the car_margin_ties variant (saves about a quarter of the time)",
    )
    parser.add_argument(
        "--scoring-sets",
        default="",
        help="e.g. heldout:5000,train:20000: compare greedy CAR on conv2 "
        "scored on each set; writes car_scoring_sets.json/.md",
    )
    parser.add_argument("--ft-ratios", default="0.5,0.8,0.9")
    parser.add_argument("--random-seeds", type=int, default=3)
    parser.add_argument("--cost-repeats", type=int, default=5)
    parser.add_argument("--cost-samples", type=int, default=2000)
    parser.add_argument("--fine-tune-lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite car.md and car_curves.png from an existing car.json",
    )
    args = parser.parse_args()
    if args.report_only:
        results = read_json(os.path.join(RESULTS, "car.json"))
        results["targets"] = compute_targets(results)
        plot_curves(results, os.path.join(RESULTS, "car_curves.png"))
        text = markdown(results, results["command"])
        write_results("car", results, text, indent=1)
        print(text)
        return
    command = command_line(__file__)
    start_all = time.perf_counter()
    if args.scoring_sets:
        scoring_sets(args, command)
        return

    data = load_data(args.score_source, args.score_samples)
    x_train, y_train = data["train"]
    xs, ys = data["score"]
    xt, yt = data["test"]
    xv, yv = data["validation"]
    model, cache_path, train_seconds = trained_lenet(
        x_train, y_train, args.train_epochs, args.seed
    )
    base_test = test_accuracy(model, xt, yt)
    base_val = test_accuracy(model, xv, yv)
    print(f"baseline test accuracy {base_test:.4f}, validation {base_val:.4f}")
    ft_ratios = [float(r) for r in args.ft_ratios.split(",") if r]
    seeds = list(range(args.random_seeds))
    variants = {} if args.no_margin_ties else VARIANTS
    results = {
        "command": command,
        "machine": machine(),
        "train_epochs": args.train_epochs,
        "train_seconds": train_seconds,
        "model_cache": cache_path,
        "score_source": args.score_source,
        "score_samples": len(ys),
        "validation_samples": len(yv),
        "scoring_batch_size": args.batch_size,
        "baseline_test_accuracy": base_test,
        "baseline_validation_accuracy": base_val,
        "baseline_score_set_accuracy": test_accuracy(model, xs, ys),
        "random_seeds": seeds,
        "variants": list(variants),
        "cost_repeats": args.cost_repeats,
        "cost_samples": args.cost_samples,
        "fine_tune_learning_rate": args.fine_tune_lr,
        "load_average": {"start": os.getloadavg()[0]},
        "layers": {},
    }
    evals = {"test": (xt, yt), "validation": (xv, yv)}
    for layer in LAYERS:
        total = model.get_layer(layer).filters
        entry = {"filters": total, "criteria": {}}
        results["layers"][layer] = entry
        for criterion in CRITERIA + list(variants):
            options = variants.get(criterion, {"criterion": criterion})
            runs, curve = prune_curve(
                model,
                layer,
                options,
                xs,
                ys,
                seeds if criterion == "random" else [None],
                args.batch_size,
                evals,
            )
            fine = []
            for ratio in ft_ratios if criterion in CRITERIA else []:
                k = count(ratio, total)
                order = runs[0][0]
                keras.utils.set_random_seed(args.seed)
                small = compile_model(
                    kprune.surgery.remove_units(model, {layer: order[:k]}),
                    lr=args.fine_tune_lr,
                )
                t0 = time.perf_counter()
                small.fit(x_train, y_train, epochs=1, batch_size=128, verbose=0)
                fine.append(
                    {
                        "ratio": ratio,
                        "removed": k,
                        "test_accuracy": test_accuracy(small, xt, yt),
                        "validation_accuracy": test_accuracy(small, xv, yv),
                        "fit_seconds": time.perf_counter() - t0,
                    }
                )
            entry["criteria"][criterion] = {
                "order": [[int(u) for u in order] for order, _, _ in runs],
                "greedy_seconds": float(np.mean([t for _, _, t in runs])),
                "no_fine_tune": curve,
                "fine_tuned": fine,
            }
            print(
                f"{layer} {criterion}: "
                + " ".join(f"{100 * c['test_accuracy']:.2f}" for c in curve)
                + " | ft "
                + " ".join(f"{100 * c['test_accuracy']:.2f}" for c in fine)
                + f" ({time.perf_counter() - start_all:.0f} s)",
                flush=True,
            )
        entry["car_scores"] = kprune.criteria.car_scores(
            model, layer, xs, ys, batch_size=args.batch_size
        ).tolist()
    results["cost"] = {}
    for layer in LAYERS:
        results["cost"][layer] = cost_comparison(
            model,
            layer,
            xv[: args.cost_samples],
            yv[: args.cost_samples],
            args.cost_repeats,
        )
        print(layer, "cost", results["cost"][layer]["seconds"], flush=True)

    results["targets"] = compute_targets(results)

    # Pictures.
    os.makedirs(RESULTS, exist_ok=True)
    conv1 = results["layers"]["conv1"]
    half = conv1["criteria"]["car"]["order"][0][: count(0.5, conv1["filters"])]
    kprune.criteria.plot_filters(
        model,
        "conv1",
        os.path.join(RESULTS, "car_conv1_filters.png"),
        removed=half,
        scores=np.array(conv1["car_scores"]) * 100,
        title="LeNet-5 conv1: the 10 filters CAR removes first (red), CAR in % under each",
    )
    for layer in LAYERS:
        kprune.criteria.plot_scores(
            np.array(results["layers"][layer]["car_scores"]) * 100,
            os.path.join(RESULTS, f"car_{layer}_scores.png"),
            removed=results["layers"][layer]["criteria"]["car"]["order"][0][
                : count(0.5, results["layers"][layer]["filters"])
            ],
            title=f"LeNet-5 {layer}: CAR of each filter (first greedy step); red = removed by 50 %",
            ylabel="CAR (accuracy drop, %)",
        )
    plot_curves(results, os.path.join(RESULTS, "car_curves.png"))
    results["total_seconds"] = time.perf_counter() - start_all
    results["load_average"]["end"] = os.getloadavg()[0]
    text = markdown(results, command)
    write_results("car", results, text, indent=1)
    print(text)
    print(f"total {results['total_seconds']:.0f} s")


if __name__ == "__main__":
    main()
