"""The two networks of the assignment's "1x1 bottleneck" question built from jnn's own Conv2D
(the Flax versions are :class:`jnn.conv_cost.DirectConv` / :class:`jnn.conv_cost.BottleneckConv`).

    layers = direct_conv_layers()            # [Conv2D(32, 5)]              on (28, 28, 192)
    layers = bottleneck_conv_layers()        # [Conv2D(16, 1), Conv2D(32, 5)]
    costs = conv_costs(layers, (28, 28, 192))  # per conv: shapes, params, MACs per example

Counts come from the shapes ``init`` returns (``jax.eval_shape``: nothing is drawn or run):
params = kernel + bias sizes; MACs = H_out * W_out * C_out * kh * kw * C_in, every kernel tap
counted, including taps on the zero padding (the textbook count, as ``jnn.conv_cost.macs``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax

from jnn.core import Layer, Shape, serial
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
    kernel shape, params and MACs, read off each layer's ``init`` shapes in turn."""
    costs, shape = [], tuple(input_shape)
    for layer in layers:
        out, params, _ = _init_shapes(layer, shape)
        kernel = tuple(params["w"].shape) if isinstance(params, dict) and "w" in params else ()
        if len(kernel) == 4:
            n_params = sum(math.prod(p.shape) for p in jax.tree.leaves(params))
            macs = math.prod(out[:2]) * out[2] * math.prod(kernel[:3])
            costs.append({"name": layer.name, "input_shape": shape, "output_shape": out,
                          "kernel_shape": kernel, "params": n_params, "macs": macs})  # fmt: skip
        shape = out
    return costs


def _init_shapes(layer: Layer, shape: Shape) -> tuple[Shape, Any, Any]:
    """``layer.init``'s (output shape, params, state) as shapes only (no PRNG draw is run)."""
    box: dict[str, Shape] = {}

    def init(key: jax.Array) -> tuple[Any, Any]:
        out, params, state = layer.init(key, shape)
        box["out"] = tuple(int(d) for d in out)
        return params, state

    params, state = jax.eval_shape(init, jax.random.key(0))
    return box["out"], params, state
