"""Accuracy at a MACs budget (issue 21, "Must show" 1 and 3).

LeNet-5 (Caffe's, `common.lenet_5`) and a small ResNet-style CNN (stem conv
16 + BN, three residual blocks of 16 / 32 / 64 channels with BN, 1x1
projections and max-pooling between them, global average pool, Dense 10) on
full MNIST, split 55k train / 5k validation / 10k test.

1. Dense training: Adam (lr 1e-3, eps 1e-7), batch 128, `--dense-epochs`.
2. For every importance and budget (2x, 4x, 8x, 16x fewer MACs):
   `kprune.prune(dense, (x_cal, y_cal), macs=1/b, importance=...)` with 512
   training images for calibration, then fine-tuning with the same Adam
   recipe for `--finetune-epochs`.
3. Group sparsity in target mode: `apply_group_sparsity(dense,
   --gs-strength, method=m)` trained with `SizeTarget(macs=1/b)` on the
   fine-tuning images for `--finetune-epochs` (the same Adam, batch and
   first-epoch order), then `slim`; `m="constraint"` (the proximal step in
   every optimizer step) and `m="callback"` (`ProximalStep(every_n_steps=
   --gs-prox-every)`). `--only-group-sparsity` runs just these rows and
   merges them into the existing results.
4. From scratch: the architecture kprune's best one-shot criterion (by
   validation error) produced, re-initialized and trained with the same
   recipe for `dense + finetune` epochs (the same images: the dense epochs
   on the training set, the fine-tuning epochs on its first
   `--finetune-samples`) ("Rethinking the value of network
   pruning", Liu et al. 2019). `--only-scratch` adds just these rows, at
   the `--scratch-budgets` where a seed has none, from the widths recorded
   for its best criterion (no dense model or pruning needed).
Every seed trains its own dense model and runs every importance; the
markdown adds the mean over seeds. Fine-tuning visits the training images
in `np.random.default_rng(seed)`'s permutations (one per epoch), as the
Torch-Pruning side (`vs_torch_pruning.py`) does.

    python benchmarks/prune_budget.py --models lenet5 --seeds 0 1

Writes benchmarks/results/prune_budget{--tag}.json/.md. Validation picks the
best criterion (per seed, for the from-scratch run); test is reported once
for every run.
"""

import argparse
import json
import os
import time

import keras
import numpy as np
from common import (
    REPO,
    command_line,
    lenet_5,
    load_mnist,
    machine,
    md_table,
    read_json,
    run_line,
    test_error,
    write_results,
)

import kprune
import kprune.sparsity

L = keras.layers
BUDGETS = (2, 4, 8, 16)
IMPORTANCES = ("l1", "l2", "fpgm", "lamp", "taylor", "activation", "car", "random")


def resnet_small():
    """Stem + three residual blocks (16, 32, 64) with BN; names match the
    Torch-Pruning worker's."""
    inp = keras.Input((28, 28, 1))

    def conv_bn(x, filters, size, name, bn, relu=True):
        x = L.Conv2D(filters, size, padding="same", name=name)(x)
        x = L.BatchNormalization(name=bn)(x)
        return L.ReLU()(x) if relu else x

    def block(x, filters, name, project):
        h = conv_bn(x, filters, 3, f"{name}_conv_a", f"{name}_bn_a")
        h = conv_bn(h, filters, 3, f"{name}_conv_b", f"{name}_bn_b", relu=False)
        s = x
        if project:
            s = conv_bn(x, filters, 1, f"{name}_conv_p", f"{name}_bn_p", relu=False)
        return L.ReLU()(L.Add()([s, h]))

    x = conv_bn(inp, 16, 3, "stem", "bn_stem")
    x = L.MaxPooling2D(2)(block(x, 16, "b1", False))
    x = L.MaxPooling2D(2)(block(x, 32, "b2", True))
    x = block(x, 64, "b3", True)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inp, L.Dense(10, name="fc")(x), name="resnet_small")


