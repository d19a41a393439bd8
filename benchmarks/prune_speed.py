"""Speed at a MACs budget, and latency targets (issue 21, "Must show" 2 and 4).

`keras.applications` MobileNetV2, ResNet50 and EfficientNetB0 at 224x224
(random weights, `weights=None`), pruned by `kprune.prune(importance="l2")`
to 2x and 4x fewer MACs, with and without `round_to=8`. Every model (dense
and pruned) is exported to TFLite float32 and int8 (full-integer, calibrated
on 8 random images: only the timing matters here) and timed with the LiteRT
interpreter (XNNPACK, batch 1) with 1 and 2 threads. The files of one model
are timed side by side: `--rounds` rounds, each timing every file
`--runs` times in turn; the latency of a file is the median over all its
runs. Speed-up = dense latency / pruned latency; its ratio to the MACs
reduction is what the runtime gives of what the MACs promise (target >= 0.8
with `round_to=8`; Torch-Pruning reports 0.57 for ResNet-50).

`--latency`: for each model, a `LatencyTable` (float32, 1 thread) is built
(its time reported separately), and `kprune.prune(latency=dense / 2)` must
land within 10 % of the target on this machine.

`--cost`: `kprune.prune` on ResNet50 to 2x fewer MACs with 256 random
calibration images, timed for `l2`, `activation` and `taylor` (target:
under 60 s on 2 cores).

    python benchmarks/prune_speed.py --models MobileNetV2 ResNet50 EfficientNetB0

Writes benchmarks/results/prune_speed.json / .md (and prune_cost.* with
--cost).
"""

import argparse
import os
import tempfile
import time

import keras
import numpy as np
from common import (
    REPO,
    command_line,
    machine,
    md_table,
    read_json,
    run_line,
    write_results,
)

import kprune
from kprune.criteria import LatencyTable
from kprune.export import measure_tflite, to_tflite


def export(model, path, dtype):
    kwargs = {}
    if dtype == "int8":
        rng = np.random.default_rng(0)
        kwargs = dict(
            quantize="int8",
            representative_data=rng.random((8, 224, 224, 3)).astype("float32"),
            calibration_samples=8,
        )
    start = time.perf_counter()
    to_tflite(model, path, verify=False, **kwargs)
    return time.perf_counter() - start


def time_side_by_side(paths, threads, runs, rounds):
    """Latency (ms) of each file, timed in interleaved rounds.

    Returns `{path: (minimum, median)}` over all runs of all rounds. The
    machine is shared: the minimum (the least-contended run) is the figure
    used for speed-ups; the median is kept for reference.
    """
    times = {p: [] for p in paths}
    for _ in range(rounds):
        for path in paths:
            stats = measure_tflite(path, num_threads=threads, runs=runs, warmup=2)
            times[path].append((stats["latency_ms_min"], stats["latency_ms_median"]))
    return {
        p: (min(t[0] for t in v), float(np.median([t[1] for t in v])))
        for p, v in times.items()
    }


