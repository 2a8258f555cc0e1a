"""Section ``ceiling``: the machine's own ceiling, one 2048^3 float32 matmul (XLA, numpy, torch)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bench.benchmark.common import MIN_SAMPLE_S, Context, rate_fields
from bench.benchmark.config import Config
from jnn.timing import compile_timed, repeated, time_interleaved

CEILING_N = 2048


def _torch_case(a_np: np.ndarray, b_np: np.ndarray, device: str) -> Callable[[int], None]:
    import torch

    ta, tb = torch.from_numpy(a_np).to(device), torch.from_numpy(b_np).to(device)

    def torch_mm(calls: int) -> None:
        for _ in range(calls):
            ta @ tb
        if device == "cuda":
            torch.cuda.synchronize()

    return torch_mm


def measure(cfg: Config, ctx: Context) -> dict[str, Any]:
    """Interleaved matmul timings; ``xla_ceiling_gflops`` is what the other sections divide by."""
    n = CEILING_N
    rng = np.random.default_rng(cfg.seed)
    a_np = rng.standard_normal((n, n), dtype=np.float32)
    b_np = rng.standard_normal((n, n), dtype=np.float32)
    a, b = jax.device_put(a_np), jax.device_put(b_np)
    matmul, compile_s = compile_timed(jax.jit(jnp.matmul), a, b)

    def xla_mm(calls: int) -> None:
        jax.block_until_ready([matmul(a, b) for _ in range(calls)])  # dispatch is asynchronous

    cases: dict[str, Callable[[int], Any]] = {
        "xla_matmul": xla_mm,
        "numpy_matmul": repeated(lambda: a_np @ b_np),
    }
    skipped: dict[str, str] = {}
    if ctx.torch_device is not None:
        cases["torch_matmul"] = _torch_case(a_np, b_np, ctx.torch_device)
    else:
        skipped["torch_matmul"] = ctx.torch_reason
    times = time_interleaved(cases, cfg.reps, cfg.warmup, MIN_SAMPLE_S)
    flops = 2 * n**3
    results = {name: rate_fields(s, 1, flops, None, "matmuls_per_s") for name, s in times.items()}
    results["xla_matmul"]["compile_s"] = compile_s
    return {
        "status": "ok",
        "shape": [n, n, n],
        "flops_per_matmul": flops,
        "results": results,
        "skipped": skipped,
        "xla_ceiling_gflops": results["xla_matmul"]["gflops"],
        "note": note(ctx.blas_note),
    }


def note(blas_note: str) -> str:
    """Which library each ceiling figure comes from, and the float32 precision caveat."""
    text = f"numpy: {blas_note}. XLA: its own CPU dot emitters (Eigen/YNNPACK) or cuBLAS."
    if jax.default_backend() == "gpu":
        text += (
            " On a GPU, JAX's default float32 matmul rounds its operands to TF32 (set "
            "jax_default_matmul_precision=highest for float32); every jnn case runs under the "
            "same setting, and PyTorch's CUDA matmuls and cuDNN convolutions are set to match "
            "(Environment, float32 arithmetic)."
        )
    return text
