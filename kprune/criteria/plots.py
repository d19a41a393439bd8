"""Pictures of what was kept: filter grids and per-filter score bars (PNG).

matplotlib is optional (`pip install kprune[plots]`); it is imported only
when a picture is drawn.
"""

import os

import keras
import numpy as np

_KEPT = "#1a9850"
_REMOVED = "#d73027"


def _figure_class(function):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(
            f"kprune.criteria.{function} needs matplotlib. Install it with "
            "`pip install kprune[plots]` (or `pip install matplotlib`)."
        ) from None
    return Figure


def _removed_mask(num_units, removed, kept, name):
    if removed is not None and kept is not None:
        raise ValueError(
            "Pass `removed` or `kept`, not both. "
            f"Received: removed={removed!r}, kept={kept!r}"
        )
    for arg, value in (("removed", removed), ("kept", kept)):
        if isinstance(value, dict):
            raise ValueError(
                f"`{arg}` takes unit indices of layer '{name}', not a plan "
                f"(use plan.units[{name!r}]). Received: {arg}={value!r}"
            )
    mask = np.zeros(num_units, dtype=bool)
    if removed is not None:
        mask[np.asarray(removed, dtype=np.int64).reshape(-1)] = True
    elif kept is not None:
        mask[:] = True
        mask[np.asarray(kept, dtype=np.int64).reshape(-1)] = False
    return mask


def filter_images(kernel):
    """One image per filter from a kernel, scaled to [0, 1].

    Conv kernels `(h, w, in, out)`: with 3 input channels each filter is an
    RGB image; otherwise the mean over input channels (grey). Dense kernels
    `(in, out)` whose input size is a square (e.g. 784 = 28 x 28) become
    square grey images. Each image is scaled by its own largest absolute
    value: 0.5 is a zero weight.

    Args:
        kernel: a NumPy kernel.

    Returns:
        `(out, h, w)` or `(out, h, w, 3)` array in [0, 1].

    Example:

    >>> filter_images(np.zeros((5, 5, 1, 20))).shape
    (20, 5, 5)
    """
    kernel = np.asarray(kernel, dtype=np.float64)
    if kernel.ndim == 2:
        side = int(round(np.sqrt(kernel.shape[0])))
        if side * side != kernel.shape[0]:
            raise ValueError(
                "A Dense kernel is drawn as square images, which needs a square "
                f"input size. Received: kernel shape={kernel.shape}"
            )
        images = kernel.T.reshape(-1, side, side)
    elif kernel.ndim == 4:
        images = np.moveaxis(kernel, -1, 0)  # (out, h, w, in)
        if images.shape[-1] != 3:
            images = images.mean(axis=-1)
    else:
        raise ValueError(
            "Filters are drawn for Conv2D kernels (h, w, in, out) and Dense "
            f"kernels (in, out). Received: kernel shape={kernel.shape}"
        )
    axes = tuple(range(1, images.ndim))
    scale = np.abs(images).max(axis=axes, keepdims=True)
    scale[scale == 0] = 1.0
    return 0.5 + 0.5 * images / scale


