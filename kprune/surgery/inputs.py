"""Drop model-input features no Dense layer reads: `drop_input_features`.

`slim` keeps a model's inputs as they are, so an input pixel whose outgoing
weights are all zero still costs a zero kernel row. `drop_input_features`
removes those rows: a `SelectFeatures` layer gathers the features that are
still read, and the consuming Dense layers lose the other rows. Users still
feed the full input.
"""

import keras
import numpy as np

from kprune.surgery.compiling import clone_model, compile_like
from kprune.surgery.copying import carry_keep_mask, copy_layer
from kprune.surgery.graph import Graph
from kprune.surgery.handlers import LayerHandler, register_handler


@keras.saving.register_keras_serializable(package="kprune")
class SelectFeatures(keras.layers.Layer):
    """Keep the given features of the last axis: `y = x[..., indices]`.

    A gather with fixed indices, no weights (TFLite: one GATHER op, 0 MACs).
    `drop_input_features` puts it between a model input and the Dense layers
    that read it, so that pixels nobody reads are never multiplied.

    Args:
        indices: 1-D list of non-negative ints, the features to keep, in the
            order they appear in the output.
        **kwargs: base `keras.layers.Layer` arguments (`name`, ...).

    Example:

    >>> import numpy as np, kprune
    >>> layer = kprune.surgery.SelectFeatures([0, 2])
    >>> np.asarray(layer(np.array([[1.0, 2.0, 3.0]], "float32"))).tolist()
    [[1.0, 3.0]]
    """

    def __init__(self, indices, **kwargs):
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        values = np.asarray(indices)
        if (
            values.ndim != 1
            or not len(values)
            or not np.issubdtype(values.dtype, np.integer)
            or values.min() < 0
        ):
            raise ValueError(
                "`indices` must be a non-empty 1-D list of non-negative ints. "
                f"Received: indices={indices!r}"
            )
        self.indices = [int(i) for i in values]

    def build(self, input_shape):
        size = input_shape[-1]
        if size is not None and max(self.indices) >= size:
            raise ValueError(
                f"Layer '{self.name}': `indices` go up to {max(self.indices)} but "
                f"the input has {size} features. Received: input_shape={input_shape}"
            )
        self.built = True

    def call(self, x):
        indices = keras.ops.convert_to_tensor(self.indices, dtype="int32")
        return keras.ops.take(x, indices, axis=-1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (len(self.indices),)

    def get_config(self):
        return {**super().get_config(), "indices": list(self.indices)}


class SelectFeaturesHandler(LayerHandler):
    """`SelectFeatures`: channels through it are kept (pinned).

    Output feature `j` is input feature `indices[j]`, so it is constant when
    that input is.
    """

    def connect(self, node, ctx):
        ctx.pin_node(
            node,
            f"layer '{node.path}' (SelectFeatures) gathers fixed features; "
            "the channels it reads and writes are kept",
        )

    def constant_mask(self, node, in_valid, weights):
        return [np.asarray(in_valid[0])[node.layer.indices]]


register_handler(SelectFeatures, SelectFeaturesHandler())


def _plain_dense(layer):
    """A Dense layer whose kernel rows are exactly its input features."""
    return (
        type(layer) is keras.layers.Dense
        and not getattr(layer, "lora_enabled", False)
        and "kernel" in {w.name for w in layer.weights}
        and len(layer.kernel.shape) == 2
    )


def _consumers(graph, tensor):
    return [n for n in graph.nodes if any(t is tensor for t in n.inputs)]


def _dense_readers(graph, tensor):
    """The Dense layers that are the only readers of `tensor`, else None."""
    nodes = _consumers(graph, tensor)
    if not nodes or any(t is tensor for t in graph.outputs):
        return None
    for node in nodes:
        if (
            "/" in node.path
            or not _plain_dense(node.layer)
            or len(node.inputs) != 1
            or len(graph.layer_nodes[id(node.layer)]) != 1
        ):
            return None
    return [node.layer for node in nodes]


def _kept_rows(layers):
    kernels = [keras.ops.convert_to_numpy(layer.kernel) for layer in layers]
    used = np.any(np.stack([np.any(k != 0, axis=1) for k in kernels]), axis=0)
    kept = np.flatnonzero(used)
    return kept if len(kept) else np.array([0])  # layers cannot be zero-width


def _input_plans(model, graph):
    """Per model input: `(select_layer_or_None, readers, kept, indices)`."""
    plans = []
    for tensor in graph.inputs:
        if len(tensor.shape) != 2 or not tensor.channels:
            continue
        readers = _dense_readers(graph, tensor)
        select = None
        if readers is None:
            # A SelectFeatures made by an earlier call: compose with it.
            nodes = _consumers(graph, tensor)
            if (
                len(nodes) != 1
                or not isinstance(nodes[0].layer, SelectFeatures)
                or "/" in nodes[0].path
                or len(graph.layer_nodes[id(nodes[0].layer)]) != 1
            ):
                continue
            select = nodes[0]
            readers = _dense_readers(graph, select.outputs[0])
            if readers is None:
                continue
        kept = _kept_rows(readers)
        width = readers[0].kernel.shape[0]
        if len(kept) == width:
            continue
        indices = kept if select is None else np.asarray(select.layer.indices)[kept]
        plans.append((tensor, select, readers, kept, indices))
    return plans


def _unique_name(model, base):
    names = {layer.name for layer in model.layers}
    names.update(getattr(x, "name", "") for x in model.inputs)
    name, i = base, 1
    while name in names:
        name, i = f"{base}_{i}", i + 1
    return name


def drop_input_features(model):
    """Stop reading model-input features that no Dense layer uses.

    For every model input of shape `(batch, n)` read only by Dense layers
    (directly, or through a `SelectFeatures` made by an earlier call), the
    features whose kernel row is zero in *every* reader are dropped: a
    `SelectFeatures(kept)` layer gathers the other features and the readers
    keep only their rows,

        y = x @ W + b = x[:, kept] @ W[kept] + b   (W[i] = 0 for i not kept)

    so the outputs are exactly the same and the readers' MACs fall by
    `n / len(kept)`. The model's inputs do not change (users still feed
    `n` features); layer names are kept. Inputs that do not qualify (rank
    other than 2, read by another layer, by a nested model or by a shared
    layer) are left alone. The input model is not modified.

    Args:
        model: a Functional or Sequential `keras.Model`.

    Returns:
        A new `keras.Model` (a plain copy when nothing can be dropped).

    Example:

    >>> import keras, numpy as np, kprune
    >>> inputs = keras.Input((6,), name="pixels")
    >>> x = keras.layers.Dense(4, activation="relu", name="fc1")(inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(2, name="out")(x))
    >>> kernel, bias = model.get_layer("fc1").get_weights()
    >>> kernel[[1, 4]] = 0.0  # pixels 1 and 4 are never read
    >>> model.get_layer("fc1").set_weights([kernel, bias])
    >>> small = kprune.surgery.drop_input_features(model)
    >>> tuple(small.get_layer("fc1").kernel.shape)
    (4, 4)
    >>> x = np.random.rand(3, 6).astype("float32")
    >>> bool(np.allclose(model(x), small(x), atol=1e-6))
    True

    Reference:
        Alvarez & Salzmann, "Learning the Number of Neurons in Deep
        Networks", NeurIPS 2016 (input pixels pruned as the outgoing groups
        of the input), https://arxiv.org/abs/1611.06321
    """
    graph = Graph(model)
    plans = _input_plans(model, graph)
    cloner = _InputCloner(model, plans)
    return cloner.clone()


class _InputCloner:
    """`keras.models.clone_model` with `SelectFeatures` before the readers."""

    def __init__(self, model, plans):
        self.model = model
        self.rows = {}  # id(reader) -> kept rows
        self.select_of = {}  # id(reader) -> plan index (new SelectFeatures)
        self.replaced = {}  # id(old SelectFeatures) -> composed indices
        self.selects = []
        for i, (tensor, select, readers, kept, indices) in enumerate(plans):
            for layer in readers:
                self.rows[id(layer)] = kept
            if select is None:
                for layer in readers:
                    self.select_of[id(layer)] = i
                base = tensor.name.split(":", 1)[-1]
                if isinstance(model, keras.Sequential):
                    base = "input"
                name = _unique_name(model, f"{base}_select")
                self.selects.append(SelectFeatures(indices.tolist(), name=name))
            else:
                self.replaced[id(select.layer)] = indices.tolist()
                self.selects.append(None)
        self.new_to_plan = {}
        self.outputs = {}
        self.weights = []

    def clone(self):
        if isinstance(self.model, keras.Sequential):
            return self._clone_sequential()
        call_function = self._call if self.new_to_plan or self.select_of else None
        new = clone_model(
            self.model, clone_function=self._clone_layer, call_function=call_function
        )
        self._set_weights()
        return new

    def _clone_sequential(self):
        layers = [self._clone_layer(layer) for layer in self.model.layers]
        if self.select_of:
            layers.insert(0, self.selects[0])
        x = self.model.inputs[0]
        new = keras.Sequential(
            [keras.Input(batch_shape=x.shape, dtype=x.dtype), *layers],
            name=self.model.name,
        )
        compile_like(new, self.model)
        self._set_weights()
        return new

    def _clone_layer(self, layer):
        key = id(layer)
        if key in self.replaced:
            config = layer.get_config()
            config["indices"] = self.replaced[key]
            return SelectFeatures.from_config(config)
        if isinstance(layer, keras.Model):
            new = clone_model(layer, compile=False)
            self.weights.append((new, layer.get_weights()))
            return new
        if key not in self.rows:
            return copy_layer(layer)
        new = layer.__class__.from_config(layer.get_config())
        names = [w.name for w in layer.weights]
        weights = list(layer.get_weights())
        kernel = names.index("kernel")
        weights[kernel] = weights[kernel][self.rows[key]]
        if key in self.select_of:
            self.new_to_plan[id(new)] = self.select_of[key]
        self.weights.append((new, weights))
        return new

    def _call(self, layer, *args, **kwargs):
        plan = self.new_to_plan.get(id(layer))
        if plan is None:
            return layer(*args, **kwargs)
        if plan not in self.outputs:
            self.outputs[plan] = self.selects[plan](args[0])
        return layer(self.outputs[plan], *args[1:], **kwargs)

    def _set_weights(self):
        for layer, values in self.weights:
            layer.set_weights(values)
            carry_keep_mask(layer)
