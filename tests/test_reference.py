"""jnn.reference: scikit-learn's MLPClassifier as the study's plain SGD (settings, epoch by epoch
equal to ``fit``, divergence reported as such, one-line input errors) and its worker processes
(they die with their parent however it dies, report their epochs, never import JAX)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jnn import reference
from jnn.errors import InputError

REPO = Path(__file__).resolve().parents[1]

PARENT = """
import time
from jnn import reference
from tests._orphan_job import sleep_job
pool, futures = reference.start_pool({"a": 120, "b": 120}, 2, fn=sleep_job)
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


def _sets(n=60, d=12, seed=0):
    """Tiny (train, val, test) sets: x (n, d) float32 in [0, 1), every class 0..9 present."""
    rng = np.random.default_rng(seed)
    x, y = rng.random((n, d), dtype=np.float32), np.arange(n) % 10
    return (x, y), (x[:20], y[:20]), (x[20:40], y[20:40])


def test_workers_report_their_epochs():
    """The shared counter the sweep's progress bar reads: each job writes its finished epochs
    into its own slot (two jobs in one worker: the slots follow the jobs, not the worker)."""
    job = reference.Job("tanh", (4,), 3, (3,), _sets(), batch_size=20)
    counter = reference.epoch_counter(2)
    assert list(counter) == [0, 0]
    jobs = {"tanh": job, "relu": reference.Job("relu", (4,), 2, (2,), job.data, batch_size=20)}
    pool, futures = reference.start_pool(jobs, 1, counter=counter)
    try:
        results = {name: f.result(timeout=120) for name, f in futures.items()}
    finally:
        reference.stop_pool(pool)
    assert list(counter) == [3, 2]
    assert results["tanh"]["status"] == "ok" and set(results["relu"]["checkpoints"]) == {"2"}
    assert len(results["relu"]["history"]["val_accuracy"]) == 2


def test_a_job_arrives_without_jax():
    """The study's data (a jnn.study.Data NamedTuple, whose module imports JAX) becomes plain
    numpy in the Job, so unpickling a job in a worker never imports JAX."""
    from jnn import study
    from tests._orphan_job import jax_loaded

    job = reference.Job("relu", (4,), 1, (), study.Data(*_sets()))
    assert type(job.data) is tuple and type(job.data[0][0]) is np.ndarray
    pool, futures = reference.start_pool({"relu": job}, 1, fn=jax_loaded)
    try:
        assert futures["relu"].result(timeout=120) is False
    finally:
        reference.stop_pool(pool)


@pytest.mark.parametrize(
    "name, sklearn_name",
    [("relu", "relu"), ("sigmoid", "logistic"), ("tanh", "tanh"), ("linear", "identity")],
)
def test_classifier_is_the_studys_plain_sgd(name, sklearn_name):
    clf = reference.make_classifier([256, 128, 64], name, lr=0.05, batch_size=16, seed=3)
    s = reference.settings(clf)
    assert s["solver"] == "sgd" and s["momentum"] == 0 and s["nesterovs_momentum"] is False
    assert s["alpha"] == 0 and s["learning_rate"] == "constant" and s["shuffle"] is True
    assert (s["batch_size"], s["learning_rate_init"], s["activation"]) == (16, 0.05, sklearn_name)
    assert clf.hidden_layer_sizes == (256, 128, 64) and not clf.early_stopping


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # fit: 1 epoch
def test_an_epoch_is_one_epoch_of_fit_and_later_epochs_reshuffle():
    """Epoch 1 of train_epoch is exactly fit(max_iter=1) (same init, same settings, same
    shuffle); later epochs draw new orders from the one RandomState: the same seed repeats the
    run bit for bit, another seed does not."""
    (x, y), _, _ = _sets(n=100)

    def epochs(seed, n=3):
        clf = reference.make_classifier((8,), "tanh", lr=0.1, batch_size=16, seed=seed)
        return clf, [reference.train_epoch(clf, x, y) for _ in range(n)]

    one, _ = epochs(7, 1)
    ref = reference.make_classifier((8,), "tanh", lr=0.1, batch_size=16, seed=7).fit(x, y)
    for a, b in zip(one.coefs_ + one.intercepts_, ref.coefs_ + ref.intercepts_):
        np.testing.assert_array_equal(a, b)
    clf, losses = epochs(7)
    assert clf.n_iter_ == 1 and len(clf.loss_curve_) == 3  # one epoch per call
    assert epochs(7)[1] == losses and epochs(8)[1] != losses


