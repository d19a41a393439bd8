"""One call to put a whole model under group sparsity.

`apply_group_sparsity(model, strength)` returns a copy of `model` whose
hidden Dense / Conv layers carry `GroupLasso` (or `SparseGroupLasso`)
regularizers, ready for `fit` with `kprune.callbacks.ProximalStep`; with
`method="constraint"`, `GroupSoftThreshold` (or `SparseGroupSoftThreshold`)
constraints that apply the proximal step inside every optimizer step.
`strip_group_sparsity(model)` removes them again.
"""

import warnings

import keras

from kprune.constraints.group_soft_threshold import (
    GroupSoftThreshold,
    SparseGroupSoftThreshold,
    is_group_constraint,
)
from kprune.regularizers.group_lasso import (
    GroupLasso,
    SparseGroupLasso,
    is_group_regularizer,
)
from kprune.regularizers.targets import (
    _CONSTRAINT_ATTRS,
    _REGULARIZER_ATTRS,
    batchnorm_partners,
    constraint_slot,
    default_slot,
    is_groupable,
    iter_layers,
)
from kprune.surgery.compiling import clone_model

_MODES = ("proximal", "penalty")
_METHODS = ("callback", "constraint")


def _producer(tensor):
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        return None, None
    operation, node_index = history[0], history[1]
    return operation, operation._inbound_nodes[node_index]


def _is_input(operation):
    return isinstance(operation, keras.layers.InputLayer)


def _trace_back(model):
    """Groupable layers that make `model`'s outputs, and whether an output
    reaches an input through channel-preserving layers only."""
    names, passthrough = set(), False
    stack, seen = list(keras.tree.flatten(model.outputs)), set()
    while stack:
        tensor = stack.pop()
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        operation, node = _producer(tensor)
        if operation is None or _is_input(operation):
            passthrough = True
            continue
        if is_groupable(operation):
            names.add(operation.name)
            continue
        if isinstance(operation, keras.Model):
            inner, inner_passthrough = _trace_back(operation)
            names |= inner
            if not inner_passthrough:
                continue
        stack.extend(node.input_tensors)
    return names, passthrough


def _output_layers(model):
    """Names of the layers whose units are the model's outputs."""
    return _trace_back(model)[0]


def _first_layers(model):
    """Names of the groupable layers that read the model inputs (through
    channel-preserving layers only)."""
    memo = {}

    def raw(tensor):
        key = id(tensor)
        if key not in memo:
            memo[key] = False
            operation, node = _producer(tensor)
            if operation is None or _is_input(operation):
                memo[key] = True
            elif is_groupable(operation):
                memo[key] = False
            elif isinstance(operation, keras.Model) and not _trace_back(operation)[1]:
                memo[key] = False
            else:
                memo[key] = any(raw(t) for t in node.input_tensors)
        return memo[key]

    names = set()
    for layer in model.layers:
        fed = any(raw(t) for node in layer._inbound_nodes for t in node.input_tensors)
        if not fed:
            continue
        if is_groupable(layer):
            names.add(layer.name)
        elif isinstance(layer, keras.Model):
            names |= _first_layers(layer)
    return names


def _check_model(model):
    if not isinstance(model, keras.Model):
        raise ValueError(f"`model` must be a keras.Model. Received: model={model!r}")
    from keras.src.models.functional import Functional

    if not isinstance(model, (keras.Sequential, Functional)):
        raise ValueError(
            "apply_group_sparsity clones the model, which Keras can do for "
            "Sequential and Functional models only. For a subclassed model, "
            "pass kernel_regularizer=kprune.regularizers.GroupLasso(..., "
            "mode='proximal') to its layers yourself. "
            f"Received: model of type {type(model).__name__}"
        )
    if not model.built or not model.outputs:
        raise ValueError(
            f"Model '{model.name}' is not built. Give it an Input (or call "
            f"`model.build(input_shape)`) first. Received: model={model.name!r}"
        )


