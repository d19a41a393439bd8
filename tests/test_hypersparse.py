"""HyperSparse math, regularizers, the ART window and `AdaptiveRegularization`."""

import json
import math
import os
import textwrap

import keras
import numpy as np
import tensorflow as tf

import kprune
from kprune.callbacks import AdaptiveRegularization
from kprune.ops import (
    hypersparse_gradient,
    hypersparse_penalty,
    hypersparse_scalars,
    magnitude_quantile,
)
from kprune.pruning import ARTWindow, KeepMask, art_strength
from kprune.regularizers import HyperSparse, MagnitudePenalty, refresh_hypersparse
from kprune.testing import TWO_CPUS, InterruptAt, run_script


def cnn():
    """Conv, depthwise conv and two Dense kernels: four kernel shapes."""
    return keras.Sequential(
        [
            keras.Input((8, 8, 2)),
            keras.layers.Conv2D(6, 3, activation="relu", name="conv"),
            keras.layers.DepthwiseConv2D(3, activation="relu", name="dw"),
            keras.layers.Flatten(),
            keras.layers.Dense(12, activation="relu", name="fc"),
            keras.layers.Dense(3, name="out"),
        ]
    )


def mlp(n_in=8):
    return keras.Sequential(
        [
            keras.Input((n_in,)),
            keras.layers.Dense(32, activation="relu", name="h1"),
            keras.layers.Dense(16, activation="relu", name="h2"),
            keras.layers.Dense(2, name="out"),
        ]
    )


def data(n=128, n_in=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, n_in)).astype("float32")
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype("int64")
    return x, y


