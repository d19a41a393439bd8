"""A user's first hour, API side (issue 16): strict unit indices (point 5),
masks that survive clones and configs (point 6), and the smaller points of
point 9 that need no subprocess."""

import importlib
import importlib.util
import os
import sys
import types
from unittest import mock

import keras
import numpy as np
from keras import ops

import kprune
from kprune.constraints import KeepMask
from kprune.pruning import attach_masks, get_masks
from kprune.surgery import PruningPlan, SurgeryError
from kprune.testing import TestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mlp(name="mlp"):
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(5, activation="relu", name="fc1"),
            keras.layers.Dense(4, activation="relu", name="fc2"),
            keras.layers.Dense(3, name="out"),
        ],
        name=name,
    )


class UnitIndicesTest(TestCase):
    """Point 5: `1.5`, `True`, `"1"`, `[3, 3]`, `"a"` were coerced silently."""

    def test_remove_units_refuses_what_is_not_one_integer_per_unit(self):
        model = mlp()
        cases = {
            "1.5 (float)": [1.5],
            "1.0 (float)": [1.0],
            "True (bool)": [True],
            "'1' (str)": ["1"],
            "'a' (str)": ["a"],
            "np.True_": [np.bool_(True)],
            "float64": np.array([1.0, 2.0]),
            "a string": "12",
            "repeated": [3, 3],
            "negative": [-1],
            "out of range": [5],
        }
        for label, indices in cases.items():
            with self.subTest(label):
                with self.assertRaises(SurgeryError) as caught:
                    kprune.surgery.remove_units(model, {"fc1": indices})
                message = str(caught.exception)
                self.assertIn("'fc1'", message)  # names the layer
                self.assertIn("Received: units['fc1']=", message)
        with self.assertRaisesRegex(SurgeryError, r"\[3\] repeated"):
            kprune.surgery.plan_removal(model, {"fc1": [3, 0, 3]})
        with self.assertRaisesRegex(SurgeryError, r"has 5 units; cannot remove \[5"):
            kprune.surgery.remove_units(model, {"fc1": [0, 5, 7]})
        with self.assertRaisesRegex(SurgeryError, r"1\.5 \(float\) is not"):
            kprune.surgery.remove_units(model, {"fc1": [0, 1.5]})

    def test_numpy_integers_are_integers(self):
        model = mlp()
        for indices in ([np.int32(1), np.int64(3)], np.array([1, 3], "uint8"), (1, 3)):
            with self.subTest(type(indices)):
                small = kprune.surgery.remove_units(model, {"fc1": indices})
                self.assertEqual(small.get_layer("fc1").units, 3)
        self.assertEqual(
            kprune.surgery.remove_units(model, {"fc1": 2}).layers[0].units, 4
        )

    def test_plan_json_is_strict_too(self):
        self.assertEqual(PruningPlan({"fc1": [3, 0]}).units, {"fc1": [0, 3]})
        for text in (
            '{"units": {"fc1": [1.5]}}',
            '{"units": {"fc1": ["1"]}}',
            '{"units": {"fc1": [true]}}',
            '{"units": {"fc1": [2, 2]}}',
            '{"units": {"fc1": "a"}}',
        ):
            with self.subTest(text):
                with self.assertRaisesRegex(SurgeryError, "layer 'fc1'"):
                    PruningPlan.from_json(text)

    def test_not_a_model_is_not_called_subclassed(self):
        for value, fragment in (
            (None, "needs a keras.Model"),
            ("model.keras", "keras.models.load_model('model.keras')"),
            (keras.layers.Dense(2), "Wrap it in a Functional model"),
        ):
            with self.subTest(value):
                with self.assertRaises(ValueError) as caught:
                    kprune.surgery.slim(value)
                self.assertIn(fragment, str(caught.exception))
                self.assertNotIn("subclassed", str(caught.exception))


