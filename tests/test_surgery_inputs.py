"""`drop_input_features` / `slim(prune_inputs=True)` and `SelectFeatures`."""

import keras
import numpy as np
import pytest

import kprune
from kprune.surgery import SelectFeatures, drop_input_features
from kprune.testing import TestCase

L = keras.layers


def mlp(n_in=10, zero_rows=(1, 4, 7)):
    inputs = keras.Input((n_in,), name="pixels")
    x = L.Dense(6, activation="relu", name="fc1")(inputs)
    x = L.Dense(5, activation="relu", name="fc2")(x)
    model = keras.Model(inputs, L.Dense(3, name="out")(x), name="mlp")
    kernel, bias = model.get_layer("fc1").get_weights()
    kernel[list(zero_rows)] = 0.0
    model.get_layer("fc1").set_weights([kernel, bias])
    return model


def data(n_in=10, n=16, seed=0):
    return np.random.default_rng(seed).normal(size=(n, n_in)).astype("float32")


def zero_rows(model, layer, rows):
    kernel, bias = model.get_layer(layer).get_weights()
    kernel[list(rows)] = 0.0
    model.get_layer(layer).set_weights([kernel, bias])


class SelectFeaturesTest(TestCase):
    def test_gathers_and_round_trips(self):
        layer = SelectFeatures([3, 0, 2], name="pick")
        out = keras.ops.convert_to_numpy(layer(np.arange(8.0).reshape(2, 4)))
        np.testing.assert_array_equal(out, [[3.0, 0.0, 2.0], [7.0, 4.0, 6.0]])
        copy = self.run_serialization_test(layer)
        self.assertEqual(copy.indices, [3, 0, 2])
        self.assertEqual(layer.compute_output_shape((None, 4)), (None, 3))

    def test_bad_indices_raise(self):
        for bad in ([], [[0, 1]], [-1, 2], [0.5]):
            with self.subTest(indices=bad):
                with self.assertRaisesRegex(ValueError, "Received: indices="):
                    SelectFeatures(bad)
        with self.assertRaisesRegex(ValueError, "input has 3 features"):
            SelectFeatures([0, 5])(np.zeros((1, 3), "float32"))


