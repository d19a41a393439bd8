"""RegularizationScheduler, SparsityLogger, and all group-sparsity callbacks
under BackupAndRestore and MirroredStrategy."""

import csv
import math
import textwrap

import keras
import numpy as np
import pytest

import kprune
from kprune.callbacks import ProximalStep, RegularizationScheduler, SparsityLogger
from kprune.sparsity import apply_group_sparsity
from kprune.testing import TWO_CPUS, InterruptAt, run_script
from tests.sparsity_models import data, mlp, to_np


@keras.saving.register_keras_serializable(package="kprune_tests")
def step_schedule(epoch):
    return 0.0 if epoch < 1 else 0.5


class RegularizationSchedulerTest(kprune.testing.TestCase):
    def test_schedule_changes_strength_and_loss_mid_fit(self):
        x, y = data()
        model = apply_group_sparsity(mlp(), 1.0, mode="penalty")
        # lr = 0: weights stay put, so the loss changes only through lambda.
        model.compile(keras.optimizers.SGD(0.0), "mse")
        regs = [model.get_layer(n).kernel_regularizer for n in ("h1", "h2")]
        history = model.fit(
            x,
            y,
            batch_size=64,
            epochs=2,
            verbose=0,
            shuffle=False,
            callbacks=[RegularizationScheduler(step_schedule)],
        )
        self.assertEqual(history.history["reg_strength"], [0.0, 0.5])
        for reg in regs:
            self.assertEqual(float(to_np(reg.strength)), 0.5)
        penalty = 0.0
        for name in ("h1", "h2"):
            kernel = to_np(model.get_layer(name).kernel)
            penalty += (
                0.5 * math.sqrt(kernel.shape[0]) * np.linalg.norm(kernel, axis=0).sum()
            )
        loss0, loss1 = history.history["loss"]
        self.assertAlmostEqual(loss1 - loss0, penalty, places=3)

    def test_keras_schedule_per_batch_keeps_layer_scale(self):
        x, y = data(n=32)
        model = apply_group_sparsity(mlp(), 1.0, first_layer_scale=0.1)
        model.compile(keras.optimizers.SGD(0.01), "mse")
        schedule = keras.optimizers.schedules.PolynomialDecay(
            0.0, 4, end_learning_rate=0.4
        )
        history = model.fit(
            x,
            y,
            batch_size=8,
            epochs=1,
            verbose=0,
            callbacks=[RegularizationScheduler(schedule, update_freq="batch")],
        )  # steps 0..3 -> last value schedule(3) = 0.3
        self.assertAlmostEqual(history.history["reg_strength"][0], 0.3, places=6)
        h1 = model.get_layer("h1").kernel_regularizer
        h2 = model.get_layer("h2").kernel_regularizer
        self.assertAlmostEqual(h1.effective_strength(), 0.03, places=6)
        self.assertAlmostEqual(h2.effective_strength(), 0.3, places=6)

    def test_layers_subset_and_errors(self):
        model = apply_group_sparsity(mlp(), 1.0)
        model.compile("sgd", "mse")
        callback = RegularizationScheduler(lambda epoch: 0.25, layers=["h2"])
        callback.set_model(model)
        callback.on_train_begin()
        callback.on_epoch_begin(0)
        self.assertEqual(model.get_layer("h1").kernel_regularizer.strength_value(), 1.0)
        self.assertEqual(
            model.get_layer("h2").kernel_regularizer.strength_value(), 0.25
        )
        callback = RegularizationScheduler(lambda epoch: -1.0)
        callback.set_model(model)
        callback.on_train_begin()
        with self.assertRaisesRegex(ValueError, "finite float >= 0"):
            callback.on_epoch_begin(0)
        plain = mlp()
        callback = RegularizationScheduler(lambda epoch: 1.0)
        callback.set_model(plain)
        with self.assertRaisesRegex(ValueError, "found no regularizer"):
            callback.on_train_begin()
        with self.assertRaisesRegex(ValueError, "schedule"):
            RegularizationScheduler(0.1)
        with self.assertRaisesRegex(ValueError, "update_freq"):
            RegularizationScheduler(step_schedule, update_freq="step")

    def test_config_round_trip(self):
        for callback in (
            RegularizationScheduler(keras.optimizers.schedules.CosineDecay(0.1, 100)),
            RegularizationScheduler(step_schedule, layers=["a"], update_freq="batch"),
        ):
            copy = self.run_serialization_test(callback)
            self.assertEqual(copy.strength_at(1), callback.strength_at(1))


