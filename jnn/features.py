"""Frozen-feature transfer: a pretrained VGG16 base as a fixed function of the images, and a
new head trained on its cached output.

    extract = features.make_extractor(params, "keras", size=32)      # jitted, weights as args
    feats, timing = features.extract_features(extract, images, batch_size=64)
    # images (N, 28, 28) uint8 -> feats (N, 1, 1, 512) float32 (32 / 2**5 = 1)

The pipeline is ``jnn.vgg``'s: gray -> bilinear resize to ``size`` -> RGB -> the weights' own
preprocessing ("keras": caffe BGR mean subtraction on 0-255; "torch": /255, ImageNet mean/std)
-> conv blocks 1..``last_block``. Features are computed once and cached by the caller: the base
is frozen, so every epoch of the head would recompute the same numbers.

The head (``jnn.models`` "vgg_head", i.e. ``jnn.vgg.transfer_model``) is trained on the cached
features by :func:`train_head`: the library loop (``jnn.train.make_epoch_fn`` / ``fit``), Adam,
the input standardised with fixed train-set statistics, optionally block5 fine-tuned at its own
rate (the features are then block4's output), optionally data-parallel over devices::

    run = features.train_head((feats, labels), (test_feats, test_labels), epochs=10,
                              batch_size=128, lr=1e-3)
    run.params, run.history, run.diverged_at
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from jnn import core, models, parallel, train, vgg
from jnn.checkpoints import CheckpointStore
from jnn.errors import InputError

EVAL_CHUNK = 2048  # test examples per evaluation step: bounds block5's activations


@functools.partial(jax.jit, static_argnames=("fmt", "size", "last_block"))
def _extract(used: dict, batch_uint8: jax.Array, *, fmt: str, size: int, last_block: int):
    x = vgg.preprocess(vgg.gray_to_rgb_resized(batch_uint8, size), fmt)
    return vgg.features(used, x, last_block=last_block)


def make_extractor(
    params: dict, fmt: str, size: int, last_block: int = 5
) -> Callable[[Any], jax.Array]:
    """Jitted (B, 28, 28) uint8 -> (B, size/2^last_block, same, 512) float32 features. The
    weights are arguments of one module-level jit (not baked-in constants): extractors of the
    same shapes share its compiled program."""
    if not 1 <= int(last_block) <= 5:
        raise InputError(f"last_block must be one of VGG16's blocks 1..5, got {last_block}")
    used = {k: params[k] for k in vgg.layers_of_blocks(1, last_block)}
    return functools.partial(_extract, used, fmt=fmt, size=size, last_block=last_block)


def extract_features(
    extract: Callable[[Any], Any],
    images: np.ndarray,
    batch_size: int,
    progress: Callable[[Iterable[int]], Iterable[int]] = lambda starts: starts,
) -> tuple[np.ndarray, dict[str, float]]:
    """``extract`` over ``images`` (N, 28, 28) in fixed-size batches (the last one padded, so
    one compile). ``progress`` may wrap the batch starts (a progress bar; the library prints
    nothing). Returns the features and timings: compile plus first batch seconds, then
    images/s of the compiled batches after it."""
    if int(batch_size) < 1 or len(images) == 0:
        raise InputError(f"need images and a batch size >= 1, got {len(images)} / {batch_size}")
    n = len(images)
    pad = (-n) % batch_size
    padded = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
    t0 = time.perf_counter()
    first = np.asarray(extract(padded[:batch_size]))
    first_s = time.perf_counter() - t0
    out = np.empty((len(padded), *first.shape[1:]), np.float32)
    out[:batch_size] = first
    t1 = time.perf_counter()
    for s in progress(range(batch_size, len(padded), batch_size)):
        out[s : s + batch_size] = np.asarray(extract(padded[s : s + batch_size]))
    seconds = time.perf_counter() - t1
    timed = len(padded) - batch_size
    return out[:n], {
        "compile_and_first_batch_s": first_s,
        "seconds": seconds,
        "images_timed": timed,
        "images_per_s": timed / seconds if timed else float("nan"),
    }


def base_features(
    params: dict,
    fmt: str,
    size: int,
    images: np.ndarray,
    batch_size: int,
    *,
    last_block: int = 5,
    progress: Callable[[Iterable[int]], Iterable[int]] = lambda starts: starts,
) -> tuple[np.ndarray, dict[str, Any]]:
    """:func:`make_extractor` then :func:`extract_features` over ``images`` (N, 28, 28) uint8:
    the features (N, size/2^last_block, same, 512) and what to report about them (the timings
    plus images, last_block, feature_shape, batch_size)."""
    extract = make_extractor(params, fmt, size, last_block)
    feats, info = extract_features(extract, images, batch_size, progress)
    shape = list(feats.shape[1:])
    sizes = {"images": len(images), "last_block": last_block, "feature_shape": shape}
    return feats, {**info, **sizes, "batch_size": int(batch_size)}


# ------------------------------------------------------------------ the head on cached features


def head_input_stats(
    feats: np.ndarray, block5: tuple | None, batch_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std (floored at 1e-3 of the mean std, so a dead feature does not
    divide by 0) of the flattened head input over the training set: the cached features, or
    block5's output on them (``block5``: params of ``jnn.vgg.block_layers(5)``), in float64."""
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


