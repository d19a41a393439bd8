"""kprune.transformers and kprune.Distiller on Keras 3's JAX backend.

One fresh process runs with `KERAS_BACKEND=jax` (the backend is fixed when
Keras is first imported), prunes tiny KerasHub backbones, fits a Distiller
and prints one JSON line that the tests below check.
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


def test_distiller_on_jax(result):
    losses = result["losses"]
    assert losses[-1] < losses[0]
    assert result["teacher_unchanged"]
