"""A multilayer perceptron of any depth as a ``jnn.core`` model with a hand-written backward.

``sizes = (784, 256, 128, 64, 10)`` builds dense layers 784->256->128->64->10. Every hidden layer
is followed by the named activation; the last layer emits logits that go through a fused
softmax + cross-entropy, whose backward is ``(p - t) / B``.

    model = mlp(sizes, "relu", init="normal")               # a serial Layer value
    _, params, state = model.init(key, (784,))              # params: tuple, {"w", "b"} per Dense
    (loss, logits, state), grads = value_and_grad(model)(params, state, x, y)   # jnn.core
    dense_params(params)                                    # [{"w", "b"}, ...] for numpy/torch

Targets ``y`` are int labels (B,) or probability rows (B, C). Training: ``jnn.train``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array

from jnn.activations import activation_layer, get_activation
from jnn.core import Layer, Shape, serial
from jnn.errors import InputError
from jnn.initializers import get_initializer
from jnn.layers.dense import Dense, DenseParams, dense_init

MLPParams = list[DenseParams]


def init_mlp(
    key: Array, sizes: Sequence[int], init: str = "normal", dtype: Any = jnp.float32, **init_kwargs
) -> MLPParams:
    """One dense layer per consecutive pair in ``sizes``; kernels from ``init``, biases zero."""
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2:
        raise InputError(f"an MLP needs at least an input and an output size, got {sizes}")
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        dense_init(k, n_in, n_out, init, dtype, **init_kwargs)
        for k, n_in, n_out in zip(keys, sizes[:-1], sizes[1:])
    ]


def mlp(
    sizes: Sequence[int],
    activation: str = "relu",
    init: str = "normal",
    dtype: Any = jnp.float32,
    **init_kwargs: Any,
) -> Layer:
    """The study's network as a value: ``serial(Dense(256), act, Dense(128), act, Dense(64), act,
    Dense(10))`` for ``sizes = (784, 256, 128, 64, 10)``; logits out (the loss fuses the softmax).

    ``init`` keeps jnn's original key convention: the model key is split once per *dense* layer
    (``split(key, 4)``), not once per layer as ``serial`` would (``split(key, 7)``), so the study's
    initial weights, checkpoints and results are bit-identical to those of earlier releases.
    Params: a tuple with ``{"w", "b"}`` at the dense positions and ``()`` at the activations.
    """
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) < 2 or min(sizes) <= 0:
        raise InputError(f"an MLP needs positive input and output sizes, got {sizes}")
    get_activation(activation)
    get_initializer(init)
    layers: list[Layer] = []
    for i, width in enumerate(sizes[1:]):
        if i:
            layers.append(activation_layer(activation))
        layers.append(Dense(width, init, dtype, **init_kwargs))
    model = serial(*layers, name=f"mlp{sizes} {activation}")

    def init_fn(key: Array, input_shape: Shape) -> tuple[Shape, Any, Any]:
        if tuple(input_shape) != sizes[:1]:
            raise InputError(f"this MLP takes inputs of shape ({sizes[0]},), got {input_shape}")
        dense = init_mlp(key, sizes, init, dtype, **init_kwargs)
        params = tuple(dense[i // 2] if i % 2 == 0 else () for i in range(len(layers)))
        return sizes[-1:], params, ((),) * len(layers)

    return model._replace(init=init_fn)


def dense_params(params: Any) -> list[DenseParams]:
    """The ``{"w", "b"}`` entries of a serial model's params, in order (for numpy/torch copies)."""
    return [p for p in params if isinstance(p, dict) and set(p) == {"w", "b"}]
