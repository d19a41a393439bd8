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
