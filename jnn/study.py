"""The study engine: M models (activation x init x optimizer x lr x seed) of one MLP, one program.

    cfg = StudyConfig(activations=("relu", "tanh"), lrs=(0.01, 0.1), seeds=5, epochs=100)
    result = study.run(cfg, "runs/my_study")            # the config enters the library once
    result.history["val_accuracy"]     # (M, epochs), NaN from a model's divergence on
    result.evals[100]["test_accuracy"] # (M,) from the *restored* epoch-100 checkpoint
    result.models[m].name              # "relu/normal/lr0.1/s3"

What it trains: every cell (activation-major, then init, then optimizer, then lr) times
``seeds`` seeds, model ``m = cell * seeds + s``. Every model is the same network
(:func:`network`): the MLP ``(features, *hidden, classes)`` of the dataset entry with
``SelectActivation`` in place of each hidden activation, so the activation is layer *state*; the
learning rate is optimizer state (``jnn.optim``), and so is the optimizer when the study lists
several (``optimizer="sgd,adam"``: ``jnn.optim.union``, each model's state selects its member);
the init is the initial params, drawn by ``jnn.mlp.mlp(sizes, activation, init)`` exactly as a
model trained alone. Seed ``s`` of every cell starts from
``fold_in(PRNGKey(seed), s)`` (its init key and shuffle order), so cells differ only by what
the cell names (common random numbers).

Layout (``config.layout``): the model axis is split over the devices of a 1-D mesh (each
device trains its share, no communication); inside a device the models run either vectorised
(``"vmap"``: every dot becomes a batched dot) or one after another (``"map"``: ``lax.map``, each
model's program is the one it would run alone). ``"auto"`` picks ``"vmap"`` on GPU/TPU and, on
CPU, times both on a short probe epoch and keeps the faster (the winner differs by CPU: on one
AMD EPYC vmap ran 0.60x one model alone and map 0.85x; on an Intel Xeon vmap 1.02x, map 0.82x).
The choice is recorded in ``run.json`` and kept on resume. Both layouts compute each model's
arithmetic independently of the others; whether their float bits agree is tested, not assumed.

Divergence stops only that model: inside the program a model whose training loss, params or
validation loss became non-finite keeps its incoming (last good) state and its epoch goes into
``diverged_at``; the others are untouched.

The run folder (written and read here, nowhere else): ``run.json`` (format, config, identity,
model names, layout, stamps), ``metrics.jsonl`` (one JSON line per model per epoch, appended as
the run goes), ``checkpoints/`` (:class:`jnn.checkpoints.CheckpointStore`: every ``save_at``
epoch kept, a rolling one every ``checkpoint_every`` epochs; each holds every model's state and
the history so far). ``run(..., resume=True)`` continues from the newest checkpoint that
verifies, bit-identical to an uninterrupted run (the keys live in the state), and may train to
more epochs than first planned. Evaluations at the save epochs come from the restored
checkpoints, never from memory.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.sharding import Mesh

from jnn import checkpoints, core, optim, parallel, stacked, train
from jnn.config import (
    MAX_SEED,
    ConfigError,
    check_float32,
    check_subset,
    distinct,
    folder,
    integer,
    option,
    positive,
)
from jnn.errors import InputError
from jnn.layers.dense import Dense
from jnn.layers.select import SelectActivation
from jnn.mlp import mlp
from jnn.workdir import StorageError, empty_or_missing, stamps, write_json

FORMAT = "jnn.study/1"
HISTORY_KEYS = train.HISTORY_KEYS  # train_loss, train_accuracy, val_loss, val_accuracy
LAYOUTS = ("auto", "vmap", "map")
MAX_EPOCHS, MAX_SEEDS = 100_000, 1_024  # refused before anything is allocated
SCALED_INITS = {"normal": "stddev", "random": "limit"}  # inits whose scale init_scale sets


@dataclass(frozen=True)
class StudyConfig:
    """What a study trains and how. Identity fields (all but ``RUN_FIELDS``) define the numbers:
    a resumed run must have the same ones."""

    dataset: str = option("fashion_mnist", "dataset, by name (jnn.data registry)")
    split: str = option(
        "original",
        "split of the dataset: original = the study's 48,600/5,400/6,000 of the 60k "
        "training images; pooled70k = 56k/7k/7k of all 70k; official = 54k/6k + the "
        "official 10k test set",
    )
    subset: tuple[int, ...] | None = option(
        None, "use the first N train,val,test examples of the split (three numbers)"
    )
    hidden: tuple[int, ...] = option((256, 128, 64), "hidden layer widths")
    activations: tuple[str, ...] = option(
        ("relu", "sigmoid", "linear", "tanh"), "hidden activations (one model family each)"
    )
    inits: tuple[str, ...] = option(("normal",), "weight inits: zero, random, normal, he, glorot")
    init_scale: float | None = option(
        None, "normal's stddev [0.01] or random's uniform limit [0.05]"
    )
    # A string, not a tuple: one name is every run.json's form since jnn.study/1 (identity and
    # checkpoints keep it); several, comma-separated, add a cell field (see `optimizers`).
    optimizer: str = option(
        "sgd",
        "optimizer(s), by name, comma-separated for several (one model family each): "
        + ", ".join(optim.OPTIMIZERS),
    )
    lrs: tuple[float, ...] = option((0.1,), "learning rates")
    seeds: int = option(
        1, "seeds per (activation, init, optimizer, lr) cell; mean +- std over them"
    )
    seed: int = option(0, "base seed of the split and of the model keys")
    epochs: int = option(100, "epochs per model")
    save_at: tuple[int, ...] = option(
        (), "epochs to checkpoint and evaluate from the restored checkpoint [half and end]"
    )
    batch_size: int = option(32, "minibatch size")
    checkpoint_every: int = option(
        10, "also keep a rolling checkpoint every K epochs (crash safety; 0: only the last)"
    )
    layout: str = option("auto", "how models share a device: auto, vmap or map")
    devices: int | None = option(
        None, "devices to spread the models over [all, up to one per model]"
    )
    data_dir: str | None = option(
        None, "folder with the dataset's files [$JNN_DATA_DIR, else download once]"
    )

    def __post_init__(self) -> None:
        check_config(self)

    @property
    def sizes(self) -> tuple[int, ...]:
        """Layer widths (features, *hidden, classes): the ends come from the dataset entry."""
        entry = _dataset(self.dataset)
        return (entry.features, *self.hidden, entry.num_classes)

    @property
    def optimizers(self) -> tuple[str, ...]:
        """The optimizers' names, in the order of ``optimizer`` (``"sgd,adam"``)."""
        return tuple(self.optimizer.split(","))

    @property
    def save_epochs(self) -> tuple[int, ...]:
        """``save_at``, or half and end when empty."""
        return tuple(sorted(set(self.save_at or (self.epochs // 2, self.epochs)) - {0}))

    def study(self) -> StudyConfig:
        """The study's own fields as a plain StudyConfig: what an experiment's config (a
        subclass adding its own fields) hands to :func:`run`."""
        return StudyConfig(
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(StudyConfig)}
        )

    def identity(self) -> dict[str, Any]:
        """The fields that define the numbers, as run.json stores them."""
        return _plain({k: v for k, v in dataclasses.asdict(self).items() if k not in RUN_FIELDS})


RUN_FIELDS = ("epochs", "save_at", "checkpoint_every", "layout", "devices", "data_dir")


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _dataset(name: str) -> Any:
    from jnn import data

    return data.get_dataset(name)


# ------------------------------------------------------------------------------ checks


def _check_names(names: Any, name: str, lookup: Callable[[str], Any]) -> None:
    if not isinstance(names, tuple) or not names:
        raise ConfigError(f"`{name}` needs at least one name, got {names!r}")
    distinct(names, name)
    for n in names:
        try:
            lookup(n)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"`{name}`: {err}") from None


def _check_numbers(c: StudyConfig) -> None:
    integer(c.epochs, "epochs", 1, MAX_EPOCHS)
    integer(c.seeds, "seeds", 1, MAX_SEEDS)
    integer(c.seed, "seed", 0, MAX_SEED)
    integer(c.batch_size, "batch_size", 1)
    integer(c.checkpoint_every, "checkpoint_every", 0)
    if c.devices is not None:
        integer(c.devices, "devices", 1)
    if not isinstance(c.lrs, tuple) or not c.lrs or len(set(c.lrs)) != len(c.lrs):
        raise ConfigError(f"`lrs` must list each learning rate once, got {c.lrs!r}")
    for lr in c.lrs:
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
            raise ConfigError(f"`lrs` must be positive finite numbers, got {lr!r}")
        check_float32(lr, "lrs")
    for e in c.save_at:
        integer(e, "save_at", 1, c.epochs)
    for w in c.hidden:
        integer(w, "hidden", 1, 1 << 20)
    if c.subset is not None:
        if len(c.subset) != 3:
            raise ConfigError(f"`subset` takes three numbers (train, val, test), got {c.subset}")
        for n in c.subset:
            integer(n, "subset", 1)


def _check_names_and_choices(c: StudyConfig) -> None:
    from jnn import data
    from jnn.activations import get_activation
    from jnn.initializers import get_initializer

    _dataset_checked(c.dataset)
    try:
        data.canonical_protocol(c.split)
    except InputError as err:
        raise ConfigError(f"`split`: {err}") from None
    folder(c.data_dir, "data_dir")
    _check_names(c.activations, "activations", _hidden_activation(get_activation))
    _check_names(c.inits, "inits", get_initializer)
    if not isinstance(c.optimizer, str) or not all(c.optimizers):
        raise ConfigError(f"`optimizer` takes names separated by commas, got {c.optimizer!r}")
    _check_names(c.optimizers, "optimizer", optim.get_optimizer)
    if c.layout not in LAYOUTS:
        raise ConfigError(f"`layout` must be one of {', '.join(LAYOUTS)}, got {c.layout!r}")
    if c.init_scale is not None:
        positive(c.init_scale, "init_scale")  # also as float32
        other = [i for i in c.inits if i not in SCALED_INITS]
        if other:
            raise ConfigError(f"`init_scale` applies to normal and random, not to {other}")


def _hidden_activation(lookup: Callable[[str], Any]) -> Callable[[str], Any]:
    def check(name: str) -> Any:
        if name == "softmax":
            raise InputError("softmax is the output's, not a hidden activation")
        return lookup(name)

    return check


def _dataset_checked(name: str) -> None:
    try:
        _dataset(name)
    except InputError as err:
        raise ConfigError(f"`dataset`: {err}") from None


def check_config(c: StudyConfig) -> None:
    """Every field checked; a one-line :class:`ConfigError` naming the field otherwise."""
    _check_numbers(c)
    _check_names_and_choices(c)
    history = num_models(c) * c.epochs * 16
    if history > _memory_limit():
        raise ConfigError(
            f"the history of {num_models(c)} models x {c.epochs:,} `epochs` needs "
            f"{history / 2**30:.1f} GiB, over half this machine's memory; train fewer"
        )


def _memory_limit() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


# ------------------------------------------------------------------------------ models


class ModelSpec(NamedTuple):
    """One model of a study: its cell and its seed index ``s`` (0-based). ``optimizer`` is the
    model's optimizer in a study of several, None in a study of one (whose names stay as
    they were before studies could mix optimizers: ``relu/normal/lr0.1/s0``)."""

    activation: str
    init: str
    lr: float
    seed: int
    optimizer: str | None = None

    @property
    def name(self) -> str:
        """``relu/normal/lr0.1/s0``, or ``relu/normal/adam/lr0.001/s0`` in a mixed study."""
        opt = f"{self.optimizer}/" if self.optimizer is not None else ""
        return f"{self.activation}/{self.init}/{opt}lr{self.lr:g}/s{self.seed}"


def models(c: StudyConfig) -> list[ModelSpec]:
    """Every model, in order: activation-major, then init, optimizer, lr, seed."""
    mixed = len(c.optimizers) > 1
    return [
        ModelSpec(a, i, float(lr), s, o if mixed else None)
        for a in c.activations
        for i in c.inits
        for o in c.optimizers
        for lr in c.lrs
        for s in range(c.seeds)
    ]


def num_models(c: StudyConfig) -> int:
    return len(c.activations) * len(c.inits) * len(c.optimizers) * len(c.lrs) * c.seeds


def make_optimizer(c: StudyConfig) -> Any:
    """The one optax transform every model of ``c`` trains with: ``jnn.optim.make`` of the
    study's optimizer, or ``jnn.optim.union`` of its optimizers (each model's state selects)."""
    names = c.optimizers
    return optim.make(names[0]) if len(names) == 1 else optim.union(names)


def network(c: StudyConfig) -> core.Layer:
    """The one network of every model: ``Dense``, ``SelectActivation(activations)``, ...,
    ``Dense(classes)``; params have ``jnn.mlp.mlp(sizes, ...)``'s structure."""
    layers: list[core.Layer] = []
    for i, width in enumerate(c.sizes[1:]):
        if i:
            layers.append(SelectActivation(c.activations, 0))
        layers.append(Dense(int(width)))
    return core.serial(*layers, name=f"study mlp{c.sizes}")


def model_key(seed: int, s: int) -> Array:
    """Seed ``s``'s key in every cell: ``fold_in(PRNGKey(seed), s)``."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), s)


def init_model(c: StudyConfig, spec: ModelSpec) -> train.TrainState:
    """One model, unstacked: params as ``train.init_train_state(model_key(seed, s),
    mlp(sizes, activation, init), optimizer, (features,))`` gives them, the network's state
    with this model's activation index, and its lr (and, of several, its optimizer) in the
    optimizer state."""
    scale = {SCALED_INITS[spec.init]: c.init_scale} if c.init_scale is not None else {}
    alone = mlp(c.sizes, spec.activation, spec.init, **scale)
    opt = make_optimizer(c)
    state = train.init_train_state(model_key(c.seed, spec.seed), alone, opt, c.sizes[:1])
    index = jnp.asarray(c.activations.index(spec.activation), jnp.int32)
    _, _, template = network(c).init(jax.random.PRNGKey(0), c.sizes[:1])
    model_state = tuple({"index": index} if isinstance(t, dict) else t for t in template)
    opt_state = optim.with_learning_rate(state.opt_state, spec.lr)
    if spec.optimizer is not None:
        opt_state = optim.with_member(opt_state, spec.optimizer, c.optimizers)
    return state._replace(model_state=model_state, opt_state=opt_state)


def init_state(c: StudyConfig) -> stacked.Stacked:
    """Every model's initial state, stacked (leaves (M, ...)), none diverged."""
    states = [init_model(c, spec) for spec in models(c)]
    return stacked.Stacked(parallel.stack_trees(states), jnp.zeros((len(states),), jnp.int32))


# ------------------------------------------------------------------------------ data


class Data(NamedTuple):
    """The study's three sets as float32 (N, features) images and int32 (N,) labels."""

    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]


def load_data(c: StudyConfig) -> Data:
    """The config's dataset, split and subset, checked (:func:`check_data`)."""
    from jnn import data

    try:
        s = data.load_splits(c.split, dataset=c.dataset, seed=c.seed, data_dir=c.data_dir)
    except data.DataError as err:
        raise ConfigError(f"{err}; or give `data_dir` (a folder with the files)") from None
    have = (len(s.y_train), len(s.y_val), len(s.y_test))
    n = c.subset or have
    check_subset(n, have, c.split)
    sets = Data(
        (s.x_train[: n[0]], s.y_train[: n[0]]),
        (s.x_val[: n[1]], s.y_val[: n[1]]),
        (s.x_test[: n[2]], s.y_test[: n[2]]),
    )
    return check_data(c, sets)


def check_data(c: StudyConfig, sets: Data) -> Data:
    """``sets`` if every set has one label per row, labels in range, finite x of the dataset's
    width, and at least ``batch_size`` training rows; a one-line InputError otherwise."""
    sets = Data(*((x, y) for x, y in sets))
    for what, (x, y) in zip(("training", "validation", "test"), sets):
        if np.ndim(x) != 2 or np.shape(x)[1] != c.sizes[0]:
            raise InputError(f"{what} x must be (N, {c.sizes[0]}), got {np.shape(x)}")
        if not np.issubdtype(np.asarray(x).dtype, np.floating):
            raise InputError(
                f"{what} x must be float32 images in [0, 1], got {np.asarray(x).dtype}"
            )
        train.check_data(x, y, c.sizes[-1], what)
        if len(y) == 0:
            raise ConfigError(f"the {what} set of `split` {c.split} is empty")
    if c.batch_size > len(sets.train[1]):
        raise ConfigError(
            f"`batch_size` {c.batch_size} exceeds the {len(sets.train[1]):,} training examples"
        )
    return sets


# ------------------------------------------------------------------------------ the run folder

RUN_JSON, METRICS, CHECKPOINTS = "run.json", "metrics.jsonl", "checkpoints"


class RunError(InputError):
    """A run folder that cannot be used as asked (foreign, edited, another config, gaps)."""


def read_run(workdir: str | os.PathLike) -> dict[str, Any]:
    """``run.json`` of a study run folder; one-line :class:`RunError` when it is not one."""
    path = Path(workdir).expanduser() / RUN_JSON
    if not path.is_file():
        raise RunError(f"{path.parent} holds no {RUN_JSON}: it is not a jnn study run folder")
    try:
        run = json.loads(path.read_text())
        ok = run.get("format") == FORMAT and isinstance(run.get("config"), dict)
    except (OSError, ValueError, AttributeError) as err:
        raise RunError(f"{path} is unreadable ({err}); restore it or start a new run") from None
    if not ok:
        raise RunError(f"{path} is not a {FORMAT} run description (another tool's, or edited)")
    return run


def config_of(run: dict[str, Any], **overrides: Any) -> StudyConfig:
    """The :class:`StudyConfig` stored in a run.json (lists back to tuples), with overrides."""
    if not isinstance(run, dict) or not isinstance(run.get("config"), dict):
        raise RunError(
            f"config_of takes a run.json as read_run(folder) returns it, got {type(run).__name__}"
        )
    names = {f.name for f in dataclasses.fields(StudyConfig)}
    stored = {k: tuple(v) if isinstance(v, list) else v for k, v in run["config"].items()}
    unknown = set(stored) - names
    if unknown:
        raise RunError(f"run.json has config fields this jnn does not know: {sorted(unknown)}")
    try:
        return StudyConfig(**{**stored, **overrides})
    except (TypeError, InputError) as err:
        raise RunError(f"run.json holds a config that does not check ({err})") from None


def _holds_no_work(folder: Path) -> bool:
    """``folder`` holds nothing but hidden bookkeeping and a checkpoint store with no file in
    it: what a run interrupted before it wrote run.json leaves (the store opens first)."""
    for entry in folder.iterdir():
        if entry.name.startswith("."):
            continue
        if entry.name != CHECKPOINTS or not entry.is_dir() or entry.is_symlink():
            return False
        if any(f.is_file() and not f.name.startswith(".") for f in entry.rglob("*")):
            return False
    return True


def check_resume(c: StudyConfig, workdir: str | os.PathLike) -> dict[str, Any] | None:
    """The stored run.json when ``workdir`` holds a run with ``c``'s identity, None when it
    holds none; :class:`RunError` (naming the fields that differ) for another study."""
    folder = Path(workdir).expanduser()
    if not (folder / RUN_JSON).exists():
        if folder.is_dir() and not _holds_no_work(folder):
            raise RunError(
                f"{folder} holds no {RUN_JSON}: it is not a study run to resume; give the "
                "folder of the run to continue, or a new folder for a new run"
            )
        return None
    run = read_run(workdir)
    have, want = run.get("identity", {}), c.identity()
    differ = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
    if differ:
        what = "; ".join(f"`{k}`: run has {have.get(k)!r}, now {want.get(k)!r}" for k in differ)
        can = ", ".join(f"`{k}`" for k in RUN_FIELDS)
        raise ConfigError(
            f"resume with another config than the run in {workdir} ({what}); a resume may "
            f"change only {can}: for other models start a new run in another folder"
        )
    recorded = run.get("layout")
    if c.layout != "auto" and recorded not in (None, c.layout):
        raise ConfigError(f"the run in {workdir} trains with `layout` {recorded}, not {c.layout}")
    return run


class MetricsLog:
    """``metrics.jsonl``: one JSON line per model per epoch, appended as the run goes (a run
    still training can be plotted); NaN (a diverged model) is written as null."""

    def __init__(self, path: Path, names: Sequence[str]) -> None:
        self.path, self.names = path, list(names)

    def _lines(self, epoch: int, history: dict[str, np.ndarray], diverged: np.ndarray) -> str:
        out = []
        for m, name in enumerate(self.names):
            row = {"epoch": epoch, "model": name}
            for k in HISTORY_KEYS:
                v = float(history[k][m, epoch - 1])
                row[k] = v if math.isfinite(v) else None
            at = int(diverged[m])  # a line says what was known at its epoch, resumed or not
            row["diverged_at"] = at if 0 < at <= epoch else None
            out.append(json.dumps(row) + "\n")
        return "".join(out)

    def rewrite(self, history: dict[str, np.ndarray], diverged: np.ndarray, upto: int) -> None:
        """The file as it must be after ``upto`` epochs (a resume drops lines of epochs the
        checkpoint does not hold); atomic."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        epochs = range(1, upto + 1)
        tmp.write_text("".join(self._lines(e, history, diverged) for e in epochs))
        os.replace(tmp, self.path)

    def append(self, epoch: int, history: dict[str, np.ndarray], diverged: np.ndarray) -> None:
        with self.path.open("a") as f:
            f.write(self._lines(epoch, history, diverged))
            f.flush()


def checkpoint_like(c: StudyConfig, epoch: int) -> dict[str, Any]:
    """Shapes and dtypes of the checkpoint after ``epoch`` epochs: {"state", "history"}."""
    m = num_models(c)
    state = jax.eval_shape(lambda: init_state(c))
    f32 = jax.ShapeDtypeStruct((m, epoch), np.float32)
    return {"state": state, "history": dict.fromkeys(HISTORY_KEYS, f32)}


def _checkpoint_tree(st: stacked.Stacked, history: dict, m: int, epoch: int) -> dict[str, Any]:
    """Host copies of the real models' state and the history so far (the device state is
    donated to the next epoch while the checkpoint is written)."""
    state = jax.device_get(jax.tree.map(lambda a: a[:m], st))
    return {"state": state, "history": {k: v[:, :epoch].copy() for k, v in history.items()}}


def checkpoint_identity(c: StudyConfig) -> dict[str, Any]:
    """What every checkpoint of a run of ``c`` holds: the study's identity and model names."""
    return {"study": c.identity(), "models": [s.name for s in models(c)]}


