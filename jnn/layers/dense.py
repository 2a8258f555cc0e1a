"""The dense layer in the layer protocol, stax-style::

    params = dense_init(key, in_dim, out_dim, init="normal")   # {"w": (in, out), "b": (out,)}
    y, cache = dense_forward(params, x)                        # x: (B, in) -> y: (B, out)
    dparams, dx = dense_backward(params, cache, dy)            # dparams shaped like params

Biases start at zero, as in the study.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from jax import Array

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
        raise ValueError(f"dense layer sizes must be positive, got {in_dim} -> {out_dim}")
    w = get_initializer(init)(key, (in_dim, out_dim), dtype, **init_kwargs)
    return {"w": w, "b": jnp.zeros((out_dim,), dtype)}


def dense_forward(params: DenseParams, x: Array) -> tuple[Array, Array]:
    """y = x @ w + b. x: (B, in) -> y: (B, out); the cache is x."""
    return x @ params["w"] + params["b"], x


def dense_backward(params: DenseParams, x: Array, dy: Array) -> tuple[DenseParams, Array]:
    """dw = x^T dy (in, out), db = sum_b dy (out,), dx = dy w^T (B, in)."""
    grads = {"w": x.T @ dy, "b": jnp.sum(dy, axis=0)}
    return grads, dy @ params["w"].T
