"""Heads of attention layers kprune traces (no handler): `tracing.heads`.

Two small attention layers written as KerasHub writes its own: projections
reshaped to `(batch, seq, heads, dim)` and merged back (as T5 / RoFormer
do), and `EinsumDense` projections with a head axis in the kernel (as
BLOOM / Falcon do) with grouped key/value heads repeated over their query
group. A head whose output rows are zero is removed exactly; any head can be
removed; the layer keeps its class with the new `num_heads`; the result
saves and loads. Heads combined with per-head constants computed from the
head count (ALiBi slopes) are refused with the reason.
"""

import os

import keras
import numpy as np
import pytest
from keras import ops

import kprune
from kprune.surgery import SurgeryError

PACKAGE = "kprune_tests_traced_heads"


@keras.saving.register_keras_serializable(package=PACKAGE)
class SplitHeadsAttention(keras.layers.Layer):
    """Dense projections split into heads with `ops.reshape`."""

    def __init__(self, num_heads, head_dim, alibi=False, **kwargs):
        super().__init__(**kwargs)
        self.num_heads, self.head_dim, self.alibi = num_heads, head_dim, alibi
        width = num_heads * head_dim
        self.q = keras.layers.Dense(width, name="q")
        self.k = keras.layers.Dense(width, name="k")
        self.v = keras.layers.Dense(width, name="v")
        self.o = None

    def build(self, input_shape):
        self.o = keras.layers.Dense(input_shape[-1], name="o")
        self.o.build(tuple(input_shape[:-1]) + (self.num_heads * self.head_dim,))

    def call(self, x):
        shape = (-1, x.shape[1], self.num_heads, self.head_dim)
        q = ops.reshape(self.q(x), shape)
        k = ops.reshape(self.k(x), shape)
        v = ops.reshape(self.v(x), shape)
        scores = ops.einsum("bqnd,bknd->bnqk", q, k) / np.sqrt(self.head_dim)
        if self.alibi:
            slopes = np.arange(1, self.num_heads + 1, dtype="float32")
            distance = np.arange(x.shape[1], dtype="float32")
            scores = scores + slopes.reshape(1, -1, 1, 1) * distance  # ALiBi
        weights = ops.softmax(scores, axis=-1)
        out = ops.einsum("bnqk,bknd->bqnd", weights, v)
        out = ops.reshape(out, (-1, x.shape[1], self.num_heads * self.head_dim))
        return self.o(out)

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "head_dim": self.head_dim,
            "alibi": self.alibi,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class GroupedEinsumAttention(keras.layers.Layer):
    """`EinsumDense` projections, key/value heads shared by query groups."""

    def __init__(self, num_heads, num_kv_heads, head_dim, **kwargs):
        super().__init__(**kwargs)
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim = head_dim
        self.q = keras.layers.EinsumDense(
            "btm,mnh->btnh", (None, num_heads, head_dim), bias_axes="nh", name="q"
        )
        self.k = keras.layers.EinsumDense(
            "bsm,mnh->bsnh", (None, num_kv_heads, head_dim), name="k"
        )
        self.v = keras.layers.EinsumDense(
            "bsm,mnh->bsnh", (None, num_kv_heads, head_dim), name="v"
        )
        self.o = None

    def build(self, input_shape):
        self.o = keras.layers.EinsumDense(
            "btnh,nhm->btm", (None, input_shape[-1]), bias_axes="m", name="o"
        )
        self.o.build(tuple(input_shape[:-1]) + (self.num_heads, self.head_dim))

    def call(self, x):
        group = self.num_heads // self.num_kv_heads
        q = self.q(x)
        k = ops.repeat(self.k(x), group, axis=2)
        v = ops.repeat(self.v(x), group, axis=2)
        scores = ops.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(self.head_dim)
        out = ops.einsum("bnts,bsnh->btnh", ops.softmax(scores, axis=-1), v)
        return self.o(out)

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "num_kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
        }


