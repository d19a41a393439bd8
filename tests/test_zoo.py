"""The model zoo of `kprune.testing.zoo` builds, runs, copies and zeroes.

`pytest tests/test_zoo.py` runs a cheap subset (`DEFAULT_HUB`,
`DEFAULT_APPLICATIONS`); `pytest tests/test_zoo.py -m zoo` runs every model
of the zoo (about 85 KerasHub configs and the 40 `keras.applications`).
"""

import importlib
import sys

import keras
import numpy as np
import pytest

from kprune.testing import zoo

L = keras.layers

DEFAULT_HUB = ["bert", "gemma", "whisper", "efficientnet_v2", "vit"]
DEFAULT_APPLICATIONS = ["MobileNetV3Small"]

# The 43 families of DESIGN.md's "Models to keep in mind" -> zoo entries.
DESIGN_FAMILIES = {
    "ResNet": "resnet_basic",
    "MobileNet": "mobilenet_v3",
    "EfficientNet": "efficientnet",
    "EfficientNetV2": "efficientnet_v2",
    "CSPNet": "cspnet",
    "DenseNet": "densenet",
    "VGG": "vgg",
    "Xception": "xception",
    "HGNetV2": "hgnetv2",
    "MiT": "mit",
    "ViT": "vit",
    "DeiT": "deit",
    "DINOv2": "dinov2",
    "SigLIP": "siglip",
    "CLIP": "clip",
    "ViTDet": "vit_det",
    "Swin": "swin",
    "BERT": "bert",
    "DistilBERT": "distil_bert",
    "RoBERTa": "roberta",
    "XLM-R": "xlm_roberta",
    "ALBERT": "albert",
    "ELECTRA": "electra",
    "DeBERTaV3": "deberta_v3",
    "FNet": "f_net",
    "RoformerV2": "roformer_v2",
    "ESM2": "esm2",
    "GPT-2": "gpt2",
    "OPT": "opt",
    "Bloom": "bloom",
    "GPT-NeoX": "gpt_neo_x",
    "Falcon": "falcon",
    "Gemma": "gemma",
    "Gemma 3": "gemma3",
    "Llama": "llama",
    "Mistral": "mistral",
    "Qwen": "qwen",
    "Qwen3": "qwen3",
    "Phi-3": "phi3",
    "Mixtral": "mixtral",
    "T5": "t5",
    "BART": "bart",
    "Whisper": "whisper",
    "Moonshine": "moonshine",
}


def _params(names, default):
    return [
        pytest.param(n, marks=pytest.mark.zoo(default=n in default), id=n)
        for n in names
    ]


HUB = _params(list(zoo.keras_hub_backbones()), DEFAULT_HUB)
APPS = _params(list(zoo.applications()), DEFAULT_APPLICATIONS)


def _numpy_outputs(model, x):
    # inference: a bare `model(x)` updated DeepLabV3's and SegFormer's
    # BatchNorm statistics (layers that do not take `training`)
    return [
        np.asarray(keras.ops.convert_to_numpy(y), dtype="float64")
        for y in keras.tree.flatten(model(x, training=False))
    ]


def _weights(model):
    return [np.array(keras.ops.convert_to_numpy(w)) for w in model.weights]


# ---------------------------------------------------------------- lists


def test_zoo_covers_design_families():
    builders = zoo.keras_hub_backbones()
    missing = [f for f, n in DESIGN_FAMILIES.items() if n not in builders]
    assert not missing
    assert len(builders) >= len(set(DESIGN_FAMILIES.values()))
    assert list(zoo.applications()) == list(zoo.APPLICATION_SIZES)
    assert len(zoo.applications()) == 40


def test_zoo_imports_without_keras_hub(monkeypatch):
    monkeypatch.setitem(sys.modules, "keras_hub", None)
    module = importlib.reload(zoo)
    try:
        builders = module.keras_hub_backbones()
        assert "bert" in builders
        with pytest.raises(ImportError):
            builders["bert"]()
    finally:
        monkeypatch.undo()
        importlib.reload(zoo)


# ------------------------------------------------------------- builders


@pytest.mark.parametrize("name", HUB)
def test_keras_hub_builder(name):
    keras_hub = pytest.importorskip("keras_hub")
    backbone, x = zoo.keras_hub_backbones()[name]()
    assert isinstance(backbone, keras_hub.models.Backbone)
    if isinstance(x, dict):
        assert set(x) == set(backbone.input)
    first = keras.tree.flatten(x)[0]
    assert first.shape[0] == zoo.BATCH
    outputs = _numpy_outputs(backbone, x)
    assert outputs and all(np.all(np.isfinite(y)) for y in outputs)
    keras.backend.clear_session()


@pytest.mark.parametrize("name", APPS)
def test_application_builder(name):
    model, x = zoo.applications()[name]()
    assert x.shape == (2, *model.input_shape[1:])
    y = _numpy_outputs(model, x)[0]
    assert y.shape == (2, 10) and np.all(np.isfinite(y))
    keras.backend.clear_session()


