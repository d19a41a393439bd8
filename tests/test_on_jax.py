"""The surgery and callback suites again, on Keras' JAX backend.

The backend is fixed when Keras is first imported, and the default run uses
TensorFlow, so each suite in `SUITES` runs again in a fresh
`KERAS_BACKEND=jax` pytest process (one test here per suite: the two
workers of the default run share them). A failure shows that process's
summary. Inside the pass:

- `@pytest.mark.tensorflow_only(reason=...)` tests are skipped with their
  reason (`tf.distribute`, or a value the JAX train step bakes in);
- `@pytest.mark.jax_by_hand(reason=...)` tests are skipped for time, with
  their reason: `KERAS_BACKEND=jax python -m pytest FILE` runs them.

XLA's CPU compiler runs at its lowest optimization level: JAX compiles
every eagerly run op once per shape (each rebuilt layer's initializers
included), and these suites check results, not speed. The suites share
one persistent compilation cache for this run (the same small train steps
recur across suites).

Run only this pass with `python -m pytest tests/test_on_jax.py` (add
`-rP` to see each suite's skips and their reasons), or one suite by hand
with `KERAS_BACKEND=jax python -m pytest tests/<suite>`.
"""

import importlib.util
import os
import subprocess
import sys

import keras
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The longest first (the default run also starts this module first: see
# `pytest_collection_modifyitems` in conftest.py).
SUITES = [
    "test_surgery_structures.py",
    "test_surgery_topologies.py",
    "test_surgery_tracing.py",
    "test_surgery_keras_hub.py",
    "test_surgery_api.py",
    "test_group_constraints.py",
    "test_group_sparsity_callbacks.py",
    "test_surgery_property.py",
    "test_surgery_compiling.py",
    "test_surgery_inputs.py",
    "test_surgery_traced_heads.py",
]

# Suites of these names that do not run on JAX by default, with the reason.
# Every tests/test_surgery_*.py is in SUITES or here (checked below).
NOT_ON_JAX = {
    "test_surgery_applications.py": "every application is jax_by_hand (JAX "
    "compiles each rebuilt model, 30-60 s of CPU); the structure suite covers "
    "their structures on JAX; run by hand with KERAS_BACKEND=jax",
}

ENV = {
    "KERAS_BACKEND": "jax",
    "JAX_PLATFORMS": "cpu",
    "XLA_FLAGS": "--xla_backend_optimization_level=0",
    "CUDA_VISIBLE_DEVICES": "",
    "KPRUNE_JAX_PASS": "1",
    # Cache every compiled program, however small or quick to compile.
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
}


@pytest.fixture(scope="session")
def compilation_cache(tmp_path_factory):
    """One folder for this run, shared by the workers of `pytest -n 2`."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    folder = base / "jax-compilation-cache"
    folder.mkdir(exist_ok=True)
    return str(folder)


@pytest.mark.skipif(
    importlib.util.find_spec("jax") is None,
    reason="jax is not installed (it is in kprune's `test` extra)",
)
@pytest.mark.skipif(
    keras.backend.backend() == "jax", reason="this run is on JAX already"
)
@pytest.mark.parametrize("suite", SUITES)
def test_suite_on_jax(suite, compilation_cache):
    path = os.path.join("tests", suite)
    assert os.path.exists(os.path.join(ROOT, path)), path
    env = dict(os.environ, **ENV, JAX_COMPILATION_CACHE_DIR=compilation_cache)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (ROOT, os.environ.get("PYTHONPATH")) if p
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", path, "-o", "addopts=", "-m", "not slow"]
        + ["-n", "0", "-p", "no:cacheprovider", "-rfEs", "--tb=short"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    summary = proc.stdout[-6000:] + proc.stderr[-2000:]
    # The skips and their reasons: `pytest tests/test_on_jax.py -rP` shows them.
    print("\n".join(x for x in proc.stdout.splitlines() if x.startswith("SKIPPED")))
    assert proc.returncode == 0, f"{suite} on JAX (rc={proc.returncode}):\n{summary}"
    assert "keras backend: jax" in proc.stdout, summary
    assert " passed" in proc.stdout.splitlines()[-1], summary


def test_every_surgery_suite_is_listed():
    """A new `tests/test_surgery_*.py` joins `SUITES` or `NOT_ON_JAX`."""
    found = sorted(
        name
        for name in os.listdir(os.path.join(ROOT, "tests"))
        if name.startswith("test_surgery_") and name.endswith(".py")
    )
    unlisted = [n for n in found if n not in SUITES and n not in NOT_ON_JAX]
    assert not unlisted, (
        f"{unlisted}: add each to SUITES (run again on JAX by the default run) "
        "or to NOT_ON_JAX with the reason, in tests/test_on_jax.py"
    )
