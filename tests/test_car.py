"""Tests for CAR filter pruning: scores, baselines, greedy pruning, pictures."""

import os
import sys
from unittest import mock

import keras
import numpy as np

import kprune
from kprune import criteria
from kprune.testing import TestCase


def _randomize_batchnorm(model, rng):
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, gamma.shape),
                    rng.normal(0.0, 0.3, beta.shape),
                    rng.normal(0.0, 0.2, mean.shape),
                    rng.uniform(0.5, 2.0, var.shape),
                ]
            )


def _labelled(model, x, rng, noise=0.5):
    """Center the output layer's bias; labels = noisy argmax of the logits."""
    out = model.layers[-1]
    logits = np.asarray(model.predict(x, verbose=0))
    kernel, bias = out.get_weights()
    out.set_weights([kernel, bias - logits.mean(axis=0)])
    logits = np.asarray(model.predict(x, verbose=0))
    noisy = logits + rng.normal(0.0, noise * logits.std(), logits.shape)
    return np.argmax(noisy, axis=1)


def residual_model(rng):
    """conv-BN-ReLU, a residual conv-BN branch added to it, conv, BN, GAP, dense."""
    inputs = keras.Input((10, 10, 3))
    a = keras.layers.Conv2D(6, 3, padding="same", name="c1")(inputs)
    a = keras.layers.BatchNormalization(name="bn1")(a)
    a = keras.layers.ReLU(name="r1")(a)
    b = keras.layers.Conv2D(6, 3, padding="same", name="c2")(a)
    b = keras.layers.BatchNormalization(name="bn2")(b)
    s = keras.layers.Add(name="add")([a, b])
    s = keras.layers.ReLU(name="r2")(s)
    c = keras.layers.Conv2D(5, 3, name="c3")(s)
    c = keras.layers.BatchNormalization(name="bn3")(c)
    c = keras.layers.GlobalAveragePooling2D(name="gap")(c)
    outputs = keras.layers.Dense(4, name="out")(c)
    model = keras.Model(inputs, outputs)
    _randomize_batchnorm(model, rng)
    return model


