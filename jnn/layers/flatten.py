"""Flatten: (B, H, W, C) -> (B, H*W*C), the bridge from convolutional to dense layers.

``Flatten`` is a layer *value* (like ``ReLU``), not a factory: it has no hyper-parameters, so
``serial(..., Flatten, Dense(128))`` uses it without a call. Row-major (C-order) flattening, as
``jnp.reshape`` and Keras' ``Flatten`` do, so channels vary fastest.
"""

from __future__ import annotations

import math

from jax import Array

from jnn.core import Shape, stateless


def flatten_forward(x: Array) -> tuple[Array, Shape]:
    """x: (B, *rest) -> (B, prod(rest)); the cache is x's shape (no data needed). The width is
    spelled out, not -1: with B = 0 a -1 is ambiguous and jnp.reshape raises ZeroDivisionError,
    while an empty batch should flatten to (0, prod(rest)) like any other."""
    return x.reshape(x.shape[0], math.prod(x.shape[1:])), tuple(x.shape)


def flatten_backward(shape: Shape, dy: Array) -> Array:
    """A reshape is a permutation-free relabelling: dx is dy reshaped back to x's shape."""
    return dy.reshape(shape)


def _flat_shape(shape: Shape) -> Shape:
    return (math.prod(shape),)


Flatten = stateless("Flatten", flatten_forward, flatten_backward, _flat_shape)
