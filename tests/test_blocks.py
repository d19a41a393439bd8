"""Block discovery, Block Redundancy and closed-form block replacement."""

import keras
import numpy as np

import kprune
from kprune.criteria import blocks_linear
from kprune.criteria.block_redundancy import redundancy_score, redundancy_terms
from kprune.surgery import find_blocks, replace_blocks
from kprune.surgery.blocks import batches, cut_points, merge_blocks
from kprune.testing import TestCase

L = keras.layers


def resnet(blocks=2, channels=8):
    """Stem, residual blocks (ReLU after the Add), a downsampling block, head."""
    inputs = keras.Input((12, 12, 3))
    x = L.Conv2D(channels, 3, padding="same", name="stem_conv")(inputs)
    x = L.ReLU(name="stem_relu")(x)
    for i in range(blocks):
        h = L.Conv2D(channels, 3, padding="same", name=f"res{i}_conv1")(x)
        h = L.BatchNormalization(name=f"res{i}_bn1")(h)
        h = L.ReLU(name=f"res{i}_relu1")(h)
        h = L.Conv2D(channels, 3, padding="same", name=f"res{i}_conv2")(h)
        x = L.Add(name=f"res{i}_add")([x, h])
        x = L.ReLU(name=f"res{i}_out")(x)
    h = L.Conv2D(2 * channels, 3, strides=2, padding="same", name="down_conv")(x)
    s = L.Conv2D(2 * channels, 1, strides=2, name="down_proj")(x)
    x = L.Add(name="down_add")([s, h])
    x = L.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, L.Dense(4, name="head")(x))


