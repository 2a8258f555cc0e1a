"""jnn.checkpoints: chosen-epoch and rolling checkpoints, restore, half-written steps ignored,
and damaged steps (flipped, truncated or deleted files, empty folders, a full disk) refused in one
line, with restore_latest falling back to the newest step that verifies."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from jnn import checkpoints, train
from jnn.checkpoints import CheckpointError, CheckpointStore, incomplete_checkpoints
from jnn.mlp import mlp

# Every test here saves and restores through orbax (its thread pool, fsync, checksums): 3-9 s each
# on 2 busy cores, the largest share of what the fast tier had left, so the module is `slow`.
pytestmark = pytest.mark.slow

# Big enough that the largest file of a step is an OCDBT data file (as in the real study).
SIZES = (100, 64, 10)


def _tree(seed: int = 0, epochs: int = 5) -> dict:
    model = mlp(SIZES, "relu", "glorot")
    keys = jax.random.split(jax.random.PRNGKey(seed), 2)
    state = train.init_train_states(keys, model, optax.sgd(0.1), SIZES[:1])
    history = train.empty_history(epochs, 2)
    history["train_loss"][:, 0] = [1.5, 2.5]
    return {"state": jax.device_get(state), "history": history}


def _equal(a, b) -> bool:
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(leaves_a) == len(leaves_b) and all(
        np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True)
        for x, y in zip(leaves_a, leaves_b)
    )


def test_save_restore_roundtrip_bit_exact(tmp_path):
    tree = _tree()
    with CheckpointStore(tmp_path / "relu") as store:
        store.save(2, tree)
        store.wait()
        assert store.saved_epochs() == [2]
        restored = store.restore(2, tree)
    assert isinstance(restored["state"], train.TrainState)
    assert _equal(restored, tree)
    assert restored["state"].key.dtype == np.uint32


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg"])
def test_a_state_with_typed_keys_round_trips_to_the_same_keys(tmp_path, impl):
    """train.py recommends jax.random.key(...): such a TrainState saves and restores (as key data
    plus the template's impl), whether the template is concrete or abstract."""
    model = mlp(SIZES, "relu", "glorot")
    state = train.init_train_state(jax.random.key(3, impl=impl), model, optax.adam(1e-3), (100,))
    assert jax.dtypes.issubdtype(state.key.dtype, jax.dtypes.prng_key)
    with CheckpointStore(tmp_path / "keys") as store:
        store.save(1, state)
        store.wait()
        for like in (state, jax.eval_shape(lambda: state)):
            restored = store.restore(1, like)
            assert restored.key.dtype == state.key.dtype
            assert jax.random.key_impl(restored.key) == jax.random.key_impl(state.key)
            np.testing.assert_array_equal(
                jax.random.key_data(restored.key), jax.random.key_data(state.key)
            )
            assert _equal(restored.params, state.params)


def test_rolling_keeps_only_newest_and_never_touches_chosen(tmp_path):
    tree = _tree()
    with CheckpointStore(tmp_path / "m") as store:
        store.save(2, tree)
        for epoch in (3, 4, 5):
            store.save(epoch, tree, rolling=True)
        store.wait()
        assert store.saved_epochs() == [2]
        assert store.rolling_epochs() == [5]
        assert store.latest_epoch() == 5
        epoch, restored = store.restore_latest(tree)
    assert epoch == 5 and _equal(restored, tree)
    # A new store over the same folder sees the same finished checkpoints.
    with CheckpointStore(tmp_path / "m") as again:
        assert again.saved_epochs() == [2] and again.rolling_epochs() == [5]


def test_half_written_checkpoint_of_a_killed_save_is_removed_at_the_next_open(tmp_path):
    """Issue 19: the temporary folders a SIGKILL during a save leaves were only warned about (and
    piled up); a store's own folder is now tidied when it is next opened."""
    tree = _tree()
    with CheckpointStore(tmp_path / "m") as store:
        store.save(2, tree)
        store.save(3, tree, rolling=True)
    assert (tmp_path / "m" / checkpoints.STORE_MARKER).is_file()
    dead = _dead_pid()
    killed = [  # what a SIGKILL during a save, a replace or a rolling discard leaves
        tmp_path / "m" / f"5.orbax-checkpoint-tmp-{dead}-1700000000000000000",
        tmp_path / "m" / f"2.orbax-checkpoint-tmp-replaced-{dead}-1700000000000000001",
        tmp_path / "m" / "latest" / f"3.orbax-checkpoint-tmp-old-{dead}-1700000000000000002",
        tmp_path / "m" / "4.orbax-checkpoint-tmp-1700000000",  # an older jnn's name, no pid
    ]
    for path in killed:
        shutil.copytree(tmp_path / "m" / "2", path)
    live = tmp_path / "m" / f"6.orbax-checkpoint-tmp-{os.getppid()}-1700000000000000003"
    live.mkdir()  # a save another live process is writing right now: never touched
    assert len(incomplete_checkpoints(tmp_path / "m")) == 5
    with pytest.warns(checkpoints.CheckpointWarning) as warned:
        store = CheckpointStore(tmp_path / "m")
    assert sorted(store.removed) == sorted(killed)
    assert incomplete_checkpoints(tmp_path / "m") == [live]
    text = " ".join(str(w.message) for w in warned)
    assert "removed 4 half-written" in text and "ignoring 1 half-written" in text
    with store:
        assert store.saved_epochs() == [2] and store.rolling_epochs() == [3]
        epoch, restored = store.restore_latest(tree)
    assert epoch == 3 and _equal(restored, tree)


def test_temporary_folders_in_a_folder_jnn_did_not_mark_are_left_alone(tmp_path):
    """An orbax CheckpointManager's folder (same temporary names) is not a store's: warn only."""
    folder = tmp_path / "orbax_manager"
    stray = folder / "7.orbax-checkpoint-tmp-1700000000"
    stray.mkdir(parents=True)
    with pytest.warns(checkpoints.CheckpointWarning, match="ignoring 1 half-written"):
        store = CheckpointStore(folder)
    assert store.removed == [] and stray.is_dir()


def _dead_pid() -> int:
    """The pid of a process that has exited (reaped): what a killed save's name records."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(proc.stdout)


def test_restore_errors_are_clear(tmp_path):
    tree = _tree()
    with CheckpointStore(tmp_path / "m") as store:
        assert store.restore_latest(tree) is None
        with pytest.raises(CheckpointError, match="no finished checkpoint of epoch 7"):
            store.restore(7, tree)
        store.save(1, tree)
        store.wait()
        other = _tree(epochs=9)  # history of another length: a different run
        with pytest.raises(CheckpointError, match="does not match"):
            store.restore(1, other)


def test_relative_path_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with CheckpointStore("rel/m") as store:
        store.save(1, _tree())
    assert store.directory.is_absolute() and (tmp_path / "rel" / "m" / "1").is_dir()


# ------------------------------------------------------------------ damaged steps


def _largest_file(step: Path) -> Path:
    return max((p for p in step.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _flip(path: Path, count: int = 16) -> None:
    """Invert ``count`` bytes in the middle of ``path`` (size unchanged)."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + count] = bytes(b ^ 0xFF for b in data[mid : mid + count])
    path.write_bytes(bytes(data))


def _assert_one_quiet_line(message: str, capfd, caplog) -> None:
    """The error is one line, and nothing else reached the console (no orbax/absl/asyncio)."""
    assert "\n" not in message and len(message) < 600, message
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Event loop" not in err and "absl" not in err, err
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


DAMAGE = {  # name: (what is done to the file, what the message must say)
    "flip": (_flip, "fails its SHA-256 checksum"),
    "truncate": (lambda f: os.truncate(f, f.stat().st_size // 2), "truncated"),
    "delete": (Path.unlink, "is missing"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_data_file_is_refused_in_one_line(tmp_path, capfd, caplog, damage):
    """Orbax restored 16 flipped bytes as garbage (loss 5.5e34), and a truncated or deleted file
    as "does not match the model" plus asyncio tracebacks."""
    tree = _tree()
    with CheckpointStore(tmp_path / "m") as store:
        store.save(3, tree)
    step = tmp_path / "m" / "3"
    data = _largest_file(step)
    assert data.parent.name == "d", data  # an OCDBT data file, not metadata
    do, says = DAMAGE[damage]
    do(data)
    capfd.readouterr()
    with pytest.raises(CheckpointError, match=f"checkpoint {step} is unusable") as info:
        CheckpointStore(tmp_path / "m").restore(3, tree)
    assert says in str(info.value) and data.name in str(info.value)
    _assert_one_quiet_line(str(info.value), capfd, caplog)


def test_changed_manifest_is_refused(tmp_path):
    tree = _tree()
    with CheckpointStore(tmp_path / "m") as store:
        store.save(3, tree)
        _flip(tmp_path / "m" / "3" / "checksums.json", 4)
        with pytest.raises(CheckpointError, match="checksums.json (is unreadable|fails its own)"):
            store.restore(3, tree)


def test_leaf_checksum_mismatch_names_the_leaf(tmp_path):
    """The end-to-end check: a restored array that does not hash to what was saved."""
    tree = _tree()
    with CheckpointStore(tmp_path / "m") as store:
        store.save(3, tree)
        path = tmp_path / "m" / "3" / "checksums.json"
        body = json.loads(path.read_text())
        del body["digest"]
        body["leaves"]["state/params/0/w"]["sha256"] = "0" * 64
        path.write_text(json.dumps({**body, "digest": checkpoints._body_digest(body)}))
        with pytest.raises(CheckpointError, match="checksum mismatch of state/params/0/w"):
            store.restore(3, tree)


def test_step_without_checksums_is_refused(tmp_path):
    """A step in the older format (plain orbax, no checksums.json) cannot be verified."""
    import orbax.checkpoint as ocp

    tree = _tree()
    options = ocp.CheckpointManagerOptions(enable_async_checkpointing=False)
    with ocp.CheckpointManager(
        tmp_path / "m", options=options, item_handlers=ocp.StandardCheckpointHandler()
    ) as manager:
        manager.save(4, args=ocp.args.StandardSave(tree))
    with pytest.raises(CheckpointError, match="written without checksums.*cannot be verified"):
        CheckpointStore(tmp_path / "m").restore(4, tree)


def test_restore_latest_falls_back_to_newest_good_step(tmp_path):
    good, newer = _tree(0), _tree(1)
    with CheckpointStore(tmp_path / "m") as store:
        store.save(2, good)
        store.save(3, newer, rolling=True)
    bad = tmp_path / "m" / "latest" / "3"
    _flip(_largest_file(bad))
    store = CheckpointStore(tmp_path / "m")
    with pytest.warns(checkpoints.CheckpointWarning, match=r"epoch 3 .*latest/3.*checksum"):
        epoch, restored = store.restore_latest(good)
    assert epoch == 2 and _equal(restored, good)
    assert [(s.epoch, s.path) for s in store.skipped] == [(3, bad)]
    assert "SHA-256" in store.skipped[0].reason and store.latest_epoch() == 2
    # Training goes on from epoch 2 and reaches epoch 3 again: the corrupt step is replaced.
    with pytest.warns(checkpoints.CheckpointWarning, match="replacing the unusable"):
        store.save(3, newer, rolling=True)
    assert _equal(store.restore(3, newer), newer)


def test_restore_latest_is_none_when_no_step_verifies(tmp_path):
    tree = _tree()
    with CheckpointStore(tmp_path / "m") as store:
        store.save(2, tree)
    (tmp_path / "m" / "2" / "checksums.json").unlink()
    store = CheckpointStore(tmp_path / "m")
    with pytest.warns(checkpoints.CheckpointWarning, match="partial"):
        assert store.restore_latest(tree) is None
    assert [s.epoch for s in store.skipped] == [2]


def test_empty_numbered_folder_is_never_a_step(tmp_path):
    """Orbax took an empty ``latest/7`` as the newest step, and resume failed on it."""
    tree = _tree()
    with CheckpointStore(tmp_path / "m") as store:
        store.save(3, tree, rolling=True)
    (tmp_path / "m" / "latest" / "7").mkdir()
    (tmp_path / "m" / "9").mkdir()
    (tmp_path / "m" / "9" / "junk").write_text("x")
    store = CheckpointStore(tmp_path / "m")
    assert store.latest_epoch() == 3 and store.rolling_epochs() == [3]
    assert store.saved_epochs() == []
    with pytest.warns(checkpoints.CheckpointWarning):
        epoch, restored = store.restore_latest(tree)
    assert epoch == 3 and _equal(restored, tree)
    reasons = {s.epoch: s.reason for s in store.skipped}
    assert set(reasons) == {7, 9} and "empty" in reasons[7] and "partial" in reasons[9]
    store.save(4, tree, rolling=True)  # the next rolling save clears the rolling folder
    assert sorted(p.name for p in (tmp_path / "m" / "latest").iterdir()) == ["4"]


def test_an_epoch_that_is_not_a_whole_number_is_refused(tmp_path):
    """Adversarial pass: save took int(epoch), so 2.7 was saved as epoch 2, "1" and True as 1,
    and -1 into a folder "-1" that no listing or restore ever finds again."""
    with CheckpointStore(tmp_path / "m") as store:
        for bad in (-1, 2.7, "1", True, None):
            with pytest.raises(CheckpointError, match="epoch must be a whole number >= 0") as err:
                store.save(bad, _tree(0))
            assert "\n" not in str(err.value)
        store.save(np.int64(3), _tree(0))
        with pytest.raises(CheckpointError, match="epoch must be a whole number >= 0"):
            store.restore(3.5, _tree(0))
        assert _equal(store.restore(3, _tree(0)), _tree(0))
        assert sorted(p.name for p in store.directory.iterdir() if p.name[0] != ".") == [
            "3",
            "latest",
        ]


def test_save_never_skips_an_existing_or_older_epoch(tmp_path):
    """Orbax returned without saving when the epoch was not newer than the newest one."""
    a, b = _tree(0), _tree(1)
    with CheckpointStore(tmp_path / "m") as store:
        store.save(2, a)
        with pytest.raises(CheckpointError, match="epoch 2 is already saved.*delete that"):
            store.save(2, b)
        store.save(5, a, rolling=True)
        with pytest.raises(CheckpointError, match=r"older than the newest checkpoint \(epoch 5\)"):
            store.save(4, b)
        with pytest.raises(CheckpointError, match="older than the newest"):
            store.save(3, b, rolling=True)
        with pytest.raises(CheckpointError, match="epoch 5 is already saved"):
            store.save(5, b, rolling=True)
        assert _equal(store.restore(2, a), a)  # the refused saves changed nothing
        store.save(2, b, replace=True)
        assert _equal(store.restore(2, a), b) and store.saved_epochs() == [2]
        store.save(4, b, rolling=True, replace=True)
        assert store.rolling_epochs() == [4] and _equal(store.restore(4, a), b)


def test_refusals_say_what_to_do_in_words_a_cli_user_can_follow(tmp_path):
    """Issue 19: the library's refusals told CLI users to "pass replace=True" (a keyword of a
    function they never call); they say what to do without naming code or flags."""
    a = _tree(0)
    store = CheckpointStore(tmp_path / "m")
    store.save(2, a)
    store.save(5, a, rolling=True)
    checkpoints.save_tree(tmp_path / "t", a)
    refusals = [
        (lambda: store.save(2, a), "delete that folder to save the epoch again"),
        (lambda: store.save(4, a), "delete the newer checkpoints first, or save into a new"),
        (lambda: checkpoints.save_tree(tmp_path / "t", a), "delete it or save somewhere else"),
    ]
    for refused, says in refusals:
        with pytest.raises(CheckpointError) as info:
            refused()
        message = str(info.value)
        assert says in message and "replace=True" not in message and "--" not in message


def _resource_exhausted(*args, **kwargs):
    raise ValueError(
        'RESOURCE_EXHAUSTED: Error writing local file "/x/d/4f1e.__lock":\n'
        "No space left on device [OS error: No space left on device]"
    )


def test_full_disk_during_save_is_one_line_and_keeps_finished_steps(
    tmp_path, monkeypatch, capfd, caplog
):
    """Tensorstore reports a full disk as a ValueError, which escaped with orbax's tracebacks."""
    import tensorstore

    tree = _tree()
    store = CheckpointStore(tmp_path / "m")
    store.save(2, tree)
    monkeypatch.setattr(tensorstore, "open", _resource_exhausted)
    capfd.readouterr()
    with pytest.raises(CheckpointError, match="could not save checkpoint .*RESOURCE_EXHAUSTED"):
        try:
            store.save(3, tree, rolling=True)
        except CheckpointError as err:
            _assert_one_quiet_line(str(err), capfd, caplog)
            raise
    monkeypatch.undo()
    assert incomplete_checkpoints(tmp_path / "m") == []  # the partial save was cleaned up
    assert store.latest_epoch() == 2 and _equal(store.restore(2, tree), tree)


def test_storage_failure_during_restore_is_one_line(tmp_path, monkeypatch, capfd, caplog):
    import tensorstore

    tree = _tree()
    with CheckpointStore(tmp_path / "m") as store:
        store.save(2, tree)
        monkeypatch.setattr(tensorstore, "open", _resource_exhausted)
        capfd.readouterr()
        with pytest.raises(CheckpointError, match="could not read it: RESOURCE_EXHAUSTED") as info:
            store.restore(2, tree)
    _assert_one_quiet_line(str(info.value), capfd, caplog)


_LATE_WRITES = """
import asyncio, sys
import numpy as np
import tensorstore
from jnn.checkpoints import CheckpointError, CheckpointStore

closed = asyncio.new_event_loop()
closed.close()
pending = []


def late_write():
    # A write of the failing save still in flight: when it finishes, tensorstore wakes the
    # event loop orbax awaited it on, which is closed by then (as on a real full disk).
    promise, future = tensorstore.Promise.new()
    future.add_done_callback(lambda _: closed.call_soon_threadsafe(print))
    return promise


def full_disk(*args, **kwargs):
    late_write().set_result(None)  # finishes while orbax is still unwinding
    pending.extend(late_write() for _ in range(13))
    raise ValueError("RESOURCE_EXHAUSTED: Error writing local file: No space left on device")


store = CheckpointStore(sys.argv[1])
tensorstore.open = full_disk
try:
    store.save(3, {"w": np.ones(4, np.float32)})
except CheckpointError as err:
    print(f"error: {err}", file=sys.stderr)
for promise in pending:  # the other writes finish after the caller has seen the error
    promise.set_result(None)
"""


def test_full_disk_is_one_line_without_the_late_writes_tracebacks(tmp_path):
    """Issue 19: a full disk during a sweep's save printed 85 lines, 14 tracebacks of
    "RuntimeError: Event loop is closed": tensorstore finishing the save's other writes after
    orbax had given up and closed its event loop. Reproduced with tensorstore's own futures."""
    proc = subprocess.run(
        [sys.executable, "-c", _LATE_WRITES, str(tmp_path / "m")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: could not save checkpoint") and "free some space" in lines[0]
    assert "--resume" not in lines[0] and "replace=True" not in lines[0]
    assert incomplete_checkpoints(tmp_path / "m") == []


@pytest.mark.parametrize(
    "err, says",
    [
        (OSError(28, "No space left on device"), "free some space there"),
        (PermissionError(13, "Permission denied"), "make the folder writable"),
        (OSError(30, "Read-only file system"), "the file system is read-only"),
    ],
    ids=["ENOSPC", "EACCES", "EROFS"],
)
def test_storage_errors_of_a_save_say_what_to_do_without_naming_flags(
    tmp_path, monkeypatch, err, says
):
    """A library error names no flag: vgg_transfer's read-only --cache-dir was told to rerun
    with --resume, which vgg_transfer does not have."""

    def fail(*args, **kwargs):
        raise err

    monkeypatch.setattr(checkpoints, "_write_staging", fail)
    with pytest.raises(CheckpointError, match=says) as info:
        checkpoints.save_tree(tmp_path / "t", {"a": np.zeros(2)})
    message = str(info.value)
    assert "\n" not in message and "--" not in message and "replace=True" not in message
    assert str(tmp_path / "t") in message and not list(tmp_path.iterdir())


# ------------------------------------------------------------------ what a step holds

RELU = {"study": "mlp_sweep", "activation": "relu", "seed": 0, "sizes": (100, 64, 10)}
SIGMOID = {**RELU, "activation": "sigmoid"}


def _replace_step(src: Path, dst: Path) -> None:
    """What a user's cp -r does: ``dst`` becomes a copy of ``src``."""
    shutil.rmtree(dst)
    shutil.copytree(src, dst)


def test_manifest_records_identity_and_epoch(tmp_path):
    with CheckpointStore(tmp_path / "relu", identity=RELU) as store:
        store.save(6, _tree())
        store.save(7, _tree(), rolling=True)
    for step, epoch in (("6", 6), ("latest/7", 7)):
        manifest = json.loads((tmp_path / "relu" / step / "checksums.json").read_text())
        assert manifest["epoch"] == epoch
        assert manifest["identity"] == {**RELU, "sizes": [100, 64, 10]}  # as JSON stores it


def test_a_copy_of_another_models_step_is_refused(tmp_path, capfd, caplog):
    """Issue 19: relu/6 replaced by a copy of sigmoid/6 (same shapes) restored silently, and
    --resume went on training the sigmoid net as the relu one."""
    relu, sigmoid = _tree(0), _tree(1)
    with CheckpointStore(tmp_path / "relu", identity=RELU) as store:
        store.save(6, relu)
    with CheckpointStore(tmp_path / "sigmoid", identity=SIGMOID) as store:
        store.save(6, sigmoid)
    _replace_step(tmp_path / "relu" / "6", tmp_path / "sigmoid" / "6")
    store = CheckpointStore(tmp_path / "sigmoid", identity=SIGMOID)
    capfd.readouterr()
    for restore in (lambda: store.restore(6, sigmoid), lambda: store.restore_latest(sigmoid)):
        with pytest.raises(checkpoints.ForeignCheckpointError) as info:
            restore()
        message = str(info.value)
        assert str(tmp_path / "sigmoid" / "6") in message
        assert "activation: 'relu' vs 'sigmoid'; stored vs asked" in message
        assert "put it back where it came from or delete it" in message
        _assert_one_quiet_line(message, capfd, caplog)
    assert isinstance(info.value, CheckpointError) and store.skipped == []
    # Without an identity to check (a store of jnn before identities), the step restores.
    assert _equal(CheckpointStore(tmp_path / "sigmoid").restore(6, sigmoid), relu)


def test_a_copy_of_another_epochs_step_is_refused(tmp_path):
    """Issue 19: relu/6 copied over relu/12 made load_sweep_checkpoint(run, "relu", 12) return
    the epoch-6 model labelled epoch 12. The folder's number must be the epoch stored in it,
    with or without an identity; restore_latest skips the copy like any corrupt step."""
    six, twelve = _tree(0), _tree(1)
    with CheckpointStore(tmp_path / "relu", identity=RELU) as store:
        store.save(6, six)
        store.save(12, twelve)
    _replace_step(tmp_path / "relu" / "6", tmp_path / "relu" / "12")
    step = tmp_path / "relu" / "12"
    for identity in (RELU, None):
        store = CheckpointStore(tmp_path / "relu", identity=identity, create=False)
        with pytest.raises(checkpoints.CorruptCheckpointError) as info:
            store.restore(12, twelve)
        assert str(info.value) == (
            f"checkpoint {step} is unusable: it holds epoch 6 but sits in the folder of epoch "
            "12 (a copied or renamed step); delete this folder so that epoch is saved again"
        )
    with pytest.warns(checkpoints.CheckpointWarning, match="holds epoch 6 but sits in"):
        epoch, restored = store.restore_latest(six)
    assert epoch == 6 and _equal(restored, six) and [s.epoch for s in store.skipped] == [12]


def test_steps_that_record_no_identity_or_epoch_still_restore(tmp_path):
    """Back-compat: steps written before identities existed (their manifest has neither field)
    restore under a store that has an identity; a step saved with an identity must match."""
    tree = _tree()
    with CheckpointStore(tmp_path / "relu") as store:
        store.save(6, tree)
    path = tmp_path / "relu" / "6" / "checksums.json"
    body = json.loads(path.read_text())
    del body["digest"], body["epoch"]
    assert "identity" not in body  # the store had none
    path.write_text(json.dumps({**body, "digest": checkpoints._body_digest(body)}))
    store = CheckpointStore(tmp_path / "relu", identity=RELU)
    assert _equal(store.restore(6, tree), tree)
    epoch, restored = store.restore_latest(tree)
    assert epoch == 6 and _equal(restored, tree)


def test_save_tree_and_restore_tree_take_an_identity(tmp_path):
    tree, path = _tree(), tmp_path / "vgg16"
    checkpoints.save_tree(path, tree, identity={"weights": "keras", "layers": 13})
    assert _equal(checkpoints.restore_tree(path, tree), tree)
    same = checkpoints.restore_tree(path, tree, identity={"layers": 13, "weights": "keras"})
    assert _equal(same, tree)
    with pytest.raises(checkpoints.ForeignCheckpointError, match="weights: 'keras' vs 'torch'"):
        checkpoints.restore_tree(path, tree, identity={"weights": "torch", "layers": 13})
    more = {"weights": "keras", "layers": 13, "extra": 1}
    with pytest.raises(checkpoints.ForeignCheckpointError, match="extra: 'absent' vs 1"):
        checkpoints.restore_tree(path, tree, identity=more)


@pytest.mark.parametrize(
    "identity, says",
    [
        (["relu"], "must be a dict, got list"),
        ({"activation": object()}, "only JSON values"),
        ({"lr": float("nan")}, "only JSON values"),
    ],
    ids=["list", "object", "nan"],
)
def test_identity_must_be_a_json_dict(tmp_path, identity, says):
    with pytest.raises(CheckpointError, match=says) as info:
        CheckpointStore(tmp_path / "m", identity=identity)
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match=says):
        checkpoints.save_tree(tmp_path / "t", {"a": np.zeros(2)}, identity=identity)
    assert not (tmp_path / "t").exists()
