"""A `ModelParallel` width the mesh does not divide: a kprune error.

One fresh JAX process with 4 virtual CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=4`) runs
`tests/distribution_checks.py:layouts_main` on a 2 x 2 ("batch", "model")
mesh: a 16-unit layer sharded over the 2-way "model" axis loses 1 unit
(kprune's error, naming the layer, the size, the axis and `round_to`) and
then 2 units (rebuilt, still sharded, exact). Seconds, so it runs by
default; the longer distribution runs are in `test_distribution.py`.
"""

import importlib.util

import pytest

import kprune
from tests.distribution_checks import JAX_FOUR_DEVICES

if importlib.util.find_spec("jax") is None:
    pytest.skip(
        "jax is not installed (it is in kprune's `test` extra)", allow_module_level=True
    )

ENV = JAX_FOUR_DEVICES


@pytest.fixture(scope="module")
def result():
    script = "from tests.distribution_checks import layouts_main; layouts_main()"
    return kprune.testing.run_script(script, env=ENV, timeout=300)


@pytest.mark.parametrize(
    "case, layer, variable, dim",
    [("units", "a", "a/kernel", 1), ("rows", "b", "b/kernel", 0)],
)
def test_odd_width_names_layer_axis_and_round_to(result, case, layer, variable, dim):
    assert result["devices"] == 4
    kind, message = result[case]["odd_error"]
    assert kind == "SurgeryError", message
    assert message.startswith(f"Layer '{layer}' (Dense)")
    assert "ModelParallel" in message
    # The variable by its path (the model's name, then `a/kernel`).
    assert f"/{variable}' would have size 15 in dimension {dim}" in message
    assert "mesh axis 'model' (2)" in message
    assert "round_to=2" in message
    assert message.endswith("on mesh {'batch': 2, 'model': 2}")


@pytest.mark.parametrize("case", ["units", "rows"])
def test_even_width_is_rebuilt_sharded(result, case):
    r = result[case]
    assert r["even_width"] == 14
    assert "model" in r["even_sharding"]
    assert r["even_diff"] <= 1e-5
