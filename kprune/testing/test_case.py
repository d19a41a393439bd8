"""A shared `TestCase` with serialization and output-equality helpers."""

import os
import tempfile
import unittest

import keras
import numpy as np


def run_serialization_test(obj, custom_objects=None):
    """Check that a Keras object round-trips through its config.

    `obj.get_config()` -> `from_config` -> `get_config()` must give the same
    config, and `keras.saving.serialize_keras_object` /
    `deserialize_keras_object` must rebuild an object of the same class.

    Args:
        obj: a regularizer, constraint, callback or layer.
        custom_objects: optional dict passed to deserialization.

    Returns:
        The deserialized copy.

    Example:

    >>> run_serialization_test(keras.regularizers.L2(0.1)).l2
    0.1
    """
    config = obj.get_config()
    revived = obj.__class__.from_config(config)
    if revived.get_config() != config:
        raise AssertionError(
            f"get_config() does not round-trip for {obj.__class__.__name__}: "
            f"{config} != {revived.get_config()}"
        )
    serialized = keras.saving.serialize_keras_object(obj)
    copy = keras.saving.deserialize_keras_object(
        serialized, custom_objects=custom_objects
    )
    if type(copy) is not type(obj):
        raise AssertionError(
            f"deserialized {type(copy).__name__}, expected {type(obj).__name__}"
        )
    if copy.get_config() != config:
        raise AssertionError(
            f"serialize/deserialize changed the config of "
            f"{obj.__class__.__name__}: {config} != {copy.get_config()}"
        )
    return copy


def _output_list(outputs):
    if isinstance(outputs, dict):
        return [outputs[k] for k in sorted(outputs)]
    if isinstance(outputs, (list, tuple)):
        return list(outputs)
    return [outputs]


def assert_same_outputs(model_a, model_b, inputs, rtol=1e-5):
    """Assert two models give the same outputs up to `rtol` x output scale.

    The tolerance is relative to the scale of each output:
    `max|a - b| <= rtol * max(1, max|a|)`.

    Args:
        model_a: reference model.
        model_b: model under test.
        inputs: inputs accepted by both models.
        rtol: tolerance relative to the output scale.

    Returns:
        The largest relative difference seen.
    """
    outs_a = _output_list(model_a(inputs, training=False))
    outs_b = _output_list(model_b(inputs, training=False))
    if len(outs_a) != len(outs_b):
        raise AssertionError(f"{len(outs_a)} outputs vs {len(outs_b)} outputs")
    worst = 0.0
    for a, b in zip(outs_a, outs_b):
        a = keras.ops.convert_to_numpy(a)
        b = keras.ops.convert_to_numpy(b)
        if a.shape != b.shape:
            raise AssertionError(f"output shapes differ: {a.shape} vs {b.shape}")
        scale = max(1.0, float(np.max(np.abs(a))) if a.size else 1.0)
        diff = float(np.max(np.abs(a - b))) / scale if a.size else 0.0
        worst = max(worst, diff)
    if worst > rtol:
        raise AssertionError(
            f"outputs differ by {worst:.3g} relative to output scale "
            f"(tolerance {rtol:.3g})"
        )
    return worst


class TestCase(unittest.TestCase):
    """Base class for kprune tests: seeded, with a temp dir and helpers."""

    def setUp(self):
        super().setUp()
        keras.utils.set_random_seed(1337)
        self._tmp = tempfile.TemporaryDirectory()
        self.tmp_dir = self._tmp.name

    def tearDown(self):
        self._tmp.cleanup()
        keras.backend.clear_session()
        super().tearDown()

    def tmp_path(self, name):
        return os.path.join(self.tmp_dir, name)

    def run_serialization_test(self, obj, custom_objects=None):
        return run_serialization_test(obj, custom_objects=custom_objects)

    def assertSameOutputs(self, model_a, model_b, inputs, rtol=1e-5):
        return assert_same_outputs(model_a, model_b, inputs, rtol=rtol)

    def run_model_saving_test(self, model, inputs, rtol=1e-6):
        """Save `model` to `.keras`, load it back, compare outputs."""
        path = self.tmp_path("model.keras")
        model.save(path)
        loaded = keras.models.load_model(path)
        self.assertSameOutputs(model, loaded, inputs, rtol=rtol)
        return loaded