def speed(args, result, folder):
    for name in args.models:
        keras.utils.set_random_seed(0)
        dense = getattr(keras.applications, name)(
            weights=None, input_shape=(224, 224, 3)
        )
        base = kprune.report.summary(dense)["macs"]
        variants = [("dense", dense, 1.0, None)]
        for budget in args.budgets:
            for round_to in (None, 8):
                start = time.perf_counter()
                small, plan = kprune.prune(dense, macs=1 / budget, round_to=round_to)
                seconds = time.perf_counter() - start
                print(
                    f"{name} {budget}x round_to={round_to}: "
                    f"{plan.report['macs_ratio']:.4f} in {seconds:.1f} s",
                    flush=True,
                )
                variants.append(
                    (
                        f"{budget}x round_to={round_to}",
                        small,
                        plan.report["macs_ratio"],
                        seconds,
                    )
                )
        entry = {"macs": base, "variants": {}}
        entry.update(command=command_line(__file__), machine=machine())
        for dtype in args.dtypes:
            paths = {}
            for label, model, ratio, seconds in variants:
                path = os.path.join(
                    folder,
                    f"{name}_{label}_{dtype}.tflite".replace(" ", "_").replace("=", ""),
                )
                convert = export(model, path, dtype)
                paths[label] = path
                v = entry["variants"].setdefault(label, {"macs_ratio": ratio})
                v["prune_seconds"] = seconds
                v.setdefault("convert_seconds", {})[dtype] = convert
            for threads in args.threads:
                load = os.getloadavg()
                ms = time_side_by_side(
                    list(paths.values()), threads, args.runs, args.rounds
                )
                dense_ms = ms[paths["dense"]][0]
                for label, path in paths.items():
                    v = entry["variants"][label]
                    key = f"{dtype}_t{threads}"
                    speedup = dense_ms / ms[path][0]
                    v[key] = {
                        "latency_ms": ms[path][0],
                        "latency_ms_median": ms[path][1],
                        "speedup": speedup,
                        "speedup_per_macs_reduction": speedup * v["macs_ratio"],
                        "load": load,
                    }
                print(
                    name,
                    dtype,
                    threads,
                    {os.path.basename(k): v for k, v in ms.items()},
                    flush=True,
                )
                result.setdefault("speed", {})[name] = entry
                write_results("prune_speed", result, render(result))
        if args.latency:
            table = LatencyTable(
                num_threads=1,
                dtype="float32",
                grid=tuple(args.grid),
                round_to=8,
                runs=args.runs,
            )
            start = time.perf_counter()
            table.build(dense)
            build_seconds = time.perf_counter() - start
            dense_ms = table.measure_model(dense)
            target = dense_ms / 2
            start = time.perf_counter()
            small, plan = kprune.prune(
                dense, latency=target, latency_table=table, round_to=8
            )
            seconds = time.perf_counter() - start
            # An independent re-measurement, side by side with the dense model.
            paths = [os.path.join(folder, f"{name}_lt_{k}.tflite") for k in ("d", "p")]
            export(dense, paths[0], "float32")
            export(small, paths[1], "float32")
            ms = time_side_by_side(paths, 1, args.runs, args.rounds)
            result.setdefault("latency_target", {})[name] = {
                "table_build_seconds": build_seconds,
                "table_measurements": table.measured,
                "table_file": table.path,
                "dense_ms": dense_ms,
                "target_ms": target,
                "achieved_ms_in_prune": plan.report["latency_after_ms"],
                "within_10pct_in_prune": abs(plan.report["latency_after_ms"] - target)
                <= 0.1 * target,
                "remeasured_dense_ms": ms[paths[0]][0],
                "remeasured_pruned_ms": ms[paths[1]][0],
                "remeasured_ratio": ms[paths[1]][0] / ms[paths[0]][0],
                "macs_ratio": plan.report["macs_ratio"],
                "prune_seconds_without_table": seconds,
                "tries": plan.report["rounds"][0]["tries"],
            }
            print(name, result["latency_target"][name], flush=True)
            write_results("prune_speed", result, render(result))


def cost(args):
    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3))
    rng = np.random.default_rng(0)
    x = rng.random((256, 224, 224, 3)).astype("float32")
    y = rng.integers(0, 1000, 256)
    out = {"command": command_line(__file__), "machine": machine(), "runs": []}
    earlier = read_json(os.path.join(REPO, "benchmarks", "results", "prune_cost.json"))
    if earlier and earlier.get("runs"):  # keep what earlier runs measured
        out["earlier"] = [
            {**r, "date": earlier["machine"].get("date")}
            for r in earlier.get("earlier", []) + earlier["runs"]
            if "date" not in r
        ] + [r for r in earlier.get("earlier", []) if "date" in r]
    for importance in args.cost_importances:
        load = os.getloadavg()
        start = time.perf_counter()
        _, plan = kprune.prune(
            model, (x, y), macs=0.5, importance=importance, batch_size=32
        )
        seconds = time.perf_counter() - start
        out["runs"].append(
            {
                "importance": importance,
                "seconds": seconds,
                "macs_ratio": plan.report["macs_ratio"],
                "load": load,
            }
        )
        print(out["runs"][-1], flush=True)
    lines = [
        "# kprune.prune on ResNet50: cost (issue 21, Must show 4)",
        "",
        f"Run: {run_line(out['command'], out['machine'])}.",
        "",
        "ResNet50 (224x224, random weights), 2x fewer MACs, 256 random "
        "calibration images (batch 32); wall time of the whole "
        "`kprune.prune` call (scoring, selection, rebuild, checks). Target: "
        "under 60 s on 2 cores.",
        "",
    ]
    lines += md_table(
        ["importance", "seconds", "MACs ratio", "load average (1/5/15 min)"],
        [
            [
                r["importance"],
                f"{r['seconds']:.1f}",
                f"{r['macs_ratio']:.4f}",
                " / ".join(f"{v:.1f}" for v in r["load"]),
            ]
            for r in out["runs"]
        ],
    )
    if out.get("earlier"):
        lines += ["", "Earlier runs (same call; their load in the last column):", ""]
        lines += md_table(
            ["date", "importance", "seconds", "MACs ratio", "load average"],
            [
                [
                    r["date"],
                    r["importance"],
                    f"{r['seconds']:.1f}",
                    f"{r['macs_ratio']:.4f}",
                    " / ".join(f"{v:.1f}" for v in r["load"]),
                ]
                for r in out["earlier"]
            ],
        )
    write_results("prune_cost", out, "\n".join(lines) + "\n")


