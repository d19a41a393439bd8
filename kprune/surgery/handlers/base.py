"""The handler registry and the base class of per-layer handlers.

Handlers say how each layer class moves, uses and loses channels.

A handler answers four questions about a layer call (a node):

1. `connect`: which input channels are the *same* channels as which output
   channels (they must be removed together: `ctx.tie`), and which channels
   can never be removed (`ctx.pin`, e.g. a layer kprune does not understand)
   or can only be removed at the cost of exactness (`ctx.pin_exact`, e.g.
   LayerNormalization mixes all channels into its statistics).
2. `uses`: for layers with weights that *consume* input channels (Dense,
   Conv, ...), which input channel feeds which output unit.
3. `constant_mask`: which output channels are constant when the given input
   channels are constant (the values themselves are computed by running the
   layer).
4. `rebuild`: the config and weights of the smaller layer.

Users teach kprune their own layers with `register_handler`:

```python
class MyScaleHandler(kprune.surgery.ChannelwiseHandler):
    pass  # per-channel weights on the last axis are sliced automatically

kprune.surgery.register_handler(MyScale, MyScaleHandler())
```
"""

import contextlib
import contextvars
import copy

import keras
import numpy as np

_REGISTRY = {}
_NAMED = {}
_CONFIGS = contextvars.ContextVar("kprune_layer_configs", default=None)


@contextlib.contextmanager
def cached_configs():
    """Within the block, `config_value` reads each layer's config once.

    An analysis or a rebuild asks a layer for a handful of config entries,
    each through `get_config()` (the serialization of every argument); a
    layer does not change while kprune reads it, so one copy serves them
    all. Nested blocks share the outer cache.
    """
    if _CONFIGS.get() is not None:
        yield
        return
    token = _CONFIGS.set({})
    try:
        yield
    finally:
        _CONFIGS.reset(token)


def config_value(layer, key, default=None):
    """One entry of `layer.get_config()`, or the attribute of that name.

    Some layers' `get_config` raises (a KerasHub layer built with arguments
    Keras cannot serialize); their attributes usually hold the same values.
    Keras' own layers keep each config entry as the attribute of that name
    (an activation as its function: its name is the entry; no attribute: no
    entry), which is read instead: their `get_config` serializes the dtype
    policy, and Keras' serialization imports TensorFlow, even on JAX.
    """
    if type(layer).__module__.startswith("keras."):
        value = getattr(layer, key, default)
        if key == "activation" and callable(value):
            return getattr(value, "__name__", default)
        return copy.deepcopy(value) if isinstance(value, (list, dict)) else value
    cache = _CONFIGS.get()
    entry = None if cache is None else cache.get(id(layer))
    if entry is None:
        try:
            config = layer.get_config()
        except Exception:  # noqa: BLE001 - the layer's own get_config bug
            config = None
        entry = (layer, config)  # the layer keeps its id unique meanwhile
        if cache is not None:
            cache[id(layer)] = entry
    config = entry[1]
    if config is None:
        return getattr(layer, key, default)
    value = config.get(key, default)
    # the cached config is shared: a caller gets its own list / dict
    return copy.deepcopy(value) if isinstance(value, (list, dict)) else value


def _qualified(cls):
    return f"{cls.__module__}.{cls.__qualname__}"


def register_handler(layer_class, handler):
    """Register the handler used for `layer_class` (and its subclasses).

    A subclass that overrides `call` does not inherit the handler (its
    `call` may do something else: kprune traces it instead) unless the
    handler's `inherit` attribute is True.

    Args:
        layer_class: a `keras.layers.Layer` subclass, or its qualified name
            (`"package.module.ClassName"`) for a class from a package that
            should not be imported just to register it.
        handler: a `LayerHandler` instance.

    Example:

    >>> import keras, kprune
    >>> class Scale(keras.layers.Layer):
    ...     def call(self, x):
    ...         return 2.0 * x
    >>> kprune.surgery.register_handler(Scale, kprune.surgery.ChannelwiseHandler())
    """
    if not isinstance(handler, LayerHandler):
        raise TypeError(
            "`handler` must be a kprune.surgery.LayerHandler instance. "
            f"Received: handler={handler!r}"
        )
    if isinstance(layer_class, str):
        _NAMED[layer_class] = handler
        return
    if not isinstance(layer_class, type):
        raise TypeError(
            "`layer_class` must be a layer class or its qualified name. "
            f"Received: layer_class={layer_class!r}"
        )
    _REGISTRY[layer_class] = handler


