"""One activation chosen per model, so models with different activations share one program.

    layer = SelectActivation(("relu", "sigmoid", "tanh", "linear"), index=2)   # tanh
    y, cache, state = layer.forward((), state, x)        # state: {"index": int32 scalar}

The choice lives in the layer's *state* (an int32 index into ``names``), not in Python: a grid
of models stacked along a leading axis (``jax.vmap`` over params and state) can give every model
its own activation and still be one XLA program. ``lax.switch`` picks the branch; under ``vmap``
with a batched index it becomes a select over every branch (each is elementwise, cheap next to
the matmuls). The backward switches the same way over the activations' hand-written backwards.
Every branch caches the same structure (the forward's input ``x`` and output ``y``), because
``lax.switch`` needs equal output structures; each backward reads what it needs from them.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
from jax import Array, lax

from jnn.activations import get_activation
from jnn.core import Layer, Shape
from jnn.errors import InputError


def _uniform_backward(name: str):
    """The activation's backward from a common cache (x, y): each takes what its own cache held
    (ReLU: x; tanh and softmax: y; sigmoid: (y, 1 - y) recomputed from x, as its forward does)."""
    act = get_activation(name)
    if name == "relu":
        return lambda x, y, dy: act.backward(x, dy)
    if name == "sigmoid":
        return lambda x, y, dy: act.backward(act.forward(x)[1], dy)
    if name == "linear":
        return lambda x, y, dy: act.backward(None, dy)
    return lambda x, y, dy: act.backward(y, dy)


def SelectActivation(names: Sequence[str], index: int = 0) -> Layer:  # noqa: N802
    """An activation layer whose choice among ``names`` is state: ``{"index": int32}``.

    ``index`` is the initial choice; set another per model by replacing the state (see
    ``jnn.study``). Params: none. The per-example shape is unchanged.
    """
    names = tuple(str(n).lower() for n in names)
    if not names:
        raise InputError("SelectActivation needs at least one activation name")
    forwards = [get_activation(n).forward for n in names]  # unknown names fail here
    backwards = [_uniform_backward(n) for n in names]
    if not 0 <= int(index) < len(names):
        raise InputError(f"index {index} is out of range for the {len(names)} names {names}")

    def init(key: Array, input_shape: Shape) -> tuple[Shape, tuple, dict[str, Array]]:
        del key
        return tuple(input_shape), (), {"index": jnp.asarray(index, jnp.int32)}

    def forward(params, state, x, *, key=None, train=False):
        del params, key, train
        branches = [lambda v, f=f: f(v)[0] for f in forwards]
        y = lax.switch(state["index"], branches, x)
        return y, (state["index"], x, y), state

    def backward(params, cache, dy):
        del params
        index, x, y = cache
        branches = [lambda a, b, d, g=g: g(a, b, d) for g in backwards]
        return (), lax.switch(index, branches, x, y, dy)

    return Layer(init, forward, backward, f"SelectActivation({', '.join(names)})")
