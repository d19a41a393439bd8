"""Layers and ops that join tensors: Add / Multiply / ..., Concatenate."""

import keras
import numpy as np

from kprune.surgery.graph import constant_arguments
from kprune.surgery.handlers.base import LayerHandler, config_value
from kprune.surgery.handlers.channelwise import _last_axis


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
    fine. Inside a traced layer, a constant of shape `(C,)` (or `(1, ..., C)`)
    is a per-channel parameter of that layer (a norm's `1 + scale`, a
    `LayerScale` gamma read in `call`): the layer is rebuilt from its class,
    which slices the weight behind it. Any other constant, or a per-channel
    one at model level (where nothing would slice it), pins the call.
    """

    def connect(self, node, ctx):
        out = node.outputs[0] if node.outputs else None
        for value in constant_arguments(node):
            if isinstance(value, (dict, list, tuple, str)):
                ctx.pin_node(node, "it has a non-tensor argument")
                return
            shape = tuple(getattr(value, "shape", np.shape(value)))
            if not shape or all(d == 1 for d in shape):
                continue
            per_channel = (
                out is not None
                and out.channels
                and shape[-1] == out.channels
                and all(d == 1 for d in shape[:-1])
            )
            if not per_channel or node.parent is None:
                ctx.pin_node(node, "it has a non-scalar constant argument")
                return
        super().connect(node, ctx)


class ConcatenateHandler(LayerHandler):
    """Concatenate: offsets on the channel axis, coupling on any other axis."""

    def _on_channels(self, node):
        rank = len(node.outputs[0].shape)
        return _last_axis(config_value(node.layer, "axis"), rank)

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


def _register():
    from keras.src.ops import nn as nn_ops
    from keras.src.ops import numpy as numpy_ops

    from kprune.surgery.handlers.base import register_handler

    merge = MergeHandler()
    for name in ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"):
        register_handler(getattr(keras.layers, name), merge)
    register_handler(keras.layers.Concatenate, ConcatenateHandler())
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


_register()
