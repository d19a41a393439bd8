"""Depth pruning: remove whole residual blocks (`residual_blocks`, `drop_blocks`).

A residual block computes `y = x + f(x)` (optionally followed by the ReLU
that also made `x`). With its branch `f` gone it is the identity, so the
block can leave the graph altogether: its consumers read `x`. That removes
operations, not only MACs: on runtimes with a fixed cost per operation
(LiteRT on a phone's CPU) this buys speed that narrower layers cannot.
Unlike `slim`, dropping a block changes the outputs (by `f(x)`); pick the
blocks that change their input least (`kprune.criteria.block_redundancy`)
and fine-tune afterwards, as after any pruning.
"""

from kprune.surgery.blocks import (
    Block,
    block_positions,
    find_blocks,
    locate,
    tap_model,
)
from kprune.surgery.compiling import compile_like
from kprune.surgery.graph import Graph

# Activations `a` with `a(a(x)) == a(x)`: a block `a(x + f(x))` whose input
# `x` already came out of the same `a` is the identity when `f == 0`.
_IDEMPOTENT = {"relu": ("relu", "relu6"), "relu6": ("relu6",)}


def _activation_name(node):
    """`"relu"` / `"relu6"` for a call whose output is a plain ReLU's, else
    None."""
    layer = node.layer
    name = layer.__class__.__name__
    if name == "ReLU":
        config = layer.get_config()
        plain = not config.get("negative_slope") and not config.get("threshold")
        ceiling = config.get("max_value")
        if not plain or ceiling not in (None, 6):
            return None
        return "relu" if ceiling is None else "relu6"
    # An Activation layer, or a Dense / Conv with `activation="relu"`.
    found = getattr(getattr(layer, "activation", None), "__name__", None)
    return found if found in ("relu", "relu6") else None


def is_residual(block):
    """True when `block` is the identity once its residual branch is gone.

    The block's input `x` must enter an `Add` of two tensors inside the
    block, and the `Add`'s output be the block's output, or pass through
    one ReLU / ReLU6 whose input `x` already passed through (ReLU6 only
    after ReLU6); the input and output shapes must agree.
    """
    if tuple(block.start.shape) != tuple(block.end.shape):
        return False
    nodes = block.nodes
    adds = [
        i
        for i, node in enumerate(nodes)
        if node.layer.__class__.__name__ == "Add"
        and len(node.inputs) == 2
        and sum(t is block.start for t in node.inputs) == 1
    ]
    if not adds:
        return False
    add = nodes[adds[-1]]
    if add.outputs[0] is block.end:
        return True
    tail = nodes[adds[-1] + 1 :]
    if len(tail) != 1 or tail[0].outputs[0] is not block.end:
        return False
    if not tail[0].inputs or tail[0].inputs[0] is not add.outputs[0]:
        return False
    after = _activation_name(tail[0])
    position = block_positions(block.graph).get(id(block.start), -1)
    before = _activation_name(block.graph.nodes[position]) if position >= 0 else None
    return after is not None and before in _IDEMPOTENT[after]


def residual_blocks(model):
    """The blocks of `model` that `drop_blocks` can remove.

    Natural blocks (`kprune.surgery.find_blocks`) that are the identity
    once their residual branch is gone (`is_residual`): a ResNet's identity
    blocks, MobileNetV2's and EfficientNet's stride-1 inverted bottlenecks
    with a skip connection. Blocks whose shortcut is a projection (a
    strided or widening block) change the shape and are not listed.

    Args:
        model: a Functional or Sequential `keras.Model`, or a traced `Graph`.

    Returns:
        A list of `Block`, in graph order; `block.name` is
        `"first_layer..last_layer"`.

    Example:

    >>> import keras
    >>> inputs = keras.Input((8,))
    >>> x = keras.layers.Dense(8, name="stem")(inputs)
    >>> y = keras.layers.Dense(8, activation="relu", name="res_fc")(x)
    >>> x = keras.layers.Add(name="res_add")([x, y])
    >>> model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x))
    >>> [b.name for b in residual_blocks(model)]
    ['res_fc..res_add']
    """
    graph = model if isinstance(model, Graph) else Graph(model)
    return [block for block in find_blocks(graph) if is_residual(block)]


