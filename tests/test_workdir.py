"""jnn.workdir: only jnn's ``.jnn-run`` marker makes a folder jnn's own, so ``overwrite`` never
deletes a folder of the user's, whatever else it holds; a folder is used by one process at a
time; results and plots are written atomically, and a full disk, a read-only or an unwritable
folder is one line, never a traceback or a half-written file."""

from __future__ import annotations

import errno
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from jnn import workdir
from jnn.config import ConfigError
from jnn.errors import InputError


@pytest.fixture(autouse=True)
def _release():
    yield
    workdir.release_run_dirs()


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
    out = _users_folder(tmp_path, workdir.LOCK_FILE)
    for check in (workdir.check_run_dir, workdir.prepare_run_dir):
        with pytest.raises(workdir.RunDirError, match="overwrite refused") as err:
            check(out, overwrite=True)
        assert "\n" not in str(err.value) and "no .jnn-run marker" in str(err.value)
    assert (out / "thesis.txt").read_text() == "three years of work"
    assert sorted(p.name for p in out.iterdir()) == [workdir.LOCK_FILE, "thesis.txt"]


def test_resume_into_a_users_folder_does_not_make_it_ours(tmp_path):
    """Adversarial pass: ``--resume --out`` a folder of the user's wrote the .jnn-run marker into
    it before the run refused it (no run.json), so a later ``--overwrite`` emptied it."""
    out = _users_folder(tmp_path)
    workdir.prepare_run_dir(out, resume=True)
    workdir.release_run_dirs(failed=True)
    assert not (out / workdir.RUN_MARKER).exists()
    assert sorted(p.name for p in out.iterdir()) == ["thesis.txt"]  # nor its lock (second pass)
    with pytest.raises(workdir.RunDirError, match="overwrite refused"):
        workdir.prepare_run_dir(out, overwrite=True)
    assert (out / "thesis.txt").read_text() == "three years of work"
    fresh = tmp_path / "new"
    workdir.prepare_run_dir(fresh, resume=True)  # a folder jnn makes (or an empty one) is its own
    assert (fresh / workdir.RUN_MARKER).is_file()


def test_a_folder_named_like_the_marker_is_not_the_marker(tmp_path):
    out = tmp_path / "u"
    (out / workdir.RUN_MARKER).mkdir(parents=True)
    (out / workdir.RUN_MARKER / "thesis.txt").write_text("three years of work")
    with pytest.raises(workdir.RunDirError, match="overwrite refused"):
        workdir.prepare_run_dir(out, overwrite=True)
    assert (out / workdir.RUN_MARKER / "thesis.txt").read_text() == "three years of work"


def test_bookkeeping_alone_counts_as_empty(tmp_path):
    """The lock of a run killed before it wrote its marker: nothing of anyone's to delete, so
    the folder is used as an empty one (and marked) with or without --overwrite."""
    out = tmp_path / "u"
    out.mkdir()
    (out / workdir.LOCK_FILE).touch()
    assert workdir.prepare_run_dir(out) == out.resolve()
    assert (out / workdir.RUN_MARKER).is_file()
    workdir.release_run_dirs()
    (out / "results.json").write_text("{}")
    assert workdir.prepare_run_dir(out, overwrite=True) == out.resolve()  # marked: ours
    assert sorted(p.name for p in out.iterdir()) == sorted(workdir.BOOKKEEPING)


# ------------------------------------------------------------------ storage errors (issue 19)

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
EACCES = PermissionError(errno.EACCES, os.strerror(errno.EACCES))
EROFS = OSError(errno.EROFS, os.strerror(errno.EROFS))


