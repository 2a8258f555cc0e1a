"""The assignment's two theory questions, answered with code: ``python -m experiments.theory``.

Q1 (cross-entropy vs KL) is computed by :func:`jnn.theory.ce_kl_checks`, Q2 (1x1 bottleneck cost)
by :func:`jnn.bottleneck.bottleneck_costs`; this module holds the config, calls them and renders
the tables. On the harness (:mod:`experiments.harness`): ``parse_config`` -> ``run`` -> ``render``.
Writes ``theory.md`` and ``theory.json`` into ``--out`` (default ``runs/theory``; the committed
answers are in ``results/theory``, made with ``--out results/theory``) and prints the tables. A
folder holding only this command's two files is regenerated in place; anything else there needs
``--overwrite``. Takes a few seconds on a laptop CPU.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from experiments import harness, lab, report
from jnn import config, workdir
from jnn.bottleneck import NETWORKS, bottleneck_costs
from jnn.config import option
from jnn.theory import ASSUMPTIONS, CHECKS, TOLERANCE, ce_kl_checks

OUTPUT_FILES = ("theory.md", "theory.json")


def q1_table(checks: dict[str, dict[str, float]]) -> str:
    """Markdown table of :func:`jnn.theory.ce_kl_checks` results, one column per dtype."""
    dtypes = list(checks)
    rows = [
        [text, *(f"{checks[d][key]:.3g}" for d in dtypes), expected]
        for key, (text, expected) in CHECKS.items()
    ]
    tol = ", ".join(f"{d}: {TOLERANCE[d]:g}" for d in dtypes)
    return report.markdown_table(["check", *dtypes, f"expected (tol {tol})"], rows)


def _q2_row(name: str, c: dict[str, Any], flops: str, ms: str) -> list[str]:
    """One row of the Q2 table: name, output shape, params, MACs, then the given cells."""
    shape = "x".join(map(str, c["output_shape"]))
    return [name, shape, f"{c['params']:,}", f"{c['macs']:,}", flops, ms]


def q2_table(q2: dict[str, Any]) -> str:
    """One Markdown table: per-layer and per-network shapes, params, MACs, FLOPs, time."""
    headers = ["network / layer", "output (H, W, C)", "params", "MACs / example"]
    headers += ["XLA FLOPs / example", f"forward ms (batch {q2['batch']})"]
    rows = []
    for name, net in q2["networks"].items():
        ms = f"{1e3 * net['forward_median_s']:.2f}"
        rows.append(_q2_row(name, net, f"{net['xla_flops']:,.0f}", ms))
        for layer in net["layers"]:
            kernel = "x".join(map(str, layer["kernel_shape"]))
            rows.append(_q2_row(f"↳ {layer['name']} (kernel {kernel})", layer, "", ""))
    r = q2["ratio_network1_over_network2"]
    keys = ("params", "macs", "xla_flops", "forward_median_s")
    rows.append(["ratio 1 / 2", "", *(f"{r[k]:.2f}x" for k in keys)])
    return report.markdown_table(headers, rows)


def _xla_sentence(n1: dict[str, Any], n2: dict[str, Any], backend: str) -> str:
    """The XLA-count bullet; claims the exact relation only where this run's numbers hold it."""
    head = (
        f"- **XLA's FLOPs** (`compile().cost_analysis()` on {backend}): "
        f"{n1['xla_flops']:,.0f} vs {n2['xla_flops']:,.0f}, "
        f"{n1['xla_flops_over_2macs']:.3f} and {n2['xla_flops_over_2macs']:.3f} of 2 * MACs. "
    )
    if n1["xla_flops_is_2valid_macs_plus_bias"] and n2["xla_flops_is_2valid_macs_plus_bias"]:
        return head + (
            "XLA counts 2 FLOPs (multiply + add) per kernel tap that lands inside the input — "
            "taps on the zero padding are skipped — plus one add per output element for the "
            "bias: FLOPs = 2 * MACs_without_padding + bias adds, exactly "
            f"({n1['valid_macs']:,} and {n2['valid_macs']:,} padding-free MACs)."
        )
    return head + (
        "On this backend that is *not* 2 * padding-free MACs + bias adds "
        f"({2 * n1['valid_macs'] + n1['bias_adds']:,} and "
        f"{2 * n2['valid_macs'] + n2['bias_adds']:,}), the relation XLA's CPU cost model "
        "satisfies; treat the count as the compiler's estimate."
    )


