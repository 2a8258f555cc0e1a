"""Training: a whole epoch as one XLA program.

    state = init_train_state(key, params, optax.sgd(0.1))
    epoch = make_epoch_fn("relu", optax.sgd(0.1), batch_size=32)      # jitted, state donated
    state, metrics = epoch(state, x_train, y_train)                    # metrics: loss, accuracy

Several independent models of one activation (seeds, initialisations) train in one program:
``init_model_states`` stacks them along a leading axis M and ``make_epoch_fn(..., stacked=True)``
vmaps the epoch over that axis (the data are shared, not copied). ``fit`` runs the epochs, records
the per-epoch history, stops at the first non-finite loss and calls back after every epoch (the
sweep saves its checkpoints there).

Inside the epoch: a fresh permutation from the state's PRNG key, then ``lax.scan`` over batches;
each step gathers its batch from the device-resident arrays, computes the gradients (manual
backprop by default, ``jax.grad`` on request) and applies an optax update. No Python loop runs
per step. The last ``N % batch_size`` examples of each permutation are dropped (a different
remainder every epoch), so every step has the same shape.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jnn.losses import one_hot, softmax_cross_entropy
from jnn.mlp import GRADIENT_METHODS, MLPParams, init_mlp, mlp_apply


class TrainState(NamedTuple):
    """Everything needed to continue training bit-identically."""

    params: MLPParams
    opt_state: optax.OptState
    key: Array  # PRNG key for the next epoch's permutation
    epoch: Array  # int32 scalar: epochs completed


class EpochMetrics(NamedTuple):
    loss: Array  # mean training loss over the epoch's batches
    accuracy: Array  # fraction of the epoch's examples classified right (before each update)


def init_train_state(
    key: Array, params: MLPParams, optimizer: optax.GradientTransformation
) -> TrainState:
    """Wrap freshly initialised params with the optimizer state and the shuffling key."""
    return TrainState(params, optimizer.init(params), key, jnp.zeros((), jnp.int32))


def init_model_state(
    key: Array,
    sizes: Sequence[int],
    optimizer: optax.GradientTransformation,
    init: str = "normal",
    **init_kwargs: Any,
) -> TrainState:
    """One model from one key: ``init_key, shuffle_key = split(key)``; params from ``init_key``.

    The same convention as ``jnn.parallel.single_state``, plus the initializer's keyword arguments
    (``stddev`` for normal, ``limit`` for random).
    """
    init_key, shuffle_key = jax.random.split(key)
    params = init_mlp(init_key, sizes, init, **init_kwargs)
    return init_train_state(shuffle_key, params, optimizer)


def init_model_states(
    keys: Array,
    sizes: Sequence[int],
    optimizer: optax.GradientTransformation,
    init: str = "normal",
    **init_kwargs: Any,
) -> TrainState:
    """M models stacked along a leading axis: keys (M, 2) -> TrainState with leaves (M, ...).

    Model i equals ``init_model_state(keys[i], ...)``. The params come from one compiled program
    shared by every caller with the same sizes and init (eager vmap would compile each primitive).
    """
    init_keys, shuffle_keys = jnp.moveaxis(jax.vmap(jax.random.split)(keys), 1, 0)
    params = _stacked_params(init_keys, tuple(sizes), init, tuple(sorted(init_kwargs.items())))
    opt_state = jax.vmap(optimizer.init)(params)
    epochs = jnp.zeros((len(keys),), jnp.int32)
    return TrainState(params, opt_state, shuffle_keys, epochs)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _stacked_params(
    keys: Array, sizes: tuple[int, ...], init: str, init_kwargs: tuple[tuple[str, Any], ...]
) -> MLPParams:
    return jax.vmap(lambda k: init_mlp(k, sizes, init, **dict(init_kwargs)))(keys)


def validate_hyperparameters(batch_size: int, num_examples: int | None = None) -> None:
    """Raise a clear ValueError for a batch size that cannot work."""
    if int(batch_size) != batch_size or batch_size <= 0:
        raise ValueError(f"batch size must be a positive integer, got {batch_size!r}")
    if num_examples is not None and batch_size > num_examples:
        raise ValueError(f"batch size {batch_size} exceeds the {num_examples} training examples")


def epoch_step(
    state: TrainState,
    x: Array,
    y: Array,
    *,
    activation: str,
    optimizer: optax.GradientTransformation,
    batch_size: int,
    gradients: str = "manual",
    batch_sharding: NamedSharding | None = None,
) -> tuple[TrainState, EpochMetrics]:
    """One epoch, un-jitted (jit it, vmap it over states, or shard it). x: (N, D), y: (N,) int.

    ``batch_sharding`` (data parallelism, see ``jnn.parallel``) constrains every step's batch rows
    to that sharding, so each device gathers and computes its own share and XLA inserts the
    gradient all-reduce; ``None`` leaves placement to XLA. The arithmetic is the same either way.
    """
    value_and_grad = GRADIENT_METHODS[gradients]
    n = x.shape[0]
    num_batches = n // batch_size
    key, perm_key = jax.random.split(state.key)
    batches = jax.random.permutation(perm_key, n)[: num_batches * batch_size]
    batches = batches.reshape(num_batches, batch_size)

    def constrain(rows: Array) -> Array:
        if batch_sharding is None:
            return rows
        return jax.lax.with_sharding_constraint(rows, batch_sharding)

    if batch_sharding is not None:
        # (num_batches, B) indices with B split over the data axis: each device gathers its rows.
        batches = jax.lax.with_sharding_constraint(
            batches, NamedSharding(batch_sharding.mesh, P(None, *batch_sharding.spec))
        )

    def step(carry, idx):
        params, opt_state = carry
        xb, yb = constrain(x[idx]), constrain(y[idx])
        (loss, logits), grads = value_and_grad(params, xb, yb, activation)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        correct = jnp.sum(jnp.argmax(logits, axis=-1) == yb)
        return (params, opt_state), (loss, correct)

    (params, opt_state), (losses, correct) = jax.lax.scan(
        step, (state.params, state.opt_state), batches
    )
    metrics = EpochMetrics(jnp.mean(losses), jnp.sum(correct) / (num_batches * batch_size))
    return TrainState(params, opt_state, key, state.epoch + 1), metrics


def make_epoch_fn(
    activation: str,
    optimizer: optax.GradientTransformation,
    batch_size: int,
    gradients: str = "manual",
    *,
    stacked: bool = False,
) -> Callable[[TrainState, Array, Array], tuple[TrainState, EpochMetrics]]:
    """A jitted ``epoch(state, x, y) -> (state, metrics)``; the incoming state is donated.

    ``stacked=True``: ``state`` holds M models along a leading axis (``init_model_states``); the
    epoch is vmapped over them with x (N, D), y (N,) shared, and the metrics have shape (M,).
    """
    validate_hyperparameters(batch_size)
    if gradients not in GRADIENT_METHODS:
        raise ValueError(f"gradients must be one of {sorted(GRADIENT_METHODS)}, got {gradients!r}")

    def epoch(state: TrainState, x: Array, y: Array) -> tuple[TrainState, EpochMetrics]:
        return epoch_step(
            state,
            x,
            y,
            activation=activation,
            optimizer=optimizer,
            batch_size=batch_size,
            gradients=gradients,
        )

    return jax.jit(jax.vmap(epoch, in_axes=(0, None, None)) if stacked else epoch, donate_argnums=0)


def evaluate(params: MLPParams, x: Array, y: Array, activation: str) -> tuple[Array, Array]:
    """Mean cross-entropy and accuracy of ``params`` on (x (N, D), y (N,) int) in one pass."""
    return _evaluate(params, x, y, activation)


@jax.jit(static_argnames="activation")
def _evaluate(params: MLPParams, x: Array, y: Array, activation: str) -> tuple[Array, Array]:
    logits = mlp_apply(params, x, activation)
    loss, _ = softmax_cross_entropy(logits, one_hot(y, logits.shape[-1], logits.dtype))
    accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == y)
    return loss, accuracy


@jax.jit(static_argnames="activation")
def evaluate_stacked(params: MLPParams, x: Array, y: Array, activation: str) -> tuple[Array, Array]:
    """:func:`evaluate` for M stacked models: params leaves (M, ...) -> loss, accuracy (M,)."""

    def one(p: MLPParams) -> tuple[Array, Array]:
        return _evaluate.__wrapped__(p, x, y, activation)

    return jax.vmap(one)(params)


# --------------------------------------------------------------------------------------------
# The epoch loop: history, divergence, callbacks
# --------------------------------------------------------------------------------------------

HISTORY_KEYS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")

History = dict[str, np.ndarray]  # each (epochs,) or (M, epochs) float32, NaN where not run yet


def empty_history(epochs: int, num_models: int | None = None) -> History:
    """NaN-filled history arrays: (epochs,) for one model, (M, epochs) for M stacked models."""
    shape = (epochs,) if num_models is None else (num_models, epochs)
    return {k: np.full(shape, np.nan, np.float32) for k in HISTORY_KEYS}


class FitResult(NamedTuple):
    state: TrainState | None  # None when training diverged (the bad state is not kept)
    history: History
    diverged_at: int | None  # 1-based epoch whose loss was not finite, else None


def fit(
    state: TrainState,
    epoch_fn: Callable[[TrainState, Array, Array], tuple[TrainState, EpochMetrics]],
    train_data: tuple[Array, Array],
    val_data: tuple[Array, Array],
    *,
    activation: str,
    epochs: int,
    history: History | None = None,
    on_epoch: Callable[[int, TrainState, History], None] | None = None,
) -> FitResult:
    """Train from ``state.epoch`` up to ``epochs`` epochs, one jitted epoch per call.

    After every epoch the mean training loss/accuracy (during the epoch) and the validation loss/
    accuracy (after it) go into ``history`` (arrays indexed by epoch - 1; single or stacked
    models, as built by :func:`empty_history`), then ``on_epoch(epoch, state, history)`` runs
    (epoch 1-based). A non-finite training or validation loss of any model stops training at that
    epoch: the result has ``state=None`` and ``diverged_at=epoch`` and ``on_epoch`` is not called
    for it, so no checkpoint of a diverged model is ever written.
    """
    x, y = train_data
    xv, yv = val_data
    stacked = np.ndim(state.epoch) == 1
    evaluate_fn = evaluate_stacked if stacked else evaluate
    start = int(np.max(np.asarray(state.epoch)))
    if history is None:
        history = empty_history(epochs, len(state.epoch) if stacked else None)
    for epoch in range(start + 1, epochs + 1):
        state, metrics = epoch_fn(state, x, y)
        val_loss, val_acc = evaluate_fn(state.params, xv, yv, activation)
        row = jax.device_get((metrics.loss, metrics.accuracy, val_loss, val_acc))
        for name, value in zip(HISTORY_KEYS, row):
            history[name][..., epoch - 1] = value
        if not (np.all(np.isfinite(row[0])) and np.all(np.isfinite(row[2]))):
            return FitResult(None, history, epoch)
        if on_epoch is not None:
            on_epoch(epoch, state, history)
    return FitResult(state, history, None)
