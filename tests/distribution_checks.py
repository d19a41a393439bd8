"""kprune under the distribution engines users already run.

Three scripts, each run in fresh processes by `tests/test_distribution.py`
(the first two) and `tests/test_multi_worker.py` (the third):

- `jax_main()`: `KERAS_BACKEND=jax` with 4 virtual CPU devices
  (`XLA_FLAGS=--xla_force_host_platform_device_count=4`). The same
  training runs on one device and under `keras.distribution.DataParallel`
  on the 4 devices, for every check of `TRAINING_CHECKS` (every kprune
  callback, the group constraints, `Distiller` and `Distillation`); each
  must give the same zero groups, masks and logged figures
  (`tests/distribution_asserts.py`). `kprune.transformers.prune`
  calibrates under `DataParallel` and must keep the same units. A model
  sharded with a `LayoutMap` (`ModelParallel`) is scored and slimmed.
  `KPRUNE_CHECKS` (comma-separated) runs only some of these.
- `layouts_main()`: the same 4 devices; pruning a layer sharded by a
  `LayoutMap` to a width its mesh axis does not divide raises kprune's
  error, and an even width is rebuilt sharded.
- `worker_main()`: one worker of a `tf.distribute.MultiWorkerMirroredStrategy`
  (its `TF_CONFIG` set by `run_workers`), with
  `kprune.multi_worker.patch_keras_multi_worker()` (Keras 3.15's `fit`
  fails under this strategy without it, with or without kprune; see
  docs/backends.md), running `"unpatched"`, the `TRAINING_CHECKS` and
  `"transformers"`. `reference()` computes the same on one device.

Each prints one line `RESULT <json>`.
"""

import json
import os
import time

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


def classes(y):
    """Three class labels from the regression targets of `data()`."""
    return np.argmax(y, axis=1).astype("int32")


def _kernels(keras, model):
    return {
        layer.name: keras.ops.convert_to_numpy(layer.kernel)
        for layer in model.layers
        if hasattr(layer, "kernel")
    }


def _floats(history, keys):
    return {key: [float(v) for v in history.history[key]] for key in keys}


# What `train` runs: each check's name, in the order the tests list them.
TRAINING_CHECKS = (
    "proximal",
    "magnitude",
    "constraint",
    "sparse_constraint",
    "penalty",
    "scheduler",
    "art",
    "distiller",
)


