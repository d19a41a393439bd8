"""`GroupSoftThreshold` / `SparseGroupSoftThreshold`: proximal SGD as constraints.

Against a NumPy proximal-gradient reference on TensorFlow, on JAX (fresh
process) and under `MirroredStrategy` (fresh process, two logical CPUs);
bias groups; `apply_group_sparsity(method="constraint")`; schedules;
`.keras` and `BackupAndRestore`.
"""

import copy
import importlib.util
import pickle
import textwrap

import keras
import numpy as np
import pytest

import kprune
import kprune.sparsity
from kprune.constraints import GroupSoftThreshold, SparseGroupSoftThreshold
from kprune.ops import sparse_group_prox
from kprune.regularizers.targets import strength_holders
from kprune.testing import TWO_CPUS, InterruptAt, run_script
from tests import constraint_scenarios as scenarios

# Why two tests are TensorFlow only (see `GroupSoftThreshold`'s docstring).
BAKED = (
    "the strength is assigned by hand (or by a plain callback) without "
    "retracing; JAX bakes it into the compiled train step "
    "(RegularizationScheduler retraces)"
)


def to_np(x):
    return keras.ops.convert_to_numpy(x)


def check_reference(test, result, traces=1):
    """`result` of `scenarios.reference_run` matches the NumPy reference."""
    test.assertLess(result["max_diff"], 2e-6)
    test.assertEqual(result["dead_units"], result["reference_dead_units"])
    test.assertGreater(len(result["dead_units"]), 0)
    test.assertLess(len(result["dead_units"]), scenarios.HIDDEN)
    test.assertTrue(result["zero_columns_have_zero_bias"])
    # Traced once (per replica), then run in the compiled step: no Python
    # per step, for all 8 steps.
    test.assertEqual(result["calls"], traces)


class ReferenceTest(kprune.testing.TestCase):
    def test_matches_numpy_proximal_sgd(self):
        cases = {
            "group lasso, t = lr": {},
            "sparse group lasso": {"alpha": 0.5},
            "lr schedule read in the step": {"schedule": True},
            "sparse, schedule": {"alpha": 0.5, "schedule": True},
            "fixed step_size": {"step_size": 0.07},
        }
        for name, kwargs in cases.items():
            with self.subTest(name):
                check_reference(self, scenarios.reference_run(**kwargs)[0])

    def test_scheduler_drives_the_strength(self):
        r = scenarios.scheduler_run()
        self.assertEqual(r["logged"], [0.0, 5.0, 5.0])
        self.assertEqual(r["zeros"][0], 0)  # strength 0 in epoch 0
        self.assertGreater(r["zeros"][1], 0)
        self.assertEqual(r["strength"], 5.0)
        self.assertEqual(r["effective"], 10.0)  # scale 2 kept


