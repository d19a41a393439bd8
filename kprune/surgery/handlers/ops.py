"""`keras.ops` calls: how the ops inside traced layers move channels.

A traced composite layer (see `kprune.surgery.tracing`) is a graph of its
sublayers and of `keras.ops` calls. Channels (the last axis) pass through an
op unchanged when the op leaves the last axis alone: a cast, a reduction or
a transpose over other axes, an `expand_dims` before the last axis, a
reshape that keeps the last axis. Ops that mix the last axis into a
statistic (a mean over it, as in RMS normalization; a softmax over it) make
removals through them inexact. Ops that move the last axis elsewhere, or
slice it with constants, pin their channels.

Inside a traced layer nothing here is rebuilt: the layer is rebuilt from its
own class, whose code recomputes every op at the new widths. At model level
(an op called in a Functional model), an op whose recorded arguments fix the
width (a reshape to an explicit size) pins its channels.
"""

import re

import numpy as np

from kprune.surgery.graph import Slot, constant_arguments
from kprune.surgery.handlers.base import LayerHandler, Use


def _rank(node):
    return len(node.inputs[0].shape) if node.inputs else 0


def _axes(axis, rank):
    """A tuple of non-negative axes (None: all axes)."""
    if axis is None:
        return tuple(range(rank))
    if isinstance(axis, int):
        axis = (axis,)
    return tuple(int(a) % rank for a in axis)


class PassThroughOpHandler(LayerHandler):
    """An op whose first output keeps the first input's channels.

    Subclasses say when (`keeps_channels`); other tensor inputs are tied too
    when they have the same channels (e.g. `where(c, x, y)`), else pinned.
    """

    def keeps_channels(self, node):
        """True when channel `c` of the output is channel `c` of input 0."""
        return True

    def connect(self, node, ctx):
        if not node.inputs or not node.outputs:
            return
        source, out = node.inputs[0], node.outputs[0]
        if (
            not source.channels
            or source.channels != out.channels
            or not self.keeps_channels(node)
        ):
            ctx.pin_node(node, "it moves or resizes the channel (last) axis")
            return
        ctx.tie(source, out)
        for tensor in node.inputs[1:]:
            if tensor.channels == out.channels:
                ctx.tie(tensor, out)
            else:
                ctx.pin(tensor, f"it is an extra input of op '{node.path}'")
        for tensor in node.outputs[1:]:
            ctx.pin(tensor, f"it is an extra output of op '{node.path}'")

    def constant_mask(self, node, in_valid, weights):
        if not node.inputs or not self.keeps_channels(node):
            return [np.zeros(t.channels, bool) for t in node.outputs]
        valid = in_valid[0].copy()
        for tensor, mask in zip(node.inputs[1:], in_valid[1:]):
            valid &= mask if tensor.channels == valid.size else bool(mask.all())
        return [valid] + [np.zeros(t.channels, bool) for t in node.outputs[1:]]


class CastOpHandler(PassThroughOpHandler):
    """`ops.cast`, `ops.stop_gradient`, `ops.convert_to_tensor`, ..."""


class ReductionOpHandler(PassThroughOpHandler):
    """`ops.mean / sum / max / min / var / std / prod`.

    Over other axes: channel-wise. Over the last axis: every channel enters
    the statistic, so no removal through it is exact (RMS and layer
    normalization written with ops); the reduced output is not a channel.
    """

    def _over_channels(self, node):
        return _rank(node) - 1 in _axes(getattr(node.layer, "axis", None), _rank(node))

    def keeps_channels(self, node):
        return not self._over_channels(node)

    def connect(self, node, ctx):
        if not self._over_channels(node):
            super().connect(node, ctx)
            return
        ctx.pin_exact(
            node.inputs[0],
            f"op '{node.path}' reduces over the channel axis, so removing a "
            "channel changes the result",
        )

    def constant_mask(self, node, in_valid, weights):
        if not self._over_channels(node):
            return super().constant_mask(node, in_valid, weights)
        return [np.full(t.channels, bool(in_valid[0].all())) for t in node.outputs]


class SoftmaxOpHandler(PassThroughOpHandler):
    """`ops.softmax / log_softmax`: over the last axis it mixes channels."""

    def connect(self, node, ctx):
        super().connect(node, ctx)
        rank = _rank(node)
        if rank - 1 in _axes(getattr(node.layer, "axis", -1), rank):
            ctx.pin_exact(node.inputs[0], f"softmax '{node.path}' mixes channels")

    def constant_mask(self, node, in_valid, weights):
        return [np.full(t.channels, bool(in_valid[0].all())) for t in node.outputs]


