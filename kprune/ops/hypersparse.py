"""HyperSparse penalty math (Glandorf et al. 2023), as pure `keras.ops` functions.

Over all prunable kernels `w` together (flattened, `n` entries) and a target
sparsity `kappa`:

- threshold `t = |w|_(floor(kappa n))`: the magnitude at the pruning
  threshold (0-based order statistic of the sorted magnitudes);
- scale `s = 0.6585 / t`. `0.6585 = atanh(1 / sqrt(3))` is where
  `sech^2`'s slope is steepest, so the penalty's gradient falls off fastest
  right at the threshold;
- `HS(w) = sum_i |w_i| * sum_j tanh(s |w_j|) / sg(sum_j tanh(s |w_j|))
  - sum_i |w_i|` (`sg` = stop-gradient). Its value is always 0; its gradient
  is `dHS/dw_i = sign(w_i) * (||w||_1 / sum_j tanh(s |w_j|)) * s *
  sech^2(s |w_i|)`: strong below the threshold, fading above it.

Because only `s` and the factor `c = ||w||_1 / sum_j tanh(s |w_j|)` are
global, the gradient splits into per-kernel terms
`c * sum_{i in layer} tanh(s |w_i|)` with `s` and `c` held fixed: that is
what `kprune.regularizers.HyperSparse` adds to the loss. Summed over layers,
those terms equal `||w||_1` at the moment `s` and `c` are computed, so the
loss shows the L1 size of the kernels (an L1 penalty with the same strength
shows the same number; the gradients differ).
"""

import math

import keras
from keras import ops

# atanh(1 / sqrt(3)): the inflection point of sech^2.
HYPERSPARSE_SHAPE = 0.6585


def _flat_abs(weights_list):
    return ops.concatenate(
        [ops.reshape(ops.abs(ops.cast(w, "float32")), (-1,)) for w in weights_list]
    )


def magnitude_quantile(weights_list, sparsity, sample_size=None, seed=None):
    """The magnitude at the pruning threshold: `|w|_(floor(kappa n))`.

    The `floor(kappa n)`-th smallest magnitude (0-based) over all tensors
    together, found with `top_k` over the smaller side (no full sort). With
    `sample_size`, the same order statistic of a uniform sample of that many
    magnitudes (with replacement) estimates it at a fixed cost.

    Args:
        weights_list: list of weight tensors.
        sparsity: `kappa` in [0, 1).
        sample_size: optional int; estimate from a random sample.
        seed: optional seed (or `keras.random.SeedGenerator`) for sampling.

    Returns:
        A scalar float32 tensor.

    Example:

    >>> from keras import ops
    >>> w = [ops.convert_to_tensor([0.1, -0.4]), ops.convert_to_tensor([0.3, 0.2])]
    >>> round(float(magnitude_quantile(w, 0.5)), 4)  # sorted: .1 .2 .3 .4
    0.3
    """
    sparsity = float(sparsity)
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"`sparsity` must be in [0, 1). Received: sparsity={sparsity}")
    flat = _flat_abs(weights_list)
    if sample_size is not None:
        n = int(flat.shape[0])
        idx = keras.random.randint((int(sample_size),), 0, n, seed=seed)
        flat = ops.take(flat, idx)
    n = int(flat.shape[0])
    idx = min(int(math.floor(sparsity * n)), n - 1)
    if idx >= n // 2:
        # The idx-th smallest is the (n - idx)-th largest.
        values, _ = ops.top_k(flat, n - idx, sorted=False)
        return ops.min(values)
    values, _ = ops.top_k(-flat, idx + 1, sorted=False)
    return -ops.min(values)


def hypersparse_scale(threshold, eps=1e-12):
    """`s = 0.6585 / t`: the tanh scale that puts the gradient's knee at `t`.

    Args:
        threshold: the magnitude at the pruning threshold (scalar).
        eps: floor for `t` (a threshold of 0, e.g. from already pruned
            weights, would give an infinite scale).

    Returns:
        A scalar tensor.

    Example:

    >>> round(float(hypersparse_scale(0.6585)), 4)
    1.0
    """
    return HYPERSPARSE_SHAPE / ops.maximum(ops.cast(threshold, "float32"), eps)


