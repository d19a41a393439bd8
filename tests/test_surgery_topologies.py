"""`slim` is exact and `remove_units` keeps models runnable, on every handler."""

import keras
import numpy as np
import pytest

import kprune
from kprune.testing import TestCase
from tests import surgery_models as models


@pytest.mark.parametrize("name", sorted(models.BUILDERS))
def test_slim_is_exact_and_smaller(name):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    model = models.BUILDERS[name]()
    models.randomize(model, rng)
    before = [w.copy() for w in model.get_weights()]
    x = models.sample_inputs(model, rng)

    small = kprune.surgery.slim(model)

    kprune.testing.assert_same_outputs(model, small, x, rtol=1e-5)
    # The input model is never mutated.
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    if name != "residual":  # its random zeros leave no channel dead on every branch
        assert small.count_params() < model.count_params()
    assert type(small) is type(model)


@pytest.mark.parametrize("name", sorted(models.BUILDERS))
def test_random_removal_keeps_model_runnable(name):
    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    model = models.BUILDERS[name]()
    analysis = kprune.surgery.ChannelAnalysis(model)
    producers = kprune.surgery.plan.producer_nodes(analysis)
    groups = {
        path: analysis.values(analysis.component, node.outputs[0])
        for path, node in producers.items()
    }
    free = np.unique(np.concatenate(list(groups.values())))
    free = free[~analysis.pinned[free]]
    chosen = set(rng.choice(free, len(free) * 2 // 5, replace=False).tolist())
    removable = {}
    for path, comps in groups.items():
        hit = [i for i, g in enumerate(comps) if g in chosen]
        if 0 < len(hit) < len(comps):
            removable[path] = hit
        elif hit:  # keep the layer non-empty
            chosen.discard(comps[hit[0]])
            removable[path] = hit[1:]
    removable = {k: v for k, v in removable.items() if v}
    assert removable, f"{name}: nothing removable"
    small = kprune.surgery.remove_units(model, removable)
    x = models.sample_inputs(model, rng)
    out_big = keras.tree.flatten(model(x))
    out_small = keras.tree.flatten(small(x))
    assert [o.shape for o in out_big] == [o.shape for o in out_small]
    assert small.count_params() < model.count_params()
    for path, indices in removable.items():
        layer = _layer(small, path)
        width = (
            layer.get_config().get("units")
            or layer.get_config().get("filters")
            or layer.get_config().get("output_dim")
        )
        original = _layer(model, path).get_config()
        original = (
            original.get("units")
            or original.get("filters")
            or original.get("output_dim")
        )
        assert width <= original - len(indices)


def _layer(model, path):
    layer = model
    for part in path.split("/"):
        layer = layer.get_layer(part)
    return layer


class CouplingTest(TestCase):
    def test_residual_channel_dead_on_every_branch_is_removed(self):
        model = models.residual()
        # Channel 2 dead on the stem and on every branch -> removable.
        for name in ("stem", "branch", "branch2", "sub", "avg", "max", "min"):
            layer = model.get_layer(name)
            kernel, bias = layer.get_weights()
            kernel[..., 2] = 0.0
            bias[2] = 0.0
            layer.set_weights([kernel, bias])
        for name in ("bn_b",):
            layer = model.get_layer(name)
            gamma, beta, mean, var = layer.get_weights()
            beta[2], mean[2] = 0.0, 0.0
            layer.set_weights([gamma, beta, mean, var])
        # Only the stem's channel 3 is dead: must stay (alive on a branch).
        stem = model.get_layer("stem")
        kernel, bias = stem.get_weights()
        kernel[..., 3], bias[3] = 0.0, 0.0
        stem.set_weights([kernel, bias])

        dead = kprune.surgery.dead_units(model)
        self.assertIn(2, dead["stem"])
        self.assertNotIn(3, dead["stem"])
        small = kprune.surgery.slim(model)
        self.assertEqual(small.get_layer("stem").filters, 7)
        x = np.random.default_rng(0).normal(size=(2, 10, 10, 3)).astype("float32")
        self.assertSameOutputs(model, small, x)

    def test_coupled_units_are_removed_together(self):
        model = models.residual()
        plan = kprune.surgery.plan_removal(model, {"branch": [1, 5]})
        for name in ("stem", "branch", "branch2", "sub", "avg", "max", "min"):
            self.assertEqual(plan.units[name], [1, 5])
        self.assertEqual(len(plan.groups), 1)

    def test_concatenate_offsets(self):
        model = models.concat_and_se()
        plan = kprune.surgery.plan_removal(model, {"b": [0]})
        # Channel 0 of 'b' is channel 6 of the concatenation: SE expand unit 6.
        self.assertEqual(plan.units["se_expand"], [6])
        small = kprune.surgery.remove_units(model, plan)
        self.assertEqual(small.get_layer("b").filters, 4)
        self.assertEqual(small.get_layer("se_expand").filters, 10)

    def test_flatten_maps_channel_to_positions(self):
        model = models.cnn_flatten()
        small = kprune.surgery.remove_units(model, {"c2": [0, 1, 2]})
        # 2x2 spatial positions per channel: 4 x 3 fewer Flatten features.
        before = model.get_layer("fc").get_weights()[0].shape[0]
        after = small.get_layer("fc").get_weights()[0].shape[0]
        self.assertEqual(before - after, 12)

    def test_removal_matches_zeroed_outputs(self):
        # Removing units whose outgoing weights are zeroed = zeroing them.
        model = models.cnn_flatten()
        fc = model.get_layer("fc")
        out = model.get_layer("out")
        kernel, bias = out.get_weights()
        kernel[[1, 4]] = 0.0
        out.set_weights([kernel, bias])
        small = kprune.surgery.remove_units(model, {"fc": [1, 4]})
        self.assertEqual(small.get_layer("fc").units, fc.units - 2)
        x = np.random.default_rng(0).normal(size=(2, 12, 12, 3)).astype("float32")
        self.assertSameOutputs(model, small, x)

    def test_groupnorm_removes_whole_groups(self):
        model = models.sequence_model()
        plan = kprune.surgery.plan_removal(model, {"c1": [0]})
        self.assertEqual(plan.units["c1"], [0, 1, 2])  # 12 channels / 4 groups
        small = kprune.surgery.remove_units(model, plan)
        self.assertEqual(small.get_layer("gn").groups, 3)

    def test_layernorm_blocks_exact_removal_but_allows_lossy(self):
        model = models.sequence_model()
        mix = model.get_layer("mix")
        kernel, bias = mix.get_weights()
        kernel[2] = 0.0  # nothing reads channel 2 of the LayerNorm output
        mix.set_weights([kernel, bias])
        self.assertNotIn("up", kprune.surgery.dead_units(model))
        small = kprune.surgery.remove_units(model, {"up": [2]})
        self.assertEqual(small.get_layer("up").filters, 5)
        self.assertEqual(small.get_layer("ln").get_weights()[0].shape, (5,))
