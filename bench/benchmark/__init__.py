"""Benchmark: jnn's jitted training against the numpy loop, PyTorch eager and scikit-learn.

    python -m bench.benchmark                       # full run into runs/benchmark
    python -m bench.benchmark --quick               # smoke run into runs/benchmark-quick
    python -m bench.benchmark --out results/benchmark --overwrite

Writes ``results.json`` (every number), ``results.md`` (the tables a person reads, with ratios
against jnn and the targets met or missed) and ``benchmark.png`` into ``--out``.

Method: all implementations of a section run in one process, interleaved (A B C A B C ...),
after a warm-up round (``jnn.timing.time_interleaved``); the median of the repetitions
is reported, XLA compile time separately. Every timed call blocks until its result exists.

One module per section (``ceiling``, ``train_epoch``, ``evaluation``, ``models_per_program``,
``vgg``, ``devices``, ``cnn``, ``study``), each with ``measure(cfg, ctx) -> dict``; ``config``
parses the flags, ``targets`` judges the project's speed targets, ``render``/``chart`` write the
report.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import baselines
from bench.benchmark import (
    ceiling,
    cnn,
    devices,
    evaluation,
    models_per_program,
    study,
    train_epoch,
    vgg,
)
from bench.benchmark.common import (
    ACTIVATION,
    FLOP_FORMULA,
    INIT,
    LEARNING_RATE,
    SIZES,
    Context,
    backward_flops_per_example,
    blas_note,
    environment,
    forward_flops_per_example,
    get_data,
    macs_per_example,
    train_flops_per_example,
)
from bench.benchmark.config import BATCH_SIZE, NAME, SECTIONS, Config, parse, parse_invocation
from bench.benchmark.render import OUTPUT_FILES, render, render_markdown
from bench.benchmark.targets import hardware, targets
from experiments import harness, lab
from jnn.workdir import RunDirError, float32_matmul

# run order: the ceiling first (the others divide by it)
MEASURES: dict[str, Callable[[Config, Context], dict[str, Any]]] = {
    "ceiling": ceiling.measure,
    "train_epoch": train_epoch.measure,
    "evaluation": evaluation.measure,
    "models_per_program": models_per_program.measure,
    "cnn": cnn.measure,
    "vgg": vgg.measure,
    "devices": devices.measure,
    "study": study.measure,  # after devices: it reuses that section's per-device-models figure
}


def context(cfg: Config) -> tuple[Context, dict[str, Any], str]:
    """(Context, environment, data source) for ``cfg``: torch resolved, data made or loaded."""
    ok, why = baselines.torch_status()
    torch_device = baselines.resolve_torch_device(cfg.torch_device) if ok else None
    jax_matmul = float32_matmul()
    matched = baselines.match_torch_precision(torch_device, jax_matmul) if torch_device else {}
    env = environment(torch_device)
    env["float32_matmul"] = {"jax": jax_matmul, "torch": matched}
    data, source = get_data(cfg.data, cfg.train_examples, cfg.eval_examples, cfg.seed)
    return Context(data, torch_device, "" if ok else why, blas_note(env)), env, source


def run_sections(cfg: Config, ctx: Context) -> dict[str, Any]:
    """Each selected section in MEASURES order, timed; the others marked skipped."""
    sections: dict[str, Any] = {}
    for name, measure in MEASURES.items():
        if name not in cfg.sections:
            sections[name] = {"status": "skipped", "reason": "not selected with --sections"}
            continue
        print(f"[benchmark] {name} ...", flush=True)
        start = time.perf_counter()
        sections[name] = measure(cfg, ctx)
        sections[name]["section_s"] = time.perf_counter() - start
        if name == "ceiling":
            ctx = ctx._replace(ceiling=sections[name]["xla_ceiling_gflops"])
        if name == "devices":
            ctx = ctx._replace(scaling=sections[name].get("measured"))
    return sections


def setup_block(cfg: Config, ctx: Context, source: str) -> dict[str, Any]:
    """The ``setup`` block of results.json: what the run fixed or resolved besides its config
    (the ``config`` block is the :class:`Config` itself, so ``--config results.json`` reruns
    it): the MLP's settings, the data actually used, PyTorch's resolved device."""
    return {
        "quick": cfg.small,
        "sizes": list(SIZES),
        "activation": ACTIVATION,
        "init": INIT,
        "batch_size": BATCH_SIZE,
        "learning_rate": LEARNING_RATE,
        "optimizer": "plain SGD (optax.sgd / torch.optim.SGD / sklearn sgd, momentum 0)",
        "data": source,
        "torch_device": ctx.torch_device,
    }


def run(inv: lab.Invocation, run_dir: Path) -> dict[str, Any]:
    """Run the chosen sections and return the full result dict (nothing written)."""
    del run_dir
    cfg = inv.config
    start = time.perf_counter()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    # On a GPU, JAX would otherwise grab 75% of its memory up front, leaving too little for the
    # PyTorch reference and for bench.scaling's worker processes. No effect on a CPU.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    ctx, env, source = context(cfg)
    sections = run_sections(cfg, ctx)
    return {
        "status": "ok",
        "benchmark": "jnn",
        "config": dataclasses.asdict(cfg),
        "setup": setup_block(cfg, ctx, source),
        "flops": {
            "formula": FLOP_FORMULA,
            "forward_per_example": forward_flops_per_example(SIZES),
            "backward_per_example": backward_flops_per_example(SIZES),
            "train_per_example": train_flops_per_example(SIZES),
        },
        "load_average": [round(v, 2) for v in load] if load else None,
        "environment": env,
        "sections": sections,
        "targets": targets(sections, hardware(ctx.torch_device)),
        "total_s": time.perf_counter() - start,
    }


EXPERIMENT = harness.Experiment(NAME, parse_invocation, run, render, render_markdown)
main = harness.cli(EXPERIMENT)

__all__ = [
    "EXPERIMENT", "MEASURES", "OUTPUT_FILES", "SECTIONS", "Config", "RunDirError",
    "backward_flops_per_example", "forward_flops_per_example", "macs_per_example",
    "main", "parse", "parse_invocation", "render", "render_markdown", "run", "targets",
    "train_flops_per_example",
]  # fmt: skip
