"""Scale: one model data-parallel over a device mesh, or many independent models per device.

Data parallel (one model, global batch split along a ``data`` axis)::

    mesh = data_mesh(4)                                   # 4 devices, axis "data"
    model = mlp(sizes, "relu")                            # any jnn.core Layer
    epoch = make_sharded_epoch_fn(model, optax.sgd(0.1), batch_size=256, mesh=mesh)
    state = replicate(init_train_state(key, model, optax.sgd(0.1), (784,)), mesh)
    x, y = replicate((x_train, y_train), mesh)            # the dataset lives on every device
    state, metrics = epoch(state, x, y)                   # same contract as train.make_epoch_fn

Each scan step gathers its global batch of ``batch_size`` rows with the batch dimension
constrained to ``NamedSharding(mesh, P("data"))``; params and optimizer state are replicated.
XLA's SPMD partitioner then computes each device's share of the batch and inserts the all-reduce
that sums the partial gradients (no hand-written collective). The result equals single-device
training with the same global batch up to float32 reduction order.

Independent models (seeds, initialisations, injected hyperparameters) stacked along a leading
axis, vmapped, and sharded ``P("model")`` so each device trains its own group with no
communication::

    mesh = model_mesh(4)
    states = init_stacked_states(keys, model, opt, (784,))    # M models, leaves (M, ...)
    epoch = make_per_device_models_fn(model, opt, batch_size=32, mesh=mesh)
    states, metrics = epoch(shard_models(states, mesh), *replicate((x, y), mesh))

Models that differ in their network (e.g. the activation) are separate programs: commit each
one's state and data to its own device with ``jax.device_put(tree, device)`` and call a
``train.make_epoch_fn`` per model; dispatch is asynchronous, so they run concurrently.

Multi-host: call :func:`initialize_distributed` (i.e. ``jax.distributed.initialize``) on every
host before any other JAX call; ``jax.devices()`` then lists the devices of all hosts and the same
mesh code runs unchanged (every host passes the same numpy data; ``device_put`` checks that).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jnn.core import Layer, Shape
from jnn.errors import InputError
from jnn.train import (
    EpochMetrics,
    TrainState,
    ValueAndGrad,
    as_value_and_grad,
    epoch_step,
    init_train_state,
    validate_hyperparameters,
)

DATA_AXIS = "data"
MODEL_AXIS = "model"
FORCE_DEVICES_FLAG = "--xla_force_host_platform_device_count"


# --------------------------------------------------------------------------------------------
# Meshes and placement
# --------------------------------------------------------------------------------------------


def cpu_model() -> str:
    """The host CPU's model name (``/proc/cpuinfo``; else what ``platform`` knows): results and
    layout choices name the CPU, because XLA:CPU's code, its speed and its rounding differ by
    CPU."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _devices(num_devices: int | None) -> list[jax.Device]:
    devices = jax.devices()
    if num_devices is None:
        return devices
    if int(num_devices) != num_devices or num_devices <= 0:
        raise InputError(f"num_devices must be a positive integer or None, got {num_devices!r}")
    if num_devices > len(devices):
        platform = devices[0].platform
        raise InputError(
            f"asked for {num_devices} devices but only {len(devices)} {platform} device(s) "
            f"exist; to test with more on CPU, set JAX_PLATFORMS=cpu and "
            f"XLA_FLAGS={FORCE_DEVICES_FLAG}={num_devices} in the environment before JAX "
            "initialises (before the first jax call) to get that many host devices"
        )
    return devices[: int(num_devices)]


def data_mesh(num_devices: int | None = None, axis: str = DATA_AXIS) -> Mesh:
    """A 1-D mesh over the first ``num_devices`` devices (all when None) named ``axis``."""
    return Mesh(np.array(_devices(num_devices)), (axis,))


def model_mesh(num_devices: int | None = None, axis: str = MODEL_AXIS) -> Mesh:
    """A 1-D mesh for independent models: stacked models are split along ``axis``."""
    return data_mesh(num_devices, axis)


