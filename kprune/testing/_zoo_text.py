"""Tiny KerasHub text backbones: encoders, decoders, encoder-decoders.

Each builder takes `keras_hub.models` and a NumPy generator and returns
`(backbone, sample_inputs)`; `kprune.testing.zoo` lists them.
"""

import numpy as np

from kprune.testing._zoo_common import (
    _DEC,
    _ENC,
    _GQA,
    BATCH,
    VOCAB,
    _hub,
    _padding_mask,
    _text_inputs,
    _tokens,
)

# Text encoders ----------------------------------------------------------


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
    b = m.ESMBackbone(
        **_ENC, position_embedding_type="absolute", use_pre_layer_norm=True
    )
    return b, _text_inputs(rng, mask=False)


@_hub("xlnet")
def _xlnet(m, rng):
    kw = {k: v for k, v in _ENC.items() if k != "max_sequence_length"}
    return m.XLNetBackbone(**kw), _text_inputs(rng, segments=True)


# Decoders ---------------------------------------------------------------


@_hub("gpt2")
def _gpt2(m, rng):
    return m.GPT2Backbone(**_DEC, num_heads=2, max_sequence_length=16), _text_inputs(
        rng
    )


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
        **_GQA,
        head_dim=4,
        use_post_ffw_norm=True,
        use_post_attention_norm=True,
        attention_logit_soft_cap=50.0,
        final_logit_soft_cap=30.0,
        use_sliding_window_attention=True,
        sliding_window_size=4,
    )
    return b, _text_inputs(rng)


@_hub("gemma3")
def _gemma3(m, rng):
    b = m.Gemma3Backbone(
        **_GQA,
        head_dim=4,
        image_size=16,
        use_post_ffw_norm=True,
        use_post_attention_norm=True,
        use_sliding_window_attention=True,
        sliding_window_size=4,
    )
    return b, _text_inputs(rng)


@_hub("llama")
def _llama(m, rng):
    return m.LlamaBackbone(**_GQA), _text_inputs(rng)


@_hub("llama3")
def _llama3(m, rng):
    b = m.Llama3Backbone(
        **_GQA,
        rope_frequency_adjustment_factor=8.0,
        rope_low_freq_factor=1.0,
        rope_high_freq_factor=4.0,
        rope_pretraining_sequence_length=16,
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
        **_GQA,
        moe_intermediate_dim=8,
        shared_expert_intermediate_dim=16,
        num_experts=4,
        top_k=2,
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
        **_GQA,
        head_dim=8,
        layer_types=["linear_attention", "full_attention"],
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=4,
        linear_value_head_dim=4,
    )
    return b, _text_inputs(rng)


@_hub("qwen3_5_moe")
def _qwen3_5_moe(m, rng):
    kw = {k: v for k, v in _GQA.items() if k != "intermediate_dim"}
    b = m.Qwen3_5MoeBackbone(
        **kw,
        head_dim=8,
        moe_intermediate_dim=8,
        shared_expert_intermediate_size=8,
        num_experts=4,
        top_k=2,
        layer_types=["linear_attention", "full_attention"],
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=4,
        linear_value_head_dim=4,
    )
    return b, _text_inputs(rng)


@_hub("phi3")
def _phi3(m, rng):
    return m.Phi3Backbone(**_GQA), _text_inputs(rng)


@_hub("phi3_su_rope")
def _phi3_su_rope(m, rng):
    b = m.Phi3Backbone(
        **_GQA,
        max_sequence_length=16,
        pretraining_sequence_length=8,
        rope_scaling_type="su",
        rope_scaling_short_factor=[1.2, 1.4],
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
        **kw,
        num_attention_heads=4,
        attention_bias=False,
        attention_dropout=0.0,
        rope_layer_enabled_list=[True, False],
        layer_types=["attention", "attention"],
        mlp_bias=False,
        layer_norm_epsilon=1e-5,
        max_position_embeddings=16,
        rope_theta=10000.0,
        partial_rotary_factor=1.0,
    )
    return b, _text_inputs(rng)


@_hub("rwkv7")
def _rwkv7(m, rng):
    b = m.RWKV7Backbone(
        hidden_size=16,
        head_size=4,
        num_layers=2,
        vocabulary_size=VOCAB,
        intermediate_dim=32,
        gate_lora=8,
        mv_lora=8,
        aaa_lora=8,
        decay_lora=8,
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
    # One layer: T5 builds slowly (2 layers took 11-21 s on a loaded machine).
    b = m.T5Backbone(
        vocabulary_size=VOCAB,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
    )
    return b, _seq2seq_inputs(rng)


@_hub("bart")
def _bart(m, rng):
    return m.BartBackbone(**_ENC), _seq2seq_inputs(rng)


@_hub("t5gemma")
def _t5gemma(m, rng):
    side = dict(
        hidden_dim=16,
        intermediate_dim=32,
        num_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=4,
        layer_types=["sliding_attention", "full_attention"],
    )
    kw = {f"{p}_{k}": v for p in ("encoder", "decoder") for k, v in side.items()}
    b = m.T5GemmaBackbone(
        vocabulary_size=VOCAB, sliding_window=4, cross_attention_hidden_size=16, **kw
    )
    return b, _seq2seq_inputs(rng)


@_hub("t5gemma2")
def _t5gemma2(m, rng):
    side = dict(
        hidden_dim=16,
        intermediate_dim=32,
        num_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=4,
        layer_types=["sliding_attention", "full_attention"],
    )
    kw = {f"{p}_{k}": v for p in ("encoder", "decoder") for k, v in side.items()}
    b = m.T5Gemma2Backbone(
        vocabulary_size=VOCAB, sliding_window=4, cross_attention_hidden_size=16, **kw
    )
    return b, _seq2seq_inputs(rng)


@_hub("edrec")
def _edrec(m, rng):
    b = m.EdRecBackbone(
        vocab_size=VOCAB,
        num_layers_enc=1,
        num_layers_dec=1,
        hidden_dim=16,
        intermediate_dim=32,
        num_heads=2,
    )
    return b, _seq2seq_inputs(rng)


@_hub("whisper")
def _whisper(m, rng):
    b = m.WhisperBackbone(
        vocabulary_size=VOCAB,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        num_mels=16,
        max_encoder_sequence_length=16,
        max_decoder_sequence_length=16,
    )
    x = {"encoder_features": rng.normal(size=(BATCH, 16, 16)).astype("float32")}
    x.update(_seq2seq_inputs(rng, encoder=None))
    return b, x


@_hub("moonshine")
def _moonshine(m, rng):
    b = m.MoonshineBackbone(
        vocabulary_size=VOCAB,
        filter_dim=16,
        encoder_num_layers=2,
        decoder_num_layers=2,
        hidden_dim=16,
        intermediate_dim=32,
        encoder_num_heads=2,
        decoder_num_heads=2,
        max_position_embeddings=64,
    )
    samples = 3584  # 8 encoder frames after the strided convolutions
    x = {
        "encoder_input_values": rng.normal(size=(BATCH, samples, 1)).astype("float32"),
        "encoder_padding_mask": np.ones((BATCH, samples), dtype="bool"),
        "decoder_token_ids": _tokens(rng),
        "decoder_padding_mask": _padding_mask(dtype="bool"),
    }
    return b, x
