"""Section ``evaluation``: the MLP's forward pass over the evaluation examples, one call each."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax

from bench import baselines
from bench.benchmark.common import (
    LEARNING_RATE,
    MIN_SAMPLE_S,
    MODEL,
    SIZES,
    Context,
    add_time_vs,
    forward_flops_per_example,
    fresh_params,
    rate_fields,
)
from bench.benchmark.config import BATCH_SIZE, Config
from jnn import core, reference
from jnn.mlp import dense_params
from jnn.timing import compile_timed, repeated, time_interleaved


def _jnn_case(params: Any, x: Any) -> tuple[Callable[[int], None], float]:
    model_state = MODEL.init(jax.random.key(0), (SIZES[0],))[2]
    forward = jax.jit(partial(core.apply, MODEL))
    forward_c, compile_s = compile_timed(forward, params, model_state, x)

    def jnn_forward(calls: int) -> None:
        jax.block_until_ready([forward_c(params, model_state, x) for _ in range(calls)])

    return jnn_forward, compile_s


def measure(cfg: Config, ctx: Context) -> dict[str, Any]:
    """jnn's jitted forward against numpy, PyTorch eager and scikit-learn's predict."""
    x_np, data = ctx.data["x_eval"], ctx.data
    n = x_np.shape[0]
    params = fresh_params(cfg.seed)
    weights = baselines.weights_from_jnn(dense_params(params))
    jnn_forward, compile_s = _jnn_case(params, jax.device_put(x_np))
    cases: dict[str, Callable[[int], Any]] = {"jnn_forward": jnn_forward}
    skipped: dict[str, str] = {}
    numpy_model = baselines.NumpyMLP(weights)
    cases["numpy_loop"] = repeated(lambda: numpy_model.predict(x_np))
    if ctx.torch_device is not None:
        torch_model = baselines.TorchMLP(weights, device=ctx.torch_device)
        xt, _ = torch_model.to_device(x_np)
        cases["torch_eager"] = repeated(lambda: torch_model.predict(xt))
    else:
        skipped["torch_eager"] = ctx.torch_reason
    sk = reference.make_classifier(
        SIZES[1:-1], "relu", lr=LEARNING_RATE, batch_size=BATCH_SIZE, seed=cfg.seed
    )
    few = slice(0, BATCH_SIZE * 4)  # a fitted model to predict with; its accuracy is not timed
    reference.train_epoch(sk, data["x_train"][few], data["y_train"][few], SIZES[-1])
    cases["sklearn_mlp"] = repeated(lambda: sk.predict_proba(x_np))
    times = time_interleaved(cases, cfg.reps, cfg.warmup, MIN_SAMPLE_S)
    flops = forward_flops_per_example(SIZES) * n
    results = {
        name: rate_fields(s, n, flops, ctx.ceiling, "examples_per_s") for name, s in times.items()
    }
    results["jnn_forward"]["compile_s"] = compile_s
    add_time_vs(results, "jnn_forward")
    return {"status": "ok", "examples": n, "results": results, "skipped": skipped}
