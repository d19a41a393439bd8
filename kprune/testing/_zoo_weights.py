"""Layer walking, copying, perturbing and zeroing units for the zoo.

Public through `kprune.testing.zoo`: `leaf_layers`, `copy_model`,
`perturb_weights`, `zero_units`.
"""

import collections

import keras
import numpy as np


def perturb_weights(model, seed=0, scale=0.1):
    """Give biases and normalization parameters seeded random values.

    Freshly built layers have zero biases, BatchNorm statistics (0, 1) and
    norm scales of 1, so a unit whose incoming weights are zeroed outputs
    exactly zero and exactness tests never see a non-zero constant that
    must be folded into the consumers. This function changes, in place:

    - `BatchNormalization`: `gamma ~ U(0.5, 1.5)`, `beta ~ N(0, 0.5)`,
      `moving_mean ~ N(0, 0.5)`, `moving_variance ~ U(0.5, 2)`;
    - every weight named `bias` (also the 2-D biases of `EinsumDense`)
      and every other floating-point weight with one dimension (LayerNorm
      / RMSNorm scales and offsets, LayerScale ...): `w + N(0, scale)`.

    Kernels, embeddings and other weights with 2 or more dimensions are
    left as they are.

    Args:
        model: a built Keras model or layer. Modified in place.
        seed: seed of the NumPy generator.
        scale: standard deviation of the noise added to 1-D weights.

    Returns:
        `model`.

    Example:

    >>> layer = keras.layers.Dense(3)
    >>> layer.build((None, 2))
    >>> bool(np.any(perturb_weights(layer).bias.numpy() != 0))
    True
    """
    rng = np.random.default_rng(seed)
    for _, layer in leaf_layers(model).items():
        if isinstance(layer, keras.layers.BatchNormalization):
            for w in layer.weights:
                n = w.shape
                name = w.name
                if name == "gamma":
                    w.assign(rng.uniform(0.5, 1.5, n).astype(w.dtype))
                elif name == "beta" or name == "moving_mean":
                    w.assign(rng.normal(0.0, 0.5, n).astype(w.dtype))
                elif name == "moving_variance":
                    w.assign(rng.uniform(0.5, 2.0, n).astype(w.dtype))
            continue
        for w in layer.weights:
            if "float" not in str(w.dtype):
                continue
            if len(w.shape) != 1 and w.name != "bias":
                continue
            value = keras.ops.convert_to_numpy(w)
            w.assign(value + rng.normal(0.0, scale, value.shape).astype(value.dtype))
    return model


# ----------------------------------------------------- layer walking


def _sublayers(layer):
    if hasattr(layer, "_flatten_layers"):
        return list(layer._flatten_layers(include_self=False, recursive=False))
    return []


def leaf_layers(model, include_composite=False):
    """The leaf layers of `model`, anywhere inside it, by path.

    Walks `layer._flatten_layers(recursive=False)` depth first from the
    model (nested models and composite layers included). A leaf is a
    layer with no sublayers (`InputLayer`s are left out). Its path is the
    names of the layers leading to it, joined by `/`, without the model's
    own name
    (`"transformer_layer_0/_self_attention_layer/query"`); a name repeated
    among siblings gets `#2`, `#3` ... A layer reachable twice (shared)
    appears once, under its first path.

    Args:
        model: a Keras model or layer.
        include_composite: also list the layers that have sublayers
            (nested models, composite layers such as a transformer block or
            an attention layer), each before its sublayers.

    Returns:
        An ordered dict `{path: layer}`.

    Example:

    >>> inputs = keras.Input((4,))
    >>> model = keras.Model(inputs, keras.layers.Dense(2, name="fc")(inputs))
    >>> list(leaf_layers(model))
    ['fc']
    """
    out = collections.OrderedDict()
    seen = set()

    def walk(layer, prefix):
        names = collections.Counter()
        for sub in _sublayers(layer):
            if id(sub) in seen:
                continue
            seen.add(id(sub))
            names[sub.name] += 1
            name = sub.name if names[sub.name] == 1 else f"{sub.name}#{names[sub.name]}"
            path = f"{prefix}{name}"
            if _sublayers(sub):
                if include_composite:
                    out[path] = sub
                walk(sub, path + "/")
            elif not isinstance(sub, keras.layers.InputLayer):
                out[path] = sub

    if not _sublayers(model):
        out[model.name] = model
    else:
        walk(model, "")
    return out


# ------------------------------------------------------------ copying


def _all_layers(layer):
    """Every layer below `layer` (not itself), depth first, each once."""
    out, seen = [], set()

    def walk(parent):
        for sub in _sublayers(parent):
            if id(sub) not in seen:
                seen.add(id(sub))
                out.append(sub)
                walk(sub)

    walk(layer)
    return out


def _same_structure(a, b):
    return type(a) is type(b) and [tuple(w.shape) for w in a.weights] == [
        tuple(w.shape) for w in b.weights
    ]


