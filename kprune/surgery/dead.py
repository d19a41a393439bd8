"""Find the units whose removal provably cannot change a model's outputs."""

import numpy as np

from kprune.surgery.analysis import ChannelAnalysis
from kprune.surgery.handlers import get_handler
from kprune.surgery.handlers.base import as_use
from kprune.surgery.plan import build_plan, unit_sources


def dead_groups(analysis):
    """Coupled groups that can be removed without changing any output.

    A group is dead when it is not pinned and, for every weighted consumer
    (Dense, Conv, ...) reading one of its channels, either every weight from
    that channel to the consumer's *kept* units is zero, or the channel holds
    a constant that folds exactly into the consumer's bias. Removing units
    can make upstream units dead in turn (their only readers are gone), so
    the rule is applied until nothing changes.

    Args:
        analysis: a `ChannelAnalysis`.

    Returns:
        A set of group ids.
    """
    comp = analysis.component
    has_unit = np.zeros(analysis.num_groups, dtype=bool)
    for _, tensor in unit_sources(analysis).values():
        has_unit[analysis.values(comp, tensor)] = True
    candidates = has_unit & ~analysis.exact_pinned

    consumers = []
    for node in analysis.graph.nodes:
        handler = get_handler(node.layer)
        try:
            uses = handler.uses(node, analysis.weights(node.layer))
        except (KeyError, ValueError):
            uses = None
        for use in map(as_use, uses or ()):
            source = use.source
            if not hasattr(source, "offset"):
                source = node.inputs[source]
            target = use.target if use.target is not None else node.outputs[0]
            valid = analysis.values(analysis.const_valid, source)
            value = analysis.values(analysis.const_value, source)
            foldable = valid & (use.fold_exact | (value == 0))
            if use.constant is not None:
                foldable = foldable | use.constant
            consumers.append(
                (
                    analysis.values(comp, source),
                    use.matrix,
                    foldable,
                    analysis.values(comp, target),
                )
            )

    removed = np.zeros(analysis.num_groups, dtype=bool)
    while True:
        needed = np.zeros(analysis.num_groups, dtype=bool)
        for in_comps, matrix, foldable, out_comps in consumers:
            kept_out = ~removed[out_comps]
            need = matrix[:, kept_out].any(axis=1) & ~foldable
            needed[in_comps[need]] = True
        now = candidates & ~needed
        if np.array_equal(now, removed):
            break
        removed = now
    return set(np.flatnonzero(removed).tolist())


def dead_units(model):
    """Units whose removal provably cannot change the model's outputs.

    A unit (neuron / filter) is dead when nothing downstream depends on it:
    every weight reading it is zero, or it outputs a constant (zero incoming
    weights: `activation(bias)`, possibly through BatchNorm and friends) that
    folds exactly into the consumers' biases. Coupled channels (joined by
    `Add`, `Multiply`, ...) are dead only when dead on every branch. When a
    whole layer is dead, one unit is kept (Keras layers cannot be empty).

    Args:
        model: a Functional or Sequential `keras.Model` (not modified).

    Returns:
        dict layer path -> sorted NumPy int array of unit indices.

    Example:

    >>> import keras, numpy as np, kprune
    >>> inputs = keras.Input((4,))
    >>> hidden = keras.layers.Dense(3, activation="relu", name="hidden")(inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(2, name="out")(hidden))
    >>> kernel, bias = model.get_layer("out").get_weights()
    >>> kernel[1] = 0.0  # nothing reads hidden unit 1 any more
    >>> model.get_layer("out").set_weights([kernel, bias])
    >>> kprune.surgery.dead_units(model)
    {'hidden': array([1])}
    """
    plan = dead_plan(ChannelAnalysis(model))
    return {k: np.asarray(v, dtype=np.int64) for k, v in plan.units.items()}


def dead_plan(analysis):
    """The `PruningPlan` of all dead units of an analysed model."""
    return build_plan(analysis, dead_groups(analysis), allow_empty=True)
