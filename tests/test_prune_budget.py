"""Tests for kprune.prune: dependency groups, group importance, budgets."""

import json
import os
import warnings
from unittest import mock

import keras
import numpy as np
import pytest

import kprune
from kprune.criteria import BudgetPlanner, group_importance, normalize_scores
from kprune.criteria.latency_table import LatencyTable
from kprune.surgery.groups import DependencyGroups

L = keras.layers


def _lenet(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((16, 16, 1))
    h = L.Conv2D(12, 3, activation="relu", name="conv1")(inp)
    h = L.MaxPooling2D()(h)
    h = L.Conv2D(16, 3, activation="relu", name="conv2")(h)
    h = L.Flatten()(h)
    h = L.Dense(32, activation="relu", name="fc1")(h)
    return keras.Model(inp, L.Dense(4, name="fc2")(h), name="lenet")


def _residual(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 3))
    h = L.Conv2D(16, 3, padding="same", name="stem")(inp)
    h = L.BatchNormalization(name="bn")(h)
    h = L.ReLU()(h)
    a = L.Conv2D(16, 3, padding="same", activation="relu", name="branch")(h)
    h = L.Add(name="add")([h, a])
    h = L.DepthwiseConv2D(3, padding="same", name="dw")(h)
    h = L.Conv2D(24, 1, activation="relu", name="pw")(h)
    h = L.GlobalAveragePooling2D()(h)
    return keras.Model(inp, L.Dense(3, name="head")(h), name="res")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.random((48, 16, 16, 1)).astype("float32")
    return x, rng.integers(0, 4, 48)


def test_dependency_groups_residual():
    model = _residual()
    view = DependencyGroups(model)
    assert ("branch", "stem") in view.structures
    group = view.analysis.component[
        view.producers["stem"].outputs[0].offset + 5
    ]  # channel 5 of the residual stream
    assert sorted(view.units(group)) == [("branch", 5), ("stem", 5)]
    readers = set(view.readers(group))
    assert {("pw", "consumer", 5)} <= readers
    assert ("bn", "scale", 5) in readers and ("dw", "depthwise", 5) in readers
    # The head's units are model outputs: never removable.
    assert all(s != ("head",) for s in view.structures)
    assert len(view) == 16 + 24


def test_l2_group_importance_by_hand():
    model = keras.Sequential(
        [keras.Input((5,)), L.Dense(4, name="a"), L.Dense(3, name="b")]
    )
    view = DependencyGroups(model)
    ka = model.get_layer("a").kernel.numpy()
    kb = model.get_layer("b").kernel.numpy()
    # local l2 of unit k: sum of squares of a's column k and b's row k;
    # reduction "mean" over the 2 member layers; normalization by the mean.
    raw = ((ka**2).sum(axis=0) + (kb**2).sum(axis=1)) / 2
    scores = group_importance(model, "l2", groups=view)
    np.testing.assert_allclose(scores, raw / raw.mean(), rtol=1e-5)
    l1 = group_importance(model, "l1", groups=view, normalize=None)
    raw1 = (np.abs(ka).sum(axis=0) + np.abs(kb).sum(axis=1)) / 2
    np.testing.assert_allclose(l1, raw1, rtol=1e-5)


def test_normalizers():
    s = np.array([1.0, 2.0, 3.0, 4.0])
    structure = np.array([0, 0, 0, 1])
    np.testing.assert_allclose(
        normalize_scores(s, structure, "lamp"), [1 / 6, 2 / 5, 1.0, 1.0]
    )
    np.testing.assert_allclose(
        normalize_scores(s, structure, "rank"), [1 / 3, 2 / 3, 1.0, 1.0]
    )
    with pytest.raises(ValueError, match="normalize"):
        normalize_scores(s, structure, "median")


@pytest.mark.parametrize(
    "importance", ["l1", "l2", "fpgm", "lamp", "taylor", "activation", "random"]
)
def test_prune_meets_macs_target(importance, data):
    model = _lenet()
    before = kprune.report.summary(model)["macs"]
    small, plan = kprune.prune(model, data, macs=0.25, importance=importance, seed=1)
    after = kprune.report.summary(small)["macs"]
    assert after <= 0.25 * before
    assert after >= 0.2 * before  # close to the target, not far below
    assert plan.report["macs_ratio"] == pytest.approx(after / before)
    # The plan replays on the original model into the same network.
    again = kprune.surgery.remove_units(model, plan)
    x = data[0][:8]
    np.testing.assert_allclose(
        again.predict(x, verbose=0), small.predict(x, verbose=0), atol=1e-6
    )
    assert model.get_layer("conv1").filters == 12  # input model untouched


