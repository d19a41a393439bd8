"""The rebuilder's contract: plans, errors, handlers, saving, non-mutation."""

import keras
import numpy as np
import pytest

import kprune
from kprune.surgery import (
    CouplingError,
    PruningPlan,
    SurgeryError,
    UnsupportedModelError,
)
from kprune.testing import TestCase
from tests import surgery_models as models

L = keras.layers


@keras.saving.register_keras_serializable(package="kprune_tests")
class ChannelScale(L.Layer):
    """A per-channel scale: a custom layer kprune does not know."""

    def build(self, input_shape):
        self.scale = self.add_weight(
            name="scale", shape=(input_shape[-1],), initializer="ones"
        )

    def call(self, x):
        return x * self.scale


@keras.saving.register_keras_serializable(package="kprune_tests")
class TensorFlowScale(ChannelScale):
    """A per-channel scale written with a raw TensorFlow op: not traceable."""

    def call(self, x):
        import tensorflow as tf

        return tf.multiply(x, tf.convert_to_tensor(self.scale))


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = L.Dense(3)

    def call(self, x):
        return self.dense(x)


def _conv_then(layer):
    inputs = keras.Input((6, 6, 2))
    x = L.Conv2D(4, 3, name="conv")(inputs)
    x = layer(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(2, name="out")(x))


