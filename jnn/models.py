"""Models by name: the networks the studies train, built from the dataset entry's shapes.

    model = models.build("mlp", input_shape=(28, 28, 1), classes=10, activation="tanh")
    model = models.build("cnn", input_shape=(28, 28, 1), classes=10)
    model = models.build("vgg_head", finetune_top=False)

Every entry returns a ``jnn.core`` Layer value (``init``/``forward``/``backward``, backward by
hand). The input width of the MLP and the classes of every head come from the caller (a
``jnn.data.Dataset``'s ``input_shape`` and ``num_classes``), never from a constant here. A new
model is one entry in :data:`MODELS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from jnn.core import Layer, serial
from jnn.errors import InputError


class ModelEntry(NamedTuple):
    """``build(**kwargs) -> Layer`` and a one-line description."""

    build: Callable[..., Layer]
    about: str


def _mlp(
    *,
    input_shape: Sequence[int],
    classes: int,
    hidden: Sequence[int] = (256, 128, 64),
    activation: str = "relu",
    init: str = "normal",
) -> Layer:
    """The study's MLP on flattened inputs: (prod(input_shape), *hidden, classes)."""
    from jnn.mlp import mlp

    return mlp((math.prod(input_shape), *hidden, classes), activation, init)


def cnn_layers(
    *, input_shape: Sequence[int] = (28, 28, 1), classes: int = 10, lowering: str = "auto"
) -> tuple[Layer, ...]:
    """The layers of ``experiments.cnn``'s network, in order: Conv2D(32,3) ReLU MaxPool(2),
    Conv2D(64,3) ReLU MaxPool(2), Flatten, Dense(128, He) ReLU Dropout(0.5), Dense(classes,
    Glorot) (``build("cnn")`` is their ``serial``; a probe that swaps one layer needs them
    apart). ``input_shape`` (H, W, C) is checked by ``init``; it is named here so every entry
    takes the same words. ``lowering``: the convolutions' (``jnn.layers.Conv2D``: auto, conv or
    gemm)."""
    from jnn.layers import Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU

    if len(tuple(input_shape)) != 3:
        raise InputError(f"the cnn takes (H, W, C) images, got input_shape {tuple(input_shape)}")
    return (
        Conv2D(32, 3, lowering=lowering), ReLU, MaxPool2D(2),
        Conv2D(64, 3, lowering=lowering), ReLU, MaxPool2D(2),
        Flatten, Dense(128, init="he"), ReLU, Dropout(0.5), Dense(classes, init="glorot"),
    )  # fmt: skip


def _cnn(**kwargs: Any) -> Layer:
    """``serial(*cnn_layers(**kwargs))``: ``experiments.cnn``'s network."""
    return serial(*cnn_layers(**kwargs))


def _vgg_head(*, finetune_top: bool = False) -> Layer:
    """The VGG16 transfer model on frozen features (``jnn.vgg.transfer_model``)."""
    from jnn import vgg

    return vgg.transfer_model(finetune_top)


MODELS: dict[str, ModelEntry] = {
    "mlp": ModelEntry(_mlp, "the study's MLP on flattened images, hidden widths and activation"),
    "cnn": ModelEntry(_cnn, "two 3x3 conv + max-pool blocks, a dense layer, dropout"),
    "vgg_head": ModelEntry(_vgg_head, "the head (and optionally block5) on frozen VGG16 features"),
}


def get_model(name: str) -> ModelEntry:
    """The registry entry ``name``; a one-line InputError listing the names otherwise."""
    try:
        return MODELS[name]
    except (KeyError, TypeError):
        raise InputError(f"unknown model {name!r}: choose from {', '.join(MODELS)}") from None


def build(name: str, **kwargs: Any) -> Layer:
    """Model ``name`` built with ``kwargs``; a wrong keyword is one InputError line."""
    entry = get_model(name)
    try:
        return entry.build(**kwargs)
    except TypeError as err:
        raise InputError(f"model {name!r}: {err}") from None
