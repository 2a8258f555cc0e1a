"""Which hand-written backward costs the CNN's manual train step its time, layer by layer.

    python -m bench.backward_probe --reps 5        (--quick: 1 repetition)

The benchmark's ``cnn`` section times one Adam step of the CNN (``jnn.models.cnn_layers``,
batch 128) with the layers' hand-written backward ("manual") and with ``jax.grad`` ("autodiff").
When the two differ, this probe says where: besides those two it times, for each layer, the
manual step with that one layer's backward replaced by ``jax.vjp`` of its forward (the same
arithmetic autodiff does for that layer; every other layer stays manual), all interleaved
(:mod:`jnn.timing`, medians; the timed step is the benchmark's own). A swap that makes the
step faster names a hand-written backward that is slower than autodiff's on this backend; the
swaps' savings need not add up to the gap, since XLA fuses across layers. All variants compute
the same gradients (checked: the largest difference from the manual step's, relative to its
largest entry, is in the table).
Writes probe.json and probe.md into ``--out`` (default ``runs/backward_probe``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

import bench
from experiments import harness, lab, report
from jnn import config, timing
from jnn.config import option
from jnn.core import Layer
from jnn.errors import InputError

BATCH, LR, STEPS = 128, 1e-3, 5  # the benchmark's cnn section: batch, Adam rate, steps a sample
MIN_SAMPLE_S = 0.05
QUICK = {"reps": 1}


@dataclass(frozen=True)
class Config:
    """What the probe times, declared once (the command line is generated from it by
    ``experiments.lab``)."""

    reps: int = option(5, "timed repetitions after 1 warm-up")
    seed: int = option(0, "seed of the weights, the batch and the dropout keys")

    def __post_init__(self) -> None:
        config.integer(self.reps, "reps", 1, 100)
        config.integer(self.seed, "seed", 0, config.MAX_SEED)


def vjp_backward(layer: Layer) -> Layer:
    """``layer`` with its backward replaced by ``jax.vjp`` of its forward: the forward saves the
    vjp function (with the key and mode it ran with) as the cache, the backward applies it to
    dy. Same init, same outputs, autodiff's arithmetic for this one layer."""
    import jax

    if not isinstance(layer, Layer):
        raise InputError(f"vjp_backward takes a jnn Layer, got {type(layer).__name__}")

    def forward(params, state, x, *, key=None, train=False):
        def f(p, xx):
            y, _, new_state = layer.forward(p, state, xx, key=key, train=train)
            return y, new_state

        y, vjp, new_state = jax.vjp(f, params, x, has_aux=True)
        return y, vjp, new_state

    def backward(params, vjp, dy):
        del params
        return vjp(dy)

    return Layer(layer.init, forward, backward, f"{layer.name} by vjp")


def variants() -> dict[str, tuple[Layer, str]]:
    """name -> (model, gradients): manual, autodiff, and manual with layer i's backward by vjp
    (layers without a backward of their own cost included: every layer of the network)."""
    from jnn import models
    from jnn.core import serial

    layers = models.cnn_layers(input_shape=bench.IMAGE_SHAPE, classes=bench.CLASSES)
    out = {"manual": (serial(*layers), "manual"), "autodiff": (serial(*layers), "autodiff")}
    for i, layer in enumerate(layers):
        swapped = [vjp_backward(lay) if j == i else lay for j, lay in enumerate(layers)]
        out[f"{i}: {layer.name}"] = (serial(*swapped), "manual")
    return out