def _single_axis(mesh: Mesh, axis: str | None) -> str:
    if axis is None:
        if len(mesh.axis_names) != 1:
            raise InputError(f"mesh has axes {mesh.axis_names}; name the one to shard along")
        return mesh.axis_names[0]
    if axis not in mesh.axis_names:
        raise InputError(f"mesh has axes {mesh.axis_names}, not {axis!r}")
    return axis


def check_divisible(
    batch_size: int, mesh: Mesh, axis: str | None = None, what: str = "global batch size"
) -> int:
    """The number of devices on ``axis``; a clear ValueError unless ``batch_size`` divides by it
    (each device computes ``batch_size / devices`` rows of every step)."""
    axis = _single_axis(mesh, axis)
    size = mesh.shape[axis]
    if batch_size % size:
        raise InputError(
            f"{what} {batch_size} does not divide by the {size} devices of mesh axis "
            f"{axis!r}; use a multiple of {size} (each device gets batch_size / {size} rows)"
        )
    return size


def _host_local_to_numpy(leaf: Any) -> Any:
    if isinstance(leaf, jax.Array) and leaf.is_fully_addressable:
        return np.asarray(leaf)
    return leaf


def put(tree: Any, sharding: jax.sharding.Sharding) -> Any:
    """``jax.device_put(tree, sharding)`` that also works multi-host.

    With several processes, a global sharding accepts only numpy (or uncommitted) values that are
    equal on every process (``device_put`` checks), so host-local jax arrays (e.g. fresh params
    on a local device) go through numpy first; typed PRNG keys travel as their key data.
    Leaves that already carry ``sharding`` are returned as they are.
    """
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def one(leaf: Any) -> Any:
        if getattr(leaf, "sharding", None) == sharding:
            return leaf
        if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            data = jax.device_put(_host_local_to_numpy(jax.random.key_data(leaf)), sharding)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
        return jax.device_put(_host_local_to_numpy(leaf), sharding)

    return jax.tree.map(one, tree)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every leaf copied whole onto every device of ``mesh`` (sharding ``P()``)."""
    return put(tree, NamedSharding(mesh, P()))


def shard_batch(x: Any, mesh: Mesh, axis: str | None = None) -> Any:
    """Split every leaf's leading (batch) dimension across ``axis`` of ``mesh``.

    x: (B, ...) with B divisible by the axis size -> the same values, sharded ``P(axis)``.
    """
    axis = _single_axis(mesh, axis)
    size = mesh.shape[axis]
    for leaf in jax.tree.leaves(x):
        if np.ndim(leaf) == 0 or np.shape(leaf)[0] % size:
            raise InputError(
                f"leading dimension of shape {np.shape(leaf)} does not divide by the {size} "
                f"devices of mesh axis {axis!r}"
            )
    return put(x, NamedSharding(mesh, P(axis)))


def shard_models(stacked: Any, mesh: Mesh, axis: str | None = None) -> Any:
    """Stacked models (leading axis M, divisible by the device count) split one group per device."""
    return shard_batch(stacked, mesh, axis)


def stack_trees(trees: Sequence[Any]) -> Any:
    """[tree_0, ..., tree_{M-1}] (same structure) -> one tree whose leaves have a leading axis M."""
    if not trees:
        raise InputError("need at least one tree to stack")
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def unstack_tree(stacked: Any) -> list[Any]:
    """Inverse of :func:`stack_trees`."""
    leaves, treedef = jax.tree.flatten(stacked)
    return [
        jax.tree.unflatten(treedef, [leaf[i] for leaf in leaves]) for i in range(len(leaves[0]))
    ]


def init_stacked_states(
    keys: Array, model: Layer, optimizer: optax.GradientTransformation, input_shape: Shape
) -> TrainState:
    """M independent models, stacked: model i is exactly ``train.init_train_state(keys[i], ...)``
    (each initialised on its own, eagerly, unlike the one vmapped program of
    ``train.init_train_states``)."""
    return stack_trees([init_train_state(k, model, optimizer, input_shape) for k in list(keys)])


# --------------------------------------------------------------------------------------------
# Data-parallel epoch
# --------------------------------------------------------------------------------------------


class PlacedEpochFn:
    """``epoch(state, x, y) -> (state, metrics)`` that first places its inputs, then runs a jit.

    Inputs already carrying the target sharding are used as they are (and the state is donated);
    anything else (numpy, single-device arrays) is copied onto the mesh first. ``lower`` and
    ``compile`` expose the jit for HLO inspection; ``shardings`` are the (state, x, y) inputs'.
    """

    def __init__(self, jitted: Any, shardings: tuple[Any, Any, Any], mesh: Mesh, check: Callable):
        self.jitted = jitted
        self.shardings = shardings
        self.mesh = mesh
        self._check = check

    def place(self, state: TrainState, x: Any, y: Any) -> tuple[TrainState, Array, Array]:
        self._check(state, x, y)
        s_state, s_x, s_y = self.shardings
        return put(state, s_state), put(x, s_x), put(y, s_y)

    def __call__(self, state: TrainState, x: Any, y: Any) -> tuple[TrainState, EpochMetrics]:
        return self.jitted(*self.place(state, x, y))

    def lower(self, state: TrainState, x: Any, y: Any) -> Any:
        """The jit's lowering for these arguments (``.compile().as_text()`` gives the HLO)."""
        return self.jitted.lower(*self.place(state, x, y))

    def compile(self, state: TrainState, x: Any, y: Any) -> Any:
        """Ahead-of-time executable; call it on ``self.place(state, x, y)``; ``.as_text()``."""
        return self.lower(state, x, y).compile()


