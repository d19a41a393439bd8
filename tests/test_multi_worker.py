"""kprune under `tf.distribute.MultiWorkerMirroredStrategy`, two local workers.

Keras 3.15's `fit` fails under this strategy with more than one worker
(two bugs of its TensorFlow trainer); `kprune.multi_worker.
patch_keras_multi_worker()` is the opt-in workaround (docs/backends.md).

- By default: the patch itself (it installs, undoes, refuses another
  backend, and changes nothing outside multi-worker mode).
- `-m slow`: two worker processes on loopback (`TF_CONFIG` with two free
  ports, `tests/distribution_checks.py:worker_main`) check that an
  unpatched `fit` still fails (so the patch is still needed), and that
  with the patch every check of `distribution_checks.TRAINING_CHECKS`
  (`ProximalStep`; `MagnitudePruning`; the `GroupSoftThreshold`
  constraints of `apply_group_sparsity(..., method="constraint")` with
  `SizeTarget`; `RegularizationScheduler` per batch with `ProximalStep`
  and `SparsityLogger`; `AdaptiveRegularization`; `kprune.Distiller` and
  `kprune.losses.Distillation`) and `kprune.transformers.prune`
  calibrating in the strategy's scope give the same zero groups, masks,
  logged figures and kept units as one device (computed here, in this
  process, while the workers run; `tests/distribution_asserts.py` says
  what "the same" means). Measured on 2026-12-04 on one core of the
  shared 2-core development machine (load 3-7): 327 s of wall time, 87
  CPU-seconds (the whole file; 251 s and 61 CPU-seconds before the
  scheduler, ART and distillation checks): hence `slow`.
"""

import concurrent.futures

import keras
import numpy as np
import pytest

import kprune
from tests import distribution_checks as checks
from tests.distribution_asserts import assert_meaningful, assert_same_training

pytestmark = pytest.mark.tensorflow_only(
    reason="tf.distribute.MultiWorkerMirroredStrategy and Keras' TensorFlow trainer"
)


@pytest.fixture
def patch_module():
    import kprune.multi_worker as multi_worker

    yield multi_worker
    if multi_worker._ACTIVE is not None:
        multi_worker._ACTIVE.undo()


def test_patch_installs_and_undoes(patch_module):
    from keras.src.backend.tensorflow import trainer

    reduce, build = (
        trainer.reduce_per_replica,
        trainer.TensorFlowTrainer.__dict__["_maybe_symbolic_build"],
    )
    patch = patch_module.patch_keras_multi_worker()
    assert patch.active
    assert trainer.reduce_per_replica is not reduce
    assert trainer.TensorFlowTrainer._maybe_symbolic_build is not build
    assert patch_module.patch_keras_multi_worker() is patch  # not twice
    patch.undo()
    assert not patch.active
    assert trainer.reduce_per_replica is reduce
    assert trainer.TensorFlowTrainer.__dict__["_maybe_symbolic_build"] is build
    patch.undo()  # a no-op once undone
    with patch_module.patch_keras_multi_worker() as again:
        assert again.active and again is not patch
    assert not again.active and trainer.reduce_per_replica is reduce


def test_patch_changes_nothing_outside_multi_worker(patch_module):
    """Without a multi-worker strategy, the same losses as Keras' own code."""

    def run():
        x, y = checks.data()
        model = checks.mlp(keras, kprune)
        model.compile(keras.optimizers.SGD(0.05), "mse")
        history = model.fit(checks.tf_dataset(x, y), epochs=2, shuffle=False, verbose=0)
        return history.history["loss"], model.evaluate(x, y, verbose=0)

    before = run()
    with patch_module.patch_keras_multi_worker():
        during = run()
    assert during == before


def test_patch_refuses_a_missing_keras_function(patch_module, monkeypatch):
    from keras.src.backend.tensorflow import trainer

    monkeypatch.delattr(trainer, "reduce_per_replica")
    with pytest.raises(RuntimeError, match="reduce_per_replica.*newer Keras"):
        patch_module.patch_keras_multi_worker()


def test_patch_refuses_another_backend(patch_module, monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(RuntimeError, match="KERAS_BACKEND=tensorflow"):
        patch_module.patch_keras_multi_worker()


# --- two workers ------------------------------------------------------------


@pytest.fixture(scope="module")
def runs():
    try:
        checks.free_ports(2)
    except OSError as error:
        pytest.skip(f"cannot bind two loopback ports for the workers: {error}")
    script = "from tests.distribution_checks import worker_main; worker_main()"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        workers = pool.submit(checks.run_workers, script, workers=2, timeout=600)
        single = checks.reference(keras, kprune)  # while the workers run
        results, seconds = workers.result()
    return {"workers": results, "single": single, "seconds": seconds}


@pytest.mark.slow
def test_two_workers_synchronize(runs):
    first, second = runs["workers"]
    for result in (first, second):
        assert result["workers"] == 2 and result["replicas"] == 2
    # Both workers end with the same model and the same decisions.
    for check in checks.TRAINING_CHECKS:
        assert_same_training(second[check], first[check], check)
    assert second["transformers"] == first["transformers"]


@pytest.mark.slow
def test_keras_still_needs_the_patch(runs):
    """If this fails, Keras fixed `fit` under MultiWorkerMirroredStrategy:
    check `fit` without `kprune.multi_worker` and retire it."""
    for result in runs["workers"]:
        errors = result["unpatched"]
        assert errors["keras"] and "PerReplica" in errors["keras"], errors
        reduction = "Invalid reduction dimension 0 for input with 0 dimensions"
        assert errors["build_patched"] and reduction in errors["build_patched"]


@pytest.mark.slow
@pytest.mark.parametrize("check", checks.TRAINING_CHECKS)
def test_callbacks_match_one_device(runs, check):
    single = runs["single"][check]
    assert_meaningful(single, check)
    for result in runs["workers"]:
        assert_same_training(result[check], single, check)


@pytest.mark.slow
def test_transformers_calibration_matches_one_device(runs):
    single = runs["single"]["transformers"]
    for result in runs["workers"]:
        got = result["transformers"]
        assert [np.shape(w) for w in got] == [np.shape(w) for w in single]
        for a, b in zip(single, got):
            np.testing.assert_allclose(b, a, atol=1e-6)
