"""A read-only view of a Keras model as a graph of layer calls.

The graph is read from public Keras APIs only: `Model.get_config()` (its
`inbound_nodes` say which tensor feeds which call, with shapes), `model.layers`
and `Layer.compute_output_spec`. Nested Functional / Sequential models are
inlined: their inner layers appear as nodes of the outer graph, their input
tensors are the outer arguments, and every call of a nested model or of a
shared layer is a separate node of the same layer object.
"""

import dataclasses

import keras
import numpy as np

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
    """

    shape: tuple
    dtype: str
    name: str
    offset: int = -1

    @property
    def channels(self):
        """Size of the last (channel) axis, or 0 when it has none."""
        if len(self.shape) < 2 or self.shape[-1] is None:
            return 0
        return int(self.shape[-1])


@dataclasses.dataclass(eq=False)
class NodeInfo:
    """One call of a layer.

    Attributes:
        layer: the (live, never modified) layer object.
        path: "/"-joined names from the top model down to the layer.
        inputs: the flattened tensor arguments, in call order.
        outputs: the flattened outputs.
    """

    layer: keras.layers.Layer
    path: str
    inputs: list
    outputs: list
    arguments: tuple = None

    def call(self, values, **kwargs):
        """Call the layer with `values` in place of the input tensors."""
        if self.arguments is None:
            args, call_kwargs = [_Slot(i) for i in range(len(self.inputs))], {}
            if len(args) > 1:
                args = [args]
        else:
            args, call_kwargs = self.arguments
        args = _fill_slots(args, values)
        call_kwargs = dict(_fill_slots(call_kwargs, values), **kwargs)
        if not isinstance(self.layer, keras.layers.Layer):
            call_kwargs.pop("training", None)
        return self.layer(*args, **call_kwargs)


@dataclasses.dataclass(eq=False)
class ModelCall:
    """One call of a (nested or top-level) Functional/Sequential model."""

    model: keras.Model
    path: str
    inputs: list
    outputs: list


class Graph:
    """The traced graph of a Functional or Sequential model.

    Attributes:
        model: the traced model.
        nodes: layer calls in topological order (nested models inlined).
        model_calls: every model call, the top-level one first.
        inputs / outputs: the top-level model's tensors.
        tensors: every tensor, in creation order.
    """

    def __init__(self, model):
        check_model(model)
        if not _is_graph_model(model):
            raise UnsupportedModelError(
                "kprune.surgery works on Functional and Sequential models; "
                "subclassed models have no graph to rebuild. Rebuild the model "
                "with the Functional API, or prune its Functional sub-models. "
                f"Received: model={model.__class__.__name__}"
            )
        self.model = model
        self.nodes = []
        self.model_calls = []
        self.tensors = []
        self._size = 0
        inputs = [
            self._new_tensor(x.shape, x.dtype, f"input:{x.name}")
            for x in _model_inputs(model)
        ]
        self.inputs = inputs
        self.outputs = self._trace(model, "", inputs)
        # Each node and each model gets its position for fast look-ups.
        self.layer_nodes = {}
        for node in self.nodes:
            self.layer_nodes.setdefault(id(node.layer), []).append(node)
        self.layers_by_path = {}
        for node in self.nodes:
            self.layers_by_path.setdefault(node.path, node.layer)

    @property
    def size(self):
        """Number of channel elements over all tensors."""
        return self._size

    def _new_tensor(self, shape, dtype, name):
        dtype = getattr(dtype, "name", dtype)
        tensor = TensorInfo(tuple(shape), str(dtype), name)
        tensor.offset = self._size
        self._size += tensor.channels
        self.tensors.append(tensor)
        return tensor

    def elements(self, tensor):
        """Global element indices of a tensor's channels."""
        return np.arange(tensor.offset, tensor.offset + tensor.channels)

    def _trace(self, model, prefix, inputs):
        call = ModelCall(model, prefix.rstrip("/") or model.name, inputs, None)
        self.model_calls.append(call)
        if isinstance(model, keras.Sequential):
            outputs = self._trace_sequential(model, prefix, inputs)
        else:
            outputs = self._trace_functional(model, prefix, inputs)
        call.outputs = outputs
        return outputs

    def _call(self, layer, path, inputs, output_shapes=None, arguments=None):
        if isinstance(layer, keras.Model):
            if not _is_graph_model(layer):
                raise UnsupportedModelError(
                    f"Layer '{path}' is a subclassed model; kprune can only look "
                    "inside Functional and Sequential models. Register a handler "
                    "for its class with kprune.surgery.register_handler, or "
                    f"rebuild it functionally. Received: layer={layer!r}"
                )
            return self._trace(layer, path + "/", inputs)
        if output_shapes is None:
            output_shapes = _output_shapes(layer, path, inputs)
        outputs = [
            self._new_tensor(shape, dtype, f"{path}:{len(self.nodes)}:{i}")
            for i, (shape, dtype) in enumerate(output_shapes)
        ]
        self.nodes.append(NodeInfo(layer, path, list(inputs), outputs, arguments))
        return outputs

    def _trace_sequential(self, model, prefix, inputs):
        if len(inputs) != 1:
            raise UnsupportedModelError(
                f"Sequential model '{model.name}' must have exactly one input. "
                f"Received: {len(inputs)} inputs"
            )
        current = inputs
        for layer in model.layers:
            current = self._call(layer, prefix + layer.name, current)
        return current

    def _trace_functional(self, model, prefix, inputs):
        config = model.get_config()
        layers = {op.name: op for op in model.operations}
        known = {}
        for ref, tensor in zip(_flat_refs(config["input_layers"]), inputs):
            known[tuple(ref)] = tensor
        # Shapes of every consumed tensor are recorded in the consumers' config.
        shapes = {}
        pending = []
        layer_index = {c["name"]: i for i, c in enumerate(config["layers"])}
        for layer_config in config["layers"]:
            name = layer_config["name"]
            for node_index, node in enumerate(layer_config.get("inbound_nodes", [])):
                refs = _tensor_refs(node)
                for ref in refs:
                    key = tuple(ref["keras_history"])
                    shapes[key] = (tuple(ref["shape"]), ref.get("dtype", "float32"))
                pending.append((name, node_index, refs))
        for ref, tensor in zip(_flat_refs(config["output_layers"]), model.outputs):
            shapes[tuple(ref)] = (tuple(tensor.shape), tensor.dtype)
        while pending:
            remaining = []
            for name, node_index, refs in pending:
                if any(tuple(r["keras_history"]) not in known for r in refs):
                    remaining.append((name, node_index, refs))
                    continue
                layer = layers[name]
                args = [known[tuple(r["keras_history"])] for r in refs]
                n_out = 1 + max(
                    [k[2] for k in shapes if k[:2] == (name, node_index)],
                    default=0,
                )
                out_shapes = [
                    shapes.get((name, node_index, i), ((), "float32"))
                    for i in range(n_out)
                ]
                node_config = config["layers"][layer_index[name]]["inbound_nodes"]
                outs = self._call(
                    layer,
                    prefix + name,
                    args,
                    out_shapes,
                    _slotted(node_config[node_index]),
                )
                for t_index, out in enumerate(outs):
                    known[(name, node_index, t_index)] = out
            if len(remaining) == len(pending):
                names = sorted({p[0] for p in remaining})
                raise UnsupportedModelError(
                    f"Could not order the layers of model '{model.name}' "
                    f"(unresolved calls of {names})."
                )
            pending = remaining
        outputs = []
        for ref in _flat_refs(config["output_layers"]):
            outputs.append(known[tuple(ref)])
        return outputs


