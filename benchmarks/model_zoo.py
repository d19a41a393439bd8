"""The rebuilder on every model of the zoo: KerasHub backbones and
`keras.applications` (issue 17's "Must show").

For each model of `kprune.testing.zoo` (built from constructor arguments,
seeded random weights), each step in its own try/except so that one crash
never stops the run:

1. build: parameters, `kprune.report.summary` MACs of the model as built.
2. zero: `zoo.zero_units(model, --fraction)` (30 % of the output units of
   every kernel layer, also inside composite layers).
3. dead: `kprune.surgery.dead_units` of the zeroed model (how many of the
   zeroed units it finds).
4. slim: `kprune.surgery.slim` of the zeroed model: wall time, fraction
   of parameters removed, exactness = max over outputs of
   `max|slim - zeroed| / max|zeroed|` on the sample inputs (exact when
   <= 1e-5), and the class of the result.
5. remove FFN: `remove_units(model, {inner layer: [0, 1]})` on the model as
   built, for one inner Dense / EinsumDense / Conv (an FFN intermediate or
   expansion layer where one is found by name); does the result run with
   the same output shapes?
6. remove head: `remove_units(model, {key: [0]})` for the first set of
   heads `prunable_units` lists (more than one head, not pinned); else for
   the first layer whose class name ends in `Attention` (which then fails
   with kprune's reason); n/a without one.
7. save/load: the slimmed model through `.keras` (outputs compared).
8. MACs of the slimmed model (`summary`): non-zero?
9. TFLite: `kprune.export.to_tflite` of the slimmed model (verified against
   Keras on the sample inputs), and again with `select_tf_ops=True` when
   `to_tflite` has that option.

Models run in a worker process; a model that runs past `--timeout` seconds
or kills the worker is recorded as such and the run goes on with a fresh
worker. Steps 7 and 9 are skipped for models above `--heavy-params`
parameters (said so in the table).

Run by hand (never in CI):

    python benchmarks/model_zoo.py                      # everything
    python benchmarks/model_zoo.py --no-applications    # KerasHub only
    python benchmarks/model_zoo.py --only bert --only ResNet50

Writes benchmarks/results/<--name>.json and .md (default `model_zoo`).
"""

import argparse
import collections
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

STEPS = [
    "build",
    "macs",
    "zero",
    "dead",
    "slim",
    "slim_rewrapped",
    "remove_ffn",
    "remove_head",
    "save_load",
    "macs_slim",
    "tflite",
    "tflite_select",
]
EXACT = 1e-5
# Names of FFN intermediate / expansion layers across KerasHub and
# keras.applications (first match in this order wins).
FFN_WORDS = (
    "intermediate",
    "ffw_gating",
    "h_to_4h",
    "gate_proj",
    "gate_dense",
    "up_proj",
    "fc1",
    "gate",
    "pointwise_conv_1",
    "expand_conv",
    "_expand",
    "_1_conv",
)
# Words of the composite layers that hold an FFN (second choice: the first
# kernel layer inside one).
FFN_BLOCKS = ("mlp", "ffn", "feedforward")


# ------------------------------------------------------------------ worker


def _error(exc):
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}".strip()


def _flat_outputs(y):
    import keras
    import numpy as np

    if isinstance(y, dict):
        y = [y[k] for k in sorted(y)]
    return [
        np.asarray(keras.ops.convert_to_numpy(v), dtype="float64")
        for v in keras.tree.flatten(y)
    ]


def _relative_difference(a, b):
    import numpy as np

    if len(a) != len(b):
        raise ValueError(f"{len(b)} outputs instead of {len(a)}")
    worst = 0.0
    for u, v in zip(a, b):
        if u.shape != v.shape:
            raise ValueError(f"output shape {v.shape} instead of {u.shape}")
        if not u.size:
            continue
        scale = max(float(np.max(np.abs(u))), 1e-12)
        worst = max(worst, float(np.max(np.abs(u - v))) / scale)
    return worst


