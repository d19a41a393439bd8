"""Group sparsity (Alvarez & Salzmann 2016) on full MNIST: how small, how good?

For LeNet-300-100 (784-300-100-10) and LeNet-5 (conv 20-50 5x5 valid, dense
500, dense 10) this trains, with the same epochs, optimizer and learning-rate
schedule (SGD, momentum 0.9, cosine decay), the published methods:

- `prox` (`GroupLasso+ProximalStep`): `kprune.sparsity.apply_group_sparsity`
  (mode "proximal") + `kprune.callbacks.ProximalStep` every 50 steps (the
  paper's method); `sgl`: the same with `SparseGroupLasso(alpha=0.5)`;
- `constraint` (`GroupSoftThreshold constraint`):
  `apply_group_sparsity(..., method="constraint")`: the same proximal
  operator as a kernel constraint, applied by the optimizer after *every*
  step with `t` = its learning rate (no callback), so `lambda` is about
  1/50 of `prox`'s; `constraint_sgl`: `SparseGroupSoftThreshold(alpha=0.5)`;
- `penalty`: the regularizers with mode="penalty" (the penalty in the loss,
  the usual Keras way); `plain`: no regularization;
- LeNet-300-100 only: `prox_light` (`prox` with a smaller lambda);
  `prox_out` (one group per *input* of each Dense layer: `GroupLasso(axis=0)`
  on fc1, fc2 and the logits); `prox_px` (unit groups plus one group per
  input pixel, its fc1 row: `ProximalStep(input_groups={"fc1": ...})`);
  `prox_px_long` (the same for `--epochs 200`); `prox_px_shift`
  (`prox_px_long` on images shifted by up to one pixel); `prox_px_rw` and
  `prox_px_rw_long` (`ProximalStep(reweight=0.1)`, the reweighted group
  Lasso); `prox_px_rw_kd` (`prox_px_rw` on `kprune.losses.Distillation`
  against the soft targets of a dense LeNet-300-100 with dropout 0.2,
  trained first with the same recipe; its error and time are in the row).

then slims each model (`kprune.surgery.slim(model, prune_inputs=True)`) and
reports test error, params, MACs, widths, epochs and training seconds. The
proximal rows end with a few epochs of plain fine-tuning of the slimmed model
(`finetune_epochs`, counted in `epochs`). Targets: LeNet-300-100 >= 10x fewer
MACs at <= 1.8 % test error; LeNet-5 >= 10x fewer MACs at <= 1.0 %.

Step time vs a plain `fit` (same model, data and optimizer, interleaved
rounds): `--timing-set proximal` (ProximalStep variants, target <= 1.10x)
and `--timing-set constraint` (the constraint method, target <= 1.03x,
with two other ways of getting the step size measured beside it).

Hyper-parameters (HPARAMS below) were chosen on a validation split with
`benchmarks/group_sparsity_sweeps.py` (results in group_sparsity_sweep.*;
how each setting was picked is in that script's docstring).

Data: full MNIST from `--data FILE.npz`, else where `common.mnist_path`
looks. Run by hand (never in CI), one model per invocation on 2 cores; the
published results came from:

    python benchmarks/group_sparsity.py --model lenet300            # ~10 min
    python benchmarks/group_sparsity.py --model lenet300 --methods prox_px
    python benchmarks/group_sparsity.py --model lenet5 --methods prox,sgl
    python benchmarks/group_sparsity.py --model lenet5 --methods penalty,plain
    python benchmarks/group_sparsity.py --model all --timing-only
    python benchmarks/group_sparsity.py --model lenet300 --epochs 200 \
        --methods plain,prox_px_long              # ~5 min a method [*]
    python benchmarks/group_sparsity.py --model lenet300 --epochs 200 \
        --methods prox_px_shift                   # [*], seed 0 and 1
    python benchmarks/group_sparsity.py --model lenet300 --epochs 200 \
        --methods plain --shift 1                 # [*]
    python benchmarks/group_sparsity.py --model lenet300 \
        --methods prox_px_rw                      # ~1 min, seeds 0-3 [*]
    python benchmarks/group_sparsity.py --model lenet300 --epochs 200 \
        --methods prox_px_rw_long                 # [*], seeds 0-3
    python benchmarks/group_sparsity.py --model lenet300 \
        --methods prox_px_rw_kd                   # ~2 min, seeds 0-7 [*]
    python benchmarks/group_sparsity.py --model lenet300 \
        --methods constraint,constraint_sgl       # ~3 min
    python benchmarks/group_sparsity.py --model lenet5 \
        --methods constraint                      # ~15 min, seeds 0 and 1
    python benchmarks/group_sparsity.py --model lenet300 --timing-only \
        --timing-set constraint --timing-rounds 11  # and KERAS_BACKEND=jax
        # and with one thread: TF_NUM_INTRAOP_THREADS=1
        # TF_NUM_INTEROP_THREADS=1 (TensorFlow), XLA_FLAGS=
        # "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    python benchmarks/group_sparsity.py --model lenet5 --timing-only \
        --timing-set constraint --timing-rounds 9   # and KERAS_BACKEND=jax
    python benchmarks/group_sparsity.py --model lenet300 --timing-only \
        --timing-set constraint --timing-rounds 9 \
        --timing-batch-size 512                   # and KERAS_BACKEND=jax

[*] run as two processes side by side, one thread each
(TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1), one method each, and
`prox_px_long` with `--seed 1` as well. Rows of another `--epochs` than the
model's default, of a `--seed` other than 0, or of a backend other than
TensorFlow are kept under their own keys. `--strength`, `--scales` and
`--hparams` override a method's hyper-parameters (some published rows were
made that way, see their commands). Parallel runs: give each
`--results-dir DIR`, then merge them with `--merge DIR/group_sparsity.json`.
`--steps-per-execution 50` makes GPU runs (KERAS_BACKEND=jax) fast without
moving the proximal steps. `--shift N` trains every phase of a run on
shifted images (the `plain` reference of `prox_px_shift`).

Writes (merging with earlier invocations, keyed by model and method)
benchmarks/results/group_sparsity.json and .md.
"""

