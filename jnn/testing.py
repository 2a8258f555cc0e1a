"""The public gradient check: test a hand-written backward exactly as jnn tests its own.

Every layer of jnn is proven by these functions (``tests/test_layer_*.py`` call them); they are
public so that a user or a teacher checks a new layer, or a student's, by the same rule:

    from jnn.testing import layer_vjp_check
    layer_vjp_check(MyLayer(16), x)     # AssertionError naming the leaf that is off

**The reference.** The layer's own ``forward``, differentiated by ``jax.vjp`` with respect to
the params and the input, against a random (seeded) cotangent ``dy``: nothing but the forward is
trusted, so a backward cannot be "checked" against a copy of its own mistake. A random ``dy``
(not ``ones``) catches transposes and swapped axes that a sum would hide.

**Close.** Per leaf of the gradient pytree, in float64 (b the reference, norms over the leaf):

    rel_err(a, b) = ||a - b||_2 / ||b||_2

at most `TOL` of the dtype: 1e-5 in float32 and 1e-10 in float64 (float64 needs
``jax.config.update("jax_enable_x64", True)`` before any array is made). Where the reference
leaf is exactly zero (zero init makes many gradients exactly zero) the relative error is
undefined and the *absolute* error ``||a - b||_2`` is held to the same tolerance: an exactly
zero reference demands an (all but) exactly zero answer. Nothing is loosened for it.

Which function to use:

* `layer_vjp_check` -- one layer, params from its own ``init``, eager (simplest).
* `jit_vjp_check` -- one layer, params drawn by numpy, manual and reference in one
  ``jax.jit`` (fast for many shapes: no per-primitive compiles, no threefry per kernel shape).
* `model_grad_check` -- a whole model (``jnn.core.serial`` of layers) with the fused
  softmax cross-entropy: ``jnn.core.value_and_grad(model)`` against ``jax.grad``.
* `assert_tree_close`, `tree_rel_errs`, `rel_err`, `tol` -- the rule
  itself, for gradients you compute some other way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import tree_util

if TYPE_CHECKING:
    from jax import Array

    from jnn.core import Layer

__all__ = [
    "TOL",
    "assert_tree_close",
    "jit_vjp_check",
    "layer_vjp_check",
    "model_grad_check",
    "random_params",
    "rel_err",
    "tol",
    "tree_rel_errs",
]

TOL: dict[np.dtype, float] = {np.dtype("float32"): 1e-5, np.dtype("float64"): 1e-10}
"""The agreement a hand-written backward must reach, per floating dtype (relative, per leaf)."""


def tol(dtype: Any) -> float:
    """The agreement tolerance for a floating dtype: float32 1e-5, float64 1e-10.

    Raises ``KeyError`` for any other dtype (bfloat16 and float16 have no rule here)."""
    return TOL[np.dtype(dtype)]


def rel_err(actual: Any, expected: Any) -> float:
    """``||actual - expected|| / ||expected||`` (2-norm over the whole array, in float64), or the
    absolute error ``||actual - expected||`` when ``expected`` is exactly zero.

    ``expected`` is the reference. Raises ``AssertionError`` when the shapes differ (a gradient
    of the wrong shape is wrong, however small its entries)."""
    a = np.asarray(actual, dtype=np.float64)
    b = np.asarray(expected, dtype=np.float64)
    if a.shape != b.shape:
        raise AssertionError(f"shape mismatch: {a.shape} vs reference {b.shape}")
    diff = float(np.linalg.norm((a - b).ravel()))
    ref = float(np.linalg.norm(b.ravel()))
    return diff / ref if ref > 0 else diff


def tree_rel_errs(actual: Any, expected: Any) -> dict[str, float]:
    """`rel_err` of every leaf, keyed by its path (e.g. ``"[1]['w']"``).

    The two pytrees must have the same structure (``AssertionError`` otherwise): a backward that
    returns a gradient for the wrong param, or drops one, fails here."""
    # object: jaxlib ships PyTreeDef without a stub, so mypy cannot see its __eq__.
    got: object = tree_util.tree_structure(actual)
    want: object = tree_util.tree_structure(expected)
    if got != want:
        raise AssertionError(f"tree structure mismatch: {got} vs {want}")
    leaves = tree_util.tree_leaves_with_path(expected)
    return {
        tree_util.keystr(path): rel_err(a, b)
        for (path, b), a in zip(leaves, tree_util.tree_leaves(actual))
    }


def assert_tree_close(actual: Any, expected: Any, dtype: Any, what: str = "") -> None:
    """Every leaf of ``actual`` within ``tol(dtype)`` of the reference ``expected``.

    Also asserts every leaf of both trees has ``dtype`` (a backward that silently promotes
    float32 to float64, or the reverse, fails). The message names ``what`` and each leaf that is
    off with its error."""
    for a, b in zip(tree_util.tree_leaves(actual), tree_util.tree_leaves(expected)):
        assert a.dtype == b.dtype == np.dtype(dtype), (what, a.dtype, b.dtype, dtype)
    errs = tree_rel_errs(actual, expected)
    bad = {k: v for k, v in errs.items() if not v <= tol(dtype)}
    assert not bad, f"{what}: rel err above {tol(dtype):g} ({np.dtype(dtype)}): {bad}"


def _check_outputs(
    layer: Layer, y: Any, y_ref: Any, grads: Any, grads_ref: Any, params: Any, dtype: Any, what: str
) -> None:
    (dparams, dx), (dparams_ref, dx_ref) = grads, grads_ref
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), rtol=tol(dtype), atol=0)
    assert_tree_close(dx, dx_ref, dtype, f"{what or layer.name} dx")
    if jax.tree.leaves(params):
        assert_tree_close(dparams, dparams_ref, dtype, f"{what or layer.name} dparams")


def layer_vjp_check(
    layer: Layer,
    x: Any,
    *,
    key: Array | None = None,
    train: bool = True,
    seed: int = 0,
    what: str = "",
) -> tuple[Any, Any, Any]:
    """Check ``layer.backward`` against ``jax.vjp`` of ``layer.forward``, w.r.t. params and input.

    Args:
        layer: a `jnn.core.Layer` (``init``, ``forward``, ``backward``).
        x: a batch ``(B, *input_shape)`` of float32 or float64; its dtype sets the tolerance.
        key: PRNG key passed to both forwards (a Dropout draws the same mask in each).
        train: the ``train`` flag of both forwards (BatchNorm's batch statistics, Dropout).
        seed: seeds ``layer.init`` (``jax.random.key(seed)``) and the cotangent (numpy,
            ``seed + 1``).
        what: a label for the failure message (default: ``layer.name``).

    The params come from ``layer.init`` cast to ``x.dtype``. Asserts the forward outputs agree
    and dx (and dparams, if the layer has any) are within `tol`.

    Returns:
        ``(y, dparams, dx)`` of the hand-written side, for further checks.
    """
    _, params, state = layer.init(jax.random.key(seed), tuple(x.shape[1:]))
    params = jax.tree.map(lambda p: p.astype(x.dtype), params)
    y, cache, _ = layer.forward(params, state, x, key=key, train=train)
    dy = jnp.asarray(np.random.default_rng(seed + 1).standard_normal(y.shape).astype(x.dtype))
    manual = layer.backward(params, cache, dy)

    def fwd(p, v):
        return layer.forward(p, state, v, key=key, train=train)[0]

    y_ref, vjp = jax.vjp(fwd, params, x)
    _check_outputs(layer, y, y_ref, manual, vjp(dy), params, x.dtype, what)
    return y, manual[0], manual[1]


def random_params(layer: Layer, input_shape: Any, dtype: Any, seed: int = 0) -> tuple[Any, Any]:
    """``(params, state)`` for ``layer``: params of ``layer.init``'s structure filled with seeded
    standard normals (numpy, so nonzero biases and BatchNorm scales exercise those terms), the
    state from ``layer.init`` itself when the layer has one (states hold no random draws)."""
    shape = tuple(input_shape)
    _, p_shapes, s_shapes = jax.eval_shape(lambda k: layer.init(k, shape), jax.random.key(0))
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(dtype), p_shapes)
    state = (
        layer.init(jax.random.key(0), tuple(input_shape))[2] if jax.tree.leaves(s_shapes) else ()
    )
    return params, state


def jit_vjp_check(
    layer: Layer,
    x: Any,
    *,
    key: Array | None = None,
    train: bool = True,
    seed: int = 0,
    what: str = "",
    params: Any = None,
    state: Any = None,
) -> tuple[Any, Any, Any]:
    """`layer_vjp_check` with both sides compiled as one ``jax.jit`` program.

    Eager ``jax.vjp`` and an eager backward compile every primitive on its own, and every kernel
    shape drawn by ``jax.random`` compiles a threefry program: seconds per shape on a loaded
    2-core machine. Here params come from `random_params` (unless ``params`` and ``state``
    are given) and the manual and reference passes share one ``jax.jit``. Same cotangent
    convention (numpy normal, ``seed + 1``) and tolerances. Returns the manual
    ``(y, dparams, dx)``.
    """
    if params is None:
        params, default_state = random_params(layer, x.shape[1:], x.dtype, seed)
        state = default_state if state is None else state

    def fwd(p, v):
        return layer.forward(p, state, v, key=key, train=train)[0]

    dy_shape = jax.eval_shape(fwd, params, x).shape
    dy = np.random.default_rng(seed + 1).standard_normal(dy_shape).astype(x.dtype)

    @jax.jit
    def both(params, x, dy):
        y, cache, _ = layer.forward(params, state, x, key=key, train=train)
        y_ref, vjp = jax.vjp(fwd, params, x)
        return y, layer.backward(params, cache, dy), y_ref, vjp(dy)

    y, manual, y_ref, reference = both(params, x, dy)
    _check_outputs(layer, y, y_ref, manual, reference, params, x.dtype, what)
    return y, manual[0], manual[1]


def model_grad_check(
    model: Layer,
    x: Any,
    y: Any,
    *,
    key: Array | None = None,
    train: bool = True,
    seed: int = 0,
    what: str = "",
) -> tuple[Any, Any]:
    """A whole model's manual gradients against ``jax.grad`` of its forward + loss.

    ``jnn.core.value_and_grad(model)`` (every layer's hand-written backward, fed the fused
    softmax cross-entropy gradient ``(p - t) / B``) against ``value_and_grad(model,
    "autodiff")`` (``jax.value_and_grad`` of the same forward and loss), same params, state and
    ``key``. ``x`` is ``(B, *input_shape)``, ``y`` int labels ``(B,)`` or target rows ``(B, C)``;
    params come from ``model.init(jax.random.key(seed), ...)`` cast to ``x.dtype``. Asserts the
    losses agree and every gradient leaf is within `tol`. Returns ``(loss, grads)`` of the
    manual side.
    """
    from jnn.core import value_and_grad

    _, params, state = model.init(jax.random.key(seed), tuple(x.shape[1:]))
    params = jax.tree.map(lambda p: p.astype(x.dtype), params)
    (loss, _, _), grads = value_and_grad(model)(params, state, x, y, key=key, train=train)
    (ref, _, _), ref_grads = value_and_grad(model, "autodiff")(
        params, state, x, y, key=key, train=train
    )
    np.testing.assert_allclose(float(loss), float(ref), rtol=tol(x.dtype), atol=0)
    assert_tree_close(grads, ref_grads, x.dtype, f"{what or model.name} grads")
    return loss, grads