def _pick_inner_layer(zoo, model):
    """(path, layer) of a kernel layer to shrink (at least 4 units): the
    first whose own name holds the earliest of `FFN_WORDS` (an FFN
    intermediate or expansion layer), else the first inside an MLP / FFN
    block, else the first inside a composite layer, else the first."""
    candidates = []
    for path, layer in zoo.leaf_layers(model).items():
        rule = zoo.unit_axis(layer)
        if rule is None or rule[1] == "rnn":
            continue
        name = rule[0]
        weight = [w for w in layer.weights if w.path.endswith(name)]
        if not weight:
            continue
        shape = weight[0].shape
        units = shape[-1] if not isinstance(rule[1], int) else shape[rule[1]]
        if units >= 4 and not type(layer).__name__.startswith("Embedding"):
            candidates.append((path, layer))
    if not candidates:
        return None, None

    def rank(item):
        path, _ = item
        own = path.lower().rsplit("/", 1)[-1]
        words = [i for i, w in enumerate(FFN_WORDS) if w in own]
        if words:
            return (0, words[0])
        if any(w in path.lower() for w in FFN_BLOCKS):
            return (1, 0)
        return (2 if "/" in path else 3, 0)

    return sorted(candidates, key=rank)[0]


def _pick_attention(zoo, model):
    for path, layer in zoo.leaf_layers(model, include_composite=True).items():
        if type(layer).__name__.endswith("Attention"):
            return path, layer
    return None, None


def _runs_like(model, other, x):
    a, b = _flat_outputs(model(x)), _flat_outputs(other(x))
    if [u.shape for u in a] != [v.shape for v in b]:
        raise ValueError(
            f"output shapes {[v.shape for v in b]} instead of {[u.shape for u in a]}"
        )
    return other.count_params()


