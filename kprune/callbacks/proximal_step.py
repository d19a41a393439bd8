"""`ProximalStep`: the exact group-sparsity step of Alvarez & Salzmann (2016)."""

import warnings

import keras
from keras import ops

from kprune._backend import sync_weights
from kprune.callbacks._order import require_before_backup
from kprune.ops.coupled_group_sparsity import coupled_group_prox
from kprune.ops.group_sparsity import (
    group_reweights,
    sparse_group_prox,
    zero_group_mask,
)
from kprune.regularizers.coupling import coupled_units
from kprune.regularizers.targets import (
    GroupTarget,
    batchnorm_partners,
    default_target,
    find_layer,
    input_axis,
    iter_layers,
    partner_variables,
    regularized_targets,
)


class _Entry:
    """A target kernel with where its `lambda` and `alpha` come from."""

    def __init__(self, target, strength, alpha):
        self.target = target
        self._strength = strength  # float, or None: read the regularizer
        self.alpha = alpha

    def strength(self):
        if self._strength is not None:
            return self._strength
        return self.target.regularizer.effective_strength()


def _zero_groups(target, partners=True):
    """How many of `target`'s groups are exactly zero: kernel slice and
    partners (a BatchNorm's `gamma` / `beta`); the bias is not looked at."""
    joined = list(target.partners) if partners else None
    mask = zero_group_mask(target.kernel, axis=target.axis, partners=joined)
    return int(ops.convert_to_numpy(ops.sum(ops.cast(mask, "int32"))))


def _check_number(value, name, minimum=0.0, maximum=None, allow_zero=True):
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"`{name}` must be a number. Received: {name}={value!r}"
        ) from None
    ok = value >= minimum if allow_zero else value > minimum
    ok = ok and value != float("inf")
    if maximum is not None:
        ok = ok and value <= maximum
    if not ok:
        bounds = (
            f"in [{minimum}, {maximum}]"
            if maximum is not None
            else (f">= {minimum}" if allow_zero else f"> {minimum}")
        )
        raise ValueError(
            f"`{name}` must be finite and {bounds}. Received: {name}={value}"
        )
    return value