import argparse
import json
import math
import os
import sys
import time

import keras
import numpy as np
from common import (
    RESULTS,
    command_line,
    compile_classifier,
    cosine_sgd,
    interleaved_step_times,
    machine,
    mnist_path,
    now,
    read_mnist,
    set_dropout,
    smoothed_crossentropy,
    test_error,
    training_data,
    write_results,
)
from group_sparsity_report import load_results, markdown, merge_results

import kprune
import kprune.sparsity

TARGETS = {
    "lenet300": {"macs_reduction": 10.0, "test_error": 0.018},
    "lenet5": {"macs_reduction": 10.0, "test_error": 0.010},
}

METHOD_NAMES = {
    "prox": "GroupLasso+ProximalStep",
    "sgl": "SparseGroupLasso(a=0.5)+ProximalStep",
    "constraint": "GroupSoftThreshold constraint",
    "constraint_sgl": "SparseGroupSoftThreshold(a=0.5) constraint",
    "penalty": "GroupLasso penalty (subgradient)",
    "plain": "plain",
    "prox_light": "GroupLasso+ProximalStep, smaller lambda",
    "prox_out": "GroupLasso(outgoing)+ProximalStep",
    "prox_px": "GroupLasso units + pixel groups+ProximalStep",
    "prox_px_long": "GroupLasso units + pixel groups+ProximalStep, for long training",
    "prox_px_shift": "GroupLasso units + pixel groups+ProximalStep, "
    "long training on shifted images",
    "prox_px_rw": "reweighted GroupLasso units + pixel groups+ProximalStep",
    "prox_px_rw_long": "reweighted GroupLasso units + pixel groups+ProximalStep, "
    "for long training",
    "prox_px_rw_kd": "reweighted GroupLasso units + pixel groups+ProximalStep, "
    "distilled from a dense model",
}
CONSTRAINT_METHODS = ("constraint", "constraint_sgl")

# Shared training recipe per model (all methods of a model use it).
TRAINING = {
    "lenet300": {"epochs": 30, "batch_size": 100, "learning_rate": 0.05},
    "lenet5": {"epochs": 20, "batch_size": 100, "learning_rate": 0.05},
}

