"""Depth pruning: residual blocks removed whole (`kprune.surgery.drop_blocks`,
`kprune.prune(depth=...)`)."""

import warnings

import keras
import numpy as np
import pytest

import kprune
from kprune.criteria.block_redundancy import block_redundancy
from kprune.criteria.depth_budget import block_costs, block_groups, call_costs
from kprune.surgery import PruningPlan, drop_blocks, remove_units, residual_blocks
from kprune.surgery.graph import Graph
from kprune.surgery.groups import DependencyGroups

L = keras.layers


def _resnet(seed=0, relu_after_add=True):
    """Stem, two identity blocks, one projection block, head."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 3))
    h = L.Conv2D(8, 3, padding="same", name="stem")(inp)
    h = L.ReLU(name="stem_relu")(h)
    for i in (1, 2):
        b = L.Conv2D(16, 3, padding="same", activation="relu", name=f"b{i}_a")(h)
        b = L.Conv2D(8, 3, padding="same", name=f"b{i}_b")(b)
        b = L.BatchNormalization(name=f"b{i}_bn")(b)
        h = L.Add(name=f"b{i}_add")([h, b])
        if relu_after_add:
            h = L.ReLU(name=f"b{i}_relu")(h)
    short = L.Conv2D(12, 1, strides=2, name="p_short")(h)
    b = L.Conv2D(12, 3, strides=2, padding="same", name="p_conv")(h)
    h = L.Add(name="p_add")([short, b])
    h = L.GlobalAveragePooling2D(name="pool")(h)
    return keras.Model(inp, L.Dense(3, name="head")(h), name="tiny_resnet")


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).random((24, 8, 8, 3)).astype("float32")


def test_residual_blocks_are_identity_blocks_only():
    names = [b.name for b in residual_blocks(_resnet())]
    assert names == ["b1_a..b1_relu", "b2_a..b2_relu"]  # not the projection
    assert [b.name for b in residual_blocks(_resnet(relu_after_add=False))] == [
        "b1_a..b1_add",
        "b2_a..b2_add",
    ]


def test_relu_after_add_needs_a_relu_before_the_block():
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    h = L.Conv2D(8, 3, padding="same", name="stem")(inp)  # no ReLU: x < 0 occurs
    b = L.Conv2D(8, 3, padding="same", name="branch")(h)
    h = L.ReLU(name="after")(L.Add(name="add")([h, b]))
    model = keras.Model(inp, L.Dense(2, name="head")(L.Flatten()(h)))
    assert residual_blocks(model) == []
    with pytest.raises(ValueError, match="no residual block"):
        drop_blocks(model, ["branch..after"])
    # The same block after a conv with a fused ReLU is the identity.
    h = L.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inp)
    b = L.Conv2D(8, 3, padding="same", name="branch")(h)
    h = L.ReLU(name="after")(L.Add(name="add")([h, b]))
    model = keras.Model(inp, L.Dense(2, name="head")(L.Flatten()(h)))
    assert [b.name for b in residual_blocks(model)] == ["branch..after"]


def test_dropping_a_block_equals_zeroing_its_branch(images):
    model = _resnet()
    before = [w.copy() for w in model.get_weights()]
    small = drop_blocks(model, ["b2_a..b2_relu"])
    assert "b2_a" not in [layer.name for layer in small.layers]
    assert len(small.layers) == len(model.layers) - 5  # a, b, bn, add, relu
    assert small.layers[0].name == model.layers[0].name
    # The user's model is untouched.
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    # With the branch's output at zero (BatchNorm gamma = beta = 0), the
    # original model computes exactly what the model without the block does.
    zeroed = keras.models.clone_model(model)
    zeroed.set_weights(model.get_weights())
    bn = zeroed.get_layer("b2_bn")
    gamma, beta, mean, var = bn.get_weights()
    bn.set_weights([0 * gamma, 0 * beta, mean, var])
    np.testing.assert_allclose(small(images), zeroed(images), rtol=1e-5, atol=1e-6)
    assert not np.allclose(small(images), model(images), atol=1e-4)


def test_drop_blocks_errors(images):
    model = _resnet()
    with pytest.raises(ValueError, match="name no residual block.*b1_a..b1_relu"):
        drop_blocks(model, ["nope"])
    with pytest.raises(ValueError, match="at least one block"):
        drop_blocks(model, [])
    projection = [b for b in kprune.surgery.find_blocks(model) if "p_add" in b.name]
    with pytest.raises(ValueError, match="not a residual block"):
        drop_blocks(model, projection)
    with pytest.raises(ValueError, match="overlaps"):
        drop_blocks(model, ["b1_a..b1_relu", "b1_a..b1_relu"])


def test_plan_with_blocks_round_trips_and_replays(images):
    model = _resnet()
    small, plan = kprune.prune(model, images, macs=0.6, depth=1)
    assert len(plan.blocks) == 1 and plan.report["depth"]["blocks"] == plan.blocks
    assert plan.report["macs_ratio"] <= 0.6
    loaded = PruningPlan.from_json(plan.to_json())
    assert loaded.blocks == plan.blocks
    replayed = remove_units(model, loaded)
    np.testing.assert_allclose(replayed(images), small(images), rtol=1e-5, atol=1e-5)
    assert PruningPlan.from_dict({"units": {}}).blocks == []  # older plans
    with pytest.raises(TypeError, match="list of block names"):
        PruningPlan({}, blocks="b1_a..b1_relu")
    with pytest.raises(ValueError, match="cannot be reused"):
        remove_units(model, loaded, analysis=kprune.surgery.ChannelAnalysis(model))


def test_depth_removes_the_most_redundant_block(images):
    model = _resnet()
    # Block 2's branch nearly silent: it changes its input least.
    bn = model.get_layer("b2_bn")
    gamma, beta, mean, var = bn.get_weights()
    bn.set_weights([gamma * 1e-3, beta * 0, mean, var])
    _, plan = kprune.prune(model, images, macs=0.9, depth=1)
    assert plan.blocks == ["b2_a..b2_relu"]
    scores = plan.report["depth"]["block_redundancy"]
    assert scores["b2_a..b2_relu"] > scores["b1_a..b1_relu"]
    _, plan = kprune.prune(model, images, macs=0.9, depth=1, ignore=["b2_a"])
    assert plan.blocks == ["b1_a..b1_relu"]  # an ignored layer keeps its block


def test_auto_depth_follows_the_op_cost(images):
    model = _resnet()
    _, plan = kprune.prune(model, images, macs=0.5, depth="auto")
    assert plan.blocks == []  # float32: no fixed cost per operation
    _, plan = kprune.prune(model, images, macs=0.5, depth="auto", op_cost=1e9)
    assert len(plan.blocks) == 1  # at most 80 % of the two blocks: one
    estimates = plan.report["depth"]["estimates"]
    assert estimates[1]["share"] > estimates[0]["share"]


def test_depth_argument_errors(images):
    model = _resnet()
    with pytest.raises(ValueError, match="pass `data`"):
        kprune.prune(model, macs=0.5, depth=1)
    with pytest.raises(ValueError, match="depth='auto' estimates speed"):
        kprune.prune(model, images, params=0.5, depth="auto")
    for bad in (-1, 1.5, True, "deep"):
        with pytest.raises(ValueError, match="Received: depth="):
            kprune.prune(model, images, macs=0.5, depth=bad)
    for bad in (-1.0, "fp16"):
        with pytest.raises(ValueError, match="Received: op_cost="):
            kprune.prune(model, images, macs=0.5, depth="auto", op_cost=bad)
    with pytest.raises(ValueError, match="Received: speed_share="):
        kprune.prune(model, images, macs=0.5, speed_share=0)


def test_depth_on_a_model_without_residual_blocks_warns(images):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((8, 8, 3)), L.Conv2D(8, 3), L.Flatten(), L.Dense(2)]
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, plan = kprune.prune(model, images, macs=0.5, depth=2)
    assert plan.blocks == []
    assert any("no residual block" in str(w.message) for w in caught)


def test_block_costs_count_the_blocks_calls():
    model = _resnet()
    graph = Graph(model)
    costs = call_costs(graph)
    blocks = residual_blocks(graph)
    macs, elements, ops, add = block_costs(blocks, costs)[0]
    assert macs == 8 * 8 * (3 * 3 * 8 * 16 + 3 * 3 * 16 * 8)
    # b1_a (relu fused), b1_b, the Add: three operations; BatchNorm folds;
    # the ReLU after the Add fuses into it.
    assert ops == 3
    assert elements == add == 8 * 8 * 8  # the Add's output
    # The groups made inside block 1: b1_a's filters (b1_b makes the
    # residual channels, with the stem and block 2).
    view = DependencyGroups(model)
    (inner,) = block_groups(view, blocks[:1])
    assert sorted(view.units(view.ids[p])[0] for p in inner) == [
        ("b1_a", i) for i in range(16)
    ]


def test_block_redundancy_without_the_fit(images):
    model = _resnet()
    blocks = residual_blocks(model)
    full = block_redundancy(model, images, blocks=blocks)
    fast = block_redundancy(model, images, blocks=blocks, fit=False)
    assert [c.name for c in full] == [c.name for c in fast]
    assert [c.redundancy for c in full] == pytest.approx([c.redundancy for c in fast])
    assert all(np.isnan(c.r2) for c in fast)
    with pytest.raises(ValueError, match="fit=False"):
        block_redundancy(model, images, blocks=blocks, rank_by="r2", fit=False)


def test_keras_applications_mobilenet_v2_depth():
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(
        weights=None, input_shape=(32, 32, 3), alpha=0.35, classes=4
    )
    assert len(residual_blocks(model)) == 10
    x = np.random.default_rng(0).random((4, 32, 32, 3)).astype("float32")
    small, plan = kprune.prune(model, x, macs=0.5, depth=3, round_to=8)
    assert len(plan.blocks) == 3 and plan.report["macs_ratio"] <= 0.5
    assert len(small.layers) < len(model.layers) - 3 * 8
    replayed = remove_units(model, PruningPlan.from_json(plan.to_json()))
    np.testing.assert_allclose(replayed(x), small(x), rtol=1e-4, atol=1e-5)


def test_cli_prune_depth(tmp_path, capsys, images):
    from kprune.cli import main

    model = _resnet()
    path = str(tmp_path / "in.keras")
    model.save(path)
    np.savez(tmp_path / "d.npz", x=images)
    out, plan_path = str(tmp_path / "out.keras"), str(tmp_path / "plan.json")
    args = ["prune", path, out, "--macs", "0.6", "--data", str(tmp_path / "d.npz")]
    assert main(args + ["--depth", "1", "--plan", plan_path]) == 0
    assert "blocks removed whole: b" in capsys.readouterr().out
    plan = PruningPlan.load(plan_path)
    assert len(plan.blocks) == 1
    small = keras.models.load_model(out)
    np.testing.assert_allclose(
        small(images), remove_units(model, plan)(images), rtol=1e-5, atol=1e-5
    )
    assert main(args + ["--depth", "many", "--force"]) == 2  # argparse
    assert main(["prune", path, out, "--macs", "0.6", "--depth", "1", "--force"]) == 1
    assert "pass `data`" in capsys.readouterr().err


def test_depth_with_a_latency_target(tmp_path, images):
    from kprune.criteria.latency_table import LatencyTable
    from tests.test_prune_budget import _fake_timing

    model = _resnet()
    base_macs = kprune.report.summary(model)["macs"]

    def fake_model_latency(m, **kwargs):
        return {"latency_ms_median": 1e-4 * kprune.report.summary(m)["macs"]}

    def fake_relative(m, reference, **kwargs):
        return {"ratio": kprune.report.summary(m)["macs"] / base_macs}

    with _fake_timing(fake_model_latency, fake_relative):
        table = LatencyTable(grid=(0.5, 1.0), cache_dir=tmp_path)
        base = table.measure_model(model)
        small, plan = kprune.prune(
            model, images, latency=0.5 * base, latency_table=table, depth=1
        )
    assert len(plan.blocks) == 1
    assert abs(plan.report["latency_after_ms"] - 0.5 * base) <= 0.05 * base
    np.testing.assert_allclose(
        remove_units(model, plan)(images), small(images), rtol=1e-5, atol=1e-5
    )


def test_planner_counts_forced_groups_as_removed():
    from kprune.criteria import BudgetPlanner

    model = _resnet()
    view = DependencyGroups(model)
    (inner,) = block_groups(view, residual_blocks(model)[:1])
    planner = BudgetPlanner(model, view, np.arange(len(view.ids), dtype=float))
    free = planner.search("macs", 0.6)
    planner.force(inner)
    forced = planner.search("macs", 0.6)  # with the fill: nothing given back
    assert set(inner) <= set(forced)
    assert planner.estimate(forced)["macs"] <= 0.6 * planner.base["macs"]
    # The block's MACs count toward the budget: fewer other groups leave.
    assert len(set(forced) - set(inner)) < len(set(free))
    planner.force([])
    assert np.array_equal(planner.search("macs", 0.6), free)


@pytest.mark.parametrize("name_taken", [False, True])
def test_ignore_inside_a_nested_model_survives_the_dropped_blocks(name_taken):
    # name_taken: the outer model's stem is also 'keep_me', so the inlined
    # 'inner/keep_me' is renamed; the ignore must follow the nested one.
    keras.utils.set_random_seed(0)
    inner_in = keras.Input((8, 8, 8))
    h = L.ReLU(name="r0")(inner_in)
    b = L.Conv2D(16, 3, padding="same", activation="relu", name="ia")(h)
    b = L.Conv2D(8, 3, padding="same", name="ib")(b)
    h = L.ReLU(name="r1")(L.Add(name="iadd")([h, b]))
    b = L.Conv2D(16, 3, padding="same", activation="relu", name="ja")(h)
    b = L.Conv2D(8, 3, padding="same", name="jb")(b)
    h = L.ReLU(name="r2")(L.Add(name="jadd")([h, b]))
    h = L.Conv2D(12, 3, padding="same", name="keep_me")(h)
    inner = keras.Model(inner_in, h, name="inner")
    inp = keras.Input((8, 8, 3))
    stem = L.Conv2D(8, 1, name="keep_me" if name_taken else "stem")
    x = inner(stem(inp))
    model = keras.Model(inp, L.Dense(2, name="head")(L.Flatten()(x)))
    x = np.random.default_rng(0).random((8, 8, 8, 3)).astype("float32")
    small, plan = kprune.prune(
        model, x, macs=0.4, depth=1, ignore=["inner/keep_me"], round_to=None
    )
    assert len(plan.blocks) == 1
    # after inlining, one of the two is renamed: tell them by kernel size
    by_kernel = {
        layer.kernel_size: layer for layer in small.layers if "keep_me" in layer.name
    }
    protected = by_kernel[(3, 3)]  # the nested one, not the outer stem
    assert protected.filters == 12
    assert protected.name not in plan.units
