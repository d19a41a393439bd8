"""Multiply-accumulate counts and widths of single layer calls (pure functions)."""

import math
import re

import keras


def _prod(values):
    return int(math.prod(int(v) for v in values))


def _size(shape):
    """Elements per sample: the product of a shape without its batch axis."""
    if shape is None or len(shape) < 2 or any(d is None for d in shape[1:]):
        return None
    return _prod(shape[1:])


def _kernel_size(variable):
    return _prod(variable.shape)


_TRANSPOSE = (
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
)
_DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
_SEPARABLE = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
_CONV = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)


def _einsum_macs(layer, input_shape, output_shape):
    """Product of the sizes of all letters of the equation but the batch's."""
    match = re.match(r"\s*(\w+)\s*,\s*(\w+)\s*->\s*(\w+)\s*$", layer.equation)
    if match is None or input_shape is None:
        return None  # ellipsis equations are not counted
    sizes = {}
    operands = (
        (match.group(1), input_shape),
        (match.group(2), layer.kernel.shape),
        (match.group(3), output_shape or ()),
    )
    for letters, shape in operands:
        for letter, dim in zip(letters, shape):
            if dim is not None:
                sizes.setdefault(letter, int(dim))
    batch = match.group(1)[0]
    letters = set("".join(match.groups())) - {batch}
    if any(letter not in sizes for letter in letters):
        return None
    return _prod(sizes[letter] for letter in letters)


def _positions(shape):
    """Positions of a `(batch, positions..., features)` shape."""
    if shape is None or len(shape) < 2 or any(d is None for d in shape[1:-1]):
        return None
    return _prod(shape[1:-1])


def attention_macs(layer, query_shape, value_shape=None, key_shape=None):
    """Multiply-accumulates of one `MultiHeadAttention` call, per sample.

    With `T_q`, `T_v`, `T_k` the positions of query, value and key (all axes
    between batch and features), `H` heads, `d_k` / `d_v` the key / value
    dims and `T_a` the key positions along the attention axes:

    `MACs = T_q |W_q| + T_k |W_k| + T_v |W_v| + H T_q T_a (d_k + d_v)
    + T_q |W_o|`

    (the four projections, the scores `QK^T` and the weighted sum of the
    values; `|W|` is a kernel's size). Softmax, scaling, dropout and bias
    additions are not counted.

    Args:
        layer: a built `keras.layers.MultiHeadAttention`.
        query_shape: shape of the query, batch axis included.
        value_shape: shape of the value (default: the query's, i.e.
            self-attention).
        key_shape: shape of the key (default: the value's).

    Returns:
        An int, or None when a needed dimension is unknown.

    Example:

    >>> mha = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)
    >>> _ = mha(keras.ops.zeros((1, 5, 8)), keras.ops.zeros((1, 5, 8)))
    >>> attention_macs(mha, (None, 5, 8))  # 4 x 5 x 64 + 2 x 5 x 5 x 8
    1680
    """
    value_shape = query_shape if value_shape is None else value_shape
    key_shape = value_shape if key_shape is None else key_shape
    t_q, t_v, t_k = (_positions(s) for s in (query_shape, value_shape, key_shape))
    if None in (t_q, t_v, t_k) or not layer.built:
        return None
    axes = getattr(layer, "_attention_axes", None)
    if axes is None:
        t_a = t_k
    else:
        t_a = _prod(key_shape[a] for a in axes)
    heads = int(layer.num_heads)
    key_dim = int(layer.key_dim)
    value_dim = int(layer.value_dim or layer.key_dim)
    return (
        t_q * _kernel_size(layer.query_dense.kernel)
        + t_k * _kernel_size(layer.key_dense.kernel)
        + t_v * _kernel_size(layer.value_dense.kernel)
        + heads * t_q * t_a * (key_dim + value_dim)
        + t_q * _kernel_size(layer.output_dense.kernel)
    )


