"""Tracing inside layers: `None` outputs, layers kept whole, shared layers.

Small stand-ins for what KerasHub layers do (GPT-NeoX / T5 attention return
`(outputs, None)` without a cache; T5 shares one `Dropout` between widths;
ViTDet's MLP holds a `Sequential`; KerasHub backbones rebuilt from their
config prefix their layer names with the model's name).
"""

import os

import keras
import numpy as np
import pytest

import kprune
from kprune.surgery import CompositeRebuildError, SurgeryError

PACKAGE = "kprune_tests_tracing"


@keras.saving.register_keras_serializable(package=PACKAGE)
class MaybeCached(keras.layers.Layer):
    """A projection returning `(outputs, cache)`; the cache is None unasked."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.dense = keras.layers.Dense(units, activation="relu", name="dense")

    def call(self, x, cache=None):
        return self.dense(x), cache

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package=PACKAGE)
class CachedBlock(keras.layers.Layer):
    """A block whose sublayer returns None among its outputs."""

    def __init__(self, hidden, units, **kwargs):
        super().__init__(**kwargs)
        self.hidden, self.units = hidden, units
        self.inner = MaybeCached(hidden, name="inner")
        self.out = keras.layers.Dense(units, name="out")

    def call(self, x):
        h, cache = self.inner(x)
        if cache is not None:
            h = h + cache
        return self.out(h)

    def get_config(self):
        return {**super().get_config(), "hidden": self.hidden, "units": self.units}


@keras.saving.register_keras_serializable(package=PACKAGE)
class SharedDropoutBlock(keras.layers.Layer):
    """One weightless `Dropout` called on two widths (as T5's layers do)."""

    def __init__(self, hidden, units, **kwargs):
        super().__init__(**kwargs)
        self.hidden, self.units = hidden, units
        self.up = keras.layers.Dense(hidden, activation="relu", name="up")
        self.down = keras.layers.Dense(units, name="down")
        self.dropout = keras.layers.Dropout(0.1, name="dropout")

    def call(self, x, training=None):
        h = self.dropout(self.up(x), training=training)
        return self.dropout(self.down(h), training=training)

    def get_config(self):
        return {**super().get_config(), "hidden": self.hidden, "units": self.units}


@keras.saving.register_keras_serializable(package=PACKAGE)
class SequentialMLP(keras.layers.Layer):
    """An MLP held in a list, then in a `Sequential` (as ViTDet's MLP is)."""

    def __init__(self, hidden, units, **kwargs):
        super().__init__(**kwargs)
        self.hidden, self.units = hidden, units
        self.mlp = [
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.Dense(units),
        ]
        self.mlp = keras.Sequential(self.mlp)

    def build(self, input_shape):
        self.mlp.build(input_shape)
        self.built = True

    def call(self, x):
        return self.mlp(x)

    def get_config(self):
        return {**super().get_config(), "hidden": self.hidden, "units": self.units}


@keras.saving.register_keras_serializable(package=PACKAGE)
class PrefixedModel(keras.Model):
    """A Functional subclass naming its layers after the model, when named."""

    def __init__(self, units=8, name=None, **kwargs):
        prefix = f"{name}_" if name else ""
        inputs = keras.Input((6,))
        x = keras.layers.Dense(units, activation="relu", name=prefix + "hidden")(inputs)
        x = CachedBlock(10, 5, name=prefix + "block")(x)
        outputs = keras.layers.Dense(2, name=prefix + "head")(x)
        super().__init__(inputs, outputs, name=name, **kwargs)
        self.units = units

    def get_config(self):
        return {"units": self.units, "name": self.name}


class Twice(keras.layers.Layer):
    """A weightless layer whose `compute_output_shape` says one tensor."""

    def call(self, x):
        return x * 2.0

    def compute_output_shape(self, input_shape):
        return input_shape


class TwiceBoth(Twice):
    """Overrides `call` (two tensors out) under the inherited shape rule, as
    ESM's rotary embedding does under KerasHub's `RotaryEmbedding`."""

    def call(self, x, y):
        return x * 2.0, y * 2.0


@keras.saving.register_keras_serializable(package=PACKAGE)
class PairBlock(keras.layers.Layer):
    def __init__(self, hidden, units, **kwargs):
        super().__init__(**kwargs)
        self.hidden, self.units = hidden, units
        self.left = keras.layers.Dense(hidden, name="left")
        self.right = keras.layers.Dense(hidden, name="right")
        self.both = TwiceBoth(name="both")
        self.out = keras.layers.Dense(units, name="out")

    def call(self, x):
        a, b = self.both(self.left(x), self.right(x))
        return self.out(a + b)

    def get_config(self):
        return {**super().get_config(), "hidden": self.hidden, "units": self.units}


def _zero_units(layer, units):
    kernel, bias = layer.get_weights()
    kernel[:, units] = 0.0
    bias[units] = 0.0
    layer.set_weights([kernel, bias])


def _model(block):
    inputs = keras.Input((6,))
    x = keras.layers.Dense(8, activation="relu", name="a")(inputs)
    x = keras.layers.Dense(6, name="b")(x)
    x = block(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(x))


def _same(model, small, x):
    np.testing.assert_allclose(
        np.asarray(model(x)), np.asarray(small(x)), rtol=1e-5, atol=1e-5
    )


X = np.random.default_rng(0).normal(size=(4, 6)).astype("float32")


def test_a_sublayer_returning_none_is_traced_and_slimmed(tmp_path):
    model = _model(CachedBlock(12, 6, name="block"))
    _zero_units(model.get_layer("block").inner.dense, [0, 3, 5])
    small = kprune.surgery.slim(model)
    _same(model, small, X)
    assert small.get_layer("block").hidden == 9
    path = os.path.join(tmp_path, "small.keras")
    small.save(path)
    _same(model, keras.saving.load_model(path), X)


def test_a_weightless_layer_shared_between_widths_does_not_pin():
    model = _model(SharedDropoutBlock(12, 6, name="block"))
    _zero_units(model.get_layer("block").up, [1, 2])
    small = kprune.surgery.slim(model)
    _same(model, small, X)
    assert small.get_layer("block").hidden == 10


def test_a_sublayer_with_an_inherited_output_shape_rule_is_traced():
    model = _model(PairBlock(10, 6, name="block"))
    _zero_units(model.get_layer("block").left, [2])
    _zero_units(model.get_layer("block").right, [2])
    assert "block/left" in kprune.surgery.prunable_units(model)
    small = kprune.surgery.slim(model)
    _same(model, small, X)
    assert small.get_layer("block").hidden == 9


def test_a_sublayer_held_twice_is_resized_once():
    model = _model(SequentialMLP(12, 6, name="block"))
    key = next(k for k in kprune.surgery.prunable_units(model) if "block/" in k)
    small = kprune.surgery.remove_units(model, {key: [0, 1, 2]})
    assert small.get_layer("block").hidden == 9
    assert small.count_params() == model.count_params() - 3 * (6 + 1 + 6)


def test_slim_keeps_a_layer_it_cannot_rebuild_whole_and_slims_the_rest(
    monkeypatch,
):
    import kprune.surgery.rebuild as rebuild

    original = rebuild.rebuild_composite

    def refuse_mlps(call, *args, **kwargs):
        if isinstance(call.layer, SequentialMLP):
            error = CompositeRebuildError(f"'{call.path}' cannot be rebuilt")
            error.layer = call.layer
            raise error
        return original(call, *args, **kwargs)

    monkeypatch.setattr(rebuild, "rebuild_composite", refuse_mlps)
    model = _model(SequentialMLP(12, 6, name="block"))
    _zero_units(model.get_layer("a"), [0, 1])
    _zero_units(model.get_layer("block").mlp.layers[0], [0, 1, 2])
    with pytest.raises(CompositeRebuildError, match="block"):
        kprune.surgery.remove_units(model, kprune.surgery.dead_units(model))
    small = kprune.surgery.slim(model)
    _same(model, small, X)
    assert small.get_layer("a").units == 6  # slimmed around it
    assert small.get_layer("block").mlp.layers[0].units == 12  # kept whole


def test_naming_a_layer_of_sublayers_says_what_to_name():
    model = _model(CachedBlock(12, 6, name="block"))
    with pytest.raises(SurgeryError, match="layer of sublayers.*block/inner/dense"):
        kprune.surgery.remove_units(model, {"block": [0]})


def test_pruned_model_loads_when_rebuilt_names_differ(tmp_path):
    model = PrefixedModel()
    assert model.get_layer("hidden") is not None
    small = kprune.surgery.remove_units(
        model, {"hidden": [0, 1], "block/inner/dense": [2]}
    )
    assert type(small).__name__ == "PrunedModel"
    path = os.path.join(tmp_path, "small.keras")
    small.save(path)
    loaded = keras.saving.load_model(path)
    _same(small, loaded, X)
    assert loaded.count_params() == small.count_params() < model.count_params()