def lenet(rng):
    model = keras.Sequential(
        [
            keras.Input((12, 12, 1)),
            keras.layers.Conv2D(6, 3, name="conv1"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(8, 3, activation="relu", name="conv2"),
            keras.layers.Flatten(),
            keras.layers.Dense(12, activation="relu", name="fc1"),
            keras.layers.Dense(3, name="out"),
        ]
    )
    return model


def accuracy(model, x, y):
    return criteria.measure(model, x, y)


class CarScoresTest(TestCase):
    def setUp(self):
        super().setUp()
        self.rng = np.random.default_rng(0)

    def test_car_equals_accuracy_drop_of_real_removal(self):
        model = residual_model(self.rng)
        x = self.rng.normal(size=(160, 10, 10, 3)).astype("float32")
        y = _labelled(model, x, self.rng)
        base = accuracy(model, x, y)
        for layer in ["c1", "c3"]:
            scores = criteria.car_scores(model, layer, x, y, batch_size=64)
            units = model.get_layer(layer).filters
            expected = [
                base - accuracy(kprune.surgery.remove_units(model, {layer: [k]}), x, y)
                for k in range(units)
            ]
            np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-12)
            self.assertGreater(np.abs(scores).max(), 0.0)

    def test_dense_consumer_after_flatten_and_relu_conv(self):
        model = lenet(self.rng)
        x = self.rng.normal(size=(120, 12, 12, 1)).astype("float32")
        y = _labelled(model, x, self.rng)
        for layer in ["conv1", "conv2"]:  # conv and dense-after-flatten consumers
            fast = criteria.car_scores(model, layer, x, y, ablation_batch=3)
            naive = criteria.surgery_scores(model, layer, x, y)
            np.testing.assert_allclose(fast, naive, atol=1e-12)

    def test_batched_and_unbatched_scores_agree(self):
        model = residual_model(self.rng)
        x = self.rng.normal(size=(100, 10, 10, 3)).astype("float32")
        y = _labelled(model, x, self.rng)
        one = criteria.car_scores(model, "c3", x, y, batch_size=100, ablation_batch=1)
        many = criteria.car_scores(model, "c3", x, y, batch_size=32, ablation_batch=4)
        np.testing.assert_allclose(one, many, atol=1e-12)
        scorer = criteria.AblationScorer(model, "c1", x, y, batch_size=40)
        np.testing.assert_allclose(
            scorer.scores([2]), scorer.scores([2], fast=False), atol=1e-12
        )
        # evaluate() of explicit sets agrees with the one-at-a-time path.
        values = scorer.evaluate([[2], [2, 0], [2, 5]])
        np.testing.assert_allclose(
            values, scorer.evaluate_each([2], [0, 5]), atol=1e-12
        )

    def test_coupled_residual_group_scored_as_one(self):
        model = residual_model(self.rng)
        x = self.rng.normal(size=(120, 10, 10, 3)).astype("float32")
        y = _labelled(model, x, self.rng)
        c1 = criteria.car_scores(model, "c1", x, y)
        c2 = criteria.car_scores(model, "c2", x, y)
        np.testing.assert_array_equal(c1, c2)
        base = accuracy(model, x, y)
        group = kprune.surgery.remove_units(model, {"c2": [3]})
        self.assertEqual(group.get_layer("c1").filters, 5)  # the group left
        self.assertAlmostEqual(c1[3], base - accuracy(group, x, y), places=12)
        # Without groups, only c2's own channel is zeroed: a different number.
        own = criteria.car_scores(model, "c2", x, y, groups=False)
        kernel, bias = model.get_layer("c2").get_weights()
        zeroed = keras.models.clone_model(model)
        zeroed.set_weights(model.get_weights())
        kernel[..., 3], bias[3] = 0.0, 0.0
        zeroed.get_layer("c2").set_weights([kernel, bias])
        self.assertAlmostEqual(own[3], base - accuracy(zeroed, x, y), places=12)

    def test_constant_unit_folds_like_the_surgery(self):
        model = lenet(self.rng)
        kernel, bias = model.get_layer("conv1").get_weights()
        kernel[..., 2], bias[2] = 0.0, 0.7  # unit 2 outputs the constant 0.7
        model.get_layer("conv1").set_weights([kernel, bias])
        x = self.rng.normal(size=(100, 12, 12, 1)).astype("float32")
        y = _labelled(model, x, self.rng)
        scores = criteria.car_scores(model, "conv1", x, y)
        self.assertEqual(scores[2], 0.0)  # folded into conv2's bias: no change
        np.testing.assert_allclose(
            scores, criteria.surgery_scores(model, "conv1", x, y), atol=1e-12
        )

    def test_mixing_layers_use_the_kept_channels_like_the_surgery(self):
        inputs = keras.Input((6,))
        x = keras.layers.Dense(8, name="h1")(inputs)
        x = keras.layers.LayerNormalization()(x)
        x = keras.layers.Dense(5, name="h2")(x)
        x = keras.layers.Softmax()(x)
        x = keras.layers.Dense(4, activation="tanh", name="h3")(x)
        x = keras.layers.LayerNormalization(center=False)(x)
        model = keras.Model(inputs, keras.layers.Dense(3, name="out")(x))
        x = self.rng.normal(size=(48, 6)).astype("float32")
        target = np.asarray(model.predict(x, verbose=0)) + 0.1
        mse = keras.losses.MeanSquaredError()
        for layer in ["h1", "h2", "h3"]:
            rar = criteria.car_scores(model, layer, x, target, metric=mse)
            naive = criteria.surgery_scores(model, layer, x, target, metric=mse)
            self.assertGreater(np.abs(naive).max(), 1e-3)
            np.testing.assert_allclose(rar, naive, rtol=1e-4, atol=1e-7)

    def test_loss_gives_rar_with_increase_positive(self):
        model = lenet(self.rng)
        x = self.rng.normal(size=(80, 12, 12, 1)).astype("float32")
        target = np.asarray(model.predict(x, verbose=0))
        rar = criteria.car_scores(
            model, "conv2", x, target, metric=keras.losses.MeanSquaredError()
        )
        self.assertTrue(np.all(rar >= 0))  # the original output is the target
        self.assertGreater(rar.max(), 0.0)
        naive = criteria.surgery_scores(
            model, "conv2", x, target, metric=keras.losses.MeanSquaredError()
        )
        np.testing.assert_allclose(rar, naive, rtol=1e-4, atol=1e-7)
        # A Keras metric where lower is better goes the same way.
        mse_metric = criteria.car_scores(
            model, "conv2", x, target, metric=keras.metrics.MeanSquaredError()
        )
        np.testing.assert_allclose(mse_metric, rar, rtol=1e-4, atol=1e-7)

    def test_keras_metric_instance_matches_accuracy(self):
        model = lenet(self.rng)
        x = self.rng.normal(size=(90, 12, 12, 1)).astype("float32")
        y = _labelled(model, x, self.rng)
        default = criteria.car_scores(model, "conv1", x, y)
        metric = criteria.car_scores(
            model, "conv1", x, y, metric=keras.metrics.SparseCategoricalAccuracy()
        )
        np.testing.assert_allclose(default, metric, atol=1e-6)

    def test_pinned_units_are_infinitely_important(self):
        model = lenet(self.rng)
        x = self.rng.normal(size=(20, 12, 12, 1)).astype("float32")
        y = _labelled(model, x, self.rng)
        scores = criteria.car_scores(model, "out", x, y)
        self.assertTrue(np.all(np.isinf(scores)))

    def test_model_is_not_modified(self):
        model = residual_model(self.rng)
        x = self.rng.normal(size=(40, 10, 10, 3)).astype("float32")
        y = _labelled(model, x, self.rng)
        before = [w.copy() for w in model.get_weights()]
        nodes = {layer.name: len(layer._inbound_nodes) for layer in model.layers}
        criteria.car_scores(model, "c1", x, y)
        criteria.greedy_prune(model, "c3", x, y, target_ratio=0.4)
        for a, b in zip(before, model.get_weights()):
            np.testing.assert_array_equal(a, b)
        self.assertEqual(
            nodes, {layer.name: len(layer._inbound_nodes) for layer in model.layers}
        )
        _ = model.get_layer("c1").output  # still a single-call layer

    def test_bad_input_raises(self):
        model = lenet(self.rng)
        x = self.rng.normal(size=(10, 12, 12, 1)).astype("float32")
        y = np.zeros(10, dtype="int64")
        with self.assertRaisesRegex(ValueError, "layer_name='flatten'"):
            criteria.car_scores(model, "flatten", x, y)
        with self.assertRaisesRegex(ValueError, "y=None"):
            criteria.car_scores(model, "conv1", x, None)
        with self.assertRaisesRegex(ValueError, "len\\(y\\)=9"):
            criteria.car_scores(model, "conv1", x, y[:9])
        with self.assertRaisesRegex(ValueError, "method="):
            criteria.car_scores(model, "conv1", x, y, method="fast")
        with self.assertRaisesRegex(ValueError, "metric="):
            criteria.car_scores(model, "conv1", x, y, metric=3)
        with self.assertRaisesRegex(ValueError, "a dict with keys"):
            criteria.car_scores(model, "conv1", {"x": x}, y)
        inputs = keras.Input((4,))
        hidden = keras.layers.Dense(3, name="h")(inputs)
        two = keras.Model(
            inputs, [keras.layers.Dense(2)(hidden), keras.layers.Dense(2)(hidden)]
        )
        with self.assertRaisesRegex(ValueError, "single output"):
            criteria.car_scores(two, "h", np.ones((4, 4)), np.zeros(4))


