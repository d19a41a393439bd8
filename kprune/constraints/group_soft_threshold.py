"""Group sparsity as Keras constraints: the proximal step inside every optimizer step.

Proximal gradient descent on `loss(theta) + r(theta)` alternates a gradient
step on the loss with the proximal operator of `t * r` (`t` the step size).
Keras 3 optimizers call `variable.assign(variable.constraint(variable))`
right after their update, inside the compiled train step, on every backend
and every replica (`BaseOptimizer.apply`). So a constraint that applies
`kprune.ops.sparse_group_prox` *is* proximal SGD, with no callback, no
per-step Python and, on JAX, no write-back of the train state.

How the constraint gets what a constraint is not given:

- **The step size `t`.** The constraint finds the optimizer that is
  applying it (`kprune._backend.applying_optimizer`: Keras runs `apply`
  inside the optimizer's own name scope) and reads
  `optimizer.learning_rate` in the graph: a variable, or a schedule at
  `optimizer.iterations`, both part of the optimizer's state (on JAX, the
  values of the current step, not ones frozen at trace time). Nothing to
  bind, before or after loading a model. `step_size=` fixes `t` instead.
- **The bias.** A unit's group is its kernel slice *and* its bias entry.
  Before any constraint runs, the optimizer has updated every variable;
  the kernel's constraint then reads the layer's bias (the variable named
  `bias` next to the kernel, `<layer path>/bias`, among the optimizer's
  variables), applies the proximal operator to the joined groups, assigns
  the new bias and returns the new kernel. Kernel column and bias entry
  become zero together, exactly `sparse_group_prox(kernel, bias, ...)`.
- **BatchNorm partners.** `partners=["bn1/gamma", "bn1/beta"]` (what
  `kprune.sparsity.apply_group_sparsity` records for a layer whose output
  only a BatchNormalization reads) names more per-unit variables by their
  path relative to the kernel's layer's parent: `<parent>/bn1/gamma` next
  to `<parent>/conv1/kernel`. The constraint finds them among the
  optimizer's variables too, joins them to the groups and assigns them:
  a dead unit's BatchNorm then outputs exactly 0 whatever its moving
  statistics. Names, not objects, so the config round-trips through
  `.keras` and the lookup runs inside the traced step (a Python-level
  search at trace time; the variables are then read and written in the
  graph like the bias).
- **The strength `lambda`.** A non-trainable `keras.Variable`
  (`constraint.strength`, times a fixed per-layer `scale`), the interface
  `kprune.callbacks.RegularizationScheduler` drives (as for the
  `GroupLasso` regularizers). The constraint is also a `KerasSaveable`
  (like `KeepMask`): Keras' saving finds it at `layer.kernel_constraint`
  and stores the current strength with the weights, so `.keras` files,
  `save_weights` and `keras.callbacks.BackupAndRestore` keep it.
"""

import keras
import numpy as np
from keras import ops
from keras.src.saving.keras_saveable import KerasSaveable

from kprune._backend import applying_learning_rate, applying_optimizer
from kprune._strength import HasStrength, check_axis, check_float, check_partners
from kprune.ops.group_sparsity import num_units, sparse_group_prox


def _trained(optimizer, wanted, path, owner, fix):
    """The optimizer's trainable variable at path `wanted`, or `None`."""
    variables = getattr(optimizer, "_trainable_variables", None) or []
    found = [v for v in variables if getattr(v, "path", None) == wanted]
    if len(found) > 1:
        raise ValueError(
            f"{owner}: the optimizer trains {len(found)} variables named "
            f"'{wanted}', so the group of '{path}' is ambiguous. Give the layers "
            f"distinct names, or {fix}. Received: kernel path {path!r}"
        )
    return found[0] if found else None


def _partner_bias(optimizer, kernel, owner):
    """The trainable variable named `bias` next to `kernel`, or `None`."""
    path = getattr(kernel, "path", None)
    if optimizer is None or not path:
        return None
    prefix = path.rpartition("/")[0]
    wanted = f"{prefix}/bias" if prefix else "bias"
    return _trained(optimizer, wanted, path, owner, "pass include_bias=False")


def _partner_variables(optimizer, kernel, partners, owner):
    """The variables `partners` name, relative to the parent of `kernel`'s
    layer (`<parent>/bn1/gamma` for `<parent>/conv1/kernel`)."""
    path = getattr(kernel, "path", None)
    if optimizer is None or not path or not partners:
        return []
    parent = path.rpartition("/")[0].rpartition("/")[0]
    found = []
    for partner in partners:
        wanted = f"{parent}/{partner}" if parent else partner
        variable = _trained(optimizer, wanted, path, owner, "pass partners=()")
        if variable is None:
            raise ValueError(
                f"{owner} on '{path}' joins '{wanted}' to its groups, but the "
                "optimizer does not train a variable of that path (a frozen or "
                "renamed BatchNormalization?). Unfreeze it, or rebuild the "
                "constraints with kprune.sparsity.apply_group_sparsity(..., "
                f"batchnorm=False). Received: partners={list(partners)!r}"
            )
        found.append(variable)
    return found


