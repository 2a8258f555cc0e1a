"""Batch normalisation over every axis but the last (features after Dense, channels after Conv2D)
with a closed-form backward.

    layer = BatchNorm(momentum=0.99, eps=1e-5)
    shape, params, state = layer.init(key, (C,) or (H, W, C))
    # params {"scale": ones (C,), "bias": zeros (C,)}; state {"mean": zeros (C,), "var": ones (C,)}
    y, cache, state = layer.forward(params, state, x, train=True)

Training: mu and the *biased* variance var = mean((x - mu)^2) over the N = x.size / C values of
each channel, xhat = (x - mu) / sqrt(var + eps), y = scale * xhat + bias, and the running
averages move as ``running = momentum * running + (1 - momentum) * batch`` (Keras/Flax
convention, biased variance as they store it). Inference (``train=False``) uses the running
averages and leaves the state alone. Training on an empty batch (0 rows) is refused with an
``InputError`` (shapes are static, so this holds under jit too): the mean of nothing is NaN, and
it used to become the running statistics.

Backward in training mode, with dxhat = dy * scale and sums over the N values of a channel::

    dx = (1/N) * inv_std * (N * dxhat - sum(dxhat) - xhat * sum(dxhat * xhat))

(the two subtracted terms are the gradient through mu and through var; xhat is cached, so no
difference x - mu is recomputed). In inference mode mu and var are constants: dx = dxhat * inv_std.
dscale = sum(dy * xhat), dbias = sum(dy) in both modes.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from jnn.core import Layer, Shape
from jnn.errors import InputError

BNParams = dict[str, Array]
BNState = dict[str, Array]


class BatchCache(NamedTuple):
    """Cache of a training-mode forward: the statistics depend on x."""

    xhat: Array
    inv_std: Array  # (C,)


class RunningCache(NamedTuple):
    """Cache of an inference-mode forward: the statistics are constants."""

    xhat: Array
    inv_std: Array  # (C,)


def batchnorm_forward_train(
    params: BNParams, x: Array, eps: float
) -> tuple[Array, BatchCache, Array, Array]:
    """(y, cache, batch mean, biased batch variance) normalising over all axes but the last."""
    axes = tuple(range(x.ndim - 1))
    mu = jnp.mean(x, axis=axes)
    var = jnp.mean(jnp.square(x - mu), axis=axes)
    inv_std = jax.lax.rsqrt(var + jnp.asarray(eps, x.dtype))
    xhat = (x - mu) * inv_std
    return params["scale"] * xhat + params["bias"], BatchCache(xhat, inv_std), mu, var


def batchnorm_forward_eval(
    params: BNParams, state: BNState, x: Array, eps: float
) -> tuple[Array, RunningCache]:
    """y = scale * (x - running_mean) / sqrt(running_var + eps) + bias."""
    mean, var = state["mean"].astype(x.dtype), state["var"].astype(x.dtype)
    inv_std = jax.lax.rsqrt(var + jnp.asarray(eps, x.dtype))
    xhat = (x - mean) * inv_std
    return params["scale"] * xhat + params["bias"], RunningCache(xhat, inv_std)


def batchnorm_backward(
    params: BNParams, cache: BatchCache | RunningCache, dy: Array
) -> tuple[BNParams, Array]:
    """Closed-form (dparams, dx); see the module docstring. The cache type says the mode."""
    axes = tuple(range(dy.ndim - 1))
    xhat, inv_std = cache
    grads = {"scale": jnp.sum(dy * xhat, axis=axes), "bias": jnp.sum(dy, axis=axes)}
    dxhat = dy * params["scale"]
    if isinstance(cache, RunningCache):
        return grads, dxhat * inv_std
    n = jnp.asarray(dy.size // dy.shape[-1], dy.dtype)
    sum_dxhat = jnp.sum(dxhat, axis=axes)
    sum_dxhat_xhat = jnp.sum(dxhat * xhat, axis=axes)
    dx = (inv_std / n) * (n * dxhat - sum_dxhat - xhat * sum_dxhat_xhat)
    return grads, dx


def _check_input(x: Array, channels: int) -> None:
    """Static shape and dtype checks (free under jit): another channel count broadcast or
    failed inside JAX, and integer input gave NaN statistics."""
    if x.ndim < 2 or x.shape[-1] != channels:
        raise InputError(
            f"BatchNorm expects input (batch, ..., {channels}), got shape {tuple(x.shape)}; "
            "pass the shape the layer was initialised for"
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise InputError(
            f"BatchNorm expects float input, got dtype {x.dtype}; convert first (uint8 pixels: "
            "jnn.data.to_float divides by 255)"
        )


def BatchNorm(  # noqa: N802 - layers are named like classes
    momentum: float = 0.99, eps: float = 1e-5, dtype: Any = jnp.float32
) -> Layer:
    """Batch normalisation of the last axis (a factory: ``BatchNorm()``); see the module doc.

    The running state keeps its own dtype (float32 by default) whatever the input's, so a
    scanned training loop carries a state of fixed type.
    """
    if not 0.0 <= float(momentum) <= 1.0:
        raise InputError(f"BatchNorm momentum must be in [0, 1], got {momentum!r}")
    if not float(eps) > 0.0:
        raise InputError(f"BatchNorm eps must be positive, got {eps!r}")
    momentum, eps = float(momentum), float(eps)

    def init(key: Array, input_shape: Shape) -> tuple[Shape, BNParams, BNState]:
        del key
        c = int(input_shape[-1])
        params = {"scale": jnp.ones((c,), dtype), "bias": jnp.zeros((c,), dtype)}
        return (
            tuple(input_shape),
            params,
            {"mean": jnp.zeros((c,), dtype), "var": jnp.ones((c,), dtype)},
        )

    def forward(params, state, x, *, key=None, train=False):
        del key
        _check_input(x, params["scale"].shape[0])
        if not train:
            y, cache = batchnorm_forward_eval(params, state, x, eps)
            return y, cache, state
        if x.size == 0:
            raise InputError(
                f"BatchNorm in training mode got an empty batch (x of shape {x.shape}): its "
                "batch statistics would be NaN and so would its running averages; pass at "
                "least one example"
            )
        y, cache, mu, var = batchnorm_forward_train(params, x, eps)
        new_state = {
            "mean": momentum * state["mean"] + (1.0 - momentum) * mu.astype(state["mean"].dtype),
            "var": momentum * state["var"] + (1.0 - momentum) * var.astype(state["var"].dtype),
        }
        return y, cache, new_state

    return Layer(init, forward, batchnorm_backward, f"BatchNorm(momentum={momentum:g})")
