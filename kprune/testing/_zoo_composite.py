"""Tiny KerasHub backbones built around other backbones, multimodal and
generative ones (segmentation, detection, depth, SAM, BLIP-2, PaliGemma,
Gemma 3 with vision, Gemma 3n, Gemma 4, Stable Diffusion 3, Flux, VAEs).

Each builder takes `keras_hub.models` and a NumPy generator and returns
`(backbone, sample_inputs)`; `kprune.testing.zoo` lists them.
"""

import numpy as np

from kprune.testing._zoo_common import (
    _GQA,
    BATCH,
    IMAGE,
    SEQUENCE,
    VOCAB,
    _hub,
    _images,
    _padding_mask,
    _text_inputs,
    _tokens,
)

# Backbones built around other backbones ---------------------------------


def _tiny_resnet(m, **kw):
    return m.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 16, 16],
        stackwise_num_blocks=[1, 1, 1],
        stackwise_num_strides=[1, 2, 2],
        block_type="basic_block",
        **kw,
    )


@_hub("basnet")
def _basnet(m, rng):
    encoder = m.ResNetBackbone(
        input_conv_filters=[8],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 8, 8, 8],
        stackwise_num_blocks=[1, 1, 1, 1],
        stackwise_num_strides=[1, 2, 2, 2],
        block_type="bottleneck_block",
    )
    b = m.BASNetBackbone(
        image_encoder=encoder,
        num_classes=1,
        projection_filters=8,
        image_shape=(IMAGE, IMAGE, 3),
    )
    return b, _images(rng)


@_hub("deeplab_v3")
def _deeplab_v3(m, rng):
    encoder = _tiny_resnet(m)
    b = m.DeepLabV3Backbone(
        image_encoder=encoder,
        low_level_feature_key="P2",
        spatial_pyramid_pooling_key="P4",
        dilation_rates=[1, 2],
        upsampling_size=4,
        projection_filters=8,
        image_shape=(IMAGE, IMAGE, 3),
    )
    return b, _images(rng)


@_hub("retinanet")
def _retinanet(m, rng):
    encoder = m.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 16, 16, 16],
        stackwise_num_blocks=[1, 1, 1, 1],
        stackwise_num_strides=[1, 2, 2, 2],
        block_type="basic_block",
    )
    b = m.RetinaNetBackbone(
        image_encoder=encoder,
        min_level=3,
        max_level=5,
        use_p5=True,
        image_shape=(64, 64, 3),
    )
    return b, _images(rng, 64)


@_hub("segformer")
def _segformer(m, rng):
    encoder = m.MiTBackbone(
        layerwise_depths=[1, 1],
        num_layers=2,
        hidden_dims=[8, 16],
        layerwise_num_heads=[1, 2],
        layerwise_sr_ratios=[4, 2],
        max_drop_path_rate=0.0,
        layerwise_patch_sizes=[7, 3],
        layerwise_strides=[4, 2],
        image_shape=(IMAGE, IMAGE, 3),
    )
    b = m.SegFormerBackbone(image_encoder=encoder, projection_filters=8)
    return b, _images(rng)


@_hub("depth_anything")
def _depth_anything(m, rng):
    encoder = m.DINOV2Backbone(
        patch_size=7,
        num_layers=4,
        hidden_dim=16,
        num_heads=2,
        intermediate_dim=32,
        image_shape=(56, 56, 3),
        position_embedding_shape=(56, 56, 3),
        apply_layernorm=True,
        name="image_encoder",
    )
    b = m.DepthAnythingBackbone(
        image_encoder=encoder,
        reassemble_factors=[4, 2, 1, 0.5],
        neck_hidden_dims=[8, 8, 16, 16],
        fusion_hidden_dim=16,
        head_hidden_dim=8,
        head_in_index=-1,
        feature_keys=["stage1", "stage2", "stage3", "stage4"],
    )
    return b, _images(rng, 56)


