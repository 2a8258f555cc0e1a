"""scikit-learn's ``MLPClassifier`` as jnn's reference: the study's plain SGD, epoch by epoch.

    clf = reference.make_classifier((256, 128, 64), "sigmoid", lr=0.1, batch_size=32, seed=0)
    result = reference.train(clf, ((x, y), (x_val, y_val), (x_test, y_test)), 100, (50, 100))
    # result["history"]["val_accuracy"]: one float per epoch; result["checkpoints"]["50"]: the
    # train/val/test loss and accuracy after epoch 50; result["status"]: "ok" or "diverged"

Settings that make the comparison fair (plain SGD as in the study, not sklearn's defaults of
Nesterov momentum 0.9, L2 1e-4, batch 200 and early stopping): ``solver='sgd', momentum=0,
nesterovs_momentum=False, alpha=0, learning_rate='constant', shuffle=True`` with the given rate
and batch size. sklearn initialises its weights its own way (Glorot-style uniform, scaled for
logistic), which is why its Sigmoid network learns with the study's settings.

One epoch is one ``partial_fit`` over the training set, so the curves are recorded per epoch and
the 50- and 100-epoch models come from one continuous run, as in jnn. ``random_state`` is a
``RandomState`` instance, not an int: sklearn re-reads it on every call, and an int would start
each epoch's shuffle from the same seed, while an instance moves on, so every epoch draws a new
permutation, as ``fit`` does (``fit`` reshuffles the previous epoch's order, ``partial_fit`` a
fresh range: the same distribution of orders, not the same numbers after epoch 1).

A model whose weights or losses become non-finite is reported as diverged (``status``,
``diverged_at``), never as a number: sklearn itself refuses non-finite weights with a
``ValueError``, which :func:`train_epoch` turns into :class:`DivergedError`.

Worker processes (:func:`start_pool`) train several models beside a JAX run. This module does
not import JAX (nor sklearn until a function needs it) and a :class:`Job` holds plain numpy, so a
job brings no JAX into a worker and never touches the parent's devices (spawn still re-imports
the parent's ``__main__`` module in each worker: keep that one light for light workers). The
workers die with the parent however it dies, and report their finished epochs through a small
shared-memory array (:func:`epoch_counter`).
"""

from __future__ import annotations

import math
import os
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from numbers import Integral, Real
from typing import TYPE_CHECKING, Any

import numpy as np

from jnn.errors import InputError

if TYPE_CHECKING:
    from sklearn.neural_network import MLPClassifier

# jnn's activation names -> MLPClassifier's
ACTIVATIONS = {"relu": "relu", "sigmoid": "logistic", "tanh": "tanh", "linear": "identity"}
# The estimator's parameters that make the comparison fair (see :func:`settings`).
FAIR_SETTINGS = (
    "solver",
    "momentum",
    "nesterovs_momentum",
    "alpha",
    "batch_size",
    "learning_rate",
    "learning_rate_init",
    "max_iter",
    "shuffle",
    "activation",
)
Pair = tuple[np.ndarray, np.ndarray]  # (x (N, D) float, y (N,) int labels)
Sets = tuple[Pair, Pair, Pair]  # (train, val, test)
EpochCallback = Callable[[int, dict[str, float]], None]  # (epoch, this epoch's history row)


class DivergedError(ArithmeticError):
    """The model's weights or loss became non-finite (plain SGD overflowed)."""


# --------------------------------------------------------------------------------------------
# Input checks: one line each, what was wrong and what to do
# --------------------------------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, Integral) and not isinstance(v, bool)


def _check_settings(hidden: Any, activation: Any, lr: Any, batch_size: Any, seed: Any) -> None:
    if activation not in ACTIVATIONS:
        raise InputError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    sizes = list(hidden) if isinstance(hidden, Sequence) and not isinstance(hidden, str) else []
    if not sizes or not all(_is_int(n) and n >= 1 for n in sizes):
        raise InputError(f"hidden must be a non-empty sequence of sizes >= 1, got {hidden!r}")
    rate = float(lr) if isinstance(lr, Real) and not isinstance(lr, bool) else math.nan
    if not (math.isfinite(rate) and rate > 0):
        raise InputError(f"lr must be a finite number > 0, got {lr!r}")
    if not _is_int(batch_size) or batch_size < 1:
        raise InputError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if not _is_int(seed) or not 0 <= seed < 2**32:
        raise InputError(f"seed must be an int in [0, 2**32), got {seed!r}")


