"""The layer protocol: a layer is a value holding three pure functions, and ``serial`` composes.

    init(key, input_shape)                               -> (output_shape, params, state)
    forward(params, state, x, *, key=None, train=False)  -> (y, cache, new_state)
    backward(params, cache, dy)                          -> (dparams, dx)

``input_shape`` and ``output_shape`` are per-example shapes (no batch axis): ``(784,)`` for a
flat image, ``(28, 28, 1)`` for an NHWC one; ``forward`` takes a batch ``x`` of shape
``(B, *input_shape)``. ``params`` and ``state`` are pytrees (``()`` for layers without them);
``state`` holds what a layer updates but never trains (BatchNorm's running averages). ``cache`` is
whatever ``backward`` needs, saved by ``forward`` so the backward never recomputes it.
``backward`` is written by hand in every layer: no ``jax.vjp``, ``jax.grad`` or
``jax.linear_transpose`` inside it. ``dparams`` has the structure of ``params``, so an optax
transformation applies it exactly as it would apply ``jax.grad`` output.

A model is a value::

    model = serial(Dense(256), ReLU, Dense(128), ReLU, Dense(64), ReLU, Dense(10))
    out_shape, params, state = model.init(key, (784,))
    loss_fn = value_and_grad(model)                    # manual backprop + fused softmax-CE
    (loss, logits, state), grads = loss_fn(params, state, x, y, key=key)

As in ``jax.example_libraries.stax``, ``serial`` splits the key once per layer, both in ``init``
and in ``forward`` (so Dropout layers draw independent masks), threads the state through, keeps
every cache and walks the caches in reverse for the backward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from jnn.errors import InputError
from jnn.losses import softmax_cross_entropy, softmax_cross_entropy_backward, targets_for

Shape = tuple[int, ...]
Params = Any
State = Any
Cache = Any


class Layer(NamedTuple):
    """A layer of the protocol above; ``name`` is for messages and summaries only."""

    init: Callable[[Array, Shape], tuple[Shape, Params, State]]
    forward: Callable[..., tuple[Array, Cache, State]]
    backward: Callable[[Params, Cache, Array], tuple[Params, Array]]
    name: str = "layer"


def stateless(
    name: str,
    forward: Callable[[Array], tuple[Array, Cache]],
    backward: Callable[[Cache, Array], Array],
    output_shape: Callable[[Shape], Shape] = lambda shape: shape,
) -> Layer:
    """A layer without params or state from ``y, cache = forward(x)`` and ``dx = backward(cache,
    dy)`` (the activations, Flatten). ``output_shape`` maps the per-example input shape."""

    def init(key: Array, input_shape: Shape) -> tuple[Shape, Params, State]:
        del key
        return tuple(output_shape(tuple(input_shape))), (), ()

    def fwd(params, state, x, *, key=None, train=False):
        del params, key, train
        y, cache = forward(x)
        return y, cache, state

    def bwd(params: Params, cache: Cache, dy: Array) -> tuple[Params, Array]:
        del params
        return (), backward(cache, dy)

    return Layer(init, fwd, bwd, name)


def _split(key: Array | None, n: int) -> list[Array | None]:
    return [None] * n if key is None else list(jax.random.split(key, n))


def serial(*layers: Layer, name: str | None = None) -> Layer:
    """Compose layers in sequence; the result is itself a layer (params and state are tuples with
    one entry per layer, the cache a tuple of the layers' caches)."""
    if not layers:
        raise InputError("serial() needs at least one layer")
    bad = [i for i, layer in enumerate(layers) if not isinstance(layer, Layer)]
    if bad:
        raise TypeError(
            f"serial() takes Layer values; argument {bad[0]} is {type(layers[bad[0]]).__name__} "
            "(did you pass a layer factory such as Dense without calling it, e.g. Dense(10)?)"
        )

    def init(key: Array, input_shape: Shape) -> tuple[Shape, Params, State]:
        params, states, shape = [], [], tuple(input_shape)
        for layer, k in zip(layers, jax.random.split(key, len(layers))):
            shape, p, s = layer.init(k, shape)
            params.append(p)
            states.append(s)
        return shape, tuple(params), tuple(states)

    def check(params: Params, state: State) -> None:  # zip would silently run fewer layers
        if len(params) != len(layers) or len(state) != len(layers):
            raise InputError(
                f"{label} has {len(layers)} layers but got {len(params)} params and "
                f"{len(state)} states; pass the params and state its init returned"
            )

    def forward(params, state, x, *, key=None, train=False):
        check(params, state)
        caches, new_states = [], []
        for layer, p, s, k in zip(layers, params, state, _split(key, len(layers))):
            x, cache, s = layer.forward(p, s, x, key=k, train=train)
            caches.append(cache)
            new_states.append(s)
        return x, tuple(caches), tuple(new_states)

    def backward(params: Params, cache: Cache, dy: Array) -> tuple[Params, Array]:
        grads = [None] * len(layers)
        for i in reversed(range(len(layers))):
            grads[i], dy = layers[i].backward(params[i], cache[i], dy)
        return tuple(grads), dy

    label = name or "serial(" + ", ".join(layer.name for layer in layers) + ")"
    return Layer(init, forward, backward, label)


def apply(model: Layer, params: Params, state: State, x: Array) -> Array:
    """Inference: ``model``'s output for a batch ``x`` with ``train=False`` (no dropout, BatchNorm
    on its running averages); the state is not updated."""
    return model.forward(params, state, x, key=None, train=False)[0]


LossStep = tuple[tuple[Array, Array, State], Params]  # ((loss, logits, new_state), grads)


def value_and_grad(model: Layer, method: str = "manual") -> Callable[..., LossStep]:
    """``fn(params, state, x, y, *, key=None, train=True) -> ((loss, logits, new_state), grads)``
    for the mean softmax cross-entropy of ``model``'s logits (B, C) against ``y``: int labels (B,)
    or target rows (B, C).

    ``method="manual"``: the model's hand-written backward, fed the fused softmax-CE gradient
    ``(p - t) / B``. ``method="autodiff"``: ``jax.value_and_grad`` of the same forward and loss
    (the reference the tests compare against; Dropout draws the same masks from the same key).
    """
    if method not in GRADIENT_METHODS:
        raise InputError(f"gradients must be one of {GRADIENT_METHODS}, got {method!r}")

    def loss_of(params, state, x, y, key, train):
        logits, cache, new_state = model.forward(params, state, x, key=key, train=train)
        loss, ce_cache = softmax_cross_entropy(logits, targets_for(y, logits))
        return loss, (logits, cache, new_state, ce_cache)

    def manual(params, state, x, y, *, key=None, train=True) -> LossStep:
        loss, (logits, cache, new_state, ce_cache) = loss_of(params, state, x, y, key, train)
        grads, _ = model.backward(params, cache, softmax_cross_entropy_backward(ce_cache))
        return (loss, logits, new_state), grads

    def autodiff(params, state, x, y, *, key=None, train=True) -> LossStep:
        def f(p):
            loss, (logits, _, new_state, _) = loss_of(p, state, x, y, key, train)
            return loss, (logits, new_state)

        (loss, (logits, new_state)), grads = jax.value_and_grad(f, has_aux=True)(params)
        return (loss, logits, new_state), grads

    return manual if method == "manual" else autodiff


GRADIENT_METHODS = ("manual", "autodiff")


def count_params(params: Params) -> int:
    """Total number of scalars in a params pytree."""
    return sum(int(jnp.size(leaf)) for leaf in jax.tree.leaves(params))
