"""The MLP study: 784-256-128-64-10, four hidden activations, manual backprop, plain SGD.

    python -m experiments.mlp_sweep                   # the original study (4 x 100 epochs)
    python -m experiments.mlp_sweep --quick           # the same outputs from a tiny run, seconds
    python -m experiments.mlp_sweep --init glorot     # the fix for the Sigmoid failure
    python -m experiments.mlp_sweep --resume          # continue an interrupted run

On the harness (``experiments.harness``): ``parse_config`` -> ``run(cfg, run_dir)`` ->
``render(result, run_dir)``, one output root (``runs/``). Per activation, every seed's model
trains in one XLA program (vmap over seeds, the data shared); activations are separate programs,
spread over ``--devices`` host devices and run from threads. Checkpoints (orbax) land in
``<out>/<activation>/<epoch>/`` at every ``--save-at`` epoch, plus a rolling
``<out>/<activation>/latest/`` every ``--checkpoint-every`` epochs for crash safety. The reported
accuracies are computed from the restored checkpoints; a ``--save-at`` checkpoint that is gone
from a run already past it is refused (one line, exit 2), never reported. ``<out>`` receives
``run.json`` (the config, checked on ``--resume``), ``results.json``, ``results.md`` and the loss
curves (``loss_<activation>.png``, ``loss_overview.png``).

On a terminal: one progress bar per activation, an overall ETA line after the first epoch and
scikit-learn's epochs per model; elsewhere (CI, logs) plain lines.

Exit codes: 0 done; 2 bad input (one line on stderr); 3 done, but some model diverged.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import queue
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from experiments import harness, report
from jnn.errors import InputError

STUDY_ACTIVATIONS = ("relu", "sigmoid", "linear", "tanh")
SIZES = (784, 256, 128, 64, 10)
INIT_SCALE_NAME = {"normal": "stddev", "random": "limit"}
QUICK_SUBSET = (2000, 500, 500)  # train / val / test examples of --quick
QUICK_EPOCHS, QUICK_SAVE_AT = 3, (2, 3)
PLATEAU_NOTE = (
    "at ~10% accuracy (loss ln 10 = 2.303) a model is still on the plateau of a small init: "
    "0.01*randn weights make every unit start alike, and the study's full run leaves it after "
    "~6 epochs of 48,600 images; a smoke run is too short for that (try --init glorot to see it "
    "learn in seconds)"
)
EXIT_DIVERGED = harness.EXIT_DIVERGED
MAX_EPOCHS, MAX_SEEDS = 100_000, 1_024  # refuse before allocating (10**12 epochs tried 3.6 TiB)
# The original study's test accuracies (its own 80/10/10 split), for the results table.
ORIGINAL_TEST_ACCURACY = {
    ("relu", 100): 0.8865,
    ("relu", 50): 0.8833,
    ("tanh", 100): 0.8822,
    ("tanh", 50): 0.8810,
    ("linear", 100): 0.8172,
    ("linear", 50): 0.8218,
    ("sigmoid", 100): 0.1012,
    ("sigmoid", 50): 0.1085,
}
ORIGINAL_SKLEARN_TEST_ACCURACY = {"sigmoid": 0.878, "tanh": 0.873, "relu": 0.0, "linear": 0.0}
# Settings that define the numbers: --resume refuses a run whose run.json differs in any of them.
IDENTITY = (
    "activations",
    "epochs",
    "save_at",
    "init",
    "init_scale",
    "lr",
    "batch_size",
    "seeds",
    "seed",
    "split",
    "quick",
    "sizes",
    "subset",
    "gradients",
    "data_parallel",
)


@dataclass(frozen=True)
class Config:
    activations: tuple[str, ...]
    epochs: int
    save_at: tuple[int, ...]
    init: str
    init_scale: float | None
    lr: float
    batch_size: int
    seeds: int
    seed: int
    split: str
    data_dir: str | None
    out: str
    resume: bool
    overwrite: bool
    quick: bool
    sklearn: bool
    sklearn_workers: int
    devices: int | None
    checkpoint_every: int
    sizes: tuple[int, ...] = SIZES
    subset: tuple[int, int, int] | None = None
    gradients: str = "manual"
    data_parallel: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def identity(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: _plain(d[k]) for k in IDENTITY}


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def config_of(result: dict[str, Any]) -> Config:
    """The :class:`Config` stored in a result (also one read back from results.json)."""
    c = dict(result["config"])
    for key in ("activations", "save_at", "sizes", "subset"):
        c[key] = tuple(c[key]) if c.get(key) is not None else None
    return Config(**c)


# ------------------------------------------------------------------------------------ the CLI


def build_parser() -> argparse.ArgumentParser:
    p = harness.parser(
        "mlp_sweep",
        description=(
            "Train the course MLP (784-256-128-64-10, manual backprop, plain SGD) with each "
            "hidden activation, checkpoint it at chosen epochs, evaluate the restored "
            "checkpoints and compare with scikit-learn's MLPClassifier. With no flags it runs "
            "the original study: relu, sigmoid, linear, tanh; 100 epochs; lr 0.1; batch 32; "
            "checkpoints at 50 and 100; the original's split of the 60k official training "
            "images (48,600 train / 5,400 validation / 6,000 test)."
        ),
        epilog="Exit codes: 0 done, 2 bad input, 3 done but a model diverged (see results.json).",
    )
    _add_model_flags(p)
    harness.add_data_flag(p)
    harness.add_output_flags(p, "mlp_sweep", resume=True)
    out = next(a for a in p._actions if "--out" in a.option_strings)
    out.help = f"run folder [{default_out('<split>', '<init>', None, False)}[-<scale>][-quick]]"
    _add_run_flags(p)
    return p


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    """The flags that define the numbers (IDENTITY)."""
    a = p.add_argument
    a(
        "--activations",
        default=",".join(STUDY_ACTIVATIONS),
        help="comma-separated hidden activations [relu,sigmoid,linear,tanh]",
    )
    a("--epochs", type=int, default=None, help="epochs per model [100; 3 with --quick]")
    a(
        "--save-at",
        default=None,
        help="comma-separated epochs to checkpoint and evaluate [half and end: 50,100; 2,3 quick]",
    )
    a(
        "--init",
        default="normal",
        help="weight init: zero, random, normal, he, glorot [normal, as in the study]",
    )
    a(
        "--init-scale",
        type=float,
        default=None,
        help="scale of the init: normal's stddev [0.01] or random's uniform limit [0.05]",
    )
    a("--lr", type=float, default=0.1, help="SGD learning rate [0.1]")
    a("--batch-size", type=int, default=32, help="minibatch size [32]")
    a(
        "--seeds",
        type=int,
        default=1,
        help="independently seeded models per activation, trained in one program; mean +- std [1]",
    )
    a("--seed", type=int, default=0, help="base seed of the data split and the model keys [0]")
    a(
        "--split",
        choices=("original", "pooled70k", "official", "seed"),
        default="original",
        help="original: the study's 48,600/5,400/6,000 of the 60k official training images "
        "(sizes inferred from its reported accuracies); pooled70k: 56k/7k/7k of all 70k images "
        "(jnn's earlier default; 'seed' is its old name); official: 54k/6k + the official 10k "
        "test set [original]",
    )


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    """How the run goes: smoke run, the sklearn comparison, devices, checkpoints."""
    a = p.add_argument
    a(
        "--quick",
        action="store_true",
        help=f"smoke run: {QUICK_SUBSET[0]}/{QUICK_SUBSET[1]}/{QUICK_SUBSET[2]} train/val/test "
        f"examples, {QUICK_EPOCHS} epochs, save at {QUICK_SAVE_AT}; same network, init and "
        "outputs. It checks that everything runs, not what the study finds: with the study's "
        "0.01*randn init the networks sit at ~10%% accuracy for their first epochs",
    )
    a(
        "--no-sklearn",
        dest="sklearn",
        action="store_false",
        help="skip the scikit-learn MLPClassifier comparison (it takes ~1 s per epoch per model)",
    )
    a(
        "--sklearn-workers",
        type=int,
        default=2,
        help="processes running the sklearn models alongside JAX [2]",
    )
    a(
        "--devices",
        type=int,
        default=None,
        help="host devices to spread the activations over (their programs run concurrently); "
        "[min(CPU cores, activations)]; with --data-parallel, the devices of the mesh [all]",
    )
    a(
        "--data-parallel",
        action="store_true",
        help="train each model data-parallel over a Mesh of --devices instead: every batch is "
        "split along a 'data' axis, params replicated, XLA averages the gradients "
        "(jnn.parallel); --batch-size must divide by the device count",
    )
    a(
        "--checkpoint-every",
        type=int,
        default=10,
        help="also keep a rolling checkpoint every K epochs (crash safety), 0 for none [10]",
    )


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise InputError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values:
        raise InputError(f"{what} is empty")
    return values


def _activations(text: str) -> tuple[str, ...]:
    from jnn.activations import ACTIVATIONS

    acts = tuple(t.strip().lower() for t in text.split(",") if t.strip())
    allowed = [n for n in ACTIVATIONS if n != "softmax"]
    bad = [t for t in acts if t not in allowed]
    if not acts or bad:
        raise InputError(f"unknown activation {bad or acts!r}: choose from {', '.join(allowed)}")
    if len(set(acts)) != len(acts):
        raise InputError(f"--activations lists one twice: {text!r}")
    return acts


def _init(name: str, scale: float | None) -> str:
    from jnn.initializers import INITIALIZERS

    init = name.lower()
    if init not in INITIALIZERS:
        raise InputError(f"unknown init {name!r}: choose from {', '.join(INITIALIZERS)}")
    if scale is not None:
        if init not in INIT_SCALE_NAME:
            raise InputError(f"--init-scale applies to normal and random, not to --init {init}")
        harness.positive_float(scale, "--init-scale")
    return init


def _epochs(args: argparse.Namespace) -> tuple[int, tuple[int, ...]]:
    """--epochs and --save-at (defaults: 100 and 50,100; 3 and 2,3 with --quick)."""
    epochs = args.epochs if args.epochs is not None else (QUICK_EPOCHS if args.quick else 100)
    harness.positive_int(epochs, "--epochs", maximum=MAX_EPOCHS)
    if args.save_at is not None:
        save_at = _ints(args.save_at, "--save-at")
    elif args.quick and args.epochs is None:
        save_at = QUICK_SAVE_AT
    else:
        save_at = tuple(sorted({e for e in (epochs // 2, epochs) if e > 0}))
    if any(e <= 0 for e in save_at):
        raise InputError(f"--save-at epochs must be positive, got {list(save_at)}")
    if any(e > epochs for e in save_at):
        raise InputError(f"--save-at {max(save_at)} is beyond --epochs {epochs}")
    return epochs, tuple(sorted(set(save_at)))


def parse_config(argv: Sequence[str] | None) -> Config:
    """Parse and check the command line; every problem is one InputError naming the flag. On
    --resume the run.json in --out must match (checked before anything is written there)."""
    args = build_parser().parse_args(argv)
    acts = _activations(args.activations)
    init = _init(args.init, args.init_scale)
    epochs, save_at = _epochs(args)
    harness.positive_float(args.lr, "--lr")
    harness.positive_int(args.batch_size, "--batch-size")
    harness.positive_int(args.seeds, "--seeds", maximum=MAX_SEEDS)
    harness.positive_int(args.sklearn_workers, "--sklearn-workers")
    harness.seed(args.seed)
    if args.devices is not None:
        harness.positive_int(args.devices, "--devices")
    if args.checkpoint_every < 0:
        raise InputError(f"--checkpoint-every must be >= 0, got {args.checkpoint_every}")
    if args.resume and args.overwrite:
        raise InputError("--resume and --overwrite contradict each other; pick one")
    subset = QUICK_SUBSET if args.quick else None
    if subset and args.batch_size > subset[0]:  # the full sets are checked once loaded
        raise InputError(f"--batch-size {args.batch_size} exceeds the training examples")
    cfg = Config(
        activations=acts,
        epochs=epochs,
        save_at=save_at,
        init=init,
        init_scale=args.init_scale,
        **{k: getattr(args, k) for k in ("lr", "batch_size", "seeds", "seed", "split")},
        data_dir=harness.data_dir(args.data_dir),
        out=args.out or default_out(args.split, init, args.init_scale, args.quick),
        **{k: getattr(args, k) for k in ("resume", "overwrite", "quick", "sklearn")},
        sklearn_workers=args.sklearn_workers,
        devices=args.devices,
        checkpoint_every=args.checkpoint_every,
        subset=subset,
        data_parallel=args.data_parallel,
    )
    check_resume(cfg)
    return cfg


def default_out(split: str, init: str, scale: float | None, quick: bool) -> str:
    """``runs/mlp_sweep-<split>-<init>[-<scale>][-quick]`` (harness.default_out)."""
    scale_s = f"{scale:g}" if scale is not None else ""
    return harness.default_out("mlp_sweep", split, init, scale_s, "quick" if quick else "")


def check_resume(cfg: Config) -> None:
    """On --resume, a folder holding files must be an mlp_sweep run with this config's
    identity (run.json); reads only, so it can refuse before anything is written to --out."""
    if cfg.resume:
        harness.stored_run(cfg.out, cfg.identity(), "mlp_sweep")


# ------------------------------------------------------------------------------------ setup


def choose_devices(cfg: Config) -> list[Any]:
    """Where the activation programs go (asked for before JAX starts): a list of devices, or,
    with --data-parallel, one replicated sharding over a data mesh that every program shares."""
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from jnn.parallel import _devices, check_divisible, data_mesh

    if cfg.data_parallel:
        report.request_host_devices(cfg.devices or max(1, os.cpu_count() or 1))
        mesh = data_mesh(cfg.devices)
        check_divisible(cfg.batch_size, mesh, what="--batch-size")
        return [NamedSharding(mesh, P())]
    want = cfg.devices or max(1, min(os.cpu_count() or 1, len(cfg.activations)))
    report.request_host_devices(want)  # CPU only; a no-op once JAX runs (e.g. in-process tests)
    if cfg.devices is None:
        return jax.devices()[:want]
    return _devices(cfg.devices)


def load_data(cfg: Config) -> tuple[np.ndarray, ...]:
    """(x_train, y_train, x_val, y_val, x_test, y_test) as numpy; checked finite."""
    s = report.load_splits(cfg.split, seed=cfg.seed, data_dir=cfg.data_dir)
    n = cfg.subset or (len(s.y_train), len(s.y_val), len(s.y_test))
    data = (
        s.x_train[: n[0]],
        s.y_train[: n[0]],
        s.x_val[: n[1]],
        s.y_val[: n[1]],
        s.x_test[: n[2]],
        s.y_test[: n[2]],
    )
    for name, x in zip(("train", "validation", "test"), data[::2]):
        if not np.all(np.isfinite(x)):
            raise InputError(f"the {name} images contain NaN or inf values; check the data files")
    if cfg.batch_size > len(data[1]):
        raise InputError(
            f"--batch-size {cfg.batch_size} exceeds the training examples ({len(data[1])} in "
            f"split {cfg.split})"
        )
    return data


# ------------------------------------------------------------------------------------ progress


def duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``2 h 05 min``: an ETA a person reads at a glance."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def eta_line(epochs_left: int, epoch_s: float, parallel: int, models: int, nth: int = 1) -> str:
    """The overall ETA: every activation's epochs still to run, ``parallel`` programs at a time,
    each epoch (of all ``models`` seeds) as long as this run's ``nth`` epoch (said after the
    first, which includes compiling, and again after the second, which does not)."""
    eta = epochs_left * epoch_s / max(1, parallel)
    which = "first epoch took" if nth == 1 else "second epoch took"
    extra = ", compilation included" if nth == 1 else ""
    return (
        f"eta: about {duration(eta)} for the {epochs_left} epochs left over all activations "
        f"({models} model(s) each, {parallel} at a time; the {which} {epoch_s:.1f} s{extra})"
    )


class SweepProgress:
    """What a person watches while the sweep runs: one bar per activation (its own row), an
    overall ETA after the first epoch, scikit-learn's finished epochs per model (a bar fed from
    the workers' shared counter), and notices printed above the bars instead of through them.
    Not a terminal (CI, logs, pipes): no bars, the same information as plain lines."""

    def __init__(self, cfg: Config, parallel: int, sk_counter: Any = None) -> None:
        self.cfg, self.parallel, self.sk_counter = cfg, parallel, sk_counter
        self.lock = threading.Lock()
        self.left = dict.fromkeys(cfg.activations, cfg.epochs)  # lowered as groups resume
        self.eta_said = 0  # ETA lines said: after the first epoch and after the second
        self.done = threading.Event()
        self.sk_bar = self.sk_thread = None
        self.showwarning = None  # Python's, while ours prints warnings above the bars
        if sys.stderr.isatty():
            import warnings

            self.showwarning, warnings.showwarning = warnings.showwarning, self._warn
        if sk_counter is not None:
            self.sk_bar = report.progress(
                total=cfg.epochs * len(cfg.activations),
                desc="sklearn",
                position=len(cfg.activations),
                unit="ep",
                leave=True,
            )
            if not self.sk_bar.disable:  # no terminal: said when jnn waits for it
                self.sk_thread = threading.Thread(target=self._poll_sklearn, daemon=True)
                self.sk_thread.start()

    def say(self, text: str, *, err: bool = False) -> None:
        """One line above the bars (tqdm.write), on stdout or, for warnings, stderr."""
        from tqdm.auto import tqdm

        tqdm.write(text, file=sys.stderr if err else sys.stdout)
        (sys.stderr if err else sys.stdout).flush()

    def _warn(self, message: Any, category: Any, filename: str, lineno: int, *_: Any) -> None:
        import warnings

        self.say(warnings.formatwarning(message, category, filename, lineno).rstrip(), err=True)

    def bar(self, activation: str, position: int, start: int) -> Any:
        with self.lock:
            self.left[activation] = self.cfg.epochs - start
        return report.progress(
            total=self.cfg.epochs,
            initial=start,
            desc=f"{activation:>7}",
            position=position,
            leave=True,
            unit="ep",
        )

    def epoch(
        self, activation: str, bar: Any, epoch: int, val_acc: float, epoch_s: float, nth: int
    ) -> None:
        """Epoch ``epoch`` of ``activation``, the ``nth`` this run trained, took ``epoch_s``."""
        bar.update(1)
        bar.set_postfix(val_acc=f"{val_acc:.4f}")
        with self.lock:
            self.left[activation] -= 1
            say = nth == self.eta_said + 1 <= 2
            self.eta_said += say
            left = sum(self.left.values())
        if say and left > 0:
            self.say(eta_line(left, epoch_s, self.parallel, self.cfg.seeds, nth))
        if epoch in self.cfg.save_at and bar.disable:  # no bars: one line per checkpoint
            self.say(f"{activation}: epoch {epoch}/{self.cfg.epochs}, val acc {val_acc:.4f}")

    def sklearn_epochs(self) -> list[int]:
        return list(self.sk_counter) if self.sk_counter is not None else []

    def sklearn_text(self) -> str:
        done = self.sklearn_epochs()
        return ", ".join(f"{a} {n}/{self.cfg.epochs}" for a, n in zip(self.cfg.activations, done))

    def _poll_sklearn(self) -> None:
        while not self.done.wait(0.5):
            self._refresh_sklearn()

    def _refresh_sklearn(self) -> None:
        if self.sk_bar is not None and not self.sk_bar.disable:
            self.sk_bar.n = sum(self.sklearn_epochs())
            self.sk_bar.set_postfix_str(self.sklearn_text(), refresh=False)
            self.sk_bar.refresh()

    def waiting_for_sklearn(self, futures: dict[str, Any]) -> None:
        """Said once when jnn is done and scikit-learn is not."""
        if any(not f.done() for f in futures.values()):
            self.say(f"jnn done; waiting for scikit-learn (epochs: {self.sklearn_text()})")

    def close(self) -> None:
        self.done.set()
        if self.showwarning is not None:
            import warnings

            warnings.showwarning = self.showwarning
        if self.sk_thread is not None:
            self.sk_thread.join()
            self._refresh_sklearn()
        if self.sk_bar is not None:
            self.sk_bar.close()


# ------------------------------------------------------------------------------------ training


def model_keys(seed: int, seeds: int) -> Any:
    """(seeds, 2) keys: model i of every activation starts from the same key (fair comparison)."""
    import jax

    base = jax.random.PRNGKey(seed)
    return jax.numpy.stack([jax.random.fold_in(base, i) for i in range(seeds)])


@dataclass
class GroupResult:
    activation: str
    status: str  # "ok" | "diverged"
    diverged_at: int | None
    message: str | None
    history: dict[str, np.ndarray]  # (seeds, epochs)
    checkpoints: dict[str, dict[str, Any]]
    trained_epochs: int  # epochs run in this invocation (per model)
    resumed_from: int | None
    train_s: float
    eval_s: float
    device: str


class Group(NamedTuple):
    """One activation's training, set up (and resumed) on its device."""

    model: Any
    state: Any
    history: dict[str, np.ndarray]
    template: Any  # the host-side tree a checkpoint restores into
    store: Any
    resumed_from: int | None
    mesh: Any


