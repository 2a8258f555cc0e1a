"""Pretrained VGG16 weights: read the published Keras h5 / torchvision .pth files, check every
layer and shape, convert to :mod:`jnn.vgg` params, cache as an orbax checkpoint, download.

Published files (see ``OFFICIAL``):

* Keras ``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5`` — root attr ``layer_names``; one
  group per layer with attr ``weight_names``; ``block{b}_conv{i}/block{b}_conv{i}_W_1:0`` (kernel,
  HWIO, used as is) and ``..._b_1:0`` (bias). Needs only h5py. Preprocessing ``"keras"``.
* torchvision ``vgg16-397923af.pth`` — ``features.{0,2,5,...,28}.weight`` (OIHW, transposed to
  HWIO) and ``.bias``; ``classifier.{0,3,6}`` Linear (out, in). ``classifier.0`` reads an NCHW
  flatten of 512x7x7, so its input axis is permuted to the NHWC flatten :class:`jnn.vgg.VGG16`
  uses. Needs torch (optional extra, imported only here). Preprocessing ``"torch"``.

``fetch_pretrained`` works like ``keras.applications``: converted params cached under
``cache_dir`` are used if present and they verify against the SHA-256 checksums saved with them
(a damaged cache is rebuilt from the source file, with a ``CheckpointWarning``); otherwise the
official file (in ``cache_dir`` or downloaded, hash-checked) is converted and cached. Nothing is
printed; a download shows a tqdm bar only when ``progress`` is true.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from jnn.errors import InputError
from jnn.vgg import CONV_LAYERS, FORMATS, TOP_LAYERS, expected_shapes, he_params


class WeightFileError(InputError):
    """A weight file is unreadable, lacks a layer, has a wrong shape, or fails its hash check."""


class WeightsUnavailableError(RuntimeError):
    """No cached weights and the official file could not be downloaded (e.g. offline)."""


class OfficialFile(NamedTuple):
    filename: str
    url: str
    hash_algo: str  # "md5" (full digest, as Keras checks) or "sha256" (prefix, as torch checks)
    hash_value: str
    size_bytes: int


OFFICIAL: dict[str, OfficialFile] = {
    "keras": OfficialFile(
        "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
        "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "md5",
        "6d6bbae143d832006294945121d1f1fc",
        58_889_256,
    ),
    "torch": OfficialFile(
        "vgg16-397923af.pth",
        "https://download.pytorch.org/models/vgg16-397923af.pth",
        "sha256",
        "397923af",
        553_433_881,
    ),
}

# torchvision's nn.Sequential index of each conv in vgg16().features.
TORCH_FEATURE_INDEX: dict[str, int] = dict(
    zip(CONV_LAYERS, (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28), strict=True)
)
TORCH_CLASSIFIER_INDEX: dict[str, int] = {"fc1": 0, "fc2": 3, "predictions": 6}
TORCH_KERNEL_PERM = (2, 3, 1, 0)  # OIHW -> HWIO


class VGGWeights(NamedTuple):
    """What :func:`fetch_pretrained` returns: params plus where they came from."""

    params: dict  # {"block1_conv1": {"kernel", "bias"}, ...} float32 numpy arrays
    fmt: str  # "keras" or "torch": which preprocessing the weights expect
    source: str  # absolute path of the weight file they were converted from
    verified: bool  # the file matched its published hash
    from_cache: bool  # loaded from the orbax cache instead of converting


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "(" + ",".join(str(d) for d in shape) + ")"


def check_params(
    params: Mapping[str, Mapping[str, Any]], include_top: bool = False, *, describe=None
) -> None:
    """Raise one :class:`WeightFileError` listing every missing layer/param and wrong shape.

    ``describe(layer, param)`` may name the entry as the file does (e.g. ``features.12.weight``).
    """
    problems = []
    for layer, shapes in expected_shapes(include_top).items():
        for name, want in shapes.items():
            label = f"{layer} {name}" if describe is None else describe(layer, name)
            if layer not in params or name not in params[layer]:
                problems.append(f"{label} is missing")
                continue
            value = params[layer][name]  # an array, or anything with .shape (h5py dataset)
            got = tuple(value.shape if hasattr(value, "shape") else np.shape(value))
            if got != want:
                problems.append(f"{label} has shape {_fmt_shape(got)}, expected {_fmt_shape(want)}")
    if problems:
        raise WeightFileError("; ".join(problems))


# ---------------------------------------------------------------------------------- Keras h5


def load_keras_h5(path: str | os.PathLike, include_top: bool | None = None) -> dict:
    """Read a Keras VGG16 weights h5 (``layer_names`` / ``weight_names`` layout) into params.

    ``include_top=None`` loads the classifier when the file has one (``fc1``), else only the 13
    convs. All layers and shapes are checked before any weights are read.
    """
    import h5py

    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise WeightFileError(f"{path} is not a readable HDF5 file ({e})") from None
    with f:
        root = f["model_weights"] if "model_weights" in f else f  # full-model saves
        if "layer_names" not in root.attrs:
            raise WeightFileError(f"{path}: no 'layer_names' attribute; not a Keras weights file")
        layer_names = [_to_str(n) for n in root.attrs["layer_names"]]
        if include_top is None:
            include_top = "fc1" in layer_names
        wanted = CONV_LAYERS + (TOP_LAYERS if include_top else ())
        missing = [n for n in wanted if n not in layer_names or n not in root]
        if missing:
            raise WeightFileError(f"{path}: layer {', '.join(missing)} missing from the file")
        datasets = {}
        for layer in wanted:
            group = root[layer]
            names = [_to_str(n) for n in group.attrs.get("weight_names", [])]
            if len(names) != 2:
                raise WeightFileError(
                    f"{path}: {layer} lists {len(names)} weights {names}, expected kernel and bias"
                )
            for name in names:
                if name not in group:
                    raise WeightFileError(f"{path}: {layer} dataset {name} is missing")
            datasets[layer] = {"kernel": group[names[0]], "bias": group[names[1]]}
        try:
            check_params(datasets, include_top)  # shapes only: no data read yet
        except WeightFileError as e:
            raise WeightFileError(f"{path.name}: {e}") from None
        return _read_h5_arrays(path, datasets)


def _read_h5_arrays(path: Path, datasets: dict[str, dict[str, Any]]) -> dict:
    """Each h5 dataset of ``datasets`` (layer -> name -> dataset) as a float32 array. A dataset
    of strings (or any non-numeric type) and a read that fails (a damaged file) are one
    :class:`WeightFileError` line naming the layer: a string bias was a numpy traceback."""
    params: dict[str, dict[str, np.ndarray]] = {}
    for layer, named in datasets.items():
        params[layer] = {}
        for name, d in named.items():
            if d.dtype.kind not in "fiu":
                raise WeightFileError(
                    f"{path.name}: {layer} {name} holds {d.dtype} values, not numbers; the "
                    "file is not VGG16 weights (or is damaged): use the published file"
                )
            try:
                params[layer][name] = np.asarray(d[()], dtype=np.float32)
            except (OSError, ValueError, TypeError) as e:
                raise WeightFileError(
                    f"{path.name}: cannot read {layer} {name} ({_first_line(e)}); the file is "
                    "damaged: download it again"
                ) from None
    return params


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _to_str(name: bytes | str) -> str:
    return name.decode("utf8") if isinstance(name, bytes) else str(name)


# ----------------------------------------------------------------------------- torchvision pth


def _check_torch_shapes(
    state_dict: Mapping[str, Any], keys: dict[str, dict[str, str]], include_top: bool
) -> None:
    """Every key present with torchvision's shape (OIHW convs, (out, in) Linear); one
    WeightFileError listing each problem in torch's own layout, so it names what the file holds."""
    torch_shapes = {}
    for layer, shapes in expected_shapes(include_top).items():
        k = shapes["kernel"]
        if len(k) == 4:  # HWIO -> OIHW: the inverse of TORCH_KERNEL_PERM
            kt = tuple(k[int(i)] for i in np.argsort(TORCH_KERNEL_PERM))
        else:
            kt = (k[1], k[0])
        torch_shapes[layer] = {"kernel": kt, "bias": shapes["bias"]}
    problems = []
    for layer, names in keys.items():
        for name, key in names.items():
            want = torch_shapes[layer][name]
            if key not in state_dict:
                problems.append(f"{key} ({layer} {name}) is missing")
            elif tuple(state_dict[key].shape) != want:
                got = tuple(state_dict[key].shape)
                problems.append(
                    f"{key} ({layer} {name}) has shape {_fmt_shape(got)}, "
                    f"expected {_fmt_shape(want)}"
                )
    if problems:
        raise WeightFileError("; ".join(problems))


