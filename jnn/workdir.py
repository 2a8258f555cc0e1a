"""Run folders and the files in them: what makes a folder jnn's, one process per folder, atomic
writes, storage errors in one line, and the stamps of what made a result.

A run folder is jnn's when, and only when, it holds the ``.jnn-run`` marker file: only then may
``overwrite=True`` empty it. The process using a folder holds an exclusive ``flock`` on its
``.jnn-lock`` until :func:`release_run_dirs`, so a second run on the same folder is refused in
one line instead of corrupting the first. Every file is written beside its target, synced and
renamed onto it (:func:`write_atomic`): a reader sees the old file or the whole new one. A full
disk, a read-only file system or a folder without permission is one :class:`StorageError` line
naming the path. Messages name the arguments (``overwrite``, ``resume``, ``out``) in backquotes
(:class:`jnn.config.ConfigError`), so a command line can show its own flags instead.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.metadata
import json
import math
import os
import platform
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from jnn.config import ConfigError
from jnn.errors import InputError

__all__ = [
    "BOOKKEEPING", "LOCK_FILE", "RUN_MARKER", "STORAGE_ERRNOS", "RunDirError", "StorageError",
    "check_run_dir", "device_info", "float32_matmul", "prepare_run_dir", "release_run_dirs",
    "stamps", "storage_error", "versions", "write_atomic", "write_json", "write_text_atomic",
]  # fmt: skip

RUN_MARKER = ".jnn-run"  # written into every run folder jnn creates: what overwrite may delete
LOCK_FILE = ".jnn-lock"  # flock()ed by the process using the folder: one run per folder at a time
BOOKKEEPING = frozenset({RUN_MARKER, LOCK_FILE})  # jnn's own files in every run folder
_STUB_FILES = BOOKKEEPING | {"run.json"}
_LOCKS: dict[Path, int] = {}  # folder -> open fd holding its lock (released by release_run_dirs)
_CREATED: set[Path] = set()  # folders this process created (removed again if left as stubs)
_NEW_LOCKS: set[Path] = set()  # lock files this process created (in folders that existed)

# what made a result: these packages' versions and these environment variables
_PACKAGES = (
    "jax", "jaxlib", "optax", "flax", "orbax-checkpoint", "chex", "numpy", "scikit-learn",
    "matplotlib", "torch", "tensorflow-datasets", "keras", "h5py",
)  # fmt: skip
_ENV_VARS = (
    "XLA_FLAGS", "JAX_PLATFORMS", "JAX_ENABLE_X64", "JAX_DEFAULT_MATMUL_PRECISION",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE", "TF_CPP_MIN_LOG_LEVEL",
)  # fmt: skip


# ------------------------------------------------------------------------------ run folders


class RunDirError(ConfigError):
    """The output folder cannot be used as asked (holds another run, is a file, is in use).

    The arguments are named in backquotes (```overwrite```, ```resume```, ```out```): ``str``
    shows the names, ``render(flag)`` a command line's own flags."""


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
    """Refuse an output folder that cannot be used as asked; writes nothing. Returns the
    absolute path.

    A non-empty folder is refused unless ``resume`` (continue it) or ``overwrite`` (replace it);
    ``overwrite`` replaces only a folder that jnn made (it holds the ``.jnn-run`` marker): any
    other non-empty folder is the user's, and jnn never deletes it. The marker alone makes a
    folder ours: a ``.jnn-lock`` proves nothing (anyone can create one, a copied or synced folder
    can carry one), so ``thesis.txt`` beside a lock is still the user's. A folder holding nothing
    but jnn's bookkeeping (say the lock of a run killed before it wrote its marker) counts as
    empty: using it deletes nothing. ``markers`` are the files named when refusing.
    """
    path = Path(out).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise RunDirError(f"output path {path} exists and is not a folder; use another `out`")
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise RunDirError(
            f"output folder {path} lies under {blocker}, which is a file; use another `out`"
        )
    if not (path.is_dir() and any(_not_bookkeeping(p) for p in path.iterdir())):
        return path
    if overwrite and not (path / RUN_MARKER).is_file():
        raise RunDirError(
            f"`overwrite` refused: {path} holds files that are not a jnn run (no {RUN_MARKER} "
            "marker), and jnn never deletes files it did not make; use another `out`"
        )
    if not (overwrite or resume):
        held = [m for m in markers if (path / m).exists()] or ["files"]
        raise RunDirError(
            f"output folder {path} already holds another run ({', '.join(held)}); "
            "pass `resume` to continue it, `overwrite` to replace it, or another `out`"
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
    ours, see above). Storage errors (read-only, no space) become one-line :class:`RunDirError`.
    """
    path = check_run_dir(out, resume=resume, overwrite=overwrite, markers=markers)
    try:
        ours = empty_or_missing(path)  # a folder of the user's (resumed) is never marked ours
        if not path.exists():
            path.mkdir(parents=True)
            _CREATED.add(path)
        _lock(path)
        if overwrite:
            for child in path.iterdir():
                if child.name != LOCK_FILE:
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        if (ours or overwrite) and not (path / RUN_MARKER).exists():
            (path / RUN_MARKER).write_text("a jnn run folder: jnn may replace it when told to\n")
    except OSError as err:
        raise RunDirError(f"cannot use output folder {path}: {err.strerror or err}") from None
    return path


def empty_or_missing(path: Path) -> bool:
    """``path`` does not exist yet, or holds nothing but jnn's bookkeeping."""
    return not path.is_dir() or not any(_not_bookkeeping(p) for p in path.iterdir())