class ExpandDimsOpHandler(PassThroughOpHandler):
    """`ops.expand_dims`: channel-wise unless the new axis is the last."""

    def keeps_channels(self, node):
        rank = len(node.outputs[0].shape)
        return all(a != rank - 1 for a in _axes(node.layer.axis, rank))


class SqueezeOpHandler(PassThroughOpHandler):
    """`ops.squeeze`: channel-wise unless it squeezes the last axis."""

    def keeps_channels(self, node):
        if node.layer.axis is None:
            return node.inputs[0].shape[-1] != 1
        return _rank(node) - 1 not in _axes(node.layer.axis, _rank(node))


def transpose_order(layer, rank):
    """The input axis at each output position of a transpose-like op.

    `ops.transpose(x, axes)` (None: reversed), `ops.moveaxis(x, source,
    destination)`, `ops.swapaxes(x, axis1, axis2)`; None for other ops.
    """
    if hasattr(layer, "axes"):
        if layer.axes is None:
            return list(reversed(range(rank)))
        return [int(a) % rank for a in layer.axes]
    if hasattr(layer, "source"):
        source = [int(a) % rank for a in np.atleast_1d(layer.source)]
        destination = [int(a) % rank for a in np.atleast_1d(layer.destination)]
        order = [a for a in range(rank) if a not in source]
        for dst, src in sorted(zip(destination, source)):
            order.insert(dst, src)
        return order
    if hasattr(layer, "axis1"):
        order = list(range(rank))
        a, b = int(layer.axis1) % rank, int(layer.axis2) % rank
        order[a], order[b] = order[b], order[a]
        return order
    return None


class TransposeOpHandler(PassThroughOpHandler):
    """`ops.transpose / moveaxis / swapaxes`: channel-wise when the last axis
    stays last."""

    def keeps_channels(self, node):
        rank = _rank(node)
        order = transpose_order(node.layer, rank)
        return order is not None and order[-1] == rank - 1


class RepeatOpHandler(PassThroughOpHandler):
    """`ops.repeat / tile / broadcast_to` along other axes than the last."""

    def keeps_channels(self, node):
        layer = node.layer
        rank = len(node.outputs[0].shape)
        if hasattr(layer, "repeats") and hasattr(layer, "axis"):
            return layer.axis is not None and int(layer.axis) % rank != rank - 1
        return node.inputs[0].shape[-1] == node.outputs[0].shape[-1]


