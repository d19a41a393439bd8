"""Shared helpers of benchmarks/magnitude.py and benchmarks/vs_tfmot.py.

Keras 3 side only (the TFMOT worker is self-contained).
"""

import datetime
import gzip
import os
import platform
import time

import keras
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
MNIST_CANDIDATES = [
    os.path.join(os.path.expanduser("~"), ".keras", "datasets", "mnist.npz"),
    os.path.join(REPO, "..", "shared", "data", "mnist.npz"),
]


def mnist_path():
    """The first MNIST `.npz` (keras.datasets format) found, or exit."""
    for path in MNIST_CANDIDATES:
        if os.path.isfile(path):
            return os.path.abspath(path)
    raise SystemExit(
        "MNIST not found. Looked for the keras.datasets file at:\n  "
        + "\n  ".join(os.path.abspath(p) for p in MNIST_CANDIDATES)
        + "\nCopy mnist.npz (x_train, y_train, x_test, y_test) to the first path."
    )


def load_mnist(flat):
    """Full MNIST as float32 in [0, 1]: (x_train, y_train, x_test, y_test).

    Read with NumPy from the keras.datasets file (keras' own loader would
    try to download when the file's hash differs from its record).
    """
    with np.load(mnist_path()) as d:
        x, y, xt, yt = d["x_train"], d["y_train"], d["x_test"], d["y_test"]
    shape = (-1, 784) if flat else (-1, 28, 28, 1)
    x = x.reshape(shape).astype("float32") / 255.0
    xt = xt.reshape(shape).astype("float32") / 255.0
    return x, y.astype("int64"), xt, yt.astype("int64")


def machine():
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "keras": keras.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
    }


def _l2(l2):
    return keras.regularizers.L2(l2) if l2 else None


def lenet_300_100(l2=0.0):
    return keras.Sequential(
        [
            keras.Input((784,)),
            keras.layers.Dense(300, "relu", kernel_regularizer=_l2(l2), name="fc1"),
            keras.layers.Dense(100, "relu", kernel_regularizer=_l2(l2), name="fc2"),
            keras.layers.Dense(10, kernel_regularizer=_l2(l2), name="fc3"),
        ],
        name="lenet_300_100",
    )


def lenet_5(l2=0.0):
    """Caffe's LeNet-5: conv 20 5x5, pool, conv 50 5x5, pool, fc 500, fc 10."""
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(20, 5, kernel_regularizer=_l2(l2), name="conv1"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(50, 5, kernel_regularizer=_l2(l2), name="conv2"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(500, "relu", kernel_regularizer=_l2(l2), name="fc1"),
            keras.layers.Dense(10, kernel_regularizer=_l2(l2), name="fc2"),
        ],
        name="lenet_5",
    )


def count_params(model):
    total = 0
    nonzero = 0
    for w in model.weights:
        v = keras.ops.convert_to_numpy(w)
        total += v.size
        nonzero += int(np.count_nonzero(v))
    return total, nonzero


def test_error(model, xt, yt, batch_size=1000):
    logits = model.predict(xt, batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(logits, axis=1) != yt))


def gzip_bytes(path):
    with open(path, "rb") as f:
        return len(gzip.compress(f.read(), compresslevel=9, mtime=0))


class EpochTimer(keras.callbacks.Callback):
    """Wall time of each epoch's training (not validation)."""

    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)