def make_case(model: Layer, gradients: str, params, x, y, keys) -> tuple[Callable, Any]:
    """(case(calls) running STEPS Adam steps per call for :mod:`jnn.timing`, the gradients at
    ``params``): the timed step is the benchmark's cnn step itself
    (``bench.benchmark.cnn.make_step``: jitted, params and optimizer state donated, each call
    going on from the last), so the manual and autodiff rows reproduce that section's ratio;
    the gradients come from a separate, untimed call."""
    import jax
    import optax

    from bench.benchmark.cnn import make_step
    from jnn import core

    optimizer = optax.adam(LR)
    state = model.init(jax.random.key(0), bench.IMAGE_SHAPE)[2]
    grads = jax.jit(core.value_and_grad(model, gradients))(params, state, x, y, key=keys[0])[1]
    step = make_step(model, state, optimizer, gradients)
    copy = jax.tree.map(lambda a: a.copy(), params)  # donated by the first step, not the caller's
    box = [(copy, optimizer.init(copy))]

    def case(calls: int) -> None:
        p, o = box[0]
        for _ in range(calls):
            for key in keys:
                p, o, loss = step(p, o, x, y, key)
        jax.block_until_ready(loss)
        box[0] = (p, o)

    return case, jax.block_until_ready(grads)


def _rel_diff(a: Any, b: Any) -> float:
    """Largest |a - b| over every gradient leaf, relative to the largest |a| of that leaf."""
    import jax

    diffs = jax.tree.map(
        lambda u, v: float(np.max(np.abs(u - v))) / (float(np.max(np.abs(u))) or 1.0), a, b
    )
    return max(jax.tree.leaves(diffs), default=0.0)


def run(inv: lab.Invocation, run_dir: Path) -> dict[str, Any]:
    """Every variant's step time (median), its ratio to the manual step's, its gradients'
    difference from the manual step's."""
    import jax

    del run_dir
    cfg = inv.config
    every = variants()
    params = every["manual"][0].init(jax.random.key(cfg.seed), bench.IMAGE_SHAPE)[1]
    rng = np.random.default_rng(cfg.seed)
    x = jax.device_put(rng.random((BATCH, *bench.IMAGE_SHAPE), dtype=np.float32))
    y = jax.device_put(rng.integers(0, bench.CLASSES, BATCH).astype(np.int32))
    keys = list(jax.random.split(jax.random.key(cfg.seed + 1), STEPS))
    cases, grads = {}, {}
    for name, (model, gradients) in every.items():
        case, grads[name] = make_case(model, gradients, params, x, y, keys)
        cases[name] = case
    times = timing.time_interleaved(cases, cfg.reps, 1, MIN_SAMPLE_S)
    manual_s = times["manual"]["median_s"] / STEPS
    rows = [{"variant": name, "step_s": t["median_s"] / STEPS,
             "over_manual": t["median_s"] / STEPS / manual_s,
             "grad_rel_diff": _rel_diff(grads["manual"], grads[name])}
            for name, t in times.items()]  # fmt: skip
    return {"study": "backward_probe", "status": "ok", "config": asdict(cfg), "rows": rows,
            "backend": jax.default_backend(), "batch": BATCH, "steps_per_sample": STEPS,
            **harness.stamp()}  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    """One row per variant: step time, ratio to the manual step, gradient difference."""
    cfg, rows = result["config"], result["rows"]
    body = [[r["variant"], f"{r['step_s'] * 1e3:.3f}", f"{r['over_manual']:.3f}",
             f"{r['grad_rel_diff']:.1e}"] for r in rows]  # fmt: skip
    device = result["device"]
    where = device["devices"][0] if result["backend"] != "cpu" else device["cpu"]
    return "\n".join([
        "# The CNN's manual step, one layer's backward by jax.vjp at a time\n",
        f"Backend `{result['backend']}` ({where}), jax {result['versions'].get('jax')}, float32 "
        f"matmuls {device.get('float32_matmul', 'float32')}; one Adam step at batch "
        f"{result['batch']}, median of {cfg['reps']} interleaved repetitions of "
        f"{result['steps_per_sample']} steps after 1 warm-up. A ratio below 1: that layer's "
        "hand-written backward is slower than jax.vjp's on this backend.\n",
        report.markdown_table(["variant", "ms / step", "vs manual", "grad rel. diff"], body),
    ])  # fmt: skip


EXPERIMENT = bench.probe("backward_probe", Config, __doc__, QUICK, run, markdown)
parse, main = EXPERIMENT.parse, harness.cli(EXPERIMENT)

if __name__ == "__main__":
    raise SystemExit(main())
