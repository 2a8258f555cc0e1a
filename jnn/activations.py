"""Activations as forward/backward pairs with hand-written vector-Jacobian products.

Every activation follows the layer protocol with no parameters::

    y, cache = forward(x)          # x, y: (..., features)
    dx = backward(cache, dy)       # dy, dx: same shape as x

``cache`` holds exactly what the backward pass needs (the input for ReLU, the output for tanh and
softmax, the output and its complement for sigmoid), so backward never recomputes the forward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax.numpy as jnp
from jax import Array

from jnn.core import Layer, stateless
from jnn.errors import InputError


class Activation(NamedTuple):
    """An element-wise (or, for softmax, row-wise) nonlinearity with a manual backward."""

    name: str
    forward: Callable[[Array], tuple[Array, Any]]
    backward: Callable[[Any, Array], Array]


def relu_forward(x: Array) -> tuple[Array, Array]:
    """max(x, 0), with NaN passed through. The cache is x itself.

    ``where(x > 0, x, 0)`` alone maps a NaN to 0 and hid a diverged weight from the loss (and so
    from the divergence check); NaN now propagates as in ``jax.nn.relu``. Written as a select, not
    ``jnp.maximum``: the numbers are those of the study's original forward bit for bit, and its
    derivative at exactly 0 is 0 (``maximum``'s would be 0.5), matching the backward below.
    """
    return jnp.where((x > 0) | jnp.isnan(x), x, jnp.zeros_like(x)), x


def relu_backward(x: Array, dy: Array) -> Array:
    """dy where x > 0, else 0: ``jax.nn.relu``'s gradient (0 at exactly 0, and 0 at NaN)."""
    return jnp.where(x > 0, dy, jnp.zeros_like(dy))


def sigmoid_forward(x: Array) -> tuple[Array, tuple[Array, Array]]:
    """1 / (1 + exp(-x)), computed from exp(-|x|) so it never overflows (finite at x = +-1e4).

    The cache is (s, 1 - s), both computed directly: 1 - s formed by subtraction is 0 in float32
    once s rounds to 1 (x > ~17), which would zero a gradient that is really ~exp(-x).
    """
    z = jnp.exp(-jnp.abs(x))
    big, small = 1.0 / (1.0 + z), z / (1.0 + z)
    y = jnp.where(x >= 0, big, small)
    return y, (y, jnp.where(x >= 0, small, big))


def sigmoid_backward(cache: tuple[Array, Array], dy: Array) -> Array:
    """dy * s * (1 - s), from the cached output s and its complement 1 - s."""
    y, one_minus_y = cache
    return dy * y * one_minus_y


def tanh_forward(x: Array) -> tuple[Array, Array]:
    """tanh(x); jnp.tanh saturates cleanly to +-1 for large |x|."""
    y = jnp.tanh(x)
    return y, y


def tanh_backward(y: Array, dy: Array) -> Array:
    """dy * (1 - tanh(x)^2), from the cached output."""
    return dy * (1.0 - y * y)


def linear_forward(x: Array) -> tuple[Array, None]:
    """The identity (the study's "Linear" activation): nothing to cache."""
    return x, None


def linear_backward(_: None, dy: Array) -> Array:
    """The identity's VJP passes the cotangent through."""
    return dy


def softmax_forward(x: Array) -> tuple[Array, Array]:
    """Row-wise softmax over the last axis, shifted by the row max for stability."""
    shifted = x - jnp.max(x, axis=-1, keepdims=True)
    e = jnp.exp(shifted)
    s = e / jnp.sum(e, axis=-1, keepdims=True)
    return s, s


def softmax_backward(s: Array, dy: Array) -> Array:
    """dx = s * (dy - sum(dy * s)): the vector-Jacobian product without building the Jacobian.

    dy is first shifted by its value at each row's largest probability. The VJP ignores a constant
    shift of dy (the rows of the Jacobian diag(s) - s s^T sum to zero), and the shift removes the
    cancellation in ``dy_m - sum(dy * s)`` when s_m -> 1: without it a saturated row's gradient
    (of size ~ the small probabilities) drowns in rounding of size eps * |dy|.
    """
    m = jnp.argmax(s, axis=-1, keepdims=True)
    dy = dy - jnp.take_along_axis(dy, m, axis=-1)
    return s * (dy - jnp.sum(dy * s, axis=-1, keepdims=True))


ACTIVATIONS: dict[str, Activation] = {
    "relu": Activation("relu", relu_forward, relu_backward),
    "sigmoid": Activation("sigmoid", sigmoid_forward, sigmoid_backward),
    "tanh": Activation("tanh", tanh_forward, tanh_backward),
    "linear": Activation("linear", linear_forward, linear_backward),
    "softmax": Activation("softmax", softmax_forward, softmax_backward),
}


def activation_layer(name: str) -> Layer:
    """The activation named ``name`` as a :class:`jnn.core.Layer` (case-insensitive)."""
    act = get_activation(name)
    return stateless(act.name, act.forward, act.backward)


def get_activation(name: str) -> Activation:
    """Look an activation up by name (case-insensitive); unknown names raise a clear ValueError."""
    key = str(name).lower()
    if key not in ACTIVATIONS:
        raise InputError(
            f"unknown activation {name!r}: choose one of {', '.join(sorted(ACTIVATIONS))}"
        )
    return ACTIVATIONS[key]


# The activations as layers of the protocol in jnn.core (values, no params or state).
ReLU = activation_layer("relu")
Sigmoid = activation_layer("sigmoid")
Tanh = activation_layer("tanh")
Linear = activation_layer("linear")
Softmax = activation_layer("softmax")
