"""The rebuilder, criteria, report and transformers on JAX and PyTorch.

One fresh process per backend (`KERAS_BACKEND` is fixed when Keras is first
imported; this process runs TensorFlow) runs `tests/backend_checks.py` and
prints one JSON line; both run at the same time. The criteria scores and
the report are compared with the same checks run here on TensorFlow, from
the same NumPy weights. The model trained and slimmed on JAX (PyTorch when
JAX is absent) is then exported to TFLite by the `kprune export` command,
and the file must reproduce the outputs computed on that backend.

PyTorch is optional: its tests are skipped, with the reason, when `torch`
is not installed (`pip install torch` for the CPU wheel).
"""

import concurrent.futures
import importlib.util
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

import kprune
from tests import backend_checks

INSTALLED = {
    "jax": importlib.util.find_spec("jax") is not None,
    "torch": importlib.util.find_spec("torch") is not None,
}
SKIP = {
    "jax": "jax is not installed (it is in kprune's `test` extra)",
    "torch": "torch is not installed (optional: `pip install torch` for a CPU wheel)",
}
ENV = {
    "jax": {
        "KERAS_BACKEND": "jax",
        "JAX_PLATFORMS": "cpu",
        # XLA's CPU compiler at its lowest optimization level: JAX compiles
        # every eagerly run op (the initializers of each rebuilt layer
        # included), and these checks are about results, not speed.
        "XLA_FLAGS": "--xla_backend_optimization_level=0",
    },
    "torch": {"KERAS_BACKEND": "torch"},
}
SCRIPT = (
    "import json, sys\n"
    "from tests import backend_checks\n"
    "print('RESULT ' + json.dumps(backend_checks.run(sys.argv[1])))\n"
)


def _run(backend, folder):
    script = SCRIPT.replace("sys.argv[1]", repr(str(folder)))
    return kprune.testing.run_script(script, env=ENV[backend], timeout=900)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """`{backend: (result, save folder)}` for the installed backends."""
    folders = {b: tmp_path_factory.mktemp(b) for b in ENV if INSTALLED[b]}
    with concurrent.futures.ThreadPoolExecutor(max(len(folders), 1)) as pool:
        futures = {b: pool.submit(_run, b, f) for b, f in folders.items()}
        return {b: (futures[b].result(), folders[b]) for b in folders}


@pytest.fixture(scope="module")
def reference():
    """The criteria and report checks on TensorFlow, in this process."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the reference runs on the TensorFlow backend")
    return {
        "criteria": backend_checks.criteria_checks(),
        "report": backend_checks.report_checks(),
        "prune": backend_checks.prune_checks(),
    }


def result_for(runs, backend):
    if backend not in runs:
        pytest.skip(SKIP[backend])
    return runs[backend][0]


BACKENDS = ["jax", "torch"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_runs_without_tensorflow(runs, backend):
    r = result_for(runs, backend)
    assert r["backend"] == backend
    assert not r["tf_after_import"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_slim_is_exact(runs, backend):
    slim = result_for(runs, backend)["slim"]
    for name in ("cnn_flatten", "residual", "gpt2"):
        assert slim[name]["diff"] <= 1e-5, name
    # Units were actually removed (the residual model's dead units are all
    # coupled to live ones through its merges, so it keeps its size).
    assert slim["cnn_flatten"]["params"] == [1666, 937]
    assert slim["gpt2"]["params"][1] < slim["gpt2"]["params"][0]
    assert slim["residual"]["params"] == [747, 747]


@pytest.mark.parametrize("backend", BACKENDS)
def test_criteria_match_tensorflow(runs, reference, backend):
    got = result_for(runs, backend)["criteria"]
    want = reference["criteria"]
    for key in ("car", "l1", "activation"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_report_matches_tensorflow(runs, reference, backend):
    assert result_for(runs, backend)["report"] == reference["report"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_prune_to_a_budget_matches_tensorflow(runs, reference, backend):
    got = result_for(runs, backend)["prune"]
    want = reference["prune"]
    for importance in ("l2", "activation", "taylor"):
        assert got[importance]["runs"], importance
        assert got[importance]["macs_ratio"] <= 0.5, importance
        # The same units leave: scores agree to float tolerance, and the
        # CNN's scores have no near-ties at the cut.
        assert got[importance]["units"] == want[importance]["units"], importance
        assert got[importance]["widths"] == want[importance]["widths"], importance


@pytest.mark.parametrize("backend", BACKENDS)
def test_proximal_step_then_slim(runs, backend):
    r = result_for(runs, backend)["callback"]
    zero = len(r["zero_groups"])
    assert 0 < zero < 16
    assert r["logged"][-1] == zero
    assert r["loss"][-1] < r["loss"][0]
    assert r["slim_width"] == 16 - zero
    assert r["slim_diff"] <= 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_transformers_prune(runs, backend):
    r = result_for(runs, backend)["transformers"]
    assert r["identity"] == 0.0
    assert r["small"] == ["GPT2Backbone", 8, 1, [4, 8, 8]]


def _kprune_command():
    found = shutil.which("kprune")
    if found:
        return [found]
    # The same entry point when the console script is not installed.
    return [
        sys.executable,
        "-c",
        "import sys; sys.argv[0] = 'kprune'; from kprune.cli import main; "
        "sys.exit(main())",
    ]


def test_export_route_from_another_backend(runs):
    """Trained and slimmed on JAX (or PyTorch), converted by `kprune export`."""
    backend = next((b for b in BACKENDS if b in runs), None)
    if backend is None:
        pytest.skip("neither jax nor torch is installed")
    folder = runs[backend][1]
    root = os.path.dirname(os.path.dirname(os.path.abspath(kprune.__file__)))
    env = dict(os.environ, **ENV[backend], CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p
    )
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    # KERAS_BACKEND still names the training backend: the command must
    # switch to TensorFlow by itself.
    proc = subprocess.run(
        [
            *_kprune_command(),
            "export",
            str(folder / "small.keras"),
            str(folder / "small.tflite"),
            "--sample-inputs",
            str(folder / "x.npy"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "verified against Keras" in proc.stdout
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(folder / "small.tflite"))
    runner = interpreter.get_signature_runner()
    x = np.load(folder / "x.npy")
    (name,) = runner.get_input_details()
    got = list(runner(**{name: x}).values())[0]
    np.testing.assert_allclose(got, np.load(folder / "y.npy"), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_to_tflite_names_the_route_on_other_backends(runs, backend):
    """Outside TensorFlow, `to_tflite` says to save and run `kprune export`."""
    message = result_for(runs, backend)["to_tflite"]
    assert "kprune export model.keras model.tflite" in message
    assert message.endswith(f"Received: keras.backend.backend()={backend!r}")