def convert_torch_state_dict(state_dict: Mapping[str, Any], include_top: bool | None = None):
    """torchvision ``vgg16().state_dict()`` (tensors or arrays) -> params.

    Conv weights OIHW -> HWIO. ``classifier.0`` (4096, 512*7*7 in NCHW-flatten order) becomes an
    NHWC-flatten (25088, 4096) kernel; other Linear weights are transposed to (in, out).
    ``include_top=None`` converts the classifier when the state dict has one.
    """
    if include_top is None:
        include_top = "classifier.0.weight" in state_dict
    keys = {}
    for layer in CONV_LAYERS:
        i = TORCH_FEATURE_INDEX[layer]
        keys[layer] = {"kernel": f"features.{i}.weight", "bias": f"features.{i}.bias"}
    if include_top:
        for layer, i in TORCH_CLASSIFIER_INDEX.items():
            keys[layer] = {"kernel": f"classifier.{i}.weight", "bias": f"classifier.{i}.bias"}
    _check_torch_shapes(state_dict, keys, include_top)

    def arr(key: str) -> np.ndarray:
        v = state_dict[key]
        v = v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
        return v.astype(np.float32)

    params = {}
    for layer in CONV_LAYERS:
        params[layer] = {
            "kernel": np.ascontiguousarray(arr(keys[layer]["kernel"]).transpose(TORCH_KERNEL_PERM)),
            "bias": arr(keys[layer]["bias"]),
        }
    if include_top:
        params["fc1"] = {
            "kernel": nchw_linear_to_nhwc_kernel(arr(keys["fc1"]["kernel"]), (512, 7, 7)),
            "bias": arr(keys["fc1"]["bias"]),
        }
        for layer in ("fc2", "predictions"):
            params[layer] = {
                "kernel": np.ascontiguousarray(arr(keys[layer]["kernel"]).T),
                "bias": arr(keys[layer]["bias"]),
            }
    check_params(params, include_top)
    return params


