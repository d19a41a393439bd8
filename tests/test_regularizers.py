"""GroupLasso / SparseGroupLasso regularizers and apply_group_sparsity."""

import math
import warnings

import keras
import numpy as np

import kprune
from kprune.regularizers import GroupLasso, SparseGroupLasso
from kprune.sparsity import apply_group_sparsity


def to_np(x):
    return keras.ops.convert_to_numpy(x)


def mlp():
    return keras.Sequential(
        [
            keras.Input((12,)),
            keras.layers.Dense(16, activation="relu", name="h1"),
            keras.layers.Dense(8, activation="relu", name="h2"),
            keras.layers.Dense(3, name="out"),
        ]
    )


class RegularizerValueTest(kprune.testing.TestCase):
    def test_group_lasso_value(self):
        kernel = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
        want = 0.2 * 2.0 * math.sqrt(5) * np.linalg.norm(kernel, axis=0).sum()
        got = float(GroupLasso(0.2, scale=2.0)(keras.Variable(kernel)))
        self.assertAlmostEqual(got, want, places=4)

    def test_sparse_group_lasso_value(self):
        kernel = np.random.default_rng(1).normal(size=(3, 3, 2, 4)).astype("float32")
        p = 3 * 3 * 2
        gl = math.sqrt(p) * np.linalg.norm(kernel.reshape(p, 4), axis=0).sum()
        want = 0.1 * (0.7 * gl + 0.3 * np.abs(kernel).sum())
        got = float(SparseGroupLasso(0.1, alpha=0.3)(keras.Variable(kernel)))
        self.assertAlmostEqual(got, want, places=4)

    def test_depthwise_axis(self):
        kernel = np.random.default_rng(2).normal(size=(3, 3, 4, 2)).astype("float32")
        norms = np.linalg.norm(kernel.reshape(9, 8), axis=0)
        want = 0.1 * 3.0 * norms.sum()
        got = float(GroupLasso(0.1, axis=(-2, -1))(keras.Variable(kernel)))
        self.assertAlmostEqual(got, want, places=4)

    def test_proximal_mode_adds_nothing_to_the_loss(self):
        kernel = keras.Variable(np.ones((4, 2), "float32"))
        self.assertEqual(float(GroupLasso(1.0, mode="proximal")(kernel)), 0.0)
        self.assertEqual(float(SparseGroupLasso(1.0, mode="proximal")(kernel)), 0.0)

    def test_strength_variable_changes_the_penalty(self):
        reg = GroupLasso(0.1)
        self.assertIsInstance(reg.strength, keras.Variable)
        self.assertFalse(reg.strength.trainable)
        kernel = keras.Variable(np.ones((4, 2), "float32"))
        before = float(reg(kernel))
        reg.strength.assign(0.3)
        self.assertAlmostEqual(float(reg(kernel)), 3 * before, places=5)
        self.assertAlmostEqual(reg.get_config()["strength"], 0.3)

    def test_strength_variable_is_not_a_layer_weight(self):
        layer = keras.layers.Dense(3, kernel_regularizer=GroupLasso(0.1))
        layer.build((None, 4))
        self.assertEqual(len(layer.weights), 2)
        self.assertEqual(len(layer.losses), 1)

    def test_bad_arguments_raise(self):
        with self.assertRaisesRegex(ValueError, "strength"):
            GroupLasso(-1.0)
        with self.assertRaisesRegex(ValueError, "alpha"):
            SparseGroupLasso(0.1, alpha=1.5)
        with self.assertRaisesRegex(ValueError, "mode"):
            GroupLasso(0.1, mode="prox")
        with self.assertRaisesRegex(ValueError, "axis"):
            GroupLasso(0.1, axis="last")
        with self.assertRaisesRegex(ValueError, "scale"):
            GroupLasso(0.1, scale=-2)