def _model(layer, width=12, steps=5, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((steps, width))
    x = keras.layers.Dense(width, name="embed")(inputs)
    x = x + layer(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(x))
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        weight.assign(rng.normal(0, 0.5, weight.shape).astype("float32"))
    return model, rng.normal(size=(4, steps, width)).astype("float32")


def _zero_rows(model, path, rows):
    """Zero the output projection's input rows of the given heads."""
    layer = model.get_layer(path).o
    kernel = layer.kernel.numpy()
    kernel[rows] = 0.0
    layer.kernel.assign(kernel)


def test_split_heads_are_units_and_a_silent_head_leaves_exactly(tmp_path):
    model, x = _model(SplitHeadsAttention(3, 4, name="attn"))
    units = kprune.surgery.prunable_units(model)
    assert units["attn"].kind == "heads" and units["attn"].count == 3
    assert units["attn"].pinned is None
    _zero_rows(model, "attn", np.arange(4, 8))  # head 1: rows 4..7
    small = kprune.surgery.remove_units(model, {"attn": [1]})
    attn = small.get_layer("attn")
    assert type(attn) is SplitHeadsAttention and attn.num_heads == 2
    assert attn.q.units == 8 and attn.o.kernel.shape == (8, 12)
    np.testing.assert_allclose(small(x), model(x), rtol=1e-5, atol=1e-5)
    path = os.path.join(tmp_path, "small.keras")
    small.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded(x), small(x), rtol=1e-6, atol=1e-6)


def test_slim_never_removes_traced_heads():
    model, _ = _model(SplitHeadsAttention(2, 4, name="attn"))
    _zero_rows(model, "attn", np.arange(4, 8))
    assert "attn" not in kprune.surgery.dead_units(model)


def test_grouped_einsum_heads_leave_with_their_query_group():
    model, x = _model(GroupedEinsumAttention(4, 2, 3, name="attn"))
    units = kprune.surgery.prunable_units(model)
    assert units["attn"].count == 2  # key/value heads
    o = model.get_layer("attn").o
    kernel = o.kernel.numpy()
    kernel[2:4] = 0.0  # query heads 2 and 3: the group of key/value head 1
    o.kernel.assign(kernel)
    small = kprune.surgery.remove_units(model, {"attn": [1]})
    attn = small.get_layer("attn")
    assert (attn.num_heads, attn.num_kv_heads) == (2, 1)
    assert tuple(attn.q.kernel.shape) == (12, 2, 3)
    assert tuple(attn.q.bias.shape) == (2, 3)
    np.testing.assert_allclose(small(x), model(x), rtol=1e-5, atol=1e-5)


def test_any_head_can_be_removed():
    model, x = _model(GroupedEinsumAttention(4, 4, 3, name="attn"))
    small = kprune.surgery.remove_units(model, {"attn": [0, 2]})
    assert small.get_layer("attn").num_heads == 2
    assert small(x).shape == model(x).shape
    assert small.count_params() < model.count_params()


def test_heads_with_per_head_constants_are_refused_with_the_reason():
    model, _ = _model(SplitHeadsAttention(2, 4, alibi=True, name="attn"))
    assert "attn" not in kprune.surgery.prunable_units(model)
    with pytest.raises(SurgeryError, match="constants that differ along it"):
        kprune.surgery.remove_units(model, {"attn": [0]})


@pytest.mark.jax_by_hand(reason="a KerasHub backbone to compile on JAX")
def test_gpt_neo_x_heads():
    pytest.importorskip("keras_hub")
    from kprune.testing import zoo

    model, x = zoo.keras_hub_backbones()["gpt_neo_x"]()
    key = "transformer_layer_0/self_attention"
    units = kprune.surgery.prunable_units(model)
    assert units[key].kind == "heads" and units[key].count == 2
    layer = model.get_layer("transformer_layer_0")._self_attention_layer
    dense = layer._output_dense
    kernel = dense.kernel.numpy()
    kernel[:8] = 0.0  # head 0 (head size 8)
    dense.kernel.assign(kernel)
    small = kprune.surgery.remove_units(model, {key: [0]})
    assert small.count_params() < model.count_params()
    before = keras.tree.flatten(model(x))
    after = keras.tree.flatten(small(x))
    for a, b in zip(before, after):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4)


def test_a_rebuilt_layer_is_checked_against_the_silenced_original(monkeypatch):
    # Hide the per-head constants from the axis analysis: the heads are then
    # found, and the check of the rebuilt layer is what catches that the
    # remaining head's slope changed.
    from kprune.surgery import CompositeRebuildError
    from kprune.surgery.tracing import axes

    monkeypatch.setattr(axes, "constant_arguments", lambda node: [])
    model, _ = _model(SplitHeadsAttention(2, 4, alibi=True, name="attn"))
    assert kprune.surgery.prunable_units(model)["attn"].kind == "heads"
    with pytest.raises(CompositeRebuildError, match="changes what its other heads"):
        kprune.surgery.remove_units(model, {"attn": [0]})
