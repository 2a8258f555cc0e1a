"""experiments.report: only jnn's ``.jnn-run`` marker makes a folder jnn's own, so ``--overwrite``
never deletes a folder of the user's, whatever else it holds; results and plots are written
atomically, and a full disk, a read-only or an unwritable folder is one line (exit 2), never a
traceback or a half-written file; a second Ctrl-C exits 130 in one line."""

from __future__ import annotations

import errno
import os
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
    target = report.tempfile if name.startswith("tempfile") else report.os
    monkeypatch.setattr(target, name.split(".")[-1], fake)
    with pytest.raises(report.StorageError) as info:
        report.write_json(out / "results.json", {"new": True})
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

    from experiments import plots

    fig = Figure()
    fig.subplots().plot([1, 2, 3])

    def half_a_png(target, **kwargs):
        if isinstance(target, (str, os.PathLike)):
            Path(target).write_bytes(b"\x89PNG half")
        else:
            target.write(b"\x89PNG half")
        raise ENOSPC

    monkeypatch.setattr(fig, "savefig", half_a_png)
    with pytest.raises(report.StorageError) as info:
        plots.save_figure(fig, tmp_path / "plots" / "relu.png")
    _assert_one_line(str(info.value), tmp_path / "plots" / "relu.png", "free some space")
    assert list((tmp_path / "plots").iterdir()) == []
    monkeypatch.undo()
    path = plots.save_figure(fig, tmp_path / "plots" / "relu.png")
    assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 1000
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


@pytest.mark.parametrize(
    "raised, code, says",
    [
        (report.StorageError("cannot write /x/results.json: No space left on device"), 2, "/x"),
        (OSError(errno.ENOSPC, "No space left on device", "/x/metrics.jsonl"), 2, "metrics"),
        (OSError(errno.EROFS, "Read-only file system", "/x/run.json"), 2, "read-only"),
    ],
    ids=["StorageError", "raw-ENOSPC", "raw-EROFS"],
)
def test_cli_main_makes_storage_errors_one_line_exit_2(tmp_path, capsys, raised, code, says):
    def main(argv):
        report.prepare_run_dir(tmp_path / "out")
        raise raised

    assert report.cli_main(main)([]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and says in err, err
    assert not (tmp_path / "out").exists()  # the failed run's stub folder is removed


def test_cli_main_keeps_the_traceback_of_other_os_errors():
    def main(argv):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/x/y")

    with pytest.raises(FileNotFoundError):
        report.cli_main(main)([])


# ------------------------------------------------------------------ Ctrl-C (issue 19)

_INTERRUPTIBLE = """
import atexit, sys, time
from experiments import report


def slow_teardown():  # JAX's own atexit clean_up runs here too: a second Ctrl-C landed in it
    print("teardown", flush=True)
    time.sleep(3)


def main(argv):
    import jax
    import jax.numpy as jnp

    atexit.register(slow_teardown)
    step = jax.jit(lambda x: jnp.tanh(x @ x))
    x = jnp.ones((128, 128)) / 128
    print("running", flush=True)
    while True:
        x = step(x)


sys.exit(report.cli_main(main)(sys.argv[1:]))
"""


def _interrupt_twice(tmp_path: Path, gap: float) -> tuple[int, str, str]:
    """Run the script above, Ctrl-C it once it runs, and again ``gap`` s after its one line."""
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "interruptible.py"
    script.write_text(_INTERRUPTIBLE)
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, str(script)], cwd=repo, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(repo), "JAX_PLATFORMS": "cpu"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # not inherited SIG_IGN
    )  # fmt: skip
    try:
        assert proc.stdout.readline() == "running\n"
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        first = proc.stderr.readline()
        time.sleep(gap)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return proc.returncode, out, first + err


@pytest.mark.parametrize("gap", [0.0, 0.5], ids=["at-once", "during-teardown"])
def test_a_second_ctrl_c_exits_130_with_one_line(tmp_path, gap):
    """Issue 19: a second Ctrl-C landed in the cleanup after the first (JAX's atexit teardown
    with XLA's threads running) and aborted the process (exit -6, "terminate called after
    throwing ... FATAL: exception not rethrown") or printed a KeyboardInterrupt traceback."""
    code, out, err = _interrupt_twice(tmp_path, gap)
    assert code == 130, (code, err)
    assert err == "interrupted: finished checkpoints are kept\n", err
    assert "teardown" not in out  # the process ended at once, before the crashing teardown
