"""Group norms, soft-thresholding and the sparse group Lasso proximal operator.

Pure `keras.ops` functions (no state, no layers), composed by
`kprune.regularizers` and `kprune.callbacks.ProximalStep`.

A *group* is everything that feeds one output unit. For a kernel, the output
units are indexed by `axis` (one axis, or several for depthwise kernels) and
the group of a unit is the slice over all the other axes:

| layer | kernel shape | `axis` | unit |
| --- | --- | --- | --- |
| `Dense` | `(in, units)` | `-1` | one neuron |
| `Conv1D/2D/3D` | `(*k, in, filters)` | `-1` | one filter |
| `Conv*DTranspose` | `(*k, filters, in)` | `-2` | one filter |
| `DepthwiseConv1D/2D` | `(*k, in, mult)` | `(-2, -1)` | one (channel, mult) pair |
| `SeparableConv*D` pointwise | `(*1, in*mult, filters)` | `-1` | one filter |

Units of a multi-axis `axis` are numbered in C order, which is the order of
the layer's output channels and bias entries (for depthwise kernels, output
channel `c * mult + m`).

A unit's group may also hold *per-unit vectors*, one entry per unit in the
same order: the layer's `bias`, and `partners` such as the `gamma` and
`beta` of a BatchNormalization that normalizes the layer's output (a
zero kernel slice alone does not silence a normalized channel: BatchNorm
outputs `beta - gamma * mean / sqrt(var + eps)` for it; with `gamma` and
`beta` zero too it outputs exactly 0).
"""

import math

import keras
from keras import ops


def unit_axes(ndim, axis=-1):
    """Normalize `axis` to a sorted tuple of non-negative axes of a rank-`ndim` kernel.

    Args:
        ndim: rank of the kernel.
        axis: int or sequence of ints, the axes that index output units.

    Returns:
        A sorted tuple of non-negative ints.

    Example:

    >>> unit_axes(4, (-2, -1))
    (2, 3)
    """
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    if not axes or not all(isinstance(a, int) for a in axes):
        raise ValueError(
            "`axis` must be an int or a non-empty sequence of ints. "
            f"Received: axis={axis!r}"
        )
    normalized = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(
                f"`axis` is out of range for a kernel of rank {ndim}. "
                f"Received: axis={axis!r}"
            )
        normalized.append(a % ndim)
    if len(set(normalized)) != len(normalized):
        raise ValueError(f"`axis` has repeated axes. Received: axis={axis!r}")
    return tuple(sorted(normalized))


def group_size(shape, axis=-1):
    """Number of kernel entries in one group: the product of the non-unit dims.

    `P = prod(shape[i] for i not in axis)`.

    Args:
        shape: the kernel shape.
        axis: axes that index output units.

    Returns:
        An int.

    Example:

    >>> group_size((3, 3, 16, 32))
    144
    """
    shape = tuple(int(d) for d in shape)
    units = unit_axes(len(shape), axis)
    return math.prod(d for i, d in enumerate(shape) if i not in units)


def num_units(shape, axis=-1):
    """Number of groups (output units) of a kernel: the product of the unit dims.

    Args:
        shape: the kernel shape.
        axis: axes that index output units.

    Returns:
        An int.

    Example:

    >>> num_units((3, 3, 8, 2), axis=(-2, -1))
    16
    """
    shape = tuple(int(d) for d in shape)
    units = unit_axes(len(shape), axis)
    return math.prod(shape[i] for i in units)


def _reduce_axes(ndim, axis):
    units = unit_axes(ndim, axis)
    return tuple(i for i in range(ndim) if i not in units)


def _bias_shape(shape, axis):
    """Shape that broadcasts a bias (one entry per unit, C order) to `shape`."""
    units = unit_axes(len(shape), axis)
    return tuple(int(d) if i in units else 1 for i, d in enumerate(shape))


def _safe_sqrt(s):
    # sqrt with a zero (sub)gradient at 0 instead of NaN.
    positive = s > 0
    return ops.where(positive, ops.sqrt(ops.where(positive, s, 1.0)), 0.0)


