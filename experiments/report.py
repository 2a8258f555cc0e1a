"""Plumbing the experiments share: run folders, results files, version/device stamps, progress
bars and one-line CLI errors. Nothing here knows about any particular study."""

from __future__ import annotations

import contextlib
import errno
import functools
import importlib.metadata
import json
import logging
import math
import os
import platform
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, NoReturn

from tqdm.auto import tqdm

from jnn.errors import InputError

_PACKAGES = (
    "jax",
    "jaxlib",
    "optax",
    "flax",
    "orbax-checkpoint",
    "chex",
    "numpy",
    "scikit-learn",
    "matplotlib",
    "torch",
    "tensorflow-datasets",
    "keras",
    "h5py",
)
_ENV_VARS = (
    "XLA_FLAGS",
    "JAX_PLATFORMS",
    "JAX_ENABLE_X64",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    "TF_CPP_MIN_LOG_LEVEL",
)


class RunDirError(InputError):
    """The output folder cannot be used as asked (holds another run, not a folder, ...)."""


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


def versions() -> dict[str, str]:
    """Installed versions of the packages that matter for reproducing a result."""
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def device_info() -> dict[str, Any]:
    """What ran the numbers: JAX backend and devices, CPU, core count, threading env vars."""
    import jax

    from jnn import parallel

    devices = jax.devices()
    return {
        "backend": jax.default_backend(),
        "devices": [f"{d.platform}:{d.device_kind}" for d in devices],
        "device_count": len(devices),
        "cpu": parallel.cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "env": {k: os.environ[k] for k in _ENV_VARS if k in os.environ},
    }


RUN_MARKER = ".jnn-run"  # written into every run folder jnn creates: what --overwrite may delete
LOCK_FILE = ".jnn-lock"  # flock()ed by the process using the folder: one run per folder at a time
BOOKKEEPING = frozenset({RUN_MARKER, LOCK_FILE})  # jnn's own files in every run folder
_STUB_FILES = BOOKKEEPING | {"run.json"}
_LOCKS: dict[Path, int] = {}  # folder -> open fd holding its lock (released by release_run_dirs)
_CREATED: set[Path] = set()  # folders this process created (removed again if left as stubs)


def _not_bookkeeping(entry: Path) -> bool:
    """Anything but jnn's marker or lock as a plain file (a folder named .jnn-run is data)."""
    return entry.name not in BOOKKEEPING or entry.is_symlink() or not entry.is_file()


def check_run_dir(
    out: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    markers: Sequence[str] = ("results.json",),
) -> Path:
    """Refuse an output folder that cannot be used as asked; writes nothing. Returns the path.

    A non-empty folder is refused unless ``resume`` (continue it) or ``overwrite`` (replace it);
    ``overwrite`` replaces only a folder that jnn made (it holds the ``.jnn-run`` marker): any
    other non-empty folder is the user's, and jnn never deletes it. The marker alone makes a
    folder ours: a ``.jnn-lock`` proves nothing (anyone can create one, a copied or synced folder
    can carry one), so ``thesis.txt`` beside a lock is still the user's. A folder holding nothing
    but jnn's bookkeeping (say the lock of a run killed before it wrote its marker) counts as
    empty: using it deletes nothing.
    """
    path = Path(out).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise RunDirError(f"output path {path} exists and is not a folder; pass another --out")
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise RunDirError(f"--out {path} lies under {blocker}, which is a file; pass another --out")
    if not (path.is_dir() and any(_not_bookkeeping(p) for p in path.iterdir())):
        return path
    if overwrite and not (path / RUN_MARKER).is_file():
        raise RunDirError(
            f"--overwrite refused: {path} holds files that are not a jnn run (no {RUN_MARKER} "
            "marker), and jnn never deletes files it did not make; pass another --out"
        )
    if not (overwrite or resume):
        held = [m for m in markers if (path / m).exists()] or ["files"]
        raise RunDirError(
            f"output folder {path} already holds another run ({', '.join(held)}); "
            "pass --resume to continue it, --overwrite to replace it, or another --out"
        )
    return path