def _q1_section(result: dict[str, Any]) -> list[str]:
    """The Q1 answer, its assumptions and the table of checks."""
    args = result["args"]
    return [
        "## Q1: cross-entropy vs KL divergence",
        "",
        "KL(P||Q) = sum_y P(y) log(P(y)/Q(y)), H(P,Q) = -sum_y P(y) log Q(y), and "
        "**H(P,Q) = H(P) + KL(P||Q)**. In classification the target P(y|x) is a one-hot label, "
        "so H(P) = 0 and minimising cross-entropy is *exactly* minimising KL. With soft targets "
        f"(e.g. label smoothing, eps = {args['smoothing']}) the two differ by H(P), which does "
        "not depend on the model's parameters, so their gradients are identical and training is "
        "the same.",
        "",
        "Assumptions:",
        "",
        *(f"- {a}" for a in ASSUMPTIONS),
        "",
        f"Checked with `jnn.losses` on {args['rows']} rows x {args['classes']} classes, in "
        "float32 and float64:",
        "",
        "Loss deviations are divided by max(1, |loss|) (absolute below 1 nat, relative above: "
        "float32 resolves a 10-nat loss only to about 1e-6); gradient deviations are relative "
        "to the largest gradient entry. 0 means bit-exact.",
        "",
        q1_table(result["q1"]),
    ]


def _q2_section(result: dict[str, Any]) -> list[str]:
    """The Q2 answer: the table and one bullet per quantity."""
    q2, backend = result["q2"], result["device"]["backend"]
    n1, n2 = (q2["networks"][name] for name in NETWORKS)
    r = q2["ratio_network1_over_network2"]
    return [
        "## Q2: cost of a 1x1 bottleneck convolution",
        "",
        "Input 28x28x192. Network 1: conv 5x5, same padding, 32 filters. Network 2: conv 1x1, "
        "same, 16 filters, then conv 5x5, same, 32 filters. Both built from jnn's own `Conv2D` "
        "layers (NHWC, `jnn.bottleneck`); every number below is read off the built and run "
        "models.",
        "",
        q2_table(q2),
        f"- **Output shapes**: both {'x'.join(map(str, n1['output_shape']))}. Same padding "
        "with stride 1 keeps the 28x28 spatial size by definition, so the original answer's "
        "26x26 and 30x30 are wrong (a 'valid' 5x5 conv would give 24x24).",
        f"- **Parameters** (weights + biases, from the param pytree): {n1['params']:,} vs "
        f"{n2['params']:,} ({r['params']:.1f}x fewer). Network 1 is 5*5*192*32 + 32; the "
        "original answer's 55,328 is wrong.",
        f"- **Multiply-accumulates** per example (every kernel tap, padding included): "
        f"{n1['macs']:,} vs {n2['macs']:,} ({r['macs']:.1f}x fewer).",
        _xla_sentence(n1, n2, backend),
        f"- **Measured forward time** (batch {q2['batch']}, median of {q2['repeats']} "
        f"interleaved runs after warm-up, on {backend}): "
        f"{1e3 * n1['forward_median_s']:.2f} ms vs {1e3 * n2['forward_median_s']:.2f} ms, "
        f"ratio {r['forward_median_s']:.2f}x. Wall-clock ratios depend on the machine and "
        "rarely reach the FLOP ratio: the 1x1 layer is memory-bound and small convs use the "
        "hardware less well.",
    ]


def render_markdown(result: dict[str, Any]) -> str:
    """theory.md: both answers, their assumptions, the tables and the run stamp."""
    dev = result["device"]
    return "\n".join([
        "# Theory answers, computed",
        "",
        "Generated by `python -m experiments.theory`; rerun it to check every number below.",
        "",
        *_q1_section(result),
        *_q2_section(result),
        "",
        "## Run",
        "",
        f"- device: {dev['backend']} {', '.join(dev['devices'])}; CPU {dev['cpu']} "
        f"({dev['cpu_count']} cores)",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
        f"- took {result['seconds']:.1f} s; arguments: `{result['args']}`",
        f"- load average (1 min) at the end: {result.get('load_average_1min', float('nan')):.1f} "
        f"on {dev['cpu_count']} cores (above the core count, other jobs shared the CPU and the "
        "forward times are noisy; the counts are not affected)",
        "",
    ])  # fmt: skip


LIMITS = {"rows": 100_000, "classes": 100_000, "batch": 256, "repeats": 1_000}
MAX_Q1_VALUES = 10_000_000  # rows x classes: a few hundred MB across the f32/f64 checks


