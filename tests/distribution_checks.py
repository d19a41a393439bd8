"""kprune under the distribution engines users already run.

Three scripts, each run in fresh processes by
`tests/test_distribution.py` (the first two):

- `jax_main()`: `KERAS_BACKEND=jax` with 4 virtual CPU devices
  (`XLA_FLAGS=--xla_force_host_platform_device_count=4`). The same
  training runs on one device and under `keras.distribution.DataParallel`
  on the 4 devices; `ProximalStep` and `MagnitudePruning` must give the
  same zero groups and masks. `kprune.transformers.prune` calibrates under
  `DataParallel` and must keep the same units. A model sharded with a
  `LayoutMap` (`ModelParallel`) is scored and slimmed.
- `layouts_main()`: the same 4 devices; pruning a layer sharded by a
  `LayoutMap` to a width its mesh axis does not divide raises kprune's
  error, and an even width is rebuilt sharded.
- `worker_main()`: one worker of a `tf.distribute.MultiWorkerMirroredStrategy`
  (its `TF_CONFIG` set by the caller); with `TF_CONFIG` unset it is the
  single-device reference. Not run by the tests: with Keras 3.15 and
  TensorFlow 2.21, `model.fit` itself fails under this strategy, with or
  without kprune (tensorflow/tensorflow#72388, see docs/backends.md).
  `KPRUNE_WHICH=plain` reproduces that without kprune.

Each prints one line `RESULT <json>`.
"""

import json
import os

import numpy as np

# The environment of a JAX process with 4 virtual CPU devices.
JAX_FOUR_DEVICES = {
    "KERAS_BACKEND": "jax",
    "JAX_PLATFORMS": "cpu",
    "XLA_FLAGS": "--xla_force_host_platform_device_count=4 "
    "--xla_backend_optimization_level=0",
}


STEPS_BATCH = 16  # global batch size


def data(seed=5, n=128):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype("float32")
    y = (x[:, :2] @ rng.normal(size=(2, 3))).astype("float32")
    return x, y


def mlp(keras, kprune, reg=None):
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16, activation="relu", name="a", kernel_regularizer=reg),
            keras.layers.Dense(3, name="b"),
        ]
    )
    rng = np.random.default_rng(1)
    for weight in model.weights:
        weight.assign(rng.normal(0, 0.4, tuple(weight.shape)).astype("float32"))
    return model


def train(keras, kprune, which, dataset=None):
    """One training run; returns its kernels, zero groups and masks."""
    x, y = data()
    if which == "proximal":
        reg = kprune.regularizers.GroupLasso(0.5, mode="proximal")
        callback = kprune.callbacks.ProximalStep(every_n_steps=2)
    elif which == "plain":
        reg = None
        callback = keras.callbacks.History()
    else:
        reg = None
        callback = kprune.callbacks.MagnitudePruning(
            quality=0.7, cycles=2, epochs_per_cycle=1
        )
    model = mlp(keras, kprune, reg)
    model.compile(keras.optimizers.SGD(0.05), "mse")
    if dataset is None:
        kwargs = dict(x=x, y=y, batch_size=STEPS_BATCH, shuffle=False)
    else:
        kwargs = dict(x=dataset(x, y))
    history = model.fit(epochs=3, verbose=0, callbacks=[callback], **kwargs)
    kernels = {
        layer.name: keras.ops.convert_to_numpy(layer.kernel) for layer in model.layers
    }
    out = {
        "kernels": {k: v.tolist() for k, v in kernels.items()},
        "zero_groups": np.flatnonzero(np.all(kernels["a"] == 0, axis=0)).tolist(),
        "loss": history.history["loss"],
    }
    if which == "magnitude":
        masks = kprune.pruning.get_masks(model)
        out["masks"] = {k: np.asarray(v).astype(int).tolist() for k, v in masks.items()}
        out["sparsity"] = history.history["sparsity"]
    return out


def _transformers(keras, kprune):
    from tests.transformer_models import backbone, inputs

    model = backbone("GPT2Backbone")
    rng = np.random.default_rng(2)  # the same weights on every call
    for weight in model.weights:
        shape = tuple(weight.shape)
        weight.assign(rng.normal(0, 0.3, shape).astype(weight.dtype) + 0.5)
    x = inputs(model, n=8)
    small = kprune.transformers.prune(model, x, ffn=0.5, heads=0.5, hidden=0.5)
    return [keras.ops.convert_to_numpy(w).tolist() for w in small.weights[:6]]


