"""kprune's model-level pieces on one Keras backend, as one JSON result.

`tests/test_backends_surgery.py` runs `run()` in a fresh process per
backend (`KERAS_BACKEND=jax`, `torch`: the backend is fixed when Keras is
first imported) and compares what it reports with the same checks run on
TensorFlow in the test process. Every model gets its weights from NumPy
(`numpy_weights`), so the three backends start from identical numbers.

Covered: `surgery.slim` (a small CNN, a residual model with every merge
layer, a tiny KerasHub GPT-2 backbone), criteria scores (CAR, L1, mean
activation), `report.summary`, a `ProximalStep` fit followed by `slim`, and
`kprune.transformers.prune` on the GPT-2 backbone. With `save_dir`, the
trained and slimmed model is saved as `.keras` with its outputs, for the
TFLite export route (`kprune export` in a TensorFlow process).
"""

import json
import os
import sys

import keras
import numpy as np

from tests import surgery_models as models


def numpy_weights(model, seed):
    """Set every weight of `model` from a seeded NumPy generator, then plant
    dead units (`surgery_models.randomize`)."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        shape = tuple(weight.shape)
        if "variance" in weight.name:
            value = rng.uniform(0.5, 2.0, shape)
        else:
            value = rng.normal(0.0, 0.3, shape)
        weight.assign(value.astype(weight.dtype))
    models.randomize(model, rng)
    return model


def _numpy(value):
    return keras.ops.convert_to_numpy(value)


def _max_diff(a, b):
    pairs = zip(keras.tree.flatten(a), keras.tree.flatten(b))
    return max(float(np.max(np.abs(_numpy(p) - _numpy(q)))) for p, q in pairs)


def _scale(a):
    return max(float(np.max(np.abs(_numpy(p)))) for p in keras.tree.flatten(a))


def slim_checks():
    """Slim two small models and a GPT-2 backbone; outputs must not change."""
    import kprune
    from kprune.testing import zoo

    out = {}
    rng = np.random.default_rng(3)
    for seed, name in enumerate(("cnn_flatten", "residual")):
        model = numpy_weights(getattr(models, name)(), seed)
        x = models.sample_inputs(model, rng, batch=4)
        small = kprune.surgery.slim(model)
        out[name] = {
            "params": [model.count_params(), small.count_params()],
            "diff": _max_diff(model(x), small(x)) / _scale(model(x)),
        }
    backbone, x = zoo.keras_hub_backbones()["gpt2"]()
    dead, _ = zoo.zero_units(backbone, fraction=0.3, seed=0)
    small = kprune.surgery.slim(dead)
    out["gpt2"] = {
        "params": [dead.count_params(), small.count_params()],
        "diff": _max_diff(dead(x), small(x)) / _scale(dead(x)),
        "class": type(small).__name__,
    }
    return out


def criteria_model():
    """The CNN, its inputs and labels, identical on every backend."""
    model = numpy_weights(models.cnn_flatten(), 7)
    rng = np.random.default_rng(11)
    x = rng.normal(size=(32, 12, 12, 3)).astype("float32")
    y = np.argmax(_numpy(model(x)), axis=-1)
    y[:8] = rng.integers(0, 4, 8)  # not every prediction is right
    return model, x, y


def criteria_checks():
    """CAR, L1 and mean-activation scores of the CNN's layer `c2`."""
    import kprune

    model, x, y = criteria_model()
    crit = kprune.criteria
    metric = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    car = crit.car_scores(model, "c2", x, y, metric=metric)
    return {
        "car": np.asarray(car).tolist(),
        "l1": np.asarray(crit.l1_scores(model, "c2")).tolist(),
        "activation": np.asarray(crit.mean_activation_scores(model, "c2", x)).tolist(),
    }


