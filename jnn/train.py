"""Training: a whole epoch as one XLA program.

    state = init_train_state(key, params, optax.sgd(0.1))
    epoch = make_epoch_fn("relu", optax.sgd(0.1), batch_size=32)      # jitted, state donated
    state, metrics = epoch(state, x_train, y_train)                    # metrics: loss, accuracy

Inside the epoch: a fresh permutation from the state's PRNG key, then ``lax.scan`` over batches;
each step gathers its batch from the device-resident arrays, computes the gradients (manual
backprop by default, ``jax.grad`` on request) and applies an optax update. No Python loop runs
per step. The last ``N % batch_size`` examples of each permutation are dropped (a different
remainder every epoch), so every step has the same shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import Array

from jnn.losses import one_hot, softmax_cross_entropy
from jnn.mlp import GRADIENT_METHODS, MLPParams, mlp_apply


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
) -> tuple[TrainState, EpochMetrics]:
    """One epoch, un-jitted (jit it, vmap it over states, or shard it). x: (N, D), y: (N,) int."""
    value_and_grad = GRADIENT_METHODS[gradients]
    n = x.shape[0]
    num_batches = n // batch_size
    key, perm_key = jax.random.split(state.key)
    batches = jax.random.permutation(perm_key, n)[: num_batches * batch_size]
    batches = batches.reshape(num_batches, batch_size)

    def step(carry, idx):
        params, opt_state = carry
        xb, yb = x[idx], y[idx]
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
) -> Callable[[TrainState, Array, Array], tuple[TrainState, EpochMetrics]]:
    """A jitted ``epoch(state, x, y) -> (state, metrics)``; the incoming state is donated."""
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

    return jax.jit(epoch, donate_argnums=0)


def evaluate(params: MLPParams, x: Array, y: Array, activation: str) -> tuple[Array, Array]:
    """Mean cross-entropy and accuracy of ``params`` on (x (N, D), y (N,) int) in one pass."""
    return _evaluate(params, x, y, activation)


@jax.jit(static_argnames="activation")
def _evaluate(params: MLPParams, x: Array, y: Array, activation: str) -> tuple[Array, Array]:
    logits = mlp_apply(params, x, activation)
    loss, _ = softmax_cross_entropy(logits, one_hot(y, logits.shape[-1], logits.dtype))
    accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == y)
    return loss, accuracy


def tree_is_finite(tree: Any) -> Array:
    """True when every leaf of ``tree`` is finite (a cheap divergence check)."""
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))
