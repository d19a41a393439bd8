"""A byte-level GPT-2 on the Python standard library, pruned four ways at half size.

Data: the running Python's own standard library, top-level `*.py` modules,
sorted by name; every 10th module (from the first) is held out for the test
perplexity, every 10th from the fifth for validation, the rest is the
training text. Tokens are bytes (vocabulary 256); each module ends with a
zero byte. The module lists and their sizes are recorded in the results.

Dense model: `keras_hub.models.GPT2Backbone` (6 blocks, hidden 128, 4
heads, FFN 512, context 128) in a `GPT2CausalLM`, trained for `--steps`
steps of 32 random windows. Then four students with ~50 % fewer
non-embedding parameters:

- `width`: heads + hidden 0.75 (tied in GPT-2), FFN 0.625, 6 blocks;
- `depth_bi`: 3 of 6 blocks, dropped by block influence (ShortGPT);
- `depth_linear`: 3 blocks replaced by `Dense(128)` maps fitted in closed
  form (Cannistraci et al., `kprune.transformers.replace_blocks`), the most
  linear blocks by R²; a Functional model, +3 x 16.5 k parameters;
- `width_depth`: 4 blocks, FFN 0.625;

each scored / fitted on 64 training windows, then recovered with
`kprune.Distiller` (token-level KL to the dense model, temperature 1, no
label loss: Minitron's logit distillation) for 10 % of the dense steps.
Baselines: the same architectures trained from scratch for the same number
of steps (10 %), with the dense model's optimizer settings.

Targets (issue 18): the best student within 15 % of the dense model's
held-out perplexity; better than the same architecture trained from
scratch for the same number of steps.

Run by hand, in two stages (the dense model is cached in between):

    nice -n 10 python benchmarks/transformers_lm.py --stage dense
    nice -n 10 python benchmarks/transformers_lm.py --stage prune
    python benchmarks/transformers_lm.py --quick   # smoke run

Writes benchmarks/results/transformers_lm.json and .md.
"""

import argparse
import glob
import math
import os
import sysconfig
import tempfile
import time

import keras
import keras_hub
import numpy as np
from common import command_line, machine, md_table, read_json, run_line, write_results

import kprune

NAME = "transformers_lm"
CONFIG = dict(
    vocabulary_size=256,
    num_layers=6,
    num_heads=4,
    hidden_dim=128,
    intermediate_dim=512,
    max_sequence_length=128,
    dropout=0.0,
)
SEQ = 128
VARIANTS = {
    "width": dict(heads=0.75, hidden=0.75, ffn=0.625),
    "depth_bi": dict(layers=3),
    "depth_linear": dict(replace=3),
    "width_depth": dict(layers=4, ffn=0.625),
}


def load_average():
    return [round(v, 2) for v in os.getloadavg()]


def stdlib_split():
    files = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))
    split = {"test": files[0::10], "validation": files[5::10]}
    held = set(split["test"]) | set(split["validation"])
    split["train"] = [f for f in files if f not in held]
    return split


def read_bytes(files):
    chunks = []
    for path in files:
        with open(path, "rb") as f:
            chunks.append(np.frombuffer(f.read(), np.uint8))
        chunks.append(np.zeros(1, np.uint8))
    return np.concatenate(chunks).astype("int32")


def random_windows(stream, count, rng):
    starts = rng.integers(0, len(stream) - SEQ - 1, count)
    return np.stack([stream[s : s + SEQ + 1] for s in starts])


def as_xy(windows):
    x = {
        "token_ids": windows[:, :-1],
        "padding_mask": np.ones((len(windows), SEQ), "int32"),
    }
    return x, windows[:, 1:]


def eval_windows(stream, limit):
    count = min((len(stream) - 1) // SEQ, limit)
    return np.stack([stream[i * SEQ : i * SEQ + SEQ + 1] for i in range(count)])


def perplexity(model, windows, batch_size=64):
    x, y = as_xy(windows)
    total, count = 0.0, 0
    for start in range(0, len(windows), batch_size):
        xb = {k: v[start : start + batch_size] for k, v in x.items()}
        logits = keras.ops.convert_to_numpy(model(xb, training=False))
        logits = logits.astype(np.float64)
        logits -= logits.max(axis=-1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
        target = y[start : start + batch_size]
        total -= np.take_along_axis(log_probs, target[..., None], -1).sum()
        count += target.size
    return float(math.exp(total / count))


def optimizer(lr, steps):
    warmup = max(1, steps // 20)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, steps - warmup, alpha=0.1, warmup_target=lr, warmup_steps=warmup
    )
    return keras.optimizers.AdamW(schedule, weight_decay=0.01, clipnorm=1.0)


def compile_lm(model, lr, steps):
    model.compile(
        optimizer(lr, steps),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )


def train(model, stream, steps, batch_size, lr, seed):
    x, y = as_xy(
        random_windows(stream, steps * batch_size, np.random.default_rng(seed))
    )
    compile_lm(model, lr, steps)
    start = time.time()
    history = model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=2)
    return time.time() - start, [float(v) for v in history.history["loss"]]


def lm_of(backbone):
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)


