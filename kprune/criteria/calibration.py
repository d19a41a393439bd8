"""Activation statistics of chosen sublayers, captured while a model runs.

The model runs eagerly, batch by batch, on a little calibration data. For
the duration of the run each sublayer of interest gets a per-instance
`call` wrapper that reduces what passes through it to a few numbers per
unit (`kprune.ops.calibration`); the wrappers are removed in a `finally`
block, so the model is the same object, with the same weights and the same
behaviour, afterwards. Nothing here depends on the model's structure: any
Keras model (Functional, subclassed, a KerasHub backbone) on any backend,
as long as it can run eagerly.
"""

import dataclasses

import keras
import numpy as np

from kprune.ops.calibration import block_influence_terms, head_norms, token_mean
from kprune.ops.least_squares import as_rows, moments_init, moments_update

KINDS = ("units", "heads", "influence", "moments")
_MISSING = object()


@dataclasses.dataclass(eq=False)
class Tap:
    """One statistic to collect on one sublayer.

    Kinds:
        `"units"`: per unit of the last axis of the layer's input (or
            output), the L2 norm over the examples of each example's mean
            `|activation|` over its tokens (Minitron's "batch L2, sequence
            mean" aggregation).
        `"heads"`: the same for attention heads, on a tensor of shape
            `(..., heads, head_dim)` (the input of an attention output
            projection), with each head's activation its L2 norm.
        `"influence"`: block influence, the mean over tokens of
            `1 - cos(input, output)` (ShortGPT).
        `"moments"`: the statistics of a closed-form affine fit from the
            layer's input to its output (rows = tokens); see
            `kprune.criteria.blocks_linear`.

    Attributes:
        layer: a sublayer of the model that runs.
        kind: one of `"units"`, `"heads"`, `"influence"`, `"moments"`.
        where: `"input"` or `"output"` (`"units"` and `"heads"` only).
    """

    layer: object
    kind: str
    where: str = "input"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(
                f"`kind` must be one of {KINDS}. Received: kind={self.kind!r}"
            )
        if self.where not in ("input", "output"):
            raise ValueError(
                f"`where` must be 'input' or 'output'. Received: where={self.where!r}"
            )
        if not isinstance(self.layer, keras.layers.Layer):
            raise ValueError(
                "A Tap needs a Keras layer of the model. "
                f"Received: layer={self.layer!r}"
            )


def _first(value):
    while isinstance(value, (list, tuple)):
        value = value[0]
    return value


def _layer_input(args, kwargs):
    if args:
        return _first(args[0])
    for value in kwargs.values():
        if value is not None and hasattr(value, "shape"):
            return _first(value)
    raise ValueError("The layer was called without a tensor input.")


class _Accumulator:
    """Running sums of one tap over the batches."""

    def __init__(self, tap):
        self.tap = tap
        self.calls = 0
        self.total = None
        self.count = 0.0
        self.moments = None

    def _mask_for(self, tensor, mask):
        if mask is None or len(tensor.shape) < 3:
            return None
        if tuple(mask.shape) != tuple(tensor.shape[:2]):
            return None  # not token-aligned (e.g. an added class token)
        return mask

    def update(self, x, y, mask):
        self.calls += 1
        kind = self.tap.kind
        if kind in ("units", "heads"):
            value = x if self.tap.where == "input" else y
            if kind == "heads":
                if len(value.shape) < 3:
                    raise ValueError(
                        f"Layer {self.tap.layer.name!r}: a 'heads' tap needs a "
                        "tensor of shape (..., heads, head_dim). Received: "
                        f"shape={tuple(value.shape)}"
                    )
                mask = self._mask_for(value, mask)
                value = head_norms(value)
            else:
                mask = self._mask_for(value, mask)
            means = keras.ops.convert_to_numpy(token_mean(value, mask))
            means = means.astype(np.float64).reshape(len(means), -1)
            squares = (means * means).sum(axis=0)
            self.total = squares if self.total is None else self.total + squares
        elif kind == "influence":
            x, y = _first(x), _first(y)
            total, count = block_influence_terms(x, y, self._mask_for(x, mask))
            # convert_to_numpy first: a PyTorch tensor may require grad.
            total, count = (keras.ops.convert_to_numpy(v) for v in (total, count))
            self.total = (self.total or 0.0) + float(total)
            self.count += float(count)
        else:
            x = keras.ops.convert_to_numpy(x)
            y = keras.ops.convert_to_numpy(_first(y))
            mask = self._mask_for(x, mask)
            if mask is not None:
                keep = keras.ops.convert_to_numpy(mask).astype(bool)
                x, y = x[keep], y[keep]
            if self.moments is None:
                self.moments = moments_init(x.shape[-1], y.shape[-1])
            self.moments = moments_update(self.moments, as_rows(x), as_rows(y))

    def result(self):
        name = self.tap.layer.name
        if self.calls == 0:
            raise ValueError(
                f"Layer {name!r} never ran while the model ran on the data: "
                "is it part of this model? Received: 0 calls"
            )
        if self.tap.kind in ("units", "heads"):
            return np.sqrt(self.total)
        if self.tap.kind == "influence":
            return self.total / max(self.count, 1.0)
        return self.moments


