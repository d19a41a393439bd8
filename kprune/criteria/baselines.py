"""Baseline importance criteria with CAR's signature: L1 norm, activation, random.

Each returns one score per unit of `layer_name` (higher = more important)
and plugs into `greedy_prune` like `car_scores`.
"""

import numpy as np

from kprune.criteria._programs import Program, Slice
from kprune.criteria.ablation import _as_list, _producer
from kprune.surgery import ChannelAnalysis
from kprune.surgery.handlers import get_handler
from kprune.surgery.plan import producer_nodes


def _coupled_producers(analysis, layer_name, groups):
    """[(node, mapping)]: producers whose units share a group with the layer.

    `mapping[j]` is the unit of `layer_name` that unit `j` of the node is
    coupled to (-1: none). Without `groups`, only the layer itself.
    """
    node = _producer(analysis, layer_name)
    own = analysis.values(analysis.component, node.outputs[0])
    if not groups:
        return [(node, np.arange(len(own)))]
    unit_of_group = {int(g): u for u, g in enumerate(own)}
    found = []
    for other in producer_nodes(analysis).values():
        comps = analysis.values(analysis.component, other.outputs[0])
        mapping = np.array([unit_of_group.get(int(g), -1) for g in comps])
        if np.any(mapping >= 0):
            found.append((other, mapping))
    return found


def _sum_over_group(num_units, pairs):
    total = np.zeros(num_units)
    for mapping, values in pairs:
        keep = mapping >= 0
        np.add.at(total, mapping[keep], values[keep])
    return total


def l1_scores(model, layer_name, x=None, y=None, groups=True):
    """L1 norm of each filter / unit's incoming weights.

    `score_k = sum |W[..., k]|` over every tap and input channel of unit
    `k`'s kernel (bias excluded), as in Li et al.'s filter pruning. With
    `groups`, coupled units (residual branches) score the sum over the group.

    Args:
        model: a Functional or Sequential `keras.Model`.
        layer_name: the layer whose units are scored.
        x: unused (same signature as `car_scores`).
        y: unused.
        groups: sum the norms of coupled units of other layers.

    Returns:
        A float64 array, one score per unit.

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")])
    >>> l1_scores(model, "d").shape
    (2,)

    Reference:
        H. Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017.
    """
    analysis = ChannelAnalysis(model)
    node = _producer(analysis, layer_name)
    pairs = []
    for other, mapping in _coupled_producers(analysis, layer_name, groups):
        handler = get_handler(other.layer)
        if not hasattr(handler, "node_matrix"):
            raise ValueError(
                f"Layer '{other.path}' ({other.layer.__class__.__name__}) has no "
                f"kernel kprune can read. Received: layer_name={layer_name!r}"
            )
        matrix = handler.node_matrix(other, analysis.weights(other.layer))
        pairs.append((mapping, np.abs(matrix).sum(axis=(0, 1)).astype(np.float64)))
    return _sum_over_group(node.outputs[0].channels, pairs)


def mean_activation_scores(model, layer_name, x, y=None, groups=True, batch_size=256):
    """Mean absolute output of each unit over the data.

    `score_k = mean over samples and positions of |a_k|`, where `a` is the
    layer's output (after its own activation: for a ReLU layer this is the
    mean activation criterion). With `groups`, coupled units of other
    layers add their means.

    Args:
        model: a Functional or Sequential `keras.Model`.
        layer_name: the layer whose units are scored.
        x: inputs.
        y: unused.
        groups: add the means of coupled units of other layers.
        batch_size: samples per pass.

    Returns:
        A float64 array, one score per unit.

    Example:

    >>> import keras, numpy as np
    >>> model = keras.Sequential([keras.Input((3,)),
    ...     keras.layers.Dense(2, activation="relu", name="d")])
    >>> mean_activation_scores(model, "d", np.ones((4, 3))).shape
    (2,)

    Reference:
        P. Molchanov et al., "Pruning Convolutional Neural Networks for
        Resource Efficient Inference", ICLR 2017 (the activation baseline).
    """
    if x is None:
        raise ValueError("mean_activation_scores needs inputs. Received: x=None")
    analysis = ChannelAnalysis(model)
    node = _producer(analysis, layer_name)
    graph = analysis.graph
    coupled = _coupled_producers(analysis, layer_name, groups)
    outputs = [other.outputs[0] for other, _ in coupled]
    wanted = {id(t) for t in outputs}
    nodes = []
    for candidate in reversed(graph.nodes):
        if any(id(t) in wanted for t in candidate.outputs):
            nodes.append(candidate)
            wanted.update(id(t) for t in candidate.inputs)
    nodes.reverse()
    program = Program(Slice(list(graph.inputs), nodes, outputs))
    x_list = [np.asarray(a) for a in _as_list(x)]
    sums = [np.zeros(t.channels) for t in outputs]
    counts = [0] * len(outputs)
    total = len(x_list[0])
    for lo in range(0, total, batch_size):
        chunk = [a[lo : lo + batch_size] for a in x_list]
        values = _as_list(program.predict_on_batch(chunk))
        for index, value in enumerate(values):
            value = np.abs(np.asarray(value, dtype=np.float64))
            flat = value.reshape(-1, value.shape[-1])
            sums[index] += flat.sum(axis=0)
            counts[index] += flat.shape[0]
    pairs = [
        (mapping, s / max(c, 1)) for (_, mapping), s, c in zip(coupled, sums, counts)
    ]
    return _sum_over_group(node.outputs[0].channels, pairs)


def random_scores(model, layer_name, x=None, y=None, seed=None):
    """Uniform random scores: the chance baseline.

    Args:
        model: a Functional or Sequential `keras.Model`.
        layer_name: the layer whose units are scored.
        x: unused.
        y: unused.
        seed: int or `numpy.random.Generator`.

    Returns:
        A float64 array of values in [0, 1), one per unit.

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="d")])
    >>> random_scores(model, "d", seed=0).shape
    (4,)
    """
    analysis = ChannelAnalysis(model)
    node = _producer(analysis, layer_name)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return rng.random(node.outputs[0].channels)
