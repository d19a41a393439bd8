"""Embedding layers: the output dimension is removable; ids are not channels."""

import keras
import numpy as np

from kprune.surgery.handlers.producers import ProducerHandler


class EmbeddingHandler(ProducerHandler):
    """Embedding: the output dimension is removable; ids are not channels."""

    def __init__(self):
        super().__init__("output_dim", in_axis=0, out_axis=-1, kernel="embeddings")

    def connect(self, node, ctx):
        reason = self.check(node)
        if reason:
            ctx.pin_node(node, reason)
        ctx.pin(node.inputs[0], f"the input of '{node.path}' holds token ids")

    def uses(self, node, weights):
        return []

    def constant_mask(self, node, in_valid, weights):
        """A dimension whose column is one value for every token is constant."""
        table = weights.get(self.kernel)
        if table is None:
            return [np.zeros(node.outputs[0].channels, bool)]
        return [np.all(table == table[:1], axis=0)]

    def rebuild(self, change):
        weights = dict(change.weights)
        table = weights["embeddings"]
        kept = change.kept(table.shape[-1], change.out_removed[0])
        weights["embeddings"] = table[:, kept]
        change.config["output_dim"] = len(kept)
        return change.config, weights


def _register():
    from kprune.surgery.handlers.base import register_handler

    register_handler(keras.layers.Embedding, EmbeddingHandler())


_register()