def setup_group(cfg: Config, activation: str, device: Any, run_dir: Path, say: Any) -> Group:
    """Initial state of all seeds of ``activation`` on ``device``, or, with --resume, the newest
    checkpoint that verifies; a ``--save-at`` checkpoint gone from before it is refused here."""
    import jax
    import optax

    from jnn import train
    from jnn.checkpoints import CheckpointStore

    model = sweep_model(cfg, activation)
    mesh = getattr(device, "mesh", None)  # set with --data-parallel
    with jax.default_device(device if mesh is None else mesh.devices.flat[0]):
        state = train.init_train_states(
            model_keys(cfg.seed, cfg.seeds), model, optax.sgd(cfg.lr), cfg.sizes[:1]
        )
    history = train.empty_history(cfg.epochs, cfg.seeds)
    template = {"state": jax.device_get(state), "history": history}
    store = CheckpointStore(run_dir / activation)
    resumed_from = None
    if cfg.resume:
        found = resume_from_store(store, template, activation, say)
        if found is not None:
            resumed_from, tree = found
            state = tree["state"]
            history = {k: np.array(v) for k, v in tree["history"].items()}
            check_save_at(cfg, activation, store, resumed_from, run_dir)
    state = jax.device_put(state, device)
    return Group(model, state, history, template, store, resumed_from, mesh)


