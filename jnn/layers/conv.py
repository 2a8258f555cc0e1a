"""2-D convolution (NHWC input, HWIO kernel, bias) with a hand-written backward.

    layer = Conv2D(32, 3, strides=1, padding="SAME", init="he")
    out_shape, params, state = layer.init(key, (28, 28, 1))  # params {"w": (3,3,1,32), "b": (32,)}
    y, cache, state = layer.forward(params, state, x)          # x (B,28,28,1) -> y (B,28,28,32)
    dparams, dx = layer.backward(params, cache, dy)

All three passes are ``lax.conv_general_dilated`` calls with explicit padding. Per spatial axis,
with input size n, kernel k, stride s and the forward padding (lo, hi):

    out = (n + lo + hi - k) // s + 1           rows the windows cover: (out - 1) * s + k
    r   = n + lo + hi - ((out - 1) * s + k)    trailing padded rows no window reaches (0 <= r < s)

* dx is the transposed convolution: dy dilated by s (``lhs_dilation``: s - 1 zeros between
  rows) convolved with the spatially flipped kernel, in/out channels swapped, padded
  (k - 1 - lo, k - 1 - hi + r). The ``+ r`` gives the r uncovered trailing rows their zero
  gradient; the result has exactly n rows.
* dw is a correlation of the input with dy: x with its batch and channel axes exchanged (batch
  becomes the contraction) against dy used as a kernel dilated by s (``rhs_dilation``), padding
  (lo, hi - r) so the r uncovered rows are cut off; the output has exactly k rows.
* db sums dy over batch and space.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from jax import Array, lax

from jnn.core import Layer, Shape
from jnn.errors import InputError
from jnn.initializers import get_initializer

ConvParams = dict[str, Array]
Pads = tuple[tuple[int, int], tuple[int, int]]
_DN = ("NHWC", "HWIO", "NHWC")
PADDINGS = ("SAME", "VALID")


def axis_geometry(n: int, k: int, s: int, padding: str) -> tuple[int, int, int, int]:
    """(out, lo, hi, r) for one spatial axis: output size, forward padding before/after, and the
    number r of trailing (padded) rows that no window reaches.

    SAME follows XLA/TensorFlow: out = ceil(n / s), total padding (out - 1) * s + k - n split with
    the extra row after. VALID pads nothing: out = (n - k) // s + 1.
    """
    if padding == "SAME":
        out = -(-n // s)
        total = max((out - 1) * s + k - n, 0)
        lo, hi = total // 2, total - total // 2
    else:
        out, lo, hi = (n - k) // s + 1, 0, 0
    r = n + lo + hi - ((out - 1) * s + k)
    return out, lo, hi, r


def conv_forward(
    params: ConvParams, x: Array, strides: tuple[int, int], pads: Pads
) -> tuple[Array, Array]:
    """y = conv(x, w) + b. x: (B, H, W, C) -> y: (B, H', W', F); the cache is x."""
    y = lax.conv_general_dilated(x, params["w"], strides, pads, dimension_numbers=_DN)
    return y + params["b"], x


def conv_backward(
    params: ConvParams, x: Array, dy: Array, strides: tuple[int, int], pads: Pads
) -> tuple[ConvParams, Array]:
    """(dparams, dx) for dy: (B, H', W', F) as described in the module docstring."""
    w = params["w"]
    kh, kw = w.shape[:2]
    geo = [
        axis_geometry_from_pads(n, k, s, p)
        for n, k, s, p in zip(x.shape[1:3], (kh, kw), strides, pads)
    ]
    # Input gradient: transposed convolution with the flipped, channel-swapped kernel.
    w_t = jnp.flip(w, axis=(0, 1)).transpose(0, 1, 3, 2)  # (kh, kw, F, C)
    dx_pads = [(k - 1 - lo, k - 1 - hi + r) for k, (lo, hi, r) in zip((kh, kw), geo)]
    dx = lax.conv_general_dilated(
        dy, w_t, (1, 1), dx_pads, lhs_dilation=strides, dimension_numbers=_DN
    )
    # Kernel gradient: batch is the contraction axis; dy acts as a stride-dilated kernel. The
    # transposes are explicit: x^T (C, H, W, B) are the "images", dy^T (H', W', B, F) the
    # "kernel", the (C, kh, kw, F) result goes back to (kh, kw, C, F). Written as one conv with
    # dimension numbers (CHWN, IHWO, HWNC) it gives the same bits, but XLA:CPU canonicalizes
    # such a conv only outside loops: inside lax.scan it ran ~30x slower (results/cnn/scan_probe).
    dw_pads = [(lo, hi - r) for lo, hi, r in geo]
    dw = lax.conv_general_dilated(
        x.transpose(3, 1, 2, 0),
        dy.transpose(1, 2, 0, 3),
        (1, 1),
        dw_pads,
        rhs_dilation=strides,
        dimension_numbers=_DN,
    ).transpose(1, 2, 0, 3)
    return {"w": dw, "b": jnp.sum(dy, axis=(0, 1, 2))}, dx


def axis_geometry_from_pads(n: int, k: int, s: int, pad: tuple[int, int]) -> tuple[int, int, int]:
    """(lo, hi, r) for one axis from its explicit forward padding (r as in axis_geometry)."""
    lo, hi = pad
    out = (n + lo + hi - k) // s + 1
    return lo, hi, n + lo + hi - ((out - 1) * s + k)


def _pair(v: int | tuple[int, int], what: str) -> tuple[int, int]:
    pair = (v, v) if isinstance(v, int) else tuple(v)
    if len(pair) != 2 or not all(isinstance(i, int) and i > 0 for i in pair):
        raise InputError(f"Conv2D {what} must be a positive int or a pair of them, got {v!r}")
    return pair  # type: ignore[return-value]


def Conv2D(  # noqa: N802 - layers are named like classes, as in stax and Flax
    features: int,
    kernel_size: int | tuple[int, int],
    strides: int | tuple[int, int] = 1,
    padding: str = "SAME",
    init: str = "he",
    dtype: Any = jnp.float32,
) -> Layer:
    """A 2-D convolution with ``features`` output channels (a factory, like ``Dense``).

    Per-example input (H, W, C); kernel (kh, kw, C, features) drawn by the named initializer
    (``jnn.initializers``; fans include the receptive field), bias zeros. ``padding`` is "SAME"
    (output ceil(H / s)) or "VALID" (output (H - kh) // s + 1).
    """
    if int(features) != features or features <= 0:
        raise InputError(f"Conv2D needs a positive integer number of features, got {features!r}")
    ksize, stride = _pair(kernel_size, "kernel_size"), _pair(strides, "strides")
    pad_mode = str(padding).upper()
    if pad_mode not in PADDINGS:
        raise InputError(f"Conv2D padding must be 'SAME' or 'VALID', got {padding!r}")
    initializer = get_initializer(init)
    label = f"Conv2D({features}, {ksize}, strides={stride}, {pad_mode})"

    def geometry(hw: tuple[int, int]) -> tuple[tuple[int, int], Pads]:
        g = [axis_geometry(n, k, s, pad_mode) for n, k, s in zip(hw, ksize, stride)]
        if any(out <= 0 for out, *_ in g):
            raise InputError(f"{label}: input {hw} is smaller than the kernel {ksize}")
        return (g[0][0], g[1][0]), ((g[0][1], g[0][2]), (g[1][1], g[1][2]))

    def init_fn(key: Array, input_shape: Shape) -> tuple[Shape, ConvParams, tuple]:
        if len(input_shape) != 3:
            raise InputError(f"{label} needs per-example shape (H, W, C), got {input_shape}")
        (oh, ow), _ = geometry(tuple(input_shape[:2]))
        w = initializer(key, (*ksize, input_shape[2], int(features)), dtype)
        return (oh, ow, int(features)), {"w": w, "b": jnp.zeros((int(features),), dtype)}, ()

    def forward(params, state, x, *, key=None, train=False):
        del key, train
        if x.ndim != 4:
            raise InputError(f"{label} expects (batch, H, W, C) input, got {tuple(x.shape)}")
        _, pads = geometry(tuple(x.shape[1:3]))
        y, cache = conv_forward(params, x, stride, pads)
        return y, cache, state

    def backward(params, x, dy):
        _, pads = geometry(tuple(x.shape[1:3]))
        return conv_backward(params, x, dy, stride, pads)

    return Layer(init_fn, forward, backward, label)
