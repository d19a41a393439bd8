"""Tests for kprune.criteria.gradient_means (Taylor importance's gradients)."""

import keras
import numpy as np
import pytest

import kprune
from kprune.criteria import gradient_means, group_importance

L = keras.layers


def _bn_net(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((6,))
    h = L.Dense(8, name="fc1")(inp)
    h = L.BatchNormalization(name="bn")(h)
    h = L.ReLU()(h)
    return keras.Model(inp, L.Dense(3, name="out")(h))


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 6)).astype("float32"), rng.integers(0, 3, n)


def test_gradient_of_a_linear_model_by_hand():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), L.Dense(2, name="d")])
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 3)).astype("float32")
    t = rng.normal(size=(8, 2)).astype("float32")
    kernel, bias = model.layers[0].get_weights()
    error = x @ kernel + bias - t
    # mean squared error over 8 samples x 2 outputs; two batches of 4
    grads = gradient_means(model, x, t, loss="mse", batch_size=4)[id(model.layers[0])]
    want = sum(2.0 / (4 * 2) * x[lo : lo + 4].T @ error[lo : lo + 4] for lo in (0, 4))
    np.testing.assert_allclose(grads["kernel"], want / 2, rtol=1e-4, atol=1e-6)


def test_inference_mode_keeps_the_scale_information_of_bn_inputs():
    model = _bn_net()
    x, y = _data()
    # moving statistics far from the batch's: inference differs from fit
    model.get_layer("bn").set_weights(
        [np.ones(8), np.zeros(8), np.full(8, 0.3), np.full(8, 2.0)]
    )
    before = [w.copy() for w in model.get_weights()]
    kernel = model.get_layer("fc1").get_weights()[0]
    layer = id(model.get_layer("fc1"))
    train = gradient_means(model, x, y, batch_size=64, training=True)[layer]
    infer = gradient_means(model, x, y, batch_size=64)[layer]

    # With batch statistics the loss is invariant to each unit's scale (up
    # to BatchNorm's epsilon): sum_i w_i dL/dw_i = 0 per unit. With the
    # moving ones it is not.
    def scale_share(grad):
        products = kernel * grad
        return np.abs(products.sum(axis=0)) / np.abs(products).sum(axis=0)

    assert scale_share(train["kernel"]).max() < 0.05
    assert scale_share(infer["kernel"]).max() > 0.5
    # neither mode changes the model (moving statistics restored)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    # the choice reaches group_importance and kprune.prune
    s_train = group_importance(model, "taylor", (x, y), training=True)
    s_infer = group_importance(model, "taylor", (x, y))
    assert not np.allclose(s_train, s_infer)
    small, plan = kprune.prune(model, (x, y), params=0.7, importance="taylor")
    assert plan.report["params_ratio"] <= 0.7


def test_inference_mode_is_deterministic_with_dropout():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((6,)), L.Dense(8, name="a"), L.Dropout(0.5), L.Dense(3)]
    )
    x, y = _data(32)
    first = gradient_means(model, x, y)[id(model.layers[0])]["kernel"]
    again = gradient_means(model, x, y)[id(model.layers[0])]["kernel"]
    np.testing.assert_array_equal(first, again)
    noisy = gradient_means(model, x, y, training=True)[id(model.layers[0])]
    assert not np.allclose(noisy["kernel"], first)


def test_training_must_be_a_bool():
    model = _bn_net()
    x, y = _data(8)
    with pytest.raises(ValueError, match="`training`.*Received: training='yes'"):
        gradient_means(model, x, y, training="yes")