def _group_sq_norms(kernel, vectors, axis):
    """Squared group norms, keepdims over the non-unit axes."""
    reduce = _reduce_axes(len(kernel.shape), axis)
    sq = ops.square(kernel)
    if reduce:
        sq = ops.sum(sq, axis=reduce, keepdims=True)
    for vector in vectors:
        sq = sq + ops.reshape(ops.square(vector), _bias_shape(kernel.shape, axis))
    return sq


def _check_bias(kernel, bias, axis, name="bias"):
    if bias is None:
        return None
    bias = ops.convert_to_tensor(bias, dtype=kernel.dtype)
    n = num_units(kernel.shape, axis)
    if len(bias.shape) != 1 or int(bias.shape[0]) != n:
        raise ValueError(
            f"`{name}` must have one entry per output unit ({n} for a kernel of "
            f"shape {tuple(kernel.shape)} and axis={axis!r}). "
            f"Received: {name}.shape={tuple(bias.shape)}"
        )
    return bias


def _check_partners(kernel, partners, axis):
    """`partners` as a list of checked per-unit vectors (`[]` for `None`)."""
    if partners is None:
        return []
    if not isinstance(partners, (list, tuple)):
        raise ValueError(
            "`partners` must be None or a list of per-unit vectors (e.g. a "
            f"BatchNorm's [gamma, beta]). Received: partners={partners!r}"
        )
    return [
        _check_bias(kernel, p, axis, name=f"partners[{i}]")
        for i, p in enumerate(partners)
    ]


def _joined(bias, partners):
    """The per-unit vectors of a group: the bias (if any), then the partners."""
    return ([] if bias is None else [bias]) + list(partners)


def group_norms(kernel, axis=-1, bias=None, partners=None):
    """L2 norm of each output unit's group.

    `norms[n] = ||theta_n||_2 = sqrt(sum_{i in group n} theta_i^2)`, the sum
    running over every axis but `axis` (plus the unit's bias entry when
    `bias` is given, and its entry of each `partners` vector). Differentiable
    everywhere, with gradient 0 at a zero group.

    Args:
        kernel: the kernel tensor.
        axis: axis (or axes) indexing output units; see the module table.
        bias: optional bias, one entry per unit, joined to its unit's group.
        partners: optional list of more per-unit vectors joined to the
            groups (e.g. a BatchNorm's `gamma` and `beta`).

    Returns:
        A 1-D tensor of length `num_units(kernel.shape, axis)`, in output
        channel order.

    Example:

    >>> import numpy as np
    >>> w = np.array([[3.0, 0.0], [4.0, 0.0]])
    >>> ops.convert_to_numpy(group_norms(w)).tolist()
    [5.0, 0.0]
    """
    kernel = ops.convert_to_tensor(kernel)
    vectors = _joined(
        _check_bias(kernel, bias, axis), _check_partners(kernel, partners, axis)
    )
    return ops.reshape(_safe_sqrt(_group_sq_norms(kernel, vectors, axis)), (-1,))


def soft_threshold(x, t):
    """Element-wise soft-thresholding, the proximal operator of `t * ||x||_1`.

    `soft_threshold(x, t) = sign(x) * max(|x| - t, 0)`; exactly zero where
    `|x| <= t`.

    Args:
        x: a tensor.
        t: a non-negative threshold (scalar or broadcastable).

    Returns:
        A tensor like `x`.

    Example:

    >>> ops.convert_to_numpy(soft_threshold([-2.0, 0.5, 3.0], 1.0)).tolist()
    [-1.0, 0.0, 2.0]
    """
    x = ops.convert_to_tensor(x)
    t = ops.cast(t, x.dtype)
    return ops.sign(x) * ops.maximum(ops.abs(x) - t, 0.0)


# The smallest normal number of each float dtype (a floor under squared norms).
_TINY = {
    "float16": 6.103515625e-05,
    "bfloat16": 1.1754943508222875e-38,
    "float32": 1.1754943508222875e-38,
    "float64": 2.2250738585072014e-308,
}


