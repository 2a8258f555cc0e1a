"""The two networks of the assignment's "1x1 bottleneck" question built from jnn's own Conv2D
(the Flax versions, kept as a cross-check in the tests, are :class:`jnn.conv_cost.DirectConv` /
:class:`jnn.conv_cost.BottleneckConv`).

    layers = direct_conv_layers()            # [Conv2D(32, 5)]              on (28, 28, 192)
    layers = bottleneck_conv_layers()        # [Conv2D(16, 1), Conv2D(32, 5)]
    costs = conv_costs(layers, (28, 28, 192))  # per conv: shapes, params, MACs per example
    params = numpy_params(layers, (28, 28, 192), seed=0)  # N(0, 1/fan_in) kernels, zero biases

Counts come from the layers themselves. Shapes, params and MACs from the shapes ``init``
returns (``jax.eval_shape``: nothing is drawn): params = kernel + bias sizes; MACs =
H_out * W_out * C_out * kh * kw * C_in, every kernel tap counted, including taps on the zero
padding (the textbook count). ``valid_macs`` leaves out the taps on padding: it is read off the
layer's own forward run on an all-ones input with an all-ones kernel (each output is then the
number of its non-padding taps times C_in), so whatever padding and strides the layer uses are
the ones counted. ``bias_adds``: one add per output element. XLA's CPU cost model counts a
convolution as ``2 * valid_macs + bias_adds`` FLOPs (the tests check it).

:func:`bottleneck_costs` answers the question: both :data:`NETWORKS` built, compiled and run on a
batch, with the counts above per network, XLA's own FLOP count of the compiled forward, a
measured forward time (interleaved repetitions, :mod:`jnn.timing`) and the network 1 / network 2
ratios of each.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jnn import timing
from jnn.conv_cost import compiled_flops
from jnn.core import Layer, Shape, serial
from jnn.errors import InputError
from jnn.layers import Conv2D

INPUT_SHAPE = (28, 28, 192)


def direct_conv_layers(features: int = 32, kernel: int = 5) -> list[Layer]:
    """Network 1: one SAME conv, kernel x kernel, ``features`` filters."""
    return [Conv2D(features, kernel, padding="SAME", init="glorot")]


def bottleneck_conv_layers(
    bottleneck: int = 16, features: int = 32, kernel: int = 5
) -> list[Layer]:
    """Network 2: a 1x1 conv down to ``bottleneck`` channels, then the kernel x kernel conv (no
    nonlinearity between them, as in the question)."""
    return [
        Conv2D(bottleneck, 1, padding="SAME", init="glorot"),
        Conv2D(features, kernel, padding="SAME", init="glorot"),
    ]


def as_model(layers: Sequence[Layer]) -> Layer:
    """The layers composed with :func:`jnn.core.serial`."""
    return serial(*layers)


def conv_costs(layers: Sequence[Layer], input_shape: Shape = INPUT_SHAPE) -> list[dict[str, Any]]:
    """Per layer with a 4-D kernel ``w`` (kh, kw, C_in, C_out): input/output shapes (per example),
    kernel shape, params, MACs, padding-free MACs and bias adds, for each layer in turn."""
    costs, shape = [], tuple(input_shape)
    for layer in layers:
        out, params, _ = _init_shapes(layer, shape)
        kernel = tuple(params["w"].shape) if isinstance(params, dict) and "w" in params else ()
        if len(kernel) == 4:
            costs.append({
                "name": layer.name,
                "input_shape": shape,
                "output_shape": out,
                "kernel_shape": kernel,
                "params": sum(math.prod(p.shape) for p in jax.tree.leaves(params)),
                "macs": math.prod(out[:2]) * out[2] * math.prod(kernel[:3]),
                "valid_macs": valid_macs(layer, shape, params),
                "bias_adds": math.prod(out) if "b" in params else 0,
            })  # fmt: skip
        shape = out
    return costs


def valid_macs(layer: Layer, input_shape: Shape, param_shapes: Any) -> int:
    """Multiply-accumulates per example on taps that land inside the input (not on padding):
    the layer's forward on ones with a ones kernel and no bias, summed exactly in int64."""
    ones = {k: jnp.ones(v.shape, v.dtype) for k, v in param_shapes.items()}
    if "b" in ones:
        ones["b"] = jnp.zeros_like(ones["b"])
    x = jnp.ones((1, *input_shape), jnp.float32)
    y = layer.forward(ones, (), x)[0]  # every entry a small integer: exact in float32
    return int(np.rint(np.asarray(y, np.float64)).astype(np.int64).sum())


