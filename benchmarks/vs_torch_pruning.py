"""kprune.prune side by side with Torch-Pruning (issue 21, "Must show" 3).

The same network (LeNet-5 or the small ResNet-style CNN of
`prune_budget.py`), the same dense starting weights (trained in Keras,
copied into PyTorch; the logits are compared), the same MNIST split (55k
train / 5k validation / 10k test), the same importance (`l2`: group
magnitude, p=2; `taylor`: first order, on the same 512 calibration
images), the same budgets (2x / 4x / 8x / 16x fewer MACs, by kprune's MAC
rules on both sides), global ranking on both sides, and the same
fine-tuning recipe (Adam lr 1e-3, eps 1e-7, batch 128, the same images in
the same order per epoch).

Torch-Pruning 1.6.1 with torch 2.13.0 CPU runs in its own virtualenv
(`.venv-tp`; kprune never imports it) as a server process
(`benchmarks/_tp_worker.py`). For every (importance, budget) the two
pruning calls run one after the other, under the same load:

- kprune: `kprune.prune(dense, (x_cal, y_cal), macs=1/b, importance=...)`,
  the whole call (scoring, the search for the budget, rebuild, check).
- Torch-Pruning: `MetaPruner(global_pruning=True, pruning_ratio=r)` has no
  MACs target, so a bisection over `r` (`--tp-steps` MetaPruner runs, the
  smallest `r` that meets the budget) reaches it; for `taylor` the
  gradients are computed once and copied into each candidate. Also reported:
  one MetaPruner step at the `r` found (the cost if the ratio were known).

Both libraries get a warm-up call (l2, 2x) before the timed ones. Then the
two pruned models are fine-tuned (`--finetune-epochs`).

    python benchmarks/vs_torch_pruning.py --models lenet5 --seeds 0 1

Writes benchmarks/results/vs_torch_pruning{--tag}.json/.md.
"""

import argparse
import json
import os
import subprocess
import tempfile
import time

import keras
import numpy as np
from common import REPO, command_line, machine, md_table, read_json, write_results
from prune_budget import (
    BUDGETS,
    _mean,
    add_recipe_args,
    compile_,
    dense_model,
    finetune_steps,
    fit,
    macs,
    mnist_split,
    recipe,
    set_threads,
    test_error,
)

import kprune
from kprune.criteria import _autodiff as kprune_autodiff

IMPORTANCES = ("l2", "taylor")


