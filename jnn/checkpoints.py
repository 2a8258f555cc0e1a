"""Orbax checkpoints of one training run (one model, or M stacked models) in one folder.

    store = CheckpointStore("/abs/run/relu")
    store.save(50, {"state": state, "history": history})                # kept forever
    store.save(60, {"state": state, "history": history}, rolling=True)  # only the newest kept
    epoch, tree = store.restore_latest(like)        # newest finished checkpoint of either kind
    tree = store.restore(50, like)                  # like: a tree of arrays / ShapeDtypeStructs

Layout: ``<dir>/<epoch>/`` for the chosen epochs (the study's ``--save-at``), never deleted, and
``<dir>/latest/<epoch>/`` for the rolling crash-safety checkpoint, of which only the newest is
kept. Orbax writes each step into a temporary folder and renames it when complete, so a process
killed mid-save leaves a ``*.orbax-checkpoint-tmp*`` folder that is never listed or loaded; this
module warns about such leftovers. Saves are synchronous and serialised across threads.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jnn.errors import InputError

ROLLING_DIR = "latest"
_SAVE_LOCK = threading.Lock()
_TMP_MARK = ".orbax-checkpoint-tmp"

# Orbax logs every save and restore at INFO through absl; keep the console for the experiments.
logging.getLogger("absl").setLevel(logging.WARNING)


class CheckpointError(InputError):
    """A checkpoint folder is unusable as asked (relative path, missing epoch, wrong shape)."""


def abstract_tree(tree: Any) -> Any:
    """Shapes and dtypes of ``tree``'s leaves (what ``restore`` needs to rebuild it)."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.result_type(a)), tree)


def incomplete_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Half-written steps (orbax temporary folders) under ``directory`` and its rolling folder."""
    root = Path(directory)
    found: list[Path] = []
    for folder in (root, root / ROLLING_DIR):
        if folder.is_dir():
            found += sorted(p for p in folder.iterdir() if _TMP_MARK in p.name)
    return found


def _shapes_by_path(tree: Any) -> dict[str, tuple[int, ...]]:
    """{"state/params/0/w": shape, ...}: one naming for NamedTuples, dicts, lists and metadata."""

    def name(entry: Any) -> str:
        for attr in ("name", "key", "idx"):
            if hasattr(entry, attr):
                return str(getattr(entry, attr))
        return str(entry)

    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {"/".join(name(e) for e in path): tuple(np.shape(leaf)) for path, leaf in flat}


class CheckpointStore:
    """The checkpoints of one model (or stacked models) under an absolute folder."""

    def __init__(self, directory: str | os.PathLike, *, create: bool = True) -> None:
        path = Path(directory).expanduser()
        if not path.is_absolute():  # orbax's background thread would fail later, less clearly
            path = path.resolve()
        self.directory = path
        if not create and not path.is_dir():
            raise CheckpointError(f"no checkpoint folder at {path}")
        stale = incomplete_checkpoints(path)
        if stale:
            warnings.warn(
                f"ignoring {len(stale)} half-written checkpoint(s) (interrupted save): "
                + ", ".join(str(p) for p in stale),
                RuntimeWarning,
                stacklevel=2,
            )

        # Synchronous saves: the trees saved here are small (~1 MB per model), and orbax's async
        # machinery raced when two managers in one process saved the same step at once
        # (FileExistsError on "<step>.orbax-checkpoint-tmp", seen with one thread per activation).
        def options(keep: int | None) -> ocp.CheckpointManagerOptions:
            return ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=create, enable_async_checkpointing=False
            )

        self._saved = ocp.CheckpointManager(
            path, options=options(None), item_handlers=ocp.StandardCheckpointHandler()
        )
        self._rolling = ocp.CheckpointManager(
            path / ROLLING_DIR, options=options(1), item_handlers=ocp.StandardCheckpointHandler()
        )

    # ------------------------------------------------------------------ listing
    def saved_epochs(self) -> list[int]:
        """Finished checkpoints of the chosen epochs, ascending."""
        return sorted(int(s) for s in self._saved.all_steps())

    def rolling_epochs(self) -> list[int]:
        return sorted(int(s) for s in self._rolling.all_steps())

    def latest_epoch(self) -> int | None:
        """The newest finished checkpoint of either kind, or None."""
        epochs = self.saved_epochs() + self.rolling_epochs()
        return max(epochs) if epochs else None

    # ------------------------------------------------------------------ save / restore
    def save(self, epoch: int, tree: Any, *, rolling: bool = False) -> None:
        """Save ``tree`` as ``epoch``; returns when it is committed on disk.

        A rolling save replaces the previous rolling checkpoint once it is complete; a chosen-
        epoch save is kept for good. Saves from several threads are serialised.
        """
        manager = self._rolling if rolling else self._saved
        try:
            with _SAVE_LOCK:  # one save at a time per process (see __init__)
                manager.save(int(epoch), args=ocp.args.StandardSave(tree))
                manager.wait_until_finished()
        except OSError as err:
            raise CheckpointError(
                f"could not save epoch {epoch} to {manager.directory}: {err}; the finished "
                "checkpoints are intact, rerun with --resume"
            ) from err

    def restore(self, epoch: int, like: Any) -> Any:
        """The checkpoint of ``epoch`` (chosen or rolling), rebuilt with ``like``'s structure."""
        epoch = int(epoch)
        for manager in (self._saved, self._rolling):
            if epoch in manager.all_steps():
                self.wait()
                self._check_matches(manager, epoch, like)
                try:
                    return manager.restore(
                        epoch, args=ocp.args.StandardRestore(abstract_tree(like))
                    )
                except (ValueError, KeyError, TypeError) as err:
                    raise CheckpointError(
                        f"checkpoint {self.directory} epoch {epoch} does not match the model "
                        f"being restored: {' '.join(str(err).split())[:300]}"
                    ) from err
        raise CheckpointError(
            f"no finished checkpoint of epoch {epoch} in {self.directory} "
            f"(have {self.saved_epochs() + self.rolling_epochs()})"
        )

    def _check_matches(self, manager: ocp.CheckpointManager, epoch: int, like: Any) -> None:
        """Orbax would silently pad or cut arrays of another shape: compare shapes first."""
        stored = manager.item_metadata(epoch)
        have = _shapes_by_path(getattr(stored, "tree", stored))
        want = _shapes_by_path(like)
        bad = [
            f"{path}: wanted {shape}, stored {have.get(path, 'nothing')}"
            for path, shape in want.items()
            if have.get(path) != shape
        ]
        if bad or len(have) != len(want):
            extra = sorted(set(have) - set(want))
            raise CheckpointError(
                f"checkpoint {self.directory} epoch {epoch} does not match the model being "
                f"restored ({'; '.join(bad[:3]) or 'extra arrays ' + ', '.join(extra[:3])})"
            )

    def restore_latest(self, like: Any) -> tuple[int, Any] | None:
        """(epoch, tree) of the newest finished checkpoint, or None when there is none."""
        epoch = self.latest_epoch()
        return None if epoch is None else (epoch, self.restore(epoch, like))

    def wait(self) -> None:
        """Block until every started save is on disk."""
        self._saved.wait_until_finished()
        self._rolling.wait_until_finished()

    def close(self) -> None:
        self._saved.close()
        self._rolling.close()

    def __enter__(self) -> CheckpointStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
