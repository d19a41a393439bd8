"""Per-unit activation statistics and block influence as pure `keras.ops`.

The statistics Minitron (Muralidharan et al. 2024) and ShortGPT (Men et al.
2024) compute on a little calibration data, one batch at a time: the mean
activation size of every unit over a sequence's tokens, the output norm of
every attention head, and how much a block turns its input (1 - cosine).
"""

from keras import ops


def _token_weights(mask, shape, dtype):
    """`(batch, tokens)` weights from a padding mask, or all ones."""
    if mask is None:
        return ops.ones(shape, dtype)
    return ops.cast(ops.reshape(mask, shape), dtype)


def token_mean(values, mask=None):
    """Mean absolute activation of each unit over a sequence's tokens.

    For activations `a` of shape `(batch, tokens, *units)` and a padding
    mask `m` of shape `(batch, tokens)` (1 = real token):

        token_mean(a)[b, u] = Σ_t m[b, t] |a[b, t, u]| / max(1, Σ_t m[b, t]).

    Images work the same way: their patches are the tokens. A rank-2 input
    `(batch, units)` is one token per example.

    Args:
        values: activations, shape `(batch, tokens, *units)` or
            `(batch, units)`.
        mask: optional padding mask, shape `(batch, tokens)`.

    Returns:
        A float32 tensor of shape `(batch, *units)`.

    Example:

    >>> import numpy as np
    >>> a = np.array([[[1.0, -2.0], [3.0, 0.0], [9.0, 9.0]]], "float32")
    >>> m = np.array([[1, 1, 0]])
    >>> np.asarray(token_mean(a, m)).tolist()
    [[2.0, 1.0]]

    Reference:
        Muralidharan et al., "Compact Language Models via Pruning and
        Knowledge Distillation", arXiv 2407.14679 (2024).
    """
    values = ops.abs(ops.cast(values, "float32"))
    if len(values.shape) == 2:
        return values
    batch, tokens = ops.shape(values)[0], ops.shape(values)[1]
    weights = _token_weights(mask, (batch, tokens), "float32")
    expand = weights
    for _ in range(len(values.shape) - 2):
        expand = ops.expand_dims(expand, -1)
    total = ops.sum(values * expand, axis=1)
    count = ops.maximum(ops.sum(weights, axis=1), 1.0)
    for _ in range(len(values.shape) - 2):
        count = ops.expand_dims(count, -1)
    return total / count


def head_norms(values):
    """L2 norm of each attention head's output, per token.

    `values` holds the per-head attention output that enters the output
    projection, shape `(..., heads, head_dim)`; the result is
    `||values[..., h, :]||_2`, shape `(..., heads)`.

    Args:
        values: per-head outputs, shape `(..., heads, head_dim)`.

    Returns:
        A float32 tensor of shape `(..., heads)`.

    Example:

    >>> import numpy as np
    >>> np.asarray(head_norms(np.array([[3.0, 4.0], [0.0, 1.0]]))).tolist()
    [5.0, 1.0]
    """
    values = ops.cast(values, "float32")
    return ops.sqrt(ops.sum(values * values, axis=-1))


def block_influence_terms(h_in, h_out, mask=None):
    """Sum over real tokens of `1 - cos(h_in, h_out)`, and the token count.

    Block influence (ShortGPT) of a block with input `x` and output `y`:

        BI = E_tokens [1 - <x_t, y_t> / (||x_t|| ||y_t||)],

    0 for a block that only rescales its input, larger the more it turns
    it. This returns the numerator and denominator of that mean for one
    batch, so batches can be summed.

    Args:
        h_in: block inputs, shape `(batch, tokens, hidden)`.
        h_out: block outputs, same shape.
        mask: optional padding mask, shape `(batch, tokens)`.

    Returns:
        `(sum, count)`: two float32 scalars.

    Example:

    >>> import numpy as np
    >>> x = np.array([[[1.0, 0.0], [1.0, 0.0]]], "float32")
    >>> y = np.array([[[2.0, 0.0], [0.0, 1.0]]], "float32")
    >>> [float(v) for v in block_influence_terms(x, y)]
    [1.0, 2.0]

    Reference:
        Men et al., "ShortGPT: Layers in Large Language Models are More
        Redundant Than You Expect", arXiv 2403.03853 (2024).
    """
    x = ops.cast(h_in, "float32")
    y = ops.cast(h_out, "float32")
    if len(x.shape) == 2:
        x, y = x[:, None, :], y[:, None, :]
    dot = ops.sum(x * y, axis=-1)
    norms = ops.sqrt(ops.sum(x * x, axis=-1) * ops.sum(y * y, axis=-1))
    cosine = ops.where(norms > 0, dot / ops.maximum(norms, 1e-30), 1.0)
    weights = _token_weights(mask, ops.shape(cosine), "float32")
    return ops.sum((1.0 - cosine) * weights), ops.sum(weights)
