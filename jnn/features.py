"""Frozen-feature extraction: a pretrained VGG16 base as a fixed function of the images.

    extract = features.make_extractor(params, "keras", size=32)      # jitted, weights as args
    feats, timing = features.extract_features(extract, images, batch_size=64)
    # images (N, 28, 28) uint8 -> feats (N, 1, 1, 512) float32 (32 / 2**5 = 1)

The pipeline is ``jnn.vgg``'s: gray -> bilinear resize to ``size`` -> RGB -> the weights' own
preprocessing ("keras": caffe BGR mean subtraction on 0-255; "torch": /255, ImageNet mean/std)
-> conv blocks 1..``last_block``. Features are computed once and cached by the caller: the base
is frozen, so every epoch of the head would recompute the same numbers.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np

from jnn import vgg
from jnn.errors import InputError


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