def _lock(path: Path) -> None:
    """Take the exclusive, non-blocking ``flock`` on ``path/.jnn-lock`` (once per process)."""
    import fcntl

    if path in _LOCKS:
        return
    if not (path / LOCK_FILE).exists():
        _NEW_LOCKS.add(path / LOCK_FILE)
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunDirError(
            f"output folder {path} is in use by another running jnn process (it holds the "
            f"lock {LOCK_FILE}); wait for it to finish or use another `out`"
        ) from None
    _LOCKS[path] = fd


def release_run_dirs(*, failed: bool = False) -> None:
    """Release every run-folder lock this process holds. After a failed run, a folder this
    process created that holds nothing but jnn's own bookkeeping (marker, lock, run.json) is
    removed, so a refused command leaves no stub behind; anything else in it is kept. A lock
    file it added to a folder that is not a jnn run (no marker: a refused ``--resume`` into a
    user's folder) is removed too, so the folder is left as it was."""
    for path, fd in list(_LOCKS.items()):
        os.close(fd)
        del _LOCKS[path]
    for lock in list(_NEW_LOCKS):
        _NEW_LOCKS.discard(lock)
        if failed and not (lock.parent / RUN_MARKER).is_file():
            lock.unlink(missing_ok=True)
    for path in list(_CREATED):
        _CREATED.discard(path)
        if failed and path.is_dir() and {p.name for p in path.iterdir()} <= _STUB_FILES:
            shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------------------ atomic writes


class StorageError(InputError):
    """A file could not be written where asked: no space, no permission, a read-only file
    system. One line naming the path, the system's reason and what to do."""


_NO_PERMISSION = "fix its permissions (this user must be able to write there) or use another folder"
# errno -> what the user can do about it (the reason itself is the system's strerror)
_STORAGE_ADVICE: dict[int | None, str] = {
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


def write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], object]) -> Path:
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


def _jsonable(obj: Any) -> Any:
    """``obj`` with arrays as lists, paths as strings, tuples as lists and NaN/inf as None."""
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


def write_json(path: str | os.PathLike, data: Any, *, indent: int = 2) -> Path:
    """Atomically write ``data`` as JSON indented by ``indent`` (arrays become lists, NaN/inf
    become null); a storage error is one :class:`StorageError` line."""
    if not isinstance(indent, int) or isinstance(indent, bool) or indent < 0:
        raise InputError(f"indent must be an integer >= 0, got {indent!r}")
    text = json.dumps(_jsonable(data), indent=indent, allow_nan=False) + "\n"
    return write_text_atomic(path, text)


# ------------------------------------------------------------------------------ stamps


def versions() -> dict[str, str]:
    """Installed versions of the packages that matter for reproducing a result (and Python's);
    packages that are not installed are left out."""
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


# jax_default_matmul_precision values that keep a float32 product in float32 on a GPU; every
# other value (None and "default" included) lets XLA round the operands: to TF32 on NVIDIA
# tensor cores by default (measured on an H200: the float32 2048^3 matmul ran at 142 TFLOP/s,
# twice the card's FP32 peak), to bfloat16 at "bfloat16"/"fastest"
_FULL_FLOAT32 = ("highest", "float32", "HIGHEST", "F32_F32_F32")
_BFLOAT16 = ("bfloat16", "fastest", "BF16_BF16_F32")


def float32_matmul(backend: str | None = None, precision: str | None = "config") -> str:
    """What a float32 matmul or convolution of JAX computes on ``backend`` (default: JAX's) at
    ``precision`` (default: the ``jax_default_matmul_precision`` in force): "float32" (XLA:CPU
    always; elsewhere only at "highest"/"float32"), "bfloat16" (at "bfloat16"/"fastest", and a
    TPU's default: one bfloat16 pass), "tf32" (a GPU's default: results agree with the CPU's to
    ~1e-3 relative, not 1e-6) or, on a TPU at "high", "bfloat16_3x"."""
    import jax

    backend = jax.default_backend() if backend is None else backend
    if precision == "config":
        precision = getattr(jax.config, "jax_default_matmul_precision")  # noqa: B009 (untyped)
    if backend == "cpu" or precision in _FULL_FLOAT32:
        return "float32"
    if precision in _BFLOAT16:
        return "bfloat16"
    if backend == "tpu":
        return "bfloat16_3x" if precision in ("high", "HIGH", "BF16_BF16_F32_X3") else "bfloat16"
    return "tf32"


def device_info() -> dict[str, Any]:
    """What ran the numbers: JAX backend and devices, the float32 matmul arithmetic
    (:func:`float32_matmul`), CPU, core count, threading env vars."""
    import jax

    from jnn import parallel

    devices = jax.devices()
    return {
        "backend": jax.default_backend(),
        "float32_matmul": float32_matmul(),
        "devices": [f"{d.platform}:{d.device_kind}" for d in devices],
        "device_count": len(devices),
        "cpu": parallel.cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "env": {k: os.environ[k] for k in _ENV_VARS if k in os.environ},
    }


def _git(*args: str) -> str | None:
    """``git args`` run in jnn's source folder: its stripped stdout, None outside a checkout."""
    import subprocess

    try:
        out = subprocess.run(
            ["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def stamps() -> dict[str, Any]:
    """What made a run: jnn's version, its git commit and dirty flag (None outside a
    checkout), the command line and the start time (UTC)."""
    import sys
    from datetime import datetime, timezone

    from jnn import __version__

    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "jnn_version": __version__,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "command": list(sys.argv),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
