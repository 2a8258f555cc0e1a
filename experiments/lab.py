"""A command line generated from a config declaration: flags, help, checks, ``--quick``.

An experiment declares its config once, as a frozen dataclass whose fields carry their help
(``jnn.config.option(default, help, ...)``) and whose ``__post_init__`` checks them (raising
``jnn.config.ConfigError``, which names fields in backquotes). From it :func:`parse` builds:

- one flag per field (``save_at`` -> ``--save-at``), typed from the annotation: ``int``,
  ``float``, ``str``, ``bool`` (``--x`` / ``--no-x``), tuples as comma-separated lists (every
  item must parse: ``1,,2`` and ``1,x`` are refused, never dropped), ``X | None`` (``none``);
- the help of each from its declaration, with the default and the ``--quick`` value;
- ``--quick`` (the experiment's smoke-run preset: values for the fields not given),
  ``--config FILE`` (the config of a run.json / results.json: a run reruns exactly, flags
  given as well override it), ``--print-config`` (print the resolved config as JSON, exit 0);
- ``--out`` / ``--overwrite`` / ``--resume`` (the run folder, see ``experiments.harness``).

The config's own checks run once, on the resolved values; their messages are rendered with the
flags' names. What :func:`parse` returns is an :class:`Invocation`: the config and the run
options.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from experiments import harness
from experiments.harness import flag
from jnn.config import ConfigError
from jnn.errors import InputError


class Invocation(NamedTuple):
    """A parsed command line: the checked config and how to run it."""

    config: Any
    out: str
    resume: bool | None  # None: the experiment cannot continue a run (it has no --resume)
    overwrite: bool
    quick: bool


class _Kind(NamedTuple):
    base: type  # int, float, str or bool
    many: bool  # a tuple of them
    optional: bool  # None allowed


def _kind(annotation: Any) -> _Kind:
    """The flag's kind from a field annotation (``tuple[int, ...] | None`` etc.)."""
    args = typing.get_args(annotation)
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        optional, annotation = len(rest) < len(args), rest[0]
    if typing.get_origin(annotation) is tuple:
        return _Kind(typing.get_args(annotation)[0], True, optional)
    return _Kind(annotation, False, optional)


def _one(text: str, base: type, name: str) -> Any:
    try:
        if base is bool:
            return {"true": True, "false": False}[text.strip().lower()]
        return base(text.strip())
    except (ValueError, KeyError):
        what = {int: "an integer", float: "a number", bool: "true or false"}.get(base, "text")
        raise InputError(f"{flag(name)} takes {what}, got {text!r}") from None


def convert(text: str, kind: _Kind, name: str) -> Any:
    """A flag's text -> the field's value, strictly (every list item must parse)."""
    if kind.optional and text.strip().lower() == "none":
        return None
    if not kind.many:
        return _one(text, kind.base, name)
    items = text.split(",")
    if any(not item.strip() for item in items):
        raise InputError(f"{flag(name)} takes a comma-separated list without gaps, got {text!r}")
    return tuple(_one(item, kind.base, name) for item in items)


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "none"
    return "none" if value is None else str(value)


def _help(f: dataclasses.Field, quick: dict[str, Any]) -> str:
    """The declared help, then ``[default; quick value with --quick]`` (a help that ends in its
    own ``[...]`` already says its default; a switch that turns a default on says neither)."""
    text = f.metadata.get("help", "")
    if f.default is True:
        return ("turn off: " + text).replace("%", "%%")
    extra = f"{_show(quick[f.name])} with --quick" if f.name in quick else ""
    if text.rstrip().endswith("]"):
        tail = f" [{extra}]" if extra else ""
    else:
        tail = f" [{_show(f.default)}{'; ' + extra if extra else ''}]"
    return (text + tail).replace("%", "%%")


