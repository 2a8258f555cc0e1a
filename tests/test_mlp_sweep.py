"""End-to-end: ``python -m experiments.mlp_sweep --quick`` writes the study's outputs, its
checkpoints restore, an interrupted (even SIGKILLed) run resumes bit-identically, the same
command gives the same numbers, a deleted --save-at checkpoint is refused, and a diverging model
is recorded instead of garbage. One shared quick run (``quick_run``, --init glorot so the models
learn) is the reference of the resume, repeat, download and data-parallel checks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from experiments import mlp_sweep
from jnn import train
from jnn.checkpoints import CheckpointStore
from jnn.train import empty_history

REPO = mlp_sweep.Path(__file__).resolve().parents[1]
ACTS = ("relu", "tanh")
GLOROT = ("--init", "glorot")  # the quick run's models learn (the study's init sits at ~10%)


def quick(out, data_dir, *extra: str) -> list[str]:
    return ["--quick", "--out", str(out), "--data-dir", str(data_dir), "--devices", "1", *extra]


def numbers(results: dict) -> dict:
    """What must repeat bit for bit: every metric and curve, not timings, paths or versions."""
    models = {
        act: {
            "status": m["status"],
            "history": m["history"],
            "checkpoints": {
                e: {k: v for k, v in c.items() if k != "path"} for e, c in m["checkpoints"].items()
            },
        }
        for act, m in results["models"].items()
    }
    sklearn = {
        act: {k: v for k, v in m.items() if k != "wall_s"}
        for act, m in (results["sklearn"] or {}).items()
    }
    return {"models": models, "sklearn": sklearn}


def restored_params(run_dir, act: str, epoch: int, seeds: int = 1, epochs: int = 3):
    cfg = mlp_sweep.parse_config(["--quick", "--activations", act, "--out", str(run_dir)])
    import optax

    model = mlp_sweep.sweep_model(cfg, act)
    state = train.init_train_states(mlp_sweep.model_keys(0, seeds), model, optax.sgd(0.1), (784,))
    like = {"state": jax.device_get(state), "history": empty_history(epochs, seeds)}
    with CheckpointStore(run_dir / act, create=False) as store:
        return store.restore(epoch, like)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, fashion_dir):
    """One quick run of two activations with the sklearn comparison, shared by the tests."""
    out = tmp_path_factory.mktemp("sweep") / "run"
    rc = mlp_sweep.main(quick(out, fashion_dir, "--activations", ",".join(ACTS), *GLOROT))
    assert rc == 0
    return out, json.loads((out / "results.json").read_text())


def test_quick_run_writes_every_output(quick_run):
    out, r = quick_run
    assert r["status"] == "ok" and set(r["models"]) == set(ACTS)
    assert r["config"]["epochs"] == 3 and r["config"]["save_at"] == [2, 3]
    for key in ("config", "versions", "device", "timing", "sklearn"):
        assert key in r
    t = r["timing"]
    assert t["model_epochs"] == 6 and t["model_epochs_per_s"] > 0 and t["wall_s"] > 0
    for act in ACTS:
        m = r["models"][act]
        assert m["status"] == "ok" and m["diverged_at"] is None
        assert all(len(h) == 1 and len(h[0]) == 3 for h in m["history"].values())
        assert set(m["checkpoints"]) == {"2", "3"}
        for c in m["checkpoints"].values():
            for split in ("train", "val", "test"):
                assert 0.0 <= c[f"{split}_accuracy"] <= 1.0 and c[f"{split}_loss"] > 0
        sk = r["sklearn"][act]
        assert sk["status"] == "ok" and set(sk["checkpoints"]) == {"2", "3"}
        assert sk["activation"] == {"relu": "relu", "tanh": "tanh"}[act]
        assert 0.05 < sk["checkpoints"]["3"]["test_accuracy"] <= 1.0  # a real number, not 0.0
        assert (out / f"loss_{act}.png").stat().st_size > 1000
        assert (out / act / "2").is_dir() and (out / act / "3").is_dir()
    assert (out / "loss_overview.png").is_file() and (out / "run.json").is_file()
    md = (out / "results.md").read_text()
    assert "| relu | 3 |" in md and "sklearn test acc" in md


def test_reported_accuracy_comes_from_the_restored_checkpoint(quick_run, fashion_dir):
    out, r = quick_run
    tree = restored_params(out, "tanh", 3)
    assert int(tree["state"].epoch[0]) == 3
    np.testing.assert_array_equal(
        np.asarray(tree["history"]["val_loss"]),
        np.asarray(r["models"]["tanh"]["history"]["val_loss"]),
    )
    cfg = mlp_sweep.parse_config(quick(out, fashion_dir))
    data = mlp_sweep.load_data(cfg)
    state = tree["state"]
    eval_fn = train.make_eval_fn(mlp_sweep.sweep_model(cfg, "tanh"), stacked=True)
    loss, acc = eval_fn(state.params, state.model_state, data[4], data[5])
    assert float(acc[0]) == r["models"]["tanh"]["checkpoints"]["3"]["test_accuracy"]


def test_interrupted_run_resumes_bit_identically(quick_run, fashion_dir, tmp_path, capsys):
    out, r = quick_run
    cut = tmp_path / "cut"
    shutil.copytree(out, cut)
    # As if the process died after epoch 2's checkpoint: later checkpoints and results gone.
    for act in ACTS:
        shutil.rmtree(cut / act / "3")
        shutil.rmtree(cut / act / "latest", ignore_errors=True)
    (cut / "results.json").unlink()
    argv = quick(cut, fashion_dir, "--activations", ",".join(ACTS), "--no-sklearn", *GLOROT)
    assert mlp_sweep.main(argv) == 2  # refuses to reuse the folder without --resume
    assert mlp_sweep.main([*argv, "--resume"]) == 0
    again = json.loads((cut / "results.json").read_text())
    assert {a: m["resumed_from"] for a, m in again["models"].items()} == {"relu": 2, "tanh": 2}
    assert numbers(again)["models"] == numbers(r)["models"]
    for act in ACTS:
        a = jax.tree.leaves(restored_params(out, act, 3))
        b = jax.tree.leaves(restored_params(cut, act, 3))
        assert all(np.array_equal(x, y, equal_nan=True) for x, y in zip(a, b))
    # A --save-at checkpoint deleted from the finished run: its numbers cannot be recomputed, so
    # the resumed run refuses (one line, exit 2) instead of reporting "missing" with exit 0.
    shutil.rmtree(cut / "relu" / "2")
    capsys.readouterr()
    assert mlp_sweep.main([*argv, "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--save-at checkpoint of epoch 2" in err, err
    assert "relu" in err and "--overwrite" in err and "past it (epoch 3)" in err


def test_divergence_is_recorded_and_others_go_on(fashion_dir, tmp_path, capsys):
    """Linear diverges at lr 1000, sigmoid trains on; both as 2 seeds vmapped in one program,
    reported as mean +- std with the per-seed numbers."""
    out = tmp_path / "nan"
    rc = mlp_sweep.main(
        quick(out, fashion_dir, "--activations", "linear,sigmoid", "--lr", "1000", "--init",
              "glorot", "--no-sklearn", "--seeds", "2")
    )  # fmt: skip
    assert rc == mlp_sweep.EXIT_DIVERGED
    r = json.loads((out / "results.json").read_text())
    lin = r["models"]["linear"]
    assert r["status"] == "diverged" and lin["status"] == "diverged"
    assert lin["diverged_at"] == 1 and lin["checkpoints"] == {}
    assert "lower --lr" in lin["message"] and "epoch 1" in lin["message"]
    sig = r["models"]["sigmoid"]  # bounded activations keep finite losses: it trains on
    assert sig["status"] == "ok" and set(sig["checkpoints"]) == {"2", "3"}
    md = (out / "results.md").read_text()
    assert "diverged at epoch 1" in md and "±" in md
    c = sig["checkpoints"]["3"]
    per_seed = c["per_seed"]["test_accuracy"]
    losses = c["per_seed"]["test_loss"]  # continuous: two seeds can tie on 500 test images' count
    assert len(per_seed) == 2 and losses[0] != losses[1]
    assert c["test_accuracy"] == pytest.approx(np.mean(per_seed))
    assert c["std"]["test_accuracy"] == pytest.approx(np.std(per_seed))
    captured = capsys.readouterr()
    assert "linear: the loss became NaN/inf at epoch 1" in captured.err
    assert "eta: about" in captured.out  # the overall ETA after the first epoch (plain lines)


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(fashion_dir, tmp_path):
    """Kill the CLI with SIGKILL once its first checkpoint exists; --resume must finish with the
    params of an uninterrupted run."""
    args = ["--quick", "--activations", "relu", "--epochs", "30", "--save-at", "1,30",
            "--checkpoint-every", "3", "--no-sklearn", "--devices", "1",
            "--data-dir", str(fashion_dir)]  # fmt: skip
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "experiments.mlp_sweep", *args, "--out", str(killed)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while not (killed / "relu" / "1").is_dir():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    time.sleep(0.3)  # somewhere in the middle of training (or of a save)
    still_running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert still_running, "the run finished before it could be killed; raise --epochs"
    assert not (killed / "results.json").exists()
    with CheckpointStore(killed / "relu", create=False) as store:
        assert 1 in store.saved_epochs() and store.latest_epoch() < 30
    assert mlp_sweep.main([*args, "--out", str(killed), "--resume"]) == 0
    whole = tmp_path / "whole"
    assert mlp_sweep.main([*args, "--out", str(whole)]) == 0
    a = jax.tree.leaves(restored_params(killed, "relu", 30, epochs=30))
    b = jax.tree.leaves(restored_params(whole, "relu", 30, epochs=30))
    assert all(np.array_equal(x, y, equal_nan=True) for x, y in zip(a, b))
    ra = json.loads((killed / "results.json").read_text())
    rb = json.loads((whole / "results.json").read_text())
    assert numbers(ra) == numbers(rb)
    assert ra["models"]["relu"]["resumed_from"] >= 1


def test_data_parallel_matches_one_device(quick_run, fashion_dir, tmp_path):
    """--data-parallel over 2 forced host devices (each batch split, gradients all-reduced by
    XLA) trains the same models as one device (the shared quick run), up to float32 summation
    order."""
    out = tmp_path / "dp"
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.mlp_sweep", "--quick", "--no-sklearn", *GLOROT,
         "--activations", ",".join(ACTS), "--data-dir", str(fashion_dir), "--out", str(out),
         "--data-parallel", "--devices", "2"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    runs = {"one": quick_run[1], "dp": json.loads((out / "results.json").read_text())}
    assert "'data': 2" in runs["dp"]["devices_used"][0]
    # tanh is smooth: the two programs differ by float32 summation order only, so they agree
    # tightly. ReLU has a kink: a pre-activation within rounding of 0 (measured: -7.7e-8 against
    # a float32 bound of 2.8e-6, see tests/test_parallel.py) lands on opposite sides in the two
    # summation orders and the runs part ways after that step, so for ReLU this end-to-end test
    # asks only that both train alike; the library's one-step agreement (1e-6) is tested there.
    bounds = {"tanh": (1e-5, 1e-4, 2.5e-3), "relu": (0.1, 0.1, 0.05)}
    for act in ACTS:
        loss_rtol, ckpt_loss, ckpt_acc = bounds[act]
        one, dp = runs["one"]["models"][act], runs["dp"]["models"][act]
        np.testing.assert_allclose(
            dp["history"]["train_loss"], one["history"]["train_loss"], rtol=loss_rtol
        )
        for epoch, c in one["checkpoints"].items():
            for split in ("train", "val", "test"):
                d = dp["checkpoints"][epoch]
                assert abs(d[f"{split}_loss"] - c[f"{split}_loss"]) < ckpt_loss, (act, split)
                # a 1e-7 weight difference may flip a borderline example: 1 in 500 is 2e-3
                assert abs(d[f"{split}_accuracy"] - c[f"{split}_accuracy"]) <= ckpt_acc


def test_sweep_downloads_its_data_on_first_use(quick_run, tmp_path, mirror, monkeypatch):
    """The README's first command on a fresh machine: no --data-dir, no JNN_DATA_DIR, an empty
    cache. The sweep's own loading path fetches the four files (checksummed) and trains; the
    same command gives the same numbers as the shared quick run (bit for bit)."""
    from jnn import data

    monkeypatch.delenv("JNN_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "MIRRORS", (mirror + "bad/", mirror + "good/"))
    out = tmp_path / "run"
    argv = ["--quick", "--out", str(out), "--devices", "1", "--activations", "relu", *GLOROT]
    assert mlp_sweep.main([*argv, "--no-sklearn"]) == 0
    cache = tmp_path / "cache" / "jnn" / "fashion-mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(data.FILES)
    again = json.loads((out / "results.json").read_text())
    assert again["status"] == "ok"
    assert numbers(again)["models"]["relu"] == numbers(quick_run[1])["models"]["relu"]


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
    for needle in ("could not download", "JNN_DATA_DIR", "--data-dir"):
        assert needle in err[0]


def test_relu_at_huge_lr_is_stopped_not_saved_with_nan_weights(fashion_dir, tmp_path):
    """--lr 1e30 on ReLU once exited 0 with NaN weights in its checkpoints; now the model is
    stopped at its first epoch (non-finite loss or params) and nothing of it is saved."""
    out = tmp_path / "huge"
    argv = quick(out, fashion_dir, "--activations", "relu", "--lr", "1e30", "--no-sklearn")
    assert mlp_sweep.main(argv) == mlp_sweep.EXIT_DIVERGED
    relu = json.loads((out / "results.json").read_text())["models"]["relu"]
    assert relu["status"] == "diverged" and relu["diverged_at"] == 1
    assert relu["checkpoints"] == {} and not (out / "relu" / "2").exists()


def test_a_checkpoint_loads_back_and_predicts_the_reported_accuracy(quick_run):
    """The README's way back: jnn.runs rebuilds the model from run.json, restores a verified
    checkpoint and predicts; its test accuracy is the one results.json reports."""
    from jnn import data, runs

    out, r = quick_run
    net = runs.load_sweep_checkpoint(out, "relu", 3)
    cfg = net.config
    s = data.load_splits(cfg["split"], seed=cfg["seed"])
    n_test = cfg["subset"][2] if cfg["subset"] else len(s.y_test)
    accuracy = (net.predict(s.x_test[:n_test]) == s.y_test[:n_test]).mean()
    assert accuracy == pytest.approx(
        r["models"]["relu"]["checkpoints"]["3"]["test_accuracy"], abs=1e-6
    )
    with pytest.raises(ValueError, match="no checkpoint of epoch 1"):
        runs.load_sweep_checkpoint(out, "relu", 1)
    with pytest.raises(ValueError, match="not 'sigmoid'"):
        runs.load_sweep_checkpoint(out, "sigmoid", 3)


def test_progress_eta_and_sklearn_lines(capsys, monkeypatch):
    """The overall ETA after the first epoch (compile included) and again after the second;
    without a terminal one plain line per checkpoint; on a (fake) terminal, scikit-learn's
    finished epochs per model are shown on their bar."""
    import io

    assert mlp_sweep.duration(42) == "42 s" and mlp_sweep.duration(600) == "10 min"
    assert mlp_sweep.duration(3 * 3600 + 300) == "3 h 05 min"
    assert "about 20 min for the 399 epochs" in mlp_sweep.eta_line(399, 6.0, 2, 1)
    cfg = mlp_sweep.parse_config(["--quick", "--activations", ",".join(ACTS)])
    progress = mlp_sweep.SweepProgress(cfg, parallel=2)
    bars = {act: progress.bar(act, i, start=0) for i, act in enumerate(ACTS)}
    for epoch in (1, 2):
        for act, bar in bars.items():
            progress.epoch(act, bar, epoch, 0.5, 2.0, nth=epoch)
    progress.close()
    out = capsys.readouterr().out.splitlines()
    etas = [line for line in out if line.startswith("eta: about")]
    assert len(etas) == 2 and "first epoch took 2.0 s" in etas[0], out
    assert "5 s for the 5 epochs left" in etas[0] and "second epoch" in etas[1]
    assert "relu: epoch 2/3, val acc 0.5000" in out

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    import warnings

    monkeypatch.setattr(sys, "stderr", Terminal())
    before = warnings.showwarning
    progress = mlp_sweep.SweepProgress(cfg, parallel=1, sk_counter=[3, 1])
    warnings.showwarning(UserWarning("half-written step"), UserWarning, "x.py", 7)  # above bars
    progress.close()
    assert "relu 3/3, tanh 1/3" in sys.stderr.getvalue()
    assert "x.py:7: UserWarning: half-written step" in sys.stderr.getvalue()
    assert warnings.showwarning is before
