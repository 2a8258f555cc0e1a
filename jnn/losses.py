"""Cross-entropy losses with hand-written backward passes, plus the entropy/KL pieces the theory
study uses.

Targets are probability rows: one-hot labels, smoothed labels, or any distribution.
All losses are means over the batch axis.

Input checks (every failure is a one-line :class:`jnn.errors.InputError`). Wrong inputs here do
not crash, they give wrong numbers: ``jax.nn.one_hot`` turns a label outside ``[0, C)`` into an
all-zero row (a lower loss and a manual gradient ~20% off ``jax.grad``); labels shaped (B, 1),
or one label for a batch of B, broadcast against the (B, C) logits. So:

* **Shapes and dtypes are static and always checked**, under ``jax.jit`` / ``vmap`` / ``grad`` too:
  logits float (B, C); integer labels 1-D (B,); target rows float (B, C), the logits' shape.
* **Values are checked whenever the arrays are concrete** (not tracers): labels in ``[0, C)``;
  target rows finite, non-negative and summing to 1 within a dtype-aware tolerance. Under
  ``jax.jit`` they are tracers and cannot be read, so code that jits the loss (the epoch loop)
  must check its data once up front, outside the jit: :func:`check_labels` /
  :func:`check_targets` on the whole dataset before the scan.

Soft targets that are not distributions are **refused** (when concrete), not differentiated: the
fused backward is ``(p - t) / B``, which is ``jax.grad`` of the loss only for rows summing to 1
(the exact gradient is ``(p * sum(t) - t) / B``; rows summing to 2.5 would be ~150% off). The
general form was measured to move the MLP study's trained weights (XLA fuses the epoch
differently), so the study keeps ``(p - t) / B`` bit for bit and the inputs are checked instead.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.scipy.special import xlogy

from jnn.errors import InputError

__all__ = [
    "check_labels",
    "check_targets",
    "cross_entropy",
    "cross_entropy_backward",
    "cross_entropy_rows",
    "entropy",
    "kl_divergence",
    "log_softmax",
    "one_hot",
    "softmax_cross_entropy",
    "softmax_cross_entropy_backward",
    "targets_for",
]

# --------------------------------------------------------------------------- input checks


def _is_concrete(x: Any) -> bool:
    """True when the values of ``x`` can be read now: not a tracer (inside jit, grad or vmap the
    arguments are tracers), and for a jax.Array all its shards are on this process."""
    if isinstance(x, jax.core.Tracer):
        return False
    return not isinstance(x, jax.Array) or x.is_fully_addressable


def _as_array(x: Any) -> Any:
    """Arrays and tracers as they are; anything else (lists, scalars) as a numpy array."""
    return x if isinstance(x, (jax.Array, np.ndarray, jax.core.Tracer)) else np.asarray(x)


def _check_num_classes(num_classes: Any) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise InputError(f"num_classes must be an int, got {num_classes!r}; pass e.g. 10")
    if num_classes < 1:
        raise InputError(f"num_classes must be at least 1, got {num_classes}")
    return int(num_classes)


def _check_logits(logits: Any) -> None:
    """Logits must be float (B, C) with B, C >= 1 (a mean over no rows is NaN)."""
    shape, dtype = tuple(jnp.shape(logits)), jnp.result_type(logits)
    if len(shape) != 2 or not jnp.issubdtype(dtype, jnp.floating):
        raise InputError(
            f"logits must be a float array (B, C), got shape {shape} dtype {dtype}; "
            f"pass one row of class scores per example"
        )
    if min(shape) < 1:
        raise InputError(f"logits must have at least one row and one class, got shape {shape}")


def _check_label_shape(labels: Any, batch: int | None, what: str) -> None:
    """Integer dtype, 1-D, and (when ``batch`` is given) one label per row of the logits."""
    shape, dtype = tuple(jnp.shape(labels)), jnp.result_type(labels)
    if not jnp.issubdtype(dtype, jnp.integer):
        raise InputError(
            f"{what} must be integer class indices, got dtype {dtype} (shape {shape}); cast "
            f"them with .astype(np.int32), or pass float target rows (B, C) as soft targets"
        )
    if len(shape) != 1:
        one_per_row = math.prod(shape[1:]) == 1
        fix = "flatten them with .reshape(-1)" if one_per_row else "pass class indices (B,)"
        raise InputError(f"{what} must be 1-D (B,), got shape {shape}; {fix}")
    if batch is not None and shape[0] != batch:
        raise InputError(
            f"{what} hold {shape[0]} labels for {batch} rows of logits (they would broadcast); "
            f"pass exactly one label per example"
        )


def _check_label_values(labels: Any, num_classes: int, what: str) -> None:
    """Every label in [0, num_classes): reads the values, so only for concrete arrays."""
    values = np.asarray(labels)
    bad = (values < 0) | (values >= num_classes)
    if bad.any():
        at = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"{what} must lie in [0, {num_classes}): found {values[at]} ({int(bad.sum())} of "
            f"{values.size} {what}, from {values[bad].min()} to {values[bad].max()}) at index "
            f"{at}; one_hot would make them all-zero rows (a wrong loss and gradient): remap "
            f"them to 0..{num_classes - 1} or drop those examples"
        )


def check_labels(labels: Any, num_classes: int, *, what: str = "labels") -> None:
    """Refuse integer labels that are not 1-D (N,) or not all in ``[0, num_classes)``.

    For concrete arrays (numpy, or jax outside jit): the check the jitted epoch loop cannot do
    itself. Call it once on the whole dataset before the scan; under jit, :func:`one_hot` and
    :func:`targets_for` only check shapes. Raises a one-line :class:`InputError` naming the first
    bad label, how many there are and their range; ``TypeError`` when called on a tracer.
    """
    labels = _as_array(labels)
    if not _is_concrete(labels):
        raise TypeError(f"check_labels needs concrete {what}: call it outside jax.jit / vmap")
    num_classes = _check_num_classes(num_classes)
    _check_label_shape(labels, None, what)
    _check_label_values(labels, num_classes, what)


def _mass_tolerance(dtypes: tuple[Any, ...], num_classes: int) -> float:
    """How far a row sum may be from 1: 16 sqrt(C) eps of the coarsest dtype involved.

    A row rounded element by element is off by <= eps/2 of its sum; computed with C terms (e.g.
    normalised by a float sum) the error grows like sqrt(C) eps. bfloat16, C = 10: 0.4; float32,
    C = 10: 6e-6; float64: 1e-14. The defects it catches are O(1) (rows summing to 2.5).
    """
    eps = max(float(jnp.finfo(jax.dtypes.canonicalize_dtype(d)).eps) for d in dtypes)
    return 16.0 * math.sqrt(num_classes) * eps


def _check_target_shape(targets: Any, logits_shape: tuple[int, ...], what: str) -> None:
    shape, dtype = tuple(jnp.shape(targets)), jnp.result_type(targets)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise InputError(
            f"{what} must be float probability rows, got dtype {dtype} (shape {shape}); for "
            f"class indices pass int labels (B,) through targets_for(labels, logits)"
        )
    if shape != logits_shape:
        raise InputError(
            f"{what} must have the logits' shape {logits_shape}, got {shape} (it would "
            f"broadcast); pass one row of C probabilities per example"
        )


def _check_target_values(targets: Any, tol: float, what: str) -> None:
    """Rows finite, >= 0 and summing to 1 within ``tol``: reads the values (concrete only)."""
    values = np.asarray(targets).astype(np.float64)
    rows = len(values)
    finite = np.isfinite(values).all(axis=-1)
    if not finite.all():
        at = int(np.flatnonzero(~finite)[0])
        raise InputError(
            f"{what} must be finite: row {at} holds {values[at][~np.isfinite(values[at])][0]} "
            f"({int((~finite).sum())} of {rows} rows); fix the data that produced them"
        )
    negative = (values < 0).any(axis=-1)
    if negative.any():
        at = int(np.flatnonzero(negative)[0])
        raise InputError(
            f"{what} must be non-negative probabilities: row {at} holds {values[at].min():.6g} "
            f"({int(negative.sum())} of {rows} rows); pass distributions over the classes"
        )
    mass = values.sum(axis=-1)
    off = np.abs(mass - 1.0) > tol
    if off.any():
        at = int(np.flatnonzero(off)[0])
        raise InputError(
            f"{what} rows must sum to 1 (within {tol:.2g}): row {at} sums to {mass[at]:.8g} "
            f"({int(off.sum())} of {rows} rows); normalise them, t / t.sum(-1, keepdims=True)"
        )


def check_targets(targets: Any, *, what: str = "targets") -> None:
    """Refuse soft targets that are not float (N, C) rows of probability distributions.

    Each row must be finite, non-negative and sum to 1 within a dtype-aware tolerance (see
    :func:`_mass_tolerance`). For concrete arrays only, like :func:`check_labels`: call it on the
    dataset before a jitted loop. One-line :class:`InputError`; ``TypeError`` on a tracer.
    """
    targets = _as_array(targets)
    if not _is_concrete(targets):
        raise TypeError(f"check_targets needs concrete {what}: call it outside jax.jit / vmap")
    shape = tuple(jnp.shape(targets))
    if len(shape) != 2 or min(shape) < 1:
        raise InputError(f"{what} must be (N, C) probability rows, got shape {shape}")
    _check_target_shape(targets, shape, what)
    _check_target_values(targets, _mass_tolerance((targets.dtype,), shape[1]), what)


# --------------------------------------------------------------------------- targets


def one_hot(labels: Array, num_classes: int, dtype: Any = jnp.float32) -> Array:
    """(B,) int labels -> (B, num_classes) one-hot rows of ``dtype``.

    Checked first: labels 1-D with an integer dtype (always), and every label in
    ``[0, num_classes)`` when the labels are concrete (``jax.nn.one_hot`` silently maps any
    other label to an all-zero row). Under jit, check the data with :func:`check_labels`.
    """
    labels = _as_array(labels)
    num_classes = _check_num_classes(num_classes)
    _check_label_shape(labels, None, "labels")
    if _is_concrete(labels):
        _check_label_values(labels, num_classes, "labels")
    return jax.nn.one_hot(labels, num_classes, dtype=dtype)


def targets_for(y: Array, logits: Array) -> Array:
    """The target rows for ``logits`` (B, C): int labels (B,) -> one-hot rows, float target
    rows (B, C) -> cast to the logits' dtype. Either way (B, C) in ``logits.dtype``.

    What the training code should call instead of ``one_hot`` / ``astype``: it checks that the
    labels are one per row (no broadcasting of (B, 1) or (1,)) and in range, or that the rows
    have the logits' shape and are distributions (values only when concrete; see the module
    docstring).
    """
    _check_logits(logits)
    y = _as_array(y)
    batch, num_classes = jnp.shape(logits)
    dtype = jnp.result_type(y)
    if jnp.issubdtype(dtype, jnp.integer):
        _check_label_shape(y, batch, "labels")
        return one_hot(y, num_classes, logits.dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise InputError(
            f"y must be integer class indices (B,) or float target rows (B, C), got dtype "
            f"{dtype} (shape {tuple(jnp.shape(y))}); cast labels with .astype(np.int32)"
        )
    _check_target_shape(y, (batch, num_classes), "targets")
    if _is_concrete(y):
        tol = _mass_tolerance((y.dtype, logits.dtype), num_classes)
        _check_target_values(y, tol, "targets")
    return y.astype(logits.dtype)


# --------------------------------------------------------------------------- losses


def log_softmax(logits: Array) -> Array:
    """Stable log-softmax over the last axis: (B, C) -> (B, C)."""
    shifted = logits - jnp.max(logits, axis=-1, keepdims=True)
    return shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True))


def _check_probs_targets(probs: Any, targets: Any) -> None:
    """Static checks of the two-step loss: probs float (B, C), targets float of the same shape."""
    shape, dtype = tuple(jnp.shape(probs)), jnp.result_type(probs)
    if len(shape) != 2 or not jnp.issubdtype(dtype, jnp.floating):
        raise InputError(f"probs must be a float array (B, C), got shape {shape} dtype {dtype}")
    _check_target_shape(targets, shape, "targets")


def cross_entropy(probs: Array, targets: Array) -> Array:
    """H(targets, probs) averaged over the batch: -mean_b sum_c t log p. probs, targets: (B, C).

    ``probs`` come from a softmax and may underflow to 0; they are clipped at the smallest normal
    number of their dtype so the loss stays finite (the fused version below needs no clipping).
    Shapes are checked (same (B, C), float); the values are not (the backward below is exact for
    any targets).
    """
    _check_probs_targets(probs, targets)
    tiny = jnp.finfo(probs.dtype).tiny
    return -jnp.mean(jnp.sum(xlogy(targets, jnp.maximum(probs, tiny)), axis=-1))


def cross_entropy_backward(probs: Array, targets: Array) -> Array:
    """d loss / d probs = -t / (B p), the VJP of :func:`cross_entropy` for a unit cotangent.

    Where the forward clipped p (p < tiny) the loss does not depend on p, so the gradient is 0
    there, as jax.grad says (not -t / (B tiny): ~1e38 in float32, one multiply away from inf).
    """
    _check_probs_targets(probs, targets)
    tiny = jnp.finfo(probs.dtype).tiny
    safe = jnp.maximum(probs, tiny)
    return jnp.where((targets != 0) & (probs >= tiny), -targets / safe, 0.0) / probs.shape[0]


def softmax_cross_entropy(logits: Array, targets: Array) -> tuple[Array, tuple[Array, Array]]:
    """Fused softmax + cross-entropy from logits (B, C) and target rows (B, C): returns
    (mean loss, cache) with cache = (probs (B, C), targets (B, C)).

    Computed through log-softmax, so it is finite for any finite logits. Targets must be float
    rows of the logits' shape (int labels go through :func:`targets_for`); when they are
    concrete they must be distributions (finite, >= 0, rows summing to 1). Logit values are not
    checked: a non-finite logit gives a NaN loss, which the training loop reports as divergence.
    """
    _check_logits(logits)
    targets = _as_array(targets)
    _check_target_shape(targets, tuple(jnp.shape(logits)), "targets")
    if _is_concrete(targets):
        tol = _mass_tolerance((targets.dtype, logits.dtype), logits.shape[1])
        _check_target_values(targets, tol, "targets")
    log_probs = log_softmax(logits)
    loss = -jnp.mean(jnp.sum(targets * log_probs, axis=-1))
    return loss, (jnp.exp(log_probs), targets)


def softmax_cross_entropy_backward(cache: tuple[Array, Array], dloss: Array | float = 1.0) -> Array:
    """d loss / d logits = (p - t) / B, scaled by the incoming scalar cotangent. Returns (B, C).

    The loss is -1/B sum_b (sum_c t_bc z_bc - sum(t_b) logsumexp(z_b)), whose exact gradient is
    (p * sum(t_b) - t) / B: this equals jax.grad only for target rows that sum to one (one-hot,
    smoothed, any distribution). :func:`softmax_cross_entropy` refuses concrete rows that do not;
    under jit it cannot read them, so jitted callers check their data with :func:`check_targets`
    first. (The general form is not used: it moves the MLP study's numbers, see the module doc.)
    """
    if not (isinstance(cache, tuple) and len(cache) == 2):
        raise InputError("cache must be the (probs, targets) pair softmax_cross_entropy returns")
    probs, targets = cache
    _check_probs_targets(probs, targets)
    if jnp.ndim(dloss) != 0:
        raise InputError(
            f"dloss must be a scalar (the cotangent of the mean loss), got shape "
            f"{tuple(jnp.shape(dloss))}"
        )
    return dloss * (probs - targets) / probs.shape[0]


# --------------------------------------------------------------------------- information theory


def entropy(p: Array) -> Array:
    """Shannon entropy H(p) = -sum p log p over the last axis (0 log 0 = 0). (..., C) -> (...)."""
    return -jnp.sum(xlogy(p, p), axis=-1)


def kl_divergence(p: Array, q: Array) -> Array:
    """KL(p || q) = sum p log(p / q) over the last axis (p = 0 terms are 0). (..., C) -> (...)."""
    return jnp.sum(xlogy(p, p) - xlogy(p, q), axis=-1)


def cross_entropy_rows(p: Array, q: Array) -> Array:
    """Per-row cross-entropy H(p, q) = -sum p log q over the last axis. (..., C) -> (...)."""
    return -jnp.sum(xlogy(p, q), axis=-1)