def nchw_linear_to_nhwc_kernel(weight: np.ndarray, chw: tuple[int, int, int]) -> np.ndarray:
    """torch Linear weight (out, C*H*W) reading an NCHW flatten -> (H*W*C, out) Dense kernel
    reading an NHWC flatten of the same feature map."""
    c, h, w = chw
    out = weight.shape[0]
    kernel = weight.reshape(out, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, out)
    return np.ascontiguousarray(kernel)


def load_torch_pth(path: str | os.PathLike, include_top: bool | None = None) -> dict:
    """Read a torchvision VGG16 state dict saved with ``torch.save`` into params (needs torch)."""
    try:
        import torch
    except ImportError:
        raise ImportError(
            "reading torchvision .pth weights needs PyTorch: pip install torch "
            "(CPU build is enough), or use the Keras h5 weights (fmt='keras')"
        ) from None
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file
        raise WeightFileError(f"{path} is not a readable torch state dict ({e})") from None
    if not isinstance(state, Mapping):
        raise WeightFileError(f"{path} holds a {type(state).__name__}, not a state dict")
    return convert_torch_state_dict(state, include_top)


def load_weight_file(path: str | os.PathLike, fmt: str | None = None, include_top=None) -> dict:
    """Convert a Keras .h5 or torchvision .pth file to params; ``fmt`` inferred from the suffix."""
    fmt = fmt or detect_format(path)
    if fmt == "keras":
        return load_keras_h5(path, include_top)
    if fmt == "torch":
        return load_torch_pth(path, include_top)
    raise InputError(f"unknown weight format {fmt!r}; choose one of {FORMATS}")