class SparsityLoggerTest(kprune.testing.TestCase):
    def test_counts_and_csv_columns(self):
        x, y = data(n=16)
        model = mlp()
        model.compile(keras.optimizers.SGD(0.0), "mse")
        h1 = model.get_layer("h1")
        kernel = to_np(h1.kernel)
        kernel[:, :6] = 0.0  # 6 dead units
        kernel[0, 6] = 0.0  # one zero weight in a live unit
        h1.kernel.assign(kernel)
        path = self.tmp_path("log.csv")
        history = model.fit(
            x,
            y,
            epochs=2,
            verbose=0,
            callbacks=[SparsityLogger(), keras.callbacks.CSVLogger(path)],
        )
        logs = {k: v[-1] for k, v in history.history.items()}
        self.assertEqual(logs["live_units/h1"], 18)
        self.assertAlmostEqual(logs["group_sparsity/h1"], 6 / 24)
        self.assertEqual(logs["live_units/h2"], 12)
        self.assertEqual(logs["live_units/out"], 3)
        self.assertEqual(logs["live_units"], 33)
        self.assertAlmostEqual(logs["group_sparsity"], 6 / 39)
        self.assertAlmostEqual(logs["weight_sparsity"], 61 / (240 + 288 + 36))
        with open(path) as f:
            rows = list(csv.DictReader(f))
        self.assertEqual(len(rows), 2)
        self.assertEqual(rows[-1]["live_units/h1"], "18")

    def test_layers_totals_only_and_depthwise(self):
        inputs = keras.Input((6, 6, 2))
        x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(inputs)
        model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(x)))
        kernel = to_np(model.get_layer("dw").kernel)
        kernel[:, :, 1, 0] = 0.0  # channel 1, multiplier 0 -> unit 2
        model.get_layer("dw").kernel.assign(kernel)
        callback = SparsityLogger(layers=["dw"], per_layer=False)
        callback.set_model(model)
        stats = callback.compute()
        self.assertEqual(
            stats, {"live_units": 3, "group_sparsity": 0.25, "weight_sparsity": 0.25}
        )
        callback = SparsityLogger(layers=["flatten"])
        callback.set_model(model)
        with self.assertRaisesRegex(ValueError, "cannot group"):
            callback.compute()

    def test_config_round_trip_and_bad_arguments(self):
        self.run_serialization_test(SparsityLogger())
        self.run_serialization_test(
            SparsityLogger(layers=["a"], per_layer=False, atol=1e-6)
        )
        with self.assertRaisesRegex(ValueError, "atol"):
            SparsityLogger(atol=-1)
        with self.assertRaisesRegex(ValueError, "layers"):
            SparsityLogger(layers="a")


class BackupAndRestoreTest(kprune.testing.TestCase):
    def _fit(self, init, backup_dir, extra=(), epochs=4):
        x, y = data(n=48)
        model = apply_group_sparsity(mlp(), 0.5, alpha=0.25)
        model.set_weights(init)
        schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 6, 0.7)
        model.compile(keras.optimizers.SGD(schedule, momentum=0.9), "mse")
        callbacks = [
            RegularizationScheduler(lambda epoch: 0.6 * (epoch + 1)),
            ProximalStep(every_n_steps=4),
            SparsityLogger(),
            keras.callbacks.BackupAndRestore(backup_dir),
            *extra,
        ]
        history = model.fit(
            x,
            y,
            batch_size=8,
            epochs=epochs,
            verbose=0,
            shuffle=False,
            callbacks=callbacks,
        )
        return model, history

    def test_interrupted_run_resumes_to_the_same_weights(self):
        init = apply_group_sparsity(mlp(), 0.5).get_weights()
        reference, ref_history = self._fit(init, self.tmp_path("a"))
        backup = self.tmp_path("b")
        with self.assertRaisesRegex(RuntimeError, "interrupted"):
            self._fit(init, backup, extra=[InterruptAt(epoch=2, batch=3)])
        resumed, history = self._fit(init, backup)
        # Only epochs 2 and 3 ran after the restore.
        self.assertEqual(len(history.history["loss"]), 2)
        self.assertEqual(
            history.history["reg_strength"], ref_history.history["reg_strength"][2:]
        )
        self.assertEqual(
            history.history["live_units"], ref_history.history["live_units"][2:]
        )
        self.assertGreater(ref_history.history["prox_zero_groups"][-1], 0)
        # Same ops on the same CPU in the same order: bit-identical weights.
        for a, b in zip(reference.get_weights(), resumed.get_weights()):
            np.testing.assert_array_equal(a, b)


