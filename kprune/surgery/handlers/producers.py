"""Layers whose output units are their own: Dense, Conv*, SeparableConv*.

Also DepthwiseConv (channel-wise with a depth multiplier) and the
transposed convolutions. A producer's units are the keys of a removal plan;
its kernel's input axis is shrunk when upstream channels leave, with the
constant value of a removed input channel folded into the bias.
"""

import re

import keras
import numpy as np

from kprune.surgery.handlers.base import LayerHandler, config_value
from kprune.surgery.handlers.channelwise import _channels_first


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
        layer = node.layer
        if _channels_first(layer):
            return "data_format='channels_first' is not supported"
        groups = config_value(layer, "groups", 1) or 1
        if groups != 1 and not isinstance(self, GroupedConvHandler):
            return f"grouped convolution (groups={groups})"
        if config_value(layer, "lora_rank") or getattr(layer, "lora_enabled", False):
            return "LoRA-enabled layers are not supported"
        if self.kernel not in {w.name for w in layer.weights}:
            return f"it has no '{self.kernel}' weight (quantized?)"
        return None

    def usable(self, node):
        """Whether `uses` / `constant_mask` can read this call's weights."""
        return self.check(node) is None

    def connect(self, node, ctx):
        reason = self.check(node)
        if reason:
            ctx.pin_node(node, reason)
        for tensor in node.inputs[1:]:
            ctx.pin(tensor, f"extra input of layer '{node.path}'")

    def node_matrix(self, node, weights):
        """`(taps, in_channels, out_units)` kernel of one call's layer."""
        return self.matrix(weights)

    def matrix(self, weights):
        """Kernel summed over taps, as (in_channels, out_units)."""
        kernel = weights[self.kernel]
        kernel = np.moveaxis(kernel, (self.in_axis, self.out_axis), (-2, -1))
        return kernel.reshape(-1, *kernel.shape[-2:])

    def fold_exact(self, node):
        """Whether a constant input folds exactly into the bias."""
        padding = config_value(node.layer, "padding", "valid")
        if padding == "valid":
            return True
        return all(k == 1 for k in config_value(node.layer, "kernel_size", (1,)))

    def uses(self, node, weights):
        if not self.usable(node):
            return []
        taps = self.node_matrix(node, weights)
        nonzero = np.any(taps != 0, axis=0)
        return [(0, nonzero, self.fold_exact(node))]

    def constant_mask(self, node, in_valid, weights):
        uses = self.uses(node, weights)
        if not uses:
            return [np.zeros(t.channels, bool) for t in node.outputs]
        nonzero = uses[0][1]
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


class ConvHandler(ProducerHandler):
    """Conv1D/2D/3D: a `GroupedConvHandler` when the layer has `groups > 1`."""

    def __init__(self):
        super().__init__("filters")
        self.grouped = None

    def _for(self, node):
        if (config_value(node.layer, "groups", 1) or 1) == 1:
            return None
        if self.grouped is None:
            self.grouped = GroupedConvHandler()
        return self.grouped

    def connect(self, node, ctx):
        grouped = self._for(node)
        return grouped.connect(node, ctx) if grouped else super().connect(node, ctx)

    def uses(self, node, weights):
        grouped = self._for(node)
        return grouped.uses(node, weights) if grouped else super().uses(node, weights)

    def constant_mask(self, node, in_valid, weights):
        grouped = self._for(node)
        if grouped:
            return grouped.constant_mask(node, in_valid, weights)
        return super().constant_mask(node, in_valid, weights)

    def node_matrix(self, node, weights):
        grouped = self._for(node)
        if grouped:
            return grouped.node_matrix(node, weights)
        return super().node_matrix(node, weights)

    def rebuild(self, change):
        grouped = self._for(change.node)
        return grouped.rebuild(change) if grouped else super().rebuild(change)


