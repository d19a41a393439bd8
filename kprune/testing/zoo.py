"""A zoo of tiny models for tests and benchmarks: KerasHub backbones,
`keras.applications`, and `zero_units` to plant removable units in them.

Every builder is a zero-argument function returning `(model, sample_inputs)`:
a freshly built model with seeded random weights (no presets, no
downloads) and a batch of 2 seeded inputs in the model's own input format
(a dict keyed by input name for KerasHub backbones, an array for
`keras.applications`).

- `keras_hub_backbones()`: one or more tiny configs of every KerasHub
  backbone family that can be built from constructor arguments (1-2
  layers, hidden size 8-32, 2-4 heads with grouped-query attention where
  the family has it, vocabulary 64, images 32x32 or the smallest the
  family accepts, sequences of 8 tokens). `keras_hub` is imported only
  when a builder runs.
- `applications()`: the 40 `keras.applications` models (`weights=None`,
  10 classes, logits) at the smallest input size each accepts.
- `zero_units(model, fraction, seed)`: a copy of the model in which the
  incoming weights of a random `fraction` of the output units of every
  kernel-bearing leaf layer (also inside composite layers) are zero.
- `leaf_layers(model)`: the leaf layers of a model, by path, as
  `zero_units` names them.
- `copy_model(model)`: a deep copy (`from_config` + weights).

Builders call `keras.utils.set_random_seed(seed)` (a global side effect) so
that the weights are the same on every call, then perturb biases and
normalization parameters (`perturb_weights`) so that a zeroed unit's
constant output (bias, BatchNorm offset) is not zero by accident.

Example:

>>> from kprune.testing import zoo
>>> model, x = zoo.applications()["MobileNet"]()
>>> model(x).shape
TensorShape([2, 10])
"""

import collections
import copy
import re

import keras
import numpy as np

BATCH = 2
SEQUENCE = 8
VOCAB = 64
IMAGE = 32

# ------------------------------------------------------------ helpers


def _seeded(seed):
    keras.utils.set_random_seed(seed)
    return np.random.default_rng(seed)


def _tokens(rng, vocab=VOCAB, length=SEQUENCE, batch=BATCH):
    return rng.integers(1, vocab, size=(batch, length)).astype("int32")


def _padding_mask(length=SEQUENCE, batch=BATCH, dtype="int32"):
    """All ones, but the second sample ends with 2 padding positions."""
    mask = np.ones((batch, length), dtype="int32")
    if batch > 1:
        mask[1, -2:] = 0
    return mask.astype(dtype)


