"""Check new widths against the active `keras.distribution` layouts.

Under `keras.distribution.ModelParallel`, a `LayoutMap` shards a variable's
dimension over one or more axes of the device mesh. The rebuilt model is
created while the distribution is set, so its variables take the same
layouts, and a sharded dimension must stay divisible by the size of its
mesh axes. JAX's own error for this (`IndivisibleError`) names neither the
layer nor what to do; `check_layouts` raises a kprune error first.
"""

import math

import keras
import numpy as np

from kprune.surgery.errors import SurgeryError
from kprune.surgery.handlers.base import SublayerChanges


def check_layouts(changed):
    """Raise if a new width does not divide the mesh axes it is sharded over.

    Args:
        changed: iterable of `(layer, change)`: a layer of the original model
            and what its handler returned, `(config, weights)` (weights a
            list in `layer.weights` order or a dict by name) or a
            `SublayerChanges`.

    Raises:
        SurgeryError: naming the layer, the variable, the new size, the mesh
            axes and their size.
    """
    distribution = keras.distribution.distribution()
    if distribution is None:
        return
    for layer, change in changed:
        if isinstance(change, SublayerChanges):
            pairs = [(sub, weights) for sub, _, weights in change.changes]
        else:
            pairs = [(layer, change[1])]
        for sub, weights in pairs:
            for variable, value in _matched(sub, weights):
                _check(distribution, layer, variable, np.shape(value))


def _matched(layer, weights):
    """`(old variable, new value)` pairs; unmatched ones are left out."""
    variables = list(layer.weights)
    if isinstance(weights, dict):
        by_name = {v.name: v for v in variables}
        return [(by_name[k], w) for k, w in weights.items() if k in by_name]
    if len(weights) != len(variables):
        return []
    return list(zip(variables, weights))


def _check(distribution, layer, variable, shape):
    try:
        layout = distribution.get_variable_layout(variable)
    except Exception:  # noqa: BLE001 - a distribution without variable layouts
        return
    axes = getattr(layout, "axes", None)
    mesh = getattr(layout, "device_mesh", None) or getattr(
        distribution, "device_mesh", None
    )
    if not axes or mesh is None or len(axes) != len(shape):
        return
    sizes = dict(zip(mesh.axis_names, mesh.shape))
    for dim, (size, names) in enumerate(zip(shape, axes)):
        if names is None:
            continue
        names = (names,) if isinstance(names, str) else tuple(names)
        devices = math.prod(sizes.get(name, 1) for name in names)
        if devices > 1 and size % devices:
            axis = " x ".join(f"'{name}' ({sizes.get(name, 1)})" for name in names)
            raise SurgeryError(
                f"Layer '{layer.name}' ({type(layer).__name__}) cannot be "
                f"rebuilt under the active {type(distribution).__name__}: its "
                f"variable '{variable.path}' would have size {size} in "
                f"dimension {dim}, which the LayoutMap shards over mesh axis "
                f"{axis}, and {devices} does not divide {size}. Remove units "
                f"so that the width stays a multiple of {devices} (e.g. "
                f"`kprune.prune(..., round_to={devices})` or "
                f"`kprune.transformers.prune(..., round_to={devices})`), or "
                "rebuild without the distribution "
                "(`keras.distribution.set_distribution(None)`) and shard the "
                "smaller model with a LayoutMap that fits it. Received: new "
                f"shape {tuple(shape)} for '{variable.path}' with layout "
                f"{tuple(axes)} on mesh {sizes}"
            )
