"""The one definition of "close" that every gradient test uses.

    rel_err(a, b) = ||a - b||_2 / ||b||_2      per leaf, Frobenius norm, computed in float64

``b`` is the reference (``jax.vjp`` / ``jax.grad``). When the reference leaf is exactly zero
(zero init makes many gradients exactly zero) a relative error is undefined, so the *absolute*
error ||a - b||_2 is used instead, against the same tolerance: an exactly-zero reference then
demands an (all but) exactly-zero answer. Nothing is loosened for it.
"""

from __future__ import annotations

import numpy as np
from jax import tree_util

# Tolerances of the project: manual backprop must match autodiff to these.
TOL = {np.dtype("float32"): 1e-5, np.dtype("float64"): 1e-10}


def tol(dtype) -> float:
    """The agreement tolerance for a floating dtype (float32: 1e-5, float64: 1e-10)."""
    return TOL[np.dtype(dtype)]


def rel_err(actual, expected) -> float:
    """||actual - expected|| / ||expected|| (2-norm over the whole array), or the absolute error
    ||actual - expected|| when ``expected`` is exactly zero."""
    a = np.asarray(actual, dtype=np.float64)
    b = np.asarray(expected, dtype=np.float64)
    if a.shape != b.shape:
        raise AssertionError(f"shape mismatch: {a.shape} vs reference {b.shape}")
    diff = float(np.linalg.norm((a - b).ravel()))
    ref = float(np.linalg.norm(b.ravel()))
    return diff / ref if ref > 0 else diff


def tree_rel_errs(actual, expected) -> dict[str, float]:
    """rel_err for every leaf, keyed by its path (e.g. ``[1]['w']``); the structures must match."""
    if tree_util.tree_structure(actual) != tree_util.tree_structure(expected):
        raise AssertionError(
            f"tree structure mismatch: {tree_util.tree_structure(actual)} vs "
            f"{tree_util.tree_structure(expected)}"
        )
    leaves = tree_util.tree_leaves_with_path(expected)
    return {
        tree_util.keystr(path): rel_err(a, b)
        for (path, b), a in zip(leaves, tree_util.tree_leaves(actual))
    }


def assert_tree_close(actual, expected, dtype, what: str = "") -> None:
    """Every leaf of ``actual`` within tol(dtype) of the reference ``expected``; dtypes kept."""
    for a, b in zip(tree_util.tree_leaves(actual), tree_util.tree_leaves(expected)):
        assert a.dtype == b.dtype == np.dtype(dtype), (what, a.dtype, b.dtype, dtype)
    errs = tree_rel_errs(actual, expected)
    bad = {k: v for k, v in errs.items() if not v <= tol(dtype)}
    assert not bad, f"{what}: rel err above {tol(dtype):g} ({np.dtype(dtype)}): {bad}"


def layer_vjp_check(layer, x, *, key=None, train: bool = True, seed: int = 0, what: str = ""):
    """A layer's hand-written backward vs ``jax.vjp`` of its own forward, w.r.t. params and input.

    The params come from ``layer.init`` (cast to ``x.dtype``), the cotangent ``dy`` is random
    normal (seeded), ``key`` is passed to both forwards so Dropout draws the same mask. Returns
    ``(y, dparams, dx)`` of the manual side for further checks.
    """
    import jax

    _, params, state = layer.init(jax.random.key(seed), tuple(x.shape[1:]))
    params = jax.tree.map(lambda p: p.astype(x.dtype), params)
    y, cache, _ = layer.forward(params, state, x, key=key, train=train)
    dy = np.random.default_rng(seed + 1).standard_normal(y.shape).astype(x.dtype)
    dparams, dx = layer.backward(params, cache, dy)

    def fwd(p, v):
        return layer.forward(p, state, v, key=key, train=train)[0]

    y_ref, vjp = jax.vjp(fwd, params, x)
    dparams_ref, dx_ref = vjp(dy)
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), rtol=tol(x.dtype), atol=0)
    assert_tree_close(dx, dx_ref, x.dtype, f"{what or layer.name} dx")
    if jax.tree.leaves(params):
        assert_tree_close(dparams, dparams_ref, x.dtype, f"{what or layer.name} dparams")
    return y, dparams, dx