def test_importance_changes_the_choice(data):
    model = _lenet()
    # Make conv1's filter 0 huge: l2 keeps it, it is the best filter.
    kernel, bias = model.get_layer("conv1").get_weights()
    kernel[..., 0] *= 100.0
    model.get_layer("conv1").set_weights([kernel, bias])
    _, plan = kprune.prune(model, macs=0.3, importance="l2")
    assert 0 not in plan.units.get("conv1", [])
    plans = [
        kprune.prune(model, macs=0.3, importance="random", seed=s)[1].units
        for s in (0, 1)
    ]
    assert plans[0] != plans[1]


def test_round_to_scope_ignore_and_params(data):
    model = _lenet()
    small, _ = kprune.prune(model, macs=0.3, round_to=4)
    widths = kprune.report.summary(small)["widths"]
    assert all(widths[n] % 4 == 0 for n in ("conv1", "conv2", "fc1"))
    small, _ = kprune.prune(model, macs=0.4, scope="layer")
    widths = kprune.report.summary(small)["widths"]
    fractions = [widths["conv1"] / 12, widths["conv2"] / 16, widths["fc1"] / 32]
    assert max(fractions) - min(fractions) < 0.15
    small, _ = kprune.prune(model, macs=0.5, ignore=["conv2"])
    assert kprune.report.summary(small)["widths"]["conv2"] == 16
    small, plan = kprune.prune(model, params=0.3)
    assert plan.report["params_ratio"] <= 0.3


def test_steps_and_residual_coupling():
    model = _residual()
    small, plan = kprune.prune(model, macs=0.4, steps=2, importance="l2")
    assert plan.report["macs_ratio"] <= 0.4
    assert len(plan.report["rounds"]) == 2
    assert plan.units.get("stem") == plan.units.get("branch")  # coupled by Add
    x = np.random.default_rng(1).random((4, 8, 8, 3)).astype("float32")
    again = kprune.surgery.remove_units(model, plan)
    np.testing.assert_allclose(
        again.predict(x, verbose=0), small.predict(x, verbose=0), atol=1e-5
    )
    saved = kprune.surgery.PruningPlan.from_json(plan.to_json())
    assert saved.units == plan.units


def test_prune_errors(data):
    model = _lenet()
    with pytest.raises(ValueError, match="fraction"):
        kprune.prune(model, macs=2.0)
    with pytest.raises(ValueError, match="exactly one budget"):
        kprune.prune(model, macs=0.5, params=0.5)
    with pytest.raises(ValueError, match="importance"):
        kprune.prune(model, macs=0.5, importance="l3")
    with pytest.raises(ValueError, match="needs labels"):
        kprune.prune(model, data[0], macs=0.5, importance="taylor")
    with pytest.raises(ValueError, match="ignore"):
        kprune.prune(model, macs=0.5, ignore=["nope"])
    with pytest.raises(ValueError, match="scope"):
        kprune.prune(model, macs=0.5, scope="net")


def test_budget_planner_keeps_one_unit():
    model = keras.Sequential(
        [keras.Input((4,)), L.Dense(8, name="a"), L.Dense(2, name="b")]
    )
    view = DependencyGroups(model)
    planner = BudgetPlanner(model, view, np.arange(8.0))
    removed = planner.search("macs", 0.01)  # unreachable: one unit stays
    assert len(removed) == 7 and 7 not in removed


def _fake_layer_latency(class_name, config, input_shape, **kwargs):
    width = config.get("filters", config.get("units", 1))
    return 0.001 * float(np.prod(input_shape)) * width


def _fake_timing(model_latency, relative_latency):
    """Replace the LiteRT timings of `kprune.export.latency` with fakes."""
    return mock.patch.multiple(
        "kprune.export.latency",
        layer_latency=mock.Mock(side_effect=_fake_layer_latency),
        model_latency=mock.Mock(side_effect=model_latency),
        relative_latency=mock.Mock(side_effect=relative_latency),
        export_for_timing=mock.Mock(side_effect=lambda m, p, d: p),
    )


