"""BatchNorm joins the groups of the layer it normalizes (conv -> BN).

A unit's group is `[kernel slice, bias, gamma_n, beta_n]`: when the
proximal step zeroes it, the BatchNorm outputs exactly 0 whatever its
moving statistics, and `kprune.surgery.slim` removes the channel. The
constraint method on BatchNorm is tested in `test_group_constraints.py`
(which the JAX pass runs again).
"""

import math
import os

import keras
import numpy as np
import pytest

import kprune
import kprune.sparsity
from kprune.regularizers.targets import batchnorm_partners

L = keras.layers
DATA = os.path.join(os.path.dirname(kprune.__file__), "data", "mnist_subset.npz")


def to_np(x):
    return keras.ops.convert_to_numpy(x)


def conv_bn(use_bias=False, scale=True, center=True, seed=0):
    """conv -> BN -> ReLU -> conv ('same': a constant channel cannot be
    folded at the borders) -> BN -> ReLU -> pool -> Dense."""
    keras.utils.set_random_seed(seed)
    x = keras.Input((8, 8, 1))
    h = L.Conv2D(6, 3, padding="same", use_bias=use_bias, name="conv1")(x)
    h = L.BatchNormalization(scale=scale, center=center, name="bn1")(h)
    h = L.ReLU()(h)
    h = L.Conv2D(5, 3, padding="same", use_bias=False, name="conv2")(h)
    h = L.BatchNormalization(name="bn2")(h)
    h = L.ReLU()(h)
    h = L.GlobalAveragePooling2D()(h)
    return keras.Model(x, L.Dense(3, name="out")(h))


def randomize_batchnorm(model, rng):
    """Moving statistics and affine weights far from their initial values."""
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(size=n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2, n).astype("float32"))
            if layer.gamma is not None:
                layer.gamma.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
            if layer.beta is not None:
                layer.beta.assign(rng.normal(size=n).astype("float32"))


def numpy_joint_prox(kernel, vectors, t, lam):
    """Group soft-threshold of `[kernel[..., n], v[n] for v in vectors]`."""
    kernel = np.asarray(kernel, "float64")
    vectors = [np.asarray(v, "float64") for v in vectors]
    size = math.prod(kernel.shape[:-1]) + len(vectors)
    tau = t * lam * math.sqrt(size)
    kernel, vectors = kernel.copy(), [v.copy() for v in vectors]
    for n in range(kernel.shape[-1]):
        entries = [kernel[..., n].ravel()] + [v[n : n + 1] for v in vectors]
        entries = np.concatenate(entries)
        norm = np.linalg.norm(entries)
        factor = max(1.0 - tau / norm, 0.0) if norm > 0 else 0.0
        kernel[..., n] *= factor
        for v in vectors:
            v[n] *= factor
    return kernel, vectors


def test_partners_found_in_the_graph():
    model = conv_bn()
    assert batchnorm_partners(model.get_layer("conv1")) == ("bn1/gamma", "bn1/beta")
    only_gamma = conv_bn(center=False)
    assert batchnorm_partners(only_gamma.get_layer("conv1")) == ("bn1/gamma",)
    # Without gamma, a zero group leaves -moving_mean / sqrt(var + eps):
    # no BatchNorm weights can silence the channel, so none join.
    assert batchnorm_partners(conv_bn(scale=False).get_layer("conv1")) == ()
    assert batchnorm_partners(model.get_layer("out")) == ()
    # A second reader of the conv output (a residual Add): no partners.
    x = keras.Input((8, 8, 4))
    h = L.Conv2D(4, 3, padding="same", name="conv")(x)
    b = L.BatchNormalization(name="bn")(h)
    shared = keras.Model(x, L.Add()([h, b]))
    assert batchnorm_partners(shared.get_layer("conv")) == ()
    # A frozen BatchNorm is not trained: no partners.
    model.get_layer("bn1").trainable = False
    assert batchnorm_partners(model.get_layer("conv1")) == ()


def test_apply_records_partners_and_opt_out():
    model = conv_bn(use_bias=True)
    sparse = kprune.sparsity.apply_group_sparsity(model, 1e-3)
    reg = sparse.get_layer("conv1").kernel_regularizer
    assert reg.partners == ("bn1/gamma", "bn1/beta")
    assert reg.get_config()["partners"] == ["bn1/gamma", "bn1/beta"]
    assert type(reg).from_config(reg.get_config()).partners == reg.partners
    assert sparse.get_layer("conv2").kernel_regularizer.partners == (
        "bn2/gamma",
        "bn2/beta",
    )
    plain = kprune.sparsity.apply_group_sparsity(model, 1e-3, batchnorm=False)
    assert plain.get_layer("conv1").kernel_regularizer.partners == ()
    assert "partners" not in plain.get_layer("conv1").kernel_regularizer.get_config()
    with pytest.raises(ValueError, match="partners"):
        kprune.regularizers.GroupLasso(partners="bn1/gamma")
    with pytest.raises(ValueError, match="partners"):
        kprune.regularizers.GroupLasso(partners=["gamma"])


