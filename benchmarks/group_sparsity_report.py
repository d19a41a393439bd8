"""Result files of benchmarks/group_sparsity.py and group_sparsity_sweeps.py.

Reading, merging and rendering (markdown) the JSON results: one row per
trained setting, seed summaries, and the step-time tables.
"""

import json

import numpy as np
from common import md_table, read_json, run_line


def load_results(path, name="group_sparsity"):
    return read_json(path, {"benchmark": name, "models": {}})


def merge_results(results, paths):
    """`results` with the rows (and timings) of the result files `paths`."""
    for part_path in paths:
        part = read_json(part_path)
        if part is None:
            raise SystemExit(f"--merge: no such file. Received: {part_path!r}")
        for model_name, entry in part["models"].items():
            target = results["models"].setdefault(model_name, {"rows": {}})
            target["rows"].update(entry["rows"])
            if "timing" in entry:
                target["timing"] = entry["timing"]
            for backend, timing in entry.get("constraint_timing", {}).items():
                target.setdefault("constraint_timing", {})[backend] = timing
    return results


def fmt_widths(widths):
    return "-".join(str(v) for v in widths.values())


def shift_of(row):
    """Pixels of random shift the row's training used (0: none)."""
    return row["hparams"].get("shift") or row.get("recipe", {}).get("shift", 0)


def backend_of(row):
    """The Keras backend a row was trained on (old rows: TensorFlow)."""
    return row.get("machine", {}).get("backend") or "tensorflow"


def seed_summary(results):
    """Markdown lines: mean, min and max over seeds of repeated settings."""
    groups = {}
    for model_name, entry in results["models"].items():
        for row in entry.get("rows", {}).values():
            settings = json.dumps(row["hparams"], sort_keys=True)
            key = (
                model_name,
                row["method"],
                row["epochs"],
                shift_of(row),
                backend_of(row),
                settings,
            )
            groups.setdefault(key, []).append(row)
    table = []
    for (model_name, method, epochs, shift, backend, _), rows in groups.items():
        if len(rows) < 2:
            continue
        errors = [100 * r["test_error"] for r in rows]
        reductions = [r["macs_reduction"] for r in rows]
        met = sum(bool(r.get("target_met")) for r in rows)
        seeds = sorted(r["recipe"].get("seed", 0) for r in rows)
        table.append(
            [
                model_name,
                method
                + (f", shift {shift}" if shift else "")
                + (f", {backend}" if backend != "tensorflow" else ""),
                epochs,
                ", ".join(str(seed) for seed in seeds),
                f"{np.mean(errors):.2f} % ({min(errors):.2f}-{max(errors):.2f})",
                f"{np.mean(reductions):.1f}x ({min(reductions):.1f}-"
                f"{max(reductions):.1f})",
                f"{met} of {len(rows)}",
            ]
        )
    if not table:
        return []
    header = [
        "model",
        "method",
        "epochs",
        "seeds",
        "test error: mean (min-max)",
        "MACs reduction: mean (min-max)",
        "seeds meeting the target",
    ]
    return ["", "Settings run with several seeds:", ""] + md_table(header, table)