def _segments(length=SEQUENCE, batch=BATCH):
    seg = np.zeros((batch, length), dtype="int32")
    seg[:, length // 2 :] = 1
    return seg


def _images(rng, size=IMAGE, channels=3, batch=BATCH):
    shape = (batch, *size, channels) if isinstance(size, tuple) else None
    shape = shape or (batch, size, size, channels)
    return rng.uniform(0.0, 1.0, size=shape).astype("float32")


def _text_inputs(rng, vocab=VOCAB, segments=False, mask=True, prefix=""):
    out = {f"{prefix}token_ids": _tokens(rng, vocab)}
    if segments:
        out[f"{prefix}segment_ids"] = _segments()
    if mask:
        out[f"{prefix}padding_mask"] = _padding_mask()
    return out


def perturb_weights(model, seed=0, scale=0.1):
    """Give biases and normalization parameters seeded random values.

    Freshly built layers have zero biases, BatchNorm statistics (0, 1) and
    norm scales of 1, so a unit whose incoming weights are zeroed outputs
    exactly zero and exactness tests never see a non-zero constant that
    must be folded into the consumers. This function changes, in place:

    - `BatchNormalization`: `gamma ~ U(0.5, 1.5)`, `beta ~ N(0, 0.5)`,
      `moving_mean ~ N(0, 0.5)`, `moving_variance ~ U(0.5, 2)`;
    - every other floating-point weight with one dimension (biases,
      LayerNorm / RMSNorm scales and offsets, LayerScale ...):
      `w + N(0, scale)`.

    Kernels, embeddings and weights with 2 or more dimensions are left as
    they are.

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
            if len(w.shape) != 1 or "float" not in str(w.dtype):
                continue
            value = keras.ops.convert_to_numpy(w)
            w.assign(value + rng.normal(0.0, scale, value.shape).astype(value.dtype))
    return model


# ----------------------------------------------------- layer walking


def _sublayers(layer):
    if hasattr(layer, "_flatten_layers"):
        return list(layer._flatten_layers(include_self=False, recursive=False))
    return []


def leaf_layers(model):
    """The leaf layers of `model`, anywhere inside it, by path.

    Walks `layer._flatten_layers(recursive=False)` depth first from the
    model (nested models and composite layers included). A leaf is a
    layer with no sublayers. Its path is the names of the layers leading
    to it, joined by `/`, without the model's own name
    (`"transformer_layer_0/_self_attention_layer/query"`); a name repeated
    among siblings gets `#2`, `#3` ... A layer reachable twice (shared)
    appears once, under its first path.

    Args:
        model: a Keras model or layer.

    Returns:
        An ordered dict `{path: layer}`.

    Example:

    >>> inputs = keras.Input((4,))
    >>> model = keras.Model(inputs, keras.layers.Dense(2, name="fc")(inputs))
    >>> list(leaf_layers(model))
    ['input_layer', 'fc']
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
                walk(sub, path + "/")
            else:
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

def _unit_axis(layer):
    """(weight name, axis of units, number of units) of a leaf layer's
    main kernel, or None when kprune's zoo does not know the layer."""
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
    rule = _unit_axis(layer)
    if rule is None:
        return None
    name, axis = rule
    if isinstance(layer, (keras.layers.SimpleRNNCell, keras.layers.LSTMCell, keras.layers.GRUCell)):
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
    # The bias holds the output axes listed in `bias_axes`, in output order.
    bias_letters = [c for c in output if c in (layer.bias_axes or "")]
    if letter in bias_letters:
        moved = np.moveaxis(bias, bias_letters.index(letter), -1)
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


# ------------------------------------------------- KerasHub backbones

_HUB = collections.OrderedDict()


def _hub(name, *aliases):
    """Registers a KerasHub builder `fn(hub, rng) -> (backbone, inputs)`."""

    def register(fn):
        _HUB[name] = fn
        return fn

    return register


def _models():
    import keras_hub

    return keras_hub.models


# Text encoders ----------------------------------------------------------

_ENC = dict(vocabulary_size=VOCAB, num_layers=2, num_heads=2, hidden_dim=16,
            intermediate_dim=32, max_sequence_length=16)


@_hub("bert")
def _bert(m, rng):
    return m.BertBackbone(**_ENC), _text_inputs(rng, segments=True)


@_hub("distil_bert")
def _distil_bert(m, rng):
    return m.DistilBertBackbone(**_ENC), _text_inputs(rng)


@_hub("roberta")
def _roberta(m, rng):
    return m.RobertaBackbone(**_ENC), _text_inputs(rng)


@_hub("xlm_roberta")
def _xlm_roberta(m, rng):
    return m.XLMRobertaBackbone(**_ENC), _text_inputs(rng)


@_hub("albert")
def _albert(m, rng):
    b = m.AlbertBackbone(**_ENC, embedding_dim=8, num_groups=1, num_inner_repetitions=1)
    return b, _text_inputs(rng, segments=True)


@_hub("electra")
def _electra(m, rng):
    kw = dict(_ENC)
    kw["vocab_size"] = kw.pop("vocabulary_size")
    return m.ElectraBackbone(**kw, embedding_dim=8), _text_inputs(rng, segments=True)


@_hub("deberta_v3")
def _deberta_v3(m, rng):
    return m.DebertaV3Backbone(**_ENC, bucket_size=4), _text_inputs(rng)


@_hub("f_net")
def _f_net(m, rng):
    kw = {k: v for k, v in _ENC.items() if k != "num_heads"}
    return m.FNetBackbone(**kw), _text_inputs(rng, segments=True, mask=False)


@_hub("roformer_v2")
def _roformer_v2(m, rng):
    kw = {k: v for k, v in _ENC.items() if k != "max_sequence_length"}
    b = m.RoformerV2Backbone(**kw, head_size=8)
    return b, _text_inputs(rng, segments=True, mask=False)


@_hub("esm2")
def _esm2(m, rng):
    return m.ESM2Backbone(**_ENC), _text_inputs(rng, mask=False)


@_hub("esm_absolute")
def _esm_absolute(m, rng):
    b = m.ESMBackbone(**_ENC, position_embedding_type="absolute", use_pre_layer_norm=True)
    return b, _text_inputs(rng, mask=False)


@_hub("xlnet")
def _xlnet(m, rng):
    kw = {k: v for k, v in _ENC.items() if k != "max_sequence_length"}
    return m.XLNetBackbone(**kw), _text_inputs(rng, segments=True)


# Decoders ---------------------------------------------------------------

_DEC = dict(vocabulary_size=VOCAB, num_layers=2, hidden_dim=16, intermediate_dim=32)
_GQA = dict(_DEC, num_query_heads=4, num_key_value_heads=2)


@_hub("gpt2")
def _gpt2(m, rng):
    return m.GPT2Backbone(**_DEC, num_heads=2, max_sequence_length=16), _text_inputs(rng)


@_hub("opt")
def _opt(m, rng):
    return m.OPTBackbone(**_DEC, num_heads=2, max_sequence_length=16), _text_inputs(rng)


@_hub("bloom")
def _bloom(m, rng):
    return m.BloomBackbone(**_DEC, num_heads=2), _text_inputs(rng)


@_hub("gpt_neo_x")
def _gpt_neo_x(m, rng):
    b = m.GPTNeoXBackbone(**_DEC, num_heads=2, max_sequence_length=16)
    return b, _text_inputs(rng)


@_hub("falcon")
def _falcon(m, rng):
    return m.FalconBackbone(**_DEC, num_attention_heads=2), _text_inputs(rng)


@_hub("gemma")
def _gemma(m, rng):
    return m.GemmaBackbone(**_GQA, head_dim=4), _text_inputs(rng)


@_hub("gemma2")
def _gemma2(m, rng):
    b = m.GemmaBackbone(
        **_GQA, head_dim=4, use_post_ffw_norm=True, use_post_attention_norm=True,
        attention_logit_soft_cap=50.0, final_logit_soft_cap=30.0,
        use_sliding_window_attention=True, sliding_window_size=4,
    )
    return b, _text_inputs(rng)


@_hub("gemma3")
def _gemma3(m, rng):
    b = m.Gemma3Backbone(
        **_GQA, head_dim=4, image_size=16, use_post_ffw_norm=True,
        use_post_attention_norm=True, use_sliding_window_attention=True,
        sliding_window_size=4,
    )
    return b, _text_inputs(rng)


@_hub("llama")
def _llama(m, rng):
    return m.LlamaBackbone(**_GQA), _text_inputs(rng)


@_hub("llama3")
def _llama3(m, rng):
    b = m.Llama3Backbone(
        **_GQA, rope_frequency_adjustment_factor=8.0, rope_low_freq_factor=1.0,
        rope_high_freq_factor=4.0, rope_pretraining_sequence_length=16,
    )
    return b, _text_inputs(rng)


@_hub("mistral")
def _mistral(m, rng):
    return m.MistralBackbone(**_GQA, sliding_window=4), _text_inputs(rng)


@_hub("qwen")
def _qwen(m, rng):
    return m.QwenBackbone(**_GQA), _text_inputs(rng)


@_hub("qwen3")
def _qwen3(m, rng):
    return m.Qwen3Backbone(**_GQA, head_dim=4), _text_inputs(rng)


@_hub("qwen_moe")
def _qwen_moe(m, rng):
    b = m.QwenMoeBackbone(
        **_GQA, moe_intermediate_dim=8, shared_expert_intermediate_dim=16,
        num_experts=4, top_k=2,
    )
    return b, _text_inputs(rng)


@_hub("qwen3_moe")
def _qwen3_moe(m, rng):
    b = m.Qwen3MoeBackbone(
        **_GQA, head_dim=4, moe_intermediate_dim=8, num_experts=4, top_k=2
    )
    return b, _text_inputs(rng)


@_hub("qwen3_5")
def _qwen3_5(m, rng):
    b = m.Qwen3_5Backbone(
        **_GQA, head_dim=8, layer_types=["linear_attention", "full_attention"],
        linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=4,
        linear_value_head_dim=4,
    )
    return b, _text_inputs(rng)


@_hub("qwen3_5_moe")
def _qwen3_5_moe(m, rng):
    kw = {k: v for k, v in _GQA.items() if k != "intermediate_dim"}
    b = m.Qwen3_5MoeBackbone(
        **kw, head_dim=8, moe_intermediate_dim=8, shared_expert_intermediate_size=8,
        num_experts=4, top_k=2, layer_types=["linear_attention", "full_attention"],
        linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=4,
        linear_value_head_dim=4,
    )
    return b, _text_inputs(rng)


@_hub("phi3")
def _phi3(m, rng):
    return m.Phi3Backbone(**_GQA), _text_inputs(rng)


@_hub("phi3_su_rope")
def _phi3_su_rope(m, rng):
    b = m.Phi3Backbone(
        **_GQA, max_sequence_length=16, pretraining_sequence_length=8,
        rope_scaling_type="su", rope_scaling_short_factor=[1.2, 1.4],
        rope_scaling_long_factor=[0.8, 0.6],
    )
    return b, _text_inputs(rng)


@_hub("mixtral")
def _mixtral(m, rng):
    b = m.MixtralBackbone(**_GQA, num_experts=4, top_k=2, sliding_window=4)
    return b, _text_inputs(rng)


@_hub("gpt_oss")
def _gpt_oss(m, rng):
    b = m.GptOssBackbone(**_GQA, num_experts=4, top_k=2, sliding_window=4)
    return b, _text_inputs(rng)


@_hub("smollm3")
def _smollm3(m, rng):
    kw = {k: v for k, v in _GQA.items() if k != "num_query_heads"}
    b = m.SmolLM3Backbone(
        **kw, num_attention_heads=4, attention_bias=False, attention_dropout=0.0,
        rope_layer_enabled_list=[True, False], layer_types=["attention", "attention"],
        mlp_bias=False, layer_norm_epsilon=1e-5, max_position_embeddings=16,
        rope_theta=10000.0, partial_rotary_factor=1.0,
    )
    return b, _text_inputs(rng)


@_hub("rwkv7")
def _rwkv7(m, rng):
    b = m.RWKV7Backbone(
        hidden_size=16, head_size=4, num_layers=2, vocabulary_size=VOCAB,
        intermediate_dim=32, gate_lora=8, mv_lora=8, aaa_lora=8, decay_lora=8,
    )
    return b, _text_inputs(rng)


# Encoder-decoders -------------------------------------------------------


def _seq2seq_inputs(rng, encoder="encoder_token_ids"):
    out = {}
    if encoder:
        out[encoder] = _tokens(rng)
        out["encoder_padding_mask"] = _padding_mask()
    out["decoder_token_ids"] = _tokens(rng)
    out["decoder_padding_mask"] = _padding_mask()
    return out


@_hub("t5")
def _t5(m, rng):
    b = m.T5Backbone(vocabulary_size=VOCAB, num_layers=2, num_heads=2, hidden_dim=16,
                     intermediate_dim=32)
    return b, _seq2seq_inputs(rng)


@_hub("bart")
def _bart(m, rng):
    return m.BartBackbone(**_ENC), _seq2seq_inputs(rng)


@_hub("t5gemma")
def _t5gemma(m, rng):
    side = dict(hidden_dim=16, intermediate_dim=32, num_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=4,
                layer_types=["sliding_attention", "full_attention"])
    kw = {f"{p}_{k}": v for p in ("encoder", "decoder") for k, v in side.items()}
    b = m.T5GemmaBackbone(vocabulary_size=VOCAB, sliding_window=4,
                          cross_attention_hidden_size=16, **kw)
    return b, _seq2seq_inputs(rng)


@_hub("t5gemma2")
def _t5gemma2(m, rng):
    side = dict(hidden_dim=16, intermediate_dim=32, num_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=4,
                layer_types=["sliding_attention", "full_attention"])
    kw = {f"{p}_{k}": v for p in ("encoder", "decoder") for k, v in side.items()}
    b = m.T5Gemma2Backbone(vocabulary_size=VOCAB, sliding_window=4,
                           cross_attention_hidden_size=16, **kw)
    return b, _seq2seq_inputs(rng)


@_hub("edrec")
def _edrec(m, rng):
    b = m.EdRecBackbone(vocab_size=VOCAB, num_layers_enc=2, num_layers_dec=2,
                        hidden_dim=16, intermediate_dim=32, num_heads=2)
    return b, _seq2seq_inputs(rng)


@_hub("whisper")
def _whisper(m, rng):
    b = m.WhisperBackbone(vocabulary_size=VOCAB, num_layers=2, num_heads=2,
                          hidden_dim=16, intermediate_dim=32, num_mels=16,
                          max_encoder_sequence_length=16,
                          max_decoder_sequence_length=16)
    x = {"encoder_features": rng.normal(size=(BATCH, 16, 16)).astype("float32")}
    x.update(_seq2seq_inputs(rng, encoder=None))
    return b, x


@_hub("moonshine")
def _moonshine(m, rng):
    b = m.MoonshineBackbone(
        vocabulary_size=VOCAB, filter_dim=16, encoder_num_layers=2,
        decoder_num_layers=2, hidden_dim=16, intermediate_dim=32,
        encoder_num_heads=2, decoder_num_heads=2, max_position_embeddings=64,
    )
    samples = 3584  # 8 encoder frames after the strided convolutions
    x = {
        "encoder_input_values": rng.normal(size=(BATCH, samples, 1)).astype("float32"),
        "encoder_padding_mask": np.ones((BATCH, samples), dtype="bool"),
        "decoder_token_ids": _tokens(rng),
        "decoder_padding_mask": _padding_mask(dtype="bool"),
    }
    return b, x


# Vision -----------------------------------------------------------------


@_hub("resnet_basic")
def _resnet_basic(m, rng):
    b = m.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 16], stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 2], block_type="basic_block",
        image_shape=(IMAGE, IMAGE, 3),
    )
    return b, _images(rng)