@keras.saving.register_keras_serializable(package="kprune")
class ProximalStep(keras.callbacks.Callback):
    """Applies the sparse group Lasso proximal operator during `fit`.

    The paper's method: the optimizer follows the gradient of the data loss
    only, and every `every_n_steps` steps (default: at the end of each
    epoch) each targeted layer's groups `theta_n = [kernel group n, bias n]`
    go through the proximal operator of `t * r` (`kprune.ops.sparse_group_prox`):

    1. `u = sign(theta) * max(|theta| - t * alpha * lambda, 0)`;
    2. `theta_n <- u_n * max(1 - t * (1 - alpha) * lambda * sqrt(P) / ||u_n||_2, 0)`.

    Groups whose norm drops below the threshold become **exactly zero**
    (kernel slice and bias), so `kprune.surgery.slim` can remove the units.

    BatchNorm: a layer whose output only a BatchNormalization reads (conv
    -> BN) has groups `[kernel slice, bias, gamma_n, beta_n]`, so a dead
    unit's BatchNorm outputs exactly 0 (scale invariance would otherwise
    hide the shrinking kernel, and a zero kernel alone leaves the constant
    `beta - gamma * mean / sqrt(var + eps)`). The partners are those the
    regularizer records (`partners=`, set by
    `kprune.sparsity.apply_group_sparsity`); for layers named in `layers=`
    without one, the BatchNorm found in the graph (`include_batchnorm`).

    Coupled units: one channel may be made by several targets (the convs
    whose outputs a residual `Add` joins; a depthwise conv and the conv
    before it), and `slim` removes it only when all of them stop making it.
    By default (`coupled=False`, the paper's grouping) every layer's units
    are its own groups: a unit of one branch may reach zero while another
    branch still makes its channel, and nothing is removed. With
    `coupled=True` their units form **one group** across those layers,
    `theta_c = [every member's kernel slice, bias, partners]`, shrunk by the
    norm of the whole (`kprune.ops.coupled_group_prox`, strength the
    parameter-weighted mean of the members'): the channel dies in every
    layer at once. A channel that cannot leave the model (also made by a
    layer without group sparsity, or pinned, e.g. a model output) is then
    not shrunk, with a warning naming the layers. The graph is read with
    `kprune.surgery`; a model it cannot read keeps per-layer groups.
    Measured (small ResNet-style CNN on MNIST, `SizeTarget` to 2x-16x fewer
    MACs, one epoch): `coupled=True` removed the last stage's residual
    channels first (their groups have the smallest root-mean-square entry,
    which is what `sqrt(P)` weighting ranks) and lost far more accuracy
    (65-79 % error) than per-layer groups with `SizeTarget`, which keeps a
    residual channel unless every layer's slice dies (7-74 %); hence the
    default. `SizeTarget` always decides on whole coupled groups.

    Targets: by default every layer whose kernel carries a kprune
    `GroupLasso` / `SparseGroupLasso` regularizer, with that regularizer's
    `lambda = strength * scale`, `alpha` and `axis`. Give those regularizers
    `mode="proximal"` (what `kprune.sparsity.apply_group_sparsity` does) so
    the penalty is not also in the loss; a `mode="penalty"` regularizer gets
    a warning, since its subgradient is then applied on top of the proximal
    step. Alternatively name the layers: `layers=["dense_1", ...]` with
    `strength=`, or `layers={"dense_1": 1e-3, ...}`; those need no
    regularizer. Layers that are not trainable are skipped.

    Step size `t`: the optimizer's current learning rate
    (`model.optimizer.learning_rate`, a schedule evaluated at
    `optimizer.iterations`), as in proximal SGD. With adaptive optimizers
    (Adam, RMSprop, ...) the actual step of each weight is `lr` scaled by
    its own running statistics, so `t = lr` is only a heuristic: the
    threshold `t * lambda` is then a tuning knob rather than the exact
    proximal-gradient step. Pass `step_size=` to fix `t` yourself (then
    `lambda` and `t` only matter through their product). Note that `t` does
    not grow with the number of SGD steps between two proximal steps: at
    epoch end (the paper's schedule), `lambda` acts once per epoch.

    Logs (added to `logs`, so progress bar / CSVLogger / TensorBoard show
    them): `prox_zero_groups` (units whose kernel group, BatchNorm partners
    included, is exactly zero, over all targets) and `prox_step_size` (the
    last `t`). Put this callback *before* `CSVLogger`, `ModelCheckpoint`,
    `BackupAndRestore` and `SparsityLogger` in `callbacks`, so they see the
    weights after the step.
    After `BackupAndRestore` it is refused when `fit` starts (a
    `ValueError`): the backup would hold the weights from before the step,
    and an interrupted run would resume to different weights. Unknown layer
    names are refused then too, before any training.
    Validation metrics of an epoch are computed by Keras before
    `on_epoch_end`, i.e. before that epoch's proximal step.

    With `every_n_steps`, the step counter is read once per epoch and
    advanced by the batch index, and the proximal step runs in
    `on_train_batch_begin` (before the first batch after each multiple of
    `n`, or at the epoch's end): batches without a proximal step do no
    device read, and the callback is `async_safe` (Keras may run its
    batch-end hook on its callback thread, on the JAX and PyTorch backends).
    The batch logs of the batch after a proximal step carry its figures.

    Backends: on JAX the weights live in the train state during an epoch;
    each mid-epoch proximal step first writes that state back into the model
    (`kprune._backend.sync_weights`: one Python-level `assign` per model and
    optimizer variable) and the next train step reads it again. The same
    proximal operator as a kernel constraint
    (`kprune.constraints.GroupSoftThreshold`, or
    `apply_group_sparsity(..., method="constraint")`) runs inside every
    optimizer step instead, with no Python per step and no write-back.

    Args:
        every_n_steps: apply every this many optimizer steps instead of at
            epoch end; `None` (default) means epoch end.
        step_size: fixed `t`; `None` uses the current learning rate.
        layers: `None` (layers with kprune group regularizers), a list of
            layer names, or a dict `{layer_name: strength}`.
        strength: `lambda` for every target (overrides the regularizers').
        alpha: L1 share in `[0, 1]` for every target; `None` takes the
            regularizer's (`0` without one).
        include_bias: join each unit's bias to its group (the paper's
            grouping). If `False`, biases are untouched.
        input_groups: `None`, or a dict `{layer_name: strength}`: a second
            grouping of those layers' kernels, one group per *input*
            feature (a Dense kernel's row, a convolution's input-channel
            slice; `P` = its weights, no bias), shrunk by the group
            soft-threshold `t * strength * sqrt(P)` just before the unit
            step (the two proximal operators in turn: a splitting of the
            sum of both penalties; shrinking the inputs first also shrinks
            the unit groups, so units die sooner than in the other order).
            Zero input groups of the first layer are input features
            `kprune.surgery.slim(model, prune_inputs=True)` stops reading;
            of a later layer, units of the layer before it that `slim`
            removes. Logged as `prox_zero_inputs`.
            Supported: Dense, Conv*D, Conv*DTranspose.
        reweight: `None` (the group Lasso), or `delta > 0`: the reweighted
            group Lasso, a majorize-minimize step of the log penalty
            (`kprune.ops.group_reweights`). Each group `n` (units and
            input groups alike) gets `lambda_n = lambda * m / (||theta_n||
            + delta * m)` at every step, `m` being the mean norm of that
            kernel's live groups: dying groups are pushed up to `1 / delta`
            times harder, strong ones barely shrink. Pruning then removes
            what the network does not use without shrinking what it does;
            input groups in particular no longer starve the units they
            feed. Weak groups die sooner, so a smaller `lambda` reaches
            the same sparsity. `0.1` is a good start.
        include_batchnorm: join a BatchNorm's `gamma` / `beta` to the
            groups of the layer it normalizes (the regularizer's
            `partners`, or for `layers=` without a regularizer the
            BatchNorm that alone reads the layer's output). If `False`,
            BatchNorm weights are untouched.
        coupled: one group for the units that leave the model together
            across layers (see above); `False` (default): per-layer groups.
            `reweight` weights stay per layer.

    Example:

    >>> import keras, kprune
    >>> model = keras.Sequential([
    ...     keras.Input((4,)),
    ...     keras.layers.Dense(16, activation="relu", kernel_regularizer=
    ...         kprune.regularizers.GroupLasso(50.0, mode="proximal")),
    ...     keras.layers.Dense(1)])
    >>> model.compile("sgd", "mse")
    >>> history = model.fit(keras.ops.ones((8, 4)), keras.ops.ones((8, 1)),
    ...     epochs=2, verbose=0, callbacks=[kprune.callbacks.ProximalStep()])
    >>> history.history["prox_zero_groups"][-1]  # huge strength: all units zero
    16

    Input features and units together (Dense inputs are pixels here):

    >>> model = keras.Sequential([
    ...     keras.Input((6,)),
    ...     keras.layers.Dense(8, activation="relu", name="fc1"),
    ...     keras.layers.Dense(1)])
    >>> model.compile("sgd", "mse")
    >>> step = kprune.callbacks.ProximalStep(
    ...     layers={"fc1": 0.0}, input_groups={"fc1": 100.0})
    >>> history = model.fit(keras.ops.ones((8, 6)), keras.ops.ones((8, 1)),
    ...     epochs=1, verbose=0, callbacks=[step])
    >>> history.history["prox_zero_inputs"][-1]  # every input row is zero
    6

    Reference:
        Alvarez & Salzmann, "Learning the Number of Neurons in Deep
        Networks", NeurIPS 2016 (arXiv 1611.06321). `reweight`: Candes,
        Wakin & Boyd, "Enhancing Sparsity by Reweighted l1 Minimization",
        2008 (arXiv 0711.1612).
    """

    def __init__(
        self,
        every_n_steps=None,
        step_size=None,
        layers=None,
        strength=None,
        alpha=None,
        include_bias=True,
        input_groups=None,
        reweight=None,
        include_batchnorm=True,
        coupled=False,
    ):
        super().__init__()
        if every_n_steps is not None:
            if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int):
                raise ValueError(
                    "`every_n_steps` must be a positive int or None. "
                    f"Received: every_n_steps={every_n_steps!r}"
                )
            if every_n_steps < 1:
                raise ValueError(
                    "`every_n_steps` must be a positive int or None. "
                    f"Received: every_n_steps={every_n_steps!r}"
                )
        self.every_n_steps = every_n_steps
        self.step_size = _check_number(step_size, "step_size", allow_zero=False)
        self.strength = _check_number(strength, "strength")
        self.alpha = _check_number(alpha, "alpha", maximum=1.0)
        if layers is not None:
            if isinstance(layers, str) or not isinstance(layers, (list, tuple, dict)):
                raise ValueError(
                    "`layers` must be None, a list of layer names or a dict "
                    f"{{layer_name: strength}}. Received: layers={layers!r}"
                )
            if isinstance(layers, dict):
                layers = {
                    str(k): _check_number(v, f"layers['{k}']")
                    for k, v in layers.items()
                }
            else:
                layers = [str(name) for name in layers]
        self.layers = layers
        if input_groups is not None:
            if not isinstance(input_groups, dict):
                raise ValueError(
                    "`input_groups` must be None or a dict {layer_name: "
                    f"strength}}. Received: input_groups={input_groups!r}"
                )
            input_groups = {
                str(k): _check_number(v, f"input_groups['{k}']")
                for k, v in input_groups.items()
            }
        self.input_groups = input_groups
        self.reweight = _check_number(reweight, "reweight", allow_zero=False)
        self.include_bias = bool(include_bias)
        self.include_batchnorm = bool(include_batchnorm)
        self.coupled = bool(coupled)
        # Epoch-end mode does nothing per batch: let Keras dispatch batch
        # callbacks asynchronously. Step mode must run in step with training.
        # Batch hooks only copy cached floats into `logs`.
        self.async_safe = True
        self._entries = None
        self._input_entries = None
        self._coupling = None
        self._bundle = ()
        self._last_iteration = None
        self._last_step_size = None
        self._epoch_base = 0
        self._pending = {}
        self.applications = 0  # proximal steps applied (SizeTarget reads it)

    # -- targets ---------------------------------------------------------

    def _resolve_inputs(self):
        """One kernel-only `_Entry` per `input_groups` layer (its input axis)."""
        entries = []
        for name, strength in (self.input_groups or {}).items():
            layer = find_layer(self.model, name, argument="input_groups")
            axis = input_axis(layer)
            if axis is None:
                raise ValueError(
                    f"ProximalStep cannot group the inputs of layer '{name}' "
                    f"({type(layer).__name__}): supported are Dense, Conv*D and "
                    f"Conv*DTranspose. Received: input_groups containing {name!r}"
                )
            target = GroupTarget(layer, "kernel", axis, with_bias=False)
            if target.kernel.trainable:
                entries.append(_Entry(target, strength, 0.0))
        return entries

    def _resolve(self):
        model = self.model
        entries = []
        if (
            self.layers is None
            and self.input_groups
            and not any(regularized_targets(layer) for layer in iter_layers(model))
        ):
            return []  # input groups only
        if self.layers is None:
            for layer in iter_layers(model):
                for target in regularized_targets(layer, model):
                    entries.append(self._entry(target))
            if not entries:
                raise ValueError(
                    f"ProximalStep found no layer in model '{model.name}' whose "
                    "kernel carries a kprune GroupLasso/SparseGroupLasso "
                    "regularizer. Attach them with "
                    "kprune.sparsity.apply_group_sparsity(model, strength), or "
                    "name the layers with layers=[...] and strength=... "
                    "Received: layers=None"
                )
        else:
            for name in self.layers:
                layer = find_layer(model, name)
                targets = regularized_targets(layer, model)
                if not targets:
                    target = default_target(layer, model)
                    if target is None:
                        raise ValueError(
                            f"ProximalStep cannot group the weights of layer "
                            f"'{name}' ({type(layer).__name__}): supported are "
                            "Dense, Conv*D, Conv*DTranspose, DepthwiseConv*D and "
                            f"SeparableConv*D. Received: layers containing {name!r}"
                        )
                    if not target.partners and self.include_batchnorm:
                        target.partners = partner_variables(
                            model, layer, batchnorm_partners(layer)
                        )
                    targets = [target]
                for target in targets:
                    entries.append(self._entry(target))
        entries = [e for e in entries if e.target.kernel.trainable]
        if not self.include_batchnorm:
            for entry in entries:
                entry.target.partners = ()
        for entry in entries:
            reg = entry.target.regularizer
            if reg is not None and reg.mode == "penalty":
                warnings.warn(
                    f"Layer '{entry.target.name}': its {type(reg).__name__} has "
                    "mode='penalty', so its subgradient is in the loss *and* "
                    "ProximalStep applies the proximal operator (the penalty "
                    "acts twice). For the paper's method use mode='proximal'.",
                    stacklevel=2,
                )
        return entries

    def _entry(self, target):
        name = target.name
        strength = self.strength
        if isinstance(self.layers, dict):
            strength = self.layers[name]
        if strength is None and target.regularizer is None:
            raise ValueError(
                f"Layer '{name}' has no kprune group regularizer, so ProximalStep "
                "needs its strength: pass strength=... or layers={name: "
                f"strength}}. Received: strength=None for layer {name!r}"
            )
        alpha = self.alpha
        if alpha is None:
            alpha = target.regularizer.alpha if target.regularizer is not None else 0.0
        return _Entry(target, strength, alpha)

    # -- the step --------------------------------------------------------

    def current_step_size(self):
        """The step size `t` now: `step_size`, or the optimizer's learning rate."""
        if self.step_size is not None:
            return self.step_size
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None:
            raise ValueError(
                "ProximalStep reads the learning rate from model.optimizer, but "
                f"model '{self.model.name}' is not compiled. Compile it or pass "
                "step_size=. Received: step_size=None"
            )
        return float(ops.convert_to_numpy(optimizer.learning_rate))

    def apply(self):
        """Apply the proximal operator to every target now.

        Returns:
            A dict with `prox_zero_groups` and `prox_step_size`.
        """
        if self._entries is None:
            self._entries = self._resolve()
            self._input_entries = self._resolve_inputs()
            self._couple()
        # JAX, mid-epoch: bring the in-flight weights (and the optimizer's
        # `iterations`, which a learning-rate schedule reads) back into the
        # variables; the next train step then reads what is assigned here.
        sync_weights(self.model)
        t = self.current_step_size()
        for entry in self._input_entries:
            target, lam = entry.target, entry.strength()
            if lam == 0.0:
                continue
            lam = self._strengths(target.kernel, None, target.axis, lam)
            kernel, _ = sparse_group_prox(target.kernel, None, t, lam, axis=target.axis)
            target.kernel.assign(kernel)
        bundle = set(self._bundle)
        for index, entry in enumerate(self._entries):
            target = entry.target
            lam = entry.strength()
            if lam == 0.0 or index in bundle:
                continue
            bias = target.bias if self.include_bias else None
            partners = list(target.partners)
            lam = self._strengths(target.kernel, bias, target.axis, lam, partners)
            kernel, bias_value, values = sparse_group_prox(
                target.kernel,
                bias,
                t,
                lam,
                alpha=entry.alpha,
                axis=target.axis,
                partners=partners,
            )
            target.kernel.assign(kernel)
            if bias is not None:
                bias.assign(bias_value)
            for variable, value in zip(partners, values):
                variable.assign(value)
        self._coupled_step(t)
        self._last_step_size = t
        self.applications += 1
        return self._stats()

    def _couple(self):
        """Find the targets whose units are coupled across layers."""
        self._coupling, self._bundle = None, ()
        if not self.coupled or not self._entries:
            return
        coupling = coupled_units(self.model, [e.target for e in self._entries])
        if coupling is None:
            return
        self._coupling = coupling
        self._bundle = tuple(i for i in range(len(self._entries)) if coupling.shared(i))
        notes = []
        for i in self._bundle:
            held = int(coupling.held[coupling.components[i]].sum())
            if not held:
                continue
            others = coupling.held_by.get(i)
            why = (
                f"also made by {others}, which carry no group sparsity"
                if others
                else "pinned: a model input or output, or read by a layer "
                "kprune cannot rebuild"
            )
            notes.append(f"{held} of '{self._entries[i].target.name}' ({why})")
        if notes:
            shown = "; ".join(notes[:10])
            more = f"; and {len(notes) - 10} more layers" if len(notes) > 10 else ""
            warnings.warn(
                "ProximalStep does not shrink units whose channels `slim` "
                f"could not remove: {shown}{more}. Give the layers named "
                "group sparsity too, or pass coupled=False to shrink every "
                "layer on its own.",
                stacklevel=2,
            )

    def _coupled_step(self, t):
        """The proximal step of the coupled targets, all at once."""
        if not self._bundle:
            return
        entries = [self._entries[i] for i in self._bundle]
        strengths = [entry.strength() for entry in entries]
        if not any(strengths):
            return
        members, alphas = [], []
        for entry, lam in zip(entries, strengths):
            target = entry.target
            bias = target.bias if self.include_bias else None
            partners = list(target.partners)
            lam = self._strengths(target.kernel, bias, target.axis, lam, partners)
            vectors = ([] if bias is None else [bias]) + partners
            members.append((target.kernel, vectors, target.axis, lam))
            alphas.append(entry.alpha)
        components = [self._coupling.components[i] for i in self._bundle]
        results = coupled_group_prox(
            members, components, t, alpha=alphas, held=self._coupling.held
        )
        for (kernel, vectors, _, _), (new_kernel, new_vectors) in zip(members, results):
            kernel.assign(new_kernel)
            for variable, value in zip(vectors, new_vectors):
                variable.assign(value)

    def _strengths(self, kernel, bias, axis, lam, partners=None):
        """`lambda`, or with `reweight` one `lambda_n` per group."""
        if self.reweight is None:
            return lam
        return lam * group_reweights(
            kernel, self.reweight, axis=axis, bias=bias, partners=partners
        )

    def _stats(self):
        sync_weights(self.model)
        zero = sum(_zero_groups(e.target) for e in self._entries)
        step = self._last_step_size
        if step is None:
            step = self.current_step_size()
        stats = {"prox_zero_groups": zero, "prox_step_size": step}
        if self.input_groups:
            stats["prox_zero_inputs"] = sum(
                _zero_groups(e.target, partners=False) for e in self._input_entries
            )
        return stats

    # -- callback hooks --------------------------------------------------

    def _iterations(self):
        # At epoch boundaries only, when the model's variables hold the state.
        return int(ops.convert_to_numpy(self.model.optimizer.iterations))

    def set_model(self, model):
        """Check the order and the layer names as soon as `fit` starts."""
        super().set_model(model)
        require_before_backup(self, "the weights (the proximal step)")
        for name in list(self.layers or []):
            find_layer(model, name)
        for name in self.input_groups or {}:
            find_layer(model, name, argument="input_groups")

    def on_train_begin(self, logs=None):
        self._entries = self._resolve()
        self._input_entries = self._resolve_inputs()
        self._couple()
        self._last_step_size = None
        self._last_iteration = None
        self._pending = {}

    def on_epoch_begin(self, epoch, logs=None):
        if self.every_n_steps is not None:
            # One read of the step counter per epoch, after every
            # on_train_begin (BackupAndRestore may have restored `iterations`
            # there); batches add their index, so batches without a proximal step
            # do no device read.
            self._epoch_base = self._iterations()
            if self._last_iteration is None:
                self._last_iteration = self._epoch_base
            self._maybe_apply(self._epoch_base)  # crossed by the last epoch

    def _maybe_apply(self, done):
        """Apply when `done` steps crossed a multiple of `every_n_steps`."""
        n = self.every_n_steps
        applied = done // n > self._last_iteration // n
        self._last_iteration = done
        return self.apply() if applied else None

    def on_train_batch_begin(self, batch, logs=None):
        if self.every_n_steps is not None:
            # `batch` steps of this epoch are done before this one runs.
            stats = self._maybe_apply(self._epoch_base + int(batch))
            if stats is not None:
                self._pending[int(batch)] = stats

    def on_train_batch_end(self, batch, logs=None):
        # Runs on Keras' async callback thread: it only moves the figures of
        # a proximal step applied before this batch into its logs.
        done = [b for b in list(self._pending) if b <= batch]
        for b in sorted(done):
            stats = self._pending.pop(b)
            if logs is not None:
                logs.update(stats)

    def on_epoch_end(self, epoch, logs=None):
        if self.every_n_steps is None:
            stats = self.apply()
        else:
            # A multiple of n reached by the epoch's last step is applied
            # here, not one step later.
            stats = self._maybe_apply(self._iterations()) or self._stats()
        if logs is not None:
            logs.update(stats)

    # -- serialization ---------------------------------------------------

    def get_config(self):
        layers = self.layers
        if isinstance(layers, dict):
            layers = dict(layers)
        elif layers is not None:
            layers = list(layers)
        return {
            "every_n_steps": self.every_n_steps,
            "step_size": self.step_size,
            "layers": layers,
            "strength": self.strength,
            "alpha": self.alpha,
            "include_bias": self.include_bias,
            "input_groups": (
                None if self.input_groups is None else dict(self.input_groups)
            ),
            "reweight": self.reweight,
            "include_batchnorm": self.include_batchnorm,
            "coupled": self.coupled,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