class KeepMaskCloneTest(TestCase):
    """Point 6: `clone_model` dropped the masks and pruned weights grew back."""

    def _pruned(self):
        model = mlp()
        model.compile("sgd", "mse")
        rng = np.random.default_rng(0)
        x = rng.random((32, 6), dtype=np.float32)
        y = rng.random((32, 3), dtype=np.float32)
        model.fit(
            x,
            y,
            epochs=1,
            verbose=0,
            callbacks=[kprune.callbacks.MagnitudePruning(sparsity=0.5)],
        )
        return model, x, y

    def test_masks_survive_clone_config_and_saving(self):
        model, x, y = self._pruned()
        masks = get_masks(model)
        self.assertEqual(sorted(masks), ["fc1", "fc2", "out"])
        zeros = {n: int((m == 0).sum()) for n, m in masks.items()}
        self.assertTrue(all(zeros.values()))

        clone = keras.models.clone_model(model)
        clone.set_weights(model.get_weights())
        for name, mask in get_masks(clone).items():
            np.testing.assert_array_equal(mask, masks[name])
        clone.compile(keras.optimizers.SGD(0.5), "mse")
        clone.fit(x, y, epochs=2, verbose=0)  # no MagnitudePruning callback now
        for name, layer in (("fc1", clone.layers[0]), ("fc2", clone.layers[1])):
            kernel = ops.convert_to_numpy(layer.kernel)
            self.assertTrue(np.all(kernel[masks[name] == 0] == 0), name)

        config_copy = keras.layers.Dense.from_config(
            model.get_layer("fc1").get_config()
        )
        config_copy.build((None, 6))
        np.testing.assert_array_equal(
            ops.convert_to_numpy(config_copy.kernel_constraint.mask), masks["fc1"]
        )
        path = self.tmp_path("clone.keras")
        clone.save(path)
        loaded = keras.models.load_model(path)
        for name, mask in get_masks(loaded).items():
            np.testing.assert_array_equal(mask, masks[name])

    def test_config_is_compact_and_exact(self):
        rng = np.random.default_rng(0)
        mask = (rng.random((1000, 1000)) < 0.5).astype("float32")
        keep = KeepMask(mask=mask)
        config = keep.get_config()
        # At most one bit per weight, in base64: 1e6 bits -> <= 1.4e6 / 8 chars.
        self.assertLess(len(config["mask"]["data"]), 1.4e6 / 8)
        structured = np.ones((1000, 1000), "float32")
        structured[:, ::2] = 0.0
        self.assertLess(
            len(KeepMask(mask=structured).get_config()["mask"]["data"]), 5000
        )
        back = KeepMask.from_config(config)
        np.testing.assert_array_equal(ops.convert_to_numpy(back.mask), mask)
        soft = np.array([[0.25, 1.0]], "float32")  # not 0/1: stored exactly
        np.testing.assert_array_equal(
            ops.convert_to_numpy(
                KeepMask.from_config(KeepMask(soft).get_config()).mask
            ),
            soft,
        )
        self.assertEqual(KeepMask.from_config({"inner": None}).mask, None)  # old
        self.assertIs(kprune.pruning.KeepMask, KeepMask)  # old import path

    def test_surgery_resizes_a_masked_layer(self):
        model = mlp()
        attach_masks(model, ["fc1", "fc2"])
        kernel = ops.convert_to_numpy(model.get_layer("fc2").kernel).copy()
        kernel[:, 1] = 0.0  # fc2 unit 1: no inputs, bias 0 -> dead
        model.get_layer("fc2").kernel.assign(kernel)
        model.get_layer("fc2").kernel_constraint.set_mask((kernel != 0) * 1.0)
        small = kprune.surgery.remove_units(model, {"fc1": [0]})
        small = kprune.surgery.slim(small)
        for name in ("fc1", "fc2"):
            layer = small.get_layer(name)
            self.assertEqual(
                tuple(layer.kernel_constraint.mask.shape), tuple(layer.kernel.shape)
            )
        small.compile("sgd", "mse")
        small.fit(np.ones((4, 6)), np.ones((4, 3)), verbose=0)  # the masks apply


