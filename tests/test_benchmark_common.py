"""Tests of the benchmarks' shared data helpers (`benchmarks/common.py`)."""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import common  # noqa: E402


def one_dot_images(n, size=28):
    """Flat images: image i has one pixel, of value i + 1, off the border."""
    rng = np.random.default_rng(0)
    images = np.zeros((n, size * size), "float32")
    rows = rng.integers(1, size - 1, n)
    cols = rng.integers(1, size - 1, n)
    spots = rows * size + cols
    images[np.arange(n), spots] = np.arange(n) + 1
    return images, spots


def test_shift_images_moves_down_and_right_with_zero_fill():
    images = np.arange(1, 10, dtype="float32").reshape(1, 3, 3)
    moved = common.shift_images(images, 1, -1)
    expected = np.array([[0, 0, 0], [2, 3, 0], [5, 6, 0]], "float32")
    np.testing.assert_array_equal(moved[0], expected)
    np.testing.assert_array_equal(common.shift_images(images, 0, 0), images)


def test_shifted_images_keep_labels_with_their_images():
    labels = np.arange(500) % 10
    x, spots = one_dot_images(500)
    data = common.ShiftedImages(x, labels, batch_size=64, max_shift=1, seed=3)
    assert len(data) == 8
    orders = []
    for _ in range(2):
        ids, moved = [], 0
        for i in range(len(data)):
            xb, yb = data[i]
            assert xb.shape[1:] == (784,)
            # The dot stays inside the image, so its value names the image.
            index = xb.max(axis=1).astype("int64") - 1
            np.testing.assert_array_equal(labels[index], yb)
            spot = np.argmax(xb, axis=1)
            step = np.abs(spot - spots[index])
            assert np.all(np.isin(step, [0, 1, 27, 28, 29]))
            moved += int(np.count_nonzero(step))
            ids.append(index)
        # Every image once per epoch, in a new order, 8 in 9 moved.
        order = np.concatenate(ids)
        np.testing.assert_array_equal(np.sort(order), np.arange(500))
        assert not np.array_equal(order, np.arange(500))
        assert 380 < moved < 500
        orders.append(order)
        data.on_epoch_end()
    assert not np.array_equal(*orders)


def test_training_data_is_plain_without_a_shift():
    x, y = np.zeros((10, 784), "float32"), np.zeros(10, "int64")
    plain = common.training_data(x, y, batch_size=5)
    assert plain["x"] is x and plain["batch_size"] == 5
    shifted = common.training_data(x, y, batch_size=5, max_shift=1)
    assert isinstance(shifted["x"], common.ShiftedImages)
