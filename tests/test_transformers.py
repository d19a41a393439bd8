"""kprune.transformers: same-class width/depth pruning of KerasHub backbones."""

import importlib.util
import json

import keras
import numpy as np
import pytest

import kprune
from kprune.transformers import TransformerPlan, apply_plan, get_family, weight_infos
from kprune.transformers.plan import plan_heads, round_count
from tests.transformer_models import (
    CONFIGS,
    MORE,
    PRE_NORM,
    backbone,
    inputs,
    outputs,
)

if importlib.util.find_spec("keras_hub") is None:
    pytest.skip("keras_hub is not installed", allow_module_level=True)

import keras_hub  # noqa: E402

FAMILIES = sorted(CONFIGS)


def identity_plan(model):
    spec = get_family(model)
    return TransformerPlan(spec.name, model.num_layers, range(model.num_layers))


def permutation_plan(model, rng):
    """Every channel, unit and head kept, in a random order."""
    spec = get_family(model)
    config = model.get_config()
    layers = config[spec.layers]
    num_q, num_kv = config[spec.heads], spec.num_kv_heads(config)
    group = num_q // num_kv
    heads, kv_heads = [], []
    for _ in range(layers):
        kv = rng.permutation(num_kv)
        q = np.concatenate([k * group + rng.permutation(group) for k in kv])
        heads.append(q)
        kv_heads.append(kv)
    return TransformerPlan(
        spec.name,
        layers,
        range(layers),
        hidden=rng.permutation(config[spec.hidden]),
        ffn=[rng.permutation(spec.ffn_units(config)) for _ in range(layers)],
        heads=heads,
        kv_heads=kv_heads,
    )


def zeroed_copy(model, plan):
    """A copy of `model` whose removed FFN units, heads and blocks output 0.

    An FFN unit or a head only reaches the residual stream through its rows
    of the output projection (role `f...` / `q...` first); a pre-norm block
    is the identity when every weight whose last axis is hidden is zero.
    """
    copy = apply_plan(model, identity_plan(model))
    spec = get_family(model)
    config = model.get_config()
    kept_ffn = dict(zip(plan.layers, plan.ffn or []))
    kept_heads = dict(zip(plan.layers, plan.heads or []))
    for info in weight_infos(copy, spec):
        if info.block is None:
            continue
        value = keras.ops.convert_to_numpy(info.variable).copy()
        if info.block not in plan.layers:
            if info.roles.endswith("h"):
                value[...] = 0.0
        elif info.roles[0] == "f" and info.block in kept_ffn:
            drop = np.setdiff1d(np.arange(spec.ffn_units(config)), kept_ffn[info.block])
            value[drop] = 0.0
        elif info.roles[0] == "q" and info.roles.endswith("h"):
            if info.block in kept_heads:
                heads = np.arange(config[spec.heads])
                drop = np.setdiff1d(heads, kept_heads[info.block])
                value[drop] = 0.0
        info.variable.assign(value)
    return copy


