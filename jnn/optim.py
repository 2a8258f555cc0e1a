"""Optimizers by name: the one place jnn builds an optax optimizer for a study.

    opt = optim.make("sgd", 0.1)                # optax.inject_hyperparams(optax.sgd)(0.1)
    state = opt.init(params)
    state = optim.with_learning_rate(state, 0.05)   # a model's own lr, as optimizer *state*

Every entry is wrapped in ``optax.inject_hyperparams`` so the learning rate is a leaf of the
optimizer state, not a constant baked into the program: models with different learning rates
then share one compiled program (stacked along a model axis) and differ only in data. The update
is the same float32 arithmetic as the unwrapped transform (``-lr * g`` for SGD), so a model
trained with ``make("sgd", lr)`` equals one trained with ``optax.sgd(lr)``.

A new optimizer is one entry in :data:`OPTIMIZERS` (a name, a builder taking the learning rate,
and a one-line description for ``--help``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax.numpy as jnp
import optax

from jnn.errors import InputError


class Optimizer(NamedTuple):
    """A registry entry: ``build(learning_rate)`` -> an optax transform whose learning rate is
    in ``opt_state.hyperparams["learning_rate"]``; ``about`` says what it is in one line."""

    build: Callable[[float], optax.GradientTransformation]
    about: str


def _sgd(learning_rate: float) -> optax.GradientTransformation:
    return optax.inject_hyperparams(optax.sgd)(learning_rate=learning_rate)


def _momentum(learning_rate: float) -> optax.GradientTransformation:
    return optax.inject_hyperparams(optax.sgd)(learning_rate=learning_rate, momentum=0.9)


def _adam(learning_rate: float) -> optax.GradientTransformation:
    return optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate)


OPTIMIZERS: dict[str, Optimizer] = {
    "sgd": Optimizer(_sgd, "plain SGD, w -= lr * g (the study's)"),
    "momentum": Optimizer(_momentum, "SGD with heavy-ball momentum 0.9"),
    "adam": Optimizer(_adam, "Adam (b1 0.9, b2 0.999, eps 1e-8)"),
}


def get_optimizer(name: str) -> Optimizer:
    """The registry entry ``name``; a one-line InputError listing the names otherwise."""
    try:
        return OPTIMIZERS[name]
    except (KeyError, TypeError):
        raise InputError(
            f"unknown optimizer {name!r}: choose from {', '.join(OPTIMIZERS)}"
        ) from None


def make(name: str, learning_rate: float = 1.0) -> optax.GradientTransformation:
    """Optimizer ``name`` with ``learning_rate`` as injected (stateful) hyperparameter."""
    return get_optimizer(name).build(learning_rate)


def with_learning_rate(opt_state: Any, learning_rate: float) -> Any:
    """``opt_state`` of a :func:`make` optimizer with its learning rate set (float32 scalar)."""
    hyper = dict(opt_state.hyperparams)
    hyper["learning_rate"] = jnp.asarray(learning_rate, jnp.float32)
    return opt_state._replace(hyperparams=hyper)