def functional_lm(model):
    """Logits of a Functional backbone with GPT-2's tied embedding."""
    embedding = model.get_layer("token_embedding")
    logits = embedding(model.output, reverse=True)
    return keras.Model(model.inputs, logits, name="linear_blocks_lm")


def non_embedding(model):
    """Parameters outside the token and position embeddings."""
    total = 0
    for w in model.weights:
        if w.path.split("/")[0] in ("token_embedding", "position_embedding"):
            continue
        total += int(np.prod(w.shape))
    return total


def stage_dense(args, data, cache):
    keras.utils.set_random_seed(args.seed)
    lm = lm_of(keras_hub.models.GPT2Backbone(**CONFIG))
    seconds, loss = train(lm, data["train"], args.steps, args.batch_size, args.lr, 1)
    lm.save(cache)
    return {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "train_seconds": round(seconds, 1),
        "final_loss": loss[-1],
        "non_embedding_params": non_embedding(lm.backbone),
        "params": int(lm.count_params()),
        "val_ppl": perplexity(lm, data["val_windows"]),
        "test_ppl": perplexity(lm, data["test_windows"]),
        "load_average": load_average(),
    }


def student_of(name, teacher, calibration):
    kwargs = VARIANTS[name]
    if "replace" in kwargs:
        ranked = kprune.transformers.block_redundancy(teacher.backbone, calibration)
        ranked = sorted(ranked, key=lambda r: -r["r2"])
        blocks = sorted(r["index"] for r in ranked[: kwargs["replace"]])
        model, info = kprune.transformers.replace_blocks(
            teacher.backbone, blocks, calibration, return_info=True
        )
        return functional_lm(model), model, {"blocks": blocks, "fits": info}
    student = kprune.transformers.prune(teacher, calibration, **kwargs)
    return student, student.backbone, {}


def stage_prune(args, data, cache):
    teacher = keras.models.load_model(cache)
    rng = np.random.default_rng(2)
    calibration = as_xy(random_windows(data["train"], args.calibration, rng))[0]
    steps = max(1, int(round(args.recover_fraction * args.steps)))
    dense_params = non_embedding(teacher.backbone)
    rows = {}
    shapes = {}
    for name in args.variants:
        keras.utils.set_random_seed(args.seed)
        start = time.time()
        student, body, extra = student_of(name, teacher, calibration)
        prune_seconds = time.time() - start
        one_shot = perplexity(student, data["val_windows"])
        distiller = kprune.Distiller(student, teacher, temperature=1.0, alpha=0.0)
        start = time.time()
        _, loss = train(
            distiller, data["train"], steps, args.batch_size, args.recover_lr, 3
        )
        rows[name] = {
            "prune_kwargs": VARIANTS[name],
            "non_embedding_params": non_embedding(body),
            "fraction_of_dense": round(non_embedding(body) / dense_params, 3),
            "prune_seconds": round(prune_seconds, 1),
            "recover_seconds": round(time.time() - start, 1),
            "recover_steps": steps,
            "one_shot_val_ppl": one_shot,
            "val_ppl": perplexity(student, data["val_windows"]),
            "test_ppl": perplexity(student, data["test_windows"]),
            "load_average": load_average(),
            **extra,
        }
        if name != "depth_linear":
            config = body.get_config()
            shapes[name] = {k: config[k] for k in CONFIG}
    scratch = {}
    for name, config in shapes.items():
        key = tuple(sorted(config.items()))
        if key in {tuple(sorted(s["config"].items())) for s in scratch.values()}:
            continue
        keras.utils.set_random_seed(args.seed)
        lm = lm_of(keras_hub.models.GPT2Backbone(**config))
        seconds, _ = train(lm, data["train"], steps, args.batch_size, args.lr, 3)
        scratch[name] = {
            "config": config,
            "steps": steps,
            "train_seconds": round(seconds, 1),
            "non_embedding_params": non_embedding(lm.backbone),
            "val_ppl": perplexity(lm, data["val_windows"]),
            "test_ppl": perplexity(lm, data["test_windows"]),
        }
    return {
        "recover_steps": steps,
        "recover_lr": args.recover_lr,
        "calibration_windows": args.calibration,
        "rows": rows,
        "scratch": scratch,
        "load_average": load_average(),
    }


