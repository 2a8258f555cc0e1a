"""Section ``cnn``: one Adam train step of the CNN (``jnn.models.build("cnn")``), batch 128.

Conv2D(32,3) ReLU MaxPool Conv2D(64,3) ReLU MaxPool Flatten Dense(128) ReLU Dropout(0.5)
Dense(10) on 28x28x1 inputs. Three cases, interleaved, each sample ``--cnn-steps`` steps:

* ``jnn_manual``: a jitted step whose gradients come from the layers' hand-written backward;
* ``jnn_autodiff``: the same step with ``jax.grad`` of the same forward + loss;
* ``torch_eager``: the same architecture in PyTorch eager (its own default init: the cost of
  these layers does not depend on the weights' values), ``torch.optim.Adam``, same batch.

Also counted, from the optimized HLO of both jnn steps: convolutions, dots, reduce-windows,
scatters and fusions, so a manual/autodiff gap can be traced to the op that differs.

Work and speed: the FLOPs of one train step come from ``jnn.conv_cost`` (the convolutions as
traced, taps on the zero padding left out: work no lowering needs to do) plus the dense
layers' matmuls: forward 2 * MACs, backward 4 * MACs, minus the first layer's input gradient
that nobody needs; bias adds, activations, pooling and Adam are not counted. Each case gets
GFLOP/s and its share of the XLA matmul ceiling.
``layers`` says how each Conv2D ran (``jnn.layers.conv.conv_plans``: the lowering of its forward,
input and kernel gradients, the batch chunking and the peak patch-matrix bytes).

PyTorch's threads collapse when another process takes a core (measured: its step went from
0.027 s to 0.17 s with one core busy elsewhere, jnn's from 0.054 to 0.088), so ``load`` records
the load average and the CPU time other processes took while the section ran; the PyTorch
targets are judged only when that was at most ``QUIET_OTHER_CORES`` cores (:func:`machine_load`).
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
import optax

from bench import CLASSES, IMAGE_SHAPE
from bench.benchmark.common import Context, add_time_vs
from bench.benchmark.config import Config
from jnn import core
from jnn.conv_cost import recorded_conv_costs
from jnn.layers.conv import conv_plans
from jnn.timing import compile_timed, time_interleaved

BATCH, LR = 128, 1e-3
# PyTorch targets are judged only when other processes used at most this many cores on average
# while the section ran (an eighth of the 2-core VM the targets were set on); where /proc/stat
# is missing, only when the 1-minute load average at the start was at most QUIET_LOAD.
QUIET_OTHER_CORES, QUIET_LOAD = 0.25, 1.0
FLOP_NOTE = (
    "jnn.conv_cost valid MACs of the convolutions (taps on the zero padding left out) plus the "
    "dense "
    "layers' in * out; train step = (6 * MACs - 2 * MACs of the first layer) * batch: forward, "
    "kernel and input gradients, less the first layer's unused input gradient"
)
HLO_OPS = ("convolution(", "dot(", "reduce-window(", "select-and-scatter(", "scatter(", "fusion(")
REFERENCE = "jnn_manual"


def batch(ctx: Context, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """128 images (128, H, W, 1) float32 and labels from the run's training data (tiled)."""
    x = np.resize(ctx.data["x_train"], (BATCH, math.prod(IMAGE_SHAPE))).reshape(BATCH, *IMAGE_SHAPE)
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


def _cpu_busy_s() -> float | None:
    """CPU seconds every process on this machine has used since boot (/proc/stat: user, nice,
    system, irq, softirq; idle, iowait and steal left out), or None off Linux."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:8]]
    except (OSError, ValueError):
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def _judged(load: dict[str, Any]) -> tuple[bool, str]:
    other, start = load.get("other_cores"), load.get("load_start")
    if other is not None:
        ok = other <= QUIET_OTHER_CORES
        return ok, f"other processes used {other:.2f} cores (quiet: <= {QUIET_OTHER_CORES})"
    if start is not None:
        ok = start <= QUIET_LOAD
        return ok, f"load average {start:.2f} at the start (quiet: <= {QUIET_LOAD})"
    return False, "no load measurement on this OS"


def _own_cpu_s() -> float:
    """CPU seconds of this process plus its finished (waited-for) children: a section that
    times a subprocess (``study``) must not count that subprocess as other processes' load."""
    t = os.times()
    return time.process_time() + t.children_user + t.children_system


