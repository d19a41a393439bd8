"""Before/after comparison of two models, as a dict, a table or JSON."""

import json
import os

import numpy as np

from kprune._atomic import write_text
from kprune.report.summary import summary

TOTALS = (
    "params",
    "trainable_params",
    "nonzero_params",
    "kernel_nonzero_params",
    "macs",
)


def _as_summary(obj, arg):
    if isinstance(obj, dict):
        if "layers" not in obj or "params" not in obj:
            raise ValueError(
                f"`{arg}` is a dict but not a `kprune.report.summary` result. "
                f"Received: {arg} keys={sorted(obj)}"
            )
        return obj
    return summary(obj)


def _ratio(before, after):
    if before is None or after is None or before == 0:
        return None
    return after / before


def _pair(before, after):
    return {"before": before, "after": after, "ratio": _ratio(before, after)}


def compare(before, after, latency=False, num_threads=1, dtype="float32", runs=20):
    """Compare two models (or two `summary` dicts), e.g. before/after pruning.

    `ratio = after / before` (None where `before` is 0 or missing).

    With `latency=True` both models are exported to TFLite and timed with
    LiteRT (`kprune.export.model_latency`, batch 1, median of `runs`), and
    the result gains `latency_ms` (`{"before", "after", "ratio"}`),
    `speedup = latency_before / latency_after`, `macs_reduction =
    macs_before / macs_after` and `speedup_per_macs_reduction = speedup /
    macs_reduction` (1.0: the runtime gives all the speed the MACs promise;
    Torch-Pruning reports 0.57 for ResNet-50 on a GPU).

    Args:
        before: the original model, or its `summary(...)`.
        after: the pruned / slimmed model, or its `summary(...)`.
        latency: also measure LiteRT latency (needs models, not summaries).
        num_threads: LiteRT threads for `latency`.
        dtype: "float32" or "int8" for `latency`.
        runs: timed calls per model for `latency`.

    Returns:
        A JSON-able dict: `before` / `after` model names; for each of
        `params`, `trainable_params`, `nonzero_params`,
        `kernel_nonzero_params` and `macs` a dict `{"before", "after",
        "ratio"}`; `sparsity` and `kernel_sparsity` as `{"before",
        "after"}`; and `layers`, one entry per layer name found in either
        model (before's order, then new layers) with `name`, `class_name`
        and `{"before", "after", "ratio"}` for `width`, `params`,
        `nonzero_params` and `macs` (None where the layer is absent).

    Example:

    >>> import keras
    >>> wide = keras.Sequential([keras.Input((8,)), keras.layers.Dense(6)])
    >>> thin = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    >>> c = compare(wide, thin)
    >>> c["params"]["ratio"]
    0.5
    """
    timing = None
    if latency:
        if isinstance(before, dict) or isinstance(after, dict):
            raise ValueError(
                "compare(..., latency=True) needs the two models, not summaries. "
                f"Received: before={type(before).__name__}, "
                f"after={type(after).__name__}"
            )
        from kprune.export.latency import model_latency

        timing = [
            model_latency(m, num_threads=num_threads, dtype=dtype, runs=runs)[
                "latency_ms_median"
            ]
            for m in (before, after)
        ]
    before = _as_summary(before, "before")
    after = _as_summary(after, "after")
    out = {"before": before["model"], "after": after["model"]}
    for key in TOTALS:
        out[key] = _pair(before.get(key), after.get(key))
    for key in ("sparsity", "kernel_sparsity"):
        out[key] = {"before": before.get(key), "after": after.get(key)}
    rows_before = {row["name"]: row for row in before["layers"]}
    rows_after = {row["name"]: row for row in after["layers"]}
    names = list(rows_before) + [n for n in rows_after if n not in rows_before]
    layers = []
    for name in names:
        b = rows_before.get(name, {})
        a = rows_after.get(name, {})
        entry = {"name": name, "class_name": b.get("class_name", a.get("class_name"))}
        for key in ("width", "params", "nonzero_params", "macs"):
            entry[key] = _pair(b.get(key), a.get(key))
        layers.append(entry)
    out["layers"] = layers
    if timing is not None:
        out["latency_ms"] = _pair(*timing)
        out["latency_setup"] = {"num_threads": num_threads, "dtype": dtype}
        speedup = timing[0] / timing[1] if timing[1] else None
        reduction = _ratio(after["macs"], before["macs"])
        out["speedup"] = speedup
        out["macs_reduction"] = reduction
        out["speedup_per_macs_reduction"] = (
            speedup / reduction if speedup and reduction else None
        )
    return out


