"""jnn.activations: each hand-written backward equals jax.vjp of its forward; saturation is safe."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jnn.activations import ACTIVATIONS, get_activation, softmax_backward, softmax_forward
from tests.gradcheck import assert_tree_close

NAMES = sorted(ACTIVATIONS)
DTYPES = [jnp.float32, jnp.float64]
SETTINGS = settings(max_examples=20, deadline=None, derandomize=True)


@functools.partial(jax.jit, static_argnames="name")
def manual_and_vjp(name, x, dy):
    """(y, y_ref, manual dx, jax.vjp dx) in one compiled call (one compile per shape and dtype)."""
    act = get_activation(name)
    y, cache = act.forward(x)
    y_ref, vjp = jax.vjp(lambda v: act.forward(v)[0], x)
    return y, y_ref, act.backward(cache, dy), vjp(dy)[0]


def vjp_check(name, x, dy):
    """Manual backward(cache, dy) vs jax.vjp of the forward's output, same dtype."""
    y, y_ref, dx, dx_ref = manual_and_vjp(name, x, dy)
    np.testing.assert_array_equal(y, y_ref)
    assert_tree_close(dx, dx_ref, x.dtype, f"{name} dx")


def normal(seed, shape, dtype, scale=1.0, kink=False):
    """Test data from numpy (eager jax.random would compile anew for every shape). ``kink`` puts
    an exact 0 first, where relu's derivative is taken as 0 by both sides."""
    x = scale * np.random.default_rng(seed).standard_normal(shape)
    if kink:
        x.flat[0] = 0.0
    return jnp.asarray(x, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(
    shape=st.sampled_from([(1, 1), (1, 2), (3, 7), (5, 10)]),
    scale=st.sampled_from([1e-3, 1.0, 5.0, 30.0]),
    seed=st.integers(0, 2**16),
)
def test_backward_matches_vjp(name, dtype, shape, scale, seed):
    with jax.enable_x64(dtype == jnp.float64):
        x = normal(seed, shape, dtype, scale, kink=True)
        vjp_check(name, x, normal(seed + 1, shape, dtype))


@pytest.mark.parametrize("name", NAMES)
def test_backward_matches_vjp_on_a_big_batch(name):
    vjp_check(name, normal(0, (128, 256), jnp.float32, 3.0), normal(1, (128, 256), jnp.float32))


@pytest.mark.parametrize("name", NAMES)
def test_backward_through_leading_axes(name):
    """The protocol is (..., features): a 3-D input works the same as a 2-D one."""
    vjp_check(name, normal(2, (2, 3, 5), jnp.float32), normal(3, (2, 3, 5), jnp.float32))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize(
    "name, x",
    [
        ("sigmoid", [[12.0]]),  # 1 - s by subtraction: 1% off in float32
        ("sigmoid", [[20.0]]),  # ... and exactly 0 instead of 2e-9
        ("sigmoid", [[-20.0]]),
        ("tanh", [[12.0]]),
        ("softmax", [[30.0, 0.0]]),  # dy_m - <dy, s> cancels unless dy is shifted first
        ("softmax", [[0.0, 40.0, -5.0]]),
    ],
)
def test_saturated_gradients_keep_relative_accuracy(name, x, dtype):
    """Far in the tails the gradient is tiny but not zero: it must still match jax.vjp."""
    with jax.enable_x64(dtype == jnp.float64):
        x = jnp.asarray(x, dtype)
        vjp_check(name, x, jnp.asarray(np.arange(1.0, 1.0 + x.size).reshape(x.shape), dtype))


def test_relu_blocks_negatives_and_zero():
    x = jnp.array([[-2.0, -0.0, 0.0, 0.5, 3.0]])
    y, cache = get_activation("relu").forward(x)
    dx = get_activation("relu").backward(cache, jnp.full_like(x, 7.0))
    np.testing.assert_array_equal(y, [[0.0, 0.0, 0.0, 0.5, 3.0]])
    np.testing.assert_array_equal(dx, [[0.0, 0.0, 0.0, 7.0, 7.0]])


def test_softmax_backward_never_builds_the_jacobian():
    """No intermediate of the backward is bigger than its (B, C) inputs: no (B, C, C) Jacobian."""
    b, c = 4, 1000
    s = jnp.full((b, c), 1.0 / c)
    jaxpr = jax.make_jaxpr(softmax_backward)(s, s)
    sizes = [int(np.prod(v.aval.shape)) for eqn in jaxpr.eqns for v in eqn.outvars]
    assert max(sizes) <= b * c, sizes


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_softmax_backward_equals_explicit_jacobian(dtype):
    """The shortcut s * (dy - <dy, s>) is dy^T J with J = diag(s) - s s^T, built here on purpose."""
    with jax.enable_x64(dtype == jnp.float64):
        x, dy = normal(4, (3, 6), dtype), normal(5, (3, 6), dtype)
        s, cache = softmax_forward(x)
        jac = jax.vmap(lambda r: jnp.diag(r) - jnp.outer(r, r))(s)
        assert_tree_close(softmax_backward(cache, dy), jnp.einsum("bi,bij->bj", dy, jac), dtype)
        # Softmax ignores a constant shift of its input, so each row of dx sums to zero.
        np.testing.assert_allclose(jnp.sum(softmax_backward(cache, dy), -1), 0.0, atol=1e-6)


SATURATED = {"sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0)}


@pytest.mark.filterwarnings("error")  # e.g. an overflow RuntimeWarning fails the test
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", sorted(SATURATED))
def test_saturating_activations_are_exact_and_finite_at_1e4(name, dtype):
    lo, hi = SATURATED[name]
    with jax.enable_x64(dtype == jnp.float64), jax.debug_nans(True), jax.debug_infs(True):
        act = get_activation(name)
        x = jnp.array([[-1e4, -1e3, 1e3, 1e4]], dtype)
        y, cache = act.forward(x)
        dx = act.backward(cache, jnp.ones_like(x))
        autodiff = jax.grad(lambda v: jnp.sum(act.forward(v)[0]))(x)
    np.testing.assert_array_equal(y, [[lo, lo, hi, hi]])
    np.testing.assert_array_equal(dx, 0.0)
    np.testing.assert_array_equal(autodiff, 0.0)
    assert y.dtype == dx.dtype == dtype


@pytest.mark.filterwarnings("error")  # e.g. an overflow RuntimeWarning fails the test
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_softmax_at_huge_logits(dtype):
    with jax.enable_x64(dtype == jnp.float64), jax.debug_nans(True), jax.debug_infs(True):
        x = jnp.array([[1e4, -1e4, 0.0], [1e30, 1e30, -1e30], [-1e4, -1e4, -1e4]], dtype)
        s, cache = softmax_forward(x)
        dx = softmax_backward(cache, jnp.ones_like(x))
    expected = np.array([[1, 0, 0], [0.5, 0.5, 0], [1 / 3, 1 / 3, 1 / 3]], dtype)
    np.testing.assert_array_equal(s, expected)
    assert np.isfinite(dx).all()


def test_get_activation_is_case_insensitive():
    assert get_activation("ReLU") is ACTIVATIONS["relu"]
    assert {get_activation(n).name for n in NAMES} == set(NAMES)


def test_unknown_activation_names_the_choices():
    with pytest.raises(ValueError, match="swish") as excinfo:
        get_activation("swish")
    for name in NAMES:
        assert name in str(excinfo.value)


def test_relu_propagates_nan_like_jax_nn_relu():
    """A NaN weight must reach the loss (and the divergence check): where(x > 0, x, 0) hid it."""
    from jnn.activations import relu_backward, relu_forward

    x = jnp.array([jnp.nan, -1.0, 0.0, 2.0])
    y, cache = relu_forward(x)
    np.testing.assert_array_equal(y, jax.nn.relu(x))
    assert np.isnan(y[0])
    dy = jnp.ones_like(x)
    np.testing.assert_array_equal(relu_backward(cache, dy), jax.vjp(jax.nn.relu, x)[1](dy)[0])
