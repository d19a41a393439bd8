"""Fits the fixed cost of one operation that `depth="auto"` uses (issue 21).

`kprune.prune(depth="auto")` estimates a model's time as

    T = a * (MACs + k * elements + c * ops)

(`kprune.criteria.depth_budget`; `k`: `ACTIVATION_COSTS` of the format,
from prune_speed_activation_cost; `c`: `OP_COSTS`). This script measures
`c`. Variants of each `keras.applications` model at 224x224 (random
weights), all at `--budget`x fewer MACs than the dense model: its first
0, 3, 5 and 7 (`--drops`) residual blocks removed
(`kprune.surgery.drop_blocks`), then the widths pruned to the rest of the
budget (`kprune.prune(round_to=8, activation_cost=format)`); plus the dense
model. They differ in their number of operations at nearly the same MACs.
Each is exported (float32, and int8 calibrated on 8 random images) and the
files of one format are timed side by side (LiteRT XNNPACK, batch 1, 1 and
2 threads, `--rounds` interleaved rounds of `--runs` calls; the minimum).
For each (model, format, threads), least squares on

    T_i = a * (MACs_i + k * elements_i) + b * ops_i,   c = b / a

(MACs, elements and ops counted by `depth_budget.call_costs`) gives `c`,
printed beside `OP_COSTS` with each variant's speed-up over dense divided
by its MACs reduction.

    python benchmarks/prune_depth_fit.py --models MobileNetV2

Writes benchmarks/results/prune_depth_fit{--tag}.json / .md.
"""

import argparse
import os
import tempfile

import keras
import numpy as np
from common import command_line, machine, md_table, now, write_results
from prune_speed import export, time_side_by_side

import kprune
from kprune.criteria.depth_budget import OP_COSTS, call_costs
from kprune.pruning.budget import ACTIVATION_COSTS
from kprune.surgery.graph import Graph

FORMATS = ("float32", "int8")


def counts(model):
    """`(MACs, elements, ops)` of `model`, summed over its calls."""
    return np.array(list(call_costs(Graph(model)).values())).sum(axis=0)


def shallow(name, drops):
    """The dense model and, per number of blocks dropped, `(model, its
    MACs / the dense MACs)` with its first residual blocks removed."""
    keras.utils.set_random_seed(0)
    dense = getattr(keras.applications, name)(weights=None, input_shape=(224, 224, 3))
    base = kprune.report.summary(dense)["macs"]
    blocks = kprune.surgery.residual_blocks(dense)
    found = {}
    for count in drops:
        if count > len(blocks):
            print(f"{name}: {count} blocks asked, {len(blocks)} found; skipped")
            continue
        model = kprune.surgery.drop_blocks(dense, blocks[:count]) if count else dense
        found[count] = (model, kprune.report.summary(model)["macs"] / base)
    return dense, base, found


def variants(dense, base, dropped, budget, fmt):
    """`{label: (model, macs_ratio)}`: the dense model and each dropped
    model with its widths pruned to `1 / budget` of the dense MACs."""
    found = {"dense": (dense, 1.0)}
    for count, (model, share) in dropped.items():
        small, _ = kprune.prune(
            model,
            macs=min(1.0, 1.0 / (budget * share)),
            round_to=8,
            activation_cost=fmt,
        )
        found[f"{count} dropped"] = (small, kprune.report.summary(small)["macs"] / base)
    return found


def fit(times, costs, k):
    """`(a, c, residuals)` of the least squares `T = a (M + k E) + b O`,
    `c = b / a` (times in ms, costs rows `(M, E, O)`)."""
    costs = np.asarray(costs, float)
    design = np.stack([costs[:, 0] + k * costs[:, 1], costs[:, 2]], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, np.asarray(times, float), rcond=None)
    return float(a), float(b / a), (design @ [a, b] - times).tolist()


def run(args, argv):
    result = {
        "command": command_line(__file__, argv),
        "machine": machine(),
        "date": now(),
        "args": vars(args),
        "op_costs": dict(OP_COSTS),
        "fits": [],
    }
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            dense, base, dropped = shallow(name, args.drops)
            for fmt in FORMATS:
                found = variants(dense, base, dropped, args.budget, fmt)
                paths, rows = [], {}
                for label, (model, ratio) in found.items():
                    path = os.path.join(folder, f"{name}_{fmt}_{len(paths)}.tflite")
                    export(model, path, fmt)
                    paths.append(path)
                    rows[path] = {
                        "variant": label,
                        "macs_ratio": ratio,
                        "counts": counts(model).tolist(),
                    }
                for threads in args.threads:
                    load = os.getloadavg()
                    timed = time_side_by_side(paths, threads, args.runs, args.rounds)
                    ms = [timed[p][0] for p in paths]
                    k = ACTIVATION_COSTS[fmt]
                    a, c, residuals = fit(ms, [rows[p]["counts"] for p in paths], k)
                    entry = {
                        "model": name,
                        "format": fmt,
                        "threads": threads,
                        "k": k,
                        "a_ms_per_mac": a,
                        "c": c,
                        "load_before": load,
                        "variants": [
                            dict(rows[p], ms=t, residual_ms=r)
                            for p, t, r in zip(paths, ms, residuals)
                        ],
                    }
                    result["fits"].append(entry)
                    print(name, fmt, threads, f"c = {c:.3g}", ms, flush=True)
    return result


def render(result):
    lines = [
        "# Fixed cost of one operation (`OP_COSTS`, issue 21)",
        "",
        f"Run: `{result['command']}` on {result['machine']['platform']}, "
        f"{result['machine']['cpu_count']} CPUs, {result['date']}.",
        "",
        "Least squares of `T = a (MACs + k elements) + b ops`, `c = b / a` "
        "(MAC-equivalents per operation), over the dense model and the "
        f"variants at {result['args']['budget']}x fewer MACs with their first "
        "residual blocks dropped (LiteRT XNNPACK, batch 1, minimum of "
        "side-by-side rounds). `OP_COSTS` in kprune: "
        + ", ".join(f"{f} {v:.3g}" for f, v in result["op_costs"].items())
        + ". Speed-up / MACs reduction per variant (1.0: all the speed the "
        "MACs promise).",
        "",
    ]
    labels = [v["variant"] for v in result["fits"][0]["variants"][1:]]
    rows = []
    for entry in result["fits"]:
        dense = entry["variants"][0]["ms"]
        shares = {
            v["variant"]: dense / v["ms"] * v["macs_ratio"]
            for v in entry["variants"][1:]
        }
        rows.append(
            [entry["model"], entry["format"], entry["threads"], f"{entry['c']:.3g}"]
            + [f"{shares[label]:.2f}" if label in shares else "-" for label in labels]
            + [f"{dense:.2f}"]
        )
    lines += md_table(["model", "format", "threads", "c"] + labels + ["dense ms"], rows)
    if result.get("notes"):
        lines += ["", result["notes"].strip()]
    return lines


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["MobileNetV2"])
    parser.add_argument("--drops", type=int, nargs="+", default=[0, 3, 5, 7])
    parser.add_argument("--budget", type=float, default=4.0)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--tag", default="")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    result = run(args, argv)
    name = "prune_depth_fit" + args.tag
    write_results(name, result, "\n".join(render(result)) + "\n")


if __name__ == "__main__":
    main()
