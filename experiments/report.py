"""Command-line plumbing the experiments share: progress bars, Markdown tables, Ctrl-C and
one-line CLI errors, and the host-device request of a command. Run folders, atomic writes and
stamps are the library's (:mod:`jnn.workdir`). Nothing here knows about any particular study."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

from tqdm.auto import tqdm

from jnn.errors import InputError
from jnn.workdir import STORAGE_ERRNOS, RunDirError, release_run_dirs, storage_error

_MAY_REQUEST_DEVICES = False  # only a command line may change XLA_FLAGS (see below)


def allow_device_requests() -> None:
    """Called by an experiment's ``__main__``: from now on :func:`request_host_devices` may set
    XLA_FLAGS. An in-process ``main()`` (the tests) must not change the device count of the
    process that called it, so the default is off."""
    global _MAY_REQUEST_DEVICES
    _MAY_REQUEST_DEVICES = True


def request_host_devices(n: int) -> None:
    """Ask XLA for ``n`` CPU devices; only possible before JAX's backend starts (else a no-op)."""
    from jax._src import xla_bridge

    if not _MAY_REQUEST_DEVICES or xla_bridge.backends_are_initialized():
        return
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "force_host_platform" not in f]
    os.environ["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={n}"])


def load_splits(protocol: str, *, data_dir: str | None, **kwargs: Any) -> Any:
    """``jnn.data.load_splits`` for a CLI with a ``--data-dir`` flag: downloads (checksummed)
    into the cache on first use; offline, the one-line error also names the flag."""
    from jnn import data

    try:
        return data.load_splits(protocol, data_dir=data_dir, download=True, **kwargs)
    except data.DataError as err:
        raise data.DataError(f"{err}; or pass --data-dir DIR").with_traceback(None) from None


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table; floats are printed with 4 decimals."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "n/a" if not math.isfinite(v) else f"{v:.4f}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def progress(iterable: Iterable | None = None, **kwargs: Any) -> tqdm:
    """A tqdm progress bar that stays quiet when stderr is not a terminal (CI, logs, pipes)."""
    kwargs.setdefault("disable", not sys.stderr.isatty())
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)


INTERRUPTED = "interrupted: finished checkpoints are kept"  # Ctrl-C's line, unless told more


class Interrupted(KeyboardInterrupt):
    """A Ctrl-C that a command has turned into its own one line (``str(err)``): where the
    finished work is and how to continue it (see ``experiments.harness.interrupted_line``)."""


_SIGNALLED: list[bool] = []  # holds True once _first_interrupt ran: a real Ctrl-C came


def _first_interrupt(signum: int, frame: Any) -> None:
    """SIGINT handler of a CLI run: the first Ctrl-C raises ``KeyboardInterrupt`` as Python's
    own handler does, and from then on every further Ctrl-C is ignored (see :func:`cli_main`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _SIGNALLED.append(True)
    raise KeyboardInterrupt


def _exit_interrupted() -> NoReturn:
    """End the process with 130 now: streams and log handlers flushed, then ``os._exit``.

    Why not return: after a Ctrl-C that stopped JAX mid-program, the interpreter's teardown
    (JAX's atexit, the C++ runtime's destructors with XLA's threads still running) crashed with
    SIGSEGV in about half the runs of an interrupted sweep (exit -11 after the one line). Every
    file jnn writes is complete by then (checkpoints and results are committed by a rename),
    and the run-folder locks are released first.

    What the skipped teardown would have done for multiprocessing is done here, else the
    resource tracker, which outlives this process, warns on the terminal about "leaked
    semaphore objects" after the one line: this process's other non-daemon threads may end
    (a stopped process pool's manager thread releases the pool's semaphores as it ends; 2 s
    at most in all), then multiprocessing's finalizers unlink the semaphores still held.
    """
    deadline = time.monotonic() + 2.0
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is not None:
        with contextlib.suppress(Exception):
            mp_util._run_finalizers(0)  # what its atexit hook runs first
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    logging.shutdown()
    os._exit(130)


@contextlib.contextmanager
def _one_interrupt() -> Iterator[None]:
    """Within this block the first Ctrl-C interrupts and later ones are ignored until the
    process ends; a block that saw none restores Python's handler. Only in the main thread and
    over Python's default handler (a caller's own SIGINT handling is left alone)."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    signal.signal(signal.SIGINT, _first_interrupt)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGINT) is _first_interrupt:  # not interrupted
            signal.signal(signal.SIGINT, signal.default_int_handler)


