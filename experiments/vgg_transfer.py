"""VGG16 transfer learning on Fashion-MNIST: a frozen ImageNet VGG16 base, a new dense head.

    python -m experiments.vgg_transfer --size 64                 # pretrained Keras weights
    python -m experiments.vgg_transfer --weights PATH.h5         # offline: a local file
    python -m experiments.vgg_transfer --weights random --quick  # seconds, no download

The original VGG16 study's split (48,000 / 12,000 of the 60,000 training images, stratified).
The base is frozen, so its features are computed once (``jnn.features``) and the head
(``jnn.vgg.transfer_model``) trains on them in the library loop (``jnn.features.train_head``).
Weights by name (``jnn.vgg_weights.load``); ``random`` is labelled "random init, not
pretrained" in every output. Timing against PyTorch: ``python -m bench.vgg_reference``.

The config is :class:`Config`; the command line is generated from it (``experiments.lab``).
Outputs in ``--out``: results.json, results.md, confusion_matrix.png and the last good epoch's
model in ``head/<epoch>/`` (``jnn.runs.load_vgg_head(out)``). Exit codes: 0 done; 2 bad input
(one line on stderr); 3 the head diverged (the last good epoch is reported and saved).
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from experiments import harness, lab, report
from jnn import config, core, features, runs, vgg, vgg_weights, workdir
from jnn.checkpoints import CheckpointError
from jnn.config import ConfigError, at_most, option
from jnn.data import CLASS_NAMES, load_fashion_mnist, split_indices, take_stratified
from jnn.errors import InputError

NAME = "vgg_transfer"
RANDOM_LABEL = vgg_weights.RANDOM_LABEL
OUTPUT_FILES = ("results.json", "results.md", "confusion_matrix.png")
QUICK = {"train_size": 2000, "test_size": 500, "epochs": 2}
MAX_FEATURE_BATCH = 4096  # 4096 images at 64x64 through VGG16 need ~3 GB of activations
WEIGHT_NAMES = ("keras", "torch", "random")
FINETUNE_LR = 1e-5


@dataclass(frozen=True)
class Config:
    """The transfer run's settings, declared once (the CLI is generated from them)."""

    weights: str = option(
        "keras",
        "keras | torch (published ImageNet weights: cached, else downloaded once, hash-checked) "
        "| PATH to a Keras .h5 / torchvision .pth file | random (He init, labelled as such)",
    )
    size: int = option(32, "resize images to SIZExSIZE (>= 32: VGG16 pools 5 times)")
    epochs: int = option(10, "head epochs")
    batch_size: int = option(128, "head batch size")
    lr: float = option(1e-3, "Adam learning rate of the head")
    gradients: str = option("manual", "manual (hand-written backward) or autodiff (jax.grad)")
    finetune_top: bool = option(False, "also train block5 (from the VGG16 weights) on block4's")
    finetune_lr: float = option(FINETUNE_LR, "Adam learning rate of block5 with --finetune-top")
    standardize: bool = option(True, "standardize the head's input with train-set mean/std")
    feature_batch: int = option(256, f"images per frozen-base call (at most {MAX_FEATURE_BATCH})")
    train_size: int | None = option(None, "use only N training images, stratified (none: all)")
    test_size: int | None = option(None, "use only N test images, stratified (none: all)")
    seed: int = option(0, "seed of the split, head init, dropout")
    devices: int | None = option(
        None, "train the head data-parallel over N devices (on CPU, more than one needs "
        "XLA_FLAGS=--xla_force_host_platform_device_count=N) [1]",
    )  # fmt: skip
    data_dir: str | None = option(None, "folder with the Fashion-MNIST .gz files [$JNN_DATA_DIR]")
    cache_dir: str | None = option(None, "VGG16 weight cache [$JNN_CACHE_DIR/vgg16, ~/.cache/jnn]")

    def __post_init__(self) -> None:
        if self.weights not in WEIGHT_NAMES and not Path(self.weights).expanduser().is_file():
            raise ConfigError(
                f"`weights` {self.weights}: no such file; use keras, torch, random or a path to "
                "a Keras .h5 / torchvision .pth file"
            )
        config.integer(self.size, "size", vgg.MIN_SIZE, 2048)
        config.integer(self.epochs, "epochs", 1, 100_000)
        config.integer(self.batch_size, "batch_size", 1)
        config.integer(self.feature_batch, "feature_batch", 1, MAX_FEATURE_BATCH)
        config.positive(self.lr, "lr")
        config.positive(self.finetune_lr, "finetune_lr")
        if self.finetune_lr != FINETUNE_LR and not self.finetune_top:
            raise ConfigError(
                "`finetune_lr` is the learning rate of block5, which trains only with "
                "`finetune_top`: add `finetune_top` or drop `finetune_lr`"
            )
        config.choice(self.gradients, "gradients", core.GRADIENT_METHODS)
        config.integer(self.seed, "seed", 0, config.MAX_SEED)
        config.folder(self.data_dir, "data_dir")
        for name in ("train_size", "test_size", "devices"):
            if getattr(self, name) is not None:
                config.integer(getattr(self, name), name, 1)
        if self.cache_dir is not None and Path(self.cache_dir).expanduser().is_file():
            raise ConfigError(f"`cache_dir` {self.cache_dir} is a file; pass a folder (or none)")
        if self.train_size is not None and self.batch_size > self.train_size:
            raise ConfigError(
                f"`batch_size` {self.batch_size} exceeds the {self.train_size} training images"
            )
        if self.devices is not None and self.batch_size % self.devices:
            raise ConfigError(f"`batch_size` {self.batch_size} must divide by `devices`")


