"""Slices of a traced graph, run through Keras' compiled `predict_on_batch`.

Private machinery of `AblationScorer`:

- `Slice`: given tensors in, some nodes, tensors out; with per-row 0/1
  masks over removal *slots*, each masked tensor gets its removed channels
  replaced by their fill value before any node reads it (the generic path:
  one full re-run of the suffix per ablation row).
- `DeltaSlice`: the fast path for rows "baseline removals + one more slot".
  Layers that cannot mix the removed channel into the others (BatchNorm,
  activations, pooling, Flatten, Add ...) run once per data chunk; the first
  Dense / Conv layers that read a removed channel are linear before their
  activation, so their output without slot `s` is

      act(pre_base - W_s * (x_s - fill_s))

  where `pre_base` is computed once per data chunk and the correction only
  involves the channels of slot `s` (a depthwise convolution or a small
  matmul); only the layers after them run once per ablation row.
"""

import keras
import numpy as np

from kprune.surgery.handlers import (
    ChannelwiseHandler,
    ConcatenateHandler,
    DepthwiseConvHandler,
    FlattenHandler,
    GroupNormHandler,
    MergeHandler,
    MixingHandler,
    ReshapeHandler,
    SoftmaxHandler,
    get_handler,
)

_SEPARABLE = (
    ChannelwiseHandler,
    MergeHandler,
    ConcatenateHandler,
    FlattenHandler,
    ReshapeHandler,
    DepthwiseConvHandler,
)
_MIXING = (MixingHandler, GroupNormHandler, SoftmaxHandler)


def apply_mask(value, rows, slots, fill):
    """`value` with removed channels replaced by `fill`.

    `removed = rows[:, slots]` (broadcast over all but the channel axis);
    result `= value * (1 - removed) + removed * fill`.

    Args:
        value: `(N, ..., C)` tensor.
        rows: `(N or 1, S + 1)` 0/1 removal mask per row and slot.
        slots: `(C,)` slot of each channel (`S` = no slot).
        fill: `(C,)` value of removed channels, or None for zeros.
    """
    removed = removed_channels(rows, slots, value)
    result = value * (1.0 - removed)
    if fill is not None:
        result = result + removed * keras.ops.cast(fill, value.dtype)
    return result


def removed_channels(rows, slots, value):
    """The 0/1 removal mask of `value`'s channels, shaped to broadcast."""
    removed = keras.ops.take(rows, slots, axis=1)
    shape = (-1,) + (1,) * (len(value.shape) - 2) + (len(slots),)
    return keras.ops.cast(keras.ops.reshape(removed, shape), value.dtype)


def _last_axis_only(node):
    axis = node.layer.get_config().get("axis", -1)
    if isinstance(axis, (list, tuple)):
        axis = axis[0] if len(axis) == 1 else None
    rank = len(node.inputs[0].shape)
    return axis is not None and axis % rank == rank - 1


def mixing_call(node, value, removed):
    """A channel-mixing layer computed over the kept channels only.

    What the surgery's smaller layer computes: LayerNormalization's mean and
    variance over kept channels; Softmax normalized over kept channels.
    Returns None for other layers (they are called as they are).
    """
    layer = node.layer
    if len(node.inputs) != 1:
        return None
    if type(layer) is keras.layers.LayerNormalization and _last_axis_only(node):
        keep = 1.0 - removed
        count = keras.ops.maximum(keras.ops.sum(keep, axis=-1, keepdims=True), 1.0)
        x = value * keep
        mean = keras.ops.sum(x, axis=-1, keepdims=True) / count
        var = keras.ops.sum(
            keep * keras.ops.square(value - mean), axis=-1, keepdims=True
        )
        inv = keras.ops.rsqrt(var / count + layer.epsilon)
        if layer.gamma is not None:
            inv = inv * keras.ops.cast(layer.gamma, value.dtype)
        if layer.rms_scaling:
            return value * inv
        shift = -mean * inv
        if layer.beta is not None:
            shift = shift + keras.ops.cast(layer.beta, value.dtype)
        return value * inv + shift
    if type(layer) is keras.layers.Softmax and _last_axis_only(node):
        return keras.ops.softmax(value - removed * 1e9, axis=-1)
    return None


class Program(keras.Model):
    """Runs a slice through `predict_on_batch` (compiled by Keras).

    The slice's layers are the user's own layers, called on backend tensors
    inside the compiled function: nothing is added to the user's model.
    """

    def __init__(self, graph_slice):
        super().__init__(name="kprune_slice")
        self._kprune_slice = graph_slice  # a plain object: not tracked
        self.built = True

    def call(self, inputs, training=False):
        return self._kprune_slice.run(inputs)


