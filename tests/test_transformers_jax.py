"""kprune.transformers and kprune.Distiller on Keras 3's JAX backend.

One fresh process runs with `KERAS_BACKEND=jax` (the backend is fixed when
Keras is first imported), makes the calls of the issue-18 benchmarks on tiny
KerasHub models (prune a backbone and a task model, fit a Distiller, rank
blocks with block_redundancy and replace one with replace_blocks) and
prints one JSON line that the tests below check.
"""

import importlib.util

import pytest

import kprune

if (
    importlib.util.find_spec("jax") is None
    or importlib.util.find_spec("keras_hub") is None
):
    pytest.skip("jax and keras_hub are needed", allow_module_level=True)

SCRIPT = r"""
import json
import numpy as np
import keras, keras_hub
import kprune
from tests.transformer_models import backbone, inputs, outputs

out = {"backend": keras.backend.backend()}
model = backbone("GPT2Backbone")
x = inputs(model, n=16)
same = kprune.transformers.prune(model, x)
out["identity"] = float(np.abs(outputs(same, x) - outputs(model, x)).max())
small = kprune.transformers.prune(model, x, ffn=0.5, heads=0.5, hidden=0.5, layers=1)
out["small"] = [type(small).__name__, small.hidden_dim, small.num_layers,
                list(outputs(small, x).shape)]
out["wrappers_left"] = [layer.name for layer in model._flatten_layers()
                        if "call" in layer.__dict__]
teacher = keras_hub.models.GPT2CausalLM(backbone=model, preprocessor=None)
student = keras_hub.models.GPT2CausalLM(backbone=small, preprocessor=None)
before = [keras.ops.convert_to_numpy(w).copy() for w in teacher.weights]
distiller = kprune.Distiller(student, teacher)
distiller.compile(keras.optimizers.Adam(1e-2))
y = x["token_ids"]
history = distiller.fit(x, y, sample_weight=x["padding_mask"], batch_size=8,
                        epochs=3, verbose=0)
out["losses"] = [float(v) for v in history.history["loss"]]
out["teacher_unchanged"] = all(
    np.array_equal(keras.ops.convert_to_numpy(w), b)
    for w, b in zip(teacher.weights, before))
# A task model in, the same task class out (its head sliced with the backbone).
small_lm = kprune.transformers.prune(teacher, x, ffn=0.5, layers=1)
out["small_lm"] = [type(small_lm).__name__, small_lm.backbone.num_layers,
                   list(keras.ops.shape(small_lm.predict(x, verbose=0)))]
# Seed 004 on a KerasHub backbone: block 1 made an identity map is found
# linear and replaced by a fitted Dense with the same outputs.
deep = backbone("GPT2Backbone", num_layers=3)
for w in deep.transformer_layers[1].weights:
    if w.path.endswith(("attention_output/kernel", "output_dense/kernel",
                        "attention_output/bias", "output_dense/bias")):
        w.assign(np.zeros(w.shape))
report = kprune.transformers.block_redundancy(deep, x)
out["r2"] = [float(r["r2"]) for r in report]
linear = kprune.transformers.replace_blocks(deep, [1], x)
out["linear_diff"] = float(np.abs(outputs(linear, x) - outputs(deep, x)).max())
out["linear_layers"] = [layer.name for layer in linear.layers]
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def result():
    return kprune.testing.run_script(
        SCRIPT, env={"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}, timeout=600
    )


def test_prune_on_jax(result):
    assert result["backend"] == "jax"
    assert result["identity"] == 0.0
    assert result["small"] == ["GPT2Backbone", 8, 1, [16, 8, 8]]
    assert result["wrappers_left"] == []


def test_task_model_and_linear_blocks_on_jax(result):
    assert result["small_lm"] == ["GPT2CausalLM", 1, [16, 8, 50]]
    assert result["r2"][1] > 1 - 1e-6
    assert result["linear_diff"] < 1e-4
    assert "linear_transformer_layer_1" in result["linear_layers"]
    assert "transformer_layer_1" not in result["linear_layers"]


def test_distiller_on_jax(result):
    losses = result["losses"]
    assert losses[-1] < losses[0]
    assert result["teacher_unchanged"]