MODELS = {"lenet5": lenet_5, "resnet": resnet_small}


def compile_(model, lr, decay_steps=None):
    """Adam; with `decay_steps`, the learning rate follows a cosine to 0. No XLA."""
    if decay_steps:
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps)
    model.compile(
        optimizer=keras.optimizers.Adam(lr, epsilon=1e-7),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        # XLA ("auto" on TensorFlow) trains these small CNNs about 4x slower
        # on this CPU (LeNet-5, 1 thread: 20.8 s vs 5.0 s for 10k images).
        jit_compile=False,
    )
    return model


def finetune_steps(args, n):
    """Optimizer steps of the fine-tuning (for the cosine schedule), or None."""
    if args.finetune_schedule != "cosine" or not args.finetune_epochs:
        return None
    n = min(n, args.finetune_samples or n)
    return args.finetune_epochs * -(-n // args.batch)


def fit(model, x, y, epochs, args, callbacks=(), samples=None, seed=0):
    """`epochs` epochs of Adam; epoch e visits the images in
    `np.random.default_rng(seed)`'s e-th permutation (as the Torch-Pruning
    worker does), in batches of `args.batch`."""
    if samples:
        x, y = x[:samples], y[:samples]
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(x))
        model.fit(
            x[order],
            y[order],
            batch_size=args.batch,
            epochs=1,
            shuffle=False,
            verbose=0,
            callbacks=list(callbacks),
        )
    recalibrate_bn(model, x, getattr(args, "bn_recalibrate", 0))
    return model


def recalibrate_bn(model, x, images, batch=512):
    """Recomputes every BatchNormalization's moving mean and variance on the
    first `images` of `x` (their average over batches of `batch`, in
    training mode, no weight update); nothing when `images` is 0.

    With Keras' momentum (0.99) the moving statistics lag the weights by
    about 100 steps: after one epoch of Adam the small ResNet's validation
    error was 1.7 % with batch statistics and 56 % with the moving ones.
    The Torch-Pruning worker does the same (`momentum=None`, PyTorch's
    cumulative average) on the same images.
    """
    layers = [
        layer
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, L.BatchNormalization)
    ]
    if not layers or not images:
        return model
    saved = [layer.momentum for layer in layers]
    for k, lo in enumerate(range(0, min(images, len(x)), batch)):
        for layer in layers:  # moving = ((k) * moving + batch) / (k + 1)
            layer.momentum = k / (k + 1)
        model(x[lo : min(lo + batch, images)], training=True)
    for layer, momentum in zip(layers, saved):
        layer.momentum = momentum
    return model


def macs(model):
    return kprune.report.summary(model)["macs"]


def save_weights(model, path):
    arrays = {}
    for layer in model.layers:
        for w in layer.weights:
            arrays[f"{layer.name}/{w.name}"] = keras.ops.convert_to_numpy(w)
    np.savez(path, **arrays)


def prune_run(dense, data, importance, budget, args, seed, finetune=True):
    """`kprune.prune` to `1/budget` of the MACs, then (with `finetune`) the
    fine-tuning recipe; returns the model and its row."""
    x, y, xv, yv, xt, yt = data
    keras.utils.set_random_seed(seed)
    cal = (x[: args.calibration], y[: args.calibration])
    start = time.perf_counter()
    small, plan = kprune.prune(dense, cal, macs=1.0 / budget, importance=importance)
    seconds = time.perf_counter() - start
    if not finetune:
        return small, {"widths": kprune.report.summary(small)["widths"]}
    one_shot = test_error(small, xv, yv)
    compile_(small, args.finetune_lr or args.lr, finetune_steps(args, len(x)))
    keras.utils.set_random_seed(seed)
    fit(
        small,
        x,
        y,
        args.finetune_epochs,
        args,
        samples=args.finetune_samples,
        seed=seed,
    )
    return small, {
        "importance": importance,
        "budget": budget,
        "seed": seed,
        "macs_ratio": plan.report["macs_ratio"],
        "prune_seconds": seconds,
        "val_error_one_shot": one_shot,
        "val_error": test_error(small, xv, yv),
        "test_error": test_error(small, xt, yt),
        "widths": kprune.report.summary(small)["widths"],
    }