@pytest.mark.parametrize("name", FAMILIES)
def test_family_slices_are_exact(name):
    model = backbone(name)
    x = inputs(model)
    reference = outputs(model, x)
    spec = get_family(model)

    # Keeping everything gives a copy with identical outputs.
    same = kprune.transformers.prune(model, x)
    assert type(same) is type(model) and same is not model
    np.testing.assert_array_equal(outputs(same, x), reference)

    # Every weight sliced on the right axes: a permutation of every channel,
    # unit and head changes nothing.
    plan = permutation_plan(model, np.random.default_rng(0))
    permuted = outputs(apply_plan(model, plan), x)
    np.testing.assert_allclose(
        permuted, reference[..., plan.hidden], atol=2e-5, rtol=1e-4
    )

    # Removing FFN units, heads (and, pre-norm, a block) equals zeroing them.
    scores = kprune.transformers.importance_scores(model, x)
    tied = spec.tied_head_dim(model.get_config())
    plan = kprune.transformers.make_plan(
        model,
        ffn=0.5,
        heads=1.0 if tied else 0.5,  # tied: head_dim would change
        layers=1 if name in PRE_NORM else None,
        scores=scores,
    )
    small = apply_plan(model, plan)
    np.testing.assert_allclose(
        outputs(small, x), outputs(zeroed_copy(model, plan), x), atol=2e-5, rtol=1e-4
    )

    # Width and depth together: a genuinely smaller model of the same class
    # that rebuilds from its own config.
    plan = kprune.transformers.make_plan(
        model, ffn=0.5, heads=0.5, hidden=0.5, layers=1, scores=scores
    )
    small = apply_plan(model, plan)
    assert type(small) is type(model)
    assert small.count_params() < model.count_params() / 3
    config = small.get_config()
    assert config[spec.layers] == 1
    assert config[spec.hidden] == 8
    assert config[spec.heads] == 2
    assert spec.ffn_units(config) == spec.ffn_units(model.get_config()) // 2
    if spec.kv_heads:
        assert config[spec.heads] % config[spec.kv_heads] == 0
    rebuilt = type(small).from_config(config)
    assert rebuilt.count_params() == small.count_params()
    assert np.all(np.isfinite(outputs(small, x)))


@pytest.mark.parametrize("name", sorted(MORE))
def test_more_families(name):
    model = backbone(name)
    x = inputs(model)
    reference = outputs(model, x)
    plan = permutation_plan(model, np.random.default_rng(0))
    permuted = outputs(apply_plan(model, plan), x)
    np.testing.assert_allclose(
        permuted, reference[..., plan.hidden], atol=2e-5, rtol=1e-4
    )
    small = kprune.transformers.prune(model, x, ffn=0.5, heads=0.5, hidden=0.5)
    assert type(small) is type(model) and small.hidden_dim == 8
    assert np.all(np.isfinite(outputs(small, x)))


def test_keeps_the_most_important_units_exactly():
    # FFN units whose input weights are zero are the least active; pruning
    # them (and nothing else) changes no output.
    model = backbone("LlamaBackbone")
    for block in model.transformer_layers:
        gate, up = block._feedforward_gate_dense, block._feedforward_intermediate_dense
        for layer in (gate, up):
            kernel = keras.ops.convert_to_numpy(layer.kernel).copy()
            kernel[:, 1::2] = 0.0
            layer.kernel.assign(kernel)
    x = inputs(model)
    small = kprune.transformers.prune(model, x, ffn=0.5)
    assert small.intermediate_dim == 16
    np.testing.assert_allclose(outputs(small, x), outputs(model, x), atol=1e-5)
    plan = kprune.transformers.make_plan(model, x, ffn=0.5)
    assert all(np.array_equal(kept, np.arange(0, 32, 2)) for kept in plan.ffn)


def test_gemma_embedding_scale_follows_the_hidden_size():
    # Gemma multiplies embeddings by sqrt(hidden_dim): the residual stream
    # entering the first block keeps the original's values on kept channels.
    model = backbone("GemmaBackbone")
    x = inputs(model)
    plan = kprune.transformers.make_plan(model, x, hidden=0.5)
    small = apply_plan(model, plan)
    seen = []
    for m in (model, small):
        block = m.transformer_layers[0]
        call = block.call

        def record(*args, _call=call, **kwargs):
            seen.append(keras.ops.convert_to_numpy(args[0]))
            return _call(*args, **kwargs)

        block.call = record
        try:
            m(x)
        finally:
            del block.call
    np.testing.assert_allclose(seen[1], seen[0][..., plan.hidden], rtol=1e-5)


def test_prune_leaves_the_original_untouched():
    model = backbone("GPT2Backbone")
    before = [keras.ops.convert_to_numpy(w).copy() for w in model.weights]
    x = inputs(model)
    kprune.transformers.prune(model, x, ffn=0.5, heads=0.5, hidden=0.5, layers=1)
    for w, value in zip(model.weights, before):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(w), value)
    layers = model._flatten_layers(include_self=True, recursive=True)
    assert not any("call" in layer.__dict__ for layer in layers)


