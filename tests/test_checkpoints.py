"""jnn.checkpoints: chosen-epoch and rolling checkpoints, restore, half-written steps ignored."""

from __future__ import annotations

import shutil

import jax
import numpy as np
import optax
import pytest

from jnn import train
from jnn.checkpoints import CheckpointError, CheckpointStore, incomplete_checkpoints

SIZES = (12, 8, 4)


def _tree(seed: int = 0, epochs: int = 5) -> dict:
    state = train.init_model_states(
        jax.random.split(jax.random.PRNGKey(seed), 2), SIZES, optax.sgd(0.1), "glorot"
    )
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


def test_rolling_keeps_only_newest_and_never_touches_chosen(tmp_path):
    tree = _tree()
    with CheckpointStore(tmp_path / "m") as store:
        store.save(2, tree)
        for epoch in (1, 3, 4):
            store.save(epoch, tree, rolling=True)
        store.wait()
        assert store.saved_epochs() == [2]
        assert store.rolling_epochs() == [4]
        assert store.latest_epoch() == 4
        epoch, restored = store.restore_latest(tree)
    assert epoch == 4 and _equal(restored, tree)
    # A new store over the same folder sees the same finished checkpoints.
    with CheckpointStore(tmp_path / "m") as again:
        assert again.saved_epochs() == [2] and again.rolling_epochs() == [4]


def test_half_written_checkpoint_is_ignored_with_warning(tmp_path):
    tree = _tree()
    with CheckpointStore(tmp_path / "m") as store:
        store.save(2, tree)
    # What a SIGKILL during the save of epoch 5 leaves: a temporary folder, never committed.
    shutil.copytree(tmp_path / "m" / "2", tmp_path / "m" / "5.orbax-checkpoint-tmp-1700000000")
    assert len(incomplete_checkpoints(tmp_path / "m")) == 1
    with pytest.warns(RuntimeWarning, match="half-written"):
        store = CheckpointStore(tmp_path / "m")
    with store:
        assert store.latest_epoch() == 2
        epoch, _ = store.restore_latest(tree)
    assert epoch == 2


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