@_hub("resnet_bottleneck")
def _resnet_bottleneck(m, rng):
    b = m.ResNetBackbone(
        input_conv_filters=[8], input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 16], stackwise_num_blocks=[1, 2],
        stackwise_num_strides=[1, 2], block_type="bottleneck_block",
        image_shape=(IMAGE, IMAGE, 3),
    )
    return b, _images(rng)


@_hub("resnet_v2")
def _resnet_v2(m, rng):
    b = m.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 16], stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 2], block_type="basic_block",
        use_pre_activation=True, image_shape=(IMAGE, IMAGE, 3),
    )
    return b, _images(rng)


@_hub("resnet_vd")
def _resnet_vd(m, rng):
    b = m.ResNetBackbone(
        input_conv_filters=[8, 8, 16], input_conv_kernel_sizes=[3, 3, 3],
        stackwise_num_filters=[64, 16], stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 2], block_type="basic_block_vd",
        image_shape=(IMAGE, IMAGE, 3),
    )
    return b, _images(rng)


@_hub("mobilenet_v3")
def _mobilenet_v3(m, rng):
    b = m.MobileNetBackbone(
        stackwise_expansion=[[16, 24], [32, 48]],
        stackwise_num_blocks=[2, 2],
        stackwise_num_filters=[[8, 8], [16, 16]],
        stackwise_kernel_size=[[3, 3], [5, 5]],
        stackwise_num_strides=[[2, 1], [2, 1]],
        stackwise_se_ratio=[[None, None], [0.25, 0.25]],
        stackwise_activation=[["relu", "relu"], ["hard_swish", "hard_swish"]],
        stackwise_padding=[[1, 1], [2, 2]],
        output_num_filters=32, depthwise_filters=8, depthwise_stride=2,
        depthwise_residual=False, squeeze_and_excite=0.5, last_layer_filter=48,
        input_num_filters=8, image_shape=(IMAGE, IMAGE, 3),
    )
    return b, _images(rng)