def detect_format(path: str | os.PathLike) -> str:
    """``"keras"`` for .h5/.hdf5/.keras-weights files, ``"torch"`` for .pth/.pt."""
    suffix = Path(path).suffix.lower()
    if suffix in (".h5", ".hdf5"):
        return "keras"
    if suffix in (".pth", ".pt"):
        return "torch"
    raise WeightFileError(
        f"cannot tell the format of {path}: expected a Keras .h5 or a torchvision .pth file"
    )


# -------------------------------------------------------------------------------- file hashes


def file_digest(path: str | os.PathLike, algo: str) -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_file(path: str | os.PathLike, fmt: str) -> bool:
    """Check a weight file against its published hash when its name says which it is.

    The official Keras file name -> its MD5; a torch ``name-<hex>.pth`` -> SHA-256 prefix
    ``<hex>`` (torch's own convention). Returns True when checked and matching, False when the
    name carries no hash; raises :class:`WeightFileError` on a mismatch.
    """
    path = Path(path)
    if fmt == "keras" and path.name == OFFICIAL["keras"].filename:
        algo, want = "md5", OFFICIAL["keras"].hash_value
    elif fmt == "torch" and (m := re.search(r"-([0-9a-f]{8,64})$", path.stem)):
        algo, want = "sha256", m.group(1)
    else:
        return False
    got = file_digest(path, algo)
    if not got.startswith(want):
        raise WeightFileError(
            f"{path} fails its hash check ({algo} {got[: max(len(want), 8)]}..., expected {want}):"
            " the file is corrupt or not the published one; delete it and fetch it again"
        )
    return True


# ---------------------------------------------------------------------------------- the cache


def default_cache_dir() -> Path:
    """``$JNN_CACHE_DIR/vgg16`` if set, else ``~/.cache/jnn/vgg16``."""
    base = os.environ.get("JNN_CACHE_DIR") or Path.home() / ".cache" / "jnn"
    return Path(base).expanduser().absolute() / "vgg16"


def save_params(params: dict, directory: str | os.PathLike, *, replace: bool = False) -> Path:
    """Save params as a verified orbax checkpoint at ``directory`` (see :func:`restore_params`).

    Written with :func:`jnn.checkpoints.save_tree`: SHA-256 checksums of every file and array go
    in beside the data, and the folder appears complete or not at all. An existing
    ``directory`` raises :class:`jnn.checkpoints.CheckpointError` unless ``replace``.
    """
    from jnn.checkpoints import save_tree

    return save_tree(directory, params, replace=replace)


def restore_params(directory: str | os.PathLike, include_top: bool = False) -> dict:
    """Restore params saved by :func:`save_params` as float32 numpy arrays, verified.

    Orbax's data files carry no checksum (4 KiB flipped gave accuracy 0.10 silently), so every
    file and array is checked against the checksums saved with it: a damaged or old-format
    cache raises :class:`jnn.checkpoints.CorruptCheckpointError` (one line), other layers or
    shapes :class:`jnn.checkpoints.CheckpointError`.
    """
    import jax

    from jnn.checkpoints import restore_tree

    abstract = {
        layer: {n: jax.ShapeDtypeStruct(s, np.float32) for n, s in shapes.items()}
        for layer, shapes in expected_shapes(include_top).items()
    }
    restored = restore_tree(directory, abstract)
    params = {k: {n: np.asarray(a) for n, a in v.items()} for k, v in restored.items()}
    check_params(params, include_top)
    return params