def make_optimizer(
    finetune_top: bool, lr: float = 1.0, finetune_lr: float = 1.0
) -> optax.GradientTransformation:
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
    eval_fn: train.EvalFn  # chunked: EVAL_CHUNK test examples per step


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
        mesh = parallel.data_mesh(devices)
        epoch = parallel.make_sharded_epoch_fn(model, optimizer, batch_size, mesh, gradients)
    return HeadPrograms(model, optimizer, init, epoch, eval_fn)


@functools.cache
def _shared_programs(finetune_top: bool, input_shape: tuple[int, ...]) -> tuple:
    """What does not depend on the batch size or the gradient method: model, optimizer, jitted
    init (its PRNG draws compile slowly on XLA:CPU: once per process), evaluation."""
    model = models.build("vgg_head", finetune_top=finetune_top)
    optimizer = make_optimizer(finetune_top)
    init = jax.jit(lambda k: train.init_train_state(k, model, optimizer, input_shape))
    return model, optimizer, init, train.make_eval_fn(model, chunk=EVAL_CHUNK)


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
    if block5 is not None:
        params[: vgg.BLOCK5_LAYERS] = block5
    if standardize:
        mean, std = head_input_stats(feats, block5)
        model_state[vgg.standardize_index(finetune)] = {"mean": mean, "std": std}
    params, model_state = jax.tree.map(jax.numpy.asarray, (tuple(params), tuple(model_state)))
    opt_state = make_optimizer(finetune, lr, finetune_lr).init(params)
    return state._replace(params=params, model_state=model_state, opt_state=opt_state)


class HeadRun(NamedTuple):
    model: core.Layer
    params: core.Params  # of the last good epoch (numpy)
    model_state: core.State
    epoch: int  # the last good epoch (0: diverged in the first)
    diverged_at: int | None
    history: list[dict[str, float]]  # one row per epoch run: losses, accuracies, seconds

    def save(self, directory: str | os.PathLike) -> Path:
        """The last good epoch's {"params", "model_state"} into ``directory/<epoch>/``
        (``jnn.checkpoints.CheckpointStore``: checksummed, ``jnn.runs.load_vgg_head`` reads it)."""
        with CheckpointStore(directory) as store:
            store.save(self.epoch, {"params": self.params, "model_state": self.model_state})
        return Path(directory) / str(self.epoch)

    def summary(self) -> dict[str, Any]:
        """Model name, last good epoch, parameter count and epoch seconds: the first (with
        compilation) and the median of the later ones (the first when there is one)."""
        seconds = [h["seconds"] for h in self.history if np.isfinite(h["seconds"])]
        seconds = seconds or [float("nan")]
        return {
            "model": self.model.name,
            "epoch": self.epoch,
            "params": core.count_params(self.params),
            "first_epoch_seconds": seconds[0],
            "epoch_seconds_median": float(np.median(seconds[1:] or seconds)),
            "epoch_seconds": seconds,
        }


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
    on_epoch: Callable[[int, float], None] | None = None,
) -> HeadRun:
    """Train the transfer model on cached features (N, h, w, 512) with the library loop
    (``train.fit``), evaluating on ``test_data`` after every epoch.

    ``block5``: fine-tune block5 from these params (``vgg.block_params``; the features are then
    block4's output). ``devices``: data parallel over a ``jnn.parallel.data_mesh`` of that many
    devices, each step's batch split along it (``jnn.parallel.make_sharded_epoch_fn``).
    ``on_epoch(epoch, train_loss)`` after each good epoch (a progress bar). Training stops at
    the first non-finite loss or param; the last good epoch's params are returned.
    """
    (x, y), (xt, yt) = train_data, test_data
    train.validate_hyperparameters(batch_size, len(x))
    programs = head_programs(block5 is not None, x.shape[1:], batch_size, gradients, devices)
    state = init_head(
        programs, x, block5=block5, lr=lr, finetune_lr=finetune_lr, seed=seed,
        standardize=standardize,
    )  # fmt: skip
    if devices is not None:
        x, y, state = parallel.replicate((x, y, state), parallel.data_mesh(devices))
    good = {0: jax.device_get((state.params, state.model_state))}
    stamps = [time.perf_counter()]

    def keep(epoch: int, state: train.TrainState, history: train.History) -> None:
        good.clear()
        good[epoch] = jax.device_get((state.params, state.model_state))  # before it is donated
        stamps.append(time.perf_counter())
        if on_epoch is not None:
            on_epoch(epoch, float(history["train_loss"][epoch - 1]))

    on_device = (jax.numpy.asarray(x), jax.numpy.asarray(y))  # once, not at every epoch's call
    test_on_device = (jax.numpy.asarray(xt), jax.numpy.asarray(yt))
    fitted = train.fit(
        state, programs.epoch, on_device, test_on_device, eval_fn=programs.eval_fn,
        epochs=epochs, on_epoch=keep,
    )  # fmt: skip
    ((epoch, (params, model_state)),) = good.items()
    rows = history_rows(fitted, np.diff(stamps).tolist())
    return HeadRun(programs.model, params, model_state, epoch, fitted.diverged_at, rows)


def history_rows(fitted: train.FitResult, seconds: list[float]) -> list[dict[str, float]]:
    """One row per epoch run (the diverged one included): losses, accuracies, seconds (NaN for
    the diverged epoch, which is not timed)."""
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
