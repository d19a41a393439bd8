"""Training runs of the group-sparsity constraints against a NumPy reference.

Backend-neutral (no TensorFlow import), so the same runs execute in the test
process (TensorFlow), in a fresh `KERAS_BACKEND=jax` process and under
`tf.distribute.MirroredStrategy` (`tests/test_group_constraints.py`).

The reference is proximal SGD written out in NumPy (float64): plain SGD on
the mean squared error of a ReLU MLP, then, after every step, the sparse
group Lasso proximal operator on `[kernel column; bias]` of the first layer.
"""

import contextlib

import keras
import numpy as np

import kprune
from kprune.constraints import GroupSoftThreshold, SparseGroupSoftThreshold

IN, HIDDEN, OUT, N, BATCH, EPOCHS = 6, 8, 3, 32, 8, 2
STEPS = EPOCHS * N // BATCH
STRENGTH = 0.5


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, IN)).astype("float32")
    y = (x[:, :2] @ rng.normal(size=(2, OUT))).astype("float32")
    return x, y


def initial_weights():
    rng = np.random.default_rng(1)
    return [
        rng.normal(scale=0.5, size=(IN, HIDDEN)).astype("float32"),
        rng.normal(scale=0.1, size=(HIDDEN,)).astype("float32"),
        rng.normal(scale=0.5, size=(HIDDEN, OUT)).astype("float32"),
        np.zeros((OUT,), "float32"),
    ]


def numpy_prox(kernel, bias, t, lam, alpha):
    """Sparse group Lasso proximal operator on the columns of [kernel; bias]."""
    theta = np.concatenate([kernel, bias[None, :]], axis=0)
    if alpha > 0:
        theta = np.sign(theta) * np.maximum(np.abs(theta) - t * alpha * lam, 0.0)
    if alpha < 1:
        tau = t * (1 - alpha) * lam * np.sqrt(theta.shape[0])
        norms = np.linalg.norm(theta, axis=0)
        factor = np.where(norms > tau, 1 - tau / np.where(norms > 0, norms, 1), 0)
        theta = theta * factor
    return theta[:-1], theta[-1]


def numpy_reference(learning_rates, lam, alpha, step_sizes=None):
    """Weights after proximal SGD (float64).

    SGD steps with `learning_rates`, proximal steps with `step_sizes`
    (default: the learning rates), one per step.
    """
    step_sizes = learning_rates if step_sizes is None else step_sizes
    x, y = (a.astype("float64") for a in data())
    w1, b1, w2, b2 = (w.astype("float64") for w in initial_weights())
    for step, (lr, t) in enumerate(zip(learning_rates, step_sizes)):
        start = (step % (N // BATCH)) * BATCH
        xb, yb = x[start : start + BATCH], y[start : start + BATCH]
        z = xb @ w1 + b1
        h = np.maximum(z, 0.0)
        d = 2.0 * (h @ w2 + b2 - yb) / yb.size  # mean over batch and outputs
        gw2, gb2 = h.T @ d, d.sum(0)
        dz = (d @ w2.T) * (z > 0)
        gw1, gb1 = xb.T @ dz, dz.sum(0)
        w1, b1, w2, b2 = w1 - lr * gw1, b1 - lr * gb1, w2 - lr * gw2, b2 - lr * gb2
        w1, b1 = numpy_prox(w1, b1, t, lam, alpha)
    return [w1, b1, w2, b2]


class CountCalls:
    """Counts a constraint's Python-level proximal steps (its `prox` calls)."""

    def __init__(self, constraint):
        self.calls = 0
        inner = constraint.prox

        def counted(*args, **kwargs):
            self.calls += 1
            return inner(*args, **kwargs)

        constraint.prox = counted


def mlp(constraint):
    model = keras.Sequential(
        [
            keras.Input((IN,)),
            keras.layers.Dense(
                HIDDEN, activation="relu", name="a", kernel_constraint=constraint
            ),
            keras.layers.Dense(OUT, name="b"),
        ]
    )
    model.set_weights(initial_weights())
    return model


def reference_run(alpha=0.0, schedule=False, step_size=None, strategy=None):
    """Train with a constraint; compare with `numpy_reference`.

    Returns `(result, model)`: `result` a dict with the max abs difference
    of every weight to the reference, the dead units (kernel column and
    bias zero) of both, whether every zero kernel column has a zero bias,
    and the constraint's Python-level calls (traces, not steps).
    """
    lrs = [0.1] * STEPS
    lr = 0.1
    if schedule:
        lr = keras.optimizers.schedules.PiecewiseConstantDecay([3], [0.1, 0.05])
        lrs = [0.1] * 4 + [0.05] * (STEPS - 4)
    ts = None if step_size is None else [step_size] * STEPS
    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    with scope:
        if alpha:
            constraint = SparseGroupSoftThreshold(
                STRENGTH, alpha=alpha, step_size=step_size
            )
        else:
            constraint = GroupSoftThreshold(STRENGTH, step_size=step_size)
        counter = CountCalls(constraint)
        model = mlp(constraint)
        model.compile(keras.optimizers.SGD(lr), "mse")
    x, y = data()
    model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0)
    got = [keras.ops.convert_to_numpy(w) for w in model.weights]
    want = numpy_reference(lrs, STRENGTH, alpha, ts)
    dead = np.all(got[0] == 0, axis=0) & (got[1] == 0)
    return {
        "max_diff": max(float(np.max(np.abs(g - w))) for g, w in zip(got, want)),
        "dead_units": np.flatnonzero(dead).tolist(),
        "reference_dead_units": np.flatnonzero(
            np.all(want[0] == 0, axis=0) & (want[1] == 0)
        ).tolist(),
        "zero_columns_have_zero_bias": bool(
            np.all(got[1][np.all(got[0] == 0, axis=0)] == 0)
        ),
        "calls": counter.calls,
    }, model


def scheduler_run():
    """Strength 0 in epoch 0, 20x more than `STRENGTH` from epoch 1 on.

    Returns the zero groups after each epoch, the logged strengths and the
    constraint's strength at the end.
    """
    constraint = GroupSoftThreshold(0.0, scale=2.0)
    model = mlp(constraint)
    model.compile(keras.optimizers.SGD(0.1), "mse")

    class Probe(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.zeros = []

        def on_epoch_end(self, epoch, logs=None):
            kernel = keras.ops.convert_to_numpy(self.model.layers[0].kernel)
            self.zeros.append(int(np.sum(np.all(kernel == 0, axis=0))))

    probe = Probe()
    schedule = kprune.callbacks.RegularizationScheduler(
        lambda epoch: 0.0 if epoch < 1 else 10 * STRENGTH
    )
    x, y = data()
    history = model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=3,
        shuffle=False,
        verbose=0,
        callbacks=[schedule, probe],
    )
    return {
        "zeros": probe.zeros,
        "logged": [float(v) for v in history.history["reg_strength"]],
        "strength": constraint.strength_value(),
        "effective": constraint.effective_strength(),
    }
