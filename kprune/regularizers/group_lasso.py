"""Group Lasso and sparse group Lasso regularizers (Alvarez & Salzmann 2016)."""

import keras
from keras import ops

from kprune._strength import HasStrength, check_axis, check_float, check_partners
from kprune.ops.group_sparsity import sparse_group_lasso_penalty

_MODES = ("penalty", "proximal")


class _GroupRegularizer(HasStrength, keras.regularizers.Regularizer):
    """Shared state and checks of `GroupLasso` and `SparseGroupLasso`."""

    def __init__(self, strength, alpha, scale, axis, mode, partners):
        self.partners = check_partners(partners)
        strength = check_float(strength, "strength")
        alpha = check_float(alpha, "alpha", maximum=1.0)
        scale = check_float(scale, "scale")
        if mode not in _MODES:
            raise ValueError(f"`mode` must be one of {_MODES}. Received: mode={mode!r}")
        self.alpha = alpha
        self.scale = scale
        self.axis = check_axis(axis)
        self.mode = mode
        self._init_strength(strength, "group_lasso_strength")

    def __call__(self, x):
        if self.mode == "proximal":
            # The proximal step (kprune.callbacks.ProximalStep) handles the
            # penalty; SGD sees the data loss only.
            return ops.zeros((), dtype=x.dtype)
        lam = ops.cast(self._strength, x.dtype) * self.scale
        return sparse_group_lasso_penalty(x, lam, alpha=self.alpha, axis=self.axis)

    def get_config(self):
        config = {
            "strength": self.strength_value(),
            "alpha": self.alpha,
            "scale": self.scale,
            "axis": self.axis if isinstance(self.axis, int) else list(self.axis),
            "mode": self.mode,
        }
        if self.partners:  # only then: configs without partners stay as they were
            config["partners"] = list(self.partners)
        return config

    def __repr__(self):
        config = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{self.__class__.__name__}({config})"


@keras.saving.register_keras_serializable(package="kprune")
class SparseGroupLasso(_GroupRegularizer):
    """Sparse group Lasso on a kernel: whole units *and* single weights to zero.

    `r(W) = lambda * [(1 - alpha) * sqrt(P) * sum_n ||W_n||_2
    + alpha * ||W||_1]` with `lambda = strength * scale`, `W_n` the incoming
    weights of output unit `n` (all kernel axes but `axis`) and `P` their
    number.

    Two modes:

    - `mode="penalty"` (default): the Keras way. `r(W)` is added to the loss
      and the optimizer follows its subgradient. Weights get small but
      almost never exactly zero.
    - `mode="proximal"`: the paper's method. `__call__` returns 0 (SGD sees
      the data loss only) and `kprune.callbacks.ProximalStep` applies the
      proximal operator of `r` (`kprune.ops.sparse_group_prox`) with the
      current learning rate as step size, which produces exact zeros. The
      regularizer then only carries `lambda`, `alpha` and `axis` for the
      callback.

    A Keras regularizer only sees the kernel. `ProximalStep` groups each
    unit's kernel slice *with its bias entry*, as in the paper, and with its
    entry of each `partners` weight: `["bn1/gamma", "bn1/beta"]` names the
    `gamma` and `beta` of the BatchNormalization `bn1` that normalizes this
    layer's output (`kprune.sparsity.apply_group_sparsity` records them),
    so that a dead unit's normalized channel outputs exactly 0. The penalty
    of `mode="penalty"` is on the kernel only.

    `strength` lives in a non-trainable `keras.Variable`
    (`regularizer.strength`), so `kprune.callbacks.RegularizationScheduler`
    (or `regularizer.strength.assign(v)`) changes it during `fit` without
    retracing. `scale` is a fixed per-layer multiplier that a scheduler does
    not touch (`kprune.sparsity.apply_group_sparsity` uses it for per-layer
    strengths). `get_config()` saves the current strength as a float.

    Args:
        strength: `lambda >= 0`.
        alpha: L1 share in `[0, 1]` (`0` is the plain group Lasso).
        scale: fixed multiplier of `strength` for this layer.
        axis: kernel axis (or axes) indexing output units: `-1` for Dense,
            Conv and SeparableConv pointwise kernels, `-2` for
            `Conv*DTranspose`, `(-2, -1)` for `DepthwiseConv*D`.
        mode: `"penalty"` (subgradient in the loss) or `"proximal"`
            (handled by `ProximalStep`).
        partners: `"<layer name>/<weight name>"` strings of per-unit weights
            that join the groups in the proximal step (a BatchNorm's
            `gamma` and `beta`).

    Example:

    >>> import keras, kprune
    >>> layer = keras.layers.Dense(
    ...     8, kernel_regularizer=kprune.regularizers.SparseGroupLasso(1e-3))
    >>> _ = layer(keras.ops.ones((2, 4)))
    >>> len(layer.losses)
    1

    Reference:
        Alvarez & Salzmann, "Learning the Number of Neurons in Deep
        Networks", NeurIPS 2016 (arXiv 1611.06321); Simon et al., "A
        sparse-group lasso", 2013.
    """

    def __init__(
        self,
        strength=1e-3,
        alpha=0.5,
        scale=1.0,
        axis=-1,
        mode="penalty",
        partners=(),
    ):
        super().__init__(strength, alpha, scale, axis, mode, partners)