def _num(value):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    return f"{value:,}"


def _arrow(pair):
    before, after = pair["before"], pair["after"]
    if before == after:
        return _num(before)
    return f"{_num(before)} -> {_num(after)}"


def _grid(header, rows, markdown):
    cells = [header] + rows
    widths = [max(len(str(row[i])) for row in cells) for i in range(len(header))]
    lines = []
    for index, row in enumerate(cells):
        padded = [
            str(c).ljust(w) if i < 2 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(row, widths))
        ]
        if markdown:
            lines.append("| " + " | ".join(padded) + " |")
            if index == 0:
                lines.append(
                    "| "
                    + " | ".join(
                        "-" * w if i < 2 else "-" * (w - 1) + ":"
                        for i, w in enumerate(widths)
                    )
                    + " |"
                )
        else:
            lines.append("  ".join(padded).rstrip())
            if index == 0:
                lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_table(report, markdown=False):
    """Render a `summary` or a `compare` result as a text table.

    Args:
        report: the dict returned by `summary` or by `compare`.
        markdown: a Markdown table instead of a plain terminal table.

    Returns:
        A string: totals first, then one line per layer.

    Example:

    >>> import keras
    >>> model = keras.Sequential(
    ...     [keras.Input((8,)), keras.layers.Dense(6)], name="tiny"
    ... )
    >>> print(format_table(summary(model)).splitlines()[0])
    model: tiny
    """
    if not isinstance(report, dict) or "layers" not in report:
        raise ValueError(
            "`report` must be the dict returned by `kprune.report.summary` or "
            f"`kprune.report.compare`. Received: report={type(report).__name__}"
        )
    is_comparison = isinstance(report.get("params"), dict)
    if is_comparison:
        lines = [f"model: {report['before']} -> {report['after']}"]
        for key in TOTALS:
            pair = report[key]
            ratio = pair["ratio"]
            extra = f"  (x{ratio:.3g})" if ratio is not None else ""
            lines.append(f"{key}: {_arrow(pair)}{extra}")
        for key in ("sparsity", "kernel_sparsity"):
            pair = report[key]
            lines.append(f"{key}: {_arrow(pair)}")
        if "latency_ms" in report:
            pair = report["latency_ms"]
            lines.append(
                f"latency_ms: {pair['before']:.4g} -> {pair['after']:.4g} "
                f"(speedup x{report['speedup']:.3g} for x"
                f"{report['macs_reduction']:.3g} fewer MACs: "
                f"{report['speedup_per_macs_reduction']:.3g} of it)"
            )
        header = ["layer", "class", "width", "params", "nonzero", "MACs"]
        rows = [
            [
                layer["name"],
                layer["class_name"],
                _arrow(layer["width"]),
                _arrow(layer["params"]),
                _arrow(layer["nonzero_params"]),
                _arrow(layer["macs"]),
            ]
            for layer in report["layers"]
        ]
    else:
        lines = [f"model: {report['model']}"]
        for key in TOTALS:
            lines.append(f"{key}: {_num(report[key])}")
        for key in ("sparsity", "kernel_sparsity"):
            lines.append(f"{key}: {_num(report[key])}")
        header = ["layer", "class", "width", "params", "nonzero", "MACs"]
        rows = [
            [
                layer["name"],
                layer["class_name"],
                _num(layer["width"]),
                _num(layer["params"]),
                _num(layer["nonzero_params"]),
                _num(layer["macs"]),
            ]
            for layer in report["layers"]
        ]
    footer = ""
    if report.get("unknown_macs"):
        footer = "MACs not counted (unknown shape): " + ", ".join(
            report["unknown_macs"]
        )
        footer += "\n"
    if markdown:
        lines = [f"- {line}" for line in lines]
    table = _grid(header, rows, markdown)
    return "\n".join(lines) + "\n\n" + table + "\n" + footer


def _jsonable(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"Not JSON-serializable: {type(value).__name__}")


def to_json(report, path=None, indent=2):
    """Serialize a `summary` / `compare` result (or any dict) to JSON.

    Args:
        report: a dict (numpy scalars and arrays are converted).
        path: optional file to write the JSON to.
        indent: JSON indentation.

    Returns:
        The JSON string.

    Example:

    >>> to_json({"params": 3})
    '{\\n  "params": 3\\n}'
    """
    text = json.dumps(report, indent=indent, default=_jsonable)
    if path is not None:
        write_text(os.fspath(path), text + "\n")  # atomic: all or nothing
    return text
