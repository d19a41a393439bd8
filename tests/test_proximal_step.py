"""kprune.callbacks.ProximalStep: the paper's exact proximal step during fit."""

import csv
import math
import warnings

import keras
import numpy as np
import pytest

import kprune
from kprune.callbacks import ProximalStep
from kprune.regularizers import GroupLasso, SparseGroupLasso
from kprune.sparsity import apply_group_sparsity
from tests.sparsity_models import data, mlp, to_np


def record_applies(callback, model):
    """The optimizer step at each `callback.apply()` (a list, filled in fit)."""
    calls = []
    original = callback.apply

    def counting_apply():
        calls.append(int(to_np(model.optimizer.iterations)))
        return original()

    callback.apply = counting_apply
    return calls


def np_prox_dense(kernel, bias, t, lam, alpha):
    groups = np.concatenate([kernel, bias[None, :]], axis=0).astype(np.float64)
    p = groups.shape[0]
    u = np.sign(groups) * np.maximum(np.abs(groups) - t * alpha * lam, 0)
    norms = np.linalg.norm(u, axis=0)
    tau = t * (1 - alpha) * lam * math.sqrt(p)
    factor = np.where(norms > tau, 1 - tau / np.maximum(norms, 1e-30), 0.0)
    out = u * factor
    return out[:-1], out[-1]