def gs_name(method, rewind):
    name = "group_sparsity_target"
    tags = [
        t
        for t, on in (
            ("callback", method.startswith("callback")),
            ("coupled groups", method == "callback-coupled"),
            ("rewind", rewind),
        )
        if on
    ]
    return f"{name} ({', '.join(tags)})" if tags else name


def group_sparsity_run(dense, data, budget, args, seed, method="constraint"):
    """`apply_group_sparsity(dense, --gs-strength, method=...)` trained with
    `SizeTarget(macs=1/b)` for the fine-tuning recipe's epochs, images and
    order (`fit`), then `slim`. `method="callback"` adds
    `ProximalStep(every_n_steps=--gs-prox-every)` before the SizeTarget."""
    x, y, xv, yv, xt, yt = data
    keras.utils.set_random_seed(seed)
    sparse = kprune.sparsity.apply_group_sparsity(
        dense,
        strength=args.gs_strength,
        method="callback" if method.startswith("callback") else method,
    )
    compile_(sparse, args.finetune_lr or args.lr)
    target = kprune.callbacks.SizeTarget(
        macs=1.0 / budget, growth=args.gs_growth, rewind=args.gs_rewind
    )
    callbacks = [target]
    if method.startswith("callback"):
        step = kprune.callbacks.ProximalStep(
            every_n_steps=args.gs_prox_every, coupled=method == "callback-coupled"
        )
        callbacks = [step, target]
    start = time.perf_counter()
    epochs = args.finetune_epochs
    for epoch in range(epochs):  # one `fit` per epoch: finish after the last
        target.finish = epoch == epochs - 1
        fit(
            sparse,
            x,
            y,
            1,
            args,
            callbacks=callbacks,
            samples=args.finetune_samples,
            seed=seed + 7919 * epoch,
        )
    seconds = time.perf_counter() - start
    small = kprune.surgery.slim(sparse)
    recalibrate_bn(small, x[: args.finetune_samples or len(x)], args.bn_recalibrate)
    return {
        "importance": gs_name(method, args.gs_rewind),
        "method": method,
        "rewind": args.gs_rewind,
        "budget": budget,
        "seed": seed,
        "macs_ratio": macs(small) / macs(dense),
        "reached_in_training": bool(target.reached) and target.finished_units == 0,
        "finished_units": target.finished_units,
        "start_strength": args.gs_strength,
        "strength_at_target": float(keras.ops.convert_to_numpy(target._held)),
        "train_seconds": seconds,
        "val_error": test_error(small, xv, yv),
        "test_error": test_error(small, xt, yt),
        "widths": kprune.report.summary(small)["widths"],
    }


def scratch_run(pruned, data, budget, source, args, seed):
    x, y, xv, yv, xt, yt = data
    keras.utils.set_random_seed(seed + 1000)
    fresh = keras.models.clone_model(pruned)  # same widths, new initial weights
    compile_(fresh, args.lr)
    fit(fresh, x, y, args.dense_epochs, args, seed=seed + 1000)
    compile_(fresh, args.finetune_lr or args.lr, finetune_steps(args, len(x)))
    fit(
        fresh,
        x,
        y,
        args.finetune_epochs,
        args,
        samples=args.finetune_samples,
        seed=seed,
    )
    return {
        "importance": f"scratch ({source} architecture)",
        "budget": budget,
        "seed": seed,
        "macs_ratio": macs(fresh) / args._dense_macs,
        "val_error": test_error(fresh, xv, yv),
        "test_error": test_error(fresh, xt, yt),
    }