class GroupedConvHandler(ProducerHandler):
    """Conv with `groups > 1`: channels leave evenly from every group.

    Input channel `i` feeds only the filters of its group `i // (C_in/G)`.
    With one input channel per group (`groups == C_in`, a depthwise
    convolution written as `Conv2D(groups=C)`, as in ConvNeXt), an input
    channel and its group's filters are one unit and leave together (the
    layer keeps `groups = channels`). With several channels per group, the
    channel at the same position of every group leaves together, and so does
    the filter at the same position of every group, so that every group keeps
    the same width (`groups` unchanged).
    """

    def __init__(self):
        super().__init__("filters")

    def _sizes(self, node):
        groups = int(config_value(node.layer, "groups", 1))
        kernel = node.layer.kernel
        per_in = int(kernel.shape[-2])
        return groups, per_in, int(kernel.shape[-1]) // groups

    def connect(self, node, ctx):
        super().connect(node, ctx)
        if self.check(node):
            return
        groups, per_in, per_out = self._sizes(node)
        source, out = node.inputs[0], node.outputs[0]
        if per_in == 1:
            ctx.tie_indices(
                source,
                np.repeat(np.arange(groups), per_out),
                out,
                np.arange(out.channels),
            )
            return
        for g in range(1, groups):
            ctx.tie_indices(
                source, np.arange(per_in), source, g * per_in + np.arange(per_in)
            )
            ctx.tie_indices(
                out, np.arange(per_out), out, g * per_out + np.arange(per_out)
            )

    def node_matrix(self, node, weights):
        groups, per_in, per_out = self._sizes(node)
        kernel = weights[self.kernel]
        taps = kernel.reshape(-1, per_in, groups * per_out)
        full = np.zeros((taps.shape[0], groups * per_in, groups * per_out), taps.dtype)
        for g in range(groups):
            rows = slice(g * per_in, (g + 1) * per_in)
            cols = slice(g * per_out, (g + 1) * per_out)
            full[:, rows, cols] = taps[:, :, cols]
        return full

    def rebuild(self, change):
        node = change.node
        groups, per_in, per_out = self._sizes(node)
        weights = dict(change.weights)
        kernel = weights[self.kernel]
        kept_in = change.kept(groups * per_in, change.in_removed[0])
        kept_out = change.kept(groups * per_out, change.out_removed[0])
        removed = np.asarray(change.in_removed[0], dtype=int)
        if len(removed) and np.any(change.in_fill[0][removed]):
            taps = self.node_matrix(node, change.weights).sum(axis=0)
            delta = change.in_fill[0][removed] @ taps[removed]
            bias = weights.get("bias", np.zeros(groups * per_out, kernel.dtype))
            weights["bias"] = (bias + delta).astype(kernel.dtype)
            change.config["use_bias"] = True
        if per_in == 1:
            change.config["groups"] = len(kept_in)
        else:
            kernel = kernel[..., kept_in[kept_in < per_in], :]
        weights[self.kernel] = kernel[..., kept_out]
        if "bias" in weights:
            weights["bias"] = weights["bias"][kept_out]
        change.config["filters"] = len(kept_out)
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
        mult = config_value(node.layer, "depth_multiplier")
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