class ProximalStepFitTest(kprune.testing.TestCase):
    def test_exact_zeros_after_fit(self):
        x, y = data()
        model = apply_group_sparsity(mlp(), 0.8)
        model.compile(keras.optimizers.SGD(0.1), "mse")
        history = model.fit(
            x, y, batch_size=16, epochs=3, verbose=0, callbacks=[ProximalStep()]
        )
        zero_total = 0
        for name in ("h1", "h2"):
            layer = model.get_layer(name)
            kernel, bias = to_np(layer.kernel), to_np(layer.bias)
            zero = np.all(kernel == 0.0, axis=0)
            # Whole groups are exactly zero, bias included, and the rest is not.
            np.testing.assert_array_equal(bias[zero], 0.0)
            self.assertTrue(np.all(np.any(kernel[:, ~zero] != 0.0, axis=0)))
            zero_total += int(zero.sum())
        self.assertGreater(zero_total, 0)
        self.assertLess(zero_total, 36)
        self.assertEqual(history.history["prox_zero_groups"][-1], zero_total)
        self.assertAlmostEqual(history.history["prox_step_size"][-1], 0.1, places=6)
        # The output layer is never touched.
        self.assertTrue(np.all(to_np(model.get_layer("out").kernel) != 0.0))

    def test_one_step_matches_reference_with_schedule(self):
        model = apply_group_sparsity(
            mlp(), 0.3, alpha=0.5, strength_per_layer={"h2": 0.6}
        )
        schedule = keras.optimizers.schedules.ExponentialDecay(0.5, 10, 0.5)
        model.compile(keras.optimizers.Adam(schedule), "mse")
        model.optimizer.build(model.trainable_variables)
        model.optimizer.iterations.assign(20)  # lr = 0.5 * 0.5**2
        callback = ProximalStep()
        callback.set_model(model)
        before = {
            n: (to_np(model.get_layer(n).kernel), to_np(model.get_layer(n).bias))
            for n in ("h1", "h2", "out")
        }
        stats = callback.apply()
        self.assertAlmostEqual(stats["prox_step_size"], 0.125, places=6)
        for name, lam in (("h1", 0.3), ("h2", 0.6)):
            want_k, want_b = np_prox_dense(*before[name], 0.125, lam, 0.5)
            layer = model.get_layer(name)
            np.testing.assert_allclose(to_np(layer.kernel), want_k, atol=1e-6)
            np.testing.assert_allclose(to_np(layer.bias), want_b, atol=1e-6)
        np.testing.assert_array_equal(
            to_np(model.get_layer("out").kernel), before["out"][0]
        )

    def test_every_n_steps(self):
        x, y = data(n=64)
        model = apply_group_sparsity(mlp(), 0.01)
        model.compile(keras.optimizers.SGD(0.05), "mse")
        callback = ProximalStep(every_n_steps=3)
        calls = record_applies(callback, model)
        history = model.fit(
            x, y, batch_size=8, epochs=2, verbose=0, callbacks=[callback]
        )  # 16 steps
        self.assertEqual(calls, [3, 6, 9, 12, 15])
        self.assertIn("prox_zero_groups", history.history)
        self.assertEqual(len(history.history["prox_zero_groups"]), 2)
        # No batch hook reads the device: Keras may run its batch-end hook
        # on its async callback thread (JAX, PyTorch backends).
        self.assertTrue(callback.async_safe)

    @pytest.mark.skipif(
        keras.backend.backend() == "torch",
        reason="Keras' PyTorch trainer requires steps_per_execution=1",
    )
    def test_every_n_steps_with_steps_per_execution(self):
        # Batch hooks run once per 4 steps: each step that crosses a multiple
        # of 6 gets its proximal step at the next hook; none is skipped.
        x, y = data(n=64)
        model = apply_group_sparsity(mlp(), 0.01)
        model.compile(keras.optimizers.SGD(0.05), "mse", steps_per_execution=4)
        callback = ProximalStep(every_n_steps=6)
        calls = record_applies(callback, model)
        model.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[callback])
        self.assertEqual(calls, [8, 12, 20, 24])  # 24 steps, hooks every 4

    def test_step_size_override_and_named_layers(self):
        model = mlp()
        model.compile(keras.optimizers.SGD(0.01), "mse")
        h1 = model.get_layer("h1")
        before_k, before_b = to_np(h1.kernel), to_np(h1.bias)
        before_h2 = to_np(model.get_layer("h2").kernel)
        callback = ProximalStep(step_size=0.5, layers={"h1": 0.05}, alpha=0.0)
        callback.set_model(model)
        self.assertEqual(callback.apply()["prox_step_size"], 0.5)
        want_k, want_b = np_prox_dense(before_k, before_b, 0.5, 0.05, 0.0)
        np.testing.assert_allclose(to_np(h1.kernel), want_k, atol=1e-6)
        np.testing.assert_allclose(to_np(h1.bias), want_b, atol=1e-6)
        np.testing.assert_array_equal(to_np(model.get_layer("h2").kernel), before_h2)

        callback = ProximalStep(step_size=1.0, layers=["h2"], strength=100.0)
        callback.set_model(model)
        self.assertEqual(callback.apply()["prox_zero_groups"], 12)
        self.assertTrue(np.all(to_np(model.get_layer("h2").bias) == 0.0))

    def test_include_bias_false_leaves_bias(self):
        model = mlp()
        bias = np.linspace(1, 2, 24).astype("float32")
        model.get_layer("h1").bias.assign(bias)
        callback = ProximalStep(
            step_size=1.0, layers=["h1"], strength=100.0, include_bias=False
        )
        callback.set_model(model)
        self.assertEqual(callback.apply()["prox_zero_groups"], 24)
        np.testing.assert_array_equal(to_np(model.get_layer("h1").bias), bias)

    def test_conv_kinds_zero_whole_groups_with_bias(self):
        inputs = keras.Input((8, 8, 4))
        x = keras.layers.Conv2D(6, 3, name="conv", bias_initializer="ones")(inputs)
        x = keras.layers.DepthwiseConv2D(
            3, depth_multiplier=2, name="dw", bias_initializer="ones"
        )(x)
        x = keras.layers.SeparableConv2D(5, 1, name="sep", bias_initializer="ones")(x)
        x = keras.layers.Conv2DTranspose(3, 3, name="tr", bias_initializer="ones")(x)
        model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))
        sparse = apply_group_sparsity(model, 1.0)
        rng = np.random.default_rng(0)
        for layer in sparse.layers:
            for w in layer.weights:
                scale = rng.uniform(0.001, 1.0, size=w.shape[-1]).astype("float32")
                w.assign(rng.normal(size=w.shape).astype("float32") * scale)
        callback = ProximalStep(step_size=0.5)
        callback.set_model(sparse)
        stats = callback.apply()
        self.assertGreater(stats["prox_zero_groups"], 0)
        self.assertLess(stats["prox_zero_groups"], 6 + 8 + 5 + 3)
        checks = {
            "conv": ("kernel", (0, 1, 2)),
            "dw": ("kernel", (0, 1)),
            "sep": ("pointwise_kernel", (0, 1, 2)),
            "tr": ("kernel", (0, 1, 3)),
        }
        total = 0
        for name, (attr, reduce) in checks.items():
            layer = sparse.get_layer(name)
            kernel = to_np(getattr(layer, attr))
            dead = np.all(kernel == 0.0, axis=reduce).reshape(-1)
            bias = to_np(layer.bias)
            np.testing.assert_array_equal(bias[dead], 0.0, err_msg=name)
            self.assertTrue(np.all(bias[~dead] != 0.0), msg=name)
            total += int(dead.sum())
        self.assertEqual(total, stats["prox_zero_groups"])

    def test_logs_reach_csv_logger(self):
        x, y = data(n=32)
        model = apply_group_sparsity(mlp(), 0.05)
        model.compile(keras.optimizers.SGD(0.1), "mse")
        path = self.tmp_path("log.csv")
        model.fit(
            x,
            y,
            epochs=2,
            verbose=0,
            callbacks=[ProximalStep(), keras.callbacks.CSVLogger(path)],
        )
        with open(path) as f:
            rows = list(csv.DictReader(f))
        self.assertEqual(len(rows), 2)
        self.assertIn("prox_zero_groups", rows[0])
        self.assertAlmostEqual(float(rows[-1]["prox_step_size"]), 0.1, places=6)