class BiasGroupTest(kprune.testing.TestCase):
    def test_one_step_is_the_prox_of_the_joined_groups(self):
        # Unit 0: large; unit 1: tiny kernel column, large bias (alive only
        # because its bias is in its group); unit 2: tiny column and bias.
        kernel = np.array([[2.0, 0.12, 0.05], [1.0, -0.1, 0.02]], "float32")
        bias = np.array([0.5, 1.5, 0.01], "float32")
        for constraint in (
            GroupSoftThreshold(1.0, step_size=0.2),
            SparseGroupSoftThreshold(1.0, alpha=0.25, step_size=0.2),
        ):
            with self.subTest(type(constraint).__name__):
                layer = keras.layers.Dense(3, kernel_constraint=constraint)
                model = keras.Sequential([keras.Input((2,)), layer])
                layer.set_weights([kernel, bias])
                # lr = 0: the update leaves the weights, the constraint acts.
                model.compile(keras.optimizers.SGD(0.0), "mse")
                model.train_on_batch(np.ones((4, 2), "float32"), np.ones((4, 3)))
                want_k, want_b = sparse_group_prox(
                    kernel, bias, 0.2, 1.0, alpha=constraint.alpha
                )
                np.testing.assert_allclose(to_np(layer.kernel), to_np(want_k), 1e-6)
                np.testing.assert_allclose(to_np(layer.bias), to_np(want_b), 1e-6)
                self.assertTrue(np.all(to_np(layer.kernel)[:, 2] == 0))
                self.assertEqual(float(to_np(layer.bias)[2]), 0.0)
                self.assertTrue(np.all(to_np(layer.kernel)[:, 1] != 0))
                # The kernel alone would have lost unit 1.
                alone, _ = sparse_group_prox(
                    kernel, None, 0.2, 1.0, alpha=constraint.alpha
                )
                self.assertTrue(np.all(to_np(alone)[:, 1] == 0))

    def test_gradient_accumulation_steps_once_per_update(self):
        kernel = np.array([[2.0, 0.12], [1.0, -0.1]], "float32")
        bias = np.array([0.5, 0.01], "float32")
        layer = keras.layers.Dense(
            2, kernel_constraint=GroupSoftThreshold(1.0, step_size=0.2)
        )
        model = keras.Sequential([keras.Input((2,)), layer])
        layer.set_weights([kernel, bias])
        model.compile(keras.optimizers.SGD(0.0, gradient_accumulation_steps=2), "mse")
        data = np.ones((4, 2), "float32"), np.ones((4, 2), "float32")
        model.train_on_batch(*data)  # accumulates only: no proximal step
        np.testing.assert_array_equal(to_np(layer.kernel), kernel)
        model.train_on_batch(*data)  # the update step: one proximal step
        want_k, want_b = sparse_group_prox(kernel, bias, 0.2, 1.0)
        np.testing.assert_allclose(to_np(layer.kernel), to_np(want_k), 1e-6)
        np.testing.assert_allclose(to_np(layer.bias), to_np(want_b), 1e-6)

    def test_every_layer_type_zeroes_kernel_and_bias(self):
        inputs = keras.Input((8, 8, 2))
        x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
        x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(x)
        x = keras.layers.SeparableConv2D(3, 1, name="sep")(x)
        x = keras.layers.Conv2DTranspose(3, 2, name="tconv")(x)
        x = keras.layers.Flatten()(x)
        x = keras.layers.Dense(5, use_bias=False, name="nobias")(x)
        x = keras.layers.Dense(4, name="dense")(x)
        model = keras.Model(inputs, keras.layers.Dense(2, name="out")(x))
        sparse = kprune.sparsity.apply_group_sparsity(model, 1e3, method="constraint")
        slots = {  # layer: (constraint attribute, kernel attribute)
            "conv": ("kernel_constraint", "kernel"),
            "dw": ("depthwise_constraint", "kernel"),
            "sep": ("pointwise_constraint", "pointwise_kernel"),
            "tconv": ("kernel_constraint", "kernel"),
            "nobias": ("kernel_constraint", "kernel"),
            "dense": ("kernel_constraint", "kernel"),
        }
        for name, (attr, _) in slots.items():
            self.assertIsInstance(
                getattr(sparse.get_layer(name), attr), GroupSoftThreshold
            )
        self.assertIsNone(sparse.get_layer("out").kernel_constraint)
        self.assertIsNone(model.get_layer("conv").kernel_constraint)  # untouched
        self.assertEqual(sparse.get_layer("tconv").kernel_constraint.axis, -2)
        self.assertEqual(sparse.get_layer("dw").depthwise_constraint.axis, (-2, -1))
        sparse.compile(keras.optimizers.SGD(0.01), "mse")
        rng = np.random.default_rng(0)
        sparse.fit(rng.normal(size=(4, 8, 8, 2)), np.ones((4, 2)), verbose=0)
        for name, (_, kernel_attr) in slots.items():
            layer = sparse.get_layer(name)
            for weight in (getattr(layer, kernel_attr), layer.bias):
                if weight is not None:  # huge strength: kernel and bias zero
                    self.assertEqual(np.abs(to_np(weight)).max(), 0.0, weight.path)

    def test_bias_that_does_not_fit_the_groups(self):
        layer = keras.layers.Dense(
            3, name="d", kernel_constraint=GroupSoftThreshold(0.1, axis=0)
        )
        model = keras.Sequential([keras.Input((5,)), layer])
        model.compile(keras.optimizers.SGD(0.1), "mse")
        with self.assertRaisesRegex(ValueError, "include_bias=False"):
            model.train_on_batch(np.ones((2, 5)), np.ones((2, 3)))
        layer.kernel_constraint.include_bias = False
        model.compile(keras.optimizers.SGD(0.1), "mse")
        model.train_on_batch(np.ones((2, 5)), np.ones((2, 3)))


def joint_prox(values, t, lam):
    """NumPy group soft-threshold of `[kernel[..., n], bias[n], gamma[n],
    beta[n]]` (values: kernel, then the per-unit vectors)."""
    kernel, vectors = values[0], values[1:]
    columns = kernel.reshape(-1, kernel.shape[-1])
    kernel_part, bias = scenarios.numpy_prox(
        np.concatenate([columns] + [v[None, :] for v in vectors[:-1]]),
        vectors[-1],
        t,
        lam,
        0.0,
    )
    rows = columns.shape[0]
    shrunk = list(kernel_part[rows:]) + [bias]
    return kernel_part[:rows].reshape(kernel.shape), shrunk