class EinsumDenseHandler(ProducerHandler):
    """EinsumDense: units on the output's last axis, read from the equation.

    The kernel axis of the input's last letter holds the input channels; the
    kernel axis of the output's last letter holds the units. Other kernel
    axes are summed over (contracted with other input axes) or are further
    output axes (attention heads): a unit spans them all. A constant input
    channel folds into the bias when every other kernel axis is contracted
    and the bias is on the unit axis only.
    """

    def __init__(self):
        super().__init__("output_shape")

    def _axes(self, layer):
        """`(in_axis, unit_axis, other_output_axes)` or a reason string."""
        match = re.match(
            r"^\s*([\w.]+)\s*,\s*(\w+)\s*->\s*([\w.]+)\s*$", layer.equation
        )
        if match is None:
            return f"its equation '{layer.equation}' is not 'input,kernel->output'"
        inputs, kernel, outputs = match.groups()
        if not inputs[-1].isalpha() or not outputs[-1].isalpha():
            return f"its equation '{layer.equation}' elides the last axis"
        channel, unit = inputs[-1], outputs[-1]
        if channel in outputs or unit in inputs:
            return f"its equation '{layer.equation}' does not map channels to units"
        if channel not in kernel or unit not in kernel:
            return f"its equation '{layer.equation}' does not map channels to units"
        others = [i for i, c in enumerate(kernel) if c in outputs and c != unit]
        return kernel.index(channel), kernel.index(unit), others

    def check(self, node):
        reason = super().check(node)
        if reason:
            return reason
        axes = self._axes(node.layer)
        return axes if isinstance(axes, str) else None

    def node_matrix(self, node, weights):
        return self._matrix(node.layer, weights[self.kernel])

    def _matrix(self, layer, kernel):
        in_axis, unit_axis, _ = self._axes(layer)
        kernel = np.moveaxis(kernel, (in_axis, unit_axis), (-2, -1))
        return kernel.reshape(-1, *kernel.shape[-2:])

    def _fold_ok(self, layer):
        _, unit_axis, others = self._axes(layer)
        bias_axes = config_value(layer, "bias_axes")
        unit = layer.equation.split("->")[-1].strip()[-1]
        return not others and bias_axes == unit

    def fold_exact(self, node):
        return self._fold_ok(node.layer)

    def uses(self, node, weights):
        taps = self._matrix(node.layer, weights[self.kernel])
        return [(0, np.any(taps != 0, axis=0), self.fold_exact(node))]

    def rebuild(self, change):
        layer = change.layer
        in_axis, unit_axis, _ = self._axes(layer)
        weights = dict(change.weights)
        kernel = weights["kernel"]
        kept_in = change.kept(kernel.shape[in_axis], change.in_removed[0])
        kept_out = change.kept(kernel.shape[unit_axis], change.out_removed[0])
        removed = np.asarray(change.in_removed[0], dtype=int)
        if len(removed) and self._fold_ok(layer) and "bias" in weights:
            fill = change.in_fill[0][removed]
            if np.any(fill):
                taps = self._matrix(layer, kernel).sum(axis=0)
                weights["bias"] = (weights["bias"] + fill @ taps[removed]).astype(
                    kernel.dtype
                )
        kernel = np.take(kernel, kept_in, axis=in_axis)
        weights["kernel"] = np.take(kernel, kept_out, axis=unit_axis)
        unit = layer.equation.split("->")[-1].strip()[-1]
        if "bias" in weights and unit in (change.config.get("bias_axes") or ""):
            weights["bias"] = np.take(weights["bias"], kept_out, axis=-1)
        shape = change.config["output_shape"]
        if isinstance(shape, (list, tuple)):
            change.config["output_shape"] = list(shape[:-1]) + [len(kept_out)]
        else:
            change.config["output_shape"] = len(kept_out)
        return change.config, weights


def _register():
    from kprune.surgery.handlers.base import register_handler

    layers = keras.layers
    register_handler(layers.Dense, ProducerHandler("units", in_axis=0, out_axis=-1))
    for name in ("Conv1D", "Conv2D", "Conv3D"):
        register_handler(getattr(layers, name), ConvHandler())
    for name in ("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"):
        register_handler(getattr(layers, name), ConvTransposeHandler())
    for name in ("SeparableConv1D", "SeparableConv2D"):
        register_handler(getattr(layers, name), SeparableConvHandler())
    for name in ("DepthwiseConv1D", "DepthwiseConv2D"):
        register_handler(getattr(layers, name), DepthwiseConvHandler())
    register_handler(layers.EinsumDense, EinsumDenseHandler())


_register()
