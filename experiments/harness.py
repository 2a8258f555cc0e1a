"""The one harness under every experiment: config -> ``run`` -> ``render``, one output root.

An experiment is a value (like a layer is): an :class:`Experiment` holding

- ``parse(argv) -> cfg``: the command line turned into a frozen, checked config dataclass (every
  problem an :class:`jnn.errors.InputError` naming the flag);
- ``run(cfg, run_dir) -> result``: the work; returns a JSON-able dict with a ``"status"``
  (``"ok"`` or ``"diverged"``); may write checkpoints into ``run_dir`` but no report files;
- ``render(result, run_dir) -> paths``: results.json, results.md and the plots, from ``result``
  alone (so a report can be re-rendered without re-running);
- ``console(result) -> str``: what is printed at the end (usually the Markdown table).

:func:`cli` wires one into a command: it parses, takes the run folder (one policy for all:
``runs/<name>`` by default, the ``.jnn-run`` marker, the lock, ``--overwrite`` only of our own
folders, see :mod:`experiments.report`), stamps the versions and the device into the result,
renders, prints a last line with the wall time and where the outputs are, and returns the exit
code: 0 done, 2 bad input (one line, via :func:`experiments.report.cli_main`), 3 a model diverged.
The library (``jnn``) never prints and never names a flag; this module and the experiments do.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

from experiments import report
from jnn import workdir
from jnn.config import ConfigError
from jnn.errors import InputError

OUTPUT_ROOT = Path("runs")  # every experiment's default output folder lies under it
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_DIVERGED = 0, 1, 2, 3


class Experiment(NamedTuple):
    """One experiment: see the module docstring for the contract of each function."""

    name: str
    parse: Callable[[Sequence[str] | None], Any]
    run: Callable[[Any, Path], dict[str, Any]]
    render: Callable[[dict[str, Any], Path], Sequence[Path]]
    console: Callable[[dict[str, Any]], str] = lambda result: ""


def flag(name: str) -> str:
    """A config field's flag: ``save_at`` -> ``--save-at``."""
    return "--" + name.replace("_", "-")


def default_out(name: str, *suffixes: str) -> str:
    """``runs/<name>[-suffix...]``: the default ``--out`` of experiment ``name``."""
    return str(OUTPUT_ROOT / "-".join((name, *filter(None, suffixes))))


def stamp() -> dict[str, Any]:
    """The one place for what ran a result: package versions and the device/CPU/env stamps."""
    return {"versions": workdir.versions(), "device": workdir.device_info()}


def exit_code(result: dict[str, Any]) -> int:
    """0 for a finished run, 3 when any model diverged (its last good state is kept), 1 when
    nothing could be measured (status "failed": every part failed, reasons in the results)."""
    return {"diverged": EXIT_DIVERGED, "failed": EXIT_FAILED}.get(result.get("status"), EXIT_OK)


def execute(exp: Experiment, argv: Sequence[str] | None = None) -> int:
    """Parse, take the run folder, run, stamp, render, print; returns the exit code. A Ctrl-C
    once the folder is taken becomes :class:`experiments.report.Interrupted` carrying the one
    line that says how to continue (:func:`interrupted_line`)."""
    t0 = time.perf_counter()
    cfg = exp.parse(argv)
    run_dir = workdir.prepare_run_dir(
        cfg.out,
        resume=bool(getattr(cfg, "resume", False)),
        overwrite=getattr(cfg, "overwrite", False),
        markers=("results.json", "run.json"),
    )
    try:
        return _run_and_report(exp, cfg, run_dir, t0)
    except KeyboardInterrupt:
        raise report.Interrupted(interrupted_line(exp, argv, cfg, run_dir)) from None


def _run_and_report(exp: Experiment, cfg: Any, run_dir: Path, t0: float) -> int:
    """Run, stamp, render, print the console text and the last line; the exit code."""
    try:
        result = exp.run(cfg, run_dir)
    except ConfigError as err:  # found while running (data, devices, resume): name the flag
        raise InputError(err.render(flag)) from None
    result.update({k: v for k, v in stamp().items() if k not in result})
    result.setdefault("wall_s", time.perf_counter() - t0)
    exp.render(result, run_dir)
    text = exp.console(result)
    if text:
        print(text.rstrip())
    status = "" if result.get("status", "ok") == "ok" else f" (status: {result['status']})"
    print(f"done in {time.perf_counter() - t0:.0f} s{status}; outputs in {run_dir}", flush=True)
    return exit_code(result)


def interrupted_line(exp: Experiment, argv: Sequence[str] | None, cfg: Any, run_dir: Path) -> str:
    """What Ctrl-C prints: where the finished checkpoints are and the command that continues
    the run (the user's own flags, with ``--resume --out FOLDER`` for the run-folder ones),
    for an experiment with ``--resume``; else that finished checkpoints are kept."""
    if getattr(cfg, "resume", None) is None:
        return report.INTERRUPTED
    folder = os.path.relpath(run_dir)
    folder = str(run_dir) if folder.startswith("..") else folder
    kept: list[str] = []
    args = iter(sys.argv[1:] if argv is None else argv)
    for arg in args:
        if arg == "--out":
            next(args, None)
        elif not (arg.startswith("--out=") or arg in ("--resume", "--overwrite")):
            kept.append(arg)
    command = shlex.join(["python", "-m", _module(exp), *kept, "--resume", "--out", folder])
    return f"interrupted: finished checkpoints kept in {folder}; continue with {command}"


def _module(exp: Experiment) -> str:
    """The module that ``python -m`` runs for ``exp`` (its ``run`` lives there)."""
    name = getattr(exp.run, "__module__", "") or ""
    if name == "__main__":
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        name = spec.name if spec is not None else ""
    return name or f"experiments.{exp.name}"


def cli(exp: Experiment) -> Callable[[Sequence[str] | None], int]:
    """The command for ``exp``: :func:`execute` behind the one-line error handler."""

    def main(argv: Sequence[str] | None = None) -> int:
        return execute(exp, argv)

    main.__name__ = main.__qualname__ = f"{exp.name}_main"
    return report.cli_main(main)


# ----------------------------------------------------------------- shared flags and checks


EXIT_CODES = "Exit codes: 0 done, 2 bad input (one line on stderr), 3 a model diverged."
EXIT_CODES_NO_TRAINING = "Exit codes: 0 done, 2 bad input (one line on stderr)."


class OneLineParser(argparse.ArgumentParser):
    """argparse's parser whose usage errors (unknown flag, missing value) are one line on
    stderr and exit 2, like every other bad input, instead of the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"error: {message} (see {self.prog} --help)\n")


def parser(
    name: str,
    *,
    description: str,
    epilog: str = EXIT_CODES,
    package: str = "experiments",
    **kwargs: Any,
) -> argparse.ArgumentParser:
    """The argument parser of ``python -m <package>.<name>`` (exit codes in the epilog)."""
    return OneLineParser(
        prog=f"python -m {package}.{name}", description=description, epilog=epilog, **kwargs
    )


def _folder(text: str) -> str:
    """An ``--out`` value: any non-blank path (a blank one would fall back to the default)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty; give a folder, or omit --out for the default")
    return text


def add_output_flags(p: argparse.ArgumentParser, name: str, *, resume: bool = False) -> None:
    """``--out`` (default ``runs/<name>``), ``--overwrite`` and, where supported, ``--resume``."""
    p.add_argument(
        "--out", default=None, type=_folder, help=f"output folder (default {default_out(name)})"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier jnn run in --out (never a folder jnn did not make)",
    )
    if resume:
        p.add_argument("--resume", action="store_true", help="continue the run in --out")
