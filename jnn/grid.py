"""The study's whole design space in one program: cells (activation x init x lr) x seeds.

    spec = GridSpec(("relu", "tanh"), ("normal", "he"), (0.01, 0.1), seeds=3)   # 24 models
    result = train_grid(spec, (x, y), (xv, yv), (xt, yt), epochs=20, save_at=(10, 20))
    result.history["val_accuracy"]      # (M, epochs), NaN from a model's divergence on
    result.diverged_at                  # (M,) int: 1-based epoch it diverged, 0 if never
    result.evals[20]["test_accuracy"]   # (M,) at a save epoch, NaN for diverged models

Model ``m = cell_index * seeds + s`` (cells in ``spec.cells()`` order: activation-major, then
init, then lr). Every model is the same network, ``grid_model``: the study MLP with
``SelectActivation(activations)`` in place of each hidden activation, so the activation is layer
*state* (an int32 index per model) and all M models vmap into one XLA program. The learning rate
is optimizer state: ``optax.inject_hyperparams(optax.sgd)`` with each model's
``opt_state.hyperparams["learning_rate"]`` set to its own lr (plain SGD, as in the study; the
product ``-lr * g`` is the same float32 product ``optax.sgd(lr)`` computes). The init is the
initial params: each model is initialised on its own by ``jnn.mlp.mlp(sizes, act, init)``.

Keys (documented convention): model (cell, s) starts from ``fold_in(PRNGKey(spec.seed), s)``, the
key ``experiments.mlp_sweep`` gives its seed ``s``; so every cell's seed ``s`` shares the init key
and the shuffle order, and cells differ only by what the cell names (common random numbers: the
differences between cells are not seed noise). ``train.init_train_state`` splits it as always.

The model axis is sharded ``P("model")`` over a device mesh (as
``parallel.make_per_device_models_fn`` does; M is padded with copies of model 0 up to a multiple
of the device count, their results dropped), so every device trains its own share with no
communication. Divergence stops only that model: inside the program, a model whose training
loss, params or validation loss became non-finite keeps its incoming (last good) state via a
per-leaf ``jnp.where``, and its epoch is written into ``diverged_at``; the others are untouched
(the select is per model, so their numbers are bit-identical to a grid without it).

Resume: ``on_epoch`` receives a :class:`GridProgress` (state, history, evals so far);
``progress_tree`` makes it a checkpoint tree for ``jnn.checkpoints.CheckpointStore``,
``progress_like`` + ``progress_from_tree`` bring it back, and ``train_grid(..., start=progress)``
continues. The shuffle and layer keys live in the state, so a resumed grid equals an
uninterrupted one bit for bit, and a run may be continued to more epochs than first planned.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jnn import core, parallel, train
from jnn.activations import get_activation
from jnn.errors import InputError
from jnn.initializers import get_initializer
from jnn.layers.dense import Dense
from jnn.layers.select import SelectActivation
from jnn.mlp import STUDY_SIZES, mlp

HISTORY_KEYS = train.HISTORY_KEYS  # train_loss, train_accuracy, val_loss, val_accuracy
EVAL_CHUNK = 1000  # rows per evaluation step: bounds the (M, chunk, 256) activations in memory


class Cell(NamedTuple):
    activation: str
    init: str
    lr: float


@dataclass(frozen=True)
class GridSpec:
    """What to train: every (activation, init, lr) cell with ``seeds`` seeds each."""

    activations: tuple[str, ...]
    inits: tuple[str, ...]
    lrs: tuple[float, ...]
    seeds: int
    sizes: tuple[int, ...] = STUDY_SIZES
    seed: int = 0

    def __post_init__(self) -> None:
        check_spec(self)

    def cells(self) -> list[Cell]:
        return [
            Cell(a, i, float(lr)) for a in self.activations for i in self.inits for lr in self.lrs
        ]

    @property
    def num_models(self) -> int:
        return len(self.cells()) * self.seeds


def _names(names: Sequence[str], what: str, lookup: Callable[[str], Any]) -> None:
    if not names:
        raise InputError(f"the grid needs at least one {what}")
    if len(set(names)) != len(names):
        raise InputError(f"{what}s must not repeat, got {list(names)}")
    for name in names:
        try:
            lookup(name)
        except ValueError as err:
            raise InputError(str(err)) from None


def check_spec(spec: GridSpec) -> None:
    """One-line InputError for names, lrs, seeds or sizes that cannot train."""
    _names(spec.activations, "activation", get_activation)
    _names(spec.inits, "initializer", get_initializer)
    if not spec.lrs or len(set(spec.lrs)) != len(spec.lrs):
        raise InputError(f"learning rates must be given once each, got {list(spec.lrs)}")
    for lr in spec.lrs:
        if isinstance(lr, bool) or not math.isfinite(lr) or lr <= 0:
            raise InputError(f"every learning rate must be a positive finite number, got {lr!r}")
    for what, v in (("seeds", spec.seeds), ("seed", spec.seed)):
        if isinstance(v, bool) or int(v) != v or v < (1 if what == "seeds" else 0) or v >= 2**32:
            raise InputError(
                f"{what} must be an integer in [{int(what == 'seeds')}, 2**32), got {v!r}"
            )
    if len(spec.sizes) < 2 or min(spec.sizes) <= 0:
        raise InputError(f"sizes must be positive layer widths, got {list(spec.sizes)}")


def grid_model(activations: Sequence[str], sizes: Sequence[int] = STUDY_SIZES) -> core.Layer:
    """``serial(Dense(h1), SelectActivation(activations), ..., Dense(C))``: the study MLP whose
    hidden activation is chosen per model by state. Params have ``mlp(sizes, ...)``'s structure."""
    layers: list[core.Layer] = []
    for i, width in enumerate(tuple(sizes)[1:]):
        if i:
            layers.append(SelectActivation(activations, 0))
        layers.append(Dense(int(width)))
    return core.serial(*layers, name=f"grid mlp{tuple(sizes)}")


