"""Configs declared once: fields with their help, and checks whose messages name fields.

    @dataclass(frozen=True)
    class Config:
        epochs: int = option(15, "epochs per model")
        def __post_init__(self) -> None:
            integer(self.epochs, "epochs", 1, 100_000)

``option`` puts the help (and anything else a front end needs) into the field's metadata, so a
command line, its ``--help`` and its checks come from this one declaration
(``experiments.lab``). A check raises :class:`ConfigError`, whose message names fields in
backquotes: ``str()`` shows the field names, :meth:`ConfigError.render` whatever the caller
calls them (a CLI's flags), so the library never names a flag.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import field
from pathlib import Path
from typing import Any

import numpy as np

from jnn.errors import InputError

MAX_SEED = 2**32 - 1  # jax.random.key takes a uint32 seed; a larger one would wrap silently


def option(default: Any, help: str, **meta: Any) -> Any:  # noqa: A002
    """A config field with its one-line ``help`` (and e.g. ``quick=`` the smoke-run value)."""
    return field(default=default, metadata={"help": help, **meta})


class ConfigError(InputError):
    """A config value that cannot work; fields named in backquotes (```epochs` must be``)."""

    def __init__(self, template: str) -> None:
        self.template = template
        super().__init__(re.sub(r"`(\w+)`", r"\1", template))

    def render(self, name: Callable[[str], str]) -> str:
        """The message with every backquoted field written as ``name(field)``."""
        return " ".join(re.sub(r"`(\w+)`", lambda m: name(m.group(1)), self.template).split())


def integer(value: Any, name: str, low: int, high: int | None = None) -> None:
    """``value`` is an int (not a bool) in [low, high]; a ConfigError naming ``name``."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not ok or value < low or (high is not None and value > high):
        bound = f"in [{low}, {high:,}]" if high is not None else f">= {low}"
        raise ConfigError(f"`{name}` must be an integer {bound}, got {value!r}")


def positive(value: Any, name: str) -> None:
    """``value`` is a finite number > 0 (learning rates, scales), also as float32."""
    ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool)
    if not ok or not 0 < value < math.inf:
        raise ConfigError(f"`{name}` must be a positive finite number, got {value!r}")
    check_float32(value, name)


def check_float32(value: float, name: str) -> None:
    """``value`` (a positive finite float) stays positive and finite as float32, the precision
    training computes in: 1e-320 would train at lr 0 and 1e39 at inf, under the given value."""
    with np.errstate(over="ignore"):  # the overflow is what is checked, not a warning to print
        as32 = float(np.float32(value))
    if not 0 < as32 < math.inf:
        raise ConfigError(
            f"`{name}` {value!r} is {as32} in float32, the precision training uses; give a "
            "value between 1e-38 and 3e38"
        )


def choice(value: Any, name: str, options: Sequence[str]) -> None:
    """``value`` is one of ``options``."""
    if value not in options:
        raise ConfigError(f"`{name}` must be one of {', '.join(options)}, got {value!r}")


def distinct(values: Sequence[Any], name: str) -> None:
    """No item of ``values`` repeats: a repeated name or count would run (and report) the same
    thing twice. The ConfigError names the repeated items."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ConfigError(f"`{name}` must be a list or tuple of items, got {values!r}")
    repeated = sorted({str(v) for v in values if list(values).count(v) > 1})
    if repeated:
        raise ConfigError(f"`{name}` lists {', '.join(repeated)} more than once; give each once")


def folder(value: Any, name: str) -> None:
    """``value`` is None or an existing folder."""
    if value is not None and not Path(str(value)).expanduser().is_dir():
        raise ConfigError(f"`{name}` {value} is not a folder; give the one with the files")


def at_most(asked: int | None, there: int, name: str, what: str, where: str) -> None:
    """A ConfigError when ``asked`` (None: all) is more than the ``there`` ``what`` that
    ``where`` has: taking fewer silently would report the asked size for numbers of another."""
    if asked is not None:
        integer(asked, name, 1)
    if asked is not None and asked > there:
        raise ConfigError(
            f"`{name}` asks for {asked:,} {what}, but {where} has {there:,}; give at most that many"
        )


def check_subset(subset: Sequence[int], have: Sequence[int], split: str) -> None:
    """:func:`at_most` for each of a ``subset``'s train, val and test sizes against the split's
    ``have``."""
    for what, asked, there in zip(("training", "validation", "test"), subset, have):
        at_most(asked, there, "subset", f"{what} examples", f"split {split}")
