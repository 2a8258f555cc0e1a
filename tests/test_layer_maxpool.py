"""MaxPool2D: the hand-written backward equals jax.vjp of the reduce_window forward, including
which element of a window receives the gradient when several tie for the maximum."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jnn.layers import MaxPool2D
from tests.layer_checks import jit_vjp_check

DTYPES = [jnp.float32, jnp.float64]


def check(x_np, window, strides, padding, dtype):
    with jax.enable_x64(dtype == jnp.float64):
        return jit_vjp_check(MaxPool2D(window, strides, padding), jnp.asarray(x_np, dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize(
    "h, w, window, strides, padding",
    [
        (8, 8, 2, None, "VALID"),
        (7, 9, 2, None, "VALID"),  # odd sizes: last row/col dropped
        (7, 7, 3, 2, "SAME"),  # overlapping windows, -inf padding
        (6, 5, (3, 2), 1, "VALID"),  # stride 1: every element in several windows
    ],
)
def test_backward_equals_vjp(h, w, window, strides, padding, dtype):
    x = np.random.default_rng(h * w).standard_normal((2, h, w, 3))
    check(x, window, strides, padding, dtype)


@settings(max_examples=8, deadline=None, derandomize=True)
@given(
    h=st.integers(2, 8),
    w=st.integers(2, 8),
    k=st.integers(1, 3),
    s=st.integers(1, 3),
    padding=st.sampled_from(["SAME", "VALID"]),
    ties=st.booleans(),
)
def test_backward_equals_vjp_hypothesis(h, w, k, s, padding, ties):
    x = np.random.default_rng(h * 10 + w).standard_normal((2, h, w, 2))
    if k > min(h, w) and padding == "VALID":
        k = min(h, w)
    check(np.round(x) if ties else x, k, s, padding, jnp.float32)


@pytest.mark.parametrize("strides", [None, 1], ids=["disjoint", "overlapping"])
def test_ties_go_to_the_first_max_in_row_major_order_like_jax(strides):
    """All-equal windows: jax's select_and_scatter_add (select ``>=``) sends each window's
    gradient to its top-left element only; ours routes the same."""
    x = jnp.zeros((1, 4, 4, 1))
    layer = MaxPool2D(2, strides)
    y, cache, _ = layer.forward((), (), x)
    _, dx = layer.backward((), cache, jnp.ones_like(y))
    ref = jax.grad(lambda v: jnp.sum(layer.forward((), (), v)[0]))(x)
    np.testing.assert_array_equal(dx, ref)
    if strides is None:
        expected = np.zeros((4, 4))
        expected[::2, ::2] = 1.0
    else:  # window at (p, q) picks (p, q): every element but the last row/col gets one
        expected = np.zeros((4, 4))
        expected[:3, :3] = 1.0
    np.testing.assert_array_equal(np.asarray(dx)[0, :, :, 0], expected)


def test_tie_with_a_later_maximum_in_the_same_row():
    """A window [[1, 3], [3, 2]]: the first 3 in row-major order (top right) gets the gradient."""
    x = jnp.asarray([[1.0, 3.0], [3.0, 2.0]]).reshape(1, 2, 2, 1)
    y, dparams, dx = check(np.asarray(x), 2, None, "VALID", jnp.float32)
    np.testing.assert_array_equal(
        np.asarray(dx)[0, :, :, 0], [[0.0, float(np.asarray(dx).sum())], [0.0, 0.0]]
    )


def test_shapes_and_errors():
    assert MaxPool2D(2).init(jax.random.key(0), (28, 28, 32))[0] == (14, 14, 32)
    assert MaxPool2D(2).init(jax.random.key(0), (7, 7, 1))[0] == (3, 3, 1)
    assert MaxPool2D(3, 2, "SAME").init(jax.random.key(0), (7, 7, 1))[0] == (4, 4, 1)
    with pytest.raises(ValueError, match="padding"):
        MaxPool2D(2, padding="full")
    with pytest.raises(ValueError, match="window"):
        MaxPool2D(0)
