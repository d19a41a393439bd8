"""Point 7 of issue 16: resuming under `BackupAndRestore` does not depend on
where kprune's callbacks stand in `callbacks`, or the order is refused.

Each case trains once without interruption (the reference), then for each
order is interrupted mid-epoch (`kprune.testing.InterruptAt`) and resumed
with a fresh model from the backup; the resumed weights must equal the
reference's bit for bit (same ops, same CPU, same order).
"""

import keras
import numpy as np

import kprune
from kprune.callbacks import (
    AdaptiveRegularization,
    MagnitudePruning,
    ProximalStep,
    RegularizationScheduler,
    SparsityLogger,
)
from kprune.testing import InterruptAt, TestCase

EPOCHS = 4


def data(n=48, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("int64")
    return x, y


def mlp():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16, activation="relu", name="fc1"),
            keras.layers.Dense(12, activation="relu", name="fc2"),
            keras.layers.Dense(2, name="out"),
        ]
    )


class BackupOrderTest(TestCase):
    def _fit(self, model, callbacks):
        x, y = data()
        return model.fit(
            x,
            y,
            batch_size=8,
            epochs=EPOCHS,
            verbose=0,
            shuffle=False,
            callbacks=callbacks,
        )

    def _check_resume(self, build, kprune_callbacks, orders, interrupt_epoch=2):
        """Reference run, then interrupt + resume for each order."""
        reference = build()
        self._fit(reference, kprune_callbacks("ref", None))
        for order in orders:
            with self.subTest(order=order):
                backup = self.tmp_path(f"backup_{order}")

                def run(extra=(), order=order, backup=backup):
                    model = build()
                    ours = kprune_callbacks(order, backup)
                    bar = keras.callbacks.BackupAndRestore(backup)
                    if order == "backup_first":
                        callbacks = [bar, *ours]
                    elif order == "backup_last":
                        callbacks = [*ours, bar]
                    else:  # backup in the middle
                        callbacks = [ours[0], bar, *ours[1:]]
                    history = self._fit(model, callbacks + list(extra))
                    return model, history

                with self.assertRaisesRegex(RuntimeError, "interrupted"):
                    run([InterruptAt(epoch=interrupt_epoch, batch=2)])
                resumed, history = run()
                # Only the epochs after the last backup ran again.
                self.assertEqual(len(history.history["loss"]), EPOCHS - interrupt_epoch)
                for a, b in zip(reference.get_weights(), resumed.get_weights()):
                    np.testing.assert_array_equal(a, b)
        return reference

    def test_proximal_step_before_backup_resumes_exactly_after_is_refused(self):
        def build():
            model = kprune.sparsity.apply_group_sparsity(mlp(), 3.0)
            schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 6, 0.7)
            model.compile(
                keras.optimizers.SGD(schedule, momentum=0.9),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
            return model

        def callbacks(order, backup):
            return [ProximalStep(), SparsityLogger()]  # epoch-end proximal step

        reference = self._check_resume(build, callbacks, ["backup_last"])
        zero = kprune.surgery.dead_units(reference)
        self.assertTrue(zero, "the proximal step should have zeroed some units")

        started = []

        class Spy(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                started.append(True)

        backup = self.tmp_path("refused")
        for prox in (ProximalStep(), ProximalStep(every_n_steps=4)):
            with self.assertRaisesRegex(
                ValueError,
                r"ProximalStep must come before BackupAndRestore.*position 1.*"
                r"Received: callbacks=\['Spy', 'BackupAndRestore', 'ProximalStep'",
            ):
                self._fit(
                    build(),
                    [Spy(), keras.callbacks.BackupAndRestore(backup), prox],
                )
        self.assertEqual(started, [])  # refused before training began

    def test_magnitude_pruning_and_scheduler_resume_in_any_position(self):
        def build():
            model = mlp()
            model = kprune.sparsity.apply_group_sparsity(
                model, 1e-3, layers=["fc1"], mode="penalty"
            )
            model.compile(
                keras.optimizers.SGD(0.05, momentum=0.9),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
            return model

        def callbacks(order, backup):
            schedule = kprune.pruning.PolynomialDecay(
                0.0, 0.8, begin_step=0, end_step=20, frequency=3
            )
            return [
                MagnitudePruning(sparsity=schedule, layers=["fc2"]),
                RegularizationScheduler(lambda epoch: 1e-3 * (epoch + 1)),
            ]

        reference = self._check_resume(
            build, callbacks, ["backup_first", "backup_last"]
        )
        masks = kprune.pruning.get_masks(reference)
        self.assertGreater(float(np.mean(masks["fc2"] == 0)), 0.5)

    def test_adaptive_regularization_resumes_in_any_position(self):
        x, y = data()

        def build():
            model = mlp()
            model.compile(
                keras.optimizers.SGD(0.05, momentum=0.9),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"],
            )
            return model

        def callbacks(order, backup):
            return [
                AdaptiveRegularization(
                    0.8,
                    eval_data=(x, y),
                    initial_strength=1e-3,
                    growth=2.0,
                    warmup_epochs=1,
                    max_art_epochs=2,
                    backup_dir=backup,
                )
            ]

        # BackupAndRestore last: tests/test_hypersparse.py.
        reference = self._check_resume(build, callbacks, ["backup_first"])
        kernels = [reference.get_layer(n).kernel for n in ("fc1", "fc2", "out")]
        zeros = sum(int(np.sum(keras.ops.convert_to_numpy(k) == 0)) for k in kernels)
        total = sum(int(np.prod(k.shape)) for k in kernels)
        self.assertAlmostEqual(zeros / total, 0.8, places=2)
