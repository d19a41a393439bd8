"""Check a traced layer rebuilt without some heads against the original.

Removing head `h` of an attention layer is meant to compute what the
original layer computes with head `h` silenced (its rows of the output
projection zeroed): the other heads are untouched. A layer whose code
derives per-head values from the head count (ALiBi slopes, say) or holds a
per-head weight kprune did not slice would break that silently, so each
rebuilt layer is run on random inputs next to a silenced copy of the
original.
"""

import re

import keras
import numpy as np

from kprune.surgery.composite import CompositeRebuildError
from kprune.surgery.copying import copy_layer


def check_heads_removed(found, effects, new, removed, tolerance=1e-4):
    """Raise unless `new` computes `found.call.layer` with `removed` silenced.

    Args:
        found: the `TracedHeads` of the layer.
        effects: its `HeadEffects` for `removed`.
        new: the rebuilt layer.
        removed: the removed head indices.
        tolerance: largest relative output difference accepted.

    Raises:
        CompositeRebuildError: the outputs differ (the message says by how
            much and names the layer).
    """
    from kprune.surgery.resized import call_eagerly, call_spec

    call = found.call
    silenced = copy_layer(call.layer)
    shapes = [tuple(t.shape) for t in call.inputs]
    spec = call_spec(call.arguments, call.inputs, shapes, strict=False)
    call_eagerly(silenced, spec)  # built and called like the original
    twins = dict(
        zip(
            [id(s) for s in call.layer._flatten_layers(include_self=False)],
            silenced._flatten_layers(include_self=False),
        )
    )
    for node in found.nodes:
        rows = effects.in_removed.get(id(node), {})
        letters = effects.kernel_removed.get(id(node), {})
        twin = twins.get(id(node.layer))
        if (rows or letters) and twin is not None:
            if not _silence(node.layer, twin, rows.get(0), letters):
                return  # a reader kprune cannot silence: nothing to compare
    expected = _flat(call_eagerly(silenced, spec))
    got = _flat(call_eagerly(new, spec))
    if [e.shape for e in expected] != [g.shape for g in got]:
        raise CompositeRebuildError(
            f"layer '{call.path}' ({type(call.layer).__name__}) rebuilt without "
            f"heads {list(map(int, removed))} returns other shapes"
        )
    scale = max([1.0] + [float(np.max(np.abs(e))) for e in expected if e.size])
    worst = max(
        [0.0] + [float(np.max(np.abs(e - g))) for e, g in zip(expected, got) if e.size]
    )
    if worst / scale > tolerance:
        raise CompositeRebuildError(
            f"Removing heads {list(map(int, removed))} of layer '{call.path}' "
            f"({type(call.layer).__name__}) changes what its other heads compute "
            f"(relative difference {worst / scale:.1e} against the layer with "
            "those heads silenced): its code computes per-head values from the "
            "number of heads, or holds per-head weights kprune cannot slice. "
            "Silence the heads instead (zero their rows of the output "
            "projection), or keep them."
        )


def _silence(layer, twin, rows, letters):
    """Zero the weights of `twin` that read the removed heads.

    Returns False for a reader with weights kprune cannot silence.
    """
    if not twin.weights:
        return True  # Dropout, an activation: nothing reads through weights
    if not hasattr(twin, "kernel"):
        return False
    kernel = keras.ops.convert_to_numpy(twin.kernel)
    if isinstance(layer, keras.layers.EinsumDense):
        spec_in, spec_kernel, spec_out = re.match(
            r"^\s*(\w+)\s*,\s*(\w+)\s*->\s*(\w+)\s*$", layer.equation
        ).groups()
        axes = {}
        if rows is not None:
            axes[spec_kernel.index(spec_in[-1])] = rows
        for letter, index in letters.items():
            if letter not in spec_out:
                axes[spec_kernel.index(letter)] = index
    elif isinstance(layer, keras.layers.Dense) and rows is not None:
        axes = {0: rows}
    else:
        return not letters and rows is None
    for axis, index in axes.items():
        where = [slice(None)] * kernel.ndim
        where[axis] = np.asarray(index, dtype=int)
        kernel[tuple(where)] = 0.0
    twin.kernel.assign(kernel)
    return True


def _flat(outputs):
    return [
        np.asarray(keras.ops.convert_to_numpy(o), dtype=np.float64)
        for o in keras.tree.flatten(outputs)
        if o is not None and "float" in str(getattr(o, "dtype", ""))
    ]