class RegularizerSerializationTest(kprune.testing.TestCase):
    def test_config_round_trip(self):
        for reg in (
            GroupLasso(0.05, scale=0.5, axis=(-2, -1), mode="proximal"),
            SparseGroupLasso(1e-3, alpha=0.25),
        ):
            with self.subTest(type(reg).__name__):
                config = reg.get_config()
                for key in ("strength", "scale"):
                    self.assertIs(type(config[key]), float)
                copy = self.run_serialization_test(reg)
                self.assertEqual(copy.get_config(), config)
        self.assertEqual(GroupLasso(0.05).get_config()["strength"], 0.05)
        self.assertEqual(GroupLasso(axis=(-2, -1)).get_config()["axis"], [-2, -1])
        self.assertNotIn("alpha", GroupLasso().get_config())

    def test_keras_file_round_trip(self):
        inputs = keras.Input((6, 6, 3))
        x = keras.layers.Conv2D(
            4, 3, kernel_regularizer=SparseGroupLasso(0.01, alpha=0.5), name="conv"
        )(inputs)
        x = keras.layers.DepthwiseConv2D(
            3, depthwise_regularizer=GroupLasso(0.02, axis=(-2, -1), mode="proximal")
        )(x)
        x = keras.layers.Flatten()(x)
        x = keras.layers.Dense(5, kernel_regularizer=GroupLasso(0.03, scale=0.5))(x)
        outputs = keras.layers.Dense(2)(x)
        model = keras.Model(inputs, outputs)
        model.layers[-2].kernel_regularizer.strength.assign(0.04)
        data = np.random.default_rng(0).normal(size=(2, 6, 6, 3)).astype("float32")
        loaded = self.run_model_saving_test(model, data)
        regs = [
            (
                type(layer.kernel_regularizer).__name__,
                layer.kernel_regularizer.get_config(),
            )
            for layer in loaded.layers
            if isinstance(getattr(layer, "kernel_regularizer", None), GroupLasso)
        ]
        self.assertEqual(
            regs,
            [
                (
                    "GroupLasso",
                    {"strength": 0.04, "scale": 0.5, "axis": -1, "mode": "penalty"},
                )
            ],
        )
        dw = loaded.layers[2].depthwise_regularizer
        self.assertEqual(dw.axis, (-2, -1))
        self.assertEqual(dw.mode, "proximal")
        conv = loaded.get_layer("conv").kernel_regularizer
        self.assertIsInstance(conv, SparseGroupLasso)
        self.assertEqual(conv.alpha, 0.5)
        # The revived regularizers own fresh strength variables.
        self.assertIsNot(
            conv.strength, model.get_layer("conv").kernel_regularizer.strength
        )