def grid_optimizer() -> optax.GradientTransformation:
    """Plain SGD whose learning rate lives in ``opt_state.hyperparams`` (one per model)."""
    return optax.inject_hyperparams(optax.sgd)(learning_rate=1.0)


def model_key(seed: int, s: int) -> Array:
    """The key of seed ``s`` in every cell: ``fold_in(PRNGKey(seed), s)`` (mlp_sweep's keys)."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), s)


def init_model(spec: GridSpec, cell: Cell, s: int) -> train.TrainState:
    """One grid model, unstacked: params exactly as ``train.init_train_state(model_key(seed, s),
    mlp(sizes, activation, init), optax.sgd(lr), (sizes[0],))`` gives them, the grid network's
    state with this model's activation index, and its lr in the optimizer state."""
    alone = mlp(spec.sizes, cell.activation, cell.init)
    state = train.init_train_state(model_key(spec.seed, s), alone, grid_optimizer(), spec.sizes[:1])
    index = jnp.asarray(spec.activations.index(cell.activation), jnp.int32)
    _, _, template = grid_model(spec.activations, spec.sizes).init(
        jax.random.PRNGKey(0), spec.sizes[:1]
    )
    model_state = tuple({"index": index} if isinstance(t, dict) else t for t in template)
    opt_state = state.opt_state
    opt_state.hyperparams["learning_rate"] = jnp.asarray(cell.lr, jnp.float32)
    return state._replace(model_state=model_state, opt_state=opt_state)


class GridState(NamedTuple):
    """M stacked models (leaves (M, ...)) and, per model, the 1-based epoch at which it diverged
    (0 while it trains)."""

    train: train.TrainState
    diverged_at: Array  # (M,) int32


class GridMetrics(NamedTuple):
    """Per model (M,): the epoch's mean training loss/accuracy and the validation loss/accuracy
    after it; NaN for a model that has diverged (this epoch or before)."""

    train_loss: Array
    train_accuracy: Array
    val_loss: Array
    val_accuracy: Array