@_hub("sam")
def _sam(m, rng):
    from keras_hub.layers import SAMMaskDecoder, SAMPromptEncoder

    encoder = m.ViTDetBackbone(
        hidden_size=16,
        num_layers=2,
        intermediate_dim=32,
        num_heads=2,
        global_attention_layer_indices=[1],
        patch_size=8,
        num_output_channels=8,
        window_size=2,
        image_shape=(IMAGE, IMAGE, 3),
    )
    prompt = SAMPromptEncoder(
        hidden_size=8,
        image_embedding_size=(4, 4),
        input_image_size=(IMAGE, IMAGE),
        mask_in_channels=8,
    )
    decoder = SAMMaskDecoder(
        hidden_size=8,
        num_layers=2,
        intermediate_dim=16,
        num_heads=2,
        embedding_dim=8,
        num_multimask_outputs=3,
        iou_head_depth=2,
        iou_head_hidden_dim=8,
    )
    b = m.SAMBackbone(
        image_encoder=encoder, prompt_encoder=prompt, mask_decoder=decoder
    )
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
        SAM3DetrDecoder,
        SAM3DetrEncoder,
        SAM3GeometryEncoder,
        SAM3MaskDecoder,
        SAM3TextEncoder,
        SAM3VisionEncoder,
    )

    size = 28
    kw = dict(hidden_dim=16, intermediate_dim=32, num_heads=2)
    b = m.SAM3PromptableConceptBackbone(
        vision_encoder=SAM3VisionEncoder(
            image_shape=(size, size, 3),
            patch_size=14,
            num_layers=2,
            fpn_hidden_dim=16,
            fpn_scale_factors=[4.0, 2.0, 1.0, 0.5],
            pretrain_image_shape=(42, 42, 3),
            window_size=2,
            global_attn_indexes=[1],
            **kw,
        ),
        text_encoder=SAM3TextEncoder(
            vocabulary_size=VOCAB, embedding_dim=16, num_layers=2, **kw
        ),
        geometry_encoder=SAM3GeometryEncoder(num_layers=1, roi_size=7, **kw),
        detr_encoder=SAM3DetrEncoder(num_layers=1, **kw),
        detr_decoder=SAM3DetrDecoder(
            image_shape=(size, size, 3),
            patch_size=14,
            num_layers=1,
            num_queries=4,
            **kw,
        ),
        mask_decoder=SAM3MaskDecoder(
            num_upsampling_stages=3, hidden_dim=16, num_heads=2
        ),
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
        apply_downsample=[False, True],
        use_lightweight_conv_block=[False, False],
        depths=[1, 1],
        hidden_sizes=[16, 32],
        embedding_size=8,
        use_learnable_affine_block=True,
        hidden_act="relu",
        image_shape=(None, None, 3),
        out_features=["stage1", "stage2"],
    )
    b = m.DFineBackbone(
        backbone=hgnet,
        decoder_in_channels=[16, 16],
        encoder_hidden_dim=16,
        num_denoising=0,
        num_labels=4,
        hidden_dim=16,
        learn_initial_query=False,
        num_queries=4,
        anchor_image_size=(IMAGE, IMAGE),
        feat_strides=[4, 8],
        num_feature_levels=2,
        encoder_in_channels=[16, 32],
        encode_proj_layers=[1],
        num_attention_heads=2,
        encoder_ffn_dim=32,
        num_encoder_layers=1,
        hidden_expansion=0.5,
        depth_multiplier=0.5,
        eval_idx=-1,
        num_decoder_layers=1,
        decoder_attention_heads=2,
        decoder_ffn_dim=32,
        decoder_n_points=[2, 2],
        lqe_hidden_dim=8,
        num_lqe_layers=1,
        out_features=["stage1", "stage2"],
        image_shape=(IMAGE, IMAGE, 3),
        seed=0,
    )
    return b, _images(rng)


@_hub("parseq")
def _parseq(m, rng):
    encoder = m.ViTBackbone(
        image_shape=(IMAGE, 64, 3),
        patch_size=(8, 8),
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
        use_class_token=False,
        name="image_encoder",
    )
    b = m.PARSeqBackbone(
        image_encoder=encoder,
        vocabulary_size=VOCAB,
        max_label_length=SEQUENCE,
        decoder_hidden_dim=16,
        num_decoder_layers=1,
        num_decoder_heads=2,
        decoder_mlp_dim=32,
        dropout_rate=0.0,
        attention_dropout=0.0,
    )
    x = {"images": _images(rng, (IMAGE, 64))}
    x.update(_text_inputs(rng))
    return b, x


@_hub("blip2")
def _blip2(m, rng):
    vision = m.BLIP2VisionEncoder(
        image_size=IMAGE,
        patch_size=8,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        use_patch_bias=True,
        use_class_token=True,
        use_mha_bias=True,
        use_mlp_bias=True,
        dropout_rate=0.0,
        layer_norm_epsilon=1e-6,
        initializer_range=0.02,
    )
    qformer = m.BLIP2QFormer(
        num_query_tokens=2,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        vision_dim=16,
        cross_attention_frequency=1,
        dropout=0.0,
        layer_norm_epsilon=1e-6,
    )
    language = m.BLIP2CustomOPT(
        vocabulary_size=VOCAB,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        num_query_tokens=2,
        qformer_hidden_dim=8,
        max_sequence_length=16,
        dropout=0.0,
        language_projection=None,
    )
    b = m.BLIP2Backbone(vision_encoder=vision, qformer=qformer, language_model=language)
    x = {
        "images": _images(rng),
        "token_ids": _tokens(rng),
        "padding_mask": _padding_mask(dtype="bool"),
    }
    return b, x


