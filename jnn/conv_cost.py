"""What a Flax convolution network costs, read off the built model rather than a formula.

:func:`conv_layer_costs` runs a model once with a method interceptor and records, for every
``nn.Conv`` call, the real input/output shapes and kernel shape. From those it derives:

* ``params``: weights + biases, counted from the layer's param pytree;
* ``macs``: multiply-accumulates per example, ``H_out * W_out * C_out * kh * kw * C_in/groups``,
  i.e. every kernel tap counted, including taps that land on zero padding (the textbook count);
* ``valid_macs``: the same with taps on padding left out (what XLA's cost model counts);
* ``bias_adds``: one add per output element when the layer has a bias.

:func:`xla_flops` asks XLA's own cost model for a jitted function's FLOPs. For convolutions XLA
counts ``2 * valid_macs + bias_adds`` (one multiply + one add per non-padding tap, plus the bias
add), which the tests check exactly for the bottleneck networks.

:func:`shape_conv_cost` gives the same counts from shapes alone, and
:func:`recorded_conv_costs` for the convolutions jnn traced (``jnn.layers.conv.conv_plans``).

Also here: the two networks of the assignment's "1x1 bottleneck" question
(:class:`DirectConv`, :class:`BottleneckConv`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array


class DirectConv(nn.Module):
    """Network 1: (N, 28, 28, 192) -> conv 5x5 same, 32 filters -> (N, 28, 28, 32)."""

    features: int = 32
    kernel: int = 5

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return nn.Conv(self.features, (self.kernel, self.kernel), padding="SAME", name="conv5x5")(x)


class BottleneckConv(nn.Module):
    """Network 2: (N, 28, 28, 192) -> conv 1x1 same, 16 -> conv 5x5 same, 32 -> (N, 28, 28, 32).

    No nonlinearity between the two, as in the question; a ReLU would add one max per element of
    the (28, 28, 16) bottleneck, negligible next to the convolutions.
    """

    bottleneck: int = 16
    features: int = 32
    kernel: int = 5

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = nn.Conv(self.bottleneck, (1, 1), padding="SAME", name="conv1x1")(x)
        return nn.Conv(self.features, (self.kernel, self.kernel), padding="SAME", name="conv5x5")(x)


@dataclass(frozen=True)
class ConvCost:
    """One ``nn.Conv`` call as it ran. Shapes are per example (batch axis dropped)."""

    name: str
    input_shape: tuple[int, ...]  # (H, W, C_in)
    output_shape: tuple[int, ...]  # (H_out, W_out, C_out)
    kernel_shape: tuple[int, ...]  # (kh, kw, C_in / groups, C_out)
    params: int
    macs: int
    valid_macs: int | None  # None where the padding mode is not modelled (e.g. CIRCULAR)
    bias_adds: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def numpy_init(model: nn.Module, x: jax.Array, seed: int = 0) -> dict[str, Any]:
    """Variables with the model's own pytree (from ``jax.eval_shape(model.init)``), filled with
    numpy draws: kernels N(0, 1/fan_in), zero biases. Values do not change any count or the
    speed; this just skips compiling Flax's PRNG initialisers."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)

    def fill(path: tuple, s: jax.ShapeDtypeStruct) -> jax.Array:
        if path[-1].key == "bias":
            return jnp.zeros(s.shape, s.dtype)
        fan_in = math.prod(s.shape[:-1])
        return jnp.asarray(rng.standard_normal(s.shape) / math.sqrt(fan_in), s.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def count_params(tree: Any) -> int:
    """Number of scalars in a param pytree (e.g. ``variables["params"]``)."""
    return sum(int(math.prod(jnp.shape(leaf))) for leaf in jax.tree.leaves(tree))


def _explicit_pads(
    padding: Any, in_sizes: Sequence[int], window: Sequence[int], strides: Sequence[int]
) -> list[tuple[int, int]] | None:
    """Flax's padding argument as explicit (lo, hi) pairs per spatial dim; None if unmodelled."""
    n = len(in_sizes)
    if isinstance(padding, str):
        if padding.upper() in ("SAME", "VALID", "SAME_LOWER"):
            return [
                (lo, hi) for lo, hi in jax.lax.padtype_to_pads(in_sizes, window, strides, padding)
            ]
        return None  # CIRCULAR / CAUSAL / REFLECT pad with jnp.pad before a VALID conv
    if isinstance(padding, int):
        return [(padding, padding)] * n
    pads = list(padding)
    if all(isinstance(p, int) for p in pads):
        return [(p, p) for p in pads]
    return [(int(lo), int(hi)) for lo, hi in pads]


def _valid_taps(size: int, out: int, k: int, stride: int, dilation: int, lo: int) -> int:
    """Pairs (output position, kernel tap) along one dim whose input index is not padding."""
    return sum(
        1 for o in range(out) for t in range(k) if 0 <= o * stride + t * dilation - lo < size
    )


def _tuple(v: Any, n: int) -> tuple[int, ...]:
    if v is None:
        return (1,) * n
    if isinstance(v, int):
        return (v,) * n
    return tuple(int(x) for x in v)


def conv_layer_costs(
    model: nn.Module, variables: Any, x: Array, **apply_kwargs: Any
) -> tuple[Array, list[ConvCost]]:
    """Run ``model.apply(variables, x)`` (jitted) and cost every ``nn.Conv`` call.

    x: (N, H, W, C) NHWC. Returns the model output and one :class:`ConvCost` per conv call, in
    call order. Counts come from the shapes the convs actually saw and from the layer's own
    params, not from the layer's constructor arguments.
    """
    calls: list[tuple[nn.Conv, tuple[int, ...], tuple[int, ...]]] = []

    def interceptor(next_fun: Callable, args: tuple, kwargs: dict, context: Any) -> Any:
        out = next_fun(*args, **kwargs)
        if isinstance(context.module, nn.Conv) and context.method_name == "__call__":
            calls.append((context.module, tuple(args[0].shape), tuple(out.shape)))
        return out

    def forward(variables: Any, x: Array) -> Array:
        with nn.intercept_methods(interceptor):  # records each conv while jit traces
            out = model.apply(variables, x, **apply_kwargs)
        # Flax types apply() as Any | (Any, variables); the pair comes only with ``mutable=``.
        return cast(Array, out)

    y = jax.jit(forward)(variables, x)

    params = variables["params"]
    return y, [_conv_cost(module, params, i, o) for module, i, o in calls]


def _conv_cost(
    module: nn.Conv, params: Any, in_shape: tuple[int, ...], out_shape: tuple[int, ...]
) -> ConvCost:
    """The cost of one recorded conv call: (N, *spatial, C) input and output shapes and the
    conv's own params (found by its module path), padding and dilation from the module."""
    layer = params
    for part in module.path:  # the conv's own subtree of the param pytree
        layer = layer[part]
    kernel = tuple(int(d) for d in jnp.shape(layer["kernel"]))
    n_sp = len(kernel) - 2
    in_sp, out_sp = in_shape[-n_sp - 1 : -1], out_shape[-n_sp - 1 : -1]
    c_out = out_shape[-1]
    taps_per_out = math.prod(kernel[:-1])  # kh * kw * C_in/groups
    strides = _tuple(module.strides, n_sp)
    dil = _tuple(module.kernel_dilation, n_sp)
    window = [(k - 1) * d + 1 for k, d in zip(kernel[:n_sp], dil)]
    pads = _explicit_pads(module.padding, in_sp, window, strides)
    valid = None
    if pads is not None and _tuple(module.input_dilation, n_sp) == (1,) * n_sp:
        valid_taps = math.prod(
            _valid_taps(s, o, k, st, d, lo)
            for s, o, k, st, d, (lo, _) in zip(in_sp, out_sp, kernel, strides, dil, pads)
        )
        valid = valid_taps * kernel[-2] * c_out
    return ConvCost(
        name="/".join(module.path),
        input_shape=tuple(in_shape[1:]),
        output_shape=tuple(out_shape[1:]),
        kernel_shape=kernel,
        params=count_params(layer),
        macs=math.prod(out_sp) * c_out * taps_per_out,
        valid_macs=valid,
        bias_adds=math.prod(out_shape[-n_sp - 1 :]) if "bias" in layer else 0,
    )


def shape_conv_cost(
    name: str,
    input_shape: Sequence[int],
    output_shape: Sequence[int],
    kernel_shape: Sequence[int],
    strides: Sequence[int],
    pads: Sequence[tuple[int, int]],
    bias: bool = True,
) -> ConvCost:
    """The :class:`ConvCost` of one 2-D convolution from its per-example shapes ((H, W, C_in) in,
    (H', W', C_out) out, kernel (kh, kw, C_in, C_out)), strides and explicit (lo, hi) pads: the
    same counts as for a Flax ``nn.Conv`` (no groups, no dilation), for jnn's own convolutions."""
    kernel = tuple(int(d) for d in kernel_shape)
    out_sp = tuple(int(d) for d in output_shape[:-1])
    valid_taps = math.prod(
        _valid_taps(int(s), o, k, int(st), 1, int(lo))
        for s, o, k, st, (lo, _) in zip(input_shape[:-1], out_sp, kernel, strides, pads)
    )
    c_out = int(output_shape[-1])
    return ConvCost(
        name=name,
        input_shape=tuple(int(d) for d in input_shape),
        output_shape=(*out_sp, c_out),
        kernel_shape=kernel,
        params=math.prod(kernel) + (c_out if bias else 0),
        macs=math.prod(out_sp) * c_out * math.prod(kernel[:-1]),
        valid_macs=valid_taps * kernel[-2] * c_out,
        bias_adds=math.prod(out_sp) * c_out if bias else 0,
    )


def recorded_conv_costs(records: Sequence[dict[str, Any]], bias: bool = True) -> list[ConvCost]:
    """One :class:`ConvCost` per record of ``jnn.layers.conv.record_plans`` / ``conv_plans``
    (jnn ``Conv2D`` layers and the VGG16 3x3 convs, which Flax's interceptor cannot see)."""
    return [
        shape_conv_cost(
            r["layer"],
            r["input_shape"],
            r["output_shape"],
            r["kernel_shape"],
            r["strides"],
            r["pads"],
            bias=bias,
        )
        for r in records
    ]


def compiled_flops(compiled: jax.stages.Compiled) -> float:
    """FLOPs XLA's cost model reports for a compiled computation.

    ``Compiled.cost_analysis()`` returns a dict in recent JAX and a list with one dict per
    computation in older versions; both are handled (the list's entries are summed).
    """
    analysis = compiled.cost_analysis()
    if analysis is None:
        raise ValueError("this backend's compiler gives no cost analysis")
    if isinstance(analysis, dict):
        analysis = [analysis]
    return float(sum(a.get("flops", 0.0) for a in analysis))


def xla_flops(fn: Callable, *args: Any) -> float:
    """FLOPs XLA's cost model reports for ``jax.jit(fn)(*args)`` after compilation."""
    return compiled_flops(jax.jit(fn).lower(*args).compile())
