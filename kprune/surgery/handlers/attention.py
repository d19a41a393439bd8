"""Multi-head attention: heads, key dims and value dims are units.

`keras.layers.MultiHeadAttention` (and subclasses such as KerasHub's
`CachedMultiHeadAttention`) computes, per head `h`,

    q_h = x_q W_q[:, h] + b_q[h]        k_h = x_k W_k[:, h] + b_k[h]
    v_h = x_v W_v[:, h] + b_v[h]
    o   = sum_h softmax(q_h k_h^T / sqrt(D_k)) v_h W_o[h] + b_o

with `W_q, W_k: (C, H, D_k)`, `W_v: (C, H, D_v)`, `W_o: (H, D_v, C_out)`.
Three sets of units live inside the layer (internal units, see
`ChannelAnalysis.internal`), each a plan key:

- `path`: the heads. A head is removable when nothing reads it
  (`W_o[h] = 0`) or when its values are constant (`W_v[:, h] = 0`: the
  attention weights sum to one, so the head outputs `b_v[h]`, folded into
  `b_o`).
- `path/key_dims`: dimension `d` of every head's queries and keys; removable
  when `q_d` is zero for every head, or `k_d` is constant (a per-query
  constant added to every score leaves the softmax unchanged). The query
  projection is rescaled by `sqrt(D_k' / D_k)` so the scores keep their
  scale.
- `path/value_dims`: dimension `d` of every head's values; removable when
  `W_o[:, d] = 0` or `W_v[:, :, d] = 0` (then folded like a head). When
  `D_k = D_v`, key dimension `d` and value dimension `d` leave together
  (Keras on JAX needs equal head sizes in `dot_product_attention`).

The output channels (`path/attention_output`) are ordinary units: they
follow the tensor they are added to (the residual stream, in a transformer).
Constant input channels fold into the projection biases.

Reference:
    Michel, Levy & Neubig, "Are Sixteen Heads Really Better than One?",
    NeurIPS 2019, https://arxiv.org/abs/1905.10650
"""

import math

import keras
import numpy as np

from kprune.surgery.handlers.base import LayerHandler, Use

_PARTS = ("_query_dense", "_key_dense", "_value_dense", "_output_dense")


def _numpy(variable):
    return keras.ops.convert_to_numpy(variable.value)


def _dense_arrays(dense):
    kernel = _numpy(dense.kernel)
    bias = _numpy(dense.bias) if getattr(dense, "bias", None) is not None else None
    return kernel, bias