class _HalfWrite:
    """A file object that writes part of what it is given, then hits ``err`` (a full disk)."""

    def __init__(self, f, err: OSError) -> None:
        self.f, self.err = f, err

    def write(self, data):
        self.f.write(data[: len(data) // 2])
        raise self.err

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def _old_results(tmp_path: Path) -> Path:
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text('{"old": true}\n')
    return out


def _assert_one_line(message: str, path: Path, *says: str) -> None:
    assert "\n" not in message and str(path) in message, message
    for text in says:
        assert text in message, message


@pytest.mark.parametrize(
    "where, err, says",
    [
        ("write", ENOSPC, ("No space left on device", "free some space")),
        ("mkstemp", EACCES, ("Permission denied", "fix its permissions")),
        ("replace", EROFS, ("Read-only file system", "read-only")),
    ],
    ids=["ENOSPC", "EACCES", "EROFS"],
)
def test_a_storage_error_writing_results_is_one_line_and_leaves_nothing(
    tmp_path, monkeypatch, where, err, says
):
    """Issue 19: a full disk while writing results or plots was an exit-1 traceback that left a
    temporary file; a read-only or unwritable folder the same."""
    out = _old_results(tmp_path)
    real_fdopen = os.fdopen
    fails = {
        "write": ("fdopen", lambda *a, **k: _HalfWrite(real_fdopen(*a, **k), err)),
        "mkstemp": ("tempfile.mkstemp", _raise(err)),
        "replace": ("replace", _raise(err)),
    }
    name, fake = fails[where]
    target = workdir.tempfile if name.startswith("tempfile") else workdir.os
    monkeypatch.setattr(target, name.split(".")[-1], fake)
    with pytest.raises(workdir.StorageError) as info:
        workdir.write_json(out / "results.json", {"new": True})
    monkeypatch.undo()
    _assert_one_line(str(info.value), out / "results.json", *says)
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]  # no temporary file
    assert (out / "results.json").read_text() == '{"old": true}\n'  # the old one intact


def _raise(err: OSError):
    def fail(*args, **kwargs):
        raise err

    return fail


def test_a_full_disk_while_saving_a_plot_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from jnn import plots  # the library writes every plot (jnn.plots.save_figure)

    fig = Figure()
    fig.subplots().plot([1, 2, 3])

    def half_a_png(target, **kwargs):
        if isinstance(target, (str, os.PathLike)):
            Path(target).write_bytes(b"\x89PNG half")
        else:
            target.write(b"\x89PNG half")
        raise ENOSPC

    monkeypatch.setattr(fig, "savefig", half_a_png)
    with pytest.raises(workdir.StorageError) as info:
        plots.save_figure(fig, tmp_path / "plots" / "relu.png")
    _assert_one_line(str(info.value), tmp_path / "plots" / "relu.png", "free some space")
    assert list((tmp_path / "plots").iterdir()) == []
    monkeypatch.undo()
    path = plots.save_figure(fig, tmp_path / "plots" / "relu.png")
    assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 1000
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


# ------------------------------------------------------------------ messages name no flag


def _refusals(tmp_path: Path) -> list[tuple[Path, dict]]:
    """A folder for each refusal of check_run_dir, with the arguments that meet it."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "results.json").write_text("{}")
    users = _users_folder(tmp_path)
    return [(afile, {}), (afile / "out", {}), (taken, {}), (users, {"overwrite": True})]


def test_refusals_name_the_arguments_not_a_command_lines_flags(tmp_path):
    """The library's one line says ``overwrite``/``resume``/``out``; a command line renders
    its own flags from the same error (what ``experiments.report.cli_main`` prints)."""
    said = []
    for path, kwargs in _refusals(tmp_path):
        with pytest.raises(workdir.RunDirError) as info:
            workdir.check_run_dir(path, **kwargs)
        err = info.value
        assert isinstance(err, ConfigError) and isinstance(err, InputError)
        assert "\n" not in str(err) and "--" not in str(err) and "`" not in str(err), str(err)
        assert str(path) in str(err), str(err)
        assert "--out" in err.render(lambda name: "--" + name), err.template
        said.append(str(err))
    assert "already holds another run (results.json)" in said[2]
    assert "pass resume to continue it, overwrite to replace it" in said[2]
    assert "which is a file" in said[1] and "is not a folder" in said[0]


def test_a_resumed_run_keeps_its_files_and_a_failed_new_one_leaves_no_stub(tmp_path):
    kept = workdir.prepare_run_dir(tmp_path / "run")
    (kept / "results.json").write_text("{}")
    workdir.release_run_dirs(failed=True)  # it holds a result: kept
    assert workdir.prepare_run_dir(kept, resume=True) == kept
    assert (kept / "results.json").read_text() == "{}"
    stub = workdir.prepare_run_dir(tmp_path / "stub")
    assert sorted(p.name for p in stub.iterdir()) == sorted(workdir.BOOKKEEPING)
    workdir.release_run_dirs(failed=True)
    assert not stub.exists() and kept.is_dir()


# ------------------------------------------------------------------ JSON and stamps


def test_write_json_makes_arrays_lists_and_non_finite_numbers_null(tmp_path):
    data = {"a": np.arange(3), "x": math.nan, 1: (np.float32(0.5), math.inf), "p": tmp_path}
    path = workdir.write_json(tmp_path / "r.json", data, indent=1)
    text = path.read_text()
    assert text.endswith("}\n") and '\n "a": [' in text  # indented by 1
    assert json.loads(text) == {"a": [0, 1, 2], "x": None, "1": [0.5, None], "p": str(tmp_path)}
    for bad in (-1, 1.5, True):
        with pytest.raises(InputError, match="indent must be an integer"):
            workdir.write_json(tmp_path / "r.json", data, indent=bad)


def test_stamps_say_what_made_a_run():
    import jnn

    stamps = workdir.stamps()
    assert stamps["jnn_version"] == jnn.__version__
    assert stamps["git_dirty"] in (None, True, False)
    assert stamps["git_commit"] is None or len(stamps["git_commit"]) == 40
    assert isinstance(stamps["command"], list) and stamps["started"].endswith("+00:00")
    found = workdir.versions()
    assert found["python"].count(".") == 2 and "jax" in found and "numpy" in found
    device = workdir.device_info()
    assert device["device_count"] == len(device["devices"]) >= 1
    assert device["cpu_count"] == os.cpu_count()
