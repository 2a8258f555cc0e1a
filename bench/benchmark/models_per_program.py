"""Section ``models_per_program``: model-epochs/s with k models vmapped into one XLA program."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

from bench.benchmark.common import (
    LEARNING_RATE,
    MODEL,
    SIZES,
    Context,
    epoch_case,
    fresh_state,
    make_vmapped_epoch_fn,
    rate_fields,
    stacked_states,
    train_flops_per_example,
)
from bench.benchmark.config import BATCH_SIZE, Config
from jnn.timing import compile_timed, time_interleaved
from jnn.train import make_epoch_fn

BASELINE = "the faster of 1 model plain (train.make_epoch_fn) and 1 model vmapped"


def measure(cfg: Config, ctx: Context) -> dict[str, Any]:
    """1 model plain (the baseline) and k = cfg.models models vmapped, data shared, interleaved."""
    optimizer = optax.sgd(LEARNING_RATE)
    x, y = jax.device_put(ctx.data["x_train"]), jax.device_put(ctx.data["y_train"])
    n = ctx.data["x_train"].shape[0]
    cases: dict[str, Callable[[int], Any]] = {}
    compile_s: dict[str, float] = {}
    models = {"1_plain": 1}
    state = fresh_state(cfg.seed, optimizer)
    plain = make_epoch_fn(MODEL, optimizer, BATCH_SIZE)
    compiled, compile_s["1_plain"] = compile_timed(plain, state, x, y)
    cases["1_plain"] = epoch_case(compiled, state, x, y)
    vmapped = make_vmapped_epoch_fn(optimizer)
    for k in cfg.models:
        name = f"{k}_vmap"
        states = stacked_states(cfg.seed, k, optimizer)
        compiled_k, compile_s[name] = compile_timed(vmapped, states, x, y)
        cases[name], models[name] = epoch_case(compiled_k, states, x, y), k
    times = time_interleaved(cases, cfg.reps, cfg.warmup)
    per_epoch = train_flops_per_example(SIZES) * (n // BATCH_SIZE * BATCH_SIZE)
    results = {}
    for name, s in times.items():
        k = models[name]
        r = rate_fields(s, k, per_epoch * k, ctx.ceiling, "model_epochs_per_s")
        results[name] = r | {"models": k, "compile_s": compile_s[name]}
    base = max(r["model_epochs_per_s"] for name, r in results.items() if r["models"] == 1)
    for r in results.values():
        r["speedup_vs_1"] = r["model_epochs_per_s"] / base
    return {"status": "ok", "examples": n, "baseline": BASELINE, "results": results}
