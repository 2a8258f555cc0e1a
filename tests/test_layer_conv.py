"""Conv2D: the hand-written input gradient (transposed convolution) and kernel gradient
(correlation of x with dy) equal jax.vjp of the forward, for odd sizes, strides > 1, SAME and
VALID (including trailing rows no window covers), float32 and float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jnn.layers import Conv2D
from jnn.layers.conv import axis_geometry
from tests.layer_checks import jit_vjp_check

DTYPES = [jnp.float32, jnp.float64]


def check(h, w, c, f, k, s, padding, dtype, seed=0):
    with jax.enable_x64(dtype == jnp.float64):
        x = jnp.asarray(np.random.default_rng(seed).standard_normal((2, h, w, c)), dtype)
        layer = Conv2D(f, k, s, padding)
        y, dparams, dx = jit_vjp_check(layer, x, seed=seed)
        assert dx.shape == x.shape and dparams["w"].shape == (*k, c, f)
        return y


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize(
    "h, w, k, s, padding",
    [
        (6, 6, (3, 3), (1, 1), "SAME"),
        (7, 7, (3, 3), (2, 2), "SAME"),  # odd size, stride 2
        (7, 8, (3, 2), (2, 3), "VALID"),  # last row/col of x not covered
        (9, 5, (4, 4), (3, 1), "SAME"),  # even kernel: padding split unevenly
    ],
)
def test_backward_equals_vjp(h, w, k, s, padding, dtype):
    check(h, w, 3, 4, k, s, padding, dtype)


@settings(max_examples=8, deadline=None, derandomize=True)
@given(
    h=st.integers(3, 9),
    w=st.integers(3, 9),
    k=st.integers(1, 3),
    s=st.integers(1, 3),
    padding=st.sampled_from(["SAME", "VALID"]),
    dtype=st.sampled_from(DTYPES),
)
def test_backward_equals_vjp_hypothesis(h, w, k, s, padding, dtype):
    check(h, w, 2, 3, (k, k), (s, s), padding, dtype, seed=h * 10 + w)


@pytest.mark.parametrize(
    "n, k, s, padding, expected",
    [
        (7, 3, 2, "SAME", (4, 1, 1, 0)),
        (8, 3, 2, "SAME", (4, 0, 1, 0)),
        (8, 3, 2, "VALID", (3, 0, 0, 1)),  # the 8th row is reached by no window
        (10, 4, 3, "VALID", (3, 0, 0, 0)),
    ],
)
def test_axis_geometry(n, k, s, padding, expected):
    assert axis_geometry(n, k, s, padding) == expected


def test_shapes_init_and_errors():
    layer = Conv2D(8, 3, strides=2)
    shape, params, state = layer.init(jax.random.key(0), (28, 28, 1))
    assert shape == (14, 14, 8) and state == ()
    assert params["w"].shape == (3, 3, 1, 8) and not np.asarray(params["b"]).any()
    std = float(jnp.std(Conv2D(64, 3).init(jax.random.key(0), (8, 8, 32))[1]["w"]))
    assert abs(std / np.sqrt(2 / (9 * 32)) - 1) < 0.05  # He: fan_in includes the 3x3 field
    with pytest.raises(ValueError, match="SAME"):
        Conv2D(8, 3, padding="full")
    with pytest.raises(ValueError, match=r"\(H, W, C\)"):
        layer.init(jax.random.key(0), (784,))
    with pytest.raises(ValueError, match="smaller than the kernel"):
        Conv2D(2, 5, padding="VALID").init(jax.random.key(0), (4, 4, 1))
    with pytest.raises(ValueError, match="positive"):
        Conv2D(0, 3)
