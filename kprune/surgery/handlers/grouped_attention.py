"""Grouped-query attention layers of KerasHub: key/value heads are units.

Llama, Mistral, Qwen, Phi-3, Mixtral, Gemma and their kin write attention
as a layer holding four `EinsumDense` projections (query, key, value,
output) and computing scores with `keras.ops`. With `H_q` query heads and
`H_kv` key/value heads, query head `h` attends with key/value head
`h // (H_q / H_kv)`: a key/value head and its group of query heads are one
unit. A group is removable when nothing reads it (its query heads' rows of
the output projection are zero) or its values are constant (value kernel
zero: every query head of the group then outputs the value bias, folded
into the output bias). Removing whole groups keeps `H_q % H_kv == 0`.

The layer is rebuilt from its own class when a config entry expresses the
new head counts (Gemma's attention has its own `head_dim`) and otherwise
with its projections swapped for smaller ones (`Resized`), which works since
these layers take the head counts from their projections' shapes only
through `num_key_value_groups`, unchanged when whole groups leave.

Only classes known to compute attention this way are registered: a layer
with per-head constants its code derives from the head count (ALiBi slopes,
as in Bloom and Falcon) would change its kept heads' behaviour.
"""

import re

import keras
import numpy as np

from kprune.surgery.handlers.base import LayerHandler, SublayerChanges, Use

_PARTS = {
    "query": ("_query_dense", "query_dense"),
    "key": ("_key_dense", "key_dense"),
    "value": ("_value_dense", "value_dense"),
    "output": ("_output_dense", "output_dense"),
}
_EQUATION = re.compile(r"^\s*(\w+)\s*,\s*(\w+)\s*->\s*(\w+)\s*$")


def _numpy(variable):
    return keras.ops.convert_to_numpy(variable.value)


class _Projection:
    """An `EinsumDense` projection with its axes read from the equation.

    For query/key/value: `(channel, head, dim)` axes of the kernel (input
    channel = the input's last letter, head = the output's second-to-last,
    dim = its last). For the output: `(head, dim, channel)`.
    """

    def __init__(self, dense, output):
        match = _EQUATION.match(dense.equation)
        if match is None or not isinstance(dense, keras.layers.EinsumDense):
            raise ValueError(f"'{dense.name}' is not an 'a,b->c' EinsumDense")
        source, kernel, target = match.groups()
        if output:
            letters = (source[-2], source[-1], target[-1])
        else:
            letters = (source[-1], target[-2], target[-1])
        if any(letter not in kernel for letter in letters) or len(kernel) != 3:
            raise ValueError(f"'{dense.name}' has an unexpected equation")
        self.dense = dense
        self.axes = tuple(kernel.index(letter) for letter in letters)
        self.target = target
        self.bias_axes = dense.bias_axes or ""

    def kernel(self):
        """The kernel with axes in the canonical order."""
        return np.transpose(_numpy(self.dense.kernel), self.axes)

    def bias(self):
        bias = getattr(self.dense, "bias", None)
        return None if bias is None else _numpy(bias)

    def to_layout(self, kernel):
        """Back from the canonical order to the layer's kernel layout."""
        return np.transpose(kernel, np.argsort(self.axes))