def _unit_layout(shape, axis):
    """How the proximal step lays out per-unit values against the kernel.

    Returns `(reduce, keepdims, unit_shape)`. Units on the trailing axes
    (Dense, Conv, depthwise kernels): the norms reduced without kept dims
    broadcast against the kernel as they are, so the step needs no
    reshapes (fewer ops in a compiled train step). Other units (`Conv*DTranspose`)
    keep the reduced dims.
    """
    ndim = len(shape)
    units = unit_axes(ndim, axis)
    reduce = tuple(i for i in range(ndim) if i not in units)
    if units == tuple(range(ndim - len(units), ndim)):
        return reduce, False, tuple(int(shape[i]) for i in units)
    return reduce, True, _bias_shape(shape, axis)


def _group_shrink(kernel, vectors, tau, axis):
    """Group shrink `theta_n <- theta_n * max(1 - tau_n / ||theta_n||_2, 0)`.

    `vectors` is a list of per-unit vectors joined to the groups (the bias,
    BatchNorm partners); returns `(kernel, vectors)` shrunk.

    `tau` is a scalar or a tensor of `_unit_layout`'s `unit_shape`. Written
    with few ops (no `where`, no reshape for trailing units): the factor is
    `max(1 - tau / sqrt(max(sq, tiny)), 0)`, which is `0` for a zero group
    (and `1` there when `tau = 0`, so a zero group stays zero, never NaN).
    """
    reduce, keepdims, unit_shape = _unit_layout(kernel.shape, axis)
    sq = ops.square(kernel)
    if reduce:
        sq = ops.sum(sq, axis=reduce, keepdims=keepdims)
    for vector in vectors:
        vector_sq = ops.square(vector)
        if unit_shape != tuple(vector.shape):
            vector_sq = ops.reshape(vector_sq, unit_shape)
        sq = sq + vector_sq
    tiny = _TINY.get(keras.backend.standardize_dtype(kernel.dtype), _TINY["float32"])
    factor = ops.maximum(1.0 - tau / ops.sqrt(ops.maximum(sq, tiny)), 0.0)
    kernel = kernel * factor
    if vectors and tuple(factor.shape) != tuple(vectors[0].shape):
        factor = ops.reshape(factor, (-1,))
    return kernel, [vector * factor for vector in vectors]


def group_soft_threshold(x, t, axis=-1, bias=None):
    """Group soft-thresholding, the proximal operator of `t * sum_n ||x_n||_2`.

    `x_n <- x_n * max(1 - t / ||x_n||_2, 0)` for each group `n`: each group's
    norm shrinks by `t`, and a group whose norm is `<= t` becomes exactly
    zero. With `bias`, each unit's bias entry belongs to its group.

    Args:
        x: the kernel tensor.
        t: a non-negative threshold (scalar).
        axis: axis (or axes) indexing output units.
        bias: optional bias, one entry per unit.

    Returns:
        The shrunk kernel, or `(kernel, bias)` when `bias` is given.

    Example:

    >>> w = [[3.0, 0.3], [4.0, 0.4]]  # group norms 5 and 0.5
    >>> out = ops.convert_to_numpy(group_soft_threshold(w, 1.0))
    >>> out.astype("float64").round(2).tolist()
    [[2.4, 0.0], [3.2, 0.0]]
    """
    x = ops.convert_to_tensor(x)
    bias = _check_bias(x, bias, axis)
    x, vectors = _group_shrink(x, _joined(bias, []), ops.cast(t, x.dtype), axis)
    return x if bias is None else (x, vectors[0])


