"""Fashion-MNIST: load the official IDX files, verify them, split them.

The four official ``.gz`` files are read from a folder (argument, else ``$JNN_DATA_DIR``, else
``~/.cache/jnn/fashion-mnist``). Missing files are downloaded there from the official mirrors
when ``download=True``; every file is checked against its official size and SHA-256 before use.
Everything returned is a numpy array: images uint8 ``(N, 28, 28)``, labels int32 ``(N,)``.

Split protocols (all indices refer to the pooled 70,000 examples, train first then test; every
split is a seeded permutation, so the same seed gives the same indices):

* ``"pooled70k"``: 80/10/10 train/val/test of all 70,000 images pooled (56,000 / 7,000 / 7,000).
  ``"seed"`` is its deprecated alias (the name it had before), kept so existing run folders and
  command lines keep working; it gives bit-identical indices.
* ``"official"``: the official 10,000 test images; the 60,000 official training images split
  54,000 / 6,000 train/val.
* ``"original"``: the original course study's split, inferred from its reported numbers: of the
  60,000 official *training* images, 10% test (6,000), then 10% of the rest validation (5,400),
  the remaining 48,600 train. The official 10k test set is not used.
* ``"original-vgg"``: the original VGG16 study's split: 48,000 train / 12,000 test (20%) of the
  60,000 official training images, **no validation set** (the val arrays have length 0).

``stratify=True`` draws each split class by class, so class proportions are exact (e.g. 700 or 600
validation images per class). Splits come back in a seeded random order.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import pathlib
import zlib
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from jnn.errors import InputError

__all__ = [
    "CLASS_NAMES",
    "FILES",
    "MIRRORS",
    "DataError",
    "PROTOCOLS",
    "PROTOCOL_ALIASES",
    "FashionMNIST",
    "Splits",
    "canonical_protocol",
    "default_data_dir",
    "load_fashion_mnist",
    "load_splits",
    "split",
    "split_indices",
    "to_float",
]

CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SHAPE = (28, 28)

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"

# Official release: (size in bytes, SHA-256). The same sums tensorflow-datasets registers in
# tensorflow_datasets/url_checksums/fashion_mnist.txt (MD5s equal the ones published by Zalando).
FILES: dict[str, tuple[int, str]] = {
    TRAIN_IMAGES: (26_421_880, "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
    TRAIN_LABELS: (29_515, "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
    TEST_IMAGES: (4_422_102, "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
    TEST_LABELS: (5_148, "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
}

# Tried in order; a mirror that fails or serves wrong bytes is skipped.
MIRRORS: tuple[str, ...] = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
DOWNLOAD_TIMEOUT_S = 30.0  # per connect / read on the socket

_IMAGES_MAGIC = 2051
_LABELS_MAGIC = 2049
# Split protocols (see the module docstring and split_indices) and the deprecated names that
# still resolve to one of them.
PROTOCOLS: tuple[str, ...] = ("pooled70k", "official", "original", "original-vgg")
PROTOCOL_ALIASES: dict[str, str] = {"seed": "pooled70k"}
_SOURCES = ("idx", "tfds")


class DataError(InputError):
    """A dataset file is missing, corrupt or malformed. The message is always one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class FashionMNIST(NamedTuple):
    """The official split: train (60000, 28, 28) uint8 / (60000,) int32, test (10000, ...)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


class Splits(NamedTuple):
    """Train / validation / test arrays (images first, then int32 labels).

    A protocol without a validation set (``"original-vgg"``) gives ``x_val`` / ``y_val`` of
    length 0 with the usual trailing shape and dtype (e.g. (0, 28, 28) uint8 and (0,) int32), so
    code that concatenates or indexes splits keeps working; test ``len(y_val) == 0`` before
    evaluating on it (a mean over no examples is NaN).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


# --------------------------------------------------------------------------- locating files


def default_data_dir() -> pathlib.Path:
    """``$JNN_DATA_DIR`` if set, else ``$XDG_CACHE_HOME/jnn/fashion-mnist`` (``~/.cache/...``)."""
    env = os.environ.get("JNN_DATA_DIR")
    if env:
        return pathlib.Path(env).expanduser()
    return _cache_root() / "fashion-mnist"


def _cache_root() -> pathlib.Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = pathlib.Path(xdg).expanduser() if xdg else pathlib.Path.home() / ".cache"
    return base / "jnn"


