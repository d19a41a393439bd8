"""Trace one call of a layer into a `keras.Function` of its parts."""

import contextlib
import dataclasses
import inspect

import keras
from keras.src.backend import compute_output_spec
from keras.src.ops.node import Node

from kprune.surgery.graph import fill_slots

STANDIN_BATCH = 2
STANDIN_SIZE = 8


class TraceError(Exception):
    """A layer call could not be traced into a faithful graph of its parts."""


@dataclasses.dataclass(eq=False)
class Trace:
    """The graph of one layer call, built by calling `layer.call` symbolically.

    Attributes:
        layer: the traced layer.
        function: a `keras.Function` whose nodes are the layer's sublayer
            calls and `keras.ops` (the layer objects are the layer's own).
        input_slots: for each `function.inputs[i]`, the index of the call
            input it stands for.
        shapes: the input shapes the trace was made with (unknown sizes
            replaced by stand-ins when the layer needs concrete shapes).
        output_positions: for each `function.outputs[i]`, its position in
            the call's flattened outputs (the others are `None`s or
            constants the layer returns).
        output_count: how many flattened outputs the call returns.
    """

    layer: object
    function: object
    input_slots: list
    shapes: list
    output_positions: list = None
    output_count: int = None

    def __post_init__(self):
        if self.output_positions is None:
            self.output_positions = list(range(len(self.function.outputs)))
        if self.output_count is None:
            self.output_count = len(self.output_positions)

    @property
    def operations(self):
        """The sublayers and ops recorded, in topological order."""
        return self.function.operations


def call_kwargs(layer, kwargs):
    """Keep only the keyword arguments `layer.call` accepts."""
    try:
        parameters = inspect.signature(layer.call).parameters
    except (TypeError, ValueError):
        return dict(kwargs)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return dict(kwargs)
    return {k: v for k, v in kwargs.items() if k in parameters}


def _none_standin():
    return keras.KerasTensor((), dtype="float32", name="kprune_none_output")


@contextlib.contextmanager
def none_outputs_recorded():
    """While tracing, a layer call may return `None` among its outputs.

    Keras refuses to record a node whose outputs hold `None` (an attention
    layer returning `(outputs, cache)` without a cache, a block returning
    `(outputs, attention_scores)` when no scores are asked for). Within
    this block such a node records a scalar stand-in tensor at each `None`
    (so node outputs keep their positions when the graph is run), while
    the caller still receives the `None`: its own `if cache is None` runs
    as it does for real. Keras' `Node` is restored on exit.
    """
    original = Node.__init__

    def init(self, operation, call_args=None, call_kwargs=None, outputs=None):
        if outputs is not None:
            flat = keras.tree.flatten(outputs)
            if any(o is None for o in flat):
                outputs = [_none_standin() if o is None else o for o in flat]
        original(self, operation, call_args, call_kwargs, outputs)

    Node.__init__ = init
    try:
        yield
    finally:
        Node.__init__ = original


@contextlib.contextmanager
def lenient_output_specs(layer):
    """While tracing, sublayers' `compute_output_spec` ignore unknown `None`s.

    Some layers accept call arguments their inherited `compute_output_spec`
    does not (KerasHub's `CachedMultiHeadAttention` takes `cache=None`,
    `cache_update_index=None`; `MultiHeadAttention.compute_output_spec`
    does not), so calling them on symbolic tensors fails although the
    output shape does not depend on those arguments. Within this block each
    sublayer of `layer` drops such keyword arguments when they are None
    (and computes its spec from its own `call` when one is not None); the
    sublayers are left as they were afterwards.

    A sublayer whose class overrides `call` but inherits
    `compute_output_shape` from a parent written for another `call` (ESM's
    rotary embedding returns two tensors where its parent returned one) has
    its output spec computed from its own `call` instead.
    """
    patched = []
    for sublayer in layer._flatten_layers(include_self=False, recursive=True):
        if "compute_output_spec" in vars(sublayer):
            continue
        if _stale_output_shape(type(sublayer)):

            def from_call(*args, _bound=sublayer, **kwargs):
                return compute_output_spec(_bound.call, *args, **kwargs)

            object.__setattr__(sublayer, "compute_output_spec", from_call)
            patched.append(sublayer)
            continue
        method = type(sublayer).compute_output_spec
        try:
            parameters = inspect.signature(method).parameters
        except (TypeError, ValueError):
            continue
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            continue
        if "compute_output_spec" in vars(sublayer):
            continue
        names = set(parameters)

        def lenient(*args, _bound=sublayer, _names=names, **kwargs):
            if any(k not in _names and v is not None for k, v in kwargs.items()):
                # An argument its inherited spec does not know (Moonshine's
                # `rotary_embedding`): the spec comes from its own `call`.
                return compute_output_spec(_bound.call, *args, **kwargs)
            kept = {k: v for k, v in kwargs.items() if k in _names}
            return type(_bound).compute_output_spec(_bound, *args, **kept)

        object.__setattr__(sublayer, "compute_output_spec", lenient)
        patched.append(sublayer)
    try:
        yield
    finally:
        for sublayer in patched:
            object.__delattr__(sublayer, "compute_output_spec")