def compile_(model, lr=0.05):
    model.compile(
        keras.optimizers.SGD(lr, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


class HyperSparseMathTest(kprune.testing.TestCase):
    def test_quantile_matches_sorted_order_statistic(self):
        rng = np.random.default_rng(3)
        ws = [rng.normal(size=s).astype("float32") for s in [(5, 7), (13,), (3, 3, 4)]]
        flat = np.sort(np.abs(np.concatenate([w.ravel() for w in ws])))
        for kappa in (0.0, 0.1, 0.5, 0.9, 0.98, 0.999):
            expected = flat[min(math.floor(kappa * flat.size), flat.size - 1)]
            got = float(magnitude_quantile(ws, kappa))
            self.assertAlmostEqual(got, float(expected), places=6, msg=kappa)
        big = [rng.normal(size=20000).astype("float32")]
        exact = float(magnitude_quantile(big, 0.9))
        sampled = float(magnitude_quantile(big, 0.9, sample_size=4000, seed=1))
        self.assertLess(abs(sampled - exact) / exact, 0.05)
        with self.assertRaisesRegex(ValueError, "Received: sparsity=1.0"):
            magnitude_quantile(ws, 1.0)

    def test_paper_penalty_gradient_equals_analytic_formula(self):
        rng = np.random.default_rng(0)
        shapes = [(3, 3, 2, 6), (3, 3, 6, 1), (24, 12), (12, 3)]
        ws = [tf.Variable(rng.normal(size=s).astype("float32")) for s in shapes]
        for kappa in (0.5, 0.9, 0.98):
            with tf.GradientTape() as tape:
                value = hypersparse_penalty(ws, kappa)
            grads = tape.gradient(value, ws)
            self.assertLess(abs(float(value)), 1e-3)
            for g, a in zip(grads, hypersparse_gradient(ws, kappa)):
                np.testing.assert_allclose(
                    g.numpy(), np.asarray(a), rtol=1e-4, atol=1e-7
                )

    def test_regularizer_gradient_equals_analytic_formula_across_layers(self):
        model = cnn()
        lam = 0.3
        for layer in model.layers:
            if hasattr(layer, "kernel") or hasattr(layer, "depthwise_kernel"):
                kernel = layer.kernel
                kernel.regularizer = HyperSparse(0.8, strength=lam)
        s, c = refresh_hypersparse(model)
        kernels = [v for v, _ in kprune.regularizers.hypersparse_kernels(model)]
        self.assertEqual(len(kernels), 4)
        with tf.GradientTape() as tape:
            total = tf.add_n([v.regularizer(v.value) for v in kernels])
        grads = tape.gradient(total, [v.value for v in kernels])
        # Numpy reference, from the paper's formula.
        ws = [v.numpy() for v in kernels]
        a = np.concatenate([np.abs(w).ravel() for w in ws])
        t = np.sort(a)[math.floor(0.8 * a.size)]
        s_ref = 0.6585 / t
        c_ref = a.sum() / np.tanh(s_ref * a).sum()
        self.assertAlmostEqual(s, s_ref, places=3)
        self.assertAlmostEqual(c, c_ref, places=5)
        for w, g in zip(ws, grads):
            expected = (
                lam * np.sign(w) * c_ref * s_ref / np.cosh(s_ref * np.abs(w)) ** 2
            )
            np.testing.assert_allclose(g.numpy(), expected, rtol=1e-4, atol=1e-8)
        # The per-kernel values add up to lambda * ||w||_1 at the refresh.
        self.assertAlmostEqual(float(total), lam * a.sum(), places=3)

    def test_gradient_strong_below_threshold_weak_above(self):
        w = [np.linspace(-2, 2, 401).astype("float32")]
        g = np.abs(np.asarray(hypersparse_gradient(w, 0.25)[0]))
        s, _ = hypersparse_scalars(w, 0.25)
        t = 0.6585 / float(s)
        self.assertAlmostEqual(t, 0.5, places=4)
        small = g[(np.abs(w[0]) < 0.5 * t) & (w[0] != 0)]
        large = g[np.abs(w[0]) > 3 * t]
        self.assertGreater(small.min(), 5 * large.max())

    def test_regularizers_serialize_and_validate(self):
        for reg in (HyperSparse(0.95, 1e-4), MagnitudePenalty(2, 3e-3)):
            copy = self.run_serialization_test(reg)
            self.assertAlmostEqual(copy.strength_value(), reg.strength_value())
        self.assertEqual(float(MagnitudePenalty(2, 0.5)(np.array([1.0, -2.0]))), 2.5)
        with self.assertRaisesRegex(ValueError, "Received: sparsity=1.0"):
            HyperSparse(1.0)
        with self.assertRaisesRegex(ValueError, "Received: p=3"):
            MagnitudePenalty(3)
        with self.assertRaisesRegex(ValueError, "Received: strength=-1.0"):
            HyperSparse(0.5, -1.0)
        model = mlp()
        with self.assertRaisesRegex(ValueError, "no kernel with a kprune HyperSparse"):
            refresh_hypersparse(model)
        model.layers[0].kernel.regularizer = HyperSparse(0.5)
        model.layers[1].kernel.regularizer = HyperSparse(0.6)
        with self.assertRaisesRegex(ValueError, "share one target sparsity"):
            refresh_hypersparse(model)

    def test_saved_model_keeps_the_regularizer(self):
        reg = HyperSparse(0.9, 2e-4)
        model = keras.Sequential(
            [keras.Input((4,)), keras.layers.Dense(3, kernel_regularizer=reg)]
        )
        loaded = self.run_model_saving_test(model, np.ones((2, 4), "float32"))
        self.assertIsInstance(loaded.layers[0].kernel_regularizer, HyperSparse)
        self.assertAlmostEqual(loaded.layers[0].kernel_regularizer.sparsity, 0.9)


class ARTWindowTest(kprune.testing.TestCase):
    def test_strength_grows_geometrically(self):
        self.assertEqual(art_strength(2.0, 1.5, 0), 2.0)
        self.assertAlmostEqual(art_strength(5e-6, 1.05, 10), 5e-6 * 1.05**10)

    def test_stop_rule_and_middle_of_best_window(self):
        w = ARTWindow(3)
        accs = [0.50, 0.60, 0.90, 0.62, 0.64, 0.97, 0.96, 0.99]
        stops = [w.update(e, a, 0.95, snapshot=f"w{e}") for e, a in enumerate(accs)]
        # Windows: .50 | .55 | .667 | .707 | .72 | .743 | .857 | .973 > .95
        self.assertEqual(stops, [False] * 7 + [True])
        self.assertEqual(w.best_epoch, 6)
        self.assertEqual(w.best_snapshot, "w6")
        self.assertAlmostEqual(w.best_mean, (0.97 + 0.96 + 0.99) / 3)

    def test_a_single_spike_does_not_win_over_a_good_window(self):
        w = ARTWindow(3)
        for e, a in enumerate([0.1, 0.95, 0.1, 0.7, 0.72, 0.74, 0.3]):
            self.assertFalse(w.update(e, a, 0.99))
        # Best mean window is (.7, .72, .74): its middle epoch is 4.
        self.assertEqual(w.best_epoch, 4)

    def test_partial_windows_use_the_latest_available_middle(self):
        w = ARTWindow(5)
        w.update(10, 0.2, 1.0)
        self.assertEqual(w.best_epoch, 10)
        w.update(11, 0.9, 1.0)
        self.assertEqual(w.best_epoch, 11)  # min(len - 1, m) = 1
        w.update(12, 0.95, 1.0)
        self.assertEqual(w.best_epoch, 12)  # middle of 3 entries is index 2 = m
        self.assertEqual(ARTWindow(1).update(0, 0.5, 0.4), True)

    def test_state_round_trip_and_validation(self):
        w = ARTWindow(3)
        for e, a in enumerate([0.3, 0.5, 0.4, 0.6]):
            w.update(e, a, 0.9, snapshot=e)
        copy = ARTWindow(3)
        copy.set_state(json.loads(json.dumps(w.get_state())), [1, 2, 3], 2)
        self.assertEqual(copy.get_state(), w.get_state())
        self.assertEqual(copy.update(4, 0.9, 0.9), w.update(4, 0.9, 0.9))
        self.assertEqual(copy.best_epoch, w.best_epoch)
        for bad in (0, 2, 2.5):
            with self.assertRaisesRegex(ValueError, "odd int"):
                ARTWindow(bad)


class AdaptiveRegularizationTest(kprune.testing.TestCase):
    def _fit(self, epochs=7, model=None, x=None, y=None, **kwargs):
        if x is None:
            x, y = data()
        model = compile_(model or mlp())
        kwargs.setdefault("eval_data", (x, y))
        art = AdaptiveRegularization(**kwargs)
        history = model.fit(
            x,
            y,
            batch_size=32,
            epochs=epochs,
            verbose=0,
            shuffle=False,
            callbacks=[art],
        )
        return model, art, history.history

    def test_phases_strength_and_fixed_mask_during_fine_tuning(self):
        model, art, h = self._fit(
            epochs=8,
            sparsity=0.9,
            initial_strength=1e-3,
            growth=2.0,
            warmup_epochs=2,
            max_art_epochs=3,
            refresh_every=2,
        )
        self.assertEqual(h["art_phase"], [0, 0, 1, 1, 1, 2, 2, 2])
        self.assertEqual(h["art_lambda"][:5], [0, 0, 1e-3, 2e-3, 4e-3])
        self.assertEqual(h["art_lambda"][5:], [0, 0, 0])
        self.assertTrue(all(v > 0 for v in h["hs_scale"][2:5]))
        for key in ("art_pruned_accuracy", "art_dense_accuracy", "art_window_accuracy"):
            self.assertEqual(len(h[key]), 8, key)
        kernels = [model.get_layer(n).kernel.numpy() for n in ("h1", "h2", "out")]
        zeros = sum(int(np.sum(k == 0)) for k in kernels)
        total = sum(k.size for k in kernels)
        self.assertEqual(zeros, round(0.9 * total))
        self.assertAlmostEqual(h["sparsity"][-1], zeros / total)
        for name, kernel in zip(("h1", "h2", "out"), kernels):
            keep = model.get_layer(name).kernel_constraint
            self.assertIsInstance(keep, KeepMask)
            np.testing.assert_array_equal(keep.mask.numpy() == 0, kernel == 0)
        # The kept weights trained on after the hand-off; the pruned ones did not.
        before = [k.copy() for k in kernels]
        x, y = data(seed=5)
        model.fit(x, y, batch_size=32, epochs=1, verbose=0)
        for name, old in zip(("h1", "h2", "out"), before):
            new = model.get_layer(name).kernel.numpy()
            np.testing.assert_array_equal(new[old == 0], 0)
            self.assertFalse(np.allclose(new[old != 0], old[old != 0]))

    def test_hand_off_restores_the_best_windows_middle_epoch(self):
        snapshots = {}

        class Record(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                snapshots[epoch] = self.model.get_weights()

        x, y = data()
        model = compile_(mlp())
        art = AdaptiveRegularization(
            0.8, eval_data=(x, y), initial_strength=2e-3, growth=1.5, max_art_epochs=4
        )
        h = model.fit(
            x,
            y,
            batch_size=32,
            epochs=5,
            verbose=0,
            shuffle=False,
            callbacks=[art, Record()],
        ).history
        best = int(h["art_best_epoch"][3])
        self.assertEqual(h["art_phase"], [1, 1, 1, 1, 2])
        # Replay: the best epoch's weights, pruned by one global ranking, are
        # exactly what fine-tuning started from (its zeros are the mask).
        ref = snapshots[best]
        names = ("h1", "h2", "out")
        kernels = [model.get_layer(n).kernel for n in names]
        idx = [[id(w) for w in model.weights].index(id(k)) for k in kernels]
        masks = kprune.pruning.global_sparsity_masks([ref[i] for i in idx], 0.8)
        for name, m in zip(names, masks):
            keep = model.get_layer(name).kernel_constraint
            np.testing.assert_array_equal(keep.mask.numpy(), np.asarray(m))

    def test_stop_rule_fires_before_the_limit(self):
        # An easy task and a mild target: the pruned copy soon matches the dense.
        _, art, h = self._fit(
            epochs=8, sparsity=0.5, initial_strength=1e-3, growth=1.5, window=1
        )
        self.assertTrue(art.art_window.terminated)
        self.assertEqual(h["art_phase"][-1], 2)
        stop = h["art_phase"].index(2) - 1
        self.assertGreater(
            h["art_window_accuracy"][stop], h["art_dense_accuracy"][stop]
        )

    def test_fine_tune_epochs_and_l1_flag(self):
        model, art, h = self._fit(
            epochs=20,
            sparsity=0.7,
            regularizer="l1",
            initial_strength=1e-3,
            max_art_epochs=2,
            fine_tune_epochs=2,
            reset_optimizer=True,
        )
        self.assertEqual(len(h["loss"]), 4)
        self.assertNotIn("hs_scale", h)
        self.assertIsInstance(
            model.get_layer("h1").kernel_regularizer, MagnitudePenalty
        )
        self.assertAlmostEqual(h["sparsity"][-1], 0.7, places=2)

    def test_fit_ending_during_art_still_prunes(self):
        model, art, h = self._fit(epochs=3, sparsity=0.75, initial_strength=1e-4)
        self.assertEqual(art.phase, 2)
        kernels = [model.get_layer(n).kernel.numpy() for n in ("h1", "h2", "out")]
        total = sum(k.size for k in kernels)
        zeros = sum(int(np.sum(k == 0)) for k in kernels)
        self.assertEqual(zeros, round(0.75 * total))

    def test_user_regularizers_and_errors(self):
        x, y = data()
        model = compile_(mlp())
        with self.assertRaisesRegex(ValueError, "regularizer=None"):
            model.fit(
                x,
                y,
                epochs=1,
                verbose=0,
                callbacks=[
                    AdaptiveRegularization(0.5, eval_data=(x, y), regularizer=None)
                ],
            )
        base = mlp()
        base.get_layer("h1").kernel.regularizer = keras.regularizers.L2(1e-4)
        compile_(base)
        with self.assertRaisesRegex(ValueError, "Layer 'h1' already has"):
            base.fit(
                x,
                y,
                epochs=1,
                verbose=0,
                callbacks=[AdaptiveRegularization(0.5, eval_data=(x, y))],
            )
        with self.assertRaisesRegex(ValueError, "Received: eval_data=None"):
            model.fit(
                x, y, epochs=1, verbose=0, callbacks=[AdaptiveRegularization(0.5)]
            )
        with self.assertRaisesRegex(ValueError, "Received: monitor='auc'"):
            model.fit(
                x,
                y,
                epochs=1,
                verbose=0,
                callbacks=[
                    AdaptiveRegularization(0.5, eval_data=(x, y), monitor="auc")
                ],
            )
        with self.assertRaisesRegex(ValueError, "Received: layers=\\['nope'\\]"):
            model.fit(
                x,
                y,
                epochs=1,
                verbose=0,
                callbacks=[
                    AdaptiveRegularization(0.5, eval_data=(x, y), layers=["nope"])
                ],
            )
        for kwargs, message in (
            ({"sparsity": 0.0}, "sparsity=0.0"),
            ({"sparsity": 0.5, "regularizer": "l3"}, "regularizer='l3'"),
            ({"sparsity": 0.5, "growth": 0.9}, "growth=0.9"),
            ({"sparsity": 0.5, "window": 2}, "size=2"),
            ({"sparsity": 0.5, "max_art_epochs": 0}, "max_art_epochs=0"),
        ):
            with self.assertRaisesRegex(ValueError, message):
                AdaptiveRegularization(**kwargs)
        # The user's own HyperSparse regularizers, driven with regularizer=None.
        own = mlp()
        regs = [HyperSparse(0.6) for _ in range(3)]
        for layer, reg in zip(own.layers, regs):
            layer.kernel.regularizer = reg
        _, art, h = self._fit(
            epochs=3,
            model=own,
            sparsity=0.6,
            regularizer=None,
            initial_strength=1e-3,
            max_art_epochs=2,
        )
        self.assertEqual([id(r) for r in art.regularizers], [id(r) for r in regs])
        self.assertGreater(h["hs_scale"][0], 0)

    def test_config_round_trip(self):
        art = AdaptiveRegularization(0.98, regularizer="l2", growth=1.1, window=5)
        copy = self.run_serialization_test(art)
        self.assertEqual(copy.window, 5)


class BackupAndRestoreTest(kprune.testing.TestCase):
    def _fit(self, init, backup_dir, extra=()):
        x, y = data()
        model = compile_(mlp())
        model.set_weights(init)
        callbacks = [
            AdaptiveRegularization(
                0.85,
                eval_data=(x, y),
                initial_strength=1e-3,
                growth=2.0,
                warmup_epochs=1,
                max_art_epochs=3,
                backup_dir=backup_dir,
            ),
            keras.callbacks.BackupAndRestore(backup_dir),
            *extra,
        ]
        h = model.fit(
            x, y, batch_size=32, epochs=7, verbose=0, shuffle=False, callbacks=callbacks
        )
        return model, h.history

    def test_interrupted_runs_resume_to_the_same_weights(self):
        init = mlp().get_weights()
        reference, ref = self._fit(init, self.tmp_path("a"))
        self.assertEqual(ref["art_phase"], [0, 1, 1, 1, 2, 2, 2])
        # Interrupt during ART and again during fine-tuning.
        backup = self.tmp_path("b")
        for epoch in (2, 5):
            with self.assertRaisesRegex(RuntimeError, "interrupted"):
                self._fit(init, backup, extra=[InterruptAt(epoch=epoch, batch=1)])
        resumed, h = self._fit(init, backup)
        self.assertEqual(h["art_phase"], ref["art_phase"][5:])
        self.assertEqual(h["art_best_epoch"], ref["art_best_epoch"][5:])
        for a, b in zip(reference.get_weights(), resumed.get_weights()):
            np.testing.assert_array_equal(a, b)
        self.assertFalse(os.path.exists(os.path.join(backup, "kprune_art_state.npz")))


_MIRRORED_SCRIPT = TWO_CPUS + textwrap.dedent(
    """
    import json
    import keras, numpy as np, kprune

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    with strategy.scope():
        model = keras.Sequential([
            keras.Input((8,)),
            keras.layers.Dense(32, activation="relu", name="h1"),
            keras.layers.Dense(2, name="out")])
        model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
    art = kprune.callbacks.AdaptiveRegularization(
        0.9, eval_data=(x, y), initial_strength=1e-3, growth=2.0,
        max_art_epochs=2, refresh_every=1)
    h = model.fit(x, y, batch_size=32, epochs=4, verbose=0, callbacks=[art])
    kernel = model.get_layer("h1").kernel
    replicas = [v.numpy() for v in kernel.value.values]
    zeros = sum(int(np.sum(model.get_layer(n).kernel.numpy() == 0))
                for n in ("h1", "out"))
    print("RESULT " + json.dumps({
        "replicas": strategy.num_replicas_in_sync,
        "phase": [float(v) for v in h.history["art_phase"]],
        "lambda": [float(v) for v in h.history["art_lambda"]],
        "replicas_equal": all(np.array_equal(replicas[0], r) for r in replicas),
        "zeros": zeros, "total": 8 * 32 + 32 * 2,
        "scale": float(model.get_layer("h1").kernel_regularizer.tanh_scale.numpy()),
    }))
    """
)


class MirroredStrategyTest(kprune.testing.TestCase):
    def test_art_under_mirrored_strategy_with_two_cpus(self):
        result = run_script(_MIRRORED_SCRIPT)
        self.assertEqual(result["replicas"], 2)
        self.assertEqual(result["phase"], [1.0, 1.0, 2.0, 2.0])
        self.assertEqual(result["lambda"], [1e-3, 2e-3, 0.0, 0.0])
        self.assertTrue(result["replicas_equal"])
        self.assertEqual(result["zeros"], round(0.9 * result["total"]))
        self.assertGreater(result["scale"], 0)
