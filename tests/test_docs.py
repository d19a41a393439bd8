"""Every Python block of README.md and docs/*.md runs as written.

The blocks of one page run in order, in one namespace, in a temporary
folder (so the files they write land there). Data comes from what kprune
ships: `keras.datasets.mnist.load_data` raises here (tests never download),
so `kprune.data.load_mnist()` returns the 10k/2k subset in
`kprune/data/mnist_subset.npz`.

Test-only override, the only one: a page may shorten training with an HTML
comment (invisible on the rendered page) before a block,

    <!-- docs-test: max_epochs=1 max_steps=20 -->

and from that block on, every `fit` runs at most `max_epochs` epochs (and
`max_steps` steps per epoch). Everything else runs exactly as written.
After a page has run, `CHECKS` asserts that it did what its text says.
"""

import contextlib
import glob
import os
import re

import keras
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Pages with a test of their own (they run their blocks and check the output).
ELSEWHERE = {"docs/transformers.md": "tests/test_docs_transformers.py"}
PAGES = ["README.md"] + sorted(
    os.path.relpath(p, ROOT)
    for p in glob.glob(os.path.join(ROOT, "docs", "*.md"))
    if os.path.relpath(p, ROOT) not in ELSEWHERE
)
_BLOCK = re.compile(
    r"(?:<!--\s*docs-test:(?P<marker>[^>]*)-->\s*\n)?```python\n(?P<code>.*?)```",
    re.S,
)


def python_blocks(text):
    """`[(code, {override: value}), ...]` of a Markdown page, in order."""
    blocks = []
    for match in _BLOCK.finditer(text):
        marker = match.group("marker") or ""
        overrides = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", marker)}
        blocks.append((match.group("code"), overrides))
    return blocks


@contextlib.contextmanager
def capped_fit(limits):
    """Cap `epochs` / `steps_per_epoch` of every `fit` to `limits`."""
    fit = keras.Model.fit

    def capped(self, *args, **kwargs):
        if "max_epochs" in limits:
            kwargs["epochs"] = min(kwargs.get("epochs", 1), limits["max_epochs"])
        if "max_steps" in limits:
            steps = kwargs.get("steps_per_epoch") or limits["max_steps"]
            kwargs["steps_per_epoch"] = min(steps, limits["max_steps"])
        return fit(self, *args, **kwargs)

    keras.Model.fit = capped
    try:
        yield
    finally:
        keras.Model.fit = fit


def _offline(*args, **kwargs):
    raise OSError("no downloads in the docs test")


def run_page(page, tmp_path, monkeypatch):
    with open(os.path.join(ROOT, page)) as f:
        blocks = python_blocks(f.read())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(keras.datasets.mnist, "load_data", _offline)
    namespace = {"__name__": "__docs__"}
    limits = {}
    for index, (code, overrides) in enumerate(blocks):
        limits.update(overrides)
        with capped_fit(limits):
            try:
                exec(compile(code, f"{page} block {index + 1}", "exec"), namespace)
            except Exception as error:
                raise AssertionError(
                    f"{page}, Python block {index + 1} failed: "
                    f"{type(error).__name__}: {error}"
                ) from error
    return namespace


def _check_readme(ns):
    assert "subset" in ns["about"]
    assert ns["small"].count_params() <= ns["model"].count_params()
    assert os.path.isfile("model.tflite")


def _check_report(ns):
    assert ns["slim"].get_layer("conv1").filters == 5
    assert ns["slim"].get_layer("fc1").units == 20
    assert os.path.isfile("lenet5_report.json") and os.path.isfile("lenet5_widths.png")


def _check_surgery(ns):
    assert ns["small"].get_layer("conv2").filters == 20
    x = ns["x"]
    np.testing.assert_allclose(ns["model"](x), ns["small"](x), atol=1e-5)
    assert os.path.isfile("plan.json")
    assert ns["rnn_pruned"].get_layer("lstm").units == 6
    assert ns["rnn_slim"].get_layer("lstm").units == 7
    x = ns["seq_x"]
    np.testing.assert_allclose(ns["rnn_model"](x), ns["rnn_slim"](x), atol=1e-5)


