"""kprune's training callbacks and losses on Keras 3's JAX backend.

One subprocess runs with `KERAS_BACKEND=jax` (the backend is fixed when Keras
is first imported, and this process runs TensorFlow), trains tiny models and
prints one JSON line that the tests below check. JAX differs from TensorFlow
in two ways that these callbacks must handle (`kprune/_backend.py`): the
weights live in the train state during an epoch, and non-model variables
(masks, regularizer strengths) are baked into the compiled train step.
"""

import importlib.util

import numpy as np
import pytest

import kprune
from tests.test_distillation import reference

if importlib.util.find_spec("jax") is None:
    pytest.skip("jax is not installed", allow_module_level=True)


SCRIPT = r"""
import json, sys
import numpy as np

import kprune
import kprune.pruning
import kprune.sparsity

out = {"tf_after_import": "tensorflow" in sys.modules}

import keras
from kprune.callbacks import (
    MagnitudePruning, ProximalStep, RegularizationScheduler, SparsityLogger)
from kprune.pruning import PolynomialDecay, get_masks
from kprune.regularizers import GroupLasso

out["backend"] = keras.backend.backend()
rng = np.random.default_rng(0)
x = rng.normal(size=(64, 8)).astype("float32")
y = (x[:, :2] @ rng.normal(size=(2, 4))).astype("float32")


def kernels(model):
    return {l.name: keras.ops.convert_to_numpy(l.kernel) for l in model.layers}


def zero_fraction(model):
    return {n: float(np.mean(k == 0)) for n, k in kernels(model).items()}


class EpochProbe(keras.callbacks.Callback):
    # Reads the kernels at each epoch end, before on_train_end re-masks them.
    def __init__(self):
        super().__init__()
        self.zeros = []

    def on_epoch_end(self, epoch, logs=None):
        self.zeros.append(zero_fraction(self.model))


class BatchLogProbe(keras.callbacks.Callback):
    # Counts the batches whose logs got a proximal step's figures.
    def __init__(self):
        super().__init__()
        self.hits = 0

    def on_train_batch_end(self, batch, logs=None):
        self.hits += int("prox_zero_groups" in (logs or {}))


def mlp(reg=None, act=None):
    # Seeded initializers, not keras.utils.set_random_seed (which imports
    # TensorFlow when it is installed).
    init = keras.initializers.GlorotUniform
    return keras.Sequential([
        keras.Input((8,)),
        keras.layers.Dense(16, activation=act, name="a", kernel_regularizer=reg,
                           kernel_initializer=init(seed=1)),
        keras.layers.Dense(4, name="b", kernel_initializer=init(seed=2)),
    ])


def held(model, masks):
    # Every pruned entry (mask 0) is exactly zero.
    ks = kernels(model)
    return all(bool(np.all(ks[n][m == 0] == 0)) for n, m in masks.items())


# 1. Step schedule, 8 steps per epoch: pruning events at steps 2 (target 0),
# 6 (mid epoch 0, target 0.7) and 10 (mid epoch 1, final 0.8).
model = mlp()
model.compile(keras.optimizers.Adam(0.01), "mse")
probe = EpochProbe()
sched = PolynomialDecay(0.0, 0.8, begin_step=2, end_step=10, frequency=4)
h = model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False,
              callbacks=[MagnitudePruning(sparsity=sched), probe])
masks = get_masks(model)
before = kernels(model)
model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
after = kernels(model)
out["step"] = {
    "logged": h.history["sparsity"],
    "kept": h.history["kept/a"],
    "epoch_zeros": probe.zeros,
    "mask_zeros": {n: float(np.mean(m == 0)) for n, m in masks.items()},
    "zeros_after_retrain": zero_fraction(model),
    "held_after_retrain": held(model, masks),
    "kept_changed": all(
        bool(np.any(after[n][m == 1] != before[n][m == 1]))
        for n, m in masks.items()),
}

# 2. Quality mode, two cycles (epochs 0 and 1), then one retraining epoch.
model = mlp()
model.compile(keras.optimizers.Adam(0.01), "mse")
probe = EpochProbe()
h = model.fit(x, y, batch_size=8, epochs=3, verbose=0, shuffle=False, callbacks=[
    MagnitudePruning(quality=0.7, cycles=2, epochs_per_cycle=1), probe])
masks = get_masks(model)
out["quality"] = {
    "logged": h.history["sparsity"],
    "epoch_zeros": probe.zeros,
    "mask_zeros": {n: float(np.mean(m == 0)) for n, m in masks.items()},
    "held": held(model, masks),
}


# 3. RegularizationScheduler: the same run with strength 0 throughout, or 0
# for the first trace and 1.0 afterwards (per epoch, and per batch).
def reg_run(schedule, update_freq):
    reg = GroupLasso(0.0, mode="penalty")
    model = mlp(reg)
    model.compile(keras.optimizers.SGD(0.05), "mse")
    cb = RegularizationScheduler(schedule, update_freq=update_freq)
    h = model.fit(x, y, batch_size=8, epochs=3, verbose=0, shuffle=False,
                  callbacks=[cb])
    norm = float(np.linalg.norm(kernels(model)["a"]))
    return norm, h.history["reg_strength"]


off, _ = reg_run(lambda i: 0.0, "epoch")
on_epoch, logged_epoch = reg_run(lambda e: 0.0 if e < 1 else 1.0, "epoch")
on_batch, logged_batch = reg_run(lambda s: 0.0 if s < 4 else 1.0, "batch")
out["reg"] = {"off": off, "epoch": on_epoch, "batch": on_batch,
              "logged_epoch": logged_epoch, "logged_batch": logged_batch}


# 4. ProximalStep at epoch end and every 3 steps (16 steps: 5 steps), with
# SparsityLogger after it. ReLU units whose group is zero get no gradient
# under plain SGD, so zero groups stay exactly zero between proximal steps.
def prox_run(every_n_steps, strength):
    model = mlp(GroupLasso(strength, mode="proximal"), act="relu")
    model.compile(keras.optimizers.SGD(0.05), "mse")
    probe = BatchLogProbe()
    h = model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False, callbacks=[
        ProximalStep(every_n_steps=every_n_steps), probe, SparsityLogger()])
    k = kernels(model)
    bias = keras.ops.convert_to_numpy(model.get_layer("a").bias)
    zero_cols = np.all(k["a"] == 0, axis=0)
    return {
        "logged": h.history["prox_zero_groups"],
        "kernel_zero_groups": int(np.sum(zero_cols)),
        "bias_zero": bool(np.all(bias[zero_cols] == 0)),
        "batch_hits": probe.hits,
        "live_a": h.history["live_units/a"],
        "live_b": h.history["live_units/b"],
        "live": h.history["live_units"],
        "group_sparsity_a": h.history["group_sparsity/a"],
        "weight_sparsity": h.history["weight_sparsity"],
        "true_weight_sparsity": float(
            (np.sum(k["a"] == 0) + np.sum(k["b"] == 0))
            / (k["a"].size + k["b"].size)),
    }


out["prox_epoch"] = prox_run(None, 3.0)
out["prox_steps"] = prox_run(3, 1.0)

# The distillation loss, on a fixed batch and inside a compiled train step.
from kprune.losses import Distillation
labels = rng.integers(0, 4, 16)
teacher = rng.normal(scale=3.0, size=(16, 4)).astype("float32")
student = rng.normal(scale=3.0, size=(16, 4)).astype("float32")
packed = np.concatenate([labels[:, None], teacher], axis=1).astype("float32")
net = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
net.compile(keras.optimizers.SGD(0.1), loss=Distillation(2.0, 0.5))
h = net.fit(x[:16], packed, epochs=3, verbose=0)
out["distill"] = {
    "loss": float(Distillation(2.0, 0.5)(packed, student)),
    "labels": labels.tolist(), "teacher": teacher.tolist(),
    "student": student.tolist(), "fit_loss": h.history["loss"],
}
out["tf_at_end"] = "tensorflow" in sys.modules
print("RESULT " + json.dumps(out))
"""


