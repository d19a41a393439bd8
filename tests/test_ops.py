"""kprune.ops group-sparsity math against a NumPy reference."""

import math

import keras
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import kprune
from kprune import ops as kops


def to_np(x):
    return keras.ops.convert_to_numpy(x)


def np_groups(kernel, axis):
    """(units, P) matrix: row n is unit n's group, in output-channel order."""
    axes = kops.unit_axes(kernel.ndim, axis)
    rest = [i for i in range(kernel.ndim) if i not in axes]
    moved = np.transpose(kernel, list(axes) + rest)
    n = math.prod(kernel.shape[i] for i in axes)
    return moved.reshape(n, -1), axes, rest


def np_ungroup(groups, kernel_shape, axes, rest):
    moved_shape = [kernel_shape[i] for i in axes] + [kernel_shape[i] for i in rest]
    moved = groups.reshape(moved_shape)
    order = list(axes) + rest
    return np.transpose(moved, np.argsort(order))


def np_prox(kernel, bias, t, lam, alpha, axis):
    """Reference: loop over units, soft-threshold then shrink [w_n, b_n]."""
    groups, axes, rest = np_groups(kernel.astype(np.float64), axis)
    if bias is not None:
        groups = np.concatenate([groups, bias.astype(np.float64)[:, None]], axis=1)
    p = groups.shape[1]
    lams = np.broadcast_to(np.asarray(lam, np.float64), (len(groups),))
    out = np.empty_like(groups)
    for n, g in enumerate(groups):
        u = np.sign(g) * np.maximum(np.abs(g) - t * alpha * lams[n], 0.0)
        norm = np.linalg.norm(u)
        tau = t * (1 - alpha) * lams[n] * math.sqrt(p)
        out[n] = 0.0 if norm <= tau else u * (1 - tau / norm)
    new_bias = None
    if bias is not None:
        new_bias, out = out[:, -1], out[:, :-1]
    return np_ungroup(out, kernel.shape, axes, rest), new_bias


def np_objective(x_groups, v_groups, t, lam, alpha):
    p = x_groups.shape[1]
    reg = lam * (
        (1 - alpha) * math.sqrt(p) * np.linalg.norm(x_groups, axis=1).sum()
        + alpha * np.abs(x_groups).sum()
    )
    return 0.5 * np.sum((x_groups - v_groups) ** 2) + t * reg


CASES = [
    ("dense", (6, 5), -1),
    ("conv2d", (3, 3, 4, 6), -1),
    ("conv1d_transpose", (3, 5, 4), -2),
    ("depthwise2d", (3, 3, 4, 2), (-2, -1)),
    ("separable_pointwise", (1, 1, 8, 3), -1),
]


class GroupNormsTest(kprune.testing.TestCase):
    def test_matches_numpy_for_each_kernel_kind(self):
        rng = np.random.default_rng(0)
        for name, shape, axis in CASES:
            with self.subTest(name):
                kernel = rng.normal(size=shape).astype("float32")
                groups, _, _ = np_groups(kernel, axis)
                got = keras.ops.convert_to_numpy(kops.group_norms(kernel, axis=axis))
                np.testing.assert_allclose(got, np.linalg.norm(groups, axis=1), 1e-5)
                self.assertEqual(kops.group_size(shape, axis), groups.shape[1])
                self.assertEqual(kops.num_units(shape, axis), groups.shape[0])

    def test_depthwise_units_follow_output_channel_order(self):
        # Output channel c * mult + m of a depthwise conv is kernel[..., c, m].
        kernel = np.zeros((3, 3, 4, 2), "float32")
        kernel[:, :, 2, 1] = 1.0  # channel 2, multiplier 1 -> unit 5
        norms = keras.ops.convert_to_numpy(kops.group_norms(kernel, axis=(-2, -1)))
        self.assertEqual(int(np.argmax(norms)), 5)
        self.assertAlmostEqual(float(norms[5]), 3.0, places=6)

    def test_bias_joins_its_group(self):
        kernel = np.array([[3.0, 0.0], [0.0, 0.0]], "float32")
        bias = np.array([4.0, 2.0], "float32")
        got = keras.ops.convert_to_numpy(kops.group_norms(kernel, bias=bias))
        np.testing.assert_allclose(got, [5.0, 2.0])

    def test_bad_axis_and_bias_raise(self):
        with self.assertRaisesRegex(ValueError, "axis"):
            kops.group_norms(np.ones((2, 3)), axis=2)
        with self.assertRaisesRegex(ValueError, "axis"):
            kops.group_norms(np.ones((2, 3)), axis=(1, -1))
        with self.assertRaisesRegex(ValueError, "bias"):
            kops.group_norms(np.ones((2, 3)), bias=np.ones(2))


