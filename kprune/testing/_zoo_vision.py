"""Tiny KerasHub vision and image-text backbones.

Each builder takes `keras_hub.models` and a NumPy generator and returns
`(backbone, sample_inputs)`; `kprune.testing.zoo` lists them.
"""

from kprune.testing._zoo_common import (
    BATCH,
    IMAGE,
    SEQUENCE,
    VOCAB,
    _hub,
    _images,
    _tokens,
)

# Vision -----------------------------------------------------------------


@_hub("resnet_basic")
def _resnet_basic(m, rng):
    b = m.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 16],
        stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 2],
        block_type="basic_block",
        image_shape=(IMAGE, IMAGE, 3),
    )
    return b, _images(rng)


@_hub("resnet_bottleneck")
def _resnet_bottleneck(m, rng):
    b = m.ResNetBackbone(
        input_conv_filters=[8],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 16],
        stackwise_num_blocks=[1, 2],
        stackwise_num_strides=[1, 2],
        block_type="bottleneck_block",
        image_shape=(IMAGE, IMAGE, 3),
    )
    return b, _images(rng)


@_hub("resnet_v2")
def _resnet_v2(m, rng):
    b = m.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 16],
        stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 2],
        block_type="basic_block",
        use_pre_activation=True,
        image_shape=(IMAGE, IMAGE, 3),
    )
    return b, _images(rng)


@_hub("resnet_vd")
def _resnet_vd(m, rng):
    b = m.ResNetBackbone(
        input_conv_filters=[8, 8, 16],
        input_conv_kernel_sizes=[3, 3, 3],
        stackwise_num_filters=[64, 16],
        stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 2],
        block_type="basic_block_vd",
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
        output_num_filters=32,
        depthwise_filters=8,
        depthwise_stride=2,
        depthwise_residual=False,
        squeeze_and_excite=0.5,
        last_layer_filter=48,
        input_num_filters=8,
        image_shape=(IMAGE, IMAGE, 3),
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
        stem_size=8,
        num_features=32,
        use_msfa=False,
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
        width_coefficient=1.0,
        depth_coefficient=1.0,
        input_shape=(IMAGE, IMAGE, 3),
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
        stem_filters=8,
        stem_kernel_size=3,
        stem_strides=1,
        stackwise_depth=[1, 1],
        stackwise_strides=2,
        stackwise_num_filters=[8, 16],
        block_type="dark_block",
        stage_type="csp",
        stem_padding="same",
        down_growth=True,
        bottle_ratio=(0.5, 1.0),
        block_ratio=(1.0, 0.5),
        expand_ratio=(2.0, 1.0),
        image_shape=(IMAGE, IMAGE, 3),
    )
    return b, _images(rng)


@_hub("densenet")
def _densenet(m, rng):
    b = m.DenseNetBackbone(
        stackwise_num_repeats=[1, 2], growth_rate=4, image_shape=(IMAGE, IMAGE, 3)
    )
    return b, _images(rng)


@_hub("vgg")
def _vgg(m, rng):
    b = m.VGGBackbone(
        stackwise_num_repeats=[1, 2],
        stackwise_num_filters=[8, 16],
        image_shape=(IMAGE, IMAGE, 3),
    )
    return b, _images(rng)


@_hub("xception")
def _xception(m, rng):
    b = m.XceptionBackbone(
        stackwise_conv_filters=[[8, 16], [32, 32], [32, 32]],
        stackwise_pooling=[False, True, False],
        image_shape=(IMAGE, IMAGE, 3),
    )
    return b, _images(rng)


@_hub("hgnetv2")
def _hgnetv2(m, rng):
    b = m.HGNetV2Backbone(
        depths=[1, 1],
        embedding_size=16,
        hidden_sizes=[16, 32],
        stem_channels=[3, 8, 16],
        hidden_act="relu",
        use_learnable_affine_block=True,
        stackwise_stage_filters=[[16, 8, 16, 1, 1, 3], [16, 8, 32, 1, 1, 3]],
        apply_downsample=[False, True],
        use_lightweight_conv_block=[False, True],
        image_shape=(IMAGE, IMAGE, 3),
    )
    return b, _images(rng)


