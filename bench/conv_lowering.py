"""Which lowering is faster for each pass of each convolution, on this backend.

    python -m bench.conv_lowering --networks cnn,vgg --reps 5     (--quick: the CNN, 1 rep)

Every distinct convolution of the CNN (``jnn.models.build("cnn")``, batch 128, 28x28x1) and of
VGG16's features (``jnn.vgg.features`` at 32x32, batch 64: the benchmark's shapes) runs each of its
three passes, forward y, input gradient dx and kernel gradient dw, in both of Conv2D's lowerings:
``conv`` (``lax.conv_general_dilated``: XLA's convolution, cuDNN on GPU) and ``gemm`` (im2col
patches and one dot per batch chunk). Each (pass, lowering) is jitted alone and timed interleaved
with the others (:mod:`jnn.timing`, medians, samples of at least 50 ms so short GPU kernels are not
launch-bound). The table gives conv time / gemm time, the faster lowering, what
``lowering="auto"`` picks on this backend (:func:`jnn.layers.conv.auto_passes`), and the largest
difference between the two lowerings' results relative to the result's largest entry: float
rounding is ~1e-6 in float32; ~1e-3 means one lowering ran its products at reduced (TF32)
precision. This is the measurement ``auto``'s rule rests on; rerun it on a new backend or CPU.
Writes probe.json and probe.md into ``--out`` (default ``runs/conv_lowering``).
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

NETWORKS = {  # (input HWC, batch): the CNN on the study's images, VGG16 at the benchmark's 32x32
    "cnn": (bench.IMAGE_SHAPE, 128),
    "vgg": ((32, 32, 3), 64),
}
PASSES = ("forward", "input_grad", "kernel_grad")
MIN_SAMPLE_S = 0.05
QUICK = {"networks": ("cnn",), "reps": 1}


@dataclass(frozen=True)
class Config:
    """What the probe times, declared once (the command line is generated from it by
    ``experiments.lab``)."""

    networks: tuple[str, ...] = option(
        ("cnn", "vgg"), "networks whose convolutions to time: cnn, vgg"
    )
    reps: int = option(5, "timed repetitions after 1 warm-up")
    seed: int = option(0, "seed of the random operands")

    def __post_init__(self) -> None:
        for name in self.networks:
            config.choice(name, "networks", tuple(NETWORKS))
        config.distinct(self.networks, "networks")
        config.integer(self.reps, "reps", 1, 100)
        config.integer(self.seed, "seed", 0, config.MAX_SEED)


def conv_shapes(network: str) -> list[dict[str, Any]]:
    """The network's distinct convolutions, in call order, as recorded by
    :func:`jnn.layers.conv.record_plans` (``jax.eval_shape``: nothing computed), each with the
    network's ``batch``."""
    import jax
    import jax.numpy as jnp

    from jnn import models, vgg
    from jnn.layers.conv import conv_plans, record_plans

    (h, w, c), batch = NETWORKS[network]
    if network == "cnn":
        log = conv_plans(models.build("cnn"), (h, w, c), batch)
    else:
        params = vgg.init_params(jax.random.key(0), image_size=h)
        with record_plans() as log:
            jax.eval_shape(vgg.features, params, jnp.zeros((batch, h, w, c)))
    keys = ("input_shape", "kernel_shape", "strides", "pads")  # what makes two convs the same
    distinct = {tuple(r[k] for k in keys): r for r in log}
    kept = (*keys, "output_shape", "chunk")  # chunk: examples per GEMM chunk (any lowering)
    return [{k: r[k] for k in kept} | {"network": network, "batch": batch}
            for r in distinct.values()]  # fmt: skip


def pass_fns(shape: dict[str, Any], lowering: str) -> dict[str, Callable[..., Any]]:
    """The three passes of one convolution in ``lowering``, jitted: forward(w, x),
    input_grad(w, dy), kernel_grad(x, dy)."""
    import jax

    from jnn.layers import conv

    ksize, strides, pads = shape["kernel_shape"][:2], shape["strides"], shape["pads"]
    hw = shape["input_shape"][:2]
    chunk = shape["chunk"]
    if lowering == "conv":
        fns = {
            "forward": lambda w, x: conv.conv_forward({"w": w, "b": 0.0}, x, strides, pads)[0],
            "input_grad": lambda w, dy: conv.conv_input_grad(w, dy, hw, strides, pads),
            "kernel_grad": lambda x, dy: conv.conv_kernel_grad(x, dy, ksize, strides, pads),
        }
    else:
        fns = {
            "forward": lambda w, x: conv.gemm_forward(w, None, x, strides, pads, chunk),
            "input_grad": lambda w, dy: conv.gemm_input_grad(w, dy, hw, strides, pads, chunk),
            "kernel_grad": lambda x, dy: conv.gemm_kernel_grad(x, dy, ksize, strides, pads, chunk),
        }
    return {name: jax.jit(f) for name, f in fns.items()}