_MIRRORED_SCRIPT = TWO_CPUS + textwrap.dedent(
    """
    import json
    import keras, numpy as np, kprune, kprune.sparsity

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 10)).astype("float32")
    y = (x[:, :3] @ rng.normal(size=(3, 3))).astype("float32")
    result = {"replicas": strategy.num_replicas_in_sync}
    for every in (None, 2):
        with strategy.scope():
            base = keras.Sequential([
                keras.Input((10,)),
                keras.layers.Dense(24, activation="relu", name="h1"),
                keras.layers.Dense(12, activation="relu", name="h2"),
                keras.layers.Dense(3, name="out")])
            model = kprune.sparsity.apply_group_sparsity(base, 0.8)
            model.compile(keras.optimizers.SGD(0.1), "mse")
        history = model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[
            kprune.callbacks.RegularizationScheduler(lambda e: 0.8 + 0.1 * e),
            kprune.callbacks.ProximalStep(every_n_steps=every),
            kprune.callbacks.SparsityLogger()])
        layer = model.get_layer("h1")
        replicas = [v.numpy() for v in layer.kernel.value.values]
        bias = layer.bias.numpy()
        kernel = layer.kernel.numpy()
        dead = np.all(kernel == 0, axis=0)
        result[str(every)] = {
            "history": {k: [float(v) for v in vs]
                        for k, vs in history.history.items()},
            "replicas_equal": all(np.array_equal(replicas[0], r) for r in replicas),
            "n_replica_values": len(replicas),
            "dead_h1": int(dead.sum()),
            "dead_bias_zero": bool(np.all(bias[dead] == 0)),
            "strength": float(layer.kernel_regularizer.strength.numpy()),
        }
    print("RESULT " + json.dumps(result))
    """
)


class MirroredStrategyTest(kprune.testing.TestCase):
    @pytest.mark.tensorflow_only(
        reason="tf.distribute.MirroredStrategy needs the TensorFlow backend"
    )
    def test_callbacks_under_mirrored_strategy_with_two_cpus(self):
        # Logical devices must be configured before TF initializes, which
        # other tests in this process already did: use a subprocess.
        result = run_script(_MIRRORED_SCRIPT)
        self.assertEqual(result["replicas"], 2)
        for every in ("None", "2"):
            run = result[every]
            history = run["history"]
            self.assertEqual(run["n_replica_values"], 2)
            self.assertTrue(run["replicas_equal"])
            self.assertGreater(run["dead_h1"], 0)
            self.assertTrue(run["dead_bias_zero"])
            self.assertAlmostEqual(run["strength"], 1.0, places=6)
            self.assertEqual(history["reg_strength"], [0.8, 0.9, 1.0])
            self.assertEqual(history["live_units/h1"][-1], 24 - run["dead_h1"])
            self.assertGreater(history["prox_zero_groups"][-1], 0)


def test_sparsity_logger_counts_a_residual_channel_dead_only_with_its_group():
    L = keras.layers
    inputs = keras.Input((6, 6, 3))
    x = L.Conv2D(4, 3, padding="same", name="stem")(inputs)
    branch = L.Conv2D(4, 3, padding="same", name="branch")(x)
    x = L.Add()([x, branch])
    model = keras.Model(inputs, L.Dense(2, name="head")(L.Flatten()(x)))

    def zero_unit(name, unit):
        kernel = model.get_layer(name).kernel
        value = keras.ops.convert_to_numpy(kernel).copy()
        value[..., unit] = 0.0
        kernel.assign(value)

    def live(**kwargs):
        logger = SparsityLogger(**kwargs)
        logger.set_model(model)
        stats = logger.compute()
        return stats["live_units/stem"], stats["live_units/branch"]

    zero_unit("branch", 0)  # the skip still carries channel 0
    assert live() == (4, 4)
    assert live(coupled=False) == (4, 3)
    zero_unit("stem", 0)  # now no layer makes channel 0: it can leave
    assert live() == (3, 3)
    only = SparsityLogger(layers=["branch"])  # stem untracked: still coupled
    only.set_model(model)
    assert only.compute()["live_units/branch"] == 3
    config = SparsityLogger(coupled=False).get_config()
    assert SparsityLogger.from_config(config).coupled is False
