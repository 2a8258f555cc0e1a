"""BatchNorm: the closed-form backward equals jax.vjp of the forward in training mode (batch
statistics) and in inference mode (running averages), after Dense- and Conv2D-shaped inputs; the
running state moves by the momentum rule and is used (and left alone) when not training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jnn.errors import InputError
from jnn.layers import BatchNorm
from tests.layer_checks import jit_vjp_check

DTYPES = [jnp.float32, jnp.float64]


def running_state(c: int, seed: int = 0) -> dict:
    """Random running averages (zeros/ones would hide a wrong use of them in eval mode)."""
    rng = np.random.default_rng(seed)
    return {
        "mean": rng.standard_normal(c).astype(np.float32),
        "var": rng.uniform(0.5, 2.0, c).astype(np.float32),
    }


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", [(8, 5), (3, 5, 7, 4), (1, 3, 3, 2), (3, 1)])
def test_backward_equals_vjp(shape, train, dtype):
    with jax.enable_x64(dtype == jnp.float64):
        x = 3.0 * np.random.default_rng(0).standard_normal(shape) + 2.0
        jit_vjp_check(
            BatchNorm(), jnp.asarray(x, dtype), train=train, state=running_state(shape[-1])
        )


@settings(max_examples=6, deadline=None, derandomize=True)
@given(
    b=st.integers(2, 6),
    h=st.integers(1, 5),
    c=st.integers(1, 4),
    scale=st.sampled_from([1e-2, 1.0, 1e2]),
    dtype=st.sampled_from(DTYPES),
)
def test_backward_equals_vjp_hypothesis(b, h, c, scale, dtype):
    with jax.enable_x64(dtype == jnp.float64):
        x = scale * np.random.default_rng(b * h * c).standard_normal((b, h, h + 1, c))
        jit_vjp_check(BatchNorm(eps=1e-3), jnp.asarray(x, dtype), train=True)


def test_training_normalizes_and_updates_the_running_state():
    rng = np.random.default_rng(1)
    x = jnp.asarray(2.0 * rng.standard_normal((16, 3, 3, 4)) + 5.0, jnp.float32)
    layer = BatchNorm(momentum=0.9)
    _, params, state = layer.init(jax.random.key(0), (3, 3, 4))
    y, _, new = layer.forward(params, state, x, train=True)
    np.testing.assert_allclose(jnp.mean(y, axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(jnp.var(y, axis=(0, 1, 2)), 1.0, rtol=1e-3)
    mu, var = np.mean(x, axis=(0, 1, 2)), np.var(x, axis=(0, 1, 2))  # biased variance
    np.testing.assert_allclose(new["mean"], 0.9 * 0.0 + 0.1 * mu, rtol=1e-5)
    np.testing.assert_allclose(new["var"], 0.9 * 1.0 + 0.1 * var, rtol=1e-5)
    assert new["mean"].dtype == new["var"].dtype == jnp.float32


def test_eval_uses_the_running_state_and_keeps_it():
    x = jnp.asarray(np.random.default_rng(2).standard_normal((4, 3)), jnp.float32)
    layer = BatchNorm(eps=1e-5)
    params = {"scale": jnp.asarray([1.0, 2.0, 3.0]), "bias": jnp.asarray([0.0, 1.0, -1.0])}
    state = {"mean": jnp.asarray([0.5, -0.5, 0.0]), "var": jnp.asarray([4.0, 1.0, 0.25])}
    y, _, same = layer.forward(params, state, x, train=False)
    expected = params["scale"] * (x - state["mean"]) / np.sqrt(state["var"] + 1e-5)
    np.testing.assert_allclose(y, expected + params["bias"], rtol=1e-6)
    assert same is state


def test_state_dtype_is_kept_with_float64_inputs():
    with jax.enable_x64(True):
        layer = BatchNorm()
        _, params, state = layer.init(jax.random.key(0), (3,))
        x = jnp.asarray(np.random.default_rng(0).standard_normal((5, 3)), jnp.float64)
        _, _, new = layer.forward(params, state, x, train=True)
        assert new["mean"].dtype == new["var"].dtype == jnp.float32


@pytest.mark.parametrize("kwargs", [{"momentum": 1.5}, {"eps": 0.0}])
def test_bad_hyperparameters(kwargs):
    with pytest.raises(InputError):
        BatchNorm(**kwargs)


@pytest.mark.parametrize(
    "shape", [(0, 3), (0, 4, 4, 3), (2, 0, 4, 3)], ids=["dense", "conv", "hw0"]
)
def test_training_on_an_empty_batch_is_refused_and_the_state_stays_finite(shape):
    """Issue 19: training mode on 0 rows turned the running statistics into NaN (the mean of
    nothing), silently, for every later inference. Refused eagerly and under jit (shapes are
    static); inference on 0 rows is fine (0 rows out)."""
    layer = BatchNorm()
    _, params, state = layer.init(jax.random.key(0), shape[1:])
    x = jnp.zeros(shape, jnp.float32)
    for forward in (layer.forward, jax.jit(layer.forward, static_argnames="train")):
        with pytest.raises(InputError, match="empty batch") as err:
            forward(params, state, x, train=True)
        first = str(err.value).splitlines()[0]  # under jit, JAX appends its own note lines
        assert first.startswith("BatchNorm in training mode got an empty batch") and "NaN" in first
    y, _, same = layer.forward(params, state, x, train=False)
    assert y.shape == shape and same is state
    assert np.isfinite(np.asarray(state["mean"])).all() and np.isfinite(state["var"]).all()


@pytest.mark.parametrize("train", [True, False])
def test_input_it_cannot_take_is_one_line(train):
    """Adversarial pass: BatchNorm took int32 input and returned NaN in training mode, and
    another channel count failed inside JAX (ValueError) instead of one InputError."""
    layer = BatchNorm()
    _, params, state = layer.init(jax.random.PRNGKey(0), (3,))
    fwd = jax.jit(lambda x: layer.forward(params, state, x, train=train)[0])
    cases = [
        (jnp.ones((2, 3), jnp.int32), "expects float input, got dtype int32"),
        (jnp.ones((2, 5)), r"expects input \(batch, ..., 3\), got shape \(2, 5\)"),
        (jnp.ones((3,)), r"expects input \(batch, ..., 3\), got shape \(3,\)"),
    ]
    for x, says in cases:
        for call in (lambda x: layer.forward(params, state, x, train=train)[0], fwd):
            with pytest.raises(InputError, match=says) as err:
                call(x)
            assert "\n" not in str(err.value)
