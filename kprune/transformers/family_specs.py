"""The KerasHub families kprune prunes, one `FamilySpec` each.

Shared rule tables cover the common structures: KerasHub's
`TransformerEncoder` / `TransformerDecoder` (BERT, GPT-2, RoBERTa, ...),
the Llama-style decoders (gated FFN, grouped-query attention, RMS norms:
Llama, Mistral, Qwen, Qwen3), Gemma's einsum layout, and ViT.
"""

import math

import numpy as np

from kprune.transformers.spec import FamilySpec, register_family

# --- shared rule tables (roles: h hidden, f FFN, q query heads, k kv heads) --

NORMS = {"gamma": "h", "beta": "h", "scale": "h"}

# Keras MultiHeadAttention and the KerasHub attentions built like it: einsum
# kernels (hidden, heads, head_dim) in, (heads, head_dim, hidden) out.
MHA = {
    "query/kernel": "hq.",
    "query/bias": "q.",
    "key/kernel": "hk.",
    "key/bias": "k.",
    "value/kernel": "hk.",
    "value/bias": "k.",
    "attention_output/kernel": "q.h",
    "attention_output/bias": "h",
}

FFN = {
    "feedforward_intermediate_dense/kernel": "hf",
    "feedforward_intermediate_dense/bias": "f",
    "feedforward_gate_dense/kernel": "hf",
    "feedforward_gate_dense/bias": "f",
    "feedforward_output_dense/kernel": "fh",
    "feedforward_output_dense/bias": "h",
}

TOKEN_EMBEDDING = {
    "token_embedding/embeddings": ".h",
    "token_embedding/reverse_embeddings": "h.",
}

ENCODER_DECODER_BLOCK = {**MHA, **FFN, **NORMS}
LLAMA_BLOCK = {
    **MHA,
    **FFN,
    # Qwen3's per-head query / key norms work on head_dim, kept whole.
    "query_dense_layernorm/scale": ".",
    "key_dense_layernorm/scale": ".",
    **NORMS,
}
GEMMA_BLOCK = {
    "query/kernel": "qh.",
    "key/kernel": "kh.",
    "value/kernel": "kh.",
    "attention_output/kernel": "q.h",
    "query_norm/scale": ".",
    "key_norm/scale": ".",
    "ffw_gating/kernel": "hf",
    "ffw_gating_2/kernel": "hf",
    "ffw_linear/kernel": "fh",
    **NORMS,
}


def transformer_layers(backbone):
    """`backbone.transformer_layers`, the block list of most KerasHub LMs."""
    return list(backbone.transformer_layers)


def feedforward_output(block):
    """The FFN down projection of a KerasHub TransformerEncoder/Decoder."""
    return block._feedforward_output_dense


def attention_output(block):
    """The output projection of a block's `_self_attention_layer`."""
    return block._self_attention_layer._output_dense


def _text_only(name):
    def check(backbone):
        if getattr(backbone, "vision_encoder", None) is not None:
            raise ValueError(
                f"kprune.transformers prunes the text stack of {name}; this "
                "backbone has a vision encoder, which it does not prune yet. "
                "Received: vision_encoder="
                f"{type(backbone.vision_encoder).__name__}"
            )

    return check


# --- Gemma: the embedding is scaled by sqrt(hidden_dim) ------------------------