class ReshapeOpHandler(PassThroughOpHandler):
    """`ops.reshape`: keeping the last axis, or splitting / merging it with
    the axis before (heads x head_dim <-> hidden)."""

    def _mode(self, node):
        source, target = node.inputs[0].shape, node.outputs[0].shape
        if source[-1] is None or target[-1] is None:
            return None
        if source[-1] == target[-1]:
            return "keep"
        if len(target) == len(source) - 1 and source[-2] is not None:
            if source[-2] * source[-1] == target[-1]:
                return "merge"
        if len(target) == len(source) + 1 and target[-2] is not None:
            if target[-2] * target[-1] == source[-1]:
                return "split"
        return None

    def _fixed_width(self, node):
        """At model level, a reshape to an explicit last size cannot follow."""
        shape = getattr(node.layer, "newshape", None)
        return (
            node.parent is None
            and isinstance(shape, (list, tuple))
            and (shape[-1] != -1)
        )

    def connect(self, node, ctx):
        mode = self._mode(node)
        if mode is None or self._fixed_width(node):
            ctx.pin_node(node, "it reshapes the channel axis")
            return
        source, target = node.inputs[0], node.outputs[0]
        if mode == "keep":
            ctx.tie(source, target)
            return
        small, large = (source, target) if mode == "merge" else (target, source)
        repeats = large.channels // small.channels
        ctx.tie_indices(
            small,
            np.tile(np.arange(small.channels), repeats),
            large,
            np.arange(large.channels),
        )

    def constant_mask(self, node, in_valid, weights):
        mode = self._mode(node)
        if mode == "keep":
            return [in_valid[0].copy()]
        if mode == "merge":
            channels = node.inputs[0].channels
            return [np.tile(in_valid[0], node.outputs[0].channels // channels)]
        if mode == "split":
            channels = node.outputs[0].channels
            return [in_valid[0].reshape(-1, channels).all(axis=0)]
        return [np.zeros(node.outputs[0].channels, bool)]


class SplitOpHandler(LayerHandler):
    """`ops.split`: equal sections of the last axis leave together."""

    def connect(self, node, ctx):
        source = node.inputs[0]
        layer = node.layer
        rank = len(source.shape)
        on_channels = int(layer.axis) % rank == rank - 1
        if not on_channels:
            for out in node.outputs:
                ctx.tie(source, out)
            return
        if not isinstance(layer.indices_or_sections, int) or node.parent is None:
            ctx.pin_node(node, "it splits the channel axis at fixed indices")
            return
        start = 0
        for out in node.outputs:
            ctx.tie_indices(
                source, start + np.arange(out.channels), out, np.arange(out.channels)
            )
            ctx.tie(node.outputs[0], out)  # sections stay equal
            start += out.channels

    def constant_mask(self, node, in_valid, weights):
        layer = node.layer
        rank = len(node.inputs[0].shape)
        if int(layer.axis) % rank != rank - 1:
            return [in_valid[0].copy() for _ in node.outputs]
        return list(np.split(in_valid[0], len(node.outputs)))


class StackOpHandler(LayerHandler):
    """`ops.stack` / `ops.concatenate` of tensors.

    Stacked (or concatenated) on another axis than the last, every input's
    channels are the output's. Concatenated on the last axis, channels map
    with offsets (inside traced layers only).
    """

    def _on_channels(self, node):
        rank = len(node.outputs[0].shape)
        return int(getattr(node.layer, "axis", 0)) % rank == rank - 1

    def connect(self, node, ctx):
        out = node.outputs[0]
        if not self._on_channels(node):
            for tensor in node.inputs:
                if tensor.channels == out.channels:
                    ctx.tie(tensor, out)
                else:
                    ctx.pin(tensor, f"it is broadcast by '{node.path}'")
            return
        is_concat = "Concatenate" in type(node.layer).__name__
        if not is_concat or node.parent is None:
            ctx.pin_node(node, "it stacks along the channel axis")
            return
        start = 0
        for tensor in node.inputs:
            ctx.tie_indices(
                tensor,
                np.arange(tensor.channels),
                out,
                start + np.arange(tensor.channels),
            )
            start += tensor.channels

    def constant_mask(self, node, in_valid, weights):
        if self._on_channels(node):
            if "Concatenate" in type(node.layer).__name__:
                return [np.concatenate(in_valid)]
            return [np.zeros(node.outputs[0].channels, bool)]
        valid = np.ones(node.outputs[0].channels, bool)
        for tensor, mask in zip(node.inputs, in_valid):
            valid &= mask if tensor.channels == valid.size else bool(mask.all())
        return [valid]


class GetItemOpHandler(PassThroughOpHandler):
    """`x[...]`: channel-wise when the key leaves the last axis whole."""

    def keeps_channels(self, node):
        if node.arguments is None or len(node.arguments[0]) < 2:
            return False
        key = node.arguments[0][1]
        if isinstance(key, Slot):
            return False
        if not isinstance(key, (tuple, list)):
            key = (key,)
        rank = _rank(node)
        if any(k is Ellipsis for k in key):
            last = key[-1]
        elif len([k for k in key if k is not None]) < rank:
            return True  # the last axis is not indexed
        else:
            last = key[-1]
        return isinstance(last, slice) and last == slice(None)


class TakeOpHandler(PassThroughOpHandler):
    """`ops.take(x, indices, axis)` along another axis than the last."""

    def keeps_channels(self, node):
        axis = getattr(node.layer, "axis", None)
        return axis is not None and int(axis) % _rank(node) != _rank(node) - 1

    def connect(self, node, ctx):
        if not node.inputs or node.arguments is None:
            return super().connect(node, ctx)
        args = node.arguments[0]
        if not args or not isinstance(args[0], Slot):
            ctx.pin_node(node, "it gathers from a constant (an embedding table)")
            return
        source, out = node.inputs[args[0].index], node.outputs[0]
        if not self.keeps_channels(node) or source.channels != out.channels:
            ctx.pin_node(node, "it gathers along the channel axis")
            return
        ctx.tie(source, out)
        for tensor in node.inputs:
            if tensor is not source:
                ctx.pin(tensor, f"it holds the indices of '{node.path}'")


class EinsumOpHandler(LayerHandler):
    """`ops.einsum` of tensors (attention scores, weighted sums).

    The letter of each operand's last axis decides: when it is also the
    output's last letter, the operand's channels are the output's (tied);
    when it is summed over and is another operand's last letter too (a dot
    product over channels, `q . k`), those operands' channels are tied
    together and every one of them is needed. Anything else pins.
    """

    def _spec(self, node):
        match = re.match(r"^\s*([\w,.\s]+)->\s*([\w.]*)\s*$", node.layer.subscripts)
        if match is None:
            return None
        inputs = [s.strip() for s in match.group(1).split(",")]
        return inputs, match.group(2).strip()

    def connect(self, node, ctx):
        spec = self._spec(node)
        if spec is None or len(spec[0]) != len(node.inputs) or constant_arguments(node):
            ctx.pin_node(node, "its equation is not understood")
            return
        inputs, output = spec
        out = node.outputs[0]
        contracted = {}
        for tensor, letters in zip(node.inputs, inputs):
            last = letters[-1] if letters and letters[-1].isalpha() else None
            if last is None:
                ctx.pin(tensor, f"op '{node.path}' elides its last axis")
            elif output and last == output[-1] and tensor.channels == out.channels:
                ctx.tie(tensor, out)
            elif last not in output:
                contracted.setdefault(last, []).append(tensor)
            else:
                ctx.pin(tensor, f"op '{node.path}' moves its channel axis")
        for tensors in contracted.values():
            if len(tensors) < 2 or any(
                t.channels != tensors[0].channels for t in tensors
            ):
                for tensor in tensors:
                    ctx.pin(tensor, f"op '{node.path}' sums over its channels")
                continue
            for tensor in tensors[1:]:
                ctx.tie(tensors[0], tensor)
            if not out.channels:
                # The summed channels feed an output of unknown width: they
                # are needed (unless zero), through a pinned one-channel sink.
                ctx.pin(ctx.internal(node, "sink", 1), "it stands for the output")
        if output and not any(
            letters and letters[-1] == output[-1] for letters in inputs
        ):
            ctx.pin(out, f"op '{node.path}' makes new channels")

    def uses(self, node, weights):
        spec = self._spec(node)
        if spec is None or len(spec[0]) != len(node.inputs):
            return []
        inputs, output = spec
        target = node.outputs[0]
        if not target.channels:
            target = node.internal.get("sink")
        if target is None:
            return []
        uses = []
        for position, letters in enumerate(inputs):
            tensor = node.inputs[position]
            if letters and letters[-1] not in output and tensor.channels:
                need = np.ones((tensor.channels, target.channels), bool)
                uses.append(Use(position, need, False, target))
        return uses


def _register():
    from keras.src.ops import core, math, nn, numpy

    from kprune.surgery.handlers.base import register_handler
    from kprune.surgery.handlers.merging import ElementwiseOpHandler

    def register(module, names, handler):
        for name in names:
            op_class = getattr(module, name, None)
            if isinstance(op_class, type):
                register_handler(op_class, handler)

    register(
        core,
        ("Cast", "StopGradient", "ConvertToTensor", "SaturateCast"),
        CastOpHandler(),
    )
    register(numpy, ("Copy",), CastOpHandler())
    elementwise = ElementwiseOpHandler()
    register(math, ("Rsqrt", "Erf", "Erfinv"), elementwise)
    register(
        numpy,
        (
            "Reciprocal",
            "Floor",
            "Ceil",
            "Round",
            "Log1p",
            "Expm1",
            "Exp2",
            "Sinh",
            "Cosh",
            "Arctan",
            "Tan",
            "Arcsin",
            "Arccos",
            "Arctanh",
            "Log2",
            "Log10",
            "Where",
        ),
        elementwise,
    )
    register(
        nn,
        ("SparsePlus", "Squareplus", "Celu", "SoftShrink", "HardTanh", "LogSigmoid"),
        elementwise,
    )
    reduction = ReductionOpHandler()
    register(
        numpy,
        ("Mean", "Sum", "Max", "Min", "Var", "Std", "Prod", "Amax", "Amin"),
        reduction,
    )
    register(nn, ("Softmax", "LogSoftmax"), SoftmaxOpHandler())
    register(numpy, ("ExpandDims",), ExpandDimsOpHandler())
    register(numpy, ("Squeeze",), SqueezeOpHandler())
    register(numpy, ("Transpose", "Moveaxis", "Swapaxes"), TransposeOpHandler())
    register(numpy, ("Repeat", "Tile", "BroadcastTo"), RepeatOpHandler())
    register(numpy, ("Reshape",), ReshapeOpHandler())
    register(numpy, ("Split",), SplitOpHandler())
    register(numpy, ("Stack", "Concatenate"), StackOpHandler())
    register(numpy, ("GetItem",), GetItemOpHandler())
    register(numpy, ("Take",), TakeOpHandler())
    register(numpy, ("Einsum",), EinsumOpHandler())


_register()