def parse(argv: Sequence[str] | None) -> lab.Invocation:
    """The generated command line, which also takes ``--standardize`` (the default, spelled out
    as the earlier CLI allowed) where it cannot contradict a --config file."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--standardize" in argv and any(a.startswith(("--config", "--no-stand")) for a in argv):
        raise InputError("--standardize is the default: drop it, or give --no-standardize")
    if "--bench-torch" in argv:
        raise InputError("--bench-torch moved: python -m bench.vgg_reference --weights W --size S")
    argv = [a for a in argv if a != "--standardize"]
    return lab.parse(
        Config, argv, name=NAME, quick=QUICK,
        description="Fashion-MNIST on a frozen VGG16 base (features computed once) with a new "
        "512-256-10 dense head trained by jnn's manual backprop; results and the head in --out.",
        epilog="Without network access, download the weight file elsewhere and pass it with "
        "--weights PATH (converted once, then cached as an orbax checkpoint in --cache-dir). "
        "Exit codes: 0 done, 2 bad input, 3 the head diverged (see results.json).",
        resume=False,  # the features live in memory only: a run starts from its beginning
    )  # fmt: skip


# ------------------------------------------------------------------------------------- run


def load_weights(cfg: Config) -> dict[str, Any]:
    """``jnn.vgg_weights.load`` of ``--weights``, its failures as one line naming the flags."""
    name = vgg_weights.OFFICIAL[cfg.weights].filename if cfg.weights in vgg.FORMATS else "the file"
    floor = "--weights random for a random-feature floor"
    try:
        return vgg_weights.load(cfg.weights, cfg.cache_dir, seed=cfg.seed,
                                progress=sys.stderr.isatty())  # fmt: skip
    except vgg_weights.WeightsUnavailableError as e:
        raise InputError(f"{e}; here: pass --weights /path/to/{name} (or {floor})") from None
    except ImportError as e:
        raise InputError(f"{e} (or run with {floor})") from None
    except CheckpointError as e:  # the converted weights could not be cached (read-only, full)
        raise InputError(f"cannot cache the converted VGG16 weights: {e} (or pass another "
                         "--cache-dir)") from None  # fmt: skip


class Data(NamedTuple):
    images: np.ndarray  # (70000, 28, 28) uint8: train then test images
    labels: np.ndarray  # (70000,) int32
    train_idx: np.ndarray
    test_idx: np.ndarray


def load_data(cfg: Config) -> Data:
    """The original VGG16 study's split, optionally subset (stratified) to the sizes given."""
    ds = load_fashion_mnist(cfg.data_dir)
    images = np.concatenate([ds.train_images, ds.test_images])
    labels = np.concatenate([ds.train_labels, ds.test_labels]).astype(np.int32)
    train_idx, _, test_idx = split_indices(ds, "original-vgg", seed=cfg.seed, stratify=True)
    where = "split original-vgg's {} set"  # take_stratified would give all, reported as asked
    at_most(cfg.train_size, len(train_idx), "train_size", "images", where.format("training"))
    at_most(cfg.test_size, len(test_idx), "test_size", "images", where.format("test"))
    train_idx = take_stratified(train_idx, labels, cfg.train_size)
    return Data(images, labels, train_idx, take_stratified(test_idx, labels, cfg.test_size))


def base_features(cfg: Config, weights: dict, images: np.ndarray, desc: str) -> tuple:
    """Blocks 1-5 (1-4 with --finetune-top) over ``images``, once: (features, what to report)."""
    bar = functools.partial(report.progress, desc=desc, unit="batch", leave=False)
    w, fmt, last = weights["params"], weights["preprocessing"], 4 if cfg.finetune_top else 5
    return features.base_features(w, fmt, cfg.size, images, cfg.feature_batch, last_block=last,
                                  progress=bar)  # fmt: skip