# Per-method hyper-parameters: lambda = strength * scale[layer]. How each
# was chosen: benchmarks/group_sparsity_sweeps.py.
HPARAMS = {
    "lenet300": {
        "prox": {
            "strength": 0.1,
            "scales": {"fc1": 1.0, "fc2": 1.0},
            "finetune_epochs": 8,
        },
        "prox_light": {
            "strength": 0.03,
            "scales": {"fc1": 1.0, "fc2": 1.0},
            "finetune_epochs": 8,
        },
        "sgl": {
            "strength": 0.2,
            "alpha": 0.5,
            "scales": {"fc1": 1.0, "fc2": 1.0},
            "finetune_epochs": 8,
        },
        # `prox`'s strengths / 50 (a proximal step at every step instead of
        # every 50), then chosen on the validation split.
        "constraint": {
            "strength": 0.002,
            "scales": {"fc1": 1.0, "fc2": 1.0},
            "finetune_epochs": 8,
        },
        "constraint_sgl": {
            "strength": 0.004,
            "alpha": 0.5,
            "scales": {"fc1": 1.0, "fc2": 1.0},
            "finetune_epochs": 8,
        },
        "penalty": {"strength": 5e-5, "scales": {"fc1": 1.0, "fc2": 1.0}},
        "plain": {},
        "prox_out": {
            "strength": 0.05,
            "scales": {"fc1": 5.0, "fc2": 1.5, "logits": 3.0},
            "finetune_epochs": 8,
        },
        "prox_px": {
            "strength": 0.02,
            "scales": {"fc1": 1.0, "fc2": 2.0},
            "pixel_strength": 0.2,
            "finetune_epochs": 8,
        },
        "prox_px_long": {
            "strength": 0.0042,
            "scales": {"fc1": 1.0, "fc2": 2.0},
            "pixel_strength": 0.125,
            "finetune_epochs": 30,
        },
        "prox_px_shift": {
            "strength": 0.005,
            "scales": {"fc1": 1.0, "fc2": 2.0},
            "pixel_strength": 0.15,
            "finetune_epochs": 30,
            "shift": 1,
        },
        "prox_px_rw": {
            "strength": 0.0083,
            "scales": {"fc1": 1.0, "fc2": 4.0},
            "pixel_strength": 0.042,
            "reweight": 0.1,
            "finetune_epochs": 8,
        },
        "prox_px_rw_long": {
            "strength": 0.003,
            "scales": {"fc1": 1.0, "fc2": 2.0},
            "pixel_strength": 0.008,
            "reweight": 0.1,
            "finetune_epochs": 30,
        },
        "prox_px_rw_kd": {
            "strength": 0.018,
            "scales": {"fc1": 1.0, "fc2": 4.0},
            "pixel_strength": 0.12,
            "reweight": 0.1,
            "finetune_epochs": 8,
            "distill": {"temperature": 4.0, "alpha": 0.3, "teacher_dropout": 0.2},
        },
    },
    "lenet5": {
        "prox": {
            "strength": 0.1,
            "scales": {"conv1": 8.0, "conv2": 1.0, "fc1": 0.25},
            "finetune_epochs": 5,
        },
        "sgl": {
            "strength": 0.2,
            "alpha": 0.5,
            "scales": {"conv1": 8.0, "conv2": 1.0, "fc1": 0.25},
            "finetune_epochs": 5,
        },
        "constraint": {
            "strength": 0.002,
            "scales": {"conv1": 8.0, "conv2": 1.0, "fc1": 0.25},
            "finetune_epochs": 5,
        },
        "constraint_sgl": {
            "strength": 0.004,
            "alpha": 0.5,
            "scales": {"conv1": 8.0, "conv2": 1.0, "fc1": 0.25},
            "finetune_epochs": 5,
        },
        "penalty": {
            "strength": 5e-5,
            "scales": {"conv1": 8.0, "conv2": 1.0, "fc1": 0.25},
        },
        "plain": {},
    },
}
PROX_EVERY = 50
TIMING_TARGETS = {"proximal": 1.10, "constraint": 1.03}


def load_mnist(path):
    """Full MNIST as stored (uint8 images) and the file it came from."""
    where = mnist_path(path)
    x, y, x_test, y_test = read_mnist(where)
    return ((x, y), (x_test, y_test)), where


def lenet300(dropout=0.0, input_dropout=0.0):
    """LeNet-300-100, optionally with Dropout on the pixels and hidden units."""
    inputs = keras.Input((784,), name="pixels")
    x = inputs
    if input_dropout:
        x = keras.layers.Dropout(input_dropout, name="drop_pixels")(x)
    x = keras.layers.Dense(300, activation="relu", name="fc1")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="drop_fc1")(x)
    x = keras.layers.Dense(100, activation="relu", name="fc2")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="drop_fc2")(x)
    outputs = keras.layers.Dense(10, name="logits")(x)
    return keras.Model(inputs, outputs, name="lenet300")


def lenet5():
    from kprune.demo import lenet5 as build

    return build()


BUILDERS = {"lenet300": lenet300, "lenet5": lenet5}


def prepare(model_name, x):
    x = np.asarray(x, dtype="float32") / 255.0
    if model_name == "lenet300":
        return x.reshape(len(x), 784)
    return x[..., None]


def outgoing_model(hp, mode="proximal"):
    """LeNet-300-100 with GroupLasso(axis=0) on every kernel: input groups."""
    regs = {
        name: kprune.regularizers.GroupLasso(
            hp["strength"], scale=scale, axis=0, mode=mode
        )
        for name, scale in hp["scales"].items()
    }
    inputs = keras.Input((784,), name="pixels")
    x = keras.layers.Dense(
        300, activation="relu", name="fc1", kernel_regularizer=regs["fc1"]
    )(inputs)
    x = keras.layers.Dense(
        100, activation="relu", name="fc2", kernel_regularizer=regs["fc2"]
    )(x)
    outputs = keras.layers.Dense(10, name="logits", kernel_regularizer=regs["logits"])(
        x
    )
    return keras.Model(inputs, outputs, name="lenet300")


