"""Multi-device checks for jnn.parallel, run by tests/test_parallel.py in a subprocess.

XLA_FLAGS=--xla_force_host_platform_device_count=4 must be set before JAX initialises, so this
runs as its own process: ``python tests/_parallel_checks.py`` prints one JSON line with every
measured difference, sharding and collective count; the pytest side asserts on it.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import time
from pathlib import Path

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    os.environ["XLA_FLAGS"] = flags.strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from jnn import parallel as par  # noqa: E402
from jnn import train  # noqa: E402
from jnn.mlp import mlp  # noqa: E402

SIZES = (784, 256, 128, 64, 10)
N = 1024
ACTIVATION = "relu"
MODEL = mlp(SIZES, ACTIVATION, "he")  # one value for every epoch function and state below


def dataset() -> tuple[np.ndarray, np.ndarray]:
    """A learnable synthetic set: labels from a random linear teacher. x (N, 784), y (N,) int32."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, SIZES[0])).astype(np.float32)
    y = np.argmax(x @ rng.normal(size=(SIZES[0], SIZES[-1])), axis=1).astype(np.int32)
    return x, y


def fresh(state):
    """A private copy (the epoch functions donate their state)."""
    return jax.tree.map(jnp.copy, state)


def spec_str(tree) -> list[str]:
    return sorted({str(leaf.sharding.spec) for leaf in jax.tree.leaves(tree)})


def mesh_sizes(tree) -> list[int]:
    return sorted({leaf.sharding.mesh.size for leaf in jax.tree.leaves(tree)})


def run_reference(state, x, y, optimizer, batch_size, epochs, gradients="manual"):
    epoch = train.make_epoch_fn(MODEL, optimizer, batch_size, gradients)
    out = []
    state = fresh(state)
    for _ in range(epochs):
        state, metrics = epoch(state, x, y)
        out.append((fresh(state), metrics))
    return out


def run_compiled(compiled, epoch, state, x, y):
    """Run an ahead-of-time compiled epoch on inputs placed the way ``epoch`` places them."""
    return compiled(*epoch.place(state, x, y))


def check_data_parallel(x, y) -> dict:
    results = {}
    cases = [
        ("sgd", optax.sgd(0.1), 32, "manual", (2, 4)),
        # Adam's default eps=1e-8 turns rounding noise in near-zero gradients into ~lr-sized
        # steps, so its tolerance is much looser than SGD's (see test_parallel.py).
        ("adam", optax.adam(1e-3), 32, "manual", (4,)),
        ("sgd_autodiff_b64", optax.sgd(0.1), 64, "autodiff", (4,)),
    ]
    for name, optimizer, batch_size, gradients, device_counts in cases:
        state0 = train.init_train_state(jax.random.key(1), MODEL, optimizer, SIZES[:1])
        ref = run_reference(state0, x, y, optimizer, batch_size, 2, gradients)
        for devices in device_counts:
            mesh = par.data_mesh(devices)
            epoch = par.make_sharded_epoch_fn(MODEL, optimizer, batch_size, mesh, gradients)
            xs, ys = par.replicate((x, y), mesh)
            state = par.replicate(fresh(state0), mesh)
            run = epoch
            if name == "sgd":  # one compile serves both the HLO checks and the run
                compiled = epoch.compile(state, xs, ys)
                run = functools.partial(run_compiled, compiled, epoch)
            # One step from the same state on the same batch (an epoch of ``batch_size`` examples):
            # the per-step agreement, whatever the trajectory does later (see test_parallel.py).
            one = slice(0, batch_size)
            r_one, _ = train.make_epoch_fn(MODEL, optimizer, batch_size, gradients)(
                fresh(state0), x[one], y[one]
            )
            s_one, _ = epoch(par.replicate(fresh(state0), mesh), x[one], y[one])
            entry = {"epochs": [], "first_step": par.tree_max_diff(s_one.params, r_one.params)}
            for r_state, r_metrics in ref:
                donated = state
                state, metrics = run(state, xs, ys)
                entry["epochs"].append(
                    {
                        "params": par.tree_max_diff(state.params, r_state.params),
                        "opt_state": par.tree_max_diff(state.opt_state, r_state.opt_state),
                        "loss": abs(float(metrics.loss) - float(r_metrics.loss)),
                        "accuracy": abs(float(metrics.accuracy) - float(r_metrics.accuracy)),
                        "key_equal": bool(
                            np.array_equal(
                                jax.random.key_data(state.key), jax.random.key_data(r_state.key)
                            )
                        ),
                        "epoch": int(state.epoch),
                    }
                )
            # Whether the runtime frees donated inputs varies (jax 0.10.2 CPU: yes; 0.11.2 CPU with
            # forced devices: no); that the program asks for it (input/output aliasing) does not.
            entry["donated_deleted"] = bool(jax.tree.leaves(donated.params)[0].is_deleted())
            lowered = epoch.lower(fresh(state0), x, y).as_text()
            entry["aliased_outputs"] = len(
                re.findall(r"tf\.aliasing_output|jax\.buffer_donor", lowered)
            )
            entry["state_specs"] = spec_str(state)
            entry["metric_specs"] = spec_str(metrics)
            entry["mesh_sizes"] = mesh_sizes((state, metrics))
            entry["final_loss"] = float(metrics.loss)
            entry["initial_loss"] = float(ref[0][1].loss)
            if name == "sgd":
                hlo = compiled.as_text()
                entry["collectives"] = par.count_collectives(hlo)
                local = batch_size // devices
                entry["local_dot"] = bool(re.search(rf"f32\[{local},256\]\S* dot\(", hlo))
                entry["global_dot"] = bool(re.search(rf"f32\[{batch_size},256\]\S* dot\(", hlo))
                entry["grad_all_reduce"] = any(
                    "all-reduce(" in line and "f32[784,256]" in line for line in hlo.splitlines()
                )
            results[f"{name}/{devices}"] = entry
    return results