@_hub("mobilenet_v5")
def _mobilenet_v5(m, rng):
    b = m.MobileNetV5Backbone(
        stackwise_block_types=[["er"], ["uir", "uir"]],
        stackwise_num_blocks=[1, 2],
        stackwise_num_filters=[[8], [16, 16]],
        stackwise_strides=[[2], [2, 1]],
        stackwise_act_layers=[["relu"], ["relu", "relu"]],
        stackwise_exp_ratios=[[2.0], [2.0, 2.0]],
        stackwise_se_ratios=[[0.0], [0.0, 0.0]],
        stackwise_dw_kernel_sizes=[[0], [3, 3]],
        stackwise_dw_start_kernel_sizes=[[0], [0, 0]],
        stackwise_dw_end_kernel_sizes=[[0], [0, 0]],
        stackwise_exp_kernel_sizes=[[3], [0, 0]],
        stackwise_pw_kernel_sizes=[[1], [0, 0]],
        stackwise_num_heads=[[0], [0, 0]],
        stackwise_key_dims=[[0], [0, 0]],
        stackwise_value_dims=[[0], [0, 0]],
        stackwise_kv_strides=[[0], [0, 0]],
        stackwise_use_cpe=[[False], [False, False]],
        stem_size=8, num_features=32, use_msfa=False,
        image_shape=(IMAGE, IMAGE, 3),
    )
    return b, _images(rng)


def _efficientnet(m, block_types, se):
    return m.EfficientNetBackbone(
        stackwise_kernel_sizes=[3, 3],
        stackwise_num_repeats=[1, 2],
        stackwise_input_filters=[8, 8],
        stackwise_output_filters=[8, 16],
        stackwise_expansion_ratios=[1, 4],
        stackwise_squeeze_and_excite_ratios=se,
        stackwise_strides=[1, 2],
        stackwise_block_types=block_types,
        stackwise_force_input_filters=[0, 0],
        stackwise_nores_option=[False, False],
        # `num_features` stays at its default: KerasHub 0.32's get_config()
        # leaves it out, so another value would not survive a copy.
        width_coefficient=1.0, depth_coefficient=1.0, input_shape=(IMAGE, IMAGE, 3),
    )


@_hub("efficientnet")
def _efficientnet_b(m, rng):
    return _efficientnet(m, ["unfused", "unfused"], [0.25, 0.25]), _images(rng)


@_hub("efficientnet_v2")
def _efficientnet_v2(m, rng):
    return _efficientnet(m, ["fused", "unfused"], [0.0, 0.25]), _images(rng)


@_hub("cspnet")
def _cspnet(m, rng):
    b = m.CSPNetBackbone(
        stem_filters=8, stem_kernel_size=3, stem_strides=1,
        stackwise_depth=[1, 1], stackwise_strides=2,
        stackwise_num_filters=[8, 16], block_type="dark_block",
        stage_type="csp", stem_padding="same", down_growth=True,
        bottle_ratio=(0.5, 1.0), block_ratio=(1.0, 0.5), expand_ratio=(2.0, 1.0),
        image_shape=(IMAGE, IMAGE, 3),
    )
    return b, _images(rng)


@_hub("densenet")
def _densenet(m, rng):
    b = m.DenseNetBackbone(stackwise_num_repeats=[1, 2], growth_rate=4,
                           image_shape=(IMAGE, IMAGE, 3))
    return b, _images(rng)


@_hub("vgg")
def _vgg(m, rng):
    b = m.VGGBackbone(stackwise_num_repeats=[1, 2], stackwise_num_filters=[8, 16],
                      image_shape=(IMAGE, IMAGE, 3))
    return b, _images(rng)


@_hub("xception")
def _xception(m, rng):
    b = m.XceptionBackbone(
        stackwise_conv_filters=[[8, 16], [32, 32], [32, 32]],
        stackwise_pooling=[False, True, False], image_shape=(IMAGE, IMAGE, 3),
    )
    return b, _images(rng)


@_hub("hgnetv2")
def _hgnetv2(m, rng):
    b = m.HGNetV2Backbone(
        depths=[1, 1], embedding_size=16, hidden_sizes=[16, 32],
        stem_channels=[3, 8, 16], hidden_act="relu",
        use_learnable_affine_block=True,
        stackwise_stage_filters=[[16, 8, 16, 1, 1, 3], [16, 8, 32, 1, 1, 3]],
        apply_downsample=[False, True], use_lightweight_conv_block=[False, True],
        image_shape=(IMAGE, IMAGE, 3),
    )
    return b, _images(rng)


@_hub("mit")
def _mit(m, rng):
    b = m.MiTBackbone(
        layerwise_depths=[1, 1], num_layers=2, hidden_dims=[8, 16],
        layerwise_num_heads=[1, 2], layerwise_sr_ratios=[4, 2],
        max_drop_path_rate=0.0, layerwise_patch_sizes=[7, 3],
        layerwise_strides=[4, 2], image_shape=(IMAGE, IMAGE, 3),
    )
    return b, _images(rng)


@_hub("vit")
def _vit(m, rng):
    b = m.ViTBackbone(image_shape=(IMAGE, IMAGE, 3), patch_size=8, num_layers=2,
                      num_heads=2, hidden_dim=16, mlp_dim=32)
    return b, _images(rng)


