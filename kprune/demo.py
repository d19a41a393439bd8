"""`kprune demo`: group sparsity on LeNet-5 / MNIST, end to end.

    kprune demo [--epochs N] [--out DIR] [--data auto|keras|subset]
                [--npz MNIST.npz] [--strength L] [--quick]

1. Loads MNIST: `keras.datasets.mnist.load_data()` (cache or download) when
   it works, otherwise the 10k/2k subset shipped in `kprune/data/`; it says
   which.
2. Trains a LeNet-5-style CNN (conv 20 5x5 valid, max-pool, conv 50 5x5
   valid, max-pool, dense 500, dense 10) under group sparsity
   (Alvarez & Salzmann 2016): `kprune.sparsity.apply_group_sparsity` +
   `kprune.callbacks.ProximalStep` + `kprune.callbacks.SparsityLogger`,
   SGD with momentum and a cosine learning-rate decay.
3. Removes the zeroed filters and neurons with `kprune.surgery.slim`.
4. Exports the model before and after to TFLite (verified against Keras)
   and measures both with LiteRT.
5. Prints the before/after table (params, MACs, Keras and TFLite test
   accuracy, TFLite bytes, LiteRT latency) and writes the widths plot, the
   report JSON, the training log, the models and the `.tflite` files to
   `--out`. Each file is written atomically: Ctrl-C leaves complete files
   or none, never a partial one.
"""

import argparse
import json
import math
import os
import time

import numpy as np

DEFAULT_STRENGTH = 0.1
QUICK_STRENGTH = 0.3  # --quick: 6 steps, 2 proximal steps; prunes part of conv1
# lambda_l = strength * scale_l. conv1's groups are tiny (P = 26, so its
# threshold t * lambda * sqrt(P) is small) and every conv1 filter multiplies
# the MACs of conv2, so conv1 gets a larger lambda; fc1's groups are large
# (P = 801) and cost few MACs, so it gets a smaller one.
LAYER_SCALES = {"conv1": 8.0, "conv2": 1.0, "fc1": 0.5}
LEARNING_RATE = 0.05
PROX_EVERY = 50
TARGET_STEPS = 3000  # default epochs: about this many SGD steps


