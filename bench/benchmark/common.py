"""What the MLP sections share: the study's network, FLOP counts, data, environment, builders.

FLOPs are counted exactly from the layer sizes (:func:`train_flops_per_example`); elementwise
work (bias, ReLU, softmax, SGD update) is not counted, so GFLOP/s is matmul work per second.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from bench import baselines
from bench.benchmark.config import BATCH_SIZE
from experiments import harness
from jnn import core
from jnn.errors import InputError
from jnn.mlp import mlp
from jnn.study import StudyConfig
from jnn.train import epoch_step, init_train_state

SIZES: tuple[int, ...] = StudyConfig().sizes  # the study's widths (ends: the dataset entry)
LEARNING_RATE = 0.1
ACTIVATION = "relu"
INIT = "normal"
MODEL = mlp(SIZES, ACTIVATION, INIT)  # the study's MLP, the one network every MLP case runs
MIN_SAMPLE_S = 0.05  # short calls (matmul, forward pass) are repeated to about this per sample

FLOP_FORMULA = (
    "MACs = sum_i n_i * n_(i+1) over consecutive layer sizes n_0..n_L; "
    "forward = 2 * MACs per example; backward = 4 * MACs - 2 * n_0 * n_1 per example "
    "(weight gradients 2 * MACs, input gradients 2 * MACs, minus the first layer's input "
    "gradient that nobody needs); training step = forward + backward = 6 * MACs - 2 * n_0 * n_1. "
    "Bias adds, activations, softmax and the SGD update are not counted."
)


class Context(NamedTuple):
    """What a section needs besides the Config: resolved at the start of :func:`run`."""

    data: dict[str, np.ndarray]
    torch_device: str | None  # None: torch unavailable (see torch_reason)
    torch_reason: str
    blas_note: str
    ceiling: float | None = None  # XLA matmul GFLOP/s, once the ceiling section ran
    scaling: dict[str, Any] | None = None  # bench.scaling's result, once the devices section ran


# ------------------------------------------------------------------------------------- FLOPs


def macs_per_example(sizes: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass of one example."""
    return sum(int(a) * int(b) for a, b in zip(sizes[:-1], sizes[1:]))


def forward_flops_per_example(sizes: Sequence[int]) -> int:
    """2 * MACs: the matmul FLOPs of one example's forward pass."""
    return 2 * macs_per_example(sizes)


def backward_flops_per_example(sizes: Sequence[int]) -> int:
    """4 * MACs minus the first layer's input gradient (2 * n_0 * n_1), which is not needed."""
    return 4 * macs_per_example(sizes) - 2 * int(sizes[0]) * int(sizes[1])


def train_flops_per_example(sizes: Sequence[int]) -> int:
    """Forward + backward matmul FLOPs of one example: 6 * MACs - 2 * n_0 * n_1."""
    return forward_flops_per_example(sizes) + backward_flops_per_example(sizes)


def rate_fields(
    summary: dict[str, Any], work_items: float, flops: float, ceiling: float | None, unit: str
) -> dict[str, Any]:
    """A timing summary plus ``unit`` (items per second), GFLOP/s and the share of the ceiling."""
    median = summary["median_s"]
    out = dict(summary)
    out[unit] = work_items / median
    out["gflops"] = flops / median / 1e9
    if ceiling:
        out["fraction_of_xla_ceiling"] = out["gflops"] / ceiling
    return out


def add_time_vs(results: dict[str, dict[str, Any]], reference: str) -> None:
    """``time_vs_jnn`` = median time / the reference case's median time, in place."""
    ref = results[reference]["median_s"]
    for r in results.values():
        r["time_vs_jnn"] = r["median_s"] / ref


# ------------------------------------------------------------------------ data, environment


def _fashion(n_train: int, n_eval: int) -> dict[str, np.ndarray]:
    from jnn.data import load_splits

    s = load_splits("seed", download=False)
    return {
        "x_train": s.x_train[:n_train],
        "y_train": s.y_train[:n_train].astype(np.int32),
        "x_eval": np.concatenate([s.x_val, s.x_test])[:n_eval],
        "y_eval": np.concatenate([s.y_val, s.y_test])[:n_eval].astype(np.int32),
    }