def build(model_name, method, hp, x=None):
    """The model to train for `method` and its kprune callbacks.

    `hp` may also hold the sweeps' `dropout` / `input_dropout` (Dropout
    layers) and `prox_every` (the proximal step's interval).
    """
    every = hp.get("prox_every", PROX_EVERY)
    if method == "prox_out":
        return outgoing_model(hp), [kprune.callbacks.ProximalStep(every)]
    dropouts = {k: hp[k] for k in ("dropout", "input_dropout") if hp.get(k)}
    model = BUILDERS[model_name](**dropouts)
    if method == "plain":
        return model, []
    strength = hp["strength"]
    per_layer = {k: strength * s for k, s in hp["scales"].items()}
    if method in CONSTRAINT_METHODS:
        model = kprune.sparsity.apply_group_sparsity(
            model,
            strength,
            alpha=hp.get("alpha", 0.0),
            strength_per_layer=per_layer,
            method="constraint",
        )
        return model, []
    input_groups = None
    if method.startswith("prox_px"):
        input_groups = {"fc1": hp["pixel_strength"]}
    mode = "penalty" if method == "penalty" else "proximal"
    model = kprune.sparsity.apply_group_sparsity(
        model,
        strength,
        alpha=hp.get("alpha", 0.0),
        strength_per_layer=per_layer,
        mode=mode,
    )
    callbacks = []
    if mode != "penalty":
        step = kprune.callbacks.ProximalStep(
            every, input_groups=input_groups, reweight=hp.get("reweight")
        )
        callbacks.append(step)
    return model, callbacks


def train_teacher(model_name, data, epochs, recipe, distill, seed):
    """The dense teacher of a distilled run, trained like `plain`."""
    (x, y), (x_eval, y_eval) = data
    keras.utils.set_random_seed(seed + 1000)
    teacher = BUILDERS[model_name](dropout=distill.get("teacher_dropout", 0.0))
    steps = epochs * math.ceil(len(x) / recipe["batch_size"])
    compile_model(teacher, recipe, steps)
    start = time.perf_counter()
    teacher.fit(x, y, batch_size=recipe["batch_size"], epochs=epochs, verbose=0)
    seconds = time.perf_counter() - start
    return teacher, seconds, error_rate(teacher, x_eval, y_eval)


def compile_model(model, recipe, steps, weight_decay=None, loss=None):
    """SGD (momentum 0.9), cosine decay to 2 %; the recipe's loss."""
    optimizer = cosine_sgd(recipe["learning_rate"], steps, weight_decay=weight_decay)
    if loss is not None:
        model.compile(optimizer=optimizer, loss=loss)
    elif not recipe.get("label_smoothing"):
        compile_classifier(model, optimizer)
    else:
        model.compile(
            optimizer=optimizer,
            loss=smoothed_crossentropy(recipe["label_smoothing"]),
            metrics=["sparse_categorical_accuracy"],
        )
    # Several steps per call (fast on a GPU); callbacks still see every
    # step's index, so ProximalStep's every-N-steps schedule is unchanged
    # when N is a multiple of it.
    model.steps_per_execution = recipe.get("steps_per_execution", 1)


def error_rate(model, x, y):
    return test_error(model, x, y, batch_size=2000)


def pixels_kept(model):
    """Input features a slimmed model still reads (None: all of them)."""
    for layer in model.layers:
        if isinstance(layer, kprune.surgery.SelectFeatures):
            return len(layer.indices)
    return None


def finetune(
    model,
    x,
    y,
    epochs,
    learning_rate,
    batch_size,
    weight_decay=0.0,
    smoothing=0.0,
    shift=0,
    seed=0,
    steps_per_execution=1,
    loss=None,
):
    """Plain SGD on an already slimmed model.

    Optionally with weight decay, label smoothing, images shifted by up to
    `shift` pixels (`common.ShiftedImages`), or another `loss`.
    """
    steps = epochs * math.ceil(len(x) / batch_size)
    recipe = {
        "learning_rate": learning_rate,
        "label_smoothing": smoothing,
        "steps_per_execution": steps_per_execution,
    }
    compile_model(model, recipe, steps, weight_decay, loss)
    data = training_data(x, y, batch_size, shift, seed)
    model.fit(**data, epochs=epochs, verbose=0)
    return model