def check_save_at(cfg: Config, activation: str, store: Any, reached: int, run_dir: Path) -> None:
    """Every ``--save-at`` epoch up to ``reached`` must have its checkpoint: a number that
    cannot be recomputed from this run is refused, never reported."""
    saved = set(store.saved_epochs())
    gone = [e for e in cfg.save_at if e <= reached and e not in saved]
    if gone:
        raise InputError(
            f"{activation}: the --save-at checkpoint of epoch {gone[0]} "
            f"({run_dir / activation / str(gone[0])}) is missing, but this run is already past "
            f"it (epoch {reached}), so its accuracies cannot be reported; put the folder back, "
            "or train again from scratch with --overwrite or another --out"
        )


def epoch_hook(
    cfg: Config, activation: str, store: Any, bar: Any, progress: SweepProgress, stop: Any
) -> Any:
    """``on_epoch`` of ``train.fit``: progress, and the --save-at and rolling checkpoints."""
    import jax

    last = [time.perf_counter(), 0]  # when the previous epoch ended, epochs run so far

    def on_epoch(epoch: int, st: Any, hist: dict[str, np.ndarray]) -> None:
        if stop is not None and stop.is_set():
            raise KeyboardInterrupt  # another group failed or the user pressed Ctrl-C
        now = time.perf_counter()
        epoch_s, last[0], last[1] = now - last[0], now, last[1] + 1
        val_acc = float(np.nanmean(hist["val_accuracy"][:, epoch - 1]))
        progress.epoch(activation, bar, epoch, val_acc, epoch_s, last[1])
        chosen = epoch in cfg.save_at
        rolling = not chosen and (
            epoch == cfg.epochs or (cfg.checkpoint_every and epoch % cfg.checkpoint_every == 0)
        )
        if chosen or rolling:
            # Host copies: the device state is donated to the next epoch while orbax writes.
            tree = {"state": jax.device_get(st), "history": {k: v.copy() for k, v in hist.items()}}
            store.save(epoch, tree, rolling=bool(rolling))

    return on_epoch


