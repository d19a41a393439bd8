"""Tests for kprune.pruning and kprune.callbacks.MagnitudePruning."""

import copy
import pickle
import textwrap

import keras
import numpy as np
import pytest
from keras import ops

from kprune.callbacks import MagnitudePruning
from kprune.pruning import (
    ConstantSparsity,
    KeepMask,
    PolynomialDecay,
    get_masks,
    global_sparsity_masks,
    global_std_threshold,
    kept_std,
    sparsity_mask,
    std_threshold,
    strip_pruning,
    threshold_mask,
)
from kprune.testing import TWO_CPUS, TestCase, run_script


def _np(x):
    return ops.convert_to_numpy(x)


def _mlp(dropout=0.0):
    layers = [keras.Input((12,)), keras.layers.Dense(16, activation="relu", name="fc1")]
    if dropout:
        layers.append(keras.layers.Dropout(dropout, name="drop1"))
    layers += [
        keras.layers.Dense(8, activation="relu", name="fc2"),
        keras.layers.Dense(3, name="fc3"),
    ]
    return keras.Sequential(layers)


def _cnn():
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, activation="relu", name="conv1"),
            keras.layers.Flatten(),
            keras.layers.Dense(5, name="fc1"),
        ]
    )


def _data(n=64, shape=(12,), classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, *shape)).astype("float32")
    y = rng.integers(0, classes, size=(n,))
    return x, y


def _compile(model, optimizer):
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(True))
    return model


class RecordSparsity(keras.callbacks.Callback):
    """Records (iterations before the batch, logged sparsity after it)."""

    def __init__(self):
        super().__init__()
        self.rows = []

    def on_train_batch_begin(self, batch, logs=None):
        self._step = int(_np(self.model.optimizer.iterations))

    def on_train_batch_end(self, batch, logs=None):
        self.rows.append((self._step, logs["sparsity"]))


class PureFunctionsTest(TestCase):
    def test_std_threshold_matches_numpy(self):
        rng = np.random.default_rng(1)
        w = rng.normal(size=(30, 20)).astype("float32")
        m = (rng.random((30, 20)) > 0.3).astype("float32")
        for mask in (None, m):
            kept = w if mask is None else w[mask == 1]
            ref = 0.7 * np.std(kept)
            got = float(_np(std_threshold(w, 0.7, mask)))
            self.assertAlmostEqual(got, ref, places=5)
        self.assertAlmostEqual(float(_np(kept_std(w))), np.std(w), places=5)
        t = 0.7 * np.std(w[m == 1])
        ref_mask = m * (np.abs(w) >= t)
        np.testing.assert_array_equal(_np(threshold_mask(w, t, m)), ref_mask)

    def test_global_std_threshold_matches_numpy(self):
        rng = np.random.default_rng(2)
        a = rng.normal(size=(10, 4)).astype("float32")
        b = 3 * rng.normal(size=(3, 3, 2)).astype("float32")
        ma = (rng.random(a.shape) > 0.5).astype("float32")
        ref = 1.3 * np.std(np.concatenate([a[ma == 1], b.ravel()]))
        got = float(_np(global_std_threshold([a, b], 1.3, [ma, None])))
        self.assertAlmostEqual(got, ref, places=5)

    def test_sparsity_mask_exact_and_monotone(self):
        rng = np.random.default_rng(3)
        w = rng.normal(size=(50, 7)).astype("float32")
        m = _np(sparsity_mask(w, 0.6))
        self.assertEqual(int(m.sum()), 350 - 210)
        # The kept weights are the largest.
        self.assertGreaterEqual(np.abs(w[m == 1]).min(), np.abs(w[m == 0]).max())
        # Never regrows: a pruned weight stays pruned even if it became large.
        w2 = w.copy()
        w2[m == 0] = 100.0
        m2 = _np(sparsity_mask(w2, 0.8, m))
        self.assertEqual(int(m2.sum()), 70)
        self.assertTrue(np.all(m2 <= m))
        # A sparser mask than the target is kept as it is.
        np.testing.assert_array_equal(_np(sparsity_mask(w, 0.1, m2)), m2)

    def test_global_sparsity_masks_match_numpy(self):
        rng = np.random.default_rng(4)
        ws = [rng.normal(size=(20, 10)), 5 * rng.normal(size=(10, 4))]
        ws = [w.astype("float32") for w in ws]
        masks = [_np(m) for m in global_sparsity_masks(ws, 0.75)]
        flat = np.concatenate([np.abs(w).ravel() for w in ws])
        t = np.sort(flat)[-60]  # 240 weights, keep 60
        for w, m in zip(ws, masks):
            np.testing.assert_array_equal(m, (np.abs(w) >= t).astype("float32"))
        self.assertEqual(sum(int(m.sum()) for m in masks), 60)

    def test_bad_sparsity_raises(self):
        with self.assertRaisesRegex(ValueError, "Received: sparsity=1.0"):
            sparsity_mask(np.ones((2, 2), "float32"), 1.0)


