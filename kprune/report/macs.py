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
    - Everything else 0: Embedding (a lookup), BatchNormalization (folded
      into the preceding convolution by the TFLite converter), activations,
      pooling, element-wise merges, normalization, attention score products
      inside MultiHeadAttention. Bias additions are not counted.

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