def with_widths(model, widths):
    """`model` narrowed to `widths` (`{layer: units}`), the last units of
    each layer removed: the architecture alone (its weights are not used)."""
    current = kprune.report.summary(model)["widths"]
    units = {
        name: list(range(int(width), current[name]))
        for name, width in widths.items()
        if name in current and int(width) < current[name]
    }
    return kprune.surgery.remove_units(model, units) if units else model


def _scratch_only(result, args, argv, info, data):
    """From-scratch rows only, merged into an existing result: at each
    `--scratch-budgets` budget where a seed has no scratch row, the
    architecture of the criterion (not `random`) with the lowest
    validation error there, from its recorded widths."""
    record = {"command": command_line(__file__, argv), "machine": info}
    result.setdefault("scratch_runs", []).append(record)
    for kind in args.models:
        entry = result["models"][kind]
        ours = recipe(args, len(data[0]))
        other = {
            k: (v, ours[k])
            for k, v in entry["recipe"].items()
            if k in ours and v != ours[k] and k != "finetune_schedule"
        }
        if other:
            raise SystemExit(
                f"--only-scratch: {kind}'s rows were made with another recipe "
                f"(recorded, this run): {other}"
            )
        for seed in args.seeds:
            seed_entry = entry["seeds"][str(seed)]
            runs = seed_entry["runs"]
            args._dense_macs = seed_entry["dense_macs"]
            for budget in args.scratch_budgets:
                at = [r for r in runs if r["budget"] == budget]
                if any(r["importance"].startswith("scratch") for r in at):
                    continue
                criteria = [
                    r
                    for r in at
                    if r["importance"] in IMPORTANCES
                    and r["importance"] != "random"
                    and r.get("widths")
                ]
                if not criteria:
                    print(f"{kind} seed {seed} {budget}x: no criterion row")
                    continue
                best = min(criteria, key=lambda r: r["val_error"])
                model = with_widths(MODELS[kind](), best["widths"])
                run = scratch_run(model, data, budget, best["importance"], args, seed)
                if abs(run["macs_ratio"] - best["macs_ratio"]) > 1e-6:
                    raise SystemExit(
                        f"{kind} {budget}x: the recorded widths of "
                        f"{best['importance']} give MACs ratio "
                        f"{run['macs_ratio']:.4f}, not {best['macs_ratio']:.4f}"
                    )
                run["architecture"] = "recorded widths (--only-scratch)"
                runs.append(run)
                print(json.dumps(run), flush=True)
                record["load_after"] = os.getloadavg()
                write_results(f"prune_budget{args.tag}", result, render(result))
    return result


def budget_best(best, run):
    """Whether `run` (not `random`) has the lowest validation error at its
    budget so far."""
    budget = run["budget"]
    return run["importance"] != "random" and (
        budget not in best or run["val_error"] < best[budget][0]
    )


def _kprune_rows(name):
    """kprune's rows of a `vs_torch_pruning{name}.json` run, by (model, seed):
    the same `kprune.prune` call and fine-tuning recipe, so that those
    importances need not run twice. Each row keeps its dense test error (to
    check that the dense weights are the same) and says where it came from."""
    if name is None:
        return {}
    path = os.path.join(REPO, "benchmarks", "results", f"vs_torch_pruning{name}.json")
    source = read_json(path)
    if source is None:
        raise SystemExit(f"--kprune-rows-from: no such file. Received: {path}")
    rows = {}
    for kind, entry in source["models"].items():
        for seed, seed_entry in entry.get("seeds", {}).items():
            for r in seed_entry.get("runs", []):
                k = r["kprune"]
                rows.setdefault((kind, int(seed)), []).append(
                    {
                        "importance": r["importance"],
                        "budget": r["budget"],
                        "seed": int(seed),
                        "source": f"vs_torch_pruning{name}.json",
                        "recipe": entry["recipe"],
                        "dense_test_error": seed_entry["dense_test_error"],
                        **{
                            key: k[key]
                            for key in (
                                "macs_ratio",
                                "prune_seconds",
                                "val_error_one_shot",
                                "val_error",
                                "test_error",
                                "widths",
                            )
                        },
                    }
                )
    return rows


