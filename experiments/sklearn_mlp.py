"""scikit-learn's MLPClassifier as the study's reference, run in worker processes.

Settings that make the comparison fair (plain SGD as in the study, not sklearn's defaults of
Nesterov momentum 0.9, L2 1e-4, batch 200 and early stopping): ``solver='sgd', momentum=0,
nesterovs_momentum=False, alpha=0, batch_size=32, learning_rate_init=0.1, shuffle=True``.
sklearn initialises its weights its own way (Glorot-style uniform, scaled for logistic), which is
why its Sigmoid network learns with the study's settings.

One epoch is one ``partial_fit`` over the training set (same shuffling rule as ``fit``: a new
permutation per epoch from one RandomState), so the train/validation curves are recorded per epoch
and the 50- and 100-epoch models come from one continuous run, as in jnn. This module does not
import JAX: the worker processes stay light and never touch the parent's devices. The data
arrive pickled from the parent (the split is made once).

Progress: :func:`epoch_counter` makes a small shared-memory array (one int per job) that the
workers receive when they start; each job writes its finished epochs into its slot after every
``partial_fit``, so the parent can show them while it waits (no extra process, no queue to drain).
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

import numpy as np

SKLEARN_ACTIVATION = {"relu": "relu", "sigmoid": "logistic", "tanh": "tanh", "linear": "identity"}
_COUNTER: Any = None  # in a worker: the shared epoch counter given to start_pool, if any


def epoch_counter(jobs: int) -> Any:
    """Shared memory for the finished epochs of ``jobs`` jobs (all 0), for :func:`start_pool`;
    read it as a sequence of ints (``list(counter)``) while the jobs run."""
    return get_context("spawn").RawArray("i", jobs)


def _epoch_done(spec: dict[str, Any], epoch: int) -> None:
    """Tell the parent that ``epoch`` of this job is done (when it asked, see start_pool)."""
    if _COUNTER is not None and spec.get("slot") is not None:
        _COUNTER[spec["slot"]] = epoch


def _loss_acc(clf: Any, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import log_loss

    p = clf.predict_proba(x)
    acc = float(np.mean(clf.classes_[np.argmax(p, axis=1)] == y))
    return float(log_loss(y, p, labels=clf.classes_)), acc


def train_sklearn(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one MLPClassifier epoch by epoch; evaluate at each ``save_at`` epoch.

    spec: activation, hidden (sizes), epochs, save_at, lr, batch_size, seed, and data: the
    (x_train, y_train, x_val, y_val, x_test, y_test) arrays of the parent's split. Returns a
    JSON-ready dict with status, per-epoch history (train_loss, val_loss, val_accuracy) and
    per-checkpoint metrics.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    t0 = time.perf_counter()
    x, y, xv, yv, xt, yt = spec["data"]
    epochs = int(spec["epochs"])
    clf = MLPClassifier(
        hidden_layer_sizes=tuple(spec["hidden"]),
        activation=SKLEARN_ACTIVATION[spec["activation"]],
        solver="sgd",
        learning_rate="constant",
        learning_rate_init=float(spec["lr"]),
        momentum=0.0,
        nesterovs_momentum=False,
        alpha=0.0,
        batch_size=int(spec["batch_size"]),
        max_iter=1,  # one epoch per partial_fit
        n_iter_no_change=epochs + 1,
        early_stopping=False,
        shuffle=True,
        random_state=np.random.RandomState(spec["seed"]),  # an instance: shuffles move on
    )
    history: dict[str, list[float]] = {"train_loss": [], "val_loss": [], "val_accuracy": []}
    checkpoints: dict[str, dict[str, float]] = {}
    status, diverged_at = "ok", None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", RuntimeWarning)  # overflow in exp: reported as diverged
        for epoch in range(1, epochs + 1):
            clf.partial_fit(x, y, classes=np.arange(10))
            _epoch_done(spec, epoch)
            train_loss = float(clf.loss_curve_[-1])
            val_loss, val_acc = _loss_acc(clf, xv, yv)
            history["train_loss"].append(train_loss)
            history["val_loss"].append(val_loss)
            history["val_accuracy"].append(val_acc)
            if not (np.isfinite(train_loss) and np.isfinite(val_loss)):
                status, diverged_at = "diverged", epoch
                break
            if epoch in spec["save_at"]:
                row = {}
                for name, (xs, ys) in (("train", (x, y)), ("val", (xv, yv)), ("test", (xt, yt))):
                    row[f"{name}_loss"], row[f"{name}_accuracy"] = _loss_acc(clf, xs, ys)
                checkpoints[str(epoch)] = row
    return {
        "status": status,
        "diverged_at": diverged_at,
        "activation": SKLEARN_ACTIVATION[spec["activation"]],
        "history": history,
        "checkpoints": checkpoints,
        "wall_s": time.perf_counter() - t0,
    }


def _worker_init(parent_pid: int, counter: Any = None) -> None:
    """Each worker: BLAS on one thread, and tied to the process that started it.

    One BLAS thread: the workers and JAX already fill the cores, and oversubscribed OpenBLAS
    threads made sklearn several times slower here. Tied: multiprocessing workers outlive a parent
    killed by SIGKILL or SIGTERM (measured: over a minute of orphaned computing), so a daemon
    thread watches the parent and ends the worker within ~0.2 s of the parent's death, however it
    died (the worker is re-parented, so ``getppid`` changes). ``counter``: see :func:`start_pool`.
    """
    global _COUNTER
    _COUNTER = counter
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()


def _exit_with_parent(parent_pid: int, poll_s: float = 0.2) -> None:
    while os.getppid() == parent_pid:
        time.sleep(poll_s)
    os._exit(1)


def start_pool(
    specs: list[dict[str, Any]],
    workers: int,
    fn: Callable[[dict[str, Any]], Any] = None,  # type: ignore[assignment]
    counter: Any = None,
) -> tuple[ProcessPoolExecutor, dict]:
    """Submit one job ``fn(spec)`` per spec (default :func:`train_sklearn`) to a spawn-based
    process pool (fork is unsafe once JAX runs); the workers die with this process.

    With a ``counter`` from :func:`epoch_counter` (one slot per spec, in order), job i writes its
    finished epochs into ``counter[i]`` (shared memory, handed to each worker when it starts).

    Returns the pool and {spec["activation"]: Future}; the caller collects and shuts it down.
    """
    pool = ProcessPoolExecutor(
        max_workers=max(1, workers),
        mp_context=get_context("spawn"),
        initializer=_worker_init,
        initargs=(os.getpid(), counter),
    )
    job = fn or train_sklearn
    if counter is not None:
        specs = [{**s, "slot": i} for i, s in enumerate(specs)]
    futures: dict[str, Future] = {s["activation"]: pool.submit(job, s) for s in specs}
    return pool, futures


def stop_pool(pool: ProcessPoolExecutor) -> None:
    """Shut the pool down; workers still busy (after an error or Ctrl-C) are terminated."""
    processes = list(getattr(pool, "_processes", {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in processes:
        if p.is_alive():
            p.terminate()
