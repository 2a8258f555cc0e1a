"""End-to-end: ``python -m experiments.mlp_sweep --quick`` (a preset of ``jnn.study``) writes
the study's outputs, its numbers come from the restored checkpoints and load back through
``jnn.runs``, an interrupted (even SIGKILLed) run resumes bit-identically, a deleted save-epoch
checkpoint is refused, a diverging model is recorded instead of garbage, and the first command
downloads its data. One shared quick run (``quick_run``, --inits glorot so the models learn, 2
seeds) is the reference of the resume and download checks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments import mlp_sweep
from jnn import runs, study

REPO = mlp_sweep.Path(__file__).resolve().parents[1]
ACTS = ("relu", "tanh")
LEARNS = ("--inits", "glorot", "--layout", "map")  # the quick run's models learn


def quick(out, data_dir, *extra: str) -> list[str]:
    return ["--quick", "--out", str(out), "--data-dir", str(data_dir), "--devices", "1", *extra]


def numbers(results: dict) -> dict:
    """What must repeat bit for bit: every metric and curve, not timings, paths or versions."""
    models = [
        {k: m[k] for k in ("name", "diverged_at", "history", "evals")} for m in results["models"]
    ]
    sklearn = {
        a: {k: v for k, v in m.items() if k != "wall_s"}
        for a, m in (results["sklearn"] or {}).items()
    }
    return {"models": models, "sklearn": sklearn}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, fashion_dir):
    """One quick run of two activations x 2 seeds with scikit-learn, shared by the tests."""
    out = tmp_path_factory.mktemp("sweep") / "run"
    argv = quick(out, fashion_dir, "--activations", ",".join(ACTS), "--seeds", "2", *LEARNS)
    assert mlp_sweep.main(argv) == 0
    return out, json.loads((out / "results.json").read_text())


def test_quick_run_writes_every_output(quick_run):
    out, r = quick_run
    assert r["status"] == "ok" and [m["name"] for m in r["models"]] == [
        "relu/glorot/lr0.1/s0",
        "relu/glorot/lr0.1/s1",
        "tanh/glorot/lr0.1/s0",
        "tanh/glorot/lr0.1/s1",
    ]
    assert r["config"]["epochs"] == 3 and r["config"]["save_at"] == [2, 3]
    assert r["config"]["layout"] == "map" and r["sizes"] == [784, 256, 128, 64, 10]
    for key in ("config", "versions", "device", "timing", "sklearn"):
        assert key in r
    assert r["timing"]["model_epochs"] == 12 and r["timing"]["model_epochs_per_s"] > 0
    for m in r["models"]:
        assert m["diverged_at"] is None and len(m["history"]["val_accuracy"]) == 3
        assert set(m["evals"]) == {"2", "3"}
        for split in ("train", "val", "test"):
            assert 0.5 < m["evals"]["3"][f"{split}_accuracy"] <= 1.0  # glorot learns
    for act in ACTS:
        sk = r["sklearn"][act]
        assert sk["status"] == "ok" and set(sk["checkpoints"]) == {"2", "3"}
        assert 0.05 < sk["checkpoints"]["3"]["test_accuracy"] <= 1.0
        assert (out / f"loss_{act}.png").stat().st_size > 1000
    assert {"run.json", "metrics.jsonl", "loss_overview.png", "checkpoints"} <= {
        p.name for p in out.iterdir()
    }
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 4 * 3
    md = (out / "results.md").read_text()
    assert "| relu | 3 |" in md and " ± " in md and "sklearn test acc" in md and "0/2" in md


def test_reported_accuracy_is_the_restored_checkpoints(quick_run, fashion_dir):
    """The way back (jnn.runs.load, the README's snippet) predicts the run's own test set
    with the accuracy results.json reports, for every model and save epoch."""
    out, r = quick_run
    d = None
    for m in r["models"]:
        for e in (2, 3):
            net = runs.load(out, m["name"], epoch=e)
            d = d or study.load_data(net.config)
            acc = (net.predict(d.test[0]) == d.test[1]).mean()
            assert acc == pytest.approx(m["evals"][str(e)]["test_accuracy"], abs=1e-7)
    assert runs.load(out, activation="tanh", seed=1).epoch == 3  # latest
    with pytest.raises(ValueError, match="no checkpoint of epoch 7"):
        runs.load(out, activation="relu", seed=0, epoch=7)


def test_interrupted_run_resumes_bit_identically(quick_run, fashion_dir, tmp_path, capsys):
    out, r = quick_run
    cut = tmp_path / "cut"
    shutil.copytree(out, cut)
    # As if the process died after epoch 2's checkpoint: later checkpoints and results gone.
    shutil.rmtree(cut / "checkpoints" / "3")
    (cut / "results.json").unlink()
    argv = quick(cut, fashion_dir, "--activations", ",".join(ACTS), "--seeds", "2", "--no-sklearn")
    argv += LEARNS
    assert mlp_sweep.main(argv) == 2  # refuses to reuse the folder without --resume
    capsys.readouterr()
    assert mlp_sweep.main([*argv, "--resume"]) == 0
    assert "resumed every model from epoch 2" in capsys.readouterr().out
    again = json.loads((cut / "results.json").read_text())
    assert again["resumed_from"] == 2
    assert numbers(again)["models"] == numbers(r)["models"]
    assert (cut / "metrics.jsonl").read_text() == (out / "metrics.jsonl").read_text()
    # A save-epoch checkpoint deleted from the finished run: its numbers cannot be recomputed,
    # so the resumed run refuses (one line, exit 2) instead of reporting "missing".
    shutil.rmtree(cut / "checkpoints" / "2")
    capsys.readouterr()
    assert mlp_sweep.main([*argv, "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "save epoch 2 is missing" in err, err


def test_resume_with_another_config_names_the_flag(quick_run, fashion_dir, tmp_path, capsys):
    out, _ = quick_run
    cut = tmp_path / "other"
    shutil.copytree(out, cut)
    argv = quick(cut, fashion_dir, "--activations", ",".join(ACTS), "--seeds", "3", *LEARNS)
    assert mlp_sweep.main([*argv, "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--seeds: run has 2, now 3" in err, err


def test_divergence_is_recorded_and_others_go_on(fashion_dir, tmp_path, capsys):
    """Linear diverges at lr 1000, sigmoid trains on (bounded units): exit 3, the diverged
    model's numbers refused (n/a), the others reported as mean +- std over 2 seeds."""
    out = tmp_path / "nan"
    argv = quick(out, fashion_dir, "--activations", "linear,sigmoid", "--lrs", "1000",
                 "--inits", "glorot", "--no-sklearn", "--seeds", "2")  # fmt: skip
    assert mlp_sweep.main(argv) == 3
    r = json.loads((out / "results.json").read_text())
    assert r["status"] == "diverged"
    lin = [m for m in r["models"] if m["activation"] == "linear"]
    sig = [m for m in r["models"] if m["activation"] == "sigmoid"]
    assert [m["diverged_at"] for m in lin] == [1, 1] and all(m["diverged_at"] is None for m in sig)
    assert all(m["evals"]["3"]["test_accuracy"] is None for m in lin)  # NaN: refused
    assert all(0 <= m["evals"]["3"]["test_accuracy"] <= 1 for m in sig)
    md = (out / "results.md").read_text()
    assert "| linear | 3 | n/a | n/a | n/a | n/a | 2/2 |" in md and "2/2 seed(s) diverged" in md
    captured = capsys.readouterr()
    assert "linear/glorot/lr1000/s0 diverged at epoch 1" in captured.err
    assert "eta: about" in captured.out  # the ETA after the first epoch (plain lines)
    net = runs.load(out, activation="linear", seed=0)
    assert net.epoch == 0 and all(np.isfinite(np.asarray(p["w"])).all() for p in net.params if p)


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(fashion_dir, tmp_path):
    """Kill the CLI with SIGKILL once its first checkpoint exists; --resume must finish with
    the numbers and metrics of an uninterrupted run."""
    args = ["--quick", "--activations", "relu", "--epochs", "30", "--save-at", "1,30",
            "--checkpoint-every", "3", "--no-sklearn", "--devices", "1", "--layout", "map",
            "--data-dir", str(fashion_dir)]  # fmt: skip
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "experiments.mlp_sweep", *args, "--out", str(killed)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while not (killed / "checkpoints" / "1").is_dir():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    time.sleep(0.3)  # somewhere in the middle of training (or of a save)
    still_running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert still_running, "the run finished before it could be killed; raise --epochs"
    assert not (killed / "results.json").exists()
    assert mlp_sweep.main([*args, "--out", str(killed), "--resume"]) == 0
    whole = tmp_path / "whole"
    assert mlp_sweep.main([*args, "--out", str(whole)]) == 0
    ra = json.loads((killed / "results.json").read_text())
    rb = json.loads((whole / "results.json").read_text())
    assert numbers(ra) == numbers(rb) and ra["resumed_from"] >= 1
    assert (killed / "metrics.jsonl").read_text() == (whole / "metrics.jsonl").read_text()


def test_config_file_reruns_a_run_exactly(quick_run, tmp_path, capsys):
    """--config run.json: the same config (the layout it chose included); --print-config shows
    it without running."""
    out, r = quick_run
    with pytest.raises(SystemExit) as done:
        mlp_sweep.main(["--config", str(out / "run.json"), "--print-config"])
    assert done.value.code == 0
    shown = json.loads(capsys.readouterr().out)
    stored = study.read_run(out)["config"]
    assert {k: shown[k] for k in stored} == stored
    assert shown["layout"] == "map" and shown["subset"] == [2000, 500, 500]


def test_sweep_downloads_its_data_on_first_use(quick_run, tmp_path, mirror, monkeypatch):
    """The README's first command on a fresh machine: no --data-dir, no JNN_DATA_DIR, an empty
    cache. The sweep's own loading path fetches the four files (checksummed) and trains the
    same numbers as the shared quick run (bit for bit)."""
    from jnn import data

    monkeypatch.delenv("JNN_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "MIRRORS", (mirror + "bad/", mirror + "good/"))
    out = tmp_path / "run"
    argv = ["--quick", "--out", str(out), "--devices", "1", "--activations", ",".join(ACTS),
            "--seeds", "2", *LEARNS, "--no-sklearn"]  # fmt: skip
    assert mlp_sweep.main(argv) == 0
    cache = tmp_path / "cache" / "jnn" / "fashion-mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(data.FILES)
    again = json.loads((out / "results.json").read_text())
    assert numbers(again)["models"] == numbers(quick_run[1])["models"]


def test_sweep_offline_says_which_flag(tmp_path, mirror, monkeypatch, capsys):
    """Offline (every mirror refuses or serves corrupt bytes): one line naming the folder, the
    environment variable and the flag; nothing written to --out."""
    from jnn import data

    monkeypatch.delenv("JNN_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "MIRRORS", (mirror + "empty/", mirror + "bad/"))
    out = tmp_path / "run"
    rc = mlp_sweep.main(["--quick", "--out", str(out), "--devices", "1", "--no-sklearn"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    for needle in ("could not download", "JNN_DATA_DIR", "give --data-dir"):
        assert needle in err[0]
    assert not out.exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--save-at", "1,x"], "--save-at takes an integer, got 'x'"),
        (["--save-at", "1,,2"], "without gaps"),
        (["--epochs", "1000000000000"], "--epochs must be an integer in [1, 100,000]"),
        (["--lrs", "0.1,nan"], "--lrs must be positive finite numbers"),
        (["--activations", "relu,swish"], "--activations: unknown activation"),
        (["--inits", "he", "--init-scale", "0.1"], "--init-scale applies to normal and random"),
        (["--optimizer", "lbfgs"], "--optimizer: unknown optimizer"),
        (["--layout", "pmap"], "--layout must be one of"),
        (["--seeds", "0"], "--seeds must be an integer"),
        (["--sklearn-workers", "0"], "--sklearn-workers must be an integer in [1, 64]"),
        (["--lrs", "0.1,0.2"], "compares one init and lr of plain sgd"),
        (["--optimizer", "adam"], "or --no-sklearn"),
        (["--optimizer", "sgd,adam"], "or --no-sklearn"),
        (["--resume", "--overwrite"], "--resume and --overwrite contradict"),
        (["--config", "/nonexistent/run.json"], "--config /nonexistent/run.json"),
        (["--devices", "64"], "--devices"),
    ],
)
def test_bad_input_is_one_line_exit_2(extra, message, tmp_path, capsys, fashion_dir):
    out = tmp_path / "run"
    rc = mlp_sweep.main(["--quick", "--data-dir", str(fashion_dir), *extra, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "\n" not in err and message in err, err
    assert not out.exists() or not any(out.iterdir())
