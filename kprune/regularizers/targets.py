"""Which kernel of which layer carries the groups (one group per output unit).

A group may also hold *partners*: per-unit vectors of another layer that
must die with the unit, namely the `gamma` and `beta` of a
BatchNormalization that alone reads the layer's output
(`batchnorm_partners`). BatchNorm is scale invariant, so a shrinking kernel
changes nothing until it is zero, and then the channel outputs the constant
`beta - gamma * mean / sqrt(var + eps)`; with `gamma = beta = 0` it
outputs exactly 0 and `kprune.surgery.slim` removes it. A regularizer or
constraint records its partners as `"<BatchNorm layer name>/<weight>"`
(e.g. `"bn1/gamma"`): callbacks find them by layer name in the model, a
constraint by variable path next to its kernel's layer.

Shared by `kprune.callbacks.ProximalStep`, `SparsityLogger`,
`RegularizationScheduler` and `kprune.sparsity.apply_group_sparsity`.
"""

import dataclasses

import keras

from kprune.ops.group_sparsity import num_units, unit_axes
from kprune.regularizers.group_lasso import is_group_regularizer

_REGULARIZER_ATTRS = (
    "kernel_regularizer",
    "depthwise_regularizer",
    "pointwise_regularizer",
    "bias_regularizer",
)
_CONSTRAINT_ATTRS = (
    "kernel_constraint",
    "depthwise_constraint",
    "pointwise_constraint",
    "bias_constraint",
)

_TRANSPOSE = (
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
)
_DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
_SEPARABLE = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
_CONV = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)


def _slots(layer):
    """(kernel attribute, regularizer attribute) pairs of `layer`."""
    if isinstance(layer, _DEPTHWISE):
        return (("kernel", "depthwise_regularizer"),)
    if isinstance(layer, _SEPARABLE):
        return (
            ("depthwise_kernel", "depthwise_regularizer"),
            ("pointwise_kernel", "pointwise_regularizer"),
        )
    return (("kernel", "kernel_regularizer"),)


def default_slot(layer):
    """The kernel that makes `layer`'s output units, or `None` if unsupported.

    Args:
        layer: a Keras layer.

    Returns:
        `(kernel_attr, regularizer_attr, axis)` or `None`.
    """
    if isinstance(layer, _TRANSPOSE):
        return ("kernel", "kernel_regularizer", -2)
    if isinstance(layer, _DEPTHWISE):
        return ("kernel", "depthwise_regularizer", (-2, -1))
    if isinstance(layer, _SEPARABLE):
        return ("pointwise_kernel", "pointwise_regularizer", -1)
    if isinstance(layer, (keras.layers.Dense,) + _CONV):
        return ("kernel", "kernel_regularizer", -1)
    return None


def input_axis(layer):
    """The kernel axis indexing `layer`'s input features, or `None`.

    Dense `(in, units)`: 0; Conv1D/2D/3D `(*k, in, filters)`: -2;
    Conv*DTranspose `(*k, filters, in)`: -1. Depthwise and separable
    convolutions (whose inputs map to their own outputs) are not supported.

    Args:
        layer: a Keras layer.

    Returns:
        An int, or `None`.
    """
    if isinstance(layer, _TRANSPOSE):
        return -1
    if isinstance(layer, _DEPTHWISE + _SEPARABLE):
        return None
    if isinstance(layer, _CONV):
        return -2
    if isinstance(layer, keras.layers.Dense):
        return 0
    return None


def is_groupable(layer):
    """Whether kprune knows the output-unit groups of `layer`'s kernel."""
    return default_slot(layer) is not None


@dataclasses.dataclass
class GroupTarget:
    """One kernel under group sparsity.

    Attributes:
        layer: the layer.
        kernel_attr: attribute name of the kernel variable.
        axis: kernel axes indexing output units.
        with_bias: whether the layer's bias joins the groups.
        regularizer: the kprune group regularizer on that kernel, or `None`.
        partners: more per-unit variables joined to the groups (a
            BatchNorm's `gamma` / `beta`), a tuple.
    """

    layer: object
    kernel_attr: str
    axis: object
    with_bias: bool
    regularizer: object = None
    partners: tuple = ()

    @property
    def name(self):
        return self.layer.name

    @property
    def kernel(self):
        return getattr(self.layer, self.kernel_attr)

    @property
    def bias(self):
        return self.layer.bias if self.with_bias else None

    @property
    def units(self):
        return num_units(self.kernel.shape, self.axis)

    def vectors(self, include_bias=True):
        """The per-unit variables of the groups: the bias (if joined and
        `include_bias`), then the partners."""
        bias = self.bias if include_bias else None
        return ([] if bias is None else [bias]) + list(self.partners)


def _channel_axis(layer, rank):
    if getattr(layer, "data_format", "channels_last") == "channels_first":
        return 1
    return rank - 1