def init_grid(spec: GridSpec, num_devices: int = 1) -> tuple[GridState, int]:
    """All models stacked, M padded up to a multiple of ``num_devices`` with copies of model 0
    (their results are dropped). Returns (state with leaves (M_padded, ...), M)."""
    models = [init_model(spec, cell, s) for cell in spec.cells() for s in range(spec.seeds)]
    gs = GridState(parallel.stack_trees(models), jnp.zeros((len(models),), jnp.int32))
    return pad_models(gs, num_devices), len(models)


def pad_models(gs: GridState, num_devices: int) -> GridState:
    """``gs`` (leaves (M, ...)) with copies of model 0 appended up to a multiple of
    ``num_devices`` (every device of the model mesh gets the same share)."""
    m = int(gs.diverged_at.shape[0])
    extra = -m % num_devices
    if not extra:
        return gs
    return jax.tree.map(lambda a: jnp.concatenate([a, jnp.repeat(a[:1], extra, axis=0)]), gs)


def evaluate_chunked(
    model: core.Layer, params: Any, model_state: Any, x: Array, y: Array, chunk: int = EVAL_CHUNK
) -> tuple[Array, Array]:
    """Mean cross-entropy and accuracy of one model on x (N, ...), y (N,), ``chunk`` rows at a
    time (``lax.map``), so M vmapped models hold (M, chunk, width) activations, not (M, N, width).

    The rows are padded to a multiple of ``chunk`` and the padding weighted 0. The loss is the
    sum of per-example ``logsumexp(z) - z_y`` over N (``train.evaluate`` takes the mean of the
    same terms in one reduction: equal to float32 summation order).
    """
    n = x.shape[0]
    chunk = max(1, min(int(chunk), n))
    pad = -n % chunk
    xs = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)]).reshape(
        -1, chunk, *x.shape[1:]
    )
    ys = jnp.concatenate([y, jnp.zeros((pad,), y.dtype)]).reshape(-1, chunk)
    ws = (jnp.arange(n + pad) < n).astype(jnp.float32).reshape(-1, chunk)

    def one(args: tuple[Array, Array, Array]) -> tuple[Array, Array]:
        xb, yb, wb = args
        z = core.apply(model, params, model_state, xb)
        nll = jax.nn.logsumexp(z, axis=-1) - jnp.take_along_axis(z, yb[:, None], axis=-1)[:, 0]
        return jnp.sum(nll * wb), jnp.sum((jnp.argmax(z, axis=-1) == yb) * wb)

    losses, correct = jax.lax.map(one, (xs, ys, ws))
    return jnp.sum(losses) / n, jnp.sum(correct) / n


def _masked(bad: Array, incoming: Any, new: Any) -> Any:
    """Per model (a vmapped scalar ``bad``): the incoming state where bad, else the new one."""
    return jax.tree.map(lambda old, cur: jnp.where(bad, old, cur), incoming, new)


def grid_epoch_step(
    gs: GridState,
    x: Array,
    y: Array,
    xv: Array,
    yv: Array,
    *,
    model: core.Layer,
    optimizer: optax.GradientTransformation,
    batch_size: int,
) -> tuple[GridState, GridMetrics]:
    """One model's epoch (vmap it over the grid): ``train.epoch_step`` (manual backprop), then
    the validation loss/accuracy, then the divergence mask.

    A model is bad when its training loss, any param or its validation loss is non-finite, or it
    was already diverged: it keeps its incoming state (``jnp.where`` per leaf, so a NaN never
    overwrites its last good params) and its metrics are NaN. ``diverged_at`` gets the epoch
    number the first time. A finite model's values pass through the select unchanged.
    """
    new, m = train.epoch_step(
        gs.train, x, y, value_and_grad=core.value_and_grad(model), optimizer=optimizer,
        batch_size=batch_size,
    )  # fmt: skip
    val_loss, val_acc = evaluate_chunked(model, new.params, new.model_state, xv, yv)
    finite = jnp.isfinite(m.loss) & m.params_finite & jnp.isfinite(val_loss)
    bad = (gs.diverged_at > 0) | ~finite
    diverged_at = jnp.where((gs.diverged_at == 0) & ~finite, new.epoch, gs.diverged_at)
    nan = jnp.float32(jnp.nan)
    metrics = GridMetrics(
        *(jnp.where(bad, nan, v) for v in (m.loss, m.accuracy, val_loss, val_acc))
    )
    return GridState(_masked(bad, gs.train, new), diverged_at), metrics