class BatchNormPartnerTest(kprune.testing.TestCase):
    """conv -> BN: gamma and beta join the groups inside the optimizer step."""

    def model(self, constraint):
        keras.utils.set_random_seed(0)
        inner = keras.Sequential(
            [
                keras.Input((6, 6, 2)),
                keras.layers.Conv2D(
                    4, 3, padding="same", name="conv", kernel_constraint=constraint
                ),
                keras.layers.BatchNormalization(name="bn"),
            ],
            name="block",
        )
        x = keras.Input((6, 6, 2))
        h = keras.layers.ReLU()(inner(x))
        h = keras.layers.Conv2D(3, 3, padding="same", name="after")(h)
        h = keras.layers.GlobalAveragePooling2D()(h)
        return keras.Model(x, keras.layers.Dense(2, name="out")(h))

    def test_one_step_is_the_joint_prox_and_the_file_keeps_it(self):
        partners = ["bn/gamma", "bn/beta"]
        constraint = GroupSoftThreshold(0.3, step_size=0.5, partners=partners)
        model = self.model(constraint)
        conv = model.get_layer("block").get_layer("conv")
        bn = model.get_layer("block").get_layer("bn")
        rng = np.random.default_rng(0)
        weak = np.array([1.0, 0.02, 1.0, 0.02], "float32")  # unit 3: strong BN
        conv.kernel.assign(to_np(conv.kernel) * weak)
        conv.bias.assign(np.array([0.3, 0.01, -0.2, 0.01], "float32"))
        bn.gamma.assign(np.array([1.2, 0.01, 0.8, 1.0], "float32"))
        bn.beta.assign(np.array([0.1, 0.01, -0.3, 0.5], "float32"))
        bn.moving_mean.assign(rng.normal(size=4).astype("float32"))
        before = [to_np(v) for v in (conv.kernel, conv.bias, bn.gamma, bn.beta)]
        # lr = 0: the update leaves the weights, the constraint acts.
        model.compile(keras.optimizers.SGD(0.0), "mse")
        x = rng.normal(size=(4, 6, 6, 2)).astype("float32")
        model.train_on_batch(x, np.zeros((4, 2), "float32"))
        want_k, want = joint_prox(before, 0.5, 0.3)
        np.testing.assert_allclose(to_np(conv.kernel), want_k, atol=1e-6)
        for got, value in zip((conv.bias, bn.gamma, bn.beta), want):
            np.testing.assert_allclose(to_np(got), value, atol=1e-6)
        self.assertEqual(to_np(bn.gamma)[1], 0.0)
        self.assertEqual(to_np(bn.beta)[1], 0.0)
        self.assertNotEqual(to_np(bn.gamma)[3], 0.0)  # the BN kept unit 3
        # (test_batchnorm_groups.py: such a channel is dead, slim is exact.)
        # .keras round trip: the partners come back and act again.
        path = self.tmp_path("bn.keras")
        model.save(path)
        loaded = keras.models.load_model(path)  # no custom_objects
        block = loaded.get_layer("block")
        self.assertEqual(
            block.get_layer("conv").kernel_constraint.partners, tuple(partners)
        )
        conv, bn = block.get_layer("conv"), block.get_layer("bn")
        before = [to_np(v) for v in (conv.kernel, conv.bias, bn.gamma, bn.beta)]
        loaded.compile(keras.optimizers.SGD(0.0), "mse")
        loaded.train_on_batch(x, np.zeros((4, 2), "float32"))
        _, want = joint_prox(before, 0.5, 0.3)
        np.testing.assert_allclose(to_np(bn.gamma), want[1], atol=1e-6)
        np.testing.assert_allclose(to_np(bn.beta), want[2], atol=1e-6)
        self.assertLess(float(to_np(bn.gamma)[0]), float(before[2][0]))  # shrunk

    @pytest.mark.jax_by_hand(reason="an error message, the same on every backend")
    def test_apply_group_sparsity_and_a_frozen_partner(self):
        sparse = kprune.sparsity.apply_group_sparsity(
            self.model(None), 1e-3, method="constraint"
        )
        constraint = sparse.get_layer("block").get_layer("conv").kernel_constraint
        self.assertEqual(constraint.partners, ("bn/gamma", "bn/beta"))
        sparse.get_layer("block").get_layer("bn").trainable = False
        sparse.compile(keras.optimizers.SGD(0.1), "mse")
        x = np.ones((2, 6, 6, 2), "float32")
        with self.assertRaisesRegex(ValueError, "batchnorm=False"):
            sparse.train_on_batch(x, np.ones((2, 2), "float32"))