class ApplyGroupSparsityTest(kprune.testing.TestCase):
    def test_clone_with_regularizers_except_output(self):
        model = mlp()
        data = np.random.default_rng(0).normal(size=(4, 12)).astype("float32")
        sparse = apply_group_sparsity(model, 1e-3)
        self.assertIsNot(sparse, model)
        for name in ("h1", "h2"):
            reg = sparse.get_layer(name).kernel_regularizer
            self.assertIsInstance(reg, GroupLasso)
            self.assertEqual(reg.mode, "proximal")
            self.assertIsNone(model.get_layer(name).kernel_regularizer)
        self.assertIsNone(sparse.get_layer("out").kernel_regularizer)
        self.assertSameOutputs(model, sparse, data, rtol=1e-6)
        # The clone owns its weights.
        sparse.get_layer("h1").kernel.assign(np.zeros((12, 16), "float32"))
        self.assertGreater(float(np.abs(to_np(model.get_layer("h1").kernel)).sum()), 0)

    def test_sparse_group_lasso_penalty_mode_and_scales(self):
        model = mlp()
        sparse = apply_group_sparsity(
            model,
            0.01,
            alpha=0.5,
            first_layer_scale=0.1,
            strength_per_layer={"h2": 0.05},
            mode="penalty",
        )
        h1 = sparse.get_layer("h1").kernel_regularizer
        h2 = sparse.get_layer("h2").kernel_regularizer
        self.assertIsInstance(h1, SparseGroupLasso)
        self.assertEqual((h1.alpha, h1.mode), (0.5, "penalty"))
        self.assertAlmostEqual(h1.effective_strength(), 0.001)
        self.assertAlmostEqual(h2.effective_strength(), 0.05)
        self.assertGreater(len(sparse.losses), 0)

    def test_functional_branches_and_conv_kinds(self):
        inputs = keras.Input((8, 8, 3))
        a = keras.layers.Conv2D(4, 3, padding="same", name="a")(inputs)
        b = keras.layers.SeparableConv2D(4, 3, padding="same", name="b")(inputs)
        x = keras.layers.Add()([a, b])
        x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
        x = keras.layers.Conv2DTranspose(6, 3, name="tr")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        left = keras.layers.Dense(3, name="left")(x)
        right = keras.layers.Dense(3, name="right")(x)
        outputs = keras.layers.Activation("softmax")(keras.layers.Add()([left, right]))
        model = keras.Model(inputs, outputs)
        sparse = apply_group_sparsity(model, 1e-3, first_layer_scale=0.5)
        got = {}
        for layer in sparse.layers:
            for attr in (
                "kernel_regularizer",
                "depthwise_regularizer",
                "pointwise_regularizer",
            ):
                reg = getattr(layer, attr, None)
                if reg is not None:
                    got[layer.name] = (attr, reg.axis, reg.scale)
        self.assertEqual(
            got,
            {
                "a": ("kernel_regularizer", -1, 0.5),
                "b": ("pointwise_regularizer", -1, 0.5),
                "dw": ("depthwise_regularizer", (-2, -1), 1.0),
                "tr": ("kernel_regularizer", -2, 1.0),
            },
        )
        data = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
        self.assertSameOutputs(model, sparse, data)

    def test_nested_model(self):
        inner = keras.Sequential(
            [keras.Input((6,)), keras.layers.Dense(5, name="inner_dense")], name="block"
        )
        inputs = keras.Input((6,))
        x = inner(inputs)
        outputs = keras.layers.Dense(2, name="head")(
            keras.layers.Dense(4, name="mid")(x)
        )
        model = keras.Model(inputs, outputs)
        sparse = apply_group_sparsity(model, 1e-3)
        block = sparse.get_layer("block")
        self.assertIsInstance(
            block.get_layer("inner_dense").kernel_regularizer, GroupLasso
        )
        self.assertIsInstance(sparse.get_layer("mid").kernel_regularizer, GroupLasso)
        self.assertIsNone(sparse.get_layer("head").kernel_regularizer)
        self.assertIsNone(inner.get_layer("inner_dense").kernel_regularizer)
        data = np.ones((2, 6), "float32")
        self.assertSameOutputs(model, sparse, data)

    def test_named_layers_and_bad_inputs(self):
        model = mlp()
        sparse = apply_group_sparsity(model, 1e-3, layers=["h2"])
        self.assertIsNone(sparse.get_layer("h1").kernel_regularizer)
        self.assertIsNotNone(sparse.get_layer("h2").kernel_regularizer)
        with self.assertRaisesRegex(ValueError, "outputs.*Received: layers"):
            apply_group_sparsity(model, 1e-3, layers=["out"])
        with self.assertRaisesRegex(ValueError, "No layer named 'nope'"):
            apply_group_sparsity(model, 1e-3, layers=["nope"])
        with self.assertRaisesRegex(ValueError, "strength_per_layer"):
            apply_group_sparsity(model, 1e-3, strength_per_layer={"out": 1.0})
        with self.assertRaisesRegex(ValueError, "strength"):
            apply_group_sparsity(model, -1.0)
        with self.assertRaisesRegex(ValueError, "mode"):
            apply_group_sparsity(model, 1e-3, mode="both")
        single = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        with self.assertRaisesRegex(ValueError, "no trainable hidden"):
            apply_group_sparsity(single, 1e-3)

        class Sub(keras.Model):
            def __init__(self):
                super().__init__()
                self.d = keras.layers.Dense(2)

            def call(self, x):
                return self.d(x)

        sub = Sub()
        sub(np.ones((1, 3)))
        with self.assertRaisesRegex(ValueError, "Sequential and Functional"):
            apply_group_sparsity(sub, 1e-3)
        with self.assertRaisesRegex(ValueError, "not built"):
            apply_group_sparsity(keras.Sequential([keras.layers.Dense(2)]), 1e-3)

    def test_replacing_a_foreign_regularizer_warns(self):
        model = keras.Sequential(
            [
                keras.Input((4,)),
                keras.layers.Dense(3, kernel_regularizer="l2", name="h"),
                keras.layers.Dense(1),
            ]
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sparse = apply_group_sparsity(model, 1e-3)
        self.assertTrue(any("replacing" in str(w.message) for w in caught))
        self.assertIsInstance(sparse.get_layer("h").kernel_regularizer, GroupLasso)