def _check_pair(x: Any, y: Any, num_classes: int, what: str) -> None:
    """x (N, D), y (N,) ints in [0, num_classes), N >= 1: what partial_fit and the loss need."""
    if np.ndim(x) != 2 or np.ndim(y) != 1 or np.shape(x)[0] != np.shape(y)[0]:
        raise InputError(
            f"{what} x must be (N, D) and y (N,) with one label per row, got x {np.shape(x)} "
            f"and y {np.shape(y)}"
        )
    if np.shape(y)[0] == 0:
        raise InputError(f"{what} set is empty; give at least one example")
    y = np.asarray(y)
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= num_classes:
        raise InputError(f"{what} labels must be ints in [0, {num_classes}); check the labels")


def _check_epochs(epochs: Any, save_at: Any) -> None:
    if not _is_int(epochs) or epochs < 1:
        raise InputError(f"epochs must be an int >= 1, got {epochs!r}")
    if not all(_is_int(e) and 1 <= e <= epochs for e in save_at):
        raise InputError(f"save_at must be epochs in [1, {epochs}], got {list(save_at)!r}")


def _check_sets(data: Any, num_classes: int) -> Sets:
    """The three (x, y) sets as plain numpy tuples (a NamedTuple of jnn.study pickles with it
    the module that defines it, and that one imports JAX), checked; x must be finite."""
    if len(data) != 3:
        raise InputError(f"data must be the (train, val, test) sets of (x, y), got {len(data)}")
    sets = tuple((np.asarray(x), np.asarray(y)) for x, y in data)
    for what, (x, y) in zip(("training", "validation", "test"), sets):
        _check_pair(x, y, num_classes, what)
        if not np.isfinite(x).all():
            raise InputError(f"{what} x holds NaN or inf values; clean or drop those examples")
    return sets  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# The classifier, one epoch, a whole run
# --------------------------------------------------------------------------------------------


def make_classifier(
    hidden: Sequence[int],
    activation: str = "relu",
    *,
    lr: float = 0.1,
    batch_size: int = 32,
    seed: int = 0,
) -> MLPClassifier:
    """An unfitted ``MLPClassifier`` (hidden layer sizes ``hidden``, jnn's ``activation`` name)
    set up as the study's plain SGD: no momentum, no L2, constant ``lr``, minibatches of
    ``batch_size`` reshuffled each epoch from ``RandomState(seed)``. Train it with
    :func:`train_epoch` (one ``partial_fit`` is one epoch) or :func:`train`."""
    _check_settings(hidden, activation, lr, batch_size, seed)
    from sklearn.neural_network import MLPClassifier

    return MLPClassifier(
        hidden_layer_sizes=tuple(int(n) for n in hidden),
        activation=ACTIVATIONS[activation],
        solver="sgd",
        learning_rate="constant",
        learning_rate_init=float(lr),
        momentum=0.0,
        nesterovs_momentum=False,
        alpha=0.0,
        batch_size=int(batch_size),
        max_iter=1,  # fit() would train one epoch too; partial_fit always trains one
        n_iter_no_change=np.iinfo(np.int32).max,  # never 'converged' (no effect on partial_fit)
        early_stopping=False,
        shuffle=True,
        random_state=np.random.RandomState(seed),  # an instance: each epoch a new permutation
    )


def settings(clf: MLPClassifier) -> dict[str, Any]:
    """The estimator's parameters that matter for a fair comparison (:data:`FAIR_SETTINGS`),
    plus how an epoch is run; JSON-ready, for a results file."""
    params = clf.get_params()
    return {k: params[k] for k in FAIR_SETTINGS} | {"epoch_via": "partial_fit"}