class ApiTest(kprune.testing.TestCase):
    def test_errors(self):
        with self.assertRaisesRegex(ValueError, "step_size"):
            GroupSoftThreshold(0.1)(keras.ops.ones((2, 2)))
        with self.assertRaisesRegex(ValueError, "alpha"):
            SparseGroupSoftThreshold(0.1, alpha=2.0)
        with self.assertRaisesRegex(ValueError, "strength"):
            GroupSoftThreshold(-1.0)
        with self.assertRaisesRegex(ValueError, "step_size"):
            GroupSoftThreshold(0.1, step_size=0.0)
        model = scenarios.mlp(None)
        with self.assertRaisesRegex(ValueError, "method"):
            kprune.sparsity.apply_group_sparsity(model, 0.1, method="step")
        with self.assertRaisesRegex(ValueError, "mode='penalty'"):
            kprune.sparsity.apply_group_sparsity(
                model, 0.1, mode="penalty", method="constraint"
            )

    def test_strength_holders_and_sparse_variant(self):
        model = scenarios.mlp(None)
        sparse = kprune.sparsity.apply_group_sparsity(
            model, 0.1, alpha=0.5, method="constraint", strength_per_layer={"a": 0.3}
        )
        holders = strength_holders(sparse)
        self.assertEqual([layer.name for layer, _ in holders], ["a"])
        constraint = holders[0][1]
        self.assertIsInstance(constraint, SparseGroupSoftThreshold)
        self.assertAlmostEqual(constraint.effective_strength(), 0.3)
        self.assertTrue(kprune.constraints.is_group_constraint(constraint))

    def test_strip_group_sparsity(self):
        model = scenarios.mlp(None)
        for method in ("constraint", "callback"):
            sparse = kprune.sparsity.apply_group_sparsity(model, 0.1, method=method)
            slim = kprune.surgery.slim(sparse)  # keeps them
            self.assertEqual(len(strength_holders(slim)), 1)
            plain = kprune.sparsity.strip_group_sparsity(slim)
            self.assertEqual(strength_holders(plain), [])
            self.assertIsNone(plain.get_layer("a").kernel_constraint)
            self.assertIsNone(plain.get_layer("a").kernel_regularizer)
            for a, b in zip(slim.get_weights(), plain.get_weights()):
                np.testing.assert_array_equal(a, b)
            self.assertEqual(len(strength_holders(slim)), 1)  # input untouched

    @pytest.mark.tensorflow_only(reason=BAKED)
    def test_config_pickle_and_keras_file(self):
        for constraint in (
            GroupSoftThreshold(0.2, scale=3.0, axis=(-2, -1), step_size=0.1),
            SparseGroupSoftThreshold(0.2, alpha=0.3, include_bias=False),
        ):
            self.run_serialization_test(constraint)
            constraint.strength.assign(0.125)
            for clone in (
                copy.deepcopy(constraint),
                pickle.loads(pickle.dumps(constraint)),
            ):
                self.assertEqual(clone.get_config(), constraint.get_config())
        constraint = GroupSoftThreshold(0.5, scale=2.0)
        model = scenarios.mlp(constraint)
        model.compile(keras.optimizers.SGD(0.1), "mse")
        x, y = scenarios.data()
        model.fit(x, y, batch_size=8, verbose=0, shuffle=False)
        constraint.strength.assign(0.375)  # e.g. set by a schedule
        path = self.tmp_path("model.keras")
        model.save(path)
        loaded = keras.models.load_model(path)  # no custom_objects
        revived = loaded.get_layer("a").kernel_constraint
        self.assertIsInstance(revived, GroupSoftThreshold)
        self.assertEqual(revived.strength_value(), 0.375)
        self.assertEqual(revived.scale, 2.0)
        for a, b in zip(model.get_weights(), loaded.get_weights()):
            np.testing.assert_array_equal(a, b)
        # Training goes on from the file, both copies alike.
        model.fit(x, y, batch_size=8, verbose=0, shuffle=False)
        loaded.fit(x, y, batch_size=8, verbose=0, shuffle=False)
        for a, b in zip(model.get_weights(), loaded.get_weights()):
            np.testing.assert_allclose(a, b, atol=1e-6)
        # A weights file from before the constraint keeps the strength.
        plain = scenarios.mlp(None)
        plain.save_weights(self.tmp_path("plain.weights.h5"))
        fresh = scenarios.mlp(GroupSoftThreshold(0.25))
        fresh.load_weights(self.tmp_path("plain.weights.h5"))
        self.assertEqual(fresh.get_layer("a").kernel_constraint.strength_value(), 0.25)


