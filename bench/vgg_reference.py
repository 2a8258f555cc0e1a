"""The PyTorch reference for frozen VGG16 feature extraction, and jnn timed against it.

    python -m bench.vgg_reference                            # random weights, 32x32
    python -m bench.vgg_reference --weights keras --size 64  # the published file (cached)

The reference is a ``torch.nn`` stack in torchvision's ``vgg16().features`` layout holding the
same weights as jnn's (:func:`torch_vgg16_features`), fed by the same resize and preprocessing
written in torch (:func:`torch_runner`), run eagerly (on the CPU here; the benchmark's ``vgg``
section runs it on ``--torch-device``). :func:`compare_throughput` times
both pipelines over the same random gray images, interleaved (``jnn.timing``), after an
untimed warm-up batch each; ``bench.benchmark``'s ``vgg`` section uses
:func:`feature_throughput`. Needs torch (optional); without it the command says so in one line.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

import bench
from bench import checks
from experiments import harness, report
from jnn import features, timing, vgg, vgg_weights
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


def feature_throughput(
    params: dict,
    size: int = 32,
    n_images: int = 512,
    batch_size: int = 64,
    backend: str = "jnn",
    fmt: str = "keras",
    reps: int = 1,
    torch_device: str = "cpu",
) -> dict[str, Any]:
    """Images/s of one backend at ``size`` on random gray images (see :func:`throughput_case`),
    median of ``reps`` timed passes after one warm-up batch."""
    images = random_images(n_images)
    case, label = throughput_case(params, size, fmt, images, batch_size, backend, torch_device)
    t = timing.time_interleaved({backend: case}, reps=reps, warmup=0)[backend]
    timed = n_images - batch_size
    return {
        "backend": label,
        "seconds": t["median_s"],
        "images_timed": timed,
        "images_per_s": timed / t["median_s"],
    }


def compare_throughput(
    params: dict, size: int, fmt: str, n_images: int = 512, batch_size: int = 64, reps: int = 3
) -> dict[str, Any]:
    """jnn vs torch feature extraction on the same weights and images, interleaved: per backend
    the timing summary (``timing.summarize``) and images/s of the batches after the first."""
    if n_images <= batch_size:
        raise InputError(f"need more images than one batch ({batch_size}), got {n_images}")
    images = random_images(n_images)
    cases, labels = {}, {}
    for backend in BACKENDS:
        cases[backend], labels[backend] = throughput_case(
            params, size, fmt, images, batch_size, backend
        )
    timed = timing.time_interleaved(cases, reps=reps, warmup=0)
    bench: dict[str, Any] = {"size": size, "images": n_images, "batch_size": batch_size}
    for backend, t in timed.items():
        rate = (n_images - batch_size) / t["median_s"]
        bench[backend] = {"backend": labels[backend], **t, "images_per_s": rate}
    return bench


def parse(argv: Sequence[str] | None) -> Any:
    p = harness.parser(
        "vgg_reference",
        package="bench",
        description="Time frozen VGG16 feature extraction, jnn (jax.jit) against PyTorch eager "
        "on the CPU, same weights and images; prints the result as JSON.",
        epilog=harness.EXIT_CODES_NO_TRAINING,
    )
    p.add_argument("--weights", default="random", help="keras | torch | PATH | random [random]")
    p.add_argument("--size", type=int, default=32, help="images resized to SIZExSIZE [32]")
    p.add_argument("--images", type=int, default=512, help="random gray images per pass [512]")
    p.add_argument("--batch-size", type=int, default=64, help="images per call [64]")
    p.add_argument("--reps", type=int, default=3, help="timed passes per backend [3]")
    p.add_argument("--cache-dir", default=None, help="VGG16 weight cache folder")
    a = p.parse_args(argv)
    if a.size < vgg.MIN_SIZE:
        raise InputError(f"--size must be at least {vgg.MIN_SIZE} (VGG16 pools 5 times)")
    for name in ("images", "batch_size", "reps"):
        checks.positive_int(getattr(a, name), harness.flag(name), maximum=100_000)
    return a


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, load the weights (``jnn.vgg_weights.load``), time both, print JSON."""
    a = parse(argv)
    try:
        import torch  # noqa: F401
    except ImportError:
        raise InputError("the PyTorch reference needs torch: pip install torch") from None
    try:
        w = vgg_weights.load(a.weights, a.cache_dir, progress=sys.stderr.isatty())
    except vgg_weights.WeightsUnavailableError as err:
        raise InputError(f"{err}; here: pass --weights PATH, or --weights random") from None
    bench = compare_throughput(
        w["params"], a.size, w["preprocessing"], a.images, a.batch_size, a.reps
    )
    print(json.dumps({"weights": w["label"], **bench}, indent=1))
    return 0


cli = report.cli_main(main)

if __name__ == "__main__":
    raise SystemExit(cli())
