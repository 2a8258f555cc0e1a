"""jnn.train: stacked (vmapped) models equal single ones, fit records history, stops on NaN."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jnn import train

SIZES = (20, 16, 8, 4)


@pytest.fixture(scope="module")
def data():
    x = jax.random.normal(jax.random.PRNGKey(1), (120, SIZES[0]))
    y = (jnp.arange(120) % SIZES[-1]).astype(jnp.int32)
    return x, y


def test_init_model_states_stacks_single_models():
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    stacked = train.init_model_states(keys, SIZES, optax.sgd(0.1), "normal", stddev=0.3)
    for i in range(3):
        one = train.init_model_state(keys[i], SIZES, optax.sgd(0.1), "normal", stddev=0.3)
        for a, b in zip(jax.tree.leaves(stacked), jax.tree.leaves(one)):
            np.testing.assert_allclose(a[i], b, rtol=1e-6, atol=1e-7)  # jit vs eager: 1 ulp
    assert stacked.epoch.shape == (3,)
    assert float(jnp.std(stacked.params[0]["w"][0])) == pytest.approx(0.3, rel=0.1)


def test_stacked_fit_matches_single_fits(data):
    x, y = data
    opt = optax.sgd(0.1)
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    stacked = train.fit(
        train.init_model_states(keys, SIZES, opt, "glorot"),
        train.make_epoch_fn("tanh", opt, 10, stacked=True),
        (x, y),
        (x, y),
        activation="tanh",
        epochs=3,
    )
    assert stacked.diverged_at is None
    assert stacked.history["train_loss"].shape == (2, 3)
    assert np.isfinite(stacked.history["val_accuracy"]).all()
    for i in range(2):
        single = train.fit(
            train.init_model_state(keys[i], SIZES, opt, "glorot"),
            train.make_epoch_fn("tanh", opt, 10),
            (x, y),
            (x, y),
            activation="tanh",
            epochs=3,
        )
        np.testing.assert_allclose(
            single.history["train_loss"], stacked.history["train_loss"][i], rtol=1e-5
        )
        for a, b in zip(
            jax.tree.leaves(single.state.params), jax.tree.leaves(stacked.state.params)
        ):
            np.testing.assert_allclose(a, b[i], rtol=1e-5, atol=1e-6)


def test_fit_continues_from_state_epoch_and_calls_back(data):
    x, y = data
    opt = optax.sgd(0.1)
    key = jax.random.PRNGKey(3)
    full = train.fit(
        train.init_model_state(key, SIZES, opt, "he"),
        train.make_epoch_fn("relu", opt, 10),
        (x, y),
        (x, y),
        activation="relu",
        epochs=4,
    )
    seen = []
    first = train.fit(
        train.init_model_state(key, SIZES, opt, "he"),
        train.make_epoch_fn("relu", opt, 10),
        (x, y),
        (x, y),
        activation="relu",
        epochs=2,
        on_epoch=lambda e, s, h: seen.append(e),
    )
    assert seen == [1, 2] and int(first.state.epoch) == 2
    history = train.empty_history(4)
    history.update({k: np.concatenate([v, [np.nan] * 2]).astype(np.float32)
                    for k, v in first.history.items()})  # fmt: skip
    rest = train.fit(
        first.state,
        train.make_epoch_fn("relu", opt, 10),
        (x, y),
        (x, y),
        activation="relu",
        epochs=4,
        history=history,
    )
    for a, b in zip(jax.tree.leaves(full.state.params), jax.tree.leaves(rest.state.params)):
        np.testing.assert_array_equal(a, b)  # resuming from a state is bit-identical
    np.testing.assert_array_equal(full.history["val_loss"], rest.history["val_loss"])


def test_fit_stops_at_first_non_finite_loss(data):
    x, y = data
    opt = optax.sgd(1e6)
    seen = []
    result = train.fit(
        train.init_model_state(jax.random.PRNGKey(0), SIZES, opt, "normal", stddev=1.0),
        train.make_epoch_fn("linear", opt, 10),
        (x, y),
        (x, y),
        activation="linear",
        epochs=50,
        on_epoch=lambda e, s, h: seen.append(e),
    )
    assert result.state is None and result.diverged_at is not None
    assert seen == list(range(1, result.diverged_at))  # no callback for the diverged epoch
    assert not np.isfinite(result.history["train_loss"][result.diverged_at - 1])
    assert np.isnan(result.history["train_loss"][result.diverged_at :]).all()


def test_evaluate_stacked_matches_evaluate(data):
    x, y = data
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    states = train.init_model_states(keys, SIZES, optax.sgd(0.1), "glorot")
    loss, acc = train.evaluate_stacked(states.params, x, y, "sigmoid")
    for i in range(2):
        params = jax.tree.map(lambda a, i=i: a[i], states.params)
        one_loss, one_acc = train.evaluate(params, x, y, "sigmoid")
        assert float(loss[i]) == pytest.approx(float(one_loss), rel=1e-5)
        assert float(acc[i]) == pytest.approx(float(one_acc))
