"""Tests for kprune.report: params, non-zeros, MACs, widths, tables, plots."""

import json
import os
import sys
from unittest import mock

import keras
import numpy as np
import pytest

from kprune import report
from kprune.testing import TestCase


def macs_of(layer, input_shape):
    """MACs of a model made of `layer` alone on `input_shape`."""
    model = keras.Sequential([keras.Input(input_shape), layer])
    return report.summary(model)["macs"]


class LayerMacsTest(TestCase):
    def test_dense_lenet_300_100(self):
        model = keras.Sequential(
            [
                keras.Input((784,)),
                keras.layers.Dense(300, activation="relu"),
                keras.layers.Dense(100, activation="relu"),
                keras.layers.Dense(10),
            ]
        )
        s = report.summary(model)
        self.assertEqual(s["macs"], 784 * 300 + 300 * 100 + 100 * 10)
        self.assertEqual(s["params"], 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10)
        self.assertEqual([row["width"] for row in s["layers"]], [300, 100, 10])

    def test_dense_on_sequences_counts_every_position(self):
        # (7, 16) -> (7, 4): 7 positions x 16 x 4.
        self.assertEqual(macs_of(keras.layers.Dense(4), (7, 16)), 7 * 16 * 4)

    def test_conv2d(self):
        cases = {
            # 32x32x3 -> 16x16x16 (stride 2, same): 256 * 3*3*3*16
            "strided_same": (
                keras.layers.Conv2D(16, 3, strides=2, padding="same"),
                (32, 32, 3),
                16 * 16 * 3 * 3 * 3 * 16,
            ),
            # 32x32x3 -> 28x28x8 (valid): 784 * 5*5*3*8
            "valid": (keras.layers.Conv2D(8, 5), (32, 32, 3), 28 * 28 * 5 * 5 * 3 * 8),
            # stride 2 valid: 32 -> 15
            "strided_valid": (
                keras.layers.Conv2D(4, 3, strides=2),
                (32, 32, 3),
                15 * 15 * 3 * 3 * 3 * 4,
            ),
            # dilation 2: effective 5x5, 32 -> 28
            "dilated": (
                keras.layers.Conv2D(4, 3, dilation_rate=2),
                (32, 32, 3),
                28 * 28 * 3 * 3 * 3 * 4,
            ),
            # groups 2: each filter sees 2 of the 4 channels
            "grouped": (
                keras.layers.Conv2D(8, 3, groups=2),
                (16, 16, 4),
                14 * 14 * 3 * 3 * 2 * 8,
            ),
        }
        for name, (layer, shape, expected) in cases.items():
            with self.subTest(case=name):
                self.assertEqual(macs_of(layer, shape), expected)

    def test_conv1d_and_conv3d(self):
        self.assertEqual(macs_of(keras.layers.Conv1D(6, 3), (20, 4)), 18 * 3 * 4 * 6)
        self.assertEqual(
            macs_of(keras.layers.Conv3D(2, 3, padding="same"), (4, 4, 4, 3)),
            64 * 27 * 3 * 2,
        )

    def test_depthwise_conv2d(self):
        # 16x16x4 -> 8x8x8 (stride 2, same, multiplier 2): 64 * 3*3*4*2
        layer = keras.layers.DepthwiseConv2D(
            3, strides=2, padding="same", depth_multiplier=2
        )
        model = keras.Sequential([keras.Input((16, 16, 4)), layer])
        s = report.summary(model)
        self.assertEqual(s["macs"], 8 * 8 * 3 * 3 * 4 * 2)
        self.assertEqual(s["layers"][0]["width"], 8)

    def test_separable_conv2d(self):
        # 16x16x4 -> 14x14x10: 196 * (3*3*4 depthwise + 4*10 pointwise)
        layer = keras.layers.SeparableConv2D(10, 3)
        self.assertEqual(macs_of(layer, (16, 16, 4)), 14 * 14 * (3 * 3 * 4 + 4 * 10))

    def test_conv2d_transpose(self):
        # every one of the 8x8 input positions meets the whole 3x3x4x6 kernel
        layer = keras.layers.Conv2DTranspose(6, 3, strides=2)
        self.assertEqual(macs_of(layer, (8, 8, 4)), 8 * 8 * 3 * 3 * 4 * 6)

    def test_embedding_and_batchnorm_are_free(self):
        model = keras.Sequential(
            [
                keras.Input((5,), dtype="int32"),
                keras.layers.Embedding(50, 8),
                keras.layers.BatchNormalization(),
                keras.layers.Dense(3),
            ]
        )
        s = report.summary(model)
        rows = {row["class_name"]: row for row in s["layers"]}
        self.assertEqual(rows["Embedding"]["macs"], 0)
        self.assertEqual(rows["Embedding"]["width"], 8)
        self.assertEqual(rows["BatchNormalization"]["macs"], 0)
        self.assertIsNone(rows["BatchNormalization"]["width"])
        self.assertEqual(s["macs"], 5 * 8 * 3)
        self.assertEqual(s["non_trainable_params"], 16)  # BN moving mean/var

    def test_einsum_dense(self):
        layer = keras.layers.EinsumDense("abc,cd->abd", output_shape=(None, 6))
        self.assertEqual(macs_of(layer, (7, 5)), 7 * 5 * 6)


