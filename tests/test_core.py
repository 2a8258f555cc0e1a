"""jnn.core: the layer protocol and serial — key splitting, state threading, caches walked back in
reverse, clear errors — and whole models' manual gradients against jax.grad."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jnn import mlp
from jnn.core import Layer, apply, count_params, serial, stateless, value_and_grad
from jnn.layers import Dense, ReLU, Sigmoid, Softmax, Tanh
from jnn.study import StudyConfig
from tests.gradcheck import assert_tree_close, layer_vjp_check


def _counter(name: str) -> Layer:
    """A layer that records its key and counts its calls in its state (to see what serial does)."""

    def init(key, shape):
        return shape, (), {"calls": jnp.zeros((), jnp.int32)}

    def forward(params, state, x, *, key=None, train=False):
        bits = jnp.zeros((2,), jnp.uint32) if key is None else jax.random.key_data(key)
        return x + 1.0, bits, {"calls": state["calls"] + 1}

    def backward(params, cache, dy):
        return (), 2.0 * dy

    return Layer(init, forward, backward, name)


def test_serial_threads_state_splits_keys_and_walks_back_in_reverse():
    model = serial(_counter("a"), _counter("b"), _counter("c"))
    shape, params, state = model.init(jax.random.key(0), (3,))
    assert shape == (3,) and params == ((), (), ())
    x = jnp.zeros((2, 3))
    y, cache, state = model.forward(params, state, x, key=jax.random.key(7), train=True)
    np.testing.assert_array_equal(y, 3.0)
    assert [int(s["calls"]) for s in state] == [1, 1, 1]
    expected = [jax.random.key_data(k) for k in jax.random.split(jax.random.key(7), 3)]
    for got, want in zip(cache, expected):
        np.testing.assert_array_equal(got, want)  # one key per layer, as stax splits it
    _, dx = model.backward(params, cache, jnp.ones((2, 3)))
    np.testing.assert_array_equal(dx, 8.0)
    _, _, state = model.forward(params, state, x)
    assert [int(s["calls"]) for s in state] == [2, 2, 2]


def test_serial_nests_and_names():
    inner = serial(Dense(4), ReLU)
    model = serial(inner, Dense(3), name="net")
    shape, params, _ = model.init(jax.random.key(0), (5,))
    assert shape == (3,) and model.name == "net" and "Dense(4)" in inner.name
    assert count_params(params) == 5 * 4 + 4 + 4 * 3 + 3


def test_serial_rejects_non_layers():
    with pytest.raises(ValueError, match="at least one"):
        serial()
    with pytest.raises(TypeError, match=r"Dense\(10\)"):
        serial(Dense)


def test_dense_needs_flat_inputs():
    with pytest.raises(ValueError, match="Flatten"):
        Dense(3).init(jax.random.key(0), (28, 28, 1))
    with pytest.raises(ValueError, match="positive integer"):
        Dense(0)
    with pytest.raises(ValueError, match="unknown initializer"):
        Dense(3, init="nope")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("layer", [Dense(7), ReLU, Sigmoid, Tanh, Softmax], ids=lambda la: la.name)
def test_layer_backward_equals_vjp(layer, dtype):
    with jax.enable_x64(dtype == jnp.float64):
        x = jnp.asarray(np.random.default_rng(3).standard_normal((5, 6)), dtype)
        layer_vjp_check(layer, x)


def test_stateless_output_shape():
    flat = stateless(
        "flat",
        lambda x: (x.reshape(len(x), -1), x.shape),
        lambda s, d: d.reshape(s),
        lambda shape: (int(np.prod(shape)),),
    )
    shape, params, state = flat.init(jax.random.key(0), (2, 3))
    assert shape == (6,) and params == () and state == ()


STUDY_CASES = [(act, dt) for act in ("relu", "sigmoid", "tanh", "linear") for dt in ("f32", "f64")]


@pytest.mark.parametrize("act,dt", STUDY_CASES)
def test_study_mlp_manual_grads_equal_jax_grad(act, dt):
    """The study's serial MLP: manual backprop through serial equals jax.grad of forward + loss."""
    dtype = {"f32": jnp.float32, "f64": jnp.float64}[dt]
    with jax.enable_x64(dt == "f64"):
        _check_study_mlp(act, dtype)


def _check_study_mlp(act, dtype):
    model = mlp.mlp((784, 256, 128, 64, 10), act, init="glorot", dtype=dtype)
    _, params, state = model.init(jax.random.key(1), (784,))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((32, 784)), dtype)
    y = jnp.arange(32) % 10
    (loss, logits, _), grads = value_and_grad(model)(params, state, x, y)
    (loss_ref, logits_ref, _), grads_ref = value_and_grad(model, "autodiff")(params, state, x, y)
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-6)
    np.testing.assert_array_equal(logits, logits_ref)
    assert_tree_close(grads, grads_ref, dtype, f"{act} mlp")


def test_study_mlp_keeps_the_original_key_convention():
    """init splits the key once per dense layer, so the study's weights did not move."""
    sizes = StudyConfig().sizes
    model = mlp.mlp(sizes)
    _, params, _ = model.init(jax.random.key(0), (784,))
    old = mlp.init_mlp(jax.random.key(0), sizes)
    assert len(params) == 7 and params[1] == params[3] == params[5] == ()
    for new, ref in zip(mlp.dense_params(params), old):
        np.testing.assert_array_equal(new["w"], ref["w"])
    with pytest.raises(ValueError, match=r"\(784,\)"):
        model.init(jax.random.key(0), (28, 28))


def test_apply_is_the_inference_forward():
    model = serial(Dense(4), Tanh, Dense(2))
    _, params, state = model.init(jax.random.key(0), (3,))
    x = jnp.ones((5, 3))
    expected = model.forward(params, state, x)[0]
    np.testing.assert_array_equal(apply(model, params, state, x), expected)


def test_unknown_gradient_method():
    with pytest.raises(ValueError, match="manual"):
        value_and_grad(Dense(2), "finite-differences")


def test_serial_refuses_params_or_state_of_another_length():
    """zip() would have run zero layers on state=() and returned x unchanged."""
    model = serial(Dense(4), ReLU)
    _, params, state = model.init(jax.random.key(0), (3,))
    with pytest.raises(ValueError, match="2 layers but got 2 params and 0 states"):
        model.forward(params, (), jnp.ones((1, 3)))