def plot_filters(
    model,
    layer_name,
    path,
    removed=None,
    kept=None,
    scores=None,
    columns=None,
    title=None,
):
    """PNG grid of a layer's filters, kept ones framed green, removed red.

    Meant for first layers (`Conv2D` on images: RGB or grey filters; `Dense`
    on flattened square images), where a filter is a picture of what it
    detects; removed filters are also crossed out.

    Args:
        model: a `keras.Model`.
        layer_name: a `Conv2D` or `Dense` layer.
        path: where to write the PNG.
        removed: indices of removed units (or give `kept`).
        kept: indices of kept units.
        scores: optional score per unit, printed under each filter.
        columns: filters per row (default: about square).
        title: optional figure title.

    Returns:
        `path`, as a string.

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((28, 28, 1)),
    ...     keras.layers.Conv2D(8, 5, name="conv1")])
    >>> plot_filters(model, "conv1", "/tmp/kprune_filters.png", removed=[1, 5])
    '/tmp/kprune_filters.png'
    """
    figure_class = _figure_class("plot_filters")
    path = os.fspath(path)
    try:
        layer = model.get_layer(layer_name)
    except ValueError:
        raise ValueError(
            f"No layer '{layer_name}' in model '{model.name}'. "
            f"Received: layer_name={layer_name!r}"
        ) from None
    if not hasattr(layer, "kernel"):
        raise ValueError(
            f"Layer '{layer_name}' ({layer.__class__.__name__}) has no kernel to "
            f"draw. Received: layer_name={layer_name!r}"
        )
    images = filter_images(keras.ops.convert_to_numpy(layer.kernel))
    count = len(images)
    gone = _removed_mask(count, removed, kept, layer_name)
    columns = columns or int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / columns))
    fig = figure_class(figsize=(1.1 * columns, 1.25 * rows + 0.6), dpi=100)
    for index in range(count):
        ax = fig.add_subplot(rows, columns, index + 1)
        image = images[index]
        ax.imshow(image, cmap=None if image.ndim == 3 else "gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        color = _REMOVED if gone[index] else _KEPT
        for spine in ax.spines.values():
            spine.set_edgecolor(color)
            spine.set_linewidth(3)
        if gone[index]:
            h, w = image.shape[:2]
            ax.plot([-0.5, w - 0.5], [-0.5, h - 0.5], color=_REMOVED, linewidth=1.5)
            ax.plot([-0.5, w - 0.5], [h - 0.5, -0.5], color=_REMOVED, linewidth=1.5)
        label = f"{index}"
        if scores is not None:
            label += f": {float(scores[index]):.3g}"
        ax.set_title(label, fontsize=7, color=color)
    kept_count = int(count - gone.sum())
    fig.suptitle(
        title
        or f"{layer_name}: {kept_count} kept (green), {int(gone.sum())} removed (red)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_scores(
    scores, path, removed=None, title=None, ylabel="CAR (accuracy drop)", sort=False
):
    """PNG bar chart of one score per unit; removed units in red.

    Args:
        scores: one score per unit (`inf` / `nan` are drawn as 0, hatched).
        path: where to write the PNG.
        removed: optional indices of removed units.
        title: optional figure title.
        ylabel: the axis label.
        sort: order bars by score (unit indices under the bars).

    Returns:
        `path`, as a string.

    Example:

    >>> plot_scores(np.array([0.01, 0.0, 0.03]), "/tmp/kprune_car.png", removed=[1])
    '/tmp/kprune_car.png'
    """
    figure_class = _figure_class("plot_scores")
    path = os.fspath(path)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not len(scores):
        raise ValueError("There are no scores to plot. Received: scores=[]")
    gone = _removed_mask(len(scores), removed, None, "scores")
    order = (
        np.argsort(np.nan_to_num(scores, nan=np.inf), kind="stable")
        if sort
        else np.arange(len(scores))
    )
    finite = np.isfinite(scores)
    heights = np.where(finite, scores, 0.0)[order]
    colors = [_REMOVED if gone[i] else _KEPT for i in order]
    fig = figure_class(figsize=(max(6.0, 0.18 * len(scores) + 2.0), 3.6), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    bars = ax.bar(np.arange(len(scores)), heights, color=colors)
    for bar, index in zip(bars, order):
        if not finite[index]:
            bar.set_hatch("//")
    ax.set_xticks(np.arange(len(scores)))
    ax.set_xticklabels([str(i) for i in order], fontsize=6, rotation=90)
    ax.set_xlabel("unit" + (" (sorted by score)" if sort else ""))
    ax.set_ylabel(ylabel)
    ax.axhline(0.0, color="black", linewidth=0.6)
    if gone.any():
        from matplotlib.patches import Patch

        ax.legend(
            handles=[
                Patch(color=_KEPT, label="kept"),
                Patch(color=_REMOVED, label="removed"),
            ],
            fontsize=8,
        )
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    return path