def open_store(c: StudyConfig, workdir: Path, *, create: bool = True) -> Any:
    """The run's verified checkpoint store (``<workdir>/checkpoints``)."""
    return checkpoints.CheckpointStore(
        workdir / CHECKPOINTS, create=create, identity=checkpoint_identity(c)
    )


# ------------------------------------------------------------------------------ the engine


class Start(NamedTuple):
    """What is about to run (given to ``on_start`` before the first epoch)."""

    config: StudyConfig
    models: list[ModelSpec]
    sizes: tuple[int, int, int]  # train / val / test examples
    devices: list[str]
    layout: str
    layout_seconds: dict[str, float]  # the probe's time per layout ({} when not timed)
    resumed_from: int | None  # the checkpoint's epoch, None when starting from scratch
    skipped: list[Any]  # checkpoints passed over on resume (jnn.checkpoints.SkippedCheckpoint)


class EpochReport(NamedTuple):
    """After each epoch (given to ``on_epoch``): rows (M,) of this epoch, NaN where diverged."""

    epoch: int
    epochs: int
    rows: dict[str, np.ndarray]
    diverged_at: np.ndarray  # (M,) 1-based epoch of divergence, 0 while training
    seconds: float  # wall time of this epoch (the first of a call includes compiling)
    nth: int  # epochs trained so far by this call


