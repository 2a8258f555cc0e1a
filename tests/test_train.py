"""jnn.train: any jnn.core model trains through one epoch loop; stacked (vmapped) models equal
single ones; fit records history, stops on a non-finite loss or param, refuses bad data; the
study's MLP trains bit-identically to the pre-``serial`` code (an independent copy of it,
trained in the same run on the same machine)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jnn import core, train
from jnn.activations import get_activation
from jnn.errors import InputError
from jnn.layers.dense import dense_backward, dense_forward
from jnn.losses import one_hot, softmax_cross_entropy, softmax_cross_entropy_backward
from jnn.mlp import dense_params, init_mlp, mlp

SIZES = (20, 16, 8, 4)
SHAPE = (SIZES[0],)


@pytest.fixture(scope="module")
def data():
    x = jax.random.normal(jax.random.PRNGKey(1), (120, SIZES[0]))
    y = (jnp.arange(120) % SIZES[-1]).astype(jnp.int32)
    return x, y


def _fit(model, state, data, epochs, *, stacked=False, lr=0.1, **kwargs):
    """train.fit of ``model`` at batch 10 with plain SGD, evaluated on the training data."""
    return train.fit(
        state,
        train.make_epoch_fn(model, optax.sgd(lr), 10, stacked=stacked),
        data,
        data,
        eval_fn=train.make_eval_fn(model, stacked=stacked),
        epochs=epochs,
        **kwargs,
    )


@pytest.mark.slow
def test_init_train_states_stacks_single_models():
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    model = mlp(SIZES, "relu", "normal", stddev=0.3)
    stacked = train.init_train_states(keys, model, optax.sgd(0.1), SHAPE)
    for i in range(3):
        one = train.init_train_state(keys[i], model, optax.sgd(0.1), SHAPE)
        for a, b in zip(jax.tree.leaves(stacked), jax.tree.leaves(one), strict=True):
            np.testing.assert_allclose(a[i], b, rtol=1e-6, atol=1e-7)  # jit vs eager: 1 ulp
    assert stacked.epoch.shape == (3,) and stacked.model_state == ((),) * 5
    assert float(jnp.std(stacked.params[0]["w"][0])) == pytest.approx(0.3, rel=0.1)


@pytest.mark.slow
def test_stacked_fit_matches_single_fits(data):
    model = mlp(SIZES, "tanh", "glorot")
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    stacked = _fit(
        model, train.init_train_states(keys, model, optax.sgd(0.1), SHAPE), data, 3, stacked=True
    )
    assert stacked.diverged_at is None
    assert stacked.history["train_loss"].shape == (2, 3)
    assert np.isfinite(stacked.history["val_accuracy"]).all()
    for i in range(2):
        single = _fit(model, train.init_train_state(keys[i], model, optax.sgd(0.1), SHAPE), data, 3)
        np.testing.assert_allclose(
            single.history["train_loss"], stacked.history["train_loss"][i], rtol=1e-5
        )
        for a, b in zip(
            jax.tree.leaves(single.state.params), jax.tree.leaves(stacked.state.params)
        ):
            np.testing.assert_allclose(a, b[i], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_fit_continues_from_state_epoch_and_calls_back(data):
    model = mlp(SIZES, "relu", "he")
    state = train.init_train_state(jax.random.PRNGKey(3), model, optax.sgd(0.1), SHAPE)
    full = _fit(model, jax.tree.map(jnp.copy, state), data, 4)
    seen = []
    first = _fit(model, state, data, 2, on_epoch=lambda e, s, h: seen.append(e))
    assert seen == [1, 2] and int(first.state.epoch) == 2
    history = train.empty_history(4)
    history.update({k: np.concatenate([v, [np.nan] * 2]).astype(np.float32)
                    for k, v in first.history.items()})  # fmt: skip
    rest = _fit(model, first.state, data, 4, history=history)
    for a, b in zip(jax.tree.leaves(full.state), jax.tree.leaves(rest.state), strict=True):
        np.testing.assert_array_equal(a, b)  # resuming from a state is bit-identical
    np.testing.assert_array_equal(full.history["val_loss"], rest.history["val_loss"])


def test_fit_stops_at_first_non_finite_loss(data):
    model = mlp(SIZES, "linear", "normal", stddev=1.0)
    state = train.init_train_state(jax.random.PRNGKey(0), model, optax.sgd(1e6), SHAPE)
    seen = []
    result = _fit(model, state, data, 50, lr=1e6, on_epoch=lambda e, s, h: seen.append(e))
    assert result.state is None and result.diverged_at is not None
    assert seen == list(range(1, result.diverged_at))  # no callback for the diverged epoch
    assert not np.isfinite(result.history["train_loss"][result.diverged_at - 1])
    assert np.isnan(result.history["train_loss"][result.diverged_at :]).all()


def test_relu_at_huge_lr_is_stopped_not_kept_with_nan_weights(data):
    """lr 1e30 on ReLU: the weights blow up to inf/NaN; fit must not return them as trained."""
    model = mlp(SIZES, "relu", "he")
    state = train.init_train_state(jax.random.PRNGKey(0), model, optax.sgd(1e30), SHAPE)
    result = _fit(model, state, data, 5, lr=1e30)
    assert result.state is None and result.diverged_at == 1


def test_a_planted_nan_weight_stops_training(data):
    model = mlp(SIZES, "relu", "he")
    state = train.init_train_state(jax.random.PRNGKey(0), model, optax.sgd(0.1), SHAPE)
    w = state.params[2]["w"].at[3, 1].set(jnp.nan)
    params = (*state.params[:2], {**state.params[2], "w": w}, *state.params[3:])
    result = _fit(model, state._replace(params=params), data, 3)
    assert result.state is None and result.diverged_at == 1


def test_non_finite_params_with_a_finite_loss_are_caught(data):
    """The epoch checks the params themselves: here the loss stays finite (it is computed before
    each update) but the last update writes NaN into the params."""
    model = mlp(SIZES, "tanh", "glorot")
    manual = core.value_and_grad(model)

    def nan_grads(params, state, x, y, *, key=None, train=True):
        (loss, logits, state), grads = manual(params, state, x, y, key=key, train=train)
        return (loss, logits, state), jax.tree.map(lambda g: g * jnp.nan, grads)

    state = train.init_train_state(jax.random.PRNGKey(0), model, optax.sgd(0.1), SHAPE)
    epoch = train.make_epoch_fn(nan_grads, optax.sgd(0.1), 120)  # one step: the loss is finite
    x, y = data
    _, metrics = epoch(jax.tree.map(jnp.copy, state), x, y)
    assert np.isfinite(float(metrics.loss)) and not bool(metrics.params_finite)

    def eval_fn(params, model_state, x, y):  # a model-free evaluation that never sees the NaN
        return jnp.float32(1.0), jnp.float32(0.5)

    result = train.fit(state, epoch, data, data, eval_fn=eval_fn, epochs=3)
    assert result.state is None and result.diverged_at == 1


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda x, y: (x, y[:-5]), "one label per example"),
        (lambda x, y: (x, y.at[7].set(SIZES[-1])), r"\[0, 4\)"),
        (lambda x, y: (x, y.at[7].set(-1)), r"\[0, 4\)"),
        (lambda x, y: (x, y.astype(jnp.float32)), "integer"),
        (lambda x, y: (x.at[3, 2].set(jnp.nan), y), "NaN or inf"),
        (lambda x, y: (np.asarray(x.at[3, 2].set(jnp.inf)), np.asarray(y)), "NaN or inf"),
    ],
    ids=["short y", "label = C", "label -1", "float labels", "nan x", "inf x numpy"],
)
def test_fit_refuses_bad_data_in_one_line(data, bad, match):
    model = mlp(SIZES, "relu", "he")
    state = train.init_train_state(jax.random.PRNGKey(0), model, optax.sgd(0.1), SHAPE)
    with pytest.raises(InputError, match=match) as err:
        _fit(model, state, bad(*data), 1)
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match=match):  # the validation data are checked too
        train.fit(state, None, data, bad(*data), eval_fn=train.make_eval_fn(model), epochs=1)


def test_make_eval_fn_stacked_matches_single(data):
    x, y = data
    model = mlp(SIZES, "sigmoid", "glorot")
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    states = train.init_train_states(keys, model, optax.sgd(0.1), SHAPE)
    loss, acc = train.make_eval_fn(model, stacked=True)(states.params, states.model_state, x, y)
    for i in range(2):
        params, model_state = jax.tree.map(lambda a, i=i: a[i], (states.params, states.model_state))
        one_loss, one_acc = train.make_eval_fn(model)(params, model_state, x, y)
        assert float(loss[i]) == pytest.approx(float(one_loss), rel=1e-5)
        assert float(acc[i]) == pytest.approx(float(one_acc))


# --------------------------------------------------------------------------------------------
# Any model: image-shaped x, layer state and the per-step key are threaded through the scan
# --------------------------------------------------------------------------------------------


def _noisy_counter() -> core.Layer:
    """A test layer: adds key-dependent noise in training (like Dropout, it needs the per-step
    key) and counts its training calls in its state (like BatchNorm's running statistics)."""

    def init(key, input_shape):
        return tuple(input_shape), (), jnp.zeros((), jnp.int32)

    def forward(params, state, x, *, key=None, train=False):
        if not train:
            return x, None, state
        return x + 0.1 * jax.random.normal(key, x.shape), None, state + 1

    return core.Layer(init, forward, lambda params, cache, dy: ((), dy), "noisy_counter")


def _image_model() -> core.Layer:
    flatten = core.stateless(
        "flatten",
        lambda x: (x.reshape(x.shape[0], -1), x.shape),
        lambda shape, dy: dy.reshape(shape),
        lambda shape: (int(np.prod(shape)),),
    )
    return core.serial(flatten, _noisy_counter(), mlp((16, 8, 4), "tanh", "glorot"))


@pytest.mark.slow
def test_any_model_image_input_state_and_step_keys():
    x = jax.random.normal(jax.random.PRNGKey(5), (60, 4, 4, 1))
    y = (jnp.arange(60) % 4).astype(jnp.int32)
    model = _image_model()
    state = train.init_train_state(jax.random.PRNGKey(0), model, optax.sgd(0.1), (4, 4, 1))
    assert state.model_state[1] == 0
    result = _fit(model, jax.tree.map(jnp.copy, state), (x, y), 2)
    assert result.diverged_at is None and int(result.state.model_state[1]) == 2 * 6  # steps
    again = _fit(model, jax.tree.map(jnp.copy, state), (x, y), 2)
    for a, b in zip(jax.tree.leaves(result.state), jax.tree.leaves(again.state), strict=True):
        np.testing.assert_array_equal(a, b)  # same keys, same noise
    other = _fit(model, state._replace(dropout_key=jax.random.PRNGKey(9)), (x, y), 2)
    assert not np.array_equal(other.state.params[2][0]["w"], result.state.params[2][0]["w"])
    assert np.array_equal(other.state.key, result.state.key)  # the shuffle stream is separate


def test_real_layers_dropout_and_batchnorm_train_through_the_loop():
    """The module docstring's recipe with jnn.layers: image x, Dropout's per-step key, BatchNorm's
    running statistics threaded through the scan and used (train=False) by the evaluation."""
    from jnn.layers import BatchNorm, Dense, Dropout, Flatten, ReLU

    x = jax.random.normal(jax.random.PRNGKey(5), (60, 4, 4, 1))
    y = (jnp.arange(60) % 4).astype(jnp.int32)
    model = core.serial(Flatten, Dense(16), BatchNorm(), ReLU, Dropout(0.5), Dense(4))
    state = train.init_train_state(jax.random.PRNGKey(0), model, optax.sgd(0.1), (4, 4, 1))
    result = _fit(model, state, (x, y), 2)
    assert result.diverged_at is None and np.isfinite(result.history["val_loss"]).all()
    stats = result.state.model_state[2]
    assert not np.allclose(stats["mean"], 0.0) and not np.allclose(stats["var"], 1.0)


def test_per_step_keys_differ():
    """Every step of an epoch draws different noise (fold_in(epoch_key, step))."""
    seen = []

    def spy(params, state, x, y, *, key=None, train=True):
        jax.debug.callback(lambda k: seen.append(np.asarray(k)), key)  # raw uint32 keys
        return core.value_and_grad(mlp((3, 2), "relu"))(params, state, x, y, key=key, train=train)

    state = train.init_train_state(jax.random.PRNGKey(0), mlp((3, 2)), optax.sgd(0.1), (3,))
    epoch = train.make_epoch_fn(spy, optax.sgd(0.1), 2)
    state, _ = epoch(state, jnp.ones((6, 3)), jnp.zeros((6,), jnp.int32))
    state, _ = epoch(state, jnp.ones((6, 3)), jnp.zeros((6,), jnp.int32))
    jax.effects_barrier()
    assert len(seen) == 6 and len({k.tobytes() for k in seen}) == 6


def test_step_loop_runs_the_same_epoch_as_the_scan():
    """loop="steps" (one jitted step per batch) draws the same permutation and step keys as the
    scanned epoch: Dropout + BatchNorm model, two epochs, equal to float32 rounding."""
    from jnn.layers import BatchNorm, Dense, Dropout, Flatten, ReLU

    x = jax.random.normal(jax.random.PRNGKey(5), (60, 4, 4, 1))
    y = (jnp.arange(60) % 4).astype(jnp.int32)
    model = core.serial(Flatten, Dense(16), BatchNorm(), ReLU, Dropout(0.5), Dense(4))
    opt = optax.adam(1e-2)
    start = train.init_train_state(jax.random.PRNGKey(0), model, opt, (4, 4, 1))
    states, losses = {}, {}
    for loop in train.EPOCH_LOOPS:
        state, epoch = jax.tree.map(jnp.copy, start), train.make_epoch_fn(model, opt, 8, loop=loop)
        for _ in range(2):
            state, metrics = epoch(state, x, y)
        states[loop], losses[loop] = state, float(metrics.loss)
    assert states["steps"].epoch == 2 and bool(metrics.params_finite)
    np.testing.assert_array_equal(states["steps"].key, states["scan"].key)
    np.testing.assert_allclose(losses["steps"], losses["scan"], rtol=1e-5)
    for a, b in zip(
        jax.tree.leaves(states["steps"].params), jax.tree.leaves(states["scan"].params)
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_make_epoch_fn_checks_its_arguments():
    with pytest.raises(InputError, match="loop must be one of"):
        train.make_epoch_fn(mlp((3, 2)), optax.sgd(0.1), 2, loop="python")
    with pytest.raises(InputError, match="stacked models need"):
        train.make_epoch_fn(mlp((3, 2)), optax.sgd(0.1), 2, stacked=True, loop="steps")
    with pytest.raises(InputError, match="gradients"):
        train.make_epoch_fn(mlp((3, 2)), optax.sgd(0.1), 2, "numeric")
    with pytest.raises(InputError, match="batch size"):
        train.make_epoch_fn(mlp((3, 2)), optax.sgd(0.1), 0)
    with pytest.raises(TypeError, match="Layer"):
        train.make_epoch_fn("relu", optax.sgd(0.1), 2)


# --------------------------------------------------------------------------------------------
# Every call of an epoch or evaluation function is checked, not only fit's (issue 19)
# --------------------------------------------------------------------------------------------

WIDER = (20, 32, 8, 4)  # another width: Dense computed with whatever weights it was given


def _epoch_and_eval(model, stacked: bool, loop: str = "scan"):
    return (
        train.make_epoch_fn(model, optax.sgd(0.1), 10, stacked=stacked, loop=loop),
        train.make_eval_fn(model, stacked=stacked),
    )


def _states(sizes, stacked: bool):
    model, keys = mlp(sizes, "relu", "he"), jax.random.split(jax.random.PRNGKey(0), 2)
    if stacked:
        return train.init_train_states(keys, model, optax.sgd(0.1), SHAPE)
    return train.init_train_state(keys[0], model, optax.sgd(0.1), SHAPE)


def _refused(fn, *args, match: str) -> None:
    with pytest.raises(InputError, match=match) as err:
        fn(*args)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("stacked, loop", [(False, "scan"), (True, "scan"), (False, "steps")])
def test_a_direct_epoch_call_refuses_y_of_another_length(data, stacked, loop):
    """make_epoch_fn's function trained silently on x with a shorter y (only fit checked)."""
    epoch, evaluate = _epoch_and_eval(mlp(SIZES, "relu", "he"), stacked, loop)
    state, (x, y) = _states(SIZES, stacked), data
    for short in (y[:-5], y[:0], y[:, None]):
        _refused(epoch, state, x, short, match="one label per example")
        _refused(evaluate, state.params, state.model_state, x, short, match="one label per")
    state, metrics = epoch(state, x, y)  # the state was not donated by the refused calls
    assert np.all(np.isfinite(np.asarray(metrics.loss)))


@pytest.mark.slow
@pytest.mark.parametrize("stacked", [False, True], ids=["single", "stacked"])
def test_params_of_another_network_are_refused(data, stacked):
    """A state of a 20-32-8-4 net ran silently through an epoch and evaluation of 20-16-8-4."""
    epoch, evaluate = _epoch_and_eval(mlp(SIZES, "relu", "he"), stacked)
    wider, (x, y) = _states(WIDER, stacked), data
    says = r"params do not match the model mlp\(20, 16, 8, 4\) relu .*\['b'\] has shape \(32,\)"
    _refused(epoch, wider, x, y, match=says)
    _refused(evaluate, wider.params, wider.model_state, x, y, match=says)
    fewer = wider._replace(params=_states(SIZES, stacked).params[:-1])
    _refused(epoch, fewer, x, y, match=r"\[4\]\['b'\] is missing")
    other_input = jnp.ones((len(x), 12))  # params of 20 inputs, data of 12 features
    says = r"x of shape \(120, 12\) does not fit the model: .* \(20,\), got \(12,\)"
    _refused(epoch, _states(SIZES, stacked), other_input, y, match=says)


def test_layer_state_of_another_network_is_refused(data):
    from jnn.layers import BatchNorm, Dense

    model = core.serial(Dense(8), BatchNorm(), Dense(4))
    state = train.init_train_state(jax.random.PRNGKey(0), model, optax.sgd(0.1), SHAPE)
    bad = state._replace(model_state=(*state.model_state[:1], {"mean": jnp.zeros(5),
                         "var": jnp.ones(5)}, *state.model_state[2:]))  # fmt: skip
    epoch, evaluate = _epoch_and_eval(model, stacked=False)
    _refused(epoch, bad, *data, match=r"layer state do not match .*\[1\]\['mean'\]")
    _refused(evaluate, bad.params, bad.model_state, *data, match="layer state do not match")


def test_empty_and_too_small_data_are_refused(data):
    """An epoch of fewer examples than one batch ran no step (NaN loss, 0/0 accuracy), and an
    evaluation of no examples returned NaN."""
    epoch, evaluate = _epoch_and_eval(mlp(SIZES, "relu", "he"), stacked=False)
    state, (x, y) = _states(SIZES, False), data
    _refused(epoch, state, x[:0], y[:0], match="0 examples, fewer than one batch of 10")
    _refused(epoch, state, x[:9], y[:9], match="9 examples, fewer than one batch of 10")
    _refused(evaluate, state.params, state.model_state, x[:0], y[:0], match="no examples")
    loss, accuracy = evaluate(state.params, state.model_state, x[:1], y[:1])
    assert np.isfinite(float(loss)) and float(accuracy) in (0.0, 1.0)


def test_the_checked_epoch_still_compiles_ahead_of_time(data):
    """bench.benchmark lowers the epoch function (AOT): ``.lower`` is kept, and checked."""
    epoch = train.make_epoch_fn(mlp(SIZES, "relu", "he"), optax.sgd(0.1), 10)
    state, (x, y) = _states(SIZES, False), data
    compiled = epoch.lower(state, x, y).compile()
    state, metrics = compiled(state, x, y)
    assert int(state.epoch) == 1 and np.isfinite(float(metrics.loss))
    _refused(epoch.lower, _states(WIDER, False), x, y, match="params do not match")


# --------------------------------------------------------------------------------------------
# The study does not move: the serial-model training path against an independent copy of the
# pre-serial code (jnn.mlp's activation-string API and jnn.train's epoch, git f34eb19), both run
# here, on this machine: 3 epochs of 2 stacked models per activation and one single model, lr 0.1,
# batch 32. Bit for bit: XLA:CPU emits different code per CPU (two VMs differ at ~1e-7 from epoch
# 1), so digests recorded on one CPU fail on another, while two programs of the same arithmetic
# compiled on one machine agree exactly; tests/test_lint.py refuses stored digests of results.
# --------------------------------------------------------------------------------------------


def _old_value_and_grad(params, x, y, activation):
    """The pre-serial ``jnn.mlp.manual_value_and_grad``: params a list of {"w", "b"} (one per
    dense layer), x (B, D), y (B,) int -> ((mean loss, logits (B, C)), grads like params)."""
    act, caches, h = get_activation(activation), [], x
    for i, layer in enumerate(params):
        h, dense_cache = dense_forward(layer, h)
        act_cache = None
        if i < len(params) - 1:
            h, act_cache = act.forward(h)
        caches.append((dense_cache, act_cache))
    loss, ce_cache = softmax_cross_entropy(h, one_hot(y, h.shape[-1], h.dtype))
    grads, d = [None] * len(params), softmax_cross_entropy_backward(ce_cache)
    for i in reversed(range(len(params))):
        dense_cache, act_cache = caches[i]
        if i < len(params) - 1:
            d = act.backward(act_cache, d)
        grads[i], d = dense_backward(params[i], dense_cache, d)
    return (loss, h), grads


def _old_epoch(state, x, y, *, activation, opt, batch_size):
    """The pre-serial ``jnn.train.epoch_step``: state (params, opt_state, key, epoch); one
    permutation per epoch from ``split(key)``, ``lax.scan`` over its full batches."""
    params, opt_state, key, epoch = state
    num_batches = x.shape[0] // batch_size
    key, perm_key = jax.random.split(key)
    batches = jax.random.permutation(perm_key, x.shape[0])[: num_batches * batch_size]

    def step(carry, idx):
        params, opt_state = carry
        (loss, logits), grads = _old_value_and_grad(params, x[idx], y[idx], activation)
        updates, opt_state = opt.update(grads, opt_state, params)
        correct = jnp.sum(jnp.argmax(logits, axis=-1) == y[idx])
        return (optax.apply_updates(params, updates), opt_state), (loss, correct)

    carry, (losses, correct) = jax.lax.scan(
        step, (params, opt_state), batches.reshape(num_batches, batch_size)
    )
    metrics = (jnp.mean(losses), jnp.sum(correct) / (num_batches * batch_size))
    return (*carry, key, epoch + 1), metrics


def _old_evaluate(params, x, y, activation):
    """The pre-serial ``jnn.train._evaluate``: mean cross-entropy and accuracy on (x, y)."""
    h = x
    for i, layer in enumerate(params):
        h = dense_forward(layer, h)[0]
        if i < len(params) - 1:
            h = get_activation(activation).forward(h)[0]
    loss, _ = softmax_cross_entropy(h, one_hot(y, h.shape[-1], h.dtype))
    return loss, jnp.mean(jnp.argmax(h, axis=-1) == y)


def _old_fit(keys, sizes, activation, stacked, train_data, val_data, epochs):
    """The pre-serial study: ``init_model_state(s)`` (``init_key, shuffle_key = split(key)``,
    stacked params drawn in one jitted vmap), then ``epochs`` jitted epochs, each followed by
    the evaluation. Returns (history {name: (M, epochs) or (epochs,)}, final params list)."""
    opt = optax.sgd(0.1)
    if stacked:
        init_keys, shuffle_keys = jnp.moveaxis(jax.vmap(jax.random.split)(keys), 1, 0)
        params = jax.jit(jax.vmap(lambda k: init_mlp(k, sizes, "glorot")))(init_keys)
        state = (params, jax.vmap(opt.init)(params), shuffle_keys, jnp.zeros((len(keys),)))
    else:
        init_key, shuffle_key = jax.random.split(keys)
        params = init_mlp(init_key, sizes, "glorot")
        state = (params, opt.init(params), shuffle_key, jnp.zeros(()))
    epoch = functools.partial(_old_epoch, activation=activation, opt=opt, batch_size=32)
    evaluate = jax.jit(functools.partial(_old_evaluate, activation=activation))
    if stacked:
        epoch = jax.vmap(epoch, in_axes=(0, None, None))
        evaluate = jax.vmap(evaluate, in_axes=(0, None, None))
    epoch = jax.jit(epoch)
    history = train.empty_history(epochs, len(keys) if stacked else None)
    for e in range(epochs):
        state, metrics = epoch(state, *train_data)
        row = jax.device_get((*metrics, *evaluate(state[0], *val_data)))
        for name, value in zip(train.HISTORY_KEYS, row, strict=True):
            history[name][..., e] = value
    return history, state[0]


@pytest.mark.slow
@pytest.mark.parametrize("case", ["relu", "relu-single", "tanh"])
def test_study_mlp_trains_bit_identically_to_the_old_code(case):
    rng = np.random.default_rng(0)
    sizes = (784, 32, 16, 10)
    x = rng.random((300, 784), dtype=np.float32) * 0.1
    y = rng.integers(0, 10, 300).astype(np.int32)
    xv = rng.random((50, 784), dtype=np.float32)
    yv = rng.integers(0, 10, 50).astype(np.int32)
    keys = jnp.stack([jax.random.fold_in(jax.random.PRNGKey(0), i) for i in range(2)])
    opt, stacked, activation = optax.sgd(0.1), case != "relu-single", case.split("-")[0]
    model = mlp(sizes, activation, "glorot")
    if stacked:
        state = train.init_train_states(keys, model, opt, (784,))
    else:
        state = train.init_train_state(keys[1], model, opt, (784,))
    result = train.fit(
        state,
        train.make_epoch_fn(model, opt, 32, stacked=stacked),
        (x, y),
        (xv, yv),
        eval_fn=train.make_eval_fn(model, stacked=stacked),
        epochs=3,
    )
    old_keys = keys if stacked else keys[1]
    history, params = _old_fit(old_keys, sizes, activation, stacked, (x, y), (xv, yv), 3)
    assert np.isfinite(history["val_loss"]).all() and result.diverged_at is None
    for name in train.HISTORY_KEYS:
        np.testing.assert_array_equal(result.history[name], history[name], err_msg=name)
    new_params = dense_params(result.state.params)
    assert len(new_params) == len(params) == 3
    for new, old in zip(jax.tree.leaves(new_params), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(new, old)


# --------------------------------------------------------------------------------------------
# A CNN's inputs: wrong channels, integer dtypes and empty batches are one line at every entry
# --------------------------------------------------------------------------------------------


def _small_cnn():
    from jnn.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU

    return core.serial(Conv2D(4, 3), ReLU, MaxPool2D(2), Flatten, Dense(3))


CNN_SHAPE = (8, 8, 1)
CNN_BAD = {
    "channels": (jnp.zeros((20, 8, 8, 3)), r"Conv2D\(4, .* expects input \(batch, H, W, 1\) "),
    "uint8": (jnp.zeros((20, 8, 8, 1), jnp.uint8), "x must hold floats .* got dtype uint8"),
    "int32": (np.zeros((20, 8, 8, 1), np.int32), "x must hold floats .* got dtype int32"),
    "rows": (jnp.zeros((0, 8, 8, 1)), "has 0 examples|has no examples"),
}


@pytest.mark.parametrize("bad", list(CNN_BAD), ids=list(CNN_BAD))
def test_cnn_inputs_it_cannot_take_are_one_line_at_every_entry(bad):
    """3-channel images for a 1-channel net, uint8 or int pixels failed inside JAX (a
    conv_general_dilated shape or dtype error) from fit, the epoch and the evaluation function;
    each is now one InputError line saying what was wrong, single and stacked alike."""
    model, (x, says) = _small_cnn(), CNN_BAD[bad]
    y = jnp.zeros((len(x),), jnp.int32)
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    for stacked in (False, True):
        epoch = train.make_epoch_fn(model, optax.sgd(0.1), 5, stacked=stacked)
        evaluate = train.make_eval_fn(model, stacked=stacked)
        init = train.init_train_states if stacked else train.init_train_state
        state = init(keys if stacked else keys[0], model, optax.sgd(0.1), CNN_SHAPE)
        _refused(epoch, state, x, y, match=says)
        _refused(evaluate, state.params, state.model_state, x, y, match=says)
        fit = functools.partial(train.fit, eval_fn=evaluate, epochs=1)
        _refused(fit, state, epoch, (x, y), (x, y), match=says)


def test_cnn_on_an_empty_batch_gives_empty_logits():
    """Flatten reshaped (0, h, w, c) with -1 (ZeroDivisionError inside jnp.reshape); the forward
    of an empty batch is now an empty batch of logits, jitted or not (the entries that average
    over examples refuse it: test above)."""
    model = _small_cnn()
    _, params, state = model.init(jax.random.PRNGKey(0), CNN_SHAPE)
    x = jnp.zeros((0, *CNN_SHAPE))
    assert core.apply(model, params, state, x).shape == (0, 3)
    assert jax.jit(functools.partial(core.apply, model))(params, state, x).shape == (0, 3)


def test_a_cnn_still_trains_after_the_checks():
    model = _small_cnn()
    x = jax.random.uniform(jax.random.PRNGKey(1), (20, *CNN_SHAPE))
    y = (jnp.arange(20) % 3).astype(jnp.int32)
    state = train.init_train_state(jax.random.PRNGKey(0), model, optax.sgd(0.1), CNN_SHAPE)
    result = _fit(model, state, (x, y), epochs=2)
    assert result.diverged_at is None and np.all(np.isfinite(result.history["val_loss"]))