def apply_group_sparsity(
    model,
    strength,
    alpha=0.0,
    layers=None,
    strength_per_layer=None,
    first_layer_scale=1.0,
    mode="proximal",
    method="callback",
    batchnorm=True,
):
    """A copy of `model` with group sparsity on its hidden layers.

    Layer `l` gets `GroupLasso(strength, scale=s_l, mode=mode)` (or
    `SparseGroupLasso(strength, alpha, ...)` when `alpha > 0`) on the kernel
    that makes its output units, so its penalty is

    `r_l = lambda_l * [(1 - alpha) * sqrt(P_l) * sum_n ||theta_l^n||_2
    + alpha * ||theta_l||_1]`, `lambda_l = strength * s_l`,

    with `s_l = first_layer_scale` for the layers that read the model inputs,
    `strength_per_layer[name] / strength` where given, `1` otherwise. A
    `RegularizationScheduler` changes `strength` and keeps the `s_l`.

    BatchNorm joins the groups (`batchnorm=True`, default): when a layer's
    output is read by a BatchNormalization and by nothing else (conv -> BN,
    every modern CNN), unit `n`'s group is `[kernel slice, bias, gamma_n,
    beta_n]` (`beta` absent with `center=False`; `P` counts them).
    BatchNorm is scale invariant, so a shrinking kernel alone changes
    nothing until it is zero, and then the channel outputs the constant
    `beta - gamma * mean / sqrt(var + eps)`; with the whole group zero it
    outputs exactly 0 and `kprune.surgery.slim` removes it. A BatchNorm
    without `gamma` (`scale=False`) cannot be silenced by its weights (it
    outputs `-mean / sqrt(var + eps)`) and does not join. The
    regularizers / constraints record the BatchNorm's weights as
    `partners=["bn/gamma", "bn/beta"]`, which `ProximalStep`, the
    constraints, `SizeTarget` and `SparsityLogger` use (the
    `mode="penalty"` loss term stays on the kernel).

    The layers whose units *are* the outputs (the last Dense/Conv on every
    path to an output, e.g. the classifier) are never regularized. The input
    model is not modified: the result is a `keras.models.clone_model` copy
    (nested models included) with the same weights. Compile it, then:

    - `mode="proximal"` (default, the paper's method): the loss holds the
      data term only and whole units become exactly zero. How the proximal
      step runs is `method`:
      - `method="callback"` (default): fit with
        `kprune.callbacks.ProximalStep()` (every `n` steps or at epoch
        end, from Python).
      - `method="constraint"`: layer `l` gets a
        `kprune.constraints.GroupSoftThreshold(strength, scale=s_l)` (or
        `SparseGroupSoftThreshold`) as its kernel constraint, which applies
        the proximal step with the optimizer's learning rate inside every
        optimizer step; no callback and no regularizer. The step runs at
        every step, so `strength` is about `1 / n` of what
        `ProximalStep(every_n_steps=n)` needs.
    - `mode="penalty"`: the regularizers add their penalty to the loss
      (subgradient descent, no callback needed; no exact zeros).

    Args:
        model: a built Sequential or Functional model.
        strength: `lambda >= 0`.
        alpha: L1 share in `[0, 1]`; `0` gives `GroupLasso`, more gives
            `SparseGroupLasso`.
        layers: names of the layers to regularize; `None` means every
            trainable Dense, Conv*D, Conv*DTranspose, DepthwiseConv*D and
            SeparableConv*D layer except the output layers.
        strength_per_layer: optional `{layer_name: lambda}` overriding the
            strength of some layers (needs `strength > 0`).
        first_layer_scale: multiplier of `strength` for the layers that read
            the inputs (the paper uses a smaller `lambda` for the first
            layers).
        mode: `"proximal"` or `"penalty"`.
        method: `"callback"` (regularizers for `ProximalStep`) or
            `"constraint"` (constraints, `mode="proximal"` only).
        batchnorm: join the `gamma` / `beta` of a BatchNormalization that
            alone reads a layer's output to that layer's groups.

    Returns:
        A new `keras.Model` (not compiled).

    Example:

    >>> import keras, kprune.sparsity
    >>> model = keras.Sequential([keras.Input((784,)),
    ...     keras.layers.Dense(300, activation="relu"),
    ...     keras.layers.Dense(100, activation="relu"),
    ...     keras.layers.Dense(10, activation="softmax")])
    >>> sparse = kprune.sparsity.apply_group_sparsity(model, 1e-4)
    >>> [type(l.kernel_regularizer).__name__ for l in sparse.layers]
    ['GroupLasso', 'GroupLasso', 'NoneType']
    >>> sparse.compile("sgd", "sparse_categorical_crossentropy")
    >>> # sparse.fit(x, y, callbacks=[kprune.callbacks.ProximalStep()])
    >>> sparse = kprune.sparsity.apply_group_sparsity(
    ...     model, 2e-6, method="constraint")
    >>> [type(l.kernel_constraint).__name__ for l in sparse.layers]
    ['GroupSoftThreshold', 'GroupSoftThreshold', 'NoneType']
    >>> sparse.compile("sgd", "sparse_categorical_crossentropy")
    >>> # sparse.fit(x, y)  # the proximal step runs inside every SGD step

    A convolution followed by BatchNorm: the BatchNorm joins its groups.

    >>> cnn = keras.Sequential([keras.Input((8, 8, 1)),
    ...     keras.layers.Conv2D(4, 3, use_bias=False, name="conv"),
    ...     keras.layers.BatchNormalization(name="bn"), keras.layers.ReLU(),
    ...     keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
    >>> sparse = kprune.sparsity.apply_group_sparsity(cnn, 1e-3)
    >>> sparse.get_layer("conv").kernel_regularizer.partners
    ('bn/gamma', 'bn/beta')

    Reference:
        Alvarez & Salzmann, "Learning the Number of Neurons in Deep
        Networks", NeurIPS 2016 (arXiv 1611.06321).
    """
    _check_model(model)
    strength = float(strength)
    if not strength >= 0.0:
        raise ValueError(f"`strength` must be >= 0. Received: strength={strength}")
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"`alpha` must be in [0, 1]. Received: alpha={alpha}")
    batchnorm = bool(batchnorm)
    first_layer_scale = float(first_layer_scale)
    if not first_layer_scale >= 0.0:
        raise ValueError(
            "`first_layer_scale` must be >= 0. "
            f"Received: first_layer_scale={first_layer_scale}"
        )
    if mode not in _MODES:
        raise ValueError(f"`mode` must be one of {_MODES}. Received: mode={mode!r}")
    if method not in _METHODS:
        raise ValueError(
            f"`method` must be one of {_METHODS}. Received: method={method!r}"
        )
    if method == "constraint" and mode != "proximal":
        raise ValueError(
            "method='constraint' applies the proximal step; a penalty in the "
            "loss is mode='penalty' with method='callback' (no callback "
            f"needed). Received: mode={mode!r}, method={method!r}"
        )
    strength_per_layer = dict(strength_per_layer or {})
    if strength_per_layer and strength == 0.0:
        raise ValueError(
            "`strength_per_layer` is applied relative to `strength`, which must "
            "then be > 0. Received: strength=0.0"
        )

    all_layers = {layer.name: layer for layer in iter_layers(model)}
    outputs = _output_layers(model)
    if layers is None:
        chosen = [
            layer
            for layer in all_layers.values()
            if is_groupable(layer) and layer.trainable and layer.name not in outputs
        ]
    else:
        if isinstance(layers, str) or not isinstance(layers, (list, tuple)):
            raise ValueError(
                "`layers` must be None or a list of layer names. "
                f"Received: layers={layers!r}"
            )
        chosen = []
        for name in layers:
            layer = all_layers.get(name)
            if layer is None:
                raise ValueError(
                    f"No layer named '{name}' in model '{model.name}'. "
                    f"Received: layers containing {name!r}"
                )
            if not is_groupable(layer):
                raise ValueError(
                    f"Layer '{name}' ({type(layer).__name__}) has no kernel "
                    "kprune can group per output unit (supported: Dense, Conv*D, "
                    "Conv*DTranspose, DepthwiseConv*D, SeparableConv*D). "
                    f"Received: layers containing {name!r}"
                )
            if name in outputs:
                raise ValueError(
                    f"Layer '{name}' makes the model's outputs; removing its "
                    "units would change the output shape, so it is never "
                    f"regularized. Received: layers containing {name!r}"
                )
            if not layer.trainable:
                raise ValueError(
                    f"Layer '{name}' is not trainable. "
                    f"Received: layers containing {name!r}"
                )
            chosen.append(layer)
    if not chosen:
        raise ValueError(
            f"Model '{model.name}' has no trainable hidden Dense/Conv layer to "
            "put under group sparsity (the layers making the outputs are never "
            f"regularized). Received: layers={layers!r}"
        )
    chosen_names = {layer.name for layer in chosen}
    for name in strength_per_layer:
        if name not in chosen_names:
            raise ValueError(
                f"`strength_per_layer` names layer '{name}', which is not among "
                f"the regularized layers {sorted(chosen_names)}. "
                f"Received: strength_per_layer={strength_per_layer!r}"
            )

    firsts = _first_layers(model)
    plan = {}
    for layer in chosen:
        _, reg_attr, axis = default_slot(layer)
        if layer.name in strength_per_layer:
            value = float(strength_per_layer[layer.name])
            if not value >= 0.0:
                raise ValueError(
                    f"`strength_per_layer['{layer.name}']` must be >= 0. "
                    f"Received: strength_per_layer={strength_per_layer!r}"
                )
            scale = value / strength
        elif layer.name in firsts:
            scale = first_layer_scale
        else:
            scale = 1.0
        partners = batchnorm_partners(layer) if batchnorm else ()
        if method == "constraint":
            attr = constraint_slot(layer)
            existing = getattr(layer, attr, None)
            if existing is not None and not is_group_constraint(existing):
                warnings.warn(
                    f"Layer '{layer.name}': replacing its {attr} "
                    f"{existing!r} with a group-sparsity constraint.",
                    stacklevel=2,
                )
            if alpha > 0.0:
                obj = SparseGroupSoftThreshold(
                    strength, alpha, scale=scale, axis=axis, partners=partners
                )
            else:
                obj = GroupSoftThreshold(
                    strength, scale=scale, axis=axis, partners=partners
                )
            plan[id(layer)] = (attr, obj)
            continue
        existing = getattr(layer, reg_attr, None)
        if existing is not None and not is_group_regularizer(existing):
            warnings.warn(
                f"Layer '{layer.name}': replacing its {reg_attr} "
                f"{existing!r} with a group-sparsity regularizer.",
                stacklevel=2,
            )
        if alpha > 0.0:
            reg = SparseGroupLasso(
                strength, alpha, scale=scale, axis=axis, mode=mode, partners=partners
            )
        else:
            reg = GroupLasso(
                strength, scale=scale, axis=axis, mode=mode, partners=partners
            )
        plan[id(layer)] = (reg_attr, reg)

    def clone_function(layer):
        config = layer.get_config()
        if id(layer) in plan:
            reg_attr, reg = plan[id(layer)]
            config[reg_attr] = reg
        return layer.__class__.from_config(config)

    clone = clone_model(
        model, compile=False, clone_function=clone_function, recursive=True
    )
    weights = model.get_weights()
    clone_shapes = [tuple(w.shape) for w in clone.weights]
    if clone_shapes != [tuple(w.shape) for w in weights]:
        raise ValueError(
            f"Could not copy the weights of model '{model.name}' into its clone "
            "(the clone's weights differ in number or shape). "
            f"Received: model={model.name!r}"
        )
    clone.set_weights(weights)
    return clone