def run_model(kind, name, fraction, heavy_params, workdir, progress=None):
    """All steps on one model; returns the record (never raises).

    `progress(record, step)` is called before each step with the record so
    far, so that a model killed by the timeout keeps its finished steps.
    """
    import keras

    import kprune
    from kprune.testing import zoo

    rec = {"name": name, "kind": kind, "steps": {}}
    steps = rec["steps"]

    def step(key, fn):
        if progress is not None:
            progress(rec, key)
        start = time.perf_counter()
        try:
            value = fn()
            steps[key] = {"ok": True, "seconds": time.perf_counter() - start}
            if isinstance(value, dict):
                steps[key].update(value)
            return value
        except Exception as exc:  # noqa: BLE001 - a benchmark records all
            steps[key] = {
                "ok": False,
                "error": _error(exc),
                "error_class": type(exc).__name__,
                "seconds": time.perf_counter() - start,
            }
            return None

    def skip(key, why):
        steps[key] = {"ok": None, "skipped": why}

    builders = zoo.applications() if kind == "applications" else None
    builders = builders or zoo.keras_hub_backbones()
    state = {}

    def build():
        model, x = builders[name]()
        state["model"], state["x"] = model, x
        state["ref"] = _flat_outputs(model(x))
        return {"params": int(model.count_params()), "class": type(model).__name__}

    if step("build", build) is None:
        for key in STEPS[1:]:
            skip(key, "build failed")
        return rec
    model, x = state["model"], state["x"]
    params = steps["build"]["params"]
    heavy = params > heavy_params

    def macs(m):
        s = kprune.report.summary(m)
        return {
            "macs": int(s.get("macs") or 0),
            "nonzero": bool(s.get("macs")),
            "unknown": len(s.get("unknown_macs") or []),
        }

    step("macs", lambda: macs(model))

    def zero():
        zeroed_model, zeroed = zoo.zero_units(model, fraction=fraction, seed=0)
        state["zeroed"] = zeroed_model
        state["zref"] = _flat_outputs(zeroed_model(x))
        inner = sum(len(v) for k, v in zeroed.items() if "/" in k)
        return {
            "layers": len(zeroed),
            "units": int(sum(len(v) for v in zeroed.values())),
            "units_inside_composite": int(inner),
        }

    step("zero", zero)
    zeroed_model = state.get("zeroed")

    if zeroed_model is None:
        for key in ("dead", "slim", "slim_rewrapped"):
            skip(key, "zero failed")
    else:

        def dead():
            found = kprune.surgery.dead_units(zeroed_model)
            return {"units": int(sum(len(v) for v in found.values()))}

        step("dead", dead)

        def slim():
            start = time.perf_counter()
            small = kprune.surgery.slim(zeroed_model)
            seconds = time.perf_counter() - start
            state["small"] = small
            diff = _relative_difference(state["zref"], _flat_outputs(small(x)))
            after = int(small.count_params())
            return {
                "slim_seconds": seconds,
                "params_after": after,
                "removed_fraction": 1.0 - after / params,
                "rel_diff": diff,
                "exact": diff <= EXACT,
                "class": type(small).__name__,
            }

        step("slim", slim)

        if type(zeroed_model) in (keras.Model, keras.Sequential) or (
            type(zeroed_model).__name__ == "Functional"
        ):
            skip("slim_rewrapped", "plain Functional model")
        else:

            def slim_rewrapped():
                plain = keras.Model(zeroed_model.inputs, zeroed_model.outputs)
                small = kprune.surgery.slim(plain)
                diff = _relative_difference(state["zref"], _flat_outputs(small(x)))
                after = int(small.count_params())
                return {
                    "removed_fraction": 1.0 - after / params,
                    "rel_diff": diff,
                    "exact": diff <= EXACT,
                }

            step("slim_rewrapped", slim_rewrapped)

    try:
        units = kprune.surgery.prunable_units(model)
    except Exception:  # noqa: BLE001 - the steps below report the error
        units = {}
    path, _ = _pick_inner_layer(zoo, model)
    # Plans name units by their `prunable_units` key (a leaf path can differ:
    # a layer held in a Sequential inside a composite).
    if path is not None and path not in units:
        leaf, top = path.rsplit("/", 1)[-1], path.split("/")[0]
        path = next(
            (
                k
                for k, u in units.items()
                if u.layer.rsplit("/", 1)[-1] == leaf and k.split("/")[0] == top
            ),
            path,
        )
    if path is None:
        skip("remove_ffn", "no inner kernel layer with >= 4 units")
    else:

        def remove_ffn():
            small = kprune.surgery.remove_units(model, {path: [0, 1]})
            after = _runs_like(model, small, x)
            return {"layer": path, "params_removed": int(params - after)}

        step("remove_ffn", remove_ffn)
        steps["remove_ffn"].setdefault("layer", path)

    heads = [
        k
        for k, u in units.items()
        if u.kind == "heads" and u.count > 1 and u.pinned is None
    ]
    path = heads[0] if heads else _pick_attention(zoo, model)[0]
    if path is None:
        skip("remove_head", "no attention layer")
    else:

        def remove_head():
            small = kprune.surgery.remove_units(model, {path: [0]})
            after = _runs_like(model, small, x)
            return {"layer": path, "params_removed": int(params - after)}

        step("remove_head", remove_head)
        steps["remove_head"].setdefault("layer", path)

    small = state.get("small")
    if small is None:
        for key in ("save_load", "macs_slim"):
            skip(key, "no slim result")
    else:
        step("macs_slim", lambda: macs(small))
    if heavy:
        for key in ("save_load", "tflite", "tflite_select"):
            skip(key, f"{params} params > --heavy-params")
        return rec

    def save_load():
        file = os.path.join(workdir, f"{name}.keras")
        small.save(file)
        loaded = keras.models.load_model(file)
        diff = _relative_difference(_flat_outputs(small(x)), _flat_outputs(loaded(x)))
        os.remove(file)
        return {"rel_diff": diff, "same": diff <= EXACT}

    if small is not None:
        step("save_load", save_load)
    # TFLite of the slimmed model; of the zeroed model when slim failed.
    target = small if small is not None else zeroed_model
    if target is None:
        for key in ("tflite", "tflite_select"):
            skip(key, "no model to export")
        return rec
    of = "slimmed" if small is not None else "zeroed (slim failed)"

    def tflite(**kwargs):
        file = os.path.join(workdir, f"{name}.tflite")
        kprune.export.to_tflite(target, file, sample_inputs=x, **kwargs)
        size = os.path.getsize(file)
        os.remove(file)
        return {"bytes": size, "of": of}

    step("tflite", tflite)
    if "select_tf_ops" in inspect.signature(kprune.export.to_tflite).parameters:
        step("tflite_select", lambda: tflite(select_tf_ops=True))
    else:
        skip("tflite_select", "to_tflite has no select_tf_ops option")
    return rec


def worker(args):
    import keras

    os.makedirs(args.workdir, exist_ok=True)
    with open(args.jsonl, "a") as out:

        def write(line):
            out.write(json.dumps(line) + "\n")
            out.flush()

        for item in args.names.split(","):
            kind, name = item.split(":", 1)
            write({"start": item, "time": time.time()})
            rec = run_model(
                kind,
                name,
                args.fraction,
                args.heavy_params,
                args.workdir,
                progress=lambda r, key, item=item: write(
                    {"progress": item, "step": key, "record": r}
                ),
            )
            write({"result": item, "record": rec})
            keras.backend.clear_session()