def make_grid_epoch_fn(
    model: core.Layer, batch_size: int, mesh: Mesh
) -> Callable[..., tuple[GridState, GridMetrics]]:
    """Jitted ``epoch(gs, x, y, xv, yv) -> (gs, metrics)`` over the whole (padded) grid.

    Sharded like ``parallel.make_per_device_models_fn``: the model axis ``P("model")`` (each
    device trains its M / devices models, no collectives), data replicated, the incoming grid
    state donated. Inputs are placed on the mesh first (a no-op when they already are).
    """
    train.validate_hyperparameters(batch_size)
    per_model = functools.partial(
        grid_epoch_step, model=model, optimizer=grid_optimizer(), batch_size=batch_size
    )
    by_model = NamedSharding(mesh, P(mesh.axis_names[0]))
    replicated = NamedSharding(mesh, P())
    jitted = jax.jit(
        jax.vmap(per_model, in_axes=(0, None, None, None, None)),
        in_shardings=(by_model, *[replicated] * 4),
        out_shardings=(by_model, by_model),
        donate_argnums=0,
    )

    def epoch(gs: GridState, *data: Any) -> tuple[GridState, GridMetrics]:
        train.validate_hyperparameters(batch_size, np.shape(data[0])[0])
        return jitted(parallel.put(gs, by_model), *parallel.put(data, replicated))

    epoch.jitted = jitted  # type: ignore[attr-defined]
    return epoch


def unit_spread(params: Any) -> Array:
    """Per hidden Dense layer, how far its units are from being copies of unit 0:
    ``max_{i,j} |W[i, j] - W[i, 0]|`` over the kernel (fan_in, units), together with
    ``max_j |b_j - b_0|``. One model's params -> (hidden layers,). Exactly 0 means every hidden
    unit computes the same function (zero init: equal units get equal gradients forever)."""
    dense = [p for p in params if isinstance(p, dict) and set(p) == {"w", "b"}][:-1]
    return jnp.stack([
        jnp.maximum(jnp.max(jnp.abs(d["w"] - d["w"][:, :1])), jnp.max(jnp.abs(d["b"] - d["b"][:1])))
        for d in dense
    ])  # fmt: skip


def make_grid_eval_fn(model: core.Layer, mesh: Mesh) -> Callable[..., dict[str, Array]]:
    """Jitted ``eval(gs, x, y) -> {"loss", "accuracy", "unit_spread"}`` per model ((M,) and
    (M, hidden layers)), sharded like the epoch; the state is not donated."""
    by_model = NamedSharding(mesh, P(mesh.axis_names[0]))
    replicated = NamedSharding(mesh, P())

    def one(params: Any, model_state: Any, x: Array, y: Array) -> dict[str, Array]:
        loss, acc = evaluate_chunked(model, params, model_state, x, y)
        return {"loss": loss, "accuracy": acc, "unit_spread": unit_spread(params)}

    jitted = jax.jit(
        jax.vmap(one, in_axes=(0, 0, None, None)),
        in_shardings=(by_model, by_model, replicated, replicated),
        out_shardings=by_model,
    )

    def evaluate(gs: GridState, x: Any, y: Any) -> dict[str, Array]:
        st = parallel.put(gs.train, by_model)
        return jitted(st.params, st.model_state, *parallel.put((x, y), replicated))

    return evaluate


def estimate_bytes(spec: GridSpec, batch_size: int, num_eval: int) -> int:
    """Rough peak memory of the grid program: per model its params about 6 times (params,
    incoming copy kept for the mask, grads, update, donated buffers) plus the step's and an
    evaluation chunk's activations (float32)."""
    sizes = spec.sizes
    n_params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    acts = sum(sizes) * (3 * batch_size + 2 * min(num_eval, EVAL_CHUNK))
    return 4 * spec.num_models * (6 * n_params + acts)


