"""kprune under `keras.distribution` on JAX, with 4 virtual CPU devices.

One fresh process (`KERAS_BACKEND=jax`,
`XLA_FLAGS=--xla_force_host_platform_device_count=4`) runs
`tests/distribution_checks.py:jax_main`: the same training on one device
and under `keras.distribution.DataParallel` on 4, for every check of
`distribution_checks.TRAINING_CHECKS` (every kprune callback, the
`GroupSoftThreshold` constraints, `kprune.Distiller` and
`kprune.losses.Distillation`; the same list as
`tests/test_multi_worker.py`); `kprune.transformers.prune` calibrating on
one device and under `DataParallel`; and a model sharded with a
`LayoutMap` (`ModelParallel`) scored and slimmed.
"""

import importlib.util

import numpy as np
import pytest

import kprune
from tests.distribution_asserts import assert_meaningful, assert_same_training
from tests.distribution_checks import JAX_FOUR_DEVICES, TRAINING_CHECKS

# Minutes of JAX compilation in a 4-device process: `pytest -m slow`.
pytestmark = pytest.mark.slow

if importlib.util.find_spec("jax") is None:
    pytest.skip(
        "jax is not installed (it is in kprune's `test` extra)", allow_module_level=True
    )

ENV = JAX_FOUR_DEVICES


@pytest.fixture(scope="module")
def result():
    script = "from tests.distribution_checks import jax_main; jax_main()"
    return kprune.testing.run_script(script, env=ENV, timeout=900)


def test_four_devices(result):
    assert result["backend"] == "jax"
    assert result["devices"] == 4


@pytest.mark.parametrize("which", TRAINING_CHECKS)
def test_data_parallel_matches_one_device(result, which):
    single, parallel = result[which]["single"], result[which]["parallel"]
    assert_meaningful(single, which)
    assert_same_training(parallel, single, which)


def test_transformers_calibration_under_data_parallel(result):
    single, parallel = (
        result["transformers"]["single"],
        result["transformers"]["parallel"],
    )
    for a, b in zip(single, parallel):
        np.testing.assert_allclose(b, a, atol=1e-6)


def test_model_parallel_layout_map(result):
    r = result["model_parallel"]
    assert "error" not in r, r.get("error")
    assert "'model'" in r["sharding"]  # the kernel really is sharded
    assert r["l1"][1] == 0.0 and r["l1"][5] == 0.0
    assert r["car"][1] == 0.0 and r["car"][5] == 0.0
    assert r["slim_width"] == 14
    assert r["slim_diff"] <= 1e-5
    # The rebuilt model's variables take their layouts from the LayoutMap.
    assert "'model'" in r["slim_sharding"]
    assert r["fit_after_slim"]
    # 13 units cannot be split over the 2-way 'model' axis: kprune's error
    # (tests/test_distribution_layouts.py checks its message).
    assert r["odd_error"].startswith("SurgeryError: Layer 'a' (Dense)")