class DropInputFeaturesTest(TestCase):
    def test_exact_outputs_shapes_and_macs(self):
        model = mlp()
        small = drop_input_features(model)
        self.assertSameOutputs(model, small, data(), rtol=1e-6)
        self.assertEqual(small.get_layer("fc1").kernel.shape, (7, 6))
        self.assertEqual(small.get_layer("fc2").kernel.shape, (6, 5))
        select = [x for x in small.layers if isinstance(x, SelectFeatures)]
        self.assertEqual(len(select), 1)
        self.assertEqual(select[0].indices, [0, 2, 3, 5, 6, 8, 9])
        # Same input signature, names kept, MACs counted at the new width.
        self.assertEqual(tuple(small.inputs[0].shape), (None, 10))
        self.assertEqual(
            [x.name for x in small.layers if not isinstance(x, SelectFeatures)],
            [x.name for x in model.layers],
        )
        before = kprune.report.summary(model)["macs"]
        after = kprune.report.summary(small)["macs"]
        self.assertEqual(before - after, 3 * 6)

    def test_does_not_mutate_input_model(self):
        model = mlp()
        weights = [w.copy() for w in model.get_weights()]
        names = [x.name for x in model.layers]
        drop_input_features(model)
        kprune.surgery.slim(model, prune_inputs=True)
        self.assertEqual([x.name for x in model.layers], names)
        for old, new in zip(weights, model.get_weights()):
            np.testing.assert_array_equal(old, new)
        self.assertEqual(model.get_layer("fc1").kernel.shape, (10, 6))

    def test_two_readers_keep_the_union(self):
        inputs = keras.Input((8,), name="x")
        a = L.Dense(4, name="a")(inputs)
        b = L.Dense(3, name="b")(inputs)
        model = keras.Model(inputs, L.Concatenate()([a, b]))
        zero_rows(model, "a", [0, 1, 2, 5])
        zero_rows(model, "b", [0, 2, 3, 5])  # 0, 2, 5 are zero in both
        small = drop_input_features(model)
        self.assertSameOutputs(model, small, data(8), rtol=1e-6)
        self.assertEqual(small.get_layer("a").kernel.shape, (5, 4))
        self.assertEqual(small.get_layer("b").kernel.shape, (5, 3))
        select = [x for x in small.layers if isinstance(x, SelectFeatures)]
        self.assertEqual(len(select), 1)  # one gather feeds both readers
        self.assertEqual(select[0].indices, [1, 3, 4, 6, 7])

    def test_non_qualifying_inputs_are_left_alone(self):
        image = keras.Input((6, 6, 2), name="image")
        conv = L.Conv2D(3, 3, name="conv")(image)
        flat = keras.Input((5,), name="flat")
        mixed = L.Add(name="add")([L.Dense(5, name="d")(flat), flat])
        out = L.Concatenate()([L.GlobalAveragePooling2D()(conv), mixed])
        model = keras.Model([image, flat], out)
        zero_rows(model, "d", [0, 1])
        kernel, bias = model.get_layer("conv").get_weights()
        kernel[:, :, 0] = 0.0  # input channel 0 of the image is unused
        model.get_layer("conv").set_weights([kernel, bias])
        small = drop_input_features(model)
        self.assertFalse(any(isinstance(x, SelectFeatures) for x in small.layers))
        self.assertEqual(small.get_layer("d").kernel.shape, (5, 5))
        self.assertEqual(small.get_layer("conv").kernel.shape, (3, 3, 2, 3))
        self.assertIsNot(small, model)
        inputs = [
            np.random.default_rng(1).random((4, 6, 6, 2)).astype("float32"),
            data(5, 4),
        ]
        self.assertSameOutputs(model, small, inputs, rtol=1e-6)

    def test_shared_reader_is_left_alone(self):
        inputs = keras.Input((4,), name="x")
        shared = L.Dense(4, name="shared")
        model = keras.Model(inputs, shared(shared(inputs)))
        zero_rows(model, "shared", [0])
        small = drop_input_features(model)
        self.assertEqual(small.get_layer("shared").kernel.shape, (4, 4))
        self.assertSameOutputs(model, small, data(4), rtol=1e-6)

    def test_sequential(self):
        model = keras.Sequential(
            [keras.Input((10,)), L.Dense(6, name="fc1"), L.Dense(2, name="out")],
            name="seq",
        )
        zero_rows(model, "fc1", [2, 3])
        small = drop_input_features(model)
        self.assertIsInstance(small, keras.Sequential)
        self.assertEqual(small.get_layer("fc1").kernel.shape, (8, 6))
        self.assertSameOutputs(model, small, data(), rtol=1e-6)

    def test_slim_prune_inputs_and_second_slim(self):
        model = mlp()
        kernel, bias = model.get_layer("fc1").get_weights()
        kernel[:, 2], bias[2] = 0.0, 0.0  # a dead unit of fc1
        model.get_layer("fc1").set_weights([kernel, bias])
        plain = kprune.surgery.slim(model)
        self.assertEqual(plain.get_layer("fc1").kernel.shape, (10, 5))
        small = kprune.surgery.slim(model, prune_inputs=True)
        self.assertEqual(small.get_layer("fc1").kernel.shape, (7, 5))
        self.assertSameOutputs(model, small, data(), rtol=1e-6)
        # A second slim: kill pixel 0, a unit of fc1 and one of fc2.
        zero_rows(small, "fc1", [0])
        for name in ("fc1", "fc2"):
            kernel, bias = small.get_layer(name).get_weights()
            kernel[:, 1], bias[1] = 0.0, 0.0
            small.get_layer(name).set_weights([kernel, bias])
        again = kprune.surgery.slim(small, prune_inputs=True)
        self.assertEqual(again.get_layer("fc1").kernel.shape, (6, 4))
        self.assertEqual(again.get_layer("fc2").kernel.shape, (4, 4))
        select = [x for x in again.layers if isinstance(x, SelectFeatures)]
        self.assertEqual(select[0].indices, [2, 3, 5, 6, 8, 9])
        self.assertSameOutputs(small, again, data(), rtol=1e-6)

    def test_save_and_load(self):
        small = drop_input_features(mlp())
        loaded = self.run_model_saving_test(small, data())
        self.assertIsInstance(loaded.layers[1], SelectFeatures)

    @pytest.mark.tensorflow_only(
        reason="to_tflite converts through TensorFlow; from JAX the route is "
        "`kprune export` (tests/test_backends_surgery.py)"
    )
    def test_tflite_export_gathers(self):
        model = mlp()
        small = drop_input_features(model)
        path = kprune.export.to_tflite(
            small, self.tmp_path("mlp.tflite"), sample_inputs=data()
        )
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=path)
        ops = {op["op_name"] for op in interpreter._get_ops_details()}
        self.assertIn("GATHER", ops)
        diff = kprune.export.verify_tflite(path, model, sample_inputs=data())
        self.assertLessEqual(diff, 1e-5)