def attention_model(query_shape, value_shape=None, key_shape=None, **kwargs):
    """A model calling one MultiHeadAttention (2 heads, key 4, value 3)."""
    kwargs = {"num_heads": 2, "key_dim": 4, "value_dim": 3, **kwargs}
    query = keras.Input(query_shape)
    inputs, args = [query], [query, query]
    if value_shape is not None:
        args[1] = keras.Input(value_shape)
        inputs.append(args[1])
    call_kwargs = {}
    if key_shape is not None:
        call_kwargs["key"] = keras.Input(key_shape)
        inputs.append(call_kwargs["key"])
    out = keras.layers.MultiHeadAttention(**kwargs)(*args, **call_kwargs)
    return keras.Model(inputs, out)


class AttentionMacsTest(TestCase):
    # Kernels: W_q (16, 2, 4) = 128, W_o (2, 3, 16) = 96; W_k / W_v read
    # the key / value features.

    def test_self_attention(self):
        # 6 x (128 + 128 + 96 + 96) projections + 2 x 6 x 6 x (4 + 3).
        s = report.summary(attention_model((6, 16)))
        self.assertEqual(s["macs"], 6 * 448 + 2 * 6 * 6 * 7)

    def test_cross_attention_reads_value_and_key_shapes(self):
        # Value (9, 12): W_k (12, 2, 4) = 96, W_v (12, 2, 3) = 72.
        s = report.summary(attention_model((6, 16), (9, 12)))
        self.assertEqual(s["macs"], 6 * 128 + 9 * 96 + 9 * 72 + 2 * 6 * 9 * 7 + 6 * 96)
        # A separate key (9, 10): W_k (10, 2, 4) = 80.
        s = report.summary(attention_model((6, 16), (9, 12), (9, 10)))
        self.assertEqual(s["macs"], 6 * 128 + 9 * 80 + 9 * 72 + 2 * 6 * 9 * 7 + 6 * 96)

    def test_attention_axes(self):
        # (3, 5, 8) attending along axis 2 only: 15 query positions, each
        # against 5 keys; one head, key = value dim 4, all kernels 32.
        model = attention_model(
            (3, 5, 8), num_heads=1, value_dim=None, attention_axes=(2,)
        )
        self.assertEqual(report.summary(model)["macs"], 15 * 32 * 4 + 15 * 5 * 8)

    def test_layer_macs_assumes_self_attention(self):
        layer = attention_model((6, 16)).layers[-1]
        self.assertEqual(
            report.layer_macs(layer, (None, 6, 16), (None, 6, 16)), 2688 + 504
        )
        self.assertIsNone(report.attention_macs(layer, (None, None, 16)))