def unregister_handler(layer_class):
    """Forget the handler registered for `layer_class` (class or name).

    Args:
        layer_class: what was passed to `register_handler`.

    Returns:
        The handler that was registered, or None.
    """
    if isinstance(layer_class, str):
        return _NAMED.pop(layer_class, None)
    return _REGISTRY.pop(layer_class, None)


def _registered(cls):
    handler = _REGISTRY.get(cls)
    if handler is None and _NAMED:
        handler = _NAMED.get(_qualified(cls))
    return handler


def get_handler(layer):
    """The handler for `layer`: the most specific registered class wins.

    A handler registered for a base class applies to a subclass only when
    the subclass keeps the base class's `call` or the handler's `inherit`
    is True; otherwise the layer has no handler (`OPAQUE`), and kprune
    traces its `call` instead.
    """
    own = type(layer)
    for cls in own.__mro__:
        handler = _registered(cls)
        if handler is None:
            continue
        if cls is own or handler.inherit or _same_call(own, cls):
            return handler
        return OPAQUE
    return OPAQUE


def _same_call(cls, base):
    return getattr(cls, "call", None) is getattr(base, "call", None)


class LayerChange:
    """What happens to one layer: the input to `LayerHandler.rebuild`.

    Attributes:
        layer: the original layer (read only).
        node: its first call (all calls lose the same channels).
        config: a fresh copy of `layer.get_config()` to edit and return.
        weights: dict of weight name -> NumPy array (original values).
        in_removed: per input, sorted indices of removed channels.
        out_removed: per output, sorted indices of removed channels.
        in_fill: per input, the value each removed channel carried (a
            constant to fold into the consumer's bias; 0 where unknown).
        internal_removed: dict name -> sorted removed indices of the units
            that live inside the layer (attention heads), if it has any.

    A handler's `rebuild` returns `(config, weights)` with `weights` a dict
    weight name -> array, or a list of arrays in `layer.weights` order (for
    layers whose sublayers repeat weight names).
    """

    def __init__(
        self,
        layer,
        node,
        weights,
        in_removed,
        out_removed,
        in_fill,
        internal_removed=None,
    ):
        self.layer = layer
        self.node = node
        self._config = None
        self.weights = weights
        self.in_removed = in_removed
        self.out_removed = out_removed
        self.in_fill = in_fill
        self.internal_removed = dict(internal_removed or {})

    @property
    def config(self):
        """A fresh copy of `layer.get_config()`, made on first use."""
        if self._config is None:
            self._config = self.layer.get_config()
        return self._config

    @config.setter
    def config(self, value):
        self._config = value

    @property
    def changed(self):
        return (
            any(len(r) for r in self.in_removed)
            or any(len(r) for r in self.out_removed)
            or any(len(r) for r in self.internal_removed.values())
        )

    def kept(self, size, removed):
        """Indices in `range(size)` not in `removed`."""
        mask = np.ones(size, dtype=bool)
        mask[np.asarray(removed, dtype=int)] = False
        return np.flatnonzero(mask)