class ProximalStepConfigTest(kprune.testing.TestCase):
    def test_config_round_trip(self):
        for callback in (
            ProximalStep(),
            ProximalStep(
                every_n_steps=5,
                step_size=0.1,
                layers=["a", "b"],
                strength=0.2,
                alpha=0.5,
                include_bias=False,
            ),
            ProximalStep(layers={"a": 0.1, "b": 0.2}),
        ):
            copy = self.run_serialization_test(callback)
            self.assertEqual(copy.get_config(), callback.get_config())
        self.assertEqual(ProximalStep(layers=("x",)).get_config()["layers"], ["x"])

    def test_reweight_config_round_trip(self):
        callback = ProximalStep(input_groups={"a": 0.1}, reweight=0.25)
        copy = self.run_serialization_test(callback)
        self.assertEqual(copy.get_config()["reweight"], 0.25)

    def test_bad_arguments(self):
        for reweight in (0.0, -0.1, "x"):
            with self.assertRaisesRegex(ValueError, "reweight"):
                ProximalStep(reweight=reweight)
        with self.assertRaisesRegex(ValueError, "every_n_steps"):
            ProximalStep(every_n_steps=0)
        with self.assertRaisesRegex(ValueError, "step_size"):
            ProximalStep(step_size=0.0)
        with self.assertRaisesRegex(ValueError, "alpha"):
            ProximalStep(alpha=2.0)
        with self.assertRaisesRegex(ValueError, "layers"):
            ProximalStep(layers="h1")

    def test_no_target_and_missing_strength_raise(self):
        model = mlp()
        model.compile("sgd", "mse")
        callback = ProximalStep()
        callback.set_model(model)
        with self.assertRaisesRegex(
            ValueError, "found no layer.*Received: layers=None"
        ):
            callback.apply()
        callback = ProximalStep(layers=["h1"])
        callback.set_model(model)
        with self.assertRaisesRegex(ValueError, "needs its strength"):
            callback.apply()
        callback = ProximalStep(layers=["nope"], strength=1.0)
        # Unknown names are refused as soon as the callback meets the model.
        with self.assertRaisesRegex(ValueError, "No layer named 'nope'"):
            callback.set_model(model)

    def test_uncompiled_model_needs_step_size(self):
        model = apply_group_sparsity(mlp(), 0.1)
        callback = ProximalStep()
        callback.set_model(model)
        with self.assertRaisesRegex(ValueError, "not compiled"):
            callback.apply()
        callback = ProximalStep(step_size=0.1)
        callback.set_model(model)
        self.assertIn("prox_zero_groups", callback.apply())

    def test_penalty_mode_warns_and_wrong_axis_raises(self):
        model = apply_group_sparsity(mlp(), 0.1, mode="penalty")
        callback = ProximalStep(step_size=0.1)
        callback.set_model(model)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            callback.apply()
        self.assertTrue(any("mode='penalty'" in str(w.message) for w in caught))

        inputs = keras.Input((6, 6, 2))
        x = keras.layers.DepthwiseConv2D(
            3,
            depth_multiplier=2,
            depthwise_regularizer=GroupLasso(0.1, mode="proximal"),
        )(inputs)
        model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(x)))
        callback = ProximalStep(step_size=0.1)
        callback.set_model(model)
        with self.assertRaisesRegex(ValueError, r"Use axis=\(-2, -1\)"):
            callback.apply()

    def test_input_feature_groups_are_kernel_only(self):
        # axis=0 on a Dense kernel: one group per input feature (its row).
        inputs = keras.Input((6,))
        hidden = keras.layers.Dense(
            4,
            name="h",
            bias_initializer="ones",
            kernel_regularizer=GroupLasso(1.0, axis=0, mode="proximal"),
        )
        model = keras.Model(inputs, keras.layers.Dense(1)(hidden(inputs)))
        kernel = np.ones((6, 4), "float32")
        kernel[:3] *= 0.1  # rows 0-2 have norm 0.2, rows 3-5 norm 2
        hidden.kernel.assign(kernel)
        callback = ProximalStep(step_size=0.5)  # tau = 0.5 * sqrt(4) = 1
        callback.set_model(model)
        callback.apply()
        got = to_np(hidden.kernel)
        np.testing.assert_array_equal(got[:3], 0.0)
        np.testing.assert_allclose(got[3:], 0.5, atol=1e-6)
        np.testing.assert_array_equal(to_np(hidden.bias), 1.0)

    def test_sparse_group_lasso_gives_zero_weights_inside_live_groups(self):
        model = mlp()
        reg_model = apply_group_sparsity(model, 0.02, alpha=0.9)
        self.assertIsInstance(
            reg_model.get_layer("h1").kernel_regularizer, SparseGroupLasso
        )
        callback = ProximalStep(step_size=1.0)
        callback.set_model(reg_model)
        callback.apply()
        kernel = to_np(reg_model.get_layer("h1").kernel)
        live = ~np.all(kernel == 0.0, axis=0)
        self.assertTrue(np.any(live))
        self.assertGreater(float(np.mean(kernel[:, live] == 0.0)), 0.0)


