"""Pure mask constructors (keras.ops): which weights to keep.

A mask is a 0/1 tensor with the shape of the weight; 1 marks a kept weight.
Masks only ever shrink: a weight pruned earlier (`mask == 0`) stays pruned.
"""

import math

from keras import ops


def _mask_like(weights, mask):
    if mask is None:
        return ops.ones_like(weights)
    return ops.cast(mask, weights.dtype)


def _check_sparsity(sparsity):
    if not (0.0 <= float(sparsity) < 1.0):
        raise ValueError(f"`sparsity` must be in [0, 1). Received: sparsity={sparsity}")


def threshold_mask(weights, threshold, mask=None):
    """Keep the weights whose magnitude reaches the threshold.

    `m_new = m * (|w| >= t)`: connections with `|w| < t` are pruned.

    Args:
        weights: a weight tensor.
        threshold: scalar (float or scalar tensor).
        mask: optional current 0/1 mask (None: all kept).

    Returns:
        A 0/1 tensor of the weights' shape and dtype.

    Example:

    >>> w = ops.convert_to_tensor([0.1, -2.0, 0.5, 3.0])
    >>> ops.convert_to_numpy(threshold_mask(w, 0.5)).tolist()
    [0.0, 1.0, 1.0, 1.0]
    """
    weights = ops.convert_to_tensor(weights)
    m = _mask_like(weights, mask)
    keep = ops.cast(ops.greater_equal(ops.abs(weights), threshold), weights.dtype)
    return m * keep


def num_to_prune(size, sparsity):
    """How many of `size` weights a target `sparsity` removes: `round(s x n)`.

    Args:
        size: number of weights.
        sparsity: target fraction of zeros in [0, 1).

    Returns:
        A Python int.

    Example:

    >>> num_to_prune(1000, 0.9)
    900
    """
    _check_sparsity(sparsity)
    return int(math.floor(float(sparsity) * int(size) + 0.5))


def _top_k_mask(scores, k):
    """0/1 vector (flat) with ones at the `k` largest scores (exact count)."""
    n = int(scores.shape[0])
    if k <= 0:
        return ops.zeros((n,), dtype="float32")
    if k >= n:
        return ops.ones((n,), dtype="float32")
    _, idx = ops.top_k(scores, k, sorted=False)
    return ops.scatter(ops.expand_dims(idx, -1), ops.ones((k,), dtype="float32"), (n,))


def sparsity_mask(weights, sparsity, mask=None):
    """Keep the largest-magnitude weights so that `sparsity` of them are zero.

    Exactly `n - round(sparsity x n)` weights are kept (ties broken
    arbitrarily), never one that is already pruned: when the current mask is
    already sparser than the target, it is returned unchanged.

    Args:
        weights: a weight tensor with `n` entries.
        sparsity: target fraction of pruned weights in [0, 1).
        mask: optional current 0/1 mask.

    Returns:
        A 0/1 tensor of the weights' shape and dtype.

    Example:

    >>> w = ops.convert_to_tensor([0.1, -2.0, 0.5, 3.0])
    >>> ops.convert_to_numpy(sparsity_mask(w, 0.5)).tolist()
    [0.0, 1.0, 0.0, 1.0]
    """
    return global_sparsity_masks([weights], sparsity, [mask])[0]


def global_sparsity_masks(weights_list, sparsity, masks=None):
    """One magnitude ranking over several tensors: `sparsity` of all weights.

    The kept weights of every tensor are ranked together by `|w|` and the
    `round(sparsity x N)` smallest of the `N` weights in total are pruned
    (already-pruned weights count towards that number and stay pruned). Small
    layers can end up much denser or sparser than the target; that is the
    point of a global threshold.

    Args:
        weights_list: list of weight tensors.
        sparsity: target fraction of pruned weights in [0, 1).
        masks: optional list of current 0/1 masks (None entries: all kept).

    Returns:
        A list of 0/1 tensors, one per weight tensor.

    Example:

    >>> a = ops.convert_to_tensor([1.0, 5.0])
    >>> b = ops.convert_to_tensor([2.0, 0.5, 4.0, 3.0])
    >>> [ops.convert_to_numpy(m).tolist() for m in global_sparsity_masks([a, b], 0.5)]
    [[0.0, 1.0], [0.0, 0.0, 1.0, 1.0]]
    """
    if masks is None:
        masks = [None] * len(weights_list)
    if len(masks) != len(weights_list):
        raise ValueError(
            "`masks` must have one entry per weight tensor. "
            f"Received: len(masks)={len(masks)}, "
            f"len(weights_list)={len(weights_list)}"
        )
    tensors = [ops.convert_to_tensor(w) for w in weights_list]
    sizes = [int(math.prod(w.shape)) for w in tensors]
    flat_scores = []
    kept_now = 0
    for w, m in zip(tensors, masks):
        w = ops.cast(w, "float32")
        mk = _mask_like(w, m)
        kept_now += int(ops.convert_to_numpy(ops.sum(mk)))
        # Pruned weights score -1 so they rank below every kept weight.
        flat_scores.append(ops.reshape(mk * ops.abs(w) - (1.0 - mk), (-1,)))
    total = sum(sizes)
    k = min(total - num_to_prune(total, sparsity), kept_now)
    flat = _top_k_mask(ops.concatenate(flat_scores), k)
    out = []
    start = 0
    for w, size in zip(tensors, sizes):
        piece = ops.reshape(flat[start : start + size], w.shape)
        out.append(ops.cast(piece, w.dtype))
        start += size
    return out


def kept_fraction(mask):
    """Fraction of ones in a 0/1 mask: `sum(m) / size(m)`.

    Args:
        mask: a 0/1 tensor.

    Returns:
        A Python float.

    Example:

    >>> kept_fraction(ops.convert_to_tensor([1.0, 0.0, 0.0, 1.0]))
    0.5
    """
    mask = ops.convert_to_tensor(mask)
    size = int(math.prod(mask.shape))
    return float(ops.convert_to_numpy(ops.sum(mask))) / max(size, 1)
