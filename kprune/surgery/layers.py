"""Handlers for the built-in Keras layers."""

import keras
import numpy as np

from kprune.surgery.graph import constant_arguments
from kprune.surgery.handlers import LayerHandler, register_handler


def _last_axis(axis, rank):
    """True when `axis` (int or 1-element list) is the last axis."""
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            return False
        axis = axis[0]
    return axis is not None and axis % rank == rank - 1


def _channels_first(layer):
    return layer.get_config().get("data_format") == "channels_first"


class ChannelwiseHandler(LayerHandler):
    """A layer that treats each channel on its own (activation, BN, pooling).

    Channel `c` of the output is channel `c` of the (first) input. Weights
    whose last dimension equals the channel count are sliced on that axis.
    Override `edit_config(change, kept)` for configs that hold per-channel
    values.
    """

    def check(self, node):
        """Return a reason string when this call is not channel-wise."""
        if _channels_first(node.layer):
            return "data_format='channels_first' is not supported"
        if not node.outputs or node.inputs[0].channels != node.outputs[0].channels:
            return "its output does not keep the input's channel axis"
        return None

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

    def rebuild(self, change):
        size = change.node.inputs[0].channels
        kept = change.kept(size, change.in_removed[0])
        weights = {}
        for name, value in change.weights.items():
            if value.ndim and value.shape[-1] == size:
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
        axis = node.layer.get_config().get("axis", -1)
        if not _last_axis(axis, len(node.inputs[0].shape)):
            return f"its axis={axis} is not the channel (last) axis"
        return None


class LayerNormHandler(MixingHandler):
    """LayerNormalization over the last axis: per-channel gamma/beta."""

    def check(self, node):
        reason = super().check(node)
        if reason:
            return reason
        axis = node.layer.get_config().get("axis", -1)
        if not _last_axis(axis, len(node.inputs[0].shape)):
            return f"its axis={axis} is not only the channel (last) axis"
        return None


class SoftmaxHandler(ChannelwiseHandler):
    """Softmax: mixing over its axis; channel-wise when that is not last."""

    def connect(self, node, ctx):
        axis = node.layer.get_config().get("axis", -1)
        super().connect(node, ctx)
        if _last_axis(axis, len(node.inputs[0].shape)):
            ctx.pin_exact(node.inputs[0], f"softmax '{node.path}' mixes channels")


class ActivationHandler(ChannelwiseHandler):
    """`Activation`: channel-wise, except softmax-like ones, which mix."""

    def connect(self, node, ctx):
        super().connect(node, ctx)
        if node.layer.get_config().get("activation") in ("softmax", "log_softmax"):
            ctx.pin_exact(node.inputs[0], f"'{node.path}' applies softmax")


class GroupNormHandler(ChannelwiseHandler):
    """GroupNormalization: channels leave in whole groups."""

    def check(self, node):
        reason = super().check(node)
        if reason:
            return reason
        axis = node.layer.get_config().get("axis", -1)
        if not _last_axis(axis, len(node.inputs[0].shape)):
            return f"its axis={axis} is not the channel (last) axis"
        return None

    def connect(self, node, ctx):
        super().connect(node, ctx)
        if self.check(node):
            return
        size = node.inputs[0].channels
        groups = node.layer.get_config()["groups"]
        per = size // groups
        firsts = np.repeat(np.arange(groups) * per, per)
        ctx.tie_indices(node.inputs[0], firsts, node.inputs[0], np.arange(size))

    def constant_mask(self, node, in_valid, weights):
        groups = node.layer.get_config()["groups"]
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
        axis = node.layer.get_config().get("axis", -1)
        axis = tuple(axis) if isinstance(axis, (list, tuple)) else (axis,)
        if len(axis) != 1 or not _last_axis(axis, len(node.inputs[0].shape)):
            return f"its axis={axis} is not the channel (last) axis"
        return None

    def edit_config(self, change, kept):
        size = change.node.inputs[0].channels
        for key in ("mean", "variance"):
            value = change.config.get(key)
            if value is not None:
                array = np.asarray(value)
                if array.ndim and array.shape[-1] == size:
                    change.config[key] = array[..., kept].tolist()


