"""`slim` on `keras.applications` models (weights=None) is exact."""

import keras
import numpy as np
import pytest

import kprune
from kprune.testing import zoo
from tests import surgery_models as models

# Not in the default run's JAX pass (tests/test_on_jax.py), for time: JAX
# compiles every op of each rebuilt application, 30-60 s of CPU per model
# (the structure suite covers depthwise, squeeze-and-excitation and residual
# structures on JAX). Run by hand: KERAS_BACKEND=jax pytest <this file>.
BY_HAND = pytest.mark.jax_by_hand(reason="a large application to compile on JAX")
APPLICATIONS = [
    pytest.param("MobileNetV2", 32, marks=BY_HAND),
    pytest.param("MobileNetV3Small", 32, marks=BY_HAND),
    pytest.param("ResNet50", 32, marks=BY_HAND),
    pytest.param("DenseNet121", 32, marks=BY_HAND),
    pytest.param("EfficientNetB0", 32, marks=BY_HAND),
    pytest.param("ConvNeXtTiny", 32, marks=BY_HAND),
]


@pytest.mark.parametrize("name,size", APPLICATIONS)
def test_slim_keras_application(name, size):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    model = getattr(keras.applications, name)(
        weights=None,
        input_shape=(size, size, 3),
        classes=10,
        classifier_activation=None,
    )
    models.randomize(model, rng)
    x = rng.normal(size=(2, size, size, 3)).astype("float32")

    small = kprune.surgery.slim(model)

    kprune.testing.assert_same_outputs(model, small, x, rtol=1e-5)
    assert small.count_params() < 0.9 * model.count_params()
    keras.backend.clear_session()


ALL = [
    pytest.param(name, marks=pytest.mark.zoo, id=name) for name in zoo.applications()
]


@pytest.mark.parametrize("name", ALL)
def test_slim_every_keras_application(name):
    """All 40 applications: 30 % of units zeroed, slim exact (`-m zoo`)."""
    model, x = zoo.applications()[name]()
    zeroed, layers = zoo.zero_units(model, fraction=0.3, seed=0)
    assert layers
    small = kprune.surgery.slim(zeroed)
    kprune.testing.assert_same_outputs(zeroed, small, x, rtol=1e-4)
    assert small.count_params() < 0.95 * zeroed.count_params()
    keras.backend.clear_session()