def features_of_run(run_dir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """The cached-feature input of a finished run's test images, and their labels: re-extracted
    with the run's weights, size, split and feature batch (what its head was evaluated on)."""
    try:
        stored = json.loads((Path(run_dir) / "results.json").read_text())["config"]
        cfg = Config(**{f.name: stored[f.name] for f in fields(Config) if f.name in stored})
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"{run_dir}: no readable vgg_transfer results.json ({err})") from None
    data = load_data(cfg)
    feats, _ = base_features(cfg, load_weights(cfg), data.images[data.test_idx], "test")
    return feats, data.labels[data.test_idx]


def train(cfg: Config, feats: np.ndarray, data: Data, weights: dict) -> features.HeadRun:
    """``jnn.features.train_head`` on the cached features, with a progress bar."""
    n = len(data.train_idx)
    bar = report.progress(total=cfg.epochs, desc="head epochs", unit="epoch")
    on_epoch = lambda epoch, loss: (bar.update(), bar.set_postfix(loss=f"{loss:.3f}"))  # noqa: E731
    head = features.train_head(
        (feats[:n], data.labels[data.train_idx]), (feats[n:], data.labels[data.test_idx]),
        block5=vgg.block_params(weights["params"], 5) if cfg.finetune_top else None,
        epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, finetune_lr=cfg.finetune_lr,
        seed=cfg.seed, standardize=cfg.standardize, gradients=cfg.gradients,
        devices=cfg.devices, on_epoch=on_epoch,
    )  # fmt: skip
    bar.close()
    return head


def run(inv: lab.Invocation, run_dir: Path) -> dict[str, Any]:
    """Weights, data, frozen features, the head, its checkpoint; the result (nothing else)."""
    cfg: Config = inv.config
    weights = load_weights(cfg)  # before the data: fail early
    title = f"VGG16 transfer on Fashion-MNIST ({cfg.size}x{cfg.size})"
    floor = f"\nWARNING: weights are {RANDOM_LABEL}: this is a random-feature floor, not transfer"
    if not weights["pretrained"]:
        title = f"{title} — {RANDOM_LABEL.upper()}"
    print(title + ("" if weights["pretrained"] else floor + " learning"), flush=True)
    data = load_data(cfg)
    all_idx = np.concatenate([data.train_idx, data.test_idx])
    feats, fe = base_features(cfg, weights, data.images[all_idx], "frozen base")
    print(f"frozen base: {len(all_idx)} images -> features {feats.shape[1:]} at "
          f"{fe['images_per_s']:.0f} images/s (+{fe['compile_and_first_batch_s']:.1f} s "
          "compile)", flush=True)  # fmt: skip
    head = train(cfg, feats, data, weights)
    head.save(run_dir / runs.VGG_HEAD_DIR)
    y_pred = runs.LoadedHead(*head[:3], {}, head.epoch).predict(feats[len(data.train_idx) :])
    return summarize(inv, title, weights, data, fe, y_pred, head)


def summarize(inv: lab.Invocation, title: str, weights: dict, data: Data, fe: dict,
              y_pred: np.ndarray, head: features.HeadRun) -> dict[str, Any]:  # fmt: skip
    """The JSON-able result: accuracy of the last good epoch, per class, history, status."""
    cfg, cm = inv.config, np.zeros((10, 10), np.int64)  # row: true class, column: predicted
    np.add.at(cm, (data.labels[data.test_idx], y_pred), 1)
    per_class = np.diag(cm) / np.maximum(cm.sum(1), 1)
    split = "original-vgg: stratified 48,000 / 12,000 of the 60,000 training images"
    return {
        "title": title, "out": str(inv.out), "quick": inv.quick,
        "status": "ok" if head.diverged_at is None else "diverged",
        "diverged_at": head.diverged_at,
        "pretrained": weights["pretrained"],
        "weights": {k: v for k, v in weights.items() if k != "params"},
        "config": asdict(cfg),
        "data": {"size": cfg.size, "train": len(data.train_idx), "test": len(y_pred),
                 "split": split},
        "accuracy": float(np.trace(cm) / len(y_pred)),
        "per_class_accuracy": dict(zip(CLASS_NAMES, per_class.tolist(), strict=True)),
        "per_class_count": cm.sum(1).tolist(),
        "confusion_matrix": cm.tolist(),
        "history": head.history,
        "feature_extraction": fe,
        "head": {**head.summary(), "gradients": cfg.gradients, "input_shape": fe["feature_shape"],
                 "checkpoint": f"{runs.VGG_HEAD_DIR}/{head.epoch}"},
    }  # fmt: skip


# --------------------------------------------------------------------------------- outputs


