"""`slim` on `keras.applications` models (weights=None) is exact."""

import keras
import numpy as np
import pytest

import kprune
from tests import surgery_models as models

APPLICATIONS = [
    ("MobileNetV2", 32),
    ("MobileNetV3Small", 32),
    ("ResNet50", 32),
    ("DenseNet121", 32),
    ("EfficientNetB0", 32),
    ("ConvNeXtTiny", 32),
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
