"""Verified orbax checkpoints of one training run (one model, or M stacked models) in one folder.

    store = CheckpointStore("/abs/run/relu")
    store.save(50, {"state": state, "history": history})                # kept forever
    store.save(60, {"state": state, "history": history}, rolling=True)  # only the newest kept
    epoch, tree = store.restore_latest(like)   # newest checkpoint that verifies, of either kind
    store.skipped                              # what restore_latest passed over, and why
    tree = store.restore(50, like)             # like: a tree of arrays / ShapeDtypeStructs

Layout: ``<dir>/<epoch>/`` for the chosen epochs (the study's ``--save-at``), never deleted, and
``<dir>/latest/<epoch>/`` for the rolling crash-safety checkpoint, of which only the newest is
kept. A step folder holds ``tree/`` (an orbax ``StandardCheckpointer`` save) and
``checksums.json``: the SHA-256 of every array leaf (dtype, shape and bytes), of every file under
``tree/`` (with its size), and of the JSON itself; and what the step holds: its ``epoch`` and
the store's ``identity`` (a JSON dict naming the model: experiment, activation or cell, seed).

    store = CheckpointStore("/abs/run/relu", identity={"study": "mlp_sweep", "activation": "relu"})

A step is trusted only where it sits: ``restore``/``restore_latest`` refuse a step whose stored
epoch differs from its folder's number (a copy of another epoch: :class:`CorruptCheckpointError`,
skipped by ``restore_latest`` like any corrupt step) or whose identity differs from the store's
(a copy of another model's step: :class:`ForeignCheckpointError`, raised). Steps written before
identities existed record neither, and restore as before.

Why: orbax/tensorstore OCDBT data files carry no content checksum, so flipped bytes restored as
garbage, and truncated files surfaced as misleading errors with asyncio tracebacks. Here every
restore first checks the files against ``checksums.json`` (before orbax reads them), then the
restored leaves against their digests; any failure is one :class:`CorruptCheckpointError` line
naming the step folder and what failed. Folders without ``checksums.json`` (empty, partial, or
written by jnn before checksums existed) are never restored: their data cannot be verified.

Commit: a step is written into ``<epoch>.orbax-checkpoint-tmp-<pid>-<ns>`` and renamed to
``<epoch>`` once ``checksums.json`` is written and synced, so a process killed mid-save leaves
only the temporary folder, which is never listed or loaded. A store marks its folder
(``.jnn-checkpoints``); opening a marked folder removes the temporary folders whose process is
gone (``store.removed``, with a warning), and leaves those of a live process alone.

``restore_latest`` falls back to the newest step that verifies and reports each step it skipped
with a :class:`CheckpointWarning` and in ``store.skipped``. ``save`` never skips: an epoch that is
already saved, or older than the newest checkpoint, raises :class:`CheckpointError` unless
``replace=True``; a folder this store found unusable (or one that is not a finished step) is
replaced with a warning. Storage failures (tensorstore reports a full disk as a ``ValueError``)
become one-line :class:`CheckpointError` s saying what to do, with orbax's log noise and the
late callbacks of the abandoned writes suppressed. Saves are synchronous and serialised across
threads.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from jnn.errors import InputError

ROLLING_DIR = "latest"
MANIFEST = "checksums.json"
TREE_ITEM = "tree"
FORMAT = "jnn-checkpoint/1"
_SAVE_LOCK = threading.Lock()
_TMP_MARK = ".orbax-checkpoint-tmp"
# <epoch>.orbax-checkpoint-tmp-[replaced-|old-]<pid>-<ns>: the temporary folders jnn names
_TMP_NAME = re.compile(rf"^\d+{re.escape(_TMP_MARK)}-(?:replaced-|old-)?(\d+)-\d+$")
STORE_MARKER = ".jnn-checkpoints"  # in every folder a CheckpointStore made: its temp folders
# (of a killed save) may be removed at the next open

# Orbax logs every save and restore at INFO through absl; keep the console for the experiments.
logging.getLogger("absl").setLevel(logging.WARNING)


class CheckpointError(InputError):
    """A checkpoint folder is unusable as asked (relative path, missing epoch, wrong shape,
    an epoch already saved, a failed write)."""


class CorruptCheckpointError(CheckpointError):
    """A step folder fails verification: missing/truncated/changed file, checksum mismatch,
    unreadable data, or no ``checksums.json`` (empty, partial, or an unverifiable old format)."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = Path(path)
        self.reason = " ".join(str(reason).split())
        super().__init__(f"checkpoint {self.path} is unusable: {self.reason}")


