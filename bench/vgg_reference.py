"""Time frozen VGG16 feature extraction, jnn (jax.jit) against PyTorch eager, same weights.

    python -m bench.vgg_reference                            # random weights, 32x32
    python -m bench.vgg_reference --weights keras --size 64  # the published file (cached)

The reference is a ``torch.nn`` stack in torchvision's ``vgg16().features`` layout holding the
same weights as jnn's (:func:`torch_vgg16_features`), fed by the same resize and preprocessing
written in torch (:func:`torch_runner`), run eagerly on ``--torch-device``.
:func:`compare_throughput` times both pipelines over the same random gray images, interleaved
(``jnn.timing``), after an untimed warm-up batch each; ``bench.benchmark``'s ``vgg`` section
times :func:`throughput_case`'s torch case beside jnn's pipeline. Needs torch (optional);
without it the command says so in one line. Writes probe.json and probe.md into ``--out``
(default ``runs/vgg_reference``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

import bench
from experiments import harness, lab, report
from jnn import config, features, timing, vgg, vgg_weights
from jnn.config import option
from jnn.errors import InputError

BACKENDS = ("jnn", "torch")


def torch_vgg16_features(params: dict) -> Any:
    """A torch.nn VGG16 ``features`` stack (torchvision indexing) holding jnn ``params``."""
    import torch

    layers, cin = [], 3
    for _, n, width in vgg.BLOCKS:
        for _ in range(n):
            layers += [torch.nn.Conv2d(cin, width, 3, padding=1), torch.nn.ReLU(inplace=True)]
            cin = width
        layers.append(torch.nn.MaxPool2d(2, 2))
    model = torch.nn.Sequential(*layers)
    state = {}
    for layer, idx in vgg_weights.TORCH_FEATURE_INDEX.items():
        kernel = np.asarray(params[layer]["kernel"]).transpose(3, 2, 0, 1)  # HWIO -> OIHW
        state[f"{idx}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel))
        state[f"{idx}.bias"] = torch.from_numpy(np.array(params[layer]["bias"]))
    model.load_state_dict(state, strict=True)
    return model.eval()


def torch_runner(
    params: dict, size: int, fmt: str, device: str = "cpu"
) -> tuple[Callable[[np.ndarray], Any], str]:
    """(run(batch uint8 (B, 28, 28)) -> features (B, 512, h, w), label): the torch pipeline on
    ``device`` ("cpu" or "cuda"; the batch goes there and the features come back as numpy, as
    jnn's pipeline does)."""
    import torch

    model = torch_vgg16_features(params).to(device)
    mean = torch.tensor(vgg.CAFFE_BGR_MEAN if fmt == "keras" else vgg.TORCH_MEAN, device=device)
    std = torch.tensor(vgg.TORCH_STD, device=device)

    def run(batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch).to(device).float()[:, None]
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear")
        x = x.expand(-1, 3, -1, -1)
        if fmt == "keras":
            x = x.flip(1) - mean.view(1, 3, 1, 1)
        else:
            x = (x / 255 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
        with torch.inference_mode():
            return model(x).cpu().numpy()

    threads = f"{torch.get_num_threads()} threads"
    where = torch.cuda.get_device_name() if device == "cuda" else threads
    return run, f"torch {torch.__version__} eager on {device}, {where}"


def throughput_case(
    params: dict,
    size: int,
    fmt: str,
    images: np.ndarray,
    batch_size: int,
    backend: str,
    torch_device: str = "cpu",
) -> tuple[Callable[[int], None], str]:
    """``case(calls)`` for ``jnn.timing``: one pass of frozen VGG16 feature extraction
    over ``images`` (after the first batch) per call, by ``backend`` "jnn" (``jnn.features``'
    jitted pipeline, on JAX's default device) or "torch" (:func:`torch_runner` on
    ``torch_device``). Returns (case, backend label)."""
    if backend == "jnn":
        extract = features.make_extractor(params, fmt, size)
        run = lambda batch: np.asarray(extract(batch))  # noqa: E731
        label = "jnn (jax.jit)"
    elif backend == "torch":
        run, label = torch_runner(params, size, fmt, torch_device)
    else:
        raise InputError(f"unknown backend {backend!r}; choose jnn or torch")

    def case(calls: int) -> None:
        for _ in range(calls):
            for s in range(batch_size, len(images), batch_size):
                run(images[s : s + batch_size])

    run(images[:batch_size])  # warm-up and compile, untimed
    return case, label


def random_images(n: int, seed: int = 0) -> np.ndarray:
    """(n, H, W) uint8 gray images of the study's size: timing does not depend on content."""
    return np.random.default_rng(seed).integers(0, 256, (n, *bench.IMAGE_SHAPE[:2]), np.uint8)


def compare_throughput(
    params: dict,
    size: int,
    fmt: str,
    n_images: int = 512,
    batch_size: int = 64,
    reps: int = 3,
    torch_device: str = "cpu",
) -> dict[str, Any]:
    """jnn vs torch (on ``torch_device``) feature extraction on the same weights and images,
    interleaved: per backend the timing summary (``timing.summarize``) and images/s of the
    batches after the first."""
    if n_images <= batch_size:
        raise InputError(f"need more images than one batch ({batch_size}), got {n_images}")
    images = random_images(n_images)
    cases, labels = {}, {}
    for backend in BACKENDS:
        cases[backend], labels[backend] = throughput_case(
            params, size, fmt, images, batch_size, backend, torch_device
        )
    timed = timing.time_interleaved(cases, reps=reps, warmup=0)
    bench: dict[str, Any] = {"size": size, "images": n_images, "batch_size": batch_size}
    for backend, t in timed.items():
        rate = (n_images - batch_size) / t["median_s"]
        bench[backend] = {"backend": labels[backend], **t, "images_per_s": rate}
    return bench


QUICK = {"images": 96, "batch_size": 32, "reps": 1}


@dataclass(frozen=True)
class Config:
    """What the command times, declared once (the command line is generated from it by
    ``experiments.lab``)."""

    weights: str = option("random", "keras, torch, a file PATH, or random (He init)")
    size: int = option(32, "images resized to SIZExSIZE")
    images: int = option(512, "random gray images per pass")
    batch_size: int = option(64, "images per call")
    reps: int = option(3, "timed passes per backend")
    torch_device: str = option("cpu", "PyTorch's device: cpu, cuda or auto (cuda if it has one)")
    cache_dir: str | None = option(None, "VGG16 weight cache folder [jnn's cache]")

    def __post_init__(self) -> None:
        if not isinstance(self.weights, str) or not self.weights.strip():
            raise config.ConfigError(
                f"`weights` must name keras, torch, a file or random: {self.weights!r}"
            )
        config.integer(self.size, "size", vgg.MIN_SIZE, 1024)
        for name in ("images", "batch_size", "reps"):
            config.integer(getattr(self, name), name, 1, 100_000)
        if self.images <= self.batch_size:
            raise config.ConfigError(
                f"`images` ({self.images}) must exceed `batch_size` ({self.batch_size}): the "
                "first batch is the untimed warm-up"
            )
        config.choice(self.torch_device, "torch_device", ("cpu", "cuda", "auto"))


def run(inv: lab.Invocation, run_dir: Path) -> dict[str, Any]:
    """Load the weights (``jnn.vgg_weights.load``), time both pipelines on them."""
    from bench.baselines import resolve_torch_device, torch_status

    del run_dir
    cfg = inv.config
    ok, why = torch_status()
    if not ok:
        raise InputError(f"the PyTorch reference needs torch: {why}")
    device = resolve_torch_device(cfg.torch_device)
    try:
        w = vgg_weights.load(cfg.weights, cfg.cache_dir, progress=sys.stderr.isatty())
    except vgg_weights.WeightsUnavailableError as err:
        raise InputError(f"{err}; here: pass --weights PATH, or --weights random") from None
    args = (cfg.size, w["preprocessing"], cfg.images, cfg.batch_size, cfg.reps, device)
    bench = compare_throughput(w["params"], *args)
    return {"study": "vgg_reference", "status": "ok", "config": asdict(cfg),
            "weights": w["label"], **bench, **harness.stamp()}  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    """Images/s of each backend and their ratio."""
    rows = [[result[b]["backend"], f"{result[b]['median_s']:.3f}",
             f"{result[b]['images_per_s']:,.0f}"] for b in BACKENDS]  # fmt: skip
    ratio = result["jnn"]["images_per_s"] / result["torch"]["images_per_s"]
    return "\n".join([
        "# Frozen VGG16 features: jnn against PyTorch eager\n",
        f"Weights {result['weights']}; {result['size']}x{result['size']}, {result['images']} "
        f"random gray images in batches of {result['batch_size']} (the first untimed), median of "
        f"{result['config']['reps']} interleaved passes; CPU {result['device']['cpu']}.\n",
        report.markdown_table(["backend", "s / pass", "images/s"], rows),
        f"jnn / PyTorch: {ratio:.2f}x the images/s.",
    ])  # fmt: skip


EXPERIMENT = bench.probe("vgg_reference", Config, __doc__, QUICK, run, markdown)
parse, main = EXPERIMENT.parse, harness.cli(EXPERIMENT)

if __name__ == "__main__":
    raise SystemExit(main())