class GroupedQueryAttentionHandler(LayerHandler):
    """Key/value heads (with their query groups) as the units of attention."""

    produces_units = True
    inherit = True

    def parts(self, layer):
        """dict name -> `_Projection`, or raise ValueError."""
        found = {}
        for name, attributes in _PARTS.items():
            dense = next(
                (getattr(layer, a) for a in attributes if hasattr(layer, a)), None
            )
            if dense is None or getattr(dense, "kernel", None) is None:
                raise ValueError(f"it has no built {name} projection")
            found[name] = _Projection(dense, output=name == "output")
        q_heads = found["query"].kernel().shape[1]
        kv_heads = found["key"].kernel().shape[1]
        if found["value"].kernel().shape[1] != kv_heads or q_heads % kv_heads:
            raise ValueError("its head counts are not grouped-query attention")
        if found["output"].kernel().shape[0] != q_heads:
            raise ValueError("its output projection does not read every head")
        return found

    def check(self, node):
        try:
            self.parts(node.layer)
        except ValueError as error:
            return str(error)
        if not node.inputs or len(node.outputs) < 1:
            return "its call has no input or output"
        if (
            node.outputs[0].channels
            != self.parts(node.layer)["output"].kernel().shape[2]
        ):
            return "its first output is not the attention output"
        return None

    def connect(self, node, ctx):
        reason = self.check(node)
        if reason:
            ctx.pin_node(node, reason)
            return
        kv_heads = self.parts(node.layer)["key"].kernel().shape[1]
        ctx.internal(node, "heads", kv_heads)
        for tensor in node.inputs[1:]:
            ctx.pin(tensor, f"it is an extra input of attention '{node.path}'")
        for tensor in node.outputs[1:]:
            ctx.pin(tensor, f"it is an extra output of attention '{node.path}'")

    def unit_tensors(self, node, ctx):
        if not node.internal:
            return []
        output = self.parts(node.layer)["output"].dense.name
        return [
            (node.path, node.internal["heads"]),
            (f"{node.path}/{output}", node.outputs[0]),
        ]

    def uses(self, node, weights):
        if not node.internal:
            return []
        parts = self.parts(node.layer)
        heads = node.internal["heads"]
        q, k, v, o = (parts[n].kernel() for n in ("query", "key", "value", "output"))
        group = q.shape[1] // k.shape[1]
        fold = all(parts[n].bias() is not None for n in ("query", "key", "value"))
        reads = (q != 0).any(axis=2).reshape(q.shape[0], k.shape[1], group).any(axis=2)
        reads |= (k != 0).any(axis=2) | (v != 0).any(axis=2)
        writes = (o != 0).any(axis=1).reshape(k.shape[1], group, -1).any(axis=1)
        constant = ~(v != 0).any(axis=(0, 2))
        v_bias = parts["value"].bias()
        if v_bias is not None and parts["output"].bias() is None:
            # Constant values fold into the output bias, which is missing.
            constant &= ~(_canonical_bias(v_bias, parts["value"]) != 0).any(axis=1)
        return [
            Use(0, reads, fold, heads),
            Use(heads, writes, False, None, constant),
        ]

    def rebuild(self, change):
        node = change.node
        parts = self.parts(node.layer)
        q = parts["query"].kernel()
        kv_heads = parts["key"].kernel().shape[1]
        group = q.shape[1] // kv_heads
        kept = change.kept(kv_heads, change.internal_removed.get("heads", []))
        kept_q = (kept[:, None] * group + np.arange(group)).reshape(-1)
        kept_in = change.kept(q.shape[0], change.in_removed[0])
        removed_in = np.asarray(change.in_removed[0], dtype=int)
        attributes = _attributes(
            node.layer, (q.shape[1], len(kept_q)), (kv_heads, len(kept)), len(kept_in)
        )
        scale = _query_rescale(node.layer, q.shape[0], q.shape[1], attributes)
        fill = change.in_fill[0][removed_in] if len(removed_in) else None
        changes = []
        values = {}
        for name in ("query", "key", "value"):
            part = parts[name]
            kernel, bias = part.kernel(), part.bias()
            if fill is not None and bias is not None and np.any(fill):
                delta = np.tensordot(fill, kernel[removed_in], axes=1)
                bias = bias + _bias_layout(delta, part)
            heads = kept_q if name == "query" else kept
            values[name] = (kernel, bias)
            if name == "query" and scale != 1.0:
                kernel = kernel * scale
                bias = None if bias is None else bias * scale
            kernel = kernel[kept_in][:, heads]
            changes.append(_change(part, kernel, _take_heads(bias, part, heads)))
        output = parts["output"]
        kernel, bias = output.kernel(), output.bias()
        kept_out = change.kept(kernel.shape[2], change.out_removed[0])
        if bias is not None and values["value"][1] is not None:
            v_kernel, v_bias = values["value"]
            constant = ~(v_kernel[kept_in] != 0).any(axis=(0, 2))  # per kv head
            gone = np.setdiff1d(np.arange(kv_heads), kept)
            gone = gone[constant[gone]]
            if len(gone):
                v_bias = _canonical_bias(v_bias, parts["value"])
                rows = (gone[:, None] * group + np.arange(group)).reshape(-1)
                head_of = rows // group
                bias = bias + np.einsum("hd,hdc->c", v_bias[head_of], kernel[rows])
        kernel = kernel[kept_q][..., kept_out]
        changes.append(
            _change(output, kernel, None if bias is None else bias[kept_out])
        )
        sets = [(kv_heads, np.setdiff1d(np.arange(kv_heads), kept))]
        sets.append((q.shape[1], np.setdiff1d(np.arange(q.shape[1]), kept_q)))
        return SublayerChanges(changes, sets, attributes)