def copy_model(model):
    """A deep copy of a built Keras model: rebuilt from its config, same
    weights, same layer names.

    The copy is made with `keras.saving.serialize_keras_object` /
    `deserialize_keras_object` (which works for Functional and Sequential
    models and for Functional subclasses whose `get_config()` holds
    constructor arguments, such as KerasHub backbones), then every weight
    is assigned by position. Layers created inside composite layers
    without an explicit name get fresh automatic names when rebuilt
    (`dense_7` for `dense_3`), so every layer of the copy is given the
    name of its counterpart: `leaf_layers` paths of the copy and of the
    original are the same.

    Measured on the zoo (keras 3.15, keras-hub 0.32): outputs identical
    (max difference 0.0) for all `keras_hub_backbones()`;
    `copy.deepcopy` also works but took 1.8 times as long and keeps the
    fresh names; `keras.models.clone_model` fails on 27 of the 85.

    Args:
        model: a built `keras.Model`. Not modified.

    Returns:
        A new model of the same class with equal weights and names.

    Raises:
        ValueError: when the rebuilt model's layers or weights do not line
            up with the original's (a class whose config does not rebuild
            it as it was).

    Example:

    >>> inputs = keras.Input((4,))
    >>> model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    >>> twin = copy_model(model)
    >>> twin is model, np.allclose(twin.get_weights()[0], model.get_weights()[0])
    (False, True)
    """
    config = keras.saving.serialize_keras_object(model)
    twin = keras.saving.deserialize_keras_object(config)
    source, target = _all_layers(model), _all_layers(twin)
    shapes = [tuple(w.shape) for w in model.weights]
    if (
        len(source) != len(target)
        or not all(_same_structure(a, b) for a, b in zip(source, target))
        or shapes != [tuple(w.shape) for w in twin.weights]
    ):
        raise ValueError(
            f"copy_model: {model.__class__.__name__} '{model.name}' rebuilt "
            "from its config has other layers or weights than the original "
            "(its get_config() does not describe it fully). "
            f"Received: model={model.name}"
        )
    for s, t in zip(model.weights, twin.weights):
        t.assign(s)
    for a, b in zip(source, target):
        if b.name != a.name:
            b.name = a.name
    return twin


# --------------------------------------------------------- zero_units


def unit_axis(layer):
    """Where `zero_units` finds a leaf layer's output units.

    Args:
        layer: a Keras layer.

    Returns:
        `(weight name, axis)`: the weight holding the incoming weights of
        the units and the axis of the units in it (an int; `"depthwise"`
        for `DepthwiseConv*`, whose output channel `c * multiplier + m` is
        `kernel[..., c, m]`; `"rnn"` for RNN cells, whose unit `u` is column
        `g * units + u` of every gate `g`), or None for a layer `zero_units`
        leaves alone.

    Example:

    >>> unit_axis(keras.layers.Dense(3))
    ('kernel', -1)
    """
    L = keras.layers
    if isinstance(layer, L.Embedding):
        return "embeddings", -1
    if isinstance(layer, L.EinsumDense):
        return "kernel", _einsum_unit_axis(layer)
    if isinstance(layer, (L.SeparableConv1D, L.SeparableConv2D)):
        return "pointwise_kernel", -1
    if isinstance(layer, (L.DepthwiseConv1D, L.DepthwiseConv2D)):
        return "kernel", "depthwise"
    if isinstance(layer, (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)):
        return "kernel", -2
    if isinstance(layer, (L.Dense, L.Conv1D, L.Conv2D, L.Conv3D)):
        return "kernel", -1
    if isinstance(layer, (L.SimpleRNNCell, L.LSTMCell, L.GRUCell)):
        return "kernel", "rnn"
    return None


def _einsum_unit_axis(layer):
    """Index in the kernel of its last axis that is also an output axis."""
    equation = layer.equation.replace(" ", "")
    inputs, output = equation.split("->")
    kernel = inputs.split(",")[1]
    for i in range(len(kernel) - 1, -1, -1):
        if kernel[i] in output:
            return i
    raise ValueError(f"EinsumDense '{layer.name}' has no output axis: {equation}")


def _weight(layer, name):
    for w in layer.weights:
        if w.name == name or w.path.endswith("/" + name):
            return w
    return None