class LayerHandler:
    """Base class of handlers. The default treats a layer as opaque.

    An opaque layer keeps every channel it reads or writes: removals that
    would reach it raise an error naming it.
    """

    #: True for layers whose output units are their own (Dense, Conv, ...):
    #: the keys of a removal plan.
    produces_units = False

    #: True when subclasses that override `call` keep this handler.
    inherit = False

    #: True when the handler relates the calls of a shared layer itself
    #: (otherwise their inputs and outputs are tied call to call).
    ties_calls = False

    def calls_independent(self, layer):
        """True when the calls of a shared `layer` need not be tied.

        A layer without weights whose config does not hold widths
        (`Dropout`, `Activation`) computes each call on its own, so its
        calls may lose different channels, or be of different widths.
        """
        return False

    #: True when the handler follows channels on any axis (`TensorInfo.axis`,
    #: 1 for `channels_first` tensors). Calls of other handlers whose inputs
    #: have their channels elsewhere than last are pinned with a reason.
    channel_axes_aware = False

    def channel_axes(self, node):
        """The channel axis of each output (-1: last; 1: channels first).

        Decided once, when the analysis lays out its elements, in
        topological order (the inputs' `axis` is already set).
        """
        return [-1] * len(node.outputs)

    def input_axis(self, node, position):
        """Where the layer reads channels of input `position` (for model
        inputs): 1 for a `channels_first` layer, else -1."""
        return 1 if config_value(node.layer, "data_format") == "channels_first" else -1

    def rebuild_op(self, change):
        """For a `keras.ops` call in the model itself (not inside a traced
        layer) whose channels change: a callable used in its place in the
        smaller model (called with the call's arguments), or None to call
        the operation again as it is (most ops follow their inputs)."""
        return None

    def connect(self, node, ctx):
        """Declare ties and pins for one call. Default: pin everything."""
        traced = getattr(getattr(ctx, "graph", None), "opaque", {}).get(node.path)
        reason = (
            f"layer '{node.path}' ({node.layer.__class__.__name__}) has no "
            "kprune handler"
            + (f" and {traced}" if traced else "")
            + "; register one with kprune.surgery.register_handler "
            "or leave the channels that reach it alone"
        )
        for tensor in node.inputs + node.outputs:
            ctx.pin(tensor, reason)

    def unit_tensors(self, node, ctx):
        """`(plan key, tensor)` of each set of units the layer owns.

        The default, for layers with `produces_units`: the output channels,
        keyed by the layer's path. Attention layers add their heads.
        """
        return [(node.path, node.outputs[0])]

    def uses(self, node, weights):
        """Input channel -> output unit dependencies of a weighted consumer.

        Returns:
            A list of `(source, matrix, fold_exact)` or `Use`s: `source` is
            an input position (or a `TensorInfo`, e.g. internal units),
            `matrix[c_in, c_out]` is True where the weights connecting them
            are not all zero, and `fold_exact` (bool or bool array per
            input channel) says whether a constant arriving on that channel
            can be folded into the bias exactly. Layers that only tie or pin
            channels return `[]`.
        """
        return []

    def constant_mask(self, node, in_valid, weights):
        """Which output channels are constant given constant input channels."""
        return [np.zeros(t.channels, dtype=bool) for t in node.outputs]

    def evaluate(self, node, inputs):
        """Run the layer on NumPy inputs (batch of one) in inference mode."""
        outputs = _flatten(node.call(inputs, training=False))
        return [keras.ops.convert_to_numpy(o) for o in outputs]

    def rebuild(self, change):
        """Return `(config, weights)` of the smaller layer."""
        raise NotImplementedError(
            f"{type(self).__name__} cannot rebuild layer '{change.node.path}'."
        )


def _flatten(outputs):
    if isinstance(outputs, (list, tuple)):
        out = []
        for item in outputs:
            out.extend(_flatten(item))
        return out
    if isinstance(outputs, dict):
        return _flatten([outputs[k] for k in sorted(outputs)])
    return [outputs]


class SublayerChanges:
    """What `rebuild` returns for a layer whose change is in its sublayers.

    Attention layers hold their projections as sublayers; a handler that
    understands the layer says how each projection changes, and the layer
    itself is then rebuilt like a traced composite (from its own class with
    the config entries that express the change, or with the sublayers
    swapped: see `kprune.surgery.composite`).

    Args:
        changes: list of `(sublayer, config, weights)` for the sublayers
            that change (`weights` a dict by name or a list in order).
        channel_sets: extra `(width, removed indices)` pairs, e.g. heads,
            by which the layer's own weights are sliced.
        attributes: dict attribute name -> new value, set on the layer when
            it is rebuilt by swapping its sublayers (`num_query_heads` ...).
    """

    def __init__(self, changes, channel_sets=(), attributes=None):
        self.changes = list(changes)
        self.channel_sets = list(channel_sets)
        self.attributes = dict(attributes or {})


class Use:
    """One weighted dependency of a layer's units on channels.

    Args:
        source: an input position, or a `TensorInfo` (internal units).
        matrix: bool `(source channels, target channels)`: True where the
            weights connecting them are not all zero.
        fold_exact: bool, or bool per source channel: a constant arriving on
            that channel folds exactly into the layer's bias.
        target: the `TensorInfo` of the units used (default: the first
            output).
        constant: optional bool per source channel: channels the handler
            itself knows to be constant and foldable (e.g. an attention head
            whose values are all zero apart from the bias).
    """

    def __init__(self, source, matrix, fold_exact, target=None, constant=None):
        self.source = source
        self.matrix = matrix
        self.fold_exact = fold_exact
        self.target = target
        self.constant = constant


def as_use(entry):
    """A `Use` from a `Use` or a `(source, matrix, fold_exact)` tuple."""
    return entry if isinstance(entry, Use) else Use(*entry)


OPAQUE = LayerHandler()