def _resolve(blocks, graph):
    """`Block`s of `graph` for blocks, candidates or block names."""
    names = [b for b in blocks if isinstance(b, str)]
    found = []
    if names:
        by_name = {block.name: block for block in residual_blocks(graph)}
        unknown = [name for name in names if name not in by_name]
        if unknown:
            raise ValueError(
                f"{unknown} name no residual block of model "
                f"'{graph.model.name}'. Its residual blocks: "
                f"{sorted(by_name) or 'none'}. Received: blocks={list(blocks)!r}"
            )
    for item in blocks:
        if isinstance(item, str):
            found.append(by_name[item])
        else:
            found.extend(locate([item], graph))
    return found


def drop_blocks(model, blocks, return_names=False):
    """A new model without the given residual blocks (each is the identity).

    For each block `y = x + f(x)` (`is_residual`), the calls of `f` and the
    `Add` leave the graph and the block's consumers read `x`:

        y' = x,   y - y' = f(x).

    Every other layer keeps its config and weights (a copy; a nested model
    is inlined). The result is compiled like `model` when `model` is.

    Args:
        model: a Functional or Sequential `keras.Model` (not modified).
        blocks: the blocks to remove: `Block`s (`residual_blocks`),
            candidates from `kprune.criteria.block_redundancy`, or block
            names (`"first_layer..last_layer"`). They must not overlap.
        return_names: also return `{path: name}`: what each kept layer of
            `model` (by its path, `"outer/inner"` inside a nested model, or
            its own name) is called in the new model.

    Returns:
        A new Functional `keras.Model` (a Sequential model, or a subclass
        of Functional, comes back as a plain Functional model); with
        `return_names=True`, `(model, names)`.

    Raises:
        ValueError: a block that is not residual (its removal would change
            the shape, or leave a non-identity behind), an unknown name,
            overlapping blocks.

    Example:

    >>> import keras, numpy as np
    >>> inputs = keras.Input((8,))
    >>> x = keras.layers.Dense(8, name="stem")(inputs)
    >>> y = keras.layers.Dense(8, activation="relu", name="res_fc")(x)
    >>> x = keras.layers.Add(name="res_add")([x, y])
    >>> model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x))
    >>> small = drop_blocks(model, ["res_fc..res_add"])
    >>> [layer.name for layer in small.layers[1:]]
    ['stem', 'head']

    Reference:
        G. Huang et al., "Deep Networks with Stochastic Depth", ECCV 2016
        (residual blocks dropped whole); X. Men et al., "ShortGPT: Layers
        in Large Language Models are More Redundant Than You Expect", 2024.
    """
    if isinstance(blocks, (str, Block)) or not isinstance(blocks, (list, tuple)):
        blocks = [blocks]
    if not blocks:
        raise ValueError(
            "`blocks` must name at least one block to remove. Received: blocks=[]"
        )
    graph = Graph(model)
    chosen = _resolve(list(blocks), graph)
    for block in chosen:
        if not is_residual(block):
            raise ValueError(
                f"Block '{block.name}' is not a residual block whose removal "
                "leaves the identity (an `Add` of its input and a branch, "
                f"with equal input and output shapes {block.input_shape} -> "
                f"{block.output_shape}). Choose among "
                "kprune.surgery.residual_blocks(model). "
                f"Received: blocks=[..., {block.name!r}, ...]"
            )
    new, names = tap_model(
        graph,
        None,
        [(block, None) for block in chosen],
        name=model.name,
        return_names=True,
    )
    compile_like(new, model)
    return (new, names) if return_names else new
