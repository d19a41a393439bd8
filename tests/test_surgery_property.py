"""Property-based tests: random Functional graphs, random zeros, random plans.

Set KPRUNE_HYPOTHESIS_EXAMPLES to run more examples than CI does.
"""

import os

import keras
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kprune
from tests import surgery_models as models

L = keras.layers
OPS = ["conv", "bn_relu", "add", "concat", "depthwise", "separable", "se", "pool"]


def build_random_graph(data):
    inputs = keras.Input((6, 6, 3))
    tensors = [L.Conv2D(data.draw(st.integers(2, 6)), 1)(inputs)]
    for _ in range(data.draw(st.integers(2, 7), label="ops")):
        op = data.draw(st.sampled_from(OPS), label="op")
        src = tensors[data.draw(st.integers(0, len(tensors) - 1), label="src")]
        other = tensors[data.draw(st.integers(0, len(tensors) - 1), label="other")]
        channels = src.shape[-1]
        if op == "conv":
            kernel = data.draw(st.sampled_from([1, 3]), label="kernel")
            out = L.Conv2D(data.draw(st.integers(2, 6)), kernel, padding="same")(src)
        elif op == "bn_relu":
            out = L.ReLU()(L.BatchNormalization()(src))
        elif op == "add":
            out = L.Add()([src, L.Conv2D(channels, 1)(other)])
        elif op == "concat":
            out = L.Concatenate()([src, other])
        elif op == "depthwise":
            out = L.DepthwiseConv2D(3, padding="same")(src)
        elif op == "separable":
            out = L.SeparableConv2D(data.draw(st.integers(2, 6)), 3, padding="same")(
                src
            )
        elif op == "se":
            gate = L.GlobalAveragePooling2D(keepdims=True)(src)
            gate = L.Conv2D(2, 1, activation="relu")(gate)
            gate = L.Conv2D(channels, 1, activation="sigmoid")(gate)
            out = L.Multiply()([src, gate])
        else:
            out = L.MaxPooling2D(3, strides=1, padding="same")(src)
        tensors.append(out)
    head = (
        L.Flatten()
        if data.draw(st.booleans(), label="flatten")
        else (L.GlobalAveragePooling2D())
    )
    outputs = L.Dense(3)(head(tensors[-1]))
    return keras.Model(inputs, outputs)


@settings(
    max_examples=int(os.environ.get("KPRUNE_HYPOTHESIS_EXAMPLES", "12")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data(), seed=st.integers(0, 2**16))
def test_random_graphs(data, seed):
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_random_graph(data)
    models.randomize(model, rng, zero_fraction=0.4, zero_rows_fraction=0.2)
    x = rng.normal(size=(2, 6, 6, 3)).astype("float32")

    # Dead removals keep the outputs exact.
    small = kprune.surgery.slim(model)
    kprune.testing.assert_same_outputs(model, small, x, rtol=1e-5)
    assert small.count_params() <= model.count_params()

    # Random removals keep the model runnable with the same output shape.
    analysis = kprune.surgery.ChannelAnalysis(model)
    producers = kprune.surgery.plan.producer_nodes(analysis)
    path = data.draw(st.sampled_from(sorted(producers)), label="layer")
    tensor = producers[path].outputs[0]
    groups = analysis.values(analysis.component, tensor)
    free = np.flatnonzero(~analysis.pinned[groups])
    if len(free) < 2:
        return
    count = data.draw(st.integers(1, len(free) - 1), label="count")
    plan = {path: rng.choice(free, count, replace=False)}
    try:
        pruned = kprune.surgery.remove_units(model, plan)
    except kprune.surgery.SurgeryError as error:
        # Coupling can empty another layer; that must be a clear error.
        assert "no units at all" in str(error)
        return
    assert pruned(x).shape == model(x).shape
    assert pruned.count_params() < model.count_params()
