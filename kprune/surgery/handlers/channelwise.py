"""Channel-wise layers: activations, normalization, pooling, dropout, scales.

Channel `c` of the output is channel `c` of the input. Per-channel weights
(BatchNorm's gamma / beta / moving statistics, PReLU's alpha, LayerScale's
gamma) are sliced on their last axis; layers that mix all channels into
their statistics (LayerNormalization, softmax over channels) are channel-wise
in shape but make no removal exact.
"""

import keras
import numpy as np

from kprune.surgery.handlers.base import LayerHandler, config_value


def _last_axis(axis, rank):
    """True when `axis` (int or 1-element list) is the last axis."""
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            return False
        axis = axis[0]
    return axis is not None and axis % rank == rank - 1


def _on_axis(axis, tensor):
    """True when `axis` (int or 1-element list) is `tensor`'s channel axis."""
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            return False
        axis = axis[0]
    rank = len(tensor.shape)
    return axis is not None and axis % rank == tensor.axis % rank


def _channels_first(layer):
    return config_value(layer, "data_format") == "channels_first"


def layout_refusal(layer, tensor):
    """Why a layer with a `data_format` does not read `tensor`'s channels.

    A `channels_first` layer reads channels on axis 1, a `channels_last` one
    on the last axis; the tensor's channels (`TensorInfo.axis`) must be
    there. Layers without a `data_format` (and tensors of rank 2) pass.
    """
    data_format = config_value(layer, "data_format")
    if data_format not in ("channels_first", "channels_last"):
        return None
    if len(tensor.shape) < 3 or not tensor.channels:
        return None
    first = data_format == "channels_first"
    if first and tensor.axis == 1 or not first and tensor.last:
        return None
    where = "last" if tensor.last else str(tensor.axis)
    return (
        f"its data_format='{data_format}' does not match its input, whose "
        f"channels are on axis {where}"
    )


def same_axis(source, target):
    """`source`'s channel axis for `target`, or -1 when ranks differ."""
    return source.axis if len(source.shape) == len(target.shape) else -1


class ChannelwiseHandler(LayerHandler):
    """A layer that treats each channel on its own (activation, BN, pooling).

    Channel `c` of the output is channel `c` of the (first) input. Weights
    whose last dimension equals the channel count are sliced on that axis.
    Override `edit_config(change, kept)` for configs that hold per-channel
    values.
    """

    channel_axes_aware = True

    def check(self, node):
        """Return a reason string when this call is not channel-wise."""
        if not node.inputs or not node.outputs:
            return "it has no input or no output"
        reason = layout_refusal(node.layer, node.inputs[0])
        if reason:
            return reason
        if node.inputs[0].channels != node.outputs[0].channels:
            return "its output does not keep the input's channel axis"
        return None

    def channel_axes(self, node):
        if not node.inputs:
            return super().channel_axes(node)
        axes = [same_axis(node.inputs[0], node.outputs[0])] if node.outputs else []
        return axes + [-1] * (len(node.outputs) - 1)

    def input_axis(self, node, position):
        axis = config_value(node.layer, "axis")
        if isinstance(axis, (list, tuple)) and len(axis) == 1:
            axis = axis[0]
        if axis == 1:
            return 1
        return super().input_axis(node, position)

    def connect(self, node, ctx):
        reason = self.check(node)
        if reason is not None:
            ctx.pin_node(node, reason)
            return
        ctx.tie(node.inputs[0], node.outputs[0])
        for tensor in node.inputs[1:] + node.outputs[1:]:
            ctx.pin(tensor, f"extra input/output of layer '{node.path}'")

    def constant_mask(self, node, in_valid, weights):
        return [in_valid[0].copy()] + [
            np.zeros(t.channels, bool) for t in node.outputs[1:]
        ]

    def edit_config(self, change, kept):
        """Hook: update per-channel values held in the config."""

    def calls_independent(self, layer):
        """No weights, and a config without widths (`edit_config` unused)."""
        return (
            not getattr(layer, "weights", None)
            and type(self).edit_config is ChannelwiseHandler.edit_config
        )

    def rebuild(self, change):
        source = change.node.inputs[0]
        size = source.channels
        kept = change.kept(size, change.in_removed[0])
        weights = {}
        rank = len(source.shape)
        for name, value in change.weights.items():
            if (
                not source.last
                and value.ndim == rank - 1
                and (value.shape[source.axis - 1] == size)
            ):
                value = np.take(value, kept, axis=source.axis - 1)  # per position
            elif value.ndim and value.shape[-1] == size:
                value = value[..., kept]
            weights[name] = value
        self.edit_config(change, kept)
        return change.config, weights


