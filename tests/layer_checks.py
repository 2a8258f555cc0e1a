"""``jit_vjp_check``: :func:`tests.gradcheck.layer_vjp_check` compiled as one XLA program, with
random params drawn by numpy.

Eager ``jax.vjp`` and the eager backward compile every primitive on its own, and every new
kernel shape drawn by ``jax.random`` compiles a threefry program: seconds per shape on a loaded
2-core machine. Here the params come from numpy (normal, seeded; nonzero biases and BatchNorm
scales, so those terms are exercised) and the manual and reference passes share one ``jax.jit``.
Same cotangent convention and tolerances as ``layer_vjp_check``.
"""

from __future__ import annotations

import jax
import numpy as np

from tests.gradcheck import assert_tree_close, tol


def random_params(layer, input_shape, dtype, seed: int = 0):
    """(params, state): params of ``layer.init``'s structure filled with seeded normals; the
    state from ``layer.init`` itself when the layer has one (no random draws in any state)."""
    shape = tuple(input_shape)
    _, p_shapes, s_shapes = jax.eval_shape(lambda k: layer.init(k, shape), jax.random.key(0))
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(dtype), p_shapes)
    state = (
        layer.init(jax.random.key(0), tuple(input_shape))[2] if jax.tree.leaves(s_shapes) else ()
    )
    return params, state


def jit_vjp_check(
    layer,
    x,
    *,
    key=None,
    train: bool = True,
    seed: int = 0,
    what: str = "",
    params=None,
    state=None,
):
    """A layer's hand-written backward vs ``jax.vjp`` of its own forward (params and input),
    both inside one ``jax.jit``. Returns the manual ``(y, dparams, dx)``."""
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

    y, (dparams, dx), y_ref, (dparams_ref, dx_ref) = both(params, x, dy)
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), rtol=tol(x.dtype), atol=0)
    assert_tree_close(dx, dx_ref, x.dtype, f"{what or layer.name} dx")
    if jax.tree.leaves(params):
        assert_tree_close(dparams, dparams_ref, x.dtype, f"{what or layer.name} dparams")
    return y, dparams, dx
