"""Checks of the measurement commands' hand-written flags (bench's CLIs parse with argparse; the
experiments' flags come from their config declarations, ``experiments.lab``). Each returns the
value or raises a one-line :class:`jnn.errors.InputError` naming the flag."""

from __future__ import annotations

from collections.abc import Sequence

from jnn import config
from jnn.config import MAX_SEED
from jnn.errors import InputError


def positive_int(value: int, flag: str, *, maximum: int | None = None) -> int:
    """``value`` if 1 <= value <= maximum, else an InputError naming ``flag``."""
    if value < 1:
        raise InputError(f"{flag} must be a positive integer, got {value}")
    if maximum is not None and value > maximum:
        raise InputError(f"{flag} must be at most {maximum:,}, got {value:,}")
    return value


def seed(value: int, flag: str = "--seed") -> int:
    """A seed jax.random.key takes without wrapping: 0 <= value < 2**32."""
    if not 0 <= value <= MAX_SEED:
        raise InputError(f"{flag} must be in [0, {MAX_SEED}], got {value}")
    return value


def choice(value: str, options: Sequence[str], flag: str) -> str:
    """``value`` if it is one of ``options``, else an InputError listing them."""
    if value not in options:
        raise InputError(f"{flag} must be one of {', '.join(options)}, got {value!r}")
    return value


def distinct(values: Sequence, flag: str) -> tuple:
    """``values`` as a tuple if no item repeats (a repeated count or name would time the same
    case twice and report it twice), else an InputError naming the repeated items."""
    try:
        config.distinct(values, "values")
    except config.ConfigError as err:  # the same message, naming this command's flag
        raise InputError(err.render(lambda _: flag)) from None
    return tuple(values)