class MixingHandler(ChannelwiseHandler):
    """Channel-wise in shape, but every output depends on all channels.

    LayerNormalization, Softmax over channels, UnitNormalization: removing a
    channel changes the others, so no removal through them is exact and
    `dead_units` never proposes one; `remove_units` may still remove.
    """

    def connect(self, node, ctx):
        super().connect(node, ctx)
        ctx.pin_exact(
            node.inputs[0],
            f"layer '{node.path}' ({node.layer.__class__.__name__}) mixes all "
            "channels, so removing one changes the others",
        )

    def constant_mask(self, node, in_valid, weights):
        valid = bool(in_valid[0].all())
        return [np.full(t.channels, valid) for t in node.outputs]


class AxisChannelwiseHandler(ChannelwiseHandler):
    """Channel-wise when the layer's `axis` config is the last axis."""

    def __init__(self, mixing_other_axes=False):
        self.mixing = mixing_other_axes

    def check(self, node):
        reason = super().check(node)
        if reason:
            return reason
        axis = config_value(node.layer, "axis", -1)
        if not _on_axis(axis, node.inputs[0]):
            return f"its axis={axis} is not the channel axis"
        return None


class BatchNormHandler(AxisChannelwiseHandler):
    """BatchNormalization: channel-wise; a channel whose `gamma` is exactly 0
    outputs its `beta` whatever its input (in inference), so it is constant
    (a zero group of kprune's group sparsity with BatchNorm partners: the
    conv before it need not be zero for the channel to be dead)."""

    def constant_mask(self, node, in_valid, weights):
        masks = super().constant_mask(node, in_valid, weights)
        gamma = weights.get("gamma")
        if gamma is not None and np.shape(gamma) == masks[0].shape:
            masks[0] = masks[0] | (np.asarray(gamma) == 0)
        return masks


class LayerNormHandler(MixingHandler):
    """LayerNormalization over the last axis: per-channel gamma/beta."""

    def check(self, node):
        reason = super().check(node)
        if reason:
            return reason
        axis = config_value(node.layer, "axis", -1)
        if not _on_axis(axis, node.inputs[0]):
            return f"its axis={axis} is not only the channel axis"
        return None


class SoftmaxHandler(ChannelwiseHandler):
    """Softmax: mixing over its axis; channel-wise when that is not last."""

    def connect(self, node, ctx):
        axis = config_value(node.layer, "axis", -1)
        super().connect(node, ctx)
        if _on_axis(axis, node.inputs[0]):
            ctx.pin_exact(node.inputs[0], f"softmax '{node.path}' mixes channels")


class ActivationHandler(ChannelwiseHandler):
    """`Activation`: channel-wise, except softmax-like ones, which mix."""

    def connect(self, node, ctx):
        super().connect(node, ctx)
        if config_value(node.layer, "activation") in ("softmax", "log_softmax"):
            ctx.pin_exact(node.inputs[0], f"'{node.path}' applies softmax")


