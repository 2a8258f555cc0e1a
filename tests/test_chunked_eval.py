"""The library's one chunked evaluation (``jnn.train.make_eval_fn(model, chunk=...)``, which
``jnn.stacked``, ``experiments.cnn`` and ``experiments.vgg_transfer`` use): equal to the
evaluation in one pass up to float32 summation order, for any N against the chunk, single and
stacked models; a chunk that is not a positive int is refused in one line."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jnn import core, models, stacked, train
from jnn.errors import InputError
from jnn.layers import Dense, Dropout, ReLU


def small_model() -> core.Layer:
    return core.serial(Dense(16, init="he"), ReLU, Dropout(0.5), Dense(10))


def data(n: int, seed: int = 0) -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((n, 12)), jnp.float32)
    return x, jnp.asarray(rng.integers(0, 10, n), jnp.int32)


@pytest.mark.parametrize(
    "n, chunk",
    [(64, 16), (67, 16), (5, 16), (16, 16), (1, 7), (33, 1)],
    ids=["multiple", "remainder", "n-below-chunk", "n-equals-chunk", "one-example", "chunk-1"],
)
def test_chunked_equals_one_pass(n, chunk):
    model = small_model()
    _, params, state = model.init(jax.random.key(0), (12,))
    x, y = data(n)
    whole = train.make_eval_fn(model)(params, state, x, y)
    parts = train.make_eval_fn(model, chunk=chunk)(params, state, x, y)
    np.testing.assert_allclose(parts[0], whole[0], rtol=2e-6)
    assert float(parts[1]) == pytest.approx(float(whole[1]), abs=1e-6)  # a count over n
    if n > 16:  # the check sees right and wrong predictions
        assert 0.0 < float(whole[1]) < 1.0


def test_stacked_chunked_equals_one_pass_and_the_study_engine():
    model = small_model()
    keys = jax.random.split(jax.random.key(1), 3)
    st = train.init_train_states(keys, model, optax.sgd(0.1), (12,))
    x, y = data(50, seed=2)
    whole = train.make_eval_fn(model, stacked=True)(st.params, st.model_state, x, y)
    parts = train.make_eval_fn(model, stacked=True, chunk=8)(st.params, st.model_state, x, y)
    assert parts[0].shape == (3,)
    np.testing.assert_allclose(parts[0], whole[0], rtol=2e-6)
    np.testing.assert_allclose(parts[1], whole[1], atol=1e-6)
    engine = jax.vmap(lambda p, s: stacked.evaluate_chunked(model, p, s, x, y, chunk=8))
    np.testing.assert_array_equal(engine(st.params, st.model_state)[0], parts[0])


def test_a_conv_net_chunked_equals_one_pass():
    model = models.build("cnn", input_shape=(8, 8, 1), classes=10)
    _, params, state = model.init(jax.random.key(0), (8, 8, 1))
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.random((21, 8, 8, 1)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, 21), jnp.int32)
    whole = train.make_eval_fn(model)(params, state, x, y)
    parts = train.make_eval_fn(model, chunk=4)(params, state, x, y)
    np.testing.assert_allclose(parts[0], whole[0], rtol=2e-6)
    assert float(parts[1]) == pytest.approx(float(whole[1]), abs=1e-6)


@pytest.mark.parametrize("chunk", [0, -3, 2.5, True, "64", np.float32(8)])
def test_a_bad_chunk_is_refused_in_one_line(chunk):
    with pytest.raises(InputError, match="chunk must be a positive number") as info:
        train.make_eval_fn(small_model(), chunk=chunk)
    assert "\n" not in str(info.value)


def test_numpy_integer_chunk_and_attributes():
    fn = train.make_eval_fn(small_model(), chunk=np.int64(4))
    assert fn.chunk == 4 and isinstance(fn.chunk, int) and not fn.stacked
