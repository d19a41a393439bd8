"""Shared pieces of the model zoo's builders (see `kprune.testing.zoo`)."""

import collections

import keras
import numpy as np

BATCH = 2
SEQUENCE = 8
VOCAB = 64
IMAGE = 32

# Constructor arguments shared by the text families.
_ENC = dict(
    vocabulary_size=VOCAB,
    num_layers=2,
    num_heads=2,
    hidden_dim=16,
    intermediate_dim=32,
    max_sequence_length=16,
)
_DEC = dict(vocabulary_size=VOCAB, num_layers=2, hidden_dim=16, intermediate_dim=32)
_GQA = dict(_DEC, num_query_heads=4, num_key_value_heads=2)


def _seeded(seed):
    keras.utils.set_random_seed(seed)
    return np.random.default_rng(seed)


def _tokens(rng, vocab=VOCAB, length=SEQUENCE, batch=BATCH):
    return rng.integers(1, vocab, size=(batch, length)).astype("int32")


def _padding_mask(length=SEQUENCE, batch=BATCH, dtype="int32"):
    """All ones, but the second sample ends with 2 padding positions."""
    mask = np.ones((batch, length), dtype="int32")
    if batch > 1:
        mask[1, -2:] = 0
    return mask.astype(dtype)


def _segments(length=SEQUENCE, batch=BATCH):
    seg = np.zeros((batch, length), dtype="int32")
    seg[:, length // 2 :] = 1
    return seg


def _images(rng, size=IMAGE, channels=3, batch=BATCH):
    shape = (batch, *size, channels) if isinstance(size, tuple) else None
    shape = shape or (batch, size, size, channels)
    return rng.uniform(0.0, 1.0, size=shape).astype("float32")


def _text_inputs(rng, vocab=VOCAB, segments=False, mask=True, prefix=""):
    out = {f"{prefix}token_ids": _tokens(rng, vocab)}
    if segments:
        out[f"{prefix}segment_ids"] = _segments()
    if mask:
        out[f"{prefix}padding_mask"] = _padding_mask()
    return out


# ------------------------------------------------- KerasHub backbones

_HUB = collections.OrderedDict()


def _hub(name):
    """Registers a KerasHub builder `fn(hub, rng) -> (backbone, inputs)`."""

    def register(fn):
        _HUB[name] = fn
        return fn

    return register


def _models():
    import keras_hub

    return keras_hub.models
