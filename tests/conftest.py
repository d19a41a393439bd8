"""Shared pytest fixtures and hooks."""

import os

import pytest

# Set by `tests/test_on_jax.py` in the JAX pass it runs.
JAX_PASS = "KPRUNE_JAX_PASS"


@pytest.fixture(autouse=True)
def _only_default_unless_zoo(request):
    """Tests marked `zoo` outside the default subset run only with `-m zoo`.

    `@pytest.mark.zoo(default=True)` marks the few models every run checks.
    """
    marker = request.node.get_closest_marker("zoo")
    if marker is None or marker.kwargs.get("default"):
        return
    if "zoo" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("whole zoo: run with -m zoo")


def pytest_runtest_setup(item):
    """Skip, with its reason, a `tensorflow_only` test on another backend.

    `@pytest.mark.tensorflow_only(reason="...")` marks a test that checks
    something only the TensorFlow backend has (`tf.distribute`, a variable
    read at every step rather than baked into a compiled step).
    `@pytest.mark.jax_by_hand(reason="...")` marks a test that the default
    run's JAX pass (`tests/test_on_jax.py`) skips for time, with the reason;
    run by hand with `KERAS_BACKEND=jax`, it runs.
    """
    marker = item.get_closest_marker("tensorflow_only")
    if marker is not None:
        import keras

        backend = keras.backend.backend()
        if backend != "tensorflow":
            reason = marker.kwargs.get("reason") or (marker.args or ["?"])[0]
            pytest.skip(f"TensorFlow only ({backend} backend): {reason}")

    marker = item.get_closest_marker("jax_by_hand")
    if marker is not None and os.environ.get(JAX_PASS) == "1":
        reason = marker.kwargs.get("reason") or (marker.args or ["?"])[0]
        pytest.skip(
            f"left out of the default run's JAX pass for time: {reason} "
            f"(run it: KERAS_BACKEND=jax python -m pytest {item.nodeid})"
        )


def pytest_report_header(config):
    """In the JAX pass, name the backend the run really uses."""
    if os.environ.get(JAX_PASS) == "1":
        import keras

        return f"keras backend: {keras.backend.backend()}"
    return None


def pytest_collection_modifyitems(config, items):
    """Start the JAX pass first: its tests are the longest of the run.

    Each runs a whole suite in its own process (`tests/test_on_jax.py`);
    started last, one could leave a worker of `pytest -n 2` alone at the end.
    """
    first = [item for item in items if item.path.name == "test_on_jax.py"]
    if first:
        rest = [item for item in items if item.path.name != "test_on_jax.py"]
        items[:] = first + rest
