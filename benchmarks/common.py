"""Shared helpers of the kprune benchmarks (`benchmarks/*.py`).

A benchmark run as `python benchmarks/x.py` has this folder on `sys.path`
and does `from common import ...`. Importing this module puts the
repository first on `sys.path`, so the benchmarks measure the working
tree's `kprune`.

Keras 3 only: `benchmarks/_tfmot_worker.py` runs under tf-keras in its own
virtualenv and stays self-contained (importing this module there would
import Keras 3).
"""

import datetime
import gzip
import json
import os
import platform
import shlex
import sys
import time

import keras
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
if REPO not in sys.path:
    sys.path.insert(0, REPO)

# ---------------------------------------------------------------- MNIST

MNIST_ENV = "KPRUNE_MNIST"
MNIST_CANDIDATES = [
    os.path.join(REPO, ".data", "mnist.npz"),
    os.path.join(os.path.expanduser("~"), ".keras", "datasets", "mnist.npz"),
    os.path.join(REPO, "..", "shared", "data", "mnist.npz"),
]


def mnist_candidates(path=None):
    """Where `mnist_path` looks, in order (absolute paths).

    `path` (when given), then `$KPRUNE_MNIST` (when set), then
    `MNIST_CANDIDATES`: `<repo>/.data/mnist.npz`,
    `~/.keras/datasets/mnist.npz`, `<repo>/../shared/data/mnist.npz`.
    """
    first = [p for p in (path, os.environ.get(MNIST_ENV)) if p]
    return [os.path.abspath(p) for p in first + MNIST_CANDIDATES]


def mnist_path(path=None):
    """The first MNIST `.npz` (keras.datasets format) found, or exit.

    Args:
        path: a file to try before the usual places (e.g. a `--data`
            argument); see `mnist_candidates`.
    """
    looked = mnist_candidates(path)
    for candidate in looked:
        if os.path.isfile(candidate):
            return candidate
    raise SystemExit(
        "MNIST not found. Looked for mnist.npz (keras.datasets format: x_train, "
        "y_train, x_test, y_test) at:\n  "
        + "\n  ".join(looked)
        + f"\nSet {MNIST_ENV}=/path/to/mnist.npz or copy the file to one of these."
    )


def read_mnist(path):
    """The four arrays of an MNIST `.npz` as stored: (x, y, x_test, y_test).

    Read with NumPy: `keras.datasets.mnist.load_data()` checks a sha256 that
    the shared copy does not match, deletes the file and tries to download.
    """
    with np.load(path, allow_pickle=False) as d:
        return d["x_train"], d["y_train"], d["x_test"], d["y_test"]


def load_mnist(flat):
    """Full MNIST as float32 in [0, 1]: (x_train, y_train, x_test, y_test).

    Images are `(n, 784)` when `flat`, else `(n, 28, 28, 1)`; labels int64.
    """
    x, y, xt, yt = read_mnist(mnist_path())
    shape = (-1, 784) if flat else (-1, 28, 28, 1)
    x = x.reshape(shape).astype("float32") / 255.0
    xt = xt.reshape(shape).astype("float32") / 255.0
    return x, y.astype("int64"), xt, yt.astype("int64")


# ------------------------------------------------------ run record


