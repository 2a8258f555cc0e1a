"""Flatten: a layer value; its backward (a reshape back) equals jax.vjp of its forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jnn.core import Layer, serial
from jnn.layers import Dense, Flatten
from tests.gradcheck import layer_vjp_check


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", [(2, 3, 5, 1), (1, 4, 4, 3), (3, 7)])
def test_backward_equals_vjp(shape, dtype):
    with jax.enable_x64(dtype == jnp.float64):
        x = jnp.asarray(np.random.default_rng(0).standard_normal(shape), dtype)
        y, _, dx = layer_vjp_check(Flatten, x)
        assert y.shape == (shape[0], int(np.prod(shape[1:]))) and dx.shape == shape
        np.testing.assert_array_equal(y, np.asarray(x).reshape(shape[0], -1))


def test_is_a_value_and_maps_shapes():
    assert isinstance(Flatten, Layer)
    shape, params, state = serial(Flatten, Dense(3)).init(jax.random.key(0), (4, 5, 2))
    assert shape == (3,) and params[0] == () and params[1]["w"].shape == (40, 3)