def run(
    model_name,
    method,
    data,
    epochs,
    seed,
    hp,
    recipe_override=None,
    build_fn=build,
    method_name=None,
    baseline=None,
):
    """Train, slim, (fine-tune) and measure one method; returns its row.

    Args:
        hp: the method's hyper-parameters (HPARAMS plus overrides). The
            sweeps also use `weight_decay`, `finetune_lr`, `finetune_dropout`,
            `finetune_weight_decay`, `finetune_label_smoothing` and
            `finetune_shift`.
        build_fn: `(model_name, method, hp, x) -> (model, callbacks)`.
        method_name: the row's method name (default `METHOD_NAMES[method]`).
        baseline: the model the reductions are relative to (default: the
            trained model before `slim`).
    """
    (x, y), (x_eval, y_eval) = data
    recipe = dict(TRAINING[model_name], **(recipe_override or {}))
    hp = json.loads(json.dumps(hp))
    ft_epochs = int(hp.get("finetune_epochs", 0))
    if ft_epochs and method in ("plain", "penalty", "small"):
        raise ValueError(f"finetune_epochs is for the proximal methods, not {method}")
    if ft_epochs >= epochs:
        raise ValueError(f"finetune_epochs={ft_epochs} must be < epochs={epochs}")
    method_name = method_name or METHOD_NAMES[method]
    sparse_epochs = epochs - ft_epochs
    steps = sparse_epochs * math.ceil(len(x) / recipe["batch_size"])
    shift = hp.get("shift", recipe.get("shift", 0))
    distill, loss, teacher_seconds = hp.get("distill"), None, 0.0
    if distill:
        if shift:
            raise ValueError(
                "distill needs fixed images: the soft targets are "
                f"computed once. Received: shift={shift}"
            )
        teacher, teacher_seconds, teacher_error = train_teacher(
            model_name, data, epochs, recipe, distill, seed
        )
        y = kprune.losses.soft_targets(teacher, x, y, batch_size=2000)
        loss = kprune.losses.Distillation(distill["temperature"], distill["alpha"])
    keras.utils.set_random_seed(seed)
    model, callbacks = build_fn(model_name, method, hp, x)
    compile_model(model, recipe, steps, hp.get("weight_decay"), loss)
    if callbacks:
        callbacks.append(kprune.callbacks.SparsityLogger(per_layer=False))
    print(f"  {model_name} / {method_name} {hp} ...", flush=True)
    start = time.perf_counter()
    data = training_data(x, y, recipe["batch_size"], shift, seed)
    model.fit(**data, epochs=sparse_epochs, verbose=0, callbacks=callbacks)
    prox = [c for c in callbacks if isinstance(c, kprune.callbacks.ProximalStep)]
    every = hp.get("prox_every", PROX_EVERY)
    if prox and steps % every:
        prox[0].apply()  # end on a proximal step
    seconds = time.perf_counter() - start

    near_zero = {}
    for layer in model.layers:
        if layer.name in hp.get("scales", {}) and method != "prox_out":
            norms = keras.ops.convert_to_numpy(
                kprune.ops.group_norms(layer.kernel, bias=layer.bias)
            )
            near_zero[layer.name] = int(np.sum(norms <= 0.01 * norms.max()))
    before = kprune.report.summary(model if baseline is None else baseline)
    slim = kprune.surgery.slim(model, prune_inputs=True)
    after = kprune.report.summary(slim)
    out_model = keras.ops.convert_to_numpy(model.predict(x_eval, 2000, verbose=0))
    out_slim = keras.ops.convert_to_numpy(slim.predict(x_eval, 2000, verbose=0))
    max_diff = float(np.max(np.abs(out_model - out_slim)))
    scale = float(np.max(np.abs(out_model)))
    error = error_rate(slim, x_eval, y_eval)
    row = {
        "method": method_name + (" + fine-tune" if ft_epochs else ""),
        "method_key": method,
        "model": model_name,
        "test_error": error,
        "params": after["params"],
        "macs": after["macs"],
        "widths": {k: v for k, v in after["widths"].items() if k != "logits"},
        "epochs": epochs,
        "seconds": None,
        "params_before": before["params"],
        "macs_before": before["macs"],
        "macs_reduction": before["macs"] / after["macs"],
        "params_reduction": before["params"] / after["params"],
        "nonzero_params_before_slim": before["nonzero_params"],
        "units_below_1pct_of_max_norm": near_zero,
        "slim_max_abs_diff": max_diff,
        "slim_rel_diff": max_diff / max(scale, 1e-12),
        "hparams": hp,
        "recipe": {
            **recipe,
            "optimizer": "SGD(momentum=0.9), cosine decay to 2 %",
            "prox_every_n_steps": every if prox else None,
            "seed": seed,
        },
        "train_steps_per_second": steps / seconds,
        "augmentation": (
            f"random whole-pixel shift of up to {shift} px (all training)"
            if shift
            else None
        ),
    }
    if method in CONSTRAINT_METHODS:
        row["recipe"]["prox_every_n_steps"] = 1  # inside every optimizer step
    if distill:
        row["teacher_test_error"] = teacher_error
        row["teacher_seconds"] = round(teacher_seconds, 1)
    final = slim
    if method in CONSTRAINT_METHODS:
        # `slim` keeps the constraints; the fine-tuning is plain SGD.
        final = kprune.sparsity.strip_group_sparsity(slim)
    kept = pixels_kept(slim)
    if kept is not None:
        row["input_pixels_kept"] = kept
    if ft_epochs:
        # Prune-then-fine-tune: the slimmed model is trained further with
        # plain SGD; the total number of epochs is unchanged.
        start = time.perf_counter()
        set_dropout(final, hp.get("finetune_dropout"))
        finetune(
            final,
            x,
            y,
            ft_epochs,
            hp.get("finetune_lr", 0.01),
            recipe["batch_size"],
            hp.get("finetune_weight_decay", 0.0),
            hp.get("finetune_label_smoothing", recipe.get("label_smoothing", 0.0)),
            hp.get("finetune_shift", shift),
            seed,
            recipe.get("steps_per_execution", 1),
            loss,
        )
        seconds += time.perf_counter() - start
        row["test_error_before_finetune"] = error
        row["test_error"] = error_rate(final, x_eval, y_eval)
    row["seconds"] = round(seconds + teacher_seconds, 1)  # the teacher's too
    target = TARGETS[model_name]
    macs_reduction = row["macs_reduction"]
    row["target_met"] = bool(
        macs_reduction >= target["macs_reduction"]
        and row["test_error"] <= target["test_error"]
    )
    print(
        f"    error {100 * row['test_error']:.2f} %"
        + (f" (before fine-tune {100 * error:.2f} %)" if ft_epochs else "")
        + f", widths {row['widths']}, MACs x{row['macs_reduction']:.1f}"
        + (
            f" (kept pixels {row['input_pixels_kept']})"
            if "input_pixels_kept" in row
            else ""
        )
        + f", {seconds:.0f} s, slim diff {row['slim_rel_diff']:.1e}",
        flush=True,
    )
    return row