def _check_widths(runs, importance, budget, widths):
    """The architecture pruned again equals the recorded one."""
    for r in runs:
        if (r["importance"], r["budget"]) == (importance, budget):
            if r.get("widths") != widths:
                raise SystemExit(
                    f"{importance} at {budget}x pruned again gave other widths: "
                    f"{widths} vs {r.get('widths')}"
                )


def set_threads(threads):
    """Limit TensorFlow to `threads` intra- and inter-op threads (0: all)."""
    if threads and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


def dense_model(kind, data, args, seed):
    """The dense model of `kind` trained `args.dense_epochs` (cached in
    `.scratch/`), and its training time (0 when read from the cache)."""
    x, y = data[0], data[1]
    keras.utils.set_random_seed(seed)
    dense = compile_(MODELS[kind](), args.lr)
    cached = os.path.join(
        REPO, ".scratch", f"dense_{kind}_{seed}_{args.dense_epochs}.weights.h5"
    )
    start = time.perf_counter()
    if os.path.isfile(cached):
        dense.load_weights(cached)
        # the cache may hold the moving statistics before recalibration
        recalibrate_bn(dense, x, getattr(args, "bn_recalibrate", 0))
        return dense, 0.0
    fit(dense, x, y, args.dense_epochs, args, seed=seed)
    os.makedirs(os.path.dirname(cached), exist_ok=True)
    partial = cached.replace(".weights.h5", f".{os.getpid()}.weights.h5")
    dense.save_weights(partial)
    os.replace(partial, cached)  # atomic: another run may read the cache
    return dense, time.perf_counter() - start


def mnist_split():
    """Full MNIST: 55k train, 5k validation (the last training images), 10k
    test."""
    x_all, y_all, xt, yt = load_mnist(flat=False)
    return x_all[:55000], y_all[:55000], x_all[55000:], y_all[55000:], xt, yt


def recipe(args, n):
    return {
        "dense_epochs": args.dense_epochs,
        "finetune_epochs": args.finetune_epochs,
        "optimizer": f"Adam(lr={args.lr}, epsilon=1e-7)",
        "finetune_lr": args.finetune_lr or args.lr,
        "finetune_schedule": args.finetune_schedule,
        "batch": args.batch,
        "calibration_images": args.calibration,
        "finetune_samples": args.finetune_samples or n,
        "shuffle": "epoch e: np.random.default_rng(seed) e-th permutation",
        "threads": args.threads or os.cpu_count(),
        "jit_compile": False,
        **(
            {"bn_recalibration_images": args.bn_recalibrate}
            if args.bn_recalibrate
            else {}
        ),
    }