def numpy_params(layers: Sequence[Layer], input_shape: Shape = INPUT_SHAPE, seed: int = 0) -> tuple:
    """Params for ``as_model(layers)`` drawn with numpy (no PRNG compile): kernels N(0, 1/fan_in),
    biases zero. The values change no count or speed; they only have to be real numbers."""
    rng, shape, params = np.random.default_rng(seed), tuple(input_shape), []
    for layer in layers:
        out, shapes, _ = _init_shapes(layer, shape)
        fill = {}
        for k, v in shapes.items() if isinstance(shapes, dict) else ():
            fan_in = math.prod(v.shape[:-1])
            draw = rng.standard_normal(v.shape) / math.sqrt(fan_in) if k == "w" else 0.0
            fill[k] = jnp.asarray(np.broadcast_to(draw, v.shape), v.dtype)
        params.append(fill if isinstance(shapes, dict) else shapes)
        shape = out
    return tuple(params)


def _init_shapes(layer: Layer, shape: Shape) -> tuple[Shape, Any, Any]:
    """``layer.init``'s (output shape, params, state) as shapes only (no PRNG draw is run)."""
    box: dict[str, Shape] = {}

    def init(key: jax.Array) -> tuple[Any, Any]:
        out, params, state = layer.init(key, shape)
        box["out"] = tuple(int(d) for d in out)
        return params, state

    params, state = jax.eval_shape(init, jax.random.key(0))
    return box["out"], params, state


NETWORKS: dict[str, Callable[[], list[Layer]]] = {
    "Network 1 (5x5, 32)": direct_conv_layers,
    "Network 2 (1x1, 16 -> 5x5, 32)": bottleneck_conv_layers,
}


def network_costs(
    layers: Sequence[Layer], xb: jax.Array, seed: int = 0
) -> tuple[dict[str, Any], Callable[[jax.Array], jax.Array]]:
    """One network's counts per example for a batch ``xb`` (B, H, W, C), and its compiled
    forward with the params bound. ``xla_flops`` is XLA's count for the batch divided by B (it
    is linear in the batch); ``xla_flops_is_2valid_macs_plus_bias`` says whether it is exactly
    2 * padding-free MACs + bias adds (true of XLA's CPU cost model)."""
    if xb.ndim != 4:
        raise InputError(f"xb must be a batch (B, H, W, C), got shape {tuple(xb.shape)}")
    shape = tuple(int(d) for d in xb.shape[1:])
    model, params = as_model(layers), numpy_params(layers, shape, seed)
    states = ((),) * len(layers)
    forward = jax.jit(lambda p, x: model.forward(p, states, x)[0])
    compiled = forward.lower(params, xb).compile()
    y = compiled(params, xb)
    costs = [
        dict(c, name=f"conv{c['kernel_shape'][0]}x{c['kernel_shape'][1]}")
        for c in conv_costs(layers, shape)
    ]
    flops = compiled_flops(compiled) / xb.shape[0]
    macs, valid, bias = (sum(c[k] for c in costs) for k in ("macs", "valid_macs", "bias_adds"))
    net = {
        "model": model.name,
        "output_shape": tuple(y.shape[1:]),
        "batch_output_shape": tuple(y.shape),
        "params": sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params)),
        "macs": macs,
        "valid_macs": valid,
        "bias_adds": bias,
        "xla_flops": flops,
        "xla_flops_over_2macs": flops / (2 * macs),
        "xla_flops_is_2valid_macs_plus_bias": flops == 2 * valid + bias,
        "layers": costs,
    }
    return net, partial(compiled, params)


def _block(forward: Callable[[jax.Array], jax.Array], xb: jax.Array) -> None:
    """One forward pass, waited for (so the timer measures the work, not its dispatch)."""
    forward(xb).block_until_ready()


def bottleneck_costs(seed: int = 0, batch: int = 8, repeats: int = 7) -> dict[str, Any]:
    """Both :data:`NETWORKS` on a random (batch, 28, 28, 192) input: :func:`network_costs` per
    network plus ``forward_median_s``, the median of ``repeats`` interleaved forward passes of
    ``batch`` after two warm-up rounds, and ``ratio_network1_over_network2`` of params, MACs,
    padding-free MACs, XLA FLOPs and forward time. Counts are exact; times depend on the machine.
    """
    for name, value, low in (("seed", seed, 0), ("batch", batch, 1), ("repeats", repeats, 1)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise InputError(f"{name} must be an integer >= {low}, got {value!r}")
    rng = np.random.default_rng(seed)
    xb = jnp.asarray(rng.standard_normal((batch, *INPUT_SHAPE)), jnp.float32)
    nets, fns = {}, {}
    for name, build in NETWORKS.items():
        nets[name], forward = network_costs(build(), xb, seed)
        fns[name] = timing.repeated(partial(_block, forward, xb))
    for name, t in timing.time_interleaved(fns, reps=repeats, warmup=2).items():
        nets[name]["forward_median_s"] = t["median_s"]
    n1, n2 = (nets[name] for name in NETWORKS)
    ratios = {
        key: n1[key] / n2[key]
        for key in ("params", "macs", "valid_macs", "xla_flops", "forward_median_s")
    }
    return {
        "input_shape": INPUT_SHAPE,
        "batch": batch,
        "repeats": repeats,
        "networks": nets,
        "ratio_network1_over_network2": ratios,
    }
