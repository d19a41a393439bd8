"""Checks of what the rebuilder is given: the model, and unit indices.

A pruning request names units by index. Coercing what is not an integer
(`1.5`, `True`, `"1"`) would silently remove a unit nobody asked for, so
`unit_indices` accepts Python and NumPy integers only and says which layer
and which value is wrong otherwise. `check_model` tells a user who passed a
file name or `None` what was expected, instead of calling it a subclassed
model.
"""

import numbers
import os

import keras
import numpy as np

from kprune.surgery.errors import SurgeryError, UnsupportedModelError


def check_model(model, arg="model"):
    """Raise a clear error unless `model` is a `keras.Model`.

    Args:
        model: what the caller received.
        arg: the argument's name, for the message.

    Raises:
        UnsupportedModelError: `model` is not a `keras.Model` (a path gets a
            hint to load it first).

    Example:

    >>> try:
    ...     check_model("model.keras")
    ... except ValueError as error:
    ...     print(str(error)[:51])
    kprune.surgery needs a keras.Model, not a file name
    """
    if isinstance(model, keras.Model):
        return
    received = f"Received: {arg}={type(model).__name__} ({_short(model)})"
    if isinstance(model, (str, os.PathLike)):
        raise UnsupportedModelError(
            "kprune.surgery needs a keras.Model, not a file name: load it first "
            f"with `keras.models.load_model({os.fspath(model)!r})`. {received}"
        )
    if isinstance(model, keras.layers.Layer):
        raise UnsupportedModelError(
            f"kprune.surgery needs a keras.Model; '{model.name}' is a "
            f"{type(model).__name__} layer. Wrap it in a Functional model "
            "(`keras.Model(inputs, layer(inputs))`). " + received
        )
    raise UnsupportedModelError(
        f"kprune.surgery needs a keras.Model (Functional or Sequential). {received}"
    )


def _describe(value):
    return f"{value!r} ({type(value).__name__})"


def _is_integer(value):
    if isinstance(value, (bool, np.bool_)):
        return False
    return isinstance(value, (numbers.Integral, np.integer))


def unit_indices(indices, layer, num_units=None):
    """Check a layer's unit indices; return them sorted as a NumPy int array.

    Accepted: a Python or NumPy integer, or a list / tuple / NumPy array of
    them (an integer-typed array of any shape is flattened). Refused, with a
    `SurgeryError` (a `ValueError`) naming the layer: booleans, floats (even
    `1.0`), strings and anything else that is not an integer; negative
    indices and indices `>= num_units`; an index given twice.

    Args:
        indices: the indices of the units to remove.
        layer: the layer's name (or path), used in error messages.
        num_units: the layer's number of units; `None` skips the range check
            except for negative indices.

    Returns:
        A sorted 1-D `numpy.int64` array.

    Raises:
        SurgeryError: an index is not an integer, out of range or repeated.

    Example:

    >>> unit_indices([3, np.int32(0)], "fc1", num_units=4).tolist()
    [0, 3]
    >>> try:
    ...     unit_indices([1.5], "fc1")
    ... except ValueError as error:
    ...     print(error)
    Unit indices of layer 'fc1' must be integers; 1.5 (float) is not. \
Received: units['fc1']=[1.5]
    """
    received = f"Received: units[{layer!r}]={_short(indices)}"
    if isinstance(indices, np.ndarray):
        if indices.dtype.kind not in "iu":
            bad = indices.reshape(-1)[0] if indices.size else indices.dtype
            raise SurgeryError(
                f"Unit indices of layer '{layer}' must be integers; got an "
                f"array of dtype {indices.dtype} (first value {bad!r}). {received}"
            )
        values = indices.reshape(-1).astype(np.int64)
    else:
        if _is_integer(indices):
            items = [indices]
        elif isinstance(indices, (list, tuple)):
            items = list(indices)
        else:
            raise SurgeryError(
                f"Unit indices of layer '{layer}' must be a list of integers; "
                f"got {_describe(indices)}. {received}"
            )
        for item in items:
            if not _is_integer(item):
                raise SurgeryError(
                    f"Unit indices of layer '{layer}' must be integers; "
                    f"{_describe(item)} is not. {received}"
                )
        values = np.asarray([int(i) for i in items], dtype=np.int64)
    if len(values) and values.min() < 0:
        raise SurgeryError(
            f"Unit indices of layer '{layer}' must be >= 0; got "
            f"{sorted(set(values[values < 0].tolist()))}. {received}"
        )
    if num_units is not None and len(values) and values.max() >= num_units:
        out = sorted(set(values[values >= num_units].tolist()))
        raise SurgeryError(
            f"Layer '{layer}' has {num_units} units; cannot remove {out} "
            f"(valid indices: 0 to {num_units - 1}). {received}"
        )
    values = np.sort(values)
    repeated = values[1:][values[1:] == values[:-1]]
    if len(repeated):
        raise SurgeryError(
            f"Unit indices of layer '{layer}' must each appear once; "
            f"{sorted(set(repeated.tolist()))} repeated. {received}"
        )
    return values


def _short(value, limit=120):
    if isinstance(value, np.ndarray):
        text = f"array({value.tolist()!r})"
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