def divergence_message(cfg: Config, activation: str, diverged_at: int, store: Any) -> str:
    good = [e for e in store.saved_epochs() + store.rolling_epochs() if e < diverged_at]
    return (
        f"{activation}: the loss became NaN/inf at epoch {diverged_at} "
        f"(lr {cfg.lr:g}, init {cfg.init}"
        + (f" {cfg.init_scale:g}" if cfg.init_scale else "")
        + "); stopped this model, last good checkpoint: "
        + (f"epoch {max(good)}" if good else "none")
        + "; try a lower --lr"
        + (" or --init he/glorot" if cfg.init not in ("he", "glorot") else "")
    )


def evaluate_checkpoints(
    cfg: Config, activation: str, g: Group, data: dict[str, Any], device: Any, run_dir: Path
) -> dict[str, dict[str, Any]]:
    """Every chosen checkpoint evaluated as restored from disk, not from memory."""
    import jax

    eval_fn = _eval_fn(g.model)
    x, y, xv, yv = data[device]
    checkpoints = {}
    for epoch in g.store.saved_epochs():
        if epoch not in cfg.save_at:
            continue
        restored = g.store.restore(epoch, g.template)["state"]
        params, model_state = jax.device_put((restored.params, restored.model_state), device)
        row: dict[str, Any] = {"path": str(run_dir / activation / str(epoch))}
        for name, (xs, ys) in (
            ("train", (x, y)),
            ("val", (xv, yv)),
            ("test", data[("test", device)]),
        ):
            loss, acc = jax.device_get(eval_fn(params, model_state, xs, ys))
            row[f"{name}_loss"], row[f"{name}_accuracy"] = loss, acc
        checkpoints[str(epoch)] = summarize(row)
    return checkpoints


