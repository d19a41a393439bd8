"""A KerasHub ViT on MNIST pruned to 2x fewer MACs by width, depth and both.

A `keras_hub.models.ViTBackbone` (28x28x1 images, patch 4 -> 49 patches +
a class token, 6 blocks, hidden 64, 4 heads, MLP 128) with a
`ViTImageClassifier` head is trained on 55,000 MNIST training images (the
last 5,000 are the validation split). Then `kprune.transformers.prune`
makes three students at <= half the dense model's MACs (or as close as the
architecture allows; the exact ratio is reported):

- `width`: fewer heads + hidden channels (tied in ViT) and FFN units, all
  blocks kept;
- `depth`: 3 of the 6 blocks kept, by block influence;
- `both`: 4 blocks and narrower widths;

each scored on 512 training images (Minitron activation statistics), and
each recovered by `kprune.Distiller` (the dense model as frozen teacher) on
the training images. Validation accuracy is reported for every stage; test
accuracy (all 10,000 images) once for the dense model and each recovered
student. Every model is exported with `kprune.export.to_tflite` (verified
against Keras) and timed with `kprune.export.measure_tflite` (1 thread,
batch 1), side by side in one run.

Target (issue 18): <= 0.5 points test accuracy drop at 2x fewer MACs after
recovery.

Run by hand, in two stages (the dense model is cached between them):

    nice -n 10 python benchmarks/transformers_vit.py --stage dense
    nice -n 10 python benchmarks/transformers_vit.py --stage prune
    python benchmarks/transformers_vit.py --quick   # smoke run, tiny subsets

Writes benchmarks/results/transformers_vit.json and .md.
"""

import argparse
import os
import tempfile
import time

import keras
import keras_hub
import numpy as np
from common import (
    command_line,
    load_mnist,
    machine,
    md_table,
    read_json,
    run_line,
    write_results,
)

import kprune

CONFIG = dict(
    image_shape=(28, 28, 1),
    patch_size=4,
    num_layers=6,
    num_heads=4,
    hidden_dim=64,
    mlp_dim=128,
)
NAME = "transformers_vit"


def load_average():
    return [round(v, 2) for v in os.getloadavg()]


def vit_macs(num_layers, hidden, heads, mlp, tokens=50, patches=49, patch=16):
    """Multiply-accumulates of one image through the ViT classifier."""
    del heads  # head_dim * heads == hidden: the attention cost is per channel
    block = (
        4 * tokens * hidden * hidden  # q, k, v, output projections
        + 2 * tokens * tokens * hidden  # scores and weighted sum
        + 2 * tokens * hidden * mlp  # MLP
    )
    return patches * patch * hidden + num_layers * block + hidden * 10


def macs_of(backbone):
    c = backbone.get_config()
    return vit_macs(c["num_layers"], c["hidden_dim"], c["num_heads"], c["mlp_dim"])


def choose_width(layers, budget):
    """(heads fraction, ffn fraction) with the most MACs <= budget."""
    best = None
    for heads in (1, 2, 3, 4):
        for mlp in range(8, CONFIG["mlp_dim"] + 1, 8):
            hidden = 16 * heads
            macs = vit_macs(layers, hidden, heads, mlp)
            if macs <= budget and (best is None or macs > best[0]):
                best = (macs, heads / 4, mlp / CONFIG["mlp_dim"])
    return best[1], best[2]


def classifier(backbone):
    model = keras_hub.models.ViTImageClassifier(
        backbone=backbone, num_classes=10, preprocessor=None
    )
    return model


def compile_model(model, lr, steps):
    schedule = keras.optimizers.schedules.CosineDecay(lr, max(steps, 1), alpha=0.05)
    model.compile(
        keras.optimizers.AdamW(schedule, weight_decay=0.05),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def accuracy(model, x, y):
    logits = model.predict(x, batch_size=500, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == y))


def data(quick):
    x, y, xt, yt = load_mnist(flat=False)
    xv, yv = x[55000:], y[55000:]
    x, y = x[:55000], y[:55000]
    if quick:
        x, y, xv, yv, xt, yt = x[:512], y[:512], xv[:256], yv[:256], xt[:256], yt[:256]
    return x, y, xv, yv, xt, yt