def add_recipe_args(parser):
    parser.add_argument("--dense-epochs", type=int, default=3)
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument(
        "--finetune-samples",
        type=int,
        default=0,
        help="fine-tune on the first N training images (0: all)",
    )
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--finetune-lr", type=float, default=None, help="default: --lr")
    parser.add_argument(
        "--finetune-schedule",
        choices=["constant", "cosine"],
        default="constant",
        help="learning rate during fine-tuning (cosine: decays to 0)",
    )
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--calibration", type=int, default=512)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument(
        "--threads", type=int, default=0, help="TensorFlow threads (0: all cores)"
    )
    parser.add_argument(
        "--bn-recalibrate",
        type=int,
        default=0,
        metavar="N",
        help="after each training phase, recompute BatchNormalization's moving "
        "statistics on the first N of its training images (0: no)",
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["lenet5", "resnet"])
    parser.add_argument("--importances", nargs="+", default=list(IMPORTANCES))
    parser.add_argument("--budgets", nargs="+", type=int, default=list(BUDGETS))
    add_recipe_args(parser)
    parser.add_argument(
        "--no-group-sparsity",
        action="store_true",
        help="skip the group-sparsity target-mode runs",
    )
    parser.add_argument("--gs-strength", type=float, default=0.5)
    parser.add_argument("--gs-growth", type=float, default=1.5)
    parser.add_argument(
        "--gs-methods",
        nargs="+",
        default=["constraint", "callback"],
        help="apply_group_sparsity methods for the target-mode rows; "
        "`callback-coupled`: `callback` with ProximalStep(coupled=True)",
    )
    parser.add_argument("--gs-prox-every", type=int, default=5)
    parser.add_argument(
        "--gs-rewind",
        action="store_true",
        help="SizeTarget(rewind=True): back to the dense weights once reached",
    )
    parser.add_argument(
        "--only-group-sparsity",
        action="store_true",
        help="run only the target-mode rows and merge them into the results "
        "(replacing earlier target-mode rows, keeping every other row)",
    )
    parser.add_argument(
        "--scratch-budgets",
        nargs="+",
        type=int,
        default=list(BUDGETS),
        help="budgets at which the pruned architecture is also trained from scratch",
    )
    parser.add_argument(
        "--only-scratch",
        action="store_true",
        help="run only the from-scratch rows missing at --scratch-budgets, "
        "from the recorded widths of each seed's best criterion",
    )
    parser.add_argument(
        "--kprune-rows-from",
        default=None,
        metavar="TAG",
        help="take kprune's rows of vs_torch_pruning{TAG}.json (same dense "
        "weights and recipe) instead of running those importances again",
    )
    parser.add_argument(
        "--append",
        action="store_true",
        help="keep this seed's earlier rows of other importances (and their "
        "group-sparsity and scratch rows); replace those of --importances",
    )
    parser.add_argument("--tag", default="", help="suffix of the result files")
    parser.add_argument(
        "--render", action="store_true", help="only re-render the markdown"
    )
    args = parser.parse_args(argv)
    path = os.path.join(REPO, "benchmarks", "results", f"prune_budget{args.tag}")
    if args.render:
        result = read_json(path + ".json")
        write_results(f"prune_budget{args.tag}", result, render(result))
        return result
    set_threads(args.threads)
    info = machine()
    info["load_before"] = os.getloadavg()
    data = mnist_split()
    x, y, xv, yv, xt, yt = data
    result = read_json(path + ".json", {})
    if args.only_group_sparsity:
        return _group_sparsity_only(result, args, argv, info, data)
    if args.only_scratch:
        return _scratch_only(result, args, argv, info, data)
    result.setdefault("models", {})
    imported = _kprune_rows(args.kprune_rows_from)
    for kind in args.models:
        entry = result["models"].setdefault(kind, {})
        entry["recipe"] = recipe(args, len(x))
        # each model keeps the command, machine and load of its own run
        this = {"command": command_line(__file__, argv), "machine": info}
        entry["runs_of"] = (entry.get("runs_of", []) if args.append else []) + [this]
        for seed in args.seeds:
            dense, dense_seconds = dense_model(kind, data, args, seed)
            args._dense_macs = macs(dense)
            dense_err = test_error(dense, xt, yt)
            print(f"{kind} seed {seed}: dense test error {dense_err:.4f}", flush=True)
            old = entry.get("seeds", {}).get(str(seed), {}).get("runs", [])
            runs = [  # --append: keep the other importances' rows
                r
                for r in old
                if args.append and r["importance"] not in args.importances
            ]
            best = {}
            entry.setdefault("seeds", {})[str(seed)] = {
                "dense_test_error": dense_err,
                "dense_val_error": test_error(dense, xv, yv),
                "dense_macs": args._dense_macs,
                "dense_train_seconds": dense_seconds,
                "runs": runs,
            }

            def save():  # after every run: a run cut short keeps what it did
                info["load_after"] = os.getloadavg()
                write_results(f"prune_budget{args.tag}", result, render(result))

            for run in imported.get((kind, seed), []):
                same_recipe = {**run.pop("recipe"), "finetune_schedule": None} == {
                    **entry["recipe"],
                    "finetune_schedule": None,
                }
                if abs(run.pop("dense_test_error") - dense_err) > 1e-9 or not (
                    same_recipe
                ):
                    raise SystemExit(
                        f"--kprune-rows-from: {kind} seed {seed} has other dense "
                        "weights or another recipe than this run."
                    )
                runs.append(run)
                if budget_best(best, run):
                    best[run["budget"]] = (run["val_error"], None, run["importance"])
            for importance in args.importances:
                for budget in args.budgets:
                    small, run = prune_run(dense, data, importance, budget, args, seed)
                    runs.append(run)
                    print(
                        json.dumps({k: v for k, v in run.items() if k != "widths"}),
                        flush=True,
                    )
                    save()
                    if budget_best(best, run):
                        best[budget] = (run["val_error"], small, importance)
            for budget in args.budgets:
                for method in [] if args.no_group_sparsity else args.gs_methods:
                    run = group_sparsity_run(dense, data, budget, args, seed, method)
                    runs.append(run)
                    print(
                        json.dumps({k: v for k, v in run.items() if k != "widths"}),
                        flush=True,
                    )
                    save()
                if budget in best and budget in args.scratch_budgets:
                    _, small, source = best[budget]
                    if small is None:  # an imported row: prune again
                        small, again = prune_run(
                            dense, data, source, budget, args, seed, finetune=False
                        )
                        _check_widths(runs, source, budget, again["widths"])
                    run = scratch_run(small, data, budget, source, args, seed)
                    runs.append(run)
                    print(json.dumps(run), flush=True)
                    save()
    return result