def _wrap(layer, accumulators, state):
    original = layer.call

    def call(*args, **kwargs):
        outputs = original(*args, **kwargs)
        x = _layer_input(args, kwargs)
        for accumulator in accumulators:
            accumulator.update(x, outputs, state["mask"])
        return outputs

    return call


def _is_array(x):
    return hasattr(x, "shape") and hasattr(x, "dtype") and not isinstance(x, dict)


def _num_rows(x):
    if isinstance(x, dict):
        return len(next(iter(x.values())))
    if isinstance(x, (list, tuple)):
        return len(x[0])
    return len(x)


def _take(x, start, stop):
    if isinstance(x, dict):
        return {k: v[start:stop] for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [v[start:stop] for v in x]
    return x[start:stop]


def _in_memory(data):
    """The inputs when `data` holds whole arrays, else None."""
    if _is_array(data):
        return data
    if isinstance(data, dict) and all(_is_array(v) for v in data.values()):
        return data
    if (
        isinstance(data, tuple)
        and data
        and (_is_array(data[0]) or isinstance(data[0], dict))
    ):
        return _in_memory(data[0])  # (x, y) or (x, y, sample_weight)
    return None


def iterate_batches(data, batch_size=32, max_samples=None):
    """Model inputs from `data`, one batch at a time (targets dropped).

    Args:
        data: an array, a dict of arrays (one per model input), `(x, y)`
            of those, or an iterable of such batches (a `tf.data.Dataset`,
            a list of batches).
        batch_size: rows per batch when `data` holds whole arrays.
        max_samples: stop after this many examples.

    Yields:
        The inputs of one batch (an array or a dict of arrays).

    Example:

    >>> import numpy as np
    >>> [len(b) for b in iterate_batches(np.zeros((10, 2)), 4)]
    [4, 4, 2]
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1. Received: {batch_size}")
    arrays = _in_memory(data)
    if arrays is not None:
        rows = _num_rows(arrays)
        if max_samples is not None:
            rows = min(rows, int(max_samples))
        for start in range(0, rows, batch_size):
            yield _take(arrays, start, min(start + batch_size, rows))
        return
    if data is None or isinstance(data, (str, bytes)):
        raise ValueError(
            "`data` must be arrays, a dict of arrays, or an iterable of "
            f"batches. Received: data={data!r}"
        )
    seen = 0
    for item in data:
        x = item[0] if isinstance(item, tuple) else item
        yield x
        seen += _num_rows(x)
        if max_samples is not None and seen >= max_samples:
            return


def collect_statistics(
    model, data, taps, batch_size=32, max_samples=None, mask_key="padding_mask"
):
    """Run `model` on `data` and collect each `Tap`'s statistic.

    The model is called eagerly (`model(x, training=False)`) on each batch;
    each tapped layer's `call` is wrapped for that time only and restored
    afterwards, even on error. When the inputs are a dict with a
    `mask_key` entry (KerasHub's `padding_mask`), padding tokens are left
    out of every token mean.

    Args:
        model: a built Keras model (not modified).
        data: calibration inputs (see `iterate_batches`).
        taps: a dict `{name: Tap}`.
        batch_size: rows per forward pass when `data` holds arrays.
        max_samples: use at most this many examples.
        mask_key: the input that holds the padding mask.

    Returns:
        A dict `{name: statistic}`: a float64 array of one score per unit
        or head (`"units"`, `"heads"`), a float (`"influence"`), or
        `LinearMoments` (`"moments"`).

    Example:

    >>> import keras, numpy as np
    >>> inputs = keras.Input((3, 4))
    >>> hidden = keras.layers.Dense(5, name="hidden")
    >>> model = keras.Model(inputs, keras.layers.Dense(2)(hidden(inputs)))
    >>> x = np.ones((8, 3, 4), "float32")
    >>> stats = collect_statistics(model, x, {"h": Tap(hidden, "units", "output")})
    >>> stats["h"].shape
    (5,)

    Reference:
        Muralidharan et al., "Compact Language Models via Pruning and
        Knowledge Distillation", arXiv 2407.14679 (2024).
    """
    by_layer = {}
    accumulators = {}
    for name, tap in taps.items():
        if not isinstance(tap, Tap):
            raise ValueError(
                f"`taps` values must be kprune.criteria.Tap. Received: "
                f"{name!r}: {tap!r}"
            )
        accumulator = _Accumulator(tap)
        accumulators[name] = accumulator
        by_layer.setdefault(id(tap.layer), (tap.layer, []))[1].append(accumulator)

    state = {"mask": None}
    saved = []
    try:
        for layer, layer_accumulators in by_layer.values():
            saved.append((layer, layer.__dict__.get("call", _MISSING)))
            layer.call = _wrap(layer, layer_accumulators, state)
        seen = False
        for x in iterate_batches(data, batch_size, max_samples):
            seen = True
            mask = x.get(mask_key) if isinstance(x, dict) else None
            state["mask"] = None if mask is None else keras.ops.convert_to_tensor(mask)
            model(x, training=False)
        if not seen:
            raise ValueError("`data` holds no examples. Received: 0 batches")
    finally:
        for layer, previous in reversed(saved):
            if previous is _MISSING:
                del layer.call
            else:
                layer.call = previous
    return {name: acc.result() for name, acc in accumulators.items()}
