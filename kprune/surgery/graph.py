"""A read-only view of a Keras model as a graph of layer calls.

The graph is read from the model's own call graph, the `Node`s Keras records
when a Functional model is built (`model._nodes_by_depth`, each node with its
operation, call arguments and output tensors), never from `get_config()`: a
Functional subclass (a KerasHub `Backbone`, a user's own) returns constructor
arguments there, not a graph. Tensors are paired by identity, so list and
dict inputs need no ordering convention.

Nested Functional / Sequential models are inlined: their inner layers appear
as nodes of the outer graph, their input tensors are the outer arguments, and
every call of a nested model or of a shared layer is a separate node of the
same layer object. With `expand=True`, composite layers (a layer kprune has
no handler for, whose `call` is built from sublayers and `keras.ops`) are
traced into their parts as well (see `kprune.surgery.tracing`).
"""

import dataclasses

import keras

from kprune.surgery.checks import check_model
from kprune.surgery.errors import UnsupportedModelError


@dataclasses.dataclass(eq=False)
class TensorInfo:
    """A symbolic tensor of the traced graph.

    Attributes:
        shape: the full shape, batch dimension included.
        dtype: the dtype name.
        name: a readable name (`layer_path:node:index`).
        offset: first index of this tensor's channels in the element space.
        axis: the channel axis: -1 (the last axis, the default) or 1 for a
            tensor laid out `channels_first` (see `Graph.set_channel_axes`).
    """

    shape: tuple
    dtype: str
    name: str
    offset: int = -1
    axis: int = -1

    @property
    def channels(self):
        """Size of the channel axis, or 0 when it has none."""
        if len(self.shape) < 2:
            return 0
        size = self.shape[self.axis]
        return 0 if size is None else int(size)

    @property
    def last(self):
        """True when the channels are on the last axis."""
        return self.axis == -1 or self.axis == len(self.shape) - 1

    def resized(self, width):
        """The shape with `width` channels on the channel axis."""
        shape = list(self.shape)
        shape[self.axis] = width
        return tuple(shape)


@dataclasses.dataclass(eq=False)
class CompositeCall:
    """One call of a composite layer that was traced into its parts.

    Attributes:
        layer: the composite layer (live, never modified).
        path: its path in the graph.
        inputs / outputs: the call's flattened tensors (outer tensors).
        arguments: `(args, kwargs)` of the call with `Slot`s for tensors.
        trace: the `kprune.surgery.tracing.Trace` it was expanded from.
        parent: the enclosing `CompositeCall`, or None at model level.
    """

    layer: object
    path: str
    inputs: list
    outputs: list
    arguments: tuple
    trace: object
    parent: object = None


@dataclasses.dataclass(eq=False)
class NodeInfo:
    """One call of a layer (or of a `keras.ops` operation).

    Attributes:
        layer: the (live, never modified) layer or operation object.
        path: "/"-joined names from the top model down to the layer.
        inputs: the flattened tensor arguments, in call order.
        outputs: the flattened outputs.
        arguments: `(args, kwargs)` of the call with a `Slot` in place of
            each tensor argument (None: one positional argument per input).
        parent: the `CompositeCall` this call was traced from, if any.
        internal: dict name -> `TensorInfo` of units inside the layer
            (attention heads), set by its handler during the analysis.
    """

    layer: object
    path: str
    inputs: list
    outputs: list
    arguments: tuple = None
    parent: object = None
    internal: dict = dataclasses.field(default_factory=dict)

    def argument(self, name, position=None):
        """The input `TensorInfo` passed as `name` (or at `position`)."""
        if self.arguments is None:
            if position is not None and position < len(self.inputs):
                return self.inputs[position]
            return None
        args, kwargs = self.arguments
        value = kwargs.get(name)
        if value is None and position is not None and position < len(args):
            value = args[position]
        if isinstance(value, Slot):
            return self.inputs[value.index]
        return None

    def call(self, values, **kwargs):
        """Call the layer with `values` in place of the input tensors."""
        args, call_kwargs = self.call_arguments(values)
        call_kwargs.update(kwargs)
        if not isinstance(self.layer, keras.layers.Layer):
            call_kwargs.pop("training", None)
        return self.layer(*args, **call_kwargs)

    def call_arguments(self, values):
        """`(args, kwargs)` of this call with `values` in the tensor slots."""
        if self.arguments is None:
            args = [Slot(i) for i in range(len(self.inputs))]
            if len(args) > 1:
                args = [args]
            call_kwargs = {}
        else:
            args, call_kwargs = self.arguments
        return list(fill_slots(args, values)), dict(fill_slots(call_kwargs, values))