class TorchPruning:
    """The Torch-Pruning server (`_tp_worker.py` in `.venv-tp`)."""

    def __init__(self, python):
        worker = os.path.join(REPO, "benchmarks", "_tp_worker.py")
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [python, worker],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )

    def __call__(self, op, **job):
        self.proc.stdin.write(json.dumps({"op": op, **job}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            self.log.seek(0)
            raise SystemExit(f"Torch-Pruning worker failed:\n{self.log.read()[-3000:]}")
        return json.loads(line)

    def close(self):
        self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
        self.proc.stdin.close()
        self.proc.wait()


def save_weights(model, path, x_logits):
    """Layer weights by `layer/weight` name, plus `_logits` on `x_logits`."""
    arrays = {"_logits": keras.ops.convert_to_numpy(model(x_logits, training=False))}
    for layer in model.layers:
        for w in layer.weights:
            arrays[f"{layer.name}/{w.name}"] = keras.ops.convert_to_numpy(w)
    np.savez(path, **arrays)


def kprune_prune(dense, data, importance, budget, args):
    x, y = data[0], data[1]
    cal = (x[: args.calibration], y[: args.calibration])
    start = time.perf_counter()
    small, plan = kprune.prune(dense, cal, macs=1.0 / budget, importance=importance)
    seconds = time.perf_counter() - start
    return small, {
        "prune_seconds": seconds,
        "macs_ratio": plan.report["macs_ratio"],
        "val_error_one_shot": test_error(small, data[2], data[3]),
        "widths": kprune.report.summary(small)["widths"],
    }


def kprune_finetune(small, data, args, seed):
    x, y, xv, yv, xt, yt = data
    compile_(small, args.finetune_lr or args.lr, finetune_steps(args, len(x)))
    keras.utils.set_random_seed(seed)
    start = time.perf_counter()
    fit(
        small,
        x,
        y,
        args.finetune_epochs,
        args,
        samples=args.finetune_samples,
        seed=seed,
    )
    return {
        "finetune_seconds": time.perf_counter() - start,
        "val_error": test_error(small, xv, yv),
        "test_error": test_error(small, xt, yt),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["lenet5", "resnet"])
    parser.add_argument("--importances", nargs="+", default=list(IMPORTANCES))
    parser.add_argument("--budgets", nargs="+", type=int, default=list(BUDGETS))
    add_recipe_args(parser)
    parser.add_argument("--tp-steps", type=int, default=10, help="bisection steps")
    parser.add_argument(
        "--torch-python", default=os.path.join(REPO, ".venv-tp", "bin", "python")
    )
    parser.add_argument("--tag", default="", help="suffix of the result files")
    parser.add_argument("--render", action="store_true")
    parser.add_argument(
        "--timing-only",
        type=int,
        default=0,
        metavar="R",
        help="only time the two pruning calls, R rounds per (importance, "
        "budget), alternating kprune / TP (no fine-tuning); rows go to the "
        "JSON's `timing` entry",
    )
    parser.add_argument(
        "--cold",
        action="store_true",
        help="with --timing-only: clear kprune's compiled gradient steps "
        "before each call (every call pays the trace, as a first call on a "
        "model does); rows go to the `<model>, cold` timing entry",
    )
    args = parser.parse_args(argv)
    name = f"vs_torch_pruning{args.tag}"
    path = os.path.join(REPO, "benchmarks", "results", name + ".json")
    if args.render:
        result = read_json(path)
        write_results(name, result, render(result))
        return result
    if args.finetune_schedule != "constant":
        raise SystemExit("The Torch-Pruning worker fine-tunes at a constant lr.")
    set_threads(args.threads)
    threads = args.threads or os.cpu_count()
    info = machine()
    info["load_before"] = os.getloadavg()
    data = mnist_split()
    x, y, xv, yv, xt, yt = data
    result = read_json(path, {})
    if "runs_of" not in result:
        result = {"models": {}}
    result.update(
        command=command_line(__file__, argv),
        machine=info,
        tp_bisection_steps=args.tp_steps,
    )
    result.setdefault("runs_of", [])
    if result["command"] not in result["runs_of"]:
        result["runs_of"].append(result["command"])
    folder = tempfile.mkdtemp(prefix="kprune_vs_tp_")
    data_path = os.path.join(folder, "mnist_split.npz")
    np.savez(data_path, x=x, y=y, xv=xv, yv=yv, xt=xt, yt=yt)
    if args.timing_only:
        for kind in args.models:
            timing(result, kind, data, data_path, folder, args, name)
        return result
    for kind in args.models:
        entry = result["models"].setdefault(kind, {})
        entry["recipe"] = recipe(args, len(x))
        for seed in args.seeds:
            dense, dense_seconds = dense_model(kind, data, args, seed)
            weights = os.path.join(folder, f"{kind}_{seed}.npz")
            save_weights(dense, weights, xt[:256])
            tp = TorchPruning(args.torch_python)
            loaded = tp(
                "load",
                kind=kind,
                weights=weights,
                data=data_path,
                calibration=args.calibration,
                threads=threads,
                seed=seed,
            )
            seed_entry = entry.setdefault("seeds", {}).setdefault(str(seed), {})
            seed_entry.update(
                dense_test_error=test_error(dense, xt, yt),
                dense_val_error=test_error(dense, xv, yv),
                dense_macs=macs(dense),
                dense_train_seconds=dense_seconds,
                torch=loaded,
            )
            print(kind, seed, json.dumps(seed_entry), flush=True)
            # warm-up (not timed): first calls trace and compile
            kprune_prune(dense, data, "l2", 2, args)
            tp("prune", importance="l2", budget=2, steps=args.tp_steps)
            runs = seed_entry.setdefault("runs", [])
            for importance in args.importances:
                for budget in args.budgets:
                    runs[:] = [
                        r
                        for r in runs
                        if (r["importance"], r["budget"]) != (importance, budget)
                    ]
                    load = os.getloadavg()[0]
                    small, ours = kprune_prune(dense, data, importance, budget, args)
                    theirs = tp(
                        "prune",
                        importance=importance,
                        budget=budget,
                        steps=args.tp_steps,
                    )
                    ours.update(kprune_finetune(small, data, args, seed))
                    theirs.update(
                        tp(
                            "finetune",
                            epochs=args.finetune_epochs,
                            lr=args.finetune_lr or args.lr,
                            batch=args.batch,
                            seed=seed,
                            samples=args.finetune_samples,
                            recalibrate=args.bn_recalibrate,
                        )
                    )
                    run = {
                        "importance": importance,
                        "budget": budget,
                        "seed": seed,
                        "load_average_1min": load,
                        "kprune": ours,
                        "torch_pruning": theirs,
                    }
                    runs.append(run)
                    print(
                        json.dumps(
                            {
                                k: {kk: vv for kk, vv in v.items() if kk != "widths"}
                                if isinstance(v, dict)
                                else v
                                for k, v in run.items()
                            }
                        ),
                        flush=True,
                    )
                    info["load_after"] = os.getloadavg()
                    write_results(name, result, render(result))
            tp.close()
    return result


def timing(result, kind, data, data_path, folder, args, name):
    """Pruning-call times only: `args.timing_only` rounds per (importance,
    budget), kprune then TP in each round, on the first seed's dense model."""
    x, xt = data[0], data[4]
    seed = args.seeds[0]
    dense, _ = dense_model(kind, data, args, seed)
    weights = os.path.join(folder, f"{kind}_{seed}.npz")
    save_weights(dense, weights, xt[:256])
    tp = TorchPruning(args.torch_python)
    tp(
        "load",
        kind=kind,
        weights=weights,
        data=data_path,
        calibration=args.calibration,
        threads=args.threads or os.cpu_count(),
        seed=seed,
    )
    cal = (x[: args.calibration], data[1][: args.calibration])
    for importance in args.importances:  # warm-up (not timed)
        kprune.prune(dense, cal, macs=0.5, importance=importance)
        tp("prune", importance=importance, budget=2, steps=args.tp_steps)
    label = f"{kind}, cold" if args.cold else kind
    rows = result.setdefault("timing", {}).setdefault(label, {})
    rows.update(command=result["command"], load_before=os.getloadavg(), runs=[])
    for importance in args.importances:
        for budget in args.budgets:
            for _ in range(args.timing_only):
                if args.cold:  # as a first call on this model: trace again
                    kprune_autodiff._STEPS.clear()
                start = time.perf_counter()
                kprune.prune(dense, cal, macs=1.0 / budget, importance=importance)
                ours = time.perf_counter() - start
                theirs = tp(
                    "prune", importance=importance, budget=budget, steps=args.tp_steps
                )
                rows["runs"].append(
                    {
                        "importance": importance,
                        "budget": budget,
                        "kprune_seconds": ours,
                        "tp_seconds": theirs["prune_seconds"],
                        "tp_step_seconds": theirs["step_seconds"],
                        "load_average_1min": os.getloadavg()[0],
                    }
                )
                print(json.dumps(rows["runs"][-1]), flush=True)
    rows["load_after"] = result["machine"]["load_after"] = os.getloadavg()
    tp.close()
    write_results(name, result, render(result))


def _timing_lines(result):
    lines = []
    for kind, entry in result.get("timing", {}).items():
        load = [round(v, 1) for v in entry.get("load_before", ())]
        lines += [
            "",
            f"## Pruning time only: {kind}",
            "",
            f"`{entry['command']}`: each (importance, budget) {{n}} rounds of "
            "`kprune.prune` then TP's bisection, one after the other, on the "
            f"same dense model, no fine-tuning; load average {load} before. "
            "Median seconds and the median of the per-round ratios.",
            "",
        ]
        rows = []
        keys = dict.fromkeys((r["importance"], r["budget"]) for r in entry["runs"])
        for importance, budget in keys:
            hits = [
                r
                for r in entry["runs"]
                if (r["importance"], r["budget"]) == (importance, budget)
            ]
            ours = [r["kprune_seconds"] for r in hits]
            theirs = [r["tp_seconds"] for r in hits]
            ratio = [a / b for a, b in zip(ours, theirs)]
            rows.append(
                [
                    importance,
                    f"{budget}x",
                    len(hits),
                    f"{np.median(ours):.2f}",
                    f"{np.median(theirs):.2f}",
                    f"{np.median(ratio):.2f}",
                    f"{min(ratio):.2f}-{max(ratio):.2f}",
                ]
            )
        lines[-2] = lines[-2].replace("{n}", str(len(hits)))
        lines += md_table(
            [
                "importance",
                "budget",
                "n",
                "kprune s",
                "TP prune-to-budget s",
                "ratio (median)",
                "ratio range",
            ],
            rows,
        )
    return lines


def _budget_rows(entry, importances):
    rows, all_met, ratios = [], [], []
    for importance in importances:
        for budget in BUDGETS:
            hits = [
                r
                for s in entry.get("seeds", {}).values()
                for r in s.get("runs", [])
                if r["importance"] == importance and r["budget"] == budget
            ]
            if not hits:
                continue
            k = [r["kprune"] for r in hits]
            t = [r["torch_pruning"] for r in hits]
            k_err = _mean([r["test_error"] for r in k])
            t_err = _mean([r["test_error"] for r in t])
            ratio = _mean(
                [a["prune_seconds"] / b["prune_seconds"] for a, b in zip(k, t)]
            )
            all_met.append(k_err <= t_err)
            ratios.append(ratio)
            rows.append(
                [
                    importance,
                    f"{budget}x",
                    len(hits),
                    f"{100 * k_err:.2f}",
                    f"{100 * t_err:.2f}",
                    "yes" if k_err <= t_err else "**no**",
                    f"{100 * _mean([r['val_error'] for r in k]):.2f}",
                    f"{100 * _mean([r['val_error'] for r in t]):.2f}",
                    f"{_mean([r['macs_ratio'] for r in k]):.4f}",
                    f"{_mean([r['macs_ratio'] for r in t]):.4f}",
                    f"{_mean([r['prune_seconds'] for r in k]):.2f}",
                    f"{_mean([r['prune_seconds'] for r in t]):.2f}",
                    f"{ratio:.2f}",
                    f"{_mean([r['step_seconds'] for r in t]):.2f}",
                ]
            )
    return rows, all_met, ratios


def render(result):
    info = result["machine"]
    load = [
        tuple(round(v, 1) for v in info.get(k, ()))
        for k in ("load_before", "load_after")
    ]
    lines = [
        "# kprune.prune vs Torch-Pruning (issue 21, Must show 3)",
        "",
        f"Runs: {'; '.join(f'`{c}`' for c in result['runs_of'])}. Machine: "
        f"{info.get('uname')}, {info.get('cpu_count')} CPUs (shared); last run "
        f"{info.get('date')}, load average {load[0]} before, {load[1]} after.",
        "",
        "Same network and dense weights (copied from Keras into PyTorch), same "
        "MNIST split (55k / 5k / 10k), same importance (`l2` group magnitude; "
        "`taylor` on the same 512 calibration images), same MACs budget "
        "(kprune's MAC rules on both sides), global ranking on both sides, the "
        "same fine-tuning recipe, images and image order. Test and validation "
        "error in % after fine-tuning, mean over the seeds (n). Pruning time "
        "in seconds: the call that reaches the budget, the two calls run one "
        "after the other in the same run (kprune: `kprune.prune`; TP: a "
        f"bisection of {result.get('tp_bisection_steps')} `MetaPruner` runs over "
        "its global `pruning_ratio`, as TP has no MACs target), their ratio "
        "(mean of per-run kprune / TP; < 1: kprune faster), and TP's single "
        "`MetaPruner` step at the ratio found (a lower bound for TP, if the "
        "ratio were known in advance). Both sides warmed up first.",
    ]
    verdicts = []
    for kind, entry in result["models"].items():
        seeds = entry.get("seeds", {})
        if not seeds:
            continue
        lines += ["", f"## {kind}", "", f"Recipe: {entry['recipe']}", ""]
        for seed, s in seeds.items():
            t = s.get("torch", {})
            lines.append(
                f"- seed {seed}: dense test error Keras "
                f"{100 * s['dense_test_error']:.2f} %, PyTorch copy "
                f"{100 * t.get('dense_test_error', float('nan')):.2f} % "
                f"(largest logit difference {t.get('max_logit_difference', 0):.1e}); "
                f"torch {t.get('torch')}, torch_pruning.__version__ "
                f"{t.get('torch_pruning')}, {t.get('threads')} threads."
            )
        lines.append("")
        importances = list(
            dict.fromkeys(r["importance"] for s in seeds.values() for r in s["runs"])
        )
        rows, met, ratios = _budget_rows(entry, importances)
        lines += md_table(
            [
                "importance",
                "budget",
                "n",
                "kprune test",
                "TP test",
                "kprune <= TP",
                "kprune val",
                "TP val",
                "kprune MACs ratio",
                "TP MACs ratio",
                "kprune prune s",
                "TP prune-to-budget s",
                "time ratio",
                "TP one step s",
            ],
            rows,
        )
        if met:
            verdicts.append(
                f"- {kind}: kprune's test error <= TP's at {sum(met)} of {len(met)} "
                f"(importance, budget) points (mean over seeds); pruning-time ratio "
                f"kprune / TP {min(ratios):.2f}-{max(ratios):.2f} "
                f"(mean {_mean(ratios):.2f})."
            )
    lines += _timing_lines(result)
    lines += ["", "## Targets", ""] + verdicts
    if result.get("notes"):  # written by hand, kept in the JSON
        lines += ["", result["notes"].strip()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