class Slice:
    """Given tensors in, some nodes, tensors out; optional per-row masks.

    With `masks` (tensor id -> (slots, fill)), the last call input is a
    `(rows, S + 1)` array of 0/1 (1 = slot removed; column S always 0).
    """

    def __init__(self, inputs, nodes, outputs, masks=None):
        self.inputs = inputs
        self.nodes = nodes
        self.outputs = outputs
        self.masks = masks or {}

    def run(self, values):
        values = list(values) if isinstance(values, (list, tuple)) else [values]
        rows = values.pop() if self.masks else None
        known = {id(t): v for t, v in zip(self.inputs, values)}
        masked = {}

        def read(tensor):
            key = id(tensor)
            if key not in self.masks:
                return known[key]
            if key not in masked:
                masked[key] = apply_mask(known[key], rows, *self.masks[key])
            return masked[key]

        for node in self.nodes:
            outs = _call(node, read, self.masks, rows)
            for tensor, value in zip(node.outputs, outs):
                known[id(tensor)] = value
        return [read(t) for t in self.outputs]


def _linear_kind(node):
    """'dense' / 'conv' when the layer is a plain Dense / Conv1D / Conv2D."""
    layer = node.layer
    if len(node.inputs) != 1 or len(node.outputs) != 1:
        return None
    if getattr(getattr(layer, "dtype_policy", None), "quantization_mode", None):
        return None
    config = layer.get_config()
    if config.get("lora_rank"):
        return None
    names = {w.name for w in layer.weights}
    if "kernel" not in names:
        return None
    if type(layer) is keras.layers.Dense:
        return "dense" if len(node.inputs[0].shape) == 2 else None
    if type(layer) in (keras.layers.Conv1D, keras.layers.Conv2D):
        if config.get("groups", 1) != 1 or config.get("padding") not in (
            "valid",
            "same",
        ):
            return None
        if config.get("data_format", "channels_last") != "channels_last":
            return None
        strides = np.atleast_1d(config.get("strides", 1))
        dilation = np.atleast_1d(config.get("dilation_rate", 1))
        if np.any(strides > 1) and np.any(dilation > 1):
            return None
        return "conv"
    return None


class _Linear:
    """A Dense / Conv consumer split into `pre_activation` and `delta`."""

    def __init__(self, node, kind, slots, fill, num_slots):
        self.node = node
        self.kind = kind
        layer = node.layer
        # The layer's own variables are read inside the compiled function
        # (no copy of the kernel is baked into the graph).
        self.layer = layer
        self.activation = layer.activation
        config = layer.get_config()
        self.conv_args = {}
        if kind == "conv":
            self.conv_args = {
                "strides": config["strides"],
                "padding": config["padding"],
                "data_format": "channels_last",
                "dilation_rate": config["dilation_rate"],
            }
        channels = len(slots)
        # slot -> its channels, padded with `channels` (a zero channel).
        members = [np.flatnonzero(slots == s) for s in range(num_slots)]
        width = max([len(m) for m in members] + [1])
        table = np.full((num_slots + 1, width), channels, dtype="int32")
        for s, m in enumerate(members):
            table[s, : len(m)] = m
        self.table = table
        self.width = width
        self.fill = None if fill is None else fill.astype("float32")

    def pre_activation(self, x):
        kernel = keras.ops.cast(self.layer.kernel, x.dtype)
        if self.kind == "dense":
            out = keras.ops.matmul(x, kernel)
        else:
            out = keras.ops.conv(x, kernel, **self.conv_args)
        if self.layer.bias is not None:
            out = out + keras.ops.cast(self.layer.bias, x.dtype)
        return out

    def delta(self, x, extra):
        """`(A * n, ..., out)`: the part of the output carried by slot extra[a]."""
        if self.fill is not None:
            x = x - keras.ops.cast(self.fill, x.dtype)
        idx = keras.ops.reshape(keras.ops.take(self.table, extra, axis=0), (-1,))
        pad = keras.ops.zeros_like(x[..., :1])
        x_sel = keras.ops.take(keras.ops.concatenate([x, pad], axis=-1), idx, axis=-1)
        kernel = keras.ops.cast(self.layer.kernel, x.dtype)
        axis = len(kernel.shape) - 2
        zero = keras.ops.zeros_like(keras.ops.take(kernel, [0], axis=axis))
        kernel_pad = keras.ops.concatenate([kernel, zero], axis=axis)
        k_sel = keras.ops.take(kernel_pad, idx, axis=axis)
        units = kernel.shape[-1]
        if self.kind == "dense":
            n = keras.ops.shape(x)[0]
            x_sel = keras.ops.reshape(x_sel, (n, -1, self.width))
            k_sel = keras.ops.reshape(k_sel, (-1, self.width, units))
            out = keras.ops.einsum("nap,apo->ano", x_sel, k_sel)  # (A, n, units)
            return keras.ops.reshape(out, (-1, units))
        out = keras.ops.depthwise_conv(x_sel, k_sel, **self.conv_args)
        shape = keras.ops.shape(out)
        spatial = tuple(shape[1:-1])
        out = keras.ops.reshape(out, (shape[0],) + spatial + (-1, self.width, units))
        out = keras.ops.sum(out, axis=-2)  # (n, *spatial, A, units)
        rank = len(out.shape)
        out = keras.ops.transpose(
            out, (rank - 2,) + tuple(range(rank - 2)) + (rank - 1,)
        )
        return keras.ops.reshape(out, (-1,) + spatial + (units,))


