"""experiments.report: a full disk, a read-only or an unwritable folder met anywhere in a command
is one line (exit 2), never a traceback; a run folder's error names the command's flags; a
second Ctrl-C exits 130 in one line."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from experiments import report
from jnn import workdir


@pytest.fixture(autouse=True)
def _release():
    yield
    workdir.release_run_dirs()


@pytest.mark.parametrize(
    "raised, code, says",
    [
        (workdir.StorageError("cannot write /x/results.json: No space left on device"), 2, "/x"),
        (OSError(errno.ENOSPC, "No space left on device", "/x/metrics.jsonl"), 2, "metrics"),
        (OSError(errno.EROFS, "Read-only file system", "/x/run.json"), 2, "read-only"),
    ],
    ids=["StorageError", "raw-ENOSPC", "raw-EROFS"],
)
def test_cli_main_makes_storage_errors_one_line_exit_2(tmp_path, capsys, raised, code, says):
    def main(argv):
        workdir.prepare_run_dir(tmp_path / "out")
        raise raised

    assert report.cli_main(main)([]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and says in err, err
    assert not (tmp_path / "out").exists()  # the failed run's stub folder is removed


def test_cli_main_names_the_flags_of_a_run_folder_error(tmp_path, capsys):
    """jnn.workdir names its arguments (``overwrite``, ``out``); the command line says its flags."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.txt").write_text("three years of work")

    def main(argv):
        workdir.prepare_run_dir(tmp_path / "out", overwrite=True)

    assert report.cli_main(main)([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --overwrite refused: ") and err.count("\n") == 1, err
    assert err.rstrip().endswith("use another --out"), err
    assert (tmp_path / "out" / "thesis.txt").is_file()


def test_cli_main_prints_a_warning_as_one_line(capsys):
    """Adversarial pass: a grid --resume's CheckpointWarning (a half-written save removed) came
    before the progress bar and printed Python's two lines, the second the source of the call."""
    import warnings

    from jnn.checkpoints import CheckpointWarning

    def main(argv):
        warnings.warn("removed a half-written save", CheckpointWarning, stacklevel=1)
        return 0

    assert report.cli_main(main)([]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(
        "warning: CheckpointWarning: removed a half-written save (test_report.py:"
    )
    assert warnings.showwarning is not None and "report" not in warnings.showwarning.__module__


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