class ThresholdTest(kprune.testing.TestCase):
    def test_soft_threshold(self):
        x = np.array([-3.0, -0.5, 0.0, 0.2, 2.5], "float32")
        got = keras.ops.convert_to_numpy(kops.soft_threshold(x, 0.5))
        np.testing.assert_allclose(got, [-2.5, 0.0, 0.0, 0.0, 2.0])
        self.assertTrue(np.all(got[1:4] == 0.0))

    def test_group_soft_threshold_with_and_without_bias(self):
        rng = np.random.default_rng(1)
        for name, shape, axis in CASES:
            with self.subTest(name):
                kernel = rng.normal(size=shape).astype("float32")
                n = kops.num_units(shape, axis)
                bias = rng.normal(size=n).astype("float32")
                t = 1.2
                # group_soft_threshold(t) == prox with lam * sqrt(P) = t, alpha 0
                p_bias = kops.group_size(shape, axis) + 1
                want_k, want_b = np_prox(
                    kernel, bias, 1.0, t / math.sqrt(p_bias), 0, axis
                )
                got_k, got_b = kops.group_soft_threshold(
                    kernel, t, axis=axis, bias=bias
                )
                np.testing.assert_allclose(
                    keras.ops.convert_to_numpy(got_k), want_k, atol=1e-5
                )
                np.testing.assert_allclose(
                    keras.ops.convert_to_numpy(got_b), want_b, atol=1e-5
                )
                p = kops.group_size(shape, axis)
                want_k, _ = np_prox(kernel, None, 1.0, t / math.sqrt(p), 0, axis)
                got_k = kops.group_soft_threshold(kernel, t, axis=axis)
                np.testing.assert_allclose(
                    keras.ops.convert_to_numpy(got_k), want_k, atol=1e-5
                )