def check_per_device_models(x, y) -> dict:
    optimizer = optax.sgd(0.1)
    results = {}
    keys = jax.random.split(jax.random.key(2), 8)
    singles = [
        s
        for s, _ in (
            run_reference(
                train.init_train_state(k, MODEL, optimizer, SIZES[:1]), x, y, optimizer, 32, 1
            )[0]
            for k in keys
        )
    ]
    for num_models in (4, 8):
        mesh = par.model_mesh(4)
        epoch = par.make_per_device_models_fn(MODEL, optimizer, 32, mesh)
        stacked = par.init_stacked_states(keys[:num_models], MODEL, optimizer, SIZES[:1])
        placed = epoch.place(stacked, x, y)
        compiled = epoch.compile(*placed)
        hlo = compiled.as_text()
        states, metrics = compiled(*placed)
        diffs = [
            par.tree_max_diff(s.params, r.params)
            for s, r in zip(par.unstack_tree(states), singles[:num_models])
        ]
        shard_rows = sorted(
            {int(s.data.shape[0]) for s in jax.tree.leaves(states.params)[0].addressable_shards}
        )
        results[str(num_models)] = {
            "max_abs": max(d["max_abs"] for d in diffs),
            "max_rel": max(d["max_rel"] for d in diffs),
            "bit_identical": all(d["max_abs"] == 0.0 for d in diffs),
            "collectives": par.count_collectives(hlo),
            "state_specs": spec_str(states),
            "metric_specs": spec_str(metrics),
            "metric_shape": list(metrics.loss.shape),
            "rows_per_device": shard_rows,
        }
    return results


def check_errors() -> dict:
    out = {}
    for name, thunk in {
        "too_many_devices": lambda: par.data_mesh(8),
        "batch_not_divisible": lambda: par.make_sharded_epoch_fn(
            MODEL, optax.sgd(0.1), 30, par.data_mesh(4)
        ),
        "models_not_divisible": lambda: par.make_per_device_models_fn(
            MODEL, optax.sgd(0.1), 32, par.model_mesh(4)
        )(
            par.init_stacked_states(
                jax.random.split(jax.random.key(0), 6), MODEL, optax.sgd(0.1), SIZES[:1]
            ),
            *dataset(),
        ),
        "shard_batch_not_divisible": lambda: par.shard_batch(np.zeros((6, 3)), par.data_mesh(4)),
    }.items():
        try:
            thunk()
            out[name] = None
        except ValueError as e:
            out[name] = str(e)
    return out


def small_epoch() -> dict:
    """One data-parallel epoch of a small MLP over all (global) devices; run multi-process too."""
    x, y = dataset()
    optimizer = optax.sgd(0.1)
    mesh = par.data_mesh()
    model = mlp((784, 64, 10), ACTIVATION, "he")
    epoch = par.make_sharded_epoch_fn(model, optimizer, 32, mesh)
    state = par.replicate(train.init_train_state(jax.random.key(3), model, optimizer, (784,)), mesh)
    state, metrics = epoch(state, *par.replicate(dataset(), mesh))
    w = np.asarray(state.params[0]["w"].addressable_data(0), np.float64)
    return {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "local_devices": jax.local_device_count(),
        "global_devices": jax.device_count(),
        "loss": float(np.asarray(metrics.loss.addressable_data(0))),
        "w_sum": float(w.sum()),
        "w_abs_sum": float(np.abs(w).sum()),
    }


def main() -> None:
    if "--multihost" in sys.argv:  # JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID
        par.initialize_distributed()
        print(json.dumps(small_epoch()))
        return
    start = time.perf_counter()
    x, y = dataset()
    report = {
        "devices": len(jax.devices()),
        "data_parallel": check_data_parallel(x, y),
        "per_device_models": check_per_device_models(x, y),
        "errors": check_errors(),
        "multihost_reference": small_epoch(),
    }
    report["seconds"] = time.perf_counter() - start
    print(json.dumps(report))


if __name__ == "__main__":
    main()