class ScheduleTest(TestCase):
    def test_polynomial_decay_values(self):
        s = PolynomialDecay(0.1, 0.9, begin_step=10, end_step=50, power=3)
        for t in (0, 10, 20, 35, 50, 80):
            p = min(max((t - 10) / 40, 0), 1)
            ref = 0.0 if t < 10 else 0.9 + (0.1 - 0.9) * (1 - p) ** 3
            self.assertAlmostEqual(float(_np(s(t))), ref, places=6)

    def test_should_prune(self):
        s = PolynomialDecay(0.0, 0.9, begin_step=10, end_step=45, frequency=10)
        steps = [t for t in range(100) if s.should_prune(t)]
        self.assertEqual(steps, [10, 20, 30, 40, 45])
        c = ConstantSparsity(0.5, begin_step=3, frequency=4)
        self.assertEqual([t for t in range(12) if c.should_prune(t)], [3, 7, 11])

    def test_schedule_serialization(self):
        for s in (
            PolynomialDecay(0.2, 0.95, 5, 500, power=2, frequency=7),
            ConstantSparsity(0.5, begin_step=3, end_step=9, frequency=2),
        ):
            copy_ = self.run_serialization_test(s)
            self.assertEqual(float(_np(copy_(100))), float(_np(s(100))))

    def test_bad_schedule_args(self):
        with self.assertRaisesRegex(ValueError, "end_step"):
            PolynomialDecay(0.0, 0.9, begin_step=10, end_step=10)
        with self.assertRaisesRegex(ValueError, "final_sparsity"):
            PolynomialDecay(0.0, 1.5, begin_step=0, end_step=10)