@_hub("mit")
def _mit(m, rng):
    b = m.MiTBackbone(
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
    return b, _images(rng)


@_hub("vit")
def _vit(m, rng):
    b = m.ViTBackbone(
        image_shape=(IMAGE, IMAGE, 3),
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
    )
    return b, _images(rng)


@_hub("deit")
def _deit(m, rng):
    b = m.DeiTBackbone(
        image_shape=(IMAGE, IMAGE, 3),
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
    )
    return b, _images(rng)


@_hub("dinov2")
def _dinov2(m, rng):
    b = m.DINOV2Backbone(
        patch_size=8,
        num_layers=2,
        hidden_dim=16,
        num_heads=2,
        intermediate_dim=32,
        num_register_tokens=0,
        image_shape=(IMAGE, IMAGE, 3),
        position_embedding_shape=(IMAGE, IMAGE, 3),
    )
    return b, {"images": _images(rng)}


@_hub("dinov2_registers_swiglu")
def _dinov2_registers(m, rng):
    b = m.DINOV2Backbone(
        patch_size=8,
        num_layers=2,
        hidden_dim=16,
        num_heads=2,
        intermediate_dim=32,
        num_register_tokens=2,
        use_swiglu_ffn=True,
        image_shape=(IMAGE, IMAGE, 3),
        position_embedding_shape=(IMAGE, IMAGE, 3),
    )
    return b, {"images": _images(rng)}


@_hub("dinov3")
def _dinov3(m, rng):
    b = m.DINOV3Backbone(
        patch_size=8,
        num_layers=2,
        hidden_dim=16,
        num_heads=2,
        intermediate_dim=32,
        num_register_tokens=2,
        image_shape=(IMAGE, IMAGE, 3),
    )
    return b, {"pixel_values": _images(rng)}


@_hub("vit_det")
def _vit_det(m, rng):
    b = m.ViTDetBackbone(
        hidden_size=16,
        num_layers=2,
        intermediate_dim=32,
        num_heads=2,
        global_attention_layer_indices=[1],
        image_shape=(IMAGE, IMAGE, 3),
        patch_size=8,
        num_output_channels=8,
        window_size=2,
    )
    return b, _images(rng)


@_hub("swin")
def _swin(m, rng):
    b = m.SwinTransformerBackbone(
        image_shape=(IMAGE, IMAGE, 3),
        embed_dim=8,
        depths=(1, 1),
        num_heads=(2, 2),
        window_size=4,
        patch_size=4,
        drop_path=0.0,
    )
    return b, _images(rng)


@_hub("video_prism")
def _video_prism(m, rng):
    b = m.VideoPrismBackbone(
        num_frames=2,
        patch_size=8,
        hidden_dim=16,
        intermediate_dim=32,
        num_heads=2,
        num_spatial_layers=1,
        num_temporal_layers=1,
        num_auxiliary_layers=1,
        image_shape=(IMAGE, IMAGE, 3),
    )
    frames = rng.uniform(size=(BATCH, 2, IMAGE, IMAGE, 3)).astype("float32")
    return b, frames


# Image + text -----------------------------------------------------------


@_hub("clip")
def _clip(m, rng):
    vision = m.CLIPVisionEncoder(
        patch_size=8,
        hidden_dim=16,
        num_layers=2,
        num_heads=2,
        intermediate_dim=32,
        image_shape=(IMAGE, IMAGE, 3),
        name="vision_encoder",
    )
    text = m.CLIPTextEncoder(
        vocabulary_size=VOCAB,
        embedding_dim=16,
        hidden_dim=16,
        num_layers=2,
        num_heads=2,
        intermediate_dim=32,
        max_sequence_length=SEQUENCE,
        name="text_encoder",
    )
    b = m.CLIPBackbone(vision_encoder=vision, text_encoder=text, projection_dim=16)
    return b, {"images": _images(rng), "token_ids": _tokens(rng)}


@_hub("metaclip2")
def _metaclip2(m, rng):
    vision = m.MetaCLIP2VisionEncoder(
        patch_size=8,
        hidden_dim=16,
        num_layers=2,
        num_heads=2,
        intermediate_dim=32,
        image_shape=(IMAGE, IMAGE, 3),
        name="vision_encoder",
    )
    text = m.MetaCLIP2TextEncoder(
        vocabulary_size=VOCAB,
        embedding_dim=16,
        hidden_dim=16,
        num_layers=2,
        num_heads=2,
        intermediate_dim=32,
        max_sequence_length=SEQUENCE,
        name="text_encoder",
    )
    b = m.MetaCLIP2Backbone(vision_encoder=vision, text_encoder=text, projection_dim=16)
    return b, {"images": _images(rng), "token_ids": _tokens(rng)}


@_hub("siglip")
def _siglip(m, rng):
    vision = m.SigLIPVisionEncoder(
        patch_size=8,
        hidden_dim=16,
        num_layers=2,
        num_heads=2,
        intermediate_dim=32,
        image_shape=(IMAGE, IMAGE, 3),
        name="vision_encoder",
    )
    text = m.SigLIPTextEncoder(
        vocabulary_size=VOCAB,
        embedding_dim=16,
        hidden_dim=16,
        num_layers=2,
        num_heads=2,
        intermediate_dim=32,
        max_sequence_length=SEQUENCE,
        name="text_encoder",
    )
    b = m.SigLIPBackbone(vision_encoder=vision, text_encoder=text)
    return b, {"images": _images(rng), "token_ids": _tokens(rng)}
