"""Copy a layer as it is: same class, same weights, no trip through a config.

`layer.__class__.from_config(layer.get_config())` fails for layers whose
config cannot rebuild them (some KerasHub layers, a `Lambda` whose function
refers to names outside it, layers whose `get_config` itself raises), so a
layer the plan does not touch is deep-copied instead. The copy leaves the
layer's graph history behind (its call nodes, which would drag the whole
model along) and shares nothing with the original: training the copy never
changes the original's weights.
"""

import copy

import keras


def copy_layer(layer):
    """An independent copy of `layer`, with its weights, not yet called.

    Args:
        layer: a `keras.layers.Layer` or `keras.ops` operation.

    Returns:
        A new object of the same class; its variables hold the same values
        as `layer`'s and are new variables.

    Example:

    >>> import keras, numpy as np
    >>> dense = keras.layers.Dense(2)
    >>> _ = dense(np.ones((1, 3)))
    >>> twin = copy_layer(dense)
    >>> twin is dense, bool(np.all(twin.kernel.numpy() == dense.kernel.numpy()))
    (False, True)
    """
    memo = {}
    objects = [layer]
    if isinstance(layer, keras.layers.Layer):
        objects = list(layer._flatten_layers(include_self=True, recursive=True))
    for obj in objects:
        for name in ("_inbound_nodes", "_outbound_nodes"):
            nodes = getattr(obj, name, None)
            if isinstance(nodes, list):
                memo[id(nodes)] = []
    return copy.deepcopy(layer, memo)


def carry_keep_mask(layer):
    """Give a resized layer's `KeepMask` a mask again.

    A `KeepMask` whose mask is not in its config starts empty in a layer
    rebuilt from a config. Pruned weights are exactly zero, so the new
    kernel's zero pattern is the sliced mask.
    """
    constraint = getattr(layer, "kernel_constraint", None)
    if type(constraint).__name__ != "KeepMask" or constraint.mask is not None:
        return
    kernel = keras.ops.convert_to_numpy(layer.kernel)
    constraint.set_mask((kernel != 0).astype("float32"))
