"""What "the same training as one device" means, for every distribution test.

`tests/distribution_checks.py:train` runs each check of `TRAINING_CHECKS`
and returns plain JSON; `tests/test_multi_worker.py` (two
`MultiWorkerMirroredStrategy` workers) and `tests/test_distribution.py`
(JAX `DataParallel` on 4 devices) compare each run with one device's, and
the two workers with each other, through `assert_same_training`.
`assert_meaningful` checks that the one-device run exercised what it is
meant to (some units pruned, the target reached...), so that "identical"
cannot pass vacuously.
"""

import numpy as np

# Figures that count things or name phases and epochs: equal exactly.
EXACT_LOGS = (
    "prox_zero_groups",
    "live_units",
    "live_units/a",
    "group_sparsity",
    "group_sparsity/a",
    "weight_sparsity",
    "art_phase",
    "art_best_epoch",
    "sparsity",
)


def _same_kernels(got, want):
    assert got["zero_groups"] == want["zero_groups"]
    for name, kernel in want["kernels"].items():
        np.testing.assert_allclose(got["kernels"][name], kernel, atol=1e-5)
        # Exact zeros stay exact zeros on every worker and device.
        zeros = np.array(got["kernels"][name]) == 0
        assert np.array_equal(zeros, np.array(kernel) == 0), name
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5)


def assert_same_training(got, want, which):
    """`got` took the same decisions as `want` (one check of `train`).

    Zero groups, masks and the exact zeros of every kernel are equal;
    kernels within 1e-5; losses and logged figures within 1e-5
    (relative), counts, phases and epochs equal.
    """
    _same_kernels(got, want)
    if "masks" in want:
        assert got["masks"] == want["masks"]
    if "sparsity" in want:
        assert got["sparsity"] == want["sparsity"]
    for key in ("size_ratio", "size_target_reached"):
        if key in want:
            assert got[key] == want[key], key
    if "reg_strength" in want:
        np.testing.assert_allclose(got["reg_strength"], want["reg_strength"], rtol=1e-6)
    if "evaluate" in want:
        np.testing.assert_allclose(got["evaluate"], want["evaluate"], rtol=1e-5)
    for key, values in want.get("logs", {}).items():
        if key in EXACT_LOGS:
            assert got["logs"][key] == values, key
        else:
            np.testing.assert_allclose(got["logs"][key], values, rtol=1e-5, err_msg=key)
    if "penalties" in want:
        np.testing.assert_allclose(got["penalties"], want["penalties"], rtol=1e-5)
    if which == "distiller":
        np.testing.assert_allclose(got["soft_targets"], want["soft_targets"], atol=1e-5)
        _same_kernels(got["distillation"], want["distillation"])


def assert_meaningful(run, which):
    """The one-device run of `which` did what the check is there to compare."""
    if which == "proximal":
        assert 0 < len(run["zero_groups"]) < 16
    elif which == "magnitude":
        assert run["sparsity"][-1] > 0.5
    elif which == "constraint":
        # SizeTarget's decisions: the size after each epoch, when the
        # target was reached, and the strength it took to get there.
        assert run["size_target_reached"][-1] == 1
        assert run["size_ratio"][-1] <= 0.6
        assert run["reg_strength"][0] > 0.2  # it grew before landing
    elif which == "sparse_constraint":
        kernel = np.array(run["kernels"]["a"])
        # whole groups and single weights inside live groups are exact zeros
        assert 0 < len(run["zero_groups"]) < 16
        live = np.delete(kernel, run["zero_groups"], axis=1)
        assert np.any(live == 0)
    elif which == "penalty":
        assert min(run["penalties"]) > 0
        assert len(run["loss"]) == 6  # both models' epochs
    elif which == "scheduler":
        logs = run["logs"]
        np.testing.assert_allclose(logs["reg_strength"], [0.3, 0.6, 0.9])
        assert 0 < len(run["zero_groups"]) < 16
        assert logs["live_units/a"][-1] == 16 - len(run["zero_groups"])
        assert logs["prox_zero_groups"][-1] == len(run["zero_groups"])
    elif which == "art":
        logs = run["logs"]
        assert logs["art_phase"] == [1.0, 2.0]  # one ART epoch, then the hand-off
        np.testing.assert_allclose(logs["art_lambda"], [1e-3, 0.0])
        assert abs(logs["sparsity"][-1] - 0.8) < 0.01
        assert 0 < logs["art_pruned_accuracy"][0] < logs["art_dense_accuracy"][0]
        assert logs["hs_scale"][0] > 0
        assert sorted(run["masks"]) == ["a", "b"]
    elif which == "distiller":
        assert run["loss"][-1] < run["loss"][0]
        assert run["distillation"]["loss"][0] > 0
        assert len(run["soft_targets"]) == 128
    else:
        raise ValueError(f"no such check: {which!r}")