@contextlib.contextmanager
def children_ignore_interrupts() -> Iterator[None]:
    """Processes started within this block (a pool's spawned workers) ignore Ctrl-C.

    A Ctrl-C in a terminal goes to every process of the foreground group: workers of a process
    pool got it too and printed ``Process SpawnProcess-1:`` and a traceback across the
    terminal. Here SIGINT is ignored while they start: an ignored signal stays ignored through
    exec, and Python keeps it so, so they never see one (no window while they import); this
    process handles Ctrl-C and stops them. A Ctrl-C during the block itself is dropped. Only
    in the main thread (elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@contextlib.contextmanager
def one_line_warnings(say: Callable[[str], None] = _to_stderr) -> Iterator[None]:
    """Python warnings as one line each (``warning: Category: message (file:line)``) passed to
    ``say``, instead of Python's two (the location, then the source line of the call)."""
    shown = warnings.showwarning

    def show(
        message: Warning | str, category: type[Warning], filename: str, lineno: int,
        file: TextIO | None = None, line: str | None = None,
    ) -> None:  # fmt: skip
        say(f"warning: {category.__name__}: {message} ({Path(filename).name}:{lineno})")

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


def _cli_line(err: InputError) -> str:
    """The one line of bad input: a run folder's error names the flags (``overwrite`` ->
    ``--overwrite``), which is what every command calls them."""
    if isinstance(err, RunDirError):
        return err.render(lambda name: "--" + name.replace("_", "-"))
    return str(err)


def cli_main(main: Callable[[Sequence[str] | None], Any]) -> Callable[[Sequence[str] | None], int]:
    """Wrap a CLI ``main(argv)`` so that bad input ends in one line on stderr and exit code 2.

    Bad input is :class:`jnn.errors.InputError` (data, checkpoint and weight files, run folders,
    every argument check of jnn and the experiments) and a storage ``OSError`` (no space, no
    permission, read-only: :data:`STORAGE_ERRNOS`) from any write. Anything else, a
    ``ValueError`` from deep inside JAX or numpy included, is a bug and keeps its traceback.
    Ctrl-C is one line, exit 130. Either way the run-folder locks are released and a stub
    folder of a failed run is removed.

    A second Ctrl-C is ignored: it used to land in the cleanup (ours, or JAX's at interpreter
    exit, with its C++ threads running) and abort the process (exit -6 "terminate called ...
    FATAL: exception not rethrown") instead of exiting 130 with one line. After a real Ctrl-C
    (a SIGINT, not a ``KeyboardInterrupt`` raised by code) the process ends at once with 130
    (:func:`_exit_interrupted`), skipping the interpreter teardown that could crash. Finished
    checkpoints are complete either way (each is committed by one rename).
    """

    @functools.wraps(main)
    def wrapped(argv: Sequence[str] | None = None) -> int:
        failed = True
        try:
            with _one_interrupt(), one_line_warnings():
                result = main(argv)
            failed = False
        except InputError as err:
            print(f"error: {_cli_line(err)}", file=sys.stderr)
            return 2
        except OSError as err:  # a write that bypassed write_atomic: still one line, not a bug
            if err.errno not in STORAGE_ERRNOS:
                raise
            print(f"error: {storage_error(None, err, 'use')}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as err:
            line = str(err) if isinstance(err, Interrupted) and str(err) else INTERRUPTED
            print(line, file=sys.stderr, flush=True)
            result = 130
        finally:
            release_run_dirs(failed=failed)
        if result == 130 and failed and _SIGNALLED:  # a real Ctrl-C of a command: leave now
            _exit_interrupted()
        return result if isinstance(result, int) else 0

    return wrapped
