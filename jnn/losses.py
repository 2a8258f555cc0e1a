"""Cross-entropy losses with hand-written backward passes, plus the entropy/KL pieces the theory
study uses.

Targets are probability rows: one-hot labels, smoothed labels, or any distribution.
All losses are means over the batch axis.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array
from jax.scipy.special import xlogy


def one_hot(labels: Array, num_classes: int, dtype=jnp.float32) -> Array:
    """(B,) int labels -> (B, num_classes) one-hot rows."""
    return jax.nn.one_hot(labels, num_classes, dtype=dtype)


def log_softmax(logits: Array) -> Array:
    """Stable log-softmax over the last axis: (B, C) -> (B, C)."""
    shifted = logits - jnp.max(logits, axis=-1, keepdims=True)
    return shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True))


def cross_entropy(probs: Array, targets: Array) -> Array:
    """H(targets, probs) averaged over the batch: -mean_b sum_c t log p. probs, targets: (B, C).

    ``probs`` come from a softmax and may underflow to 0; they are clipped at the smallest normal
    number of their dtype so the loss stays finite (the fused version below needs no clipping).
    """
    tiny = jnp.finfo(probs.dtype).tiny
    return -jnp.mean(jnp.sum(xlogy(targets, jnp.maximum(probs, tiny)), axis=-1))


def cross_entropy_backward(probs: Array, targets: Array) -> Array:
    """d loss / d probs = -t / (B p), the VJP of :func:`cross_entropy` for a unit cotangent.

    Where the forward clipped p (p < tiny) the loss does not depend on p, so the gradient is 0
    there, as jax.grad says (not -t / (B tiny): ~1e38 in float32, one multiply away from inf).
    """
    tiny = jnp.finfo(probs.dtype).tiny
    safe = jnp.maximum(probs, tiny)
    return jnp.where((targets != 0) & (probs >= tiny), -targets / safe, 0.0) / probs.shape[0]


def softmax_cross_entropy(logits: Array, targets: Array) -> tuple[Array, tuple[Array, Array]]:
    """Fused softmax + cross-entropy from logits (B, C): returns (mean loss, cache).

    Computed through log-softmax, so it is finite for any finite logits.
    """
    log_probs = log_softmax(logits)
    loss = -jnp.mean(jnp.sum(targets * log_probs, axis=-1))
    return loss, (jnp.exp(log_probs), targets)


def softmax_cross_entropy_backward(cache: tuple[Array, Array], dloss: Array | float = 1.0) -> Array:
    """d loss / d logits = (p - t) / B, scaled by the incoming cotangent. Returns (B, C).

    Exact for any target rows that sum to one (one-hot or smoothed).
    """
    probs, targets = cache
    return dloss * (probs - targets) / probs.shape[0]


def entropy(p: Array) -> Array:
    """Shannon entropy H(p) = -sum p log p over the last axis (0 log 0 = 0). (..., C) -> (...)."""
    return -jnp.sum(xlogy(p, p), axis=-1)


def kl_divergence(p: Array, q: Array) -> Array:
    """KL(p || q) = sum p log(p / q) over the last axis (p = 0 terms are 0). (..., C) -> (...)."""
    return jnp.sum(xlogy(p, p) - xlogy(p, q), axis=-1)


def cross_entropy_rows(p: Array, q: Array) -> Array:
    """Per-row cross-entropy H(p, q) = -sum p log q over the last axis. (..., C) -> (...)."""
    return -jnp.sum(xlogy(p, q), axis=-1)
