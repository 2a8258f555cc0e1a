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
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jnn.errors import InputError

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


SMALL_MAP = 16  # H * W at or below which Conv3x3 uses im2col + matmul


def conv3x3_same(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """3x3 stride-1 zero-padded ("SAME") convolution, NHWC x HWIO -> NHWC, no bias.

    Small maps (H * W <= ``SMALL_MAP``, e.g. block5 at 32x32 inputs, whose maps are 2x2) use
    im2col: the 9 shifted copies concatenated on channels, one (B*H*W, 9*Cin) @ (9*Cin, Cout)
    matmul. XLA's CPU convolution is pathologically slow there (2x2x512 -> 512 at batch 64:
    ~4 s vs ~20 ms as a matmul, jax 0.10.2); larger maps use ``lax.conv_general_dilated``.
    Both give the same result to float32 rounding.
    """
    _, h, w, cin = x.shape
    if h == 1 and w == 1:  # only the centre tap sees non-padding input
        return x @ kernel[1, 1]
    if h * w <= SMALL_MAP:
        xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        patches = [xp[:, i : i + h, j : j + w, :] for i in range(3) for j in range(3)]
        return jnp.concatenate(patches, axis=-1) @ kernel.reshape(9 * cin, -1)
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


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
        return conv3x3_same(x, kernel.astype(x.dtype)) + bias.astype(x.dtype)


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