# ------------------------------------------------------------------ parent


def _read(jsonl):
    if not os.path.exists(jsonl):
        return []
    with open(jsonl) as f:
        return [json.loads(line) for line in f if line.strip()]


def run_all(items, args):
    """Runs `items` ("kind:name") in worker processes; returns records.

    Results go to a JSON-lines file (`--resume FILE` continues one: models
    with a result there are not run again).
    """
    records = collections.OrderedDict()
    workdir = tempfile.mkdtemp(prefix="kprune_zoo_")
    jsonl = args.resume or os.path.join(workdir, "results.jsonl")
    for line in _read(jsonl):
        if "result" in line and line["result"] in items:
            records[line["result"]] = line["record"]
    remaining = [i for i in items if i not in records]
    if records:
        print(f"resumed {len(records)} models from {jsonl}", flush=True)
    while remaining:
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--worker",
            "--names",
            ",".join(remaining),
            "--jsonl",
            jsonl,
            "--workdir",
            workdir,
            "--fraction",
            str(args.fraction),
            "--heavy-params",
            str(args.heavy_params),
        ]
        proc = subprocess.Popen(cmd, start_new_session=True)
        current, started, partial, in_step = None, time.time(), None, None
        seen = len(_read(jsonl))
        while True:
            time.sleep(1.0)
            lines = _read(jsonl)
            for line in lines[seen:]:
                if "start" in line:
                    current, started = line["start"], time.time()
                    partial, in_step = None, "build"
                    print(f"[{len(records) + 1}/{len(items)}] {current}", flush=True)
                elif "progress" in line:
                    partial, in_step = line["record"], line["step"]
                else:
                    records[line["result"]] = line["record"]
                    remaining.remove(line["result"])
                    _print_record(line["record"])
                    current = None
            seen = len(lines)
            rc = proc.poll()
            if current is not None and time.time() - started > args.timeout:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                why = f"timeout after {args.timeout:.0f} s in step {in_step}"
                records[current] = _lost(current, why, partial, in_step, "Timeout")
                remaining.remove(current)
                print(f"    TIMEOUT {current} in {in_step}", flush=True)
                break
            if rc is not None:
                lines = _read(jsonl)
                for line in lines[seen:]:
                    if "result" in line:
                        records[line["result"]] = line["record"]
                        remaining.remove(line["result"])
                        current = None
                    elif "progress" in line:
                        partial, in_step = line["record"], line["step"]
                if current is not None:
                    why = f"worker died (exit {rc}) in step {in_step}"
                    records[current] = _lost(
                        current, why, partial, in_step, "WorkerDied"
                    )
                    remaining.remove(current)
                    print(f"    WORKER DIED {current} (exit {rc})", flush=True)
                elif rc != 0 and remaining:
                    # Died before starting a model: give up on the rest.
                    for item in remaining:
                        records[item] = _lost(
                            item,
                            f"worker failed to start ({rc})",
                            None,
                            "build",
                            "WorkerDied",
                        )
                    remaining = []
                break
    if not args.resume:
        shutil.rmtree(workdir, ignore_errors=True)
    return [records[i] for i in items if i in records]


def _lost(item, why, partial, step, kind_of_loss):
    """The record of a model whose worker was killed or died in `step`:
    its finished steps, and `step` as failed with `kind_of_loss`."""
    kind, name = item.split(":", 1)
    rec = dict(partial or {"name": name, "kind": kind, "steps": {}})
    rec["lost"] = why
    rec["steps"] = dict(rec["steps"])
    rec["steps"][step] = {"ok": False, "error_class": kind_of_loss, "error": why}
    return rec


def _print_record(rec):
    cells = []
    for key in STEPS:
        s = rec["steps"].get(key, {})
        cells.append(f"{key}={_cell(s)}")
    print("    " + "  ".join(cells), flush=True)


def _cell(s):
    if not s:
        return "—"
    if s.get("ok") is None:
        return "skip"
    if not s["ok"]:
        return s["error_class"]
    return "ok"


# ------------------------------------------------------------------ report


