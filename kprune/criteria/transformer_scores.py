"""Minitron width importance and ShortGPT block influence of transformer stacks."""

import dataclasses

import numpy as np

from kprune.criteria.calibration import Tap, collect_statistics


def _as_arrays(values):
    return None if values is None else [np.asarray(v, np.float64) for v in values]


@dataclasses.dataclass
class TransformerScores:
    """Importance of every prunable unit of a transformer stack (higher = keep).

    Attributes:
        hidden: one score per hidden (embedding) channel, shape `(hidden,)`.
        ffn: per block, one score per FFN intermediate unit.
        heads: per block, one score per query head.
        layers: one score per block (e.g. block influence); blocks with the
            lowest scores are dropped first.
    """

    hidden: object = None
    ffn: list = None
    heads: list = None
    layers: object = None

    def __post_init__(self):
        if self.hidden is not None:
            self.hidden = np.asarray(self.hidden, np.float64)
        self.ffn = _as_arrays(self.ffn)
        self.heads = _as_arrays(self.heads)
        if self.layers is not None:
            self.layers = np.asarray(self.layers, np.float64)

    def to_dict(self):
        """A JSON-able dict of lists (None where a score is absent)."""

        def plain(value):
            if value is None:
                return None
            if isinstance(value, list):
                return [v.tolist() for v in value]
            return value.tolist()

        return {
            "hidden": plain(self.hidden),
            "ffn": plain(self.ffn),
            "heads": plain(self.heads),
            "layers": plain(self.layers),
        }


def activation_scores(
    model,
    data,
    blocks,
    ffn_layers=None,
    head_layers=None,
    hidden_layers=None,
    batch_size=16,
    max_samples=None,
    mask_key="padding_mask",
    moments=False,
):
    """Minitron activation importance and block influence, in one pass.

    On calibration data `D`, with `a` the activations, `B` the examples and
    `S` a sequence's (non-padding) tokens:

        FFN unit i:      F(i) = L2_B( mean_S |a_i| ),  a = input of the FFN
                                output projection (the activated units);
        head h:          F(h) = L2_B( mean_S ||attn_h|| ), attn_h = head h's
                                output, before the output projection;
        hidden channel:  F(c) = Σ_norms L2_B( mean_S |LN(x)_c| ), summed over
                                the outputs of the given normalization layers;
        block b:         BI(b) = mean_tokens (1 - cos(x_b, y_b)), the block's
                                input and output (ShortGPT).

    Args:
        model: the model to run (not modified).
        data: calibration inputs (arrays, a dict of arrays, or batches).
        blocks: the transformer blocks (layers called once per forward pass,
            first argument the hidden states).
        ffn_layers: per block, the FFN output projection (its input holds
            the intermediate activations), or None to skip FFN scores.
        head_layers: per block, the attention output projection (its input
            has shape `(..., heads, head_dim)`), or None.
        hidden_layers: the normalization layers whose outputs are hidden
            channels, or None.
        batch_size: rows per forward pass.
        max_samples: use at most this many examples.
        mask_key: the input holding the padding mask.
        moments: also collect, per block, the statistics of the affine fit
            from its input to its output (`LinearMoments`), returned as a
            second value.

    Returns:
        A `TransformerScores` (and, with `moments=True`, a list of
        `LinearMoments`, one per block).

    Example:

    >>> import keras, numpy as np
    >>> inputs = keras.Input((4, 8))
    >>> block = keras.layers.Dense(8, name="block")
    >>> model = keras.Model(inputs, block(inputs))
    >>> x = np.random.default_rng(0).normal(size=(6, 4, 8)).astype("float32")
    >>> scores = activation_scores(model, x, [block])
    >>> scores.layers.shape
    (1,)

    Reference:
        Muralidharan et al., "Compact Language Models via Pruning and
        Knowledge Distillation", arXiv 2407.14679 (2024); Men et al.,
        "ShortGPT: Layers in Large Language Models are More Redundant Than
        You Expect", arXiv 2403.03853 (2024).
    """
    taps = {}
    for i, block in enumerate(blocks):
        taps[f"block/{i}"] = Tap(block, "influence")
        if moments:
            taps[f"moments/{i}"] = Tap(block, "moments")
    for i, layer in enumerate(ffn_layers or ()):
        taps[f"ffn/{i}"] = Tap(layer, "units", "input")
    for i, layer in enumerate(head_layers or ()):
        taps[f"heads/{i}"] = Tap(layer, "heads", "input")
    for i, layer in enumerate(hidden_layers or ()):
        taps[f"hidden/{i}"] = Tap(layer, "units", "output")
    stats = collect_statistics(
        model, data, taps, batch_size, max_samples, mask_key=mask_key
    )
    hidden = None
    if hidden_layers:
        hidden = sum(stats[f"hidden/{i}"] for i in range(len(hidden_layers)))
    scores = TransformerScores(
        hidden=hidden,
        ffn=[stats[f"ffn/{i}"] for i in range(len(ffn_layers))] if ffn_layers else None,
        heads=[stats[f"heads/{i}"] for i in range(len(head_layers))]
        if head_layers
        else None,
        layers=[stats[f"block/{i}"] for i in range(len(blocks))],
    )
    if moments:
        return scores, [stats[f"moments/{i}"] for i in range(len(blocks))]
    return scores