def _cached_params(ckpt: Path, include_top: bool) -> dict | None:
    """The cached conversion at ``ckpt``, or None when there is none or it fails verification.

    The cache is ours: a damaged, partial or old-format one is rebuilt from the source weight
    file by the caller, after a :class:`jnn.checkpoints.CheckpointWarning` saying why.
    """
    from jnn.checkpoints import CheckpointError, CheckpointWarning

    if not ckpt.exists():
        return None
    try:
        return restore_params(ckpt, include_top)
    except CheckpointError as err:
        warnings.warn(
            f"{err}; rebuilding the converted VGG16 weights cache from the source weight file",
            CheckpointWarning,
            stacklevel=3,
        )
        return None


# ------------------------------------------------------------------------------- the download


def download(
    url: str,
    dst: str | os.PathLike,
    *,
    timeout: float = 60.0,
    progress: bool = False,
    expected: tuple[str, str] | None = None,
) -> Path:
    """Download ``url`` to ``dst`` atomically with ``jnn.download.fetch`` (temp file, hash
    check, rename). ``timeout`` bounds each network operation (connect, each read);
    ``expected=(algo, hex)`` checks the digest (prefix) before the file appears at ``dst``.
    Network failures raise :class:`WeightsUnavailableError`; wrong bytes :class:`WeightFileError`.
    """
    from jnn import download as dl

    try:
        return dl.fetch([url], dst, expected=expected, timeout=timeout, progress=progress)
    except dl.DownloadError as e:
        reason = e.failures[0][1] if e.failures else str(e)
        if e.corrupt:
            raise WeightFileError(f"download of {url} {reason}; not saved") from None
        raise WeightsUnavailableError(f"could not download {url}: {reason}") from None
    except OSError as e:
        raise WeightsUnavailableError(f"could not download {url}: {e}") from None


def _download_official(
    fmt: str, cache: Path, source: Path, timeout: float, progress: bool, allow: bool | None
) -> None:
    """Download the official ``fmt`` file to ``source`` (hash-checked), or say how to supply it.
    ``allow=None`` downloads unless ``$JNN_OFFLINE`` is set."""
    official = OFFICIAL[fmt]
    if allow is None:
        allow = not os.environ.get("JNN_OFFLINE")
    how = (
        f"supply the file: download {official.url} elsewhere and give its path as the weights "
        f"file (weights_file=..., or the transfer experiment's weights option), or copy it to "
        f"{source}"
    )
    if not allow:
        raise WeightsUnavailableError(
            f"no cached {fmt} VGG16 weights in {cache} and downloads are off; {how}"
        )
    expected = (official.hash_algo, official.hash_value)
    try:
        download(official.url, source, timeout=timeout, progress=progress, expected=expected)
    except WeightsUnavailableError as e:
        raise WeightsUnavailableError(f"{e}; no cached weights in {cache}; {how}") from None


