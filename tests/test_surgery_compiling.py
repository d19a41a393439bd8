"""Models compiled with a loss / metric Keras cannot deserialize."""

import warnings

import keras
import numpy as np
import pytest

import kprune
import kprune.sparsity
from kprune.surgery.compiling import compile_like, not_compiled
from kprune.testing import TestCase


def half_mse(y_true, y_pred):  # a plain function, not registered with Keras
    return 0.5 * keras.ops.mean(keras.ops.square(y_true - y_pred), axis=-1)


def max_error(y_true, y_pred):
    return keras.ops.max(keras.ops.abs(y_true - y_pred), axis=-1)


def _model(sequential=False, loss=half_mse):
    if sequential:
        model = keras.Sequential(
            [
                keras.Input((8,)),
                keras.layers.Dense(6, activation="relu", name="fc1"),
                keras.layers.Dense(3, name="out"),
            ]
        )
    else:
        inputs = keras.Input((8,))
        hidden = keras.layers.Dense(6, activation="relu", name="fc1")(inputs)
        model = keras.Model(inputs, keras.layers.Dense(3, name="out")(hidden))
    model.compile(keras.optimizers.SGD(0.01), loss=loss, metrics=[max_error, "mae"])
    return model


def _zero_unit_and_input(model):
    kernel, bias = model.get_layer("fc1").get_weights()
    kernel[:, 0], bias[0] = 0.0, 0.0
    kernel[2] = 0.0  # input feature 2 read by nothing
    model.get_layer("fc1").set_weights([kernel, bias])
    return model


class CompileLikeTest(TestCase):
    def setUp(self):
        super().setUp()
        rng = np.random.default_rng(0)
        self.x = rng.normal(size=(16, 8)).astype("float32")
        self.y = rng.normal(size=(16, 3)).astype("float32")

    def assertCompiledLike(self, new, model):
        self.assertTrue(new.compiled)
        self.assertIsNot(new.optimizer, model.optimizer)
        expected = model.evaluate(self.x, self.y, verbose=0, return_dict=True)
        got = new.evaluate(self.x, self.y, verbose=0, return_dict=True)
        self.assertEqual(sorted(got), sorted(expected))
        for key, value in expected.items():
            np.testing.assert_allclose(got[key], value, atol=1e-5, err_msg=key)
        new.fit(self.x, self.y, epochs=1, verbose=0)  # trains with the same loss

    def test_slim_and_remove_units_keep_a_custom_loss(self):
        for sequential in (False, True):
            model = _zero_unit_and_input(_model(sequential))
            slim = kprune.surgery.slim(model)
            self.assertEqual(slim.get_layer("fc1").units, 5)
            self.assertCompiledLike(slim, model)
            self.assertCompiledLike(
                kprune.surgery.slim(model, prune_inputs=True), model
            )
            self.assertCompiledLike(
                kprune.surgery.remove_units(model, {"fc1": [0]}), model
            )
            self.assertTrue(model.compiled)  # the user's model is left as it was

    def test_summary_with_input_shape(self):
        model = keras.Sequential(
            [keras.Input((None, 3)), keras.layers.Conv1D(4, 3, name="conv")]
        )
        model.compile("sgd", loss=half_mse)
        summary = kprune.report.summary(model, input_shape=(10, 3))
        self.assertEqual(summary["macs"], 8 * 4 * 3 * 3)
        self.assertTrue(model.compiled)

    def test_apply_group_sparsity_returns_an_uncompiled_copy(self):
        model = _model()
        sparse = kprune.sparsity.apply_group_sparsity(model, 0.1)
        self.assertFalse(sparse.compiled)
        self.assertTrue(model.compiled)

    def test_lambda_loss(self):
        model = _model(loss=lambda a, b: keras.ops.mean(keras.ops.abs(a - b)))
        with warnings.catch_warnings():  # Keras warns when serializing lambdas
            warnings.filterwarnings("ignore", message=".*lambda")
            slim = kprune.surgery.slim(_zero_unit_and_input(model))
        self.assertCompiledLike(slim, model)

    def test_not_compiled_restores_the_flag_on_error(self):
        model = _model()
        with self.assertRaisesRegex(RuntimeError, "boom"):
            with not_compiled(model):
                self.assertFalse(model.compiled)
                raise RuntimeError("boom")
        self.assertTrue(model.compiled)

    def test_uncopyable_settings_warn_and_leave_uncompiled(self):
        model = _model()
        with not_compiled(model):
            new = keras.models.clone_model(model)
        model._compile_config.config["optimizer"] = object()  # neither works
        with self.assertWarnsRegex(UserWarning, "not compiled"):
            self.assertFalse(compile_like(new, model))
        self.assertFalse(new.compiled)

    def test_uncompiled_model_gives_uncompiled_copy(self):
        inputs = keras.Input((4,))
        model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
        self.assertFalse(kprune.surgery.slim(model).compiled)


def test_a_rebuilt_model_builds_its_fresh_optimizer_when_it_trains():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(6, name="h"), keras.layers.Dense(2)]
    )
    model.compile(keras.optimizers.Adam(1e-3), "mse", metrics=["mae"])
    x = np.ones((8, 4), "float32")
    model.fit(x, np.zeros((8, 2)), epochs=1, verbose=0)
    small = kprune.surgery.remove_units(model, {"h": [0, 1]})
    assert small.compiled and small.optimizer is not model.optimizer
    assert small.optimizer.get_config()["learning_rate"] == pytest.approx(1e-3)
    history = small.fit(x, np.zeros((8, 2)), epochs=1, verbose=0)
    assert "mae" in history.history and small.optimizer.built