def markdown(result):
    dense, prune = result.get("dense", {}), result.get("prune", {})
    data = result.get("data", {})
    lines = [
        "# Byte-level GPT-2 on the Python standard library: four ways to half size",
        "",
        f"Dense run: {result.get('dense_run', '')}",
        "",
        f"Prune run: {result.get('prune_run', '')}",
        "",
        f"Data: Python {data.get('python')} standard library, "
        f"{data.get('train_modules')} training modules ({data.get('train_bytes'):,} "
        f"bytes), {data.get('validation_modules')} validation, "
        f"{data.get('test_modules')} test modules; perplexity per byte on "
        f"{data.get('eval_windows')} windows of {SEQ} bytes of each held-out "
        "split.",
        "",
        f"Dense: {dense.get('steps')} steps x {dense.get('batch_size')} windows, "
        f"{dense.get('train_seconds')} s, load average at the end "
        f"{dense.get('load_average')} (2 cores shared with other engineers).",
        "",
    ]
    rows = prune.get("rows", {})
    if rows:
        base = dense["test_ppl"]
        table = [
            [
                "dense",
                f"{dense['non_embedding_params']:,}",
                "1.00",
                "",
                f"{dense['val_ppl']:.3f}",
                f"{dense['test_ppl']:.3f}",
                "",
                "",
            ]
        ]
        scratch = prune.get("scratch", {})
        for name, r in rows.items():
            baseline = scratch.get(name) or scratch.get(
                {"depth_linear": "depth_bi"}.get(name, "")
            )
            table.append(
                [
                    name,
                    f"{r['non_embedding_params']:,}",
                    f"{r['fraction_of_dense']:.2f}",
                    f"{r['one_shot_val_ppl']:.2f}",
                    f"{r['val_ppl']:.3f}",
                    f"{r['test_ppl']:.3f}",
                    f"{100 * (r['test_ppl'] / base - 1):+.1f} %",
                    f"{baseline['test_ppl']:.3f}" if baseline else "",
                ]
            )
        lines += md_table(
            [
                "model",
                "non-embedding params",
                "of dense",
                "one-shot val ppl",
                "val ppl",
                "test ppl",
                "test vs dense",
                "scratch test ppl (same steps)",
            ],
            table,
        )
        lines += [
            "",
            f"Recovery: {prune['recover_steps']} steps (10 % of the dense steps) of "
            "`kprune.Distiller` (token-level KL, temperature 1, no label loss), "
            f"peak lr {prune['recover_lr']}; calibration "
            f"{prune['calibration_windows']} training windows. Scratch: the same "
            "architecture (for `depth_linear`, the 3-block GPT-2 without the "
            "linear maps) trained from random weights for the same steps with the "
            f"dense model's settings. Load average at the end {prune['load_average']}.",
        ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=("dense", "prune", "all"), default="all")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--recover-fraction", type=float, default=0.1)
    parser.add_argument("--recover-lr", type=float, default=1e-3)
    parser.add_argument("--calibration", type=int, default=64)
    parser.add_argument("--eval-windows", type=int, default=256)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cache",
        default=os.path.join(tempfile.gettempdir(), "kprune_bench", "lm_dense.keras"),
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.calibration, args.eval_windows = 20, 8, 8
        args.cache = args.cache.replace(".keras", "_quick.keras")
    os.makedirs(os.path.dirname(args.cache), exist_ok=True)
    split = stdlib_split()
    data = {
        "train": read_bytes(split["train"]),
        "val_windows": eval_windows(read_bytes(split["validation"]), args.eval_windows),
        "test_windows": eval_windows(read_bytes(split["test"]), args.eval_windows),
    }
    info = machine()
    command = command_line(__file__, argv)
    path = os.path.join(os.path.dirname(__file__), "results", f"{NAME}.json")
    result = {} if args.quick else (read_json(path) or {})
    result["machine"] = info
    result["data"] = {
        "python": info["python"],
        "stdlib": sysconfig.get_paths()["stdlib"],
        "train_modules": len(split["train"]),
        "validation_modules": len(split["validation"]),
        "test_modules": len(split["test"]),
        "train_bytes": int(len(data["train"])),
        "eval_windows": int(len(data["test_windows"])),
        "test_module_names": [os.path.basename(f) for f in split["test"]],
        "validation_module_names": [os.path.basename(f) for f in split["validation"]],
    }
    if args.stage in ("dense", "all"):
        result["dense"] = stage_dense(args, data, args.cache)
        result["dense_run"] = run_line(command, info)
    if args.stage in ("prune", "all"):
        result["prune"] = stage_prune(args, data, args.cache)
        result["prune_run"] = run_line(command, info)
    text = markdown(result)
    if not args.quick:
        write_results(NAME, result, text)
    print(text)


if __name__ == "__main__":
    main()