def fetch_pretrained(
    fmt: str = "keras",
    cache_dir: str | os.PathLike | None = None,
    *,
    weights_file: str | os.PathLike | None = None,
    include_top: bool = False,
    timeout: float = 60.0,
    progress: bool = False,
    allow_download: bool | None = None,
) -> VGGWeights:
    """Pretrained VGG16 params in jnn layout, converted once and cached with orbax.

    Without ``weights_file``: use the cached conversion of the official ``fmt`` file, else the
    official file in ``cache_dir`` (downloaded there first if absent; hash-checked), convert,
    cache. With ``weights_file`` (a local .h5/.pth): convert it (its hash is checked when its
    name is the published one) and cache the result under the file's SHA-256.

    ``allow_download=None`` downloads unless ``$JNN_OFFLINE`` is set. Offline with nothing cached
    raises :class:`WeightsUnavailableError` saying how to supply the file.
    """
    if fmt not in FORMATS:
        raise InputError(f"unknown weight format {fmt!r}; choose one of {FORMATS}")
    if include_top and fmt == "keras" and weights_file is None:
        raise InputError("the official Keras file is the notop one; pass weights_file= for a top")
    cache = Path(cache_dir).expanduser().absolute() if cache_dir else default_cache_dir()
    top = "top" if include_top else "notop"
    official = OFFICIAL[fmt]

    if weights_file is None:
        ckpt = cache / "converted" / f"{fmt}-{official.hash_value[:12]}-{top}"
        source = cache / official.filename
        if (cached := _cached_params(ckpt, include_top)) is not None:
            return VGGWeights(cached, fmt, str(source), True, True)
        if not source.exists():
            _download_official(fmt, cache, source, timeout, progress, allow_download)
        verified = verify_file(source, fmt)
    else:
        source = Path(weights_file).expanduser().absolute()
        if not source.is_file():
            raise WeightFileError(f"weight file {source} does not exist")
        verified = verify_file(source, fmt)
        digest = file_digest(source, "sha256")[:16]
        ckpt = cache / "converted" / f"{fmt}-{digest}-{top}"
        if (cached := _cached_params(ckpt, include_top)) is not None:
            return VGGWeights(cached, fmt, str(source), verified, True)

    params = load_weight_file(source, fmt, include_top)
    save_params(params, ckpt, replace=True)  # swaps out a cache that failed verification
    return VGGWeights(params, fmt, str(source), verified, False)


# ---------------------------------------------------------------------- by name, checked

RANDOM_LABEL = "random init, not pretrained"  # every output of random weights says so


def check_finite(params: dict) -> None:
    """Refuse weights holding NaN or inf (they would give chance accuracy, labelled
    pretrained): one InputError naming the first bad array and the count."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    bad = {
        jax.tree_util.keystr(path): int(np.size(leaf) - np.isfinite(leaf).sum())
        for path, leaf in leaves
    }
    bad = {k: n for k, n in bad.items() if n}
    if bad:
        first = next(iter(bad))
        more = f" and {len(bad) - 1} more arrays" if len(bad) > 1 else ""
        raise InputError(
            f"the VGG16 weights hold {sum(bad.values())} NaN/inf values ({bad[first]} in "
            f"{first}{more}); the weight file is corrupt: download it again"
        )


def load(
    spec: str, cache_dir: str | os.PathLike | None = None, *, seed: int = 0, progress: bool = False
) -> dict[str, Any]:
    """VGG16 base weights by name: ``"keras"`` / ``"torch"`` (the published ImageNet files,
    :func:`fetch_pretrained`), a path to a local .h5 / .pth file (format detected), or
    ``"random"`` (He-normal, ``jnn.vgg.he_params(seed + 1)``: a floor, labelled
    :data:`RANDOM_LABEL`). Returns {"params", "label", "preprocessing", "source", "verified",
    "pretrained"}; pretrained params are checked finite (:func:`check_finite`).

    Raises InputError (no such file, NaN weights), WeightsUnavailableError (offline, nothing
    cached), ImportError (torch missing), CheckpointError (the cache cannot be written)."""
    if spec == "random":
        return {
            "params": he_params(seed + 1),
            "label": RANDOM_LABEL,
            "preprocessing": "keras",
            "source": f"He-normal init (numpy), seed {seed + 1}",
            "verified": False,
            "pretrained": False,
        }
    if spec in FORMATS:
        w = fetch_pretrained(spec, cache_dir, progress=progress)
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise InputError(
                f"weights {spec}: no such file; use keras, torch, random or a path to a Keras "
                ".h5 / torchvision .pth file"
            )
        fmt = detect_format(path)
        w = fetch_pretrained(fmt, cache_dir, weights_file=path, progress=progress)
    check_finite(w.params)
    return {
        "params": w.params,
        "label": f"pretrained ImageNet VGG16 ({'Keras' if w.fmt == 'keras' else 'torchvision'})",
        "preprocessing": w.fmt,
        "source": w.source,
        "verified": w.verified,
        "pretrained": True,
    }