def batchnorm_partner(layer):
    """The BatchNormalization that alone reads `layer`'s output, or `None`.

    Found in the Keras graph: `layer` is called once, its output has exactly
    one consumer, a trainable `BatchNormalization` (called once) normalizing
    the channel axis, with a `gamma` (`scale=True`). Without `gamma` a zero
    group leaves the channel at `-moving_mean / sqrt(moving_var + eps)`
    (plus `beta`): no weight of the BatchNorm can silence it, so it is not
    a partner.

    Args:
        layer: a Keras layer of a built Functional / Sequential model.

    Returns:
        The BatchNormalization layer, or `None`.
    """
    inbound = getattr(layer, "_inbound_nodes", [])
    outbound = getattr(layer, "_outbound_nodes", [])
    if len(inbound) != 1 or len(outbound) != 1:
        return None
    node = outbound[0]
    bn = node.operation
    if not isinstance(bn, keras.layers.BatchNormalization):
        return None
    if len(bn._inbound_nodes) != 1 or not bn.trainable:
        return None
    if not bn.scale:
        return None
    produced = inbound[0].output_tensors
    read = node.input_tensors
    if len(produced) != 1 or len(read) != 1 or read[0] is not produced[0]:
        return None
    rank = len(produced[0].shape)
    axes = bn.axis if isinstance(bn.axis, (list, tuple)) else [bn.axis]
    if [int(a) % rank for a in axes] != [_channel_axis(layer, rank)]:
        return None
    return bn


def batchnorm_partners(layer):
    """The partners of `layer`'s output units: its BatchNorm's `gamma`, `beta`.

    Args:
        layer: a Keras layer of a built Functional / Sequential model.

    Returns:
        A tuple of `"<BatchNorm layer name>/<weight>"` strings: `gamma`,
        then `beta` unless `center=False`; empty without such a BatchNorm
        (see `batchnorm_partner`).

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((8, 8, 3)),
    ...     keras.layers.Conv2D(4, 3, name="conv"),
    ...     keras.layers.BatchNormalization(name="bn")])
    >>> batchnorm_partners(model.get_layer("conv"))
    ('bn/gamma', 'bn/beta')
    """
    bn = batchnorm_partner(layer)
    if bn is None:
        return ()
    names = [name for name, on in (("gamma", bn.scale), ("beta", bn.center)) if on]
    return tuple(f"{bn.name}/{name}" for name in names)


def holder_partners(layer):
    """The partners recorded by the kprune group regularizer / constraint on
    `layer`'s output-unit kernel (`()` if none)."""
    slot = default_slot(layer)
    if slot is None:
        return ()
    for attr in (slot[1], slot[1].replace("_regularizer", "_constraint")):
        partners = getattr(getattr(layer, attr, None), "partners", None)
        if partners:
            return tuple(partners)
    return ()


def partner_variables(model, layer, partners):
    """The variables named by `partners` in `model`, checked per unit.

    Args:
        model: the model holding `layer`.
        layer: the layer whose output units the partners join.
        partners: `"<layer name>/<weight>"` strings.

    Returns:
        A tuple of `keras.Variable`s, one entry per output unit each.
    """
    found = []
    if not partners:
        return ()
    slot = default_slot(layer)
    units = num_units(getattr(layer, slot[0]).shape, slot[2])
    for partner in partners:
        name, _, attr = partner.rpartition("/")
        owner = find_layer(model, name, argument="partners")
        variable = getattr(owner, attr, None)
        if not isinstance(variable, keras.Variable):
            raise ValueError(
                f"Layer '{layer.name}': its group partner '{partner}' is not a "
                f"weight of layer '{name}' ({type(owner).__name__}). "
                f"Received: partners containing {partner!r}"
            )
        if tuple(variable.shape) != (units,):
            raise ValueError(
                f"Layer '{layer.name}' has {units} output units, but its group "
                f"partner '{partner}' has shape {tuple(variable.shape)} (one "
                "entry per unit needed). Received: partners containing "
                f"{partner!r}"
            )
        found.append(variable)
    return tuple(found)


def iter_layers(model):
    """All layers of `model`, nested models and sublayers included (no duplicates)."""
    if hasattr(model, "_flatten_layers"):
        return list(model._flatten_layers(include_self=False, recursive=True))
    return list(getattr(model, "layers", []))


def _built_kernel(layer, kernel_attr):
    kernel = getattr(layer, kernel_attr, None)
    if kernel is None:
        raise ValueError(
            f"Layer '{layer.name}' is not built, so its kernel has no shape yet. "
            "Build the model (give it an Input or call it on data) first. "
            f"Received: layer={layer.name!r}"
        )
    return kernel


def _is_output_axis(layer, kernel_attr, axis):
    """Whether `axis` of `kernel_attr` indexes the layer's output units."""
    slot = default_slot(layer)
    if slot is None or slot[0] != kernel_attr:
        return False
    ndim = len(getattr(layer, kernel_attr).shape)
    return unit_axes(ndim, axis) == unit_axes(ndim, slot[2])


def _bias_fits(layer, kernel_attr, axis):
    bias = getattr(layer, "bias", None)
    return bias is not None and _is_output_axis(layer, kernel_attr, axis)


