"""bench's hand-written flag checks: each bad value is one InputError line naming the flag."""

from __future__ import annotations

import pytest

from bench import checks
from jnn.errors import InputError


@pytest.mark.parametrize(
    "check, args, kwargs, message",
    [
        (checks.positive_int, (0, "--epochs"), {}, "--epochs must be a positive integer"),
        (checks.positive_int, (10**12, "--epochs"), {"maximum": 1000}, "--epochs must be at most"),
        (checks.seed, (2**32,), {}, "--seed must be in [0, 4294967295]"),
        (checks.seed, (-1,), {}, "--seed must be in"),
        (checks.choice, ("x", ("a", "b"), "--mode"), {}, "--mode must be one of a, b"),
    ],
)
def test_bad_values_name_the_flag(check, args, kwargs, message):
    with pytest.raises(InputError) as err:
        check(*args, **kwargs)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_good_values_pass_through():
    assert checks.positive_int(3, "--epochs", maximum=3) == 3
    assert checks.seed(2**32 - 1) == 2**32 - 1
    assert checks.choice("a", ("a", "b"), "--mode") == "a"