def strip_group_sparsity(model):
    """A copy of `model` without kprune's group-sparsity regularizers and constraints.

    Removes every `GroupLasso` / `SparseGroupLasso` regularizer and
    `GroupSoftThreshold` / `SparseGroupSoftThreshold` constraint (nested
    models included) and keeps everything else, weights included: zero
    units stay zero. `kprune.surgery.slim` keeps them (training the slimmed
    model further under group sparsity is a valid use); strip them for
    plain fine-tuning, where a constraint would go on pruning at every step.
    The input model is not modified.

    Args:
        model: a Sequential or Functional model.

    Returns:
        A new `keras.Model` (not compiled).

    Example:

    >>> import keras, kprune.sparsity
    >>> model = keras.Sequential([keras.Input((4,)),
    ...     keras.layers.Dense(8, name="hidden"), keras.layers.Dense(1)])
    >>> sparse = kprune.sparsity.apply_group_sparsity(model, 1e-3,
    ...     method="constraint")
    >>> plain = kprune.sparsity.strip_group_sparsity(sparse)
    >>> plain.get_layer("hidden").kernel_constraint is None
    True
    """
    _check_model(model)
    attrs = _REGULARIZER_ATTRS + _CONSTRAINT_ATTRS
    plan = {}
    for layer in iter_layers(model):
        found = [
            attr
            for attr in attrs
            if is_group_regularizer(getattr(layer, attr, None))
            or is_group_constraint(getattr(layer, attr, None))
        ]
        if found:
            plan[id(layer)] = found

    def clone_function(layer):
        config = layer.get_config()
        for attr in plan.get(id(layer), ()):
            config[attr] = None
        return layer.__class__.from_config(config)

    clone = clone_model(
        model, compile=False, clone_function=clone_function, recursive=True
    )
    clone.set_weights(model.get_weights())
    return clone
