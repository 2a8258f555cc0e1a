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

Several optimizers in one program: :func:`union` makes the choice of optimizer optimizer *state*
too, as the learning rate is. Its state holds every member's state and the model's member
``chosen`` (:func:`with_member`); its update is that member's, selected from every member's
update with ``jnp.where``, so the chosen member's arithmetic is its own. The members a model
does not use keep their initial state.

    opt = optim.union(("sgd", "adam"))
    state = optim.with_member(opt.init(params), "adam", ("sgd", "adam"))
    state = optim.with_learning_rate(state, 1e-3)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import Array

from jnn import config
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


def _check_rate(learning_rate: Any) -> None:
    """A Python or numpy number must be a positive finite rate, also as float32 (a NaN, negative
    or subnormal one trained silently wrong). A JAX array (the study's per-model rates, traced
    under vmap) is the caller's to check: its value is unknown here."""
    if not isinstance(learning_rate, jax.Array):
        config.positive(learning_rate, "learning_rate")


def make(name: str, learning_rate: float = 1.0) -> optax.GradientTransformation:
    """Optimizer ``name`` with ``learning_rate`` as injected (stateful) hyperparameter."""
    entry = get_optimizer(name)
    _check_rate(learning_rate)
    return entry.build(learning_rate)


def with_learning_rate(opt_state: Any, learning_rate: float) -> Any:
    """``opt_state`` of a :func:`make` or :func:`union` optimizer with its learning rate set
    (float32 scalar; in a union, every member's, so whichever the model uses has it)."""
    _check_rate(learning_rate)
    if isinstance(opt_state, UnionState):
        members = tuple(with_learning_rate(s, learning_rate) for s in opt_state.members)
        return opt_state._replace(members=members)
    hyper = dict(opt_state.hyperparams)
    hyper["learning_rate"] = jnp.asarray(learning_rate, jnp.float32)
    return opt_state._replace(hyperparams=hyper)


class UnionState(NamedTuple):
    """A :func:`union`'s state: which member this model uses (int32 scalar, an index into the
    union's names) and every member's own state (``members[i]`` as ``make(names[i])`` has it)."""

    chosen: Array
    members: tuple[Any, ...]


def _check_union_names(names: Any) -> tuple[str, ...]:
    if isinstance(names, str) or not isinstance(names, (tuple, list)) or len(names) < 2:
        raise InputError(f"union takes two or more optimizer names (a tuple), got {names!r}")
    try:
        config.distinct(names, "names")
    except config.ConfigError as err:
        raise InputError(f"union: {err}") from None
    for name in names:
        get_optimizer(name)
    return tuple(names)


def _select(index: Array, trees: list[Any]) -> Any:
    """``trees[index]``, leaf by leaf, with ``jnp.where``: a select copies the chosen values, so
    they keep the bits their own computation gave them."""
    out = trees[0]
    for i in range(1, len(trees)):
        out = jax.tree.map(lambda a, b, i=i: jnp.where(index == i, b, a), out, trees[i])
    return out


def union(names: tuple[str, ...]) -> optax.GradientTransformation:
    """One transform over the optimizers ``names`` (two or more, each once): a model's state
    picks its member (:func:`with_member`, default the first) and its update is that member's.
    Every member's update is computed and the chosen one selected (``jnp.where``): with
    ``lax.switch`` instead, the member ran in a conditional XLA could not fuse with the rest
    of the step, and Adam's params drifted 1.5e-6 relative from Adam alone in 16 steps; with
    the select they stayed within 6e-8 (0 for three of four models). Members a model does not
    use keep their initial state. The state holds every member's (Adam's two moments also for
    a model on SGD): the memory of all members, elementwise work of all, the result of one."""
    members = [make(n) for n in _check_union_names(names)]

    def init(params: Any) -> UnionState:
        return UnionState(jnp.asarray(0, jnp.int32), tuple(m.init(params) for m in members))

    def update(updates: Any, state: UnionState, params: Any = None) -> tuple[Any, UnionState]:
        results = [m.update(updates, s, params) for m, s in zip(members, state.members)]
        out = _select(state.chosen, [r[0] for r in results])
        kept = tuple(  # the chosen member advances, the others keep their state
            jax.tree.map(lambda old, new, i=i: jnp.where(state.chosen == i, new, old), s, r[1])
            for i, (s, r) in enumerate(zip(state.members, results))
        )
        return out, UnionState(state.chosen, kept)

    return optax.GradientTransformation(init, update)


def with_member(opt_state: UnionState, name: str, names: tuple[str, ...]) -> UnionState:
    """``opt_state`` of ``union(names)`` set to train with member ``name``."""
    if not isinstance(opt_state, UnionState):
        raise InputError(f"with_member takes a union's state, got {type(opt_state).__name__}")
    names = _check_union_names(names)
    if name not in names:
        raise InputError(f"optimizer {name!r} is not one of the union's {', '.join(names)}")
    return opt_state._replace(chosen=jnp.asarray(names.index(name), jnp.int32))
