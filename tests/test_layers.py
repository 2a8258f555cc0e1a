"""jnn.layers: the dense layer's manual backward (dparams and dx) equals jax.vjp of its forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jnn.initializers import INITIALIZERS
from jnn.layers import dense_backward, dense_forward, dense_init
from tests.gradcheck import assert_tree_close

DTYPES = [jnp.float32, jnp.float64]


@jax.jit
def manual_and_vjp(params, x, dy):
    """((dparams, dx) by hand, (dparams, dx) by jax.vjp), compiled once per shape and dtype."""
    y, cache = dense_forward(params, x)
    y_ref, vjp = jax.vjp(lambda p, v: dense_forward(p, v)[0], params, x)
    return y, y_ref, dense_backward(params, cache, dy), vjp(dy)


def random_layer(seed, batch, n_in, n_out, dtype, scale=1.0):
    """Params with a nonzero bias (so the bias is really exercised), x and dy, from numpy."""
    rng = np.random.default_rng(seed)
    params = {
        "w": jnp.asarray(rng.standard_normal((n_in, n_out)), dtype),
        "b": jnp.asarray(rng.standard_normal(n_out), dtype),
    }
    x = jnp.asarray(scale * rng.standard_normal((batch, n_in)), dtype)
    return params, x, jnp.asarray(rng.standard_normal((batch, n_out)), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@settings(max_examples=15, deadline=None, derandomize=True)
@given(
    dims=st.sampled_from([(1, 1, 1), (1, 4, 3), (5, 3, 3), (7, 2, 9), (16, 33, 10)]),
    scale=st.sampled_from([1e-2, 1.0, 1e2]),
    seed=st.integers(0, 2**16),
)
def test_backward_matches_vjp(dims, scale, seed, dtype):
    with jax.enable_x64(dtype == jnp.float64):
        params, x, dy = random_layer(seed, *dims, dtype, scale)
        y, y_ref, manual, reference = manual_and_vjp(params, x, dy)
        np.testing.assert_array_equal(y, y_ref)
        assert_tree_close(manual, reference, dtype, f"dense {dims}")


def test_backward_shapes_and_formulas():
    params, x, dy = random_layer(0, 4, 3, 2, jnp.float32)
    dparams, dx = dense_backward(params, dense_forward(params, x)[1], dy)
    assert dparams["w"].shape == (3, 2) and dparams["b"].shape == (2,) and dx.shape == (4, 3)
    np.testing.assert_allclose(dparams["b"], np.asarray(dy).sum(0), rtol=1e-6)
    np.testing.assert_allclose(dx, np.asarray(dy) @ np.asarray(params["w"]).T, rtol=1e-5)


@pytest.mark.parametrize("init", sorted(INITIALIZERS))
def test_init_shapes_and_zero_bias(init):
    params = dense_init(jax.random.PRNGKey(0), 5, 3, init)
    assert params["w"].shape == (5, 3) and params["b"].shape == (3,)
    assert params["w"].dtype == params["b"].dtype == jnp.float32
    np.testing.assert_array_equal(params["b"], 0.0)


def test_init_passes_dtype_and_initializer_options():
    with jax.enable_x64(True):
        params = dense_init(jax.random.PRNGKey(0), 400, 500, "normal", jnp.float64, stddev=2.0)
        assert params["w"].dtype == params["b"].dtype == jnp.float64
        w = np.asarray(params["w"])
    assert abs(w.std() / 2.0 - 1) < 0.02


@pytest.mark.parametrize("n_in, n_out", [(0, 3), (3, 0), (-1, 2)])
def test_init_rejects_empty_layers(n_in, n_out):
    with pytest.raises(ValueError, match="positive"):
        dense_init(jax.random.PRNGKey(0), n_in, n_out)


def test_init_rejects_unknown_initializer():
    with pytest.raises(ValueError, match="unknown initializer"):
        dense_init(jax.random.PRNGKey(0), 2, 2, "orthogonal")


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.uint8, jnp.bool_])
def test_dense_refuses_non_float_input_in_one_line(dtype):
    """Integer pixels would be computed on as floats of 0..255 (or 0/1), a silently different
    model; the layer's forward refuses them, the same plain and under jit."""
    from jnn.errors import InputError
    from jnn.layers import Dense

    layer = Dense(3)
    _, params, state = layer.init(jax.random.key(0), (4,))
    x = jnp.ones((2, 4), dtype)
    for forward in (layer.forward, jax.jit(layer.forward)):
        with pytest.raises(InputError, match=r"Dense\(3\) expects float input, got dtype") as e:
            forward(params, state, x)
        assert "\n" not in str(e.value)
    y, _, _ = layer.forward(params, state, x.astype(jnp.float32))
    assert y.shape == (2, 3)