def test_pruned_backbone_saves_and_drops_into_its_task(tmp_path):
    model = backbone("GPT2Backbone")
    x = inputs(model)
    small = kprune.transformers.prune(
        model, x, ffn=0.5, heads=0.5, hidden=0.5, layers=1
    )
    path = str(tmp_path / "small.keras")
    small.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is type(small)
    np.testing.assert_array_equal(outputs(loaded, x), outputs(small, x))
    lm = keras_hub.models.GPT2CausalLM(backbone=loaded, preprocessor=None)
    logits = keras.ops.convert_to_numpy(lm(x))
    assert logits.shape == (6, 8, 50) and np.all(np.isfinite(logits))


def test_task_model_is_pruned_with_its_head():
    model = backbone("BertBackbone")
    x = inputs(model)
    classifier = keras_hub.models.BertTextClassifier(
        backbone=model, num_classes=3, preprocessor=None
    )
    same = kprune.transformers.prune(classifier, x)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(same(x)), keras.ops.convert_to_numpy(classifier(x))
    )
    small = kprune.transformers.prune(classifier, x, heads=0.5, hidden=0.5, ffn=0.5)
    assert type(small) is keras_hub.models.BertTextClassifier
    assert small.backbone.hidden_dim == 8
    assert small.predict(x, verbose=0).shape == (6, 3)


def test_vit_classifier_prunes_with_its_head():
    model = backbone("ViTBackbone")
    x = inputs(model)
    classifier = keras_hub.models.ViTImageClassifier(
        backbone=model, num_classes=4, preprocessor=None, intermediate_dim=5
    )
    small = kprune.transformers.prune(classifier, x, hidden=0.5, heads=0.5, layers=1)
    assert type(small) is keras_hub.models.ViTImageClassifier
    assert keras.ops.convert_to_numpy(small(x)).shape == (6, 4)


def test_causal_lm_generates_after_grouped_query_pruning():
    model = backbone("LlamaBackbone")
    x = inputs(model)
    small = kprune.transformers.prune(model, x, heads=0.5, hidden=0.5)
    assert (small.num_query_heads, small.num_key_value_heads) == (2, 1)
    lm = keras_hub.models.LlamaCausalLM(backbone=small, preprocessor=None)
    prompt = {
        "token_ids": np.array([[3, 4, 0, 0]], "int32"),
        "padding_mask": np.array([[1, 1, 0, 0]], "int32"),
    }
    generated = lm.generate(prompt, stop_token_ids=None)
    tokens = keras.ops.convert_to_numpy(generated["token_ids"])
    assert tokens.shape == (1, 4)


def test_plan_heads_grouped_query():
    scores = np.array([1.0, 2.0, 9.0, 8.0, 0.0, 7.0])
    q, kv = plan_heads(scores, 6, 3, 4, "Llama")  # whole groups (2 per group)
    assert q.tolist() == [2, 3, 4, 5] and kv.tolist() == [1, 2]
    q, kv = plan_heads(scores, 6, 3, 3, "Llama")  # one per group, all groups
    assert q.tolist() == [1, 2, 5] and kv.tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="num_query_heads % num_key_value_heads"):
        plan_heads(scores, 6, 3, 5, "Llama")


def test_round_to():
    assert round_count(0.5, 100, 8) == 48
    assert round_count(0.01, 100, 8) == 8
    assert round_count(1.0, 100, 8) == 100
    model = backbone("GemmaBackbone")
    x = inputs(model)
    small = kprune.transformers.prune(model, x, ffn=0.7, hidden=0.7, round_to=4)
    assert small.hidden_dim == 12 and small.intermediate_dim == 2 * 12