class BaselinesTest(TestCase):
    def setUp(self):
        super().setUp()
        self.rng = np.random.default_rng(1)

    def test_shapes_and_values(self):
        model = lenet(self.rng)
        x = self.rng.normal(size=(30, 12, 12, 1)).astype("float32")
        kernel = model.get_layer("conv2").get_weights()[0]
        l1 = criteria.l1_scores(model, "conv2")
        np.testing.assert_allclose(l1, np.abs(kernel).sum(axis=(0, 1, 2)), rtol=1e-6)
        act = criteria.mean_activation_scores(model, "conv2", x)
        probe = keras.Model(model.inputs, model.get_layer("conv2").output)
        expected = np.abs(np.asarray(probe.predict(x, verbose=0))).mean(axis=(0, 1, 2))
        np.testing.assert_allclose(act, expected, rtol=1e-5)
        r1 = criteria.random_scores(model, "conv2", seed=3)
        np.testing.assert_array_equal(
            r1, criteria.random_scores(model, "conv2", seed=3)
        )
        for scores in (l1, act, r1):
            self.assertEqual(scores.shape, (8,))

    def test_coupled_groups_sum(self):
        model = residual_model(self.rng)
        x = self.rng.normal(size=(10, 10, 10, 3)).astype("float32")
        own = criteria.l1_scores(model, "c2", groups=False)
        other = criteria.l1_scores(model, "c1", groups=False)
        np.testing.assert_allclose(
            criteria.l1_scores(model, "c2"), own + other, rtol=1e-6
        )
        act = criteria.mean_activation_scores(model, "c1", x)
        np.testing.assert_allclose(act, criteria.mean_activation_scores(model, "c2", x))