def _two_heads(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((6,))
    h = L.Dense(8, activation="relu", name="trunk")(inp)
    return keras.Model(inp, [L.Dense(3, name="a")(h), L.Dense(2, name="b")(h)])


def test_losses_per_output_of_a_two_headed_model():
    model = _two_heads()
    x, _ = _data(16)
    rng = np.random.default_rng(2)
    ya = rng.normal(size=(16, 3)).astype("float32")
    yb = rng.normal(size=(16, 2)).astype("float32")
    head_a = keras.Model(model.inputs, model.outputs[0])
    alone = gradient_means(head_a, x, ya, loss="mse", batch_size=8)
    only_a = gradient_means(model, x, [ya, yb], loss={"a": "mse"}, batch_size=8)
    both = gradient_means(model, x, [ya, yb], loss=["mse", "mse"], batch_size=8)
    trunk, a, b = (id(model.get_layer(n)) for n in ("trunk", "a", "b"))
    # an output without a loss adds nothing; the trunk sums both heads' terms
    np.testing.assert_allclose(only_a[a]["kernel"], alone[a]["kernel"], rtol=1e-5)
    np.testing.assert_allclose(
        only_a[trunk]["kernel"], alone[trunk]["kernel"], rtol=1e-5
    )
    assert not np.any(only_a.get(b, {"kernel": np.zeros(1)})["kernel"])
    assert np.any(both[b]["kernel"])
    assert not np.allclose(both[trunk]["kernel"], alone[trunk]["kernel"])
    np.testing.assert_allclose(both[a]["kernel"], alone[a]["kernel"], rtol=1e-5)


def test_dict_inputs_and_a_short_last_batch():
    keras.utils.set_random_seed(0)
    a, b = keras.Input((4,), name="a"), keras.Input((3,), name="b")
    h = L.Concatenate()([L.Dense(5, name="da")(a), L.Dense(5, name="db")(b)])
    model = keras.Model({"a": a, "b": b}, L.Dense(2, name="out")(h))
    rng = np.random.default_rng(0)
    xa, xb = rng.normal(size=(12, 4)), rng.normal(size=(12, 3))
    y = rng.normal(size=(12, 2)).astype("float32")
    by_name = gradient_means(model, {"a": xa, "b": xb}, y, loss="mse", batch_size=5)
    layer = id(model.get_layer("db"))
    assert np.any(by_name[layer]["kernel"])
    # three batches (5, 5, 2): the mean of the three batch gradients
    want = np.zeros((3, 5))
    for lo in (0, 5, 10):
        part = slice(lo, lo + 5)
        one = gradient_means(
            model, {"a": xa[part], "b": xb[part]}, y[part], loss="mse", batch_size=5
        )
        want += one[layer]["kernel"] / 3
    np.testing.assert_allclose(by_name[layer]["kernel"], want, rtol=1e-5, atol=1e-7)


class _NumpyInside(keras.layers.Layer):
    """Scales by a factor computed with NumPy from the input: no graph."""

    def call(self, x):
        factor = float(np.mean(keras.ops.convert_to_numpy(x) != 0.0)) + 1.0
        return x * factor

    def compute_output_shape(self, shape):
        return shape


@pytest.mark.tensorflow_only(reason="tf.function tracing fallback")
def test_a_layer_that_cannot_be_traced_gets_eager_gradients():
    keras.utils.set_random_seed(0)
    inp = keras.Input((4,))
    model = keras.Model(inp, L.Dense(2, name="d")(_NumpyInside()(inp)))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 4)).astype("float32")
    y = rng.normal(size=(6, 2)).astype("float32")
    with pytest.warns(UserWarning, match="gradients eagerly"):
        grads = gradient_means(model, x, y, loss="mse", batch_size=6)
    kernel, bias = model.get_layer("d").get_weights()
    error = (2.0 * x) @ kernel + bias - y  # every input nonzero: factor 2
    want = 2.0 / (6 * 2) * (2.0 * x).T @ error
    np.testing.assert_allclose(
        grads[id(model.get_layer("d"))]["kernel"], want, rtol=1e-4
    )


def test_the_compiled_step_is_reused_and_reads_the_current_weights():
    import gc
    import weakref

    from kprune.criteria import _autodiff

    model = _bn_net()
    x, y = _data()
    layer = model.get_layer("fc1")
    gradient_means(model, x, y)
    step = next(iter(_autodiff._STEPS[model].values()))
    # a fresh loss object of the same config is the same loss: one step
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    gradient_means(model, x, y, loss=loss)
    assert list(_autodiff._STEPS[model].values()) == [step]
    # new weights: the cached step differentiates them, not the old ones
    layer.set_weights([w * 3.0 for w in layer.get_weights()])
    got = gradient_means(model, x, y)[id(layer)]["kernel"]
    twin = _bn_net()
    twin.set_weights(model.get_weights())
    want = gradient_means(twin, x, y)[id(twin.get_layer("fc1"))]["kernel"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    # another loss is another step; the cache does not keep the model alive
    gradient_means(model, x, y, loss=keras.losses.SparseCategoricalCrossentropy())
    assert len(_autodiff._STEPS[model]) == 2
    ref = weakref.ref(model)
    del model, layer, step
    gc.collect()
    assert ref() is None


def test_a_loss_that_refers_to_the_model_does_not_keep_it_alive():
    import gc
    import weakref

    from kprune.criteria import _autodiff

    model = _bn_net()
    x, y = _data()
    base = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    class Penalized:  # refers to its model, as a penalty would
        def __init__(self, model):
            self.model = model

        def __call__(self, y_true, y_pred):
            return base(y_true, y_pred) + 0.0 * self.model.layers[-1].kernel[0, 0]

    loss = Penalized(model)

    first = gradient_means(model, x, y, loss=loss)
    again = gradient_means(model, x, y, loss=loss)
    assert len(_autodiff._STEPS[model]) == 1  # cached while the loss lives
    layer = id(model.get_layer("fc1"))
    np.testing.assert_allclose(again[layer]["kernel"], first[layer]["kernel"])
    gradient_means(model, x, y, loss=lambda t, p: base(t, p))  # a new one
    assert len(_autodiff._STEPS[model]) == 2
    gc.collect()
    gradient_means(model, x, y, loss=loss)  # the lambda is gone: its step too
    assert len(_autodiff._STEPS[model]) == 1
    ref = weakref.ref(model)
    del model, loss
    gc.collect()
    assert ref() is None


def test_a_users_loss_subclass_is_never_confused_with_another_instance():
    from kprune.criteria._autodiff import loss_key

    class Scaled(keras.losses.Loss):  # its state is not in its config
        def __init__(self, scale):
            super().__init__()
            self.scale = scale

        def call(self, y_true, y_pred):
            return self.scale * keras.ops.mean(keras.ops.square(y_true - y_pred))

    assert loss_key(Scaled(1.0)) != loss_key(Scaled(2.0))
    mse = keras.losses.MeanSquaredError
    assert loss_key(mse()) == loss_key(mse()) != loss_key(mse(reduction="sum"))


def test_a_change_of_trainability_replaces_the_cached_step():
    from kprune.criteria import _autodiff

    model = _bn_net()
    x, y = _data()
    gradient_means(model, x, y)
    model.get_layer("fc1").trainable = False
    grads = gradient_means(model, x, y)
    assert len(_autodiff._STEPS[model]) == 1  # replaced, not added
    assert id(model.get_layer("fc1")) not in grads
    assert "kernel" in grads[id(model.get_layer("out"))]
