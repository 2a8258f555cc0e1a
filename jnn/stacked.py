"""M independent models in one program: the per-model epoch, chunked evaluation, and layouts.

A stacked state has leaves (M, ...). The model axis is split over a 1-D device mesh with
``shard_map`` (each device gets M / devices models and needs no communication); inside a device
the models run in one of two layouts:

- ``"vmap"``: ``jax.vmap`` over the local models, so every matmul becomes a batched matmul;
- ``"map"``: ``lax.map`` over them, one model after another, each running the program it would
  run alone (the same dots, the same shapes).

Which is faster depends on the CPU (measured: see ``jnn.study``); :func:`time_layouts` times both
on a probe. ``per_model_epoch`` is written for one model; the layouts only change how it is
batched, never its arithmetic: a model whose loss, params or validation loss became non-finite
keeps its incoming state (``jnp.where`` per leaf) and records the epoch in ``diverged_at``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jnn import core, parallel, train

EVAL_CHUNK = 1000  # rows per evaluation step: bounds (models, chunk, width) activations


class Stacked(NamedTuple):
    """M stacked models (leaves (M, ...)) and per model the 1-based epoch it diverged (0: not)."""

    train: train.TrainState
    diverged_at: Array  # (M,) int32


class EpochRow(NamedTuple):
    """Per model (M,): the epoch's mean training loss/accuracy and the validation loss/accuracy
    after it; NaN for a model that has diverged (this epoch or before)."""

    train_loss: Array
    train_accuracy: Array
    val_loss: Array
    val_accuracy: Array


def evaluate_chunked(
    model: core.Layer, params: Any, model_state: Any, x: Array, y: Array, chunk: int = EVAL_CHUNK
) -> tuple[Array, Array]:
    """Mean cross-entropy and accuracy of one model on x (N, ...), y (N,), ``chunk`` rows at a
    time: ``train.evaluate_chunked`` (the library's one chunked evaluation), so M stacked models
    hold (M, chunk, width) activations, not (M, N, width)."""
    return train.evaluate_chunked(model, params, model_state, x, y, chunk)


def per_model_epoch(
    st: Stacked,
    x: Array,
    y: Array,
    xv: Array,
    yv: Array,
    *,
    model: core.Layer,
    optimizer: optax.GradientTransformation,
    batch_size: int,
) -> tuple[Stacked, EpochRow]:
    """One model's epoch (``train.epoch_step``, manual backprop), its validation loss and
    accuracy, then the divergence mask: a bad model (non-finite training loss, param or
    validation loss, or diverged before) keeps its incoming state and gets NaN metrics."""
    new, m = train.epoch_step(
        st.train, x, y, value_and_grad=core.value_and_grad(model), optimizer=optimizer,
        batch_size=batch_size,
    )  # fmt: skip
    val_loss, val_acc = evaluate_chunked(model, new.params, new.model_state, xv, yv)
    finite = jnp.isfinite(m.loss) & m.params_finite & jnp.isfinite(val_loss)
    bad = (st.diverged_at > 0) | ~finite
    diverged_at = jnp.where((st.diverged_at == 0) & ~finite, new.epoch, st.diverged_at)
    nan = jnp.float32(jnp.nan)
    row = EpochRow(*(jnp.where(bad, nan, v) for v in (m.loss, m.accuracy, val_loss, val_acc)))
    kept = jax.tree.map(lambda old, cur: jnp.where(bad, old, cur), st.train, new)
    return Stacked(kept, diverged_at), row


def unit_spread(params: Any) -> Array:
    """Per hidden Dense layer, ``max_{i,j} |W[i, j] - W[i, 0]|`` together with ``max_j |b_j -
    b_0|``: how far its units are from copies of unit 0. One model's params -> (hidden layers,).
    Exactly 0: every hidden unit computes the same function (zero init keeps them equal)."""
    dense = [p for p in params if isinstance(p, dict) and set(p) == {"w", "b"}][:-1]
    if not dense:
        return jnp.zeros((0,), jnp.float32)
    return jnp.stack([
        jnp.maximum(jnp.max(jnp.abs(d["w"] - d["w"][:, :1])), jnp.max(jnp.abs(d["b"] - d["b"][:1])))
        for d in dense
    ])  # fmt: skip


def per_model_eval(model: core.Layer, st: train.TrainState, x: Array, y: Array) -> dict:
    """One model's loss, accuracy (chunked) and unit spread on (x, y)."""
    loss, acc = evaluate_chunked(model, st.params, st.model_state, x, y)
    return {"loss": loss, "accuracy": acc, "unit_spread": unit_spread(st.params)}


def _local(fn: Callable[..., Any], layout: str) -> Callable[..., Any]:
    """``fn(model_tree, *shared)`` over this device's models: vmapped or ``lax.map``-ped."""
    if layout == "vmap":
        return lambda tree, *shared: jax.vmap(lambda t: fn(t, *shared))(tree)
    return lambda tree, *shared: jax.lax.map(lambda t: fn(t, *shared), tree)


def over_models(
    fn: Callable[..., Any], mesh: Mesh, layout: str, num_shared: int, *, donate: bool = False
) -> Callable[..., Any]:
    """Jitted ``fn(model_tree, *shared)`` for stacked models: the model axis split over
    ``mesh``'s one axis (``shard_map``), ``layout`` inside each device, ``shared`` (data)
    replicated. Inputs are placed on the mesh first (a no-op when they already are)."""
    if layout not in ("vmap", "map"):
        raise ValueError(f"layout must be 'vmap' or 'map', got {layout!r}")
    axis = mesh.axis_names[0]
    mapped = jax.shard_map(
        _local(fn, layout),
        mesh=mesh,
        in_specs=(P(axis), *[P()] * num_shared),
        out_specs=P(axis),
    )
    jitted = jax.jit(mapped, donate_argnums=0 if donate else ())
    by_model, replicated = NamedSharding(mesh, P(axis)), NamedSharding(mesh, P())

    def call(tree: Any, *shared: Any) -> Any:
        return jitted(parallel.put(tree, by_model), *parallel.put(shared, replicated))

    call.jitted = jitted  # type: ignore[attr-defined]
    return call


def make_epoch_fn(
    model: core.Layer,
    optimizer: optax.GradientTransformation,
    batch_size: int,
    mesh: Mesh,
    layout: str,
) -> Callable[..., tuple[Stacked, EpochRow]]:
    """``epoch(st, x, y, xv, yv) -> (st, rows)`` over all stacked models (state donated)."""
    train.validate_hyperparameters(batch_size)
    one = functools.partial(
        per_model_epoch, model=model, optimizer=optimizer, batch_size=batch_size
    )
    return over_models(one, mesh, layout, 4, donate=True)


def make_eval_fn(model: core.Layer, mesh: Mesh, layout: str) -> Callable[..., dict[str, Array]]:
    """``evaluate(train_state, x, y) -> {"loss", "accuracy", "unit_spread"}`` per model."""
    return over_models(functools.partial(per_model_eval, model), mesh, layout, 2)


def pad_models(st: Any, num_devices: int) -> Any:
    """Stacked tree ``st`` (leaves (M, ...)) with copies of model 0 appended up to a multiple
    of ``num_devices`` (every device gets the same share; the copies' results are dropped)."""
    m = int(jax.tree.leaves(st)[0].shape[0])
    extra = -m % num_devices
    if not extra:
        return st
    return jax.tree.map(lambda a: jnp.concatenate([a, jnp.repeat(a[:1], extra, axis=0)]), st)


def time_layouts(
    make: Callable[[str], Callable[..., Any]], st: Stacked, data: tuple, reps: int = 2
) -> dict[str, float]:
    """Seconds per call of ``make(layout)(st, *data)`` for each layout (the best of ``reps``
    after a compile-and-warm-up call); ``st`` is copied per call, since the epoch donates it."""
    seconds = {}
    for layout in ("vmap", "map"):
        fn = make(layout)
        jax.block_until_ready(fn(jax.tree.map(jnp.copy, st), *data))
        best = np.inf
        for _ in range(reps):
            fresh = jax.tree.map(jnp.copy, st)
            t0 = time.perf_counter()
            jax.block_until_ready(fn(fresh, *data))
            best = min(best, time.perf_counter() - t0)
        seconds[layout] = float(best)
    return seconds