def _is_graph_model(model):
    return isinstance(model, keras.Sequential) or (
        hasattr(model, "_nodes_by_depth")
        and hasattr(model, "inputs")
        and isinstance(model, keras.Model)
        and _has_functional_config(model)
    )


def _has_functional_config(model):
    try:
        return hasattr(model, "input") and model.inputs is not None
    except (AttributeError, ValueError):
        return False


def _model_inputs(model):
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


def _flat_refs(refs):
    """Flatten `input_layers`/`output_layers` into [name, node, index] lists."""
    if isinstance(refs, dict):
        out = []
        for key in refs:
            out.extend(_flat_refs(refs[key]))
        return out
    if (
        isinstance(refs, (list, tuple))
        and len(refs) == 3
        and isinstance(refs[0], str)
        and isinstance(refs[1], int)
    ):
        return [list(refs)]
    out = []
    for item in refs:
        out.extend(_flat_refs(item))
    return out


def _tensor_refs(node_config):
    """All `__keras_tensor__` entries of a node's args and kwargs, in order."""
    found = []

    def visit(value):
        if isinstance(value, dict):
            if value.get("class_name") == "__keras_tensor__":
                found.append(value["config"])
                return
            for key in value:
                visit(value[key])
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item)

    visit(node_config.get("args", []))
    visit(node_config.get("kwargs", {}))
    return found


class _Slot:
    """Placeholder for the `index`-th input tensor in a node's arguments."""

    def __init__(self, index):
        self.index = index


def _slotted(node_config):
    """A node's (args, kwargs) with each tensor replaced by a `_Slot`."""
    counter = [0]

    def visit(value):
        if isinstance(value, dict):
            if value.get("class_name") == "__keras_tensor__":
                counter[0] += 1
                return _Slot(counter[0] - 1)
            return {k: visit(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [visit(v) for v in value]
        return value

    return (
        visit(node_config.get("args", [])),
        visit(node_config.get("kwargs", {})),
    )


def _fill_slots(value, values):
    if isinstance(value, _Slot):
        return values[value.index]
    if isinstance(value, dict):
        return {k: _fill_slots(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill_slots(v, values) for v in value]
    return value


def constant_arguments(node):
    """The non-tensor values among a node's positional arguments."""
    if node.arguments is None:
        return []
    found = []

    def visit(value):
        if isinstance(value, _Slot):
            return
        if isinstance(value, list):
            for v in value:
                visit(v)
        elif isinstance(value, dict):
            for v in value.values():
                visit(v)
        else:
            found.append(value)

    visit(node.arguments[0])
    return found


def _output_shapes(layer, path, inputs):
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
