"""TFMOT side of benchmarks/vs_tfmot.py, run in its own process.

TFMOT needs `tf-keras` (Keras 2) and flips the process to legacy Keras, so
this script runs under a separate virtualenv with TF_USE_LEGACY_KERAS=1
(vs_tfmot.py starts it). It imports nothing from kprune.

    TF_USE_LEGACY_KERAS=1 .venv-tfmot/bin/python benchmarks/_tfmot_worker.py \
        --data mnist.npz --weights dense.npz --mode prune --sparsity 0.9 \
        --epochs 6 --end-step 2345 --frequency 100 --out result.json
"""

import argparse
import gzip
import json
import os
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402
import tf_keras  # noqa: E402


def gzip_bytes(path):
    with open(path, "rb") as f:
        return len(gzip.compress(f.read(), compresslevel=9, mtime=0))


class EpochTimer(tf_keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def lenet_300_100():
    return tf_keras.Sequential(
        [
            tf_keras.Input((784,)),
            tf_keras.layers.Dense(300, activation="relu", name="fc1"),
            tf_keras.layers.Dense(100, activation="relu", name="fc2"),
            tf_keras.layers.Dense(10, name="fc3"),
        ]
    )


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--mode", choices=["prune", "dense"], default="prune")
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--begin-step", type=int, default=0)
    p.add_argument("--end-step", type=int, required=True)
    p.add_argument("--frequency", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--tflite-dir", default=None)
    args = p.parse_args()

    tf_keras.utils.set_random_seed(args.seed)
    with np.load(args.data) as d:
        x = d["x_train"].reshape(-1, 784).astype("float32") / 255.0
        y = d["y_train"].astype("int64")
        xt = d["x_test"].reshape(-1, 784).astype("float32") / 255.0
        yt = d["y_test"].astype("int64")
    with np.load(args.weights) as w:
        weights = [w[f"arr_{i}"] for i in range(len(w.files))]

    model = lenet_300_100()
    model.set_weights(weights)
    callbacks = []
    if args.mode == "prune":
        schedule = tfmot.sparsity.keras.PolynomialDecay(
            initial_sparsity=0.0,
            final_sparsity=args.sparsity,
            begin_step=args.begin_step,
            end_step=args.end_step,
            frequency=args.frequency,
        )
        model = tfmot.sparsity.keras.prune_low_magnitude(
            model, pruning_schedule=schedule
        )
        callbacks.append(tfmot.sparsity.keras.UpdatePruningStep())
    model.compile(
        tf_keras.optimizers.SGD(args.lr, momentum=0.9, nesterov=True),
        tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    timer = EpochTimer()
    start = time.perf_counter()
    model.fit(
        x,
        y,
        batch_size=args.batch_size,
        epochs=args.epochs,
        verbose=0,
        callbacks=callbacks + [timer],
    )
    fit_seconds = time.perf_counter() - start
    if args.mode == "prune":
        model = tfmot.sparsity.keras.strip_pruning(model)
    logits = model.predict(xt, batch_size=1000, verbose=0)
    acc = float(np.mean(np.argmax(logits, axis=1) == yt))
    kernels = {
        layer.name: layer.kernel.numpy()
        for layer in model.layers
        if hasattr(layer, "kernel")
    }
    result = {
        "framework": "tfmot",
        "tensorflow": tf.__version__,
        "tf_keras": tf_keras.__version__,
        "tfmot": tfmot.__version__,
        "mode": args.mode,
        "sparsity_target": args.sparsity,
        "test_accuracy": acc,
        "epoch_seconds": timer.seconds,
        "fit_seconds": fit_seconds,
        "kept_per_layer": {
            n: float(np.count_nonzero(k)) / k.size for n, k in kernels.items()
        },
    }
    if args.tflite_dir:
        sizes = {}
        for tag, optimizations in (
            ("raw", []),
            ("sparse", [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]),
        ):
            converter = tf.lite.TFLiteConverter.from_keras_model(model)
            converter.optimizations = optimizations
            content = converter.convert()
            path = os.path.join(args.tflite_dir, f"tfmot_{args.sparsity}_{tag}.tflite")
            with open(path, "wb") as f:
                f.write(content)
            sizes[f"tflite_{tag}_bytes"] = len(content)
            sizes[f"tflite_{tag}_gzip_bytes"] = gzip_bytes(path)
            interpreter = tf.lite.Interpreter(model_path=path)
            runner = interpreter.get_signature_runner()
            name = list(runner.get_input_details())[0]
            out = list(runner(**{name: xt[:256]}).values())[0]
            sizes[f"tflite_{tag}_max_abs_diff"] = float(
                np.max(np.abs(out - logits[:256]))
            )
        result.update(sizes)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