class SummaryTest(TestCase):
    def test_nonzero_and_sparsity(self):
        model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(4)])
        kernel = np.ones((10, 4), "float32")
        kernel[:5] = 0.0  # 20 of 40 kernel weights are zero
        model.layers[0].kernel.assign(kernel)
        model.layers[0].bias.assign(np.ones(4, "float32"))
        s = report.summary(model)
        self.assertEqual(s["params"], 44)
        self.assertEqual(s["nonzero_params"], 24)
        self.assertAlmostEqual(s["sparsity"], 20 / 44)
        self.assertEqual(s["kernel_params"], 40)
        self.assertAlmostEqual(s["kernel_sparsity"], 0.5)
        self.assertEqual(s["layers"][0]["nonzero_params"], 24)

    def test_nested_models_get_path_names(self):
        inner = keras.Sequential(
            [
                keras.Input((8, 8, 4)),
                keras.layers.Conv2D(6, 3, padding="same", name="c"),
            ],
            name="inner",
        )
        block_in = keras.Input((8, 8, 6))
        block = keras.Model(
            block_in, keras.layers.Conv2D(2, 1, name="proj")(block_in), name="block"
        )
        inputs = keras.Input((16, 16, 3))
        x = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="stem")(inputs)
        x = block(inner(x))
        outputs = keras.layers.Dense(3, name="head")(keras.layers.Flatten()(x))
        model = keras.Model(inputs, outputs)
        s = report.summary(model)
        names = [row["name"] for row in s["layers"]]
        self.assertEqual(names, ["stem", "inner/c", "block/proj", "flatten", "head"])
        macs = {row["name"]: row["macs"] for row in s["layers"]}
        self.assertEqual(macs["inner/c"], 64 * 3 * 3 * 4 * 6)
        self.assertEqual(macs["block/proj"], 64 * 6 * 2)
        self.assertEqual(macs["head"], 128 * 3)
        self.assertEqual(s["widths"]["inner/c"], 6)
        self.assertEqual(s["params"], model.count_params())

    def test_shared_layer_counts_every_call(self):
        shared = keras.layers.Dense(5, name="shared")
        a, b = keras.Input((3,)), keras.Input((3,))
        model = keras.Model([a, b], keras.layers.Add()([shared(a), shared(b)]))
        s = report.summary(model)
        row = [r for r in s["layers"] if r["name"] == "shared"][0]
        self.assertEqual(row["calls"], 2)
        self.assertEqual(row["macs"], 2 * 3 * 5)

    def test_unknown_dimensions_and_input_shape(self):
        model = keras.Sequential(
            [keras.Input((None, None, 3)), keras.layers.Conv2D(4, 3, name="conv")]
        )
        s = report.summary(model, unknown_size=None)
        self.assertEqual(s["unknown_macs"], ["conv"])
        self.assertIn("MACs not counted", report.format_table(s))
        s = report.summary(model)  # unknown sizes counted at 128
        self.assertEqual(s["input_shapes"], [[128, 128, 3]])
        self.assertEqual(s["macs"], 126 * 126 * 3 * 3 * 3 * 4)
        s = report.summary(model, input_shape=(10, 10, 3))
        self.assertEqual(s["unknown_macs"], [])
        self.assertEqual(s["macs"], 8 * 8 * 3 * 3 * 3 * 4)
        self.assertEqual(s["params"], 3 * 3 * 3 * 4 + 4)
        with self.assertRaisesRegex(ValueError, "input_shape"):
            report.summary(model, input_shape=[(10, 10, 3), (4,)])

    def test_bad_models(self):
        with self.assertRaisesRegex(ValueError, "not built"):
            report.summary(keras.Sequential([keras.layers.Dense(3)]))
        with self.assertRaisesRegex(ValueError, "Received: model="):
            report.summary("model.keras")


def wide_and_thin():
    wide = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(6, name="d1"),
            keras.layers.Dense(2, name="d2"),
        ],
        name="wide",
    )
    thin = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(3, name="d1"),
            keras.layers.Dense(2, name="d2"),
        ],
        name="thin",
    )
    return wide, thin


class CompareTest(TestCase):
    def test_compare_ratios_and_layers(self):
        wide, thin = wide_and_thin()
        c = report.compare(wide, thin)
        self.assertEqual(c["params"]["before"], 8 * 6 + 6 + 6 * 2 + 2)
        self.assertEqual(c["params"]["after"], 8 * 3 + 3 + 3 * 2 + 2)
        self.assertAlmostEqual(c["params"]["ratio"], 35 / 68)
        self.assertAlmostEqual(c["macs"]["ratio"], (24 + 6) / (48 + 12))
        d1 = c["layers"][0]
        self.assertEqual(d1["name"], "d1")
        self.assertEqual(d1["width"], {"before": 6, "after": 3, "ratio": 0.5})
        self.assertEqual(json.loads(report.to_json(c)), c)

    def test_compare_new_and_removed_layers(self):
        wide, _ = wide_and_thin()
        other = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2, name="x")])
        c = report.compare(report.summary(wide), other)
        names = [layer["name"] for layer in c["layers"]]
        self.assertEqual(names, ["d1", "d2", "x"])
        self.assertIsNone(c["layers"][0]["width"]["after"])
        self.assertIsNone(c["layers"][2]["width"]["before"])
        with self.assertRaisesRegex(ValueError, "before"):
            report.compare({"nope": 1}, other)

    def test_format_table(self):
        wide, thin = wide_and_thin()
        text = report.format_table(report.compare(wide, thin))
        self.assertIn("params: 68 -> 35", text)
        self.assertIn("6 -> 3", text)
        self.assertIn("d2", text)
        single = report.format_table(report.summary(wide))
        self.assertIn("macs: 60", single)
        markdown = report.format_table(report.summary(wide), markdown=True)
        self.assertIn("| d1", markdown)
        with self.assertRaisesRegex(ValueError, "report"):
            report.format_table([1, 2])

    def test_to_json_writes_file(self):
        wide, _ = wide_and_thin()
        path = self.tmp_path("s.json")
        text = report.to_json(report.summary(wide), path=path)
        with open(path) as f:
            self.assertEqual(json.load(f), json.loads(text))
        self.assertEqual(json.loads(report.to_json({"n": np.int64(3)})), {"n": 3})