def _group_sparsity_only(result, args, argv, info, data):
    """Target-mode rows only, merged into an existing result (other rows
    kept; earlier target-mode rows of the same model and seed replaced)."""
    record = {"command": command_line(__file__, argv), "machine": info}
    result.setdefault("group_sparsity_runs", []).append(record)
    for kind in args.models:
        entry = result.setdefault("models", {}).setdefault(kind, {})
        entry.setdefault("recipe", recipe(args, len(data[0])))
        for seed in args.seeds:
            dense, _ = dense_model(kind, data, args, seed)
            seed_entry = entry.setdefault("seeds", {}).setdefault(str(seed), {})
            err = test_error(dense, data[4], data[5])
            record[f"{kind}_{seed}_dense_test_error"] = err
            print(f"{kind} seed {seed}: dense test error {err:.4f}", flush=True)
            old = seed_entry.get("runs", [])
            names = {gs_name(m, args.gs_rewind) for m in args.gs_methods}
            runs = [
                r
                for r in old
                if r["importance"] not in names
                and not ("group_sparsity" in r["importance"] and "method" not in r)
            ]
            seed_entry["runs"] = runs
            if "dense_macs" not in seed_entry:
                seed_entry.update(dense_test_error=err, dense_macs=macs(dense))
            for budget in args.budgets:
                for method in args.gs_methods:
                    run = group_sparsity_run(dense, data, budget, args, seed, method)
                    runs.append(run)
                    print(json.dumps({k: v for k, v in run.items()}), flush=True)
                    info["load_after"] = os.getloadavg()
                    write_results(f"prune_budget{args.tag}", result, render(result))
    return result


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def render(result):
    lines = ["# Pruning to a MACs budget: accuracy (issue 21)", ""]
    if "command" in result:  # files written before runs were kept per model
        lines.append(_run_text("Run", result["command"], result["machine"]))
    for extra in result.get("group_sparsity_runs", []):
        lines.append(_run_text("Target-mode rows", extra["command"], extra["machine"]))
    for extra in result.get("scratch_runs", []):
        lines.append(_run_text("From-scratch rows", extra["command"], extra["machine"]))
    lines.append("")
    lines.append(
        "Test error (%) after fine-tuning, by MACs reduction; in "
        "brackets the achieved MACs ratio where it is not the target. "
        "`one-shot` columns: validation error before fine-tuning."
    )
    for kind, entry in result["models"].items():
        lines += ["", f"## {kind}", ""]
        for run in entry.get("runs_of", [entry["run"]] if "run" in entry else []):
            lines += [_run_text("Run", run["command"], run["machine"]), ""]
        lines += [f"Recipe: {entry['recipe']}", ""]
        for seed, seed_entry in entry.get("seeds", {}).items():
            sources = sorted({r["source"] for r in seed_entry["runs"] if "source" in r})
            if sources:
                lines.append(
                    "Rows of "
                    + ", ".join(
                        sorted(
                            {
                                r["importance"]
                                for r in seed_entry["runs"]
                                if "source" in r
                            }
                        )
                    )
                    + f" (seed {seed}): kprune's side of {', '.join(sources)} "
                    "(the same dense weights, call and recipe)."
                )
                lines.append("")
            runs = seed_entry["runs"]
            if not runs:
                continue
            lines.append(
                f"Seed {seed}: dense test error "
                f"{100 * seed_entry['dense_test_error']:.2f} %, "
                f"{seed_entry['dense_macs']:,} MACs."
            )
            lines.append("")
            budgets = sorted({r["budget"] for r in runs})
            names = list(dict.fromkeys(_method(r) for r in runs))
            header = (
                ["method"]
                + [f"{b}x" for b in budgets]
                + [f"{b}x one-shot (val)" for b in budgets]
            )
            rows = []
            for name in names:
                row = [name]
                extra = []
                for b in budgets:
                    hit = [r for r in runs if _method(r) == name and r["budget"] == b]
                    if not hit:
                        row.append("-")
                        extra.append("-")
                        continue
                    r = hit[0]
                    cell = f"{100 * r['test_error']:.2f}"
                    if (
                        abs(r["macs_ratio"] - 1 / b) > 0.01 / b
                        or r["macs_ratio"] > 1 / b
                    ):
                        cell += f" ({r['macs_ratio']:.3f})"
                    if r["importance"] != name:  # whose architecture
                        cell += " [" + r["importance"].split("(")[1].split()[0] + "]"
                    row.append(cell)
                    one = r.get("val_error_one_shot")
                    extra.append("-" if one is None else f"{100 * one:.1f}")
                rows.append(row + extra)
            lines += md_table(header, rows)
            lines.append("")
        seeds = entry.get("seeds", {})
        if len(seeds) > 1:
            lines += _mean_table(seeds)
    if result.get("notes"):  # written by hand, kept in the JSON
        lines += ["", result["notes"].strip()]
    return "\n".join(lines) + "\n"


