"""The sparse group Lasso proximal operator on groups that span several kernels.

In a residual network one channel is made by several layers (the convs whose
outputs an `Add` joins): it can only leave the model when every one of
them stops making it. Its group is the union of those layers' slices, and
the penalty acts on the union's norm.
"""

import numpy as np
from keras import ops

from kprune.ops.group_sparsity import (
    _TINY,
    _reduce_axes,
    _unit_layout,
    group_size,
    num_units,
    soft_threshold,
)


def _per_unit(value, units, dtype):
    """`value` (a scalar or one entry per unit) as a 1-D tensor of `units`."""
    value = ops.convert_to_tensor(value, dtype=dtype)
    if len(value.shape) == 0:
        return ops.full((units,), value, dtype=dtype)
    if len(value.shape) != 1 or int(value.shape[0]) != units:
        raise ValueError(
            "`lam` must be a scalar or 1-D with one entry per unit "
            f"({units}). Received: lam.shape={tuple(value.shape)}"
        )
    return value


def coupled_group_prox(members, components, t, alpha=0.0, held=None):
    """The sparse group Lasso proximal operator with groups across kernels.

    Each member `i` is a kernel with its per-unit vectors (bias, BatchNorm
    `gamma` / `beta`) and its strength `lambda_i`; `components[i][n]` names
    the group of its unit `n`. Group `c` is the union of every member unit
    it names, `theta_c`, with `P_c` parameters and the strength
    `lambda_c = sum_(i,n in c) P_i lambda_i,n / P_c` (the parameter-weighted
    mean: equal strengths give that strength). For the penalty

    `r(theta) = sum_c (1 - alpha) lambda_c sqrt(P_c) ||theta_c||_2
    + alpha sum_i lambda_i ||theta_i||_1`

    the proximal operator of `t * r` is, exactly:

    1. `u = sign(theta) * max(|theta| - t * alpha * lambda_i, 0)` per member;
    2. `theta_c <- u_c * max(1 - t * (1 - alpha) * lambda_c * sqrt(P_c) /
       ||u_c||_2, 0)` per group.

    A group whose norm falls below its threshold becomes exactly zero in
    every member at once. Groups that name one unit of one member are the
    per-layer groups of `sparse_group_prox`. `held` groups skip step 2.

    Args:
        members: list of `(kernel, vectors, axis, lam)`: a kernel, a list of
            per-unit vectors (1-D, one entry per unit), the kernel axes
            indexing units, and `lambda_i` (a scalar or one per unit).
        components: list with one int array per member: the group id of
            each unit (C order over the unit axes), ids in `[0, C)`.
        t: the step size.
        alpha: L1 share in `[0, 1]`, or one per member (then the group
            strength is `sum P_i (1 - alpha_i) lambda_i,n / P_c`).
        held: optional bool array over the ids: groups the group step
            leaves alone (they cannot be removed, so shrinking them would
            only cost accuracy).

    Returns:
        A list with `(kernel, vectors)` per member, after the step.

    Example:

    >>> import numpy as np
    >>> a = np.array([[3.0, 0.1], [4.0, 0.1]])  # unit norms 5, 0.14
    >>> b = np.array([[0.0, 0.1], [0.0, 0.0]])  # adds to the same channels
    >>> out = coupled_group_prox(
    ...     [(a, [], -1, 1.0), (b, [], -1, 1.0)], [[0, 1], [0, 1]], t=0.5)
    >>> [np.round(np.asarray(k), 3).tolist() for k, _ in out]
    [[[2.4, 0.0], [3.2, 0.0]], [[0.0, 0.0], [0.0, 0.0]]]

    Reference:
        Alvarez & Salzmann, "Learning the Number of Neurons in Deep
        Networks", NeurIPS 2016 (arXiv 1611.06321); groups coupled by
        residual connections as in Fang et al., "DepGraph: Towards Any
        Structural Pruning", CVPR 2023 (arXiv 2301.12900).
    """
    alphas = [alpha] * len(members) if np.ndim(alpha) == 0 else list(alpha)
    alphas = [float(a) for a in alphas]
    if len(alphas) != len(members) or not all(0.0 <= a <= 1.0 for a in alphas):
        raise ValueError(
            "`alpha` must be in [0, 1] (one number, or one per member). "
            f"Received: alpha={alpha!r}"
        )
    if len(members) != len(components):
        raise ValueError(
            "`components` needs one array per member. Received: "
            f"{len(components)} arrays for {len(members)} members"
        )
    ids = [np.asarray(c, dtype="int32").reshape(-1) for c in components]
    count = 1 + max((int(c.max()) for c in ids if c.size), default=-1)
    prepared, norms, sizes, weighted = [], [], [], []
    for (kernel, vectors, axis, lam), comp, alpha in zip(members, ids, alphas):
        kernel = ops.convert_to_tensor(kernel)
        dtype = kernel.dtype
        vectors = [ops.convert_to_tensor(v, dtype=dtype) for v in vectors]
        units = num_units(kernel.shape, axis)
        if comp.size != units:
            raise ValueError(
                f"A member with {units} units (kernel of shape "
                f"{tuple(kernel.shape)}, axis={axis!r}) needs one group id "
                f"per unit. Received: {comp.size} ids"
            )
        lam = _per_unit(lam, units, dtype)
        unit_shape = _unit_layout(kernel.shape, axis)[2]
        if alpha > 0.0:
            step = ops.cast(t * alpha, dtype) * lam
            kernel = soft_threshold(kernel, ops.reshape(step, unit_shape))
            vectors = [soft_threshold(v, step) for v in vectors]
        reduce = _reduce_axes(len(kernel.shape), axis)
        sq = ops.square(kernel)
        if reduce:
            sq = ops.sum(sq, axis=reduce)
        sq = ops.reshape(sq, (-1,))
        for vector in vectors:
            sq = sq + ops.square(vector)
        size = group_size(kernel.shape, axis) + len(vectors)
        prepared.append((kernel, vectors, unit_shape))
        norms.append(ops.cast(sq, "float32"))
        sizes.append(np.full(units, size, "float32"))
        weighted.append(ops.cast(lam, "float32") * (size * (1.0 - alpha)))
    if not prepared:
        return []
    segments = ops.convert_to_tensor(np.concatenate(ids))
    total_sq = ops.segment_sum(ops.concatenate(norms), segments, num_segments=count)
    total_size = np.bincount(np.concatenate(ids), np.concatenate(sizes), count)
    total_size = np.maximum(total_size, 1.0).astype("float32")
    strength = (
        ops.segment_sum(ops.concatenate(weighted), segments, num_segments=count)
        / total_size
    )
    tau = t * strength * np.sqrt(total_size)
    if held is not None:
        held = np.asarray(held, bool)
        tau = ops.where(ops.convert_to_tensor(held[:count]), 0.0, tau)
    tiny = _TINY["float32"]
    factor = ops.maximum(1.0 - tau / ops.sqrt(ops.maximum(total_sq, tiny)), 0.0)
    out = []
    for (kernel, vectors, unit_shape), comp in zip(prepared, ids):
        unit = ops.cast(ops.take(factor, ops.convert_to_tensor(comp)), kernel.dtype)
        kernel = kernel * ops.reshape(unit, unit_shape)
        out.append((kernel, [vector * unit for vector in vectors]))
    return out