def test_latency_target_with_a_table(tmp_path):
    model = _lenet()
    calls = []

    def fake_model_latency(m, **kwargs):
        calls.append(1)
        return {"latency_ms_median": 1e-4 * kprune.report.summary(m)["macs"]}

    def fake_relative(m, reference, **kwargs):
        ratio = kprune.report.summary(m)["macs"] / kprune.report.summary(model)["macs"]
        return {"ratio": ratio}

    with _fake_timing(fake_model_latency, fake_relative):
        table = LatencyTable(grid=(0.5, 1.0), cache_dir=tmp_path)
        table.build(model)
        assert table.measured > 0
        base = table.measure_model(model)
        small, plan = kprune.prune(model, latency=0.4 * base, latency_table=table)
        assert abs(plan.report["latency_after_ms"] - 0.4 * base) <= 0.04 * base
        # A second table on the same machine reads the cache: no measurement.
        again = LatencyTable(grid=(0.5, 1.0), cache_dir=tmp_path)
        again.build(model)
        assert again.measured == 0
    files = os.listdir(tmp_path)
    assert len(files) == 1 and files[0].endswith("-t1-float32.json")
    with open(tmp_path / files[0]) as f:
        assert json.load(f)["machine"] == table.machine


def test_latency_table_measures_with_litert(tmp_path, monkeypatch):
    monkeypatch.setenv("KPRUNE_CACHE_DIR", str(tmp_path))
    model = keras.Sequential(
        [keras.Input((32,)), L.Dense(16, name="a"), L.Dense(2, name="b")]
    )
    table = LatencyTable(grid=(1.0,), runs=3)
    assert table.path.startswith(str(tmp_path))
    table.build(model)
    assert table.measured == 2 and all(v > 0 for v in table.entries.values())
    report = kprune.report.compare(model, model, latency=True, runs=3)
    assert report["latency_ms"]["before"] > 0
    assert report["macs_reduction"] == 1.0
    assert "speedup" in kprune.report.format_table(report)


def test_cli_prune(tmp_path, capsys):
    from kprune.cli import main

    model = _lenet()
    path = str(tmp_path / "in.keras")
    model.save(path)
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "d.npz",
        x=rng.random((16, 16, 16, 1)).astype("float32"),
        y=rng.integers(0, 4, 16),
    )
    out = str(tmp_path / "out.keras")
    code = main(
        [
            "prune",
            path,
            out,
            "--macs",
            "0.5",
            "--data",
            str(tmp_path / "d.npz"),
            "--importance",
            "taylor",
            "--round-to",
            "4",
            "--plan",
            str(tmp_path / "plan.json"),
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "macs: kept" in text
    small = keras.models.load_model(out)
    assert (
        kprune.report.summary(small)["macs"]
        <= 0.5 * kprune.report.summary(model)["macs"]
    )
    assert main(["prune", path, out, "--macs", "0.5"]) == 1  # exists: no --force
    assert "--force" in capsys.readouterr().err
    assert main(["prune", path, out, "--macs", "3", "--force"]) == 1
    assert "fraction" in capsys.readouterr().err
    assert os.path.isfile(out)  # a failed run leaves the old output in place
    args = ["prune", path, out, "--macs", "0.5", "--force", "--deploy", "int8"]
    assert main(args) == 0
    assert main(args[:-1] + ["fp8"]) == 2  # argparse: not a choice


def test_car_and_callable_importances(data):
    model = _lenet()
    x, y = data[0][:32], data[1][:32]
    view = DependencyGroups(model)
    car = group_importance(model, "car", (x, y), groups=view)
    assert car.shape == (len(view),) and np.all(np.isfinite(car))

    def by_index(model, layer, x, y):
        units = (
            model.get_layer(layer)
            .get_config()
            .get("filters", model.get_layer(layer).get_config().get("units"))
        )
        return np.arange(units, dtype=float)

    scores = group_importance(model, by_index, groups=view)
    conv1 = view.structure == view.structures.index(("conv1",))
    np.testing.assert_allclose(scores[conv1], np.arange(12.0))
    with pytest.raises(ValueError, match="one score per unit"):
        group_importance(model, lambda *a: np.zeros(3), groups=view)


def _hub_block_model():
    keras_hub = pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 16))
    hidden = L.Dense(16, name="embed")(inputs)
    hidden = keras_hub.layers.TransformerEncoder(
        intermediate_dim=32, num_heads=2, name="block"
    )(hidden)
    hidden = L.GlobalAveragePooling1D()(hidden)
    return keras.Model(inputs, L.Dense(3, name="head")(hidden))