def _where_to_put(directory: pathlib.Path) -> str:
    return (
        f"put the four official Fashion-MNIST .gz files ({', '.join(FILES)}) in {directory} "
        f"or point JNN_DATA_DIR at a folder that has them "
        f"(official source: {MIRRORS[0]})"
    )


# --------------------------------------------------------------------------- verification


@functools.lru_cache(maxsize=32)
def _sha256_cached(path: str, mtime_ns: int, size: int, inode: int) -> str:
    del mtime_ns, size, inode  # cache key only: a rewritten file is hashed again
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sha256(path: pathlib.Path) -> str:
    st = path.stat()
    return _sha256_cached(str(path.resolve()), st.st_mtime_ns, st.st_size, st.st_ino)


def _verify_file(path: pathlib.Path) -> None:
    """Raise DataError unless ``path`` has the official size and SHA-256 for its name."""
    size, sha = FILES[path.name]
    actual_size = path.stat().st_size
    fix = (
        "delete it and rerun with download=True, or copy the official file there "
        "(pass verify=False only for custom files)"
    )
    if actual_size != size:
        raise DataError(
            f"{path.name} in {path.parent} has {actual_size:,} bytes, expected {size:,}: the "
            f"file is truncated or not the official one; {fix}"
        )
    actual_sha = _sha256(path)
    if actual_sha != sha:
        raise DataError(
            f"{path.name} in {path.parent} fails the SHA-256 check (got {actual_sha[:16]}..., "
            f"expected {sha[:16]}...): the file is corrupt or not the official one; {fix}"
        )


# --------------------------------------------------------------------------- download


def _download(name: str, directory: pathlib.Path, mirrors: Sequence[str]) -> pathlib.Path:
    """Fetch ``name`` from the first mirror that serves the official bytes (``jnn.download``:
    size and SHA-256 checked while it arrives, atomic rename, a bar on a terminal)."""
    from jnn import download

    size, sha = FILES[name]
    urls = [base.rstrip("/") + "/" + name for base in mirrors]
    try:
        return download.fetch(
            urls, directory / name, expected=("sha256", sha), size=size, timeout=DOWNLOAD_TIMEOUT_S
        )
    except download.DownloadError as e:
        raise DataError(f"{e}; if offline, {_where_to_put(directory)}") from None
    except OSError as e:
        raise DataError(
            f"cannot write to the data folder {directory} ({e}); {_where_to_put(directory)}"
        ) from None


def _ensure_files(directory: pathlib.Path, *, download: bool, verify: bool) -> None:
    for name in FILES:
        path = directory / name
        if not path.is_file():
            if not download:
                raise DataError(f"{name} is missing from {directory}: {_where_to_put(directory)}")
            _download(name, directory, MIRRORS)  # verified while downloading
        elif verify:
            _verify_file(path)


# --------------------------------------------------------------------------- IDX parsing


def _read_gz(path: pathlib.Path) -> bytes:
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"{path.name} in {path.parent} is not a valid gzip file ({e}); replace it with the "
            f"official file"
        ) from e


def _parse_idx(path: pathlib.Path, magic: int, ndim: int) -> tuple[tuple[int, ...], bytes]:
    raw = _read_gz(path)
    header_len = 4 + 4 * ndim
    where = f"{path.name} in {path.parent}"
    if len(raw) < header_len:
        raise DataError(f"{where} is too short ({len(raw)} bytes) to hold an IDX header")
    got_magic = int.from_bytes(raw[:4], "big")
    if got_magic != magic:
        kind = "images" if magic == _IMAGES_MAGIC else "labels"
        raise DataError(
            f"{where} has IDX magic number {got_magic}, expected {magic} for {kind}; "
            f"is it the right file?"
        )
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    payload = raw[header_len:]
    expected = int(np.prod(dims, dtype=np.int64))
    if len(payload) != expected:
        raise DataError(
            f"{where} declares {'x'.join(map(str, dims))} values but holds {len(payload):,}: "
            f"the file is truncated or malformed"
        )
    return dims, payload


def _read_images(path: pathlib.Path) -> np.ndarray:
    dims, payload = _parse_idx(path, _IMAGES_MAGIC, 3)
    if dims[1:] != IMAGE_SHAPE:
        raise DataError(
            f"{path.name} in {path.parent} holds {dims[1]}x{dims[2]} images, expected 28x28"
        )
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims)