def test_proximal_step_matches_numpy_joint_prox():
    rng = np.random.default_rng(1)
    sparse = kprune.sparsity.apply_group_sparsity(conv_bn(use_bias=True), 0.05)
    randomize_batchnorm(sparse, rng)
    conv, bn = sparse.get_layer("conv1"), sparse.get_layer("bn1")
    # Unit 1: weak kernel slice, bias and BatchNorm weights (dies); unit 3:
    # weak kernel slice and bias, strong gamma (lives: gamma is in its group).
    weak = np.r_[1, 0.05, 1, 0.05, 1, 1].astype("float32")
    conv.kernel.assign(to_np(conv.kernel) * weak)
    conv.bias.assign(rng.normal(size=6).astype("float32") * weak * 0.1)
    bn.gamma.assign(to_np(bn.gamma) * np.r_[1, 0.01, 1, 1, 1, 1])
    bn.beta.assign(to_np(bn.beta) * np.r_[1, 0.01, 1, 1, 1, 1])
    before = [to_np(v) for v in (conv.kernel, conv.bias, bn.gamma, bn.beta)]
    step = kprune.callbacks.ProximalStep(step_size=1.0)
    step.set_model(sparse)
    stats = step.apply()
    want_kernel, want_vectors = numpy_joint_prox(before[0], before[1:], 1.0, 0.05)
    np.testing.assert_allclose(to_np(conv.kernel), want_kernel, atol=1e-6)
    for got, want in zip((conv.bias, bn.gamma, bn.beta), want_vectors):
        np.testing.assert_allclose(to_np(got), want, atol=1e-6)
    dead = np.all(want_kernel == 0, axis=(0, 1, 2))
    np.testing.assert_array_equal(np.flatnonzero(dead), [1])
    assert to_np(bn.gamma)[1] == 0 and to_np(bn.beta)[1] == 0
    # Kernel and bias alone, unit 3 would have died too.
    alone, _ = numpy_joint_prox(before[0], before[1:2], 1.0, 0.05)
    np.testing.assert_array_equal(np.flatnonzero(np.all(alone == 0, (0, 1, 2))), [1, 3])
    # prox_zero_groups counts whole groups (kernel slice and BatchNorm).
    assert stats["prox_zero_groups"] == 1
    # include_batchnorm=False leaves the BatchNorm alone.
    other = kprune.sparsity.apply_group_sparsity(conv_bn(use_bias=True), 0.05)
    randomize_batchnorm(other, np.random.default_rng(1))
    gamma = to_np(other.get_layer("bn1").gamma)
    step = kprune.callbacks.ProximalStep(step_size=1.0, include_batchnorm=False)
    step.set_model(other)
    step.apply()
    np.testing.assert_array_equal(to_np(other.get_layer("bn1").gamma), gamma)


def test_named_layers_find_their_batchnorm():
    model = conv_bn()
    randomize_batchnorm(model, np.random.default_rng(2))
    step = kprune.callbacks.ProximalStep(
        step_size=1.0,
        layers={"conv1": 10.0},  # every group of conv1 dies
    )
    step.set_model(model)
    step.apply()
    bn = model.get_layer("bn1")
    assert np.all(to_np(bn.gamma) == 0) and np.all(to_np(bn.beta) == 0)


