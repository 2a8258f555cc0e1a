"""VGG16 in Flax (NHWC), its input preprocessing, and helpers for Fashion-MNIST inputs.

The model mirrors Keras ``keras.applications.VGG16`` and torchvision ``vgg16``: 13 3x3
same-padding convolutions with ReLU in 5 blocks, each block closed by a 2x2/2 max-pool, and an
optional ImageNet classifier (fc1 4096, fc2 4096, predictions 1000). Parameters are a plain
nested dict with the Keras layer names::

    {"block1_conv1": {"kernel": (3, 3, 3, 64), "bias": (64,)}, ..., "block5_conv3": {...},
     "fc1": {"kernel": (25088, 4096), ...}, "fc2": ..., "predictions": ...}   # top optional

Use ``VGG16().apply({"params": params}, x)``. The classifier flattens the (7, 7, 512) feature map
in NHWC order, as Keras does; torchvision's NCHW-flatten ``classifier.0`` weight is permuted into
that order when it is converted (see :mod:`jnn.vgg_weights`), so one model serves both files.

Weight loading (Keras h5, torchvision .pth, orbax cache, download) lives in
:mod:`jnn.vgg_weights`.

The transfer model of ``experiments.vgg_transfer`` is a :mod:`jnn.core` value, trained with a
hand-written backward like every jnn model: :func:`transfer_model` (optionally block5 as jnn
``Conv3x3Layer``/``ReLU``/``MaxPool2D`` layers, the conv being ``Conv2D(F, 3,
lowering="auto")``, then ``Flatten``, a fixed :func:`Standardize` and the 512-256-10 head);
:func:`block_params` turns a block's Flax params into those layers'.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jnn.activations import ReLU
from jnn.core import Layer, Shape, serial
from jnn.errors import InputError
from jnn.layers import Conv2D, Dense, Dropout, Flatten, MaxPool2D
from jnn.layers import conv as _conv

# (block, number of convs, output channels) — the VGG16 "D" configuration.
BLOCKS: tuple[tuple[int, int, int], ...] = (
    (1, 2, 64),
    (2, 2, 128),
    (3, 3, 256),
    (4, 3, 512),
    (5, 3, 512),
)
CONV_LAYERS: tuple[str, ...] = tuple(
    f"block{b}_conv{i}" for b, n, _ in BLOCKS for i in range(1, n + 1)
)
TOP_LAYERS: tuple[str, ...] = ("fc1", "fc2", "predictions")
MIN_SIZE = 32  # five 2x2 pools: smaller inputs would pool a 1x1 map away
FEATURE_CHANNELS = 512

# Preprocessing constants, matching how each set of published weights was trained.
CAFFE_BGR_MEAN = np.array([103.939, 116.779, 123.68], np.float32)  # Keras "caffe" mode, BGR
TORCH_MEAN = np.array([0.485, 0.456, 0.406], np.float32)  # torchvision, RGB on [0, 1]
TORCH_STD = np.array([0.229, 0.224, 0.225], np.float32)
FORMATS: tuple[str, ...] = ("keras", "torch")


def block_input_channels(block: int) -> int:
    """Channels entering ``block`` (1..5): 3 for block 1, else the previous block's width."""
    return 3 if block == 1 else BLOCKS[block - 2][2]


def expected_shapes(include_top: bool = False) -> dict[str, dict[str, tuple[int, ...]]]:
    """Param shapes by layer name: conv kernels HWIO (3, 3, in, out), dense kernels (in, out)."""
    shapes: dict[str, dict[str, tuple[int, ...]]] = {}
    for b, n, width in BLOCKS:
        cin = block_input_channels(b)
        for i in range(1, n + 1):
            shapes[f"block{b}_conv{i}"] = {"kernel": (3, 3, cin, width), "bias": (width,)}
            cin = width
    if include_top:
        shapes["fc1"] = {"kernel": (7 * 7 * 512, 4096), "bias": (4096,)}
        shapes["fc2"] = {"kernel": (4096, 4096), "bias": (4096,)}
        shapes["predictions"] = {"kernel": (4096, 1000), "bias": (1000,)}
    return shapes


def layers_of_blocks(first_block: int, last_block: int) -> tuple[str, ...]:
    """Names of the conv layers in blocks ``first_block..last_block`` (inclusive)."""
    return tuple(name for name in CONV_LAYERS if first_block <= int(name[5]) <= last_block)


SMALL_MAP = _conv.SMALL_MAP  # H * W at or below which the 3x3 convs run as im2col + matmul