class MagnitudePruningTest(TestCase):
    def _assert_zeros_held(self, model):
        masks = get_masks(model)
        self.assertTrue(masks)
        for layer in model.layers:
            if layer.name in masks:
                k = _np(layer.kernel)
                m = masks[layer.name]
                self.assertTrue(np.all(k[m == 0] == 0.0), layer.name)
                self.assertTrue(np.all(k[m == 1] != 0.0), layer.name)

    def _train_and_check_exact_zeros(self, optimizer):
        x, y = _data(n=320)
        model = _compile(_mlp(), optimizer)
        model.fit(x[:64], y[:64], batch_size=16, epochs=1, verbose=0)
        before = {lay.name: _np(lay.kernel).copy() for lay in model.layers}
        cb = MagnitudePruning(sparsity=0.7)
        # 160 batches x 2 epochs = 320 optimizer steps after pruning.
        model.fit(x, y, batch_size=2, epochs=2, verbose=0, callbacks=[cb])
        self._assert_zeros_held(model)
        masks = get_masks(model)
        for layer in model.layers:
            m = masks[layer.name]
            self.assertAlmostEqual(1 - m.mean(), 0.7, delta=0.02)
            moved = np.abs(_np(layer.kernel) - before[layer.name])[m == 1]
            self.assertGreater(moved.max(), 1e-3, "kept weights were not trained")

    def test_exact_zeros_adam(self):
        self._train_and_check_exact_zeros(keras.optimizers.Adam(0.01))

    def test_exact_zeros_sgd_momentum(self):
        opt = keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True)
        self._train_and_check_exact_zeros(opt)

    def test_exact_zeros_adamw(self):
        self._train_and_check_exact_zeros(keras.optimizers.AdamW(0.01, 0.1))

    def test_quality_rule_matches_numpy_and_cycles(self):
        x, y = _data(n=32)
        model = _compile(_mlp(), keras.optimizers.SGD(0.01))
        kernels = {lay.name: _np(lay.kernel).copy() for lay in model.layers}
        quality = {"fc1": 0.5, "fc2": 1.0, "fc3": 0.25}
        cb = MagnitudePruning(quality=quality, cycles=1)
        model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[cb])
        masks = get_masks(model)
        for name, q in quality.items():
            w = kernels[name]
            ref = (np.abs(w) >= q * np.std(w)).astype("float32")
            np.testing.assert_array_equal(masks[name], ref)
        # Iterated cycles keep pruning a share of the survivors.
        model2 = _compile(_mlp(), keras.optimizers.SGD(0.01))
        cb2 = MagnitudePruning(quality=0.8, cycles=3, epochs_per_cycle=2)
        hist = model2.fit(x, y, batch_size=32, epochs=6, verbose=0, callbacks=[cb2])
        s = hist.history["sparsity"]
        self.assertTrue(s[0] < s[2] < s[4], s)
        self.assertEqual(s[4], s[5])  # no pruning after the last cycle
        self._assert_zeros_held(model2)

    def test_schedule_hits_sparsity_at_requested_step(self):
        x, y = _data(n=64)
        model = _compile(_mlp(), keras.optimizers.Adam(0.01))
        sched = PolynomialDecay(0.0, 0.8, begin_step=3, end_step=17, frequency=4)
        rec = RecordSparsity()
        cb = MagnitudePruning(sparsity=sched)
        model.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[cb, rec])
        by_step = dict(rec.rows)
        self.assertEqual(by_step[2], 0.0)
        self.assertEqual(by_step[3], 0.0)  # initial_sparsity at begin_step
        self.assertGreater(by_step[7], 0.0)
        self.assertLess(by_step[16], 0.8 - 1e-3)
        self.assertAlmostEqual(by_step[17], 0.8, delta=1e-3)
        self.assertAlmostEqual(by_step[23], 0.8, delta=1e-3)
        total = sum(m.size for m in get_masks(model).values())
        zeros = sum(int((_np(lay.kernel) == 0).sum()) for lay in model.layers)
        self.assertEqual(zeros, round(0.8 * total))

    @pytest.mark.skipif(
        keras.backend.backend() == "torch",
        reason="Keras' PyTorch trainer requires steps_per_execution=1",
    )
    def test_steps_per_execution_gives_the_same_masks(self):
        # Keras calls the batch hooks once per 4 steps: the schedule's
        # pruning steps inside each execution must still be taken.
        x, y = _data(n=64)
        masks = []
        for spe in (1, 4):
            keras.utils.set_random_seed(1)
            model = _mlp()
            model.compile(
                keras.optimizers.SGD(0.01),
                keras.losses.SparseCategoricalCrossentropy(True),
                steps_per_execution=spe,
            )
            sched = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=20, frequency=5)
            hist = model.fit(
                x,
                y,
                batch_size=8,
                epochs=3,
                verbose=0,
                callbacks=[MagnitudePruning(sparsity=sched)],
            )
            masks.append(get_masks(model))
            self.assertAlmostEqual(hist.history["sparsity"][-1], 0.8, delta=0.01)
        for name in masks[0]:
            np.testing.assert_array_equal(masks[0][name], masks[1][name])

    def test_global_scope_and_logs(self):
        x, y = _data(n=32)
        model = _compile(_mlp(), keras.optimizers.Adam(0.01))
        cb = MagnitudePruning(sparsity=0.9, scope="global")
        hist = model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[cb])
        masks = get_masks(model)
        total = sum(m.size for m in masks.values())
        kept = sum(int(m.sum()) for m in masks.values())
        self.assertEqual(total - kept, round(0.9 * total))
        self.assertAlmostEqual(hist.history["sparsity"][0], 1 - kept / total)
        for name, m in masks.items():
            self.assertAlmostEqual(hist.history[f"kept/{name}"][0], m.mean())

    def test_epoch_schedule_callable(self):
        x, y = _data(n=32)
        model = _compile(_mlp(), keras.optimizers.Adam(0.01))
        cb = MagnitudePruning(
            sparsity=lambda epoch: 0.2 * epoch, schedule_unit="epoch", layers=["fc1"]
        )
        hist = model.fit(x, y, batch_size=32, epochs=4, verbose=0, callbacks=[cb])
        ref = [1 - round(0.2 * e * 192) / 192 for e in range(4)]  # fc1: 12 x 16
        np.testing.assert_allclose(hist.history["kept/fc1"], ref)
        self.assertEqual(list(get_masks(model)), ["fc1"])

    def test_second_fit_retraces_and_holds_zeros(self):
        x, y = _data(n=32)
        model = _compile(_mlp(), keras.optimizers.Adam(0.01))
        model.fit(x, y, epochs=2, verbose=0)  # traces a function without masks
        model.fit(x, y, epochs=5, verbose=0, callbacks=[MagnitudePruning(sparsity=0.5)])
        self._assert_zeros_held(model)
        # Later training without the callback still holds the zeros.
        model.fit(x, y, epochs=3, verbose=0)
        self._assert_zeros_held(model)

    def test_keras_round_trip_keeps_masks(self):
        x, y = _data(n=32)
        model = _compile(_mlp(), keras.optimizers.Adam(0.01))
        model.fit(x, y, epochs=2, verbose=0, callbacks=[MagnitudePruning(sparsity=0.6)])
        loaded = self.run_model_saving_test(model, x)
        masks, loaded_masks = get_masks(model), get_masks(loaded)
        self.assertEqual(sorted(masks), sorted(loaded_masks))
        for name in masks:
            np.testing.assert_array_equal(masks[name], loaded_masks[name])
            self.assertIsInstance(loaded.get_layer(name).kernel.constraint, KeepMask)
        loaded.fit(x, y, epochs=3, verbose=0)
        self._assert_zeros_held(loaded)

    def test_weights_file_into_unpruned_model(self):
        x, y = _data(n=32)
        model = _compile(_mlp(), keras.optimizers.Adam(0.01))
        model.fit(x, y, epochs=1, verbose=0, callbacks=[MagnitudePruning(sparsity=0.6)])
        path = self.tmp_path("w.weights.h5")
        model.save_weights(path)
        fresh = _mlp()
        fresh.load_weights(path)
        self.assertEqual(get_masks(fresh), {})
        self.assertSameOutputs(model, fresh, x)

    def _backup_run(self, order):
        x, y = _data(n=32)
        backup_dir = self.tmp_path(f"backup_{order}")

        class Interrupt(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if epoch == 2:
                    raise RuntimeError("interrupted")

        sched = PolynomialDecay(0.0, 0.9, begin_step=0, end_step=12, frequency=2)

        def callbacks(extra=()):
            backup = keras.callbacks.BackupAndRestore(backup_dir)
            prune = MagnitudePruning(sparsity=sched)
            pair = [backup, prune] if order == "backup_first" else [prune, backup]
            return pair + list(extra)

        keras.utils.set_random_seed(5)
        model = _compile(_mlp(), keras.optimizers.Adam(0.01))
        with self.assertRaisesRegex(RuntimeError, "interrupted"):
            model.fit(
                x,
                y,
                batch_size=8,
                epochs=6,
                verbose=0,
                callbacks=callbacks([Interrupt()]),
            )
        saved = get_masks(model)
        keras.utils.set_random_seed(6)
        resumed = _compile(_mlp(), keras.optimizers.Adam(0.01))

        class Check(keras.callbacks.Callback):
            def on_epoch_begin(inner, epoch, logs=None):  # noqa: N805
                if not hasattr(inner, "first"):
                    inner.first = (epoch, get_masks(resumed))

        check = Check()
        resumed.fit(
            x, y, batch_size=8, epochs=6, verbose=0, callbacks=callbacks([check])
        )
        epoch, masks_at_resume = check.first
        self.assertEqual(epoch, 3)
        for name in saved:
            np.testing.assert_array_equal(saved[name], masks_at_resume[name])
        self._assert_zeros_held(resumed)
        total = sum(m.size for m in get_masks(resumed).values())
        kept = sum(int(m.sum()) for m in get_masks(resumed).values())
        self.assertAlmostEqual(1 - kept / total, 0.9, delta=2e-3)

    def test_backup_and_restore_backup_first(self):
        self._backup_run("backup_first")

    def test_backup_and_restore_pruning_first(self):
        self._backup_run("pruning_first")

    def test_dropout_rescale(self):
        x, y = _data(n=32)
        model = _compile(_mlp(dropout=0.5), keras.optimizers.Adam(0.01))
        seen = []

        class Watch(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                seen.append(self.model.get_layer("drop1").rate)

        cb = MagnitudePruning(sparsity={"fc2": 0.75}, dropout_rescale=True)
        model.fit(x, y, epochs=2, verbose=0, callbacks=[cb, Watch()])
        # The Dropout feeds fc2: D_r = 0.5 * sqrt(32 / 128).
        self.assertAlmostEqual(seen[-1], 0.5 * np.sqrt(0.25), places=6)
        self.assertEqual(model.get_layer("drop1").rate, 0.5)  # restored

    def test_freeze_dense_while_conv_retrains(self):
        x = np.random.default_rng(0).normal(size=(16, 8, 8, 1)).astype("float32")
        y = np.random.default_rng(1).integers(0, 5, size=(16,))
        model = _compile(_cnn(), keras.optimizers.Adam(0.01))
        dense_before = _np(model.get_layer("fc1").kernel).copy()
        conv_before = _np(model.get_layer("conv1").kernel).copy()
        cb = MagnitudePruning(sparsity={"conv1": 0.5}, freeze="dense")
        model.fit(x, y, epochs=2, verbose=0, callbacks=[cb])
        np.testing.assert_array_equal(_np(model.get_layer("fc1").kernel), dense_before)
        conv = _np(model.get_layer("conv1").kernel)
        m = get_masks(model)["conv1"]
        self.assertGreater(np.abs(conv - conv_before)[m == 1].max(), 1e-3)
        self.assertTrue(model.get_layer("fc1").trainable)

    def test_strip_pruning_copy(self):
        x, y = _data(n=32)
        model = _compile(_mlp(), keras.optimizers.Adam(0.01))
        fc2 = model.get_layer("fc2")
        fc2.kernel_constraint = fc2.kernel.constraint = keras.constraints.MaxNorm(3.0)
        model.fit(x, y, epochs=1, verbose=0, callbacks=[MagnitudePruning(sparsity=0.5)])
        stripped = strip_pruning(model)
        self.assertEqual(get_masks(stripped), {})
        self.assertIsInstance(
            stripped.get_layer("fc2").kernel_constraint, keras.constraints.MaxNorm
        )
        self.assertEqual(len(get_masks(model)), 3)  # input untouched
        self.assertSameOutputs(model, stripped, x)
        self.assertEqual(
            int((_np(stripped.get_layer("fc1").kernel) == 0).sum()), 16 * 12 // 2
        )

    def test_keep_mask_serialization_and_copy(self):
        km = KeepMask(mask=np.array([[1.0, 0.0]], "float32"), inner="non_neg")
        self.run_serialization_test(km)
        for clone in (copy.deepcopy(km), pickle.loads(pickle.dumps(km))):
            np.testing.assert_array_equal(_np(clone.mask), [[1.0, 0.0]])
            np.testing.assert_array_equal(
                _np(clone(ops.convert_to_tensor([[-2.0, 3.0]]))), [[0.0, 0.0]]
            )

    def test_callback_serialization(self):
        for cb in (
            MagnitudePruning(quality={"fc1": 0.3, "fc2": 1.1}, cycles=3),
            MagnitudePruning(sparsity=0.9, scope="global", freeze="conv"),
            MagnitudePruning(
                sparsity=PolynomialDecay(0.0, 0.95, 0, 1000, frequency=50),
                dropout_rescale=True,
            ),
        ):
            copy_ = self.run_serialization_test(cb)
            self.assertEqual(type(copy_.sparsity), type(cb.sparsity))

    def test_bad_arguments(self):
        with self.assertRaisesRegex(ValueError, "exactly one"):
            MagnitudePruning()
        with self.assertRaisesRegex(ValueError, "Received: scope=both"):
            MagnitudePruning(sparsity=0.5, scope="both")
        with self.assertRaisesRegex(ValueError, "scope='layer'"):
            MagnitudePruning(sparsity={"fc1": 0.5}, scope="global")
        x, y = _data(n=8)
        model = _compile(_mlp(), "adam")
        with self.assertRaisesRegex(ValueError, "layer 'nope'"):
            model.fit(
                x,
                y,
                verbose=0,
                callbacks=[MagnitudePruning(sparsity=0.5, layers=["nope"])],
            )


_MIRRORED_SCRIPT = TWO_CPUS + textwrap.dedent(
    """
    import json
    import keras, numpy as np
    from kprune.callbacks import MagnitudePruning
    from kprune.pruning import get_masks
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, name="a"),
                                  keras.layers.Dense(2, name="b")])
        model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "mse")
    x = np.random.rand(64, 6).astype("float32")
    y = np.random.rand(64, 2).astype("float32")
    model.fit(x, y, batch_size=16, epochs=8, verbose=0,
              callbacks=[MagnitudePruning(sparsity=0.75)])
    masks = get_masks(model)
    layers = {}
    for layer in model.layers:
        m = masks[layer.name]
        replicas = [r.numpy() for r in layer.kernel.value.values]
        layers[layer.name] = {
            "sparsity": float(1 - m.mean()),
            "replicas": len(replicas),
            "pruned_zero": all(bool(np.all(k[m == 0] == 0)) for k in replicas),
            "kept_nonzero": all(bool(np.all(k[m == 1] != 0)) for k in replicas),
        }
    print("RESULT " + json.dumps(
        {"replicas": strategy.num_replicas_in_sync, "layers": layers}))
    """
)


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="tf.distribute.MirroredStrategy needs the TensorFlow backend",
)
class MirroredStrategyTest(TestCase):
    def test_two_logical_cpus(self):
        result = run_script(_MIRRORED_SCRIPT)
        self.assertEqual(result["replicas"], 2)
        for name, layer in result["layers"].items():
            self.assertAlmostEqual(layer["sparsity"], 0.75, delta=0.02, msg=name)
            self.assertEqual(layer["replicas"], 2, name)
            self.assertTrue(layer["pruned_zero"], name)
            self.assertTrue(layer["kept_nonzero"], name)