def test_builders_are_seeded():
    pytest.importorskip("keras_hub")
    build = zoo.keras_hub_backbones()["bert"]
    (a, xa), (b, xb) = build(), build()
    assert all(np.array_equal(u, v) for u, v in zip(_weights(a), _weights(b)))
    assert all(np.array_equal(xa[k], xb[k]) for k in xa)
    c, _ = build(seed=1)
    assert not all(np.array_equal(u, v) for u, v in zip(_weights(a), _weights(c)))
    keras.backend.clear_session()


# ---------------------------------------------------- copy, zero_units


@pytest.mark.parametrize("name", HUB)
def test_copy_and_zero_units_on_keras_hub(name):
    pytest.importorskip("keras_hub")
    backbone, x = zoo.keras_hub_backbones()[name]()
    before = _weights(backbone)
    reference = _numpy_outputs(backbone, x)

    twin = zoo.copy_model(backbone)
    assert type(twin) is type(backbone)
    assert list(zoo.leaf_layers(twin)) == list(zoo.leaf_layers(backbone))
    for a, b in zip(reference, _numpy_outputs(twin, x)):
        np.testing.assert_array_equal(a, b)

    zeroed_model, zeroed = zoo.zero_units(backbone, fraction=0.3, seed=0)
    assert zeroed, "no kernel layer found"
    _check_zeroed(backbone, zeroed_model, zeroed, 0.3)
    # The input model is untouched: weights and outputs.
    assert all(np.array_equal(u, v) for u, v in zip(before, _weights(backbone)))
    for a, b in zip(reference, _numpy_outputs(backbone, x)):
        np.testing.assert_array_equal(a, b)
    keras.backend.clear_session()


def _check_zeroed(model, twin, zeroed, fraction):
    """Every listed unit's incoming weights are 0 in `twin`, nothing else
    changed, and each layer lost `int(fraction * units)` units."""
    originals, copies = zoo.leaf_layers(model), zoo.leaf_layers(twin)
    for path, layer in copies.items():
        old = [
            np.asarray(keras.ops.convert_to_numpy(w)) for w in originals[path].weights
        ]
        new = [np.asarray(keras.ops.convert_to_numpy(w)) for w in layer.weights]
        changed = [not np.array_equal(a, b) for a, b in zip(old, new)]
        if path not in zeroed:
            assert not any(changed), path
            continue
        units = zeroed[path]
        kernel = _unit_view(layer)
        assert len(units) == int(fraction * kernel.shape[-1]), path
        assert np.all(kernel[..., units] == 0), path
        bias = getattr(layer, "bias", None)
        if bias is not None and not isinstance(layer, L.EinsumDense):
            assert np.all(keras.ops.convert_to_numpy(bias)[units] == 0), path
        # Only the chosen units changed.
        kept = np.setdiff1d(np.arange(kernel.shape[-1]), units)
        old_kernel = _unit_view(originals[path])
        np.testing.assert_array_equal(kernel[..., kept], old_kernel[..., kept])


def _unit_view(layer):
    """The layer's kernel with the unit axis last (as zero_units defines it)."""
    name, axis = zoo.unit_axis(layer)
    if axis == "rnn":  # (inputs, gates * units) -> (inputs * gates, units)
        k = np.asarray(keras.ops.convert_to_numpy(layer.kernel))
        return k.reshape(-1, layer.units)
    w = [w for w in layer.weights if w.path.endswith(name)][0]
    k = np.asarray(keras.ops.convert_to_numpy(w))
    if axis == "depthwise":
        return k.reshape(*k.shape[:-2], -1)
    return np.moveaxis(k, axis, -1)