@dataclass(frozen=True)
class Config:
    """Sizes of the checks, declared once (the CLI is generated from them by lab)."""

    seed: int = option(0, "numpy seed for all random inputs and weights")
    rows: int = option(256, "Q1: distributions per check")
    classes: int = option(10, "Q1: number of classes")
    smoothing: float = option(0.1, "Q1: label smoothing eps, in (0, 1)")
    batch: int = option(8, "Q2: batch size for timing")
    repeats: int = option(7, "Q2: timed forward passes per network")

    def __post_init__(self) -> None:
        """Refuse sizes that cannot work (or would allocate tens of GB) before anything runs."""
        for name, limit in LIMITS.items():
            config.integer(getattr(self, name), name, 2 if name == "classes" else 1, limit)
        if self.rows * self.classes > MAX_Q1_VALUES:
            raise config.ConfigError(
                f"`rows` x `classes` = {self.rows * self.classes:,} values is more than the "
                f"{MAX_Q1_VALUES:,} these checks need; lower one of them"
            )
        if not isinstance(self.smoothing, float) or not 0.0 < self.smoothing < 1.0:
            raise config.ConfigError(f"`smoothing` must be in (0, 1), got {self.smoothing}")
        config.integer(self.seed, "seed", 0, 2**32 - 1)


def regenerable(out: str, overwrite: bool) -> bool:
    """True when ``out`` is a folder holding only this command's outputs (and jnn's marker and
    lock): it is regenerated in place. Other files there are refused unless ``--overwrite``."""
    path = Path(out).expanduser().resolve()
    if not path.is_dir() or overwrite:
        return False
    mine = set(OUTPUT_FILES) | workdir.BOOKKEEPING
    foreign = sorted(p.name for p in path.iterdir() if p.name not in mine)
    if foreign:
        raise workdir.RunDirError(
            f"output folder {path} holds files this command did not write "
            f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); "
            "pass --overwrite to replace the folder, or another --out"
        )
    return True


def parse(argv: Sequence[str] | None) -> lab.Invocation:
    """Command line -> the checked config; an output folder holding only this command's outputs
    is regenerated in place."""
    inv = lab.parse(
        Config, argv, name="theory", quick={}, epilog=harness.EXIT_CODES_NO_TRAINING,
        description="Answer the assignment's theory questions with code: Q1 cross-entropy vs "
        "KL divergence, Q2 the cost of a 1x1 bottleneck convolution. Prints the tables and "
        "writes theory.md and theory.json. Takes seconds.",
    )  # fmt: skip
    return inv._replace(resume=inv.resume or regenerable(inv.out, inv.overwrite))


def run(inv: lab.Invocation, run_dir: Path | None = None) -> dict[str, Any]:
    """Both questions; returns the result (the harness stamps versions and device)."""
    cfg: Config = inv.config
    t0 = time.perf_counter()
    q1 = {
        dtype: ce_kl_checks(cfg.seed, dtype, cfg.rows, cfg.classes, cfg.smoothing)
        for dtype in TOLERANCE
    }
    q2 = bottleneck_costs(cfg.seed, cfg.batch, cfg.repeats)
    return {
        "status": "ok",
        "args": {**asdict(cfg), "out": inv.out},
        "tolerance": TOLERANCE,
        "assumptions": ASSUMPTIONS,
        "q1": q1,
        "q2": q2,
        "seconds": time.perf_counter() - t0,
        "load_average_1min": os.getloadavg()[0],  # a shared machine makes the times noisy
    }


def render(result: dict[str, Any], run_dir: Path) -> list[Path]:
    """theory.json and theory.md in ``run_dir``."""
    workdir.write_json(run_dir / "theory.json", result)
    workdir.write_text_atomic(run_dir / "theory.md", render_markdown(result))
    return [run_dir / name for name in ("theory.json", "theory.md")]


def console(result: dict[str, Any]) -> str:
    """The two tables, as printed at the end."""
    q1, q2 = q1_table(result["q1"]), q2_table(result["q2"])
    return (
        f"Q1: cross-entropy vs KL divergence\n\n{q1}\nQ2: 1x1 bottleneck convolution cost\n\n{q2}"
    )


EXPERIMENT = harness.Experiment("theory", parse, run, render, console)
cli = main = harness.cli(EXPERIMENT)

if __name__ == "__main__":
    raise SystemExit(cli())