def _read_labels(path: pathlib.Path) -> np.ndarray:
    _, payload = _parse_idx(path, _LABELS_MAGIC, 1)
    labels = np.frombuffer(payload, dtype=np.uint8)
    if labels.size and labels.max() >= NUM_CLASSES:
        raise DataError(
            f"{path.name} in {path.parent} has label {int(labels.max())}, expected 0..9"
        )
    return labels.astype(np.int32)


def _read_pair(directory: pathlib.Path, images: str, labels: str) -> tuple[np.ndarray, np.ndarray]:
    x = _read_images(directory / images)
    y = _read_labels(directory / labels)
    if len(x) != len(y):
        raise DataError(
            f"{images} holds {len(x):,} images but {labels} holds {len(y):,} labels "
            f"(in {directory}); the files do not belong together"
        )
    return x, y


# --------------------------------------------------------------------------- loading


def load_fashion_mnist(
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
    verify: bool = True,
    source: str = "idx",
    tfds_dir: str | os.PathLike | None = None,
) -> FashionMNIST:
    """Load the official train (60000, 28, 28) / test (10000, 28, 28) uint8 images, int32 labels.

    ``data_dir`` defaults to :func:`default_data_dir`. Missing files are downloaded there when
    ``download`` is true. ``verify`` checks each file's official size and SHA-256 (turn it off
    only for custom files; the IDX headers are always checked). ``source="tfds"`` loads through
    tensorflow-datasets' ``fashion_mnist`` builder (prepared offline from the same files into
    ``tfds_dir``, default ``~/.cache/jnn/tfds``) and returns the examples in the official order,
    so both sources give identical arrays. With ``source="idx"`` the arrays are read-only views
    of the decompressed files (copy before writing in place).
    """
    if source not in _SOURCES:
        raise InputError(f"source must be one of {_SOURCES}, got {source!r}")
    tfds = _import_tfds() if source == "tfds" else None  # fail early when it is not installed
    directory = pathlib.Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    # TFDS checks the hashes itself and falls back to the network on a mismatch: always verify.
    _ensure_files(directory, download=download, verify=verify or source == "tfds")
    x_train, y_train = _read_pair(directory, TRAIN_IMAGES, TRAIN_LABELS)
    x_test, y_test = _read_pair(directory, TEST_IMAGES, TEST_LABELS)
    ds = FashionMNIST(x_train, y_train, x_test, y_test)
    if source == "tfds":
        tdir = (
            pathlib.Path(tfds_dir).expanduser() if tfds_dir is not None else _cache_root() / "tfds"
        )
        ds = _load_tfds(tfds, directory, tdir, reference=ds)
    return ds


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DataError(
            f"source='tfds' needs tensorflow-datasets and tensorflow ({e}); install them with "
            f"pip install 'jnn[tfds]', or use source='idx'"
        ) from e
    return tfds


def _load_tfds(
    tfds, manual_dir: pathlib.Path, tfds_dir: pathlib.Path, reference: FashionMNIST
) -> FashionMNIST:
    builder = tfds.builder("fashion_mnist", data_dir=str(tfds_dir))
    # The files were verified above, so TFDS finds them in manual_dir and never downloads (a
    # missing or wrong manual file would make it retry the network for minutes).
    config = tfds.download.DownloadConfig(manual_dir=str(manual_dir), try_download_gcs=False)
    builder.download_and_prepare(download_config=config)
    out = []
    for split_name, ref_x, ref_y in (
        ("train", reference.train_images, reference.train_labels),
        ("test", reference.test_images, reference.test_labels),
    ):
        data = tfds.as_numpy(builder.as_dataset(split=split_name, batch_size=-1))
        x = np.asarray(data["image"], dtype=np.uint8).reshape(-1, *IMAGE_SHAPE)
        y = np.asarray(data["label"]).astype(np.int32)
        order = _match_order(ref_x, x, f"tfds {split_name} split")
        x, y = x[order], y[order]
        if not np.array_equal(y, ref_y):
            raise DataError(f"tfds {split_name} split: labels differ from the official IDX files")
        out += [x, y]
    return FashionMNIST(*out)


