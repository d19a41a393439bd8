"""Group sparsity on LeNet-5 with MNIST from TensorFlow Datasets.

The `kprune demo` flow with a `tf.data` pipeline from `tensorflow-datasets`:
train under group sparsity (Alvarez & Salzmann 2016), slim, export to
TFLite (verified), compare.

    pip install tensorflow-datasets
    python examples/group_sparsity_tfds.py --data_dir ~/tensorflow_datasets

`tfds.load("mnist")` downloads and prepares the data set the first time. If
it is not prepared under `--data_dir` and cannot be downloaded (no internet),
the script stops with an error saying so: it never trains on anything but
MNIST without being asked. `--mock` is that request: it runs the pipeline on
`tfds.testing.mock_data` (random images and labels with MNIST's shapes, so
accuracies are chance level), a quick check that everything runs. The tfds
download code also needs `importlib_resources`; `pip install
"kprune[examples]"` installs both.
"""

import argparse
import os

import keras
import numpy as np
import tensorflow as tf

import kprune
import kprune.sparsity
from kprune.demo import LAYER_SCALES, lenet5

BATCH_SIZE = 100


def _tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise SystemExit(
            f"error: this example needs tensorflow-datasets ({error}); "
            'install it with pip install "kprune[examples]"'
        ) from None
    return tfds


def load(data_dir, mock, mock_examples):
    """(train, test) tf.data datasets of (image, label) and a description.

    Raises SystemExit (with the reason) when MNIST cannot be loaded: the
    random mock data is used only when asked for with `mock=True`.
    """
    tfds = _tfds()
    if not mock:
        try:
            train, test = tfds.load(
                "mnist",
                split=["train", "test"],
                as_supervised=True,
                data_dir=data_dir,
                download=True,
            )
        except Exception as error:  # not prepared and no internet
            reason = " ".join(str(error).split())[:300]
            raise SystemExit(
                f"error: tfds.load('mnist') failed ({type(error).__name__}: "
                f"{reason}). Prepare MNIST under --data_dir (this needs internet "
                "once), or pass --mock to check the pipeline on random data."
            ) from None
        return train, test, f"tfds mnist (data_dir={data_dir or 'default'})"
    with tfds.testing.mock_data(num_examples=mock_examples):
        train, test = tfds.load(
            "mnist", split=["train", "test"], as_supervised=True, data_dir=data_dir
        )
    return (
        train,
        test,
        (
            f"--mock: tfds.testing.mock_data, {mock_examples} random MNIST-shaped "
            "examples per split (accuracy is chance level)"
        ),
    )


def pipeline(ds, training):
    def scale(image, label):
        return tf.cast(image, tf.float32) / 255.0, label

    ds = ds.map(scale, num_parallel_calls=tf.data.AUTOTUNE).cache()
    if training:
        ds = ds.shuffle(10_000, seed=0)
    return ds.batch(BATCH_SIZE).prefetch(tf.data.AUTOTUNE)


def accuracy(model, ds):
    correct = total = 0
    for images, labels in ds:
        logits = model(images, training=False)
        correct += int(np.sum(np.argmax(logits, axis=-1) == labels.numpy()))
        total += int(labels.shape[0])
    return correct / total


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default=None, help="TFDS data folder")
    parser.add_argument(
        "--mock",
        action="store_true",
        help="train on random MNIST-shaped data (tfds mock data): a smoke test",
    )
    parser.add_argument("--mock_examples", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--strength", type=float, default=0.1)
    parser.add_argument("--out", default="kprune_tfds")
    args = parser.parse_args()

    train, test, source = load(args.data_dir, args.mock, args.mock_examples)
    print(f"data: {source}")
    train, test = pipeline(train, True), pipeline(test, False)
    steps = args.epochs * int(train.cardinality())

    keras.utils.set_random_seed(0)
    model = kprune.sparsity.apply_group_sparsity(
        lenet5(),
        args.strength,
        strength_per_layer={k: args.strength * s for k, s in LAYER_SCALES.items()},
    )
    model.compile(
        optimizer=keras.optimizers.SGD(
            keras.optimizers.schedules.CosineDecay(0.05, steps, alpha=0.02),
            momentum=0.9,
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    prox = kprune.callbacks.ProximalStep(every_n_steps=50)
    model.fit(
        train,
        epochs=args.epochs,
        verbose=2,
        callbacks=[prox, kprune.callbacks.SparsityLogger(per_layer=False)],
    )
    if steps % 50:
        prox.apply()  # end on a proximal step: dead units are exact zeros

    slim = kprune.surgery.slim(model)
    os.makedirs(args.out, exist_ok=True)
    sample = next(iter(test))[0][:8].numpy()
    path = kprune.export.to_tflite(
        slim, os.path.join(args.out, "lenet5_slim.tflite"), sample_inputs=sample
    )
    stats = kprune.export.measure_tflite(path, num_threads=1, sample_inputs=sample[:1])
    print(kprune.report.format_table(kprune.report.compare(model, slim)), end="")
    print(
        f"test accuracy: {accuracy(model, test):.4f} before slim, "
        f"{accuracy(slim, test):.4f} after; {path}: {stats['bytes']:,} bytes, "
        f"LiteRT {stats['latency_ms_median']:.3f} ms (median, 1 thread)"
    )


if __name__ == "__main__":
    main()
