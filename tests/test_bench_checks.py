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
    ],
)
def test_bad_values_name_the_flag(check, args, kwargs, message):
    with pytest.raises(InputError) as err:
        check(*args, **kwargs)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_good_values_pass_through():
    assert checks.positive_int(3, "--epochs", maximum=3) == 3