def _match_order(reference: np.ndarray, images: np.ndarray, what: str) -> np.ndarray:
    """Index array ``order`` such that ``images[order]`` equals ``reference`` (by image bytes)."""
    if images.shape != reference.shape:
        raise DataError(f"{what}: shape {images.shape}, expected {reference.shape}")

    def keys(a: np.ndarray) -> np.ndarray:
        flat = np.ascontiguousarray(a.reshape(len(a), -1))
        return flat.view(np.dtype((np.void, flat.shape[1]))).ravel()

    ref_keys, got_keys = keys(reference), keys(images)
    ref_sort = np.argsort(ref_keys, kind="stable")
    got_sort = np.argsort(got_keys, kind="stable")
    if not np.array_equal(ref_keys[ref_sort], got_keys[got_sort]):
        raise DataError(f"{what}: images differ from the official IDX files")
    order = np.empty(len(reference), dtype=np.int64)
    order[ref_sort] = got_sort
    return order


# --------------------------------------------------------------------------- splits


def canonical_protocol(protocol: object) -> str:
    """The protocol's current name: ``"seed"`` -> ``"pooled70k"``; a listed name unchanged.

    Raises :class:`jnn.errors.InputError` (one line) for anything else, before any file is read.
    """
    if isinstance(protocol, str):
        name = PROTOCOL_ALIASES.get(protocol, protocol)
        if name in PROTOCOLS:
            return name
    aliases = ", ".join(f"{old!r} = {new!r}" for old, new in PROTOCOL_ALIASES.items())
    raise InputError(
        f"unknown split protocol {protocol!r}: use one of {', '.join(map(repr, PROTOCOLS))} "
        f"(deprecated alias: {aliases})"
    )


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(
            f"seed must be a non-negative int, got {seed!r} ({type(seed).__name__}); "
            f"pass e.g. seed=0"
        )
    return int(seed)


# Pool size n -> (n_val, n_test). Python's round (half to even), as the first protocols had it.
_Sizes = Callable[[int], tuple[int, int]]


def _fractions_of_all(val_frac: float, test_frac: float) -> _Sizes:
    """val and test both a fraction of the whole pool ("pooled70k", "official")."""
    return lambda n: (round(n * val_frac), round(n * test_frac))


def _test_then_val(test_frac: float, val_frac: float) -> _Sizes:
    """test a fraction of the pool, then val a fraction of what is left ("original")."""

    def sizes(n: int) -> tuple[int, int]:
        n_test = round(n * test_frac)
        return round((n - n_test) * val_frac), n_test

    return sizes


# protocol -> (pool: "all" 70k pooled or "train" the official 60k, sizes of val and test).
_PLANS: dict[str, tuple[str, _Sizes]] = {
    "pooled70k": ("all", _fractions_of_all(0.1, 0.1)),
    "official": ("train", _fractions_of_all(0.1, 0.0)),  # + the official test set
    "original": ("train", _test_then_val(0.1, 0.1)),
    "original-vgg": ("train", _fractions_of_all(0.0, 0.2)),
}


