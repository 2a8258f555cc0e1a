"""jnn.initializers: shapes, dtypes, and the documented scales, checked statistically."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jnn.initializers import (
    INITIALIZERS,
    NORMAL_DEFAULT_STDDEV,
    RANDOM_DEFAULT_LIMIT,
    get_initializer,
)

NAMES = sorted(INITIALIZERS)
KEY = jax.random.PRNGKey(0)
DTYPES = [jnp.float32, jnp.float64, jnp.bfloat16]
BIG = (512, 1024)  # 524k samples: a sample std is within ~0.2% of the true one (1 sigma)


@pytest.mark.parametrize(
    "shape, dtype",
    [((3, 3, 4, 8), d) for d in DTYPES] + [((1, 1), jnp.float32)],
    ids=lambda v: v.__name__ if isinstance(v, type) else str(v),
)
@pytest.mark.parametrize("name", NAMES)
def test_shape_and_dtype(name, shape, dtype):
    with jax.enable_x64(dtype == jnp.float64):
        w = get_initializer(name)(KEY, shape, dtype)
        assert w.shape == shape and w.dtype == dtype
        assert np.isfinite(np.asarray(w, np.float64)).all()


def test_default_dtype_is_float32():
    for name in NAMES:
        assert get_initializer(name)(KEY, (2, 3)).dtype == jnp.float32


@pytest.mark.parametrize("name", [n for n in NAMES if n != "zero"])
def test_deterministic_in_the_key(name):
    init = get_initializer(name)
    np.testing.assert_array_equal(init(KEY, (4, 6)), init(KEY, (4, 6)))
    assert not np.array_equal(init(KEY, (4, 6)), init(jax.random.PRNGKey(1), (4, 6)))


def test_zero_is_zero():
    np.testing.assert_array_equal(get_initializer("zero")(KEY, (7, 9)), 0.0)


@pytest.mark.parametrize("limit", [None, 0.3])
def test_random_is_uniform_within_its_limit(limit):
    kwargs = {} if limit is None else {"limit": limit}
    limit = RANDOM_DEFAULT_LIMIT if limit is None else limit
    w = np.asarray(get_initializer("random")(KEY, BIG, **kwargs), np.float64)
    assert w.min() >= -limit and w.max() < limit
    assert w.min() < -0.99 * limit and w.max() > 0.99 * limit  # fills the interval
    assert abs(w.std() / (limit / math.sqrt(3)) - 1) < 0.02  # std of U(-l, l) is l / sqrt(3)
    assert abs(w.mean()) < 0.01 * limit


@pytest.mark.parametrize("stddev", [None, 0.5])
def test_normal_std(stddev):
    kwargs = {} if stddev is None else {"stddev": stddev}
    stddev = NORMAL_DEFAULT_STDDEV if stddev is None else stddev
    w = np.asarray(get_initializer("normal")(KEY, BIG, **kwargs), np.float64)
    assert abs(w.std() / stddev - 1) < 0.02
    assert abs(w.mean()) < 0.01 * stddev  # 5 standard errors
    assert abs(np.mean(np.abs(w)) / (stddev * math.sqrt(2 / math.pi)) - 1) < 0.02  # and Gaussian


def test_normal_default_is_the_classic_0_01():
    assert NORMAL_DEFAULT_STDDEV == 0.01 and RANDOM_DEFAULT_LIMIT == 0.05


@pytest.mark.parametrize(
    "shape, fan_in, fan_out",
    [(BIG, 512, 1024), ((1024, 256), 1024, 256), ((3, 3, 64, 128), 9 * 64, 9 * 128)],
    ids=str,
)
def test_he_and_glorot_scales(shape, fan_in, fan_out):
    he = np.asarray(get_initializer("he")(KEY, shape), np.float64)
    assert abs(he.std() / math.sqrt(2 / fan_in) - 1) < 0.02

    limit = math.sqrt(6 / (fan_in + fan_out))
    glorot = np.asarray(get_initializer("glorot")(KEY, shape), np.float64)
    assert glorot.min() >= -limit and glorot.max() < limit
    assert glorot.max() > 0.99 * limit
    assert abs(glorot.var() / (2 / (fan_in + fan_out)) - 1) < 0.04  # Var U(-l, l) = l^2 / 3


@pytest.mark.parametrize("name", ["he", "glorot"])
def test_fan_based_inits_need_a_matrix(name):
    with pytest.raises(ValueError, match="fan_in"):
        get_initializer(name)(KEY, (5,))


def test_get_initializer_is_case_insensitive():
    assert get_initializer("He") is INITIALIZERS["he"]


def test_unknown_initializer_names_the_choices():
    with pytest.raises(ValueError, match="xavier") as excinfo:
        get_initializer("xavier")
    for name in NAMES:
        assert name in str(excinfo.value)