class GroupNormHandler(ChannelwiseHandler):
    """GroupNormalization: channels leave in whole groups."""

    def check(self, node):
        reason = super().check(node)
        if reason:
            return reason
        axis = config_value(node.layer, "axis", -1)
        if not _on_axis(axis, node.inputs[0]):
            return f"its axis={axis} is not the channel axis"
        return None

    def connect(self, node, ctx):
        super().connect(node, ctx)
        if self.check(node):
            return
        size = node.inputs[0].channels
        groups = config_value(node.layer, "groups")
        per = size // groups
        firsts = np.repeat(np.arange(groups) * per, per)
        ctx.tie_indices(node.inputs[0], firsts, node.inputs[0], np.arange(size))

    def constant_mask(self, node, in_valid, weights):
        groups = config_value(node.layer, "groups")
        valid = in_valid[0].reshape(groups, -1).all(axis=1)
        return [np.repeat(valid, in_valid[0].size // groups)]

    def edit_config(self, change, kept):
        size = change.node.inputs[0].channels
        per = size // change.config["groups"]
        change.config["groups"] = len(kept) // per


class RescalingHandler(ChannelwiseHandler):
    """Rescaling with scalar or per-channel scale/offset."""

    def edit_config(self, change, kept):
        size = change.node.inputs[0].channels
        for key in ("scale", "offset"):
            value = change.config.get(key)
            if isinstance(value, (list, tuple)) and len(value) == size:
                change.config[key] = [value[i] for i in kept]


class NormalizationHandler(ChannelwiseHandler):
    """Normalization (adapted or given mean/variance) on the last axis."""

    def check(self, node):
        reason = super().check(node)
        if reason:
            return reason
        axis = config_value(node.layer, "axis", -1)
        axis = tuple(axis) if isinstance(axis, (list, tuple)) else (axis,)
        if len(axis) != 1 or not _on_axis(axis, node.inputs[0]):
            return f"its axis={axis} is not the channel axis"
        return None

    def edit_config(self, change, kept):
        size = change.node.inputs[0].channels
        for key in ("mean", "variance"):
            value = change.config.get(key)
            if value is not None:
                array = np.asarray(value)
                if array.ndim and array.shape[-1] == size:
                    change.config[key] = array[..., kept].tolist()


class LayerScaleHandler(ChannelwiseHandler):
    """ConvNeXt's LayerScale: per-channel gamma, width in `projection_dim`."""

    def edit_config(self, change, kept):
        change.config["projection_dim"] = len(kept)


def _register():
    from kprune.surgery.handlers.base import register_handler

    layers = keras.layers
    channelwise = ChannelwiseHandler()
    for name in (
        "ReLU",
        "LeakyReLU",
        "ELU",
        "PReLU",
        "Dropout",
        "SpatialDropout1D",
        "SpatialDropout2D",
        "SpatialDropout3D",
        "GaussianNoise",
        "GaussianDropout",
        "AlphaDropout",
        "ActivityRegularization",
        "Identity",
        "MaxPooling1D",
        "MaxPooling2D",
        "MaxPooling3D",
        "AveragePooling1D",
        "AveragePooling2D",
        "AveragePooling3D",
        "GlobalMaxPooling1D",
        "GlobalMaxPooling2D",
        "GlobalMaxPooling3D",
        "GlobalAveragePooling1D",
        "GlobalAveragePooling2D",
        "GlobalAveragePooling3D",
        "ZeroPadding1D",
        "ZeroPadding2D",
        "ZeroPadding3D",
        "Cropping1D",
        "Cropping2D",
        "Cropping3D",
        "UpSampling1D",
        "UpSampling2D",
        "UpSampling3D",
        "RepeatVector",
    ):
        if hasattr(layers, name):
            register_handler(getattr(layers, name), channelwise)
    register_handler(layers.Activation, ActivationHandler())
    register_handler(layers.BatchNormalization, BatchNormHandler())
    register_handler(layers.LayerNormalization, LayerNormHandler())
    register_handler(layers.GroupNormalization, GroupNormHandler())
    register_handler(layers.UnitNormalization, MixingHandler())
    register_handler(layers.Masking, MixingHandler())
    register_handler(layers.Softmax, SoftmaxHandler())
    register_handler(layers.Rescaling, RescalingHandler())
    register_handler(layers.Normalization, NormalizationHandler())
    register_handler("keras.src.applications.convnext.LayerScale", LayerScaleHandler())


_register()
