"""results.md (one function per section), benchmark.png, and :func:`render` for the harness."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.benchmark.ceiling import CEILING_N
from bench.benchmark.common import (
    FLOP_FORMULA,
    SIZES,
    forward_flops_per_example,
    train_flops_per_example,
)
from bench.benchmark.targets import over_ceiling
from experiments.report import markdown_table
from jnn.workdir import write_json, write_text_atomic

OUTPUT_FILES = ("results.json", "results.md", "benchmark.png")
QUICK_NOTE = "QUICK run (smoke test, not for quoting)."
LABELS = {
    "jnn_scan_manual": "jnn, scanned epoch, manual backprop",
    "jnn_scan_autodiff": "jnn, scanned epoch, jax.grad",
    "jnn_step_loop": "jnn, jitted step in a Python loop",
    "jnn_forward": "jnn, jitted forward",
    "numpy_loop": "numpy float32 (training: Python loop over batches)",
    "torch_eager": "PyTorch eager",
    "sklearn_mlp": "scikit-learn MLPClassifier (plain SGD)",
    "xla_matmul": "XLA matmul",
    "numpy_matmul": "numpy matmul (OpenBLAS)",
    "torch_matmul": "PyTorch matmul",
    "jnn_manual": "jnn, jitted step, manual backprop",
    "jnn_autodiff": "jnn, jitted step, jax.grad",
    "jnn": "jnn",
}
SHORT_LABELS = {
    "jnn_scan_manual": "jnn scan, manual",
    "jnn_scan_autodiff": "jnn scan, jax.grad",
    "jnn_step_loop": "jnn step loop",
    "jnn_forward": "jnn",
    "jnn": "jnn",
    "numpy_loop": "numpy",
    "torch_eager": "PyTorch eager",
    "sklearn_mlp": "scikit-learn",
    "jnn_manual": "jnn manual",
    "jnn_autodiff": "jnn jax.grad",
    "preset": "main job preset",
    "per_device_models": "per-device models",
}


def fmt(v: Any, digits: int = 3) -> str:
    """A number for a table: n/a for None/inf/nan, thousands separators from 1000 up."""
    if v is None:
        return "n/a"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "n/a"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}g}" if abs(v) < 1 else f"{v:.{digits + 1}g}"
    return str(v)


def _pct(r: dict[str, Any]) -> str:
    frac = r.get("fraction_of_xla_ceiling")
    return "n/a" if frac is None else fmt(100 * frac) + "%"


def _skipped(sec: dict[str, Any]) -> list[str]:
    return [f"- skipped {k}: {v}" for k, v in sec.get("skipped", {}).items()]


def settings(result: dict[str, Any]) -> dict[str, Any]:
    """The run's config with what it fixed or resolved on top (``setup``: the data source, the
    MLP's batch and rate, PyTorch's device); results.json files written before the split kept
    everything in ``config``."""
    return {**result["config"], **result.get("setup", {})}


def header(result: dict[str, Any]) -> list[str]:
    cfg, env = settings(result), result["environment"]
    return [
        "# jnn benchmark",
        "",
        f"Device: JAX `{env['jax']['backend']}` ({', '.join(env['device']['devices'])}), "
        f"CPU {env['device']['cpu']} x {env['device']['cpu_count']} cores; "
        f"torch: {env['torch'].get('device', env['torch'].get('unavailable'))}. "
        f"Data: {cfg['data']}. {QUICK_NOTE if cfg['quick'] else ''}",
        "",
        f"Median of {cfg['reps']} interleaved repetitions after {cfg['warmup']} warm-up round(s); "
        "compile time separate. Ratios are time / jnn time (higher = jnn faster). "
        f"Timings from one run on a shared machine are noisy. Total run {result['total_s']:.0f} s"
        f"; load average at the start {result.get('load_average', 'n/a')}.",
        "",
    ]


def train_epoch(sec: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    lines = [
        f"## 1. One training epoch ({sec['examples_per_epoch_used']:,} examples, batch "
        f"{cfg['batch_size']}, SGD lr {cfg['learning_rate']}, {'-'.join(map(str, SIZES))})",
        "",
    ]
    rows = [
        [LABELS[name], fmt(r["median_s"]), fmt(r["examples_per_s"]), fmt(r["gflops"]), _pct(r),
         fmt(r["time_vs_jnn"]) + "x", fmt(r.get("compile_s"))]
        for name, r in sec["results"].items()
    ]  # fmt: skip
    headers = ["implementation", "epoch s", "examples/s", "GFLOP/s", "% XLA ceiling",
               "time vs jnn", "compile s"]  # fmt: skip
    lines += [markdown_table(headers, rows), *_skipped(sec)]
    return lines + [f"- scikit-learn settings: `{sec['sklearn_settings']}`", ""]


def evaluation(sec: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    lines = [f"## 2. Evaluation throughput (forward only, {sec['examples']:,} examples)", ""]
    rows = [
        [LABELS[name], fmt(r["median_s"]), fmt(r["examples_per_s"]), fmt(r["gflops"]),
         fmt(r["time_vs_jnn"]) + "x"]
        for name, r in sec["results"].items()
    ]  # fmt: skip
    headers = ["implementation", "s", "examples/s", "GFLOP/s", "time vs jnn"]
    return lines + [markdown_table(headers, rows), *_skipped(sec), ""]


def ceiling(sec: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    rows = [
        [LABELS[name], fmt(r["median_s"]), fmt(r["gflops"])] for name, r in sec["results"].items()
    ]
    return [
        f"## 3. Machine ceiling: float32 matmul {CEILING_N}^3",
        "",
        markdown_table(["implementation", "s", "GFLOP/s"], rows),
        *_skipped(sec),
        f"- {sec['note']}",
        f"- FLOP count: {FLOP_FORMULA}",
        f"- For {'-'.join(map(str, SIZES))}: forward {forward_flops_per_example(SIZES):,} "
        f"FLOP/example, training {train_flops_per_example(SIZES):,} FLOP/example.",
        "",
    ]


def _load_line(sec: dict[str, Any]) -> str:
    """The section's load while timing and whether its PyTorch targets were judged."""
    load = sec.get("load")
    if not load:
        return "- load: not recorded"
    verdict = "judged" if load.get("judged") else "NOT JUDGED (machine busy)"
    return (
        f"- load average {fmt(load.get('load_start'))} -> {fmt(load.get('load_end'))} while "
        f"timing; {load.get('why', '')}: PyTorch targets {verdict}"
    )


