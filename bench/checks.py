"""Checks of the hand-written flags of ``bench.scaling``, the one measurement command that still
parses with argparse (the others' flags come from their config declarations,
``experiments.lab``). Each returns the value or raises a one-line
:class:`jnn.errors.InputError` naming the flag."""

from __future__ import annotations

from collections.abc import Sequence

from jnn import config
from jnn.errors import InputError


def positive_int(value: int, flag: str, *, maximum: int | None = None) -> int:
    """``value`` if 1 <= value <= maximum, else an InputError naming ``flag``."""
    if value < 1:
        raise InputError(f"{flag} must be a positive integer, got {value}")
    if maximum is not None and value > maximum:
        raise InputError(f"{flag} must be at most {maximum:,}, got {value:,}")
    return value


def distinct(values: Sequence, flag: str) -> tuple:
    """``values`` as a tuple if no item repeats (a repeated count or name would time the same
    case twice and report it twice), else an InputError naming the repeated items."""
    try:
        config.distinct(values, "values")
    except config.ConfigError as err:  # the same message, naming this command's flag
        raise InputError(err.render(lambda _: flag)) from None
    return tuple(values)
