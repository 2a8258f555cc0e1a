"""What a person sees in a terminal while ``python -m experiments.mlp_sweep`` runs (issue 21).

The command runs on a real pseudo-terminal (so tqdm draws its bar, as for a person), its raw
output is replayed through a small terminal emulator (carriage returns, cursor moves and line
clears as tqdm emits them, lines wrapped at the terminal's width), and the resulting screen is
checked: a full run ends in an intact Markdown table with no bar pieces after it; a divergence
warning stands on its own line; a Ctrl-C ends in exit 130 with the resume hint as the last line
and no traceback. Runs are tiny (a few hundred images, two or three epochs, no scikit-learn).
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import shlex
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from experiments.studies import Console
from jnn.study import StudyConfig

REPO = Path(__file__).resolve().parents[1]
COLS, ROWS = 120, 40  # the terminal; the table is wider and wraps there: it is read unwrapped
TINY = ("--quick", "--subset", "300,100,100", "--layout", "map")
BAR = "%|"  # in every line tqdm draws, in no other
_CSI = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])")


def render_screen(raw: str, cols: int | None = None) -> list[str]:
    """The lines a terminal ``cols`` wide (None: endless) shows after printing ``raw``.

    Handles what tqdm and the tty emit: ``\\r`` (column 0), ``\\n`` (next line; the tty's
    ONLCR adds its ``\\r``), ``\\b``, ``ESC[nA``/``ESC[nB`` (up/down), ``ESC[nC``/``ESC[nD``
    (right/left), ``ESC[K``/``ESC[0K``/``ESC[1K``/``ESC[2K`` (clear to end / to start / the
    line); other escapes are ignored. Text reaching the last column wraps, as a terminal does.
    """
    lines: list[list[str]] = [[]]
    row = col = 0
    i = 0
    while i < len(raw):
        ch = raw[i]
        m = _CSI.match(raw, i) if ch == "\x1b" else None
        if m:
            n = int(m.group(1) or 1) if m.group(1).isdigit() else 1
            row, col = _csi(lines, row, col, m.group(1), m.group(2), n)
            i = m.end()
            continue
        i += 1
        if ch == "\r":
            col = 0
        elif ch == "\n":
            row, col = row + 1, 0
        elif ch == "\b":
            col = max(0, col - 1)
        elif ch >= " " or ch == "\t":
            if cols is not None and col >= cols:
                row, col = row + 1, 0
            while len(lines) <= row:
                lines.append([])
            line = lines[row]
            line.extend(" " * (col + 1 - len(line)))
            line[col] = ch
            col += 1
        while len(lines) <= row:
            lines.append([])
    return ["".join(line).rstrip() for line in lines]


def _csi(lines: list[list[str]], row: int, col: int, args: str, op: str, n: int) -> tuple:
    """One ``ESC[<args><op>`` sequence applied to the screen; returns the new cursor."""
    while len(lines) <= row:
        lines.append([])
    line = lines[row]
    if op == "A":
        return max(0, row - n), col
    if op == "B":
        return row + n, col
    if op == "C":
        return row, col + n
    if op == "D":
        return row, max(0, col - n)
    if op == "K":
        if args in ("", "0"):
            del line[col:]
        elif args == "1":
            line[: col + 1] = " " * min(len(line), col + 1)
        elif args == "2":
            line.clear()
    return row, col


def test_the_emulator_applies_what_tqdm_emits():
    """The emulator itself: a bar redrawn with \\r, cleared for a message, moved over."""
    raw = "bar 1\rbar 22\r\x1b[K" + "note\n" + "bar 3\x1b[A\rup\x1b[B\r\x1b[2Kbar 4\n" + "x" * 12
    assert render_screen(raw, cols=10) == ["upte", "bar 4", "xxxxxxxxxx", "xx"]


def run_on_pty(
    args: list[str],
    tmp: Path,
    cache: Path,
    interrupt_after: str | None = None,
    interrupts: int = 1,
) -> tuple[int, list[str], str, int]:
    """``python -m experiments.mlp_sweep ARGS`` on a fresh pseudo-terminal of COLS x ROWS.

    ``interrupt_after``: once that text is on the screen, SIGINT goes to the process group
    (what Ctrl-C in a terminal does); ``interrupts=2``: once more as soon as it answers the
    first (it prints within milliseconds, then cleans up and exits). ``cache``: JAX's
    compilation cache, shared by the runs of this module (they compile the same programs).
    Returns (exit code, the screen's lines read unwrapped, raw output, SIGINTs delivered)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "JAX_PLATFORMS": "cpu",
        "JAX_COMPILATION_CACHE_DIR": str(cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "MPLBACKEND": "Agg",
    }
    for name in ("TQDM_DISABLE", "COLUMNS", "LINES"):
        env.pop(name, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "experiments.mlp_sweep", *args], cwd=tmp, env=env,
        stdin=slave, stdout=slave, stderr=slave, start_new_session=True, close_fds=True,
    )  # fmt: skip
    os.close(slave)
    try:
        raw, sent = _read_until_exit(master, proc, interrupt_after, interrupts)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        os.close(master)
    return code, render_screen(raw), raw, sent


def _read_until_exit(master: int, proc: subprocess.Popen, after: str | None, times: int) -> tuple:
    """Everything the terminal receives until its last writer is gone (10 min at most), with
    the SIGINTs of :func:`run_on_pty`; returns (text, SIGINTs delivered)."""
    data, sent, answered, deadline = b"", 0, 0, time.monotonic() + 600
    while time.monotonic() < deadline:
        if select.select([master], [], [], 0.002 if sent else 0.2)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer of the terminal is gone
                break
            if not chunk:
                break
            data += chunk
            answered += bool(sent)
        due = sent == 0 or answered > 0  # the first once seen, the next once it answered
        if after is not None and after.encode() in data and sent < times and due:
            try:
                os.killpg(proc.pid, signal.SIGINT)
                sent += 1
            except ProcessLookupError:  # every process of the group has exited already
                times = sent
    return data.decode(errors="replace"), sent


# ------------------------------------------------------------------ the console alone (no JAX)


def _start(epochs: int = 10, resumed_from: int | None = None) -> SimpleNamespace:
    config = StudyConfig(  # the real config, so the fake start cannot drift from it
        activations=("relu",), inits=("glorot",), lrs=(0.1,), seeds=1, epochs=epochs,
        optimizer="sgd", split="original",
    )  # fmt: skip
    model = SimpleNamespace(name="relu/glorot/lr0.1/s0")
    return SimpleNamespace(
        config=config, models=[model], sizes=(300, 100, 100), devices=["cpu:0"], layout="map",
        layout_seconds={}, resumed_from=resumed_from, skipped=[],
    )  # fmt: skip


def _epoch(epoch: int, nth: int, seconds: float, epochs: int = 10) -> SimpleNamespace:
    rows = {"val_accuracy": np.array([0.5])}
    return SimpleNamespace(
        epoch=epoch, epochs=epochs, rows=rows, diverged_at=np.zeros(1, int), seconds=seconds,
        nth=nth,
    )  # fmt: skip


def _eta_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("eta:")]


def test_one_overall_eta_after_epoch_two_counts_scikit_learn(capsys):
    """Epoch 1 (compilation) sets no pace for jnn, scikit-learn's first epoch done (after its
    start-up) none for it; once both are known one line: the longer of jnn's time left (7
    epochs at 3 s) and scikit-learn's at its pace since (2 epochs in 100 s, 16 left: 800 s)."""
    console = Console(10, 2, quick=False)
    console.counter, now = [0, 0], [0.0]
    console.clock = lambda: now[0]
    console.start(_start())
    console.epoch(_epoch(1, 1, 40.0))
    console.counter[0], now[0] = 2, 10.0  # seen done: its pace is measured from here
    console.epoch(_epoch(2, 2, 3.0))
    assert _eta_lines(capsys.readouterr().out) == []
    console.counter[1], now[0] = 2, 110.0
    console.epoch(_epoch(3, 3, 3.0))
    console.counter[1], now[0] = 5, 120.0
    console.epoch(_epoch(4, 4, 3.0))  # said once only
    console.close()
    assert _eta_lines(capsys.readouterr().out) == [
        "eta: about 13 min left in all (jnn 7 epoch(s) at 3.0 s each; "
        "scikit-learn 4/20 epochs, 13 min left)"
    ]


def test_without_scikit_learn_the_eta_comes_after_epoch_two(capsys):
    console = Console(10, 0, quick=False)
    console.start(_start())
    console.epoch(_epoch(1, 1, 40.0))
    assert _eta_lines(capsys.readouterr().out) == []  # compilation: no pace
    console.epoch(_epoch(2, 2, 3.0))
    console.close()
    assert _eta_lines(capsys.readouterr().out) == [
        "eta: about 24 s left in all (jnn 8 epoch(s) at 3.0 s each)"
    ]


def test_a_resumed_run_says_where_and_paces_only_its_own_epochs(capsys):
    """Resumed from epoch 4: the restored epochs and the compiling epoch 5 set no pace; after
    epoch 6 (2 s) 4 epochs are left: about 8 s."""
    console = Console(10, 0, quick=False)
    console.start(_start(resumed_from=4))
    console.epoch(_epoch(5, 1, 50.0))
    console.epoch(_epoch(6, 2, 2.0))
    console.close()
    out = capsys.readouterr().out
    assert "resumed every model from epoch 4 (its last checkpoint); 6 epoch(s) to go" in out
    assert _eta_lines(out) == [
        "eta: about 8 s left in all (jnn 4 epoch(s) at 2.0 s each, resumed from epoch 4)"
    ]


def test_after_a_resume_old_divergences_are_one_note_and_new_ones_warnings(capsys):
    """Resumed at epoch 4 with one model diverged at epoch 2: one line saying so at the first
    epoch (it was announced as 'diverged at epoch 2 ... others go on' as if new), then the
    usual warning for a model that diverges after the resume."""
    console = Console(10, 0, quick=False)
    start = _start(resumed_from=4)
    start.models = [SimpleNamespace(name="linear/he/lr0.1/s0"), start.models[0]]
    console.start(start)
    for epoch, diverged in ((5, [2, 0]), (6, [2, 6]), (7, [2, 6])):  # (M,) per epoch
        report = vars(_epoch(epoch, epoch - 4, 2.0)) | {"diverged_at": np.array(diverged)}
        console.epoch(SimpleNamespace(**report))
    console.close()
    err = [line for line in capsys.readouterr().err.splitlines() if "diverged" in line]
    assert err == [
        "note: 1 model(s) had diverged before the resume at epoch 4 and keep their last good "
        "states: linear/he/lr0.1/s0 (epoch 2)",
        "warning: relu/glorot/lr0.1/s0 diverged at epoch 6 (loss or weights not finite); kept "
        "its last good state, others go on",
    ]


def test_the_resume_hint_names_a_command_that_continues_the_run(tmp_path, monkeypatch):
    """Ctrl-C's line: the folder, and a command that parses to the same config with
    ``--resume --out`` that folder (the user's --overwrite and --out replaced)."""
    from experiments import harness, mlp_sweep

    monkeypatch.chdir(tmp_path)
    argv = ["--quick", "--epochs", "7", "--overwrite", "--out", "elsewhere", "--no-sklearn"]
    inv = mlp_sweep.parse(argv)
    line = harness.interrupted_line(mlp_sweep.EXPERIMENT, argv, inv, tmp_path / "runs" / "a b")
    command = "python -m experiments.mlp_sweep --quick --epochs 7 --no-sklearn --resume --out"
    where = "'runs/a b'"
    assert (
        line
        == f"interrupted: finished checkpoints kept in runs/a b; continue with {command} {where}"
    )
    again = mlp_sweep.parse(shlex.split(line.split("continue with ")[1])[3:])
    assert again.config == inv.config and again.resume and again.out == "runs/a b"


def test_workers_started_in_the_block_ignore_ctrl_c():
    """A worker spawned inside ``children_ignore_interrupts`` starts with SIGINT ignored (and
    keeps it through Python's start-up), so a Ctrl-C to the process group cannot make it print
    a traceback; outside the block this process's handler is back."""
    from experiments import report
    from jnn import reference

    before = signal.getsignal(signal.SIGINT)
    with report.children_ignore_interrupts():
        pool, futures = reference.start_pool({"w": signal.SIGINT}, 1, fn=signal.getsignal)
    try:
        assert signal.getsignal(signal.SIGINT) is before
        assert futures["w"].result(timeout=120) == signal.SIG_IGN
    finally:
        reference.stop_pool(pool)


def test_mlp_sweep_starts_scikit_learn_ignoring_ctrl_c(fashion_dir, tmp_path, monkeypatch):
    """The wiring: mlp_sweep starts its scikit-learn pool inside that block."""
    from experiments import mlp_sweep
    from jnn import reference

    seen = []

    def start_pool(*args, **kwargs):
        seen.append(signal.getsignal(signal.SIGINT))
        raise RuntimeError("stop here")

    monkeypatch.setattr(reference, "start_pool", start_pool)
    inv = mlp_sweep.parse([*TINY, "--data-dir", str(fashion_dir), "--out", str(tmp_path)])
    with pytest.raises(RuntimeError, match="stop here"):
        mlp_sweep.run(inv, tmp_path)
    assert seen == [signal.SIG_IGN]


# ------------------------------------------------------------------ on a pseudo-terminal


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("jax-cache")


def _bars(screen: list[str]) -> list[str]:
    return [line for line in screen if BAR in line]


def _assert_clean(code: int, screen: list[str], raw: str) -> None:
    """One bar line, no wider than the terminal, nothing from a crash or a worker."""
    assert len(_bars(screen)) == 1, "\n".join(screen)
    assert all(len(line) <= COLS for line in _bars(screen)), _bars(screen)
    for noise in ("Traceback", "terminate called", "SpawnProcess", "UserWarning", "leaked"):
        assert noise not in raw, (code, raw)


@pytest.mark.slow
def test_a_full_run_ends_in_an_intact_table(fashion_dir, tmp_path, jax_cache):
    args = [*TINY, "--activations", "relu", "--epochs", "3", "--no-sklearn"]
    code, screen, raw, _ = run_on_pty([*args, "--data-dir", str(fashion_dir), "--out", "run"],
                                   tmp_path, jax_cache)  # fmt: skip
    assert code == 0, raw
    _assert_clean(code, screen, raw)
    head = next(i for i, line in enumerate(screen) if line.startswith("| activation"))
    table = screen[
        head : head + next(i for i, x in enumerate(screen[head:]) if not x.startswith("|"))
    ]
    assert len(table) == 4 and len({line.count("|") for line in table}) == 1, table
    assert not any(BAR in line or "█" in line for line in screen[head:]), screen[head:]
    assert _bars(screen)[0].startswith("epochs: 100%|"), screen
    etas = _eta_lines("\n".join(screen))
    assert len(etas) == 1 and " left in all (jnn 1 epoch(s) at " in etas[0], screen
    last = [line for line in screen if line.strip()][-1]
    assert last.startswith("done in ") and last.endswith(
        f"outputs in {(tmp_path / 'run').resolve()}"
    )


@pytest.mark.slow
def test_a_divergence_warning_stands_on_its_own_line(fashion_dir, tmp_path, jax_cache):
    args = [*TINY, "--activations", "linear,sigmoid", "--lrs", "1000", "--epochs", "3"]
    args += ["--no-sklearn", "--data-dir", str(fashion_dir), "--out", "run"]
    code, screen, raw, _ = run_on_pty(args, tmp_path, jax_cache)
    assert code == 3, raw
    _assert_clean(code, screen, raw)
    warned = [line for line in screen if "diverged at epoch" in line]
    assert warned == [
        "warning: linear/glorot/lr1000/s0 diverged at epoch 1 (loss or weights not finite); "
        "kept its last good state, others go on"
    ], screen


@pytest.mark.slow
@pytest.mark.parametrize("interrupts", [1, 2], ids=["once", "twice"])
def test_ctrl_c_leaves_a_clean_prompt_and_the_resume_command(
    fashion_dir, tmp_path, jax_cache, interrupts
):
    """SIGINT to the process group (scikit-learn's worker included) after the first epoch,
    and a second one 0.05 s later: exit 130, the bar's line ended, one line saying how to
    continue, nothing else (a second Ctrl-C changes nothing)."""
    args = ["--quick", "--subset", "1000,100,100", "--activations", "relu", "--epochs", "100"]
    args += ["--sklearn-workers", "1", "--data-dir", str(fashion_dir), "--out", "run"]
    code, screen, raw, sent = run_on_pty(args, tmp_path, jax_cache, "1/100 [", interrupts)
    assert sent == interrupts, "it ended before the second Ctrl-C"
    assert code == 130, raw
    _assert_clean(code, screen, raw)
    lines = [line for line in screen if line.strip()]
    hint = (
        "interrupted: finished checkpoints kept in run; continue with python -m "
        f"experiments.mlp_sweep {shlex.join(args[:-2])} --resume --out run"
    )
    assert lines[-1] == hint, screen
    assert BAR in lines[-2], screen  # the bar, closed on its own line
    assert (tmp_path / "run" / "run.json").is_file()  # the folder the hint names is kept
