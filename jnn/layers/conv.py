"""2-D convolution (NHWC input, HWIO kernel, bias) with a hand-written backward, in two lowerings.

    layer = Conv2D(32, 3, strides=1, padding="SAME", init="he", lowering="auto")
    out_shape, params, state = layer.init(key, (28, 28, 1))  # params {"w": (3,3,1,32), "b": (32,)}
    y, cache, state = layer.forward(params, state, x)          # x (B,28,28,1) -> y (B,28,28,32)
    dparams, dx = layer.backward(params, cache, dy)            # the cache is x in every lowering

Per spatial axis, with input size n, kernel k, stride s and the forward padding (lo, hi):

    out = (n + lo + hi - k) // s + 1           rows the windows cover: (out - 1) * s + k
    r   = n + lo + hi - ((out - 1) * s + k)    trailing padded rows no window reaches (0 <= r < s)

**"conv"**: all three passes are ``lax.conv_general_dilated`` calls with explicit padding.

* dx is the transposed convolution: dy dilated by s (``lhs_dilation``: s - 1 zeros between
  rows) convolved with the spatially flipped kernel, in/out channels swapped, padded
  (k - 1 - lo, k - 1 - hi + r). The ``+ r`` gives the r uncovered trailing rows their zero
  gradient; the result has exactly n rows.
* dw is a correlation of the input with dy: x with its batch and channel axes exchanged (batch
  becomes the contraction) against dy used as a kernel dilated by s (``rhs_dilation``), padding
  (lo, hi - r) so the r uncovered rows are cut off; the output has exactly k rows.

**"gemm"**: im2col. The patch matrix P (B*H'*W', kh*kw*C), taps row-major then channels (so the
kernel is ``w.reshape(kh*kw*C, F)`` without a transpose), is built from kh*kw strided slices of
the zero-padded x; then one dot per pass: y = P w, dw = P^T dy, and dx = col2im(dy w^T), where
col2im adds each tap's (B, H', W', C) slice of dP back at the rows it was read from (``lax.pad``
with interior padding s - 1; negative padding crops the forward padding). col2im was measured
faster than the alternative GEMM of the flipped kernel over the dilated, padded dy's patches
(whose patch matrix has F instead of C channels per tap and costs a second im2col).
A patch matrix is k^2 times the input, so each GEMM pass runs over batch chunks of at most
``PATCH_BUDGET_BYTES`` of patches (``lax.map`` / ``lax.scan``; the batch is zero-padded to whole
chunks, which adds nothing to dw). Chunking is also a speed measure on XLA:CPU: a fresh
multi-MB temporary costs page faults on every call (a 29 MB patch matrix took ~15 ms to write
unchunked, 16 chunks of 1.8 MB ~6 ms in all).

**"auto"** (the default) picks a lowering per pass at trace time from the output map's H' * W'
(:func:`auto_passes`; measured on the CNN's and VGG16's layers, jax 0.10.2, 2-core Xeon, passes
jitted alone and interleaved, conv time / gemm time; ``python -m bench.conv_lowering`` repeats
the measurement on any backend and says where the rule picks the slower lowering):

* H' * W' <= ``SMALL_MAP`` (16: 4x4 and smaller): forward and dx GEMMs, dw a conv. XLA:CPU's
  forward and input-gradient convs are pathological on 2x2 maps (2x2x512 -> 512 at batch 64:
  ~0.4-1.9 s per call against ~6-50 ms as GEMMs); at 4x4 the two are within ~15% of each
  other. The kernel-gradient conv was faster on VGG16's 4x4 and 2x2 layers in three runs of
  ``bench.conv_lowering`` (0.70-0.88 of the GEMM's time: its patch matrix would be the whole
  input nine times over for a 3x3 output).
* up to ``LARGE_MAP`` (64: 8x8): every pass a conv (fwd 0.7-1.0, dx 0.9-1.1, dw 0.8-0.9 on
  VGG16's 8x8 and 4x4 layers: XLA's conv needs no patch matrix).
* above: forward and dx convs (0.4-0.8: XLA's own convolution beats im2col, whose copies cost
  more than its dot), the kernel gradient a GEMM (1.3-2.7 on 14x14 to 32x32 maps: XLA runs the
  kernel-gradient conv as a big dy-kernel over a k x k output, its slowest convolution, and the
  CNN step's slowest op).

On any other backend (GPU: cuDNN) every pass stays a conv. :func:`conv_plans` reports what each
Conv2D of a model does: the passes' lowerings, the chunking and the peak patch bytes.
db sums dy over batch and space in every lowering.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array, lax

from jnn.core import Layer, Shape
from jnn.errors import InputError
from jnn.initializers import get_initializer

ConvParams = dict[str, Array]
Pads = tuple[tuple[int, int], tuple[int, int]]
_DN = ("NHWC", "HWIO", "NHWC")
PADDINGS = ("SAME", "VALID")
LOWERINGS = ("auto", "conv", "gemm")
PATCH_BUDGET_BYTES = 4 * 2**20  # most bytes of patch matrix one GEMM chunk holds (>= 1 example)
SMALL_MAP = 16  # output positions H' * W' up to which "auto" lowers forward and dx to GEMMs
LARGE_MAP = 64  # ... above which "auto" lowers the kernel gradient (only) to a GEMM on CPU


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


def axis_geometry_from_pads(n: int, k: int, s: int, pad: tuple[int, int]) -> tuple[int, int, int]:
    """(lo, hi, r) for one axis from its explicit forward padding (r as in axis_geometry)."""
    lo, hi = pad
    out = (n + lo + hi - k) // s + 1
    return lo, hi, n + lo + hi - ((out - 1) * s + k)


# ------------------------------------------------------------------------ the "conv" lowering


def conv_forward(
    params: ConvParams, x: Array, strides: tuple[int, int], pads: Pads
) -> tuple[Array, Array]:
    """y = conv(x, w) + b. x: (B, H, W, C) -> y: (B, H', W', F); the cache is x."""
    y = lax.conv_general_dilated(x, params["w"], strides, pads, dimension_numbers=_DN)
    return y + params["b"], x


def hw_pair(dims: tuple[int, ...]) -> tuple[int, int]:
    """A two-entry shape slice (``x.shape[1:3]``, ``w.shape[:2]``) as the (H, W) pair the
    geometry functions take; any other length is a ValueError from the unpacking."""
    h, w = dims
    return h, w


def conv_input_grad(w: Array, dy: Array, x_hw: tuple[int, int], strides, pads: Pads) -> Array:
    """dx (B, H, W, C): the transposed convolution with the flipped, channel-swapped kernel."""
    kh, kw = w.shape[:2]
    geo = [axis_geometry_from_pads(n, k, s, p) for n, k, s, p in zip(x_hw, (kh, kw), strides, pads)]
    w_t = jnp.flip(w, axis=(0, 1)).transpose(0, 1, 3, 2)  # (kh, kw, F, C)
    dx_pads = [(k - 1 - lo, k - 1 - hi + r) for k, (lo, hi, r) in zip((kh, kw), geo)]
    return lax.conv_general_dilated(
        dy, w_t, (1, 1), dx_pads, lhs_dilation=strides, dimension_numbers=_DN
    )


def conv_kernel_grad(x: Array, dy: Array, ksize: tuple[int, int], strides, pads: Pads) -> Array:
    """dw (kh, kw, C, F). Batch is the contraction axis; dy acts as a stride-dilated kernel. The
    transposes are explicit: x^T (C, H, W, B) are the "images", dy^T (H', W', B, F) the "kernel",
    the (C, kh, kw, F) result goes back to (kh, kw, C, F). Written as one conv with dimension
    numbers (CHWN, IHWO, HWNC) it gives the same bits, but XLA:CPU canonicalizes such a conv only
    outside loops: inside lax.scan it ran ~30x slower (results/cnn/scan_probe)."""
    geo = [
        axis_geometry_from_pads(n, k, s, p)
        for n, k, s, p in zip(x.shape[1:3], ksize, strides, pads)
    ]
    dw_pads = [(lo, hi - r) for lo, hi, r in geo]
    return lax.conv_general_dilated(
        x.transpose(3, 1, 2, 0),
        dy.transpose(1, 2, 0, 3),
        (1, 1),
        dw_pads,
        rhs_dilation=strides,
        dimension_numbers=_DN,
    ).transpose(1, 2, 0, 3)


def conv_backward(
    params: ConvParams, x: Array, dy: Array, strides: tuple[int, int], pads: Pads
) -> tuple[ConvParams, Array]:
    """(dparams, dx) for dy: (B, H', W', F), every pass a convolution (module docstring)."""
    w = params["w"]
    dx = conv_input_grad(w, dy, hw_pair(x.shape[1:3]), strides, pads)
    dw = conv_kernel_grad(x, dy, hw_pair(w.shape[:2]), strides, pads)
    return {"w": dw, "b": jnp.sum(dy, axis=(0, 1, 2))}, dx


# ------------------------------------------------------------------------ the "gemm" lowering


def im2col(x: Array, ksize: tuple[int, int], strides, pads: Pads) -> Array:
    """(B, H, W, C) -> patches (B, H', W', kh*kw*C): entry (b, i, j, (p*kw + q)*C + c) is the
    zero-padded x[b, i*s + p, j*s + q, c], so ``patches @ w.reshape(kh*kw*C, F)`` is the conv."""
    (kh, kw), (sh, sw) = ksize, strides
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    oh, ow = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
    taps = [
        xp[:, p : p + (oh - 1) * sh + 1 : sh, q : q + (ow - 1) * sw + 1 : sw, :]
        for p in range(kh)
        for q in range(kw)
    ]
    return taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)


def _tap_pad(tap: int, lo: int, s: int, out: int, n: int) -> tuple[int, int, int]:
    """lax.pad config putting one tap's (out,) slice where im2col read it on an axis of n rows:
    its first row lands at tap - lo, the next s rows later (interior s - 1); negative ends crop
    the forward padding, the rest is zero."""
    low = tap - lo
    return low, n - low - ((out - 1) * s + 1), s - 1


def col2im(dpatches: Array, x_hw: tuple[int, int], ksize: tuple[int, int], strides, pads) -> Array:
    """The transpose of :func:`im2col`: (B, H', W', kh*kw*C) -> dx (B, H, W, C), each tap's
    gradient added back at the input rows it was read from (padding rows dropped)."""
    (kh, kw), (h, w) = ksize, x_hw
    _, oh, ow, k = dpatches.shape
    c = k // (kh * kw)
    zero = jnp.zeros((), dpatches.dtype)
    parts = []
    for t in range(kh * kw):
        p, q = divmod(t, kw)
        config = [
            (0, 0, 0),
            _tap_pad(p, pads[0][0], strides[0], oh, h),
            _tap_pad(q, pads[1][0], strides[1], ow, w),
            (0, 0, 0),
        ]
        parts.append(lax.pad(dpatches[..., t * c : (t + 1) * c], zero, config))
    return sum(parts[1:], parts[0])  # tap 0 + tap 1 + ..., in tap order


def _chunked(a: Array, chunk: int, chunks: int) -> Array:
    """(B, ...) -> (chunks, chunk, ...), the batch zero-padded to chunks * chunk."""
    extra = chunk * chunks - a.shape[0]
    if extra:
        a = jnp.pad(a, ((0, extra),) + ((0, 0),) * (a.ndim - 1))
    return a.reshape(chunks, chunk, *a.shape[1:])


def map_batch(fn: Callable[..., Array], chunk: int, *arrays: Array) -> Array:
    """``fn`` (batch-wise) over batch chunks of ``chunk`` examples, one ``lax.map`` step each, the
    results concatenated back to the batch: peak temporaries of ``fn`` are those of one chunk."""
    batch = arrays[0].shape[0]
    chunks = -(-batch // chunk)
    if chunks <= 1:  # one chunk (or an empty batch): no loop
        return fn(*arrays)
    out = lax.map(lambda xs: fn(*xs), tuple(_chunked(a, chunk, chunks) for a in arrays))
    return out.reshape(-1, *out.shape[2:])[:batch]


def sum_batch(fn: Callable[..., Array], chunk: int, *arrays: Array) -> Array:
    """sum over batch chunks of ``fn(*chunk_arrays)`` (one ``lax.scan`` step each; the zero rows
    padding the last chunk must add nothing, as they do to a kernel gradient)."""
    batch = arrays[0].shape[0]
    chunks = -(-batch // chunk)
    if chunks <= 1:  # one chunk (or an empty batch): no loop
        return fn(*arrays)
    parts = tuple(_chunked(a, chunk, chunks) for a in arrays)
    like = jax.eval_shape(fn, *(p[0] for p in parts))
    zero = jnp.zeros(like.shape, like.dtype)
    return lax.scan(lambda acc, xs: (acc + fn(*xs), None), zero, parts)[0]


def gemm_forward(w: Array, b: Array | None, x: Array, strides, pads: Pads, chunk: int) -> Array:
    """y = im2col(x) @ w.reshape(kh*kw*C, F) (+ b): x (B, H, W, C) -> y (B, H', W', F)."""
    wm = w.reshape(-1, w.shape[-1])

    def one(xc: Array) -> Array:
        y = jnp.dot(im2col(xc, hw_pair(w.shape[:2]), strides, pads), wm)
        return y if b is None else y + b

    return map_batch(one, chunk, x)


def gemm_kernel_grad(x: Array, dy: Array, ksize: tuple[int, int], strides, pads, chunk: int):
    """dw = P^T dy (kh*kw*C, B*H'*W') x (B*H'*W', F), reshaped to (kh, kw, C, F)."""
    f = dy.shape[-1]

    def one(xc: Array, dyc: Array) -> Array:
        p = im2col(xc, ksize, strides, pads)
        return jnp.dot(p.reshape(-1, p.shape[-1]).T, dyc.reshape(-1, f))

    return sum_batch(one, chunk, x, dy).reshape(*ksize, x.shape[-1], f)


def gemm_input_grad(w: Array, dy: Array, x_hw: tuple[int, int], strides, pads, chunk: int):
    """dx = col2im(dy @ w.reshape(kh*kw*C, F)^T): dy (B, H', W', F) -> (B, H, W, C)."""
    wm = w.reshape(-1, w.shape[-1])

    def one(dyc: Array) -> Array:
        return col2im(jnp.dot(dyc, wm.T), x_hw, hw_pair(w.shape[:2]), strides, pads)

    return map_batch(one, chunk, dy)


# ------------------------------------------------------------------- choosing and reporting


class ConvPlan(NamedTuple):
    """How one Conv2D call runs: each pass's lowering ("conv" or "gemm"), the batch chunking of
    its GEMM passes and the bytes of the largest patch matrix they hold at once (0: no GEMM)."""

    lowering: str  # what the layer asked for: "auto", "conv" or "gemm"
    forward: str
    input_grad: str
    kernel_grad: str
    backend: str
    chunk: int  # examples per GEMM chunk
    chunks: int
    patch_bytes: int

    def passes(self) -> str:
        """E.g. ``"fwd conv, dx conv, dw gemm"``."""
        return f"fwd {self.forward}, dx {self.input_grad}, dw {self.kernel_grad}"


def auto_passes(out_hw: tuple[int, int], backend: str) -> tuple[str, str, str]:
    """The rule of ``lowering="auto"``: (forward, input_grad, kernel_grad) lowerings for an
    output map ``out_hw`` on ``backend`` (``jax.default_backend()``). Off CPU all "conv" (cuDNN).
    On CPU, by n = H' * W': "gemm" for forward and dx and "conv" for dw for n <= ``SMALL_MAP``,
    all "conv" up to ``LARGE_MAP``, above it "conv" for forward and dx and "gemm" for dw
    (measurements: module docstring)."""
    n = out_hw[0] * out_hw[1]
    if backend != "cpu" or SMALL_MAP < n <= LARGE_MAP:
        return "conv", "conv", "conv"
    if n <= SMALL_MAP:
        return "gemm", "gemm", "conv"
    return "conv", "conv", "gemm"


def batch_chunk(batch: int, bytes_per_example: int, budget: int | None = None) -> int:
    """Examples per GEMM chunk: as many as fit ``budget`` bytes of patches (at least one), then
    evened out over the chunks that needs, so the zero padding of the last chunk is minimal.
    ``budget`` defaults to ``PATCH_BUDGET_BYTES``."""
    budget = PATCH_BUDGET_BYTES if budget is None else budget  # read at trace time
    if batch <= 1:
        return 1
    fit = max(1, min(batch, budget // max(bytes_per_example, 1)))
    chunks = -(-batch // fit)
    return -(-batch // chunks)


def conv_plan(
    lowering: str,
    x_shape: Shape,
    w_shape: Shape,
    out_hw: tuple[int, int],
    dtype: Any,
    backend: str | None = None,
) -> ConvPlan:
    """The :class:`ConvPlan` of a conv of kernel ``w_shape`` (kh, kw, C, F) on a batch
    ``x_shape`` (B, H, W, C) with output map ``out_hw``; ``backend`` defaults to JAX's."""
    backend = backend or jax.default_backend()
    passes = auto_passes(out_hw, backend) if lowering == "auto" else (lowering,) * 3
    batch = int(x_shape[0])
    per_example = math.prod(out_hw) * math.prod(w_shape[:3]) * jnp.dtype(dtype).itemsize
    chunk = batch_chunk(batch, per_example)
    patch_bytes = chunk * per_example if "gemm" in passes else 0
    return ConvPlan(lowering, *passes, backend, chunk, -(-batch // chunk), patch_bytes)


_PLAN_LOGS: list[list[dict[str, Any]]] = []


@contextlib.contextmanager
def record_plans() -> Iterator[list[dict[str, Any]]]:
    """Collect a dict per Conv2D forward traced inside the block: ``layer`` (its name), the
    per-example ``input_shape`` and ``output_shape``, ``kernel_shape``, ``strides``, explicit
    ``pads`` and the :class:`ConvPlan` fields (``jnn.conv_cost.recorded_conv_costs`` prices
    them)."""
    log: list[dict[str, Any]] = []
    _PLAN_LOGS.append(log)
    try:
        yield log
    finally:
        _PLAN_LOGS.remove(log)


def _note(label: str, plan: ConvPlan, x_shape, w_shape, out_hw, strides, pads: Pads) -> None:
    for log in _PLAN_LOGS:
        log.append(
            {
                "layer": label,
                "input_shape": tuple(int(d) for d in x_shape[1:]),
                "output_shape": (*out_hw, int(w_shape[-1])),
                "kernel_shape": tuple(int(d) for d in w_shape),
                "strides": tuple(strides),
                "pads": tuple(tuple(p) for p in pads),
                **plan._asdict(),
            }
        )


def conv_plans(model: Layer, input_shape: Shape, batch: int, dtype: Any = jnp.float32) -> list:
    """What every Conv2D of ``model`` does for a batch of ``batch`` examples of per-example
    ``input_shape`` on this backend: one dict per conv in call order (``layer``, shapes, and the
    :class:`ConvPlan` fields: the passes' lowerings, ``chunk``/``chunks``, ``patch_bytes``).
    Traced with ``jax.eval_shape``: nothing is computed."""

    def forward(key: Array) -> Array:
        _, params, state = model.init(key, tuple(input_shape))
        x = jnp.zeros((batch, *input_shape), dtype)
        return model.forward(params, state, x, key=key, train=True)[0]

    with record_plans() as log:
        jax.eval_shape(forward, jax.random.key(0))
    return log


# ------------------------------------------------------------------------------- the layer


def _pair(v: int | tuple[int, int], what: str) -> tuple[int, int]:
    pair = (v, v) if isinstance(v, int) else tuple(v)
    if len(pair) != 2 or not all(isinstance(i, int) and i > 0 for i in pair):
        raise InputError(f"Conv2D {what} must be a positive int or a pair of them, got {v!r}")
    return pair[0], pair[1]


def _checked(features: int, padding: str, lowering: str) -> tuple[str, str]:
    if int(features) != features or features <= 0:
        raise InputError(f"Conv2D needs a positive integer number of features, got {features!r}")
    pad_mode = str(padding).upper()
    if pad_mode not in PADDINGS:
        raise InputError(f"Conv2D padding must be 'SAME' or 'VALID', got {padding!r}")
    if lowering not in LOWERINGS:
        raise InputError(f"Conv2D lowering must be one of {LOWERINGS}, got {lowering!r}")
    return pad_mode, lowering


def lowered_forward(params: ConvParams, x: Array, strides, pads: Pads, plan: ConvPlan) -> Array:
    """y = conv(x, w) (+ b when ``params`` has "b") by the plan's forward lowering."""
    if plan.forward == "conv":
        y = lax.conv_general_dilated(x, params["w"], strides, pads, dimension_numbers=_DN)
        return y + params["b"] if "b" in params else y
    return gemm_forward(params["w"], params.get("b"), x, strides, pads, plan.chunk)


def lowered_backward(
    params: ConvParams, x: Array, dy: Array, strides, pads: Pads, plan: ConvPlan
) -> tuple[ConvParams, Array]:
    """(dparams, dx), each gradient by the plan's lowering for it. All-conv plans go through
    ``conv_backward`` itself (looked up at call time, so a patched one is used)."""
    if plan.input_grad == plan.kernel_grad == "conv":
        return conv_backward(params, x, dy, strides, pads)
    w, x_hw = params["w"], hw_pair(x.shape[1:3])
    if plan.input_grad == "conv":
        dx = conv_input_grad(w, dy, x_hw, strides, pads)
    else:
        dx = gemm_input_grad(w, dy, x_hw, strides, pads, plan.chunk)
    if plan.kernel_grad == "conv":
        dw = conv_kernel_grad(x, dy, hw_pair(w.shape[:2]), strides, pads)
    else:
        dw = gemm_kernel_grad(x, dy, hw_pair(w.shape[:2]), strides, pads, plan.chunk)
    return {"w": dw, "b": jnp.sum(dy, axis=(0, 1, 2))}, dx


def layer_geometry(
    hw: tuple[int, int], ksize: tuple[int, int], strides, padding: str, label: str = "Conv2D"
) -> tuple[tuple[int, int], Pads]:
    """((H', W'), explicit pads) of a conv on an (H, W) map; an input smaller than the kernel is
    an InputError naming ``label``."""
    g = [axis_geometry(n, k, s, padding) for n, k, s in zip(hw, ksize, strides)]
    if any(out <= 0 for out, *_ in g):
        raise InputError(f"{label}: input {hw} is smaller than the kernel {ksize}")
    return (g[0][0], g[1][0]), ((g[0][1], g[0][2]), (g[1][1], g[1][2]))


def check_input(label: str, x: Any, w: Any) -> None:
    """Refuse (one InputError naming the layer ``label``) an input that cannot meet the kernel
    w (kh, kw, C, F): x must be (B, H, W, C) of w's float dtype. Static checks of shape and
    dtype only, so they hold under jit and vmap and add nothing to the traced program; without
    them a wrong channel count or an integer image fails deep inside lax with a JAX message."""
    channels, want = int(w.shape[2]), jax.dtypes.canonicalize_dtype(w.dtype)
    expected = f"(batch, H, W, {channels}) {want}"
    if x.ndim != 4 or x.shape[3] != channels:
        raise InputError(
            f"{label} expects input {expected}, got shape {tuple(x.shape)}; pass NHWC images "
            f"with the {channels} channel(s) the layer was initialised for"
        )
    got = jax.dtypes.canonicalize_dtype(x.dtype)
    if got != want:
        raise InputError(
            f"{label} expects input {expected}, got dtype {got}; convert the images to {want} "
            "first (uint8 pixels: divide by 255)"
        )


def _plan(lowering: str, x: Array, w: Array, strides, padding: str, label: str, note: bool):
    """(pads, plan) of one traced call; ``note`` reports it to :func:`record_plans`."""
    out_hw, pads = layer_geometry(
        hw_pair(x.shape[1:3]), hw_pair(w.shape[:2]), strides, padding, label
    )
    plan = conv_plan(lowering, x.shape, w.shape, out_hw, x.dtype)
    if note:
        _note(label, plan, x.shape, w.shape, out_hw, strides, pads)
    return pads, plan


def convolve(
    x: Array,
    w: Array,
    strides: int | tuple[int, int] = 1,
    padding: str = "SAME",
    lowering: str = "auto",
    name: str = "convolve",
) -> Array:
    """conv(x, w) without bias, lowered as a Conv2D layer would be: x (B, H, W, C), w (kh, kw, C,
    F) -> (B, H', W', F). For models outside the layer protocol (the Flax VGG16); ``name`` labels
    the call in :func:`conv_plans` / :func:`record_plans`."""
    stride = _pair(strides, "strides")
    pad_mode, lowering = _checked(w.shape[-1], padding, lowering)
    pads, plan = _plan(lowering, x, w, stride, pad_mode, name, note=True)
    return lowered_forward({"w": w}, x, stride, pads, plan)


def Conv2D(  # noqa: N802 - layers are named like classes, as in stax and Flax
    features: int,
    kernel_size: int | tuple[int, int],
    strides: int | tuple[int, int] = 1,
    padding: str = "SAME",
    init: str = "he",
    dtype: Any = jnp.float32,
    lowering: str = "auto",
) -> Layer:
    """A 2-D convolution with ``features`` output channels (a factory, like ``Dense``).

    Per-example input (H, W, C); kernel (kh, kw, C, features) drawn by the named initializer
    (``jnn.initializers``; fans include the receptive field), bias zeros. ``padding`` is "SAME"
    (output ceil(H / s)) or "VALID" (output (H - kh) // s + 1). ``lowering`` is "conv", "gemm"
    or "auto" (module docstring; the name says which, :func:`conv_plans` what "auto" chose).
    ``forward`` refuses (:func:`check_input`, static: also under jit and vmap) an input that is
    not (B, H, W, C) of the kernel's C and dtype.
    """
    pad_mode, lowering = _checked(features, padding, lowering)
    ksize, stride = _pair(kernel_size, "kernel_size"), _pair(strides, "strides")
    initializer = get_initializer(init)
    label = f"Conv2D({features}, {ksize}, strides={stride}, {pad_mode}, lowering={lowering})"

    def geometry(hw: tuple[int, int]) -> tuple[tuple[int, int], Pads]:
        return layer_geometry(hw, ksize, stride, pad_mode, label)

    def plan(x: Array, w: Array, note: bool = False) -> tuple[Pads, ConvPlan]:
        return _plan(lowering, x, w, stride, pad_mode, label, note)

    def init_fn(key: Array, input_shape: Shape) -> tuple[Shape, ConvParams, tuple]:
        if len(input_shape) != 3:
            raise InputError(f"{label} needs per-example shape (H, W, C), got {input_shape}")
        (oh, ow), _ = geometry(hw_pair(input_shape[:2]))
        w = initializer(key, (*ksize, input_shape[2], int(features)), dtype)
        return (oh, ow, int(features)), {"w": w, "b": jnp.zeros((int(features),), dtype)}, ()

    def forward(params, state, x, *, key=None, train=False):
        del key, train
        check_input(label, x, params["w"])
        pads, p = plan(x, params["w"], note=True)
        return lowered_forward(params, x, stride, pads, p), x, state

    def backward(params, x, dy):
        pads, p = plan(x, params["w"])
        return lowered_backward(params, x, dy, stride, pads, p)

    return Layer(init_fn, forward, backward, label)