class SparseGroupProxTest(kprune.testing.TestCase):
    def test_matches_reference_for_each_kernel_kind(self):
        rng = np.random.default_rng(2)
        for name, shape, axis in CASES:
            for alpha in (0.0, 0.3, 0.5, 1.0):
                with self.subTest(name=name, alpha=alpha):
                    kernel = rng.normal(size=shape).astype("float32")
                    bias = rng.normal(size=kops.num_units(shape, axis)).astype(
                        "float32"
                    )
                    t, lam = 0.1, 1.5
                    want_k, want_b = np_prox(kernel, bias, t, lam, alpha, axis)
                    got_k, got_b = kops.sparse_group_prox(
                        kernel, bias, t, lam, alpha, axis
                    )
                    got_k = keras.ops.convert_to_numpy(got_k)
                    got_b = keras.ops.convert_to_numpy(got_b)
                    np.testing.assert_allclose(got_k, want_k, atol=1e-5)
                    np.testing.assert_allclose(got_b, want_b, atol=1e-5)
                    # Zero groups are exactly zero, not just small.
                    zero = want_b == 0
                    groups, _, _ = np_groups(got_k, axis)
                    zero_rows = np.all(groups == 0, axis=1) & (got_b == 0)
                    np.testing.assert_array_equal(
                        zero_rows,
                        np.all(np_groups(want_k, axis)[0] == 0, axis=1) & zero,
                    )

    def test_closed_form_alpha_zero(self):
        # One unit, group [3, 4 | bias 0]: norm 5, P = 3.
        # tau = t * lam * sqrt(3); result = theta * (1 - tau / 5).
        kernel = np.array([[3.0], [4.0]], "float32")
        bias = np.array([0.0], "float32")
        t, lam = 0.5, 2.0
        tau = t * lam * math.sqrt(3)
        got_k, got_b = kops.sparse_group_prox(kernel, bias, t, lam, alpha=0.0)
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(got_k)[:, 0],
            [3 * (1 - tau / 5), 4 * (1 - tau / 5)],
            1e-6,
        )
        self.assertEqual(float(keras.ops.convert_to_numpy(got_b)[0]), 0.0)
        # A threshold above the norm gives exact zeros.
        got_k, _ = kops.sparse_group_prox(
            kernel, bias, 1.0, 5.0 / math.sqrt(3), alpha=0.0
        )
        self.assertTrue(np.all(keras.ops.convert_to_numpy(got_k) == 0.0))

    def test_closed_form_alpha_half(self):
        # Group [3, 4, 1] (bias 1), t = 1, lam = 2, alpha = 0.5:
        # soft-threshold by t*alpha*lam = 1 -> [2, 3, 0]; norm sqrt(13);
        # shrink by t*(1-alpha)*lam*sqrt(3) = sqrt(3).
        kernel = np.array([[3.0], [4.0]], "float32")
        bias = np.array([1.0], "float32")
        got_k, got_b = kops.sparse_group_prox(kernel, bias, 1.0, 2.0, alpha=0.5)
        factor = 1 - math.sqrt(3) / math.sqrt(13)
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(got_k)[:, 0], [2 * factor, 3 * factor], 1e-6
        )
        self.assertEqual(float(keras.ops.convert_to_numpy(got_b)[0]), 0.0)

    def test_is_the_minimizer_of_the_prox_objective(self):
        # prox(v) = argmin_x 0.5 ||x - v||^2 + t * r(x): no perturbation does better.
        rng = np.random.default_rng(3)
        v = rng.normal(size=(5, 4)).astype("float64")
        bias = rng.normal(size=4)
        for alpha in (0.0, 0.5):
            t, lam = 0.3, 0.8
            got_k, got_b = kops.sparse_group_prox(v, bias, t, lam, alpha)
            x = np.concatenate(
                [
                    keras.ops.convert_to_numpy(got_k).T,
                    keras.ops.convert_to_numpy(got_b)[:, None],
                ],
                axis=1,
            ).astype("float64")
            vg = np.concatenate([v.T, bias[:, None]], axis=1)
            best = np_objective(x, vg, t, lam, alpha)
            for _ in range(200):
                y = x + rng.normal(scale=0.05, size=x.shape)
                self.assertGreaterEqual(np_objective(y, vg, t, lam, alpha), best - 1e-4)
            self.assertGreaterEqual(
                np_objective(np.zeros_like(x), vg, t, lam, alpha), best - 1e-4
            )

    def test_bad_alpha_raises(self):
        with self.assertRaisesRegex(ValueError, "alpha"):
            kops.sparse_group_prox(np.ones((2, 2)), None, 0.1, 1.0, alpha=1.5)

    @settings(max_examples=25, deadline=None)
    @given(
        units=st.integers(1, 5),
        fan_in=st.integers(1, 6),
        t=st.floats(0.0, 2.0),
        lam=st.floats(0.0, 2.0),
        alpha=st.floats(0.0, 1.0),
        seed=st.integers(0, 1000),
    )
    def test_property_matches_reference(self, units, fan_in, t, lam, alpha, seed):
        rng = np.random.default_rng(seed)
        kernel = rng.normal(size=(fan_in, units)).astype("float32")
        bias = rng.normal(size=units).astype("float32")
        want_k, want_b = np_prox(kernel, bias, t, lam, alpha, -1)
        got_k, got_b = kops.sparse_group_prox(kernel, bias, t, lam, alpha)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(got_k), want_k, atol=1e-4)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(got_b), want_b, atol=1e-4)


