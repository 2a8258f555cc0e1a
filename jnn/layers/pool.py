"""2-D max pooling (NHWC) with a hand-written backward that routes ties exactly as JAX does.

    layer = MaxPool2D(2)                                  # window 2x2, strides = window, VALID
    y, cache, state = layer.forward((), (), x)            # x (B, H, W, C) -> y (B, H', W', C)
    (), dx = layer.backward((), cache, dy)

The forward is ``lax.reduce_window(x, -inf, lax.max, ...)``. ``jax.grad`` differentiates it with
``_select_and_scatter_add`` whose select is ``>=``: scanning each window in row-major order it
keeps the element already chosen unless a later one is strictly greater, so a tie goes to the
*first* maximal element of the window, and only that one. (Checked against ``jax.vjp`` on tied
inputs in tests/test_layer_maxpool.py.)

The backward does the same by hand, for any window, stride and padding:

1. pad x with -inf as the forward does, and take the kh*kw strided views ``xp[:, i::s, j::s, :]``
   (one per window offset (i, j), row-major): patches of shape (kh*kw, B, H', W', C);
2. ``argmax`` over the offset axis gives the first maximal offset; its one-hot mask times dy is
   each window's gradient;
3. each offset's slice is put back where it came from with ``lax.pad`` (low padding i, interior
   padding s - 1: the inverse of the strided view) and the kh*kw results are summed, so
   overlapping windows (stride < window) add up; the -inf padding is cut off at the end.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import Array, lax

from jnn.core import Layer, Shape
from jnn.errors import InputError
from jnn.layers.conv import PADDINGS, axis_geometry

Pads = tuple[tuple[int, int], tuple[int, int]]


def maxpool_forward(
    x: Array, window: tuple[int, int], strides: tuple[int, int], pads: Pads
) -> tuple[Array, Array]:
    """Max over each window; the cache is x. Padded positions hold -inf, never the max.

    The init value is a numpy constant: a traced one (``jnp.array`` inside ``jit``) makes
    ``reduce_window`` a generic reduction that ``jax.grad`` cannot differentiate.
    """
    neg_inf = np.array(-np.inf, x.dtype)
    y = lax.reduce_window(
        x, neg_inf, lax.max, (1, *window, 1), (1, *strides, 1), ((0, 0), *pads, (0, 0))
    )
    return y, x


def _patches(xp: Array, window: tuple[int, int], strides: tuple[int, int], out: Shape) -> Array:
    """(kh*kw, B, H', W', C): for each window offset (i, j) in row-major order the strided view
    xp[:, i + s*p, j + s*q, :] over output positions (p, q)."""
    (kh, kw), (sh, sw), (oh, ow) = window, strides, out
    views = [
        xp[:, i : i + (oh - 1) * sh + 1 : sh, j : j + (ow - 1) * sw + 1 : sw, :]
        for i in range(kh)
        for j in range(kw)
    ]
    return jnp.stack(views)


def maxpool_backward(
    x: Array, dy: Array, window: tuple[int, int], strides: tuple[int, int], pads: Pads
) -> Array:
    """dx: each dy entry routed to the first maximal element (row-major) of its window."""
    (kh, kw), (sh, sw) = window, strides
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=-jnp.inf)
    oh, ow = dy.shape[1:3]
    patches = _patches(xp, window, strides, (oh, ow))
    first = jnp.argmax(patches, axis=0)  # first maximal offset of each window
    hp, wp = xp.shape[1:3]
    zero = jnp.array(0, dy.dtype)
    dxp = jnp.zeros_like(xp)
    for idx in range(kh * kw):
        i, j = divmod(idx, kw)
        g = jnp.where(first == idx, dy, zero)
        spread = (
            (0, 0, 0),
            (i, hp - i - (oh - 1) * sh - 1, sh - 1),
            (j, wp - j - (ow - 1) * sw - 1, sw - 1),
            (0, 0, 0),
        )
        dxp = dxp + lax.pad(g, zero, spread)
    (top, _), (left, _) = pads
    return dxp[:, top : top + x.shape[1], left : left + x.shape[2], :]


def _pair(v: int | tuple[int, int], what: str) -> tuple[int, int]:
    pair = (v, v) if isinstance(v, int) else tuple(v)
    if len(pair) != 2 or not all(isinstance(i, int) and i > 0 for i in pair):
        raise InputError(f"MaxPool2D {what} must be a positive int or a pair of them, got {v!r}")
    return pair[0], pair[1]


def MaxPool2D(  # noqa: N802 - layers are named like classes
    window: int | tuple[int, int],
    strides: int | tuple[int, int] | None = None,
    padding: str = "VALID",
) -> Layer:
    """Max pooling over ``window`` (a factory: ``MaxPool2D(2)``); ``strides`` defaults to the
    window (non-overlapping). VALID drops the trailing rows/cols no window covers; SAME pads
    with -inf so the output is ceil(H / s)."""
    win = _pair(window, "window")
    stride = win if strides is None else _pair(strides, "strides")
    pad_mode = str(padding).upper()
    if pad_mode not in PADDINGS:
        raise InputError(f"MaxPool2D padding must be 'SAME' or 'VALID', got {padding!r}")
    label = f"MaxPool2D({win}, strides={stride}, {pad_mode})"

    def geometry(hw: tuple[int, int]) -> tuple[tuple[int, int], Pads]:
        g = [axis_geometry(n, k, s, pad_mode) for n, k, s in zip(hw, win, stride)]
        if any(out <= 0 for out, *_ in g):
            raise InputError(f"{label}: input {hw} is smaller than the window")
        return (g[0][0], g[1][0]), ((g[0][1], g[0][2]), (g[1][1], g[1][2]))

    def init(key: Array, input_shape: Shape) -> tuple[Shape, tuple, tuple]:
        del key
        if len(input_shape) != 3:
            raise InputError(f"{label} needs per-example shape (H, W, C), got {input_shape}")
        (oh, ow), _ = geometry((input_shape[0], input_shape[1]))
        return (oh, ow, input_shape[2]), (), ()

    def forward(params, state, x, *, key=None, train=False):
        del params, key, train
        if x.ndim != 4:
            raise InputError(f"{label} expects (batch, H, W, C) input, got {tuple(x.shape)}")
        y, cache = maxpool_forward(x, win, stride, geometry(tuple(x.shape[1:3]))[1])
        return y, cache, state

    def backward(params, x, dy):
        del params
        return (), maxpool_backward(x, dy, win, stride, geometry(tuple(x.shape[1:3]))[1])

    return Layer(init, forward, backward, label)
