"""Layers that move channels around: Flatten, Reshape, Permute."""

import keras
import numpy as np

from kprune.surgery.handlers.base import LayerHandler, config_value
from kprune.surgery.handlers.channelwise import ChannelwiseHandler


class PermuteHandler(ChannelwiseHandler):
    """Permute: the channels go wherever `dims` moves their axis.

    Permute never mixes channels: channel `c` of the output is channel `c`
    of the input, on the axis `dims` moved it to (the output's channel axis
    is that one, e.g. 1 after `Permute((2, 1))` of a `(batch, steps,
    channels)` tensor).
    """

    def channel_axes(self, node):
        dims = [int(d) for d in config_value(node.layer, "dims")]
        source = node.inputs[0]
        axis = len(source.shape) - 1 if source.last else source.axis
        if axis not in dims:
            return [-1]
        return [1 + dims.index(axis)]

    def check(self, node):
        if not node.inputs or not node.outputs:
            return "it has no input or no output"
        if node.inputs[0].channels != node.outputs[0].channels:
            return "its output does not keep the input's channels"
        return None


class FlattenHandler(LayerHandler):
    """Flatten: each output position holds one input channel.

    Channels last: channel `c` becomes every position `s * C + c`. Channels
    on axis 1 (a `channels_first` tensor): `Flatten()` keeps that order, so
    channel `c` becomes positions `c * S .. c * S + S - 1`, while
    `Flatten(data_format="channels_first")` moves channels last first.
    """

    channel_axes_aware = True

    def connect(self, node, ctx):
        source, target = node.inputs[0], node.outputs[0]
        positions = _flat_channels(node)
        if positions is None:
            if source.last:
                _tie_flatten(ctx, source, target, node)
            else:
                ctx.pin_node(node, "its channel axis cannot be followed")
            return
        ctx.tie_indices(source, positions, target, np.arange(target.channels))

    def constant_mask(self, node, in_valid, weights):
        positions = _flat_channels(node)
        if positions is None:
            if not node.inputs[0].last:
                return [np.zeros(node.outputs[0].channels, bool)]
            return [_flat_repeat(node.inputs[0], node.outputs[0], in_valid[0])]
        return [in_valid[0][positions]]

    def rebuild(self, change):
        return change.config, dict(change.weights)


def _flat_channels(node):
    """For a Flatten call: the input channel at each output position.

    None when the spatial sizes are unknown.
    """
    source, target = node.inputs[0], node.outputs[0]
    shape = tuple(source.shape[1:])
    if len(shape) < 2 or any(d is None for d in shape) or not source.channels:
        return None
    axis = len(shape) - 1 if source.last else source.axis - 1
    layout = [1] * len(shape)
    layout[axis] = source.channels
    channel = np.broadcast_to(np.arange(source.channels).reshape(layout), shape)
    if config_value(node.layer, "data_format") == "channels_first":
        channel = np.moveaxis(channel, 0, -1)
    positions = channel.reshape(-1)
    if len(positions) != target.channels:
        return None
    return positions


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


def _register():
    from kprune.surgery.handlers.base import register_handler

    register_handler(keras.layers.Permute, PermuteHandler())
    register_handler(keras.layers.Flatten, FlattenHandler())
    register_handler(keras.layers.Reshape, ReshapeHandler())


_register()
