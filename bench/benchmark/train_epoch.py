"""Section ``train_epoch``: one epoch of the study's MLP per implementation, interleaved.

jnn's scanned epoch (manual backprop and ``jax.grad``), a jitted step per batch driven by a
Python loop, the original study's float32 numpy loop, PyTorch eager and scikit-learn (plain SGD).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

from bench import baselines
from bench.benchmark.common import (
    LEARNING_RATE,
    MODEL,
    SIZES,
    Context,
    add_time_vs,
    epoch_case,
    fresh_params,
    fresh_state,
    rate_fields,
    train_flops_per_example,
)
from bench.benchmark.config import BATCH_SIZE, Config
from jnn import core, reference
from jnn.mlp import dense_params
from jnn.timing import Stopwatch, compile_timed, repeated, time_interleaved
from jnn.train import make_epoch_fn

REFERENCE = "jnn_scan_manual"
Case = Callable[[int], Any]


def make_step_fn(optimizer: optax.GradientTransformation, gradients: str = "manual") -> Any:
    """A jitted single SGD step ``(params, opt_state, x, y, batches, i) -> (params, opt, loss)``.

    It gathers batch ``i`` of the (num_batches, batch) index array inside the program, so each
    Python-loop iteration is exactly one dispatch. params and opt_state are donated.
    """
    value_and_grad = core.value_and_grad(MODEL, gradients)
    model_state = MODEL.init(jax.random.key(0), (SIZES[0],))[2]  # the MLP's: empty tuples

    def step(params, opt_state, x, y, batches, i):
        idx = batches[i]
        (loss, _, _), grads = value_and_grad(params, model_state, x[idx], y[idx])
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1))


def make_permutation_fn(n: int, batch_size: int) -> Any:
    """A jitted ``key -> (next key, (num_batches, batch_size) shuffled indices)``."""
    num_batches = n // batch_size

    def permute(key):
        key, sub = jax.random.split(key)
        perm = jax.random.permutation(sub, n)[: num_batches * batch_size]
        return key, perm.reshape(num_batches, batch_size)

    return jax.jit(permute)


def _scan_cases(cfg: Config, optimizer, x, y) -> tuple[dict[str, Case], dict[str, float]]:
    cases, compile_s = {}, {}
    for name, gradients in (("jnn_scan_manual", "manual"), ("jnn_scan_autodiff", "autodiff")):
        epoch_fn = make_epoch_fn(MODEL, optimizer, BATCH_SIZE, gradients)
        state = fresh_state(cfg.seed, optimizer)
        compiled, compile_s[name] = compile_timed(epoch_fn, state, x, y)
        cases[name] = epoch_case(compiled, state, x, y)
    return cases, compile_s


def _step_loop_case(cfg: Config, optimizer, x, y) -> tuple[Case, float]:
    """The jitted step per batch, driven by a Python loop (one dispatch per batch)."""
    n = x.shape[0]
    step_fn, permute = make_step_fn(optimizer), make_permutation_fn(n, BATCH_SIZE)
    params = fresh_params(cfg.seed)
    opt_state = optimizer.init(params)
    key, batches = permute(jax.random.key(cfg.seed))
    with Stopwatch() as sw:
        step_c = step_fn.lower(params, opt_state, x, y, batches, 0).compile()
        permute_c = permute.lower(key).compile()
    box = [(params, opt_state, key)]

    def run_loop() -> None:
        params, opt_state, key = box[0]
        key, batches = permute_c(key)
        loss = None
        for i in range(batches.shape[0]):
            params, opt_state, loss = step_c(params, opt_state, x, y, batches, i)
        jax.block_until_ready((params, loss))
        box[0] = (params, opt_state, key)

    return repeated(run_loop), sw.s


def _reference_cases(cfg: Config, ctx: Context, skipped: dict[str, str]) -> dict[str, Any]:
    """numpy, torch (if available) and scikit-learn cases from the same initial weights."""
    x_np, y_np = ctx.data["x_train"], ctx.data["y_train"]
    weights0 = baselines.weights_from_jnn(dense_params(fresh_params(cfg.seed)))
    numpy_model = baselines.NumpyMLP(weights0, LEARNING_RATE, BATCH_SIZE, cfg.seed)
    cases: dict[str, Any] = {"numpy_loop": repeated(lambda: numpy_model.train_epoch(x_np, y_np))}
    if ctx.torch_device is not None:
        torch_model = baselines.TorchMLP(
            weights0, LEARNING_RATE, BATCH_SIZE, ctx.torch_device, cfg.seed
        )
        xt, yt = torch_model.to_device(x_np, y_np)
        cases["torch_eager"] = repeated(lambda: torch_model.train_epoch(xt, yt))
    else:
        skipped["torch_eager"] = ctx.torch_reason
    sk = reference.make_classifier(
        SIZES[1:-1], "relu", lr=LEARNING_RATE, batch_size=BATCH_SIZE, seed=cfg.seed
    )
    cases["sklearn_mlp"] = repeated(lambda: reference.train_epoch(sk, x_np, y_np, SIZES[-1]))
    cases["_sklearn"] = sk  # not a case: its settings go into the result
    return cases


def measure(cfg: Config, ctx: Context) -> dict[str, Any]:
    """Interleaved epochs; examples/s, GFLOP/s, share of the ceiling, time vs jnn."""
    optimizer = optax.sgd(LEARNING_RATE)
    n = ctx.data["x_train"].shape[0]
    n_used = n // BATCH_SIZE * BATCH_SIZE
    x, y = jax.device_put(ctx.data["x_train"]), jax.device_put(ctx.data["y_train"])
    cases, compile_s = _scan_cases(cfg, optimizer, x, y)
    cases["jnn_step_loop"], compile_s["jnn_step_loop"] = _step_loop_case(cfg, optimizer, x, y)
    skipped: dict[str, str] = {}
    cases |= _reference_cases(cfg, ctx, skipped)
    sk = cases.pop("_sklearn")
    times = time_interleaved(cases, cfg.reps, cfg.warmup)
    per_example = train_flops_per_example(SIZES)
    results: dict[str, dict[str, Any]] = {}
    for name, summary in times.items():
        examples = n if name == "sklearn_mlp" else n_used  # sklearn keeps the partial batch
        flops = per_example * examples
        results[name] = rate_fields(summary, examples, flops, ctx.ceiling, "examples_per_s")
        if name in compile_s:
            results[name]["compile_s"] = compile_s[name]
    add_time_vs(results, REFERENCE)
    return {
        "status": "ok",
        "examples": n,
        "examples_per_epoch_used": n_used,
        "steps_per_epoch": n_used // BATCH_SIZE,
        "flops_per_epoch": per_example * n_used,
        "results": results,
        "skipped": skipped,
        "sklearn_settings": reference.settings(sk),
    }