def get_data(kind: str, n_train: int, n_eval: int, seed: int) -> tuple[dict[str, np.ndarray], str]:
    """Training and evaluation arrays (float32 (N, 784), int32 (N,)) and where they came from.

    ``fashion``: the real Fashion-MNIST "seed" split (files must already be on disk; nothing is
    downloaded). ``synthetic``: uniform [0, 1) pixels and random labels of the same shapes (the
    cost of a dense ReLU network does not depend on the values). ``auto``: fashion if present.
    """
    if kind in ("auto", "fashion"):
        try:
            data = _fashion(n_train, n_eval)
        except Exception as err:  # missing module or files: fall back (auto) or fail (fashion)
            if kind == "fashion":
                raise InputError(f"--data fashion: cannot load Fashion-MNIST ({err})") from err
        else:
            return data, "fashion-mnist (seed split: first train rows, then val + test rows)"
    rng = np.random.default_rng(seed)
    data = {
        "x_train": rng.random((n_train, SIZES[0]), dtype=np.float32),
        "y_train": rng.integers(0, SIZES[-1], n_train).astype(np.int32),
        "x_eval": rng.random((n_eval, SIZES[0]), dtype=np.float32),
        "y_eval": rng.integers(0, SIZES[-1], n_eval).astype(np.int32),
    }
    return data, "synthetic (uniform pixels, random labels; same shapes as Fashion-MNIST)"


def _blas() -> list[dict[str, Any]] | str:
    try:
        from threadpoolctl import threadpool_info
    except Exception as err:  # threadpoolctl ships with scikit-learn; report if it is missing
        return f"unavailable: {err}"
    keys = ("user_api", "internal_api", "architecture", "num_threads", "version")
    return [{k: info.get(k) for k in keys} for info in threadpool_info()]


def _torch_env(torch_device: str | None) -> dict[str, Any]:
    ok, why = baselines.torch_status()
    if not ok:
        return {"unavailable": why}
    import torch

    env = {
        "version": torch.__version__,
        "device": torch_device,
        "num_threads": torch.get_num_threads(),
        "num_interop_threads": torch.get_num_interop_threads(),
        "cuda_available": torch.cuda.is_available(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    if torch_device == "cuda":
        env["cuda_device"] = torch.cuda.get_device_name()
    return env


def environment(torch_device: str | None) -> dict[str, Any]:
    """harness.stamp() (versions, device) plus JAX, BLAS and torch thread settings."""
    env: dict[str, Any] = harness.stamp()
    env["jax"] = {
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "default_matmul_precision": str(jax.config.jax_default_matmul_precision),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "xla_python_client_preallocate": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE", ""),
    }
    env["blas"] = _blas()
    env["openblas_coretype"] = os.environ.get("OPENBLAS_CORETYPE", "(unset: detected by OpenBLAS)")
    env["torch"] = _torch_env(torch_device)
    return env


def blas_note(env: dict[str, Any]) -> str:
    """numpy's BLAS in one line (library, version, core type, threads)."""
    pools = env["blas"] if isinstance(env["blas"], list) else []
    blas = next((p for p in pools if p.get("user_api") == "blas"), {})
    return (
        f"{blas.get('internal_api', 'BLAS')} {blas.get('version', '')} "
        f"(core type {blas.get('architecture', '?')}, {blas.get('num_threads', '?')} threads; "
        f"OPENBLAS_CORETYPE={env['openblas_coretype']})"
    )


# ------------------------------------------------------------------- builders for jnn cases


def fresh_params(seed: int) -> Any:
    """The study's MLP's params (``MODEL.init`` from ``key(seed)``, its default initializer)."""
    return MODEL.init(jax.random.key(seed), (SIZES[0],))[1]


def fresh_state(seed: int, optimizer: optax.GradientTransformation) -> Any:
    """A ``train.TrainState`` of the study's MLP from ``key(seed)``."""
    return init_train_state(jax.random.key(seed), MODEL, optimizer, (SIZES[0],))


def make_vmapped_epoch_fn(optimizer: optax.GradientTransformation, gradients: str = "manual"):
    """``jax.vmap`` of :func:`jnn.train.epoch_step` over stacked states; data shared; jitted."""
    fn = partial(
        epoch_step,
        value_and_grad=core.value_and_grad(MODEL, gradients),
        optimizer=optimizer,
        batch_size=BATCH_SIZE,
    )
    return jax.jit(jax.vmap(fn, in_axes=(0, None, None)), donate_argnums=0)


def stacked_states(seed: int, num_models: int, optimizer: optax.GradientTransformation) -> Any:
    """``num_models`` TrainStates from different keys, stacked along a leading axis."""

    def one(key):
        return init_train_state(key, MODEL, optimizer, (SIZES[0],))

    return jax.vmap(one)(jax.random.split(jax.random.key(seed), num_models))


def epoch_case(compiled: Any, state: Any, x: Any, y: Any) -> Any:
    """A blocking ``case(calls)`` running ``compiled(state, x, y)``, its donated state carried."""
    box = [state]

    def run(calls: int) -> None:
        for _ in range(calls):
            box[0], metrics = compiled(box[0], x, y)
            jax.block_until_ready((box[0], metrics))

    return run
