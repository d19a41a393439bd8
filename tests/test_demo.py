"""`kprune demo` end to end (smoke run) and the shipped MNIST subset."""

import contextlib
import io
import json
import os

import numpy as np

from kprune import cli, demo
from kprune.data import MNIST_SUBSET_PATH, load_mnist, load_mnist_subset
from kprune.testing import TestCase


class MnistSubsetTest(TestCase):
    def test_shipped_subset(self):
        (x, y), (x_test, y_test) = load_mnist_subset()
        self.assertEqual(x.shape, (10000, 28, 28))
        self.assertEqual(x_test.shape, (2000, 28, 28))
        self.assertEqual(x.dtype, np.uint8)
        self.assertEqual(sorted(np.unique(y).tolist()), list(range(10)))
        self.assertEqual(len(y_test), 2000)
        self.assertLessEqual(os.path.getsize(MNIST_SUBSET_PATH), 2_000_000)

    def test_load_mnist_subset_says_so(self):
        (x, _), _, text = load_mnist("subset")
        self.assertEqual(len(x), 10000)
        self.assertIn("subset shipped with kprune", text)

    def test_bad_source(self):
        with self.assertRaisesRegex(ValueError, "Received: source='web'"):
            load_mnist("web")


class DemoTest(TestCase):
    def test_lenet5_shape(self):
        model = demo.lenet5()
        self.assertEqual(model.count_params(), 431080)
        self.assertEqual(model.get_layer("conv1").padding, "valid")

    def test_quick_run(self):
        out = self.tmp_path("demo")
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            status = demo.main(["--quick", "--out", out, "--latency-runs", "3"])
        text = buffer.getvalue()
        self.assertEqual(status, 0)
        self.assertIn("data: MNIST subset shipped with kprune", text)
        self.assertIn("TFLite test accuracy", text)
        for name in (
            "lenet5_sparse.keras",
            "lenet5_slim.keras",
            "lenet5_sparse.tflite",
            "lenet5_slim.tflite",
            "train_log.csv",
            "report.json",
            "widths.png",
        ):
            path = os.path.join(out, name)
            self.assertTrue(os.path.isfile(path), path)
            self.assertGreater(os.path.getsize(path), 0, path)
        with open(os.path.join(out, "report.json")) as f:
            report = json.load(f)
        comparison = report["comparison"]
        # Training zeroed whole units and slim removed them.
        self.assertLess(comparison["params"]["after"], comparison["params"]["before"])
        self.assertLess(comparison["macs"]["after"], comparison["macs"]["before"])
        tflite = report["tflite"]
        self.assertLess(tflite["after"]["bytes"], tflite["before"]["bytes"])
        # slim is exact, and the TFLite files compute what Keras computes.
        accuracy = report["keras_accuracy"]
        self.assertAlmostEqual(accuracy["before"], accuracy["after"], delta=1 / 256)
        self.assertAlmostEqual(
            tflite["after"]["accuracy"], accuracy["after"], delta=1 / 256
        )
        with open(os.path.join(out, "train_log.csv")) as f:
            header = f.readline()
        self.assertIn("live_units/conv2", header)

    def test_bad_arguments(self):
        with self.assertRaisesRegex(ValueError, "Received: --epochs=0"):
            demo.main(["--epochs", "0"])
        with contextlib.redirect_stderr(io.StringIO()):
            with self.assertRaises(SystemExit):
                demo.main(["--data", "web"])

    def test_cli_forwards_to_demo(self):
        with contextlib.redirect_stdout(io.StringIO()) as buffer:
            with self.assertRaises(SystemExit) as exit_:
                cli.main(["demo", "--help"])
        self.assertEqual(exit_.exception.code, 0)
        self.assertIn("--quick", buffer.getvalue())
