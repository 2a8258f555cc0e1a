"""jnn.layers.select: the per-model activation choice — each branch equals its activation, the
backward equals jax.vjp, and vmapped models with different choices equal each model alone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jnn.activations import get_activation
from jnn.layers.select import SelectActivation
from tests.gradcheck import assert_tree_close, layer_vjp_check

NAMES = ("relu", "sigmoid", "tanh", "linear", "softmax")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("index", range(len(NAMES)), ids=NAMES)
def test_each_branch_is_its_activation_and_backward_equals_vjp(index, dtype):
    with jax.enable_x64(dtype == jnp.float64):
        x = jnp.asarray(np.random.default_rng(index).standard_normal((4, 7)) * 3, dtype)
        layer = SelectActivation(NAMES, index)
        y, _, _ = layer_vjp_check(layer, x, what=NAMES[index])
        np.testing.assert_array_equal(y, get_activation(NAMES[index]).forward(x)[0])


def test_vmapped_models_choose_independently():
    """Five models stacked on a leading axis, each with its own activation, in one program."""
    layer = SelectActivation(NAMES)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((len(NAMES), 3, 6)), jnp.float32)
    dy = jnp.asarray(np.random.default_rng(1).standard_normal(x.shape), jnp.float32)
    states = {"index": jnp.arange(len(NAMES), dtype=jnp.int32)}

    def one(state, xi, dyi):
        y, cache, _ = layer.forward((), state, xi)
        return y, layer.backward((), cache, dyi)[1]

    ys, dxs = jax.jit(jax.vmap(one))(states, x, dy)
    for i, name in enumerate(NAMES):
        act = get_activation(name)
        y, cache = act.forward(x[i])
        np.testing.assert_array_equal(ys[i], y)
        assert_tree_close(dxs[i], act.backward(cache, dy[i]), jnp.float32, name)


def test_bad_names_and_index():
    with pytest.raises(ValueError, match="unknown activation"):
        SelectActivation(("relu", "swish"))
    with pytest.raises(ValueError, match="out of range"):
        SelectActivation(("relu",), index=3)
    with pytest.raises(ValueError, match="at least one"):
        SelectActivation(())