def _run_text(label, command, info):
    return (
        f"{label}: {run_line(command, info)}; load average "
        f"{tuple(round(v, 1) for v in info.get('load_before', ()))} before, "
        f"{tuple(round(v, 1) for v in info.get('load_after', ()))} after."
    )


def _method(run):
    name = run["importance"]
    return "scratch (best criterion's architecture)" if "scratch" in name else name


def _mean_table(seeds):
    """Markdown lines: mean test (and validation) error over the seeds."""
    runs = [r for seed_entry in seeds.values() for r in seed_entry["runs"]]
    budgets = sorted({r["budget"] for r in runs})
    names = list(dict.fromkeys(_method(r) for r in runs))
    dense = _mean([e["dense_test_error"] for e in seeds.values()])
    lines = [
        f"Mean over seeds {', '.join(seeds)} (dense: {100 * dense:.2f} %): test "
        "error % (validation error %) [number of seeds].",
        "",
    ]
    rows = []
    for name in names:
        row = [name]
        for b in budgets:
            hit = [r for r in runs if _method(r) == name and r["budget"] == b]
            if not hit:
                row.append("-")
                continue
            test = _mean([r["test_error"] for r in hit])
            val = _mean([r["val_error"] for r in hit])
            row.append(f"{100 * test:.2f} ({100 * val:.2f}) [{len(hit)}]")
        rows.append(row)
    return lines + md_table(["method"] + [f"{b}x" for b in budgets], rows) + [""]


if __name__ == "__main__":
    main()