def now():
    """UTC time, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def machine():
    """Where and when a benchmark ran: platform, CPUs, versions, backend, date.

    Also `uname -a` and the load average (1/5/15 min) at the call: the
    machine may be shared.

    With the JAX backend also `jax_devices` (as strings); with TensorFlow,
    its version. TensorFlow is not imported under another backend.
    """
    import kprune

    backend = keras.backend.backend()
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "keras": keras.__version__,
        "date": now(),
        "backend": backend,
        "kprune": kprune.__version__,
        "uname": " ".join(os.uname()),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }
    if backend == "jax":
        import jax

        info["jax"] = jax.__version__
        info["jax_devices"] = [str(d) for d in jax.devices()]
    elif backend == "tensorflow":
        import tensorflow as tf

        info["tensorflow"] = tf.__version__
    return info


def command_line(script, argv=None):
    """The command that ran `script`: `python benchmarks/x.py ARGS`.

    Args:
        script: the benchmark's `__file__`.
        argv: its arguments; `sys.argv[1:]` when None.
    """
    argv = sys.argv[1:] if argv is None else argv
    return "python " + shlex.join([os.path.relpath(script, REPO), *argv])


def run_line(command, info, date=None):
    """Markdown "`command` on PLATFORM, N CPUs, DATE" (`info` from `machine()`).

    `date` replaces the machine's date when given.
    """
    return (
        f"`{command}` on {info.get('platform')}, {info.get('cpu_count')} CPUs, "
        f"{date or info.get('date')}"
    )


def md_table(header, rows):
    """Markdown table lines: the header, the `---` rule, one line per row.

    Cells are written with `str`; an empty cell as a single space.
    """

    def line(cells):
        return "|" + "".join(f" {c} |" if str(c) else " |" for c in cells)

    return [line(header), line("---" for _ in header)] + [line(r) for r in rows]


def read_json(path, default=None):
    """The JSON in `path`, or `default` when there is no such file."""
    if not os.path.isfile(path):
        return default
    with open(path) as f:
        return json.load(f)


def write_results(name, result, markdown, out=RESULTS, indent=2):
    """Writes `out/<name>.json` and `out/<name>.md`; returns both paths."""
    os.makedirs(out, exist_ok=True)
    json_path = os.path.join(out, f"{name}.json")
    md_path = os.path.join(out, f"{name}.md")
    with open(json_path, "w") as f:
        json.dump(result, f, indent=indent)
    with open(md_path, "w") as f:
        f.write(markdown)
    return json_path, md_path


# ------------------------------------------------- models, training


def _l2(l2):
    return keras.regularizers.L2(l2) if l2 else None


def lenet_300_100(l2=0.0):
    """LeNet-300-100: Dense 300, 100 (ReLU), 10 logits (fc1, fc2, fc3)."""
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


def compile_classifier(model, optimizer):
    """Compiles for integer labels and logits (accuracy metric); returns it."""
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def nesterov_sgd(lr, steps=None):
    """SGD, Nesterov momentum 0.9; cosine decay to 0 over `steps` if given."""
    rate = lr if steps is None else keras.optimizers.schedules.CosineDecay(lr, steps)
    return keras.optimizers.SGD(rate, momentum=0.9, nesterov=True)


class EpochTimer(keras.callbacks.Callback):
    """Wall time of each epoch's training (not validation)."""

    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def shift_images(images, dy, dx):
    """`images` (N, H, W, ...) moved down `dy` and right `dx` pixels, zero fill."""
    out = np.zeros_like(images)
    h, w = images.shape[1:3]
    out[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = images[
        :, max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


class ShiftedImages(keras.utils.PyDataset):
    """Training batches of images, each moved by a random whole-pixel shift.

    Every epoch, each image is moved by its own `(dy, dx)`, both drawn
    uniformly from `-max_shift..max_shift` (zero fill at the border), and
    the set is reshuffled. `x` may be flat (`image_shape` says how to read
    it); the batches keep `x`'s shape.
    """

    def __init__(self, x, y, batch_size, max_shift=1, image_shape=(28, 28), seed=0):
        super().__init__()
        self.x, self.y = np.asarray(x), np.asarray(y)
        self.batch_size, self.max_shift = batch_size, int(max_shift)
        self.image_shape = tuple(image_shape)
        self.rng = np.random.default_rng(seed)
        self.on_epoch_end()

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def on_epoch_end(self):
        n, s = len(self.x), self.max_shift
        images = self.x.reshape((n, *self.image_shape, -1))
        dy = self.rng.integers(-s, s + 1, n)
        dx = self.rng.integers(-s, s + 1, n)
        shifted = np.empty_like(images)
        for a in range(-s, s + 1):
            for b in range(-s, s + 1):
                pick = (dy == a) & (dx == b)
                shifted[pick] = shift_images(images[pick], a, b)
        order = self.rng.permutation(n)
        self._x = shifted.reshape(self.x.shape)[order]
        self._y = self.y[order]

    def __getitem__(self, index):
        batch = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return self._x[batch], self._y[batch]


def training_data(x, y, batch_size, max_shift=0, seed=0):
    """`model.fit` arguments for (x, y): plain, or `ShiftedImages` if shifting."""
    if not max_shift:
        return {"x": x, "y": y, "batch_size": batch_size}
    return {"x": ShiftedImages(x, y, batch_size, max_shift, seed=seed)}


# ------------------------------------------------------- measures


def count_params(model):
    """(all weights, non-zero weights) of `model`."""
    total = 0
    nonzero = 0
    for w in model.weights:
        v = keras.ops.convert_to_numpy(w)
        total += v.size
        nonzero += int(np.count_nonzero(v))
    return total, nonzero


def _predicted(model, x, batch_size):
    return np.argmax(model.predict(x, batch_size=batch_size, verbose=0), axis=-1)


def test_error(model, xt, yt, batch_size=1000):
    """Fraction of `xt` whose arg-max output is not `yt`."""
    return float(np.mean(_predicted(model, xt, batch_size) != yt))


def accuracy(model, x, y, batch_size=1000):
    """Fraction of `x` whose arg-max output is `y`."""
    return float(np.mean(_predicted(model, x, batch_size) == y))


def gzip_bytes(path):
    """Bytes of `path` gzipped (level 9, no timestamp)."""
    with open(path, "rb") as f:
        return len(gzip.compress(f.read(), compresslevel=9, mtime=0))


# ------------------------------------------------------- recipes


def cosine_sgd(learning_rate, steps, alpha=0.02, momentum=0.9, weight_decay=None):
    """SGD with momentum, cosine decay from `learning_rate` to `alpha` of it."""
    schedule = keras.optimizers.schedules.CosineDecay(
        learning_rate, decay_steps=steps, alpha=alpha
    )
    return keras.optimizers.SGD(
        schedule, momentum=momentum, weight_decay=weight_decay or None
    )


def smoothed_crossentropy(label_smoothing, classes=10):
    """Cross-entropy of logits against smoothed integer labels.

    Target distribution `(1 - eps) * one_hot(y) + eps / classes`, with
    `eps = label_smoothing`.
    """

    def loss(y_true, logits):
        y_true = keras.ops.reshape(keras.ops.cast(y_true, "int32"), (-1,))
        target = keras.ops.one_hot(y_true, classes)
        return keras.losses.categorical_crossentropy(
            target, logits, from_logits=True, label_smoothing=label_smoothing
        )

    return loss


def set_dropout(model, rate):
    """Sets the rate of every Dropout layer of `model` (None: leave them)."""
    if rate is None:
        return
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = float(rate)


# ------------------------------------------------ step time, side by side


def interleaved_step_times(variants, x, y, batch_size, steps, rounds, reference):
    """Seconds per training step of several variants, measured side by side.

    `variants` maps a name to `(model, callbacks)`: compiled models of the
    same architecture, data and optimizer, already warmed up (traced).
    Each round fits every variant for one "epoch" of `steps` steps on the
    next slice of `(x, y)`, in rotating order, so that load from other
    processes hits all of them alike.

    Returns:
        A dict: `ms_per_step_median` and `ms_per_step_min` per variant, and
        `ratio_vs_<reference>` per other variant: the median over rounds
        of the per-round time ratio (`median_ratio`), the ratio of the
        fastest rounds (`min_time_ratio`) and the per-round ratios; also the
        process CPU time (all threads) per step (`cpu_ms_per_step_median`)
        and its median per-round ratio (`median_cpu_ratio`), less
        sensitive to other processes on a shared machine.
    """
    n = steps * batch_size
    chunks = max(1, len(x) // n)
    names = list(variants)
    times = {name: [] for name in names}
    cpu = {name: [] for name in names}
    for r in range(rounds):
        c = r % chunks
        xs, ys = x[c * n : (c + 1) * n], y[c * n : (c + 1) * n]
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            model, callbacks = variants[name]
            start, start_cpu = time.perf_counter(), time.process_time()
            model.fit(
                xs, ys, batch_size=batch_size, epochs=1, verbose=0, callbacks=callbacks
            )
            times[name].append((time.perf_counter() - start) / steps)
            cpu[name].append((time.process_time() - start_cpu) / steps)
    ratios = {}
    for name in names:
        if name == reference:
            continue
        per_round = [a / b for a, b in zip(times[name], times[reference])]
        cpu_round = [a / b for a, b in zip(cpu[name], cpu[reference])]
        ratios[name] = {
            "median_ratio": float(np.median(per_round)),
            "min_time_ratio": float(min(times[name]) / min(times[reference])),
            "per_round": per_round,
            "median_cpu_ratio": float(np.median(cpu_round)),
        }
    return {
        "rounds": rounds,
        "steps_per_round": steps,
        "batch_size": batch_size,
        "ms_per_step_median": {k: 1e3 * float(np.median(v)) for k, v in times.items()},
        "ms_per_step_min": {k: 1e3 * float(np.min(v)) for k, v in times.items()},
        "cpu_ms_per_step_median": {
            k: 1e3 * float(np.median(v)) for k, v in cpu.items()
        },
        f"ratio_vs_{reference}": ratios,
    }
