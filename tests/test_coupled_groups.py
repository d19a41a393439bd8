"""Group sparsity on units coupled across layers (residual `Add`, depthwise)."""

import warnings

import keras
import numpy as np
import pytest

import kprune
import kprune.sparsity
from kprune.ops import coupled_group_prox, sparse_group_prox
from kprune.regularizers.coupling import coupled_units
from kprune.regularizers.targets import default_target

L = keras.layers


def _residual(width=8, seed=0):
    """stem -> [a -> b] + stem -> c: the channels of stem and b are one set."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    stem = L.Dense(width, activation="relu", name="stem")(inputs)
    h = L.Dense(width, activation="relu", name="a")(stem)
    h = L.Dense(width, name="b")(h)
    h = L.ReLU()(L.Add()([stem, h]))
    h = L.Dense(width, activation="relu", name="c")(h)
    return keras.Model(inputs, L.Dense(3, name="out")(h))


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype("float32")
    return x, rng.integers(0, 3, n)


def _zero_units(layer):
    kernel = keras.ops.convert_to_numpy(layer.kernel)
    return set(np.flatnonzero(np.abs(kernel).sum(axis=0) == 0).tolist())


# -- the operator -------------------------------------------------------------


def _reference(members, comps, t, alpha):
    """NumPy: soft-threshold, then shrink each union group by its norm."""
    out, sq, size, weight = [], {}, {}, {}
    for (kernel, vectors, lam), comp in zip(members, comps):
        kernel = np.sign(kernel) * np.maximum(np.abs(kernel) - t * alpha * lam, 0)
        vectors = [
            np.sign(v) * np.maximum(np.abs(v) - t * alpha * lam, 0) for v in vectors
        ]
        p = kernel[..., 0].size + len(vectors)
        for n, c in enumerate(comp):
            s = np.square(kernel[..., n]).sum() + sum(v[n] ** 2 for v in vectors)
            sq[c] = sq.get(c, 0.0) + s
            size[c] = size.get(c, 0) + p
            weight[c] = weight.get(c, 0.0) + p * lam
        out.append((kernel, vectors))
    result = []
    for (kernel, vectors), comp in zip(out, comps):
        factor = np.array(
            [
                max(
                    1
                    - t
                    * (1 - alpha)
                    * weight[c]
                    / size[c]
                    * np.sqrt(size[c])
                    / max(np.sqrt(sq[c]), 1e-30),
                    0.0,
                )
                for c in comp
            ]
        )
        result.append((kernel * factor, [v * factor for v in vectors]))
    return result


@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_union_groups_match_a_numpy_reference(alpha):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 3, 2, 4)).astype("float32")
    b = rng.normal(size=(5, 4)).astype("float32") * 0.3
    bias = rng.normal(size=4).astype("float32")
    comps = [np.array([0, 1, 2, 3]), np.array([1, 0, 4, 5])]
    out = coupled_group_prox(
        [(a, [bias], -1, 0.8), (b, [], -1, 0.4)], comps, t=0.5, alpha=alpha
    )
    want = _reference([(a, [bias], 0.8), (b, [], 0.4)], comps, 0.5, alpha)
    for (k, v), (wk, wv) in zip(out, want):
        np.testing.assert_allclose(np.asarray(k), wk, rtol=1e-5, atol=1e-6)
        for got, ref in zip(v, wv):
            np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5, atol=1e-6)


def test_singleton_groups_are_the_per_layer_operator():
    rng = np.random.default_rng(1)
    kernel = rng.normal(size=(3, 3, 4, 5)).astype("float32")
    bias, gamma = rng.normal(size=(2, 5)).astype("float32")
    lam = np.abs(rng.normal(size=5)).astype("float32")
    want = sparse_group_prox(kernel, bias, 0.3, lam, alpha=0.2, partners=[gamma])
    got_kernel, (got_bias, got_gamma) = coupled_group_prox(
        [(kernel, [bias, gamma], -1, lam)], [np.arange(5)], 0.3, alpha=0.2
    )[0]
    np.testing.assert_allclose(np.asarray(got_kernel), np.asarray(want[0]), atol=1e-6)
    np.testing.assert_allclose(np.asarray(got_bias), np.asarray(want[1]), atol=1e-6)
    np.testing.assert_allclose(np.asarray(got_gamma), np.asarray(want[2][0]), atol=1e-6)


def test_a_coupled_group_dies_in_every_member_and_held_groups_stay():
    strong = np.array([[3.0, 0.1, 0.1], [4.0, 0.1, 0.1]])
    weak = np.array([[0.0, 0.1, 0.1], [0.0, 0.0, 0.1]])
    out = coupled_group_prox(
        [(strong, [], -1, 1.0), (weak, [], -1, 1.0)],
        [[0, 1, 2], [0, 1, 2]],
        t=0.5,
        held=np.array([False, False, True]),
    )
    (a, _), (b, _) = out
    a, b = np.asarray(a), np.asarray(b)
    assert np.all(a[:, 1] == 0) and np.all(b[:, 1] == 0)  # weak union: dead
    assert np.all(b[:, 0] == 0) and np.all(a[:, 0] > 0)  # shrunk by the union
    np.testing.assert_allclose(a[:, 2], strong[:, 2])  # held: untouched
    with pytest.raises(ValueError, match="one group id per unit"):
        coupled_group_prox([(strong, [], -1, 1.0)], [[0, 1]], t=0.5)


# -- which units are coupled -----------------------------------------------


def test_coupled_units_of_a_residual_model():
    model = _residual()
    names = ["stem", "a", "b", "c"]
    targets = [default_target(model.get_layer(n)) for n in names]
    coupling = coupled_units(model, targets)
    stem, a, b, c = coupling.components
    np.testing.assert_array_equal(stem, b)  # one channel set through Add
    assert not set(a) & set(stem) and not set(c) & set(stem)
    assert [coupling.shared(i) for i in range(4)] == [True, False, True, False]
    assert not coupling.held.any()
    # without the stem as a target, its channels are held, and it is named
    partial = coupled_units(model, targets[1:])
    assert partial.held[partial.components[1]].all()
    assert partial.held_by == {1: ["stem"]}


def test_a_depthwise_conv_is_coupled_to_the_conv_before_it():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    h = L.Conv2D(6, 1, name="expand")(inputs)
    h = L.DepthwiseConv2D(3, padding="same", name="dw")(h)
    h = L.Conv2D(4, 1, name="project")(h)
    model = keras.Model(inputs, L.GlobalAveragePooling2D()(h))
    targets = [default_target(model.get_layer(n)) for n in ("expand", "dw")]
    expand, dw = coupled_units(model, targets).components
    np.testing.assert_array_equal(expand, dw)


def test_a_kernel_that_does_not_make_the_output_units_is_not_coupled():
    # A SeparableConv's depthwise kernel has as many units as its output
    # here, but they are its input channels: never matched to the output.
    from kprune.regularizers.targets import GroupTarget

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 6))
    h = L.Conv2D(6, 1, name="before")(inputs)
    h = L.SeparableConv2D(6, 3, padding="same", name="sep")(h)
    h = L.Add()([h, L.Conv2D(6, 1, name="side")(inputs)])
    model = keras.Model(inputs, L.GlobalAveragePooling2D()(h))
    sep = model.get_layer("sep")
    targets = [
        default_target(sep),
        default_target(model.get_layer("side")),
        GroupTarget(sep, "depthwise_kernel", (-2, -1), False),
    ]
    pointwise, side, depthwise = coupled_units(model, targets).components
    np.testing.assert_array_equal(pointwise, side)
    assert not set(depthwise) & (set(pointwise) | set(side))


# -- ProximalStep and SizeTarget -------------------------------------------


def _sparse_residual(strength):
    model = kprune.sparsity.apply_group_sparsity(
        _residual(), strength=strength, method="callback"
    )
    model.compile(keras.optimizers.SGD(0.05), "sparse_categorical_crossentropy")
    return model


def _one_proximal_step(coupled):
    """One proximal step (t = 1, lambda = 0.05, no gradient step) on the
    residual model with channel 3 weak in `stem` only and channel 5 weak in
    both producers."""
    model = kprune.sparsity.apply_group_sparsity(
        _residual(), strength=1.0, method="callback"
    )
    for name, column, value in (("stem", 3, 0.01), ("stem", 5, 0.01), ("b", 5, 0.01)):
        layer = model.get_layer(name)
        kernel, bias = layer.get_weights()
        kernel[:, column] = value
        layer.set_weights([kernel, bias])
    b = model.get_layer("b")
    kernel, bias = b.get_weights()
    kernel[:, 3] = 1.0
    b.set_weights([kernel, bias])
    model.compile(keras.optimizers.SGD(0.0), "sparse_categorical_crossentropy")
    step = kprune.callbacks.ProximalStep(step_size=1.0, strength=0.05, coupled=coupled)
    x, y = _data(8)
    model.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[step])
    return model


def test_proximal_step_kills_a_residual_channel_in_every_layer_at_once():
    model = _one_proximal_step(coupled=True)
    stem, b = _zero_units(model.get_layer("stem")), _zero_units(model.get_layer("b"))
    assert stem == b == {5}  # channel 3 lives on through `b`'s strong slice
    small = kprune.surgery.slim(model)
    assert small.get_layer("stem").units == 7
    x, _ = _data()
    np.testing.assert_allclose(
        small.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5
    )


def test_per_layer_groups_zero_units_that_slim_cannot_remove():
    # Per-layer groups (the default) zero `stem`'s unit 3 while `b` still
    # makes channel 3: slim keeps it.
    model = _one_proximal_step(coupled=False)
    stem, b = _zero_units(model.get_layer("stem")), _zero_units(model.get_layer("b"))
    assert stem == {3, 5} and b == {5}
    small = kprune.surgery.slim(model)
    assert small.get_layer("stem").units == 7


def test_held_units_are_not_shrunk_and_the_warning_names_the_layer():
    x, y = _data()
    model = _residual()
    model.compile(keras.optimizers.SGD(0.05), "sparse_categorical_crossentropy")
    step = kprune.callbacks.ProximalStep(layers=["a", "b"], strength=10.0, coupled=True)
    with pytest.warns(UserWarning, match="of 'b' .*'stem'"):
        model.fit(x, y, epochs=1, batch_size=64, verbose=0, callbacks=[step])
    assert not _zero_units(model.get_layer("b"))  # held: not shrunk
    assert len(_zero_units(model.get_layer("a"))) == 8  # free: all dead


@pytest.mark.parametrize("coupled", [False, True])
def test_size_target_counts_and_freezes_whole_groups(coupled):
    x, y = _data(256)
    model = _sparse_residual(1e-3)
    base = kprune.report.summary(model)["macs"]
    callbacks = [
        kprune.callbacks.ProximalStep(every_n_steps=2, coupled=coupled),
        kprune.callbacks.SizeTarget(macs=0.5, growth=2.0, min_units=0.1),
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, epochs=8, batch_size=16, verbose=0, callbacks=callbacks)
    assert not [w for w in caught if "does not shrink" in str(w.message)]
    assert callbacks[1].reached
    stem, b = _zero_units(model.get_layer("stem")), _zero_units(model.get_layer("b"))
    assert stem == b  # frozen together
    small = kprune.surgery.slim(model)
    assert kprune.report.summary(small)["macs"] <= 0.5 * base


def test_the_options_round_trip():
    step = kprune.callbacks.ProximalStep(coupled=True)
    assert kprune.callbacks.ProximalStep.from_config(step.get_config()).coupled is True
    target = kprune.callbacks.SizeTarget(macs=0.5, coupled=False)
    assert kprune.callbacks.SizeTarget.from_config(target.get_config()).coupled is False


def test_size_target_with_per_layer_constraints_freezes_only_whole_groups():
    x, y = _data(256)
    model = kprune.sparsity.apply_group_sparsity(
        _residual(), strength=1e-3, method="constraint"
    )
    model.compile(keras.optimizers.SGD(0.05), "sparse_categorical_crossentropy")
    base = kprune.report.summary(model)["macs"]
    target = kprune.callbacks.SizeTarget(macs=0.5, growth=2.0, every_n_steps=2)
    model.fit(x, y, epochs=8, batch_size=16, verbose=0, callbacks=[target])
    assert target.reached
    keep = {u.layer.name: u.live() for u in target._units}
    np.testing.assert_array_equal(keep["stem"], keep["b"])  # never half a channel
    small = kprune.surgery.slim(model)
    assert kprune.report.summary(small)["macs"] <= 0.5 * base
    assert small.get_layer("stem").units == int(keep["stem"].sum())