class StudyResult(NamedTuple):
    """Per model (M, in :func:`models` order): ``history`` arrays (M, epochs); ``diverged_at``
    (M,) (0: never); ``evals[e]`` at each save epoch reached, from the restored checkpoint:
    ``{train,val,test}_{loss,accuracy}`` (M,) and ``unit_spread`` (M, hidden layers), NaN for
    a model diverged by then; ``epoch_seconds`` of the epochs this call trained."""

    config: StudyConfig
    models: list[ModelSpec]
    history: dict[str, np.ndarray]
    diverged_at: np.ndarray
    evals: dict[int, dict[str, np.ndarray]]
    epoch_seconds: list[float]
    start: Start


def _mesh(c: StudyConfig) -> Mesh:
    """A 1-D model mesh: ``devices`` of them, or all up to one per model."""
    n = c.devices if c.devices is not None else min(len(jax.devices()), num_models(c))
    try:
        return parallel.model_mesh(n)
    except InputError as err:
        raise ConfigError(f"`devices`: {err}") from None


EVAL_ROWS = 1000  # validation rows of the layout probe


def choose_layout(c: StudyConfig, mesh: Mesh, make: Callable, st: Any, d: Data) -> tuple:
    """(layout, probe seconds): ``c.layout`` when given; ``"vmap"`` off CPU; ``"map"`` with one
    model per device (the same program either way); else the faster of both on a probe epoch
    of at most 50 batches (compiles two small programs: a few seconds on a 2-core CPU). The
    probe's verdict is kept per machine and shape in ``layouts.json`` of jnn's cache folder,
    so later runs on this machine choose the same layout (the layouts differ in float
    rounding: a fresh run must not depend on a noisy timing to be reproducible)."""
    if c.layout != "auto":
        return c.layout, {}
    if mesh.devices.flat[0].platform != "cpu":
        return "vmap", {}
    per_device = -(-num_models(c) // mesh.size)
    if per_device == 1:
        return "map", {}
    key = f"{parallel.cpu_model()}|jax {jax.__version__}|{mesh.size}x{per_device}"
    key += f"|{c.sizes}|{c.batch_size}" + (f"|{c.optimizer}" if len(c.optimizers) > 1 else "")
    known = _layout_cache().get(key)
    if known in ("vmap", "map"):
        return known, {}
    rows = min(len(d.train[1]), 50 * c.batch_size)
    probe = (d.train[0][:rows], d.train[1][:rows], d.val[0][:EVAL_ROWS], d.val[1][:EVAL_ROWS])
    seconds = stacked.time_layouts(make, stacked.pad_models(st, mesh.size), probe)
    best = min(seconds, key=lambda layout: seconds[layout])
    _remember_layout(key, best)
    return best, seconds


def layout_cache_path() -> Path:
    """``$XDG_CACHE_HOME/jnn/layouts.json`` (default ``~/.cache/jnn``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "jnn" / "layouts.json"


def _layout_cache() -> dict[str, str]:
    try:
        cache = json.loads(layout_cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def _remember_layout(key: str, layout: str) -> None:
    """Best effort: a cache that cannot be written only means probing again next time."""
    path = layout_cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {**_layout_cache(), key: layout}, indent=1)
    except (OSError, StorageError):
        pass


def _resume_state(c: StudyConfig, store: Any, workdir: Path) -> tuple | None:
    """(epoch, state, history) of the newest checkpoint that verifies; RunError when a
    ``save_at`` checkpoint the run is already past is gone (its numbers cannot be given)."""
    found = store.restore_latest(lambda e: checkpoint_like(c, e))
    if found is None:
        return None
    epoch, tree = found
    if epoch > c.epochs:
        raise ConfigError(f"the run in {workdir} is at epoch {epoch}, past `epochs` {c.epochs}")
    gone = [e for e in c.save_epochs if e <= epoch and e not in store.saved_epochs()]
    if gone:
        raise RunError(
            f"the checkpoint of save epoch {gone[0]} is missing from {store.directory}, but the "
            f"run is already at epoch {epoch}, so its numbers cannot be reported; put the "
            "folder back, or train again in a new run folder"
        )
    history = train.empty_history(c.epochs, num_models(c))
    for k in HISTORY_KEYS:
        history[k][:, :epoch] = tree["history"][k]
    state = stacked.Stacked(*jax.tree.map(jnp.asarray, tuple(tree["state"])))
    return epoch, state, history


def _begin(c: StudyConfig, workdir: Path, store: Any, resume: bool) -> tuple:
    """(first epoch to train, state, history, resumed_from)."""
    found = _resume_state(c, store, workdir) if resume else None
    if found is None:
        return 1, init_state(c), train.empty_history(c.epochs, num_models(c)), None
    epoch, state, history = found
    return epoch + 1, state, history, epoch


def _train(
    c: StudyConfig, st: Any, first: int, history: dict, d: Data, epoch_fn: Callable,
    store: Any, log: MetricsLog, on_epoch: Callable | None,
) -> tuple[Any, list[float]]:  # fmt: skip
    """Epochs ``first..epochs``: one program call each, history, metrics line, checkpoints."""
    m = num_models(c)
    seconds: list[float] = []
    for epoch in range(first, c.epochs + 1):
        t0 = time.perf_counter()
        st, rows = epoch_fn(st, *d.train, *d.val)
        rows = jax.device_get(rows)
        seconds.append(time.perf_counter() - t0)
        for k, v in zip(HISTORY_KEYS, rows):
            history[k][:, epoch - 1] = v[:m]
        diverged = np.asarray(st.diverged_at)[:m]
        log.append(epoch, history, diverged)
        chosen = epoch in c.save_epochs
        every = c.checkpoint_every and epoch % c.checkpoint_every == 0
        if chosen or every or epoch == c.epochs:
            tree = _checkpoint_tree(st, history, m, epoch)
            store.save(epoch, tree, rolling=not chosen)
        if on_epoch is not None:
            row = {k: history[k][:, epoch - 1] for k in HISTORY_KEYS}
            on_epoch(EpochReport(epoch, c.epochs, row, diverged, seconds[-1], len(seconds)))
    return st, seconds


def _evaluate_saved(
    c: StudyConfig, store: Any, reached: int, d: Data, eval_fn: Callable, devices: int
) -> dict[int, dict[str, np.ndarray]]:
    """Every save epoch up to ``reached``, restored from disk (verified) and evaluated on the
    three sets; NaN for a model diverged by then (its numbers are refused, not reported)."""
    m, evals = num_models(c), {}
    for e in (e for e in c.save_epochs if e <= reached):
        st = store.restore(e, checkpoint_like(c, e))["state"]
        dead = np.asarray(st.diverged_at) > 0
        padded = stacked.pad_models(jax.tree.map(jnp.asarray, st.train), devices)
        out: dict[str, np.ndarray] = {}
        for split, (x, y) in zip(("train", "val", "test"), d):
            r = jax.device_get(eval_fn(padded, x, y))
            for k in ("loss", "accuracy"):
                out[f"{split}_{k}"] = np.where(dead, np.nan, r[k][:m]).astype(np.float32)
        spread = np.where(dead[:, None], np.nan, r["unit_spread"][:m])
        out["unit_spread"] = spread.astype(np.float32)
        evals[e] = out
    return evals


def _record_run(c: StudyConfig, workdir: Path, layout: str, seconds: dict) -> None:
    """run.json: the format, the config, its identity, the models, the layout, the stamps."""
    write_json(
        workdir / RUN_JSON,
        {
            "format": FORMAT,
            "config": _plain({**dataclasses.asdict(c), "layout": layout}),  # reruns exactly
            "identity": c.identity(),
            "models": [s.name for s in models(c)],
            "layout": layout,
            "layout_seconds": seconds,
            "stamps": stamps(),
        },
        indent=1,
    )


def run(
    c: StudyConfig,
    workdir: str | os.PathLike,
    *,
    resume: bool = False,
    on_start: Callable[[Start], None] | None = None,
    on_epoch: Callable[[EpochReport], None] | None = None,
    data: Data | None = None,
) -> StudyResult:
    """Train, checkpoint and evaluate every model of ``c`` in ``workdir`` (see the module
    docstring); ``resume`` continues the run there. ``data``: the three sets, when the caller
    has loaded them already (``load_data(c)``, or its own arrays of the dataset's shape: they
    are checked like loaded ones). One-line InputErrors for bad configs, data, or a run folder
    that does not fit; ``KeyboardInterrupt`` leaves every finished checkpoint in place
    (``resume`` continues from the newest)."""
    workdir = Path(workdir).expanduser().resolve()
    stored = check_resume(c, workdir) if resume else None
    if not resume and (workdir / RUN_JSON).exists():
        raise RunError(f"{workdir} holds a study run already; resume it or use another folder")
    if not resume and not empty_or_missing(workdir):  # its files could be overwritten
        raise RunError(f"{workdir} holds files of its own; give a new or empty folder")
    d = load_data(c) if data is None else check_data(c, data)
    mesh, net = _mesh(c), network(c)
    workdir.mkdir(parents=True, exist_ok=True)
    with open_store(c, workdir) as store:
        first, st, history, resumed = _begin(c, workdir, store, resume)
        make = lambda lay: stacked.make_epoch_fn(  # noqa: E731
            net, make_optimizer(c), c.batch_size, mesh, lay
        )
        if stored is not None and stored.get("layout") in ("vmap", "map"):
            layout, probe = stored["layout"], stored.get("layout_seconds", {})
        else:
            layout, probe = choose_layout(c, mesh, make, st, d)
            _record_run(c, workdir, layout, probe)
        names = [s.name for s in models(c)]
        log = MetricsLog(workdir / METRICS, names)
        log.rewrite(history, np.asarray(st.diverged_at), first - 1)
        devices = [str(x) for x in mesh.devices.flat]
        sizes = (len(d.train[1]), len(d.val[1]), len(d.test[1]))
        start = Start(c, models(c), sizes, devices, layout, probe,
                      resumed, list(store.skipped))  # fmt: skip
        if on_start is not None:
            on_start(start)
        st = stacked.pad_models(st, mesh.size)
        st, seconds = _train(c, st, first, history, d, make(layout), store, log, on_epoch)
        reached = int(np.max(np.asarray(st.train.epoch)))
        eval_fn = stacked.make_eval_fn(net, mesh, layout)
        evals = _evaluate_saved(c, store, reached, d, eval_fn, mesh.size)
    diverged = np.asarray(st.diverged_at)[: num_models(c)]
    return StudyResult(c, models(c), history, diverged, evals, seconds, start)


def _check_export_epochs(epochs: Any, trained: int) -> None:
    """``epochs``: a non-empty list of distinct epochs in [1, ``trained``] (an empty one had
    no last epoch to size the exported run by)."""
    distinct(epochs, "epochs")  # also refuses what is not a list or tuple
    if not epochs:
        raise ConfigError(f"`epochs` to export must be a non-empty list of epochs, got {epochs!r}")
    for e in epochs:
        integer(e, "epochs", 1, trained)


def export(
    workdir: str | os.PathLike, out: str | os.PathLike, *, seeds: int, epochs: Sequence[int]
) -> Path:
    """A smaller run folder in ``out`` holding the first ``seeds`` seeds of every cell of the
    run in ``workdir`` at the save epochs ``epochs`` (verified on the way: each step is
    restored from ``workdir`` and saved again under the smaller run's identity). ``out`` loads
    like any run (``jnn.runs.load``) and its numbers are the source run's, bit for bit; its
    run.json names the source. For shipping trained models (a few MB) without the rest."""
    src = read_run(workdir)
    c = config_of(src)
    if not isinstance(seeds, int) or not 1 <= seeds <= c.seeds:
        raise ConfigError(f"`seeds` to export must be in [1, {c.seeds}], got {seeds!r}")
    _check_export_epochs(epochs, c.epochs)
    small = dataclasses.replace(c, seeds=seeds, save_at=tuple(epochs), epochs=max(epochs))
    keep = [m for m, s in enumerate(models(c)) if s.seed < seeds]
    out = Path(out).expanduser().resolve()
    if (out / RUN_JSON).exists():
        raise RunError(f"{out} holds a run already; export into a new folder")
    with open_store(c, Path(workdir).expanduser(), create=False) as store:
        trees = {e: store.restore(e, checkpoint_like(c, e)) for e in small.save_epochs}
    out.mkdir(parents=True, exist_ok=True)  # after the restores: a refused export leaves none
    with open_store(small, out) as target:
        for e, tree in trees.items():
            target.save(e, jax.tree.map(lambda a: np.asarray(a)[keep], tree))
    _record_run(small, out, src.get("layout", c.layout), {})
    run = read_run(out)
    run["exported_from"] = {"run": str(Path(workdir)), "stamps": src.get("stamps"), "seeds": seeds}
    write_json(out / RUN_JSON, run, indent=1)
    return out
