"""Pure magnitude thresholds (keras.ops): the `quality x std` rule of Han et al.

Each function takes tensors and returns a scalar tensor; none touches a model.
"""

from keras import ops


def _as_mask(weights, mask):
    if mask is None:
        return ops.ones_like(weights)
    return ops.cast(mask, weights.dtype)


def kept_std(weights, mask=None):
    """Standard deviation of the weights that are still kept.

    `std = sqrt(sum(m * (w - mean)^2) / sum(m))`, `mean = sum(m * w) / sum(m)`,
    over the entries where `mask == 1` (all entries when `mask` is None).
    This is NumPy's population `np.std(w[m == 1])`.

    Args:
        weights: a weight tensor of any shape.
        mask: optional 0/1 tensor of the same shape; 1 marks a kept weight.

    Returns:
        A scalar tensor (0 when nothing is kept).

    Example:

    >>> float(kept_std(ops.convert_to_tensor([2.0, -2.0, 2.0, -2.0])))
    2.0
    """
    weights = ops.convert_to_tensor(weights)
    m = _as_mask(weights, mask)
    count = ops.maximum(ops.sum(m), 1.0)
    mean = ops.sum(m * weights) / count
    var = ops.sum(m * ops.square(weights - mean)) / count
    return ops.sqrt(var)


def std_threshold(weights, quality, mask=None):
    """The magnitude threshold `t = quality x std(kept weights)`.

    Han et al. prune every connection with `|w| < t`. `quality` is chosen per
    layer: sensitive layers (the first convolution) get a smaller one. The
    standard deviation is taken over the weights that are still kept, so that
    iterating prune -> retrain with the same quality keeps removing a share of
    the survivors (on the first round, all weights are kept and this is the
    paper's one-shot rule).

    Args:
        weights: a weight tensor.
        quality: non-negative float.
        mask: optional 0/1 tensor, 1 = kept.

    Returns:
        A scalar tensor.

    Example:

    >>> w = ops.convert_to_tensor([2.0, -2.0, 2.0, -2.0])
    >>> float(std_threshold(w, 0.5))
    1.0

    Reference:
        Han, Pool, Tran, Dally. Learning both Weights and Connections for
        Efficient Neural Networks. NeurIPS 2015, arXiv 1506.02626.
    """
    return quality * kept_std(weights, mask)


def global_std_threshold(weights_list, quality, masks=None):
    """`quality x std` over the kept weights of several tensors at once.

    The weights of every tensor are pooled into one population:
    `t = quality x std(concat_l w_l[m_l == 1])`.

    Args:
        weights_list: list of weight tensors.
        quality: non-negative float.
        masks: optional list of 0/1 tensors (None entries mean all kept).

    Returns:
        A scalar tensor.

    Example:

    >>> a = ops.convert_to_tensor([2.0, -2.0])
    >>> b = ops.convert_to_tensor([[2.0, -2.0]])
    >>> float(global_std_threshold([a, b], 1.0))
    2.0
    """
    if masks is None:
        masks = [None] * len(weights_list)
    flat_w = []
    flat_m = []
    for w, m in zip(weights_list, masks):
        w = ops.convert_to_tensor(w)
        flat_w.append(ops.reshape(w, (-1,)))
        flat_m.append(ops.reshape(_as_mask(w, m), (-1,)))
    return std_threshold(ops.concatenate(flat_w), quality, ops.concatenate(flat_m))