def lenet5(name="lenet5"):
    """The LeNet-5-style CNN of the demo (Caffe's MNIST LeNet).

    conv 20 5x5 valid + ReLU, 2x2 max-pool, conv 50 5x5 valid + ReLU, 2x2
    max-pool, dense 500 + ReLU, dense 10 (logits): 431,080 parameters,
    2,293,000 MACs per 28x28 image. Valid padding matters: the constant
    output of a zeroed filter (its activated bias) folds exactly into the
    next layer's bias only when no zero padding mixes into the window.

    Args:
        name: the model name.

    Returns:
        An uncompiled `keras.Model` on `(28, 28, 1)` float inputs.

    Example:

    >>> lenet5().count_params()
    431080
    """
    import keras

    inputs = keras.Input((28, 28, 1), name="image")
    x = keras.layers.Conv2D(20, 5, activation="relu", name="conv1")(inputs)
    x = keras.layers.MaxPooling2D(name="pool1")(x)
    x = keras.layers.Conv2D(50, 5, activation="relu", name="conv2")(x)
    x = keras.layers.MaxPooling2D(name="pool2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(500, activation="relu", name="fc1")(x)
    outputs = keras.layers.Dense(10, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def _parser():
    parser = argparse.ArgumentParser(
        prog="kprune demo",
        description="Train LeNet-5 on MNIST under group sparsity (Alvarez & "
        "Salzmann 2016), slim it, export it to TFLite and compare.",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"training epochs (default: about {TARGET_STEPS} SGD steps: 5 on "
        "full MNIST, 30 on the shipped subset)",
    )
    parser.add_argument(
        "--out", default="kprune_demo", help="output folder (default: kprune_demo)"
    )
    parser.add_argument(
        "--data",
        choices=["auto", "keras", "subset"],
        default="auto",
        help="auto: keras.datasets.mnist, else the shipped subset (default); "
        "keras: full MNIST only; subset: the shipped 10k/2k subset",
    )
    parser.add_argument(
        "--npz",
        default=None,
        metavar="MNIST.npz",
        help="read MNIST from this .npz file (keys x_train, y_train, x_test, "
        "y_test) instead",
    )
    parser.add_argument(
        "--strength",
        type=float,
        default=None,
        help=f"group Lasso strength lambda (default {DEFAULT_STRENGTH}, "
        f"{QUICK_STRENGTH} with --quick); layer l gets lambda x {LAYER_SCALES}",
    )
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--latency-runs", type=int, default=200, help="LiteRT timed runs (default 200)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run in seconds (512 subset images, 1 epoch, strong "
        "lambda): checks the pipeline, the numbers mean nothing",
    )
    return parser


def _load(args):
    from kprune.data import load_mnist

    if args.npz is not None:
        if not os.path.isfile(args.npz):
            raise ValueError(f"No such file. Received: --npz={args.npz!r}")
        with np.load(args.npz) as f:
            train = (f["x_train"], f["y_train"])
            test = (f["x_test"], f["y_test"])
        text = (
            f"MNIST from {args.npz} ({len(train[0]):,} train / {len(test[0]):,} test)"
        )
        return train, test, text
    source = "subset" if args.quick else args.data
    train, test, text = load_mnist(source)
    if args.quick:
        train = (train[0][:512], train[1][:512])
        test = (test[0][:256], test[1][:256])
        text += "; --quick: first 512 train / 256 test images"
    return train, test, text


def _prepare(x):
    return (np.asarray(x, dtype="float32") / 255.0)[..., None]


def _tflite_accuracy(path, x, y, batch_size=500):
    """Top-1 accuracy of a .tflite file under the LiteRT interpreter."""
    from kprune.export import _io

    runner = _io.Runner(path=path)
    name = runner.input_names()[0]
    correct = 0
    for start in range(0, len(x), batch_size):
        out = runner({name: x[start : start + batch_size]})
        logits = next(iter(out.values()))
        correct += int(
            np.sum(np.argmax(logits, axis=-1) == y[start : start + batch_size])
        )
    return correct / len(x)


def _keras_accuracy(model, x, y):
    import keras

    logits = model.predict(x, batch_size=1000, verbose=0)
    return float(np.mean(np.argmax(keras.ops.convert_to_numpy(logits), -1) == y))


def _epoch_printer(epochs, widths):
    """A callback printing one short line per epoch (full logs go to the CSV)."""
    import keras

    def on_epoch_end(epoch, logs=None):
        logs = logs or {}
        live = ", ".join(
            f"{name} {int(logs.get(f'live_units/{name}', width))}/{width}"
            for name, width in widths.items()
        )
        print(
            f"  epoch {epoch + 1}/{epochs}: loss {logs.get('loss', 0.0):.4f}, "
            f"train accuracy {logs.get('accuracy', 0.0):.4f}, live units: {live}",
            flush=True,
        )

    return keras.callbacks.LambdaCallback(on_epoch_end=on_epoch_end)


def _fmt(value, kind):
    if value is None:
        return "-"
    if kind == "int":
        return f"{int(value):,}"
    if kind == "pct":
        return f"{100 * value:.2f} %"
    if kind == "ms":
        return f"{value:.3f} ms"
    return str(value)


def _table(rows):
    header = ("", "before slim", "after slim", "after / before")
    lines = [header]
    for label, before, after, kind in rows:
        ratio = "-"
        if kind in ("int", "ms") and before and after is not None:
            ratio = f"x{after / before:.3g}"
        elif kind == "pct" and before is not None and after is not None:
            ratio = f"{100 * (after - before):+.2f} pts"
        elif kind == "str":
            ratio = ""
        lines.append((label, _fmt(before, kind), _fmt(after, kind), ratio))
    widths = [max(len(row[i]) for row in lines) for i in range(4)]
    out = []
    for i, row in enumerate(lines):
        out.append(
            "  ".join(
                cell.ljust(widths[j]) if j == 0 else cell.rjust(widths[j])
                for j, cell in enumerate(row)
            )
        )
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def main(argv=None):
    """Run the demo.

    Args:
        argv: command-line arguments (without the program name); `None`
            reads `sys.argv[1:]`.

    Returns:
        0 on success.

    Example:

    >>> main(["--quick", "--out", "/tmp/kprune_demo_doc"])  # doctest: +SKIP
    0
    """
    args = _parser().parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        raise ValueError(f"--epochs must be >= 1. Received: --epochs={args.epochs}")
    if args.strength is not None and args.strength < 0:
        raise ValueError(
            f"--strength must be >= 0. Received: --strength={args.strength}"
        )
    if args.batch_size < 1:
        raise ValueError(
            f"--batch-size must be >= 1. Received: --batch-size={args.batch_size}"
        )
    start = time.perf_counter()

    import keras

    import kprune
    from kprune._atomic import atomic_path, write_text

    os.makedirs(args.out, exist_ok=True)
    (x_train, y_train), (x_test, y_test), source = _load(args)
    print(f"kprune demo: data: {source}", flush=True)
    x_train, x_test = _prepare(x_train), _prepare(x_test)
    y_train = np.asarray(y_train, dtype="int64")
    y_test = np.asarray(y_test, dtype="int64")

    steps_per_epoch = math.ceil(len(x_train) / args.batch_size)
    epochs = args.epochs
    if epochs is None:
        epochs = 1 if args.quick else max(1, round(TARGET_STEPS / steps_per_epoch))
    strength = args.strength
    if strength is None:
        strength = QUICK_STRENGTH if args.quick else DEFAULT_STRENGTH
    prox_every = max(1, steps_per_epoch // 2) if args.quick else PROX_EVERY
    total_steps = epochs * steps_per_epoch

    keras.utils.set_random_seed(args.seed)
    dense = lenet5()
    sparse = kprune.sparsity.apply_group_sparsity(
        dense,
        strength,
        strength_per_layer={
            name: strength * scale for name, scale in LAYER_SCALES.items()
        },
    )
    schedule = keras.optimizers.schedules.CosineDecay(
        LEARNING_RATE, decay_steps=total_steps, alpha=0.02
    )
    sparse.compile(
        optimizer=keras.optimizers.SGD(schedule, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    prox = kprune.callbacks.ProximalStep(every_n_steps=prox_every)
    widths = {"conv1": 20, "conv2": 50, "fc1": 500}
    log_path = os.path.join(args.out, "train_log.csv")
    print(
        f"kprune demo: training LeNet-5 for {epochs} epoch(s) "
        f"({total_steps:,} steps of {args.batch_size}) under group sparsity: "
        f"lambda = {strength:g} x {LAYER_SCALES}, proximal step every "
        f"{prox_every} steps, SGD(momentum 0.9, cosine lr {LEARNING_RATE:g})",
        flush=True,
    )
    train_start = time.perf_counter()
    # The log appears complete at the end of training, or not at all (Ctrl-C).
    with atomic_path(log_path) as tmp_log:
        sparse.fit(
            x_train,
            y_train,
            batch_size=args.batch_size,
            epochs=epochs,
            verbose=0,
            callbacks=[
                prox,  # first: the callbacks after it see the weights after it
                kprune.callbacks.SparsityLogger(),
                keras.callbacks.CSVLogger(tmp_log),
                _epoch_printer(epochs, widths),
            ],
        )
    train_seconds = time.perf_counter() - train_start
    if total_steps % prox_every:
        prox.apply()  # end on a proximal step, so the dead groups are exact zeros

    slim = kprune.surgery.slim(sparse)
    acc_before = _keras_accuracy(sparse, x_test, y_test)
    acc_after = _keras_accuracy(slim, x_test, y_test)
    sparse_path = os.path.join(args.out, "lenet5_sparse.keras")
    slim_path = os.path.join(args.out, "lenet5_slim.keras")
    for model, path in ((sparse, sparse_path), (slim, slim_path)):
        with atomic_path(path) as tmp:
            model.save(tmp)

    sample = x_test[:8]
    tflite = {}
    for key, model in (("before", sparse), ("after", slim)):
        path = os.path.join(
            args.out, f"lenet5_{'sparse' if key == 'before' else 'slim'}.tflite"
        )
        kprune.export.to_tflite(model, path, sample_inputs=sample, verify=True)
        stats = kprune.export.measure_tflite(
            path, num_threads=1, runs=args.latency_runs, sample_inputs=x_test[:1]
        )
        stats["accuracy"] = _tflite_accuracy(path, x_test, y_test)
        tflite[key] = stats

    comparison = kprune.report.compare(sparse, slim)
    w_before = [_width(comparison, name, "before") for name in widths]
    w_after = [_width(comparison, name, "after") for name in widths]
    rows = [
        (
            "widths conv1-conv2-fc1",
            "-".join(map(str, w_before)),
            "-".join(map(str, w_after)),
            "str",
        ),
        (
            "params",
            comparison["params"]["before"],
            comparison["params"]["after"],
            "int",
        ),
        (
            "MACs / image",
            comparison["macs"]["before"],
            comparison["macs"]["after"],
            "int",
        ),
        ("Keras test accuracy", acc_before, acc_after, "pct"),
        (
            "TFLite test accuracy",
            tflite["before"]["accuracy"],
            tflite["after"]["accuracy"],
            "pct",
        ),
        ("TFLite bytes", tflite["before"]["bytes"], tflite["after"]["bytes"], "int"),
        (
            "TFLite gzip bytes",
            tflite["before"]["gzip_bytes"],
            tflite["after"]["gzip_bytes"],
            "int",
        ),
        (
            "LiteRT latency (median, 1 thread)",
            tflite["before"]["latency_ms_median"],
            tflite["after"]["latency_ms_median"],
            "ms",
        ),
    ]
    print()
    print(
        f"LeNet-5 on {len(x_test):,} MNIST test images, before and after "
        "kprune.surgery.slim (both .tflite files verified against Keras):"
    )
    print(_table(rows))
    print()
    print(kprune.report.format_table(comparison), end="")

    plot_path = os.path.join(args.out, "widths.png")
    try:
        kprune.report.plot_widths(sparse, slim, plot_path)
    except ImportError as error:
        plot_path = None
        print(f"kprune demo: no widths plot ({error})")
    total_seconds = time.perf_counter() - start
    result = {
        "data": source,
        "epochs": epochs,
        "steps": total_steps,
        "batch_size": args.batch_size,
        "strength": strength,
        "layer_scales": LAYER_SCALES,
        "prox_every_n_steps": prox_every,
        "learning_rate": LEARNING_RATE,
        "train_seconds": train_seconds,
        "train_steps_per_second": total_steps / train_seconds,
        "total_seconds": total_seconds,
        "keras_accuracy": {"before": acc_before, "after": acc_after},
        "tflite": tflite,
        "comparison": comparison,
    }
    report_path = os.path.join(args.out, "report.json")
    write_text(report_path, json.dumps(result, indent=2, default=float))
    print()
    print(
        f"kprune demo: trained in {train_seconds:.1f} s "
        f"({total_steps / train_seconds:.1f} steps/s), total {total_seconds:.1f} s"
    )
    written = [
        sparse_path,
        slim_path,
        tflite["before"]["path"],
        tflite["after"]["path"],
        log_path,
        report_path,
    ]
    if plot_path:
        written.append(plot_path)
    print("kprune demo: wrote " + ", ".join(written))
    return 0


def _width(comparison, name, side):
    """Width of layer `name` on `side` (`"before"`/`"after"`) of a comparison."""
    for layer in comparison["layers"]:
        if layer["name"] == name:
            return layer["width"][side]
    return None