class ReweightedTest(kprune.testing.TestCase):
    def test_weights_match_numpy_for_each_kernel_kind(self):
        rng = np.random.default_rng(7)
        for name, shape, axis in CASES:
            with self.subTest(name):
                groups, axes, rest = np_groups(
                    rng.normal(size=shape).astype("float32"), axis
                )
                groups[0] = 0.0  # a dead group does not count in the mean
                kernel = np_ungroup(groups, shape, axes, rest)
                bias = rng.normal(size=len(groups)).astype("float32")
                bias[0] = 0.0
                joint = np.concatenate([groups, bias[:, None]], axis=1)
                norms = np.linalg.norm(joint.astype(np.float64), axis=1)
                mean = norms[1:].mean()
                want = mean / (norms + 0.2 * mean)
                got = kops.group_reweights(kernel, 0.2, axis=axis, bias=bias)
                np.testing.assert_allclose(to_np(got), want, rtol=1e-5)
                self.assertAlmostEqual(float(to_np(got)[0]), 5.0, places=4)

    def test_all_zero_kernel_and_bad_delta(self):
        got = to_np(kops.group_reweights(np.zeros((3, 2)), 0.5))
        np.testing.assert_allclose(got, [2.0, 2.0])
        for delta in (0.0, -1.0):
            with self.assertRaisesRegex(ValueError, "delta"):
                kops.group_reweights(np.ones((2, 2)), delta)

    def test_per_unit_strengths_match_reference(self):
        rng = np.random.default_rng(8)
        for name, shape, axis in CASES:
            for alpha in (0.0, 0.5):
                with self.subTest(name=name, alpha=alpha):
                    kernel = rng.normal(size=shape).astype("float32")
                    units = kops.num_units(shape, axis)
                    bias = rng.normal(size=units).astype("float32")
                    lam = rng.uniform(0.0, 3.0, size=units).astype("float32")
                    want_k, want_b = np_prox(kernel, bias, 0.2, lam, alpha, axis)
                    got_k, got_b = kops.sparse_group_prox(
                        kernel, bias, 0.2, lam, alpha, axis
                    )
                    np.testing.assert_allclose(to_np(got_k), want_k, atol=1e-5)
                    np.testing.assert_allclose(to_np(got_b), want_b, atol=1e-5)

    def test_reweighting_spares_strong_groups_and_kills_weak_ones(self):
        # Norms 5 and 0.5; plain threshold 0.4 keeps both. Reweighted (same
        # lambda) the weak group dies and the strong one shrinks less.
        kernel = np.array([[3.0, 0.3], [4.0, 0.4]], "float32")
        t, lam = 1.0, 0.4 / math.sqrt(2)
        plain, _ = kops.sparse_group_prox(kernel, None, t, lam)
        weights = kops.group_reweights(kernel, 0.1)
        reweighted, _ = kops.sparse_group_prox(kernel, None, t, lam * weights)
        plain, reweighted = to_np(plain), to_np(reweighted)
        self.assertTrue(np.all(plain[:, 1] != 0.0))
        np.testing.assert_array_equal(reweighted[:, 1], 0.0)
        self.assertGreater(
            np.linalg.norm(reweighted[:, 0]), np.linalg.norm(plain[:, 0])
        )

    def test_bad_strength_shape_raises(self):
        with self.assertRaisesRegex(ValueError, "one entry per output unit"):
            kops.sparse_group_prox(np.ones((2, 3)), None, 0.1, np.ones(2))
        with self.assertRaisesRegex(ValueError, "scalar or 1-D"):
            kops.sparse_group_prox(np.ones((2, 3)), None, 0.1, np.ones((2, 3)))


class PenaltyTest(kprune.testing.TestCase):
    def test_penalties_match_formula(self):
        rng = np.random.default_rng(4)
        for name, shape, axis in CASES:
            with self.subTest(name):
                kernel = rng.normal(size=shape).astype("float32")
                groups, _, _ = np_groups(kernel.astype(np.float64), axis)
                p = groups.shape[1]
                gl = math.sqrt(p) * np.linalg.norm(groups, axis=1).sum()
                l1 = np.abs(groups).sum()
                got = float(kops.group_lasso_penalty(kernel, 0.1, axis=axis))
                self.assertAlmostEqual(got, 0.1 * gl, places=3)
                got = float(
                    kops.sparse_group_lasso_penalty(kernel, 0.1, 0.25, axis=axis)
                )
                self.assertAlmostEqual(got, 0.1 * (0.75 * gl + 0.25 * l1), places=3)

    def test_penalty_with_bias_uses_joint_groups(self):
        kernel = np.array([[3.0], [0.0]], "float32")
        bias = np.array([4.0], "float32")
        got = float(kops.group_lasso_penalty(kernel, 1.0, bias=bias))
        self.assertAlmostEqual(got, math.sqrt(3) * 5.0, places=5)

    def test_zero_group_mask(self):
        kernel = np.array([[0.0, 1e-3, 0.0], [0.0, 0.0, 0.0]], "float32")
        bias = np.array([0.0, 0.0, 1.0], "float32")
        mask = keras.ops.convert_to_numpy(kops.zero_group_mask(kernel))
        np.testing.assert_array_equal(mask, [True, False, True])
        mask = keras.ops.convert_to_numpy(kops.zero_group_mask(kernel, bias=bias))
        np.testing.assert_array_equal(mask, [True, False, False])
        mask = keras.ops.convert_to_numpy(kops.zero_group_mask(kernel, atol=1e-2))
        np.testing.assert_array_equal(mask, [True, True, True])

    def test_gradient_of_penalty_is_finite_at_zero_groups(self):
        # sqrt(0) has an infinite derivative; the penalty must not make NaNs.
        layer = keras.layers.Dense(
            3,
            kernel_regularizer=kprune.regularizers.GroupLasso(0.1),
            kernel_initializer="zeros",
        )
        model = keras.Sequential([keras.Input((4,)), layer])
        model.compile(keras.optimizers.SGD(0.1), "mse")
        model.fit(np.ones((4, 4)), np.ones((4, 3)), epochs=1, verbose=0)
        self.assertTrue(np.all(np.isfinite(keras.ops.convert_to_numpy(layer.kernel))))
        self.assertGreater(
            float(np.abs(keras.ops.convert_to_numpy(layer.kernel)).sum()), 0.0
        )