def build_parser(
    cls: type,
    name: str,
    description: str,
    quick: dict[str, Any],
    epilog: str,
    default_out: Callable[[Any, bool], str] | None = None,
    resume: bool = True,
    package: str = "experiments",
) -> argparse.ArgumentParser:
    """The parser of ``cls``: one flag per field (default None = "not given") plus the run
    options (``--resume`` only where the experiment can continue a run); values stay text
    until :func:`parse` converts them. ``package``: where the command lives (``python -m
    <package>.<name>``: experiments, or bench for the measurement commands)."""
    p = harness.parser(name, description=description, epilog=epilog, package=package)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind, text = _kind(hints[f.name]), _help(f, quick)
        if kind.base is bool and not kind.many:
            on = f.default is not True
            opt = flag(f.name) if on else "--no-" + f.name.replace("_", "-")
            p.add_argument(opt, dest=f.name, action="store_const", const=on, help=text)
        else:
            p.add_argument(flag(f.name), dest=f.name, metavar=f.name.upper(), help=text)
    harness.add_output_flags(p, name, resume=resume)
    if default_out is not None:
        out = next(a for a in p._actions if "--out" in a.option_strings)
        out.help = (
            f"output folder [{default_out(cls(), False)}; {default_out(cls(), True)} with --quick]"
        )
    p.add_argument("--quick", action="store_true", help="the smoke-run preset (seconds)")
    p.add_argument("--config", metavar="FILE", help="rerun the config of a run.json/results.json")
    p.add_argument("--print-config", action="store_true", help="print the config and exit")
    return p


def _from_file(path: str, cls: type) -> dict[str, Any]:
    """The config fields stored in a run.json or results.json (``"config"``), as values."""
    try:
        stored = json.loads(Path(path).expanduser().read_text())["config"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"--config {path}: not a run.json or results.json ({err})") from None
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(stored) - names) if isinstance(stored, dict) else ["?"]
    if unknown:
        raise InputError(f"--config {path} holds fields this experiment does not have: {unknown}")
    hints = typing.get_type_hints(cls)
    switches = {f.name for f in dataclasses.fields(cls) if f.default is True}
    return {k: _stored(v, _kind(hints[k]), k, path, k in switches) for k, v in stored.items()}


_WHAT = {int: "an integer", float: "a number", bool: "true or false", str: "text"}
_WHATS = {int: "integers", float: "numbers", bool: "true or false values", str: "text"}


def _is(value: Any, base: type) -> bool:
    """``value`` as JSON stores a ``base`` (an int is a number; a bool is no int)."""
    if isinstance(value, bool):
        return base is bool
    return isinstance(value, (int, float) if base is float else base)


def _stored(value: Any, kind: _Kind, name: str, path: str, switch_off: bool) -> Any:
    """A field's value from a config file, if of the field's type (lists as tuples); else a
    one-line InputError: a hand-edited "false" would be true, a nested list a traceback."""
    if value is None and kind.optional:
        return None
    if kind.many and isinstance(value, list) and all(_is(v, kind.base) for v in value):
        return tuple(value)
    if not kind.many and _is(value, kind.base):
        return value
    what = f"a list of {_WHATS[kind.base]}" if kind.many else _WHAT[kind.base]
    shown = "--no-" + name.replace("_", "-") if switch_off else flag(name)
    raise InputError(f"--config {path}: {shown} holds {value!r}, not {what}")


def resolve(cls: type, args: argparse.Namespace, quick: dict[str, Any]) -> Any:
    """Flags over --config over --quick over the declared defaults; then the config's checks,
    their messages in flags."""
    hints = typing.get_type_hints(cls)
    values = dict(quick) if args.quick else {}
    if args.config:
        values.update(_from_file(args.config, cls))
    for f in dataclasses.fields(cls):
        given = getattr(args, f.name)
        if isinstance(given, str):
            values[f.name] = convert(given, _kind(hints[f.name]), f.name)
        elif given is not None:
            values[f.name] = given
    try:
        return cls(**values)
    except ConfigError as err:
        raise InputError(err.render(flag)) from None


def parse(
    cls: type,
    argv: Sequence[str] | None,
    *,
    name: str,
    description: str,
    quick: dict[str, Any],
    default_out: Callable[[Any, bool], str] | None = None,
    epilog: str = harness.EXIT_CODES,
    resume: bool = True,
    package: str = "experiments",
) -> Invocation:
    """Command line -> :class:`Invocation`; ``--print-config`` prints and exits 0. ``resume``:
    whether the experiment can continue a run (else it has no ``--resume`` flag)."""
    parser = build_parser(cls, name, description, quick, epilog, default_out, resume, package)
    args = parser.parse_args(argv)
    args.resume = getattr(args, "resume", False)
    if args.resume and args.overwrite:
        raise InputError("--resume and --overwrite contradict each other; pick one")
    config = resolve(cls, args, quick)
    if args.print_config:
        print(json.dumps(dataclasses.asdict(config), indent=1))
        raise SystemExit(0)
    out = args.out or (default_out(config, args.quick) if default_out else None)
    out = out or harness.default_out(name, "quick" if args.quick else "")
    return Invocation(config, out, args.resume if resume else None, args.overwrite, args.quick)