def layer_macs(layer, input_shape, output_shape):
    """Multiply-accumulates of one call of `layer`, per sample.

    Counted from the shapes of the call (batch axis excluded), so strides,
    padding and dilation are already in the output shape and groups in the
    kernel shape:

    - Dense: `prod(output) * in_features` (every output position).
    - EinsumDense: the product of the sizes of all the equation's letters
      but the batch's (output dims times contracted dims).
    - Conv1D/2D/3D: `output positions * kernel.size`, with
      `kernel.size = prod(kernel_size) * in_channels / groups * filters`.
    - Conv transpose: `input positions * kernel.size` (every input value
      is multiplied by the whole kernel).
    - DepthwiseConv1D/2D: `output positions * kernel.size`.
    - SeparableConv1D/2D: `output positions * (depthwise_kernel.size +
      pointwise_kernel.size)`.
    - MultiHeadAttention: `attention_macs` (projections, scores and the
      weighted sum), as self-attention; `kprune.report.summary` passes the
      value and key shapes of each call.
    - Everything else 0: Embedding (a lookup), BatchNormalization (folded
      into the preceding convolution by the TFLite converter), activations,
      pooling, element-wise merges, normalization. Bias additions are not
      counted.

    Args:
        layer: a built Keras layer.
        input_shape: shape of the call's (first) input, batch axis included.
        output_shape: shape of the call's (first) output.

    Returns:
        An int, or None when a needed dimension is unknown.

    Example:

    >>> dense = keras.layers.Dense(10)
    >>> dense.build((None, 784))
    >>> layer_macs(dense, (None, 784), (None, 10))
    7840
    """
    if not layer.built:
        return None
    out_size = _size(output_shape)
    if isinstance(layer, _SEPARABLE):
        if out_size is None:
            return None
        positions = out_size // layer.filters
        return positions * (
            _kernel_size(layer.depthwise_kernel) + _kernel_size(layer.pointwise_kernel)
        )
    if isinstance(layer, _DEPTHWISE):
        if out_size is None:
            return None
        kernel = layer.kernel
        positions = out_size // (int(kernel.shape[-2]) * int(kernel.shape[-1]))
        return positions * _kernel_size(kernel)
    if isinstance(layer, _TRANSPOSE):
        in_size = _size(input_shape)
        if in_size is None:
            return None
        positions = in_size // int(layer.kernel.shape[-1])
        return positions * _kernel_size(layer.kernel)
    if isinstance(layer, _CONV):
        if out_size is None:
            return None
        return (out_size // layer.filters) * _kernel_size(layer.kernel)
    if isinstance(layer, keras.layers.EinsumDense):
        return _einsum_macs(layer, input_shape, output_shape)
    if isinstance(layer, keras.layers.MultiHeadAttention):
        return attention_macs(layer, input_shape)
    if isinstance(layer, keras.layers.Dense):
        if out_size is None:
            return None
        return out_size * int(layer.kernel.shape[0])
    return 0


def layer_width(layer, output_shape=None):
    """The number of units / filters / output channels a layer defines.

    Dense: `units`; Conv, Conv transpose, SeparableConv: `filters`;
    DepthwiseConv: `in_channels * depth_multiplier`; Embedding:
    `output_dim`; EinsumDense: the last output dimension. None for layers
    that only pass their input's width through (activations, BatchNorm,
    pooling, merges ...).

    Args:
        layer: a built Keras layer.
        output_shape: shape of one call's output (used by EinsumDense).

    Returns:
        An int or None.

    Example:

    >>> layer_width(keras.layers.Dense(7))
    7
    """
    if isinstance(layer, _DEPTHWISE):
        if not layer.built:
            return None
        return int(layer.kernel.shape[-2]) * int(layer.kernel.shape[-1])
    if isinstance(layer, _SEPARABLE + _TRANSPOSE + _CONV):
        return int(layer.filters)
    if isinstance(layer, keras.layers.EinsumDense):
        if output_shape is None or output_shape[-1] is None:
            return None
        return int(output_shape[-1])
    if isinstance(layer, keras.layers.Dense):
        return int(layer.units)
    if isinstance(layer, keras.layers.Embedding):
        return int(layer.output_dim)
    return None
