"""experiments.report's run folders: only jnn's ``.jnn-run`` marker makes a folder jnn's own, so
``--overwrite`` never deletes a folder of the user's, whatever else it holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments import report


@pytest.fixture(autouse=True)
def _release():
    yield
    report.release_run_dirs()


def _users_folder(tmp_path: Path, *bookkeeping: str) -> Path:
    out = tmp_path / "u"
    out.mkdir()
    (out / "thesis.txt").write_text("three years of work")
    for name in bookkeeping:
        (out / name).touch()
    return out


def test_a_stray_lock_does_not_make_a_folder_ours(tmp_path):
    """Issue 19: a folder holding thesis.txt and an empty .jnn-lock (copied, synced, touched)
    was taken for a jnn run by --overwrite, and emptied."""
    out = _users_folder(tmp_path, report.LOCK_FILE)
    for check in (report.check_run_dir, report.prepare_run_dir):
        with pytest.raises(report.RunDirError, match="--overwrite refused") as err:
            check(out, overwrite=True)
        assert "\n" not in str(err.value) and "no .jnn-run marker" in str(err.value)
    assert (out / "thesis.txt").read_text() == "three years of work"
    assert sorted(p.name for p in out.iterdir()) == [report.LOCK_FILE, "thesis.txt"]


def test_a_folder_named_like_the_marker_is_not_the_marker(tmp_path):
    out = tmp_path / "u"
    (out / report.RUN_MARKER).mkdir(parents=True)
    (out / report.RUN_MARKER / "thesis.txt").write_text("three years of work")
    with pytest.raises(report.RunDirError, match="--overwrite refused"):
        report.prepare_run_dir(out, overwrite=True)
    assert (out / report.RUN_MARKER / "thesis.txt").read_text() == "three years of work"


def test_bookkeeping_alone_counts_as_empty(tmp_path):
    """The lock of a run killed before it wrote its marker: nothing of anyone's to delete, so
    the folder is used as an empty one (and marked) with or without --overwrite."""
    out = tmp_path / "u"
    out.mkdir()
    (out / report.LOCK_FILE).touch()
    assert report.prepare_run_dir(out) == out.resolve()
    assert (out / report.RUN_MARKER).is_file()
    report.release_run_dirs()
    (out / "results.json").write_text("{}")
    assert report.prepare_run_dir(out, overwrite=True) == out.resolve()  # marked: ours
    assert sorted(p.name for p in out.iterdir()) == sorted(report.BOOKKEEPING)