def _fmt_step(rec, key):
    s = rec["steps"].get(key)
    if not s:
        return "—"
    if s.get("ok") is None:
        return "n/a" if "no attention" in s["skipped"] else "skip"
    if not s["ok"]:
        return s["error_class"]
    if key == "macs" or key == "macs_slim":
        return f"{s['macs']:,}" + ("" if s["nonzero"] else " (0!)")
    if key == "zero":
        return f"{s['units']} ({s['units_inside_composite']} inner)"
    if key == "dead":
        return str(s["units"])
    if key in ("remove_ffn", "remove_head"):
        return "runs"
    if key == "save_load":
        return "ok" if s["same"] else f"diff {s['rel_diff']:.1e}"
    if key == "slim_rewrapped":
        flag = "exact" if s["exact"] else f"NOT exact ({s['rel_diff']:.1e})"
        return f"{100 * s['removed_fraction']:.1f} %, {flag}"
    if key.startswith("tflite") and s.get("of", "").startswith("zeroed"):
        return "ok (unslimmed)"
    return "ok"


def summarize(records):
    total = len(records)
    slim_ok = [r for r in records if r["steps"].get("slim", {}).get("ok")]
    exact = [r for r in slim_ok if r["steps"]["slim"]["exact"]]
    removed = [r for r in exact if r["steps"]["slim"]["removed_fraction"] > 0.0]
    crashed = [
        r
        for r in records
        if r.get("lost") or any(s.get("ok") is False for s in r["steps"].values())
    ]
    by_class = collections.Counter()
    examples = {}
    for r in records:
        for step_name, s in r["steps"].items():
            if s.get("ok") is False:
                key = (step_name, s["error_class"])
                by_class[key] += 1
                examples.setdefault(key, (r["name"], s["error"]))
    steps_ok = {
        key: sum(1 for r in records if r["steps"].get(key, {}).get("ok"))
        for key in STEPS
    }
    return {
        "models": total,
        "slim_ran": len(slim_ok),
        "exact": len(exact),
        "exact_and_removed": len(removed),
        "crashed_any_step": len(crashed),
        "steps_ok": steps_ok,
        "failures": [
            {"step": k[0], "error_class": k[1], "count": n, "example": examples[k]}
            for k, n in by_class.most_common()
        ],
    }