def test_depth_by_block_influence_and_by_list():
    model = backbone("Qwen3Backbone", num_layers=3)
    x = inputs(model)
    scores = kprune.transformers.importance_scores(model, x, need=("layers",))
    plan = kprune.transformers.make_plan(model, x, layers=2)
    assert plan.layers == sorted(np.argsort(-scores.layers)[:2].tolist())
    small = kprune.transformers.prune(model, x, layers=[0, 2])
    assert small.num_layers == 2
    # The plan round-trips through JSON and rebuilds the same model.
    text = kprune.transformers.make_plan(model, x, layers=[0, 2]).to_json()
    again = apply_plan(model, TransformerPlan.from_dict(json.loads(text)))
    np.testing.assert_array_equal(outputs(again, x), outputs(small, x))


def test_magnitude_and_callable_importance():
    model = backbone("GPT2Backbone")
    x = inputs(model)
    small = kprune.transformers.prune(model, ffn=0.5, importance="magnitude")
    assert small.intermediate_dim == 16

    def constant(backbone, data):
        return kprune.criteria.TransformerScores(
            ffn=[np.arange(32.0)] * 2, heads=[np.arange(4.0)] * 2
        )

    plan = kprune.transformers.make_plan(model, x, ffn=0.25, importance=constant)
    assert all(kept.tolist() == list(range(24, 32)) for kept in plan.ffn)


def test_errors_name_the_constraint():
    gpt2 = backbone("GPT2Backbone")
    x = inputs(gpt2)
    with pytest.raises(ValueError, match="head_dim = hidden_dim // num_heads"):
        kprune.transformers.prune(gpt2, x, heads=0.5)
    with pytest.raises(ValueError, match="fraction of units to keep"):
        kprune.transformers.prune(gpt2, x, ffn=2)
    with pytest.raises(ValueError, match="number of blocks to keep"):
        kprune.transformers.prune(gpt2, x, layers=5)
    with pytest.raises(ValueError, match="needs calibration `data`"):
        kprune.transformers.prune(gpt2, None, ffn=0.5)
    llama = backbone("LlamaBackbone")
    with pytest.raises(ValueError, match="grouped-query attention"):
        kprune.transformers.prune(llama, inputs(llama), heads=0.75, hidden=0.75)
    with pytest.raises(ValueError, match="does not know this backbone family"):
        kprune.transformers.prune(keras.Sequential([keras.Input((3,))]), None)
    gemma3 = backbone("Gemma3Backbone", num_layers=7, use_sliding_window_attention=True)
    with pytest.raises(ValueError, match="sliding-window vs global"):
        kprune.transformers.prune(gemma3, inputs(gemma3), layers=[0, 1, 2, 3, 4, 6])


def test_replace_blocks_by_fitted_linear_maps(tmp_path):
    model = backbone("GPT2Backbone", num_layers=3)
    block = model.transformer_layers[1]
    for weight in block.weights:  # block 1 becomes the identity map
        if weight.path.endswith(("attention_output/kernel", "output_dense/kernel")):
            weight.assign(np.zeros(weight.shape))
        if weight.path.endswith(("attention_output/bias", "output_dense/bias")):
            weight.assign(np.zeros(weight.shape))
    x = inputs(model, n=12)
    report = kprune.transformers.block_redundancy(model, x)
    assert [r["index"] for r in report] == [0, 1, 2]
    assert report[1]["r2"] > 1 - 1e-6 and report[1]["influence"] < 1e-6
    linear, info = kprune.transformers.replace_blocks(model, [1], x, return_info=True)
    assert info[0]["params_added"] == 16 * 16 + 16
    names = [layer.name for layer in linear.layers]
    assert "linear_transformer_layer_1" in names
    assert "transformer_layer_1" not in names
    np.testing.assert_allclose(outputs(linear, x), outputs(model, x), atol=1e-4)
    path = str(tmp_path / "linear.keras")
    linear.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(outputs(loaded, x), outputs(linear, x), atol=1e-6)
    with pytest.raises(ValueError, match="called inside another layer"):
        vit = backbone("ViTBackbone")
        kprune.transformers.replace_blocks(vit, [0], inputs(vit))
