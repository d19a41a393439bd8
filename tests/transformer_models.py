"""Tiny KerasHub backbones of every family kprune.transformers prunes."""

import keras
import numpy as np

TEXT = dict(vocabulary_size=50, num_layers=2, hidden_dim=16, intermediate_dim=32)
GQA = dict(TEXT, num_query_heads=4, num_key_value_heads=2)

CONFIGS = {
    "GPT2Backbone": dict(TEXT, num_heads=4, max_sequence_length=16),
    "BertBackbone": dict(TEXT, num_heads=4, max_sequence_length=16),
    "LlamaBackbone": GQA,
    "MistralBackbone": GQA,
    "QwenBackbone": GQA,
    "Qwen3Backbone": dict(GQA, head_dim=8),
    "GemmaBackbone": dict(GQA, head_dim=8),
    "Gemma3Backbone": dict(GQA, head_dim=8, image_size=16),
    "ViTBackbone": dict(
        image_shape=(16, 16, 1), patch_size=4, num_layers=2, num_heads=4,
        hidden_dim=16, mlp_dim=32,
    ),
}  # fmt: skip

# More families on the same shared rules (checked more briefly).
MORE = {
    "RobertaBackbone": dict(TEXT, num_heads=4, max_sequence_length=16),
    "XLMRobertaBackbone": dict(TEXT, num_heads=4, max_sequence_length=16),
    "DistilBertBackbone": dict(TEXT, num_heads=4, max_sequence_length=16),
    "OPTBackbone": dict(TEXT, num_heads=4, max_sequence_length=16),
    "Llama3Backbone": GQA,
    "Phi3Backbone": GQA,
}

# Families whose blocks are `x + f(norm(x))`: zeroing a block's output
# projections makes it the identity (BERT normalizes after the residual add).
PRE_NORM = set(CONFIGS) - {"BertBackbone"}


def backbone(name, seed=0, **overrides):
    """A tiny backbone with random weights (norms and biases too)."""
    import keras_hub

    config = CONFIGS[name] if name in CONFIGS else MORE[name]
    model = getattr(keras_hub.models, name)(**dict(config, **overrides))
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        value = keras.ops.convert_to_numpy(weight)
        noise = rng.normal(scale=0.2, size=value.shape).astype(value.dtype)
        weight.assign(value + noise)
    return model


def inputs(model, n=6, seed=1):
    """Calibration / test inputs in the backbone's format (some padding)."""
    rng = np.random.default_rng(seed)
    if "image_shape" in model.get_config():
        return rng.normal(size=(n, 16, 16, 1)).astype("float32")
    mask = np.ones((n, 8), "int32")
    mask[: n // 2, 6:] = 0
    data = {
        "token_ids": rng.integers(0, 50, (n, 8)).astype("int32"),
        "padding_mask": mask,
    }
    if "segment_ids" in model.input:
        data["segment_ids"] = np.zeros((n, 8), "int32")
    return data


def outputs(model, x):
    """The sequence output as NumPy (padding positions zeroed)."""
    y = model(x, training=False)
    if isinstance(y, dict):
        y = y["sequence_output"]
    y = keras.ops.convert_to_numpy(y)
    if isinstance(x, dict):
        y = y * x["padding_mask"][..., None]
    return y
