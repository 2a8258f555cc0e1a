"""experiments.sklearn_mlp: worker processes die with their parent, however it dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PARENT = """
import time
from experiments import sklearn_mlp
from tests._orphan_job import sleep_job
specs = [{"activation": name, "seconds": 120} for name in ("a", "b")]
pool, futures = sklearn_mlp.start_pool(specs, 2, fn=sleep_job)
while len(pool._processes) < 2:
    time.sleep(0.05)
time.sleep(1.0)  # the workers run their initializer
print(" ".join(str(pid) for pid in pool._processes), flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper counts as dead: it computes nothing)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_workers_die_with_their_parent(sig):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2 and all(_alive(p) for p in pids)
        parent.send_signal(sig)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in pids if _alive(p)], f"orphaned workers after {sig.name}"
    finally:
        parent.kill()
        for pid in pids if "pids" in locals() else []:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_workers_report_their_epochs():
    """The shared counter the sweep's progress bar reads: each job writes its finished epochs
    into its own slot (two jobs in one worker: the slots follow the specs, not the worker)."""
    import numpy as np

    from experiments import sklearn_mlp

    rng = np.random.default_rng(0)
    x, y = rng.random((60, 12), dtype=np.float32), np.arange(60) % 10
    data = (x, y, x[:20], y[:20], x[:20], y[:20])
    spec = {"activation": "tanh", "hidden": [4], "epochs": 3, "save_at": [3], "lr": 0.1,
            "batch_size": 20, "seed": 0, "data": data}  # fmt: skip
    counter = sklearn_mlp.epoch_counter(2)
    assert list(counter) == [0, 0]
    specs = [spec, {**spec, "activation": "relu", "epochs": 2, "save_at": [2]}]
    pool, futures = sklearn_mlp.start_pool(specs, 1, counter=counter)
    try:
        results = {act: f.result(timeout=120) for act, f in futures.items()}
    finally:
        sklearn_mlp.stop_pool(pool)
    assert list(counter) == [3, 2]
    assert results["tanh"]["status"] == "ok" and set(results["relu"]["checkpoints"]) == {"2"}
