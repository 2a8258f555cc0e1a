"""Cross-entropy = entropy + KL, checked numerically with :mod:`jnn.losses` (the assignment's
first theory question; ``python -m experiments.theory`` prints and writes the answer).

For distributions P, Q over the same C classes (natural logs, so nats)::

    H(P, Q)    = -sum_y P(y) log Q(y)              (cross-entropy)
    H(P)       = -sum_y P(y) log P(y)              (entropy)
    KL(P || Q) =  sum_y P(y) log(P(y) / Q(y))      (Kullback-Leibler divergence)
    H(P, Q)    =  H(P) + KL(P || Q)

so a one-hot target (H(P) = 0) makes cross-entropy *equal* to KL, and any fixed soft target
(label smoothing) makes them differ by the constant H(P): their gradients w.r.t. the logits are
the same. :func:`ce_kl_checks` measures each of these claims as a maximum deviation::

    checks = ce_kl_checks(seed=0, dtype="float64")   # {"random_identity": 0.0, ...}
    checks["onehot_ce_minus_kl"] == 0.0              # bit-exact
    all(checks[k] <= TOLERANCE["float64"] for k in checks if k in DEVIATIONS)

:data:`CHECKS` says what each key measures and what it should be; :data:`ASSUMPTIONS` lists what
the identity needs.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jnn import losses
from jnn.errors import InputError

# Tolerances the identities are held to, per dtype: absolute for losses up to 1 nat, relative
# above; gradients relative to their largest entry (see _dev).
TOLERANCE = {"float32": 1e-6, "float64": 1e-12}

ASSUMPTIONS = (
    "P is fixed data (the labels): it is not a function of the model's parameters, so H(P) is a "
    "constant and has zero gradient.",
    "Terms with P(y) = 0 contribute 0 (the convention 0 log 0 = 0, and 0 log q = 0 for any q).",
    "Q(y) > 0 wherever P(y) > 0 (a softmax output always is); otherwise KL and cross-entropy "
    "are both +infinity. P and Q are distributions over the same set of classes.",
    "Natural logarithms, so every quantity is in nats.",
)

# key of ce_kl_checks' result -> (what it measures, what it should be)
CHECKS = {
    "random_identity": ("random P (with zeros), Q: max abs(H(P,Q) - H(P) - KL(P‖Q))", "0 (tol)"),
    "random_batch_mean": ("random: abs(cross_entropy(Q, P) - mean of rows H(P,Q))", "0 (tol)"),
    "onehot_entropy": ("one-hot P: max abs H(P)", "0 exactly"),
    "onehot_ce_minus_kl": ("one-hot P: max abs(H(P,Q) - KL(P‖Q))", "0 exactly"),
    "onehot_fused_ce_minus_kl": ("one-hot: abs(softmax_cross_entropy - mean KL)", "0 (tol)"),
    "smoothed_mean_entropy": (
        "smoothed P: H(P), the expected CE - KL gap (nats)",
        "eps-dependent",
    ),
    "smoothed_gap_error": ("smoothed: max abs(CE - (KL + H(P))) over 3 logits", "0 (tol)"),
    "smoothed_grad_ce_vs_kl": ("smoothed: max abs(dCE/dz - dKL/dz), both jax.grad", "0 (tol)"),
    "smoothed_grad_ce_vs_manual": ("smoothed: max abs(jax.grad CE - (p - t)/B)", "0 (tol)"),
}
DEVIATIONS = tuple(k for k, (_, expected) in CHECKS.items() if expected.startswith("0"))


def _check_sizes(seed: Any, rows: Any, classes: Any) -> None:
    """One-line InputErrors for a seed < 0, rows < 1 or classes < 2 (or non-integers)."""
    for name, value, low in (("seed", seed, 0), ("rows", rows, 1), ("classes", classes, 2)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise InputError(f"{name} must be an integer >= {low}, got {value!r}")


def q1_inputs(seed: int, rows: int = 256, classes: int = 10) -> dict[str, np.ndarray]:
    """Random float64 inputs (numpy, so no PRNG compile): P (rows, classes) with exact zeros,
    Q strictly positive, int labels (rows,), logits and a logit shift (rows, classes)."""
    _check_sizes(seed, rows, classes)
    rng = np.random.default_rng(seed)

    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    p = softmax(2.0 * rng.standard_normal((rows, classes)))
    p[:, 1:] *= rng.random((rows, classes - 1)) < 0.7  # ~30% exact zeros, never a zero row
    return {
        "p": p / p.sum(axis=-1, keepdims=True),
        "q": softmax(2.0 * rng.standard_normal((rows, classes))),
        "labels": rng.integers(0, classes, rows).astype(np.int32),
        "logits": 3.0 * rng.standard_normal((rows, classes)),
        "shift": rng.standard_normal((rows, classes)),
    }


def ce_kl_checks(
    seed: int = 0, dtype: str = "float32", rows: int = 256, classes: int = 10, eps: float = 0.1
) -> dict[str, Any]:
    """Numbers that show H(P,Q) = H(P) + KL(P||Q) and its consequences, in ``dtype``.

    Every value is a maximum deviation (0 means bit-exact) except ``smoothed_mean_entropy``
    (the expected CE - KL gap), ``smoothed_grad_scale`` (max |gradient|) and ``smoothed_gaps``
    (the CE - KL gap for three different logits). Loss deviations are absolute up to 1 nat and
    relative above (divided by max(1, |loss|)); gradient deviations are relative to the
    largest gradient entry. float64 needs x64, switched on here for the duration of the call.
    The computation is one jitted function per dtype. ``eps`` is the label smoothing, in (0, 1).
    """
    if dtype not in TOLERANCE:
        raise InputError(f"dtype must be one of {', '.join(TOLERANCE)}, got {dtype!r}")
    if not isinstance(eps, float) or not 0.0 < eps < 1.0:
        raise InputError(f"eps (label smoothing) must be a float in (0, 1), got {eps!r}")
    inputs = {
        k: v if k == "labels" else v.astype(dtype)
        for k, v in q1_inputs(seed, rows, classes).items()
    }
    with jax.enable_x64(dtype == "float64"):
        out = jax.device_get(_ce_kl_arrays(inputs, classes, eps))
    result: dict[str, Any] = {k: float(v) for k, v in out.items() if k != "smoothed_gaps"}
    result["smoothed_gaps"] = [float(g) for g in out["smoothed_gaps"]]
    return result


def _dev(a: jax.Array, b: jax.Array, scale: jax.Array | None = None) -> jax.Array:
    """max |a - b| / scale; scale defaults to max(1, max |a|): absolute error for values up to 1
    nat, relative above (float32 resolves a 10-nat loss only to ~1e-6)."""
    if scale is None:
        scale = jnp.maximum(1.0, jnp.max(jnp.abs(a)))
    return jnp.max(jnp.abs(a - b)) / scale


def _smoothed_checks(
    logits: jax.Array, shift: jax.Array, smooth: jax.Array
) -> dict[str, jax.Array]:
    """Smoothed P: CE - KL = H(P) whatever the logits, so the gradients are the same (both by
    jax.grad, and the fused backward's (p - t) / B)."""

    def ce_loss(z):
        return losses.softmax_cross_entropy(z, smooth)[0]

    def kl_loss(z):
        return jnp.mean(losses.kl_divergence(smooth, jax.nn.softmax(z)))

    h_smooth = jnp.mean(losses.entropy(smooth))
    shifted = logits + shift
    ces, kls = (
        jnp.stack([f(z) for z in (logits, 0.1 * logits, shifted)]) for f in (ce_loss, kl_loss)
    )
    g_ce, g_kl = jax.grad(ce_loss)(logits), jax.grad(kl_loss)(logits)
    _, cache = losses.softmax_cross_entropy(logits, smooth)
    g_manual = losses.softmax_cross_entropy_backward(cache)
    return {
        "smoothed_mean_entropy": h_smooth,
        "smoothed_gap_error": _dev(ces, kls + h_smooth),
        "smoothed_grad_ce_vs_kl": _dev(g_ce, g_kl, jnp.max(jnp.abs(g_ce))),
        "smoothed_grad_ce_vs_manual": _dev(g_ce, g_manual, jnp.max(jnp.abs(g_ce))),
        "smoothed_grad_scale": jnp.max(jnp.abs(g_ce)),
        "smoothed_gaps": ces - kls,
    }


@partial(jax.jit, static_argnums=(1, 2))
def _ce_kl_arrays(x: dict[str, jax.Array], classes: int, eps: float) -> dict[str, jax.Array]:
    """Every check of :func:`ce_kl_checks` as a 0-d array (``smoothed_gaps``: shape (3,))."""
    p, q, logits = x["p"], x["q"], x["logits"]

    # Random P (with zeros) and Q: the identity itself, row by row.
    ce = losses.cross_entropy_rows(p, q)
    identity = _dev(ce, losses.entropy(p) + losses.kl_divergence(p, q))
    batch_mean = _dev(losses.cross_entropy(q, p), jnp.mean(ce))

    # One-hot P: H(P) = 0 exactly, so cross-entropy *is* KL.
    onehot = losses.one_hot(x["labels"], classes, dtype=logits.dtype)
    probs = jax.nn.softmax(logits)
    kl_onehot = losses.kl_divergence(onehot, probs)
    fused, _ = losses.softmax_cross_entropy(logits, onehot)
    smooth = (1.0 - eps) * onehot + eps / classes
    return {
        "random_identity": identity,
        "random_batch_mean": batch_mean,
        "onehot_entropy": jnp.max(jnp.abs(losses.entropy(onehot))),
        "onehot_ce_minus_kl": _dev(losses.cross_entropy_rows(onehot, probs), kl_onehot),
        "onehot_fused_ce_minus_kl": _dev(fused, jnp.mean(kl_onehot)),
        **_smoothed_checks(logits, x["shift"], smooth),
    }