@_hub("deit")
def _deit(m, rng):
    b = m.DeiTBackbone(image_shape=(IMAGE, IMAGE, 3), patch_size=8, num_layers=2,
                       num_heads=2, hidden_dim=16, intermediate_dim=32)
    return b, _images(rng)


@_hub("dinov2")
def _dinov2(m, rng):
    b = m.DINOV2Backbone(
        patch_size=8, num_layers=2, hidden_dim=16, num_heads=2, intermediate_dim=32,
        num_register_tokens=0, image_shape=(IMAGE, IMAGE, 3),
        position_embedding_shape=(IMAGE, IMAGE, 3),
    )
    return b, {"images": _images(rng)}


@_hub("dinov2_registers_swiglu")
def _dinov2_registers(m, rng):
    b = m.DINOV2Backbone(
        patch_size=8, num_layers=2, hidden_dim=16, num_heads=2, intermediate_dim=32,
        num_register_tokens=2, use_swiglu_ffn=True, image_shape=(IMAGE, IMAGE, 3),
        position_embedding_shape=(IMAGE, IMAGE, 3),
    )
    return b, {"images": _images(rng)}


@_hub("dinov3")
def _dinov3(m, rng):
    b = m.DINOV3Backbone(
        patch_size=8, num_layers=2, hidden_dim=16, num_heads=2, intermediate_dim=32,
        num_register_tokens=2, image_shape=(IMAGE, IMAGE, 3),
    )
    return b, {"pixel_values": _images(rng)}


@_hub("vit_det")
def _vit_det(m, rng):
    b = m.ViTDetBackbone(
        hidden_size=16, num_layers=2, intermediate_dim=32, num_heads=2,
        global_attention_layer_indices=[1], image_shape=(IMAGE, IMAGE, 3),
        patch_size=8, num_output_channels=8, window_size=2,
    )
    return b, _images(rng)


@_hub("swin")
def _swin(m, rng):
    b = m.SwinTransformerBackbone(
        image_shape=(IMAGE, IMAGE, 3), embed_dim=8, depths=(1, 1),
        num_heads=(2, 2), window_size=4, patch_size=4, drop_path=0.0,
    )
    return b, _images(rng)


@_hub("video_prism")
def _video_prism(m, rng):
    b = m.VideoPrismBackbone(
        num_frames=2, patch_size=8, hidden_dim=16, intermediate_dim=32,
        num_heads=2, num_spatial_layers=1, num_temporal_layers=1,
        num_auxiliary_layers=1, image_shape=(IMAGE, IMAGE, 3),
    )
    frames = rng.uniform(size=(BATCH, 2, IMAGE, IMAGE, 3)).astype("float32")
    return b, frames


# Image + text -----------------------------------------------------------


@_hub("clip")
def _clip(m, rng):
    vision = m.CLIPVisionEncoder(patch_size=8, hidden_dim=16, num_layers=2,
                                 num_heads=2, intermediate_dim=32,
                                 image_shape=(IMAGE, IMAGE, 3), name="vision_encoder")
    text = m.CLIPTextEncoder(vocabulary_size=VOCAB, embedding_dim=16, hidden_dim=16,
                             num_layers=2, num_heads=2, intermediate_dim=32,
                             max_sequence_length=SEQUENCE, name="text_encoder")
    b = m.CLIPBackbone(vision_encoder=vision, text_encoder=text, projection_dim=16)
    return b, {"images": _images(rng), "token_ids": _tokens(rng)}


@_hub("metaclip2")
def _metaclip2(m, rng):
    vision = m.MetaCLIP2VisionEncoder(patch_size=8, hidden_dim=16, num_layers=2,
                                      num_heads=2, intermediate_dim=32,
                                      image_shape=(IMAGE, IMAGE, 3),
                                      name="vision_encoder")
    text = m.MetaCLIP2TextEncoder(vocabulary_size=VOCAB, embedding_dim=16,
                                  hidden_dim=16, num_layers=2, num_heads=2,
                                  intermediate_dim=32, max_sequence_length=SEQUENCE,
                                  name="text_encoder")
    b = m.MetaCLIP2Backbone(vision_encoder=vision, text_encoder=text,
                            projection_dim=16)
    return b, {"images": _images(rng), "token_ids": _tokens(rng)}


@_hub("siglip")
def _siglip(m, rng):
    vision = m.SigLIPVisionEncoder(patch_size=8, hidden_dim=16, num_layers=2,
                                   num_heads=2, intermediate_dim=32,
                                   image_shape=(IMAGE, IMAGE, 3), name="vision_encoder")
    text = m.SigLIPTextEncoder(vocabulary_size=VOCAB, embedding_dim=16, hidden_dim=16,
                               num_layers=2, num_heads=2, intermediate_dim=32,
                               max_sequence_length=SEQUENCE, name="text_encoder")
    b = m.SigLIPBackbone(vision_encoder=vision, text_encoder=text)
    return b, {"images": _images(rng), "token_ids": _tokens(rng)}



# Backbones built around other backbones ---------------------------------


def _tiny_resnet(m, **kw):
    return m.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 16, 16], stackwise_num_blocks=[1, 1, 1],
        stackwise_num_strides=[1, 2, 2], block_type="basic_block", **kw,
    )


@_hub("basnet")
def _basnet(m, rng):
    encoder = m.ResNetBackbone(
        input_conv_filters=[8], input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 8, 8, 8], stackwise_num_blocks=[1, 1, 1, 1],
        stackwise_num_strides=[1, 2, 2, 2], block_type="bottleneck_block",
    )
    b = m.BASNetBackbone(image_encoder=encoder, num_classes=1, projection_filters=8,
                         image_shape=(IMAGE, IMAGE, 3))
    return b, _images(rng)


@_hub("deeplab_v3")
def _deeplab_v3(m, rng):
    encoder = _tiny_resnet(m)
    b = m.DeepLabV3Backbone(
        image_encoder=encoder, low_level_feature_key="P2",
        spatial_pyramid_pooling_key="P4", dilation_rates=[1, 2],
        upsampling_size=4, projection_filters=8, image_shape=(IMAGE, IMAGE, 3),
    )
    return b, _images(rng)