class ForeignCheckpointError(CheckpointError):
    """A step holds another model or run than the store's identity names (a copied folder)."""


class CheckpointWarning(RuntimeWarning):
    """A checkpoint was skipped or replaced because it is unusable, or a save was interrupted."""


class SkippedCheckpoint(NamedTuple):
    """One step ``restore_latest`` passed over: its epoch, folder and why."""

    epoch: int
    path: Path
    reason: str


# --------------------------------------------------------------------------- quiet orbax

_quiet_depth = 0
_quiet_lock = threading.Lock()


class _DropOrbaxLogs(logging.Filter):
    """Drops orbax's absl records (ERROR lines with tracebacks) while a jnn call handles them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (_quiet_depth and "orbax" in record.pathname)


logging.getLogger("absl").addFilter(_DropOrbaxLogs())


@contextlib.contextmanager
def _quiet_orbax() -> Iterator[None]:
    """Within this block orbax's own error logs are dropped: the caller raises one line instead.
    From the first block on, so are the late callbacks of abandoned writes (they may arrive
    while orbax is still unwinding, before the caller has seen the error)."""
    global _quiet_depth
    _drop_late_loop_callbacks()
    with _quiet_lock:
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1


_late_hook: Any = None  # the hook _drop_late_loop_callbacks installed


def _is_late_loop_callback(args: Any) -> bool:
    """``RuntimeError('Event loop is closed')`` from ``loop.call_soon_threadsafe``: tensorstore
    finishing a write of an abandoned save after orbax closed that save's event loop."""
    if args.exc_type is not RuntimeError or str(args.exc_value) != "Event loop is closed":
        return False
    tb, names = args.exc_traceback, set()
    while tb is not None:
        names.add(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    return "call_soon_threadsafe" in names


def _drop_late_loop_callbacks() -> None:
    """From now on, drop the late callbacks of an abandoned save (see above); every other
    unraisable exception goes to the hook that was there before.

    Why: when one write of a save fails (a full disk), orbax raises and closes its event loop
    while tensorstore's other writes are still in flight; each of them, finishing later, tries
    to wake the closed loop, and Python printed that as a traceback per write (85 lines after
    one disk-full error). Those writes belong to a save already reported as failed and removed.
    Installed by the first save or restore (again by a later one if the hook was swapped out).
    """
    global _late_hook
    with _quiet_lock:
        if _late_hook is not None and sys.unraisablehook is _late_hook:
            return
        previous = sys.unraisablehook  # (again when someone, e.g. pytest, swapped ours out)

        def hook(args: Any) -> None:
            if not _is_late_loop_callback(args):
                previous(args)

        _late_hook = sys.unraisablehook = hook


def _storage_advice(err: BaseException) -> str:
    """What to do about a failed write, in words every caller can use (no flags, no code)."""
    text = str(err)
    code = getattr(err, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT) or "RESOURCE_EXHAUSTED" in text or "No space" in text:
        return "free some space there, then run again"
    if code == errno.EROFS or "Read-only file system" in text:
        return "the file system is read-only: use a folder elsewhere"
    if code in (errno.EACCES, errno.EPERM) or "PERMISSION_DENIED" in text:
        return "make the folder writable for this user or use another one"
    return "fix the folder or the disk, then run again"


def _one_line(err: BaseException, limit: int = 300) -> str:
    """``err`` as one short line (tensorstore messages are long and multi-line)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- tree helpers


def abstract_tree(tree: Any) -> Any:
    """Shapes and dtypes of ``tree``'s leaves (what ``restore`` needs to rebuild it)."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(*_spec(a)), tree)


def _spec(leaf: Any) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of an array, scalar or ShapeDtypeStruct."""
    shape = getattr(leaf, "shape", None)
    dtype = getattr(leaf, "dtype", None)
    shape = tuple(np.shape(leaf)) if shape is None else tuple(shape)
    return shape, np.dtype(np.result_type(leaf) if dtype is None else dtype)


def _leaf_name(path: tuple[Any, ...]) -> str:
    """``state/params/0/w``: one naming for NamedTuple fields, dict keys and list indices."""

    def name(entry: Any) -> str:
        for attr in ("name", "key", "idx"):
            if hasattr(entry, attr):
                return str(getattr(entry, attr))
        return str(entry)

    return "/".join(name(e) for e in path)


def _named_leaves(tree: Any) -> dict[str, Any]:
    """{leaf name: leaf}; two leaves with one name would make checksums ambiguous."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    named = {_leaf_name(path): leaf for path, leaf in flat}
    if len(named) != len(flat):
        raise CheckpointError("two leaves of the tree have the same path name; rename a key")
    return named


def _leaf_digest(leaf: Any) -> str:
    """SHA-256 of dtype, shape and C-order bytes: equal digests mean an identical array."""
    a = np.asarray(leaf)
    h = hashlib.sha256(f"{a.dtype.str}|{a.shape}|".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _body_digest(body: dict[str, Any]) -> str:
    """Digest of the manifest's own content, so a changed ``checksums.json`` is caught too."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def incomplete_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Half-written steps (temporary folders) under ``directory`` and its rolling folder."""
    root = Path(directory)
    found: list[Path] = []
    for folder in (root, root / ROLLING_DIR):
        if folder.is_dir():
            found += sorted(p for p in folder.iterdir() if _TMP_MARK in p.name)
    return found


def _mark_store(directory: Path) -> None:
    """Write :data:`STORE_MARKER` (best effort: a read-only store is still readable)."""
    marker = directory / STORE_MARKER
    if not marker.is_file():
        with contextlib.suppress(OSError):
            marker.write_text(
                "checkpoints of jnn.checkpoints: temporary folders (*.orbax-checkpoint-tmp*) of "
                "an interrupted save here are removed when the store is next opened\n"
            )


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (of any user) on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's live process
        return True
    return True


def _left_by_killed_save(path: Path) -> bool:
    """A temporary step folder no save is writing: its name names a process that is gone, or
    names none (an older jnn's name). A live process's folder, this one's included (a save in
    another thread), is never one."""
    found = _TMP_NAME.match(path.name)
    if found is None:
        return True
    pid = int(found.group(1))
    return pid != os.getpid() and not _process_alive(pid)


# --------------------------------------------------------------------------- what a step holds


def check_identity(identity: Any) -> dict[str, Any] | None:
    """``identity`` as stored in a manifest (JSON round trip: tuples become lists), or None.

    It must be a dict of JSON values (str keys, finite numbers): it is compared with what a
    step recorded, so it must read back equal to what was written.
    """
    if identity is None:
        return None
    if not isinstance(identity, dict):
        raise CheckpointError(
            f"a checkpoint identity must be a dict, got {type(identity).__name__}; "
            'pass e.g. {"activation": "relu", "seed": 0}'
        )
    try:
        return json.loads(json.dumps(identity, sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise CheckpointError(
            f"a checkpoint identity must hold only JSON values (str keys, finite numbers, "
            f"lists, dicts): {_one_line(err, 120)}"
        ) from None


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as {"a.b": leaf} (how an identity difference is named in one line)."""
    if not isinstance(value, dict):
        return {prefix or "identity": value}
    out: dict[str, Any] = {}
    for key, item in value.items():
        out.update(_flat(item, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _identity_difference(stored: dict[str, Any], asked: dict[str, Any]) -> str:
    """The first few keys where two identities differ, e.g. ``activation: 'sigmoid' vs 'relu'``."""
    have, want, absent = _flat(stored), _flat(asked), object()
    keys = [k for k in sorted(set(have) | set(want)) if have.get(k, absent) != want.get(k, absent)]
    shown = [f"{k}: {have.get(k, 'absent')!r} vs {want.get(k, 'absent')!r}" for k in keys[:3]]
    more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
    return "; ".join(shown)[:300] + more


def _check_holds(
    path: Path, manifest: dict[str, Any], identity: dict[str, Any] | None, epoch: int | None
) -> None:
    """Refuse a step that is not what was asked for: another epoch than its folder's number
    (corrupt: skipped by restore_latest), or another identity than ``identity`` (foreign).
    A manifest without these fields (written before they existed) passes."""
    stored_epoch = manifest.get("epoch")
    if epoch is not None and stored_epoch is not None and stored_epoch != epoch:
        raise CorruptCheckpointError(
            path,
            f"it holds epoch {stored_epoch} but sits in the folder of epoch {epoch} (a copied "
            "or renamed step); delete this folder so that epoch is saved again",
        )
    stored = manifest.get("identity")
    if identity is not None and stored is not None and stored != identity:
        raise ForeignCheckpointError(
            f"checkpoint {path} holds another model than the one asked for "
            f"({_identity_difference(stored, identity)}; stored vs asked): it was copied from "
            "another run or model; put it back where it came from or delete it"
        )


# --------------------------------------------------------------------------- one step folder


def _write_staging(staging: Path, tree: Any, holds: dict[str, Any]) -> None:
    """Write ``tree`` with orbax under ``staging/tree`` and the manifest beside it (synced);
    ``holds``: what the step holds (``epoch``, ``identity``), recorded in the manifest."""
    leaves = {
        name: {"dtype": _spec(v)[1].str, "shape": list(_spec(v)[0]), "sha256": _leaf_digest(v)}
        for name, v in _named_leaves(tree).items()
    }
    staging.mkdir(parents=True)
    with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as ckptr:
        ckptr.save(staging / TREE_ITEM, args=ocp.args.StandardSave(tree))
    files = {
        p.relative_to(staging).as_posix(): {"bytes": p.stat().st_size, "sha256": _file_digest(p)}
        for p in sorted((staging / TREE_ITEM).rglob("*"))
        if p.is_file()
    }
    body = {"format": FORMAT, "algorithm": "sha256", "leaves": leaves, "files": files, **holds}
    with open(staging / MANIFEST, "w") as f:
        json.dump({**body, "digest": _body_digest(body)}, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def _tmp_name(path: Path, kind: str = "") -> Path:
    """A temporary sibling of ``path`` naming this process (so a later open can tell a folder
    of a live save from one left by a killed process)."""
    return path.with_name(f"{path.name}{_TMP_MARK}-{kind}{os.getpid()}-{time.time_ns()}")


def _commit(staging: Path, path: Path) -> None:
    """Rename ``staging`` to ``path``; an existing ``path`` is moved aside first, deleted after."""
    aside = None
    if path.exists() or path.is_symlink():
        aside = _tmp_name(path, "replaced-")
        os.rename(path, aside)
    try:
        os.rename(staging, path)
    except OSError:
        if aside is not None:
            os.rename(aside, path)
        raise
    with contextlib.suppress(OSError):  # make the rename durable where the OS allows it
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    if aside is not None:
        _remove(aside)


def _discard(path: Path) -> None:
    """Delete a step so that it disappears at once: renamed to a temporary name, then removed
    (a process killed meanwhile leaves a temporary folder, never a half-deleted step)."""
    aside = _tmp_name(path, "old-")
    try:
        os.rename(path, aside)
    except OSError:
        aside = path
    _remove(aside)


def _remove(path: Path) -> None:
    """Best-effort removal of a folder or file (cleanup must not hide the original error)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def _is_key(leaf: Any) -> bool:
    """A typed PRNG key array (``jax.random.key``), concrete or abstract."""
    dtype = getattr(leaf, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _key_impl(leaf: Any) -> str:
    """The PRNG implementation's name of a typed key leaf, also of a ShapeDtypeStruct (whose
    impl ``jax.random.key_impl`` cannot read, so it is read while tracing)."""
    found: list[str] = []

    def read(key: Any) -> Any:
        found.append(str(jax.random.key_impl(key)))
        return key

    jax.eval_shape(read, leaf)
    return found[0]


def _keys_as_data(tree: Any) -> Any:
    """``tree`` with every typed key leaf as its raw ``uint32`` key data: orbax and numpy store
    plain dtypes only; the data plus the template's impl rebuild the same keys bit for bit."""

    def data(leaf: Any) -> Any:
        if not _is_key(leaf):
            return leaf
        if isinstance(leaf, jax.ShapeDtypeStruct):
            return jax.eval_shape(jax.random.key_data, leaf)
        return jax.random.key_data(leaf)

    return jax.tree.map(data, tree)


def _data_as_keys(restored: Any, like: Any) -> Any:
    """Inverse of :func:`_keys_as_data`: key data back into typed keys where ``like`` has them."""
    return jax.tree.map(
        lambda r, t: jax.random.wrap_key_data(r, impl=_key_impl(t)) if _is_key(t) else r,
        restored,
        like,
    )


def save_tree(
    path: str | os.PathLike,
    tree: Any,
    *,
    replace: bool = False,
    identity: dict[str, Any] | None = None,
) -> Path:
    """Save ``tree`` as one verified checkpoint folder at ``path``; returns the absolute path.

    The folder appears complete (orbax data plus ``checksums.json``) or not at all. An existing
    ``path`` raises :class:`CheckpointError` unless ``replace`` (then it is swapped out only once
    the new one is complete). ``identity``: a JSON dict naming what the tree is, recorded in the
    manifest and checked by :func:`restore_tree`. Any storage failure is one
    :class:`CheckpointError` line.
    """
    return _save(path, tree, replace=replace, identity=check_identity(identity), epoch=None)


def _save(
    path: str | os.PathLike,
    tree: Any,
    *,
    replace: bool,
    identity: dict[str, Any] | None,
    epoch: int | None,
) -> Path:
    """:func:`save_tree`, recording the (checked) ``identity`` and ``epoch`` when not None."""
    path = Path(path).expanduser().absolute()
    if (path.exists() or path.is_symlink()) and not replace:
        raise CheckpointError(
            f"{path} already exists, and a checkpoint is never overwritten unasked; delete it "
            "or save somewhere else"
        )
    staging = _tmp_name(path)
    holds = {k: v for k, v in (("epoch", epoch), ("identity", identity)) if v is not None}
    tree = _keys_as_data(tree)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _SAVE_LOCK, _quiet_orbax():  # one save at a time per process (see CheckpointStore)
            _write_staging(staging, tree, holds)
        _commit(staging, path)
    except CheckpointError:
        _remove(staging)
        raise
    except Exception as err:  # tensorstore: ValueError("RESOURCE_EXHAUSTED ..."), OSError, ...
        _remove(staging)
        raise CheckpointError(
            f"could not save checkpoint {path}: {_one_line(err)}; nothing of it was kept and "
            f"the checkpoints already on disk are intact; {_storage_advice(err)}"
        ) from err
    return path


def _read_manifest(path: Path) -> dict[str, Any]:
    """The step's ``checksums.json``, itself verified; explains a folder that has none."""
    manifest = path / MANIFEST
    if not manifest.is_file():
        if not path.is_dir():
            raise CorruptCheckpointError(path, "it is not a folder")
        if (path / "default").is_dir() or (path / "_CHECKPOINT_METADATA").exists():
            raise CorruptCheckpointError(
                path,
                f"it was written without checksums (jnn before {FORMAT}), so its data cannot be "
                "verified; delete it or rerun without --resume",
            )
        what = "empty" if not any(path.iterdir()) else f"partial: no {MANIFEST}"
        raise CorruptCheckpointError(path, f"the folder is {what} (not a finished checkpoint)")
    try:
        data = json.loads(manifest.read_bytes())
        body = {k: v for k, v in data.items() if k != "digest"}
        ok = data.get("format") == FORMAT and data.get("digest") == _body_digest(body)
    except (OSError, ValueError, AttributeError) as err:
        reason = f"{MANIFEST} is unreadable ({_one_line(err, 80)})"
        raise CorruptCheckpointError(path, reason) from err
    if not ok:
        raise CorruptCheckpointError(path, f"{MANIFEST} fails its own checksum or format check")
    return data


def _check_like(path: Path, manifest: dict[str, Any], like: Any) -> None:
    """Orbax would silently pad, cut or cast arrays of another shape or dtype: compare first."""
    stored = manifest["leaves"]
    want = {name: _spec(leaf) for name, leaf in _named_leaves(like).items()}
    bad = []
    for name, (shape, dtype) in want.items():
        have = stored.get(name)
        got = None if have is None else (tuple(have["shape"]), np.dtype(have["dtype"]))
        if got != (shape, dtype):
            told = "nothing" if got is None else f"{got[0]} {got[1]}"
            bad.append(f"{name}: wanted {shape} {dtype}, stored {told}")
    extra = sorted(set(stored) - set(want))
    if bad or extra:
        raise CheckpointError(
            f"checkpoint {path} does not match the model being restored "
            f"({'; '.join(bad[:3]) or 'extra arrays ' + ', '.join(extra[:3])})"
        )


def _check_files(path: Path, manifest: dict[str, Any]) -> None:
    """Every file orbax wrote is present with its size and SHA-256 (checked before orbax reads:
    a truncated file otherwise surfaces as an asyncio traceback or a wrong-model message)."""
    for rel, want in manifest["files"].items():
        file = path / rel
        if not file.is_file():
            raise CorruptCheckpointError(path, f"file {rel} is missing")
        size = file.stat().st_size
        if size != want["bytes"]:
            raise CorruptCheckpointError(
                path, f"file {rel} has {size} bytes, expected {want['bytes']} (truncated?)"
            )
        if _file_digest(file) != want["sha256"]:
            raise CorruptCheckpointError(path, f"file {rel} fails its SHA-256 checksum")


def _check_leaves(path: Path, restored: Any, manifest: dict[str, Any]) -> None:
    """End to end: each restored array hashes to what was saved."""
    for name, leaf in _named_leaves(restored).items():
        if _leaf_digest(leaf) != manifest["leaves"][name]["sha256"]:
            raise CorruptCheckpointError(path, f"checksum mismatch of {name}: the data is corrupt")


def restore_tree(
    path: str | os.PathLike, like: Any, *, identity: dict[str, Any] | None = None
) -> Any:
    """The tree saved by :func:`save_tree` at ``path``, rebuilt with ``like``'s structure.

    Raises :class:`CorruptCheckpointError` when the folder fails any check (files, leaves, no
    manifest), :class:`ForeignCheckpointError` when ``identity`` is given and the folder recorded
    another one, and :class:`CheckpointError` when it holds other shapes or dtypes than ``like``.
    """
    return _restore(path, like, identity=check_identity(identity), epoch=None)


def _restore(
    path: str | os.PathLike, like: Any, *, identity: dict[str, Any] | None, epoch: int | None
) -> Any:
    """:func:`restore_tree`, also refusing a step whose recorded epoch is not ``epoch``."""
    path = Path(path).expanduser().absolute()
    template, like = like, _keys_as_data(like)
    manifest = _read_manifest(path)
    _check_holds(path, manifest, identity, epoch)
    _check_like(path, manifest, like)
    _check_files(path, manifest)
    try:
        with _quiet_orbax(), ocp.Checkpointer(ocp.StandardCheckpointHandler()) as ckptr:
            restored = ckptr.restore(
                path / TREE_ITEM, args=ocp.args.StandardRestore(abstract_tree(like))
            )
    except Exception as err:  # files verified, so this is a storage or orbax failure
        raise CorruptCheckpointError(path, f"orbax could not read it: {_one_line(err)}") from err
    _check_leaves(path, restored, manifest)
    return _data_as_keys(restored, template)


def _is_finished(path: Path) -> bool:
    """A committed step has its manifest (cheap check; full verification happens on restore)."""
    return (path / MANIFEST).is_file()


# --------------------------------------------------------------------------- the store


def _epoch_number(epoch: Any) -> int:
    """``epoch`` as an int if it is a whole number >= 0 (a step's folder is named by it); int()
    would save 2.7 as 2 and -1 into a folder no listing finds."""
    if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
        raise CheckpointError(f"a checkpoint's epoch must be a whole number >= 0, got {epoch!r}")
    return int(epoch)


class CheckpointStore:
    """The verified checkpoints of one model (or stacked models) under an absolute folder.

    ``identity`` (optional, a dict of JSON values): what this store's steps hold, e.g.
    ``{"study": ..., "activation": "relu", "seed": 0}``; every save records it and its epoch,
    and every restore refuses a step that recorded another identity, or another epoch than its
    folder's number (see the module doc). ``skipped`` lists the steps the last
    :meth:`restore_latest` passed over (a CLI can say "step 60 of latest/ was corrupt (...);
    resumed from step 50"); ``removed`` the temporary folders of killed saves this open deleted.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        create: bool = True,
        identity: dict[str, Any] | None = None,
    ) -> None:
        path = Path(directory).expanduser()
        if not path.is_absolute():
            path = path.resolve()
        self.directory = path
        self.identity = check_identity(identity)
        self.skipped: list[SkippedCheckpoint] = []
        self._unusable: set[Path] = set()  # folders this store found corrupt: save may replace
        if not create and not path.is_dir():
            raise CheckpointError(f"no checkpoint folder at {path}")
        owned = (path / STORE_MARKER).is_file()
        if create:
            try:
                (path / ROLLING_DIR).mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise CheckpointError(
                    f"cannot create checkpoint folder {path}: {_one_line(err)}; "
                    f"{_storage_advice(err)}"
                ) from err
            _mark_store(path)
        self.removed = self._tidy(owned)

    def _tidy(self, owned: bool) -> list[Path]:
        """Remove the temporary folders of saves whose process is gone (a killed save), when
        this folder is a store's (``owned``: it holds :data:`STORE_MARKER`); warn about them,
        and about any left in place (a live process's save, or a folder jnn did not mark)."""
        stale = incomplete_checkpoints(self.directory)
        removed = []
        for path in stale:
            if owned and _left_by_killed_save(path):
                _remove(path)
                if not (path.exists() or path.is_symlink()):
                    removed.append(path)
        kept = [p for p in stale if p not in removed]
        for paths, what in ((removed, "removed"), (kept, "ignoring")):
            if paths:
                warnings.warn(
                    f"{what} {len(paths)} half-written checkpoint folder(s) of an interrupted "
                    "save: " + ", ".join(str(p) for p in paths),
                    CheckpointWarning,
                    stacklevel=3,
                )
        return removed

    # ------------------------------------------------------------------ listing
    def _folder(self, rolling: bool) -> Path:
        return self.directory / ROLLING_DIR if rolling else self.directory

    def _numbered(self, rolling: bool) -> dict[int, Path]:
        """Every numbered folder (finished or not) of the chosen or the rolling kind."""
        folder = self._folder(rolling)
        if not folder.is_dir():
            return {}
        return {
            int(p.name): p
            for p in folder.iterdir()
            if p.name.isascii() and p.name.isdigit() and p.is_dir()
        }

    def saved_epochs(self) -> list[int]:
        """Finished checkpoints of the chosen epochs, ascending (verified only on restore)."""
        return sorted(e for e, p in self._numbered(False).items() if _is_finished(p))

    def rolling_epochs(self) -> list[int]:
        """Finished rolling checkpoints, ascending (normally at most one)."""
        return sorted(e for e, p in self._numbered(True).items() if _is_finished(p))

    def latest_epoch(self) -> int | None:
        """The newest finished checkpoint of either kind not found unusable, or None."""
        epochs = [
            e
            for rolling in (False, True)
            for e, p in self._numbered(rolling).items()
            if _is_finished(p) and p not in self._unusable
        ]
        return max(epochs) if epochs else None

    # ------------------------------------------------------------------ save
    def save(self, epoch: int, tree: Any, *, rolling: bool = False, replace: bool = False) -> None:
        """Save ``tree`` as ``epoch``; returns when it is committed (and verifiable) on disk.

        A rolling save removes the other rolling steps once it is complete; a chosen-epoch save
        is kept for good. An epoch already saved, or older than the newest checkpoint, raises
        :class:`CheckpointError` unless ``replace``: a save is never skipped. A folder at
        ``epoch`` that this store found unusable, or that is not a finished step, is replaced
        with a :class:`CheckpointWarning`. Saves from several threads are serialised.
        """
        epoch = _epoch_number(epoch)
        target = self._folder(rolling) / str(epoch)
        self._check_can_save(epoch, target, replace)
        # existing target: allowed by the check above
        _save(target, tree, replace=True, identity=self.identity, epoch=epoch)
        self._unusable.discard(target)
        if rolling:
            for other, path in self._numbered(True).items():
                if other != epoch:
                    _discard(path)
                    self._unusable.discard(path)

    def _check_can_save(self, epoch: int, target: Path, replace: bool) -> None:
        """Refuse to overwrite a good step or to go back in time, unless asked to."""
        if target.exists() and not replace:
            if target in self._unusable or not _is_finished(target):
                warnings.warn(
                    f"replacing the unusable checkpoint folder {target} with a new save",
                    CheckpointWarning,
                    stacklevel=3,
                )
            else:
                raise CheckpointError(
                    f"epoch {epoch} is already saved at {target}, and a saved epoch is never "
                    "overwritten unasked; delete that folder to save the epoch again"
                )
        newest = self.latest_epoch()
        if newest is not None and epoch < newest and not replace:
            raise CheckpointError(
                f"cannot save epoch {epoch} in {self.directory}: it is older than the newest "
                f"checkpoint (epoch {newest}), and saves never go back in time unasked; delete "
                "the newer checkpoints first, or save into a new folder"
            )

    # ------------------------------------------------------------------ restore
    def restore(self, epoch: int, like: Any) -> Any:
        """The checkpoint of ``epoch`` (chosen, else rolling), verified, rebuilt like ``like``.

        Raises :class:`CorruptCheckpointError` (one line: folder and what failed) when it fails
        verification or holds another epoch, :class:`ForeignCheckpointError` when it recorded
        another identity than the store's, :class:`CheckpointError` when there is none or it
        holds arrays of other shapes.
        """
        epoch = _epoch_number(epoch)
        found = [f[epoch] for f in (self._numbered(False), self._numbered(True)) if epoch in f]
        if not found:
            raise CheckpointError(
                f"no finished checkpoint of epoch {epoch} in {self.directory} "
                f"(have {self.saved_epochs() + self.rolling_epochs()})"
            )
        first: CorruptCheckpointError | None = None
        for path in found:
            try:
                return _restore(path, like, identity=self.identity, epoch=epoch)
            except CorruptCheckpointError as err:
                self._unusable.add(path)
                first = first or err
        assert first is not None
        raise first

    def restore_latest(self, like: Any) -> tuple[int, Any] | None:
        """(epoch, tree) of the newest step that verifies, or None when none does.

        ``like`` is the tree to rebuild, or a callable ``like(epoch)`` returning it for the
        candidate epoch (for trees whose shapes grow with the epoch, e.g. a history).

        Each newer step that fails verification (an empty/partial folder, or one holding
        another epoch than its number) is skipped: recorded in ``self.skipped`` and warned about
        with :class:`CheckpointWarning`. A step holding another model (another identity:
        :class:`ForeignCheckpointError`; other shapes or dtypes) raises :class:`CheckpointError`.
        """
        self.skipped = []
        candidates = [
            (epoch, rolling, path)
            for rolling in (False, True)
            for epoch, path in self._numbered(rolling).items()
        ]
        for epoch, _, path in sorted(candidates, key=lambda c: (-c[0], c[1])):
            try:
                tree = like(epoch) if callable(like) else like
                return epoch, _restore(path, tree, identity=self.identity, epoch=epoch)
            except CorruptCheckpointError as err:
                self._unusable.add(path)
                self.skipped.append(SkippedCheckpoint(epoch, path, err.reason))
                warnings.warn(
                    f"skipped checkpoint epoch {epoch} ({path}): {err.reason}",
                    CheckpointWarning,
                    stacklevel=2,
                )
        return None

    # ------------------------------------------------------------------ lifecycle
    def wait(self) -> None:
        """Saves are synchronous; kept so callers written for async orbax keep working."""

    def close(self) -> None:
        """Nothing to release (each save and restore opens and closes its own orbax objects)."""

    def __enter__(self) -> CheckpointStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
