"""Bar chart of per-layer widths before/after pruning (needs matplotlib)."""

import os

import numpy as np

from kprune._atomic import atomic_path
from kprune.report.compare import compare


def plot_widths(before, after, path, title=None):
    """Write a PNG bar chart of each layer's width before and after.

    One pair of bars per layer that defines a width (Dense units, Conv
    filters, DepthwiseConv channels, Embedding dims) in either model.
    matplotlib is optional: `pip install kprune[plots]`.

    Args:
        before: the original model, or its `kprune.report.summary`.
        after: the pruned model, or its summary.
        path: where to write the PNG.
        title: optional figure title.

    Returns:
        `path`, as a string.

    Example:

    >>> import keras
    >>> wide = keras.Sequential([keras.Input((8,)), keras.layers.Dense(6)])
    >>> thin = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    >>> plot_widths(wide, thin, "/tmp/kprune_widths.png")
    '/tmp/kprune_widths.png'
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(
            "kprune.report.plot_widths needs matplotlib. Install it with "
            "`pip install kprune[plots]` (or `pip install matplotlib`)."
        ) from None
    path = os.fspath(path)
    comparison = compare(before, after)
    layers = [
        layer
        for layer in comparison["layers"]
        if layer["width"]["before"] is not None or layer["width"]["after"] is not None
    ]
    if not layers:
        raise ValueError(
            "Neither model has a layer that defines a width (Dense, Conv, "
            "DepthwiseConv, Embedding ...): nothing to plot. "
            f"Received: before={comparison['before']}, after={comparison['after']}"
        )
    names = [layer["name"] for layer in layers]
    widths_before = [layer["width"]["before"] or 0 for layer in layers]
    widths_after = [layer["width"]["after"] or 0 for layer in layers]
    x = np.arange(len(names))
    fig = Figure(figsize=(max(6.0, 0.45 * len(names) + 2.0), 4.5), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(x - 0.2, widths_before, width=0.4, label=f"before ({comparison['before']})")
    ax.bar(x + 0.2, widths_after, width=0.4, label=f"after ({comparison['after']})")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("width (units / filters / channels)")
    if title is None:
        title = "Layer widths before / after"
        if comparison["before"] != comparison["after"]:
            title += f": {comparison['before']} / {comparison['after']}"
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