def make_sharded_epoch_fn(
    model: Layer | ValueAndGrad,
    optimizer: optax.GradientTransformation,
    batch_size: int,
    mesh: Mesh,
    gradients: str = "manual",
    axis: str | None = None,
    stacked: bool = False,
) -> PlacedEpochFn:
    """Data-parallel ``epoch(state, x, y) -> (state, metrics)`` over ``axis`` of ``mesh``.

    ``model``: a ``jnn.core.Layer`` (gradients by ``gradients``) or a value-and-grad function,
    as in ``train.make_epoch_fn``. ``batch_size`` is the global batch; it must divide by the
    number of devices on ``axis``. state, x (N, ...), y (N,) are replicated on the mesh (placed
    there if they are not), every step's batch is sharded along ``axis``
    (``train.epoch_step(batch_sharding=...)``, the very function single-device training runs);
    outputs are replicated. The placed state is donated.
    ``stacked=True``: the state holds M models along a leading axis (as in
    ``train.make_epoch_fn``), vmapped, each model's batches split the same way.
    """
    validate_hyperparameters(batch_size)
    value_and_grad = as_value_and_grad(model, gradients)
    axis = _single_axis(mesh, axis)
    check_divisible(batch_size, mesh, axis)
    replicated = NamedSharding(mesh, P())
    epoch = functools.partial(
        epoch_step,
        value_and_grad=value_and_grad,
        optimizer=optimizer,
        batch_size=batch_size,
        batch_sharding=NamedSharding(mesh, P(axis)),
    )
    jitted = jax.jit(
        jax.vmap(epoch, in_axes=(0, None, None)) if stacked else epoch,
        in_shardings=(replicated, replicated, replicated),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )

    def check(state: TrainState, x: Any, y: Any) -> None:
        validate_hyperparameters(batch_size, np.shape(x)[0])

    return PlacedEpochFn(jitted, (replicated, replicated, replicated), mesh, check)


# --------------------------------------------------------------------------------------------
# Independent models, one group per device
# --------------------------------------------------------------------------------------------