def sparse_group_prox(
    kernel, bias, t, lam, alpha=0.0, axis=-1, group_size=None, partners=None
):
    """The sparse group Lasso proximal operator on `[kernel group, bias, partners]`.

    The proximal operator of `t * r` with (Alvarez & Salzmann, eq. 3)

    `r(theta) = lam * [(1 - alpha) * sqrt(P) * sum_n ||theta_n||_2
    + alpha * ||theta||_1]`,

    where `theta_n` is unit `n`'s kernel group joined with its bias entry
    (and its entry of each `partners` vector, e.g. the `gamma` and `beta` of
    the BatchNormalization that normalizes the unit) and `P` the number of
    parameters in one group. It is computed exactly in two steps:

    1. element-wise soft-threshold by `t * alpha * lam`:
       `u = sign(theta) * max(|theta| - t * alpha * lam, 0)`;
    2. group shrink by `tau = t * (1 - alpha) * lam * sqrt(P)`:
       `theta_n <- u_n * max(1 - tau / ||u_n||_2, 0)`.

    Groups whose norm falls to `<= tau` become exactly zero, bias and
    partners included. For `alpha = 0` this is group soft-thresholding; for
    `alpha = 1` plain soft-thresholding.

    Args:
        kernel: the kernel tensor.
        bias: the bias (one entry per unit) or `None`.
        t: the step size (for SGD, the learning rate).
        lam: the regularization strength `lambda >= 0`: a scalar, or one
            `lambda_n` per unit (1-D, output-channel order) for a weighted
            group Lasso such as `group_reweights` gives.
        alpha: L1 share in `[0, 1]`; `0` is the group Lasso.
        axis: axis (or axes) indexing output units.
        group_size: `P`; defaults to the group's kernel entries plus one for
            the bias (when given) and one per partner.
        partners: optional list of more per-unit vectors (1-D, one entry
            per unit) joined to the groups, e.g. `[gamma, beta]` of a
            BatchNormalization reading the layer's output: when a group
            dies they are zero too and the normalized channel outputs 0.

    Returns:
        `(kernel, bias)` after the step (`bias` is `None` if it was); with
        `partners`, `(kernel, bias, partners)` (a list, in the given order).

    Example:

    >>> w, b = sparse_group_prox([[3.0, 0.3], [4.0, 0.4]], [0.0, 0.1],
    ...                          t=0.5, lam=1.0, axis=-1)
    >>> # The second unit (kernel column and bias) is exactly zero:
    >>> ops.convert_to_numpy(w).astype("float64").round(3).tolist()
    [[2.48, 0.0], [3.307, 0.0]]
    >>> ops.convert_to_numpy(b).tolist()
    [0.0, 0.0]
    >>> # A BatchNorm's gamma and beta join the groups (P = 2 + 2 here):
    >>> w, _, (gamma, beta) = sparse_group_prox([[3.0, 0.3], [4.0, 0.4]], None,
    ...     t=0.5, lam=1.0, partners=[[1.0, 0.2], [0.0, 0.1]])
    >>> ops.convert_to_numpy(gamma).astype("float64").round(3).tolist()
    [0.804, 0.0]
    >>> ops.convert_to_numpy(beta).tolist()
    [0.0, 0.0]

    Reference:
        Alvarez & Salzmann, "Learning the Number of Neurons in Deep
        Networks", NeurIPS 2016 (arXiv 1611.06321).
    """
    kernel = ops.convert_to_tensor(kernel)
    bias = _check_bias(kernel, bias, axis)
    vectors = _joined(bias, _check_partners(kernel, partners, axis))
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"`alpha` must be in [0, 1]. Received: alpha={alpha}")
    if group_size is None:
        group_size = _default_group_size(kernel.shape, axis, len(vectors))
    # `t * lam` once; the constants are folded in Python (this runs inside
    # every compiled train step when a constraint applies it).
    step = ops.cast(t, kernel.dtype) * ops.convert_to_tensor(lam, dtype=kernel.dtype)
    step_bias = step  # per-unit: one entry per bias entry
    if len(step.shape) == 1:
        n = num_units(kernel.shape, axis)
        if int(step.shape[0]) != n:
            raise ValueError(
                f"A 1-D `lam` must have one entry per output unit ({n} for a "
                f"kernel of shape {tuple(kernel.shape)} and axis={axis!r}). "
                f"Received: lam.shape={tuple(step.shape)}"
            )
        unit_shape = _unit_layout(kernel.shape, axis)[2]
        if unit_shape != (n,):
            step = ops.reshape(step, unit_shape)
    elif len(step.shape) != 0:
        raise ValueError(
            "`lam` must be a scalar or 1-D (one entry per unit). "
            f"Received: lam.shape={tuple(step.shape)}"
        )
    if alpha > 0.0:
        kernel = soft_threshold(kernel, _scaled(step, alpha))
        vectors = [soft_threshold(v, _scaled(step_bias, alpha)) for v in vectors]
    if alpha < 1.0:
        tau = _scaled(step, (1.0 - alpha) * math.sqrt(group_size))
        kernel, vectors = _group_shrink(kernel, vectors, tau, axis)
    if bias is not None:
        bias, vectors = vectors[0], vectors[1:]
    if partners is None:
        return kernel, bias
    return kernel, bias, vectors