def fit_group(
    cfg: Config, activation: str, g: Group, data: dict[str, Any], device: Any, hook: Any
) -> Any:
    """``train.fit`` from the group's state; on any failure, started saves finish first."""
    from jnn import train

    x, y, xv, yv = data[device]
    epoch_fn = _epoch_fn(g.model, cfg.lr, cfg.batch_size, cfg.gradients, g.mesh)
    try:
        result = train.fit(
            g.state,
            epoch_fn,
            (x, y),
            (xv, yv),
            eval_fn=_eval_fn(g.model),
            epochs=cfg.epochs,
            history=g.history,
            on_epoch=hook,
        )
    except BaseException:
        g.store.close()  # let started saves finish: they are the ones to resume from
        raise
    g.store.wait()
    return result


def train_group(
    cfg: Config,
    activation: str,
    data: dict[str, Any],
    run_dir: Path,
    devices: queue.Queue,
    position: int,
    progress: SweepProgress,
    stop: threading.Event | None = None,
) -> GroupResult:
    """Train (or resume) all seeds of one activation on a free device, then evaluate from disk."""
    device = devices.get()
    try:
        if stop is not None and stop.is_set():
            raise KeyboardInterrupt  # another group failed while this one waited for a device
        t0 = time.perf_counter()
        g = setup_group(cfg, activation, device, run_dir, progress.say)
        start = int(np.max(np.asarray(g.state.epoch)))
        bar = progress.bar(activation, position, start)
        try:
            hook = epoch_hook(cfg, activation, g.store, bar, progress, stop)
            result = fit_group(cfg, activation, g, data, device, hook)
        finally:
            bar.close()
        train_s = time.perf_counter() - t0
        status, message, reached = "ok", None, cfg.epochs
        if result.diverged_at is not None:
            status, reached = "diverged", result.diverged_at - 1
            message = divergence_message(cfg, activation, result.diverged_at, g.store)
            progress.say(f"warning: {message}", err=True)
        check_save_at(cfg, activation, g.store, reached, run_dir)
        t1 = time.perf_counter()
        checkpoints = evaluate_checkpoints(cfg, activation, g, data, device, run_dir)
        g.store.close()
        return GroupResult(
            activation,
            status,
            result.diverged_at,
            message,
            g.history,
            checkpoints,
            (result.diverged_at or cfg.epochs) - start,
            g.resumed_from,
            train_s,
            time.perf_counter() - t1,
            str(device),
        )
    finally:
        devices.put(device)