def prepare_run_dir(
    out: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    markers: Sequence[str] = ("results.json",),
) -> Path:
    """Create (or reuse) the absolute run folder ``out``, marked as jnn's and locked.

    Checks as :func:`check_run_dir`; then takes an exclusive lock on ``out/.jnn-lock`` held until
    :func:`release_run_dirs` (or the process ends), so a second run on the same folder is refused
    in one line instead of corrupting the first; then ``overwrite`` empties the folder (it is
    ours, see above). Storage errors (read-only, no space) become one-line ``RunDirError``.
    """
    path = check_run_dir(out, resume=resume, overwrite=overwrite, markers=markers)
    try:
        if not path.exists():
            path.mkdir(parents=True)
            _CREATED.add(path)
        _lock(path)
        if overwrite:
            for child in path.iterdir():
                if child.name != LOCK_FILE:
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        if not (path / RUN_MARKER).exists():
            (path / RUN_MARKER).write_text("a jnn run folder: --overwrite may replace it\n")
    except OSError as err:
        raise RunDirError(f"cannot use output folder {path}: {err.strerror or err}") from None
    return path


def _lock(path: Path) -> None:
    import fcntl

    if path in _LOCKS:
        return
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunDirError(
            f"output folder {path} is in use by another running jnn process (it holds the "
            f"lock {LOCK_FILE}); wait for it to finish or pass another --out"
        ) from None
    _LOCKS[path] = fd


def release_run_dirs(*, failed: bool = False) -> None:
    """Release every run-folder lock this process holds. After a failed run, a folder this
    process created that holds nothing but jnn's own bookkeeping (marker, lock, run.json) is
    removed, so a refused command leaves no stub behind; anything else in it is kept."""
    for path, fd in list(_LOCKS.items()):
        os.close(fd)
        del _LOCKS[path]
    for path in list(_CREATED):
        _CREATED.discard(path)
        if failed and path.is_dir() and {p.name for p in path.iterdir()} <= _STUB_FILES:
            shutil.rmtree(path, ignore_errors=True)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy / jax arrays and scalars
        return _jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # JSON has no NaN/inf; a missing number is honest, a fake one is not
    return obj


class StorageError(InputError):
    """A file could not be written where asked: no space, no permission, a read-only file
    system. One line naming the path, the system's reason and what to do."""


_NO_PERMISSION = "fix its permissions (this user must be able to write there) or use another folder"
# errno -> what the user can do about it (the reason itself is the system's strerror)
_STORAGE_ADVICE = {
    errno.ENOSPC: "free some space there",
    errno.EDQUOT: "free some space there (the disk quota is used up)",
    errno.EACCES: _NO_PERMISSION,
    errno.EPERM: _NO_PERMISSION,
    errno.EROFS: "the file system is read-only: write somewhere else",
}
STORAGE_ERRNOS = frozenset(_STORAGE_ADVICE)


def storage_error(
    path: str | os.PathLike | None, err: OSError, doing: str = "write"
) -> StorageError:
    """``err`` (raised while ``doing`` ``path``; None: the error's own file name) as one
    :class:`StorageError` line: the path, the system's reason and what to do. No flag is named:
    every command has its own."""
    where = path if path is not None else (err.filename or "a file")
    reason = err.strerror or str(err) or type(err).__name__
    advice = _STORAGE_ADVICE.get(err.errno, "check the folder and the disk")
    return StorageError(f"cannot {doing} {where}: {reason}; {advice}, then run the command again")


def write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """``write(f)`` into a temporary file beside ``path``, synced, then renamed onto ``path``.

    A reader sees the old file or the whole new one, never a half-written one: on any failure
    (a full disk surfaces at write, close or fsync) the temporary file is removed, and a storage
    error (:data:`STORAGE_ERRNOS`, or any other ``OSError``) becomes one :class:`StorageError`
    line naming ``path``. Other exceptions propagate unchanged. The file gets the usual
    ``0666 & ~umask`` mode (``mkstemp`` makes 0600; results are for everyone to read).
    """
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(err, OSError):
            raise storage_error(path, err) from None
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`write_atomic`): never a
    half-written file; a full disk or a read-only folder is one :class:`StorageError` line."""
    data = text.encode()
    return write_atomic(path, lambda f: f.write(data))


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Atomically write ``data`` as indented JSON (arrays become lists, NaN/inf become null)."""
    return write_text_atomic(path, json.dumps(_jsonable(data), indent=2, allow_nan=False) + "\n")


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
            with _one_interrupt():
                result = main(argv)
            failed = False
        except InputError as err:
            print(f"error: {err}", file=sys.stderr)
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
