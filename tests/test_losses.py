"""jnn.losses: both cross-entropy backwards equal jax.vjp; the fused one is (p - y) / B, stable."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jnn.losses import (
    cross_entropy,
    cross_entropy_backward,
    cross_entropy_rows,
    entropy,
    kl_divergence,
    log_softmax,
    one_hot,
    softmax_cross_entropy,
    softmax_cross_entropy_backward,
)
from tests.gradcheck import assert_tree_close

DTYPES = [jnp.float32, jnp.float64]
SETTINGS = settings(max_examples=15, deadline=None, derandomize=True)
SHAPES = st.sampled_from([(1, 2), (1, 10), (4, 3), (32, 10)])


def batch(seed, shape, dtype, scale=1.0, soft=False):
    """(logits, targets) from numpy: one-hot rows, or random distributions when ``soft``."""
    rng = np.random.default_rng(seed)
    logits = scale * rng.standard_normal(shape)
    if soft:
        targets = rng.dirichlet(np.ones(shape[1]), size=shape[0])
    else:
        targets = np.eye(shape[1])[rng.integers(0, shape[1], shape[0])]
    return jnp.asarray(logits, dtype), jnp.asarray(targets, dtype)


@jax.jit
def fused_manual_and_vjp(logits, targets, g):
    loss, cache = softmax_cross_entropy(logits, targets)
    _, vjp = jax.vjp(lambda z: softmax_cross_entropy(z, targets)[0], logits)
    return softmax_cross_entropy_backward(cache, g), vjp(g)[0], loss


@jax.jit
def probs_manual_and_vjp(probs, targets, g):
    _, vjp = jax.vjp(lambda p: cross_entropy(p, targets), probs)
    return g * cross_entropy_backward(probs, targets), vjp(g)[0]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@SETTINGS
@given(
    shape=SHAPES,
    scale=st.sampled_from([1e-2, 1.0, 10.0, 100.0]),
    soft=st.booleans(),
    g=st.sampled_from([1.0, -0.5, 3.0]),
    seed=st.integers(0, 2**16),
)
def test_fused_backward_matches_vjp(shape, scale, soft, g, seed, dtype):
    """(p - y) / B, times the loss cotangent g, is the VJP of the fused loss wrt the logits."""
    with jax.enable_x64(dtype == jnp.float64):
        logits, targets = batch(seed, shape, dtype, scale, soft)
        manual, reference, _ = fused_manual_and_vjp(logits, targets, jnp.asarray(g, dtype))
        assert_tree_close(manual, reference, dtype, "fused CE dlogits")


def test_fused_backward_is_p_minus_y_over_b():
    logits, targets = batch(0, (8, 5), jnp.float32)
    _, cache = softmax_cross_entropy(logits, targets)
    expected = (jax.nn.softmax(logits) - targets) / 8
    np.testing.assert_allclose(softmax_cross_entropy_backward(cache), expected, atol=1e-7)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@SETTINGS
@given(
    shape=SHAPES,
    scale=st.sampled_from([1e-2, 1.0, 5.0]),
    soft=st.booleans(),
    g=st.sampled_from([1.0, -0.5, 3.0]),
    seed=st.integers(0, 2**16),
)
def test_probs_backward_matches_vjp(shape, scale, soft, g, seed, dtype):
    """-t / (B p): the VJP of cross-entropy on probabilities (away from the clip at p < tiny)."""
    with jax.enable_x64(dtype == jnp.float64):
        logits, targets = batch(seed, shape, dtype, scale, soft)
        probs = jax.nn.softmax(logits)
        manual, reference = probs_manual_and_vjp(probs, targets, jnp.asarray(g, dtype))
        assert_tree_close(manual, reference, dtype, "CE dprobs")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_fused_equals_cross_entropy_of_softmax(dtype):
    with jax.enable_x64(dtype == jnp.float64):
        logits, targets = batch(1, (16, 10), dtype, 3.0, soft=True)
        fused, (probs, cached_targets) = softmax_cross_entropy(logits, targets)
        two_step = cross_entropy(jax.nn.softmax(logits), targets)
        np.testing.assert_allclose(fused, two_step, rtol=10 * jnp.finfo(dtype).eps)
        np.testing.assert_allclose(probs, jax.nn.softmax(logits), rtol=10 * jnp.finfo(dtype).eps)
        np.testing.assert_array_equal(cached_targets, targets)


@pytest.mark.filterwarnings("error")  # e.g. an overflow RuntimeWarning fails the test
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_fused_is_finite_and_exact_at_logits_1e4(dtype):
    with jax.enable_x64(dtype == jnp.float64), jax.debug_nans(True), jax.debug_infs(True):
        logits = jnp.asarray([[1e4, -1e4], [-1e4, 1e4], [1e4, 1e4]], dtype)
        targets = one_hot(jnp.array([1, 1, 0]), 2, dtype)
        loss, cache = softmax_cross_entropy(logits, targets)
        dlogits = softmax_cross_entropy_backward(cache)
        autodiff = jax.grad(lambda z: softmax_cross_entropy(z, targets)[0])(logits)
    # Row losses 2e4, 0 and log 2; the gradient rows are (p - y) / 3.
    np.testing.assert_allclose(loss, (2e4 + np.log(2)) / 3, rtol=4 * jnp.finfo(dtype).eps)
    expected = np.array([[1, -1], [0, 0], [-0.5, 0.5]]) / 3
    np.testing.assert_allclose(dlogits, expected, rtol=4 * jnp.finfo(dtype).eps)
    np.testing.assert_allclose(autodiff, expected, rtol=4 * jnp.finfo(dtype).eps)


@pytest.mark.filterwarnings("error")  # e.g. an overflow RuntimeWarning fails the test
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_cross_entropy_on_probs_with_zeros_is_finite(dtype):
    with jax.enable_x64(dtype == jnp.float64), jax.debug_nans(True), jax.debug_infs(True):
        probs = jnp.asarray([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]], dtype)
        targets = jnp.asarray([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]], dtype)
        loss = cross_entropy(probs, targets)
        manual = cross_entropy_backward(probs, targets)
        autodiff = jax.grad(cross_entropy)(probs, targets)
    tiny = jnp.finfo(dtype).tiny
    # -log(tiny) is the most a clipped probability can cost: ~87 (f32), ~708 (f64).
    np.testing.assert_allclose(loss, (-np.log(tiny) + np.log(2)) / 2, rtol=1e-6)
    # The clipped entry gets the clipped function's gradient, 0, in both; the rest is -t / (B p).
    np.testing.assert_array_equal(manual, [[0, 0, 0], [0, -1, 0]])
    np.testing.assert_array_equal(autodiff, manual)


@settings(max_examples=20, deadline=None, derandomize=True)
@given(shape=SHAPES, scale=st.sampled_from([1e-2, 1.0, 30.0]), seed=st.integers(0, 2**16))
def test_log_softmax_entropy_kl_identities(shape, scale, seed):
    with jax.enable_x64(True):
        logits, _ = batch(seed, shape, jnp.float64, scale)
        _, p = batch(seed + 1, shape, jnp.float64, soft=True)
        np.testing.assert_allclose(log_softmax(logits), jax.nn.log_softmax(logits), atol=1e-12)
        q = jax.nn.softmax(logits)
        # Cross-entropy = entropy + KL, row by row; KL(p || p) = 0 and KL >= 0.
        np.testing.assert_allclose(
            cross_entropy_rows(p, q), entropy(p) + kl_divergence(p, q), rtol=1e-12, atol=1e-12
        )
        np.testing.assert_allclose(kl_divergence(p, p), 0.0, atol=1e-12)
        assert (kl_divergence(p, q) >= -1e-12).all()


def test_entropy_of_uniform_and_one_hot():
    np.testing.assert_allclose(entropy(jnp.full((2, 8), 1 / 8)), np.log(8), rtol=1e-6)
    np.testing.assert_array_equal(entropy(one_hot(jnp.array([0, 3]), 4)), 0.0)  # 0 log 0 = 0


def test_one_hot():
    y = one_hot(jnp.array([2, 0]), 3)
    np.testing.assert_array_equal(y, [[0, 0, 1], [1, 0, 0]])
    assert y.dtype == jnp.float32