def vit(depth=2, dim=16, tokens=9):
    """Patches -> pre-norm transformer blocks (attention + MLP) -> head."""
    inputs = keras.Input((12, 12, 1))
    x = L.Conv2D(dim, 4, strides=4, name="patch")(inputs)
    x = L.Reshape((tokens, dim), name="tokens")(x)
    for i in range(depth):
        h = L.LayerNormalization(name=f"block{i}_ln1")(x)
        h = L.MultiHeadAttention(2, dim // 2, name=f"block{i}_mha")(h, h)
        x = L.Add(name=f"block{i}_add1")([x, h])
        h = L.LayerNormalization(name=f"block{i}_ln2")(x)
        h = L.Dense(2 * dim, activation="gelu", name=f"block{i}_fc1")(h)
        h = L.Dense(dim, name=f"block{i}_fc2")(h)
        x = L.Add(name=f"block{i}_add2")([x, h])
    x = L.LayerNormalization(name="final_ln")(x)
    x = L.GlobalAveragePooling1D(name="pool")(x)
    return keras.Model(inputs, L.Dense(3, name="head")(x))


def mlp():
    return keras.Sequential(
        [
            keras.Input((6,)),
            L.Dense(8, activation="relu", name="fc1"),
            L.Dense(8, activation="relu", name="fc2"),
            L.Dense(8, activation="relu", name="fc3"),
            L.Dense(2, name="out"),
        ],
        name="mlp",
    )


def affine_residual(shape=(6,), channels=6):
    """`x + B(A x)`: the middle block is exactly affine (no activation)."""
    inputs = keras.Input(shape)
    x = L.Dense(channels, activation="tanh", name="stem")(inputs)
    h = L.Dense(2 * channels, name="lin1")(x)
    h = L.Dense(channels, name="lin2")(h)
    x = L.Add(name="add")([x, h])
    x = L.Dense(channels, activation="tanh", name="after")(x)
    return keras.Model(inputs, L.Dense(3, name="head")(x))


def _names(blocks):
    return [b.name for b in blocks]


class CutPointTest(TestCase):
    def test_mlp_every_layer_is_a_block(self):
        model = mlp()
        cuts = cut_points(model)
        self.assertEqual([t.shape for _, t in cuts][0], (None, 6))
        self.assertEqual(len(cuts), 5)
        self.assertEqual(_names(find_blocks(model)), ["fc1", "fc2", "fc3", "out"])
        spans = find_blocks(model, span=2)
        self.assertEqual(_names(spans)[4:], ["fc1..fc2", "fc2..fc3", "fc3..out"])
        self.assertEqual(spans[5].size, 2)
        self.assertEqual(spans[5].num_layers, 2)
        self.assertEqual(spans[5].input_shape, (None, 8))

    def test_resnet_residual_blocks(self):
        blocks = find_blocks(resnet())
        self.assertEqual(
            _names(blocks[:4]),
            ["stem_conv", "stem_relu", "res0_conv1..res0_out", "res1_conv1..res1_out"],
        )
        self.assertRegex(blocks[4].name, r"^down_(conv|proj)\.\.down_add$")
        self.assertEqual(blocks[4].num_layers, 3)
        self.assertEqual(_names(blocks[5:]), ["pool", "head"])
        res0 = blocks[2]
        self.assertEqual(res0.num_layers, 6)  # conv, bn, relu, conv, add, relu
        self.assertEqual(res0.input_shape, (None, 12, 12, 8))
        self.assertEqual(res0.output_shape, (None, 12, 12, 8))
        self.assertTrue(res0.replaceable)
        self.assertEqual(blocks[4].output_shape, (None, 6, 6, 16))
        self.assertFalse(blocks[4].replaceable)  # spatial downsampling
        self.assertEqual(
            _names(find_blocks(resnet(), min_layers=2)),
            ["res0_conv1..res0_out", "res1_conv1..res1_out", blocks[4].name],
        )

    def test_vit_transformer_blocks(self):
        model = vit(depth=2)
        halves = find_blocks(model, min_layers=3)
        self.assertEqual(
            _names(halves),
            [
                "block0_ln1..block0_add1",
                "block0_ln2..block0_add2",
                "block1_ln1..block1_add1",
                "block1_ln2..block1_add2",
            ],
        )
        whole = find_blocks(model, min_layers=2, key=r"^(block\d+)_")
        self.assertEqual(_names(whole), ["block0", "block1"])
        self.assertEqual(whole[0].num_layers, 7)
        self.assertEqual(whole[0].input_shape, (None, 9, 16))
        self.assertIs(whole[0].end, whole[1].start)
        merged = merge_blocks(whole)
        self.assertEqual(merged.num_layers, 14)
        self.assertEqual(merged.name, "block0..block1")
        with self.assertRaisesRegex(ValueError, "not consecutive"):
            merge_blocks([whole[1], whole[0]])

    def test_bad_arguments(self):
        with self.assertRaisesRegex(ValueError, "min_layers"):
            find_blocks(mlp(), min_layers=0)
        with self.assertRaisesRegex(ValueError, "key"):
            find_blocks(mlp(), key=3)


class LinearFitTest(TestCase):
    def test_streamed_fit_equals_lstsq(self):
        rng = np.random.default_rng(0)
        x = rng.normal(size=(1000, 7)) * rng.uniform(0.1, 5, 7) + 3.0
        y = np.tanh(x @ rng.normal(size=(7, 4))) + rng.normal(size=(1000, 4))
        moments = blocks_linear.moments_init(7, 4)
        for start in range(0, 1000, 64):  # batches of 64 rows
            moments = blocks_linear.moments_update(
                moments, x[start : start + 64], y[start : start + 64]
            )
        kernel, bias = blocks_linear.solve_affine(moments)
        design = np.concatenate([x, np.ones((1000, 1))], axis=1)
        theta = np.linalg.lstsq(design, y, rcond=None)[0]
        np.testing.assert_allclose(kernel, theta[:-1], rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(bias, theta[-1], rtol=1e-7, atol=1e-9)
        residual = design @ theta - y
        quality = blocks_linear.fit_quality(moments, kernel)
        sst = ((y - y.mean(0)) ** 2).sum()
        self.assertAlmostEqual(quality["r2"], 1 - (residual**2).sum() / sst, 9)
        self.assertAlmostEqual(quality["mse"], (residual**2).mean(), 9)

    def test_ridge_matches_closed_form(self):
        rng = np.random.default_rng(1)
        x, y = rng.normal(size=(200, 5)), rng.normal(size=(200, 2))
        moments = blocks_linear.moments_update(blocks_linear.moments_init(5, 2), x, y)
        kernel, bias = blocks_linear.solve_affine(moments, ridge=0.3)
        xc, yc = x - x.mean(0), y - y.mean(0)
        expected = np.linalg.solve(xc.T @ xc / 200 + 0.3 * np.eye(5), xc.T @ yc / 200)
        np.testing.assert_allclose(kernel, expected, rtol=1e-9)
        np.testing.assert_allclose(bias, y.mean(0) - x.mean(0) @ expected, atol=1e-12)
        with self.assertRaisesRegex(ValueError, "ridge"):
            blocks_linear.solve_affine(moments, ridge=-1.0)

    def test_collinear_inputs_give_min_norm_solution(self):
        rng = np.random.default_rng(2)
        x = rng.normal(size=(300, 4))
        x -= x.mean(axis=1, keepdims=True)  # LayerNorm-like: rows sum to 0
        y = x @ rng.normal(size=(4, 3)) + 1.0
        moments = blocks_linear.moments_update(blocks_linear.moments_init(4, 3), x, y)
        kernel, bias = blocks_linear.solve_affine(moments)
        np.testing.assert_allclose(x @ kernel + bias, y, atol=1e-9)
        self.assertGreater(blocks_linear.fit_quality(moments, kernel)["r2"], 1 - 1e-9)

    def test_rows_must_pair(self):
        moments = blocks_linear.moments_init(2, 2)
        with self.assertRaisesRegex(ValueError, "leading axes"):
            blocks_linear.moments_update(moments, np.ones((4, 2)), np.ones((3, 2)))


class ReplaceBlocksTest(TestCase):
    def _affine_block(self, model):
        (block,) = [b for b in find_blocks(model) if b.name == "lin1..add"]
        return block

    def test_exactly_affine_block_is_replaced_exactly(self):
        for shape in [(6,), (5, 6), (4, 4, 6)]:  # vectors, tokens, feature maps
            with self.subTest(shape=shape):
                model = affine_residual(shape)
                x = np.random.default_rng(0).normal(size=(300,) + shape)
                x = x.astype("float32")
                new, info = replace_blocks(
                    model,
                    [self._affine_block(model)],
                    x,
                    batch_size=64,
                    return_info=True,
                )
                self.assertSameOutputs(model, new, x, rtol=1e-5)
                self.assertNotIn("lin1", [layer.name for layer in new.layers])
                self.assertIn("lin1..add_linear", [layer.name for layer in new.layers])
                self.assertGreater(info[0]["r2"], 1 - 1e-8)
                self.assertEqual(info[0]["params_removed"], 6 * 12 + 12 + 12 * 6 + 6)
                self.assertEqual(info[0]["params_added"], 6 * 6 + 6)
                positions = int(np.prod(shape[:-1]))
                self.assertEqual(info[0]["macs_removed"], positions * 2 * 72)
                self.assertEqual(info[0]["macs_added"], positions * 36)

    def test_streamed_data_and_modes_agree_on_affine_block(self):
        model = affine_residual()
        x = np.random.default_rng(1).normal(size=(200, 6)).astype("float32")
        block = self._affine_block(model)
        dataset = [(x[i : i + 50], None) for i in range(0, 200, 50)]
        for fit_inputs in ("original", "replaced"):
            new = replace_blocks(model, [block], dataset, fit_inputs=fit_inputs)
            self.assertSameOutputs(model, new, x, rtol=1e-5)
        with self.assertRaisesRegex(ValueError, "fit_inputs"):
            replace_blocks(model, [block], x, fit_inputs="both")
        after = [b for b in find_blocks(model) if b.name == "after"]
        with self.assertRaisesRegex(ValueError, "one-shot iterator"):
            replace_blocks(model, [block] + after, iter(dataset))
        new = replace_blocks(
            model, [block] + after, iter(dataset), fit_inputs="original"
        )
        self.assertEqual(new.output_shape, (None, 3))

    def test_span_and_consecutive_blocks_on_vit(self):
        model = vit(depth=3)
        x = np.random.default_rng(2).random((64, 12, 12, 1)).astype("float32")
        blocks = find_blocks(model, min_layers=2, key=r"^(block\d+)_")
        # one Dense for blocks 0-1 and another one right after it for block 2
        new, info = replace_blocks(model, [blocks[:2], blocks[2]], x, return_info=True)
        self.assertEqual([i["name"] for i in info], ["block0..block1", "block2"])
        dense = [layer for layer in new.layers if isinstance(layer, L.Dense)]
        self.assertEqual(
            [layer.name for layer in dense],
            ["block0..block1_linear", "block2_linear", "head"],
        )
        self.assertFalse(any(isinstance(la, L.MultiHeadAttention) for la in new.layers))
        before = kprune.report.summary(model)["params"]
        after = kprune.report.summary(new)["params"]
        saved = sum(i["params_removed"] - i["params_added"] for i in info)
        self.assertEqual(before - after, saved)
        self.assertEqual(new.output_shape, model.output_shape)

    def test_saves_loads_and_exports(self):
        model = vit(depth=2)
        x = np.random.default_rng(3).random((32, 12, 12, 1)).astype("float32")
        block = find_blocks(model, min_layers=2, key=r"^(block\d+)_")[1]
        new = replace_blocks(model, [block], x)
        self.run_model_saving_test(new, x)
        path = kprune.export.to_tflite(
            new, self.tmp_path("new.tflite"), sample_inputs=x[:4]
        )
        self.assertTrue(path.endswith(".tflite"))

    def test_never_mutates_the_model(self):
        model = vit(depth=2)
        x = np.random.default_rng(4).random((16, 12, 12, 1)).astype("float32")
        weights = [w.copy() for w in model.get_weights()]
        config = model.get_config()
        nodes = {layer.name: len(layer._inbound_nodes) for layer in model.layers}
        before = np.asarray(model(x))
        blocks = find_blocks(model, min_layers=2, key=r"^(block\d+)_")
        kprune.criteria.block_redundancy(model, x, blocks=blocks)
        replace_blocks(model, blocks, x)
        self.assertEqual(model.get_config(), config)
        for a, b in zip(weights, model.get_weights()):
            np.testing.assert_array_equal(a, b)
        self.assertEqual(
            {layer.name: len(layer._inbound_nodes) for layer in model.layers}, nodes
        )
        np.testing.assert_array_equal(before, np.asarray(model(x)))

    def test_errors_name_the_block(self):
        model = resnet()
        x = np.random.default_rng(5).random((8, 12, 12, 3)).astype("float32")
        blocks = find_blocks(model)
        down = [b for b in blocks if b.name.endswith("down_add")]
        with self.assertRaisesRegex(ValueError, "down_.*down_add.*last axis"):
            replace_blocks(model, down, x)
        res0 = blocks[2]
        with self.assertRaisesRegex(ValueError, "overlap"):
            replace_blocks(model, [res0, merge_blocks(blocks[2:4])], x)
        with self.assertRaisesRegex(ValueError, "does not belong"):
            replace_blocks(mlp(), [res0], np.zeros((4, 6), "float32"))
        with self.assertRaisesRegex(ValueError, "ridge"):
            replace_blocks(model, [res0], x, ridge=-1)
        with self.assertRaisesRegex(ValueError, "Block"):
            replace_blocks(model, ["res0"], x)

    def test_blocks_from_another_trace_and_residual_cnn(self):
        model = resnet()
        x = np.random.default_rng(6).random((40, 12, 12, 3)).astype("float32")
        res1 = find_blocks(model)[3]
        self.assertEqual(res1.name, "res1_conv1..res1_out")
        new = replace_blocks(model, [res1], x, ridge=1e-3)
        names = [layer.name for layer in new.layers]
        self.assertNotIn("res1_conv1", names)
        self.assertIn("res0_conv1", names)
        self.assertEqual(new.output_shape, (None, 4))


class BlockRedundancyTest(TestCase):
    def test_score_formula(self):
        a = np.array([[1.0, 0.0], [0.0, 2.0]])
        b = np.array([[1.0, 1.0], [0.0, 2.0]])
        change, norm, cosine = redundancy_terms(a, b)
        np.testing.assert_allclose(change, [1.0, 0.0])
        np.testing.assert_allclose(norm, [1.0, 4.0])
        np.testing.assert_allclose(cosine, [1 / np.sqrt(2), 1.0])
        self.assertAlmostEqual(redundancy_score(change, norm, normalize=False), -0.5)
        self.assertAlmostEqual(redundancy_score(change, norm), -0.5)
        self.assertAlmostEqual(redundancy_score([4.0], [2.0]), -2.0)

    def test_ranks_a_near_identity_block_first(self):
        inputs = keras.Input((8,))
        x = L.Dense(8, activation="tanh", name="stem")(inputs)
        h = L.Dense(8, activation="relu", name="small_fc")(x)
        h = L.Rescaling(0.01, name="small_scale")(h)
        x = L.Add(name="small_add")([x, h])  # changes its input by ~1 %
        h = L.Dense(8, activation="relu", name="big_fc")(x)
        h = L.Dense(8, name="big_fc2")(h)
        h = L.Rescaling(5.0, name="big_scale")(h)
        x = L.Add(name="big_add")([x, h])
        model = keras.Model(inputs, L.Dense(2, name="head")(x))
        x = np.random.default_rng(0).normal(size=(256, 8)).astype("float32")
        ranked = kprune.criteria.block_redundancy(model, x, batch_size=50, min_layers=2)
        self.assertEqual(
            [c.name for c in ranked], ["small_fc..small_add", "big_fc..big_add"]
        )
        self.assertEqual([c.rank for c in ranked], [0, 1])
        self.assertGreater(ranked[0].redundancy, -0.01)
        self.assertLess(ranked[1].redundancy, -1.0)
        self.assertGreater(ranked[0].cosine, 0.99)
        self.assertGreater(ranked[0].r2, ranked[1].r2)
        by_r2 = kprune.criteria.block_redundancy(
            model, x, min_layers=2, rank_by="r2", normalize=False
        )
        self.assertEqual(by_r2[0].name, "small_fc..small_add")
        self.assertEqual(set(by_r2[0].to_dict()), set(ranked[0].to_dict()))

    def test_affine_block_r2_and_shape_changes(self):
        model = affine_residual()
        x = np.random.default_rng(1).normal(size=(128, 6)).astype("float32")
        ranked = kprune.criteria.block_redundancy(model, x)
        by_name = {c.name: c for c in ranked}
        self.assertAlmostEqual(by_name["lin1..add"].r2, 1.0, places=6)
        head = by_name["head"]  # 6 -> 3: no redundancy score, still fittable
        self.assertTrue(np.isnan(head.redundancy))
        self.assertEqual(ranked[-1].name, "head")
        cnn = kprune.criteria.block_redundancy(
            resnet(), np.random.rand(16, 12, 12, 3).astype("float32")
        )
        self.assertFalse(cnn[-1].replaceable)
        chosen = kprune.criteria.select_blocks(cnn, 10)
        self.assertTrue(all(b.replaceable for b in chosen))
        ids = [id(n) for b in chosen for n in b.nodes]
        self.assertEqual(len(ids), len(set(ids)))

    def test_select_blocks_skips_overlaps(self):
        model = mlp()
        x = np.random.rand(32, 6).astype("float32")
        ranked = kprune.criteria.block_redundancy(model, x, span=2, rank_by="r2")
        chosen = kprune.criteria.select_blocks(ranked, 3)
        ids = [id(n) for b in chosen for n in b.nodes]
        self.assertEqual(len(ids), len(set(ids)))
        self.assertLessEqual(len(chosen), 3)
        with self.assertRaisesRegex(ValueError, "rank_by"):
            kprune.criteria.block_redundancy(model, x, rank_by="size")

    def test_batches_reads_arrays_tuples_and_iterables(self):
        model = mlp()
        x = np.arange(60, dtype="float32").reshape(10, 6)
        sizes = [len(b) for b in batches(model, x, batch_size=4)]
        self.assertEqual(sizes, [4, 4, 2])
        sizes = [len(b) for b in batches(model, (x, np.zeros(10)), 3, max_samples=7)]
        self.assertEqual(sizes, [3, 3, 1])
        sizes = [
            len(b) for b in batches(model, [(x[:5], 0), (x[5:], 0)], max_samples=8)
        ]
        self.assertEqual(sizes, [5, 3])
        pairs = [(x[:6], np.zeros(6)), (x[6:], np.zeros(4))]  # (x, y) batches
        got = list(batches(model, pairs))
        self.assertEqual([b.shape for b in got], [(6, 6), (4, 6)])
        with self.assertRaisesRegex(ValueError, "batch_size"):
            list(batches(model, x, batch_size=0))