class MultiHeadAttentionHandler(LayerHandler):
    """Handler for `keras.layers.MultiHeadAttention` and its subclasses."""

    produces_units = True
    inherit = True

    # ------------------------------------------------------------ structure
    def _inputs(self, node):
        query = node.argument("query", 0)
        value = node.argument("value", 1)
        key = node.argument("key", 2) or value
        return query, value, key

    def check(self, node):
        layer = node.layer
        for part in _PARTS:
            dense = getattr(layer, part, None)
            if dense is None or getattr(dense, "kernel", None) is None:
                return f"it has no built '{part}' projection"
        if len(layer._query_dense.kernel.shape) != 3:
            return "its projections are not (channels, heads, dims) kernels"
        if len(layer._output_dense.kernel.shape) != 3:
            return "its output projection is not a (heads, dims, channels) kernel"
        if getattr(layer, "lora_enabled", False) or any(
            getattr(getattr(layer, p), "lora_enabled", False) for p in _PARTS
        ):
            return "LoRA-enabled projections are not supported"
        query, value, _ = self._inputs(node)
        if query is None or value is None:
            return "its query and value inputs could not be identified"
        if len(node.outputs) != 1:
            return "it returns attention scores as well"
        return None

    def sizes(self, layer):
        heads, key_dim = layer._query_dense.kernel.shape[1:]
        value_dim = layer._value_dense.kernel.shape[-1]
        return int(heads), int(key_dim), int(value_dim)

    def connect(self, node, ctx):
        reason = self.check(node)
        if reason:
            ctx.pin_node(node, reason)
            return
        heads, key_dim, value_dim = self.sizes(node.layer)
        ctx.internal(node, "heads", heads)
        ctx.internal(node, "key_dims", key_dim)
        ctx.internal(node, "value_dims", value_dim)
        if key_dim == value_dim:
            # Keras computes attention with `ops.dot_product_attention`, which
            # on JAX needs one head size for keys and values: a layer built
            # with equal sizes keeps them equal (dimension d of the keys
            # leaves with dimension d of the values).
            ctx.tie(node.internal["key_dims"], node.internal["value_dims"])
        projected = {id(t) for t in self._inputs(node) if t is not None}
        for tensor in node.inputs:
            if id(tensor) not in projected:
                ctx.pin(tensor, f"it is a mask of attention layer '{node.path}'")

    def unit_tensors(self, node, ctx):
        if not node.internal:
            return [(node.path, node.outputs[0])]
        output_name = node.layer._output_dense.name
        return [
            (node.path, node.internal["heads"]),
            (f"{node.path}/key_dims", node.internal["key_dims"]),
            (f"{node.path}/value_dims", node.internal["value_dims"]),
            (f"{node.path}/{output_name}", node.outputs[0]),
        ]

    # ------------------------------------------------------------- analysis
    def uses(self, node, weights):
        if not node.internal:
            return []
        layer = node.layer
        heads = node.internal["heads"]
        key_dims = node.internal["key_dims"]
        value_dims = node.internal["value_dims"]
        wq, bq = _dense_arrays(layer._query_dense)
        wk, _ = _dense_arrays(layer._key_dense)
        wv, bv = _dense_arrays(layer._value_dense)
        wo, _ = _dense_arrays(layer._output_dense)
        gated = getattr(layer, "_use_gate", False)
        has_bias = bq is not None
        query, value, key = self._inputs(node)
        uses = []
        for tensor, kernel in ((query, wq), (key, wk), (value, wv)):
            nonzero = kernel != 0
            uses.append(Use(tensor, nonzero.any(axis=2), has_bias, heads))
            dims = key_dims if kernel is not wv else value_dims
            uses.append(Use(tensor, nonzero.any(axis=1), has_bias, dims))
        if gated:
            gate, _ = _dense_arrays(layer._gate_dense)
            uses.append(Use(query, (gate != 0).any(axis=2), has_bias, heads))
        out = wo != 0  # (heads, value_dims, channels)
        value_constant = ~(wv != 0).any(axis=0)  # (heads, value_dims)
        head_constant = value_constant.all(axis=1) & (not gated)
        dim_constant = value_constant.all(axis=0) & (not gated)
        uses.append(Use(heads, out.any(axis=1), False, None, head_constant))
        uses.append(Use(value_dims, out.any(axis=0), False, None, dim_constant))
        q_live = (wq != 0).any(axis=0)
        if bq is not None:
            q_live |= bq != 0
        k_varies = (wk != 0).any(axis=0)
        matters = (q_live & k_varies).T  # (key_dims, heads)
        uses.append(Use(key_dims, matters, False, heads))
        return uses

    # -------------------------------------------------------------- rebuild
    def rebuild(self, change):
        layer = change.layer
        node = change.node
        heads, key_dim, value_dim = self.sizes(layer)
        kept = {
            "heads": change.kept(heads, change.internal_removed.get("heads", [])),
            "key_dims": change.kept(
                key_dim, change.internal_removed.get("key_dims", [])
            ),
            "value_dims": change.kept(
                value_dim, change.internal_removed.get("value_dims", [])
            ),
        }
        positions = {id(t): i for i, t in enumerate(node.inputs)}
        query, value, key = self._inputs(node)

        def rows(tensor, kernel, bias):
            """Drop removed input rows, folding their constants into `bias`."""
            i = positions[id(tensor)]
            removed = np.asarray(change.in_removed[i], dtype=int)
            keep = change.kept(kernel.shape[0], removed)
            if len(removed) and bias is not None:
                fill = change.in_fill[i][removed]
                bias = bias + np.tensordot(fill, kernel[removed], axes=1)
            return kernel[keep], bias

        h, dk, dv = kept["heads"], kept["key_dims"], kept["value_dims"]
        new = {}
        wq, bq = rows(query, *_dense_arrays(layer._query_dense))
        scale = math.sqrt(len(dk) / key_dim)
        new["_query_dense"] = _take(wq, bq, h, dk, scale)
        wk, bk = rows(key, *_dense_arrays(layer._key_dense))
        new["_key_dense"] = _take(wk, bk, h, dk)
        wv_full, bv_full = _dense_arrays(layer._value_dense)
        wv, bv = rows(value, wv_full, bv_full)
        new["_value_dense"] = _take(wv, bv, h, dv)
        if getattr(layer, "_use_gate", False):
            wg, bg = rows(query, *_dense_arrays(layer._gate_dense))
            new["_gate_dense"] = _take(wg, bg, h, dv)
        wo, bo = _dense_arrays(layer._output_dense)
        kept_out = change.kept(wo.shape[-1], change.out_removed[0])
        if bo is not None and bv is not None:
            # Removed (head, dim) pairs whose values are constant: fold.
            removed_pair = np.ones(wo.shape[:2], dtype=bool)
            removed_pair[np.ix_(h, dv)] = False
            constant = ~(wv != 0).any(axis=0)
            folded = removed_pair & constant
            bo = bo + np.einsum("hd,hdc->c", np.where(folded, bv, 0.0), wo)
        wo = wo[np.ix_(h, dv)][..., kept_out]
        new["_output_dense"] = (wo, None if bo is None else bo[kept_out])
        config = change.config
        config["num_heads"] = len(h)
        config["key_dim"] = len(dk)
        config["value_dim"] = len(dv)
        if config.get("output_shape") is not None or len(kept_out) != len(
            change.kept(query.channels, change.in_removed[positions[id(query)]])
        ):
            config["output_shape"] = _output_shape(config, len(kept_out))
        return config, _ordered(layer, new)


def _take(kernel, bias, heads, dims, scale=1.0):
    kernel = kernel[:, heads][:, :, dims] * scale
    if bias is not None:
        bias = bias[heads][:, dims] * scale
    return kernel.astype(np.float32), (
        None if bias is None else bias.astype(np.float32)
    )


def _output_shape(config, width):
    shape = config.get("output_shape")
    if isinstance(shape, (list, tuple)) and len(shape) > 1:
        return tuple(shape[:-1]) + (width,)
    return (width,) if isinstance(shape, (list, tuple)) else width


def _ordered(layer, new):
    """The new arrays in `layer.weights` order."""
    lookup = {}
    for part, (kernel, bias) in new.items():
        dense = getattr(layer, part)
        lookup[id(dense.kernel)] = kernel
        if getattr(dense, "bias", None) is not None and bias is not None:
            lookup[id(dense.bias)] = bias
    values = []
    for w in layer.weights:
        if id(w) not in lookup:
            raise ValueError(
                f"Attention layer '{layer.name}' has a weight kprune does not "
                f"know how to resize ({w.path}); register a handler for "
                f"{type(layer).__name__}."
            )
        values.append(lookup[id(w)])
    return values


def _register():
    from kprune.surgery.handlers.base import register_handler

    register_handler(keras.layers.MultiHeadAttention, MultiHeadAttentionHandler())


_register()
