"""jnn.optim.union: the chosen member's update is the member's own; the others stay untouched;
the learning rate reaches every member; bad names and states are refused in one line."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jnn import optim
from jnn.errors import InputError

NAMES = ("sgd", "momentum", "adam")


def _params_and_grads() -> tuple[dict, dict]:
    params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.full((4,), 0.25)}
    grads = jax.tree.map(lambda p: jnp.sin(3 * p) + 0.1, params)
    return params, grads


def _steps(opt, state, params, grads, n: int = 4) -> tuple[list, object]:
    """``n`` jitted updates with the same grads: the updates of each step and the last state."""
    step = jax.jit(lambda s: opt.update(grads, s, params))
    outs = []
    for _ in range(n):
        out, state = step(state)
        outs.append(out)
    return outs, state


@pytest.mark.parametrize("name", NAMES)
def test_each_member_of_a_union_updates_as_it_does_alone(name):
    params, grads = _params_and_grads()
    union = optim.union(NAMES)
    start = optim.with_learning_rate(optim.with_member(union.init(params), name, NAMES), 0.03)
    mine, state = _steps(union, start, params, grads)
    alone = optim.make(name, 0.03)
    ref, _ = _steps(alone, alone.init(params), params, grads)
    for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert int(state.chosen) == NAMES.index(name)
    fresh = union.init(params).members
    for i, other in enumerate(NAMES):
        if other != name:  # a member the model does not use keeps its initial state
            init = optim.with_learning_rate(fresh[i], 0.03)
            for a, b in zip(jax.tree.leaves(state.members[i]), jax.tree.leaves(init), strict=True):
                np.testing.assert_array_equal(a, b)


def test_models_of_different_members_and_lrs_vmap_over_one_union():
    """Two models stacked on one union (what the study engine does): each gets its own member
    and its own learning rate."""
    params, grads = _params_and_grads()
    union = optim.union(("sgd", "adam"))
    sgd = optim.with_learning_rate(union.init(params), 0.5)
    adam = optim.with_learning_rate(
        optim.with_member(union.init(params), "adam", ("sgd", "adam")), 0.01
    )
    both = jax.tree.map(lambda a, b: jnp.stack([a, b]), sgd, adam)
    out, _ = jax.jit(jax.vmap(lambda s: union.update(grads, s, params)))(both)
    np.testing.assert_allclose(out["w"][0], -0.5 * grads["w"], rtol=1e-6)
    # Adam's first step is -lr * g / (|g| + eps): about -0.01 * sign(g)
    np.testing.assert_allclose(out["w"][1], -0.01 * np.sign(grads["w"]), rtol=1e-4)


@pytest.mark.parametrize(
    "names, match",
    [
        (("sgd",), "two or more optimizer names"),
        ("sgd,adam", "two or more optimizer names"),
        (("sgd", "sgd"), "union: names lists sgd more than once"),
        (("sgd", "lbfgs"), "unknown optimizer 'lbfgs'"),
    ],
)
def test_union_refuses_bad_names_in_one_line(names, match):
    with pytest.raises(InputError, match=match) as err:
        optim.union(names)
    assert "\n" not in str(err.value)


def test_with_member_refuses_another_name_or_state():
    params, _ = _params_and_grads()
    state = optim.union(("sgd", "adam")).init(params)
    with pytest.raises(InputError, match="'momentum' is not one of the union's sgd, adam"):
        optim.with_member(state, "momentum", ("sgd", "adam"))
    with pytest.raises(InputError, match="takes a union's state"):
        optim.with_member(optim.make("sgd").init(params), "sgd", ("sgd", "adam"))


@pytest.mark.parametrize("rate", [float("nan"), -0.1, 0, 1e-320, 1e39, True, "0.1"])
def test_a_rate_that_cannot_train_is_one_line(rate):
    """Adversarial pass: make and with_learning_rate took NaN, negative and subnormal rates (1e-320
    is 0 in float32) and trained silently wrong."""
    with pytest.raises(InputError, match="learning_rate") as err:
        optim.make("sgd", rate)
    assert "\n" not in str(err.value)
    state = optim.make("sgd").init({"w": jnp.zeros(2)})
    with pytest.raises(InputError, match="learning_rate"):
        optim.with_learning_rate(state, rate)


def test_a_traced_rate_is_taken_as_it_is():
    """Under jit/vmap the rate is a tracer whose value is unknown: the caller checks it."""
    state = optim.make("sgd").init({"w": jnp.zeros(2)})
    out = jax.jit(optim.with_learning_rate)(state, jnp.float32(0.25))
    assert float(out.hyperparams["learning_rate"]) == 0.25