def _zero_layer(layer, rng, fraction):
    """Zero the incoming weights of `fraction` of `layer`'s output units.

    Returns the sorted zeroed unit indices, or None for an unknown layer.
    """
    rule = unit_axis(layer)
    if rule is None:
        return None
    name, axis = rule
    if isinstance(
        layer, (keras.layers.SimpleRNNCell, keras.layers.LSTMCell, keras.layers.GRUCell)
    ):
        return _zero_rnn_cell(layer, rng, fraction)
    kernel_var = _weight(layer, name)
    if kernel_var is None:
        return None
    kernel = keras.ops.convert_to_numpy(kernel_var).copy()
    bias_var = _weight(layer, "bias")
    bias = None if bias_var is None else keras.ops.convert_to_numpy(bias_var).copy()
    if axis == "depthwise":
        channels, multiplier = kernel.shape[-2], kernel.shape[-1]
        units = channels * multiplier
    else:
        units = kernel.shape[axis]
    count = int(fraction * units)
    if count == 0:
        return np.zeros((0,), dtype="int64")
    chosen = np.sort(rng.choice(units, count, replace=False)).astype("int64")
    if axis == "depthwise":
        kernel[..., chosen // multiplier, chosen % multiplier] = 0.0
    else:
        moved = np.moveaxis(kernel, axis, -1)
        moved[..., chosen] = 0.0
    kernel_var.assign(kernel)
    if bias is not None:
        if isinstance(layer, keras.layers.EinsumDense):
            _zero_einsum_bias(layer, bias, axis, chosen)
        else:
            bias[..., chosen] = 0.0
        bias_var.assign(bias)
    return chosen


def _zero_einsum_bias(layer, bias, kernel_axis, chosen):
    inputs, output = layer.equation.replace(" ", "").split("->")
    letter = inputs.split(",")[1][kernel_axis]
    bias_axes = layer.bias_axes or ""
    if letter not in bias_axes:
        return
    # As in Keras: the bias spans the output axes from the first bias axis
    # to the last one (size 1 on those not in `bias_axes`).
    letters = [c for c in output if c.isalpha()]
    first = min(letters.index(c) for c in bias_axes)
    moved = np.moveaxis(bias, letters[first:].index(letter), -1)
    moved[..., chosen] = 0.0


def _zero_rnn_cell(layer, rng, fraction):
    units = layer.units
    gates = {
        keras.layers.SimpleRNNCell: 1,
        keras.layers.LSTMCell: 4,
        keras.layers.GRUCell: 3,
    }[type(layer)]
    count = int(fraction * units)
    chosen = np.sort(rng.choice(units, count, replace=False)).astype("int64")
    columns = np.concatenate([g * units + chosen for g in range(gates)])
    for name in ("kernel", "recurrent_kernel", "bias"):
        var = _weight(layer, name)
        if var is None:
            continue
        value = keras.ops.convert_to_numpy(var).copy()
        value[..., columns] = 0.0
        var.assign(value)
    return chosen


def zero_units(model, fraction=0.3, seed=0):
    """A copy of `model` in which some units of every kernel layer are dead.

    For every kernel-bearing leaf layer anywhere in the model (nested
    models and composite layers included, see `leaf_layers`), a random
    `int(fraction * units)` of its output units get all their incoming
    weights set to zero: the kernel slice of that unit and its bias entry.
    What a "unit" is, per layer class:

    - `Dense`, `Conv1D/2D/3D` (any `groups`): the kernel's last axis
      (filters); bias entry `bias[u]`.
    - `EinsumDense`: the kernel's last axis that is also an output axis of
      the equation (e.g. `head_dim` for the query projection
      `"abc,cde->abde"`, the hidden size for the attention output
      `"abcd,cde->abe"`); the bias is zeroed along the same letter when
      it is one of `bias_axes`.
    - `SeparableConv1D/2D`: the pointwise kernel's last axis (the depthwise
      kernel is left alone).
    - `DepthwiseConv1D/2D`: output channel `u = c * depth_multiplier + m`
      is `kernel[..., c, m]`.
    - `Conv1D/2D/3DTranspose`: the kernel's second-to-last axis (filters).
    - `Embedding` (and subclasses such as KerasHub's `ReversibleEmbedding`;
      with tied weights the reverse projection is zeroed too): the
      embedding column `embeddings[:, u]`.
    - `SimpleRNNCell` / `LSTMCell` / `GRUCell`: unit `u`'s columns of every
      gate in `kernel`, `recurrent_kernel` and `bias` (its state stays 0).

    Other layers (normalizations, KerasHub position embeddings, custom
    layers holding their own kernels such as mixture-of-experts blocks)
    are not touched. With the default weights of a freshly built model a
    unit whose incoming weights are zero outputs `activation(0)`; see
    `perturb_weights` for non-zero biases elsewhere.

    The input model is never changed: the work is done on `copy_model`.

    Args:
        model: a built Keras model.
        fraction: fraction of each layer's units to zero, in `[0, 1]`.
        seed: seed of the NumPy generator choosing the units (layers are
            visited in `leaf_layers` order).

    Returns:
        `(copy, zeroed)`: the modified copy and `{path: sorted unit
        indices}` for every layer that had at least one unit zeroed
        (paths as in `leaf_layers`, the same in the copy and in `model`).

    Example:

    >>> inputs = keras.Input((4,))
    >>> x = keras.layers.Dense(10, name="fc1")(inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(2, name="fc2")(x))
    >>> twin, zeroed = zero_units(model, fraction=0.3)
    >>> {k: len(v) for k, v in zeroed.items()}
    {'fc1': 3}
    >>> bool(np.all(twin.get_layer("fc1").kernel.numpy()[:, zeroed["fc1"]] == 0))
    True
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(
            f"zero_units: `fraction` must be in [0, 1]. Received: fraction={fraction}"
        )
    twin = copy_model(model)
    rng = np.random.default_rng(seed)
    layers = leaf_layers(twin)
    zeroed = collections.OrderedDict()
    for path, layer in layers.items():
        chosen = _zero_layer(layer, rng, fraction)
        if chosen is not None and len(chosen):
            zeroed[path] = chosen
    return twin, zeroed
