"""Small data sets shipped with kprune, so the demo and examples run offline.

`mnist_subset.npz` holds 10,000 MNIST training images and 2,000 MNIST test
images (drawn at random, seed 0, from the standard 60k/10k split; uint8
28x28 images, uint8 labels; about 2 MB). It is a stand-in for the full data
set when `keras.datasets.mnist.load_data()` cannot download it.
"""

import os

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
MNIST_SUBSET_PATH = os.path.join(_HERE, "mnist_subset.npz")

SOURCES = ("auto", "keras", "subset")


def load_mnist_subset():
    """The MNIST subset shipped inside the package.

    Returns:
        `((x_train, y_train), (x_test, y_test))`: uint8 arrays of shapes
        `(10000, 28, 28)`, `(10000,)`, `(2000, 28, 28)`, `(2000,)`.

    Example:

    >>> (x, y), (x_test, y_test) = load_mnist_subset()
    >>> x.shape, x_test.shape
    ((10000, 28, 28), (2000, 28, 28))
    """
    with np.load(MNIST_SUBSET_PATH) as data:
        return (data["x_train"], data["y_train"]), (data["x_test"], data["y_test"])


def load_mnist(source="auto"):
    """MNIST: the full set through Keras when available, else the shipped subset.

    With `source="auto"`, `keras.datasets.mnist.load_data()` is tried first
    (it reads Keras' cache, `~/.keras/datasets/mnist.npz`, or downloads the
    file); if that fails (no internet and no cache), the 10k/2k subset
    shipped in `kprune/data/mnist_subset.npz` is used.

    Args:
        source: `"auto"`, `"keras"` (full MNIST only; errors propagate) or
            `"subset"` (the shipped subset only, no network access).

    Returns:
        `((x_train, y_train), (x_test, y_test), description)`: uint8 images
        `(n, 28, 28)`, uint8 labels, and a sentence saying which data it is.

    Example:

    >>> (x, y), (x_test, y_test), text = load_mnist("subset")
    >>> text.startswith("MNIST subset shipped with kprune")
    True
    """
    if source not in SOURCES:
        raise ValueError(
            f"`source` must be one of {SOURCES}. Received: source={source!r}"
        )
    error = None
    if source in ("auto", "keras"):
        import keras

        try:
            (x, y), (x_test, y_test) = keras.datasets.mnist.load_data()
        except Exception as e:  # no internet and no cached file, or a bad cache
            if source == "keras":
                raise
            error = " ".join(str(e).split())[:160]
        else:
            return (
                (x, y),
                (x_test, y_test),
                f"full MNIST from keras.datasets.mnist ({len(x):,} train / "
                f"{len(x_test):,} test images)",
            )
    (x, y), (x_test, y_test) = load_mnist_subset()
    text = (
        f"MNIST subset shipped with kprune ({len(x):,} train / {len(x_test):,} "
        f"test images, {MNIST_SUBSET_PATH})"
    )
    if error is not None:
        text += f"; keras.datasets.mnist.load_data() failed: {error}"
    return (x, y), (x_test, y_test), text