@pytest.mark.parametrize("center", [True, False])
def test_dead_group_silences_the_channel_and_slim_is_exact(center):
    rng = np.random.default_rng(3)
    sparse = kprune.sparsity.apply_group_sparsity(conv_bn(center=center), 0.05)
    randomize_batchnorm(sparse, rng)
    conv = sparse.get_layer("conv1")
    kernel = to_np(conv.kernel)
    kernel[..., [1, 4]] *= 1e-3  # two weak filters
    conv.kernel.assign(kernel)
    bn = sparse.get_layer("bn1")
    bn.gamma.assign(to_np(bn.gamma) * np.r_[1, 1e-3, 1, 1, 1e-3, 1])
    if center:
        bn.beta.assign(to_np(bn.beta) * np.r_[1, 1e-3, 1, 1, 1e-3, 1])
    x = rng.normal(size=(4, 8, 8, 1)).astype("float32")
    # Before the step, a zero kernel alone leaves the channel alive: the
    # BatchNorm outputs a non-zero constant, which the 'same' convolution
    # after it cannot fold (zero padding at the borders).
    zeroed = keras.models.clone_model(sparse)
    zeroed.set_weights(sparse.get_weights())
    zeroed.get_layer("conv1").kernel.assign(kernel * np.r_[1, 0, 1, 1, 0, 1])
    assert "conv1" not in kprune.surgery.dead_units(zeroed)
    step = kprune.callbacks.ProximalStep(step_size=1.0, layers={"conv1": 0.01})
    step.set_model(sparse)
    step.apply()
    assert np.all(to_np(bn.gamma)[[1, 4]] == 0)
    if center:
        assert np.all(to_np(bn.beta)[[1, 4]] == 0)
    assert (
        to_np(sparse.get_layer("bn1")(to_np(conv(x)), training=False))[
            ..., [1, 4]
        ].max()
        == 0.0
    )
    np.testing.assert_array_equal(kprune.surgery.dead_units(sparse)["conv1"], [1, 4])
    small = kprune.surgery.slim(sparse)
    assert small.get_layer("conv1").filters == 4
    np.testing.assert_allclose(to_np(small(x)), to_np(sparse(x)), atol=1e-5)


def test_sparsity_logger_sees_the_same_groups():
    sparse = kprune.sparsity.apply_group_sparsity(conv_bn(), 0.05)
    conv = sparse.get_layer("conv1")
    kernel = to_np(conv.kernel)
    kernel[..., 0] = 0.0  # kernel slice zero, BatchNorm weights not
    conv.kernel.assign(kernel)
    logger = kprune.callbacks.SparsityLogger()
    logger.set_model(sparse)
    assert logger.compute()["live_units/conv1"] == 6
    bn = sparse.get_layer("bn1")
    bn.gamma.assign(to_np(bn.gamma) * np.r_[0, 1, 1, 1, 1, 1])
    bn.beta.assign(np.r_[0, 1, 1, 1, 1, 1].astype("float32"))
    assert logger.compute()["live_units/conv1"] == 5


@pytest.fixture(scope="module")
def digits():
    data = np.load(DATA)
    x = data["x_train"][:512, ::2, ::2, None].astype("float32") / 255.0
    return x[:, 3:11, 3:11], data["y_train"][:512].astype("int64")


def test_size_target_reaches_a_macs_target_with_batchnorm(digits):
    # The constraint method (ProximalStep shares the targets and groups:
    # tested above; with it, SizeTarget checks after each proximal step).
    x, y = digits
    model = conv_bn(seed=4)
    model = keras.Model(model.input, L.Dense(10)(model.get_layer("out").input))
    sparse = kprune.sparsity.apply_group_sparsity(model, 0.03, method="constraint")
    assert sparse.get_layer("conv1").kernel_constraint.partners == (
        "bn1/gamma",
        "bn1/beta",
    )
    sparse.compile(
        keras.optimizers.Adam(1e-2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    target = kprune.callbacks.SizeTarget(macs=0.5, growth=2.0, finish=False)
    logs = sparse.fit(x, y, batch_size=32, epochs=3, verbose=0, callbacks=[target])
    logs = logs.history
    assert logs["size_target_reached"][-1] == 1, logs["size_ratio"]
    assert target.finished_units == 0  # reached by training, no final cut
    small = kprune.surgery.slim(sparse)
    ratio = kprune.report.summary(small)["macs"] / kprune.report.summary(sparse)["macs"]
    assert ratio <= 0.5
    np.testing.assert_allclose(to_np(small(x[:8])), to_np(sparse(x[:8])), atol=1e-5)


def test_a_channel_whose_gamma_and_beta_are_zero_is_dead_whatever_its_kernel():
    # BatchNorm outputs `beta` where `gamma` is 0: with beta 0 too the
    # channel is exactly 0 (removable), with beta != 0 a constant that a
    # padded conv behind a ReLU cannot fold (kept).
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(6, 3, padding="same", name="c1")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Conv2D(4, 3, padding="same", name="c2")(h)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(h))
    bn = model.get_layer("bn")
    gamma, beta, mean, var = bn.get_weights()
    gamma[[2, 4]] = 0.0
    beta[2], beta[4] = 0.0, 0.5
    bn.set_weights([gamma, beta, mean + 0.3, var + 1.0])
    assert {k: v.tolist() for k, v in kprune.surgery.dead_units(model).items()} == {
        "c1": [2]
    }
    small = kprune.surgery.slim(model)
    x = np.random.default_rng(0).random((2, 8, 8, 3)).astype("float32")
    assert small.get_layer("c1").filters == 5
    np.testing.assert_allclose(small(x), model(x), atol=1e-6)
