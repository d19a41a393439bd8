"""`keras.ops` calls in the model itself that slice, split or move channels.

Inside a traced layer, ops are never rebuilt (the layer is rebuilt from its
class; see `ops`). In the model itself (a Functional model written with
`x[:, :8]`, `ops.split`, `ops.transpose` ...), each op call is replayed on
the smaller tensors when the model is rebuilt, so:

- `x[..., a:b]` (a slice of the channel axis, step 1) selects channels
  `a .. b-1`: those are the output's channels; when channels before or
  inside the slice leave, the call is replayed with the shifted slice.
  `x[..., i]` reads channel `i` alone: it stays, and the index shifts.
  Other keys on the channel axis (steps, index tensors) pin it.
- `ops.split(x, n, axis)` on the channel axis: the channel at the same
  position of every section leaves together (sections stay equal);
  `ops.split(x, [i, j], axis)` maps sections with offsets and is replayed
  with the shifted indices.
- `ops.concatenate` on the channel axis maps inputs with offsets.
- `ops.transpose / moveaxis / swapaxes` move the channel axis along.
- `ops.unstack` on the channel axis makes one tensor per channel, which no
  removal can follow: its input is pinned with that reason. On another
  axis every output keeps the channels.
"""

import keras
import numpy as np

from kprune.surgery.errors import SurgeryError
from kprune.surgery.graph import Slot
from kprune.surgery.handlers.base import LayerHandler
from kprune.surgery.handlers.ops import (
    GetItemOpHandler,
    SplitOpHandler,
    StackOpHandler,
    TransposeOpHandler,
    transpose_order,
)


def _channel_axis(tensor):
    rank = len(tensor.shape)
    return rank - 1 if tensor.last else tensor.axis