def _stale_output_shape(cls):
    """True when `cls` overrides `call` below the class that wrote the
    `compute_output_shape` it inherits (and keeps Keras' own
    `compute_output_spec`, which would trust that shape)."""
    mro = cls.__mro__

    def owner(name):
        return next((c for c in mro if name in vars(c)), None)

    base = keras.layers.Layer
    call, shape = owner("call"), owner("compute_output_shape")
    if call is None or shape is None or shape is base:
        return False
    if owner("compute_output_spec") not in (None, base):
        return False
    return mro.index(call) < mro.index(shape)


def standin_shape(shape, first=True):
    """A concrete shape: unknown batch -> 2, other unknown sizes -> 8."""
    out = []
    for i, dim in enumerate(shape):
        if dim is None:
            dim = STANDIN_BATCH if (i == 0 and first) else STANDIN_SIZE
        out.append(int(dim))
    return tuple(out)


def _attempts(inputs):
    shapes = [tuple(t.shape) for t in inputs]
    yield shapes
    concrete = [standin_shape(s) for s in shapes]
    if concrete != shapes:
        yield concrete


def trace_layer(layer, inputs, arguments, check=None):
    """Call `layer.call` on fresh symbolic inputs and record its parts.

    First with the call's own shapes (unknown batch and lengths kept
    unknown), then, when the layer needs concrete shapes (attention masks
    built from the sequence length, say), with stand-in sizes.

    Args:
        layer: a built `keras.layers.Layer`.
        inputs: the call's input `TensorInfo`s (shape and dtype).
        arguments: `(args, kwargs)` of the call with `Slot`s for tensors,
            or None for one positional argument per input.
        check: optional `check(trace)` raising `TraceError` when a trace is
            not faithful; a trace with unknown sizes that fails it is made
            again with stand-in sizes (a layer that builds a `Reshape` from
            its input's shape records the unknown sizes in it).

    Returns:
        A `Trace`.

    Raises:
        TraceError: the call cannot be traced (the reason is in the message).
    """
    if arguments is None:
        from kprune.surgery.graph import Slot

        args = [Slot(i) for i in range(len(inputs))]
        arguments = ([args] if len(args) > 1 else args, {})
    reason = None
    for shapes in _attempts(inputs):
        symbolic = [
            keras.Input(batch_shape=shape, dtype=t.dtype)
            for shape, t in zip(shapes, inputs)
        ]
        args = fill_slots(list(arguments[0]), symbolic)
        kwargs = call_kwargs(layer, fill_slots(dict(arguments[1]), symbolic))
        if "training" in kwargs:
            kwargs["training"] = False
        try:
            with lenient_output_specs(layer), none_outputs_recorded():
                outputs = layer.call(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - any failure: not traceable
            reason = f"calling it symbolically failed ({_short(error)})"
            continue
        every = keras.tree.flatten(outputs)
        positions = [i for i, o in enumerate(every) if isinstance(o, keras.KerasTensor)]
        flat = [every[i] for i in positions]
        if not flat:
            raise TraceError(
                "its call returns no tensors computed from its inputs "
                f"({[type(o).__name__ for o in every]})"
            )
        used = _used_inputs(symbolic, flat)
        if not used:
            raise TraceError("its outputs do not depend on its inputs")
        try:
            function = keras.Function([symbolic[i] for i in used], flat)
        except Exception as error:  # noqa: BLE001
            raise TraceError(
                f"its outputs are not computed from its inputs ({_short(error)})"
            ) from None
        _resolve_unknown_reshapes(function, layer)
        trace = Trace(layer, function, used, shapes, positions, len(every))
        if check is not None:
            try:
                check(trace)
            except TraceError as error:
                reason = str(error)
                continue
        return trace
    raise TraceError(reason or "it could not be traced")


def _resolve_unknown_reshapes(function, layer):
    """`ops.reshape` calls that recorded one unknown size infer it instead.

    A layer writing `ops.reshape(x, [ops.shape(x)[0], ops.shape(x)[1], d])`
    records `None` where the symbolic shape lost a size (shape inference of
    some ops drops static lengths), and a recorded `None` cannot run. With
    one unknown size the intent is "whatever is left", which is `-1`. Only
    the reshape operations the trace itself created are changed, never the
    layer's own sublayers; the trace is checked numerically afterwards.
    """
    from keras.src.ops.numpy import Reshape

    own = {id(sub) for sub in layer._flatten_layers(include_self=True)}
    for operation in function.operations:
        if not isinstance(operation, Reshape) or id(operation) in own:
            continue
        newshape = operation.newshape
        if not isinstance(newshape, (list, tuple)):
            continue
        if sum(d is None for d in newshape) == 1 and -1 not in newshape:
            operation.newshape = type(newshape)(
                -1 if d is None else d for d in newshape
            )


def _used_inputs(symbolic, outputs):
    """Indices of the symbolic inputs the outputs depend on."""
    wanted = {id(x): i for i, x in enumerate(symbolic)}
    found = set()
    seen = set()
    stack = list(outputs)
    while stack:
        tensor = stack.pop()
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        if id(tensor) in wanted:
            found.add(wanted[id(tensor)])
            continue
        history = getattr(tensor, "_keras_history", None)
        if history is None:
            continue
        operation, node_index, _ = history
        node = operation._inbound_nodes[node_index]
        stack.extend(node.arguments.keras_tensors)
    return sorted(found)


def _short(error):
    text = " ".join(str(error).split())
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) < 200 else text[:197] + "..."