def _gemma_adjust(backbone, small, plan):
    """Keep Gemma's function when hidden_dim changes.

    The token embedding is multiplied by `sqrt(hidden_dim)` in the forward
    pass and the same (tied) matrix makes the logits. With `H -> H'`, the
    embedding is rescaled by `c = sqrt(H / H')` so the residual stream is
    unchanged, and the final RMS norm's `1 + scale` by `1 / c` so the logits
    are unchanged too.
    """
    old, new = backbone.hidden_dim, small.hidden_dim
    if old != new:
        c = math.sqrt(old / new)
        embeddings = small.token_embedding.embeddings
        embeddings.assign(np.asarray(embeddings) * c)
        norm = small.get_layer("final_normalization").scale
        norm.assign((1.0 + np.asarray(norm)) / c - 1.0)
    if getattr(backbone, "query_head_dim_normalize", True):
        return
    # Gemma 3 scales queries by 1 / sqrt(hidden_dim // num_query_heads).
    ratio_old = backbone.hidden_dim // backbone.num_query_heads
    ratio_new = small.hidden_dim // small.num_query_heads
    if ratio_old == ratio_new:
        return
    factor = math.sqrt(ratio_new / ratio_old)
    for block in small.transformer_layers:
        attention = block.attention
        if getattr(attention, "use_query_key_norm", False):
            scale = attention.query_norm.scale
            scale.assign((1.0 + np.asarray(scale)) * factor - 1.0)
        else:
            kernel = attention.query_dense.kernel
            kernel.assign(np.asarray(kernel) * factor)


def _gemma_kind(config, index):
    return bool(config.get("use_sliding_window_attention")) and index % 2 == 0


def _gemma3_kind(config, index):
    return bool(config.get("use_sliding_window_attention")) and index % 6 < 5


def _llama_extra(backbone):
    # LlamaBackbone.get_config() forgets `tie_word_embeddings`.
    tied = getattr(backbone, "tie_word_embeddings", None)
    return {} if tied is None else {"tie_word_embeddings": tied}


# --- ViT -----------------------------------------------------------------------


def vit_blocks(backbone):
    """The `ViTEncoderBlock`s inside a ViTBackbone's `vit_encoder`."""
    return list(backbone.get_layer("vit_encoder").encoder_layers)


VIT_BLOCK = {
    **MHA,
    "mlp/dense_1/kernel": "hf",
    "mlp/dense_1/bias": "f",
    "mlp/dense_2/kernel": "fh",
    "mlp/dense_2/bias": "h",
    **NORMS,
}


# --- the registry ----------------------------------------------------------------

GPT2 = register_family(
    FamilySpec(
        name="GPT-2",
        classes=("GPT2Backbone",),
        blocks=transformer_layers,
        ffn_layer=feedforward_output,
        heads_layer=attention_output,
        block_rules=ENCODER_DECODER_BLOCK,
        backbone_rules={
            **TOKEN_EMBEDDING,
            "position_embedding/embeddings": ".h",
            **NORMS,
        },
    )
)

BERT = register_family(
    FamilySpec(
        name="BERT",
        classes=("BertBackbone",),
        blocks=transformer_layers,
        ffn_layer=feedforward_output,
        heads_layer=attention_output,
        block_rules=ENCODER_DECODER_BLOCK,
        backbone_rules={
            **TOKEN_EMBEDDING,
            "position_embedding/embeddings": ".h",
            "segment_embedding/embeddings": ".h",
            "pooled_dense/kernel": "hh",
            "pooled_dense/bias": "h",
            **NORMS,
        },
    )
)

LLAMA_BACKBONE = {**TOKEN_EMBEDDING, **NORMS}

LLAMA = register_family(
    FamilySpec(
        name="Llama",
        classes=("LlamaBackbone",),
        blocks=transformer_layers,
        ffn_layer=feedforward_output,
        heads_layer=attention_output,
        block_rules=LLAMA_BLOCK,
        backbone_rules=LLAMA_BACKBONE,
        heads="num_query_heads",
        kv_heads="num_key_value_heads",
        extra_config=_llama_extra,
    )
)

MISTRAL = register_family(
    FamilySpec(
        name="Mistral",
        classes=("MistralBackbone",),
        blocks=transformer_layers,
        ffn_layer=feedforward_output,
        heads_layer=attention_output,
        block_rules=LLAMA_BLOCK,
        backbone_rules=LLAMA_BACKBONE,
        heads="num_query_heads",
        kv_heads="num_key_value_heads",
        head_dim="head_dim",
    )
)