def check_memory(spec: GridSpec, batch_size: int, num_eval: int, limit: int | None = None) -> None:
    """InputError when the grid would need more than half the machine's memory (or ``limit``)."""
    if limit is None:
        limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    need = estimate_bytes(spec, batch_size, num_eval)
    if need > limit:
        raise InputError(
            f"{spec.num_models} models need about {need / 2**30:.1f} GiB, over the "
            f"{limit / 2**30:.1f} GiB allowed; use fewer seeds, cells or smaller sizes"
        )


class GridResult(NamedTuple):
    """Per real model (padding dropped): ``history`` arrays (M, epochs); ``diverged_at`` (M,)
    (0: never); ``evals[e]`` at each save epoch e: ``test_loss``, ``test_accuracy``,
    ``val_loss``, ``val_accuracy`` (M,) and ``unit_spread`` (M, hidden layers), NaN for models
    diverged by then; ``epoch_seconds`` the wall time of each epoch trained by this call (the
    first includes compiling; none when it resumed at ``epochs``)."""

    history: dict[str, np.ndarray]
    diverged_at: np.ndarray
    evals: dict[int, dict[str, np.ndarray]]
    epoch_seconds: list[float]
    state: GridState


class GridProgress(NamedTuple):
    """A grid run after ``epoch`` epochs: what ``on_epoch`` sees and what a checkpoint holds.

    ``state`` has leaves (M_padded, ...) (on the mesh while training; (M, ...) host arrays once
    restored); ``history`` arrays (M, epoch); ``evals`` the save epochs reached so far (as in
    :class:`GridResult`); ``num_models`` M, the real models (padding excluded)."""

    epoch: int
    state: GridState
    history: dict[str, np.ndarray]
    evals: dict[int, dict[str, np.ndarray]]
    num_models: int


def progress_tree(progress: GridProgress) -> dict[str, Any]:
    """The checkpoint tree of ``progress`` (real models only, host arrays): ``{"state",
    "history", "evals"}`` with eval epochs as string keys. Restore it with
    :func:`progress_like` and :func:`progress_from_tree`."""
    m = progress.num_models
    return {
        "state": jax.device_get(jax.tree.map(lambda a: a[:m], progress.state)),
        "history": {k: np.asarray(v[:, : progress.epoch]) for k, v in progress.history.items()},
        "evals": {str(e): dict(ev) for e, ev in progress.evals.items()},
    }


def progress_like(spec: GridSpec, epoch: int, eval_epochs: Sequence[int]) -> dict[str, Any]:
    """Shapes and dtypes of the checkpoint tree of ``spec``'s grid after ``epoch`` epochs whose
    save epochs were ``eval_epochs`` (those <= ``epoch`` were evaluated)."""
    m = spec.num_models
    state = jax.eval_shape(lambda: init_grid(spec, 1)[0])
    hidden = len(spec.sizes) - 2
    f32 = functools.partial(jax.ShapeDtypeStruct, dtype=np.float32)
    ev = {f"{s}_{k}": f32((m,)) for s in ("val", "test") for k in ("loss", "accuracy")}
    ev["unit_spread"] = f32((m, hidden))
    return {
        "state": state,
        "history": {k: f32((m, epoch)) for k in HISTORY_KEYS},
        "evals": {str(e): dict(ev) for e in eval_epochs if e <= epoch},
    }


def progress_from_tree(epoch: int, tree: dict[str, Any]) -> GridProgress:
    """The :class:`GridProgress` of a restored checkpoint tree (see :func:`progress_tree`)."""
    state = tree["state"]
    evals = {int(e): {k: np.asarray(v) for k, v in ev.items()} for e, ev in tree["evals"].items()}
    history = {k: np.asarray(v) for k, v in tree["history"].items()}
    return GridProgress(int(epoch), state, history, evals, int(state.diverged_at.shape[0]))


