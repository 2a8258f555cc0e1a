"""VGG16 transfer learning on Fashion-MNIST: a frozen ImageNet VGG16 base, a new dense head.

All 70,000 images are split 80/20 train/test (stratified, seeded). Each 28x28 gray image is
repeated into 3 channels, resized (bilinear) to ``--size`` and preprocessed as the chosen
weights expect. Because the base is frozen, its output for an image never changes: it is run
once over every image in jitted batches and the features are cached in memory; the head
(512-256-10, ReLU, dropout 0.5, Adam) then trains on the cached features, each epoch one jitted
``lax.scan``. The head's input is standardized with fixed train-set mean/std (frozen VGG
features reach the hundreds; ``--no-standardize`` feeds them raw). ``--finetune-top`` also trains
block5: the cache then holds block4's output and block5 runs inside the training step.

Weights: ``keras`` (default; the published ImageNet file from the cache or downloaded once),
``torch`` (torchvision's file; needs torch), a local ``.h5``/``.pth`` path, or ``random`` (He
init, explicitly labelled "random init, not pretrained" everywhere: a floor, not a result).

    python -m experiments.vgg_transfer --size 64                 # pretrained Keras weights
    python -m experiments.vgg_transfer --weights ~/Downloads/vgg16_weights_tf_dim_ordering_\
tf_kernels_notop.h5                                              # offline: a local file
    python -m experiments.vgg_transfer --weights random --quick  # seconds, no download
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from experiments import report
from jnn import vgg, vgg_weights
from jnn.data import CLASS_NAMES, load_fashion_mnist, split_indices
from jnn.errors import InputError
from jnn.parallel import check_divisible, data_mesh

RANDOM_LABEL = "random init, not pretrained"
OUTPUT_FILES = ("results.json", "results.md", "confusion_matrix.png")
QUICK = {"train_size": 2000, "test_size": 500, "epochs": 2}


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


# --------------------------------------------------------------------------- frozen features


def make_extractor(params: dict, fmt: str, size: int, last_block: int = 5):
    """Jitted (B, 28, 28) uint8 -> (B, size/2^last_block, same, 512) float32 features."""
    used = {k: params[k] for k in vgg.layers_of_blocks(1, last_block)}

    @jax.jit
    def extract(batch_uint8: jax.Array) -> jax.Array:
        x = vgg.preprocess(vgg.gray_to_rgb_resized(batch_uint8, size), fmt)
        return vgg.features(used, x, last_block=last_block)

    return extract


def extract_features(
    extract, images: np.ndarray, batch_size: int, desc: str = "features"
) -> tuple[np.ndarray, dict[str, float]]:
    """Run ``extract`` over ``images`` in fixed-size batches (last one padded: one compile).

    Returns the features and timings: compile seconds, then images/s of the compiled runs.
    """
    n = len(images)
    pad = (-n) % batch_size
    padded = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
    t0 = time.perf_counter()
    first = np.asarray(extract(padded[:batch_size]))
    compile_s = time.perf_counter() - t0
    out = np.empty((len(padded), *first.shape[1:]), np.float32)
    out[:batch_size] = first
    t0 = time.perf_counter()
    starts = range(batch_size, len(padded), batch_size)
    for s in report.progress(starts, desc=desc, unit="batch", leave=False):
        out[s : s + batch_size] = np.asarray(extract(padded[s : s + batch_size]))
    run_s = time.perf_counter() - t0
    timed = len(padded) - batch_size
    return out[:n], {
        "compile_and_first_batch_s": compile_s,
        "seconds": run_s,
        "images_timed": timed,
        "images_per_s": timed / run_s if timed else float("nan"),
    }


def feature_throughput(
    params: dict,
    size: int = 32,
    n_images: int = 512,
    batch_size: int = 64,
    backend: str = "jnn",
    fmt: str = "keras",
) -> dict[str, float]:
    """Images/s of frozen VGG16 feature extraction at ``size`` on random gray images.

    ``backend="jnn"``: the jitted Flax pipeline used by this experiment (resize, preprocess,
    features). ``backend="torch"``: PyTorch eager CPU ``torch.nn`` Conv2d/MaxPool2d stack in
    torchvision's ``features`` layout, loaded with the same weights (strict), same resize and
    preprocessing done in torch. Compile/warm-up is excluded; one warm-up batch each.
    """
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n_images, 28, 28), dtype=np.uint8)
    if backend == "jnn":
        _, timing = extract_features(make_extractor(params, fmt, size), images, batch_size)
        return {"backend": "jnn (jax.jit)", **timing}
    if backend != "torch":
        raise InputError(f"unknown backend {backend!r}; choose jnn or torch")
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

    run(images[:batch_size])
    t0 = time.perf_counter()
    for s in range(batch_size, n_images, batch_size):
        run(images[s : s + batch_size])
    seconds = time.perf_counter() - t0
    timed = n_images - batch_size
    return {
        "backend": f"torch {torch.__version__} eager, {torch.get_num_threads()} threads",
        "seconds": seconds,
        "images_timed": timed,
        "images_per_s": timed / seconds,
    }


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


class Head(nn.Module):
    """Flatten -> Dense 512 -> ReLU -> Dropout -> Dense 256 -> ReLU -> Dropout -> Dense 10."""

    hidden: Sequence[int] = (512, 256)
    dropout: float = 0.5
    classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.classes)(x)


def make_model(finetune_top: bool):
    """``apply(params, feats, train, rng) -> logits``.

    params: ``{"head", "norm"}`` (+ ``"block5"`` with ``finetune_top``). ``norm`` holds fixed
    ``mean``/``std`` of the head's input (identity when not standardizing); never trained.
    """
    head = Head()
    block5 = vgg.VGG16(first_block=5)

    def apply(params: dict, feats: jax.Array, train: bool, rng: jax.Array | None = None):
        if finetune_top:
            feats = block5.apply({"params": params["block5"]}, feats)
        feats = feats.reshape(feats.shape[0], -1)
        feats = (feats - params["norm"]["mean"]) / params["norm"]["std"]
        rngs = {"dropout": rng} if train else None
        return head.apply({"params": params["head"]}, feats, train, rngs=rngs)

    return head, apply


def head_input_stats(
    feats: np.ndarray, params5: dict | None, batch_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std (floored at 1e-3 of the mean std) of the flattened head input
    over the training set: the cached features, or block5's output on them before fine-tuning."""
    if params5 is not None:
        block5 = jax.jit(lambda x: vgg.features(params5, x, first_block=5))
        feats = np.concatenate(
            [
                np.asarray(block5(feats[s : s + batch_size]))
                for s in range(0, len(feats), batch_size)
            ]
        )
    flat = feats.reshape(len(feats), -1).astype(np.float64)
    mean, std = flat.mean(0), flat.std(0)
    std = np.maximum(std, 1e-3 * std.mean() + 1e-12)
    return mean.astype(np.float32), std.astype(np.float32)