def _scaled(x, c):
    return x if c == 1.0 else x * c


def group_reweights(kernel, delta, axis=-1, bias=None, partners=None):
    """Per-unit weights of the reweighted group Lasso (log penalty).

    `w_n = m / (||theta_n||_2 + delta * m)`, where `m` is the mean norm of
    the groups that are not zero (`w = 1 / delta` everywhere when all are).

    The log penalty `lambda * sqrt(P) * m * sum_n log(||theta_n||_2 +
    delta * m)` is concave in the group norms, so it is majorized at the
    current `theta` by its tangent, a *weighted* group Lasso with
    `lambda_n = lambda * w_n`: one proximal step with those strengths
    (`sparse_group_prox(kernel, bias, t, lam * w)`) is one
    majorize-minimize step of the log penalty. Weak groups get up to
    `1 / delta` times the threshold, a group of the mean norm
    `1 / (1 + delta)` times, and the strongest ones less: pruning pushes
    on the groups that are dying and barely shrinks the ones the network
    uses (the shrinkage bias of the plain group Lasso). Normalizing by `m`
    makes `w` scale-free, so `lambda` keeps its meaning and `delta` is
    relative to a typical group. The weights are recomputed at every step
    and treated as constants (no gradient).

    Args:
        kernel: the kernel tensor.
        delta: the offset relative to the mean group norm, `> 0`; smaller
            is closer to counting the groups (`L0`), larger closer to the
            plain group Lasso (`w_n -> 1 / delta` for every group).
        axis: axis (or axes) indexing output units.
        bias: optional bias, one entry per unit, joined to its unit's group.
        partners: optional list of more per-unit vectors joined to the groups.

    Returns:
        A 1-D tensor of length `num_units(kernel.shape, axis)`.

    Example:

    >>> w = [[3.0, 0.3, 0.0], [4.0, 0.4, 0.0]]  # norms 5, 0.5, 0 (mean 2.75)
    >>> weights = ops.convert_to_numpy(group_reweights(w, delta=0.1))
    >>> weights.astype("float64").round(3).tolist()
    [0.521, 3.548, 10.0]

    Reference:
        Candes, Wakin & Boyd, "Enhancing Sparsity by Reweighted l1
        Minimization", J. Fourier Anal. Appl. 2008 (arXiv 0711.1612); for
        groups, Wang & Leng, "A note on adaptive group lasso", Comput.
        Stat. Data Anal. 2008.
    """
    delta = float(delta)
    if not delta > 0.0:
        raise ValueError(f"`delta` must be > 0. Received: delta={delta}")
    norms = group_norms(kernel, axis=axis, bias=bias, partners=partners)
    norms = ops.stop_gradient(norms)
    live = ops.cast(norms > 0, norms.dtype)
    count = ops.sum(live)
    mean = ops.where(count > 0, ops.sum(norms) / ops.maximum(count, 1.0), 1.0)
    return mean / (norms + delta * mean)


def _default_group_size(shape, axis, vectors):
    """Kernel entries of one group plus one per joined vector (an int count)."""
    return group_size(shape, axis) + int(vectors)