@keras.saving.register_keras_serializable(package="kprune_test_zoo")
class Block(L.Layer):
    """A composite layer: one Dense inside."""

    def __init__(self, units=12, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.inner = L.Dense(units, activation="relu", name="inner")

    def build(self, shape):
        self.inner.build(shape)

    def call(self, x):
        return self.inner(x)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def _all_kinds_model():
    """Dense, EinsumDense, Conv/Depthwise/Separable/Transpose, Embedding,
    LSTM, a nested model and a composite layer holding a Dense."""

    image = keras.Input((8, 8, 3), name="image")
    x = L.Conv2D(10, 3, padding="same", name="conv")(image)
    x = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(x)
    x = L.SeparableConv2D(10, 3, padding="same", name="sep")(x)
    x = L.Conv2DTranspose(10, 3, padding="same", name="convt")(x)
    x = L.GlobalAveragePooling2D()(x)
    tokens = keras.Input((5,), dtype="int32", name="tokens")
    e = L.Embedding(20, 10, name="embed")(tokens)
    e = L.LSTM(10, name="lstm")(e)
    inner_in = keras.Input((10,))
    nested = keras.Model(inner_in, L.Dense(10, name="nested_fc")(inner_in), name="sub")
    x = L.Concatenate()([x, nested(e)])
    x = L.EinsumDense("ab,bc->ac", output_shape=10, bias_axes="c", name="einsum")(x)
    x = Block(name="block")(x)
    return keras.Model([image, tokens], L.Dense(3, name="out")(x))


def test_zero_units_every_layer_kind():
    keras.utils.set_random_seed(0)
    model = _all_kinds_model()
    zoo.perturb_weights(model)
    before = _weights(model)

    twin, zeroed = zoo.zero_units(model, fraction=0.3, seed=0)

    expected = {
        "conv": 3,
        "dw": 6,
        "sep": 3,
        "convt": 3,
        "embed": 3,
        "lstm/lstm_cell": 3,
        "sub/nested_fc": 3,
        "einsum": 3,
        "block/inner": 3,
    }
    assert {k: len(v) for k, v in zeroed.items()} == expected
    _check_zeroed(model, twin, zeroed, 0.3)
    assert all(np.array_equal(u, v) for u, v in zip(before, _weights(model)))
    # A zeroed LSTM unit has no input: its gates' columns are all zero.
    cell = zoo.leaf_layers(twin)["lstm/lstm_cell"]
    cols = np.concatenate([g * 10 + zeroed["lstm/lstm_cell"] for g in range(4)])
    for w in (cell.kernel, cell.recurrent_kernel, cell.bias):
        assert np.all(keras.ops.convert_to_numpy(w)[..., cols] == 0)
    # A zeroed Dense unit inside the composite layer outputs relu(0) = 0.
    x = twin.get_layer("einsum").output
    probe = keras.Model(twin.inputs, twin.get_layer("block")(x))
    rng = np.random.default_rng(1)
    sample = [
        rng.normal(size=(4, 8, 8, 3)).astype("float32"),
        rng.integers(0, 20, size=(4, 5)).astype("int32"),
    ]
    y = keras.ops.convert_to_numpy(probe(sample))
    assert np.all(y[:, zeroed["block/inner"]] == 0)
    assert np.any(y != 0)


def test_zero_units_einsum_unit_axis_and_bias():
    inputs = keras.Input((6, 8))
    layer = L.EinsumDense(
        "abc,cde->abde", output_shape=(None, 2, 5), bias_axes="de", name="query"
    )
    model = keras.Model(inputs, layer(inputs))
    zoo.perturb_weights(model)
    twin, zeroed = zoo.zero_units(model, fraction=0.4, seed=3)
    units = zeroed["query"]
    assert len(units) == 2
    q = twin.get_layer("query")
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in (q.kernel, q.bias))
    assert np.all(kernel[:, :, units] == 0) and np.all(bias[:, units] == 0)
    kept = np.setdiff1d(np.arange(5), units)
    assert np.all(bias[:, kept] != 0)


def test_zero_units_einsum_bias_with_gaps():
    inputs = keras.Input((6, 8))
    layer = L.EinsumDense(
        "abc,cde->abde", output_shape=(6, 3, 5), bias_axes="be", name="proj"
    )
    model = keras.Model(inputs, layer(inputs))
    zoo.perturb_weights(model)
    assert tuple(model.get_layer("proj").bias.shape) == (6, 1, 5)
    twin, zeroed = zoo.zero_units(model, fraction=0.4, seed=0)
    bias = keras.ops.convert_to_numpy(twin.get_layer("proj").bias)
    assert np.all(bias[..., zeroed["proj"]] == 0)
    assert np.count_nonzero(bias == 0) == 6 * len(zeroed["proj"])


def test_zero_units_is_seeded_and_checks_fraction():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, L.Dense(20, name="fc")(inputs))
    _, a = zoo.zero_units(model, 0.5, seed=0)
    _, b = zoo.zero_units(model, 0.5, seed=0)
    _, c = zoo.zero_units(model, 0.5, seed=1)
    np.testing.assert_array_equal(a["fc"], b["fc"])
    assert not np.array_equal(a["fc"], c["fc"])
    assert zoo.zero_units(model, 0.0)[1] == {}
    with pytest.raises(ValueError, match="fraction"):
        zoo.zero_units(model, 1.5)


def test_perturb_weights_touches_biases_and_norms_only():
    inputs = keras.Input((6, 6, 3))
    x = L.Conv2D(4, 3, name="conv")(inputs)
    x = L.BatchNormalization(name="bn")(x)
    x = L.LayerNormalization(name="ln")(x)
    model = keras.Model(inputs, x)
    kernel = np.array(model.get_layer("conv").kernel.numpy())
    zoo.perturb_weights(model, seed=0)
    np.testing.assert_array_equal(model.get_layer("conv").kernel.numpy(), kernel)
    bn = model.get_layer("bn")
    assert np.all(bn.moving_variance.numpy() >= 0.5)
    assert np.all(bn.moving_mean.numpy() != 0)
    assert np.all(model.get_layer("conv").bias.numpy() != 0)
    assert np.all(model.get_layer("ln").gamma.numpy() != 1)


def test_leaf_layers_paths():
    model = _all_kinds_model()
    paths = list(zoo.leaf_layers(model))
    assert len(paths) == len(set(paths))
    assert "block/inner" in paths and "sub/nested_fc" in paths
    assert "lstm/lstm_cell" in paths and "block" not in paths