def regularized_targets(layer, model=None):
    """`GroupTarget`s for every kernel of `layer` carrying a kprune group regularizer.

    The bias joins the groups when they are the layer's output units, and
    so do the regularizer's `partners` (found in `model`, when given). Other
    groupings (e.g. `axis=0` on a Dense kernel: one group per *input*
    feature) are kernel-only.

    Raises:
        ValueError: for a DepthwiseConv whose regularizer `axis` is not
            `(-2, -1)` (almost surely a mistake: `axis=-1` would make one
            group per depth multiplier across all channels).
    """
    targets = []
    for kernel_attr, reg_attr in _slots(layer):
        reg = getattr(layer, reg_attr, None)
        if not is_group_regularizer(reg):
            continue
        kernel = _built_kernel(layer, kernel_attr)
        output_axis = _is_output_axis(layer, kernel_attr, reg.axis)
        if isinstance(layer, _DEPTHWISE) and not output_axis:
            raise ValueError(
                f"Layer '{layer.name}': the {type(reg).__name__} on "
                f"`{reg_attr}` groups the kernel of shape {tuple(kernel.shape)} "
                f"into {num_units(kernel.shape, reg.axis)} groups, not one per "
                "output channel. Use axis=(-2, -1) for "
                f"{type(layer).__name__}. Received: axis={reg.axis!r}"
            )
        with_bias = _bias_fits(layer, kernel_attr, reg.axis)
        partners = ()
        if model is not None and output_axis:
            partners = partner_variables(model, layer, getattr(reg, "partners", ()))
        targets.append(
            GroupTarget(layer, kernel_attr, reg.axis, with_bias, reg, partners)
        )
    return targets


def default_target(layer, model=None):
    """The `GroupTarget` of `layer`'s output units, or `None` if unsupported.

    Its `regularizer` is the kprune group regularizer grouping those output
    units, if there is one; its `partners` those recorded by the layer's
    kprune group regularizer or constraint (found in `model`, when given).
    """
    slot = default_slot(layer)
    if slot is None:
        return None
    kernel_attr, reg_attr, axis = slot
    _built_kernel(layer, kernel_attr)
    reg = getattr(layer, reg_attr, None)
    if not (
        is_group_regularizer(reg) and _is_output_axis(layer, kernel_attr, reg.axis)
    ):
        reg = None
    partners = ()
    if model is not None:
        partners = partner_variables(model, layer, holder_partners(layer))
    return GroupTarget(
        layer, kernel_attr, axis, _bias_fits(layer, kernel_attr, axis), reg, partners
    )


def find_layer(model, name, argument="layers"):
    """The layer of `model` (nested included) called `name`, or ValueError.

    The error lists the model's layer names (the first 40).
    """
    names = []
    for layer in iter_layers(model):
        if layer.name == name:
            return layer
        names.append(layer.name)
    shown = ", ".join(repr(n) for n in names[:40])
    if len(names) > 40:
        shown += f", ... ({len(names)} layers)"
    raise ValueError(
        f"No layer named '{name}' in model '{model.name}'. Its layers: "
        f"{shown}. Received: {argument} containing {name!r}"
    )


def constraint_slot(layer):
    """The constraint attribute of `layer`'s output-unit kernel, or `None`.

    `kernel_constraint` for Dense / Conv*D / Conv*DTranspose,
    `depthwise_constraint` for DepthwiseConv*D, `pointwise_constraint` for
    SeparableConv*D (the regularizer attribute of `default_slot`, renamed).

    Args:
        layer: a Keras layer.

    Returns:
        A string, or `None` if the layer is not supported.
    """
    slot = default_slot(layer)
    if slot is None:
        return None
    return slot[1].replace("_regularizer", "_constraint")


def strength_holders(model):
    """Every distinct regularizer or constraint of `model` with a live strength.

    The one interface that kprune's schedules drive: an object attached to a
    layer (`*_regularizer` or `*_constraint`) whose `strength` attribute is
    a non-trainable `keras.Variable`, used as `lambda = strength * scale`
    (`scale`, when present, a fixed per-layer float the schedules keep).
    kprune's `GroupLasso` / `SparseGroupLasso` regularizers and
    `GroupSoftThreshold` / `SparseGroupSoftThreshold` constraints have one.
    A schedule assigns `holder.strength.assign(value)`; on JAX it then
    recompiles the train step (`kprune._backend.retrace`), since the value
    is baked in at trace time.

    Args:
        model: a Keras model.

    Returns:
        A list of `(layer, holder)` pairs, each holder once, in layer order.
    """
    seen = set()
    found = []
    for layer in iter_layers(model):
        for attr in _REGULARIZER_ATTRS + _CONSTRAINT_ATTRS:
            obj = getattr(layer, attr, None)
            if obj is None or id(obj) in seen:
                continue
            if isinstance(getattr(obj, "strength", None), keras.Variable):
                seen.add(id(obj))
                found.append((layer, obj))
    return found


def group_regularizers(model):
    """Every distinct regularizer *or constraint* of `model` with a live strength.

    The same as `strength_holders` (kept under its old name).

    Args:
        model: a Keras model.

    Returns:
        A list of `(layer, regularizer_or_constraint)` pairs, each once.
    """
    return strength_holders(model)