@keras.saving.register_keras_serializable(package="kprune")
class GroupLasso(_GroupRegularizer):
    """Group Lasso on a kernel: drives whole output units to zero.

    `r(W) = lambda * sqrt(P) * sum_n ||W_n||_2` with `lambda = strength *
    scale`, `W_n` the incoming weights of output unit `n` (all kernel axes
    but `axis`) and `P` their number. The sparse group Lasso with `alpha=0`.

    `mode="penalty"` (default) adds `r` to the loss (subgradient descent,
    the Keras way: weights shrink but rarely reach exactly zero);
    `mode="proximal"` adds nothing to the loss and lets
    `kprune.callbacks.ProximalStep` apply the exact proximal operator on
    `[kernel group, bias]` (the paper's method: exact zeros), with the
    `partners` (a BatchNorm's `gamma` / `beta`) joined. See
    `SparseGroupLasso` for the strength variable, `scale` and `partners`.

    Args:
        strength: `lambda >= 0`.
        scale: fixed multiplier of `strength` for this layer.
        axis: kernel axis (or axes) indexing output units: `-1` for Dense,
            Conv and SeparableConv pointwise kernels, `-2` for
            `Conv*DTranspose`, `(-2, -1)` for `DepthwiseConv*D`.
        mode: `"penalty"` or `"proximal"`.
        partners: `"<layer name>/<weight name>"` strings of per-unit weights
            joined to the groups by the proximal step.

    Example:

    >>> import keras, kprune
    >>> reg = kprune.regularizers.GroupLasso(0.1)
    >>> round(float(reg(keras.ops.ones((4, 2)))), 4)  # 0.1 * sqrt(4) * (2 + 2)
    0.8
    >>> _ = reg.strength.assign(0.0)  # e.g. a warm-up schedule
    >>> float(reg(keras.ops.ones((4, 2))))
    0.0

    Reference:
        Alvarez & Salzmann, "Learning the Number of Neurons in Deep
        Networks", NeurIPS 2016 (arXiv 1611.06321); Yuan & Lin, "Model
        selection and estimation in regression with grouped variables", 2006.
    """

    def __init__(self, strength=1e-3, scale=1.0, axis=-1, mode="penalty", partners=()):
        super().__init__(strength, 0.0, scale, axis, mode, partners)

    def get_config(self):
        config = super().get_config()
        del config["alpha"]
        return config


def is_group_regularizer(obj):
    """Whether `obj` is a kprune `GroupLasso` / `SparseGroupLasso`.

    Args:
        obj: anything.

    Returns:
        A bool.

    Example:

    >>> import kprune
    >>> is_group_regularizer(kprune.regularizers.GroupLasso())
    True
    """
    return isinstance(obj, _GroupRegularizer)