def rows_table(results, targets, order, validation=False):
    """Markdown lines: one table row per result row (test or validation).

    `targets[model]` holds `macs_reduction` and `test_error`; test rows are
    sorted by epochs, then by the position of their method key in `order`.
    """
    error_name = "validation error" if validation else "test error"
    order = list(order)
    table = []
    for model_name, entry in results["models"].items():
        target = targets[model_name]
        rows = entry.get("rows", {})
        if validation:
            ordered = [rows[k] for k in sorted(rows)]
        else:
            ordered = sorted(
                rows.values(),
                key=lambda r: (
                    r["epochs"],
                    order.index(r["method_key"]),
                    r["recipe"].get("seed", 0),
                ),
            )
        for row in ordered:
            settings = ", ".join(
                f"{k}={v}" for k, v in row["hparams"].items() if k != "scales"
            )
            if row["hparams"].get("scales"):
                settings += ", scales " + "/".join(
                    f"{v:g}" for v in row["hparams"]["scales"].values()
                )
            if row.get("recipe", {}).get("seed"):
                settings += f", seed={row['recipe']['seed']}"
            if row.get("recipe", {}).get("label_smoothing"):
                settings += f", label_smoothing={row['recipe']['label_smoothing']}"
            if row.get("recipe", {}).get("shift"):
                settings += f", shift={row['recipe']['shift']} (all training)"
            if backend_of(row) != "tensorflow":
                settings += f", backend={backend_of(row)}"
            if "teacher_test_error" in row:
                settings += (
                    f" (teacher: {100 * row['teacher_test_error']:.2f} % "
                    f"{error_name}, {row['teacher_seconds']:.0f} s)"
                )
            settings = settings.lstrip(", ")
            reduction = f"{row['macs_reduction']:.1f}x"
            macs = f"{row['macs']:,}"
            params = f"{row['params']:,}"
            widths = fmt_widths(row["widths"])
            if "macs_kept_pixels" in row:  # the old, script-built variant
                reduction += (
                    f" ({row['macs_reduction_kept_pixels']:.1f}x fed with the "
                    f"{row['input_pixels_kept']} kept pixels)"
                )
                macs += f" ({row['macs_kept_pixels']:,})"
                params += f" ({row['params_kept_pixels']:,})"
                widths = f"{row['input_pixels_kept']}-{widths}"
            elif "input_pixels_kept" in row:
                widths = f"{row['input_pixels_kept']} px-{widths}"
            if row.get("method_key") == "penalty" and row.get(
                "units_below_1pct_of_max_norm"
            ):
                small = "/".join(
                    str(v) for v in row["units_below_1pct_of_max_norm"].values()
                )
                widths += f" (units with norm < 1 % of the layer's max: {small})"
            if validation:
                verdict = "-"
            elif row.get("method_key") == "plain":
                verdict = "reference"
            else:
                met = row["target_met"]
                verdict = (
                    f"{'met' if met else 'NOT met'} (>= {target['macs_reduction']:.0f}x "
                    f"at <= {100 * target['test_error']:.1f} %)"
                )
                if shift_of(row):
                    verdict += (
                        ", but with augmentation: compare with plain "
                        f"shift={shift_of(row)}, not with the papers"
                    )
            table.append(
                [
                    model_name,
                    row["method"],
                    f"{100 * row['test_error']:.2f} %",
                    params,
                    macs,
                    reduction,
                    widths,
                    row["epochs"],
                    f"{row['seconds']:.0f}",
                    settings or "-",
                    verdict,
                ]
            )
    header = [
        "model",
        "method",
        error_name,
        "params",
        "MACs",
        "MACs reduction",
        "widths",
        "epochs",
        "seconds",
        "settings",
        "target",
    ]
    return md_table(header, table)


def _ratio(r):
    return f"{r['median_ratio']:.3f}x ({r.get('min_time_ratio', float('nan')):.3f}x)"


def proximal_timing_table(timing):
    lines = [
        "",
        "Training step time with the kprune callbacks vs plain `fit`: same model, "
        "data and optimizer; each round trains each variant for 200 steps, in "
        "rotating order; ratio = median over rounds of the per-round ratio (in "
        "brackets: ratio of the fastest rounds). Target <= 1.10x. Rounds are "
        "shorter than an epoch, so the epoch-end work (SparsityLogger, epoch-end "
        "ProximalStep) runs 3x more often than in real training.",
        "",
    ]
    header = [
        "model",
        "plain ms/step",
        "ProximalStep every 50 steps + SparsityLogger",
        "ratio",
        "ProximalStep at epoch end + SparsityLogger",
        "ratio",
        "reweighted ProximalStep with pixel groups every 50 steps + SparsityLogger",
        "ratio",
        "target",
    ]
    rows = []
    for t in timing:
        ms = t["ms_per_step_median"]
        r = t["ratio_vs_plain"]
        cells = [t["model"], f"{ms['plain']:.2f}"]
        for kind in ("every_50_steps", "epoch_end", "reweighted_pixels"):
            if kind in r:
                cells += [f"{ms[kind]:.2f}", _ratio(r[kind])]
            else:
                cells += ["-", "-"]
        met = "met" if t["target_met"] else "NOT met"
        rows.append(cells + [f"{met} ({t['rounds']} rounds)"])
    return lines + md_table(header, rows)