def test_train_records_history_checkpoints_and_calls_back():
    calls = []
    clf = reference.make_classifier((6,), "relu", lr=0.1, batch_size=10, seed=0)
    r = reference.train(clf, _sets(), 3, (1, 3), on_epoch=lambda e, row: calls.append((e, row)))
    assert r["status"] == "ok" and r["diverged_at"] is None and r["activation"] == "relu"
    assert [len(v) for v in r["history"].values()] == [3, 3, 3]
    assert set(r["checkpoints"]) == {"1", "3"} and len(r["checkpoints"]["3"]) == 6
    assert [e for e, _ in calls] == [1, 2, 3]
    assert calls[-1][1]["val_loss"] == r["history"]["val_loss"][-1]
    again = reference.train(
        reference.make_classifier((6,), "relu", lr=0.1, batch_size=10, seed=0), _sets(), 3, (1, 3)
    )
    assert {k: v for k, v in again.items() if k != "wall_s"} == {
        k: v for k, v in r.items() if k != "wall_s"
    }


def test_a_diverging_model_is_reported_as_diverged_not_as_numbers():
    """A linear network at lr 1 overflows in its second epoch; sklearn refuses its non-finite
    weights and train stops there, keeping only the finite epochs before it."""
    clf = reference.make_classifier((32, 32), "linear", lr=1.0, batch_size=10, seed=0)
    r = reference.train(clf, _sets(), 20, (1, 20))
    assert r["status"] == "diverged" and r["diverged_at"] >= 2
    assert all(len(v) == r["diverged_at"] - 1 for v in r["history"].values())
    assert all(np.isfinite(v).all() for v in r["history"].values())
    assert set(r["checkpoints"]) == {"1"}
    with pytest.raises(reference.DivergedError, match=f"epoch {r['diverged_at'] + 1}"):
        reference.train_epoch(clf, *_sets()[0])


def test_a_genuine_sklearn_error_is_not_called_a_divergence():
    clf = reference.make_classifier((4,), "relu")
    x, y = _sets()[0]
    reference.train_epoch(clf, x, y)
    with pytest.raises(ValueError, match="features"):  # 5 features where it was fitted on 12
        reference.train_epoch(clf, x[:, :5], y)


XY = _sets()[0]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: reference.make_classifier((4,), "gelu"), "activation must be one of relu"),
        (lambda: reference.make_classifier((), "relu"), "hidden must be a non-empty"),
        (lambda: reference.make_classifier((4, 0), "relu"), "hidden must be a non-empty"),
        (lambda: reference.make_classifier((4,), lr=0), "lr must be a finite number > 0"),
        (lambda: reference.make_classifier((4,), lr=float("nan")), "lr must be a finite"),
        (lambda: reference.make_classifier((4,), lr=True), "lr must be a finite"),
        (lambda: reference.make_classifier((4,), batch_size=0), "batch_size must be an int >= 1"),
        (lambda: reference.make_classifier((4,), batch_size=2.5), "batch_size must be an int"),
        (lambda: reference.make_classifier((4,), seed=-1), "seed must be an int in [0, 2**32)"),
        (
            lambda: reference.train_epoch(reference.make_classifier((4,)), XY[0], XY[1][:-1]),
            "training x must be (N, D) and y (N,) with one label per row",
        ),
        (
            lambda: reference.train_epoch(reference.make_classifier((4,)), XY[0], XY[1] + 5),
            "training labels must be ints in [0, 10)",
        ),
        (
            lambda: reference.train(reference.make_classifier((4,)), _sets(), 0),
            "epochs must be an int >= 1",
        ),
        (
            lambda: reference.train(reference.make_classifier((4,)), _sets(), 2, (3,)),
            "save_at must be epochs in [1, 2]",
        ),
        (
            lambda: reference.train(reference.make_classifier((4,)), _sets()[:2], 1),
            "data must be the (train, val, test) sets",
        ),
        (
            lambda: reference.Job("relu", (4,), 1, (), (XY, (XY[0], XY[1][:3]), XY)),
            "validation x must be (N, D) and y (N,)",
        ),
        (
            lambda: reference.Job("relu", (4,), 1, (), (XY, (XY[0] * np.nan, XY[1]), XY)),
            "validation x holds NaN or inf values",
        ),
        (lambda: reference.start_pool({}, 1), "start_pool needs at least one job"),
        (lambda: reference.start_pool({"a": 1}, 0), "workers must be an int >= 1"),
        (
            lambda: reference.start_pool({"a": 1, "b": 2}, 1, counter=reference.epoch_counter(1)),
            "counter has 1 slots for 2 jobs",
        ),
        (lambda: reference.epoch_counter(0), "epoch_counter needs a number of jobs >= 1"),
    ],
)
def test_bad_input_is_one_line(call, message):
    with pytest.raises(InputError) as err:
        call()
    assert message in str(err.value) and "\n" not in str(err.value)