class PlotTest(TestCase):
    def test_plot_widths_writes_png(self):
        wide, thin = wide_and_thin()
        path = report.plot_widths(wide, thin, self.tmp_path("widths.png"))
        self.assertTrue(os.path.getsize(path) > 1000)
        with open(path, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")

    def test_missing_matplotlib_says_how_to_install(self):
        wide, thin = wide_and_thin()
        with mock.patch.dict(sys.modules, {"matplotlib.figure": None}):
            with self.assertRaisesRegex(ImportError, r"pip install kprune\[plots\]"):
                report.plot_widths(wide, thin, self.tmp_path("x.png"))


class CompositeMacsTest(TestCase):
    """MACs inside layers made of sublayers (issue 17)."""

    def test_layer_of_sublayers_counts_its_parts(self):
        @keras.saving.register_keras_serializable(package="kprune_test")
        class Block(keras.layers.Layer):
            def __init__(self, **kwargs):
                super().__init__(**kwargs)
                self.up = keras.layers.Dense(12, name="up")
                self.down = keras.layers.Dense(6, name="down")

            def call(self, x):
                return x + self.down(keras.ops.relu(self.up(x)))

        x = keras.Input((5, 6))
        y = keras.layers.MultiHeadAttention(2, 4, name="mha")(x, x)
        y = Block(name="block")(y)
        model = keras.Model(x, keras.layers.Dense(3, name="head")(y))
        s = report.summary(model)
        macs = {row["name"]: row["macs"] for row in s["layers"]}
        self.assertEqual(macs["block"], 5 * 6 * 12 + 5 * 12 * 6)
        self.assertEqual(macs["mha"], 4 * 5 * 6 * 8 + 2 * 5 * 5 * 8)
        self.assertEqual(macs["head"], 5 * 6 * 3)
        self.assertEqual(s["unknown_macs"], [])

    def test_einsum_op_and_recurrent_layers(self):
        x = keras.Input((7, 4))
        h = keras.layers.LSTM(5, return_sequences=True, name="lstm")(x)
        scores = keras.ops.einsum("btc,bsc->bts", h, h)
        model = keras.Model(x, keras.layers.Dense(2, name="head")(scores))
        s = report.summary(model)
        macs = {row["name"]: row["macs"] for row in s["layers"]}
        self.assertEqual(macs["lstm"], 7 * 4 * 5 * (4 + 5))
        self.assertEqual(macs["head"], 7 * 7 * 2)
        self.assertEqual(macs["(keras.ops)"], 7 * 7 * 5)
        self.assertEqual(s["macs"], 7 * 4 * 5 * 9 + 7 * 7 * 5 + 7 * 7 * 2)

    def test_keras_hub_backbone_counts_inside_blocks(self):
        keras_hub = pytest.importorskip("keras_hub")
        backbone = keras_hub.models.BertBackbone(
            vocabulary_size=50,
            num_layers=2,
            num_heads=2,
            hidden_dim=8,
            intermediate_dim=16,
            max_sequence_length=16,
        )
        s = report.summary(backbone)
        self.assertEqual(s["input_shapes"], [[128], [128], [128]])
        s = report.summary(
            backbone,
            input_shape={
                "token_ids": (16,),
                "padding_mask": (16,),
                "segment_ids": (16,),
            },
        )
        per_block = 16 * (4 * 8 * 8 + 2 * 8 * 16) + 2 * 16 * 16 * 4 * 2
        blocks = [r["macs"] for r in s["layers"] if "transformer_layer" in r["name"]]
        self.assertEqual(blocks, [per_block, per_block])
        self.assertGreaterEqual(s["macs"], 2 * per_block)
        self.assertEqual(s["unknown_macs"], [])