def sparse_group_lasso_penalty(
    kernel, strength=1.0, alpha=0.5, axis=-1, bias=None, group_size=None, partners=None
):
    """The sparse group Lasso penalty of one layer.

    `r = strength * [(1 - alpha) * sqrt(P) * sum_n ||theta_n||_2
    + alpha * ||theta||_1]`, with `theta_n` unit `n`'s group (its bias entry
    included when `bias` is given) and `P` the group size.

    Args:
        kernel: the kernel tensor.
        strength: `lambda`, a float or scalar tensor.
        alpha: L1 share in `[0, 1]`.
        axis: axis (or axes) indexing output units.
        bias: optional bias joined to the groups.
        group_size: `P`; defaults as in `sparse_group_prox`.
        partners: optional list of more per-unit vectors joined to the groups.

    Returns:
        A scalar tensor.

    Example:

    >>> round(float(sparse_group_lasso_penalty([[3.0], [4.0]], alpha=0.5)), 4)
    7.0355

    Reference:
        Alvarez & Salzmann, NeurIPS 2016 (arXiv 1611.06321), eq. 3.
    """
    kernel = ops.convert_to_tensor(kernel)
    vectors = _joined(
        _check_bias(kernel, bias, axis), _check_partners(kernel, partners, axis)
    )
    if group_size is None:
        group_size = _default_group_size(kernel.shape, axis, len(vectors))
    strength = ops.cast(strength, kernel.dtype)
    value = ops.zeros((), dtype=kernel.dtype)
    if alpha < 1.0:
        norms = _safe_sqrt(_group_sq_norms(kernel, vectors, axis))
        value = value + (1.0 - alpha) * math.sqrt(group_size) * ops.sum(norms)
    if alpha > 0.0:
        l1 = ops.sum(ops.abs(kernel))
        for vector in vectors:
            l1 = l1 + ops.sum(ops.abs(vector))
        value = value + alpha * l1
    return strength * value


def group_lasso_penalty(
    kernel, strength=1.0, axis=-1, bias=None, group_size=None, partners=None
):
    """The group Lasso penalty of one layer.

    `r = strength * sqrt(P) * sum_n ||theta_n||_2` (the sparse group Lasso
    with `alpha = 0`).

    Args:
        kernel: the kernel tensor.
        strength: `lambda`.
        axis: axis (or axes) indexing output units.
        bias: optional bias joined to the groups.
        group_size: `P`; defaults to the group's kernel entries (+1 with bias,
            +1 per partner).
        partners: optional list of more per-unit vectors joined to the groups.

    Returns:
        A scalar tensor.

    Example:

    >>> round(float(group_lasso_penalty([[3.0], [4.0]])), 4)  # sqrt(2) * 5
    7.0711

    Reference:
        Alvarez & Salzmann, NeurIPS 2016 (arXiv 1611.06321), eq. 2.
    """
    return sparse_group_lasso_penalty(
        kernel,
        strength,
        alpha=0.0,
        axis=axis,
        bias=bias,
        group_size=group_size,
        partners=partners,
    )


def zero_group_mask(kernel, axis=-1, bias=None, atol=0.0, partners=None):
    """Which units have an all-zero group (`max |theta_n| <= atol`).

    Args:
        kernel: the kernel tensor.
        axis: axis (or axes) indexing output units.
        bias: optional bias; when given, the bias entry must be zero too.
        atol: absolute tolerance; `0.0` means exact zeros.
        partners: optional list of more per-unit vectors (e.g. a BatchNorm's
            `gamma` and `beta`) whose entries must be zero too.

    Returns:
        A 1-D boolean tensor, one entry per unit in output channel order.

    Example:

    >>> ops.convert_to_numpy(zero_group_mask([[0.0, 1.0], [0.0, 0.0]])).tolist()
    [True, False]
    """
    kernel = ops.convert_to_tensor(kernel)
    vectors = _joined(
        _check_bias(kernel, bias, axis), _check_partners(kernel, partners, axis)
    )
    reduce = _reduce_axes(len(kernel.shape), axis)
    big = ops.abs(kernel)
    if reduce:
        big = ops.max(big, axis=reduce, keepdims=True)
    for vector in vectors:
        big = ops.maximum(
            big, ops.reshape(ops.abs(vector), _bias_shape(kernel.shape, axis))
        )
    return ops.reshape(big <= atol, (-1,))