QWEN = register_family(
    FamilySpec(
        name="Qwen",
        classes=("QwenBackbone",),
        blocks=transformer_layers,
        ffn_layer=feedforward_output,
        heads_layer=attention_output,
        block_rules=LLAMA_BLOCK,
        backbone_rules=LLAMA_BACKBONE,
        heads="num_query_heads",
        kv_heads="num_key_value_heads",
    )
)

QWEN3 = register_family(
    FamilySpec(
        name="Qwen3",
        classes=("Qwen3Backbone",),
        blocks=transformer_layers,
        ffn_layer=feedforward_output,
        heads_layer=attention_output,
        block_rules=LLAMA_BLOCK,
        backbone_rules=LLAMA_BACKBONE,
        heads="num_query_heads",
        kv_heads="num_key_value_heads",
        head_dim="head_dim",
    )
)

GEMMA = register_family(
    FamilySpec(
        name="Gemma",
        classes=("GemmaBackbone",),
        blocks=transformer_layers,
        ffn_layer=lambda block: block.ffw_linear,
        heads_layer=lambda block: block.attention.output_dense,
        block_rules=GEMMA_BLOCK,
        backbone_rules={**TOKEN_EMBEDDING, **NORMS},
        heads="num_query_heads",
        kv_heads="num_key_value_heads",
        head_dim="head_dim",
        ffn_multiplier=2,
        block_kind=_gemma_kind,
        adjust=_gemma_adjust,
    )
)

GEMMA3 = register_family(
    FamilySpec(
        name="Gemma 3",
        classes=("Gemma3Backbone",),
        blocks=transformer_layers,
        ffn_layer=lambda block: block.ffw_linear,
        heads_layer=lambda block: block.attention.output_dense,
        block_rules=GEMMA_BLOCK,
        backbone_rules={
            **TOKEN_EMBEDDING,
            "pooling_dense_1/kernel": "h.",
            **NORMS,
        },
        heads="num_query_heads",
        kv_heads="num_key_value_heads",
        head_dim="head_dim",
        block_kind=_gemma3_kind,
        check=_text_only("Gemma 3"),
        adjust=_gemma_adjust,
    )
)

VIT = register_family(
    FamilySpec(
        name="ViT",
        classes=("ViTBackbone",),
        blocks=vit_blocks,
        ffn_layer=lambda block: block.mlp.dense_2,
        heads_layer=lambda block: block.mha._output_dense,
        block_rules=VIT_BLOCK,
        backbone_rules={
            "class_token": "..h",
            "patch_embedding/kernel": "...h",
            "patch_embedding/bias": "h",
            "position_embedding/embeddings": ".h",
            **NORMS,
        },
        ffn="mlp_dim",
    )
)

# --- more families on the shared tables ------------------------------------------

ENCODER_BACKBONE = {
    **TOKEN_EMBEDDING,
    "position_embedding/embeddings": ".h",
    **NORMS,
}

ROBERTA = register_family(
    FamilySpec(
        name="RoBERTa",
        classes=("RobertaBackbone", "DistilBertBackbone"),  # and XLM-RoBERTa
        blocks=transformer_layers,
        ffn_layer=feedforward_output,
        heads_layer=attention_output,
        block_rules=ENCODER_DECODER_BLOCK,
        backbone_rules=ENCODER_BACKBONE,
    )
)

OPT = register_family(
    FamilySpec(
        name="OPT",
        classes=("OPTBackbone",),
        blocks=transformer_layers,
        ffn_layer=feedforward_output,
        heads_layer=attention_output,
        block_rules=ENCODER_DECODER_BLOCK,
        backbone_rules=ENCODER_BACKBONE,
    )
)

PHI3 = register_family(
    FamilySpec(
        name="Phi-3",
        classes=("Phi3Backbone",),
        blocks=transformer_layers,
        ffn_layer=lambda block: block.feedforward_output_dense,
        heads_layer=lambda block: block.attention.output_dense,
        block_rules=LLAMA_BLOCK,
        backbone_rules=LLAMA_BACKBONE,
        heads="num_query_heads",
        kv_heads="num_key_value_heads",
    )
)