def test_groups_see_inside_composite_layers():
    model = _hub_block_model()
    view = DependencyGroups(model)
    assert ("block/feedforward_intermediate_dense",) in view.structures
    # attention heads live inside the layer: held, never removable here
    assert "block/self_attention_layer" in view.internal
    held = view.analysis.values(
        view.analysis.component, view.internal["block/self_attention_layer"][1]
    )
    assert not np.isin(held, view.ids).any()
    x = np.random.default_rng(0).random((16, 8, 16)).astype("float32")
    y = np.arange(16) % 3
    scores = group_importance(model, "taylor", (x, y), groups=view)
    ffn = view.structure == view.structures.index(
        ("block/feedforward_intermediate_dense",)
    )
    assert np.all(np.isfinite(scores)) and np.ptp(scores[ffn]) > 0
    small, plan = kprune.prune(model, (x, y), params=0.6, importance="l2")
    assert "block/feedforward_intermediate_dense" in plan.units
    assert 0.5 <= plan.report["params_ratio"] <= 0.6
    assert np.all(np.isfinite(small.predict(x, verbose=0)))
    # MACs inside the block are counted: a macs= budget is met on them.
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        small, plan = kprune.prune(model, x, macs=0.8, importance="l1")
    assert "block/feedforward_intermediate_dense" in plan.units
    ratio = kprune.report.summary(small)["macs"] / kprune.report.summary(model)["macs"]
    assert ratio <= 0.8


def test_prune_leaves_opaque_layers_alone():
    class Opaque(L.Layer):
        def call(self, x):
            return keras.ops.flip(x, axis=-1)  # reorders channels

    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    hidden = L.Dense(8, name="a")(inputs)
    hidden = Opaque(name="mystery")(hidden)
    hidden = L.Dense(8, name="b")(hidden)
    model = keras.Model(inputs, L.Dense(2, name="out")(hidden))
    view = DependencyGroups(model)
    assert [s for s in view.structures] == [("b",)]
    small, plan = kprune.prune(model, macs=0.9)
    assert set(plan.units) == {"b"}


def test_prune_keras_hub_backbone_keeps_its_class():
    pytest.importorskip("keras_hub")
    from kprune.testing import zoo

    model, x = zoo.keras_hub_backbones()["bert"]()
    small, plan = kprune.prune(model, x, params=0.8, importance="l2")
    assert type(small).__name__ == "PrunedModel"
    assert any(key.endswith("feedforward_intermediate_dense") for key in plan.units)
    assert plan.report["params_ratio"] <= 0.8
    outputs = small(x)
    assert outputs["sequence_output"].shape == model(x)["sequence_output"].shape


def test_calibration_caps_the_scored_samples(data):
    model = _lenet()
    seen = []

    def count(model, layer, x, y):
        seen.append((len(x), len(y)))
        return np.ones(model.get_layer(layer).output.shape[-1])

    _, plan = kprune.prune(model, data, macs=0.5, importance=count, calibration=16)
    assert set(seen) == {(16, 16)} and plan.report["calibration_samples"] == 16
    seen.clear()
    _, plan = kprune.prune(model, data, macs=0.5, importance=count)
    assert set(seen) == {(48, 48)} and plan.report["calibration_samples"] == 48
    # The subset is seeded: the same samples (and so the same plan) each call.
    a = kprune.prune(model, data, macs=0.5, importance="activation", calibration=8)
    b = kprune.prune(model, data, macs=0.5, importance="activation", calibration=8)
    assert a[1].units == b[1].units
    for bad in (0, 2.5, True, "8"):
        with pytest.raises(ValueError, match="calibration"):
            kprune.prune(
                model, data, macs=0.5, importance="activation", calibration=bad
            )


def test_latency_predictor_scales_and_prune_clamps_a_wild_timing(tmp_path):
    model = _lenet()
    answers = [0.001]  # the first side-by-side timing is absurdly low

    def fake_relative(m, reference, **kwargs):
        true = kprune.report.summary(m)["macs"] / kprune.report.summary(model)["macs"]
        return {"ratio": answers.pop() if answers else true}

    with _fake_timing(lambda m, **k: {"latency_ms_median": 10.0}, fake_relative):
        table = LatencyTable(grid=(0.5, 1.0), cache_dir=tmp_path)
        predict = table.predictor(model, latency=10.0)
        assert predict({}) == pytest.approx(10.0)  # full width: the measurement
        half = predict({"conv2": (12, 8), "fc1": (None, 16)})
        assert 0 < half < 10.0
        _, plan = kprune.prune(
            model, latency=5.0, latency_table=table, max_iterations=10
        )
    tries = plan.report["rounds"][0]["tries"]
    assert tries[0]["achieved"] == pytest.approx(0.01)
    assert tries[1]["internal"] == pytest.approx(2 * tries[0]["internal"])
    # Then bracketed (the bogus try at one end) and interpolated to the goal.
    assert abs(plan.report["latency_after_ms"] - 5.0) <= 0.5