@_hub("retinanet")
def _retinanet(m, rng):
    encoder = m.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 16, 16, 16], stackwise_num_blocks=[1, 1, 1, 1],
        stackwise_num_strides=[1, 2, 2, 2], block_type="basic_block",
    )
    b = m.RetinaNetBackbone(image_encoder=encoder, min_level=3, max_level=5,
                            use_p5=True, image_shape=(64, 64, 3))
    return b, _images(rng, 64)


@_hub("segformer")
def _segformer(m, rng):
    encoder = m.MiTBackbone(
        layerwise_depths=[1, 1], num_layers=2, hidden_dims=[8, 16],
        layerwise_num_heads=[1, 2], layerwise_sr_ratios=[4, 2],
        max_drop_path_rate=0.0, layerwise_patch_sizes=[7, 3],
        layerwise_strides=[4, 2], image_shape=(IMAGE, IMAGE, 3),
    )
    b = m.SegFormerBackbone(image_encoder=encoder, projection_filters=8)
    return b, _images(rng)


@_hub("depth_anything")
def _depth_anything(m, rng):
    encoder = m.DINOV2Backbone(
        patch_size=7, num_layers=4, hidden_dim=16, num_heads=2,
        intermediate_dim=32, image_shape=(56, 56, 3),
        position_embedding_shape=(56, 56, 3), apply_layernorm=True,
        name="image_encoder",
    )
    b = m.DepthAnythingBackbone(
        image_encoder=encoder, reassemble_factors=[4, 2, 1, 0.5],
        neck_hidden_dims=[8, 8, 16, 16], fusion_hidden_dim=16, head_hidden_dim=8,
        head_in_index=-1, feature_keys=["stage1", "stage2", "stage3", "stage4"],
    )
    return b, _images(rng, 56)


@_hub("sam")
def _sam(m, rng):
    from keras_hub.layers import SAMMaskDecoder, SAMPromptEncoder

    encoder = m.ViTDetBackbone(
        hidden_size=16, num_layers=2, intermediate_dim=32, num_heads=2,
        global_attention_layer_indices=[1], patch_size=8, num_output_channels=8,
        window_size=2, image_shape=(IMAGE, IMAGE, 3),
    )
    prompt = SAMPromptEncoder(hidden_size=8, image_embedding_size=(4, 4),
                              input_image_size=(IMAGE, IMAGE), mask_in_channels=8)
    decoder = SAMMaskDecoder(hidden_size=8, num_layers=2, intermediate_dim=16,
                             num_heads=2, embedding_dim=8, num_multimask_outputs=3,
                             iou_head_depth=2, iou_head_hidden_dim=8)
    b = m.SAMBackbone(image_encoder=encoder, prompt_encoder=prompt,
                      mask_decoder=decoder)
    x = {
        "images": _images(rng),
        "points": rng.uniform(0, IMAGE, size=(BATCH, 1, 2)).astype("float32"),
        "labels": np.ones((BATCH, 1), dtype="float32"),
        "boxes": rng.uniform(0, IMAGE, size=(BATCH, 1, 2, 2)).astype("float32"),
        "masks": np.zeros((BATCH, 0, IMAGE, IMAGE, 1), dtype="float32"),
    }
    return b, x


@_hub("sam3")
def _sam3(m, rng):
    from keras_hub.layers import (
        SAM3DetrDecoder, SAM3DetrEncoder, SAM3GeometryEncoder, SAM3MaskDecoder,
        SAM3TextEncoder, SAM3VisionEncoder,
    )

    size = 28
    kw = dict(hidden_dim=16, intermediate_dim=32, num_heads=2)
    b = m.SAM3PromptableConceptBackbone(
        vision_encoder=SAM3VisionEncoder(
            image_shape=(size, size, 3), patch_size=14, num_layers=2,
            fpn_hidden_dim=16, fpn_scale_factors=[4.0, 2.0, 1.0, 0.5],
            pretrain_image_shape=(42, 42, 3), window_size=2,
            global_attn_indexes=[1], **kw,
        ),
        text_encoder=SAM3TextEncoder(vocabulary_size=VOCAB, embedding_dim=16,
                                     num_layers=2, **kw),
        geometry_encoder=SAM3GeometryEncoder(num_layers=1, roi_size=7, **kw),
        detr_encoder=SAM3DetrEncoder(num_layers=1, **kw),
        detr_decoder=SAM3DetrDecoder(image_shape=(size, size, 3), patch_size=14,
                                     num_layers=1, num_queries=4, **kw),
        mask_decoder=SAM3MaskDecoder(num_upsampling_stages=3, hidden_dim=16,
                                     num_heads=2),
    )
    x = {
        "pixel_values": _images(rng, size),
        "token_ids": _tokens(rng),
        "padding_mask": _padding_mask(dtype="bool"),
        "boxes": rng.uniform(0, 1, size=(BATCH, 1, 5)).astype("float32"),
        "box_labels": np.ones((BATCH, 1), dtype="int32"),
    }
    return b, x


@_hub("d_fine")
def _d_fine(m, rng):
    hgnet = m.HGNetV2Backbone(
        stem_channels=[3, 8, 8],
        stackwise_stage_filters=[[8, 8, 16, 1, 1, 3], [16, 8, 32, 1, 1, 3]],
        apply_downsample=[False, True], use_lightweight_conv_block=[False, False],
        depths=[1, 1], hidden_sizes=[16, 32], embedding_size=8,
        use_learnable_affine_block=True, hidden_act="relu",
        image_shape=(None, None, 3), out_features=["stage1", "stage2"],
    )
    b = m.DFineBackbone(
        backbone=hgnet, decoder_in_channels=[16, 16], encoder_hidden_dim=16,
        num_denoising=0, num_labels=4, hidden_dim=16, learn_initial_query=False,
        num_queries=4, anchor_image_size=(IMAGE, IMAGE), feat_strides=[4, 8],
        num_feature_levels=2, encoder_in_channels=[16, 32], encode_proj_layers=[1],
        num_attention_heads=2, encoder_ffn_dim=32, num_encoder_layers=1,
        hidden_expansion=0.5, depth_multiplier=0.5, eval_idx=-1,
        num_decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=32,
        decoder_n_points=[2, 2], lqe_hidden_dim=8, num_lqe_layers=1,
        out_features=["stage1", "stage2"], image_shape=(IMAGE, IMAGE, 3), seed=0,
    )
    return b, _images(rng)