def operands(shape: dict[str, Any], seed: int) -> dict[str, tuple[Any, Any]]:
    """Random float32 operands of each pass: (w, x), (w, dy) and (x, dy), on the device."""
    import jax

    rng = np.random.default_rng(seed)
    batch, (kh, kw, c, f) = shape["batch"], shape["kernel_shape"]
    x = rng.standard_normal((batch, *shape["input_shape"]), dtype=np.float32)
    dy = rng.standard_normal((batch, *shape["output_shape"][:2], f), dtype=np.float32)
    w = rng.standard_normal((kh, kw, c, f), dtype=np.float32) / np.sqrt(kh * kw * c)
    x, dy, w = jax.device_put(x), jax.device_put(dy), jax.device_put(w)
    return {"forward": (w, x), "input_grad": (w, dy), "kernel_grad": (x, dy)}


def measure_shape(shape: dict[str, Any], cfg: Config) -> list[dict[str, Any]]:
    """One row per pass of one convolution: both lowerings timed interleaved, their ratio, the
    faster one, auto's pick on this backend and the lowerings' relative difference."""
    import jax

    from jnn.layers.conv import auto_passes

    args = operands(shape, cfg.seed)
    fns = {lowering: pass_fns(shape, lowering) for lowering in ("conv", "gemm")}
    cases, results = {}, {}
    for lowering, by_pass in fns.items():
        for name, f in by_pass.items():
            results[lowering, name] = jax.block_until_ready(f(*args[name]))
            cases[f"{lowering}/{name}"] = timing.repeated(
                lambda f=f, a=args[name]: jax.block_until_ready(f(*a))
            )
    times = timing.time_interleaved(cases, cfg.reps, 1, MIN_SAMPLE_S)
    out_hw = shape["output_shape"][0], shape["output_shape"][1]
    auto = dict(zip(PASSES, auto_passes(out_hw, jax.default_backend())))
    rows = []
    for name in PASSES:
        conv_s, gemm_s = times[f"conv/{name}"]["median_s"], times[f"gemm/{name}"]["median_s"]
        ref, other = np.asarray(results["conv", name]), np.asarray(results["gemm", name])
        scale = float(np.max(np.abs(ref))) or 1.0
        rows.append(shape | {
            "pass": name, "conv_s": conv_s, "gemm_s": gemm_s, "conv_over_gemm": conv_s / gemm_s,
            "faster": "conv" if conv_s <= gemm_s else "gemm", "auto": auto[name],
            "rel_diff": float(np.max(np.abs(ref - other))) / scale,
        })  # fmt: skip
    return rows


def run(inv: lab.Invocation, run_dir: Path) -> dict[str, Any]:
    """Every pass of every distinct convolution of the chosen networks, and a summary."""
    import jax

    del run_dir
    cfg = inv.config
    rows = [row for net in cfg.networks for s in conv_shapes(net) for row in measure_shape(s, cfg)]
    best = sum(min(r["conv_s"], r["gemm_s"]) for r in rows)
    by_auto = sum(r[f"{r['auto']}_s"] for r in rows)
    summary = {
        "backend": jax.default_backend(),
        "auto_picks_faster": sum(r["auto"] == r["faster"] for r in rows),
        "passes": len(rows),
        "auto_time_over_best": by_auto / best,
    }
    return {"study": "conv_lowering", "status": "ok", "config": asdict(cfg), "rows": rows,
            "summary": summary, **harness.stamp()}  # fmt: skip


def _shape_label(r: dict[str, Any]) -> str:
    (h, w, c), f = r["input_shape"], r["kernel_shape"][-1]
    return f"{r['network']} {h}x{w}x{c} -> {f} (batch {r['batch']})"


def markdown(result: dict[str, Any]) -> str:
    """One table row per pass, then what ``auto`` costs against the faster lowering of each."""
    cfg, rows, s = result["config"], result["rows"], result["summary"]
    head = ["convolution", "pass", "conv ms", "gemm ms", "conv / gemm", "faster", "auto",
            "max rel. diff"]  # fmt: skip
    body = [[_shape_label(r), r["pass"], f"{r['conv_s'] * 1e3:.3f}", f"{r['gemm_s'] * 1e3:.3f}",
             f"{r['conv_over_gemm']:.2f}", r["faster"],
             r["auto"] + ("" if r["auto"] == r["faster"] else " (slower)"), f"{r['rel_diff']:.1e}"]
            for r in rows]  # fmt: skip
    device = result["device"]
    where = device["devices"][0] if s["backend"] != "cpu" else device["cpu"]
    return "\n".join([
        "# Conv2D's lowerings, pass by pass\n",
        f"Backend `{s['backend']}` ({where}), jax {result['versions'].get('jax')}; median of "
        f"{cfg['reps']} interleaved repetitions after 1 warm-up, float32 random operands.\n",
        report.markdown_table(head, body),
        f"`auto` picks the faster lowering for {s['auto_picks_faster']} of {s['passes']} "
        f"passes; summed over all passes, its choices take {s['auto_time_over_best']:.2f}x the "
        "time of the faster lowering of each.",
    ])  # fmt: skip


EXPERIMENT = bench.probe("conv_lowering", Config, __doc__, QUICK, run, markdown)
parse, main = EXPERIMENT.parse, harness.cli(EXPERIMENT)

if __name__ == "__main__":
    raise SystemExit(main())