def hypersparse_factor(weights_list, scale, eps=1e-12):
    """`c = ||w||_1 / sum_j tanh(s |w_j|)` over all tensors together.

    Args:
        weights_list: list of weight tensors.
        scale: `s`.
        eps: floor for the denominator.

    Returns:
        A scalar float32 tensor.

    Example:

    >>> from keras import ops
    >>> w = [ops.convert_to_tensor([1.0, -1.0])]
    >>> round(float(hypersparse_factor(w, 100.0)), 4)  # 2 / (2 tanh 100)
    1.0
    """
    flat = _flat_abs(weights_list)
    scale = ops.cast(scale, "float32")
    return ops.sum(flat) / ops.maximum(ops.sum(ops.tanh(scale * flat)), eps)


def hypersparse_scalars(weights_list, sparsity, sample_size=None, seed=None):
    """The two global scalars `(s, c)` of the HyperSparse penalty.

    `s = 0.6585 / |w|_(floor(kappa n))` and
    `c = ||w||_1 / sum_j tanh(s |w_j|)`.

    Args:
        weights_list: list of weight tensors (all prunable kernels).
        sparsity: target sparsity `kappa` in [0, 1).
        sample_size: optional; estimate the threshold from a sample.
        seed: optional seed for sampling.

    Returns:
        A tuple `(s, c)` of scalar tensors.

    Example:

    >>> from keras import ops
    >>> s, c = hypersparse_scalars([ops.convert_to_tensor([0.5, 1.0])], 0.5)
    >>> round(float(s), 4)
    0.6585
    """
    t = magnitude_quantile(weights_list, sparsity, sample_size, seed)
    s = hypersparse_scale(t)
    return s, hypersparse_factor(weights_list, s)


def hypersparse_term(weights, scale, factor):
    """One kernel's share of the HyperSparse penalty: `c * sum_i tanh(s |w_i|)`.

    With `s` and `c` from `hypersparse_scalars` over all kernels (held
    fixed), its gradient is the HyperSparse gradient
    `sign(w_i) c s sech^2(s |w_i|)`.

    Args:
        weights: one kernel.
        scale: `s`.
        factor: `c`.

    Returns:
        A scalar tensor.

    Example:

    >>> from keras import ops
    >>> round(float(hypersparse_term(ops.convert_to_tensor([2.0]), 100.0, 2.0)), 4)
    2.0
    """
    w = ops.abs(weights)
    scale = ops.cast(scale, w.dtype)
    factor = ops.cast(factor, w.dtype)
    return factor * ops.sum(ops.tanh(scale * w))


def hypersparse_penalty(weights_list, sparsity):
    """The HyperSparse penalty `HS(w)` exactly as the paper writes it.

    `HS(w) = ||w||_1 * T(w) / sg(T(w)) - ||w||_1` with
    `T(w) = sum_j tanh(s |w_j|)` and `s = 0.6585 / |w|_(floor(kappa n))`
    (`s` computed from the current weights without gradient). The value is 0;
    differentiate it (inside `GradientTape` / `jax.grad`) for the gradient.
    For training use `kprune.regularizers.HyperSparse`, whose per-kernel
    terms have the same gradient at a fraction of the cost.

    Args:
        weights_list: list of kernels.
        sparsity: `kappa` in [0, 1).

    Returns:
        A scalar tensor (0 up to rounding).

    Example:

    >>> from keras import ops
    >>> abs(float(hypersparse_penalty([ops.ones((3, 2))], 0.5))) < 1e-6
    True
    """
    flat = ops.concatenate(
        [ops.reshape(ops.cast(w, "float32"), (-1,)) for w in weights_list]
    )
    a = ops.abs(flat)
    s = ops.stop_gradient(hypersparse_scale(magnitude_quantile([flat], sparsity)))
    t = ops.sum(ops.tanh(s * a))
    l1 = ops.sum(a)
    return l1 * t / ops.stop_gradient(t) - l1


def hypersparse_gradient(weights_list, sparsity):
    """The analytic HyperSparse gradient, one tensor per kernel.

    `dHS/dw_i = sign(w_i) * (||w||_1 / sum_j tanh(s |w_j|)) * s *
    sech^2(s |w_i|)`.

    Args:
        weights_list: list of kernels.
        sparsity: `kappa` in [0, 1).

    Returns:
        A list of tensors shaped like `weights_list`.

    Example:

    >>> from keras import ops
    >>> g = hypersparse_gradient([ops.convert_to_tensor([0.0, 1.0])], 0.5)
    >>> float(g[0][0])
    0.0
    """
    s, c = hypersparse_scalars(weights_list, sparsity)
    out = []
    for w in weights_list:
        w = ops.cast(w, "float32")
        sech = 1.0 / ops.cosh(s * ops.abs(w))
        out.append(ops.sign(w) * c * s * sech * sech)
    return out