def constraint_timing_table(timing):
    lines = [
        "",
        "Step time of the constraint method vs plain `fit`, measured the same "
        "way (no callback: the proximal step runs inside the optimizer step). "
        "Target <= 1.03x for the constraint reading the learning rate in the "
        "step (the method). Beside it: the same with a fixed `step_size` (no "
        "read: the cost of reading it), with the step size in a variable a "
        "callback sets to the learning rate before every batch (TensorFlow "
        "only; on JAX each change would also need a recompilation), and "
        "ProximalStep every 50 steps + SparsityLogger. CPU time: the median "
        "per-round ratio of the process CPU time (all threads), less "
        "sensitive to the other jobs on the shared machine; most so with "
        "threads = 1 (`TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1`, or "
        "`XLA_FLAGS='--xla_cpu_multi_thread_eigen=false "
        "intra_op_parallelism_threads=1'` for JAX), where no thread pool "
        "spins while it waits for a core. Load: the 1-minute load average "
        "before and after the run (2 cores).",
        "",
    ]
    header = [
        "model",
        "backend",
        "batch",
        "threads",
        "plain ms/step",
        "constraint (lr read in the step)",
        "ratio",
        "constraint, fixed step_size",
        "ratio",
        "constraint, step size set by a per-batch callback",
        "ratio",
        "ProximalStep every 50 steps + SparsityLogger",
        "ratio",
        "load (1 min, before -> after)",
        "target",
    ]
    rows = []
    for t in timing:
        ms = t["ms_per_step_median"]
        r = t["ratio_vs_plain"]
        cells = [t["model"], t["backend"], str(t["batch_size"])]
        cells += [str(t.get("threads", "all")), f"{ms['plain']:.2f}"]
        for kind in (
            "constraint",
            "constraint_fixed_t",
            "constraint_t_callback",
            "every_50_steps",
        ):
            if kind in r:
                cpu = r[kind].get("median_cpu_ratio")
                cpu = f"; CPU time {cpu:.3f}x" if cpu is not None else ""
                cells += [f"{ms[kind]:.2f}", _ratio(r[kind]) + cpu]
            else:
                cells += ["-", "-"]
        if "load_before" in t:
            cells.append(f"{t['load_before']:.1f} -> {t['load_after']:.1f}")
        else:
            cells.append("-")
        met = "met" if t["target_met"] else "NOT met"
        rows.append(cells + [f"{met} ({t['rounds']} rounds)"])
    lines += md_table(header, rows)
    costs = []  # one line per (model, batch): thread count does not change it
    for t in timing:
        cost = t.get("xla_cost")
        if cost:
            plain, constraint = cost["plain"], cost["constraint"]
            costs.append(
                f"XLA's cost analysis of the compiled train step ({t['model']}, "
                f"batch {t['batch_size']}, JAX): the constraints add "
                f"{100 * (constraint['flops'] / plain['flops'] - 1):.1f} % flops "
                f"and {100 * (constraint['bytes'] / plain['bytes'] - 1):.1f} % "
                f"bytes accessed ({plain['bytes'] / 1e6:.1f} -> "
                f"{constraint['bytes'] / 1e6:.1f} MB per step)."
            )
    for line in dict.fromkeys(costs):
        lines += ["", line]
    return lines


def run_lines(results):
    lines = ["", "Runs (command, machine, date):", ""]
    seen = set()
    for entry in results["models"].values():
        records = list(entry.get("rows", {}).values())
        if "timing" in entry:
            records.append(entry["timing"])
        records += list(entry.get("constraint_timing", {}).values())
        for row in records:
            key = (row.get("command"), row.get("date"))
            if key in seen:
                continue
            seen.add(key)
            lines.append(
                "- "
                + run_line(row.get("command"), row.get("machine", {}), row.get("date"))
            )
    return lines


def markdown(results, targets, order):
    """The markdown of benchmarks/results/group_sparsity.md."""
    lines = [
        "# Group sparsity on MNIST (Alvarez & Salzmann 2016)",
        "",
        "Full MNIST (60k train / 10k test). Each model: same epochs, "
        "SGD (momentum 0.9, lr 0.05, cosine decay to 2 %), batch 100, seed 0; "
        "ProximalStep every 50 steps; `lambda_l = strength x scale_l`. "
        "Params / MACs / widths after `kprune.surgery.slim(model, "
        "prune_inputs=True)` (MACs per image; `N px-` = input pixels still "
        "read). "
        "`seconds` = training wall time on the machine below (shared, so "
        "only roughly comparable between rows).",
        "",
    ]
    lines += rows_table(results, targets, order)
    lines += seed_summary(results)
    entries = results["models"].values()
    timing = [entry["timing"] for entry in entries if "timing" in entry]
    if timing:
        lines += proximal_timing_table(timing)
    constraint = [
        t for entry in entries for t in entry.get("constraint_timing", {}).values()
    ]
    if constraint:
        lines += constraint_timing_table(constraint)
    lines += run_lines(results)
    return "\n".join(lines) + "\n"