class _GroupThreshold(HasStrength, keras.constraints.Constraint, KerasSaveable):
    """State, checks and saving shared by the group-threshold constraints."""

    def __init__(self, strength, alpha, scale, axis, step_size, include_bias, partners):
        strength = check_float(strength, "strength")
        self.partners = check_partners(partners)
        self.alpha = check_float(alpha, "alpha", maximum=1.0)
        self.scale = check_float(scale, "scale")
        self.axis = check_axis(axis)
        self.step_size = (
            None if step_size is None else check_float(step_size, "step_size", True)
        )
        self.include_bias = bool(include_bias)
        self._init_strength(strength, "group_threshold_strength")

    # -- the proximal step ---------------------------------------------------

    def prox(self, kernel, bias=None, step_size=None, partners=None):
        """The proximal operator of `t * r` on `[kernel group, bias, partners]`.

        `r` is this constraint's penalty with `lambda = strength * scale`;
        see `kprune.ops.sparse_group_prox`.

        Args:
            kernel: the kernel tensor.
            bias: optional bias, one entry per group, joined to the groups.
            step_size: `t`; defaults to this constraint's `step_size`.
            partners: optional list of more per-unit vectors joined to the
                groups (e.g. the values of a BatchNorm's `gamma`, `beta`).

        Returns:
            `(kernel, bias)` after the step (`bias` is `None` if it was);
            with `partners`, `(kernel, bias, partners)`.
        """
        kernel = ops.convert_to_tensor(kernel)
        t = self.step_size if step_size is None else step_size
        if t is None:
            raise ValueError(
                f"{self._owner()} has no step size: pass step_size= here or "
                "to the constraint. Received: step_size=None"
            )
        lam = ops.cast(self._strength, kernel.dtype)
        if self.scale != 1.0:
            lam = lam * self.scale
        return sparse_group_prox(
            kernel, bias, t, lam, alpha=self.alpha, axis=self.axis, partners=partners
        )

    def _owner(self):
        return type(self).__name__

    def _step_size(self, optimizer, dtype):
        if self.step_size is not None:
            t = ops.convert_to_tensor(self.step_size, dtype=dtype)
        elif optimizer is not None:
            t = applying_learning_rate(dtype)
        else:
            raise ValueError(
                f"{self._owner()} reads its step size from the optimizer that "
                "applies it (inside `optimizer.apply`, e.g. during `model.fit`), "
                "and was called outside one. Pass step_size= to use it "
                "elsewhere. Received: step_size=None"
            )
        steps = getattr(optimizer, "gradient_accumulation_steps", None)
        if optimizer is not None and steps:
            # Keras applies constraints at every call, also when it only
            # accumulates gradients: shrink on the real update steps only
            # (Keras' own test; `iterations` counts updates, `_iterations`
            # calls).
            calls = getattr(optimizer, "_iterations", optimizer.iterations)
            update = ops.equal((calls + 1) % steps, 0)
            t = t * ops.cast(update, dtype)
        return t

    def __call__(self, w):
        optimizer = applying_optimizer()
        kernel = ops.convert_to_tensor(w)
        t = self._step_size(optimizer, kernel.dtype)
        units = num_units(kernel.shape, self.axis)
        bias_var = None
        if self.include_bias:
            bias_var = _partner_bias(optimizer, w, self._owner())
        if bias_var is not None and tuple(bias_var.shape) != (units,):
            raise ValueError(
                f"{self._owner()} on '{w.path}' makes {units} groups (axis="
                f"{self.axis!r}), but the bias '{bias_var.path}' has shape "
                f"{tuple(bias_var.shape)}. A bias joins the groups only when they "
                "are the layer's output units; pass include_bias=False for other "
                f"groupings (e.g. axis=0). Received: axis={self.axis!r}"
            )
        partner_vars = _partner_variables(optimizer, w, self.partners, self._owner())
        for variable in partner_vars:
            if tuple(variable.shape) != (units,):
                raise ValueError(
                    f"{self._owner()} on '{w.path}' makes {units} groups, but "
                    f"its partner '{variable.path}' has shape "
                    f"{tuple(variable.shape)} (one entry per group needed). "
                    f"Received: partners={list(self.partners)!r}"
                )
        bias = None if bias_var is None else ops.cast(bias_var, kernel.dtype)
        if not partner_vars:
            kernel, bias = self.prox(kernel, bias, t)
        else:
            values = [ops.cast(v, kernel.dtype) for v in partner_vars]
            kernel, bias, values = self.prox(kernel, bias, t, values)
            for variable, value in zip(partner_vars, values):
                variable.assign(ops.cast(value, variable.dtype))
        if bias_var is not None:
            bias_var.assign(ops.cast(bias, bias_var.dtype))
        return kernel

    # -- saving ----------------------------------------------------------

    def _obj_type(self):
        # Any type `saving_lib` accepts; used only to build its skip-set.
        return "Operation"

    def save_own_variables(self, store):
        store["0"] = np.asarray(ops.convert_to_numpy(self._strength))

    def load_own_variables(self, store):
        # A file saved without this constraint keeps the current strength.
        if "0" in store.keys():
            self._strength.assign(np.asarray(store["0"][...], dtype="float32"))

    def __reduce__(self):
        # KerasSaveable pickles whole models; a constraint pickles as its
        # config, which holds the current strength (copy.deepcopy, pickle).
        return (_rebuild, (type(self), self.get_config()))

    def get_config(self):
        config = {
            "strength": self.strength_value(),
            "alpha": self.alpha,
            "scale": self.scale,
            "axis": self.axis if isinstance(self.axis, int) else list(self.axis),
            "step_size": self.step_size,
            "include_bias": self.include_bias,
        }
        if self.partners:  # only then: configs without partners stay as they were
            config["partners"] = list(self.partners)
        return config

    def __repr__(self):
        config = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({config})"