@_hub("pali_gemma")
def _pali_gemma(m, rng):
    b = m.PaliGemmaBackbone(
        vocabulary_size=VOCAB,
        image_size=16,
        num_layers=1,
        num_query_heads=2,
        num_key_value_heads=1,
        hidden_dim=8,
        intermediate_dim=16,
        head_dim=4,
        vit_patch_size=8,
        vit_num_layers=1,
        vit_num_heads=2,
        vit_hidden_dim=8,
        vit_intermediate_dim=16,
    )
    # 4 image tokens come first; the text sequence is 8 long.
    x = {
        "images": _images(rng, 16),
        "token_ids": _tokens(rng),
        "padding_mask": _padding_mask(),
        "response_mask": np.zeros((BATCH, SEQUENCE), dtype="int32"),
    }
    return b, x


@_hub("gemma3_vision")
def _gemma3_vision(m, rng):
    vision = m.Gemma3VisionEncoder(
        image_size=16,
        patch_size=4,
        pool_size=2,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        output_dim=16,
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
        text_vocab_size=VOCAB,
        text_hidden_size=16,
        num_hidden_layers=2,
        pad_token_id=0,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=4,
        intermediate_size=[32, 32],
        hidden_activation="gelu_approximate",
        layer_types=["sliding_attention", "full_attention"],
        sliding_window=4,
        rope_theta=10000.0,
        max_position_embeddings=16,
        vocab_size_per_layer_input=VOCAB,
        hidden_size_per_layer_input=4,
        altup_num_inputs=2,
        laurel_rank=2,
    )
    return b, _text_inputs(rng)


@_hub("gemma4")
def _gemma4(m, rng):
    b = m.Gemma4Backbone(
        **_GQA,
        head_dim=4,
        image_size=16,
        sliding_window_size=4,
        layer_types=["sliding_attention", "full_attention"],
    )
    x = _text_inputs(rng)
    x["position_ids"] = np.tile(np.arange(SEQUENCE, dtype="int32"), (BATCH, 1))
    return b, x


@_hub("stable_diffusion_3")
def _stable_diffusion_3(m, rng):
    from keras_hub.src.models.vae.vae_backbone import VAEBackbone

    vae = VAEBackbone(
        [32, 32], [1, 1], [32, 32], [1, 1], sampler_method="mode", name="vae"
    )
    clip_l = m.CLIPTextEncoder(
        VOCAB,
        16,
        16,
        1,
        2,
        32,
        "quick_gelu",
        -1,
        max_sequence_length=SEQUENCE,
        name="clip_l",
    )
    clip_g = m.CLIPTextEncoder(
        VOCAB, 16, 16, 1, 2, 32, "gelu", -1, max_sequence_length=SEQUENCE, name="clip_g"
    )
    b = m.StableDiffusion3Backbone(
        mmdit_patch_size=2,
        mmdit_hidden_dim=16,
        mmdit_num_layers=1,
        mmdit_num_heads=2,
        mmdit_position_size=16,
        mmdit_qk_norm=None,
        mmdit_dual_attention_indices=None,
        vae=vae,
        clip_l=clip_l,
        clip_g=clip_g,
        image_shape=(IMAGE, IMAGE, 3),
    )
    x = {
        "images": _images(rng),
        "latents": rng.normal(size=(BATCH, IMAGE // 8, IMAGE // 8, 16)).astype(
            "float32"
        ),
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
        input_channels=16,
        hidden_size=32,
        mlp_ratio=2.0,
        num_heads=2,
        depth=1,
        depth_single_blocks=1,
        axes_dim=[4, 6, 6],
        theta=10_000,
        use_bias=True,
        guidance_embed=True,
        image_shape=(SEQUENCE, 16),
        text_shape=(SEQUENCE, 16),
        image_ids_shape=(SEQUENCE, 3),
        text_ids_shape=(SEQUENCE, 3),
        y_shape=(16,),
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

    b = VAEBackbone(
        [32, 32], [1, 1], [32, 32], [1, 1], sampler_method="mode", sample_channels=8
    )
    return b, _images(rng)


@_hub("rqvae")
def _rqvae(m, rng):
    from keras_hub.src.models.rqvae.rqvae_backbone import RQVAEBackbone

    b = RQVAEBackbone(
        input_dim=16,
        encoder_layer_dims=[32, 16],
        output_dim=8,
        decoder_layer_dims=[16, 32],
        num_embeddings=8,
        num_quantizers=2,
    )
    return b, rng.normal(size=(BATCH, 16)).astype("float32")
