"""HyperSparse (Glandorf et al. 2023) and plain L1/L2 penalties with a live strength."""

import keras
import numpy as np
from keras import ops

from kprune.ops.hypersparse import hypersparse_scalars, hypersparse_term


def _check_strength(strength):
    strength = float(strength)
    if not strength >= 0.0 or strength == float("inf"):
        raise ValueError(
            f"`strength` must be a finite float >= 0. Received: strength={strength}"
        )
    return strength


def _float32(variable):
    return float(str(np.float32(ops.convert_to_numpy(variable))))


class _StrengthRegularizer(keras.regularizers.Regularizer):
    """A regularizer whose `lambda` lives in a non-trainable `keras.Variable`."""

    def __init__(self, strength, name):
        self._strength = keras.Variable(
            _check_strength(strength), dtype="float32", trainable=False, name=name
        )

    @property
    def strength(self):
        """The `keras.Variable` holding `lambda` (assign to change it mid-fit)."""
        return self._strength

    def strength_value(self):
        """The current strength as a Python float."""
        return _float32(self._strength)

    def __repr__(self):
        config = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{self.__class__.__name__}({config})"


@keras.saving.register_keras_serializable(package="kprune")
class HyperSparse(_StrengthRegularizer):
    """HyperSparse: push the weights below a global threshold towards zero.

    For all kernels under HyperSparse together (`w`, `n` weights) and a
    target sparsity `kappa`, with `s = 0.6585 / |w|_(floor(kappa n))` and
    `c = ||w||_1 / sum_j tanh(s |w_j|)`, this kernel adds

    `r(W) = lambda * c * sum_{i in W} tanh(s |W_i|)`

    to the loss, with `s` and `c` held fixed. Its gradient is the paper's
    `lambda * dHS/dw_i = lambda * sign(w_i) * c * s * sech^2(s |w_i|)`
    (see `kprune.ops.hypersparse_penalty`): strong on the weights that a
    global magnitude pruning at `kappa` would remove, fading on those it
    keeps, so the regularization explores less and exploits more as the
    weights separate. Summed over kernels the values equal `lambda ||w||_1`
    when `s` and `c` were last computed.

    `s` and `c` are global, so one kernel cannot compute them: they live in
    non-trainable variables (`regularizer.tanh_scale`,
    `regularizer.factor`) that `kprune.callbacks.AdaptiveRegularization`
    (or `kprune.regularizers.refresh_hypersparse(model)` in a custom loop)
    refreshes from all kernels every few steps. Until the first refresh both
    are 0 and so is the penalty. `strength` (`lambda`) is a variable too, so
    ART's growing `lambda_t` and `kprune.callbacks.RegularizationScheduler`
    change it without retracing (TensorFlow backend).

    Args:
        sparsity: target sparsity `kappa` in [0, 1) (the same for all
            kernels of a model).
        strength: `lambda >= 0`.

    Example:

    >>> import keras, kprune
    >>> hs = kprune.regularizers.HyperSparse
    >>> model = keras.Sequential([keras.Input((4,)),
    ...     keras.layers.Dense(8, kernel_regularizer=hs(0.9)),
    ...     keras.layers.Dense(2, kernel_regularizer=hs(0.9))])
    >>> s, c = kprune.regularizers.refresh_hypersparse(model)
    >>> s > 0 and c > 0
    True

    Reference:
        Glandorf, Kaiser, Rosenhahn. HyperSparse Neural Networks: Shifting
        Exploration to Exploitation through Adaptive Regularization. ICCV
        2023 workshops, arXiv 2308.07163.
    """

    def __init__(self, sparsity=0.9, strength=5e-6):
        sparsity = float(sparsity)
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(
                f"`sparsity` must be in [0, 1). Received: sparsity={sparsity}"
            )
        super().__init__(strength, "hypersparse_strength")
        self.sparsity = sparsity
        self.tanh_scale = keras.Variable(
            0.0, dtype="float32", trainable=False, name="hypersparse_scale"
        )
        self.factor = keras.Variable(
            0.0, dtype="float32", trainable=False, name="hypersparse_factor"
        )

    def __call__(self, x):
        lam = ops.cast(self._strength, x.dtype)
        return lam * hypersparse_term(x, self.tanh_scale, self.factor)

    def get_config(self):
        return {"sparsity": self.sparsity, "strength": self.strength_value()}