class PermuteHandler(ChannelwiseHandler):
    """Permute: channel-wise when the last axis stays last."""

    def check(self, node):
        dims = node.layer.get_config()["dims"]
        if dims[-1] != len(dims):
            return f"it moves the channel axis (dims={dims})"
        return super().check(node)


class FlattenHandler(LayerHandler):
    """Flatten: channel `c` becomes every position `s * C + c`."""

    def connect(self, node, ctx):
        source, target = node.inputs[0], node.outputs[0]
        if _channels_first(node.layer):
            ctx.pin_node(node, "data_format='channels_first' is not supported")
            return
        _tie_flatten(ctx, source, target, node)

    def constant_mask(self, node, in_valid, weights):
        return [_flat_repeat(node.inputs[0], node.outputs[0], in_valid[0])]

    def rebuild(self, change):
        return change.config, dict(change.weights)


def _tie_flatten(ctx, source, target, node):
    """Tie a channels-last tensor to its flattened form (either direction)."""
    if len(source.shape) == 2 and len(target.shape) == 2:
        if source.channels == target.channels:
            ctx.tie(source, target)
        else:
            ctx.pin_node(node, "it changes the feature size")
        return
    spatial, flat = (target, source) if len(source.shape) == 2 else (source, target)
    channels, size = spatial.channels, flat.channels
    if len(flat.shape) != 2 or not channels or not size or size % channels:
        ctx.pin_node(node, "its channel axis cannot be followed")
        return
    positions = np.tile(np.arange(channels), size // channels)
    ctx.tie_indices(spatial, positions, flat, np.arange(size))


def _flat_repeat(source, target, values):
    if target.channels == source.channels:
        return values.copy()
    return np.tile(values, target.channels // max(source.channels, 1))


class ReshapeHandler(LayerHandler):
    """Reshape that keeps the last axis, flattens, or un-flattens it."""

    def _mode(self, node):
        source, target = node.inputs[0].shape, node.outputs[0].shape
        if source[-1] == target[-1] and source[-1] is not None:
            return "channel"
        if len(target) == 2 and len(source) > 2:
            return "flatten"
        if len(source) == 2 and len(target) > 2:
            return "unflatten"
        return None

    def connect(self, node, ctx):
        mode = self._mode(node)
        if mode == "channel":
            ctx.tie(node.inputs[0], node.outputs[0])
        elif mode in ("flatten", "unflatten"):
            _tie_flatten(ctx, node.inputs[0], node.outputs[0], node)
        else:
            ctx.pin_node(node, "it reshapes the channel axis")

    def constant_mask(self, node, in_valid, weights):
        mode = self._mode(node)
        if mode == "channel":
            return [in_valid[0].copy()]
        if mode == "flatten":
            return [_flat_repeat(node.inputs[0], node.outputs[0], in_valid[0])]
        if mode == "unflatten":
            channels = node.outputs[0].channels
            return [in_valid[0].reshape(-1, channels).all(axis=0)]
        return [np.zeros(node.outputs[0].channels, bool)]

    def rebuild(self, change):
        target = list(change.config["target_shape"])
        if target[-1] != -1:
            target[-1] = target[-1] - len(change.out_removed[0])
        change.config["target_shape"] = tuple(target)
        return change.config, dict(change.weights)


class MergeHandler(LayerHandler):
    """Add / Subtract / Multiply / Average / Maximum / Minimum.

    Every input with the output's channel count loses the same channels as
    the output (coupled). An input broadcast over all channels is pinned.
    """

    def connect(self, node, ctx):
        out = node.outputs[0]
        for tensor in node.inputs:
            if tensor.channels == out.channels:
                ctx.tie(tensor, out)
            else:
                ctx.pin(tensor, f"it is broadcast over the channels of '{node.path}'")

    def constant_mask(self, node, in_valid, weights):
        out = node.outputs[0]
        valid = np.ones(out.channels, bool)
        for tensor, mask in zip(node.inputs, in_valid):
            valid &= mask if tensor.channels == out.channels else bool(mask.all())
        return [valid]

    def rebuild(self, change):
        return change.config, dict(change.weights)


class ElementwiseOpHandler(MergeHandler):
    """`keras.ops` element-wise functions (`x + 3.0`, `x * y`, `relu(x)`).

    Tensor arguments are coupled like a merge layer; scalar constants are
    fine; a non-scalar constant argument pins the call.
    """

    def connect(self, node, ctx):
        for value in constant_arguments(node):
            if np.ndim(value) or isinstance(value, (dict, list)):
                ctx.pin_node(node, "it has a non-scalar constant argument")
                return
        super().connect(node, ctx)


class LayerScaleHandler(ChannelwiseHandler):
    """ConvNeXt's LayerScale: per-channel gamma, width in `projection_dim`."""

    def edit_config(self, change, kept):
        change.config["projection_dim"] = len(kept)


class ConcatenateHandler(LayerHandler):
    """Concatenate: offsets on the channel axis, coupling on any other axis."""

    def _on_channels(self, node):
        rank = len(node.outputs[0].shape)
        return _last_axis(node.layer.get_config()["axis"], rank)

    def connect(self, node, ctx):
        out = node.outputs[0]
        if self._on_channels(node):
            start = 0
            for tensor in node.inputs:
                ctx.tie_indices(
                    tensor,
                    np.arange(tensor.channels),
                    out,
                    start + np.arange(tensor.channels),
                )
                start += tensor.channels
        else:
            MergeHandler.connect(self, node, ctx)

    def constant_mask(self, node, in_valid, weights):
        if self._on_channels(node):
            return [np.concatenate(in_valid)]
        return MergeHandler.constant_mask(self, node, in_valid, weights)

    def rebuild(self, change):
        return change.config, dict(change.weights)


class ProducerHandler(LayerHandler):
    """A layer with a kernel whose output units are its own.

    Args:
        units_key: the config key of the output width.
        in_axis / out_axis: kernel axes of input channels and output units;
            all other kernel axes are spatial taps.
    """

    produces_units = True

    def __init__(self, units_key, in_axis=-2, out_axis=-1, kernel="kernel"):
        self.units_key = units_key
        self.in_axis = in_axis
        self.out_axis = out_axis
        self.kernel = kernel

    def check(self, node):
        config = node.layer.get_config()
        if _channels_first(node.layer):
            return "data_format='channels_first' is not supported"
        if config.get("groups", 1) != 1:
            return f"grouped convolution (groups={config['groups']})"
        if config.get("lora_rank"):
            return "LoRA-enabled layers are not supported"
        if self.kernel not in {w.name for w in node.layer.weights}:
            return f"it has no '{self.kernel}' weight (quantized?)"
        return None

    def connect(self, node, ctx):
        reason = self.check(node)
        if reason:
            ctx.pin_node(node, reason)
        for tensor in node.inputs[1:]:
            ctx.pin(tensor, f"extra input of layer '{node.path}'")

    def matrix(self, weights):
        """Kernel summed over taps, as (in_channels, out_units)."""
        kernel = weights[self.kernel]
        kernel = np.moveaxis(kernel, (self.in_axis, self.out_axis), (-2, -1))
        return kernel.reshape(-1, *kernel.shape[-2:])

    def fold_exact(self, node):
        """Whether a constant input folds exactly into the bias."""
        config = node.layer.get_config()
        padding = config.get("padding", "valid")
        if padding == "valid":
            return True
        return all(k == 1 for k in config.get("kernel_size", (1,)))

    def uses(self, node, weights):
        taps = self.matrix(weights)
        nonzero = np.any(taps != 0, axis=0)
        return [(0, nonzero, self.fold_exact(node))]

    def constant_mask(self, node, in_valid, weights):
        nonzero = self.uses(node, weights)[0][1]
        # A unit is constant when every input feeding it is constant.
        feeds_from_varying = nonzero[~in_valid[0]].any(axis=0)
        return [~feeds_from_varying]

    def fold(self, weights, removed, fill):
        """Bias change from constant removed inputs: fill @ sum_taps(W)."""
        if not len(removed):
            return None
        values = fill[removed]
        if not np.any(values):
            return None
        taps = self.matrix(weights).sum(axis=0)
        return values @ taps[removed]

    def rebuild(self, change):
        weights = dict(change.weights)
        kernel = weights[self.kernel]
        size_in = kernel.shape[self.in_axis]
        size_out = kernel.shape[self.out_axis]
        kept_in = change.kept(size_in, change.in_removed[0])
        kept_out = change.kept(size_out, change.out_removed[0])
        delta = self.fold(change.weights, change.in_removed[0], change.in_fill[0])
        kernel = np.take(kernel, kept_in, axis=self.in_axis)
        weights[self.kernel] = np.take(kernel, kept_out, axis=self.out_axis)
        if delta is not None:
            bias = weights.get("bias", np.zeros(size_out, kernel.dtype))
            weights["bias"] = (bias + delta).astype(kernel.dtype)
            change.config["use_bias"] = True
        if "bias" in weights:
            weights["bias"] = weights["bias"][kept_out]
        change.config[self.units_key] = len(kept_out)
        return change.config, weights


class ConvTransposeHandler(ProducerHandler):
    """Conv*DTranspose: kernel is (*taps, out, in); constants never fold."""

    def __init__(self):
        super().__init__("filters", in_axis=-1, out_axis=-2)

    def fold_exact(self, node):
        return False


class SeparableConvHandler(ProducerHandler):
    """SeparableConv: per-channel depthwise taps, then a pointwise mix."""

    def __init__(self):
        super().__init__("filters", kernel="pointwise_kernel")

    def _parts(self, weights):
        depthwise = weights["depthwise_kernel"]  # (*taps, in, mult)
        pointwise = weights["pointwise_kernel"]  # (1.., in*mult, out)
        size_in, mult = depthwise.shape[-2:]
        pointwise = pointwise.reshape(size_in, mult, -1)
        return depthwise.reshape(-1, size_in, mult), pointwise

    def matrix(self, weights):
        depthwise, pointwise = self._parts(weights)
        # Effective (in, out) kernel per tap: sum_m dw[t, c, m] * pw[c, m, o].
        return np.einsum("tcm,cmo->tco", depthwise, pointwise)

    def uses(self, node, weights):
        depthwise, pointwise = self._parts(weights)
        nonzero = np.einsum(
            "cm,cmo->co",
            np.any(depthwise != 0, axis=0).astype(np.float32),
            (pointwise != 0).astype(np.float32),
        )
        return [(0, nonzero > 0, self.fold_exact(node))]

    def rebuild(self, change):
        weights = dict(change.weights)
        depthwise, pointwise = (
            weights["depthwise_kernel"],
            weights["pointwise_kernel"],
        )
        size_in, mult = depthwise.shape[-2:]
        size_out = pointwise.shape[-1]
        kept_in = change.kept(size_in, change.in_removed[0])
        kept_out = change.kept(size_out, change.out_removed[0])
        delta = self.fold(change.weights, change.in_removed[0], change.in_fill[0])
        weights["depthwise_kernel"] = depthwise[..., kept_in, :]
        rows = (kept_in[:, None] * mult + np.arange(mult)).reshape(-1)
        pointwise = pointwise[..., rows, :]
        weights["pointwise_kernel"] = pointwise[..., kept_out]
        if delta is not None:
            bias = weights.get("bias", np.zeros(size_out, pointwise.dtype))
            weights["bias"] = (bias + delta).astype(pointwise.dtype)
            change.config["use_bias"] = True
        if "bias" in weights:
            weights["bias"] = weights["bias"][kept_out]
        change.config["filters"] = len(kept_out)
        return change.config, weights


class DepthwiseConvHandler(LayerHandler):
    """DepthwiseConv: output `c * m + k` comes from input channel `c` only."""

    def connect(self, node, ctx):
        source, out = node.inputs[0], node.outputs[0]
        if _channels_first(node.layer):
            ctx.pin_node(node, "data_format='channels_first' is not supported")
            return
        mult = node.layer.get_config()["depth_multiplier"]
        ctx.tie_indices(
            source,
            np.repeat(np.arange(source.channels), mult),
            out,
            np.arange(out.channels),
        )

    def constant_mask(self, node, in_valid, weights):
        kernel = weights["kernel"]  # (*taps, in, mult)
        zero = ~np.any(kernel.reshape(-1, *kernel.shape[-2:]) != 0, axis=0)
        mult = kernel.shape[-1]
        return [(np.repeat(in_valid[0], mult) | zero.reshape(-1))]

    def rebuild(self, change):
        weights = dict(change.weights)
        kernel = weights["kernel"]
        size_in, mult = kernel.shape[-2:]
        kept_in = change.kept(size_in, change.in_removed[0])
        weights["kernel"] = kernel[..., kept_in, :]
        if "bias" in weights:
            rows = (kept_in[:, None] * mult + np.arange(mult)).reshape(-1)
            weights["bias"] = weights["bias"][rows]
        return change.config, weights


class EmbeddingHandler(ProducerHandler):
    """Embedding: the output dimension is removable; ids are not channels."""

    def __init__(self):
        super().__init__("output_dim", in_axis=0, out_axis=-1, kernel="embeddings")

    def connect(self, node, ctx):
        reason = self.check(node)
        if reason:
            ctx.pin_node(node, reason)
        ctx.pin(node.inputs[0], f"the input of '{node.path}' holds token ids")

    def uses(self, node, weights):
        return []

    def constant_mask(self, node, in_valid, weights):
        return [np.zeros(node.outputs[0].channels, bool)]

    def rebuild(self, change):
        weights = dict(change.weights)
        table = weights["embeddings"]
        kept = change.kept(table.shape[-1], change.out_removed[0])
        weights["embeddings"] = table[:, kept]
        change.config["output_dim"] = len(kept)
        return change.config, weights


def _register_builtins():
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
    register_handler(layers.BatchNormalization, AxisChannelwiseHandler())
    register_handler(layers.LayerNormalization, LayerNormHandler())
    register_handler(layers.GroupNormalization, GroupNormHandler())
    register_handler(layers.UnitNormalization, MixingHandler())
    register_handler(layers.Masking, MixingHandler())
    register_handler(layers.Softmax, SoftmaxHandler())
    register_handler(layers.Rescaling, RescalingHandler())
    register_handler(layers.Normalization, NormalizationHandler())
    register_handler(layers.Permute, PermuteHandler())
    register_handler(layers.Flatten, FlattenHandler())
    register_handler(layers.Reshape, ReshapeHandler())
    merge = MergeHandler()
    for name in ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"):
        register_handler(getattr(layers, name), merge)
    register_handler(layers.Concatenate, ConcatenateHandler())
    register_handler(layers.Dense, ProducerHandler("units", in_axis=0, out_axis=-1))
    for name in ("Conv1D", "Conv2D", "Conv3D"):
        register_handler(getattr(layers, name), ProducerHandler("filters"))
    for name in ("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"):
        register_handler(getattr(layers, name), ConvTransposeHandler())
    for name in ("SeparableConv1D", "SeparableConv2D"):
        register_handler(getattr(layers, name), SeparableConvHandler())
    for name in ("DepthwiseConv1D", "DepthwiseConv2D"):
        register_handler(getattr(layers, name), DepthwiseConvHandler())
    register_handler(layers.Embedding, EmbeddingHandler())
    _register_ops()


def _register_ops():
    """Handlers for `keras.ops` calls recorded in Functional graphs."""
    from keras.src.ops import nn as nn_ops
    from keras.src.ops import numpy as numpy_ops

    elementwise = ElementwiseOpHandler()
    for module, names in (
        (
            numpy_ops,
            (
                "Add",
                "Subtract",
                "Multiply",
                "Divide",
                "TrueDivide",
                "Maximum",
                "Minimum",
                "Power",
                "Abs",
                "Absolute",
                "Negative",
                "Exp",
                "Log",
                "Sqrt",
                "Square",
                "Tanh",
                "Sin",
                "Cos",
                "Clip",
                "Sign",
            ),
        ),
        (
            nn_ops,
            (
                "Relu",
                "Relu6",
                "Sigmoid",
                "HardSigmoid",
                "HardSilu",
                "Silu",
                "Gelu",
                "Softplus",
                "Softsign",
                "Elu",
                "Selu",
                "LeakyRelu",
                "Mish",
            ),
        ),
    ):
        for name in names:
            op_class = getattr(module, name, None)
            if isinstance(op_class, type):
                register_handler(op_class, elementwise)
    try:
        from keras.src.applications.convnext import LayerScale
    except ImportError:
        return
    register_handler(LayerScale, LayerScaleHandler())


_register_builtins()