def resume_from_store(
    store: Any, template: Any, activation: str, say: Any = None
) -> tuple[int, Any] | None:
    """The newest checkpoint of ``activation`` that verifies; every step skipped on the way
    (corrupt, partial, empty) is said in one line on stderr, with what it was and what we did."""
    return harness.restore_latest(store, template, activation, say)


def sweep_model(cfg: Config, activation: str) -> Any:
    """The study's network for ``activation``: ``mlp.mlp(cfg.sizes, activation, cfg.init, ...)``
    (the same Layer value for the same settings, so the compiled functions below are reused)."""
    scale = ((INIT_SCALE_NAME[cfg.init], cfg.init_scale),) if cfg.init_scale else ()
    return _mlp(tuple(cfg.sizes), activation, cfg.init, scale)


@functools.lru_cache(maxsize=32)
def _mlp(sizes: tuple[int, ...], activation: str, init: str, scale: tuple) -> Any:
    from jnn import mlp

    return mlp.mlp(sizes, activation, init, **dict(scale))


@functools.lru_cache(maxsize=32)
def _eval_fn(model: Any) -> Any:
    """The jitted, seed-vmapped evaluation of ``model`` (``train.make_eval_fn``), built once."""
    from jnn import train

    return train.make_eval_fn(model, stacked=True)


@functools.lru_cache(maxsize=32)
def _epoch_fn(model: Any, lr: float, batch_size: int, gradients: str, mesh: Any = None) -> Any:
    """The jitted, seed-vmapped epoch, built once per process and setting (reused on resume).

    With a data ``mesh`` every model's batches are split along its ``data`` axis; the state and
    data stay replicated (``jnn.parallel.make_sharded_epoch_fn``).
    """
    import optax

    from jnn import parallel, train

    if mesh is None:
        return train.make_epoch_fn(model, optax.sgd(lr), batch_size, gradients, stacked=True)
    return parallel.make_sharded_epoch_fn(
        model, optax.sgd(lr), batch_size, mesh, gradients, stacked=True
    )


def summarize(row: dict[str, Any]) -> dict[str, Any]:
    """Per-seed metric arrays -> mean, std and the per-seed lists."""
    out: dict[str, Any] = {"path": row.pop("path")}
    per_seed = {k: np.asarray(v, np.float64).ravel() for k, v in row.items()}
    out.update({k: float(v.mean()) for k, v in per_seed.items()})
    out["std"] = {k: float(v.std()) for k, v in per_seed.items()}
    out["per_seed"] = {k: v.tolist() for k, v in per_seed.items()}
    return out


def place_data(data: tuple[np.ndarray, ...], devices: list[Any]) -> dict[Any, Any]:
    """Device copies of the data on every device: {device: (x, y, xv, yv), ("test", d): ...}."""
    import jax

    placed: dict[Any, Any] = {}
    for d in devices:
        x, y, xv, yv, xt, yt = (jax.device_put(a, d) for a in data)
        placed[d] = (x, y, xv, yv)
        placed[("test", d)] = (xt, yt)
    return placed


# ------------------------------------------------------------------------------------ outputs


def sklearn_specs(cfg: Config, data: tuple[np.ndarray, ...]) -> list[dict[str, Any]]:
    return [
        {
            "activation": act,
            "hidden": list(cfg.sizes[1:-1]),
            "epochs": cfg.epochs,
            "save_at": list(cfg.save_at),
            "lr": cfg.lr,
            "batch_size": cfg.batch_size,
            "seed": cfg.seed,
            "data": data,
        }
        for act in cfg.activations
    ]


def _fmt(mean: float | None, std: float | None, seeds: int) -> str:
    if mean is None or not math.isfinite(mean):
        return "n/a"
    return f"{mean:.4f}" + (f" ± {std:.4f}" if seeds > 1 and std is not None else "")


TABLE_HEADERS = (
    "activation",
    "epoch",
    "jnn train acc",
    "jnn val acc",
    "jnn test acc",
    "jnn test loss",
    "sklearn train acc",
    "sklearn test acc",
    "original test acc",
)


