"""Weight initializers: ``init(key, shape, dtype=float32, ...) -> array``.

Shapes are ``(fan_in, fan_out)`` for dense kernels. The first three are the ones the course asked
for; He and Glorot are the usual scale-aware choices.

| name    | distribution                                   | default scale                   |
|---------|------------------------------------------------|---------------------------------|
| zero    | all zeros                                      | -                               |
| random  | uniform(-limit, limit)                         | limit = 0.05 (Keras' default)   |
| normal  | normal(0, stddev^2)                            | stddev = 0.01 (``0.01*randn``)  |
| he      | normal(0, 2 / fan_in)                          | stddev = sqrt(2 / fan_in)       |
| glorot  | uniform(-limit, limit)                         | limit = sqrt(6/(fan_in+fan_out))|
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array

from jnn.errors import InputError

Initializer = Callable[..., Array]

NORMAL_DEFAULT_STDDEV = 0.01
RANDOM_DEFAULT_LIMIT = 0.05


def _fans(shape: Sequence[int]) -> tuple[int, int]:
    if len(shape) < 2:
        raise InputError(f"weight shape must have at least 2 dims (fan_in, fan_out), got {shape}")
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def zero(key: Array, shape: Sequence[int], dtype: Any = jnp.float32) -> Array:
    """All zeros. Every unit in a layer then gets the same gradient: the network cannot break
    symmetry, which is the lesson this initializer is there to show."""
    del key
    return jnp.zeros(shape, dtype)


def random_uniform(
    key: Array, shape: Sequence[int], dtype: Any = jnp.float32, limit: float = RANDOM_DEFAULT_LIMIT
) -> Array:
    """Uniform in [-limit, limit)."""
    return jax.random.uniform(key, shape, dtype, minval=-limit, maxval=limit)


def normal(
    key: Array,
    shape: Sequence[int],
    dtype: Any = jnp.float32,
    stddev: float = NORMAL_DEFAULT_STDDEV,
) -> Array:
    """Normal(0, stddev^2); the default stddev 0.01 is the classic ``0.01 * np.random.randn``."""
    return stddev * jax.random.normal(key, shape, dtype)


def he_normal(key: Array, shape: Sequence[int], dtype: Any = jnp.float32) -> Array:
    """Normal(0, 2 / fan_in) (He et al. 2015): keeps ReLU activations' variance constant."""
    fan_in, _ = _fans(shape)
    return math.sqrt(2.0 / fan_in) * jax.random.normal(key, shape, dtype)


def glorot_uniform(key: Array, shape: Sequence[int], dtype: Any = jnp.float32) -> Array:
    """Uniform(-l, l) with l = sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio 2010)."""
    fan_in, fan_out = _fans(shape)
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return jax.random.uniform(key, shape, dtype, minval=-limit, maxval=limit)


INITIALIZERS: dict[str, Initializer] = {
    "zero": zero,
    "random": random_uniform,
    "normal": normal,
    "he": he_normal,
    "glorot": glorot_uniform,
}


def get_initializer(name: str) -> Initializer:
    """Look an initializer up by name; unknown names raise a clear ValueError."""
    key = str(name).lower()
    if key not in INITIALIZERS:
        raise InputError(
            f"unknown initializer {name!r}: choose one of {', '.join(sorted(INITIALIZERS))}"
        )
    return INITIALIZERS[key]