@_hub("parseq")
def _parseq(m, rng):
    encoder = m.ViTBackbone(
        image_shape=(IMAGE, 64, 3), patch_size=(8, 8), num_layers=1, num_heads=2,
        hidden_dim=16, mlp_dim=32, use_class_token=False, name="image_encoder",
    )
    b = m.PARSeqBackbone(
        image_encoder=encoder, vocabulary_size=VOCAB, max_label_length=SEQUENCE,
        decoder_hidden_dim=16, num_decoder_layers=1, num_decoder_heads=2,
        decoder_mlp_dim=32, dropout_rate=0.0, attention_dropout=0.0,
    )
    x = {"images": _images(rng, (IMAGE, 64))}
    x.update(_text_inputs(rng))
    return b, x


@_hub("blip2")
def _blip2(m, rng):
    vision = m.BLIP2VisionEncoder(
        image_size=IMAGE, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16,
        intermediate_dim=32, use_patch_bias=True, use_class_token=True,
        use_mha_bias=True, use_mlp_bias=True, dropout_rate=0.0,
        layer_norm_epsilon=1e-6, initializer_range=0.02,
    )
    qformer = m.BLIP2QFormer(
        num_query_tokens=2, num_layers=1, num_heads=2, hidden_dim=8,
        intermediate_dim=16, vision_dim=16, cross_attention_frequency=1,
        dropout=0.0, layer_norm_epsilon=1e-6,
    )
    language = m.BLIP2CustomOPT(
        vocabulary_size=VOCAB, num_layers=1, num_heads=2, hidden_dim=8,
        intermediate_dim=16, num_query_tokens=2, qformer_hidden_dim=8,
        max_sequence_length=16, dropout=0.0, language_projection=None,
    )
    b = m.BLIP2Backbone(vision_encoder=vision, qformer=qformer,
                        language_model=language)
    x = {"images": _images(rng), "token_ids": _tokens(rng),
         "padding_mask": _padding_mask(dtype="bool")}
    return b, x


@_hub("pali_gemma")
def _pali_gemma(m, rng):
    b = m.PaliGemmaBackbone(
        vocabulary_size=VOCAB, image_size=16, num_layers=1, num_query_heads=2,
        num_key_value_heads=1, hidden_dim=8, intermediate_dim=16, head_dim=4,
        vit_patch_size=8, vit_num_layers=1, vit_num_heads=2, vit_hidden_dim=8,
        vit_intermediate_dim=16,
    )
    # 4 image tokens come first; the text sequence is 8 long.
    x = {"images": _images(rng, 16), "token_ids": _tokens(rng),
         "padding_mask": _padding_mask(),
         "response_mask": np.zeros((BATCH, SEQUENCE), dtype="int32")}
    return b, x


@_hub("gemma3_vision")
def _gemma3_vision(m, rng):
    vision = m.Gemma3VisionEncoder(
        image_size=16, patch_size=4, pool_size=2, num_layers=1, num_heads=2,
        hidden_dim=8, intermediate_dim=16, output_dim=16,
    )
    b = m.Gemma3Backbone(**_GQA, head_dim=4, image_size=16, vision_encoder=vision)
    # One image of 4 tokens (16 / 4 / 2 = 2 per side) at positions 2..5.
    mask = np.zeros((BATCH, SEQUENCE), dtype="int32")
    mask[:, 2:6] = 1
    x = {
        "images": _images(rng, 16)[:, None],
        "token_ids": _tokens(rng),
        "padding_mask": _padding_mask(),
        "vision_mask": mask,
        "vision_indices": np.tile(np.arange(2, 6, dtype="int32"), (BATCH, 1)),
    }
    return b, x


@_hub("gemma3n")
def _gemma3n(m, rng):
    b = m.Gemma3nBackbone(
        text_vocab_size=VOCAB, text_hidden_size=16, num_hidden_layers=2,
        pad_token_id=0, num_attention_heads=4, num_key_value_heads=2, head_dim=4,
        intermediate_size=[32, 32], hidden_activation="gelu_approximate",
        layer_types=["sliding_attention", "full_attention"], sliding_window=4,
        rope_theta=10000.0, max_position_embeddings=16,
        vocab_size_per_layer_input=VOCAB, hidden_size_per_layer_input=4,
        altup_num_inputs=2, laurel_rank=2,
    )
    return b, _text_inputs(rng)


@_hub("gemma4")
def _gemma4(m, rng):
    b = m.Gemma4Backbone(
        **_GQA, head_dim=4, image_size=16, sliding_window_size=4,
        layer_types=["sliding_attention", "full_attention"],
    )
    x = _text_inputs(rng)
    x["position_ids"] = np.tile(np.arange(SEQUENCE, dtype="int32"), (BATCH, 1))
    return b, x