def _is_index(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _traced_refusal(node, ctx):
    """Inside a traced layer: pin when channels are not last."""
    if any(t.channels and not t.last for t in node.inputs + node.outputs):
        ctx.pin_node(node, "its channels are not on the last axis")
        return True
    return False


def _kept_before(removed, index):
    return int(index - np.count_nonzero(np.asarray(removed) < index))


# ------------------------------------------------------------------ GetItem
def getitem_layout(node):
    """How `x[key]` treats the channel axis of `x`.

    Returns:
        `(position, entry, out_axis)`: the position in the key of the entry
        indexing the channel axis (None when no entry does), that entry
        (`slice(None)` when none), and the output's channel axis (None when
        the entry drops the axis); or a reason string.
    """
    if node.arguments is None or len(node.arguments[0]) < 2:
        return "its key could not be read"
    source = node.inputs[0]
    key = node.arguments[0][1]
    single = not isinstance(key, tuple)
    entries = (key,) if single else key
    if any(isinstance(e, Slot) for e in keras.tree.flatten(entries)):
        return "it indexes with a tensor"
    if any(isinstance(e, (list, np.ndarray)) for e in entries):
        return "it indexes with a list"
    rank = len(source.shape)
    axis = _channel_axis(source)
    consuming = [e for e in entries if e is not None and e is not Ellipsis]
    if sum(e is Ellipsis for e in entries) > 1 or len(consuming) > rank:
        return "its key could not be read"
    in_axis = out_axis = 0
    for position, entry in enumerate(entries):
        if entry is None:
            out_axis += 1
        elif entry is Ellipsis:
            span = rank - len(consuming)
            if in_axis <= axis < in_axis + span:
                return None, slice(None), out_axis + axis - in_axis
            in_axis += span
            out_axis += span
        elif in_axis == axis:
            return position, entry, (None if _is_index(entry) else out_axis)
        else:
            in_axis += 1
            out_axis += 0 if _is_index(entry) else 1
    return None, slice(None), out_axis + axis - in_axis


class ModelGetItemHandler(GetItemOpHandler):
    """`x[key]`: slices and indices of the channel axis (see module doc)."""

    channel_axes_aware = True

    def _layout(self, node):
        if node.parent is not None or not node.inputs or not node.inputs[0].channels:
            return None
        return getitem_layout(node)

    def channel_axes(self, node):
        layout = self._layout(node)
        if layout is None or isinstance(layout, str) or layout[2] is None:
            return [-1] * len(node.outputs)
        return [layout[2]]

    def connect(self, node, ctx):
        layout = self._layout(node)
        if layout is None:
            if not _traced_refusal(node, ctx):
                super().connect(node, ctx)
            return
        if isinstance(layout, str):
            ctx.pin_node(node, layout)
            return
        _, entry, _ = layout
        source, out = node.inputs[0], node.outputs[0]
        if _is_index(entry):
            index = int(entry) % source.channels
            alone = ctx.internal(node, "index", 1)
            ctx.tie_indices(source, [index], alone, [0])
            ctx.pin(alone, f"op '{node.path}' reads channel {index} alone")
            return
        selected = self._selected(source, entry)
        if selected is None:
            ctx.pin_node(node, f"it slices the channel axis with a step ({entry})")
            return
        if len(selected) != out.channels or not len(selected):
            ctx.pin_node(node, "its output channels could not be matched")
            return
        ctx.tie_indices(source, selected, out, np.arange(out.channels))

    def _selected(self, source, entry):
        if not isinstance(entry, slice) or entry.step not in (None, 1):
            return None
        start, stop, _ = entry.indices(source.channels)
        return np.arange(start, max(start, stop))

    def constant_mask(self, node, in_valid, weights):
        layout = self._layout(node)
        if layout is None:
            return super().constant_mask(node, in_valid, weights)
        out = node.outputs[0]
        if isinstance(layout, str) or _is_index(layout[1]):
            return [np.zeros(out.channels, bool)]
        selected = self._selected(node.inputs[0], layout[1])
        if selected is None or len(selected) != out.channels:
            return [np.zeros(out.channels, bool)]
        return [in_valid[0][selected]]

    def rebuild_op(self, change):
        node = change.node
        layout = self._layout(node)
        if layout is None or isinstance(layout, str):
            return None
        position, entry, _ = layout
        if position is None:
            return None  # the key does not index the channel axis
        removed = np.asarray(change.in_removed[0], dtype=int)
        source = node.inputs[0]
        if _is_index(entry):
            new_entry = _kept_before(removed, int(entry) % source.channels)
        else:
            selected = self._selected(source, entry)
            start = _kept_before(removed, selected[0]) if len(selected) else 0
            width = len(np.setdiff1d(selected, removed))
            if not width:
                raise SurgeryError(
                    f"Removing these units would leave op '{node.path}' "
                    f"({entry}) with no channels at all. Keep at least one."
                )
            new_entry = slice(start, start + width)
        key = node.arguments[0][1]
        if isinstance(key, tuple):
            key = key[:position] + (new_entry,) + key[position + 1 :]
        else:
            key = new_entry

        def getitem(x, *args, **kwargs):
            return x[key]

        return getitem


# -------------------------------------------------------------------- Split
class ModelSplitHandler(SplitOpHandler):
    """`ops.split` of the channel axis in the model itself."""

    channel_axes_aware = True

    def _on_channels(self, node):
        source = node.inputs[0]
        rank = len(source.shape)
        return int(node.layer.axis) % rank == _channel_axis(source)

    def channel_axes(self, node):
        if node.parent is not None or not node.inputs:
            return [-1] * len(node.outputs)
        return [node.inputs[0].axis] * len(node.outputs)

    def connect(self, node, ctx):
        if node.parent is not None:
            if not _traced_refusal(node, ctx):
                super().connect(node, ctx)
            return
        source = node.inputs[0]
        if not self._on_channels(node):
            for out in node.outputs:
                ctx.tie(source, out)
            return
        start = 0
        for out in node.outputs:
            ctx.tie_indices(
                source, start + np.arange(out.channels), out, np.arange(out.channels)
            )
            if isinstance(node.layer.indices_or_sections, int):
                ctx.tie(node.outputs[0], out)  # sections stay equal
            start += out.channels

    def constant_mask(self, node, in_valid, weights):
        if node.parent is not None or not self._on_channels(node):
            return super().constant_mask(node, in_valid, weights)
        bounds = np.cumsum([t.channels for t in node.outputs])[:-1]
        return list(np.split(in_valid[0], bounds))

    def rebuild_op(self, change):
        node = change.node
        indices = node.layer.indices_or_sections
        if isinstance(indices, int) or not self._on_channels(node):
            return None
        removed = np.asarray(change.in_removed[0], dtype=int)
        new = [_kept_before(removed, int(i)) for i in indices]
        widths = np.diff([0] + new + [node.inputs[0].channels - len(removed)])
        if np.any(widths <= 0):
            raise SurgeryError(
                f"Removing these units would leave a section of op '{node.path}' "
                f"(split at {list(indices)}) with no channels. Keep at least one "
                "channel of each section."
            )
        axis = node.layer.axis

        def split(x, *args, **kwargs):
            return keras.ops.split(x, new, axis=axis)

        return split


# -------------------------------------------------------- Concatenate, Stack
class ModelStackHandler(StackOpHandler):
    """`ops.concatenate` on the channel axis in the model itself: offsets."""

    channel_axes_aware = True

    def channel_axes(self, node):
        if node.parent is not None or not node.inputs:
            return [-1] * len(node.outputs)
        if len(node.inputs[0].shape) != len(node.outputs[0].shape):
            return [-1]  # a stack: a new axis
        return [node.inputs[0].axis]

    def _model_concat(self, node):
        out = node.outputs[0]
        return (
            node.parent is None
            and "Concatenate" in type(node.layer).__name__
            and all(t.axis == out.axis for t in node.inputs)
            and int(node.layer.axis) % len(out.shape) == _channel_axis(out)
        )

    def connect(self, node, ctx):
        if self._model_concat(node):
            start = 0
            out = node.outputs[0]
            for tensor in node.inputs:
                ctx.tie_indices(
                    tensor,
                    np.arange(tensor.channels),
                    out,
                    start + np.arange(tensor.channels),
                )
                start += tensor.channels
            return
        if not _traced_refusal(node, ctx):
            super().connect(node, ctx)

    def constant_mask(self, node, in_valid, weights):
        if self._model_concat(node):
            return [np.concatenate(in_valid)]
        return super().constant_mask(node, in_valid, weights)


# ---------------------------------------------------------------- Transpose
def _moved_axis(layer, rank, axis):
    """Where a transpose / moveaxis / swapaxes op puts input axis `axis`."""
    order = transpose_order(layer, rank)
    if order is None:
        return None
    return order.index(axis) if axis in order else None


class ModelTransposeHandler(TransposeOpHandler):
    """`ops.transpose / moveaxis / swapaxes` in the model itself: the
    channels go where their axis goes."""

    channel_axes_aware = True

    def _destination(self, node):
        if node.parent is not None or not node.inputs:
            return None
        source = node.inputs[0]
        if not source.channels:
            return None
        return _moved_axis(node.layer, len(source.shape), _channel_axis(source))

    def channel_axes(self, node):
        destination = self._destination(node)
        return [-1 if destination is None else destination]

    def connect(self, node, ctx):
        if self._destination(node) is not None:
            ctx.tie(node.inputs[0], node.outputs[0])
            return
        if not _traced_refusal(node, ctx):
            super().connect(node, ctx)

    def constant_mask(self, node, in_valid, weights):
        if self._destination(node) is not None:
            return [in_valid[0].copy()]
        return super().constant_mask(node, in_valid, weights)


# ------------------------------------------------------------------ Unstack
class UnstackOpHandler(LayerHandler):
    """`ops.unstack`: along another axis every output keeps the channels."""

    channel_axes_aware = True

    def _on_channels(self, node):
        source = node.inputs[0]
        return int(node.layer.axis) % len(source.shape) == _channel_axis(source)

    def channel_axes(self, node):
        source = node.inputs[0]
        if not source.channels or self._on_channels(node) or source.last:
            return [-1] * len(node.outputs)
        axis = source.axis
        if int(node.layer.axis) % len(source.shape) < axis:
            axis -= 1
        return [axis] * len(node.outputs)

    def connect(self, node, ctx):
        source = node.inputs[0]
        if self._on_channels(node):
            ctx.pin(
                source,
                f"op '{node.path}' (unstack) makes one tensor per channel, "
                "which no removal can follow; slice the channels instead "
                "(x[..., i]) to keep them prunable",
            )
            return
        for out in node.outputs:
            if out.channels == source.channels:
                ctx.tie(source, out)
            else:
                ctx.pin_node(node, "its outputs could not be matched")
                return

    def constant_mask(self, node, in_valid, weights):
        if self._on_channels(node):
            return [np.zeros(t.channels, bool) for t in node.outputs]
        return [in_valid[0].copy() for _ in node.outputs]


def _register():
    from keras.src.ops import core, numpy

    from kprune.surgery.handlers.base import register_handler

    register_handler(numpy.GetItem, ModelGetItemHandler())
    register_handler(numpy.Split, ModelSplitHandler())
    stack = ModelStackHandler()
    for name in ("Stack", "Concatenate"):
        register_handler(getattr(numpy, name), stack)
    transpose = ModelTransposeHandler()
    for name in ("Transpose", "Moveaxis", "Swapaxes"):
        register_handler(getattr(numpy, name), transpose)
    register_handler(core.Unstack, UnstackOpHandler())


_register()