def _three_way(
    idx: np.ndarray, rng: np.random.Generator, sizes: _Sizes
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Permute ``idx`` and cut it into (train, val, test); test first, then val, then train."""
    idx = rng.permutation(idx)
    n_val, n_test = sizes(len(idx))
    return idx[n_test + n_val :], idx[n_test : n_test + n_val], idx[:n_test]


def _stratified(
    idx: np.ndarray, labels: np.ndarray, rng: np.random.Generator, sizes: _Sizes
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_three_way` class by class (sizes per class), each split then permuted."""
    empty = np.empty(0, dtype=idx.dtype)
    parts: tuple[list, list, list] = ([empty], [empty], [empty])
    for c in np.unique(labels[idx]):
        for part, chosen in zip(parts, _three_way(idx[labels[idx] == c], rng, sizes)):
            part.append(chosen)
    return tuple(rng.permutation(np.concatenate(p)) for p in parts)  # type: ignore[return-value]


def split_indices(
    ds: FashionMNIST, protocol: str = "pooled70k", *, seed: int = 0, stratify: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) int64 index arrays into the pooled examples (train first, then test).

    * ``"pooled70k"`` (alias ``"seed"``, deprecated): 80/10/10 of all 70,000 examples
      (56,000 / 7,000 / 7,000).
    * ``"official"``: the official test set (in its original order) and a 90/10 train/val split
      of the official train set (54,000 / 6,000).
    * ``"original"``: 48,600 / 5,400 / 6,000 of the 60,000 official training images (indices all
      < 60,000). Inferred from the original study's numbers: each test accuracy it reports times
      6,000 is an integer (0.8865 -> 5319 images, 0.10116... -> 607, its MLPClassifier
      0.87316... -> 5239) and each training accuracy times 48,600 is one (0.98701646... ->
      47969), while 7,000 and 56,000 fit none. 6,000 = 10% of 60,000; 5,400 = 10% of the
      remaining 54,000; 48,600 = the rest.
    * ``"original-vgg"``: 48,000 / 0 / 12,000 of the 60,000 official training images, the VGG16
      study's split: its log evaluates 188 batches of 64 (accuracies multiples of 1/64), i.e.
      ~12,000 images = 20% of 60,000 (187 * 64 = 11,968 < 12,000 <= 188 * 64 = 12,032).
      Validation is empty: a length-0 int64 array.

    The permutation is drawn with ``numpy.random.default_rng(seed)``; test is cut first, then
    val, then train. ``stratify=True`` splits each class separately, so every split keeps the
    class proportions (exact when class counts are multiples of 10, as in Fashion-MNIST).
    Raises :class:`jnn.errors.InputError` for an unknown protocol or a bad seed.
    """
    protocol = canonical_protocol(protocol)
    rng = np.random.default_rng(_check_seed(seed))
    n_train, n_test = len(ds.train_labels), len(ds.test_labels)
    labels = np.concatenate([ds.train_labels, ds.test_labels])
    pool_name, sizes = _PLANS[protocol]
    pool = np.arange(n_train + n_test if pool_name == "all" else n_train)
    if stratify:
        train, val, test = _stratified(pool, labels, rng, sizes)
    else:
        train, val, test = _three_way(pool, rng, sizes)
    if protocol == "official":
        test = np.arange(n_train, n_train + n_test)
    return train, val, test


def split(
    ds: FashionMNIST, protocol: str = "pooled70k", *, seed: int = 0, stratify: bool = False
) -> Splits:
    """Split into train/val/test: uint8 images (n, 28, 28) and int32 labels (n,).

    See :func:`split_indices` for the protocols; the same seed always gives the same split. For
    ``"original-vgg"`` the validation arrays are empty: (0, 28, 28) uint8 and (0,) int32.
    """
    train, val, test = split_indices(ds, protocol, seed=seed, stratify=stratify)
    images = np.concatenate([ds.train_images, ds.test_images])
    labels = np.concatenate([ds.train_labels, ds.test_labels]).astype(np.int32, copy=False)
    return Splits(
        images[train], labels[train], images[val], labels[val], images[test], labels[test]
    )


def _flat(x: np.ndarray) -> np.ndarray:
    """(N, ...) -> (N, prod(...)); also for N = 0, where reshape(0, -1) is ambiguous."""
    return x.reshape(len(x), int(np.prod(x.shape[1:], dtype=np.int64)))


def to_float(images: np.ndarray, *, flatten: bool = True) -> np.ndarray:
    """uint8 images (N, 28, 28) -> float32 in [0, 1]; shape (N, 784) if ``flatten``."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise InputError(
            f"to_float expects uint8 images, got dtype {images.dtype}; pass the raw images"
        )
    out = np.divide(images, np.float32(255), dtype=np.float32)
    return _flat(out) if flatten else out


def load_splits(
    protocol: str = "pooled70k",
    *,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    stratify: bool = False,
    flatten: bool = True,
    as_float: bool = True,
    download: bool = True,
    source: str = "idx",
) -> Splits:
    """Load, split and convert: images float32 in [0, 1] (N, 784), or (N, 28, 28) when not
    ``flatten``; uint8 when not ``as_float``. Labels int32 (N,). Protocols as in
    :func:`split_indices` (``"original-vgg"``: empty validation arrays, (0, 784) / (0,))."""
    protocol = canonical_protocol(protocol)  # fail before loading
    _check_seed(seed)
    s = split(
        load_fashion_mnist(data_dir, download=download, source=source),
        protocol,
        seed=seed,
        stratify=stratify,
    )

    def convert(x: np.ndarray) -> np.ndarray:
        if as_float:
            return to_float(x, flatten=flatten)
        return _flat(x) if flatten else x

    return Splits(
        convert(s.x_train), s.y_train, convert(s.x_val), s.y_val, convert(s.x_test), s.y_test
    )
