"""`kprune.callbacks.SizeTarget`: training-time group sparsity to a size."""

import os

import keras
import numpy as np
import pytest

import kprune
import kprune.sparsity

L = keras.layers
DATA = os.path.join(os.path.dirname(kprune.__file__), "data", "mnist_subset.npz")


@pytest.fixture(scope="module")
def mnist():
    data = np.load(DATA)
    x = data["x_train"][:1536].reshape(-1, 784).astype("float32") / 255.0
    return x, data["y_train"][:1536].astype("int64")


def _mlp():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((784,)),
            L.Dense(48, activation="relu", name="fc1"),
            L.Dense(24, activation="relu", name="fc2"),
            L.Dense(10, name="out"),
        ]
    )


def _macs(model):
    return kprune.report.summary(model)["macs"]


def _fit(model, data, callbacks, epochs):
    model.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x, y = data
    return model.fit(
        x, y, batch_size=64, epochs=epochs, verbose=0, callbacks=callbacks
    ).history


@pytest.mark.parametrize("method", ["constraint", "callback"])
def test_reaches_and_holds_the_target(mnist, method):
    dense = _mlp()
    sparse = kprune.sparsity.apply_group_sparsity(dense, 0.5, method=method)
    target = kprune.callbacks.SizeTarget(macs=0.25, growth=1.5)
    callbacks = [target]
    if method == "callback":  # checked right after each proximal step
        callbacks = [kprune.callbacks.ProximalStep(every_n_steps=2), target]
    logs = _fit(sparse, mnist, callbacks, epochs=3)
    reached = logs["size_target_reached"]
    assert reached[-1] == 1 and target.reached
    first = reached.index(1)
    assert first <= 1 and reached[first:] == [1] * (3 - first)
    assert target.finished_units == 0  # reached by training, not the final cut
    small = kprune.surgery.slim(sparse)
    ratio = _macs(small) / _macs(dense)
    assert 0.2 <= ratio <= 0.25, ratio  # lands just under the target
    after = logs["size_ratio"][first:]
    assert after == [pytest.approx(ratio)] * len(after)  # the size holds
    # on_target="freeze": shrinkage off once reached; the strength it took
    # is logged, was raised from 0.5, and never grows again.
    assert logs["reg_strength"][first:] == [0.0] * len(after)
    held = logs["size_target_strength"][first:]
    assert held == [held[0]] * len(after) and held[0] > 0.5
    # It kept training at that size: the slimmed model classifies (10
    # classes; about 0.72 on these 1536 images when this test was written).
    x, y = mnist
    pred = np.argmax(small.predict(x, verbose=0), -1)
    assert np.mean(pred == y) > 0.5


def test_hold_keeps_the_strength(mnist):
    sparse = kprune.sparsity.apply_group_sparsity(_mlp(), 0.5, method="constraint")
    target = kprune.callbacks.SizeTarget(macs=0.5, on_target="hold")
    logs = _fit(sparse, mnist, [target], epochs=3)
    first = logs["size_target_reached"].index(1)
    assert first <= 1
    strengths = logs["reg_strength"][first:]
    assert strengths == [strengths[0]] * len(strengths) and strengths[0] > 0.5
    ratios = logs["size_ratio"][first:]
    assert ratios == sorted(ratios, reverse=True) and ratios[0] <= 0.5


def test_finish_cuts_to_the_target(mnist):
    sparse = kprune.sparsity.apply_group_sparsity(_mlp(), 1e-6, method="constraint")
    target = kprune.callbacks.SizeTarget(macs=0.3, growth=1.01, every_n_steps=50)
    x, y = mnist
    _fit(sparse, (x[:256], y[:256]), [target], epochs=1)  # far too short
    assert target.finished_units > 0 and target.reached
    ratio = _macs(kprune.surgery.slim(sparse)) / _macs(_mlp())
    assert 0.2 <= ratio <= 0.3
    widths = kprune.report.summary(kprune.surgery.slim(sparse))["widths"]
    assert widths["fc1"] >= 5 and widths["fc2"] >= 3  # min_units=0.1 floor


def test_order_config_and_errors(mnist):
    sparse = kprune.sparsity.apply_group_sparsity(_mlp(), 0.5)
    sparse.compile("adam", "sparse_categorical_crossentropy")
    x, y = mnist
    with pytest.raises(ValueError, match="after ProximalStep"):
        sparse.fit(
            x[:64],
            y[:64],
            verbose=0,
            callbacks=[
                kprune.callbacks.SizeTarget(macs=0.5),
                kprune.callbacks.ProximalStep(),
            ],
        )
    target = kprune.callbacks.SizeTarget(params=0.3, on_target="hold", min_units=0.2)
    copy = kprune.testing.run_serialization_test(target)
    assert copy.get_config() == target.get_config()
    assert copy.metric == "params" and copy.min_units == 0.2
    plain = keras.Sequential([keras.Input((8,)), L.Dense(2)])
    plain.compile("sgd", "mse")
    with pytest.raises(ValueError, match="strength"):
        plain.fit(
            np.ones((4, 8)),
            np.ones((4, 2)),
            verbose=0,
            callbacks=[kprune.callbacks.SizeTarget(macs=0.5)],
        )
    with pytest.raises(ValueError, match="exactly one"):
        kprune.callbacks.SizeTarget()
    with pytest.raises(ValueError, match="on_target"):
        kprune.callbacks.SizeTarget(macs=0.5, on_target="stop")
    with pytest.raises(ValueError, match="min_units"):
        kprune.callbacks.SizeTarget(macs=0.5, min_units=1.0)


def test_rewind_restarts_the_kept_units_from_the_start(mnist):
    dense = _mlp()
    sparse = kprune.sparsity.apply_group_sparsity(dense, 0.5, method="constraint")
    target = kprune.callbacks.SizeTarget(macs=0.5, rewind=True)
    seen = {}

    class Spy(keras.callbacks.Callback):  # runs right after SizeTarget's check
        def on_train_batch_begin(self, batch, logs=None):
            if target.reached and not seen:
                seen["kernel"] = keras.ops.convert_to_numpy(
                    self.model.get_layer("fc1").kernel
                )

    _fit(sparse, mnist, [target, Spy()], epochs=2)
    assert target.reached and seen
    start = dense.get_layer("fc1").get_weights()[0]
    kept = np.any(seen["kernel"] != 0, axis=0)
    assert 0 < kept.sum() < 48
    np.testing.assert_array_equal(seen["kernel"][:, kept], start[:, kept])
    assert target.get_config()["rewind"] is True


def test_finish_keeps_the_min_units_floor(mnist):
    # 2 % of the MACs is below what the floor allows: the final cut stops at
    # the floor (every layer keeps its best quarter) and says so; it used to
    # zero whole layers (a ResNet block lost every unit of a residual branch).
    sparse = kprune.sparsity.apply_group_sparsity(_mlp(), 1e-6, method="constraint")
    target = kprune.callbacks.SizeTarget(
        macs=0.02, growth=1.01, every_n_steps=50, min_units=0.25
    )
    x, y = mnist
    _fit(sparse, (x[:256], y[:256]), [target], epochs=1)
    assert target.finished_units > 0 and not target.reached
    live = {
        layer.name: int(np.sum(np.linalg.norm(layer.kernel.numpy(), axis=0) > 0))
        for layer in sparse.layers[:2]
    }
    assert live == {"fc1": 12, "fc2": 6}, live  # ceil(0.25 * 48), ceil(0.25 * 24)
    assert target.ratio > 0.02