# ------------------------------------------------------------ step time

CHUNK_STEPS = 200


class _VariableStepThreshold(kprune.constraints.GroupSoftThreshold):
    """A GroupSoftThreshold whose `t` is a variable a callback keeps = lr."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.t = keras.Variable(0.0, trainable=False, name="step_size")

    def _step_size(self, optimizer, dtype):
        return keras.ops.cast(self.t, dtype)


class _LearningRateToStepSize(keras.callbacks.Callback):
    """Before each batch: every `_VariableStepThreshold.t` = the current lr."""

    def __init__(self, constraints):
        super().__init__()
        self.constraints = constraints

    def on_train_batch_begin(self, batch, logs=None):
        optimizer = self.model.optimizer
        lr = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        for constraint in self.constraints:
            constraint.t.assign(lr)


def timing_variant(model_name, kind, seed):
    """`(model, callbacks)` of one step-timing variant, compiled, not traced."""
    keras.utils.set_random_seed(seed)
    hparams = HPARAMS[model_name]
    if kind == "reweighted_pixels":
        model, callbacks = build(model_name, "prox_px_rw", hparams["prox_px_rw"])
    elif kind in ("every_50_steps", "epoch_end"):
        model, callbacks = build(model_name, "prox", hparams["prox"])
    elif kind.startswith("constraint"):
        model, callbacks = build(model_name, "constraint", hparams["constraint"])
    else:
        model, callbacks = build(model_name, "plain", hparams["plain"])
    if kind == "epoch_end":
        callbacks = [kprune.callbacks.ProximalStep()]
    if kind in ("every_50_steps", "epoch_end", "reweighted_pixels"):
        callbacks.append(kprune.callbacks.SparsityLogger())
    if kind in ("constraint_fixed_t", "constraint_t_callback"):
        variable = kind == "constraint_t_callback"
        replaced = []
        for layer in model.layers:
            old = getattr(layer, "kernel_constraint", None)
            if isinstance(old, kprune.constraints.GroupSoftThreshold):
                config = dict(old.get_config())
                if variable:
                    new = _VariableStepThreshold(**config)
                else:
                    new = kprune.constraints.GroupSoftThreshold(
                        **dict(config, step_size=0.01)
                    )
                layer.kernel_constraint = layer.kernel.constraint = new
                replaced.append(new)
        if variable:
            callbacks = [_LearningRateToStepSize(replaced)]
    return model, callbacks


def xla_step_cost(model, x, y):
    """XLA's cost analysis of one compiled train step (JAX only).

    The flops and bytes accessed of `loss -> grads -> optimizer.apply` (the
    constraints included), as XLA counts them: a measure of the work the
    constraint adds that the machine's load cannot blur.
    """
    import jax

    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def loss(trainable, non_trainable, xb, yb):
        out, non_trainable = model.stateless_call(
            trainable, non_trainable, xb, training=True
        )
        return loss_fn(yb, out), non_trainable

    grad = jax.value_and_grad(loss, has_aux=True)

    def train_step(state, xb, yb):
        trainable, non_trainable, slots = state
        (value, non_trainable), grads = grad(trainable, non_trainable, xb, yb)
        trainable, slots = optimizer.stateless_apply(slots, grads, trainable)
        return value, (trainable, non_trainable, slots)

    state = tuple(
        [v.value for v in variables]
        for variables in (
            model.trainable_variables,
            model.non_trainable_variables,
            optimizer.variables,
        )
    )
    cost = jax.jit(train_step).lower(state, x, y).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return {"flops": float(cost["flops"]), "bytes": float(cost["bytes accessed"])}


THREAD_ENV = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "XLA_FLAGS")


def single_threaded():
    """Whether the environment limits TensorFlow / XLA to one compute thread.

    `TF_NUM_INTRAOP_THREADS=1` (TensorFlow), or `XLA_FLAGS` with
    `--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1`
    (JAX). One thread makes the process CPU time per step a measure that
    other jobs on a shared machine barely change (no thread pool spinning
    while it waits for a core).
    """
    if keras.backend.backend() == "jax":
        return "intra_op_parallelism_threads=1" in os.environ.get("XLA_FLAGS", "")
    return os.environ.get("TF_NUM_INTRAOP_THREADS") == "1"


def step_timing(model_name, x, y, rounds, seed, timing_set="proximal", batch_size=None):
    """Seconds per training step, kprune vs plain fit, interleaved.

    Variants share the architecture, initial weights, optimizer and data.
    `timing_set="proximal"`: ProximalStep every 50 steps + SparsityLogger
    (the benchmark's setting), ProximalStep at epoch end + SparsityLogger,
    and, where the model has `prox_px_rw`, its reweighted ProximalStep with
    pixel groups every 50 steps + SparsityLogger. `"constraint"`: the
    `GroupSoftThreshold` constraints reading the optimizer's learning rate
    in the step (the method), the same with a fixed `step_size` (no read),
    and, on TensorFlow, with the step size in a variable that a callback
    sets to the learning rate before every batch (the alternative to
    reading it in the step; on JAX it would also need a retrace per
    change), beside ProximalStep every 50 steps. Each round fits each
    variant for one "epoch" of `CHUNK_STEPS` steps (`common.
    interleaved_step_times`). A chunk is shorter than a real epoch, so
    epoch-end work (SparsityLogger, the epoch-end proximal step) runs 3x
    more often than in real training: an upper bound. Reported: the median
    over rounds of the per-round time ratio, and the ratio of the fastest
    rounds, with the 1-minute load average before and after (the machine
    is shared). `batch_size` overrides the recipe's (a larger batch makes
    the matmuls larger and the constraint's per-step cost, which depends
    only on the kernels, relatively smaller).
    """
    recipe = TRAINING[model_name]
    bs = batch_size or recipe["batch_size"]
    load_before = os.getloadavg()[0]
    if timing_set == "constraint":
        kinds = ("plain", "constraint", "constraint_fixed_t")
        if keras.backend.backend() == "tensorflow":
            kinds += ("constraint_t_callback",)
        kinds += ("every_50_steps",)
        measured = ("constraint",)
    else:
        kinds = ("plain", "every_50_steps", "epoch_end")
        if "prox_px_rw" in HPARAMS[model_name]:
            kinds += ("reweighted_pixels",)
        measured = kinds[1:]
    variants = {}
    for kind in kinds:
        model, callbacks = timing_variant(model_name, kind, seed)
        compile_model(model, recipe, CHUNK_STEPS * (rounds + 1))
        # Warm-up: trace the train step (not timed).
        model.fit(x[: bs * 2], y[: bs * 2], batch_size=bs, epochs=1, verbose=0)
        variants[kind] = (model, callbacks)
    steps = min(CHUNK_STEPS, len(x) // bs)  # a round never wraps the data
    result = interleaved_step_times(variants, x, y, bs, steps, rounds, "plain")
    if timing_set == "constraint" and keras.backend.backend() == "jax":
        result["xla_cost"] = {
            kind: xla_step_cost(variants[kind][0], x[:bs], y[:bs])
            for kind in ("plain", "constraint")
        }
    ratios = result["ratio_vs_plain"]
    target = TIMING_TARGETS[timing_set]
    result.update(
        {
            "model": model_name,
            "backend": keras.backend.backend(),
            "timing_set": timing_set,
            "target": target,
            "target_met": all(ratios[k]["median_ratio"] <= target for k in measured),
            "load_before": load_before,
            "threads": 1 if single_threaded() else os.cpu_count(),
            "thread_env": {k: os.environ[k] for k in THREAD_ENV if k in os.environ},
            "load_after": os.getloadavg()[0],
        }
    )
    print(
        f"  step time {model_name} ({timing_set}, {result['backend']}, batch {bs}, "
        f"load {load_before:.1f} -> {result['load_after']:.1f}): "
        + ", ".join(f"{k} {v:.2f} ms" for k, v in result["ms_per_step_median"].items())
        + "; ratios "
        + ", ".join(
            f"{k} {r['median_ratio']:.3f} (fastest rounds {r['min_time_ratio']:.3f})"
            for k, r in ratios.items()
        ),
        flush=True,
    )
    return result


def render(results):
    """The markdown of the published results."""
    return markdown(results, TARGETS, METHOD_NAMES)


def row_key(method, epochs, model_name, seed, shift=None):
    """Where a test row is kept in the results (one per setting)."""
    key = method
    if epochs != TRAINING[model_name]["epochs"]:
        key = f"{key} epochs={epochs}"
    if shift:
        key += f" shift={shift}"
    if seed:
        key += f" seed={seed}"
    if keras.backend.backend() != "tensorflow":
        key += f" backend={keras.backend.backend()}"
    return key


def overrides(args):
    """The hyper-parameter overrides of `--strength`, `--scales`, `--hparams`."""
    override = {}
    if args.strength is not None:
        override["strength"] = args.strength
    if args.scales is not None:
        override["scales"] = json.loads(args.scales)
    if args.hparams is not None:
        override.update(json.loads(args.hparams))
    return override


def add_common_arguments(parser):
    """Arguments shared with benchmarks/group_sparsity_sweeps.py."""
    parser.add_argument("--model", choices=["lenet300", "lenet5", "all"], default="all")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--data", default=None, help="path to mnist.npz")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strength", type=float, default=None, help="override lambda")
    parser.add_argument(
        "--scales", default=None, help='override per-layer scales, JSON like {"fc1": 1}'
    )
    parser.add_argument(
        "--hparams",
        default=None,
        help='override other hyper-parameters, JSON like {"finetune_epochs": 5}',
    )
    parser.add_argument(
        "--shift",
        type=int,
        default=None,
        help="train (and fine-tune) on images shifted by up to this many pixels",
    )
    parser.add_argument(
        "--results-dir",
        default=RESULTS,
        help="where to read and write the results (parallel runs: one each)",
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="JSON",
        help="merge the rows of these result files (runs made with "
        "--results-dir) into the results, then exit",
    )
    parser.add_argument(
        "--steps-per-execution",
        type=int,
        default=None,
        help="training steps per compiled call (GPU runs; keep the proximal "
        "step's interval a multiple of it)",
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument(
        "--methods",
        default=None,
        help="comma list of "
        + ", ".join(METHOD_NAMES)
        + " (default: all for the model)",
    )
    parser.add_argument("--timing-rounds", type=int, default=15)
    parser.add_argument(
        "--timing-batch-size",
        type=int,
        default=None,
        help="batch size of the step-time comparison (default: the recipe's)",
    )
    parser.add_argument(
        "--timing-set",
        choices=sorted(TIMING_TARGETS),
        default="proximal",
        help="which step-time comparison to run",
    )
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--timing-only", action="store_true")
    args = parser.parse_args(argv)

    path = os.path.join(args.results_dir, "group_sparsity.json")
    if args.merge:
        results = merge_results(load_results(path), args.merge)
        write_results("group_sparsity", results, render(results), args.results_dir)
        print(f"merged {len(args.merge)} file(s) into {path}", flush=True)
        return 0

    ((x, y), (x_test, y_test)), where = load_mnist(args.data)
    print(f"group_sparsity benchmark: MNIST from {where}", flush=True)
    models = ["lenet300", "lenet5"] if args.model == "all" else [args.model]
    command = command_line(__file__, argv)
    stamp = {"command": command, "machine": machine(), "date": now()}
    override = overrides(args)
    recipe_override = {}
    if args.shift:
        recipe_override["shift"] = args.shift
    if args.steps_per_execution:
        recipe_override["steps_per_execution"] = args.steps_per_execution

    for model_name in models:
        xm, xt = prepare(model_name, x), prepare(model_name, x_test)
        ym, yt = np.asarray(y, "int64"), np.asarray(y_test, "int64")
        epochs = args.epochs or TRAINING[model_name]["epochs"]
        methods = args.methods.split(",") if args.methods else list(HPARAMS[model_name])
        rows = {}
        if not args.timing_only:
            for method in methods:
                if method not in HPARAMS[model_name]:
                    parser.error(f"unknown method {method!r} for {model_name}")
                hp = dict(HPARAMS[model_name][method], **override)
                data = ((xm, ym), (xt, yt))
                row = run(
                    model_name, method, data, epochs, args.seed, hp, recipe_override
                )
                row.update(stamp)
                rows[row_key(method, epochs, model_name, args.seed, args.shift)] = row
        timing = None
        if not args.no_timing and (args.timing_only or args.methods is None):
            timing = step_timing(
                model_name,
                xm,
                ym,
                args.timing_rounds,
                args.seed,
                args.timing_set,
                args.timing_batch_size,
            )
            timing.update(stamp)
        # Merge with earlier invocations (re-read: another run may have written).
        results = load_results(path)
        entry = results["models"].setdefault(model_name, {"rows": {}})
        entry["rows"].update(rows)
        if timing is not None and args.timing_set == "constraint":
            key = timing["backend"]
            if timing["batch_size"] != TRAINING[model_name]["batch_size"]:
                key += f" batch={timing['batch_size']}"
            if timing["threads"] == 1:
                key += " threads=1"
            entry.setdefault("constraint_timing", {})[key] = timing
        elif timing is not None:
            entry["timing"] = timing
        write_results("group_sparsity", results, render(results), args.results_dir)
        print(f"  wrote {path} and group_sparsity.md", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