def prune_checks():
    """`kprune.prune` of the CNN to half its MACs, per importance."""
    import kprune

    model, x, y = criteria_model()
    out = {}
    for importance in ("l2", "activation", "taylor"):
        small, plan = kprune.prune(model, (x, y), macs=0.5, importance=importance)
        out[importance] = {
            "units": {k: sorted(v) for k, v in plan.units.items()},
            "macs_ratio": plan.report["macs_ratio"],
            "widths": [
                int(layer.filters if hasattr(layer, "filters") else layer.units)
                for layer in small.layers
                if hasattr(layer, "filters") or hasattr(layer, "units")
            ],
            "runs": bool(np.all(np.isfinite(_numpy(small(x))))),
        }
    return out


def report_checks():
    """`report.summary` of the residual model (JSON-able part)."""
    import kprune

    summary = kprune.report.summary(numpy_weights(models.residual(), 1))
    keep = ("params", "nonzero_params", "macs")
    return {
        "totals": {k: summary[k] for k in keep},
        "widths": [row["width"] for row in summary["layers"]],
    }


def callback_checks(save_dir=None):
    """Train with group lasso + `ProximalStep`, then slim the result."""
    import kprune

    rng = np.random.default_rng(5)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = (x[:, :2] @ rng.normal(size=(2, 3))).astype("float32")
    reg = kprune.regularizers.GroupLasso(2.0, mode="proximal")
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16, activation="relu", name="a", kernel_regularizer=reg),
            keras.layers.Dense(3, name="b"),
        ]
    )
    for weight in model.weights:
        weight.assign(rng.normal(0, 0.4, tuple(weight.shape)).astype("float32"))
    model.compile(keras.optimizers.SGD(0.05), "mse")
    history = model.fit(
        x,
        y,
        batch_size=16,
        epochs=3,
        verbose=0,
        shuffle=False,
        callbacks=[kprune.callbacks.ProximalStep(every_n_steps=2)],
    )
    kernel = _numpy(model.get_layer("a").kernel)
    zero = np.all(kernel == 0, axis=0)
    small = kprune.surgery.slim(model)
    out = {
        "zero_groups": np.flatnonzero(zero).tolist(),
        "logged": history.history["prox_zero_groups"],
        "loss": history.history["loss"],
        "slim_width": int(small.get_layer("a").units),
        "slim_diff": _max_diff(model(x), small(x)),
    }
    if save_dir:
        small.save(os.path.join(save_dir, "small.keras"))
        np.save(os.path.join(save_dir, "x.npy"), x[:8])
        np.save(os.path.join(save_dir, "y.npy"), _numpy(small(x[:8])))
    return out


def transformer_checks():
    """`kprune.transformers.prune` on a tiny GPT-2 backbone."""
    import kprune
    from tests.transformer_models import backbone, inputs, outputs

    model = backbone("GPT2Backbone")
    x = inputs(model, n=4)
    same = kprune.transformers.prune(model, x)
    small = kprune.transformers.prune(
        model, x, ffn=0.5, heads=0.5, hidden=0.5, layers=1
    )
    return {
        "identity": float(np.abs(outputs(same, x) - outputs(model, x)).max()),
        "small": [
            type(small).__name__,
            small.hidden_dim,
            small.num_layers,
            list(outputs(small, x).shape),
        ],
    }


def run(save_dir=None):
    """All checks on the current backend, as a JSON-able dict."""
    import kprune  # noqa: F401  (registers kprune's objects)

    out = {"backend": keras.backend.backend()}
    out["tf_after_import"] = "tensorflow" in sys.modules
    out["slim"] = slim_checks()
    out["criteria"] = criteria_checks()
    out["report"] = report_checks()
    out["prune"] = prune_checks()
    out["callback"] = callback_checks(save_dir)
    out["transformers"] = transformer_checks()
    out["to_tflite"] = to_tflite_check()
    return out


def to_tflite_check():
    """The error `to_tflite` gives outside TensorFlow (None on TensorFlow)."""
    import kprune

    if keras.backend.backend() == "tensorflow":
        return None
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    try:
        kprune.export.to_tflite(model, "never.tflite")
    except RuntimeError as error:
        return str(error)
    return "no error"


if __name__ == "__main__":
    print("RESULT " + json.dumps(run(*sys.argv[1:2])))