def markdown(result, md_table, run_line):
    lines = [f"# Model zoo: the rebuilder on {result['models_total']} models", ""]
    lines.append("Run: " + run_line(result["command"], result["machine"]))
    lines.append("")
    lines.append(
        f"Zeroed {int(result['fraction'] * 100)} % of the output units of every "
        "kernel layer (`kprune.testing.zoo.zero_units`, also inside composite "
        f"layers), then `slim`. Exact: max relative output difference <= {EXACT}. "
        f"Total wall time {result['seconds']:.0f} s; per-model timeout "
        f"{result['timeout']} s; save/load and TFLite skipped above "
        f"{result['heavy_params']:,} parameters. `Timeout` / `WorkerDied`: the "
        "model ran past the timeout / killed the worker in that step (later "
        "steps did not run)."
    )
    for kind in ("keras_hub", "applications"):
        recs = [r for r in result["records"] if r["kind"] == kind]
        if not recs:
            continue
        s = result["summary"][kind]
        lines += ["", f"## {kind} ({len(recs)} models)", ""]
        lines.append(
            f"- slim ran on {s['slim_ran']} / {s['models']}; exact on {s['exact']}; "
            f"exact and removed something on {s['exact_and_removed']}; "
            f"a crash in at least one step: {s['crashed_any_step']}."
        )
        lines.append(
            "- steps that ran: "
            + ", ".join(f"{k} {v}" for k, v in s["steps_ok"].items())
            + "."
        )
        if s["failures"]:
            lines += ["", "Failures by step and error class (one example each):", ""]
            rows = [
                [
                    f["step"],
                    f["error_class"],
                    f["count"],
                    f"{f['example'][0]}: " + f["example"][1].replace("|", "\\|")[:160],
                ]
                for f in s["failures"]
            ]
            lines += md_table(["step", "error", "models", "example"], rows)
        lines += [""]
        header = [
            "model",
            "params",
            "MACs",
            "zeroed units",
            "dead found",
            "slim s",
            "removed",
            "rel diff",
            "exact",
            "remove FFN",
            "remove head",
            "save/load",
            "MACs slim",
            "TFLite",
            "TFLite select",
        ]
        rows = []
        for r in recs:
            st = r["steps"]
            sl = st.get("slim", {})
            ok = sl.get("ok")
            rows.append(
                [
                    r["name"],
                    f"{st['build']['params']:,}"
                    if st.get("build", {}).get("ok")
                    else _fmt_step(r, "build"),
                    _fmt_step(r, "macs"),
                    _fmt_step(r, "zero"),
                    _fmt_step(r, "dead"),
                    f"{sl['slim_seconds']:.2f}" if ok else "",
                    f"{100 * sl['removed_fraction']:.1f} %" if ok else "",
                    f"{sl['rel_diff']:.1e}" if ok else "",
                    ("yes" if sl["exact"] else "NO") if ok else _fmt_step(r, "slim"),
                    _fmt_step(r, "slim_rewrapped"),
                    _fmt_step(r, "remove_ffn"),
                    _fmt_step(r, "remove_head"),
                    _fmt_step(r, "save_load"),
                    _fmt_step(r, "macs_slim"),
                    _fmt_step(r, "tflite"),
                    _fmt_step(r, "tflite_select"),
                ]
            )
        lines += md_table(header, rows)
    lines += [
        "",
        "Columns: `zeroed units` (inside composite layers in brackets); `dead "
        "found`: units `dead_units` reports in the zeroed model; `removed`: "
        "fraction of the parameters `slim` removed; `rel diff`: max over "
        "outputs of max|slim - zeroed| / max|zeroed|; `remove FFN` / `remove "
        "head`: `remove_units` of units 0 and 1 of one inner layer / head 0 of "
        "the first attention layer on the model as built (`runs`: the result "
        "runs with the same output shapes; the layer is in the JSON); "
        "`rewrapped`: `slim` of `keras.Model(zeroed.inputs, zeroed.outputs)` "
        "for Functional subclasses (parameters removed, exactness); `TFLite`: "
        "`to_tflite` of the slimmed model, or of the zeroed model as built "
        "where slim failed (`ok (unslimmed)`); an error class where a step "
        "raised; `skip` where an earlier step failed or the model is above "
        "`--heavy-params`.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help="model name (repeatable); zoo names or application names",
    )
    parser.add_argument(
        "--applications", action=argparse.BooleanOptionalAction, default=True
    )
    parser.add_argument(
        "--keras-hub", action=argparse.BooleanOptionalAction, default=True
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds per model"
    )
    parser.add_argument("--fraction", type=float, default=0.3)
    parser.add_argument(
        "--heavy-params",
        type=int,
        default=40_000_000,
        help="skip save/load and TFLite above this many parameters",
    )
    parser.add_argument("--name", default="model_zoo", help="results file name")
    parser.add_argument(
        "--resume",
        help="JSON-lines file of the runs (kept); models with a result there "
        "are not run again",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--names", help=argparse.SUPPRESS)
    parser.add_argument("--jsonl", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if args.worker:
        import common  # noqa: F401  (puts the repository first on sys.path)

        return worker(args)

    from common import command_line, machine, md_table, run_line, write_results

    from kprune.testing import zoo

    items = []
    if args.keras_hub:
        items += [f"keras_hub:{n}" for n in zoo.keras_hub_backbones()]
    if args.applications:
        items += [f"applications:{n}" for n in zoo.applications()]
    if args.only:
        items = [i for i in items if i.split(":", 1)[1] in args.only]
        unknown = set(args.only) - {i.split(":", 1)[1] for i in items}
        if unknown:
            raise SystemExit(f"unknown model(s): {sorted(unknown)}")
    start = time.perf_counter()
    records = run_all(items, args)
    seconds = time.perf_counter() - start
    result = {
        "command": command_line(__file__, argv),
        "machine": machine(),
        "fraction": args.fraction,
        "timeout": args.timeout,
        "heavy_params": args.heavy_params,
        "exact_threshold": EXACT,
        "seconds": seconds,
        "models_total": len(records),
        "summary": {
            kind: summarize([r for r in records if r["kind"] == kind])
            for kind in ("keras_hub", "applications")
        },
        "records": records,
    }
    paths = write_results(args.name, result, markdown(result, md_table, run_line))
    print("wrote", *paths)


if __name__ == "__main__":
    main()