def render(result):
    lines = ["# Pruning to a MACs budget: LiteRT speed (issue 21)", ""]
    lines.append(f"Run: {run_line(result['command'], result['machine'])}.")
    lines += [
        "",
        "LiteRT (XNNPACK), batch 1, latency in ms of files timed side by "
        "side in interleaved rounds: the minimum over all runs (the machine "
        "is shared; the least-contended run is the figure used, medians are "
        "in the JSON); `x` = speed-up over dense; `/M` = speed-up "
        "divided by the MACs reduction (1.0: all the speed the MACs "
        "promise). Load average at the start of each timing in the JSON.",
        "",
    ]
    for name, entry in result.get("speed", {}).items():
        lines += [f"## {name} ({entry['macs'] / 1e6:.0f} M MACs)", ""]
        if "command" in entry:
            lines += [f"Run: {run_line(entry['command'], entry['machine'])}.", ""]
        keys = sorted({k for v in entry["variants"].values() for k in v if "_t" in k})
        header = ["variant", "MACs ratio"] + keys
        rows = []
        for label, v in entry["variants"].items():
            row = [label, f"{v['macs_ratio']:.3f}"]
            for k in keys:
                cell = v.get(k)
                row.append(
                    "-"
                    if cell is None
                    else f"{cell['latency_ms']:.1f} ms, x{cell['speedup']:.2f}, "
                    f"/M {cell['speedup_per_macs_reduction']:.2f}"
                )
            rows.append(row)
        lines += md_table(header, rows) + [""]
    if result.get("latency_target"):
        lines += ["## Latency targets (float32, 1 thread, target = dense / 2)", ""]
        rows = []
        for name, t in result["latency_target"].items():
            rows.append(
                [
                    name,
                    f"{t['dense_ms']:.1f}",
                    f"{t['target_ms']:.1f}",
                    f"{t['achieved_ms_in_prune']:.1f}",
                    "yes" if t["within_10pct_in_prune"] else "no",
                    f"{t['remeasured_ratio']:.3f}",
                    f"{t['macs_ratio']:.3f}",
                    f"{t['table_build_seconds']:.0f} ({t['table_measurements']})",
                    f"{t['prune_seconds_without_table']:.0f}",
                ]
            )
        lines += md_table(
            [
                "model",
                "dense ms",
                "target ms",
                "achieved ms",
                "within 10 %",
                "re-measured pruned/dense",
                "MACs ratio",
                "table build s (measurements)",
                "prune s (table excluded)",
            ],
            rows,
        )
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=["MobileNetV2", "ResNet50", "EfficientNetB0"]
    )
    parser.add_argument("--budgets", nargs="+", type=int, default=[2, 4])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "int8"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency", action="store_true")
    parser.add_argument("--grid", nargs="+", type=float, default=[0.5, 1.0])
    parser.add_argument("--no-speed", action="store_true")
    parser.add_argument("--cost", action="store_true")
    parser.add_argument(
        "--cost-importances", nargs="+", default=["l2", "activation", "taylor"]
    )
    args = parser.parse_args(argv)
    if args.cost:
        cost(args)
    if args.no_speed and not args.latency:
        return
    result = read_json(
        os.path.join(REPO, "benchmarks", "results", "prune_speed.json"), {}
    )
    result.update(command=command_line(__file__, argv), machine=machine())
    if args.no_speed:
        args.budgets = []
        args.dtypes = []
    with tempfile.TemporaryDirectory(prefix="kprune_speed_") as folder:
        speed(args, result, folder)


if __name__ == "__main__":
    main()