def _check_export(ns):
    sizes = ns["kprune"].export.sizes
    assert sizes("lenet_sparse.tflite")["bytes"] < sizes("lenet.tflite")["bytes"] / 2


def _check_group_sparsity(ns):
    assert ns["small"].count_params() <= ns["sparse"].count_params()
    assert os.path.isfile("small.tflite")


def _check_blocks(ns):
    assert len(ns["info"]) == 2
    assert len(ns["small"].layers) < len(ns["model"].layers)


def _check_car(ns):
    assert len(ns["scores"]) == 20
    assert ns["plan"].units and os.path.isfile("conv1.png")


def _check_magnitude(ns):
    kernel = keras.ops.convert_to_numpy(ns["small"].get_layer("fc1").kernel)
    assert np.mean(kernel == 0) > 0.4 and os.path.isfile("model.tflite")


def _check_hypersparse(ns):
    assert os.path.isfile("model.tflite")


def _check_prune(ns):
    summary = ns["kprune"].report.summary
    dense = summary(ns["model"])
    assert summary(ns["same"])["macs"] <= 0.25 * dense["macs"]
    assert ns["target"].reached  # SizeTarget: slim meets macs=0.25
    assert summary(ns["small"])["macs"] <= 0.25 * dense["macs"]
    assert ns["fast"].count_params() < ns["model"].count_params()
    blocks = ns["shallow_plan"].blocks  # depth="auto", int8: whole blocks go
    assert blocks and all("_add" in name for name in blocks)
    images = ns["images"]
    np.testing.assert_allclose(
        ns["replayed"](images), ns["shallow"](images), rtol=1e-4, atol=1e-5
    )


def _check_zoo(ns):
    assert len(ns["zeroed"]["fc1"]) == 3


def _check_backends(ns):
    assert os.path.isfile("small.keras") and os.path.isfile("x.npy")
    assert ns["small"].get_layer("hidden").units < 32
    x = ns["x"]
    np.testing.assert_allclose(ns["model"](x), ns["small"](x), atol=1e-5)
    # The MultiWorkerMirroredStrategy recipe, run here as its one worker.
    assert ns["target"].reached and os.path.isfile("slim_net.keras")
    assert ns["slim_net"].get_layer("hidden").units <= 16


def _no_python(ns):
    assert set(ns) == {"__name__"}  # a page of shell commands only


CHECKS = {
    "README.md": _check_readme,
    "docs/backends.md": _check_backends,
    "docs/blocks.md": _check_blocks,
    "docs/car.md": _check_car,
    "docs/cli.md": _no_python,
    "docs/export.md": _check_export,
    "docs/group_sparsity.md": _check_group_sparsity,
    "docs/hypersparse.md": _check_hypersparse,
    "docs/magnitude_pruning.md": _check_magnitude,
    "docs/prune.md": _check_prune,
    "docs/report.md": _check_report,
    "docs/surgery.md": _check_surgery,
    "docs/zoo.md": _check_zoo,
}


def test_every_page_is_tested():
    assert sorted(CHECKS) == sorted(PAGES)


@pytest.mark.parametrize("page", PAGES)
def test_page_runs_as_written(page, tmp_path, monkeypatch):
    keras.utils.set_random_seed(0)
    namespace = run_page(page, tmp_path, monkeypatch)
    CHECKS[page](namespace)


def test_markers_are_parsed():
    text = (
        "<!-- docs-test: max_epochs=2 max_steps=5 -->\n```python\na = 1\n```\n"
        "text\n```python\nb = 2\n```\n```bash\nls\n```\n"
    )
    assert python_blocks(text) == [
        ("a = 1\n", {"max_epochs": 2, "max_steps": 5}),
        ("b = 2\n", {}),
    ]