def np_group_shrink(kernel, tau, axis):
    """Group soft-threshold of the slices along `axis` (NumPy reference)."""
    moved = np.moveaxis(kernel.astype(np.float64), axis, 0)
    flat = moved.reshape(moved.shape[0], -1)
    norms = np.linalg.norm(flat, axis=1)
    factor = np.where(norms > tau, 1 - tau / np.maximum(norms, 1e-30), 0.0)
    return np.moveaxis((flat * factor[:, None]).reshape(moved.shape), 0, axis)


class InputGroupsTest(kprune.testing.TestCase):
    def weak_inputs_model(self, seed):
        """A compiled group-sparse MLP whose h1 has weak inputs 0-3."""
        model = apply_group_sparsity(mlp(), 0.05)
        model.compile(keras.optimizers.SGD(0.1), "mse")
        h1 = model.get_layer("h1")
        kernel = np.random.default_rng(seed).normal(size=(10, 24)).astype("float32")
        kernel[:4] *= 0.05
        h1.kernel.assign(kernel)
        return model, h1, kernel, to_np(h1.bias)

    def test_units_then_inputs_match_reference(self):
        model, h1, kernel, bias = self.weak_inputs_model(0)
        callback = ProximalStep(input_groups={"h1": 0.6})
        callback.set_model(model)
        stats = callback.apply()
        # Inputs first (rows, P = 24), then units (columns + bias, P = 11).
        rows = np_group_shrink(kernel, 0.1 * 0.6 * math.sqrt(24), axis=0)
        want, _ = np_prox_dense(rows, bias, 0.1, 0.05, 0.0)
        np.testing.assert_allclose(to_np(h1.kernel), want, atol=1e-6)
        zero_rows = int(np.sum(np.all(want == 0, axis=1)))
        self.assertGreaterEqual(zero_rows, 4)
        self.assertLess(zero_rows, 10)
        self.assertEqual(stats["prox_zero_inputs"], zero_rows)

    def test_reweighted_units_and_inputs_match_reference(self):
        model, h1, kernel, bias = self.weak_inputs_model(1)
        callback = ProximalStep(input_groups={"h1": 0.3}, reweight=0.1)
        callback.set_model(model)
        callback.apply()

        def weights(groups):  # rows of `groups` are the groups
            norms = np.linalg.norm(groups.astype(np.float64), axis=1)
            mean = norms[norms > 0].mean()
            return mean / (norms + 0.1 * mean)

        # Inputs first, each row with its own threshold, then the units.
        w_in = weights(kernel)
        taus = 0.1 * 0.3 * w_in * math.sqrt(24)
        norms = np.linalg.norm(kernel.astype(np.float64), axis=1)
        factor = np.where(norms > taus, 1 - taus / norms, 0.0)
        rows = kernel * factor[:, None]
        w_units = weights(np.concatenate([rows, bias[None, :]], axis=0).T)
        want = np.empty_like(rows)
        for n in range(24):
            col, _ = np_prox_dense(
                rows[:, n : n + 1], bias[n : n + 1], 0.1, 0.05 * w_units[n], 0.0
            )
            want[:, n] = col[:, 0]
        np.testing.assert_allclose(to_np(h1.kernel), want, atol=1e-6)
        # The weak inputs die at a strength that leaves them alive unweighted.
        self.assertTrue(np.all(want[:4] == 0.0))
        plain = np_group_shrink(kernel, 0.1 * 0.3 * math.sqrt(24), axis=0)
        self.assertTrue(np.all(np.any(plain[:4] != 0.0, axis=1)))

    def test_fit_then_slim_stops_reading_inputs(self):
        x, y = data(n=64)
        model = mlp()
        model.compile(keras.optimizers.SGD(0.05), "mse")
        callback = ProximalStep(layers={"h1": 0.0}, input_groups={"h1": 0.8})
        history = model.fit(
            x, y, epochs=10, batch_size=16, verbose=0, callbacks=[callback]
        )
        zero = np.all(to_np(model.get_layer("h1").kernel) == 0, axis=1)
        self.assertEqual(history.history["prox_zero_inputs"][-1], int(zero.sum()))
        # The targets read inputs 0-2 only: the other seven are dropped.
        self.assertTrue(np.all(zero[3:]))
        self.assertFalse(np.all(zero[:3]))
        small = kprune.surgery.slim(model, prune_inputs=True)
        select = [
            layer
            for layer in small.layers
            if isinstance(layer, kprune.surgery.SelectFeatures)
        ]
        self.assertEqual(list(select[0].indices), np.flatnonzero(~zero).tolist())
        self.assertSameOutputs(model, small, x)

    def test_conv_input_channels(self):
        inputs = keras.Input((6, 6, 4))
        conv = keras.layers.Conv2D(3, 3, name="conv")
        outputs = keras.layers.Dense(1)(keras.layers.Flatten()(conv(inputs)))
        model = keras.Model(inputs, outputs)
        kernel = np.ones((3, 3, 4, 3), "float32")
        kernel[:, :, 1] *= 0.01  # input channel 1: norm 0.09
        conv.kernel.assign(kernel)
        callback = ProximalStep(
            step_size=1.0, layers={"conv": 0.0}, input_groups={"conv": 0.1}
        )
        callback.set_model(model)
        stats = callback.apply()  # tau = 0.1 x sqrt(27)
        got = to_np(conv.kernel)
        np.testing.assert_array_equal(got[:, :, 1], 0.0)
        want = np_group_shrink(kernel, 0.1 * math.sqrt(27), axis=-2)
        np.testing.assert_allclose(got, want, atol=1e-6)
        self.assertEqual(stats["prox_zero_inputs"], 1)

    def test_bad_input_groups(self):
        with self.assertRaisesRegex(ValueError, "Received: input_groups="):
            ProximalStep(input_groups=["h1"])
        with self.assertRaisesRegex(ValueError, r"input_groups\['h1'\]"):
            ProximalStep(input_groups={"h1": -1.0})
        inputs = keras.Input((6, 6, 2))
        x = keras.layers.DepthwiseConv2D(3, name="dw")(inputs)
        model = keras.Model(inputs, keras.layers.Flatten()(x))
        callback = ProximalStep(
            step_size=0.1, layers={"dw": 0.1}, input_groups={"dw": 0.1}
        )
        callback.set_model(model)
        with self.assertRaisesRegex(ValueError, "inputs of layer 'dw'"):
            callback.apply()
        callback = ProximalStep(step_size=0.1, input_groups={"nope": 0.1})
        with self.assertRaisesRegex(ValueError, "input_groups containing 'nope'"):
            callback.set_model(mlp())  # refused as soon as it meets the model

    def test_config_round_trip(self):
        callback = ProximalStep(every_n_steps=3, input_groups={"h1": 0.2})
        copy = self.run_serialization_test(callback)
        self.assertEqual(copy.input_groups, {"h1": 0.2})