def train_epoch(clf: MLPClassifier, x: np.ndarray, y: np.ndarray, num_classes: int = 10) -> float:
    """One shuffled epoch of plain SGD over x (N, D), y (N,) ints in [0, num_classes): one
    ``partial_fit`` (the last partial batch is kept, as sklearn does). Returns the epoch's mean
    training loss; raises :class:`DivergedError` if the weights or the loss became non-finite."""
    _check_pair(x, y, num_classes, "training")
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", RuntimeWarning)  # overflow in exp: reported as diverged
        try:
            clf.partial_fit(x, y, classes=np.arange(num_classes))
        except ValueError:
            if _weights_finite(clf):
                raise  # not a divergence: a genuine error keeps its traceback
            raise DivergedError(f"weights became non-finite in epoch {_epochs(clf)}") from None
    loss = float(clf.loss_curve_[-1])
    if not math.isfinite(loss):
        raise DivergedError(f"training loss of epoch {_epochs(clf)} is {loss}")
    return loss


def _epochs(clf: Any) -> int:
    """Epochs trained so far (``n_iter_`` restarts at 0 in every ``partial_fit``)."""
    return len(getattr(clf, "loss_curve_", []))


def _weights_finite(clf: Any) -> bool:
    arrays = [*getattr(clf, "coefs_", []), *getattr(clf, "intercepts_", [])]
    return all(np.isfinite(w).all() for w in arrays)