def stage_dense(args, cache):
    x, y, xv, yv, xt, yt = data(args.quick)
    keras.utils.set_random_seed(args.seed)
    model = classifier(keras_hub.models.ViTBackbone(**CONFIG))
    steps = args.epochs * int(np.ceil(len(x) / args.batch_size))
    compile_model(model, args.lr, steps)
    start = time.time()
    history = model.fit(
        x,
        y,
        batch_size=args.batch_size,
        epochs=args.epochs,
        validation_data=(xv, yv),
        verbose=2,
    )
    seconds = time.time() - start
    model.save(cache)
    return {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "train_seconds": round(seconds, 1),
        "steps": steps,
        "val_accuracy": accuracy(model, xv, yv),
        "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
        "load_average": load_average(),
    }


def latency(model, sample, folder, name):
    path = kprune.export.to_tflite(
        model, os.path.join(folder, f"{name}.tflite"), sample_inputs=sample
    )
    stats = kprune.export.measure_tflite(path, num_threads=1, runs=100, warmup=10)
    return {
        "latency_ms_median": stats["latency_ms_median"],
        "latency_ms_p90": stats["latency_ms_p90"],
        "bytes": stats["bytes"],
    }


def stage_prune(args, cache):
    x, y, xv, yv, xt, yt = data(args.quick)
    teacher = keras.models.load_model(cache)
    dense_macs = macs_of(teacher.backbone)
    budget = dense_macs / 2
    heads_w, ffn_w = choose_width(6, budget)
    heads_b, ffn_b = choose_width(4, budget)
    variants = {
        "width": dict(heads=heads_w, hidden=heads_w, ffn=ffn_w),
        "depth": dict(layers=3),
        "both": dict(layers=4, heads=heads_b, hidden=heads_b, ffn=ffn_b),
    }
    calibration = x[: args.calibration]
    rows = {
        "dense": {
            "config": {k: teacher.backbone.get_config()[k] for k in CONFIG},
            "params": int(teacher.count_params()),
            "macs": dense_macs,
            "val_accuracy": accuracy(teacher, xv, yv),
            "test_accuracy": accuracy(teacher, xt, yt),
        }
    }
    xr, yr = x[: args.recover_samples], y[: args.recover_samples]
    steps = args.recover_epochs * int(np.ceil(len(xr) / args.batch_size))
    for name, kwargs in variants.items():
        keras.utils.set_random_seed(args.seed)
        start = time.time()
        student = kprune.transformers.prune(teacher, calibration, **kwargs)
        prune_seconds = time.time() - start
        one_shot = accuracy(student, xv, yv)
        distiller = kprune.Distiller(
            student, teacher, temperature=args.temperature, alpha=args.alpha
        )
        compile_model(distiller, args.recover_lr, steps)
        start = time.time()
        distiller.fit(
            xr, yr, batch_size=args.batch_size, epochs=args.recover_epochs, verbose=2
        )
        recover_seconds = time.time() - start
        c = student.backbone.get_config()
        rows[name] = {
            "prune_kwargs": kwargs,
            "config": {k: c[k] for k in CONFIG},
            "params": int(student.count_params()),
            "macs": macs_of(student.backbone),
            "macs_ratio": round(dense_macs / macs_of(student.backbone), 3),
            "prune_seconds": round(prune_seconds, 1),
            "one_shot_val_accuracy": one_shot,
            "recover_seconds": round(recover_seconds, 1),
            "recover_steps": steps,
            "val_accuracy": accuracy(student, xv, yv),
            "test_accuracy": accuracy(student, xt, yt),
            "load_average": load_average(),
        }
        student.save(cache.replace(".keras", f"_{name}.keras"))
    sample = xt[:1]
    with tempfile.TemporaryDirectory() as folder:
        rows["dense"].update(latency(teacher, sample, folder, "dense"))
        for name in variants:
            student = keras.models.load_model(cache.replace(".keras", f"_{name}.keras"))
            rows[name].update(latency(student, sample, folder, name))
    return {
        "recover_epochs": args.recover_epochs,
        "recover_samples": int(len(xr)),
        "recover_lr": args.recover_lr,
        "temperature": args.temperature,
        "alpha": args.alpha,
        "calibration": args.calibration,
        "rows": rows,
        "load_average": load_average(),
    }