def _model_parallel(keras, kprune, devices):
    """Score and slim an MLP whose kernels are sharded over a 'model' axis."""
    mesh = keras.distribution.DeviceMesh((2, 2), ["batch", "model"], devices)
    layout_map = keras.distribution.LayoutMap(mesh)
    layout_map[".*a/kernel"] = (None, "model")
    layout_map[".*a/bias"] = ("model",)
    layout_map[".*b/kernel"] = ("model", None)
    out = {}
    x, y = data()
    try:
        keras.distribution.set_distribution(
            keras.distribution.ModelParallel(
                layout_map=layout_map, batch_dim_name="batch"
            )
        )
        model = mlp(keras, kprune)
        kernel = model.get_layer("a").kernel
        out["sharding"] = str(getattr(kernel.value, "sharding", None))
        value = keras.ops.convert_to_numpy(kernel).copy()
        value[:, [1, 5]] = 0.0  # two dead units (their bias too)
        kernel.assign(value)
        bias = keras.ops.convert_to_numpy(model.get_layer("a").bias).copy()
        bias[[1, 5]] = 0.0
        model.get_layer("a").bias.assign(bias)
        out["l1"] = np.asarray(kprune.criteria.l1_scores(model, "a")).tolist()
        out["car"] = np.asarray(
            kprune.criteria.car_scores(model, "a", x[:32], y[:32], metric="mse")
        ).tolist()
        small = kprune.surgery.slim(model)
        out["slim_width"] = int(small.get_layer("a").units)
        out["slim_diff"] = float(
            np.abs(
                keras.ops.convert_to_numpy(model(x))
                - keras.ops.convert_to_numpy(small(x))
            ).max()
        )
        out["slim_sharding"] = str(
            getattr(small.get_layer("a").kernel.value, "sharding", None)
        )
        small.compile(keras.optimizers.SGD(0.01), "mse")
        small.fit(x, y, batch_size=STEPS_BATCH, epochs=1, verbose=0)
        out["fit_after_slim"] = True
        # An odd width cannot be split over the 2-way 'model' axis.
        try:
            odd = kprune.surgery.remove_units(small, {"a": [0]})
            out["odd_sharding"] = str(odd.get_layer("a").kernel.value.sharding)
        except Exception as error:  # noqa: BLE001 - reported
            out["odd_error"] = f"{type(error).__name__}: {error}"[:300]
    except Exception as error:  # noqa: BLE001 - reported, checked by the test
        out["error"] = f"{type(error).__name__}: {error}"[:500]
    finally:
        keras.distribution.set_distribution(None)
    return out


def layouts_main():
    """A width the 'model' mesh axis does not divide: a kprune error.

    Two layouts on a 2 x 2 mesh: layer `a`'s kernel sharded by its units,
    and only layer `b`'s kernel sharded by its input rows (so that the
    error comes from the consumer of the pruned layer).
    """
    import keras

    import kprune

    devices = keras.distribution.list_devices("cpu")
    out = {"devices": len(devices)}
    x, _ = data()
    for name, patterns in {
        "units": {".*a/kernel": (None, "model"), ".*a/bias": ("model",)},
        "rows": {".*b/kernel": ("model", None)},
    }.items():
        mesh = keras.distribution.DeviceMesh((2, 2), ["batch", "model"], devices)
        layout_map = keras.distribution.LayoutMap(mesh)
        for pattern, axes in patterns.items():
            layout_map[pattern] = axes
        keras.distribution.set_distribution(
            keras.distribution.ModelParallel(
                layout_map=layout_map, batch_dim_name="batch"
            )
        )
        try:
            model = mlp(keras, kprune)
            result = {}
            try:
                kprune.surgery.remove_units(model, {"a": [3]})
            except Exception as error:  # noqa: BLE001 - checked by the test
                result["odd_error"] = [type(error).__name__, str(error)]
            even = kprune.surgery.remove_units(model, {"a": [3, 4]})
            result["even_width"] = int(even.get_layer("a").units)
            sharded = "b" if name == "rows" else "a"
            result["even_sharding"] = str(
                even.get_layer(sharded).kernel.value.sharding.spec
            )
            kept = [i for i in range(16) if i not in (3, 4)]
            want = keras.ops.convert_to_numpy(model.get_layer("a")(x))[:, kept]
            got = keras.ops.convert_to_numpy(even.get_layer("a")(x))
            result["even_diff"] = float(np.abs(want - got).max())
            out[name] = result
        finally:
            keras.distribution.set_distribution(None)
    print("RESULT " + json.dumps(out))


def jax_main():
    import keras

    import kprune

    devices = keras.distribution.list_devices("cpu")
    out = {"backend": keras.backend.backend(), "devices": len(devices)}
    for which in ("proximal", "magnitude"):
        keras.distribution.set_distribution(None)
        single = train(keras, kprune, which)
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=devices)
        )
        try:
            parallel = train(keras, kprune, which)
        finally:
            keras.distribution.set_distribution(None)
        out[which] = {"single": single, "parallel": parallel}
    single = _transformers(keras, kprune)
    keras.distribution.set_distribution(
        keras.distribution.DataParallel(devices=devices)
    )
    try:
        parallel = _transformers(keras, kprune)
    finally:
        keras.distribution.set_distribution(None)
    out["transformers"] = {"single": single, "parallel": parallel}
    out["model_parallel"] = _model_parallel(keras, kprune, devices)
    print("RESULT " + json.dumps(out))


def worker_main():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    strategy = tf.distribute.MultiWorkerMirroredStrategy() if config else None
    import keras

    import kprune

    def dataset(x, y):
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(STEPS_BATCH)
        options = tf.data.Options()
        policy = tf.data.experimental.AutoShardPolicy.DATA
        options.experimental_distribute.auto_shard_policy = policy
        return ds.with_options(options)

    out = {"replicas": strategy.num_replicas_in_sync if strategy else 1}
    keras.config.disable_traceback_filtering()
    for which in os.environ.get("KPRUNE_WHICH", "proximal,magnitude").split(","):
        if strategy is None:
            out[which] = train(keras, kprune, which, dataset)
        else:
            with strategy.scope():
                out[which] = train(keras, kprune, which, dataset)
    print("RESULT " + json.dumps(out))