class DoubleStrength(keras.callbacks.Callback):
    """Doubles every constraint's strength at each epoch end (state: the variable)."""

    def on_epoch_end(self, epoch, logs=None):
        for _, holder in strength_holders(self.model):
            holder.strength.assign(holder.strength * 2.0)


class BackupAndRestoreTest(kprune.testing.TestCase):
    def _fit(self, backup_dir, extra=()):
        model = scenarios.mlp(GroupSoftThreshold(0.05))
        model.compile(keras.optimizers.SGD(0.1), "mse")
        x, y = scenarios.data()
        callbacks = [DoubleStrength(), keras.callbacks.BackupAndRestore(backup_dir)]
        model.fit(
            x,
            y,
            batch_size=8,
            epochs=4,
            verbose=0,
            shuffle=False,
            callbacks=callbacks + list(extra),
        )
        return model

    @pytest.mark.tensorflow_only(reason=BAKED)
    def test_strength_is_saved_and_restored(self):
        reference = self._fit(self.tmp_path("a"))
        backup = self.tmp_path("b")
        with self.assertRaisesRegex(RuntimeError, "interrupted"):
            self._fit(backup, extra=[InterruptAt(epoch=2, batch=1)])
        resumed = self._fit(backup)  # a new model: strength 0.05 until restored
        for model in (reference, resumed):
            self.assertEqual(
                model.get_layer("a").kernel_constraint.strength_value(), 0.8
            )
        dead = np.all(reference.get_layer("a").get_weights()[0] == 0, axis=0)
        self.assertGreater(int(dead.sum()), 0)
        for a, b in zip(reference.get_weights(), resumed.get_weights()):
            np.testing.assert_array_equal(a, b)


MIRRORED = "tf.distribute.MirroredStrategy needs the TensorFlow backend"

_MIRRORED_SCRIPT = TWO_CPUS + textwrap.dedent(
    """
    import json
    from tests import constraint_scenarios as s

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    out = {"replicas": strategy.num_replicas_in_sync}
    result, model = s.reference_run(strategy=strategy, alpha=0.5, schedule=True)
    layer = model.get_layer("a")
    result["replicas_equal"] = all(
        all((r.numpy() == v.value.values[0].numpy()).all()
            for r in v.value.values)
        for v in (layer.kernel, layer.bias))
    out["sparse"] = result
    print("RESULT " + json.dumps(out))
    """
)

_JAX_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from tests import constraint_scenarios as s
    import keras

    out = {"backend": keras.backend.backend()}
    out["group"] = s.reference_run()[0]
    out["sparse"] = s.reference_run(alpha=0.5, schedule=True)[0]
    out["scheduler"] = s.scheduler_run()
    out["tensorflow_imported"] = "tensorflow" in sys.modules
    print("RESULT " + json.dumps(out))
    """
)


class FreshProcessTest(kprune.testing.TestCase):
    @pytest.mark.tensorflow_only(reason=MIRRORED)
    def test_mirrored_strategy_two_cpus(self):
        out = run_script(_MIRRORED_SCRIPT)
        self.assertEqual(out["replicas"], 2)
        check_reference(self, out["sparse"], traces=2)  # one per replica
        self.assertTrue(out["sparse"]["replicas_equal"])

    def test_jax(self):
        if importlib.util.find_spec("jax") is None:
            self.skipTest("jax is not installed")
        if keras.backend.backend() == "jax":
            self.skipTest("this process runs JAX: the tests above are the JAX run")
        out = run_script(
            _JAX_SCRIPT, env={"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
        )
        self.assertEqual(out["backend"], "jax")
        for name in ("group", "sparse"):
            with self.subTest(name):
                check_reference(self, out[name])
        r = out["scheduler"]
        self.assertEqual(r["logged"], [0.0, 5.0, 5.0])
        self.assertEqual(r["zeros"][0], 0)
        self.assertGreater(r["zeros"][1], 0)
        self.assertFalse(out["tensorflow_imported"])