class SmallThingsTest(TestCase):
    """Point 9, in-process parts."""

    def test_group_lasso_refuses_infinite_strength(self):
        for value in (float("inf"), float("nan"), -1.0, "strong"):
            with self.subTest(value):
                with self.assertRaisesRegex(ValueError, "finite float >= 0"):
                    kprune.regularizers.GroupLasso(value)
        with self.assertRaisesRegex(ValueError, "finite"):
            kprune.callbacks.ProximalStep(strength=float("inf"))

    def test_unknown_layer_names_fail_before_training(self):
        model = mlp()
        model.compile("sgd", "mse")
        trained = []

        class Spy(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                trained.append("began")

        sparse = kprune.sparsity.apply_group_sparsity(model, 0.1)
        sparse.compile("sgd", "mse")
        for target, callback in (
            (model, kprune.callbacks.ProximalStep(layers=["fc9"], strength=1.0)),
            (model, kprune.callbacks.ProximalStep(input_groups={"fc9": 1.0})),
            (model, kprune.callbacks.SparsityLogger(layers=["fc9"])),
            (model, kprune.callbacks.MagnitudePruning(sparsity=0.5, layers=["fc9"])),
            (sparse, kprune.callbacks.RegularizationScheduler(lambda e: 0.1, ["fc9"])),
            (
                model,
                kprune.callbacks.AdaptiveRegularization(
                    0.5, eval_data=(np.ones((2, 6)), np.ones(2)), layers=["fc9"]
                ),
            ),
        ):
            with self.subTest(type(callback).__name__):
                with self.assertRaises(ValueError) as caught:
                    target.fit(
                        np.ones((4, 6)),
                        np.ones((4, 3)),
                        verbose=0,
                        callbacks=[Spy(), callback],
                    )
                message = str(caught.exception)
                self.assertIn("'fc9'", message)
                for valid in ("fc1", "fc2"):  # the valid names are listed
                    self.assertIn(valid, message)
                # Refused in set_model, when fit builds its callback list.
                self.assertEqual(trained, [])
                with self.assertRaises(ValueError):
                    callback.set_model(target)

    def test_import_kprune_changes_no_environment_variable(self):
        saved = os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
        try:
            before = dict(os.environ)
            importlib.reload(kprune)  # re-runs kprune/__init__.py
            self.assertEqual(dict(os.environ), before)
        finally:
            if saved is not None:
                os.environ["TF_CPP_MIN_LOG_LEVEL"] = saved
        for name in ("sparsity", "pruning", "constraints", "data"):
            self.assertIn(name, kprune.__all__)
            self.assertIsInstance(getattr(kprune, name), types.ModuleType)
        self.assertIs(kprune.constraints.KeepMask, kprune.pruning.KeepMask)

    def test_tfds_example_fails_loudly_instead_of_using_random_data(self):
        spec = importlib.util.spec_from_file_location(
            "group_sparsity_tfds",
            os.path.join(ROOT, "examples", "group_sparsity_tfds.py"),
        )
        example = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(example)
        mocked = []
        fake = types.SimpleNamespace(
            load=mock.Mock(side_effect=OSError("no internet")),
            testing=types.SimpleNamespace(mock_data=lambda **k: mocked.append(k)),
        )
        with mock.patch.dict(sys.modules, {"tensorflow_datasets": fake}):
            with self.assertRaises(SystemExit) as caught:
                example.load(None, mock=False, mock_examples=10)
        self.assertIn("tfds.load('mnist') failed", str(caught.exception))
        self.assertIn("no internet", str(caught.exception))
        self.assertIn("--mock", str(caught.exception))
        self.assertEqual(mocked, [])  # never fell back to random data
        with mock.patch.dict(sys.modules, {"tensorflow_datasets": None}):
            with self.assertRaisesRegex(SystemExit, r"kprune\[examples\]"):
                example.load(None, mock=False, mock_examples=10)
        with open(os.path.join(ROOT, "pyproject.toml")) as f:
            pyproject = f.read()
        examples_extra = pyproject.split("examples = [", 1)[1].split("]", 1)[0]
        self.assertIn("importlib_resources", examples_extra)


class ConversionErrorTest(TestCase):
    """Point 4: the converter's dozens of lines become one sentence."""

    def test_converter_messages_become_one_line(self):
        from kprune.export.select_ops import conversion_error

        flex = (
            "<unknown>:0: error: loc(...): 'tf.StringToHashBucketFast' op is "
            "neither a custom op nor a flex op\n<unknown>:0: note: called from\n"
            "<unknown>:0: error: failed while converting: 'main':\nSome ops are "
            "not supported by the native TFLite runtime\nTF Select ops: "
            "BiasAdd, MatMul\nDetails:\n\ttf.BiasAdd(tensor<?x3xf16>) -> ...\n"
        )
        error = conversion_error(RuntimeError(flex), False, "float16")
        message = str(error)
        self.assertNotIn("\n", message)
        self.assertIn("(BiasAdd, MatMul)", message)
        self.assertIn("select_tf_ops=True", message)
        self.assertIn("kprune export --select-tf-ops", message)
        self.assertIn("mixed_precision.set_global_policy('float32')", message)
        self.assertEqual(
            (error.ops, error.flag), (["BiasAdd", "MatMul"], "select_tf_ops")
        )
        self.assertEqual(error.details, flex)
        custom = (
            "error: ...\nSome ops in the model are custom ops\nCustom ops: Igamma\n"
        )
        for select in (False, True):
            error = conversion_error(RuntimeError(custom), select)
            self.assertIn("Igamma; no flag helps", str(error))
            self.assertIsNone(error.flag)
        other = "junk\n<unknown>:0: error: something odd happened\n  more\n"
        error = conversion_error(RuntimeError(other), True)
        self.assertEqual(
            str(error),
            "TFLite conversion failed (with TF Select ops): something odd happened",
        )