@_hub("stable_diffusion_3")
def _stable_diffusion_3(m, rng):
    from keras_hub.src.models.vae.vae_backbone import VAEBackbone

    vae = VAEBackbone([32, 32], [1, 1], [32, 32], [1, 1], sampler_method="mode",
                      name="vae")
    clip_l = m.CLIPTextEncoder(VOCAB, 16, 16, 1, 2, 32, "quick_gelu", -1,
                               max_sequence_length=SEQUENCE, name="clip_l")
    clip_g = m.CLIPTextEncoder(VOCAB, 16, 16, 1, 2, 32, "gelu", -1,
                               max_sequence_length=SEQUENCE, name="clip_g")
    b = m.StableDiffusion3Backbone(
        mmdit_patch_size=2, mmdit_hidden_dim=16, mmdit_num_layers=1,
        mmdit_num_heads=2, mmdit_position_size=16, mmdit_qk_norm=None,
        mmdit_dual_attention_indices=None, vae=vae, clip_l=clip_l, clip_g=clip_g,
        image_shape=(IMAGE, IMAGE, 3),
    )
    x = {
        "images": _images(rng),
        "latents": rng.normal(size=(BATCH, IMAGE // 8, IMAGE // 8, 16)).astype("float32"),
        "clip_l_token_ids": _tokens(rng),
        "clip_l_negative_token_ids": _tokens(rng),
        "clip_g_token_ids": _tokens(rng),
        "clip_g_negative_token_ids": _tokens(rng),
        "num_steps": np.full((BATCH,), 2, dtype="int32"),
        "guidance_scale": np.full((BATCH,), 2.0, dtype="float32"),
    }
    return b, x


@_hub("flux")
def _flux(m, rng):
    b = m.FluxBackbone(
        input_channels=16, hidden_size=32, mlp_ratio=2.0, num_heads=2, depth=1,
        depth_single_blocks=1, axes_dim=[4, 6, 6], theta=10_000, use_bias=True,
        guidance_embed=True, image_shape=(SEQUENCE, 16), text_shape=(SEQUENCE, 16),
        image_ids_shape=(SEQUENCE, 3), text_ids_shape=(SEQUENCE, 3), y_shape=(16,),
    )
    x = {
        "image": rng.normal(size=(BATCH, SEQUENCE, 16)).astype("float32"),
        "image_ids": rng.integers(0, 4, size=(BATCH, SEQUENCE, 3)).astype("float32"),
        "text": rng.normal(size=(BATCH, SEQUENCE, 16)).astype("float32"),
        "text_ids": np.zeros((BATCH, SEQUENCE, 3), dtype="float32"),
        "y": rng.normal(size=(BATCH, 16)).astype("float32"),
        "timesteps": rng.uniform(size=(BATCH,)).astype("float32"),
        "guidance": np.full((BATCH,), 3.5, dtype="float32"),
    }
    return b, x



@_hub("vae")
def _vae(m, rng):
    from keras_hub.src.models.vae.vae_backbone import VAEBackbone

    b = VAEBackbone([32, 32], [1, 1], [32, 32], [1, 1], sampler_method="mode",
                    sample_channels=8)
    return b, _images(rng)


@_hub("rqvae")
def _rqvae(m, rng):
    from keras_hub.src.models.rqvae.rqvae_backbone import RQVAEBackbone

    b = RQVAEBackbone(input_dim=16, encoder_layer_dims=[32, 16], output_dim=8,
                      decoder_layer_dims=[16, 32], num_embeddings=8,
                      num_quantizers=2)
    return b, rng.normal(size=(BATCH, 16)).astype("float32")


def keras_hub_backbones():
    """Tiny KerasHub backbones of every family buildable from arguments.

    Each entry is a zero-argument function returning `(backbone,
    sample_inputs)`: a KerasHub `Backbone` (a Functional subclass whose
    `get_config()` holds constructor arguments) with seeded random weights
    (`keras.utils.set_random_seed(0)`, then `perturb_weights`) and a
    batch of 2 seeded inputs as a dict by input name (or an array for
    single-input image backbones). Token ids are in `[1, 64)`; padding
    masks are ones except the last 2 positions of the second sample;
    images are `U(0, 1)`, 32x32 unless the family needs another size.
    Nothing is downloaded and `keras_hub` is imported only when a builder
    runs.

    Returns:
        An ordered dict `{name: builder}`; names are the family in
        snake case, with a suffix for a second config of a family
        (`"resnet_bottleneck"`, `"efficientnet_v2"`, `"gemma2"` ...).

    Example:

    >>> builders = keras_hub_backbones()
    >>> "bert" in builders and "llama" in builders
    True
    """
    return collections.OrderedDict(
        (name, _hub_builder(name, fn)) for name, fn in _HUB.items()
    )


def _hub_builder(name, fn):
    def build(seed=0):
        rng = _seeded(seed)
        backbone, inputs = fn(_models(), rng)
        perturb_weights(backbone, seed=seed)
        return backbone, inputs

    build.__name__ = f"build_{name}"
    build.__qualname__ = build.__name__
    build.__doc__ = f"Tiny KerasHub '{name}' backbone and sample inputs (seeded)."
    return build


# ------------------------------------------------ keras.applications

# Smallest square input each accepts with `weights=None` (measured with
# keras 3.15: 32 for all but the Inception family and Xception).
APPLICATION_SIZES = collections.OrderedDict(
    [
        ("ConvNeXtBase", 32), ("ConvNeXtLarge", 32), ("ConvNeXtSmall", 32),
        ("ConvNeXtTiny", 32), ("ConvNeXtXLarge", 32),
        ("DenseNet121", 32), ("DenseNet169", 32), ("DenseNet201", 32),
        ("EfficientNetB0", 32), ("EfficientNetB1", 32), ("EfficientNetB2", 32),
        ("EfficientNetB3", 32), ("EfficientNetB4", 32), ("EfficientNetB5", 32),
        ("EfficientNetB6", 32), ("EfficientNetB7", 32),
        ("EfficientNetV2B0", 32), ("EfficientNetV2B1", 32),
        ("EfficientNetV2B2", 32), ("EfficientNetV2B3", 32),
        ("EfficientNetV2L", 32), ("EfficientNetV2M", 32), ("EfficientNetV2S", 32),
        ("InceptionResNetV2", 75), ("InceptionV3", 75),
        ("MobileNet", 32), ("MobileNetV2", 32), ("MobileNetV3Large", 32),
        ("MobileNetV3Small", 32), ("NASNetLarge", 32), ("NASNetMobile", 32),
        ("ResNet101", 32), ("ResNet101V2", 32), ("ResNet152", 32),
        ("ResNet152V2", 32), ("ResNet50", 32), ("ResNet50V2", 32),
        ("VGG16", 32), ("VGG19", 32), ("Xception", 71),
    ]
)


def applications():
    """The 40 `keras.applications` models, untrained, at their smallest size.

    Each entry is a zero-argument function returning `(model, x)`: the
    application built with `weights=None`, `classes=10`,
    `classifier_activation=None` (logits) on a square input of
    `APPLICATION_SIZES[name]` pixels (32, or 71 / 75 where the model needs
    more), with seeded weights (`keras.utils.set_random_seed(0)`) and
    random BatchNorm statistics and biases (`perturb_weights`), and `x`:
    2 images drawn from `N(0, 1)`, float32. These are full-size networks
    (1.5 M to 348 M parameters): building one takes seconds.

    Returns:
        An ordered dict `{application name: builder}`.

    Example:

    >>> builders = applications()
    >>> len(builders)
    40
    """
    return collections.OrderedDict(
        (name, _application_builder(name, size))
        for name, size in APPLICATION_SIZES.items()
    )


def _application_builder(name, size):
    def build(seed=0):
        rng = _seeded(seed)
        model = getattr(keras.applications, name)(
            weights=None,
            input_shape=(size, size, 3),
            classes=10,
            classifier_activation=None,
        )
        perturb_weights(model, seed=seed)
        x = rng.normal(size=(BATCH, size, size, 3)).astype("float32")
        return model, x

    build.__name__ = f"build_{name}"
    build.__qualname__ = build.__name__
    build.__doc__ = f"keras.applications.{name} (weights=None) and 2 images."
    return build
