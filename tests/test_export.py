"""Tests for kprune.export: TFLite conversion, verification, measurement."""

import os
from unittest import mock

import keras
import numpy as np

from kprune import export
from kprune.export import tflite as tflite_module
from kprune.testing import TestCase


def small_cnn():
    inputs = keras.Input((12, 12, 3), name="image")
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inputs)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(16, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(5, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name="small_cnn")


def lenet_300_100(sparsity=0.9, seed=0):
    model = keras.Sequential(
        [
            keras.Input((784,)),
            keras.layers.Dense(300, activation="relu"),
            keras.layers.Dense(100, activation="relu"),
            keras.layers.Dense(10),
        ],
        name="lenet_300_100",
    )
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        kernel = keras.ops.convert_to_numpy(layer.kernel)
        kernel[rng.random(kernel.shape) < sparsity] = 0.0
        layer.kernel.assign(kernel)
    return model


def two_in_two_out():
    a = keras.Input((4,), name="zeta")
    b = keras.Input((3,), name="alpha")
    x = keras.layers.Concatenate()([a, b])
    first = keras.layers.Dense(2, name="z_out")(x)
    second = keras.layers.Dense(3, name="a_out")(keras.layers.Dense(6)(x))
    return keras.Model({"zeta": a, "alpha": b}, {"second": second, "first": first})


def images(n, seed=0):
    return np.random.default_rng(seed).random((n, 12, 12, 3)).astype("float32")


class ToTFLiteTest(TestCase):
    def test_every_quantization_mode_round_trips(self):
        model = small_cnn()
        data = images(32)
        sizes = {}
        for mode in export.QUANTIZE_MODES:
            with self.subTest(quantize=mode):
                path = export.to_tflite(
                    model,
                    self.tmp_path(f"cnn_{mode}.tflite"),
                    quantize=mode,
                    representative_data=data if mode == "int8" else None,
                )
                self.assertTrue(os.path.isfile(path))
                diff = export.verify_tflite(
                    path, model, sample_inputs=data[:8], quantize=mode
                )
                self.assertLessEqual(diff, export.DEFAULT_TOLERANCES[mode])
                sizes[mode] = os.path.getsize(path)
        # float32 is exact to float rounding; quantized files are smaller.
        self.assertLess(
            export.verify_tflite(
                self.tmp_path("cnn_None.tflite"), model, sample_inputs=data[:8]
            ),
            1e-5,
        )
        for mode in ("float16", "dynamic", "int8"):
            self.assertLess(sizes[mode], sizes[None])

    def test_int8_with_integer_io(self):
        from ai_edge_litert.interpreter import Interpreter

        model = small_cnn()
        path = export.to_tflite(
            model,
            self.tmp_path("cnn_int8_io.tflite"),
            quantize="int8",
            representative_data=images(32),
            integer_io=True,
        )
        runner = Interpreter(model_path=path).get_signature_runner()
        self.assertEqual(runner.get_input_details()["image"]["dtype"], np.int8)
        self.assertEqual(runner.get_output_details()["probs"]["dtype"], np.int8)

    def test_int8_without_data_is_an_error(self):
        with self.assertRaisesRegex(ValueError, "representative_data"):
            export.to_tflite(small_cnn(), self.tmp_path("x.tflite"), quantize="int8")

    def test_bad_quantize_names_the_argument(self):
        with self.assertRaisesRegex(ValueError, r"Received: quantize='int4'"):
            export.to_tflite(small_cnn(), self.tmp_path("x.tflite"), quantize="int4")
        with self.assertRaisesRegex(ValueError, "integer_io"):
            export.to_tflite(small_cnn(), self.tmp_path("x.tflite"), integer_io=True)

    def test_missing_folder_is_an_error(self):
        with self.assertRaisesRegex(ValueError, "path"):
            export.to_tflite(small_cnn(), self.tmp_path("nope/x.tflite"))

    def test_representative_data_forms(self):
        import tensorflow as tf

        model = small_cnn()
        data = images(16)
        labels = np.zeros((16,), "int32")
        dataset = tf.data.Dataset.from_tensor_slices((data, labels)).batch(4)
        forms = {
            "dataset_xy": dataset,
            "callable": lambda: iter([data[:8], data[8:]]),
        }
        for name, form in forms.items():
            with self.subTest(form=name):
                samples = export.representative_samples(model, form, max_samples=10)
                self.assertEqual(len(samples), 10)
                self.assertEqual(samples[0][0].shape, (1, 12, 12, 3))
                np.testing.assert_allclose(samples[5][0][0], data[5])
        path = export.to_tflite(
            model,
            self.tmp_path("ds.tflite"),
            quantize="int8",
            representative_data=dataset,
        )
        self.assertTrue(os.path.isfile(path))

    def test_multiple_inputs_and_outputs_match_by_name(self):
        from ai_edge_litert.interpreter import Interpreter

        model = two_in_two_out()
        rng = np.random.default_rng(1)
        inputs = {
            "zeta": rng.random((5, 4)).astype("float32"),
            "alpha": rng.random((5, 3)).astype("float32"),
        }
        path = export.to_tflite(
            model, self.tmp_path("mio.tflite"), sample_inputs=inputs
        )
        signature = Interpreter(model_path=path).get_signature_list()["serving_default"]
        self.assertEqual(sorted(signature["inputs"]), ["alpha", "zeta"])
        self.assertEqual(sorted(signature["outputs"]), ["first", "second"])
        self.assertLess(export.verify_tflite(path, model, sample_inputs=inputs), 1e-5)
        # int8 with dict calibration data also goes through.
        export.to_tflite(
            model,
            self.tmp_path("mio8.tflite"),
            quantize="int8",
            representative_data={k: np.tile(v, (4, 1)) for k, v in inputs.items()},
        )

    def test_verification_failure_is_raised(self):
        model = small_cnn()
        real = tflite_module._keras_outputs

        def perturbed(model, flat):
            return [out + 0.5 for out in real(model, flat)]

        with mock.patch.object(tflite_module, "_keras_outputs", perturbed):
            with self.assertRaises(export.VerificationError) as caught:
                export.to_tflite(model, self.tmp_path("bad.tflite"))
        message = str(caught.exception)
        self.assertIn("max |tflite - keras| = 0.5", message)
        self.assertIn("tolerance 0.0001", message)
        self.assertIsInstance(caught.exception, AssertionError)

    def test_verify_against_another_model_fails(self):
        model = small_cnn()
        path = export.to_tflite(model, self.tmp_path("m.tflite"), verify=False)
        other = keras.models.clone_model(model)  # same graph, new weights
        with self.assertRaises(export.VerificationError):
            export.verify_tflite(path, other)
        # A loose tolerance accepts it.
        self.assertGreater(export.verify_tflite(path, other, tolerance=1e9), 1e-3)

    def test_model_is_not_mutated(self):
        model = small_cnn()
        before = [keras.ops.convert_to_numpy(w).copy() for w in model.weights]
        names = [layer.name for layer in model.layers]
        export.to_tflite(model, self.tmp_path("m.tflite"), quantize="dynamic")
        after = [keras.ops.convert_to_numpy(w) for w in model.weights]
        for a, b in zip(before, after):
            np.testing.assert_array_equal(a, b)
        self.assertEqual(names, [layer.name for layer in model.layers])


class SparseExportTest(TestCase):
    def test_sparse_file_is_at_least_4x_smaller(self):
        model = lenet_300_100(sparsity=0.9)
        dense = export.to_tflite(model, self.tmp_path("dense.tflite"))
        sparse = export.to_tflite(model, self.tmp_path("sparse.tflite"), sparse=True)
        dense_size = export.sizes(dense)
        sparse_size = export.sizes(sparse)
        # Measured: 1,066,384 -> 161,772 bytes (6.6x).
        self.assertLessEqual(sparse_size["bytes"] * 4, dense_size["bytes"])
        self.assertLess(dense_size["gzip_bytes"], dense_size["bytes"])

    def test_sparse_quantized_runs_and_verifies(self):
        model = lenet_300_100(sparsity=0.9)
        path = export.to_tflite(
            model, self.tmp_path("sparse_dyn.tflite"), quantize="dynamic", sparse=True
        )
        stats = export.measure_tflite(path, runs=3, warmup=1)
        self.assertIn(stats["delegate"], ("xnnpack", "none"))
        self.assertLess(stats["bytes"], 784 * 300)  # < 1 byte per dense weight


class MeasureTest(TestCase):
    def test_measure_tflite(self):
        path = export.to_tflite(small_cnn(), self.tmp_path("m.tflite"))
        stats = export.measure_tflite(path, num_threads=1, runs=10, warmup=2)
        self.assertEqual(stats["bytes"], os.path.getsize(path))
        self.assertEqual(stats["gzip_bytes"], export.sizes(path)["gzip_bytes"])
        self.assertGreater(stats["latency_ms_median"], 0.0)
        self.assertGreaterEqual(stats["latency_ms_p90"], stats["latency_ms_median"])
        self.assertEqual(stats["num_threads"], 1)
        self.assertEqual(stats["runs"], 10)
        given = export.measure_tflite(path, runs=2, sample_inputs=images(2))
        self.assertGreater(given["latency_ms_median"], 0.0)

    def test_measure_bad_arguments(self):
        path = export.to_tflite(small_cnn(), self.tmp_path("m.tflite"))
        with self.assertRaisesRegex(ValueError, "runs"):
            export.measure_tflite(path, runs=0)
        with self.assertRaisesRegex(ValueError, "path"):
            export.sizes(self.tmp_path("missing.tflite"))