def table_row(cfg: Config, results: dict[str, Any], act: str, epoch: int) -> list[Any]:
    """One row of the results table: jnn (from the restored checkpoint), sklearn, the original."""
    m = results["models"][act]
    sk = results.get("sklearn") or {}
    c = m["checkpoints"].get(str(epoch))
    s = (sk.get(act) or {}).get("checkpoints", {}).get(str(epoch))
    if c is None:  # only past a divergence: a missing --save-at checkpoint is refused in run()
        what = f"diverged at epoch {m['diverged_at']}" if m["status"] == "diverged" else "missing"
        cells = [what] + ["n/a"] * 3
    else:
        std = c["std"]
        splits = ("train", "val", "test")
        cells = [_fmt(c[f"{k}_accuracy"], std[f"{k}_accuracy"], cfg.seeds) for k in splits]
        cells.append(_fmt(c["test_loss"], std["test_loss"], cfg.seeds))
    if s is not None:
        cells += [_fmt(s["train_accuracy"], None, 1), _fmt(s["test_accuracy"], None, 1)]
    elif act in sk:
        cells += [str(sk[act].get("status", "n/a"))] * 2
    else:
        cells += ["-", "-"]
    orig = ORIGINAL_TEST_ACCURACY.get((act, epoch)) if not cfg.quick else None
    cells.append(f"{orig:.4f}" if orig is not None else "-")
    return [act, epoch, *cells]


def results_markdown(cfg: Config, results: dict[str, Any]) -> str:
    """The table a person reads: jnn and MLPClassifier side by side, per activation and epoch."""
    init = cfg.init + (
        f" ({INIT_SCALE_NAME[cfg.init]} {cfg.init_scale:g})" if cfg.init_scale else ""
    )
    lines = [
        "# MLP study: 784-256-128-64-10, plain SGD\n",
        f"Split `{cfg.split}` (seed {cfg.seed})"
        f"{' QUICK subset ' + str(cfg.subset) if cfg.quick else ''}; "
        f"init {init}; lr {cfg.lr:g}; batch {cfg.batch_size}; {cfg.epochs} epochs; "
        f"{cfg.seeds} seed(s){' (mean ± std)' if cfg.seeds > 1 else ''}. "
        "jnn accuracies come from the restored checkpoints.\n",
    ]
    rows = [table_row(cfg, results, a, e) for a in results["models"] for e in cfg.save_at]
    lines.append(report.markdown_table(TABLE_HEADERS, rows))
    notes = [m["message"] for m in results["models"].values() if m.get("message")]
    if notes:
        lines.append("\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    t = results["timing"]
    lines.append(
        f"\nWall time {t['wall_s']:.1f} s ({t['wall_s_excluding_sklearn']:.1f} s without waiting "
        f"for sklearn); {t['model_epochs']} model-epochs at {t['model_epochs_per_s']:.2f} "
        f"model-epochs/s on {len(results['devices_used'])} device(s).\n"
    )
    if results.get("sklearn"):
        lines.append(
            "\nOriginal study's MLPClassifier test accuracies: "
            + ", ".join(f"{k} {v}" for k, v in ORIGINAL_SKLEARN_TEST_ACCURACY.items())
            + " (0.0 is impossible on 10 balanced classes: a bug in that study).\n"
        )
    return "".join(lines)


def plateaued(history: dict[str, np.ndarray]) -> bool:
    """The last validation accuracy is within a few points of chance (10 classes)."""
    last = np.asarray(history["val_accuracy"], np.float64)[..., -1]
    return bool(np.all(np.isfinite(last)) and np.nanmean(last) < 0.2)


def start_line(cfg: Config, data: tuple[np.ndarray, ...], devices: list[Any], out: Path) -> str:
    """What is about to run, said before the first second of training."""
    init = cfg.init + (f" {cfg.init_scale:g}" if cfg.init_scale else "")
    what = (
        f"{len(cfg.activations)} activation(s) ({', '.join(cfg.activations)}) x {cfg.seeds} "
        f"seed(s) x {cfg.epochs} epochs; split {cfg.split}: {len(data[1]):,} train / "
        f"{len(data[3]):,} validation / {len(data[5]):,} test; init {init}, lr {cfg.lr:g}, "
        f"batch {cfg.batch_size}; {len(devices)} device(s)"
        + ("; scikit-learn alongside" if cfg.sklearn else "")
        + f"; outputs in {out}"
    )
    if cfg.quick:
        return f"SMOKE RUN (--quick: checks that everything runs, not the study's numbers): {what}"
    return f"mlp_sweep: {what}"


def panel_notes(results: dict[str, Any]) -> dict[str, str]:
    """What failed, per activation, to write on its panels: jnn's divergence, sklearn's failure."""
    notes: dict[str, str] = {}
    sk = results.get("sklearn") or {}
    for act, m in results["models"].items():
        lines = [f"jnn diverged at epoch {m['diverged_at']}"] if m["status"] == "diverged" else []
        s = sk.get(act) or {}
        if s.get("status") == "diverged":
            lines.append(f"sklearn diverged at epoch {s.get('diverged_at')}")
        elif s.get("status") == "failed":
            reason = str(s.get("error", "")).split(":", 1)[-1].strip().split(". ")[0]
            lines.append(f"sklearn failed: {reason[:70]}")
        if lines:
            notes[act] = "\n".join(lines)
    return notes


def write_outputs(cfg: Config, run_dir: Path, results: dict[str, Any]) -> list[Path]:
    """The loss/accuracy curves: one PNG per activation and the overview."""
    from experiments import plots

    sk = results.get("sklearn") or {}
    histories = {a: m["history"] for a, m in results["models"].items()}
    sk_hist = {a: r["history"] for a, r in sk.items() if isinstance(r, dict) and "history" in r}
    notes = panel_notes(results)
    init = cfg.init + (f" {cfg.init_scale:g}" if cfg.init_scale else "")
    settings = (
        f"init {init}, lr {cfg.lr:g}, batch {cfg.batch_size}, split {cfg.split}"
        + (f", {cfg.seeds} seeds" if cfg.seeds > 1 else "")
        + (" (quick smoke run)" if cfg.quick else "")
    )
    paths = []
    for act, hist in histories.items():
        paths.append(
            plots.plot_activation(
                run_dir / f"loss_{act}.png",
                act,
                hist,
                cfg.save_at,
                sklearn_history=sk_hist.get(act),
                note=notes.get(act, ""),
                settings=settings,
            )
        )
    paths.append(
        plots.plot_overview(
            run_dir / "loss_overview.png",
            histories,
            cfg.save_at,
            sklearn_histories=sk_hist,
            title=f"MLP study, loss and accuracy per epoch: {settings}",
            notes=notes,
        )
    )
    return paths


# ------------------------------------------------------------------------------------ main


def train_all(
    cfg: Config, data: tuple[np.ndarray, ...], devices: list[Any], run_dir: Path, progress: Any
) -> list[GroupResult]:
    """Every activation's group, one thread each, on the first free device."""
    placed = place_data(data, devices)
    free: queue.Queue = queue.Queue()
    for d in devices:
        free.put(d)
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=len(devices)) as ex:
        jobs = [
            ex.submit(train_group, cfg, act, placed, run_dir, free, i, progress, stop)
            for i, act in enumerate(cfg.activations)
        ]
        try:
            return [j.result() for j in jobs]
        except BaseException:  # Ctrl-C or a failed group: stop the others at their next epoch
            stop.set()
            raise


