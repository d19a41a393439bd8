"""Layers that move channels around: Flatten, Reshape, Permute."""

import keras
import numpy as np

from kprune.surgery.handlers.base import LayerHandler, config_value
from kprune.surgery.handlers.channelwise import ChannelwiseHandler, _channels_first


class PermuteHandler(ChannelwiseHandler):
    """Permute: channel-wise when the last axis stays last."""

    def check(self, node):
        dims = config_value(node.layer, "dims")
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


def _register():
    from kprune.surgery.handlers.base import register_handler

    register_handler(keras.layers.Permute, PermuteHandler())
    register_handler(keras.layers.Flatten, FlattenHandler())
    register_handler(keras.layers.Reshape, ReshapeHandler())


_register()
