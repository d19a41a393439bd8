"""KerasHub's own layers: embeddings, and a scalar affine block.

KerasHub is not imported: the classes are registered by qualified name, so
kprune works without KerasHub installed and costs nothing at import.

- `PositionEmbedding`: adds nothing of its input but its shape; its output
  channel `c` is column `c` of the position table and lines up with the
  input's channel `c` (the two are summed), so they leave together and the
  table loses the column.
- `ReversibleEmbedding`: a token embedding whose transpose is also the
  output projection (`call(x, reverse=True)`: logits `x E^T`). Its units are
  the embedding dimensions, shared by the forward call's output and the
  reverse call's input.
- `HGNetV2LearnableAffineBlock`: `scale * x + bias` with scalar `scale` and
  `bias`: channel-wise, its weights are not per channel. (Its `call`
  multiplies a variable by its input, which cannot run on symbolic
  tensors, so it is not traced.)
"""

import numpy as np

from kprune.surgery.handlers.base import Use
from kprune.surgery.handlers.channelwise import ChannelwiseHandler
from kprune.surgery.handlers.embedding import EmbeddingHandler

_HUB = "keras_hub.src.layers.modeling"


class PositionEmbeddingHandler(ChannelwiseHandler):
    """`PositionEmbedding`: channel-wise in shape; the table is sliced."""

    def constant_mask(self, node, in_valid, weights):
        table = next(iter(weights.values()), None)
        if table is None:
            return [np.zeros(node.outputs[0].channels, bool)]
        return [np.all(table == table[:1], axis=0)]


class ReversibleEmbeddingHandler(EmbeddingHandler):
    """`ReversibleEmbedding`: embedding dimensions are the units of all calls."""

    ties_calls = True

    def _reverse(self, node):
        if node.arguments is None:
            return False
        args, kwargs = node.arguments
        value = kwargs.get("reverse", args[1] if len(args) > 1 else False)
        return bool(value) if not hasattr(value, "index") else False

    def _table(self, layer):
        import keras

        return keras.ops.convert_to_numpy(layer.embeddings.value)

    def _reverse_table(self, layer):
        """`(dims, vocab)` weights of the reverse call."""
        import keras

        if getattr(layer, "tie_weights", True):
            return self._table(layer).T
        return keras.ops.convert_to_numpy(layer.reverse_embeddings.value)

    def connect(self, node, ctx):
        reason = self.check(node)
        if reason:
            ctx.pin_node(node, reason)
            return
        dims = ctx.internal(node, "dims", node.layer.output_dim)
        if self._reverse(node):
            ctx.tie(node.inputs[0], dims)
            ctx.pin(node.outputs[0], f"it holds the logits of '{node.path}'")
        else:
            ctx.pin(node.inputs[0], f"the input of '{node.path}' holds token ids")
            ctx.tie(node.outputs[0], dims)

    def unit_tensors(self, node, ctx):
        return [(node.path, node.internal["dims"])] if node.internal else []

    def uses(self, node, weights):
        if not self._reverse(node) or not node.internal:
            return []
        return [Use(0, self._reverse_table(node.layer) != 0, False)]

    def constant_mask(self, node, in_valid, weights):
        if self._reverse(node):
            return [np.zeros(node.outputs[0].channels, bool)]
        table = self._table(node.layer)
        return [np.all(table == table[:1], axis=0)]

    def rebuild(self, change):
        layer = change.layer
        removed = change.internal_removed.get("dims", [])
        kept = change.kept(layer.output_dim, removed)
        weights = {}
        for name, value in change.weights.items():
            weights[name] = (
                value[kept] if name == "reverse_embeddings" else value[:, kept]
            )
        change.config["output_dim"] = len(kept)
        return change.config, weights


def _register():
    from kprune.surgery.handlers.base import register_handler

    register_handler(
        f"{_HUB}.position_embedding.PositionEmbedding", PositionEmbeddingHandler()
    )
    register_handler(
        f"{_HUB}.reversible_embedding.ReversibleEmbedding",
        ReversibleEmbeddingHandler(),
    )
    register_handler(
        "keras_hub.src.models.hgnetv2.hgnetv2_layers.HGNetV2LearnableAffineBlock",
        ChannelwiseHandler(),
    )


_register()
