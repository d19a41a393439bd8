"""Every Python block of docs/transformers.md runs as written, in order."""

import importlib.util
import os
import re

import pytest

if importlib.util.find_spec("keras_hub") is None:
    pytest.skip("keras_hub is not installed", allow_module_level=True)

PAGE = os.path.join(os.path.dirname(__file__), "..", "docs", "transformers.md")


def python_blocks(path):
    with open(path) as f:
        return re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)


def test_transformers_page_runs(capsys):
    blocks = python_blocks(PAGE)
    assert len(blocks) >= 5
    namespace = {}
    for block in blocks:
        exec(compile(block, PAGE, "exec"), namespace)
    out = capsys.readouterr().out
    assert "GPT2Backbone 3 32 2 128" in out
    assert "ViTImageClassifier (16, 10)" in out
