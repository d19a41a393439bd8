"""Tiny data and model shared by the group-sparsity callback tests."""

import keras
import numpy as np


def to_np(x):
    return keras.ops.convert_to_numpy(x)


def data(n=64, d=10, k=3, seed=0):
    """Regression data whose targets read the first 3 of `d` inputs only."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype("float32")
    y = (x[:, :3] @ rng.normal(size=(3, k))).astype("float32")
    return x, y


def mlp(d=10, k=3):
    """Dense 24 (h1) -> 12 (h2) -> k (out): few hidden units are needed."""
    return keras.Sequential(
        [
            keras.Input((d,)),
            keras.layers.Dense(24, activation="relu", name="h1"),
            keras.layers.Dense(12, activation="relu", name="h2"),
            keras.layers.Dense(k, name="out"),
        ]
    )
