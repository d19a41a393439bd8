"""Every structure other pruning libraries test: exact, removable, saveable.

One small model per structure (`tests/structure_models.py`): recurrent
layers and their wrappers, channels_first layouts, Permute and `keras.ops`
on the channel axis, Lambda, attention, Embedding consumers, squeeze-and-
excitation, concat / split, multiple inputs and outputs, grouped convs.
For each: the zeroed units are found by `dead_units`, `slim` is exact on
random inputs, `remove_units` runs and its result runs and round-trips
through `.keras`. Then the structures kprune refuses, by their message.
"""

import keras
import numpy as np
import pytest

import kprune
from kprune.surgery import CouplingError, SurgeryError
from kprune.testing.zoo import zero_units
from tests import structure_models as structures
from tests import surgery_models as models

L = keras.layers


def _prepared(name):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    case = structures.CASES[name]
    model = case.build()
    models.randomize(model, rng, zero_fraction=0.0, zero_rows_fraction=0.0)
    if case.zero is not None:
        case.zero(model)
    return case, model, models.sample_inputs(model, rng)


@pytest.mark.parametrize("name", sorted(structures.CASES))
def test_structure(name, tmp_path):
    case, model, x = _prepared(name)
    before = [w.copy() for w in model.get_weights()]

    dead = kprune.surgery.dead_units(model)
    for path, units in case.dead.items():
        assert set(units) <= set(dead.get(path, [])), (path, dead)
    small = kprune.surgery.slim(model)
    assert small.count_params() < model.count_params()
    if case.runs:
        kprune.testing.assert_same_outputs(model, small, x, rtol=1e-5)

    pruned = kprune.surgery.remove_units(model, case.plan)
    assert pruned.count_params() < model.count_params()
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)  # the input model is untouched
    if not case.saves:
        return
    path = str(tmp_path / f"{name}.keras")
    pruned.save(path)
    loaded = keras.models.load_model(path, safe_mode=case.safe_mode)
    assert loaded.count_params() == pruned.count_params()
    if case.runs:
        shapes = [o.shape for o in keras.tree.flatten(model(x))]
        assert [o.shape for o in keras.tree.flatten(pruned(x))] == shapes
        kprune.testing.assert_same_outputs(pruned, loaded, x, rtol=1e-6)


def _leaf(model, path):
    layer = model
    for part in path.split("/"):
        layer = layer.get_layer(part) if hasattr(layer, "get_layer") else None
        if layer is None:
            return None
    return layer


def _random_biases(model, zeroed, rng):
    """Zeroed Dense / Conv units output a random constant (their bias)."""
    for path, units in zeroed.items():
        layer = _leaf(model, path)
        if not isinstance(layer, (L.Dense, L.Conv1D, L.Conv2D, L.Conv3D)):
            continue
        for variable in layer.weights:
            if variable.name == "bias" and variable.shape[-1] > max(units):
                value = keras.ops.convert_to_numpy(variable).copy()
                value[..., units] = rng.normal(size=len(units))
                variable.assign(value)


@pytest.mark.jax_by_hand(
    reason="a second slim of every structure; test_structure slims each on JAX"
)
@pytest.mark.parametrize(
    "name", sorted(n for n, c in structures.CASES.items() if c.runs)
)
def test_random_dead_units_slim_exact(name):
    """Random units zeroed (with random constant outputs): slim is exact."""
    seed = sorted(structures.CASES).index(name)
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    case = structures.CASES[name]
    model = case.build()
    models.randomize(model, rng, zero_fraction=0.3, zero_rows_fraction=0.2)
    if case.saves:  # zero_units copies the model (a Lambda's copy fails)
        model, zeroed = zero_units(model, fraction=0.4, seed=seed)
        _random_biases(model, zeroed, rng)
    x = models.sample_inputs(model, rng)

    dead = kprune.surgery.dead_units(model)
    small = kprune.surgery.slim(model)

    kprune.testing.assert_same_outputs(model, small, x, rtol=1e-5)
    if dead:
        assert small.count_params() < model.count_params()
    assert not kprune.surgery.dead_units(small)  # nothing left to find