def train(keras, kprune, which, dataset=None, penalty=None):
    """One training run; returns its kernels, zero groups and masks.

    `which`: `"plain"` (no kprune object), `"proximal"` (`ProximalStep`),
    `"magnitude"` (`MagnitudePruning`), `"constraint"` (the
    `GroupSoftThreshold` constraints of `apply_group_sparsity(...,
    method="constraint")`, with `SizeTarget`), `"sparse_constraint"`
    (`SparseGroupSoftThreshold`: `alpha=0.5`), `"penalty"` (`GroupLasso`
    in penalty mode on layer `a`, and a second model with
    `MagnitudePenalty`: terms of the loss, which Keras scales per replica),
    `"scheduler"`
    (`RegularizationScheduler` per batch on `SparseGroupLasso`, with
    `ProximalStep` and `SparsityLogger`), `"art"` (`AdaptiveRegularization`
    with HyperSparse, on class labels) or `"distiller"` (`kprune.Distiller`,
    then `kprune.losses.Distillation` on `soft_targets`).

    `dataset(x, y)`: the training data (a `tf.data` pipeline for the
    multi-worker strategy); `None`: NumPy arrays, `batch_size=STEPS_BATCH`.
    `penalty`: `(name, strength)` of a regularizer on layer `a` (with
    `which="plain"`; `"penalty"` runs both).
    """
    if which == "art":
        return _train_art(keras, kprune, dataset)
    if which == "penalty":
        out = train(keras, kprune, "plain", dataset, ("GroupLasso", 0.05))
        other = train(keras, kprune, "plain", dataset, ("MagnitudePenalty", 3e-3))
        out["kernels"].update({"l1/" + k: v for k, v in other["kernels"].items()})
        out["penalties"] = [out.pop("penalty"), other.pop("penalty")]
        out["loss"] += other["loss"]
        return out
    if which == "distiller":
        return _train_distiller(keras, kprune, dataset)
    x, y = data()
    reg, callbacks = None, []
    if penalty:  # `which="plain"` with one regularizer on layer `a`
        name, strength = penalty
        if name == "GroupLasso":
            reg = kprune.regularizers.GroupLasso(strength)
        else:
            reg = kprune.regularizers.MagnitudePenalty(p=1, strength=strength)
    if which == "proximal":
        reg = kprune.regularizers.GroupLasso(0.5, mode="proximal")
        callbacks = [kprune.callbacks.ProximalStep(every_n_steps=2)]
    elif which == "magnitude":
        callbacks = [
            kprune.callbacks.MagnitudePruning(quality=0.7, cycles=2, epochs_per_cycle=1)
        ]
    model = mlp(keras, kprune, reg)
    if which == "constraint":
        model = kprune.sparsity.apply_group_sparsity(model, 0.2, method="constraint")
        callbacks = [kprune.callbacks.SizeTarget(params=0.6, every_n_steps=4)]
    if which == "sparse_constraint":
        model = kprune.sparsity.apply_group_sparsity(
            model, 0.3, alpha=0.5, method="constraint"
        )
    if which == "scheduler":
        model = kprune.sparsity.apply_group_sparsity(model, 0.1, alpha=0.5)
        callbacks = [
            # Steps 0-7: 0.3, 8-15: 0.6, ...: a staircase (on JAX, one
            # compilation per change).
            kprune.callbacks.RegularizationScheduler(
                lambda step: 0.3 * (1 + int(step) // 8), update_freq="batch"
            ),
            kprune.callbacks.ProximalStep(every_n_steps=2),
            kprune.callbacks.SparsityLogger(),
        ]
    model.compile(keras.optimizers.SGD(0.05), "mse")
    if dataset is None:
        kwargs = dict(x=x, y=y, batch_size=STEPS_BATCH, shuffle=False)
    else:
        kwargs = dict(x=dataset(x, y), shuffle=False)
    history = model.fit(epochs=3, verbose=0, callbacks=callbacks, **kwargs)
    kernels = _kernels(keras, model)
    out = {
        "kernels": {k: v.tolist() for k, v in kernels.items()},
        "zero_groups": np.flatnonzero(np.all(kernels["a"] == 0, axis=0)).tolist(),
        "loss": history.history["loss"],
    }
    if which == "magnitude":
        masks = kprune.pruning.get_masks(model)
        out["masks"] = {k: np.asarray(v).astype(int).tolist() for k, v in masks.items()}
        out["sparsity"] = history.history["sparsity"]
    if which == "constraint":
        for key in ("size_ratio", "reg_strength", "size_target_reached"):
            out[key] = history.history[key]
    if penalty:
        out["penalty"] = float(keras.ops.convert_to_numpy(sum(model.losses)))
    if which == "scheduler":
        keys = ("reg_strength", "prox_zero_groups", "live_units", "live_units/a")
        keys += ("group_sparsity", "group_sparsity/a", "weight_sparsity")
        out["logs"] = _floats(history, keys)
    if dataset is not None and which == "proximal":
        out["evaluate"] = float(model.evaluate(kwargs["x"], verbose=0))
    return out


def _train_art(keras, kprune, dataset):
    """`AdaptiveRegularization` (HyperSparse): 1 ART epoch, then fine-tuning.

    `eval_data` is NumPy `(x, labels)` on every engine: `evaluate` inside
    `fit` distributes it as `fit` does its own data.
    """
    x, y = data()
    labels = classes(y)
    model = mlp(keras, kprune)
    model.compile(
        keras.optimizers.SGD(0.05, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    art = kprune.callbacks.AdaptiveRegularization(
        0.8,
        eval_data=(x, labels),
        initial_strength=1e-3,
        growth=2.0,
        max_art_epochs=1,
        refresh_every=3,
        eval_batch_size=64,
    )
    if dataset is None:
        kwargs = dict(x=x, y=labels, batch_size=STEPS_BATCH, shuffle=False)
    else:
        kwargs = dict(x=dataset(x, labels), shuffle=False)
    history = model.fit(epochs=2, verbose=0, callbacks=[art], **kwargs)
    kernels = _kernels(keras, model)
    masks = kprune.pruning.get_masks(model)
    keys = ("art_phase", "art_lambda", "art_pruned_accuracy", "art_dense_accuracy")
    keys += ("art_best_epoch", "hs_scale", "sparsity", "accuracy", "loss")
    return {
        "kernels": {k: v.tolist() for k, v in kernels.items()},
        "zero_groups": np.flatnonzero(np.all(kernels["a"] == 0, axis=0)).tolist(),
        "loss": history.history["loss"],
        "masks": {k: np.asarray(v).astype(int).tolist() for k, v in masks.items()},
        "logs": _floats(history, keys),
    }


def _train_distiller(keras, kprune, dataset):
    """`kprune.Distiller` (`alpha=0.5`, a feature term), then a student
    compiled with `kprune.losses.Distillation` on `soft_targets`."""
    x, y = data()
    rng = np.random.default_rng(3)

    def net(width, seed):
        inputs = keras.Input((8,))
        hidden = keras.layers.Dense(width, activation="relu", name="a")(inputs)
        features = keras.layers.Dense(4, name="f")(hidden)
        logits = keras.layers.Dense(3, name="b")(hidden)
        model = keras.Model(inputs, [logits, features])
        rng = np.random.default_rng(seed)
        for weight in model.weights:
            weight.assign(rng.normal(0, 0.4, tuple(weight.shape)).astype("float32"))
        return model

    teacher, student = net(16, 1), net(6, 2)
    distiller = kprune.Distiller(
        student, teacher, temperature=2.0, alpha=0.5, feature_weight=0.5
    )
    distiller.compile(keras.optimizers.SGD(0.05), "mse")
    if dataset is None:
        kwargs = dict(x=x, y=y, batch_size=STEPS_BATCH, shuffle=False)
    else:
        kwargs = dict(x=dataset(x, y), shuffle=False)
    history = distiller.fit(epochs=2, verbose=0, **kwargs)
    out = {
        "kernels": {k: v.tolist() for k, v in _kernels(keras, student).items()},
        "zero_groups": [],
        "loss": history.history["loss"],
    }
    # The same student shape, trained on packed [label, teacher logits].
    logits = keras.Model(teacher.inputs, teacher.outputs[0])
    packed = kprune.losses.soft_targets(logits, x, classes(y), batch_size=32)
    small = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(6, activation="relu", name="a"),
            keras.layers.Dense(3, name="b"),
        ]
    )
    for weight in small.weights:
        weight.assign(rng.normal(0, 0.4, tuple(weight.shape)).astype("float32"))
    small.compile(
        keras.optimizers.SGD(0.05),
        kprune.losses.Distillation(temperature=2.0, alpha=0.5),
    )
    if dataset is None:
        kwargs = dict(x=x, y=packed, batch_size=STEPS_BATCH, shuffle=False)
    else:
        kwargs = dict(x=dataset(x, packed), shuffle=False)
    loss = small.fit(epochs=1, verbose=0, **kwargs).history["loss"]
    out["soft_targets"] = packed.tolist()
    out["distillation"] = {
        "kernels": {k: v.tolist() for k, v in _kernels(keras, small).items()},
        "zero_groups": [],
        "loss": loss,
    }
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
    checks = os.environ.get("KPRUNE_CHECKS")
    checks = checks.split(",") if checks else TRAINING_CHECKS + ("transformers",)
    out["seconds"] = {}
    for which in TRAINING_CHECKS:
        if which not in checks:
            continue
        started = time.monotonic()
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
        out["seconds"][which] = time.monotonic() - started
    if "transformers" in checks:
        started = time.monotonic()
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
        out["seconds"]["transformers"] = time.monotonic() - started
    print("RESULT " + json.dumps(out))


def tf_dataset(x, y):
    """`(x, y)` in batches of `STEPS_BATCH`, sharded by data between workers."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(STEPS_BATCH)
    options = tf.data.Options()
    policy = tf.data.experimental.AutoShardPolicy.DATA
    options.experimental_distribute.auto_shard_policy = policy
    return ds.with_options(options)


# What `worker_main` runs by default, in this order.
WORKER_CHECKS = ("unpatched",) + TRAINING_CHECKS + ("transformers",)


def _error(fn):
    """`"Type: message"` (its first line) of what `fn()` raises, else None."""
    try:
        fn()
    except Exception as error:  # noqa: BLE001 - reported, checked by the test
        return f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
    return None


def reference(keras, kprune, checks=WORKER_CHECKS):
    """What `worker_main` computes, on one device with Keras unpatched."""
    out = {}
    for check in checks:
        if check == "transformers":
            out[check] = _transformers(keras, kprune)
        elif check != "unpatched":
            out[check] = train(keras, kprune, check, tf_dataset)
    return out


def _unpatched(keras, kprune, strategy):
    """How a plain `fit` (no kprune object) fails without the patch, and
    with only its first half (the symbolic build)."""
    from keras.src.backend.tensorflow import trainer

    import kprune.multi_worker as multi_worker

    def fit():
        with strategy.scope():
            train(keras, kprune, "plain", tf_dataset)

    out = {"keras": _error(fit)}
    keras_build = trainer.TensorFlowTrainer.__dict__["_maybe_symbolic_build"]
    trainer.TensorFlowTrainer._maybe_symbolic_build = (
        multi_worker._maybe_symbolic_build(trainer, keras_build)
    )
    try:
        out["build_patched"] = _error(fit)
    finally:
        trainer.TensorFlowTrainer._maybe_symbolic_build = keras_build
    return out


def free_ports(n):
    """`n` distinct free TCP ports on the loopback interface."""
    import socket

    sockets = []
    try:
        for _ in range(n):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def run_workers(script, workers=2, env=None, timeout=120):
    """Run `script` in `workers` local processes, a `TF_CONFIG` cluster.

    Each process gets `TF_CONFIG` naming every worker (`127.0.0.1` and a
    free port each) and its own index, no GPU, and kprune's checkout first
    on `PYTHONPATH`; each prints one line `RESULT <json>`.

    Returns:
        `(results, seconds)`: each worker's decoded JSON, in worker order,
        and the wall time of the whole run.

    Raises:
        AssertionError: with the end of each worker's output, if one fails,
            prints no `RESULT` line or runs past `timeout` seconds.
    """
    import subprocess
    import sys

    import kprune

    root = os.path.dirname(os.path.dirname(os.path.abspath(kprune.__file__)))
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(workers)]}
    procs = []
    start = time.monotonic()
    for index in range(workers):
        task = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        full_env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=path)
        full_env.update(env or {}, TF_CONFIG=json.dumps(task))
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", script],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=full_env,
            )
        )
    outputs = []
    try:
        for proc in procs:
            left = max(timeout - (time.monotonic() - start), 1)
            outputs.append(proc.communicate(timeout=left))
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        for proc in procs[len(outputs) :]:
            outputs.append(proc.communicate())
        outputs = [("", "(killed: past the timeout)\n" + e) for _, e in outputs]
    seconds = time.monotonic() - start
    results, failures = [], []
    for index, (proc, (stdout, stderr)) in enumerate(zip(procs, outputs)):
        lines = [x for x in stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode != 0 or len(lines) != 1:
            failures.append(
                f"worker {index} (rc={proc.returncode}, {len(lines)} RESULT "
                f"lines):\n{stdout[-1500:]}\n{stderr[-3000:]}"
            )
        else:
            results.append(json.loads(lines[0][len("RESULT ") :]))
    if failures:
        raise AssertionError(
            f"{len(failures)} of {workers} workers failed after {seconds:.0f} s:\n"
            + "\n".join(failures)
        )
    return results, seconds


def worker_main():
    """One worker of a `tf.distribute.MultiWorkerMirroredStrategy`.

    `TF_CONFIG` (set by the caller) names the cluster and this worker; with
    it unset, the same runs with no strategy (the single-device
    reference). `KPRUNE_CHECKS` (comma-separated, default `WORKER_CHECKS`)
    chooses what runs: `unpatched` (how `fit` fails without
    `kprune.multi_worker.patch_keras_multi_worker()`), `plain` (a `fit` with
    no kprune object), `proximal`, `magnitude`, `constraint` (see `train`)
    and `transformers` (`kprune.transformers.prune` calibrating in the
    strategy's scope). All but `unpatched` run with the patch applied, or
    without it with `KPRUNE_PATCH=0` (e.g. `KPRUNE_CHECKS=plain
    KPRUNE_PATCH=0` reproduces Keras' failure without kprune).
    """
    import contextlib

    started = time.monotonic()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    strategy = tf.distribute.MultiWorkerMirroredStrategy() if config else None
    import keras

    import kprune
    from kprune.multi_worker import patch_keras_multi_worker

    keras.config.disable_traceback_filtering()
    out = {
        "replicas": strategy.num_replicas_in_sync if strategy else 1,
        "workers": len(config.get("cluster", {}).get("worker", [])),
    }
    out["seconds"] = {"start": time.monotonic() - started}
    checks = os.environ.get("KPRUNE_CHECKS") or ",".join(WORKER_CHECKS)
    for check in checks.split(","):
        started = time.monotonic()
        if check == "unpatched":
            if strategy is not None:
                out[check] = _unpatched(keras, kprune, strategy)
            out["seconds"][check] = time.monotonic() - started
            continue
        with contextlib.ExitStack() as stack:
            if os.environ.get("KPRUNE_PATCH", "1") == "1":
                stack.enter_context(patch_keras_multi_worker())
            if strategy is not None:
                stack.enter_context(strategy.scope())
            if check == "transformers":
                out[check] = _transformers(keras, kprune)
            else:
                out[check] = train(keras, kprune, check, tf_dataset)
        out["seconds"][check] = time.monotonic() - started
    print("RESULT " + json.dumps(out))