def collect_sklearn(futures: dict[str, Any] | None) -> dict[str, Any] | None:
    """The sklearn results; a failed one is recorded, it must not lose the JAX results."""
    if futures is None:
        return None
    results = {}
    for act, fut in futures.items():
        try:
            results[act] = fut.result()
        except Exception as err:
            results[act] = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
    return results


def result_of(
    cfg: Config, groups: list[GroupResult], sk: dict | None, devices: list[Any]
) -> dict[str, Any]:
    fields = ("status", "diverged_at", "message", "resumed_from", "device", "checkpoints")
    models = {
        g.activation: {k: getattr(g, k) for k in fields}
        | {"history": {k: v.tolist() for k, v in g.history.items()}}
        | {"train_s": g.train_s, "eval_s": g.eval_s}
        for g in groups
    }
    return {
        "study": "mlp_sweep",
        "status": "diverged" if any(g.status == "diverged" for g in groups) else "ok",
        "config": asdict(cfg),
        "models": models,
        "sklearn": sk,
        "devices_used": [str(d) for d in devices],
    }


def run(cfg: Config, run_dir: Path) -> dict[str, Any]:
    """Train, checkpoint and evaluate every activation (sklearn alongside); the result dict."""
    from experiments import sklearn_mlp

    t_start = time.perf_counter()
    check_resume(cfg)  # again, now that the folder is locked
    devices = choose_devices(cfg)  # bad --devices / --data-parallel must not leave a stub run
    data = load_data(cfg)  # bad data must not leave a stub run: run.json comes after
    if not (run_dir / "run.json").is_file():
        report.write_json(run_dir / "run.json", {"identity": cfg.identity(), "config": asdict(cfg)})
    print(start_line(cfg, data, devices, run_dir), flush=True)
    pool = futures = counter = None
    if cfg.sklearn:
        counter = sklearn_mlp.epoch_counter(len(cfg.activations))
        pool, futures = sklearn_mlp.start_pool(
            sklearn_specs(cfg, data), cfg.sklearn_workers, counter=counter
        )
    progress = SweepProgress(cfg, min(len(devices), len(cfg.activations)), counter)
    try:
        t_train = time.perf_counter()
        groups = train_all(cfg, data, devices, run_dir, progress)
        jax_s = time.perf_counter() - t_train
        if futures:
            progress.waiting_for_sklearn(futures)
        sk = collect_sklearn(futures)
        sklearn_wait = time.perf_counter() - t_train - jax_s
    finally:
        progress.close()
        if pool is not None:
            sklearn_mlp.stop_pool(pool)
    result = result_of(cfg, groups, sk, devices)
    model_epochs = sum(g.trained_epochs for g in groups) * cfg.seeds
    wall = time.perf_counter() - t_start
    result["timing"] = {
        "model_epochs": model_epochs,
        "train_and_eval_s": jax_s,
        "model_epochs_per_s": model_epochs / jax_s if jax_s > 0 else None,
        "sklearn_wait_s": sklearn_wait,
        "sklearn_model_s": {a: r.get("wall_s") for a, r in (sk or {}).items()},
        "wall_s": wall,
        "wall_s_excluding_sklearn": wall - sklearn_wait,
    }
    return result


def render(result: dict[str, Any], run_dir: Path) -> list[Path]:
    """results.json, results.md and the loss curves, from ``result`` alone."""
    cfg = config_of(result)
    t0 = time.perf_counter()
    paths = write_outputs(cfg, Path(run_dir), result)
    result["timing"]["outputs_s"] = time.perf_counter() - t0
    paths.append(report.write_json(Path(run_dir) / "results.json", result))
    md = results_markdown(cfg, result)
    paths.append(report.write_text_atomic(Path(run_dir) / "results.md", md))
    return paths


def console(result: dict[str, Any]) -> str:
    """The table, and a note when a model ended on the small init's plateau."""
    text = results_markdown(config_of(result), result)
    on_plateau = [
        a for a, m in result["models"].items() if m["status"] == "ok" and plateaued(m["history"])
    ]
    if on_plateau:
        text += f"\nnote: {', '.join(on_plateau)} ended near 10%: {PLATEAU_NOTE}\n"
    return text


EXPERIMENT = harness.Experiment("mlp_sweep", parse_config, run, render, console)
main = harness.cli(EXPERIMENT)

if __name__ == "__main__":
    report.allow_device_requests()
    sys.exit(main())
