"""kprune.ops.distillation_loss, kprune.losses.Distillation and soft_targets."""

import keras
import numpy as np
import pytest

import kprune
import kprune.sparsity
from kprune.losses import Distillation, soft_targets


def to_np(x):
    return keras.ops.convert_to_numpy(x)


def log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def reference(labels, teacher, student, temperature, alpha):
    """NumPy: alpha * CE + (1 - alpha) * T^2 * KL(p_t || p_s)."""
    hard = -log_softmax(student)[np.arange(len(labels)), labels]
    log_t = log_softmax(teacher / temperature)
    log_s = log_softmax(student / temperature)
    soft = (np.exp(log_t) * (log_t - log_s)).sum(axis=-1)
    return alpha * hard + (1 - alpha) * temperature**2 * soft


def batch(seed=0, n=16, classes=5):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    teacher = rng.normal(scale=3.0, size=(n, classes)).astype("float32")
    student = rng.normal(scale=3.0, size=(n, classes)).astype("float32")
    return labels, teacher, student


class DistillationLossOpTest(kprune.testing.TestCase):
    def test_matches_numpy_reference(self):
        labels, teacher, student = batch()
        for temperature in (1.0, 4.0):
            for alpha in (0.0, 0.3, 1.0):
                got = kprune.ops.distillation_loss(
                    labels, teacher, student, temperature, alpha
                )
                want = reference(labels, teacher, student, temperature, alpha)
                np.testing.assert_allclose(to_np(got), want, rtol=1e-5, atol=1e-5)

    def test_alpha_one_is_cross_entropy(self):
        labels, teacher, student = batch(1)
        got = kprune.ops.distillation_loss(labels, teacher, student, 4.0, 1.0)
        want = keras.losses.sparse_categorical_crossentropy(
            labels, student, from_logits=True
        )
        np.testing.assert_allclose(to_np(got), to_np(want), rtol=1e-5)

    def test_soft_term_vanishes_when_student_copies_teacher(self):
        labels, teacher, _ = batch(2)
        got = kprune.ops.distillation_loss(labels, teacher, teacher, 4.0, 0.0)
        np.testing.assert_allclose(to_np(got), 0.0, atol=1e-5)


class DistillationLossTest(kprune.testing.TestCase):
    def test_mean_of_the_op_over_the_batch(self):
        labels, teacher, student = batch(3)
        packed = np.concatenate([labels[:, None], teacher], axis=1)
        got = float(Distillation(temperature=2.0, alpha=0.5)(packed, student))
        want = reference(labels, teacher, student, 2.0, 0.5).mean()
        self.assertAlmostEqual(got, float(want), places=4)

    def test_serialization_round_trip(self):
        loss = Distillation(temperature=3.0, alpha=0.25, name="kd")
        restored = self.run_serialization_test(loss)
        self.assertEqual(restored.temperature, 3.0)
        self.assertEqual(restored.alpha, 0.25)
        restored = keras.losses.deserialize(keras.losses.serialize(loss))
        self.assertIsInstance(restored, Distillation)

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="temperature.*Received"):
            Distillation(temperature=0.0)
        with pytest.raises(ValueError, match="alpha.*Received"):
            Distillation(alpha=1.5)

    def test_unpacked_targets_name_y_true(self):
        labels, _, student = batch(4)
        with pytest.raises(ValueError, match="soft_targets.*Received: y_true"):
            Distillation()(labels[:, None].astype("float32"), student)

    def test_group_sparse_student_learns_from_teacher_and_slims(self):
        rng = np.random.default_rng(0)
        x = rng.normal(size=(512, 10)).astype("float32")
        y = (x[:, 0] + x[:, 1] > 0).astype("int64") + (x[:, 2] > 1)
        keras.utils.set_random_seed(0)
        teacher = keras.Sequential(
            [
                keras.Input((10,)),
                keras.layers.Dense(32, activation="relu"),
                keras.layers.Dense(3),
            ]
        )
        teacher.compile("adam", "sparse_categorical_crossentropy")
        teacher.fit(x, y, epochs=5, verbose=0)
        targets = soft_targets(teacher, x, y)
        self.assertEqual(targets.shape, (512, 4))
        np.testing.assert_array_equal(targets[:, 0], y)
        np.testing.assert_allclose(
            targets[:, 1:], to_np(teacher(x)), rtol=1e-5, atol=1e-5
        )

        student = kprune.sparsity.apply_group_sparsity(
            keras.Sequential(
                [
                    keras.Input((10,)),
                    keras.layers.Dense(24, activation="relu", name="hidden"),
                    keras.layers.Dense(3, name="logits"),
                ]
            ),
            0.5,
        )
        student.compile(keras.optimizers.SGD(0.1), loss=Distillation(2.0, 0.3))
        history = student.fit(
            x,
            targets,
            batch_size=64,
            epochs=6,
            verbose=0,
            callbacks=[kprune.callbacks.ProximalStep(every_n_steps=8)],
        )
        losses = history.history["loss"]
        self.assertLess(losses[-1], losses[0])
        slim = kprune.surgery.slim(student)
        self.assertTrue(0 < slim.get_layer("hidden").units < 24)
        self.assertSameOutputs(student, slim, x)

    def test_soft_targets_checks_the_teacher(self):
        teacher = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        with pytest.raises(ValueError, match="Received: teacher output shape"):
            soft_targets(teacher, np.zeros((5, 4)), np.zeros(6))
