"""A zoo of tiny models for tests and benchmarks: KerasHub backbones,
`keras.applications`, and `zero_units` to plant removable units in them.

Every builder is a zero-argument function returning `(model, sample_inputs)`:
a freshly built model with seeded random weights (no presets, no
downloads) and a batch of 2 seeded inputs in the model's own input format
(a dict keyed by input name for KerasHub backbones, an array for
`keras.applications`).

- `keras_hub_backbones()`: one or more tiny configs of every KerasHub
  backbone family that can be built from constructor arguments (1-2
  layers, hidden size 8-32, 2-4 heads with grouped-query attention where
  the family has it, vocabulary 64, images 32x32 or the smallest the
  family accepts, sequences of 8 tokens). `keras_hub` is imported only
  when a builder runs.
- `applications()`: the 40 `keras.applications` models (`weights=None`,
  10 classes, logits) at the smallest input size each accepts.
- `zero_units(model, fraction, seed)`: a copy of the model in which the
  incoming weights of a random `fraction` of the output units of every
  kernel-bearing leaf layer (also inside composite layers) are zero.
- `leaf_layers(model)`: the leaf layers of a model, by path, as
  `zero_units` names them.
- `copy_model(model)`: a deep copy (`from_config` + weights).

Builders call `keras.utils.set_random_seed(seed)` (a global side effect) so
that the weights are the same on every call, then perturb biases and
normalization parameters (`perturb_weights`) so that a zeroed unit's
constant output (bias, BatchNorm offset) is not zero by accident.

Example:

>>> from kprune.testing import zoo
>>> model, x = zoo.applications()["MobileNet"]()
>>> tuple(model(x).shape)
(2, 10)
"""

import collections

import keras

from kprune.testing import _zoo_composite, _zoo_text, _zoo_vision  # noqa: F401
from kprune.testing._zoo_common import (
    _HUB,
    BATCH,
    IMAGE,
    SEQUENCE,
    VOCAB,
    _models,
    _seeded,
)
from kprune.testing._zoo_weights import (
    copy_model,
    leaf_layers,
    perturb_weights,
    unit_axis,
    zero_units,
)

# Families in this order: text, vision and image-text, then the rest.
_MODULES = (_zoo_text, _zoo_vision, _zoo_composite)

__all__ = [
    "APPLICATION_SIZES",
    "BATCH",
    "IMAGE",
    "SEQUENCE",
    "VOCAB",
    "applications",
    "copy_model",
    "keras_hub_backbones",
    "leaf_layers",
    "perturb_weights",
    "unit_axis",
    "zero_units",
]


def keras_hub_backbones():
    """Tiny KerasHub backbones of every family buildable from arguments.

    Each entry is a zero-argument function returning `(backbone,
    sample_inputs)`: a KerasHub `Backbone` (a Functional subclass whose
    `get_config()` holds constructor arguments) with seeded random weights
    (`keras.utils.set_random_seed(0)`, then `perturb_weights`) and a
    batch of 2 seeded inputs as a dict by input name (or an array for
    single-input image backbones). Token ids are in `[1, 64)`; padding
    masks are ones except the last 2 positions of the second sample;
    images are `U(0, 1)`, 32x32 unless the family needs another size.
    Nothing is downloaded and `keras_hub` is imported only when a builder
    runs.

    Returns:
        An ordered dict `{name: builder}`; names are the family in
        snake case, with a suffix for a second config of a family
        (`"resnet_bottleneck"`, `"efficientnet_v2"`, `"gemma2"` ...).

    Example:

    >>> builders = keras_hub_backbones()
    >>> "bert" in builders and "llama" in builders
    True
    """
    order = {m.__name__: i for i, m in enumerate(_MODULES)}
    ranked = sorted(
        enumerate(_HUB.items()),
        key=lambda item: (order[item[1][1].__module__], item[0]),
    )
    return collections.OrderedDict(
        (name, _hub_builder(name, fn)) for _, (name, fn) in ranked
    )


def _hub_builder(name, fn):
    def build(seed=0):
        rng = _seeded(seed)
        backbone, inputs = fn(_models(), rng)
        perturb_weights(backbone, seed=seed)
        return backbone, inputs

    build.__name__ = f"build_{name}"
    build.__qualname__ = build.__name__
    build.__doc__ = f"Tiny KerasHub '{name}' backbone and sample inputs (seeded)."
    return build


# ------------------------------------------------ keras.applications

# Smallest square input each accepts with `weights=None` (measured with
# keras 3.15: 32 for all but the Inception family and Xception).
APPLICATION_SIZES = collections.OrderedDict(
    [
        ("ConvNeXtBase", 32),
        ("ConvNeXtLarge", 32),
        ("ConvNeXtSmall", 32),
        ("ConvNeXtTiny", 32),
        ("ConvNeXtXLarge", 32),
        ("DenseNet121", 32),
        ("DenseNet169", 32),
        ("DenseNet201", 32),
        ("EfficientNetB0", 32),
        ("EfficientNetB1", 32),
        ("EfficientNetB2", 32),
        ("EfficientNetB3", 32),
        ("EfficientNetB4", 32),
        ("EfficientNetB5", 32),
        ("EfficientNetB6", 32),
        ("EfficientNetB7", 32),
        ("EfficientNetV2B0", 32),
        ("EfficientNetV2B1", 32),
        ("EfficientNetV2B2", 32),
        ("EfficientNetV2B3", 32),
        ("EfficientNetV2L", 32),
        ("EfficientNetV2M", 32),
        ("EfficientNetV2S", 32),
        ("InceptionResNetV2", 75),
        ("InceptionV3", 75),
        ("MobileNet", 32),
        ("MobileNetV2", 32),
        ("MobileNetV3Large", 32),
        ("MobileNetV3Small", 32),
        ("NASNetLarge", 32),
        ("NASNetMobile", 32),
        ("ResNet101", 32),
        ("ResNet101V2", 32),
        ("ResNet152", 32),
        ("ResNet152V2", 32),
        ("ResNet50", 32),
        ("ResNet50V2", 32),
        ("VGG16", 32),
        ("VGG19", 32),
        ("Xception", 71),
    ]
)


def applications():
    """The 40 `keras.applications` models, untrained, at their smallest size.

    Each entry is a zero-argument function returning `(model, x)`: the
    application built with `weights=None`, `classes=10`,
    `classifier_activation=None` (logits) on a square input of
    `APPLICATION_SIZES[name]` pixels (32, or 71 / 75 where the model needs
    more), with seeded weights (`keras.utils.set_random_seed(0)`) and
    random BatchNorm statistics and biases (`perturb_weights`), and `x`:
    2 images drawn from `N(0, 1)`, float32. These are full-size networks
    (1.5 M to 348 M parameters): building one takes seconds.

    Returns:
        An ordered dict `{application name: builder}`.

    Example:

    >>> builders = applications()
    >>> len(builders)
    40
    """
    return collections.OrderedDict(
        (name, _application_builder(name, size))
        for name, size in APPLICATION_SIZES.items()
    )


def _application_builder(name, size):
    def build(seed=0):
        rng = _seeded(seed)
        model = getattr(keras.applications, name)(
            weights=None,
            input_shape=(size, size, 3),
            classes=10,
            classifier_activation=None,
        )
        perturb_weights(model, seed=seed)
        x = rng.normal(size=(BATCH, size, size, 3)).astype("float32")
        return model, x

    build.__name__ = f"build_{name}"
    build.__qualname__ = build.__name__
    build.__doc__ = f"keras.applications.{name} (weights=None) and 2 images."
    return build