def _rebuild(cls, config):
    return cls.from_config(config)


@keras.saving.register_keras_serializable(package="kprune")
class SparseGroupSoftThreshold(_GroupThreshold):
    """Sparse group Lasso as a constraint: the proximal step after every update.

    After each optimizer step, each group `theta_n` (unit `n`'s kernel slice
    joined with its bias entry) goes through the proximal operator of
    `t * r`, with

    `r(theta) = lambda * [(1 - alpha) * sqrt(P) * sum_n ||theta_n||_2
    + alpha * ||theta||_1]`, `lambda = strength * scale`:

    1. `u = sign(theta) * max(|theta| - t * alpha * lambda, 0)`;
    2. `theta_n <- u_n * max(1 - t * (1 - alpha) * lambda * sqrt(P) / ||u_n||_2, 0)`.

    Groups whose norm drops to the threshold become **exactly zero**, kernel
    slice and bias together, so `kprune.surgery.slim` can remove the units.
    With SGD and `t` its learning rate this is proximal SGD (Alvarez &
    Salzmann's method, applied at every step instead of once per epoch, so
    a `lambda` tuned for `kprune.callbacks.ProximalStep(every_n_steps=n)`
    corresponds to about `lambda / n` here).

    Step size `t`: the current learning rate of the optimizer applying the
    constraint, read in the compiled step (a schedule is evaluated at the
    step's `iterations`); or a fixed `step_size`. With momentum or adaptive
    optimizers `t = lr` is a heuristic, as for `ProximalStep`. Under
    gradient accumulation the step runs on the update steps only.

    Bias: with `include_bias=True` (default) the variable named `bias` next
    to the kernel (`<layer path>/bias`, trained by the same optimizer) joins
    the groups; the constraint assigns its new value. A layer without a
    bias (or a frozen one) gives kernel-only groups. Called outside an
    optimizer step (e.g. by hand) the constraint sees the kernel only; use
    `prox(kernel, bias)` there.

    Strength: `constraint.strength` is a non-trainable `keras.Variable`;
    `kprune.callbacks.RegularizationScheduler` assigns it (the per-layer
    `scale` is kept). TensorFlow reads it at run time; JAX bakes it into
    the compiled step, so after assigning it yourself on JAX call
    `model.make_train_function(force=True)` (the scheduler does this when
    the value changes). The current strength is saved with the model's
    weights (`.keras`, `save_weights`, `BackupAndRestore`) and in the
    config.

    Args:
        strength: `lambda >= 0`.
        alpha: L1 share in `[0, 1]` (`0` is the group Lasso).
        scale: fixed multiplier of `strength` for this layer.
        axis: kernel axis (or axes) indexing output units: `-1` for Dense,
            Conv and SeparableConv pointwise kernels, `-2` for
            `Conv*DTranspose`, `(-2, -1)` for `DepthwiseConv*D`.
        step_size: fixed `t > 0`; `None` reads the optimizer's learning rate.
        include_bias: join the layer's bias to the groups.
        partners: `"<layer name>/<weight name>"` strings of per-unit weights
            that join the groups (a BatchNorm's `["bn1/gamma", "bn1/beta"]`),
            found by path next to the kernel's layer.

    Example:

    >>> import keras, kprune
    >>> c = kprune.constraints.SparseGroupSoftThreshold(
    ...     1.0, alpha=0.5, step_size=0.5)
    >>> w = keras.ops.convert_to_tensor([[3.0, 0.3], [4.0, 0.4]])
    >>> # L1 step 0.25, then tau = 0.5 * 0.5 * sqrt(2): column 2 becomes zero
    >>> keras.ops.convert_to_numpy(c(w)).astype("float64").round(3).tolist()
    [[2.541, 0.0], [3.465, 0.0]]

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
        step_size=None,
        include_bias=True,
        partners=(),
    ):
        super().__init__(
            strength, alpha, scale, axis, step_size, include_bias, partners
        )


@keras.saving.register_keras_serializable(package="kprune")
class GroupSoftThreshold(_GroupThreshold):
    """Group Lasso as a constraint: whole units to zero inside every optimizer step.

    After each optimizer step, each group `theta_n` (unit `n`'s kernel slice
    joined with its bias entry, `P` entries) is shrunk by group
    soft-thresholding, the proximal operator of `t * lambda * sqrt(P) *
    sum_n ||theta_n||_2`:

    `theta_n <- theta_n * max(1 - t * lambda * sqrt(P) / ||theta_n||_2, 0)`,
    `lambda = strength * scale`.

    A group whose norm is at most `t * lambda * sqrt(P)` becomes exactly
    zero, kernel slice and bias together, and with `partners` the unit's
    BatchNorm `gamma` and `beta` (so its normalized channel outputs
    exactly 0 and `kprune.surgery.slim` removes it). The sparse group Lasso with
    `alpha = 0`: see `SparseGroupSoftThreshold` for the step size (the
    optimizer's learning rate, read in the compiled step, or `step_size`),
    the bias and the strength variable.
    `kprune.sparsity.apply_group_sparsity(model, strength,
    method="constraint")` puts one on every hidden layer.

    Args:
        strength: `lambda >= 0`.
        scale: fixed multiplier of `strength` for this layer.
        axis: kernel axis (or axes) indexing output units: `-1` for Dense,
            Conv and SeparableConv pointwise kernels, `-2` for
            `Conv*DTranspose`, `(-2, -1)` for `DepthwiseConv*D`.
        step_size: fixed `t > 0`; `None` reads the optimizer's learning rate.
        include_bias: join the layer's bias to the groups.
        partners: `"<layer name>/<weight name>"` strings of per-unit weights
            that join the groups (a BatchNorm's `["bn1/gamma", "bn1/beta"]`;
            `apply_group_sparsity` records them).

    Example:

    >>> import keras, kprune
    >>> model = keras.Sequential([keras.Input((4,)),
    ...     keras.layers.Dense(16, activation="relu", name="hidden",
    ...         kernel_constraint=kprune.constraints.GroupSoftThreshold(50.0)),
    ...     keras.layers.Dense(1)])
    >>> model.compile(keras.optimizers.SGD(0.05), "mse")
    >>> _ = model.fit(keras.ops.ones((8, 4)), keras.ops.ones((8, 1)), verbose=0)
    >>> hidden = model.get_layer("hidden")  # huge strength: every unit is zero
    >>> float(keras.ops.max(keras.ops.abs(hidden.kernel)))
    0.0
    >>> float(keras.ops.max(keras.ops.abs(hidden.bias)))
    0.0

    Reference:
        Alvarez & Salzmann, "Learning the Number of Neurons in Deep
        Networks", NeurIPS 2016 (arXiv 1611.06321); Yuan & Lin, "Model
        selection and estimation in regression with grouped variables", 2006.
    """

    def __init__(
        self,
        strength=1e-3,
        scale=1.0,
        axis=-1,
        step_size=None,
        include_bias=True,
        partners=(),
    ):
        super().__init__(strength, 0.0, scale, axis, step_size, include_bias, partners)

    def get_config(self):
        config = super().get_config()
        del config["alpha"]
        return config


def is_group_constraint(obj):
    """Whether `obj` is a kprune `GroupSoftThreshold` / `SparseGroupSoftThreshold`.

    Args:
        obj: anything.

    Returns:
        A bool.

    Example:

    >>> import kprune
    >>> is_group_constraint(kprune.constraints.GroupSoftThreshold())
    True
    """
    return isinstance(obj, _GroupThreshold)