def plot_confusion(cm: np.ndarray, title: str, path: Path) -> Path:
    """The row-normalised confusion matrix with the counts written in its cells."""
    from matplotlib.figure import Figure

    from jnn.plots import save_figure

    fig = Figure(figsize=(8, 7), layout="tight")
    ax = fig.subplots()
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(10), CLASS_NAMES, rotation=45, ha="right")
    ax.set_yticks(range(10), CLASS_NAMES)
    ax.set(xlabel="predicted", ylabel="true")
    for (i, j), count in np.ndenumerate(cm):
        color = "white" if norm[i, j] > 0.5 else "black"
        ax.text(j, i, str(count), ha="center", va="center", fontsize=7, color=color)
    fig.colorbar(im, ax=ax, label="fraction of true class")
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def describe_training(r: dict[str, Any]) -> str:
    c, ft = r["config"], f"; block5 fine-tuned (lr {r['config']['finetune_lr']})"
    return (
        f"- trained: head 512-256-10 (ReLU, dropout 0.5), {c['gradients']} gradients, Adam lr "
        f"{c['lr']}, {c['epochs']} epochs, batch {c['batch_size']}, head input "
        f"{'standardized (train mean/std)' if c['standardize'] else 'raw'}"
        f"{ft if c['finetune_top'] else '; base frozen'}"
    ) + (diverged(r, "\n- **diverged at epoch {}** (non-finite loss or params); the accuracy "
                  "below is the last good epoch's ({})"))  # fmt: skip


def diverged(r: dict[str, Any], text: str) -> str:
    """``text`` with the diverged epoch and the last good one filled in, if the head diverged."""
    return text.format(r["diverged_at"], r["head"]["epoch"]) if r["status"] == "diverged" else ""


def render_markdown(r: dict[str, Any]) -> str:
    fe, head, c, w, d = r["feature_extraction"], r["head"], r["config"], r["weights"], r["data"]
    rows = zip(CLASS_NAMES, r["per_class_accuracy"].values(), r["per_class_count"], strict=True)
    dev = r["device"]  # the harness's stamp
    return "\n".join([
        f"# {r['title']}", "",
        f"- weights: {w['label']} (preprocessing `{w['preprocessing']}`, source "
        f"`{w['source']}`, hash verified: {w['verified']})",
        f"- images: {c['size']}x{c['size']} RGB from 28x28 gray; train {d['train']}, test "
        f"{d['test']} ({d['split']}, seed {c['seed']}){' — quick subset' * bool(r.get('quick'))}",
        describe_training(r), "", f"**Test accuracy: {r['accuracy']:.4f}**", "",
        report.markdown_table(["class", "accuracy", "test images"], rows), "## Timing", "",
        f"- frozen feature extraction (blocks 1-{fe['last_block']}): {fe['images_per_s']:.0f} "
        f"images/s over {fe['images']} images ({fe['seconds']:.1f} s; first batch incl. compile "
        f"{fe['compile_and_first_batch_s']:.1f} s)",
        f"- head: {head['epoch_seconds_median']:.3f} s per epoch incl. the test evaluation "
        f"(median after the first; first epoch incl. compile {head['first_epoch_seconds']:.2f} s)",
        f"- total wall time: {r.get('wall_s', float('nan')):.1f} s on {dev['backend']} "
        f"({dev['cpu']}, {dev['cpu_count']} cores)",
        "", "![confusion matrix](confusion_matrix.png)", "",
    ])  # fmt: skip


def render(result: dict[str, Any], run_dir: Path) -> list[Path]:
    """results.json, results.md and confusion_matrix.png, from ``result`` alone."""
    paths = [Path(run_dir) / name for name in OUTPUT_FILES]
    workdir.write_json(paths[0], result)
    workdir.write_text_atomic(paths[1], render_markdown(result))
    title = f"{result['title']}\ntest accuracy {result['accuracy']:.4f}"
    plot_confusion(np.asarray(result["confusion_matrix"]), title, paths[2])
    return paths


def console(result: dict[str, Any]) -> str:
    rows = zip(CLASS_NAMES, result["per_class_accuracy"].values(), strict=True)
    random = "" if result["pretrained"] else f" ({RANDOM_LABEL})"
    return "\n".join([
        report.markdown_table(["class", "accuracy"], rows),
        f"test accuracy {result['accuracy']:.4f}{random}" + diverged(result, "\nthe head "
        "diverged at epoch {}: reported and saved the last good epoch ({})"),
        f"head: {result['head']['epoch_seconds_median']:.3f} s/epoch",
    ])  # fmt: skip


EXPERIMENT = harness.Experiment(NAME, parse, run, render, console)
main = harness.cli(EXPERIMENT)
cli = main  # the name the earlier entry point had


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    raise SystemExit(main())
