"""Tests for the `kprune` command line (called in-process through `main`)."""

import contextlib
import io
import json
import os
import sys
import types
from unittest import mock

import keras
import numpy as np

import kprune
from kprune import cli
from kprune.testing import TestCase


def run(argv):
    """Call `cli.main(argv)`, return (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def tiny_model():
    """5 -> 4 (relu) -> 2, with hidden unit 1 dead (incoming weights, bias 0)."""
    model = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(4, activation="relu", name="hidden"),
            keras.layers.Dense(2, name="out"),
        ],
        name="tiny",
    )
    hidden = model.get_layer("hidden")
    kernel = keras.ops.convert_to_numpy(hidden.kernel).copy()
    kernel[:, 1] = 0.0
    hidden.kernel.assign(kernel)
    hidden.bias.assign(np.array([0.1, 0.0, 0.2, 0.3], "float32"))
    return model


class CliTest(TestCase):
    def setUp(self):
        super().setUp()
        self.model_path = self.tmp_path("tiny.keras")
        tiny_model().save(self.model_path)

    def assertOneLineError(self, code, err, fragment):
        self.assertNotEqual(code, 0)
        self.assertNotIn("Traceback", err)
        lines = [line for line in err.splitlines() if line.startswith("kprune:")]
        self.assertEqual(len(lines), 1, err)
        self.assertTrue(lines[0].startswith("kprune: error: "), err)
        self.assertIn(fragment, lines[0])

    def test_inspect_prints_the_table(self):
        code, out, _ = run(["inspect", self.model_path])
        self.assertEqual(code, 0)
        self.assertIn("model: tiny", out)
        self.assertIn("hidden", out)
        self.assertIn("params: 34", out)
        self.assertIn("macs: 28", out)  # 5*4 + 4*2

    def test_inspect_json(self):
        code, out, _ = run(["inspect", self.model_path, "--json"])
        self.assertEqual(code, 0)
        data = json.loads(out)
        self.assertEqual(data["params"], 34)
        self.assertEqual(data["widths"], {"hidden": 4, "out": 2})

    def test_inspect_with_input_shape(self):
        path = self.tmp_path("conv.keras")
        keras.Sequential(
            [keras.Input((None, None, 3)), keras.layers.Conv2D(4, 3, name="conv")]
        ).save(path)
        code, out, _ = run(["inspect", path, "--json", "--input-shape", "10,10,3"])
        self.assertEqual(code, 0)
        self.assertEqual(json.loads(out)["macs"], 8 * 8 * 3 * 3 * 3 * 4)
        code, _, err = run(["inspect", path, "--input-shape", "ten"])
        self.assertEqual(code, 2)
        self.assertIn("comma-separated integers", err)

    def test_bad_paths_give_one_line(self):
        code, _, err = run(["inspect", self.tmp_path("missing.keras")])
        self.assertOneLineError(code, err, "no such file")
        not_keras = self.tmp_path("model.h5")
        with open(not_keras, "w") as f:
            f.write("not a model")
        code, _, err = run(["inspect", not_keras])
        self.assertOneLineError(code, err, "not a .keras file")
        corrupt = self.tmp_path("corrupt.keras")
        with open(corrupt, "wb") as f:
            f.write(b"\x00garbage" * 10)
        code, _, err = run(["inspect", corrupt])
        self.assertOneLineError(code, err, "not a valid .keras file")
        code, _, err = run(["inspect", self.tmp_dir])
        self.assertOneLineError(code, err, "folder")

    def test_kprune_errors_are_one_line(self):
        def broken(model, **kwargs):
            raise ValueError("Layer 'x' is not supported.\nRegister a handler.")

        with mock.patch("kprune.report.summary", broken):
            code, _, err = run(["inspect", self.model_path])
        self.assertOneLineError(
            code, err, "Layer 'x' is not supported. Register a handler."
        )

    def test_usage_errors(self):
        self.assertEqual(run([])[0], 2)
        code, _, err = run(
            ["export", self.model_path, "x.tflite", "--quantize", "int4"]
        )
        self.assertEqual(code, 2)
        self.assertIn("invalid choice", err)
        self.assertEqual(run(["--help"])[0], 0)

    def test_export(self):
        out_path = self.tmp_path("tiny.tflite")
        code, out, _ = run(["export", self.model_path, out_path])
        self.assertEqual(code, 0)
        self.assertTrue(os.path.isfile(out_path))
        self.assertIn("verified against Keras", out)
        self.assertIn(f"{os.path.getsize(out_path):,} bytes", out)

    def test_export_int8_says_it_uses_random_data(self):
        out_path = self.tmp_path("tiny8.tflite")
        code, out, err = run(
            ["export", self.model_path, out_path, "--quantize", "int8", "--sparse"]
        )
        self.assertEqual(code, 0, err)
        self.assertIn("random inputs", err)
        self.assertIn("quantize=int8", out)

    def test_export_bad_output_folder(self):
        code, _, err = run(["export", self.model_path, self.tmp_path("no/x.tflite")])
        self.assertOneLineError(code, err, "does not exist")

    def test_slim_removes_the_dead_unit(self):
        out_path = self.tmp_path("slim.keras")
        code, out, err = run(["slim", self.model_path, out_path])
        self.assertEqual(code, 0, err)
        self.assertIn("params: 34 -> 26", out)
        slimmed = keras.models.load_model(out_path)
        self.assertEqual(slimmed.get_layer("hidden").units, 3)
        x = np.random.default_rng(0).random((4, 5)).astype("float32")
        self.assertSameOutputs(keras.models.load_model(self.model_path), slimmed, x)

    def test_slim_with_plan(self):
        plan_path = self.tmp_path("plan.json")
        with open(plan_path, "w") as f:
            json.dump({"units": {"hidden": [0, 2]}}, f)
        out_path = self.tmp_path("planned.keras")
        code, out, err = run(["slim", self.model_path, out_path, "--plan", plan_path])
        self.assertEqual(code, 0, err)
        self.assertEqual(keras.models.load_model(out_path).get_layer("hidden").units, 2)
        self.assertIn("4 -> 2", out)

    def test_slim_bad_arguments(self):
        code, _, err = run(["slim", self.model_path, self.tmp_path("out.h5")])
        self.assertOneLineError(code, err, "must end with .keras")
        code, _, err = run(
            ["slim", self.model_path, self.tmp_path("o.keras"), "--plan", "nope.json"]
        )
        self.assertOneLineError(code, err, "no such plan file")
        bad_plan = self.tmp_path("bad.json")
        with open(bad_plan, "w") as f:
            f.write("{not json")
        code, _, err = run(
            ["slim", self.model_path, self.tmp_path("o.keras"), "--plan", bad_plan]
        )
        self.assertOneLineError(code, err, "not valid JSON")

    def test_demo_is_forwarded(self):
        seen = []
        fake = types.ModuleType("kprune.demo")
        fake.main = lambda argv: seen.append(argv) or 0
        # `import kprune.demo as demo` reads the package attribute when the
        # real module was imported earlier (e.g. by tests/test_demo.py).
        with (
            mock.patch.dict(sys.modules, {"kprune.demo": fake}),
            mock.patch.object(kprune, "demo", fake, create=True),
        ):
            code, _, _ = run(["demo", "--epochs", "1"])
        self.assertEqual(code, 0)
        self.assertEqual(seen, [["--epochs", "1"]])
