"""VGG16 transfer learning on Fashion-MNIST: a frozen ImageNet VGG16 base, a new dense head.

The original VGG16 study's split (48,000 / 12,000 of the 60,000 training images, stratified,
seeded). Each 28x28 gray image is repeated into 3 channels, resized (bilinear) to ``--size`` and
preprocessed as the chosen weights expect. Because the base is frozen, its output for an image
never changes: it is run once over every image in jitted batches and the features are cached in
memory. The head is a jnn model (``jnn.vgg.transfer_model``)::

    Flatten  Standardize  Dense(512) ReLU Dropout(0.5)  Dense(256) ReLU Dropout(0.5)  Dense(10)

trained on the cached features by the library loop (``jnn.train.make_epoch_fn`` / ``fit``: one
jitted ``lax.scan`` per epoch), Adam, gradients by the layers' hand-written backward
(``--gradients manual``, default) or ``jax.grad`` (``autodiff``). ``Standardize`` subtracts fixed
train-set means and divides by stds (frozen VGG features reach the hundreds;
``--no-standardize`` feeds them raw). ``--finetune-top`` also trains block5, as jnn layers
(``jnn.vgg.Conv3x3Layer``, ReLU, MaxPool2D) initialised from the VGG16 weights, with its own
Adam lr (``--finetune-lr``): the cache then holds block4's output and block5 runs inside the
training step, its backward hand-written too.

A non-finite loss or param stops training (``fit``): the last good epoch is kept, reported and
saved, results.json says ``status: "diverged"`` and the exit code is 3. The trained model is
saved, checksummed, in ``<out>/head/<epoch>/``; ``jnn.runs.load_vgg_head(out)`` restores it.

Weights: ``keras`` (default; the published ImageNet file from the cache or downloaded once),
``torch`` (torchvision's file; needs torch), a local ``.h5``/``.pth`` path, or ``random`` (He
init, explicitly labelled "random init, not pretrained" everywhere: a floor, not a result).

    python -m experiments.vgg_transfer --size 64                 # pretrained Keras weights
    python -m experiments.vgg_transfer --weights ~/Downloads/vgg16_weights_tf_dim_ordering_\
tf_kernels_notop.h5                                              # offline: a local file
    python -m experiments.vgg_transfer --weights random --quick  # seconds, no download

Exit codes: 0 done; 2 bad input (one line on stderr); 3 the head diverged (last good state kept).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from experiments import harness, report, timing
from jnn import core, features, runs, train, vgg, vgg_weights
from jnn.checkpoints import CheckpointError, CheckpointStore
from jnn.data import CLASS_NAMES, load_fashion_mnist, split_indices
from jnn.errors import InputError
from jnn.parallel import check_divisible, data_mesh, make_sharded_epoch_fn, replicate

NAME = "vgg_transfer"
RANDOM_LABEL = "random init, not pretrained"
OUTPUT_FILES = ("results.json", "results.md", "confusion_matrix.png")
QUICK = {"train_size": 2000, "test_size": 500, "epochs": 2}
MAX_FEATURE_BATCH = 4096  # 4096 images at 64x64 through VGG16 need ~3 GB of activations
EVAL_CHUNK = 2048  # test examples per evaluation call: bounds block5's activations
BENCH = {"images": 512, "batch_size": 64, "reps": 3}  # --bench-torch


@dataclass(frozen=True)
class Config:
    weights: str = "keras"
    size: int = 32
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    gradients: str = "manual"
    finetune_top: bool = False
    finetune_lr: float = 1e-5
    standardize: bool = True
    feature_batch: int = 256
    quick: bool = False
    train_size: int | None = None
    test_size: int | None = None
    bench_torch: bool = False
    seed: int = 0
    devices: int | None = None
    data_dir: str | None = None
    cache_dir: str | None = None
    out: str = harness.default_out(NAME)
    overwrite: bool = False


# ------------------------------------------------------------------------------------- data


def take_stratified(indices: np.ndarray, labels: np.ndarray, n: int | None) -> np.ndarray:
    """A class-balanced subset of ``n`` of ``indices``: the first images of each class in turn."""
    if n is None or n >= len(indices):
        return indices
    lab = labels[indices]
    rank = np.empty(len(indices), np.int64)  # position of each image within its class
    for c in np.unique(lab):
        rank[lab == c] = np.arange(np.sum(lab == c))
    order = np.lexsort((np.arange(len(indices)), rank))  # by rank, then by original order
    return indices[np.sort(order[:n])]


class Data(NamedTuple):
    images: np.ndarray  # (70000, 28, 28) uint8: train then test images
    labels: np.ndarray  # (70000,) int32
    train_idx: np.ndarray
    test_idx: np.ndarray


def load_data(cfg: Config) -> Data:
    """The original VGG16 study's split (48,000 / 12,000 of the 60,000 training images),
    optionally subset (stratified) to ``--train-size`` / ``--test-size``."""
    ds = load_fashion_mnist(cfg.data_dir)
    images = np.concatenate([ds.train_images, ds.test_images])
    labels = np.concatenate([ds.train_labels, ds.test_labels]).astype(np.int32)
    train_idx, _, test_idx = split_indices(ds, "original-vgg", seed=cfg.seed, stratify=True)
    train_idx = take_stratified(train_idx, labels, cfg.train_size)
    test_idx = take_stratified(test_idx, labels, cfg.test_size)
    return Data(images, labels, train_idx, test_idx)


# --------------------------------------------------------------------------- frozen features


def extract_features(
    extract, images: np.ndarray, batch_size: int, desc: str = "features"
) -> tuple[np.ndarray, dict[str, float]]:
    """``jnn.features.extract_features`` (the library owns the frozen-feature pipeline) with a
    progress bar named ``desc`` on a terminal."""
    bar = functools.partial(report.progress, desc=desc, unit="batch", leave=False)
    return features.extract_features(extract, images, batch_size, progress=bar)


def throughput_case(
    params: dict, size: int, fmt: str, images: np.ndarray, batch_size: int, backend: str
):
    """``case(calls)`` for ``experiments.timing``: one pass of frozen VGG16 feature extraction
    over ``images`` (after the first batch) per call, by ``backend`` "jnn" (the jitted Flax
    pipeline this experiment uses) or "torch" (PyTorch eager CPU ``torch.nn`` stack in
    torchvision's layout with the same weights, same resize and preprocessing in torch).
    Returns (case, backend label)."""
    if backend == "jnn":
        extract = features.make_extractor(params, fmt, size)
        run = lambda batch: np.asarray(extract(batch))  # noqa: E731
        label = "jnn (jax.jit)"
    elif backend == "torch":
        run, label = torch_runner(params, size, fmt)
    else:
        raise InputError(f"unknown backend {backend!r}; choose jnn or torch")

    def case(calls: int) -> None:
        for _ in range(calls):
            for s in range(batch_size, len(images), batch_size):
                run(images[s : s + batch_size])

    run(images[:batch_size])  # warm-up and compile, untimed
    return case, label


def feature_throughput(
    params: dict,
    size: int = 32,
    n_images: int = 512,
    batch_size: int = 64,
    backend: str = "jnn",
    fmt: str = "keras",
    reps: int = 1,
) -> dict[str, Any]:
    """Images/s of frozen VGG16 feature extraction at ``size`` on random gray images (see
    :func:`throughput_case`), median of ``reps`` timed passes after one warm-up batch."""
    images = np.random.default_rng(0).integers(0, 256, (n_images, 28, 28), dtype=np.uint8)
    case, label = throughput_case(params, size, fmt, images, batch_size, backend)
    t = timing.time_interleaved({backend: case}, reps=reps, warmup=0)[backend]
    timed = n_images - batch_size
    return {
        "backend": label,
        "seconds": t["median_s"],
        "images_timed": timed,
        "images_per_s": timed / t["median_s"],
    }


def compare_throughput(params: dict, size: int, fmt: str) -> dict[str, Any]:
    """jnn vs torch feature extraction, interleaved (``timing.time_interleaved``), same weights."""
    n, batch = BENCH["images"], BENCH["batch_size"]
    images = np.random.default_rng(0).integers(0, 256, (n, 28, 28), dtype=np.uint8)
    cases, labels = {}, {}
    for backend in ("jnn", "torch"):
        cases[backend], labels[backend] = throughput_case(params, size, fmt, images, batch, backend)
    timed = timing.time_interleaved(cases, reps=BENCH["reps"], warmup=0)
    bench: dict[str, Any] = {"size": size, "images": n, "batch_size": batch}
    for backend, t in timed.items():
        rate = (n - batch) / t["median_s"]
        bench[backend] = {"backend": labels[backend], **t, "images_per_s": rate}
    return bench


def torch_runner(params: dict, size: int, fmt: str):
    """(run(batch uint8 (B, 28, 28)) -> features, label): the torch reference pipeline."""
    import torch

    model = torch_vgg16_features(params)
    mean = torch.tensor(vgg.CAFFE_BGR_MEAN if fmt == "keras" else vgg.TORCH_MEAN)
    std = torch.tensor(vgg.TORCH_STD)

    def run(batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch).float()[:, None]
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear")
        x = x.expand(-1, 3, -1, -1)
        if fmt == "keras":
            x = x.flip(1) - mean.view(1, 3, 1, 1)
        else:
            x = (x / 255 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
        with torch.inference_mode():
            return model(x).numpy()

    return run, f"torch {torch.__version__} eager, {torch.get_num_threads()} threads"


def torch_vgg16_features(params: dict):
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


# ------------------------------------------------------------------------------------ head


def head_input_stats(
    feats: np.ndarray, block5: tuple | None, batch_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std (floored at 1e-3 of the mean std) of the flattened head input
    over the training set: the cached features, or block5's output on them (``block5``: the
    params of ``jnn.vgg.block_layers(5)``) before fine-tuning."""
    if block5 is not None:
        block, state = core.serial(*vgg.block_layers(5)), ((),) * vgg.BLOCK5_LAYERS
        fwd = jax.jit(lambda p, x: core.apply(block, p, state, x))
        feats = np.concatenate(
            [
                np.asarray(fwd(block5, feats[s : s + batch_size]))
                for s in range(0, len(feats), batch_size)
            ]
        )
    flat = feats.reshape(len(feats), -1).astype(np.float64)
    mean, std = flat.mean(0), flat.std(0)
    std = np.maximum(std, 1e-3 * std.mean() + 1e-12)
    return mean.astype(np.float32), std.astype(np.float32)


def block5_labels(params: tuple) -> tuple:
    """The label "block5" for the leaves of block5's layers (the first ``BLOCK5_LAYERS``), else
    "head" (``optax.multi_transform``'s param labels)."""
    names = ["block5" if i < vgg.BLOCK5_LAYERS else "head" for i in range(len(params))]
    return tuple(jax.tree.map(lambda _, n=n: n, p) for n, p in zip(names, params, strict=True))


def make_optimizer(finetune_top: bool, lr: float = 1.0, finetune_lr: float = 1.0):
    """Adam(lr) on the head; with ``finetune_top`` a second Adam(finetune_lr) on block5. The rates
    live in the optimizer *state* (``optax.inject_hyperparams``), so one compiled epoch serves
    every rate: the state from ``make_optimizer(ft, lr, finetune_lr).init(params)`` sets them."""
    adam = optax.inject_hyperparams(optax.adam)
    if not finetune_top:
        return adam(learning_rate=lr)
    transforms = {"head": adam(learning_rate=lr), "block5": adam(learning_rate=finetune_lr)}
    return optax.multi_transform(transforms, block5_labels)


class HeadPrograms(NamedTuple):
    model: core.Layer
    optimizer: optax.GradientTransformation  # rates taken from the state (make_optimizer)
    init: Any  # jitted key -> TrainState
    epoch: train.EpochFn
    eval_fn: train.EvalFn


@functools.cache
def head_programs(
    finetune_top: bool,
    input_shape: tuple[int, ...],
    batch_size: int,
    gradients: str,
    devices: int | None = None,
) -> HeadPrograms:
    """The transfer model and its jitted init, epoch and evaluation, built once per setting (a
    second run in the same process, e.g. a test, reuses the compiled programs)."""
    model, optimizer, init, eval_fn = _shared_programs(finetune_top, input_shape)
    if devices is None:
        epoch = train.make_epoch_fn(model, optimizer, batch_size, gradients)
    else:
        epoch = make_sharded_epoch_fn(model, optimizer, batch_size, data_mesh(devices), gradients)
    return HeadPrograms(model, optimizer, init, epoch, eval_fn)


@functools.cache
def _shared_programs(finetune_top: bool, input_shape: tuple[int, ...]) -> tuple:
    """What does not depend on the batch size or the gradient method: model, optimizer, jitted
    init (its PRNG draws compile slowly on XLA:CPU: once per process), evaluation."""
    model = vgg.transfer_model(finetune_top)
    optimizer = make_optimizer(finetune_top)
    init = jax.jit(lambda k: train.init_train_state(k, model, optimizer, input_shape))
    return model, optimizer, init, chunked_eval_fn(model)


def init_head(
    programs: HeadPrograms,
    feats: np.ndarray,
    *,
    block5: tuple | None,
    lr: float,
    finetune_lr: float,
    seed: int,
    standardize: bool = True,
) -> train.TrainState:
    """The TrainState from ``key(seed)`` (``train.init_train_state``), block5 set to the given
    params, Standardize to the train-set statistics, the optimizer state holding the rates."""
    finetune = block5 is not None
    state = programs.init(jax.random.key(seed))  # one program: eager init compiles op by op
    params, model_state = list(state.params), list(state.model_state)
    if finetune:
        params[: vgg.BLOCK5_LAYERS] = block5
    if standardize:
        mean, std = head_input_stats(feats, block5)
        model_state[vgg.standardize_index(finetune)] = {"mean": mean, "std": std}
    params, model_state = jax.tree.map(jax.numpy.asarray, (tuple(params), tuple(model_state)))
    opt_state = make_optimizer(finetune, lr, finetune_lr).init(params)
    return state._replace(params=params, model_state=model_state, opt_state=opt_state)


def chunked_eval_fn(model: core.Layer, chunk: int = EVAL_CHUNK) -> train.EvalFn:
    """``train.make_eval_fn(model)`` over fixed chunks of at most ``chunk`` examples (block5's
    activations on the whole test set would not fit): the example-weighted mean loss/accuracy."""
    one = train.make_eval_fn(model)

    def eval_fn(params, model_state, x, y):
        n, loss, acc = len(x), 0.0, 0.0
        for s in range(0, n, chunk):
            part = slice(s, min(s + chunk, n))
            l_, a_ = one(params, model_state, x[part], y[part])
            w = (part.stop - part.start) / n
            loss, acc = loss + w * l_, acc + w * a_
        return jax.numpy.asarray(loss), jax.numpy.asarray(acc)

    eval_fn.model, eval_fn.stacked = model, False  # type: ignore[attr-defined]
    return eval_fn


class HeadRun(NamedTuple):
    model: core.Layer
    params: core.Params  # of the last good epoch (numpy)
    model_state: core.State
    epoch: int  # the last good epoch (0: diverged in the first)
    diverged_at: int | None
    history: list[dict[str, float]]


def train_head(
    train_data: tuple[np.ndarray, np.ndarray],
    test_data: tuple[np.ndarray, np.ndarray],
    *,
    block5: tuple | None = None,
    epochs: int,
    batch_size: int,
    lr: float,
    finetune_lr: float = 1e-5,
    seed: int = 0,
    standardize: bool = True,
    gradients: str = "manual",
    devices: int | None = None,
) -> HeadRun:
    """Train the transfer model on cached features with the library loop (``train.fit``).

    ``block5``: fine-tune block5 from these params (``vgg.block_params``; the features are then
    block4's output). ``devices``: data parallel over a ``jnn.parallel.data_mesh`` of that many
    devices, each step's batch split along it (``jnn.parallel.make_sharded_epoch_fn``).
    Training stops at the first non-finite loss or param; the last good epoch's params are
    returned.
    """
    (x, y), (xt, yt) = train_data, test_data
    train.validate_hyperparameters(batch_size, len(x))
    programs = head_programs(block5 is not None, x.shape[1:], batch_size, gradients, devices)
    model = programs.model
    state = init_head(
        programs, x, block5=block5, lr=lr, finetune_lr=finetune_lr, seed=seed,
        standardize=standardize,
    )  # fmt: skip
    if devices is not None:
        x, y, state = replicate((x, y, state), data_mesh(devices))
    good = {0: jax.device_get((state.params, state.model_state))}
    stamps = [time.perf_counter()]
    bar = report.progress(total=epochs, desc="head epochs", unit="epoch")

    def on_epoch(epoch: int, state: train.TrainState, history: train.History) -> None:
        good.clear()
        good[epoch] = jax.device_get((state.params, state.model_state))  # before it is donated
        stamps.append(time.perf_counter())
        bar.update()
        bar.set_postfix(loss=f"{history['train_loss'][epoch - 1]:.3f}")

    fitted = train.fit(
        state, programs.epoch, (x, y), (xt, yt), eval_fn=programs.eval_fn, epochs=epochs,
        on_epoch=on_epoch,
    )  # fmt: skip
    bar.close()
    ((epoch, (params, model_state)),) = good.items()
    seconds = np.diff(stamps).tolist()
    return HeadRun(
        model, params, model_state, epoch, fitted.diverged_at, history_rows(fitted, seconds)
    )


def history_rows(fitted: train.FitResult, seconds: list[float]) -> list[dict[str, float]]:
    """One row per epoch run (the diverged one included): losses, accuracies, seconds."""
    h = fitted.history
    ran = fitted.diverged_at or len(h["train_loss"])  # without divergence every epoch ran
    return [
        {
            "epoch": e + 1,
            "train_loss": float(h["train_loss"][e]),
            "train_acc": float(h["train_accuracy"][e]),
            "test_loss": float(h["val_loss"][e]),
            "test_acc": float(h["val_accuracy"][e]),
            "seconds": seconds[e] if e < len(seconds) else float("nan"),
        }
        for e in range(ran)
    ]


# ---------------------------------------------------------------------------------- weights


def load_weights(spec: str, cache_dir: str | None, seed: int) -> dict[str, Any]:
    """``--weights`` -> {"params", "label", "preprocessing", "source", "verified", "pretrained"}."""
    if spec == "random":
        return {
            "params": vgg.he_params(seed + 1),
            "label": RANDOM_LABEL,
            "preprocessing": "keras",
            "source": f"He-normal init (numpy), seed {seed + 1}",
            "verified": False,
            "pretrained": False,
        }
    progress = sys.stderr.isatty()
    try:
        if spec in vgg.FORMATS:
            w = vgg_weights.fetch_pretrained(spec, cache_dir, progress=progress)
        else:
            path = Path(spec).expanduser()
            if not path.is_file():
                raise InputError(
                    f"--weights {spec}: no such file; use keras, torch, random or a path to "
                    "a Keras .h5 / torchvision .pth file"
                )
            fmt = vgg_weights.detect_format(path)
            w = vgg_weights.fetch_pretrained(fmt, cache_dir, weights_file=path, progress=progress)
    except vgg_weights.WeightsUnavailableError as e:
        fname = vgg_weights.OFFICIAL[spec].filename if spec in vgg.FORMATS else "the file"
        raise InputError(
            f"{e}; here: pass --weights /path/to/{fname} (or --weights random for a "
            "random-feature floor)"
        ) from None
    except ImportError as e:
        raise InputError(f"{e} (or run with --weights random for a random-feature floor)") from None
    except CheckpointError as e:  # the converted weights could not be cached (read-only, full)
        raise InputError(
            f"cannot cache the converted VGG16 weights: {e} (or pass another --cache-dir)"
        ) from None
    check_finite_weights(w.params)
    label = f"pretrained ImageNet VGG16 ({'Keras' if w.fmt == 'keras' else 'torchvision'})"
    return {
        "params": w.params,
        "label": label,
        "preprocessing": w.fmt,
        "source": w.source,
        "verified": w.verified,
        "pretrained": True,
    }


def check_finite_weights(params: dict) -> None:
    """Refuse weights with NaN or inf (they would give chance accuracy, labelled pretrained)."""
    bad = {k: int(np.size(v) - np.isfinite(v).sum()) for k, v in _flat(params).items()}
    bad = {k: n for k, n in bad.items() if n}
    if bad:
        first = next(iter(bad))
        raise InputError(
            f"the VGG16 weights hold {sum(bad.values())} NaN/inf values ({bad[first]} in {first}"
            f"{f' and {len(bad) - 1} more arrays' if len(bad) > 1 else ''}); the weight file is "
            "corrupt: download it again"
        )


def _flat(tree: Any) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


# ------------------------------------------------------------------------------ command line


FLAGS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("--weights", dict(default="keras", help="keras | torch (published ImageNet weights: cached, "
     "else downloaded once and hash-checked) | PATH to vgg16_weights_tf_dim_ordering_tf_kernels"
     "_notop.h5 or vgg16-397923af.pth | random (He init: labelled 'random init, not "
     "pretrained'). Default: %(default)s")),
    ("--size", dict(type=int, default=32, help="resize images to SIZExSIZE (>= 32; default 32)")),
    ("--epochs", dict(type=int, default=None, help="head epochs (default 10; "
     f"{QUICK['epochs']} with --quick)")),
    ("--batch-size", dict(type=int, default=128, help="head batch size (default 128)")),
    ("--lr", dict(type=float, default=1e-3, help="Adam learning rate of the head (default 1e-3)")),
    ("--gradients", dict(default="manual", help="manual (the layers' hand-written backward, "
     "default) or autodiff (jax.grad of the same forward and loss)")),
    ("--finetune-top", dict(action="store_true", help="also train block5 (jnn conv layers "
     "initialised from the VGG16 weights) on cached block4 features")),
    ("--finetune-lr", dict(type=float, default=1e-5, help="Adam learning rate of block5 with "
     "--finetune-top (default 1e-5)")),
    ("--standardize", dict(action=argparse.BooleanOptionalAction, default=True, help="standardize "
     "the head's input with fixed train-set mean/std (default on)")),
    ("--feature-batch", dict(type=int, default=256, help="batch size of the frozen-base feature "
     f"extraction (default 256, at most {MAX_FEATURE_BATCH})")),
    ("--quick", dict(action="store_true", help=f"small run: {QUICK['train_size']} train / "
     f"{QUICK['test_size']} test images, {QUICK['epochs']} epochs (size flags override)")),
    ("--train-size", dict(type=int, default=None, help="use only N training images")),
    ("--test-size", dict(type=int, default=None, help="use only N test images")),
    ("--bench-torch", dict(action="store_true", help="also time feature extraction against "
     "PyTorch eager CPU (needs torch)")),
    ("--seed", dict(type=int, default=0, help="seed of the split, head init, dropout (default 0)")),
    ("--devices", dict(type=int, default=None, help="train the head data-parallel over N "
     "devices; --batch-size must divide by N. On CPU, more than one needs "
     "XLA_FLAGS=--xla_force_host_platform_device_count=N (default: 1)")),
    ("--cache-dir", dict(default=None, help="VGG16 weight cache folder (default "
     "$JNN_CACHE_DIR/vgg16 or ~/.cache/jnn/vgg16)")),
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = harness.parser(
        "vgg_transfer",
        description="Fashion-MNIST on a frozen VGG16 base (features computed once, cached) "
        "with a new 512-256-10 dense head, trained by jnn's manual backprop. Writes "
        "results.json, results.md, confusion_matrix.png and the head checkpoint to --out.",
        epilog="Without network access, download the weight file elsewhere and pass it with "
        "--weights PATH (converted once, then cached as an orbax checkpoint in --cache-dir). "
        "Exit codes: 0 done, 2 bad input, 3 the head diverged (see results.json).",
    )
    for flag, kwargs in FLAGS:
        p.add_argument(flag, **kwargs)
    harness.add_data_flag(p)
    harness.add_output_flags(p, NAME)
    return p


def parse(argv: Sequence[str] | None = None) -> Config:
    """The checked, frozen config; every problem one InputError naming its flag, raised before
    anything is read or written. --quick fills its sizes only where a flag was not given."""
    a = build_parser().parse_args(argv)
    quick = QUICK if a.quick else {}
    train_size = a.train_size if a.train_size is not None else quick.get("train_size")
    test_size = a.test_size if a.test_size is not None else quick.get("test_size")
    epochs = a.epochs if a.epochs is not None else quick.get("epochs", 10)
    if a.size < vgg.MIN_SIZE:
        raise InputError(f"--size must be at least {vgg.MIN_SIZE} (VGG16 pools 5 times)")
    for flag, value in (("--epochs", epochs), ("--batch-size", a.batch_size),
                        ("--train-size", train_size), ("--test-size", test_size)):  # fmt: skip
        if value is not None:
            harness.positive_int(value, flag)
    harness.positive_int(a.feature_batch, "--feature-batch", maximum=MAX_FEATURE_BATCH)
    harness.positive_float(a.lr, "--lr")
    harness.positive_float(a.finetune_lr, "--finetune-lr")
    harness.seed(a.seed)
    harness.choice(a.gradients, core.GRADIENT_METHODS, "--gradients")
    harness.data_dir(a.data_dir)
    if a.cache_dir is not None and Path(a.cache_dir).expanduser().exists():
        if not Path(a.cache_dir).expanduser().is_dir():
            raise InputError(f"--cache-dir {a.cache_dir} is a file; pass a folder (or none)")
    if train_size is not None and a.batch_size > train_size:
        raise InputError(f"--batch-size {a.batch_size} exceeds the {train_size} training images")
    if a.devices is not None:
        harness.positive_int(a.devices, "--devices")
        check_divisible(a.batch_size, data_mesh(a.devices), what="--batch-size")
    fields = {k: v for k, v in vars(a).items() if k in Config.__dataclass_fields__}
    fields.update(train_size=train_size, test_size=test_size, epochs=epochs)
    return Config(**{**fields, "out": a.out or harness.default_out(NAME)})


# ------------------------------------------------------------------------------------- run


def title_of(cfg: Config, pretrained: bool) -> str:
    title = f"VGG16 transfer on Fashion-MNIST ({cfg.size}x{cfg.size})"
    return title if pretrained else f"{title} — {RANDOM_LABEL.upper()}"


def frozen_features(cfg: Config, weights: dict, data: Data) -> tuple[np.ndarray, dict[str, Any]]:
    """Blocks 1-5 (1-4 with --finetune-top) over the train and test images, once."""
    last_block = 4 if cfg.finetune_top else 5
    extract = features.make_extractor(
        weights["params"], weights["preprocessing"], cfg.size, last_block
    )
    all_idx = np.concatenate([data.train_idx, data.test_idx])
    feats, fe = extract_features(extract, data.images[all_idx], cfg.feature_batch, "frozen base")
    print(
        f"frozen base: {len(all_idx)} images -> features {feats.shape[1:]} at "
        f"{fe['images_per_s']:.0f} images/s (+{fe['compile_and_first_batch_s']:.1f} s compile)",
        flush=True,
    )
    fe.update(
        images=len(all_idx),
        last_block=last_block,
        feature_shape=list(feats.shape[1:]),
        batch_size=cfg.feature_batch,
    )
    return feats, fe


def features_of_run(run_dir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """The cached-feature input of a finished run's test images, and their labels: re-extracted
    with the run's weights, size, split and feature batch (what its head was evaluated on)."""
    try:
        cfg = Config(**json.loads((Path(run_dir) / "results.json").read_text())["config"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"{run_dir}: no readable vgg_transfer results.json ({err})") from None
    weights = load_weights(cfg.weights, cfg.cache_dir, cfg.seed)
    data = load_data(cfg)
    last_block = 4 if cfg.finetune_top else 5
    extract = features.make_extractor(
        weights["params"], weights["preprocessing"], cfg.size, last_block
    )
    feats, _ = extract_features(extract, data.images[data.test_idx], cfg.feature_batch, "test")
    return feats, data.labels[data.test_idx]


def save_head(run_dir: Path, head: HeadRun) -> runs.LoadedHead:
    """The last good epoch's model into ``run_dir/head/<epoch>`` (checksummed store)."""
    with CheckpointStore(run_dir / runs.VGG_HEAD_DIR) as store:
        store.save(head.epoch, {"params": head.params, "model_state": head.model_state})
    return runs.LoadedHead(head.model, head.params, head.model_state, {}, head.epoch)


def run(cfg: Config, run_dir: Path) -> dict[str, Any]:
    """Weights, data, frozen features, the head (library loop), its checkpoint; the result."""
    weights = load_weights(cfg.weights, cfg.cache_dir, cfg.seed)  # before data: fail early
    title = title_of(cfg, weights["pretrained"])
    print(title if weights["pretrained"] else f"{title}\nWARNING: weights are {RANDOM_LABEL}: "
          "this is a random-feature floor, not transfer learning", flush=True)  # fmt: skip
    data = load_data(cfg)
    feats, fe = frozen_features(cfg, weights, data)
    n_train = len(data.train_idx)
    block5 = vgg.block_params(weights["params"], 5) if cfg.finetune_top else None
    head = train_head(
        (feats[:n_train], data.labels[data.train_idx]),
        (feats[n_train:], data.labels[data.test_idx]),
        block5=block5, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
        finetune_lr=cfg.finetune_lr, seed=cfg.seed, standardize=cfg.standardize,
        gradients=cfg.gradients, devices=cfg.devices,
    )  # fmt: skip
    y_test = data.labels[data.test_idx]
    y_pred = save_head(run_dir, head).predict(feats[n_train:])
    result = summarize(cfg, weights, title, y_test, y_pred, head, n_train)
    result["feature_extraction"] = fe
    result["head"]["input_shape"] = fe["feature_shape"]
    if cfg.bench_torch:
        result["throughput_vs_torch"] = compare_throughput(
            weights["params"], cfg.size, weights["preprocessing"]
        )
    return result


def summarize(
    cfg: Config,
    weights: dict,
    title: str,
    y_test: np.ndarray,
    y_pred: np.ndarray,
    head: HeadRun,
    n_train: int,
) -> dict[str, Any]:
    """The JSON-able result: accuracy of the last good epoch, per class, history, status."""
    cm = confusion_matrix(y_test, y_pred)
    per_class = np.diag(cm) / np.maximum(cm.sum(1), 1)
    epoch_s = [h["seconds"] for h in head.history if np.isfinite(h["seconds"])] or [float("nan")]
    return {
        "title": title,
        "status": "ok" if head.diverged_at is None else "diverged",
        "diverged_at": head.diverged_at,
        "pretrained": weights["pretrained"],
        "weights": {k: v for k, v in weights.items() if k != "params"},
        "config": asdict(cfg),
        "data": {
            "size": cfg.size,
            "train": n_train,
            "test": len(y_test),
            "split": "original-vgg: stratified 48,000 / 12,000 of the 60,000 training images",
        },
        "accuracy": float(np.mean(y_pred == y_test)),
        "per_class_accuracy": dict(zip(CLASS_NAMES, per_class.tolist(), strict=True)),
        "per_class_count": cm.sum(1).tolist(),
        "confusion_matrix": cm.tolist(),
        "history": head.history,
        "head": {
            "model": head.model.name,
            "gradients": cfg.gradients,
            "checkpoint": f"{runs.VGG_HEAD_DIR}/{head.epoch}",
            "epoch": head.epoch,
            "params": core.count_params(head.params),
            "first_epoch_seconds": epoch_s[0],
            "epoch_seconds_median": float(np.median(epoch_s[1:] or epoch_s)),
            "epoch_seconds": epoch_s,
        },
    }


# --------------------------------------------------------------------------------- outputs


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, classes: int = 10) -> np.ndarray:
    """(classes, classes) counts: row = true class, column = predicted class."""
    cm = np.zeros((classes, classes), np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def plot_confusion(cm: np.ndarray, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 7))
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(10), CLASS_NAMES, rotation=45, ha="right")
    ax.set_yticks(range(10), CLASS_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(10):
        for j in range(10):
            color = "white" if norm[i, j] > 0.5 else "black"
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7, color=color)
    fig.colorbar(im, ax=ax, label="fraction of true class")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def describe_training(r: dict[str, Any]) -> str:
    c = r["config"]
    text = (
        f"- trained: head 512-256-10 (ReLU, dropout 0.5), {c['gradients']} gradients, Adam lr "
        f"{c['lr']}, {c['epochs']} epochs, batch {c['batch_size']}, head input "
        + ("standardized (train mean/std)" if c["standardize"] else "raw")
        + (f"; block5 fine-tuned (lr {c['finetune_lr']})" if c["finetune_top"] else "; base frozen")
    )
    if r["status"] == "diverged":
        text += (
            f"\n- **diverged at epoch {r['diverged_at']}** (non-finite loss or params); the "
            f"accuracy below is the last good epoch's ({r['head']['epoch']})"
        )
    return text


def render_markdown(r: dict[str, Any]) -> str:
    fe, head, c, w = r["feature_extraction"], r["head"], r["config"], r["weights"]
    lines = [
        f"# {r['title']}",
        "",
        f"- weights: {w['label']} (preprocessing `{w['preprocessing']}`, source "
        f"`{w['source']}`, hash verified: {w['verified']})",
        f"- images: {c['size']}x{c['size']} RGB from 28x28 gray; train {r['data']['train']}, "
        f"test {r['data']['test']} ({r['data']['split']}, seed {c['seed']})"
        f"{' — quick subset' if c['quick'] else ''}",
        describe_training(r),
        "",
        f"**Test accuracy: {r['accuracy']:.4f}**",
        "",
        class_table(r),
        "## Timing",
        "",
        f"- frozen feature extraction (blocks 1-{fe['last_block']}): "
        f"{fe['images_per_s']:.0f} images/s over {fe['images']} images "
        f"({fe['seconds']:.1f} s; first batch incl. compile "
        f"{fe['compile_and_first_batch_s']:.1f} s)",
        f"- head: {head['epoch_seconds_median']:.3f} s per epoch incl. the test evaluation "
        f"(median after the first; first epoch incl. compile {head['first_epoch_seconds']:.2f} s)",
        f"- total wall time: {r.get('wall_s', float('nan')):.1f} s on {r['device']['backend']} "
        f"({r['device']['cpu']}, {r['device']['cpu_count']} cores)",
    ]
    if "throughput_vs_torch" in r:
        t = r["throughput_vs_torch"]
        lines.append(
            f"- feature extraction at {c['size']}x{c['size']}: jnn "
            f"{t['jnn']['images_per_s']:.0f} images/s vs {t['torch']['backend']} "
            f"{t['torch']['images_per_s']:.0f} images/s (same weights, median of "
            f"{t['jnn']['reps']} interleaved passes)"
        )
    return "\n".join([*lines, "", "![confusion matrix](confusion_matrix.png)", ""])


def class_table(r: dict[str, Any]) -> str:
    rows = zip(CLASS_NAMES, r["per_class_accuracy"].values(), r["per_class_count"], strict=True)
    return report.markdown_table(["class", "accuracy", "test images"], rows)


def render(result: dict[str, Any], run_dir: Path) -> list[Path]:
    """results.json, results.md and confusion_matrix.png, from ``result`` alone."""
    run_dir = Path(run_dir)
    paths = [run_dir / name for name in OUTPUT_FILES]
    report.write_json(paths[0], result)
    report.write_text_atomic(paths[1], render_markdown(result))
    title = f"{result['title']}\ntest accuracy {result['accuracy']:.4f}"
    plot_confusion(np.asarray(result["confusion_matrix"]), title, paths[2])
    return paths


def console(result: dict[str, Any]) -> str:
    rows = zip(CLASS_NAMES, result["per_class_accuracy"].values(), strict=True)
    lines = [report.markdown_table(["class", "accuracy"], rows)]
    lines.append(
        f"test accuracy {result['accuracy']:.4f}"
        + ("" if result["pretrained"] else f" ({RANDOM_LABEL})")
    )
    if result["status"] == "diverged":
        lines.append(
            f"the head diverged at epoch {result['diverged_at']}: reported and saved the last "
            f"good epoch ({result['head']['epoch']})"
        )
    lines.append(f"head: {result['head']['epoch_seconds_median']:.3f} s/epoch")
    return "\n".join(lines)


EXPERIMENT = harness.Experiment(NAME, parse, run, render, console)
main = harness.cli(EXPERIMENT)
cli = main  # the name the earlier entry point had


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    raise SystemExit(main())
