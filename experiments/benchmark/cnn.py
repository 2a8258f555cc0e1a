"""Section ``cnn``: one Adam train step of the CNN (``experiments.cnn.build_model``), batch 128.

Conv2D(32,3) ReLU MaxPool Conv2D(64,3) ReLU MaxPool Flatten Dense(128) ReLU Dropout(0.5)
Dense(10) on 28x28x1 inputs. Three cases, interleaved, each sample ``--cnn-steps`` steps:

* ``jnn_manual``: a jitted step whose gradients come from the layers' hand-written backward;
* ``jnn_autodiff``: the same step with ``jax.grad`` of the same forward + loss;
* ``torch_eager``: the same architecture in PyTorch eager (its own default init: the cost of
  these layers does not depend on the weights' values), ``torch.optim.Adam``, same batch.

Also counted, from the optimized HLO of both jnn steps: convolutions, dots, reduce-windows,
scatters and fusions, so a manual/autodiff gap can be traced to the op that differs.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax

from experiments.benchmark.common import Context, add_time_vs
from experiments.benchmark.config import Config
from experiments.timing import compile_timed, time_interleaved
from jnn import core

BATCH, LR = 128, 1e-3
HLO_OPS = ("convolution(", "dot(", "reduce-window(", "select-and-scatter(", "scatter(", "fusion(")
REFERENCE = "jnn_manual"


def batch(ctx: Context, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """128 images (128, 28, 28, 1) float32 and labels from the run's training data (tiled)."""
    x = np.resize(ctx.data["x_train"], (BATCH, 784)).reshape(BATCH, 28, 28, 1)
    y = np.resize(ctx.data["y_train"], (BATCH,)).astype(np.int32)
    return np.ascontiguousarray(x, np.float32), y


def make_step(model: Any, model_state: Any, optimizer: Any, gradients: str) -> Any:
    """Jitted ``(params, opt_state, x, y, key) -> (params, opt_state, loss)``, params donated."""
    value_and_grad = core.value_and_grad(model, gradients)

    def step(params, opt_state, x, y, key):
        (loss, _, _), grads = value_and_grad(params, model_state, x, y, key=key, train=True)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1))


def hlo_op_counts(compiled: Any) -> dict[str, int]:
    """How often each of HLO_OPS occurs in a compiled program's optimized HLO text."""
    text = compiled.as_text()
    counts = {op.rstrip("("): text.count(" " + op) for op in HLO_OPS}
    counts["scatter"] -= counts["select-and-scatter"]  # " scatter(" does not match it; be safe
    return counts


def _jnn_case(cfg: Config, gradients: str, x: Any, y: Any) -> tuple[Callable, float, dict]:
    from experiments.cnn import build_model

    model, optimizer = build_model(), optax.adam(LR)
    _, params, model_state = model.init(jax.random.key(cfg.seed), (28, 28, 1))
    opt_state = optimizer.init(params)
    keys = list(jax.random.split(jax.random.key(cfg.seed + 1), cfg.cnn_steps))
    step = make_step(model, model_state, optimizer, gradients)
    compiled, compile_s = compile_timed(step, params, opt_state, x, y, keys[0])
    box = [(params, opt_state)]

    def run(calls: int) -> None:
        params, opt_state = box[0]
        for _ in range(calls):
            for key in keys:
                params, opt_state, loss = compiled(params, opt_state, x, y, key)
        jax.block_until_ready((params, loss))
        box[0] = (params, opt_state)

    return run, compile_s, hlo_op_counts(compiled)


def torch_net(device: str) -> Any:
    """The CNN in PyTorch (NCHW; padding 1 is SAME for a 3x3 stride-1 conv)."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, 10),
    ).to(device)  # fmt: skip


def _torch_case(cfg: Config, device: str, x_np: np.ndarray, y_np: np.ndarray) -> Callable:
    import torch
    import torch.nn.functional as F  # noqa: N812

    torch.manual_seed(cfg.seed)
    net = torch_net(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    x = torch.from_numpy(x_np.transpose(0, 3, 1, 2).copy()).to(device)
    y = torch.from_numpy(y_np.astype(np.int64)).to(device)

    def run(calls: int) -> None:
        for _ in range(calls * cfg.cnn_steps):
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
        loss.item()  # blocks (and synchronizes CUDA)

    return run


def measure(cfg: Config, ctx: Context) -> dict[str, Any]:
    """Per-step medians of the three cases, manual / jax.grad and jnn / torch ratios."""
    x_np, y_np = batch(ctx, cfg.seed)
    x, y = jax.device_put(x_np), jax.device_put(y_np)
    cases: dict[str, Callable[[int], Any]] = {}
    compile_s, hlo = {}, {}
    for name, gradients in ((REFERENCE, "manual"), ("jnn_autodiff", "autodiff")):
        cases[name], compile_s[name], hlo[name] = _jnn_case(cfg, gradients, x, y)
    skipped: dict[str, str] = {}
    if ctx.torch_device is not None:
        cases["torch_eager"] = _torch_case(cfg, ctx.torch_device, x_np, y_np)
    else:
        skipped["torch_eager"] = ctx.torch_reason
    times = time_interleaved(cases, cfg.reps, cfg.warmup)
    return _result(cfg, times, compile_s, hlo, skipped)


def _result(cfg, times, compile_s, hlo, skipped) -> dict[str, Any]:
    results = {}
    for name, s in times.items():
        per_step = {k: s[k] / cfg.cnn_steps for k in ("median_s", "min_s", "max_s")}
        r = s | per_step | {"samples_s": [v / cfg.cnn_steps for v in s["samples_s"]]}
        r |= {"steps_per_s": 1 / r["median_s"], "examples_per_s": BATCH / r["median_s"]}
        results[name] = r | ({"compile_s": compile_s[name]} if name in compile_s else {})
    add_time_vs(results, REFERENCE)
    man, auto = results[REFERENCE]["samples_s"], results["jnn_autodiff"]["samples_s"]
    ratios = {
        "manual_over_autodiff": statistics.median(man) / statistics.median(auto),
        "manual_over_autodiff_paired": statistics.median(a / b for a, b in zip(man, auto)),
    }
    if "torch_eager" in results:
        ratios["torch_over_jnn"] = results["torch_eager"]["time_vs_jnn"]
    return {
        "status": "ok",
        "batch_size": BATCH,
        "steps_per_sample": cfg.cnn_steps,
        "optimizer": f"adam(lr={LR:g})",
        "model": "experiments.cnn.build_model(): Conv2D(32,3) ReLU MaxPool Conv2D(64,3) ReLU "
        "MaxPool Flatten Dense(128) ReLU Dropout(0.5) Dense(10), 28x28x1",
        "results": results,
        "ratios": ratios,
        "hlo_ops": hlo,
        "skipped": skipped,
    }
