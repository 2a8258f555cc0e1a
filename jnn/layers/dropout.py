"""Inverted dropout: zero each input with probability ``rate`` and scale the survivors by
``1 / (1 - rate)`` while training, so the expected activation is unchanged and inference
(``train=False``) is the identity with no rescaling.

    layer = Dropout(0.5)
    y, mask, state = layer.forward((), (), x, key=key, train=True)    # mask: bool, x's shape
    (), dx = layer.backward((), mask, dy)                             # dx = dy * mask / (1-rate)

The mask is drawn from the keyword-only ``key`` (``jax.random.bernoulli`` with keep probability
``1 - rate``); ``serial`` gives each Dropout its own key, so ``jax.grad`` of the same forward with
the same key sees the same mask.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array

from jnn.core import Layer, Shape
from jnn.errors import InputError


def dropout_forward(x: Array, rate: float, key: Array) -> tuple[Array, Array]:
    """y = where(mask, x / (1 - rate), 0), mask ~ Bernoulli(1 - rate) of x's shape.

    Dividing by the keep probability (not multiplying by its float reciprocal) matches what
    ``jax.vjp`` differentiates bit for bit; the cache is the boolean mask.
    """
    keep = 1.0 - rate
    mask = jax.random.bernoulli(key, keep, x.shape)
    return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros_like(x)), mask


def dropout_backward(rate: float, mask: Array, dy: Array) -> Array:
    """The VJP of an element-wise mask-and-scale: dx = where(mask, dy / (1 - rate), 0)."""
    keep = jnp.asarray(1.0 - rate, dy.dtype)
    return jnp.where(mask, dy / keep, jnp.zeros_like(dy))


def Dropout(rate: float) -> Layer:  # noqa: N802 - layers are named like classes
    """A dropout layer (a factory: ``Dropout(0.5)``) dropping a fraction ``rate`` in [0, 1).

    ``train=False`` (or ``rate == 0``) is the identity. ``train=True`` needs ``key``: a missing
    key raises :class:`jnn.errors.InputError` rather than silently not dropping.
    """
    if not isinstance(rate, (int, float)) or not 0.0 <= float(rate) < 1.0:
        raise InputError(f"Dropout rate must be a number in [0, 1), got {rate!r}")
    rate = float(rate)

    def init(key: Array, input_shape: Shape) -> tuple[Shape, tuple, tuple]:
        del key
        return tuple(input_shape), (), ()

    def forward(params, state, x, *, key=None, train=False):
        del params
        if not train or rate == 0.0:
            return x, None, state
        if key is None:
            raise InputError(
                f"Dropout({rate:g}) with train=True needs a PRNG key: pass key= to forward "
                "(or train=False for inference)"
            )
        y, mask = dropout_forward(x, rate, key)
        return y, mask, state

    def backward(params, mask, dy):
        del params
        return (), dy if mask is None else dropout_backward(rate, mask, dy)

    return Layer(init, forward, backward, f"Dropout({rate:g})")