@contextlib.contextmanager
def machine_load() -> Iterator[dict[str, Any]]:
    """Fills the yielded dict when the block ends: ``load_start``/``load_end`` (1-minute load
    average), ``other_cores`` (CPU seconds all processes took minus this process's, over the
    wall time: the cores someone else kept busy; the CPU of this process's children that ended
    inside the block counts as its own), ``judged`` and ``why`` (QUIET_OTHER_CORES)."""
    load: dict[str, Any] = {}
    has_load = hasattr(os, "getloadavg")
    load["load_start"] = round(os.getloadavg()[0], 2) if has_load else None
    busy, own, start = _cpu_busy_s(), _own_cpu_s(), time.perf_counter()
    yield load
    wall = time.perf_counter() - start
    busy_end = _cpu_busy_s()
    if busy is not None and busy_end is not None and wall > 0:
        others = (busy_end - busy) - (_own_cpu_s() - own)
        load["other_cores"] = round(max(others, 0.0) / wall, 3)
    load["load_end"] = round(os.getloadavg()[0], 2) if has_load else None
    load["judged"], load["why"] = _judged(load)


def step_flops(model: Any, input_shape: tuple[int, ...], batch: int) -> tuple[dict, list]:
    """(FLOPs of one train step of ``model`` (FLOP_NOTE), the plan of every Conv2D in it)."""
    plans = conv_plans(model, input_shape, batch)
    conv_macs = [c.valid_macs or c.macs for c in recorded_conv_costs(plans)]
    shapes = jax.eval_shape(lambda k: model.init(k, input_shape)[1], jax.random.key(0))
    dense_macs = [
        math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes) if len(leaf.shape) == 2
    ]  # Dense kernels (in, out); conv kernels are 4-D, biases 1-D
    macs = sum(conv_macs) + sum(dense_macs)
    first = (conv_macs or dense_macs)[0]  # the first layer of this network is its first conv
    flops = {"forward": 2 * macs * batch, "train_step": (6 * macs - 2 * first) * batch}
    return flops | {"note": FLOP_NOTE}, plans


def _jnn_case(cfg: Config, gradients: str, x: Any, y: Any) -> tuple[Callable, float, dict]:
    from jnn import models

    model, optimizer = models.build("cnn"), optax.adam(LR)
    _, params, model_state = model.init(jax.random.key(cfg.seed), IMAGE_SHAPE)
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

    h, w, c = IMAGE_SHAPE  # two 2x2 max-pools: the flattened map is 64 x (h // 4) x (w // 4)
    return nn.Sequential(
        nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * (h // 4) * (w // 4), 128), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(128, CLASSES),
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
    """Per-step medians of the three cases, manual / jax.grad and jnn / torch ratios, GFLOP/s
    and ceiling shares, each conv layer's lowering, and the machine's load while timing."""
    from jnn import models

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
    with machine_load() as load:
        times = time_interleaved(cases, cfg.reps, cfg.warmup)
    flops, layers = step_flops(models.build("cnn"), IMAGE_SHAPE, BATCH)
    out = _result(cfg, times, compile_s, hlo, skipped, flops, ctx.ceiling)
    return out | {"flops": flops, "layers": layers, "load": load}


def _result(cfg, times, compile_s, hlo, skipped, flops, ceiling) -> dict[str, Any]:
    results = {}
    for name, s in times.items():
        per_step = {k: s[k] / cfg.cnn_steps for k in ("median_s", "min_s", "max_s")}
        r = s | per_step | {"samples_s": [v / cfg.cnn_steps for v in s["samples_s"]]}
        r |= {"steps_per_s": 1 / r["median_s"], "examples_per_s": BATCH / r["median_s"]}
        r["gflops"] = flops["train_step"] / r["median_s"] / 1e9
        if ceiling:
            r["fraction_of_xla_ceiling"] = r["gflops"] / ceiling
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
        "model": "jnn.models.build('cnn'): Conv2D(32,3) ReLU MaxPool Conv2D(64,3) ReLU "
        "MaxPool Flatten Dense(128) ReLU Dropout(0.5) Dense(10), 28x28x1",
        "results": results,
        "ratios": ratios,
        "hlo_ops": hlo,
        "skipped": skipped,
    }