def conv3x3_same(x: jax.Array, kernel: jax.Array, name: str = "conv3x3_same") -> jax.Array:
    """3x3 stride-1 zero-padded ("SAME") convolution, NHWC x HWIO -> NHWC, no bias.

    ``jnn.layers.conv.convolve`` with ``lowering="auto"``, the one convolution of jnn: on CPU,
    small maps (H * W <= ``SMALL_MAP``, e.g. block4 and block5 at 32x32 inputs, 4x4 and 2x2) run
    as im2col + one (B*H*W, 9*Cin) @ (9*Cin, Cout) matmul, because XLA's CPU convolution is
    pathologically slow there (2x2x512 -> 512 at batch 64: ~4 s vs ~20 ms as a matmul, jax
    0.10.2); larger maps use ``lax.conv_general_dilated``. Both give the same result to float32
    rounding. ``name`` labels the call in ``jnn.layers.conv.conv_plans``.
    """
    return _conv.convolve(x, kernel, 1, "SAME", "auto", name)


class Conv3x3(nn.Module):
    """3x3 same-padding convolution with bias; params ``kernel`` (3, 3, Cin, Cout) HWIO and
    ``bias`` (Cout,), as ``nn.Conv`` would name them. He-normal init."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel", nn.initializers.he_normal(), (3, 3, x.shape[-1], self.features)
        )
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        return conv3x3_same(x, kernel.astype(x.dtype), self.name or "Conv3x3") + bias.astype(
            x.dtype
        )


class VGG16(nn.Module):
    """VGG16 convolutional base (optionally a slice of its blocks) with an optional classifier.

    Attributes:
      first_block, last_block: run blocks ``first_block..last_block`` (1..5). The default runs
        the whole base: (N, H, W, 3) -> features (N, H // 32, W // 32, 512). ``last_block=4``
        gives the block4 pool output; ``first_block=5`` takes that output as its input.
      include_top: append fc1 (4096) - fc2 (4096) - predictions (1000 logits, no softmax).
        Needs the full base and 224x224 inputs (a 7x7x512 feature map), as in Keras.

    Inputs must already be preprocessed (:func:`preprocess`). Shape errors are raised at trace
    time as ``ValueError`` with the expected shape.
    """

    first_block: int = 1
    last_block: int = 5
    include_top: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if not 1 <= self.first_block <= self.last_block <= 5:
            raise InputError(
                f"need 1 <= first_block <= last_block <= 5, got {self.first_block}, "
                f"{self.last_block}"
            )
        cin = block_input_channels(self.first_block)
        min_size = 2 ** (5 - self.first_block + 1)
        if x.ndim != 4 or x.shape[-1] != cin:
            raise InputError(
                f"VGG16 block{self.first_block} expects NHWC input (N, H, W, {cin}), "
                f"got shape {tuple(x.shape)}"
            )
        if x.shape[1] < min_size or x.shape[2] < min_size:
            raise InputError(
                f"VGG16 needs images of at least {min_size}x{min_size} at block"
                f"{self.first_block} (five 2x2 pools), got {x.shape[1]}x{x.shape[2]}"
            )
        for b, n, width in BLOCKS[self.first_block - 1 : self.last_block]:
            for i in range(1, n + 1):
                x = Conv3x3(width, name=f"block{b}_conv{i}")(x)
                x = nn.relu(x)
            x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
        if self.include_top:
            if (self.first_block, self.last_block) != (1, 5):
                raise InputError("include_top needs the full base (first_block=1, last_block=5)")
            if x.shape[1:] != (7, 7, 512):
                raise InputError(
                    "the ImageNet classifier needs a 7x7x512 feature map (224x224 input), "
                    f"got {tuple(x.shape[1:])}"
                )
            x = x.reshape(x.shape[0], -1)  # NHWC flatten, Keras order
            x = nn.relu(nn.Dense(4096, name="fc1")(x))
            x = nn.relu(nn.Dense(4096, name="fc2")(x))
            x = nn.Dense(1000, name="predictions")(x)
        return x


def init_params(key: jax.Array, include_top: bool = False, image_size: int = MIN_SIZE) -> dict:
    """Random params as a plain nested dict: He-normal conv kernels (variance-preserving through
    the 13 ReLUs, so random features neither vanish nor explode), zero biases; dense layers use
    Flax's defaults. ``image_size`` only sets the dummy input used for shape inference."""
    size = 224 if include_top else image_size
    init = jax.jit(VGG16(include_top=include_top).init)  # one compile, not one per op
    variables = init(key, jnp.zeros((1, size, size, 3)))
    return {name: dict(layer) for name, layer in variables["params"].items()}


def features(params: dict, images: jax.Array, first_block: int = 1, last_block: int = 5):
    """Run conv blocks ``first_block..last_block`` on preprocessed NHWC ``images``.

    (N, H, W, 3) -> (N, H // 32, W // 32, 512) for the whole base. ``params`` may hold more
    layers than needed (e.g. the classifier); only the used ones are passed to Flax.
    """
    used = {k: params[k] for k in layers_of_blocks(first_block, last_block)}
    model = VGG16(first_block=first_block, last_block=last_block)
    return model.apply({"params": used}, images)


def preprocess(images: jax.Array | np.ndarray, fmt: str) -> jax.Array:
    """Map RGB images with values on the 0-255 scale to the input the ``fmt`` weights expect.

    ``images``: (..., 3) RGB, uint8 or float with values in [0, 255] (Keras convention).
    ``fmt="keras"`` ("caffe" mode): RGB -> BGR, subtract the ImageNet BGR mean, no scaling.
    ``fmt="torch"``: /255, subtract the ImageNet RGB mean, divide by the std.
    Returns float32 with the same shape.
    """
    x = jnp.asarray(images)
    if x.shape[-1] != 3:
        raise InputError(f"preprocess expects RGB images (..., 3), got shape {tuple(x.shape)}")
    x = x.astype(jnp.float32)
    if fmt == "keras":
        return x[..., ::-1] - CAFFE_BGR_MEAN
    if fmt == "torch":
        return (x / 255.0 - TORCH_MEAN) / TORCH_STD
    raise InputError(f"unknown preprocessing format {fmt!r}; choose one of {FORMATS}")


def gray_to_rgb_resized(images: jax.Array | np.ndarray, size: int) -> jax.Array:
    """Grayscale (N, H, W) or (N, H, W, 1) images -> (N, size, size, 3) float32, same value scale.

    Bilinear ``jax.image.resize``; the gray channel is repeated into R, G and B.
    """
    x = jnp.asarray(images).astype(jnp.float32)
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 3:
        raise InputError(f"expected grayscale images (N, H, W), got shape {tuple(x.shape)}")
    if size < MIN_SIZE:
        raise InputError(f"VGG16 needs images of at least {MIN_SIZE}x{MIN_SIZE}, got size {size}")
    if x.shape[1:] != (size, size):
        x = jax.image.resize(x, (x.shape[0], size, size), method="bilinear")
    return jnp.repeat(x[..., None], 3, axis=-1)


def param_count(params: dict, layers: Sequence[str] | None = None) -> int:
    """Number of scalars in ``params`` (optionally only in the named layers)."""
    tree = params if layers is None else {k: params[k] for k in layers}
    return int(sum(np.prod(a.shape) for a in jax.tree_util.tree_leaves(tree)))


def he_params(seed: int, include_top: bool = False) -> dict:
    """Random params drawn with numpy (no compile, ~1 s): He-normal kernels, zero biases, the
    layout of :func:`expected_shapes`. The random-feature floor of ``--weights random``."""
    rng = np.random.default_rng(seed)
    params = {}
    for layer, shapes in expected_shapes(include_top).items():
        k = shapes["kernel"]
        std = np.sqrt(2.0 / np.prod(k[:-1]))
        params[layer] = {
            "kernel": (rng.standard_normal(k, np.float32) * np.float32(std)),
            "bias": np.zeros(shapes["bias"], np.float32),
        }
    return params


# ------------------------------------------------------------------ the transfer model (jnn)


_SAME_3X3 = ((1, 1), (1, 1))


def conv3x3_backward(params: dict, x: jax.Array, dy: jax.Array) -> tuple[dict, jax.Array]:
    """Hand-written (dparams, dx) of ``conv3x3_same(x, w) + b``: the backward of
    ``Conv2D(F, 3, padding="SAME", lowering="auto")``, each pass lowered by the same rule as its
    forward (``jnn.layers.conv.auto_passes``; on CPU, block5's 2x2 maps: dw = patches^T dy and
    dx = col2im(dy w^T))."""
    plan = _conv.conv_plan("auto", x.shape, params["w"].shape, _conv.hw_pair(x.shape[1:3]), x.dtype)
    return _conv.lowered_backward(params, x, dy, (1, 1), _SAME_3X3, plan)


def Conv3x3Layer(features: int) -> Layer:  # noqa: N802 - layers are named like classes
    """VGG16's 3x3 stride-1 "SAME" convolution as a jnn layer: ``jnn.layers.Conv2D(features, 3,
    padding="SAME", init="he", lowering="auto")`` under its own name. Params ``{"w": (3, 3, C, F)
    HWIO, "b": (F,)}``; forward :func:`conv3x3_same` + b (as the Flax ``Conv3x3``), backward by
    hand. On CPU the forward and input gradient of block5's small maps go through matmuls:
    XLA:CPU's convolution takes ~15 s per batch of 64 on block5's 2x2x512 maps, the matmul
    milliseconds (its kernel gradient stays a conv there, the faster of the two)."""
    conv = Conv2D(features, 3, padding="SAME", init="he", lowering="auto")
    return conv._replace(name=f"Conv3x3Layer({features}, lowering=auto)")


def block_layers(block: int) -> tuple[Layer, ...]:
    """VGG16 block ``block`` (1..5) as jnn layers: (Conv3x3Layer(w), ReLU) per conv, then
    MaxPool2D(2). Same layout as the Flax block: NHWC, HWIO kernels, zero "SAME" padding."""
    _, n, width = BLOCKS[block - 1]
    convs = [layer for _ in range(n) for layer in (Conv3x3Layer(width), ReLU)]
    return (*convs, MaxPool2D(2))


def block_params(params: dict, block: int) -> tuple:
    """The Flax params of ``block`` (``{"block5_conv1": {"kernel", "bias"}, ...}``) as the params
    tuple of :func:`block_layers`: ``{"w": kernel, "b": bias}`` per conv, ``()`` otherwise."""
    out: list = []
    for name in layers_of_blocks(block, block):
        layer = params[name]
        out += [{"w": jnp.asarray(layer["kernel"]), "b": jnp.asarray(layer["bias"])}, ()]
    return (*out, ())


def Standardize(  # noqa: N802 - layers are named like classes
    mean: np.ndarray | None = None, std: np.ndarray | None = None
) -> Layer:
    """y = (x - mean) / std with fixed per-feature constants, held in the layer's *state* (saved
    with the model, never trained). x: (B, D). Without ``mean``/``std``: 0 and 1 (identity)."""

    def init(key: jax.Array, input_shape: Shape):
        del key
        shape = tuple(input_shape)
        m = jnp.zeros(shape, jnp.float32) if mean is None else jnp.asarray(mean, jnp.float32)
        s = jnp.ones(shape, jnp.float32) if std is None else jnp.asarray(std, jnp.float32)
        if m.shape != shape or s.shape != shape:
            raise InputError(f"Standardize: mean/std of shape {m.shape} for inputs {shape}")
        return shape, (), {"mean": m, "std": s}

    def forward(params, state, x, *, key=None, train=False):
        del params, key, train
        return (x - state["mean"]) / state["std"], state["std"], state

    def backward(params, std, dy):
        del params
        return (), dy / std

    return Layer(init, forward, backward, "Standardize")


HEAD_HIDDEN = (512, 256)
HEAD_DROPOUT = 0.5
BLOCK5_LAYERS = len(block_layers(5))  # 3 x (Conv3x3Layer, ReLU) + MaxPool2D: the first 7 layers


@functools.cache  # one value per configuration: jitted functions of it compile once
def transfer_model(finetune_top: bool = False, classes: int = 10) -> Layer:
    """The transfer model on cached VGG16 features, as one jnn ``serial``:

    ``[block5 (finetune_top)] Flatten Standardize Dense(512) ReLU Dropout(0.5) Dense(256) ReLU
    Dropout(0.5) Dense(classes)``; input (B, h, w, 512): block5's input with ``finetune_top``,
    else its output. Hidden layers He-initialised, the last Glorot; biases zero.
    """
    head: list[Layer] = [Flatten, Standardize()]
    for width in HEAD_HIDDEN:
        head += [Dense(width, init="he"), ReLU, Dropout(HEAD_DROPOUT)]
    head.append(Dense(classes, init="glorot"))
    block5 = block_layers(5) if finetune_top else ()
    return serial(*block5, *head, name=f"vgg_transfer(finetune_top={finetune_top})")


def standardize_index(finetune_top: bool) -> int:
    """Position of the Standardize layer in :func:`transfer_model`'s params/state tuples."""
    return (BLOCK5_LAYERS if finetune_top else 0) + 1
