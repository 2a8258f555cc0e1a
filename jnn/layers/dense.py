"""Dense (fully connected) layer with a hand-written backward.

    layer = Dense(256, init="normal")                      # a Layer value (jnn.core)
    out_shape, params, state = layer.init(key, (784,))     # params {"w": (784, 256), "b": (256,)}
    y, cache, state = layer.forward(params, state, x)      # x: (B, 784) -> y: (B, 256)
    dparams, dx = layer.backward(params, cache, dy)        # dparams shaped like params

The function group underneath (``dense_init`` / ``dense_forward`` / ``dense_backward``) is the
CS231n-style pair the layer wraps. Biases start at zero, as in the study.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from jax import Array

from jnn.core import Layer, Shape
from jnn.errors import InputError
from jnn.initializers import get_initializer

DenseParams = dict[str, Array]


def dense_init(
    key: Array,
    in_dim: int,
    out_dim: int,
    init: str = "normal",
    dtype: Any = jnp.float32,
    **init_kwargs,
) -> DenseParams:
    """Kernel (in_dim, out_dim) drawn by the named initializer, bias (out_dim,) zeros."""
    if in_dim <= 0 or out_dim <= 0:
        raise InputError(f"dense layer sizes must be positive, got {in_dim} -> {out_dim}")
    w = get_initializer(init)(key, (in_dim, out_dim), dtype, **init_kwargs)
    return {"w": w, "b": jnp.zeros((out_dim,), dtype)}


def dense_forward(params: DenseParams, x: Array) -> tuple[Array, Array]:
    """y = x @ w + b. x: (B, in) -> y: (B, out); the cache is x."""
    return x @ params["w"] + params["b"], x


def dense_backward(params: DenseParams, x: Array, dy: Array) -> tuple[DenseParams, Array]:
    """dw = x^T dy (in, out), db = sum_b dy (out,), dx = dy w^T (B, in)."""
    grads = {"w": x.T @ dy, "b": jnp.sum(dy, axis=0)}
    return grads, dy @ params["w"].T


def Dense(  # noqa: N802 - layers are named like classes, as in stax and Flax
    features: int, init: str = "normal", dtype: Any = jnp.float32, **init_kwargs: Any
) -> Layer:
    """A dense layer with ``features`` outputs; input per-example shape must be ``(in,)``.

    ``init`` names the kernel initializer (``jnn.initializers``; e.g. ``stddev=`` for normal).
    """
    if int(features) != features or features <= 0:
        raise InputError(f"Dense needs a positive integer number of features, got {features!r}")
    get_initializer(init)  # unknown names fail here, when the model is built

    def init_fn(key: Array, input_shape: Shape) -> tuple[Shape, DenseParams, tuple]:
        if len(input_shape) != 1:
            raise InputError(
                f"Dense({features}) needs flat inputs (features,), got per-example shape "
                f"{tuple(input_shape)}; put Flatten() before it"
            )
        params = dense_init(key, input_shape[0], int(features), init, dtype, **init_kwargs)
        return (int(features),), params, ()

    def forward(params, state, x, *, key=None, train=False):
        del key, train
        if x.ndim != 2 or x.shape[1] != params["w"].shape[0]:
            raise InputError(
                f"Dense({features}) expects input of shape (batch, {params['w'].shape[0]}), got "
                f"{tuple(x.shape)}; flatten images first (jnn.data.to_float(images, flatten=True))"
            )
        if not jnp.issubdtype(x.dtype, jnp.floating):  # static: free under jit and vmap
            raise InputError(
                f"Dense({features}) expects float input, got dtype {x.dtype}; convert first "
                "(uint8 pixels: jnn.data.to_float(images, flatten=True) divides by 255)"
            )
        y, cache = dense_forward(params, x)
        return y, cache, state

    return Layer(init_fn, forward, dense_backward, f"Dense({features})")