def markdown(result):
    dense = result.get("dense", {})
    prune = result.get("prune", {})
    lines = [
        "# KerasHub ViT on MNIST: width, depth and both at 2x fewer MACs",
        "",
        f"Dense run: {result.get('dense_run', '')}",
        "",
        f"Prune run: {result.get('prune_run', '')}",
        "",
        f"Dense training: {dense.get('epochs')} epochs, batch "
        f"{dense.get('batch_size')}, {dense.get('train_seconds')} s, load average "
        f"(1/5/15 min) at the end {dense.get('load_average')} on 2 cores shared "
        "with other engineers. The prune run loads the dense model that the "
        "dense run saved; its test accuracy below is measured again there.",
        "",
    ]
    rows = prune.get("rows", {})
    if rows:
        base = rows["dense"]["test_accuracy"]
        table = []
        for name, r in rows.items():
            drop = 100 * (base - r["test_accuracy"])
            table.append(
                [
                    name,
                    "{num_layers} x (hidden {hidden_dim}, heads {num_heads}, "
                    "mlp {mlp_dim})".format(**r["config"]),
                    f"{r['params']:,}",
                    f"{r['macs'] / 1e6:.2f} M",
                    f"{r.get('macs_ratio', 1.0):.2f}x",
                    f"{100 * r['one_shot_val_accuracy']:.2f}"
                    if "one_shot_val_accuracy" in r
                    else "",
                    f"{100 * r['val_accuracy']:.2f}",
                    f"{100 * r['test_accuracy']:.2f}",
                    f"{drop:+.2f}" if name != "dense" else "",
                    "yes" if name != "dense" and drop <= 0.5 else "",
                    f"{r.get('latency_ms_median', float('nan')):.3f}",
                ]
            )
        lines += md_table(
            [
                "model",
                "shape",
                "params",
                "MACs",
                "fewer MACs",
                "one-shot val %",
                "val %",
                "test %",
                "test drop (points)",
                "<= 0.5",
                "LiteRT ms (1 thread)",
            ],
            table,
        )
        lines += [
            "",
            f"Recovery: `kprune.Distiller` (temperature {prune['temperature']}, "
            f"alpha {prune['alpha']}), {prune['recover_epochs']} epoch(s) over the "
            f"first {prune.get('recover_samples', 55000):,} training images, AdamW lr "
            f"{prune['recover_lr']} cosine; "
            f"calibration {prune['calibration']} training images. Load average at "
            f"the end {prune.get('load_average')}. LiteRT latency: float32 files "
            "verified against Keras, 1 thread, batch 1, median of 100 runs, "
            "measured one after the other in the same process on the shared "
            "machine (ratios are meaningful, absolute values noisy).",
        ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=("dense", "prune", "all"), default="all")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--recover-epochs", type=int, default=1)
    parser.add_argument("--recover-lr", type=float, default=1e-3)
    parser.add_argument("--recover-samples", type=int, default=55000)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--calibration", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cache",
        default=os.path.join(tempfile.gettempdir(), "kprune_bench", "vit_dense.keras"),
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.recover_epochs, args.calibration = 1, 1, 64
        args.cache = args.cache.replace(".keras", "_quick.keras")
    os.makedirs(os.path.dirname(args.cache), exist_ok=True)
    info = machine()
    command = command_line(__file__, argv)
    result = read_json(
        os.path.join(os.path.dirname(__file__), "results", f"{NAME}.json")
    )
    if args.quick or not result:
        result = {}
    result["machine"] = info
    if args.stage in ("dense", "all"):
        result["dense"] = stage_dense(args, args.cache)
        result["dense_run"] = run_line(command, info)
    if args.stage in ("prune", "all"):
        result["prune"] = stage_prune(args, args.cache)
        result["prune_run"] = run_line(command, info)
    if args.quick:
        print(markdown(result))
        return
    write_results(NAME, result, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
