"""CAR filter pruning (Abbasi-Asl & Yu, arXiv 1705.07356) on MNIST LeNet-5.

1. Train Caffe's LeNet-5 (conv 20 5x5, pool, conv 50 5x5, pool, fc 500,
   fc 10) on 55,000 MNIST training images (cached in a temp directory).
2. For conv1 and conv2 separately, prune greedily one filter at a time
   (`kprune.criteria.greedy_prune`, step=1) with CAR, L1 norm, mean
   activation and random order (3 seeds), scoring on 2,000 held-out training
   images (55,000-56,999, never trained on). Test accuracy (10,000 test
   images) at 10 ... 90 % of the layer's filters removed, without
   fine-tuning, and after one epoch of fine-tuning at a few ratios.
3. Cost of scoring every filter of a layer: kprune's cached prefix vs the
   naive way (one full-model pass per filter), side by side.
4. Pictures: conv1 filters kept/removed by CAR, per-filter CAR bars, curves.

Targets: CAR >= every baseline at every ratio without fine-tuning; >= 75 %
of conv2's filters removed with <= 0.5 % accuracy loss after fine-tuning;
cached scoring <= 0.5x the naive time.

Run by hand (never in CI):

    python benchmarks/car.py            # about 15 minutes on 2 cores

Writes benchmarks/results/car.json, car.md and car_*.png.
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
ALL = CRITERIA + list(VARIANTS)
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
        for criterion in ALL:
            curve = entry["criteria"][criterion]
            ratios = [100 * r["ratio"] for r in curve["no_fine_tune"]]
            acc = [100 * r["test_accuracy"] for r in curve["no_fine_tune"]]
            ax.plot(
                ratios, acc, "-o", ms=3, color=colors[criterion], label=f"{criterion}"
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
    failures = []
    for layer in LAYERS:
        crit = results["layers"][layer]["criteria"]
        for i, ratio in enumerate(RATIOS):
            car = crit["car"]["no_fine_tune"][i]["test_accuracy"]
            for other in CRITERIA[1:]:
                value = crit[other]["no_fine_tune"][i]["test_accuracy"]
                if car < value:
                    failures.append(
                        f"{layer} {100 * ratio:.0f} %: CAR {100 * car:.2f} < {other} {100 * value:.2f}"
                    )
    score_points = sum(
        results["layers"][layer]["criteria"]["car"]["no_fine_tune"][i][
            "score_set_accuracy"
        ]
        >= max(
            results["layers"][layer]["criteria"][o]["no_fine_tune"][i][
                "score_set_accuracy"
            ]
            for o in CRITERIA[1:]
        )
        for layer in LAYERS
        for i in range(len(RATIOS))
    )
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
            "score_set_points": int(score_points),
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


def markdown(results, command):
    m = results["machine"]
    lines = [
        "# CAR filter pruning on MNIST LeNet-5",
        "",
        run_line(command, m) + ".",
        "",
        f"LeNet-5 (conv 20 5x5, pool, conv 50 5x5, pool, fc 500, fc 10) trained "
        f"{results['train_epochs']} epochs on 55,000 MNIST training images: test "
        f"accuracy {100 * results['baseline_test_accuracy']:.2f} %. Scores on "
        f"{results['score_samples']} held-out training images; accuracy on the "
        "10,000 test images. Greedy, one filter per step (`step=1`), each layer "
        "pruned on its own; random = mean of "
        f"{len(results['random_seeds'])} seeds. `car` is the paper's procedure "
        "(equal CAR scores go by filter index, kprune's default); "
        "`car_margin_ties` orders equal CAR scores by the drop of the mean "
        'classification margin (`tie_break="margin"`).',
        "",
    ]
    for layer in LAYERS:
        entry = results["layers"][layer]
        lines += [
            f"## {layer} ({entry['filters']} filters): test accuracy (%) without fine-tuning",
            "",
        ]
        rows = []
        for i, ratio in enumerate(RATIOS):
            row = [entry["criteria"][c]["no_fine_tune"][i] for c in ALL]
            ok = row[0]["test_accuracy"] >= max(
                r["test_accuracy"] for r in row[1 : len(CRITERIA)]
            )
            rows.append(
                [f"{100 * ratio:.0f} % ({row[0]['removed']})"]
                + [f"{100 * r['test_accuracy']:.2f}" for r in row]
                + ["yes" if ok else "no"]
            )
        lines += md_table(["removed", *ALL, "CAR >= all baselines"], rows)
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
        f"  On the {results['score_samples']} scoring images the greedy CAR "
        f"selection is fitted to, CAR >= every baseline at "
        f"{t['car_ge_baselines']['score_set_points']} of 18 points.",
        f"- >= 75 % of conv2's filters removed with <= 0.5 % test accuracy loss "
        f"after fine-tuning: **{'met' if t['conv2_75']['met'] else 'not met'}** "
        f"({t['conv2_75']['detail']}).",
        f"- Cached scoring <= 0.5x the naive time: "
        f"**{'met' if t['cost']['met'] else 'not met'}** ({t['cost']['detail']}).",
        "",
        "## Cost of scoring every filter of a layer",
        "",
        f"{results['cost_samples']} held-out images; median wall time of "
        f"{results['cost_repeats']} interleaved rounds (CPU time: user + system "
        "of this process, less sensitive to other jobs on the machine). naive zeroed = one full-model pass per filter "
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
        + ".",
        "",
        "![curves](car_curves.png)",
        "",
        "![conv1 filters](car_conv1_filters.png)",
        "",
    ]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-epochs", type=int, default=3)
    parser.add_argument("--score-samples", type=int, default=5000)
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

    x, y, xt, yt = load_mnist(flat=False)
    x_train, y_train = x[:55000], y[:55000]
    xs, ys = (
        x[55000 : 55000 + args.score_samples],
        y[55000 : 55000 + args.score_samples],
    )
    model, cache_path, train_seconds = trained_lenet(
        x_train, y_train, args.train_epochs, args.seed
    )
    base_test = test_accuracy(model, xt, yt)
    print(f"baseline test accuracy {base_test:.4f}")
    ft_ratios = [float(r) for r in args.ft_ratios.split(",") if r]
    seeds = list(range(args.random_seeds))
    results = {
        "command": command,
        "machine": machine(),
        "train_epochs": args.train_epochs,
        "train_seconds": train_seconds,
        "model_cache": cache_path,
        "score_samples": args.score_samples,
        "baseline_test_accuracy": base_test,
        "random_seeds": seeds,
        "cost_repeats": args.cost_repeats,
        "cost_samples": args.cost_samples,
        "fine_tune_learning_rate": args.fine_tune_lr,
        "layers": {},
    }
    for layer in LAYERS:
        total = model.get_layer(layer).filters
        entry = {"filters": total, "criteria": {}}
        results["layers"][layer] = entry
        for criterion in ALL:
            options = VARIANTS.get(criterion, {"criterion": criterion})
            runs = []
            for seed in seeds if criterion == "random" else [None]:
                t0 = time.perf_counter()
                _, _, history = kprune.criteria.greedy_prune(
                    model,
                    layer,
                    xs,
                    ys,
                    target_ratio=max(RATIOS),
                    seed=seed,
                    **options,
                )
                runs.append((order_of(history), history, time.perf_counter() - t0))
            curve = []
            for ratio in RATIOS:
                k = count(ratio, total)
                accs = [
                    test_accuracy(
                        kprune.surgery.remove_units(model, {layer: order[:k]}), xt, yt
                    )
                    for order, _, _ in runs
                ]
                curve.append(
                    {
                        "ratio": ratio,
                        "removed": k,
                        "test_accuracy": float(np.mean(accs)),
                        "test_accuracy_runs": accs,
                        "score_set_accuracy": float(
                            np.mean([h[k]["metric"] for _, h, _ in runs])
                        ),
                    }
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
        entry["car_scores"] = kprune.criteria.car_scores(model, layer, xs, ys).tolist()
    results["cost"] = {}
    for layer in LAYERS:
        results["cost"][layer] = cost_comparison(
            model,
            layer,
            xs[: args.cost_samples],
            ys[: args.cost_samples],
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
    text = markdown(results, command)
    write_results("car", results, text, indent=1)
    print(text)
    print(f"total {results['total_seconds']:.0f} s")


if __name__ == "__main__":
    main()