_QUERY_HEADS = ("num_query_heads", "num_heads", "num_attention_heads")
_KV_HEADS = ("num_key_value_heads", "num_kv_heads")


def _attributes(layer, query, kv, hidden):
    """Head counts (and hidden width) held as attributes: their new values.

    Set on a layer rebuilt by swapping its projections, whose `call` may
    reshape with them.
    """
    found = {}
    for names, (old, new) in ((_QUERY_HEADS, query), (_KV_HEADS, kv)):
        for name in names:
            if getattr(layer, name, None) == old and old != new:
                found[name] = int(new)
    if isinstance(getattr(layer, "hidden_dim", None), int):
        if layer.hidden_dim != hidden:
            found["hidden_dim"] = int(hidden)
    return found


def _query_rescale(layer, hidden, heads, attributes):
    """Keep the score scale of layers that scale by `hidden // heads`.

    Gemma's attention with `query_head_dim_normalize=False` scales scores by
    `1 / sqrt(hidden_dim // num_query_heads)`; the rebuilt layer computes it
    from the new widths, so the queries absorb the difference.
    """
    if getattr(layer, "query_head_dim_normalize", True) is not False:
        return 1.0
    if not isinstance(getattr(layer, "hidden_dim", None), int):
        return 1.0
    old = layer.hidden_dim // heads
    new = attributes.get("hidden_dim", layer.hidden_dim) // attributes.get(
        "num_query_heads", heads
    )
    return float(np.sqrt(new / old))


def _canonical_bias(bias, part):
    """A q/k/v bias as `(heads, dim)` (bias over the last two output axes)."""
    return np.asarray(bias).reshape(bias.shape[-2:]) if bias.ndim >= 2 else bias


def _bias_layout(delta, part):
    """`(heads, dim)` -> the bias's own shape."""
    shape = np.shape(part.bias())
    return np.asarray(delta).reshape(shape)


def _take_heads(bias, part, heads):
    if bias is None:
        return None
    if bias.ndim >= 2 and "".join(part.bias_axes)[-2:] == part.target[-2:]:
        return bias[..., heads, :]
    return bias


def _change(part, kernel, bias):
    """`(sublayer, config, weights)` of a projection with the new kernel."""
    dense = part.dense
    config = dense.get_config()
    layout = part.to_layout(kernel).astype(np.float32)
    weights = {"kernel": layout}
    if bias is not None:
        weights["bias"] = np.asarray(bias, np.float32)
    shape = list(config["output_shape"])
    target = part.target
    sizes = dict(zip(dense.equation.split(",")[1].split("->")[0].strip(), layout.shape))
    offset = len(shape) - (len(target) - 1)
    for i, letter in enumerate(target[1:]):
        if letter in sizes and 0 <= i + offset < len(shape) and shape[i + offset]:
            shape[i + offset] = int(sizes[letter])
    config["output_shape"] = shape
    return dense, config, weights


def _register():
    from kprune.surgery.handlers.base import register_handler

    handler = GroupedQueryAttentionHandler()
    for name in (
        "keras_hub.src.models.llama.llama_attention.LlamaAttention",
        "keras_hub.src.models.mistral.mistral_attention.CachedMistralAttention",
        "keras_hub.src.models.qwen.qwen_attention.QwenAttention",
        "keras_hub.src.models.qwen3.qwen3_attention.Qwen3Attention",
        "keras_hub.src.models.qwen_moe.qwen_moe_attention.QwenMoeAttention",
        "keras_hub.src.models.qwen3_moe.qwen3_moe_attention.Qwen3MoeAttention",
        "keras_hub.src.models.phi3.phi3_attention.Phi3Attention",
        "keras_hub.src.models.mixtral.mixtral_attention.CachedMixtralAttention",
        "keras_hub.src.models.gemma.gemma_attention.CachedGemmaAttention",
        "keras_hub.src.models.gemma3.gemma3_attention.CachedGemma3Attention",
        "keras_hub.src.models.smollm3.smollm3_layers.SmolLM3Attention",
    ):
        register_handler(name, handler)


_register()
