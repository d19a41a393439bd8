"""kprune.Distiller and kprune.ops.soft_target_loss."""

import textwrap

import keras
import numpy as np
import pytest

import kprune
from tests.test_distillation import log_softmax


def to_np(x):
    return keras.ops.convert_to_numpy(x)


def mlp(seed, units=8, classes=3):
    init = keras.initializers.GlorotUniform
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(units, "relu", kernel_initializer=init(seed)),
            keras.layers.Dense(classes, kernel_initializer=init(seed + 1)),
        ]
    )


def data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype("float32")
    return x, (x[:, 0] > 0).astype("int32") + (x[:, 1] > 1).astype("int32")


def test_soft_target_loss_matches_numpy_per_token():
    rng = np.random.default_rng(0)
    teacher = rng.normal(size=(2, 5, 7)).astype("float32")
    student = rng.normal(size=(2, 5, 7)).astype("float32")
    got = to_np(kprune.ops.soft_target_loss(teacher, student, 2.0))
    lt, ls = log_softmax(teacher / 2.0), log_softmax(student / 2.0)
    want = 4.0 * (np.exp(lt) * (lt - ls)).sum(-1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_compute_loss_is_masked_token_kl_plus_task_loss():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 4, 6)).astype("float32")
    y = rng.integers(0, 5, (3, 4))
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], "float32")

    def seq_model(seed):
        inputs = keras.Input((4, 6))
        dense = keras.layers.Dense(
            5, kernel_initializer=keras.initializers.RandomNormal(seed=seed)
        )
        return keras.Model(inputs, dense(inputs))

    student, teacher = seq_model(0), seq_model(1)
    distiller = kprune.Distiller(student, teacher, temperature=2.0, alpha=0.25)
    distiller.compile(
        "sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    loss = to_np(distiller.compute_loss(x, y, distiller(x), mask, training=False))
    s, t = to_np(student(x)), to_np(teacher(x))
    lt, ls = log_softmax(t / 2.0), log_softmax(s / 2.0)
    kl = 4.0 * (np.exp(lt) * (lt - ls)).sum(-1)
    ce = -np.take_along_axis(log_softmax(s), y[..., None], -1)[..., 0]
    # Keras' sum_over_batch_size divides the weighted sum by the element count.
    want = 0.75 * (kl * mask).sum() / mask.sum() + 0.25 * (ce * mask).sum() / ce.size
    np.testing.assert_allclose(loss, want, rtol=1e-5)


def test_fit_trains_only_the_student_and_round_trips(tmp_path):
    x, y = data()
    teacher, student = mlp(0), mlp(10, units=4)
    teacher_before = [to_np(w).copy() for w in teacher.weights]
    student_before = [to_np(w).copy() for w in student.weights]
    distiller = kprune.Distiller(student, teacher, temperature=2.0, alpha=0.5)
    distiller.compile(
        keras.optimizers.Adam(1e-2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    assert len(distiller.trainable_variables) == len(student.trainable_variables)
    history = distiller.fit(x, y, batch_size=16, epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert "accuracy" in history.history
    if keras.backend.backend() == "tensorflow":  # a tf.data pipeline works too
        import tensorflow as tf

        dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
        distiller.fit(dataset, epochs=1, verbose=0)
    for w, before in zip(teacher.weights, teacher_before):
        np.testing.assert_array_equal(to_np(w), before)
    assert teacher.trainable  # the user's flag is left alone
    assert any(
        not np.array_equal(to_np(w), b) for w, b in zip(student.weights, student_before)
    )
    path = str(tmp_path / "distiller.keras")
    distiller.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, kprune.Distiller)
    assert (loaded.temperature, loaded.alpha) == (2.0, 0.5)
    np.testing.assert_allclose(to_np(loaded(x)), to_np(distiller(x)), atol=1e-6)
    np.testing.assert_allclose(to_np(loaded.teacher(x)), to_np(teacher(x)), atol=1e-6)
    kprune.testing.run_serialization_test(loaded)


def test_hidden_state_distillation():
    inputs = keras.Input((6,))

    def two_outputs(seed):
        hidden = keras.layers.Dense(
            4, kernel_initializer=keras.initializers.RandomNormal(seed=seed)
        )(inputs)
        return keras.Model(inputs, [keras.layers.Dense(3)(hidden), hidden])

    x, y = data()
    distiller = kprune.Distiller(two_outputs(1), two_outputs(2), feature_weight=1.0)
    distiller.compile("adam")
    loss = float(to_np(distiller.compute_loss(x, y, distiller(x), training=False)))
    without = kprune.Distiller(distiller.student, distiller.teacher)
    base = float(to_np(without.compute_loss(x, y, without(x), training=False)))
    s, t = (to_np(v) for v in (distiller.student(x)[1], distiller.teacher(x)[1]))
    relative = np.mean(((s - t) ** 2).sum(-1) / (t**2).sum(-1))
    np.testing.assert_allclose(loss - base, relative, rtol=1e-4)
    distiller.fit(x, y, epochs=1, verbose=0)


@pytest.mark.tensorflow_only(reason="tf.distribute's replica count")
def test_every_term_is_scaled_like_keras_losses_under_tf_distribute(monkeypatch):
    """With R replicas Keras' TensorFlow trainer sums the replicas' gradients
    and scales each loss by 1 / R: the KL and hidden-state terms too, or they
    train R times harder than on one device. (Two real workers:
    `tests/test_multi_worker.py`, `-m slow`.)"""
    import tensorflow as tf

    inputs = keras.Input((6,))

    def two_outputs(seed):
        hidden = keras.layers.Dense(
            4, kernel_initializer=keras.initializers.RandomNormal(seed=seed)
        )(inputs)
        return keras.Model(inputs, [keras.layers.Dense(3)(hidden), hidden])

    x, y = data(n=8)
    distiller = kprune.Distiller(
        two_outputs(1), two_outputs(2), alpha=0.5, feature_weight=1.0
    )
    distiller.compile(
        "sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )

    def loss():
        return float(to_np(distiller.compute_loss(x, y, distiller(x))))

    one = loss()

    class TwoReplicas:
        num_replicas_in_sync = 2

    monkeypatch.setattr(tf.distribute, "get_strategy", TwoReplicas)
    np.testing.assert_allclose(loss(), one / 2, rtol=1e-6)


_MIRRORED_SCRIPT = kprune.testing.TWO_CPUS + textwrap.dedent(
    """
    import json
    import keras, numpy as np, kprune

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")

    def mlp(seed):
        model = keras.Sequential([keras.Input((6,)),
            keras.layers.Dense(8, "relu"), keras.layers.Dense(2)])
        weights = np.random.default_rng(seed)
        for w in model.weights:
            w.assign(weights.normal(0, 0.5, tuple(w.shape)).astype("float32"))
        return model

    def run(strategy):
        with strategy.scope():
            distiller = kprune.Distiller(mlp(1), mlp(2), temperature=2.0, alpha=0.5)
            distiller.compile(keras.optimizers.SGD(0.1),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        history = distiller.fit(x, y, batch_size=16, epochs=2, shuffle=False,
                                verbose=0)
        return history.history["loss"], distiller.student.get_weights()

    one = run(tf.distribute.get_strategy())
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    two = run(strategy)
    print("RESULT " + json.dumps({
        "replicas": strategy.num_replicas_in_sync,
        "loss": [one[0], two[0]],
        "max_diff": max(float(np.abs(a - b).max()) for a, b in zip(one[1], two[1])),
    }))
    """
)


@pytest.mark.slow  # a fresh TensorFlow process: about 10 CPU-seconds
@pytest.mark.tensorflow_only(reason="tf.distribute.MirroredStrategy")
def test_mirrored_strategy_trains_as_one_device():
    result = kprune.testing.run_script(_MIRRORED_SCRIPT)
    assert result["replicas"] == 2
    one, two = result["loss"]
    np.testing.assert_allclose(two, one, rtol=1e-5)
    assert result["max_diff"] < 1e-5


def test_errors():
    teacher = mlp(0)
    with pytest.raises(ValueError, match="different models"):
        kprune.Distiller(teacher, teacher)
    with pytest.raises(ValueError, match="temperature"):
        kprune.Distiller(mlp(1), teacher, temperature=0)
    with pytest.raises(ValueError, match="alpha"):
        kprune.Distiller(mlp(1), teacher, alpha=2)
    x, y = data(16)
    distiller = kprune.Distiller(mlp(1), teacher, alpha=0.5)
    distiller.compile("sgd")
    with pytest.raises(ValueError, match="compile the Distiller with a `loss`"):
        distiller.fit(x, y, epochs=1, verbose=0)
    small = kprune.Distiller(mlp(1, classes=4), teacher)
    with pytest.raises(ValueError, match="same shape"):
        small.compute_loss(x, y, small(x))