def _tile(value, ones):
    """(n, ...) -> (A * n, ...), block `a` = value; `ones` is (A,)."""
    rank = len(value.shape)
    ones = keras.ops.reshape(keras.ops.cast(ones, value.dtype), (-1,) + (1,) * rank)
    tiled = keras.ops.expand_dims(value, 0) * ones
    return keras.ops.reshape(tiled, (-1,) + tuple(keras.ops.shape(value)[1:]))


class DeltaSlice:
    """The suffix for rows "base removals + one extra slot", fast.

    Call inputs: the frontier tensors (n rows), `base` `(1, S + 1)` 0/1 and
    `extra` `(A,)` int32 (the extra slot of each row; `S` = none). Output:
    `(A * n, ...)`, block `a` = the model output with base + extra[a] removed.

    `coupled`: the masks cover every tensor a removed channel flows into
    (coupled groups), so channel-separable layers may run unmasked once per
    chunk. False (a single masked tensor): every layer reading it varies.
    """

    def __init__(self, inputs, nodes, output, masks, num_slots, coupled=True):
        self.inputs = inputs
        self.output = output
        self.masks = masks
        self.num_slots = num_slots
        self.stage_a, self.linear, self.stage_b = [], [], []
        varying = set()
        for node in nodes:
            reads_masked = any(id(t) in masks for t in node.inputs)
            if any(id(t) in varying for t in node.inputs):
                self.stage_b.append(node)
            elif not reads_masked or (coupled and _separable(node)):
                self.stage_a.append(node)
                continue
            else:
                kind = _linear_kind(node)
                if kind is None:
                    self.stage_b.append(node)
                else:
                    slots, fill = masks[id(node.inputs[0])]
                    self.linear.append(_Linear(node, kind, slots, fill, num_slots))
            varying.update(id(t) for t in node.outputs)
        self.varying = varying

    @property
    def accelerated(self):
        """True when some layer of the suffix runs once per data chunk."""
        return bool(self.linear)

    def run(self, values):
        values = list(values)
        extra = values.pop()
        base = values.pop()
        known = {id(t): v for t, v in zip(self.inputs, values)}
        for node in self.stage_a:
            outs = keras.tree.flatten(
                node.call([known[id(t)] for t in node.inputs], training=False)
            )
            for tensor, value in zip(node.outputs, outs):
                known[id(tensor)] = value
        ones = keras.ops.ones_like(extra)
        size = self.num_slots + 1
        keep = np.ones(size, dtype="float32")
        keep[-1] = 0.0
        row_masks = (base + keras.ops.one_hot(extra, size)) * keep  # (A, S+1)
        n = keras.ops.shape(values[0])[0]
        rows = keras.ops.reshape(
            keras.ops.expand_dims(row_masks, 1)
            * keras.ops.ones((1, n, 1), dtype=row_masks.dtype),
            (-1, size),
        )
        per_row = {}
        for linear in self.linear:
            x = known[id(linear.node.inputs[0])]
            slots, fill = self.masks[id(linear.node.inputs[0])]
            pre = linear.pre_activation(apply_mask(x, base, slots, fill))
            pre = _tile(pre, ones) - linear.delta(x, extra)
            per_row[id(linear.node.outputs[0])] = linear.activation(pre)
        masked = {}

        def read(tensor):
            key = id(tensor)
            if key not in per_row:
                per_row[key] = _tile(known[key], ones)
            if key not in self.masks:
                return per_row[key]
            if key not in masked:
                masked[key] = apply_mask(per_row[key], rows, *self.masks[key])
            return masked[key]

        for node in self.stage_b:
            outs = _call(node, read, self.masks, rows)
            for tensor, value in zip(node.outputs, outs):
                per_row[id(tensor)] = value
        return [read(self.output)]


def _call(node, read, masks, rows):
    """Call a node on masked inputs (mixing layers over kept channels)."""
    values = [read(t) for t in node.inputs]
    if len(values) == 1 and id(node.inputs[0]) in masks:
        removed = removed_channels(rows, masks[id(node.inputs[0])][0], values[0])
        out = mixing_call(node, values[0], removed)
        if out is not None:
            return [out]
    return keras.tree.flatten(node.call(values, training=False))


def _separable(node):
    """True when channel `c` of every output depends on channel `c` only."""
    activation = getattr(node.layer, "activation", None)
    if getattr(activation, "__name__", "") in ("softmax", "log_softmax"):
        return False
    handler = get_handler(node.layer)
    if isinstance(handler, _MIXING):
        return False
    if not isinstance(handler, _SEPARABLE):
        return False
    if isinstance(handler, ChannelwiseHandler):
        return handler.check(node) is None
    return True