def train_head(
    feats: np.ndarray,
    labels: np.ndarray,
    test_feats: np.ndarray,
    test_labels: np.ndarray,
    *,
    params5: dict | None,
    epochs: int,
    batch_size: int,
    lr: float,
    finetune_lr: float,
    seed: int,
    standardize: bool = True,
    mesh: Any = None,
) -> tuple[dict, list[dict[str, float]]]:
    """Train the head (and block5 when ``params5`` is given) with Adam; one jitted scan/epoch.

    ``standardize``: the head sees its input minus the train-set mean over the std (fixed
    constants computed once, see :func:`head_input_stats`). ``mesh`` (a 1-D
    ``jnn.parallel.data_mesh``): data parallel, each step's batch split along the mesh axis,
    params and cached features replicated, gradients all-reduced by XLA; ``batch_size`` must
    divide by the mesh size. Returns (params, history): history holds per epoch train loss/acc,
    test acc and seconds.
    """
    finetune = params5 is not None
    head, apply = make_model(finetune)
    key = jax.random.key(seed)
    key, init_key = jax.random.split(key)
    head_in = feats[:1]
    if finetune:
        head_in = vgg.features(params5, jnp.asarray(feats[:1]), first_block=5)
    head_in = np.asarray(head_in).reshape(1, -1)
    if standardize:
        mean, std = head_input_stats(feats, params5)
    else:  # identity
        mean, std = np.zeros(head_in.shape[1], np.float32), np.ones(head_in.shape[1], np.float32)
    params = {
        "head": head.init(init_key, jnp.asarray(head_in), False)["params"],
        "norm": {"mean": jnp.asarray(mean), "std": jnp.asarray(std)},
    }
    if finetune:
        params["block5"] = params5
    tx = optax.multi_transform(
        {"head": optax.adam(lr), "block5": optax.adam(finetune_lr), "norm": optax.set_to_zero()},
        {k: k for k in params},
    )
    opt_state = tx.init(params)
    x_train, y_train = jnp.asarray(feats), jnp.asarray(labels)
    n_batches = len(feats) // batch_size
    if n_batches == 0:
        raise InputError(f"--batch-size {batch_size} exceeds the {len(feats)} training images")
    batch_sharding = None
    if mesh is not None:
        check_divisible(batch_size, mesh, what="--batch-size")
        replicated = NamedSharding(mesh, P())
        batch_sharding = NamedSharding(mesh, P(mesh.axis_names[0]))
        params, opt_state, x_train, y_train = jax.device_put(
            (params, opt_state, x_train, y_train), replicated
        )

    def batch_rows(rows: jax.Array) -> jax.Array:
        if batch_sharding is None:
            return rows
        return jax.lax.with_sharding_constraint(rows, batch_sharding)

    def loss_fn(p, xb, yb, rng):
        logits = apply(p, xb, True, rng)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
        return loss, jnp.mean(jnp.argmax(logits, -1) == yb)

    @jax.jit
    def epoch(params, opt_state, key):
        perm_key, drop_key = jax.random.split(key)
        perm = jax.random.permutation(perm_key, len(y_train))[: n_batches * batch_size]
        perm = perm.reshape(n_batches, batch_size)

        def step(carry, inputs):
            p, s = carry
            idx, i = inputs
            (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                p,
                batch_rows(x_train[idx]),
                batch_rows(y_train[idx]),
                jax.random.fold_in(drop_key, i),
            )
            updates, s = tx.update(grads, s, p)
            return (optax.apply_updates(p, updates), s), (loss, acc)

        (params, opt_state), (losses, accs) = jax.lax.scan(
            step, (params, opt_state), (perm, jnp.arange(n_batches))
        )
        return params, opt_state, losses.mean(), accs.mean()

    predict = jax.jit(lambda p, x: jnp.argmax(apply(p, x, False), -1))
    history = []
    bar = report.progress(range(1, epochs + 1), desc="head epochs", unit="epoch")
    for ep in bar:
        key, sub = jax.random.split(key)
        t0 = time.perf_counter()
        params, opt_state, loss, acc = epoch(params, opt_state, sub)
        loss = float(loss)
        seconds = time.perf_counter() - t0
        test_acc = float(np.mean(predict_batched(predict, params, test_feats) == test_labels))
        history.append(
            {
                "epoch": ep,
                "train_loss": loss,
                "train_acc": float(acc),
                "test_acc": test_acc,
                "seconds": seconds,
            }
        )
        bar.set_postfix(loss=f"{loss:.3f}", test_acc=f"{test_acc:.3f}")
    return params, history