@keras.saving.register_keras_serializable(package="kprune")
class MagnitudePenalty(_StrengthRegularizer):
    """L1 or squared-L2 penalty whose strength can change during `fit`.

    `r(W) = lambda * sum_i |W_i|^p` with `p` 1 or 2 (`keras.regularizers.L1`
    and `L2` with `lambda` in a non-trainable `keras.Variable`), the
    baselines HyperSparse is compared with under the same ART schedule.

    Args:
        p: 1 (L1) or 2 (squared L2).
        strength: `lambda >= 0`.

    Example:

    >>> import keras
    >>> reg = MagnitudePenalty(p=1, strength=0.5)
    >>> float(reg(keras.ops.convert_to_tensor([1.0, -2.0])))
    1.5

    Reference:
        Tibshirani, Regression shrinkage and selection via the lasso, 1996;
        used as the ART baseline in Glandorf et al., arXiv 2308.07163.
    """

    def __init__(self, p=1, strength=1e-5):
        if p not in (1, 2):
            raise ValueError(f"`p` must be 1 or 2. Received: p={p!r}")
        super().__init__(strength, "magnitude_penalty_strength")
        self.p = int(p)

    def __call__(self, x):
        lam = ops.cast(self._strength, x.dtype)
        if self.p == 1:
            return lam * ops.sum(ops.abs(x))
        return lam * ops.sum(ops.square(x))

    def get_config(self):
        return {"p": self.p, "strength": self.strength_value()}


def hypersparse_kernels(model):
    """The kernels of `model` that carry a `HyperSparse` regularizer.

    Args:
        model: a Keras model.

    Returns:
        A list of `(variable, regularizer)` pairs, each variable once.

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> hypersparse_kernels(model)
    []
    """
    seen = set()
    out = []
    for variable in model.weights:
        reg = getattr(variable, "regularizer", None)
        if isinstance(reg, HyperSparse) and id(variable) not in seen:
            seen.add(id(variable))
            out.append((variable, reg))
    return out


def refresh_hypersparse(model, sample_size=None, seed=None):
    """Recompute the global `s` and `c` of every `HyperSparse` in `model`.

    `s = 0.6585 / |w|_(floor(kappa n))` and
    `c = ||w||_1 / sum_j tanh(s |w_j|)` over all HyperSparse kernels
    together, assigned to each regularizer's `tanh_scale` and `factor`. On
    the JAX backend call `kprune._backend.retrace(model)` after it inside
    `fit` (`AdaptiveRegularization` does).

    Args:
        model: a built Keras model with HyperSparse kernels.
        sample_size: optional; estimate the threshold from that many sampled
            magnitudes instead of an exact `top_k`.
        seed: optional seed for sampling.

    Returns:
        `(s, c)` as Python floats.

    Example:

    >>> import keras, kprune
    >>> reg = kprune.regularizers.HyperSparse(0.5)
    >>> model = keras.Sequential([keras.Input((4,)),
    ...     keras.layers.Dense(3, kernel_regularizer=reg)])
    >>> s, c = kprune.regularizers.refresh_hypersparse(model)
    >>> c * s >= 1.0  # tanh(x) <= x, so sum tanh(s|w|) <= s ||w||_1
    True
    """
    pairs = hypersparse_kernels(model)
    if not pairs:
        raise ValueError(
            f"Model '{model.name}' has no kernel with a kprune HyperSparse "
            "regularizer. Attach one with kernel_regularizer=HyperSparse(...) or "
            "let kprune.callbacks.AdaptiveRegularization attach them. "
            f"Received: model={model.name!r}"
        )
    sparsities = sorted({reg.sparsity for _, reg in pairs})
    if len(sparsities) > 1:
        raise ValueError(
            "All HyperSparse regularizers of a model share one target sparsity "
            f"(the threshold is global). Received: sparsities={sparsities}"
        )
    s, c = hypersparse_scalars(
        [v for v, _ in pairs], sparsities[0], sample_size=sample_size, seed=seed
    )
    s = float(ops.convert_to_numpy(s))
    c = float(ops.convert_to_numpy(c))
    for _, reg in {id(r): (None, r) for _, r in pairs}.values():
        reg.tanh_scale.assign(s)
        reg.factor.assign(c)
    return s, c
