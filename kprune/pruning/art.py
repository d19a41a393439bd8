"""Adaptive Regularized Training (ART) bookkeeping: pure Python, no Keras state.

`kprune.callbacks.AdaptiveRegularization` drives a model through ART; the
decisions it makes live here so they can be tested on scripted accuracy
sequences:

- `art_strength`: the growing strength `lambda_t = lambda_0 * eta^t`;
- `ARTWindow`: the moving window over ART epochs, the best window's middle
  epoch, and the stop rule.
"""

import math


def art_strength(initial, growth, art_epoch):
    """`lambda_t = lambda_0 * eta^t`: ART's strength in its `t`-th epoch (0-based).

    Args:
        initial: `lambda_0 >= 0`.
        growth: `eta >= 1` (1.05 in the paper).
        art_epoch: `t >= 0`, epochs since ART began.

    Returns:
        A Python float.

    Example:

    >>> round(art_strength(1e-3, 2.0, 3), 6)
    0.008
    """
    return float(initial) * math.pow(float(growth), int(art_epoch))


class ARTWindow:
    """The moving window of ART: which epoch to keep, and when to stop.

    After each ART epoch `e`, a copy of the model globally magnitude-pruned
    to the target sparsity is evaluated on training data (accuracy `a_e`).
    The window holds the last `size = 2m + 1` epochs; its mean
    `A_e = mean(a_{e-2m..e})` smooths the noise. Whenever `A_e` beats the
    best mean so far, the window's middle epoch becomes the best one (its
    weights and mask are kept; while the window is still filling, the middle
    is `min(len - 1, m)`). ART stops as soon as the best mean exceeds the
    dense model's accuracy: the pruned network now does as well as the dense
    one, and regularizing further would only cost accuracy.

    Args:
        size: window length, an odd int >= 1 (3 in the paper's code).

    Example:

    >>> w = ARTWindow(size=3)
    >>> [w.update(e, a, dense_accuracy=0.9) for e, a in
    ...  enumerate([0.5, 0.7, 0.8, 0.95, 0.97])]
    [False, False, False, False, True]
    >>> w.best_epoch, round(w.best_mean, 4)
    (3, 0.9067)

    Reference:
        Glandorf, Kaiser, Rosenhahn. HyperSparse Neural Networks, ICCV 2023
        workshops, arXiv 2308.07163 (`utils/art.py` of the official code).
    """

    def __init__(self, size=3):
        if int(size) != size or size < 1 or size % 2 == 0:
            raise ValueError(f"`size` must be an odd int >= 1. Received: size={size!r}")
        self.size = int(size)
        self.entries = []  # (epoch, accuracy, snapshot)
        self.best_epoch = None
        self.best_mean = -math.inf
        self.best_accuracy = None
        self.best_snapshot = None
        self.terminated = False
        self.last_mean = None

    def update(self, epoch, accuracy, dense_accuracy, snapshot=None):
        """Add one ART epoch; return whether ART should stop.

        Args:
            epoch: the epoch's index (any increasing int).
            accuracy: accuracy of the pruned copy after that epoch.
            dense_accuracy: the dense model's accuracy after that epoch.
            snapshot: anything to keep for the epoch (weights); returned as
                `best_snapshot` when its window is the best.

        Returns:
            True once the best window's mean exceeds `dense_accuracy`.
        """
        self.entries.append((int(epoch), float(accuracy), snapshot))
        if len(self.entries) > self.size:
            self.entries.pop(0)
        mean = sum(a for _, a, _ in self.entries) / len(self.entries)
        self.last_mean = mean
        if mean > self.best_mean:
            middle = min(len(self.entries) - 1, self.size // 2)
            self.best_epoch, self.best_accuracy, self.best_snapshot = self.entries[
                middle
            ]
            self.best_mean = mean
        if self.best_mean > float(dense_accuracy):
            self.terminated = True
        return self.terminated

    def get_state(self):
        """The window as plain data (snapshots excluded), for checkpoints."""
        return {
            "size": self.size,
            "entries": [[e, a] for e, a, _ in self.entries],
            "best_epoch": self.best_epoch,
            "best_mean": None if self.best_epoch is None else self.best_mean,
            "best_accuracy": self.best_accuracy,
            "terminated": self.terminated,
            "last_mean": self.last_mean,
        }

    def set_state(self, state, snapshots=None, best_snapshot=None):
        """Restore from `get_state()` plus the snapshots kept separately."""
        self.size = int(state["size"])
        snapshots = snapshots or [None] * len(state["entries"])
        self.entries = [
            (int(e), float(a), s) for (e, a), s in zip(state["entries"], snapshots)
        ]
        self.best_epoch = state["best_epoch"]
        self.best_mean = -math.inf if state["best_mean"] is None else state["best_mean"]
        self.best_accuracy = state["best_accuracy"]
        self.best_snapshot = best_snapshot
        self.terminated = bool(state["terminated"])
        self.last_mean = state["last_mean"]