def _save_eval(
    evaluate: Callable[..., dict[str, Array]], gs: GridState, data: tuple, m: int, epoch: int
) -> dict[str, np.ndarray]:
    """Test (and validation) numbers of the live stacked state at ``epoch``; NaN where diverged."""
    (xv, yv), (xt, yt) = data
    dead = np.asarray(gs.diverged_at)[:m] > 0
    out: dict[str, np.ndarray] = {}
    for split, (xs, ys) in (("val", (xv, yv)), ("test", (xt, yt))):
        r = jax.device_get(evaluate(gs, xs, ys))
        out[f"{split}_loss"] = np.where(dead, np.nan, r["loss"][:m]).astype(np.float32)
        out[f"{split}_accuracy"] = np.where(dead, np.nan, r["accuracy"][:m]).astype(np.float32)
        spread = r["unit_spread"][:m]
    out["unit_spread"] = np.where(dead[:, None], np.nan, spread).astype(np.float32)
    return out


def _start(
    spec: GridSpec, epochs: int, devices: int, start: GridProgress | None
) -> tuple[GridState, int, dict[str, np.ndarray], dict[int, dict[str, np.ndarray]]]:
    """(padded state, first epoch to train, history (M, epochs), evals) from scratch or from a
    restored :class:`GridProgress` (checked against ``spec`` and ``epochs``)."""
    history = train.empty_history(epochs, spec.num_models)
    if start is None:
        return init_grid(spec, devices)[0], 1, history, {}
    if start.num_models != spec.num_models:
        raise InputError(
            f"the progress to resume holds {start.num_models} models, the grid has "
            f"{spec.num_models}; resume with the grid that was checkpointed"
        )
    if not 0 <= start.epoch <= epochs:
        raise InputError(f"cannot resume at epoch {start.epoch} of a {epochs}-epoch run")
    for k in HISTORY_KEYS:
        history[k][:, : start.epoch] = start.history[k]
    gs = GridState(*jax.tree.map(jnp.asarray, tuple(start.state)))
    return pad_models(gs, devices), start.epoch + 1, history, dict(start.evals)


def train_grid(
    spec: GridSpec,
    train_data: tuple[Any, Any],
    val_data: tuple[Any, Any],
    test_data: tuple[Any, Any],
    *,
    epochs: int,
    save_at: Sequence[int],
    batch_size: int = 32,
    mesh: Mesh | None = None,
    start: GridProgress | None = None,
    on_epoch: Callable[[GridProgress, GridMetrics], None] | None = None,
) -> GridResult:
    """Train the whole grid up to ``epochs`` epochs, one program call per epoch; evaluate the
    live state on validation and test at every epoch in ``save_at``. x (N, sizes[0]) float32,
    y (N,) int. ``mesh``: a 1-D model mesh (``parallel.model_mesh``), all devices by default.
    ``start``: a restored :class:`GridProgress` to continue (its epochs are not retrained; the
    keys live in the state, so the result equals an uninterrupted run bit for bit).
    ``on_epoch(progress, metrics)`` runs after each epoch (e.g. to save a checkpoint)."""
    mesh = mesh or parallel.model_mesh()
    x, y = train_data
    for what, (xs, ys) in (("training", train_data), ("validation", val_data), ("test", test_data)):
        train.check_data(xs, ys, spec.sizes[-1], what)
    check_memory(spec, batch_size, max(len(val_data[1]), len(test_data[1])))
    model = grid_model(spec.activations, spec.sizes)
    gs, first, history, evals = _start(spec, epochs, mesh.size, start)
    m = spec.num_models
    epoch_fn = make_grid_epoch_fn(model, batch_size, mesh)
    evaluate = make_grid_eval_fn(model, mesh)
    seconds = []
    for epoch in range(first, epochs + 1):
        t0 = time.perf_counter()
        gs, metrics = epoch_fn(gs, x, y, *val_data)
        row = jax.device_get(metrics)
        seconds.append(time.perf_counter() - t0)
        for name, value in zip(HISTORY_KEYS, row):
            history[name][:, epoch - 1] = value[:m]
        if epoch in save_at:
            evals[epoch] = _save_eval(evaluate, gs, (val_data, test_data), m, epoch)
        if on_epoch is not None:
            on_epoch(GridProgress(epoch, gs, history, evals, m), metrics)
    return GridResult(history, np.asarray(gs.diverged_at)[:m], evals, seconds, gs)