def jax_result():
    """Run the script under `KERAS_BACKEND=jax`; its parsed JSON result."""
    return kprune.testing.run_script(
        SCRIPT, env={"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    )


class JaxBackendTest(kprune.testing.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.r = jax_result()  # one subprocess for the whole class

    def test_runs_on_jax_without_tensorflow(self):
        self.assertEqual(self.r["backend"], "jax")
        self.assertFalse(self.r["tf_after_import"])
        self.assertFalse(self.r["tf_at_end"])

    def test_step_schedule_prunes_mid_epoch(self):
        r = self.r["step"]
        # s(6) = 0.8 - 0.8 (1 - 4/8)^3 = 0.7: round(0.7 x 128) = 90 of
        # 128 in `a`, round(0.7 x 64) = 45 of 64 in `b`, 135 / 192 overall.
        self.assertAlmostEqual(r["logged"][0], 135 / 192, places=6)
        self.assertAlmostEqual(r["kept"][0], 1 - 90 / 128, places=6)
        self.assertAlmostEqual(r["logged"][1], 0.8, delta=0.005)
        # The kernels at each epoch end (before on_train_end re-masks them)
        # have exactly the masks' zeros: the mid-epoch assignments reached
        # the train state and the compiled step applies the new masks.
        self.assertAlmostEqual(r["epoch_zeros"][0]["a"], 90 / 128, places=6)
        self.assertAlmostEqual(r["epoch_zeros"][0]["b"], 45 / 64, places=6)
        self.assertEqual(r["epoch_zeros"][1], r["mask_zeros"])
        # A later `fit` without the callback keeps the zeros and trains the rest.
        self.assertTrue(r["held_after_retrain"])
        self.assertEqual(r["zeros_after_retrain"], r["mask_zeros"])
        self.assertTrue(r["kept_changed"])

    def test_quality_mode(self):
        r = self.r["quality"]
        self.assertGreater(r["logged"][0], 0.2)
        self.assertGreater(r["logged"][1], r["logged"][0])  # second cycle
        self.assertEqual(r["logged"][2], r["logged"][1])  # retraining only
        for zeros in r["epoch_zeros"][1:]:
            self.assertEqual(zeros, r["mask_zeros"])
        self.assertTrue(r["held"])

    def test_regularization_scheduler_changes_training(self):
        r = self.r["reg"]
        self.assertEqual(r["logged_epoch"], [0.0, 1.0, 1.0])
        self.assertEqual(r["logged_batch"], [1.0, 1.0, 1.0])
        # Strength 1.0 after the first trace must shrink the kernel.
        self.assertLess(r["epoch"], 0.5 * r["off"])
        self.assertLess(r["batch"], 0.5 * r["off"])

    def test_proximal_step_zero_groups(self):
        for key, hits in (("prox_epoch", 0), ("prox_steps", 5)):
            r = self.r[key]
            with self.subTest(mode=key):
                self.assertEqual(r["batch_hits"], hits)
                self.assertGreater(r["kernel_zero_groups"], 0)
                self.assertLess(r["kernel_zero_groups"], 16)
                self.assertEqual(r["logged"][-1], r["kernel_zero_groups"])
                self.assertTrue(r["bias_zero"])

    def test_distillation_loss(self):
        r = self.r["distill"]
        want = reference(
            np.array(r["labels"]),
            np.array(r["teacher"], "float32"),
            np.array(r["student"], "float32"),
            2.0,
            0.5,
        ).mean()
        self.assertAlmostEqual(r["loss"], float(want), places=4)
        self.assertLess(r["fit_loss"][-1], r["fit_loss"][0])

    def test_sparsity_logger_counts(self):
        for key in ("prox_epoch", "prox_steps"):
            r = self.r[key]
            with self.subTest(mode=key):
                dead = r["kernel_zero_groups"]
                self.assertEqual(r["live_a"][-1], 16 - dead)
                self.assertEqual(r["live_b"][-1], 4)
                self.assertEqual(r["live"][-1], 20 - dead)
                self.assertAlmostEqual(r["group_sparsity_a"][-1], dead / 16)
                self.assertAlmostEqual(
                    r["weight_sparsity"][-1], r["true_weight_sparsity"]
                )
                self.assertGreater(r["weight_sparsity"][-1], 0.0)