def make_per_device_models_fn(
    model: Layer | ValueAndGrad,
    optimizer: optax.GradientTransformation,
    batch_size: int,
    mesh: Mesh,
    gradients: str = "manual",
    axis: str | None = None,
) -> PlacedEpochFn:
    """``epoch(states, x, y) -> (states, metrics)`` for M stacked independent models.

    states: a TrainState whose leaves have a leading axis M (see :func:`stack_trees`,
    :func:`init_stacked_states`), M divisible by the devices on ``axis``; sharded ``P(axis)`` so
    each device holds and trains M / devices models. x (N, ...), y (N,) replicated. ``model``
    and ``gradients`` as in ``train.make_epoch_fn``. Returns stacked
    states (sharded the same way) and EpochMetrics with leaves of shape (M,). No collectives.
    """
    validate_hyperparameters(batch_size)
    value_and_grad = as_value_and_grad(model, gradients)
    axis = _single_axis(mesh, axis)
    size = mesh.shape[axis]
    per_model = functools.partial(
        epoch_step, value_and_grad=value_and_grad, optimizer=optimizer, batch_size=batch_size
    )
    by_model = NamedSharding(mesh, P(axis))
    replicated = NamedSharding(mesh, P())
    jitted = jax.jit(
        jax.vmap(per_model, in_axes=(0, None, None)),
        in_shardings=(by_model, replicated, replicated),
        out_shardings=(by_model, by_model),
        donate_argnums=0,
    )

    def check(states: TrainState, x: Any, y: Any) -> None:
        validate_hyperparameters(batch_size, np.shape(x)[0])
        counts = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in jax.tree.leaves(states)}
        if len(counts) != 1 or None in counts:
            raise InputError(
                "states must be stacked models: every leaf needs the same leading axis M "
                f"(got leading sizes {sorted(map(str, counts))}); use stack_trees"
            )
        (m,) = counts
        if m % size:
            raise InputError(
                f"{m} models do not split evenly over the {size} devices of mesh axis {axis!r}; "
                f"use a multiple of {size} models"
            )

    return PlacedEpochFn(jitted, (by_model, replicated, replicated), mesh, check)


# --------------------------------------------------------------------------------------------
# Inspection and multi-host start-up
# --------------------------------------------------------------------------------------------

_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


def count_collectives(hlo_text: str) -> dict[str, int]:
    """How many of each cross-device collective a compiled HLO text contains (``-start`` ops too).

    Use ``fn.lower(*args).compile().as_text()``.
    """
    return {name: len(re.findall(rf"\b{name}(?:-start)?\(", hlo_text)) for name in _COLLECTIVES}


def tree_max_diff(a: Any, b: Any) -> dict[str, float]:
    """How far tree ``a`` is from the reference ``b`` (same structure).

    max_abs: max |a - b| over all elements; max_rel: max over leaves of max|a - b| / max|b|
    (leaf-wise, so elements that happen to sit near zero do not blow it up).
    """
    abs_d, rel_d = 0.0, 0.0
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        u = np.asarray(u, np.float64)
        v = np.asarray(v, np.float64)
        d = float(np.abs(u - v).max(initial=0.0))
        abs_d = max(abs_d, d)
        rel_d = max(rel_d, d / max(float(np.abs(v).max(initial=0.0)), 1e-30))
    return {"max_abs": abs_d, "max_rel": rel_d}


def initialize_distributed() -> bool:
    """``jax.distributed.initialize`` from environment variables; call before any other JAX call.

    Reads JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES and JAX_PROCESS_ID
    (0 .. JAX_NUM_PROCESSES-1). Returns False (and does nothing) when JAX_NUM_PROCESSES is unset or
    1, so single-host runs need nothing. On Slurm/Open MPI/TPU pods plain
    ``jax.distributed.initialize()`` detects all of this itself.
    """
    num = int(os.environ.get("JAX_NUM_PROCESSES", "1"))
    if num <= 1:
        return False
    address = os.environ.get("JAX_COORDINATOR_ADDRESS")
    pid = os.environ.get("JAX_PROCESS_ID")
    if not address or pid is None:
        raise InputError(
            "multi-host run needs JAX_COORDINATOR_ADDRESS=host:port and JAX_PROCESS_ID=0..N-1 "
            f"alongside JAX_NUM_PROCESSES={num}"
        )
    jax.distributed.initialize(coordinator_address=address, num_processes=num, process_id=int(pid))
    return True


__all__ = [
    "DATA_AXIS",
    "MODEL_AXIS",
    "PlacedEpochFn",
    "count_collectives",
    "check_divisible",
    "data_mesh",
    "init_stacked_states",
    "initialize_distributed",
    "make_per_device_models_fn",
    "make_sharded_epoch_fn",
    "model_mesh",
    "put",
    "replicate",
    "shard_batch",
    "shard_models",
    "stack_trees",
    "tree_max_diff",
    "unstack_tree",
]