class GreedyPruneTest(TestCase):
    def setUp(self):
        super().setUp()
        self.rng = np.random.default_rng(2)
        self.model = lenet(self.rng)
        self.x = self.rng.normal(size=(90, 12, 12, 1)).astype("float32")
        self.y = _labelled(self.model, self.x, self.rng)

    def test_select_lowest(self):
        scores = np.array([0.2, 0.0, np.inf, 0.0, np.nan, -0.1])
        np.testing.assert_array_equal(criteria.select_lowest(scores, 3), [1, 3, 5])
        tiebreak = np.array([0.0, 0.5, 0.0, 0.1, 0.0, 9.0])
        np.testing.assert_array_equal(
            criteria.select_lowest(scores, 2, tiebreak=tiebreak), [3, 5]
        )
        eligible = np.array([True, True, True, False, True, True])
        np.testing.assert_array_equal(
            criteria.select_lowest(scores, 2, eligible), [1, 5]
        )

    def test_reaches_target_ratio(self):
        small, plan, history = criteria.greedy_prune(
            self.model,
            ["conv1", "conv2"],
            self.x,
            self.y,
            target_ratio={"conv1": 0.5, "conv2": 0.75},
            step=2,
        )
        self.assertEqual(small.get_layer("conv1").filters, 3)
        self.assertEqual(small.get_layer("conv2").filters, 2)
        self.assertEqual(len(plan.units["conv1"]), 3)
        self.assertEqual(len(plan.units["conv2"]), 6)
        self.assertEqual(history[-1]["num_removed"], 6)
        self.assertAlmostEqual(history[-1]["ratio"], 0.75)
        # The plan replays on the original model to the same network.
        replay = kprune.surgery.remove_units(self.model, plan)
        self.assertSameOutputs(small, replay, self.x[:8])
        self.assertAlmostEqual(history[-1]["metric"], accuracy(small, self.x, self.y))

    def test_baselines_plug_in(self):
        for criterion in ("l1", "mean_activation", "random"):
            small, plan, history = criteria.greedy_prune(
                self.model,
                "conv2",
                self.x,
                self.y,
                criterion=criterion,
                target_ratio=0.5,
                step=3,
                seed=0,
            )
            self.assertEqual(small.get_layer("conv2").filters, 4)
            self.assertEqual([h["num_removed"] for h in history], [0, 3, 4])
        expected = criteria.select_lowest(criteria.l1_scores(self.model, "conv2"), 4)
        _, plan, _ = criteria.greedy_prune(
            self.model, "conv2", self.x, self.y, criterion="l1", target_ratio=0.5
        )
        self.assertEqual(plan.units["conv2"], expected.tolist())

    def test_car_step_one_removes_the_lowest_car_unit(self):
        scorer = criteria.AblationScorer(self.model, "conv2", self.x, self.y)
        scores = scorer.scores()
        np.testing.assert_array_equal(
            scores, criteria.car_scores(self.model, "conv2", self.x, self.y)
        )
        # The tie-break: the margin drop, measured in the same pass.
        margins = criteria.metrics.classification_margins
        logits = np.asarray(self.model.predict(self.x, verbose=0))
        self.assertAlmostEqual(
            scorer.last_tiebreak[0],
            margins(self.y, logits).mean()
            - margins(
                self.y,
                kprune.surgery.remove_units(self.model, {"conv2": [0]}).predict(
                    self.x, verbose=0
                ),
            ).mean(),
            places=5,
        )
        _, plan, history = criteria.greedy_prune(
            self.model, "conv2", self.x, self.y, target_ratio=0.125
        )
        self.assertEqual(
            plan.units["conv2"], criteria.select_lowest(scores, 1).tolist()
        )
        expected = criteria.select_lowest(scores, 1, tiebreak=scorer.last_tiebreak)
        _, plan, _ = criteria.greedy_prune(
            self.model, "conv2", self.x, self.y, target_ratio=0.125, tie_break="margin"
        )
        self.assertEqual(plan.units["conv2"], expected.tolist())
        self.assertAlmostEqual(
            history[1]["metric"], history[0]["metric"] - scores.min()
        )

    def test_accuracy_budget_stops(self):
        _, plan, history = criteria.greedy_prune(
            self.model,
            "conv2",
            self.x,
            self.y,
            criterion="random",
            target_ratio=0.875,
            max_accuracy_drop=0.0,
            seed=0,
        )
        base = history[0]["metric"]
        self.assertTrue(all(base - h["metric"] <= 1e-12 for h in history))
        self.assertLess(sum(len(v) for v in plan.units.values()), 7)

    def test_callable_criterion_and_fine_tuning(self):
        calls = []

        def by_index(model, layer_name, x, y):
            calls.append(model.get_layer(layer_name).filters)
            return np.arange(model.get_layer(layer_name).filters, dtype=float)

        self.model.compile(
            optimizer="adam",
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        small, plan, history = criteria.greedy_prune(
            self.model,
            "conv2",
            self.x,
            self.y,
            criterion=by_index,
            target_ratio=0.25,
            fine_tune=1,
            fine_tune_every=1,
            train_data=(self.x, self.y),
            fit_kwargs={"batch_size": 45},
        )
        self.assertEqual(calls, [8, 7])  # re-scored on the rebuilt model
        self.assertEqual(plan.units["conv2"], [0, 1])  # original numbering
        self.assertTrue(all(h["fine_tuned"] for h in history[1:]))
        self.assertEqual(small.get_layer("conv2").filters, 6)
        self.assertTrue(small.compiled)
        tuned = []
        criteria.greedy_prune(
            self.model,
            "conv2",
            self.x,
            self.y,
            criterion="l1",
            target_ratio=0.25,
            fine_tune=lambda m: tuned.append(m.get_layer("conv2").filters),
        )
        self.assertEqual(tuned, [6])  # once, at the end

    def test_bad_arguments(self):
        with self.assertRaisesRegex(ValueError, "criterion="):
            criteria.greedy_prune(self.model, "conv1", self.x, self.y, criterion="l2")
        with self.assertRaisesRegex(ValueError, "target_ratio"):
            criteria.greedy_prune(self.model, "conv1", self.x, self.y, target_ratio=1.0)
        with self.assertRaisesRegex(ValueError, "train_data"):
            criteria.greedy_prune(self.model, "conv1", self.x, self.y, fine_tune=1)
        with self.assertRaisesRegex(ValueError, "layer_names"):
            criteria.greedy_prune(self.model, "nope", self.x, self.y)


class PicturesTest(TestCase):
    def test_pngs_are_written(self):
        model = lenet(np.random.default_rng(3))
        path = criteria.plot_filters(
            model,
            "conv1",
            self.tmp_path("f.png"),
            removed=[1, 4],
            scores=np.arange(6.0),
        )
        with open(path, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
        path = criteria.plot_scores(
            [0.1, 0.0, np.inf, 0.02], self.tmp_path("s.png"), removed=[1], sort=True
        )
        self.assertGreater(os.path.getsize(path), 1000)
        rgb = keras.Sequential(
            [keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="c")]
        )
        criteria.plot_filters(rgb, "c", self.tmp_path("rgb.png"), kept=[0])
        dense = keras.Sequential([keras.Input((16,)), keras.layers.Dense(3, name="d")])
        criteria.plot_filters(dense, "d", self.tmp_path("d.png"))
        self.assertEqual(criteria.filter_images(np.ones((16, 3))).shape, (3, 4, 4))
        with self.assertRaisesRegex(ValueError, "kernel"):
            criteria.plot_filters(model, "flatten", self.tmp_path("x.png"))
        with self.assertRaisesRegex(ValueError, "not a plan"):
            criteria.plot_filters(
                model, "conv1", self.tmp_path("x.png"), removed={"conv1": [0]}
            )

    def test_clear_error_without_matplotlib(self):
        model = lenet(np.random.default_rng(3))
        with mock.patch.dict(
            sys.modules, {"matplotlib": None, "matplotlib.figure": None}
        ):
            with self.assertRaisesRegex(ImportError, "pip install kprune\\[plots\\]"):
                criteria.plot_filters(model, "conv1", self.tmp_path("f.png"))
            with self.assertRaisesRegex(ImportError, "matplotlib"):
                criteria.plot_scores([1.0], self.tmp_path("s.png"))
