"""Dropout: inverted dropout's backward equals jax.vjp under the same key, identity when not
training, and the mask statistics / scaling are what the docstring says."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jnn.errors import InputError
from jnn.layers import Dropout
from tests.gradcheck import layer_vjp_check


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("rate", [0.0, 0.3, 0.5, 0.9])
def test_backward_equals_vjp_under_the_same_key(rate, dtype):
    with jax.enable_x64(dtype == jnp.float64):
        x = jnp.asarray(np.random.default_rng(1).standard_normal((4, 3, 5, 2)), dtype)
        key = jax.random.key(7)
        y, _, dx = layer_vjp_check(Dropout(rate), x, key=key, train=True)
        kept = np.asarray(y) != 0
        np.testing.assert_allclose(np.asarray(y)[kept], np.asarray(x)[kept] / (1 - rate), 1e-6)
        assert (np.asarray(dx)[~kept] == 0).all()


def test_same_key_same_mask_other_key_other_mask():
    layer, x = Dropout(0.5), jnp.ones((64, 32))
    a = layer.forward((), (), x, key=jax.random.key(0), train=True)[0]
    b = layer.forward((), (), x, key=jax.random.key(0), train=True)[0]
    c = layer.forward((), (), x, key=jax.random.key(1), train=True)[0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    kept = float(jnp.mean(a != 0))
    assert abs(kept - 0.5) < 0.05 and abs(float(jnp.mean(a)) - 1.0) < 0.1


@pytest.mark.parametrize("key", [None, jax.random.key(3)], ids=["no-key", "key"])
def test_identity_when_not_training(key):
    layer, x = Dropout(0.5), jnp.arange(12.0).reshape(3, 4)
    y, cache, state = layer.forward((), (), x, key=key, train=False)
    np.testing.assert_array_equal(y, x)
    grads, dx = layer.backward((), cache, 2.0 * x)
    assert grads == () and state == ()
    np.testing.assert_array_equal(dx, 2.0 * x)
    layer_vjp_check(layer, x, key=key, train=False)


def test_training_without_key_is_a_clear_error():
    with pytest.raises(InputError, match="needs a PRNG key"):
        Dropout(0.5).forward((), (), jnp.ones((2, 2)), train=True)


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, "0.5"])
def test_rate_must_be_in_0_1(rate):
    with pytest.raises(InputError, match=r"\[0, 1\)"):
        Dropout(rate)
