"""A multilayer perceptron of any depth with a hand-written backward pass.

``sizes = [784, 256, 128, 64, 10]`` builds dense layers 784->256->128->64->10. Every hidden layer
is followed by the named activation; the last layer emits logits that go through a fused
softmax + cross-entropy, whose backward is ``(p - y) / B``.

    params = init_mlp(key, sizes, init="normal")          # list of {"w", "b"} dicts
    loss, grads = loss_and_grad(params, x, y, "relu")     # manual backprop
    loss, grads = autodiff_loss_and_grad(params, x, y, "relu")   # jax.grad, for checking

``activation`` is a Python string: mark it static when you jit (``static_argnames``).
Targets ``y`` are int labels (B,) or probability rows (B, C).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array

from jnn.activations import activation_layer, get_activation
from jnn.core import Layer, Shape, serial
from jnn.initializers import get_initializer
from jnn.layers.dense import Dense, DenseParams, dense_backward, dense_forward, dense_init
from jnn.losses import one_hot, softmax_cross_entropy, softmax_cross_entropy_backward

MLPParams = list[DenseParams]

STUDY_SIZES = (784, 256, 128, 64, 10)


def init_mlp(
    key: Array, sizes: Sequence[int], init: str = "normal", dtype: Any = jnp.float32, **init_kwargs
) -> MLPParams:
    """One dense layer per consecutive pair in ``sizes``; kernels from ``init``, biases zero."""
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2:
        raise ValueError(f"an MLP needs at least an input and an output size, got {sizes}")
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        dense_init(k, n_in, n_out, init, dtype, **init_kwargs)
        for k, n_in, n_out in zip(keys, sizes[:-1], sizes[1:])
    ]


def mlp(
    sizes: Sequence[int] = STUDY_SIZES,
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
        raise ValueError(f"an MLP needs positive input and output sizes, got {sizes}")
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
            raise ValueError(f"this MLP takes inputs of shape ({sizes[0]},), got {input_shape}")
        dense = init_mlp(key, sizes, init, dtype, **init_kwargs)
        params = tuple(dense[i // 2] if i % 2 == 0 else () for i in range(len(layers)))
        return sizes[-1:], params, ((),) * len(layers)

    return model._replace(init=init_fn)


def dense_params(params: Any) -> list[DenseParams]:
    """The ``{"w", "b"}`` entries of a serial model's params, in order (for numpy/torch copies)."""
    return [p for p in params if isinstance(p, dict) and set(p) == {"w", "b"}]


def _check_input(params: MLPParams, x: Array) -> None:
    expected = params[0]["w"].shape[0]
    if x.ndim != 2 or x.shape[1] != expected:
        raise ValueError(
            f"MLP input must have shape (batch, {expected}), got {tuple(x.shape)}; "
            "flatten images first (e.g. jnn.data.to_float(images, flatten=True))"
        )


def _targets(y: Array, num_classes: int, dtype: Any) -> Array:
    return one_hot(y, num_classes, dtype) if y.ndim == 1 else y.astype(dtype)


def mlp_forward(params: MLPParams, x: Array, activation: str) -> tuple[Array, list[Any]]:
    """x: (B, sizes[0]) -> logits (B, sizes[-1]) and the per-layer caches for the backward."""
    _check_input(params, x)
    act = get_activation(activation)
    caches = []
    h = x
    for i, layer in enumerate(params):
        h, dense_cache = dense_forward(layer, h)
        act_cache = None
        if i < len(params) - 1:
            h, act_cache = act.forward(h)
        caches.append((dense_cache, act_cache))
    return h, caches


def mlp_backward(
    params: MLPParams, caches: list[Any], dlogits: Array, activation: str
) -> MLPParams:
    """Walk the layers in reverse; returns grads shaped like ``params``."""
    act = get_activation(activation)
    grads: MLPParams = [None] * len(params)  # type: ignore[list-item]
    d = dlogits
    for i in reversed(range(len(params))):
        dense_cache, act_cache = caches[i]
        if i < len(params) - 1:
            d = act.backward(act_cache, d)
        grads[i], d = dense_backward(params[i], dense_cache, d)
    return grads


def mlp_apply(params: MLPParams, x: Array, activation: str) -> Array:
    """Forward only: x (B, sizes[0]) -> logits (B, sizes[-1])."""
    return mlp_forward(params, x, activation)[0]


def manual_value_and_grad(
    params: MLPParams, x: Array, y: Array, activation: str
) -> tuple[tuple[Array, Array], MLPParams]:
    """((mean loss, logits (B, C)), grads) by manual backprop; the logits come for free."""
    logits, caches = mlp_forward(params, x, activation)
    loss, ce_cache = softmax_cross_entropy(logits, _targets(y, logits.shape[-1], logits.dtype))
    grads = mlp_backward(params, caches, softmax_cross_entropy_backward(ce_cache), activation)
    return (loss, logits), grads


def loss_and_grad(
    params: MLPParams, x: Array, y: Array, activation: str
) -> tuple[Array, MLPParams]:
    """Mean softmax cross-entropy and its gradient by manual backprop."""
    (value, _), grads = manual_value_and_grad(params, x, y, activation)
    return value, grads


def _loss_with_logits(
    params: MLPParams, x: Array, y: Array, activation: str
) -> tuple[Array, Array]:
    logits = mlp_apply(params, x, activation)
    return softmax_cross_entropy(logits, _targets(y, logits.shape[-1], logits.dtype))[0], logits


def loss(params: MLPParams, x: Array, y: Array, activation: str) -> Array:
    """Mean softmax cross-entropy of the MLP (the function jax.grad differentiates)."""
    return _loss_with_logits(params, x, y, activation)[0]


def autodiff_value_and_grad(
    params: MLPParams, x: Array, y: Array, activation: str
) -> tuple[tuple[Array, Array], MLPParams]:
    """((mean loss, logits), grads) through ``jax.value_and_grad``: the reference."""
    return jax.value_and_grad(_loss_with_logits, has_aux=True)(params, x, y, activation)


def autodiff_loss_and_grad(
    params: MLPParams, x: Array, y: Array, activation: str
) -> tuple[Array, MLPParams]:
    """The reference: ``jax.value_and_grad`` of :func:`loss`."""
    return jax.value_and_grad(loss)(params, x, y, activation)


# Both return ((loss, logits), grads); training picks one by name.
GRADIENT_METHODS = {"manual": manual_value_and_grad, "autodiff": autodiff_value_and_grad}