def _mib(n: int) -> str:
    return fmt(n / 2**20) if n else "-"


def _conv_layer_rows(layers: Sequence[dict[str, Any]], train: bool) -> list[str]:
    """How each convolution ran: its lowering per pass, and for its GEMM passes the batch chunks
    (count x examples) and the peak patch-matrix MiB."""
    if not layers:
        return []
    passes = ("forward", "input_grad", "kernel_grad") if train else ("forward",)
    headers = ["layer", "input", "output", *("forward", "dx", "dw")[: len(passes)], "chunks",
               "patch MiB"]  # fmt: skip
    rows = [
        [r["layer"], "x".join(map(str, r["input_shape"])),
         "x".join(map(str, r["output_shape"])), *(r[p] for p in passes),
         f"{r['chunks']} x {r['chunk']}" if any(r[p] == "gemm" for p in passes) else "-",
         _mib(r["patch_bytes"] if train else r["forward_patch_bytes"])]
        for r in layers
    ]  # fmt: skip
    return ["", "How jnn lowered each convolution (jnn.layers.conv.conv_plans):", "",
            markdown_table(headers, rows)]  # fmt: skip


def vgg(sec: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    rows = [
        [LABELS.get(name, name), fmt(r["median_s"]), fmt(r["images_per_s"]), fmt(r.get("gflops")),
         _pct(r), fmt(r["time_vs_jnn"]) + "x", fmt(r.get("compile_s"))]
        for name, r in sec["results"].items()
    ]  # fmt: skip
    headers = ["implementation", "s", "images/s", "GFLOP/s", "% XLA ceiling", "time vs jnn",
               "compile s"]  # fmt: skip
    flops = sec.get("flops_per_image")
    return [
        markdown_table(headers, rows),
        f"- {sec['images_timed']} images timed, batch {sec['batch_size']}; {sec['pipeline']}",
        f"- FLOPs per image: {flops:,} (jnn.conv_cost: 2 x valid MACs of the 13 convolutions, "
        "taps on the zero padding left out)"
        if flops
        else "- FLOPs per image: not counted",
        f"- torch: {sec['torch_backend']}"
        + (f" ({sec['torch_note']})" if sec.get("torch_note") else ""),
        _load_line(sec),
        *_skipped(sec),
        *_conv_layer_rows(sec.get("layers", []), train=False),
        "",
    ]


def models_per_program(sec: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    rows = [
        [r["models"], name.split("_", 1)[1], fmt(r["median_s"]), fmt(r["model_epochs_per_s"]),
         fmt(r["speedup_vs_1"]) + "x", fmt(r["gflops"]), _pct(r), fmt(r["compile_s"])]
        for name, r in sec["results"].items()
    ]  # fmt: skip
    headers = ["models", "program", "s", "model-epochs/s", "vs 1 model", "GFLOP/s",
               "% XLA ceiling", "compile s"]  # fmt: skip
    return [
        "## 5a. Models per XLA program (jax.vmap of train.epoch_step, data shared)",
        "",
        markdown_table(headers, rows),
        f"- baseline: {sec['baseline']}",
        "",
    ]


def devices(sec: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    errors = [f"- error on {d} devices: {e[-300:]}" for d, e in sec.get("errors", {}).items()]
    return [sec["markdown"], "", *errors]


def cnn(sec: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    rows = [
        [LABELS[name], fmt(r["median_s"]), fmt(r["examples_per_s"]), fmt(r.get("gflops")),
         _pct(r), fmt(r["time_vs_jnn"]) + "x", fmt(r.get("compile_s"))]
        for name, r in sec["results"].items()
    ]  # fmt: skip
    headers = ["implementation", "s / step", "examples/s", "GFLOP/s", "% XLA ceiling",
               "time vs jnn", "compile s"]  # fmt: skip
    ops = sorted({op for counts in sec["hlo_ops"].values() for op in counts})
    hlo_rows = [[name, *(c.get(op, 0) for op in ops)] for name, c in sec["hlo_ops"].items()]
    ratios, flops = sec["ratios"], sec.get("flops", {})
    torch = ratios.get("torch_over_jnn")
    return [
        f"Batch {sec['batch_size']}, {sec['optimizer']}, {sec['steps_per_sample']} steps per "
        f"sample; {sec['model']}.",
        "",
        markdown_table(headers, rows),
        f"- manual / jax.grad step time: {fmt(ratios['manual_over_autodiff'])}x (ratio of "
        f"medians; median of paired ratios {fmt(ratios['manual_over_autodiff_paired'])}x)",
        f"- PyTorch eager / jnn manual: {fmt(torch) + 'x' if torch else 'n/a'}",
        f"- FLOPs per train step: {flops.get('train_step', 0):,} (forward "
        f"{flops.get('forward', 0):,}); {flops.get('note', 'not counted')}",
        _load_line(sec),
        *_skipped(sec),
        *_conv_layer_rows(sec.get("layers", []), train=True),
        "",
        "Ops in the optimized HLO of one jitted step:",
        "",
        markdown_table(["step", *ops], hlo_rows),
        "",
    ]


def _study_rows(sec: dict[str, Any]) -> list[list[Any]]:
    p, d = sec["preset"], sec["per_device_models"]
    probe = ", ".join(f"{k} {fmt(v)} s" for k, v in p["layout_seconds"].items())
    layout = p["layout"] + (f" (probe: {probe})" if probe else "")
    return [
        [f"main job preset: `{sec['command']}`", p["devices"], p["models"], layout,
         f"{p['examples_per_epoch']:,}", fmt(p["model_epochs_per_s"]),
         fmt(p["model_examples_per_s"])],
        [f"per-device models: {sec['per_device_source']}", d["devices"], d["models"],
         "vmap per device", f"{d['examples_per_epoch']:,}", fmt(d["model_epochs_per_s"]),
         fmt(d["model_examples_per_s"])],
    ]  # fmt: skip


def study(sec: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    """Both figures, their ratio, what the preset's rate includes, and whether it is judged."""
    p, load = sec["preset"], sec.get("load") or {}
    headers = ["figure", "devices", "models", "layout", "examples/epoch", "model-epochs/s",
               "model-examples/s"]  # fmt: skip
    verdict = "judged" if load.get("judged") else "NOT JUDGED (machine busy)"
    steady = {1: "its only epoch, compile included", 2: "epoch 2"}.get(
        p["epochs"], f"epochs 2..{p['epochs']}"
    )
    return [
        markdown_table(headers, _study_rows(sec)),
        f"- **preset / per-device models: {fmt(sec['ratio'])}x** in model-examples/s (the "
        "epochs differ in size, so model-epochs/s alone does not compare); the preset's rate "
        f"from {steady}; the engine's own figure over all {p['epochs']} epoch(s), first one's "
        f"compile included: {fmt(p['model_epochs_per_s_engine'])} model-epochs/s",
        f"- the preset's rate counts {p['included']}; the whole subprocess took "
        f"{fmt(sec['preset_run']['wall_s'])} s (start-up, data, compile, evaluation, plots)",
        f"- load average {fmt(load.get('load_start'))} -> {fmt(load.get('load_end'))} over the "
        f"section; {load.get('why', 'not recorded')}: ratio {verdict}",
        "",
    ]


SECTION_RENDERERS: Sequence[tuple[str, str, Callable[..., list[str]]]] = (
    ("train_epoch", "", train_epoch),
    ("evaluation", "", evaluation),
    ("ceiling", "", ceiling),
    ("vgg", "## 4. VGG16 frozen feature extraction (32x32, random weights shared)", vgg),
    ("models_per_program", "", models_per_program),
    ("devices", "## 5b. Data parallel over devices (bench.scaling)", devices),
    ("cnn", "## 6. CNN train step: manual backprop vs jax.grad vs PyTorch eager", cnn),
    ("study", "## 7. The main job's preset beside per-device models", study),
)


def sections_md(result: dict[str, Any]) -> list[str]:
    """Every section's lines; a skipped section with a fixed heading says why."""
    lines: list[str] = []
    for name, heading, fn in SECTION_RENDERERS:
        sec = result["sections"].get(name, {})
        if sec.get("status") == "ok":
            lines += ([heading, ""] if heading else []) + fn(sec, settings(result))
        elif heading:
            lines += [heading, "", f"Skipped: {sec.get('reason', 'not run')}", ""]
    return lines


def warnings_md(result: dict[str, Any]) -> list[str]:
    if not over_ceiling(result["sections"]):
        return []
    return [
        "**Warning:** a case measured above 100% of the matmul ceiling: the ceiling (one "
        f"{CEILING_N}^3 XLA matmul) ran below what this machine reaches on that work, or one of "
        "them was timed while the machine was busy. The shares of this run are not comparable; "
        "the ceiling-share targets are not judged.",
        "",
    ]


def _verdict(t: dict[str, Any]) -> str:
    if t.get("judged") is False:  # a PyTorch target timed while the machine was busy
        return "not judged"
    return {True: "met", False: "MISSED", None: "not measured"}[t["met"]]


def targets_md(result: dict[str, Any]) -> list[str]:
    rows = [
        [t["name"], t["goal"], fmt(t["measured"]), _verdict(t), t["note"]]
        for t in result["targets"]
    ]
    headers = ["target", "goal", "measured", "result", "note"]
    return ["## Targets", "", markdown_table(headers, rows)]


def _float32_line(f32: dict[str, Any] | None) -> list[str]:
    """What a float32 matmul computed on each side (``bench.baselines.match_torch_precision``)."""
    if not f32:
        return []
    torch = f32.get("torch") or {}
    torch_part = (
        f"PyTorch float32_matmul_precision {torch['float32_matmul_precision']!r}, cuDNN "
        f"allow_tf32 {torch['cudnn_allow_tf32']}"
        if torch
        else "PyTorch not run"
    )
    return [f"- float32 arithmetic: jnn (JAX) {f32['jax']}; {torch_part}"]


def environment_md(env: dict[str, Any]) -> list[str]:
    return [
        "## Environment",
        "",
        f"- versions: {', '.join(f'{k} {v}' for k, v in env['versions'].items())}",
        f"- JAX devices: {env['jax']['devices']}; default matmul precision "
        f"{env['jax']['default_matmul_precision']}; XLA_FLAGS `{env['jax']['xla_flags']}`",
        f"- torch: {env['torch']}",
        *_float32_line(env.get("float32_matmul")),
        f"- BLAS (threadpoolctl): {env['blas']}; OPENBLAS_CORETYPE {env['openblas_coretype']}",
        f"- threading env vars: {env['device']['env'] or '(none set)'}",
        "",
    ]


def render_markdown(result: dict[str, Any]) -> str:
    """results.md: the tables a person reads."""
    lines = header(result) + sections_md(result) + warnings_md(result) + targets_md(result)
    return "\n".join(lines + environment_md(result["environment"]))


def render(result: dict[str, Any], run_dir: Path) -> list[Path]:
    """results.json, results.md and benchmark.png into ``run_dir``, from ``result`` alone."""
    from bench.benchmark.chart import render_chart

    run_dir = Path(run_dir)
    write_json(run_dir / "results.json", result)
    write_text_atomic(run_dir / "results.md", render_markdown(result))
    render_chart(result, run_dir / "benchmark.png")
    return [run_dir / name for name in OUTPUT_FILES]