REFUSED = [
    # (case, plan, words the message must hold)
    ("unstack_channels", {"d": [0]}, ["'d'", "unstack", "x[..., i]"]),
    ("lambda_on_path", {"d": [0]}, ["'d'", "'scale'", "Lambda", "keras.ops"]),
    ("attention", {"mha": [3]}, ["'mha'", "3 units"]),
    ("lstm", {"rnn": [8]}, ["'rnn'", "8 units"]),
    ("bidirectional_concat", {"bi": [10]}, ["'bi'", "10 units"]),
]


@pytest.mark.parametrize("name,plan,words", REFUSED, ids=[r[0] for r in REFUSED])
def test_refused_with_a_clear_error(name, plan, words):
    model = structures.CASES[name].build()
    with pytest.raises(SurgeryError) as info:
        kprune.surgery.remove_units(model, plan)
    message = str(info.value)
    for word in words:
        assert word in message, message
    assert "has no units of its own" not in message


def test_getitem_with_a_step_is_refused():
    inputs = keras.Input((5, 8))
    x = L.Dense(7, name="d")(inputs)
    y = L.Dense(3, name="e")(inputs)
    y = keras.ops.concatenate([x[..., ::2], y], axis=-1)
    model = keras.Model(inputs, L.Dense(2, name="out")(y))
    with pytest.raises(CouplingError, match=r"'d'.*step"):
        kprune.surgery.remove_units(model, {"d": [1]})
    small = kprune.surgery.remove_units(model, {"e": [0]})  # e is free
    assert small.get_layer("e").units == 2


def _convnext(width, seed=0):
    """A small ConvNeXt built by Keras' own ConvNeXt code (blocks of a
    depthwise `Conv2D(groups=C)`, LayerNorm, two Dense, LayerScale)."""
    from keras.src.applications.convnext import ConvNeXt

    keras.utils.set_random_seed(seed)
    return ConvNeXt(
        depths=[2, 1, 1, 1],
        projection_dims=[width, 16, 16, 16],
        layer_scale_init_value=0.5,
        name="cnx",
        include_preprocessing=False,
        input_shape=(32, 32, 3),
        classes=3,
        classifier_activation=None,
    )


def test_convnext_residual_width_removable():
    """Two channels of ConvNeXt's stage-0 residual stream leave every layer
    of the stage (stem, depthwise Conv2D(groups=C), LayerNorm, Dense,
    LayerScale, downsampling); the result equals a ConvNeXt built 6 wide
    from the original's weights with those channels cut out."""
    removed = [0, 3]
    model = _convnext(8)
    rng = np.random.default_rng(0)
    for variable in model.weights:
        variable.assign(rng.normal(0, 0.3, variable.shape))
    # 8 of the 32 expansion units of each stage-0 block leave too, so that
    # the result has the widths of a ConvNeXt built 6 wide.
    expansion = list(range(24, 32))
    plan = {"cnx_stem/cnx_stem_conv": removed}
    for block in range(2):
        plan[f"cnx_stage_0_block_{block}_pointwise_conv_1"] = expansion
    small = kprune.surgery.remove_units(model, plan)

    dw = small.get_layer("cnx_stage_0_block_1_depthwise_conv")
    assert dw.filters == dw.groups == 6
    reference = _convnext(6)
    for original, target in zip(model.weights, reference.weights):
        value = keras.ops.convert_to_numpy(original)
        for axis, (a, b) in enumerate(zip(value.shape, target.shape)):
            if a != b:
                cut = removed if a - b == len(removed) else expansion
                value = np.delete(value, cut, axis=axis)
        target.assign(value)
    x = rng.normal(size=(2, 32, 32, 3)).astype("float32")
    kprune.testing.assert_same_outputs(reference, small, x, rtol=1e-5)
    assert small.count_params() == reference.count_params()