def test_latency_tables_sharing_a_cache_keep_each_others_entries(tmp_path):
    with mock.patch(
        "kprune.export.latency.layer_latency", side_effect=_fake_layer_latency
    ):
        a = LatencyTable(grid=(1.0,), cache_dir=tmp_path)
        b = LatencyTable(grid=(1.0,), cache_dir=tmp_path)  # read before a saved
        a.build(keras.Sequential([keras.Input((8,)), L.Dense(4, name="x")]))
        b.build(keras.Sequential([keras.Input((6,)), L.Dense(3, name="y")]))
        both = LatencyTable(grid=(1.0,), cache_dir=tmp_path)
    assert len(both.entries) == 2 and set(a.entries) < set(both.entries)


def test_latency_search_brackets_then_interpolates():
    from kprune.pruning.budget import _next_internal

    one = [{"internal": 10.0, "achieved": 40.0}]
    assert _next_internal(one, 10.0, "latency") == 5.0  # factor clamped to 0.5
    assert _next_internal(one, 10.0, "macs") == 2.5
    two = one + [{"internal": 5.0, "achieved": 1.0}]  # bracketed: 5 .. 10
    assert _next_internal(two, 20.0, "latency") == pytest.approx(5 + 5 * 19 / 39)
    assert _next_internal(two, 1.5, "latency") == 5 + 0.25 * 5  # middle half
    three = two + [{"internal": 5.5, "achieved": 19.99}]  # below twice: bisect
    assert _next_internal(three, 20.0, "latency") == pytest.approx(5.5 + 0.5 * 4.5)


def test_cpu_clock_and_relative_latency(tmp_path):
    from kprune.export import measure_tflite, relative_latency, to_tflite

    big = keras.Sequential([keras.Input((1024,)), L.Dense(2048), L.Dense(1024)])
    small = keras.Sequential([keras.Input((1024,)), L.Dense(16)])
    path = to_tflite(big, str(tmp_path / "big.tflite"), verify=False)
    stats = measure_tflite(path, runs=5, clock="cpu")
    assert stats["clock"] == "cpu" and stats["latency_ms_min"] > 0
    # The reference given as its file: timed side by side with `small`.
    out = relative_latency(small, path, runs=5, rounds=2, clock="cpu")
    assert out["ratio"] < 0.5 and out["model_ms"] > 0
    assert out["reference_ms"] == pytest.approx(out["model_ms"] / out["ratio"])
    with pytest.raises(ValueError, match="clock"):
        measure_tflite(path, runs=5, clock="gpu")
    with pytest.raises(ValueError, match="statistic"):
        relative_latency(small, path, statistic="mean")
    with pytest.raises(ValueError, match="clock"):
        LatencyTable(clock="gpu", cache_dir=tmp_path)
    assert LatencyTable(clock="cpu", cache_dir=tmp_path).path.endswith("-cpu.json")


def test_group_costs_count_macs_and_memory_bound_elements():
    from kprune.criteria.budget import rank_weights

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 4))
    h = L.Conv2D(6, 1, name="a")(inp)
    h = L.Activation("swish", name="act")(h)  # a separate op: 64 elements
    h = L.ReLU(name="fused")(L.Conv2D(6, 1, name="c")(h))  # fused into c
    model = keras.Model(inp, L.Conv2D(5, 1, name="b")(h))
    view = DependencyGroups(model)
    planner = BudgetPlanner(model, view, np.ones(len(view.ids)), activation_cost=16)
    macs, elements = planner.group_costs()
    rows = {r["name"]: r["macs"] for r in kprune.report.summary(model)["layers"]}
    a = view.structures.index(("a",))
    c = view.structures.index(("c",))
    on_a, on_c = view.structure == a, view.structure == c
    # a's unit: its share of a's MACs and of c's (which reads it).
    np.testing.assert_allclose(macs[on_a], rows["a"] / 6 + rows["c"] / 6)
    np.testing.assert_allclose(macs[on_c], rows["c"] / 6 + rows["b"] / 6)
    np.testing.assert_allclose(elements[on_a], 64.0)  # the swish output
    np.testing.assert_allclose(elements[on_c], 0.0)  # ReLU fused into c
    weights = rank_weights(macs, elements, 16.0)
    np.testing.assert_allclose(weights[on_a], macs[on_a] / (macs[on_a] + 16 * 64))
    np.testing.assert_allclose(weights[on_c], 1.0)