@dataclasses.dataclass(eq=False)
class ModelCall:
    """One call of a (nested or top-level) Functional/Sequential model."""

    model: keras.Model
    path: str
    inputs: list
    outputs: list


class Slot:
    """Placeholder for the `index`-th input tensor in a call's arguments."""

    def __init__(self, index):
        self.index = index

    def __repr__(self):
        return f"Slot({self.index})"


def fill_slots(value, values):
    """Replace every `Slot` in a nested structure by `values[slot.index]`."""
    if isinstance(value, Slot):
        return values[value.index]
    if isinstance(value, dict):
        return {k: fill_slots(v, values) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(fill_slots(v, values) for v in value)
    return value


#: Keyword arguments that carry a layer's main input, when it is passed by
#: name (`self.attention(hidden_states=x, attention_mask=m)`).
PRIMARY_ARGUMENTS = ("inputs", "x", "hidden_states", "query", "value", "key", "input")


def _keyword_order(kwargs):
    first = [k for k in PRIMARY_ARGUMENTS if k in kwargs]
    return first + sorted(k for k in kwargs if k not in first)


def slotted(args, kwargs):
    """`(args, kwargs, tensors)`: each KerasTensor replaced by a `Slot`.

    Slots are numbered positional arguments first, then keyword arguments,
    a main input passed by name (`inputs=`, `hidden_states=`, `query=` ...)
    before the others, so that `tensors[0]` is the call's main input.
    """
    tensors = []

    def visit(value, order=sorted):
        if isinstance(value, keras.KerasTensor):
            tensors.append(value)
            return Slot(len(tensors) - 1)
        if isinstance(value, dict):
            return {k: visit(value[k]) for k in order(value)}
        if isinstance(value, (list, tuple)):
            return type(value)(visit(v) for v in value)
        return value

    new_args = visit(tuple(args))
    new_kwargs = visit(dict(kwargs), order=_keyword_order)
    return list(new_args), new_kwargs, tensors


class Graph:
    """The traced graph of a Functional or Sequential model.

    Args:
        model: a built Functional (a subclass too) or Sequential model.
        expand: trace composite layers without a handler into their parts
            (`"all"`: every layer with sublayers, handlers or not, and no
            numeric check of the traces: for counting, not for rebuilding).
        input_shapes: optional full input shapes (batch axis included), one
            per model input, to trace the graph at instead of the model's
            own (shapes of every call are then inferred again).
        keep_whole: layers not to expand even when they trace (layers
            kprune could not rebuild smaller: `slim` keeps them whole).

    Attributes:
        model: the traced model.
        nodes: layer calls in topological order (nested models inlined,
            composite layers expanded when `expand=True`).
        model_calls: every model call, the top-level one first.
        composites: every `CompositeCall` that was expanded, outer first.
        opaque: path -> reason, for composite layers that could not be traced.
        head_refusals: path -> why the heads of a traced layer cannot be
            removed (set by the channel analysis).
        inputs / outputs: the top-level model's tensors.
        tensors: every tensor, in creation order.
    """

    def __init__(self, model, expand=False, input_shapes=None, keep_whole=()):
        check_model(model)
        if not is_graph_model(model):
            raise UnsupportedModelError(
                "kprune.surgery works on Functional and Sequential models "
                "(Functional subclasses such as KerasHub backbones included); "
                "a subclassed model has no graph to rebuild. Rebuild the model "
                "with the Functional API, or prune its Functional sub-models. "
                f"Received: model={_describe(model)}"
            )
        self.model = model
        self.expand = expand
        self.keep_whole = {id(layer) for layer in keep_whole}
        self.nodes = []
        self.model_calls = []
        self.composites = []
        self.opaque = {}
        self.head_refusals = {}
        self.tensors = []
        self._size = 0
        self.reshaped = input_shapes is not None
        model_tensors = model_inputs(model)
        shapes = [x.shape for x in model_tensors]
        if self.reshaped:
            shapes = [tuple(shape) for shape in input_shapes]
            if len(shapes) != len(model_tensors):
                raise UnsupportedModelError(
                    f"`input_shapes` needs one shape per model input "
                    f"({len(model_tensors)}). Received: input_shapes={input_shapes!r}"
                )
        inputs = [
            self._new_tensor(shape, x.dtype, f"input:{x.name}")
            for shape, x in zip(shapes, model_tensors)
        ]
        self.inputs = inputs
        self.outputs = self._trace(model, "", inputs)
        self.layer_nodes = {}
        for node in self.nodes:
            self.layer_nodes.setdefault(id(node.layer), []).append(node)
        self.layers_by_path = {}
        for node in self.nodes:
            self.layers_by_path.setdefault(node.path, node.layer)
        for call in self.composites:
            self.layers_by_path.setdefault(call.path, call.layer)

    @property
    def size(self):
        """Number of channel elements over all tensors."""
        return self._size

    def elements(self, tensor):
        """Global element indices of a tensor's channels."""
        import numpy as np

        return np.arange(tensor.offset, tensor.offset + tensor.channels)

    def set_channel_axes(self, axes_of):
        """Put each tensor's channels on the axis `axes_of` decides.

        Walks the calls in topological order; `axes_of(node)` returns one
        channel axis per output (its inputs' axes are already set), and
        each model input takes the axis `axes_of(None, tensor)` gives it.
        The element space is then laid out again, so every tensor's
        elements are its channels on that axis.

        Args:
            axes_of: callable `(node, tensor=None) -> list of axes` for a
                call, or `-> axis` for a model input (`node` is None).
        """
        for tensor in self.inputs:
            tensor.axis = _normal_axis(axes_of(None, tensor), tensor.shape)
        for node in self.nodes:
            axes = axes_of(node)
            for tensor, axis in zip(node.outputs, axes):
                tensor.axis = _normal_axis(axis, tensor.shape)
        self._size = 0
        for tensor in self.tensors:
            tensor.offset = self._size
            self._size += tensor.channels

    def _new_tensor(self, shape, dtype, name):
        dtype = getattr(dtype, "name", dtype)
        tensor = TensorInfo(tuple(shape), str(dtype), name)
        tensor.offset = self._size
        self._size += tensor.channels
        self.tensors.append(tensor)
        return tensor

    # ------------------------------------------------------------- models
    def _trace(self, model, prefix, inputs, parent=None):
        call = ModelCall(model, prefix.rstrip("/") or model.name, inputs, None)
        self.model_calls.append(call)
        function = functional_of(model)
        if function is None:
            outputs = self._trace_chain(model, prefix, inputs, parent)
        else:
            outputs = self.trace_function(
                function, prefix, inputs, parent, respec=self.reshaped
            )
        call.outputs = outputs
        return outputs

    def trace_function(self, function, prefix, inputs, parent=None, respec=False):
        """Add the nodes of a `keras.Function` (a Functional model too).

        Args:
            function: the Function whose `inputs` receive `inputs`.
            prefix: path prefix of its layers ("" or "outer/").
            inputs: one `TensorInfo` per `function.inputs`.
            parent: the `CompositeCall` being expanded, if any.
            respec: infer every call's output shapes again from its inputs
                (a model traced at new input shapes; a layer's trace is
                already made at its call's shapes).

        Returns:
            One `TensorInfo` per `function.outputs`.
        """
        known = {id(x): t for x, t in zip(function.inputs, inputs)}
        for depth in sorted(function._nodes_by_depth, reverse=True):
            for node in function._nodes_by_depth[depth]:
                if node.is_input or node.operation is None:
                    continue
                arguments = node.arguments
                if any(id(x) not in known for x in arguments.keras_tensors):
                    continue  # not computable from the inputs (as Keras does)
                args, kwargs, tensors = slotted(arguments.args, arguments.kwargs)
                values = [known[id(x)] for x in tensors]
                operation = node.operation
                specs = [(o.shape, o.dtype) for o in node.outputs]
                if respec:
                    specs = call_output_specs(
                        operation, prefix + operation.name, (args, kwargs), values
                    )
                outs = self._call(
                    operation,
                    prefix + operation.name,
                    values,
                    specs,
                    (args, kwargs),
                    parent,
                )
                for x, out in zip(node.outputs, outs):
                    known[id(x)] = out
        missing = [x for x in function.outputs if id(x) not in known]
        if missing:
            raise UnsupportedModelError(
                f"Could not follow the graph of '{function.name}': outputs "
                f"{[x.name for x in missing]} are not computed from its inputs."
            )
        return [known[id(x)] for x in function.outputs]

    def _trace_chain(self, model, prefix, inputs, parent):
        """A Sequential model without a recorded graph: a chain of calls."""
        if len(inputs) != 1:
            raise UnsupportedModelError(
                f"Sequential model '{model.name}' must have exactly one input. "
                f"Received: {len(inputs)} inputs"
            )
        current = inputs
        for layer in model.layers:
            current = self._call(
                layer, prefix + layer.name, current, None, None, parent
            )
        return current

    # -------------------------------------------------------------- calls
    def _call(self, layer, path, inputs, specs, arguments, parent):
        if isinstance(layer, keras.Model):
            if not is_graph_model(layer):
                raise UnsupportedModelError(
                    f"Layer '{path}' is a subclassed model; kprune can only look "
                    "inside Functional and Sequential models. Register a handler "
                    "for its class with kprune.surgery.register_handler, or "
                    f"rebuild it functionally. Received: layer={layer!r}"
                )
            nested_inputs = _model_call_inputs(layer, arguments, inputs)
            return self._trace(layer, path + "/", nested_inputs, parent)
        if specs is None:
            specs = output_specs(layer, path, inputs)
        if self.expand == "all":
            from kprune.surgery import tracing

            trace = tracing.trace_any(layer, path, inputs, arguments, self.opaque)
            if trace is not None:
                return self._expand(layer, path, inputs, arguments, trace, parent)
        elif self.expand and id(layer) in self.keep_whole:
            self.opaque[path] = (
                "it is kept whole: kprune could not rebuild it smaller "
                "(see kprune.surgery.CompositeRebuildError)"
            )
        elif self.expand:
            from kprune.surgery import tracing

            trace = tracing.trace_for(layer, path, inputs, arguments, self.opaque)
            if trace is not None:
                return self._expand(layer, path, inputs, arguments, trace, parent)
        outputs = [
            self._new_tensor(shape, dtype, f"{path}:{len(self.nodes)}:{i}")
            for i, (shape, dtype) in enumerate(specs)
        ]
        self.nodes.append(
            NodeInfo(layer, path, list(inputs), outputs, arguments, parent)
        )
        return outputs

    def _expand(self, layer, path, inputs, arguments, trace, parent):
        call = CompositeCall(layer, path, list(inputs), None, arguments, trace, parent)
        self.composites.append(call)
        inner = [inputs[i] for i in trace.input_slots]
        computed = self.trace_function(trace.function, path + "/", inner, call)
        outputs = [None] * trace.output_count
        for position, tensor in zip(trace.output_positions, computed):
            outputs[position] = tensor
        for position, tensor in enumerate(outputs):
            if tensor is None:  # the layer returned None here: a stand-in
                outputs[position] = self._new_tensor(
                    (), "float32", f"{path}:none:{position}"
                )
        call.outputs = outputs
        return call.outputs


def _normal_axis(axis, shape):
    """-1 for the last axis (or an axis the shape does not have), else axis."""
    rank = len(shape)
    if axis is None or rank < 2 or not -rank <= axis < rank:
        return -1
    axis %= rank
    return -1 if axis == rank - 1 or axis == 0 else axis


def is_graph_model(model):
    """True for a built Functional model (subclasses too) or a Sequential."""
    if isinstance(model, keras.Sequential):
        return True
    return (
        isinstance(model, keras.Model)
        and hasattr(model, "_nodes_by_depth")
        and _has_inputs(model)
    )


def _has_inputs(model):
    try:
        return bool(model.inputs)
    except (AttributeError, ValueError):
        return False


def functional_of(model):
    """The `keras.Function` holding a model's graph (None: a plain chain)."""
    if isinstance(model, keras.Sequential):
        return getattr(model, "_functional", None)
    return model


def model_inputs(model):
    """The flat input tensors of a built model, or a clear error."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs:
        raise UnsupportedModelError(
            f"Model '{model.name}' is not built: it has no known inputs. "
            "Create it with keras.Input (or call it once on data) first. "
            f"Received: model={model.name}"
        )
    return list(inputs)


def _model_call_inputs(model, arguments, inputs):
    """Pair a nested model's inputs with the tensors it is called on.

    Mirrors `Functional._standardize_inputs`: a dict passed to a model built
    on a list is matched by input names; otherwise structures are flattened
    (dicts in sorted-key order, as `model.inputs` is).
    """
    function = functional_of(model)
    if arguments is None or not arguments[0]:
        return list(inputs)
    structure = fill_slots(arguments[0][0], inputs)
    expected = getattr(function, "_inputs_struct", None)
    if isinstance(structure, dict) and not isinstance(expected, dict):
        names = [x.name for x in keras.tree.flatten(expected)]
        if all(n in structure for n in names):
            return [structure[n] for n in names]
    flat = keras.tree.flatten(structure)
    if len(flat) != len(model_inputs(model)):
        raise UnsupportedModelError(
            f"Model '{model.name}' is called on {len(flat)} tensors but has "
            f"{len(model.inputs)} inputs. Received: inputs={structure!r}"
        )
    return flat


def constant_arguments(node):
    """The non-tensor values among a node's positional arguments."""
    if node.arguments is None:
        return []
    found = []

    def visit(value):
        if isinstance(value, Slot):
            return
        if isinstance(value, (list, tuple)):
            for v in value:
                visit(v)
        elif isinstance(value, dict):
            for v in value.values():
                visit(v)
        else:
            found.append(value)

    visit(node.arguments[0])
    return found


def output_specs(layer, path, inputs):
    """`[(shape, dtype)]` of a layer's outputs from its input tensors."""
    specs = [keras.KerasTensor(t.shape, dtype=t.dtype) for t in inputs]
    try:
        if len(specs) == 1:
            out = layer.compute_output_spec(specs[0])
        else:
            out = layer.compute_output_spec(specs)
    except Exception as error:  # noqa: BLE001 - re-raised with the layer name
        raise UnsupportedModelError(
            f"Could not infer the output shape of layer '{path}' "
            f"({layer.__class__.__name__}): {error}"
        ) from error
    flat = keras.tree.flatten(out)
    return [(tuple(o.shape), o.dtype) for o in flat]


def call_output_specs(operation, path, arguments, inputs):
    """`[(shape, dtype)]` of one call's outputs, inferred from its inputs.

    Args:
        operation: the layer or op called.
        path: its path (for the error message).
        arguments: `(args, kwargs)` of the call with `Slot`s for tensors.
        inputs: the call's input `TensorInfo`s.
    """
    from kprune.surgery.tracing.trace import call_kwargs

    symbolic = [keras.KerasTensor(t.shape, dtype=t.dtype) for t in inputs]
    args = fill_slots(list(arguments[0]), symbolic)
    kwargs = fill_slots(dict(arguments[1]), symbolic)
    if isinstance(operation, keras.layers.Layer):
        kwargs = call_kwargs(operation, kwargs)
        kwargs.pop("training", None)
    try:
        out = operation.compute_output_spec(*args, **kwargs)
    except Exception as error:  # noqa: BLE001 - re-raised with the layer name
        raise UnsupportedModelError(
            f"Could not infer the output shape of '{path}' "
            f"({type(operation).__name__}) at the given input shapes: {error}. "
            f"Received: input shapes={[t.shape for t in inputs]}"
        ) from error
    return [(tuple(o.shape), o.dtype) for o in keras.tree.flatten(out)]


def _describe(model):
    if isinstance(model, keras.Model):
        return f"{model.__class__.__name__} '{model.name}'"
    return type(model).__name__