class SurgeryApiTest(TestCase):
    def test_plan_json_round_trip_and_replay(self):
        model = models.residual()
        plan = kprune.surgery.plan_removal(model, {"branch": [0, 3]})
        text = plan.to_json()
        again = PruningPlan.from_json(text)
        self.assertEqual(again.units, plan.units)
        self.assertEqual(again.groups, plan.groups)

        copy = keras.models.clone_model(model)
        copy.set_weights(model.get_weights())
        a = kprune.surgery.remove_units(model, plan)
        b = kprune.surgery.remove_units(copy, again)
        x = np.random.default_rng(0).normal(size=(2, 10, 10, 3)).astype("float32")
        self.assertSameOutputs(a, b, x, rtol=0)

    def test_plan_file_and_bad_json(self):
        plan = PruningPlan({"fc1": [1, 2]}, model_name="m")
        path = self.tmp_path("plan.json")
        plan.save(path)
        self.assertEqual(PruningPlan.load(path).units, {"fc1": [1, 2]})
        with self.assertRaisesRegex(ValueError, "not valid JSON"):
            PruningPlan.from_json("{nope")
        with self.assertRaisesRegex(ValueError, "format"):
            PruningPlan.from_json('{"format": "other", "units": {}}')

    def test_slimmed_model_saves_and_loads(self):
        model = models.concat_and_se()
        models.randomize(model, np.random.default_rng(0))
        small = kprune.surgery.slim(model)
        x = np.random.default_rng(1).normal(size=(2, 8, 8, 3)).astype("float32")
        self.run_model_saving_test(small, x)

    def test_unknown_layer_name(self):
        with self.assertRaisesRegex(SurgeryError, "Layer 'nope' is not in model"):
            kprune.surgery.remove_units(models.mlp(), {"nope": [0]})

    def test_layer_without_units(self):
        model = models.cnn_flatten()
        name = model.layers[2].name  # the BatchNormalization
        with self.assertRaisesRegex(SurgeryError, "has no units of its own"):
            kprune.surgery.remove_units(model, {name: [0]})

    def test_index_out_of_range(self):
        with self.assertRaisesRegex(SurgeryError, "has 16 units; cannot remove"):
            kprune.surgery.remove_units(models.mlp(), {"fc1": [16]})

    def test_output_layer_is_pinned(self):
        with self.assertRaisesRegex(CouplingError, "model output"):
            kprune.surgery.remove_units(models.mlp(), {"out": [0]})

    def test_emptying_a_layer_needs_permission(self):
        model = models.mlp()
        with self.assertRaisesRegex(SurgeryError, "no units at all"):
            kprune.surgery.remove_units(model, {"fc1": list(range(16))})
        small = kprune.surgery.remove_units(
            model, {"fc1": list(range(16))}, allow_empty=True
        )
        self.assertEqual(small.get_layer("fc1").units, 1)

    def test_subclassed_model_is_refused(self):
        model = Subclassed()
        model(np.zeros((1, 4)))
        with self.assertRaisesRegex(UnsupportedModelError, "Functional"):
            kprune.surgery.slim(model)

    def test_not_a_model(self):
        with self.assertRaisesRegex(UnsupportedModelError, "Received: model=str"):
            kprune.surgery.slim("model.keras")

    @pytest.mark.skipif(
        keras.backend.backend() == "torch",
        reason="PyTorch cannot slice with a negative step: the test model "
        "itself cannot be built on this backend",
    )
    def test_lambda_touching_channels_names_the_layer(self):
        model = _conv_then(L.Lambda(lambda x: x[..., ::-1], name="flip"))
        with self.assertRaisesRegex(CouplingError, "'flip'.*register_handler"):
            kprune.surgery.remove_units(model, {"conv": [0]})

    def test_custom_layer_is_traced_into_ops(self):
        model = _conv_then(ChannelScale(name="scale"))
        conv = model.get_layer("conv")
        kernel, bias = conv.get_weights()
        kernel[..., 1], bias[1] = 0.0, 0.0
        conv.set_weights([kernel, bias])
        small = kprune.surgery.slim(model)
        self.assertEqual(small.get_layer("conv").filters, 3)
        self.assertIsInstance(small.get_layer("scale"), ChannelScale)
        self.assertEqual(small.get_layer("scale").get_weights()[0].shape, (3,))
        x = np.random.default_rng(0).normal(size=(2, 6, 6, 2)).astype("float32")
        self.assertSameOutputs(model, small, x)
        self.run_model_saving_test(small, x)

    @pytest.mark.skipif(
        keras.backend.backend() != "tensorflow",
        reason="TensorFlowScale is written in TensorFlow ops: TensorFlow only",
    )
    def test_untraceable_custom_layer_then_registered(self):
        model = _conv_then(TensorFlowScale(name="scale"))
        with self.assertRaisesRegex(
            CouplingError, "'scale' \\(TensorFlowScale\\).*tracing it failed"
        ):
            kprune.surgery.remove_units(model, {"conv": [0]})
        try:
            kprune.surgery.register_handler(
                TensorFlowScale, kprune.surgery.ChannelwiseHandler()
            )
            conv = model.get_layer("conv")
            kernel, bias = conv.get_weights()
            kernel[..., 1], bias[1] = 0.0, 0.0
            conv.set_weights([kernel, bias])
            small = kprune.surgery.slim(model)
            self.assertEqual(small.get_layer("conv").filters, 3)
            self.assertEqual(small.get_layer("scale").get_weights()[0].shape, (3,))
            x = np.random.default_rng(0).normal(size=(2, 6, 6, 2)).astype("float32")
            self.assertSameOutputs(model, small, x)
        finally:
            kprune.surgery.unregister_handler(TensorFlowScale)

    def test_untouched_lambda_is_fine(self):
        inputs = keras.Input((5,))
        x = L.Lambda(lambda t: t * 2.0, name="double")(inputs)
        x = L.Dense(6, activation="relu", name="fc")(x)
        model = keras.Model(inputs, L.Dense(2, name="out")(x))
        out = model.get_layer("out")
        kernel, bias = out.get_weights()
        kernel[0] = 0.0
        out.set_weights([kernel, bias])
        small = kprune.surgery.slim(model)
        self.assertEqual(small.get_layer("fc").units, 5)

    def test_shared_layers_stay_shared(self):
        model = models.shared_dense()
        small = kprune.surgery.remove_units(model, {"shared": [0, 1]})
        self.assertEqual(len(small.layers), len(model.layers))
        self.assertEqual(small.get_layer("shared").units, 8)
        # The concatenation lost the channels of both calls.
        self.assertEqual(small.get_layer("fc").get_weights()[0].shape, (16, 8))

    def test_nested_models_stay_nested(self):
        model = models.nested()
        small = kprune.surgery.remove_units(model, {"block/inner_conv": [0]})
        self.assertIsInstance(small.get_layer("block"), keras.Model)
        self.assertEqual(small.get_layer("block").get_layer("inner_conv").filters, 5)
        self.assertEqual(
            small.get_layer("head").get_layer("head_fc").get_weights()[0].shape,
            (5, 8),
        )

    def test_unbuilt_sequential_is_refused(self):
        model = keras.Sequential([L.Dense(3)])
        with self.assertRaisesRegex(UnsupportedModelError, "not built"):
            kprune.surgery.slim(model)

    def test_dead_units_returns_arrays(self):
        model = models.mlp()
        fc2 = model.get_layer("fc2")
        kernel, bias = fc2.get_weights()
        kernel[3] = 0.0  # fc1 unit 3 is read by nobody
        fc2.set_weights([kernel, bias])
        dead = kprune.surgery.dead_units(model)
        np.testing.assert_array_equal(dead["fc1"], [3])
        self.assertEqual(dead["fc1"].dtype, np.int64)


class KeepMaskTest(TestCase):
    def test_slim_keeps_magnitude_masks(self):
        model = models.mlp()
        kprune.pruning.attach_masks(model, ["fc1", "fc2"])
        fc2 = model.get_layer("fc2")
        kernel, bias = fc2.get_weights()
        kernel[:, :3] = 0.0
        kernel[5, 7] = 0.0
        bias[:3] = 0.0
        fc2.set_weights([kernel, bias])
        fc2.kernel_constraint.set_mask((kernel != 0).astype("float32"))
        small = kprune.surgery.slim(model)
        mask = small.get_layer("fc2").kernel_constraint.mask
        self.assertIsNotNone(mask)
        self.assertEqual(tuple(mask.shape), tuple(small.get_layer("fc2").kernel.shape))
        self.assertEqual(float(keras.ops.sum(1.0 - mask)), 1.0)