def _loss_acc(clf: Any, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of (x, y); non-finite probabilities are a divergence."""
    from sklearn.metrics import log_loss

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p = clf.predict_proba(x)
    if not np.isfinite(p).all():
        raise DivergedError("predicted probabilities are non-finite")
    acc = float(np.mean(clf.classes_[np.argmax(p, axis=1)] == y))
    return float(log_loss(y, p, labels=clf.classes_)), acc


def _checkpoint(clf: Any, data: Sets) -> dict[str, float]:
    row = {}
    for name, (x, y) in zip(("train", "val", "test"), data):
        row[f"{name}_loss"], row[f"{name}_accuracy"] = _loss_acc(clf, x, y)
    return row


def train(
    clf: MLPClassifier,
    data: Sequence[tuple[Any, Any]],
    epochs: int,
    save_at: Sequence[int] = (),
    *,
    num_classes: int = 10,
    on_epoch: EpochCallback | None = None,
) -> dict[str, Any]:
    """Train ``clf`` (from :func:`make_classifier`) for ``epochs`` epochs on ``data`` = (train,
    val, test) sets of (x (N, D), y (N,)); record per epoch ``train_loss``, ``val_loss`` and
    ``val_accuracy`` and, after each epoch in ``save_at``, the loss and accuracy on all three
    sets. ``on_epoch(epoch, row)`` is called after each recorded epoch.

    Returns a JSON-ready dict: ``status`` ("ok" or "diverged"), ``diverged_at`` (the 1-based
    epoch whose numbers were refused, or None), ``activation`` (sklearn's name), ``history``
    (lists over the epochs before any divergence), ``checkpoints`` ({str(epoch): row}) and
    ``wall_s``.
    """
    t0 = time.perf_counter()
    _check_epochs(epochs, save_at)
    sets = _check_sets(data, num_classes)
    history: dict[str, list[float]] = {"train_loss": [], "val_loss": [], "val_accuracy": []}
    checkpoints: dict[str, dict[str, float]] = {}
    status, diverged_at = "ok", None
    for epoch in range(1, epochs + 1):
        try:
            row = {"train_loss": train_epoch(clf, *sets[0], num_classes)}
            row["val_loss"], row["val_accuracy"] = _loss_acc(clf, *sets[1])
            saved = _checkpoint(clf, sets) if epoch in save_at else None
        except DivergedError:
            status, diverged_at = "diverged", epoch
            break
        for k, v in row.items():
            history[k].append(v)
        if saved is not None:
            checkpoints[str(epoch)] = saved
        if on_epoch is not None:
            on_epoch(epoch, row)
    return {
        "status": status,
        "diverged_at": diverged_at,
        "activation": clf.activation,
        "history": history,
        "checkpoints": checkpoints,
        "wall_s": time.perf_counter() - t0,
    }


# --------------------------------------------------------------------------------------------
# Worker processes: one job per model, tied to the parent, epochs in shared memory
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One model for a worker process: :func:`make_classifier`'s settings, ``epochs`` and
    ``save_at`` for :func:`train`, and ``data`` = the parent's (train, val, test) sets of
    (x, y), pickled to the worker (the split is made once, in the parent). Checked here, in
    the parent, so a bad job fails before any process starts."""

    activation: str
    hidden: tuple[int, ...]
    epochs: int
    save_at: tuple[int, ...]
    data: Sets
    lr: float = 0.1
    batch_size: int = 32
    seed: int = 0
    num_classes: int = 10

    def __post_init__(self) -> None:
        _check_settings(self.hidden, self.activation, self.lr, self.batch_size, self.seed)
        _check_epochs(self.epochs, self.save_at)
        object.__setattr__(self, "hidden", tuple(self.hidden))
        object.__setattr__(self, "save_at", tuple(self.save_at))
        object.__setattr__(self, "data", _check_sets(self.data, self.num_classes))


_COUNTER: Any = None  # in a worker: the shared epoch counter given to start_pool, if any
_SLOT: int | None = None  # in a worker: the counter slot of the job it is running


def run_job(job: Job) -> dict[str, Any]:
    """Train ``job``'s model (:func:`train`); the default job of :func:`start_pool`. Each
    finished epoch is written into this job's slot of the pool's epoch counter, if it has one."""
    clf = make_classifier(
        job.hidden, job.activation, lr=job.lr, batch_size=job.batch_size, seed=job.seed
    )
    return train(
        clf, job.data, job.epochs, job.save_at, num_classes=job.num_classes, on_epoch=_report
    )


def _report(epoch: int, row: dict[str, float]) -> None:
    if _COUNTER is not None and _SLOT is not None:
        _COUNTER[_SLOT] = epoch


def _in_slot(fn: Callable[[Any], Any], job: Any, slot: int | None) -> Any:
    """Run ``fn(job)`` in a worker with ``slot`` as its counter slot (a worker runs one job at a
    time, so a module-level slot is the job's own)."""
    global _SLOT
    _SLOT = slot
    try:
        return fn(job)
    finally:
        _SLOT = None


def epoch_counter(jobs: int) -> Any:
    """Shared memory for the finished epochs of ``jobs`` jobs (all 0), for :func:`start_pool`;
    read it as a sequence of ints (``list(counter)``) while the jobs run (no queue to drain)."""
    if not _is_int(jobs) or jobs < 1:
        raise InputError(f"epoch_counter needs a number of jobs >= 1, got {jobs!r}")
    return get_context("spawn").RawArray("i", jobs)


def _worker_init(parent_pid: int, counter: Any = None) -> None:
    """Each worker: BLAS on one thread, and tied to the process that started it.

    One BLAS thread: the workers and JAX already fill the cores, and oversubscribed OpenBLAS
    threads made sklearn several times slower. Tied: multiprocessing workers outlive a parent
    killed by SIGKILL or SIGTERM (measured: over a minute of orphaned computing), so a daemon
    thread watches the parent and ends the worker within ~0.2 s of the parent's death, however it
    died (the worker is re-parented, so ``getppid`` changes).
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
    jobs: Mapping[str, Any],
    workers: int,
    fn: Callable[[Any], Any] = run_job,
    counter: Any = None,
) -> tuple[ProcessPoolExecutor, dict[str, Future]]:
    """Submit ``fn(job)`` for each named job (default :func:`run_job` of a :class:`Job`; any
    picklable module-level ``fn``) to a pool of ``workers`` spawned processes (fork is unsafe
    once JAX runs); the workers die with this process.

    With a ``counter`` from :func:`epoch_counter` (one slot per job, in ``jobs`` order), job i
    writes its finished epochs into ``counter[i]`` (shared memory, given to each worker at its
    start). Returns the pool and {name: Future}; collect them, then call :func:`stop_pool`.
    """
    if not jobs:
        raise InputError("start_pool needs at least one job")
    if not _is_int(workers) or workers < 1:
        raise InputError(f"workers must be an int >= 1, got {workers!r}")
    if counter is not None and len(counter) < len(jobs):
        raise InputError(f"counter has {len(counter)} slots for {len(jobs)} jobs; use one each")
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=get_context("spawn"),
        initializer=_worker_init,
        initargs=(os.getpid(), counter),
    )
    futures = {
        name: pool.submit(_in_slot, fn, job, i if counter is not None else None)
        for i, (name, job) in enumerate(jobs.items())
    }
    return pool, futures


def stop_pool(pool: ProcessPoolExecutor) -> None:
    """Shut the pool down; workers still busy (after an error or Ctrl-C) are terminated."""
    processes = list(getattr(pool, "_processes", {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in processes:
        if p.is_alive():
            p.terminate()
