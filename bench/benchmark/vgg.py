"""Section ``vgg``: VGG16 frozen feature extraction images/s at 32x32, jnn vs PyTorch eager.

Uses the library's pipeline (``jnn.features``, as ``experiments.vgg_transfer`` does):
``make_extractor`` / ``extract_features`` for jnn (compiled once; each repetition times every
batch after an untimed first one) and ``bench.vgg_reference.throughput_case(backend="torch")``
for the torch reference built once from the same (random) params and images, on
``--torch-device``. Repetitions
alternate jnn, torch, jnn, torch, ...

Work: the FLOPs per image are ``jnn.conv_cost``'s count of the 13 convolutions as jnn traces
them (2 * valid MACs: taps on the zero padding left out, 79% of every tap at 32x32, where
block5's 2x2 maps have 4 of 9 taps inside; pooling, ReLU and preprocessing not counted), so
each side gets GFLOP/s and its share of the XLA matmul ceiling. ``layers`` records how jnn ran
each conv (``jnn.layers.conv.record_plans``: forward lowering, batch chunks, patch bytes of the
forward, 0 for a conv), ``load`` the machine's load while timing (``cnn.machine_load``: the
PyTorch targets are judged only on a quiet machine).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from bench import IMAGE_SHAPE
from bench.benchmark.cnn import machine_load
from bench.benchmark.common import Context
from bench.benchmark.config import Config
from bench.vgg_reference import throughput_case
from jnn import features, vgg
from jnn.conv_cost import recorded_conv_costs
from jnn.errors import InputError
from jnn.layers.conv import record_plans
from jnn.timing import Stopwatch, summarize

SIZE, FMT = 32, "keras"
PIPELINE = (
    "uint8 28x28 gray -> bilinear resize -> RGB -> caffe preprocessing -> "
    "conv blocks 1-5 (features (B, 1, 1, 512))"
)


def _samples(cfg, ctx, extract, params, images, batch) -> tuple[dict, str]:
    """Alternating jnn / torch repetitions (warm-ups dropped): seconds per repetition, each
    timing every batch after the first. The torch pipeline is built (and warmed up) once."""
    samples: dict[str, list[float]] = {"jnn": []}
    torch_case, torch_label = None, ""
    if ctx.torch_device is not None:
        samples["torch_eager"] = []
        torch_case, torch_label = throughput_case(
            params, SIZE, FMT, images, batch, "torch", ctx.torch_device
        )
    for rep in range(cfg.warmup + cfg.reps):
        _, timing = features.extract_features(extract, images, batch)
        if rep >= cfg.warmup:
            samples["jnn"].append(timing["images_timed"] / timing["images_per_s"])
        if torch_case is not None:
            with Stopwatch() as sw:
                torch_case(1)
            if rep >= cfg.warmup:
                samples["torch_eager"].append(sw.s)
    return samples, torch_label


def conv_work(params: dict, batch: int) -> tuple[int, list[dict[str, Any]]]:
    """(FLOPs per image of the 13 convs, one record per conv layer) at SIZE x SIZE, ``batch``
    images a call: traced with ``jax.eval_shape`` (nothing computed)."""
    import jax.numpy as jnp

    with record_plans() as log:
        jax.eval_shape(vgg.features, params, jnp.zeros((batch, SIZE, SIZE, 3)))
    flops = 2 * sum(c.valid_macs or c.macs for c in recorded_conv_costs(log))
    keys = ("layer", "input_shape", "output_shape", "forward", "chunk", "chunks", "backend")
    layers = [{k: r[k] for k in keys} for r in log]
    for layer, r in zip(layers, log):
        layer["forward_patch_bytes"] = r["patch_bytes"] if r["forward"] == "gemm" else 0
    return flops, layers


def _rates(results: dict, flops_per_image: int, ceiling: float | None) -> None:
    """GFLOP/s and the share of the XLA matmul ceiling of every case, in place."""
    for r in results.values():
        r["gflops"] = flops_per_image * r["images_per_s"] / 1e9
        if ceiling:
            r["fraction_of_xla_ceiling"] = r["gflops"] / ceiling


def measure(cfg: Config, ctx: Context) -> dict[str, Any]:
    """images/s of both implementations on the same random weights; time vs jnn."""
    batch = 32 if cfg.small else 64
    if cfg.vgg_images <= batch:
        raise InputError(f"--vgg-images must exceed the batch size {batch} (one untimed batch)")
    params = vgg.init_params(jax.random.key(cfg.seed), image_size=SIZE)
    images = np.random.default_rng(cfg.seed).integers(
        0, 256, (cfg.vgg_images, *IMAGE_SHAPE[:2]), np.uint8
    )
    extract = features.make_extractor(params, FMT, SIZE)
    with Stopwatch() as sw:  # compile + first batch, as the VGG experiment reports it
        jax.block_until_ready(extract(images[:batch]))
    with machine_load() as load:
        samples, torch_label = _samples(cfg, ctx, extract, params, images, batch)
    timed = cfg.vgg_images - batch
    results = {name: summarize(s) for name, s in samples.items()}
    for r in results.values():
        r["images_per_s"] = timed / r["median_s"]
        r["time_vs_jnn"] = r["median_s"] / results["jnn"]["median_s"]
    results["jnn"]["compile_s"] = sw.s
    flops, layers = conv_work(params, batch)
    _rates(results, flops, ctx.ceiling)
    return {
        "flops_per_image": flops,
        "layers": layers,
        "load": load,
        "status": "ok",
        "image_size": SIZE,
        "images_timed": timed,
        "batch_size": batch,
        "weights": "random (vgg.init_params); both implementations get the same arrays",
        "pipeline": PIPELINE,
        "torch_backend": torch_label,
        "torch_device": ctx.torch_device,
        "results": results,
        "skipped": {} if ctx.torch_device is not None else {"torch_eager": ctx.torch_reason},
    }