def predict_batched(predict, params: dict, feats: np.ndarray, batch_size: int = 1024):
    """Class predictions (N,) in fixed-size padded batches (one compile)."""
    n = len(feats)
    pad = (-n) % batch_size
    x = np.concatenate([feats, np.zeros((pad, *feats.shape[1:]), feats.dtype)])
    preds = [
        np.asarray(predict(params, x[s : s + batch_size])) for s in range(0, len(x), batch_size)
    ]
    return np.concatenate(preds)[:n]


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


def render_markdown(r: dict[str, Any]) -> str:
    fe, head = r["feature_extraction"], r["head"]
    lines = [
        f"# {r['title']}",
        "",
        f"- weights: {r['weights']['label']} (preprocessing `{r['weights']['preprocessing']}`"
        f", source `{r['weights']['source']}`, hash verified: {r['weights']['verified']})",
        f"- images: {r['data']['size']}x{r['data']['size']} RGB from 28x28 gray; "
        f"train {r['data']['train']}, test {r['data']['test']} (stratified 80/20 of 70,000, "
        f"seed {r['args']['seed']}){' — quick subset' if r['args']['quick'] else ''}",
        f"- trained: head 512-256-10 (ReLU, dropout 0.5), Adam lr {r['args']['lr']}, "
        f"{r['args']['epochs']} epochs, batch {r['args']['batch_size']}, head input "
        + ("standardized (train mean/std)" if r["args"]["standardize"] else "raw")
        + (
            f"; block5 fine-tuned (lr {r['args']['finetune_lr']})"
            if r["args"]["finetune_top"]
            else "; base frozen"
        ),
        "",
        f"**Test accuracy: {r['accuracy']:.4f}**",
        "",
        report.markdown_table(
            ["class", "accuracy", "test images"],
            [
                (c, a, n)
                for c, a, n in zip(
                    CLASS_NAMES, r["per_class_accuracy"].values(), r["per_class_count"], strict=True
                )
            ],
        ),
        "## Timing",
        "",
        f"- frozen feature extraction (blocks 1-{fe['last_block']}): "
        f"{fe['images_per_s']:.0f} images/s over {fe['images']} images "
        f"({fe['seconds']:.1f} s; first batch incl. compile "
        f"{fe['compile_and_first_batch_s']:.1f} s)",
        f"- head: {head['epoch_seconds_median']:.3f} s per epoch (median after the first; first "
        f"epoch incl. compile {head['first_epoch_seconds']:.2f} s)",
        f"- total wall time: {r['wall_seconds']:.1f} s on {r['device']['backend']} "
        f"({r['device']['cpu']}, {r['device']['cpu_count']} cores)",
    ]
    if "throughput_vs_torch" in r:
        t = r["throughput_vs_torch"]
        lines.append(
            f"- feature extraction at {r['data']['size']}x{r['data']['size']}: jnn "
            f"{t['jnn']['images_per_s']:.0f} images/s vs {t['torch']['backend']} "
            f"{t['torch']['images_per_s']:.0f} images/s (same weights)"
        )
    lines += ["", "![confusion matrix](confusion_matrix.png)", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ main


def load_weights(spec: str, cache_dir: str | None, seed: int) -> dict[str, Any]:
    """``--weights`` -> {"params", "label", "preprocessing", "source", "verified", "pretrained"}."""
    if spec == "random":
        params = vgg.init_params(jax.random.key(seed + 1))
        params = jax.tree_util.tree_map(np.asarray, params)
        return {
            "params": params,
            "label": RANDOM_LABEL,
            "preprocessing": "keras",
            "source": "He-normal init, seed " + str(seed + 1),
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
    except (vgg_weights.WeightsUnavailableError, ImportError) as e:
        raise InputError(f"{e} (or run with --weights random for a random-feature floor)") from None
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m experiments.vgg_transfer",
        description="Fashion-MNIST on a frozen VGG16 base (features computed once, cached) "
        "with a new 512-256-10 dense head. Writes results.json, results.md and "
        "confusion_matrix.png to --out.",
        epilog="Without network access, download the weight file elsewhere and pass it with "
        "--weights PATH (converted once, then cached as an orbax checkpoint in --cache-dir).",
    )
    p.add_argument(
        "--weights",
        default="keras",
        help="keras | torch (published ImageNet weights: cached, else downloaded once and "
        "hash-checked) | PATH to vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 or "
        "vgg16-397923af.pth | random (He init: labelled 'random init, not pretrained'). "
        "Default: %(default)s",
    )
    p.add_argument(
        "--size",
        type=int,
        default=32,
        help="resize images to SIZExSIZE (>= 32; 48 and 64 are the usual choices; "
        "default %(default)s)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"head training epochs (default 10; {QUICK['epochs']} with --quick)",
    )
    p.add_argument(
        "--batch-size", type=int, default=128, help="head training batch size (default %(default)s)"
    )
    p.add_argument(
        "--lr",
        type=float,
        default=1e-3,
        help="Adam learning rate of the head (default %(default)s)",
    )
    p.add_argument(
        "--finetune-top", action="store_true", help="also train block5 (on cached block4 features)"
    )
    p.add_argument(
        "--finetune-lr",
        type=float,
        default=1e-5,
        help="Adam learning rate of block5 with --finetune-top (default %(default)s)",
    )
    p.add_argument(
        "--standardize",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="standardize the head's input with fixed train-set mean/std (the frozen "
        "features reach ~100s; without this Adam needs many more epochs; default on)",
    )
    p.add_argument(
        "--feature-batch",
        type=int,
        default=256,
        help="batch size of the frozen-base feature extraction (default %(default)s)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"small run: {QUICK['train_size']} train / {QUICK['test_size']} test "
        f"images, {QUICK['epochs']} epochs (overridable by the flags below)",
    )
    p.add_argument("--train-size", type=int, default=None, help="use only N training images")
    p.add_argument("--test-size", type=int, default=None, help="use only N test images")
    p.add_argument(
        "--bench-torch",
        action="store_true",
        help="also time feature extraction against PyTorch eager CPU (needs torch)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the split, head init, dropout (default %(default)s)",
    )
    p.add_argument(
        "--devices",
        type=int,
        default=None,
        help="train the head data-parallel over N devices (each batch split along a 'data' "
        "mesh axis; XLA all-reduces the gradients); --batch-size must divide by N. On CPU, "
        "more than one needs XLA_FLAGS=--xla_force_host_platform_device_count=N (default: 1)",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder with the Fashion-MNIST .gz files (default $JNN_DATA_DIR)",
    )
    p.add_argument(
        "--cache-dir",
        default=None,
        help="VGG16 weight cache (default $JNN_CACHE_DIR/vgg16 or ~/.cache/jnn/vgg16)",
    )
    p.add_argument("--out", default="runs/vgg_transfer", help="output folder (default %(default)s)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace --out if it already holds another run"
    )
    return p


MAX_FEATURE_BATCH = 4096  # 4096 images at 64x64 through VGG16 need ~3 GB of activations


def check_args(args: argparse.Namespace) -> argparse.Namespace:
    """Refuse values that cannot work, before anything is read or written; fill --quick's
    defaults only where a flag was not given (an explicit 0 is refused, never replaced)."""
    if args.quick:
        for name in ("train_size", "test_size"):
            if getattr(args, name) is None:
                setattr(args, name, QUICK[name])
    if args.epochs is None:
        args.epochs = QUICK["epochs"] if args.quick else 10
    if args.size < vgg.MIN_SIZE:
        raise InputError(f"--size must be at least {vgg.MIN_SIZE} (VGG16 pools 5 times)")
    for name in ("epochs", "batch_size", "feature_batch", "train_size", "test_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.feature_batch > MAX_FEATURE_BATCH:
        raise InputError(
            f"--feature-batch {args.feature_batch} would need tens of GB of activations; "
            f"use at most {MAX_FEATURE_BATCH}"
        )
    for name in ("lr", "finetune_lr"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value > 0):
            raise InputError(f"--{name.replace('_', '-')} must be a positive number, got {value}")
    if not 0 <= args.seed < 2**32:
        raise InputError(f"--seed must be in [0, 2**32), got {args.seed}")
    return args


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


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the study; returns the results dict (also written to --out/results.json)."""
    args = check_args(build_parser().parse_args(argv))
    mesh = None
    if args.devices is not None:
        mesh = data_mesh(args.devices)  # clear error when that many devices do not exist
        check_divisible(args.batch_size, mesh, what="--batch-size")  # before any output exists
    t_start = time.perf_counter()
    out = report.prepare_run_dir(args.out, overwrite=args.overwrite)  # refuse early
    weights = load_weights(args.weights, args.cache_dir, args.seed)  # then weights, before data
    pretrained = weights["pretrained"]
    title = f"VGG16 transfer on Fashion-MNIST ({args.size}x{args.size})"
    title += "" if pretrained else f" — {RANDOM_LABEL.upper()}"
    print(
        title
        if pretrained
        else f"{title}\nWARNING: weights are {RANDOM_LABEL}: this is a "
        "random-feature floor, not transfer learning"
    )

    ds = load_fashion_mnist(args.data_dir)
    images = np.concatenate([ds.train_images, ds.test_images])
    labels = np.concatenate([ds.train_labels, ds.test_labels]).astype(np.int32)
    # The original VGG16 study's split: 48,000 / 12,000 of the 60,000 official training images.
    train_idx, _, test_idx = split_indices(ds, "original-vgg", seed=args.seed, stratify=True)
    train_idx = take_stratified(train_idx, labels, args.train_size)
    test_idx = take_stratified(test_idx, labels, args.test_size)

    last_block = 4 if args.finetune_top else 5
    extract = make_extractor(weights["params"], weights["preprocessing"], args.size, last_block)
    all_idx = np.concatenate([train_idx, test_idx])
    feats, fe = extract_features(extract, images[all_idx], args.feature_batch, "frozen base")
    train_feats, test_feats = feats[: len(train_idx)], feats[len(train_idx) :]
    print(
        f"frozen base: {len(all_idx)} images -> features {feats.shape[1:]} at "
        f"{fe['images_per_s']:.0f} images/s (+{fe['compile_and_first_batch_s']:.1f} s compile)"
    )

    params5 = None
    if args.finetune_top:
        block5 = {k: weights["params"][k] for k in vgg.layers_of_blocks(5, 5)}
        params5 = jax.tree_util.tree_map(jnp.asarray, block5)
    params, history = train_head(
        train_feats,
        labels[train_idx],
        test_feats,
        labels[test_idx],
        params5=params5,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        finetune_lr=args.finetune_lr,
        seed=args.seed,
        standardize=args.standardize,
        mesh=mesh,
    )
    _, apply = make_model(args.finetune_top)
    predict = jax.jit(lambda p, x: jnp.argmax(apply(p, x, False), -1))
    y_test = labels[test_idx]
    y_pred = predict_batched(predict, params, test_feats)
    cm = confusion_matrix(y_test, y_pred)
    per_class = np.diag(cm) / np.maximum(cm.sum(1), 1)
    accuracy = float(np.mean(y_pred == y_test))
    epoch_s = [h["seconds"] for h in history]

    result: dict[str, Any] = {
        "title": title,
        "pretrained": pretrained,
        "weights": {k: v for k, v in weights.items() if k != "params"},
        "args": vars(args),
        "data": {
            "size": args.size,
            "train": len(train_idx),
            "test": len(test_idx),
            "split": "original-vgg: stratified 48,000 / 12,000 of the 60,000 training images",
        },
        "accuracy": accuracy,
        "per_class_accuracy": dict(zip(CLASS_NAMES, per_class.tolist(), strict=True)),
        "per_class_count": cm.sum(1).tolist(),
        "confusion_matrix": cm.tolist(),
        "history": history,
        "feature_extraction": {
            **fe,
            "images": len(all_idx),
            "last_block": last_block,
            "feature_shape": list(feats.shape[1:]),
            "batch_size": args.feature_batch,
        },
        "head": {
            "first_epoch_seconds": epoch_s[0],
            "epoch_seconds_median": float(np.median(epoch_s[1:] or epoch_s)),
            "epoch_seconds": epoch_s,
        },
    }
    if args.bench_torch:
        bench = {"size": args.size, "images": 512, "batch_size": 64}
        for backend in ("jnn", "torch"):
            bench[backend] = feature_throughput(
                weights["params"], args.size, 512, 64, backend, weights["preprocessing"]
            )
        result["throughput_vs_torch"] = bench
    result.update(
        wall_seconds=time.perf_counter() - t_start,
        device=report.device_info(),
        versions=report.versions(),
    )
    report.write_json(out / "results.json", result)
    report.write_text_atomic(out / "results.md", render_markdown(result))
    plot_confusion(cm, f"{title}\ntest accuracy {accuracy:.4f}", out / "confusion_matrix.png")

    print(
        report.markdown_table(
            ["class", "accuracy"], zip(CLASS_NAMES, per_class.tolist(), strict=True)
        )
    )
    print(f"test accuracy {accuracy:.4f}" + ("" if pretrained else f" ({RANDOM_LABEL})"))
    print(f"head: {result['head']['epoch_seconds_median']:.3f} s/epoch; wrote {out}")
    return result


@report.cli_main
def cli(argv: Sequence[str] | None = None) -> int:
    """Console entry point: exit code 0, or 2 with a one-line message on bad input/offline."""
    main(argv)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    raise SystemExit(cli())
