"""Shared pytest fixtures."""

import pytest


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