def _memory_bound(seed=0):
    # A wide expansion with separate swish ops and a depthwise conv at high
    # resolution (time mostly memory traffic), then a MAC-heavy conv.
    keras.utils.set_random_seed(seed)
    inp = keras.Input((32, 32, 8))
    h = L.Conv2D(64, 1, name="expand")(inp)
    h = L.Activation("swish")(h)
    h = L.DepthwiseConv2D(3, padding="same", name="dw")(h)
    h = L.Activation("swish")(h)
    h = L.Conv2D(16, 1, name="project")(h)
    h = L.Conv2D(64, 3, strides=2, activation="relu", name="heavy")(h)
    h = L.GlobalAveragePooling2D()(h)
    return keras.Model(inp, L.Dense(4, name="out")(h))


def test_activation_cost_tilts_the_ranking_only_where_time_is_not_macs():
    model = _memory_bound()
    plain, p0 = kprune.prune(model, macs=0.25, activation_cost=0)
    tilted, p1 = kprune.prune(model, macs=0.25)  # default activation_cost=16
    assert p0.report["rank_exponent"] == 0 and p1.report["rank_exponent"] > 0
    assert p1.report["macs_ratio"] <= 0.25
    w0 = kprune.report.summary(plain)["widths"]
    w1 = kprune.report.summary(tilted)["widths"]
    assert w1["expand"] < w0["expand"]  # the memory-bound channels leave first
    # Plain CNNs (time nearly all MACs): the same choice as importance alone.
    lenet = _lenet()
    for budget in (0.5, 0.125):
        _, a = kprune.prune(lenet, macs=budget, activation_cost=0)
        _, b = kprune.prune(lenet, macs=budget)
        assert b.report["rank_exponent"] == 0 and a.units == b.units
    with pytest.raises(ValueError, match="activation_cost"):
        kprune.prune(model, macs=0.5, activation_cost=-1)
    # The deployed format's value by name: int8 weighs activations more.
    _, named = kprune.prune(model, macs=0.25, activation_cost="int8")
    _, number = kprune.prune(model, macs=0.25, activation_cost=64)
    assert named.units == number.units
    assert named.report["rank_exponent"] != p1.report["rank_exponent"]
    with pytest.raises(ValueError, match=r"one of \['float32', 'int8'\]"):
        kprune.prune(model, macs=0.5, activation_cost="fp8")


def test_latency_reference_is_the_least_of_its_timings(tmp_path):
    model = _lenet()

    # The first timing of the original is slow (10 ms); side by side it
    # times 8 ms: the candidate's latency is its ratio times 8, not 10.
    def fake_relative(m, reference, **kwargs):
        ratio = kprune.report.summary(m)["macs"] / kprune.report.summary(model)["macs"]
        return {"ratio": ratio, "reference_ms": 8.0, "model_ms": 8.0 * ratio}

    rounds = []

    def fake_model_latency(m, **kwargs):
        rounds.append(kwargs.get("rounds"))
        return {"latency_ms_median": 10.0}

    with _fake_timing(fake_model_latency, fake_relative):
        table = LatencyTable(grid=(0.5, 1.0), cache_dir=tmp_path)
        _, plan = kprune.prune(model, latency=4.0, latency_table=table)
    assert rounds[0] == 3  # measure_model times the original in 3 rounds
    assert plan.report["latency_first_ms"] == 10.0
    assert plan.report["latency_before_ms"] == 8.0
    ratio = plan.report["macs_ratio"]  # the fake latency is proportional
    assert plan.report["latency_after_ms"] == pytest.approx(8.0 * ratio)
    assert abs(plan.report["latency_after_ms"] - 4.0) <= 0.4


def test_remove_units_reuses_a_given_analysis():
    from kprune.surgery.analysis import ChannelAnalysis
    from kprune.surgery.rebuild import remove_units

    model, other = _lenet(), _lenet(1)
    analysis = ChannelAnalysis(model)
    plan = {"conv1": [0, 3], "fc1": [1, 2, 5]}
    fresh = remove_units(model, plan)
    for _ in range(2):  # the analysis is only read: reusable
        again = remove_units(model, plan, analysis=analysis)
        for a, b in zip(fresh.get_weights(), again.get_weights()):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="ChannelAnalysis of `model`"):
        remove_units(other, plan, analysis=analysis)
