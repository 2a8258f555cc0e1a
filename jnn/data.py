"""Image datasets in the IDX format (Fashion-MNIST, MNIST): a registry, verified loading, splits.

A dataset is one :class:`Dataset` entry in :data:`DATASETS` (``"fashion_mnist"``, ``"mnist"``):
its four official ``.gz`` file names with their sizes and SHA-256, its mirrors, its input shape
(``features`` = 784 for both is derived from it), class names, official train/test sizes and the
split protocols it supports. Everything else reads the entry: nothing downstream needs to know
784 or 10. A new IDX dataset is one entry (:func:`register_dataset`); custom or generated files
load with ``verify=False`` or through an entry that names their own digests.

Files are read from a folder: the ``data_dir`` argument, else the dataset's environment variable
``JNN_<NAME>_DIR`` (``JNN_MNIST_DIR``, ``JNN_FASHION_MNIST_DIR``), else for Fashion-MNIST also
``$JNN_DATA_DIR`` (its older name, which CI sets; it never applies to another dataset, whose
files share the same four names), else ``$XDG_CACHE_HOME/jnn/<name>`` (``~/.cache/jnn/...``, the
name with dashes: ``fashion-mnist``, ``mnist``). Missing files are downloaded there from the
entry's mirrors when ``download=True`` (made readable by the group, mode 0644: it is public
data); every file is checked against its official size and SHA-256 before use unless
``verify=False``. Everything returned is a numpy array: images uint8 ``(N, H, W)`` (the IDX files
have no channel axis; ``input_shape`` adds it: ``(H, W, 1)``), labels int32 ``(N,)``.

Split protocols (all indices refer to the pooled train + test examples, train first; every split
is a seeded permutation, so the same seed gives the same indices; sizes for 60,000 + 10,000):

* ``"original"`` (the default): the original course study's split, inferred from its reported
  numbers: of the 60,000 official *training* images, 10% test (6,000), then 10% of the rest
  validation (5,400), the remaining 48,600 train. The official 10k test set is not used.
* ``"pooled70k"``: 80/10/10 train/val/test of all 70,000 images pooled (56,000 / 7,000 / 7,000).
  ``"seed"`` is its deprecated alias (the name it had before), kept so existing run folders and
  command lines keep working; it gives bit-identical indices.
* ``"official"``: the official 10,000 test images; the 60,000 official training images split
  54,000 / 6,000 train/val.
* ``"original-vgg"``: the original VGG16 study's split: 48,000 train / 12,000 test (20%) of the
  60,000 official training images, **no validation set** (the val arrays have length 0).

``stratify=True`` draws each split class by class, so class proportions are exact (e.g. 700 or 600
validation images per class). Splits come back in a seeded random order.

Fashion-MNIST's earlier names stay as aliases of its entry: ``FILES``, ``MIRRORS`` (patching it
still redirects Fashion-MNIST downloads), ``CLASS_NAMES``, ``TRAIN_IMAGES`` ... ``TEST_LABELS``
(the four names are the same for MNIST), ``load_fashion_mnist`` and ``FashionMNIST`` (the
:class:`OfficialSplit` every loader returns).
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import os
import pathlib
import re
import stat
import zlib
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import NamedTuple

import numpy as np

from jnn.errors import InputError

__all__ = [
    "CLASS_NAMES",
    "DATASETS",
    "DEFAULT_PROTOCOL",
    "FASHION_MNIST",
    "FILES",
    "MIRRORS",
    "MNIST",
    "DataError",
    "Dataset",
    "PROTOCOLS",
    "PROTOCOL_ALIASES",
    "FashionMNIST",
    "OfficialSplit",
    "Splits",
    "canonical_protocol",
    "default_data_dir",
    "get_dataset",
    "load_dataset",
    "load_fashion_mnist",
    "load_splits",
    "register_dataset",
    "split",
    "split_indices",
    "to_float",
]

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"

DOWNLOAD_TIMEOUT_S = 30.0  # per connect / read on the socket
_IMAGES_MAGIC = 2051  # IDX: 0x00 0x00, type 0x08 (unsigned byte), 3 dimensions
_LABELS_MAGIC = 2049  # IDX: 0x00 0x00, type 0x08 (unsigned byte), 1 dimension
_FILE_MODE = 0o644  # downloaded files: public data, readable by the group (mkstemp makes 0600)

# Split protocols (see the module docstring and split_indices) and the deprecated names that
# still resolve to one of them. "original" is the study's split and every loader's default.
PROTOCOLS: tuple[str, ...] = ("pooled70k", "official", "original", "original-vgg")
PROTOCOL_ALIASES: dict[str, str] = {"seed": "pooled70k"}
DEFAULT_PROTOCOL = "original"
_SOURCES = ("idx", "tfds")


class DataError(InputError):
    """A dataset file is missing, corrupt or malformed. The message is always one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class OfficialSplit(NamedTuple):
    """A dataset's official split: train (60000, 28, 28) uint8 / (60000,) int32, test (10000, ...)
    for Fashion-MNIST and MNIST (custom files: whatever sizes they hold)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


FashionMNIST = OfficialSplit  # the name it had when Fashion-MNIST was the only dataset


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


# --------------------------------------------------------------------------- the registry


@dataclasses.dataclass(frozen=True, kw_only=True)
class Dataset:
    """One IDX image-classification dataset: what it is, where it comes from, how to check it.

    ``files`` maps the four official file names, in the order train images, train labels, test
    images, test labels, to (size in bytes, SHA-256 hex). ``input_shape`` is one example as a
    model sees it, (H, W, 1): IDX files hold one greyscale channel. ``train_size`` and
    ``test_size`` are the official example counts (checked on load when verifying).
    ``protocols``: the split protocols it supports. ``mirrors``: base URLs tried in order
    (empty: never downloaded). ``tfds_name``: its tensorflow-datasets builder, if any. Built
    with keywords only; a bad field raises a one-line :class:`jnn.errors.InputError`.
    """

    name: str
    title: str
    files: Mapping[str, tuple[int, str]] = dataclasses.field(hash=False)
    class_names: tuple[str, ...]
    mirrors: tuple[str, ...] = ()
    input_shape: tuple[int, int, int] = (28, 28, 1)
    train_size: int = 60_000
    test_size: int = 10_000
    protocols: tuple[str, ...] = PROTOCOLS
    tfds_name: str | None = None

    def __post_init__(self) -> None:
        # Tuples and a read-only view: an entry cannot be changed after it is registered.
        fix = object.__setattr__
        fix(self, "files", MappingProxyType({k: tuple(v) for k, v in dict(self.files).items()}))
        for attr in ("class_names", "mirrors", "input_shape", "protocols"):
            fix(self, attr, tuple(getattr(self, attr)))
        _check_entry(self)

    @property
    def features(self) -> int:
        """Inputs per example once flattened: H * W * channels (784 for 28x28x1)."""
        return int(np.prod(self.input_shape))

    @property
    def num_classes(self) -> int:
        """Number of classes (labels are 0 .. num_classes - 1)."""
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int]:
        """(H, W): one image as the IDX files and the loaders give it (no channel axis)."""
        return self.input_shape[0], self.input_shape[1]

    @property
    def env_var(self) -> str:
        """The environment variable naming its data folder, ``JNN_<NAME>_DIR``."""
        return f"JNN_{self.name.upper()}_DIR"

    @property
    def folder_name(self) -> str:
        """Its folder under the cache: the name with dashes (``fashion-mnist``)."""
        return self.name.replace("_", "-")


_NAME = re.compile(r"[a-z][a-z0-9_]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _is_count(value: object, minimum: int) -> bool:
    return (
        isinstance(value, (int, np.integer))
        and not isinstance(value, bool)
        and bool(value >= minimum)
    )


def _check_entry(entry: Dataset) -> None:
    """Raise InputError (one line) for the first field of ``entry`` that cannot work."""
    where = f"Dataset {entry.name!r}"
    if not isinstance(entry.name, str) or not _NAME.fullmatch(entry.name):
        raise InputError(
            f"dataset name {entry.name!r} must be lower-case letters, digits and _ (it names "
            f"a folder and an environment variable), e.g. 'my_mnist'"
        )
    if len(entry.files) != 4:
        raise InputError(
            f"{where} has {len(entry.files)} files, expected 4: train images, train labels, "
            f"test images, test labels (IDX .gz names), in that order"
        )
    for file, spec in entry.files.items():
        if len(spec) != 2 or not _is_count(spec[0], 1) or not _SHA256.fullmatch(str(spec[1])):
            raise InputError(
                f"{where}: file {file!r} needs (size in bytes, SHA-256 as 64 lower-case hex "
                f"digits), got {spec!r}"
            )
    if not 2 <= len(entry.class_names) <= 256:
        raise InputError(
            f"{where} has {len(entry.class_names)} class names; IDX labels are bytes, so give "
            f"2 to 256 names"
        )
    shape = entry.input_shape
    if len(shape) != 3 or not all(_is_count(d, 1) for d in shape) or shape[2] != 1:
        raise InputError(
            f"{where} has input_shape {shape}, expected (H, W, 1): IDX images are one channel"
        )
    if not (_is_count(entry.train_size, 0) and _is_count(entry.test_size, 0)):
        raise InputError(f"{where}: train_size and test_size must be non-negative ints")
    unknown = [p for p in entry.protocols if p not in PROTOCOLS]
    if unknown or not entry.protocols:
        raise InputError(
            f"{where} lists protocols {entry.protocols}: use a non-empty selection of {PROTOCOLS}"
        )


# Fashion-MNIST's official release: (size in bytes, SHA-256). The same sums tensorflow-datasets
# registers in tensorflow_datasets/url_checksums/fashion_mnist.txt (and the shared files' MD5s
# equal the ones Zalando publishes: tests/test_data.py checks both).
_FASHION_MNIST_FILES = {
    TRAIN_IMAGES: (26_421_880, "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
    TRAIN_LABELS: (29_515, "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
    TEST_IMAGES: (4_422_102, "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
    TEST_LABELS: (5_148, "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
}

# MNIST: the same four names (Fashion-MNIST copied MNIST's layout). Sizes and SHA-256 from
# tensorflow-datasets 4.9.10, tensorflow_datasets/url_checksums/mnist.txt (its mirror:
# storage.googleapis.com/cvdf-datasets/mnist); the same sizes and sums are published apart from
# it for the files of the ossci-datasets S3 mirror and yann.lecun.com (e.g. Guild AI's mnist
# package, tensorflow-haskell's Nix expression). torchvision checks these files by MD5 instead
# (f68b3c2d..., d53e105e..., 9fb629c4..., ec29112d..., torchvision/datasets/mnist.py); with no
# copy of the files here to tie those MD5s to these sums, only the SHA-256 is used.
_MNIST_FILES = {
    TRAIN_IMAGES: (9_912_422, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
    TRAIN_LABELS: (28_881, "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
    TEST_IMAGES: (1_648_877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
    TEST_LABELS: (4_542, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
}

FASHION_MNIST = Dataset(
    name="fashion_mnist",
    title="Fashion-MNIST",
    files=_FASHION_MNIST_FILES,
    class_names=(
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
    ),
    # Tried in order; a mirror that fails or serves wrong bytes is skipped.
    mirrors=(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
    tfds_name="fashion_mnist",
)

MNIST = Dataset(
    name="mnist",
    title="MNIST",
    files=_MNIST_FILES,
    class_names=tuple(str(digit) for digit in range(10)),
    # torchvision's S3 mirror, tensorflow-datasets' GCS mirror, then the original site (which
    # has refused anonymous downloads at times: last).
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    tfds_name="mnist",
)

# Name -> entry. Loaders look names up here at call time (tests may swap an entry in).
DATASETS: dict[str, Dataset] = {FASHION_MNIST.name: FASHION_MNIST, MNIST.name: MNIST}

# Fashion-MNIST's earlier module-level names: aliases of its entry.
CLASS_NAMES: tuple[str, ...] = FASHION_MNIST.class_names
NUM_CLASSES = FASHION_MNIST.num_classes
IMAGE_SHAPE = FASHION_MNIST.image_shape
FILES: Mapping[str, tuple[int, str]] = FASHION_MNIST.files
MIRRORS: tuple[str, ...] = FASHION_MNIST.mirrors  # assigning another tuple redirects its downloads
# Fashion-MNIST's older environment variable for its folder (CI and existing setups set it).
_LEGACY_DIR_VARS = {"fashion_mnist": "JNN_DATA_DIR"}


def get_dataset(dataset: str | Dataset) -> Dataset:
    """The registered entry called ``dataset`` (a :class:`Dataset` is returned as it is).

    Raises a one-line :class:`jnn.errors.InputError` listing the known names otherwise.
    """
    if isinstance(dataset, Dataset):
        return dataset
    if isinstance(dataset, str) and dataset in DATASETS:
        return DATASETS[dataset]
    raise InputError(
        f"unknown dataset {dataset!r}: use one of {', '.join(map(repr, DATASETS))} "
        f"(or register_dataset(Dataset(...)) first)"
    )


def register_dataset(entry: Dataset, *, replace: bool = False) -> Dataset:
    """Add ``entry`` to :data:`DATASETS` under ``entry.name`` and return it.

    A name already taken raises a one-line InputError unless ``replace`` is true (replacing a
    built-in entry changes what every loader reads for that name).
    """
    if not isinstance(entry, Dataset):
        raise InputError(f"register_dataset takes a jnn.data.Dataset, got {type(entry).__name__}")
    if entry.name in DATASETS and not replace and DATASETS[entry.name] != entry:
        raise InputError(
            f"dataset {entry.name!r} is already registered; pick another name or pass replace=True"
        )
    DATASETS[entry.name] = entry
    return entry


def _mirrors(entry: Dataset) -> tuple[str, ...]:
    """The entry's mirrors; for Fashion-MNIST a reassigned module-level MIRRORS wins."""
    if entry.name == FASHION_MNIST.name and MIRRORS != FASHION_MNIST.mirrors:
        return tuple(MIRRORS)
    return entry.mirrors


# --------------------------------------------------------------------------- locating files


def default_data_dir(dataset: str | Dataset = "fashion_mnist") -> pathlib.Path:
    """The folder a dataset is read from when no ``data_dir`` is given.

    ``$JNN_<NAME>_DIR`` if set, else (Fashion-MNIST only) ``$JNN_DATA_DIR``, else
    ``$XDG_CACHE_HOME/jnn/<name-with-dashes>`` (``~/.cache/jnn/...``).
    """
    entry = get_dataset(dataset)
    for var in _dir_vars(entry):
        value = os.environ.get(var)
        if value:
            return pathlib.Path(value).expanduser()
    return _cache_root() / entry.folder_name


def _dir_vars(entry: Dataset) -> tuple[str, ...]:
    legacy = _LEGACY_DIR_VARS.get(entry.name)
    return (entry.env_var, legacy) if legacy else (entry.env_var,)


def _cache_root() -> pathlib.Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = pathlib.Path(xdg).expanduser() if xdg else pathlib.Path.home() / ".cache"
    return base / "jnn"


def _where_to_put(entry: Dataset, directory: pathlib.Path) -> str:
    mirrors = _mirrors(entry)
    source = f" (official source: {mirrors[0]})" if mirrors else ""
    return (
        f"put the four official {entry.title} .gz files ({', '.join(entry.files)}) in "
        f"{directory} or point {' or '.join(_dir_vars(entry))} at a folder that has them{source}"
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


def _unreadable(path: pathlib.Path, err: OSError) -> DataError:
    """A data file the system will not let us read (permissions, I/O error), in one line."""
    return DataError(
        f"cannot read {path.name} in {path.parent}: {err.strerror or err}; make it readable by "
        "this user (e.g. chmod a+r) or put a readable copy of the official file there"
    )


def _not_a_file(path: pathlib.Path) -> str | None:
    """What sits at ``path`` when it is not a regular file (a folder, a FIFO, a symlink loop or
    a dangling symlink), else None (a regular file, or nothing at all). Never opens it: a FIFO
    would block the read."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return (
            f"a symlink to {os.readlink(path)}, which does not exist" if path.is_symlink() else None
        )
    except OSError as err:  # ELOOP (a symlink loop), EACCES on the folder, ENOTDIR, ...
        return f"unreachable ({err.strerror or err})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder"
    return (
        "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "not a regular file (a socket or device)"
    )


def _verify_file(entry: Dataset, path: pathlib.Path) -> None:
    """Raise DataError unless ``path`` has the official size and SHA-256 for its name."""
    size, sha = entry.files[path.name]
    actual_size = path.stat().st_size
    fix = (
        "delete it and rerun with download=True, or copy the official file there "
        "(pass verify=False only for custom files)"
    )
    what = f"the file is truncated or not the official {entry.title} one"
    if actual_size != size:
        raise DataError(
            f"{path.name} in {path.parent} has {actual_size:,} bytes, expected {size:,}: "
            f"{what}; {fix}"
        )
    try:
        actual_sha = _sha256(path)
    except OSError as err:
        raise _unreadable(path, err) from None
    if actual_sha != sha:
        raise DataError(
            f"{path.name} in {path.parent} fails the SHA-256 check (got {actual_sha[:16]}..., "
            f"expected {sha[:16]}...): the file is corrupt or not the official {entry.title} "
            f"one; {fix}"
        )


# --------------------------------------------------------------------------- download


def _download(entry: Dataset, name: str, directory: pathlib.Path) -> pathlib.Path:
    """Fetch ``name`` from the first mirror that serves the official bytes (``jnn.download``:
    size and SHA-256 checked while it arrives, atomic rename, a bar on a terminal), then make
    it readable by the group: the cache may be shared, and mkstemp creates files 0600."""
    from jnn import download

    size, sha = entry.files[name]
    urls = [base.rstrip("/") + "/" + name for base in _mirrors(entry)]
    try:
        path = download.fetch(
            urls, directory / name, expected=("sha256", sha), size=size, timeout=DOWNLOAD_TIMEOUT_S
        )
    except download.DownloadError as e:
        raise DataError(f"{e}; if offline, {_where_to_put(entry, directory)}") from None
    except OSError as e:
        raise DataError(
            f"cannot write to the data folder {directory} ({e}); {_where_to_put(entry, directory)}"
        ) from None
    try:
        path.chmod(_FILE_MODE)
    except OSError:  # a file system without modes (e.g. a vfat stick): the file is still fine
        pass
    return path


def _ensure_files(entry: Dataset, directory: pathlib.Path, *, download: bool, verify: bool) -> None:
    """Each file of ``entry`` present (downloaded when missing and ``download``) and verified.
    Something else in a file's place (a folder, a FIFO, a symlink loop) is refused as what it
    is: it was reported as a failed download."""
    for name in entry.files:
        path = directory / name
        odd = _not_a_file(path)
        if odd is not None:
            then = (
                "and it is downloaded again"
                if download and _mirrors(entry)
                else f"and put the official {entry.title} file there"
            )
            raise DataError(f"{name} in {directory} is {odd}, not the data file; remove it {then}")
        if not path.is_file():
            if not download:
                raise DataError(
                    f"{name} is missing from {directory}: {_where_to_put(entry, directory)}"
                )
            if not _mirrors(entry):
                raise DataError(
                    f"{name} is missing from {directory} and dataset {entry.name!r} has no "
                    f"mirrors to download it from: {_where_to_put(entry, directory)}"
                )
            _download(entry, name, directory)  # verified while downloading
        elif verify:
            _verify_file(entry, path)


# --------------------------------------------------------------------------- IDX parsing


def _read_gz(path: pathlib.Path) -> bytes:
    """The decompressed bytes of ``path``; a file that cannot be read (permissions) and one that
    is not gzip are two different one-line :class:`DataError` s."""
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except OSError as e:
        if e.errno is not None:  # the system refused the read (gzip's own errors carry none)
            raise _unreadable(path, e) from None
        raise DataError(
            f"{path.name} in {path.parent} is not a valid gzip file ({e}); replace it with the "
            f"official file"
        ) from e
    except (EOFError, zlib.error) as e:
        raise DataError(
            f"{path.name} in {path.parent} is not a valid gzip file ({e}); replace it with the "
            f"official file"
        ) from e


def _parse_idx(path: pathlib.Path, magic: int, ndim: int) -> tuple[tuple[int, ...], bytes]:
    """(dims, payload) of an IDX file of unsigned bytes: big-endian magic (2051 for 3-d images,
    2049 for 1-d labels), ``ndim`` big-endian uint32 sizes, then the bytes."""
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


def _read_images(entry: Dataset, path: pathlib.Path) -> np.ndarray:
    dims, payload = _parse_idx(path, _IMAGES_MAGIC, 3)
    if dims[1:] != entry.image_shape:
        h, w = entry.image_shape
        raise DataError(
            f"{path.name} in {path.parent} holds {dims[1]}x{dims[2]} images, expected {h}x{w} "
            f"for {entry.title}"
        )
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims)


def _read_labels(entry: Dataset, path: pathlib.Path) -> np.ndarray:
    _, payload = _parse_idx(path, _LABELS_MAGIC, 1)
    labels = np.frombuffer(payload, dtype=np.uint8)
    if labels.size and labels.max() >= entry.num_classes:
        raise DataError(
            f"{path.name} in {path.parent} has label {int(labels.max())}, expected "
            f"0..{entry.num_classes - 1} for {entry.title}"
        )
    return labels.astype(np.int32)


def _read_pair(
    entry: Dataset, directory: pathlib.Path, images: str, labels: str
) -> tuple[np.ndarray, np.ndarray]:
    x = _read_images(entry, directory / images)
    y = _read_labels(entry, directory / labels)
    if len(x) != len(y):
        raise DataError(
            f"{images} holds {len(x):,} images but {labels} holds {len(y):,} labels "
            f"(in {directory}); the files do not belong together"
        )
    return x, y


def _check_sizes(entry: Dataset, ds: OfficialSplit, directory: pathlib.Path) -> None:
    """Verified files hold the entry's official counts (a wrong entry, not a wrong file)."""
    got = (len(ds.train_labels), len(ds.test_labels))
    if got != (entry.train_size, entry.test_size):
        raise DataError(
            f"the verified {entry.title} files in {directory} hold {got[0]:,} train / "
            f"{got[1]:,} test examples but the {entry.name!r} entry says "
            f"{entry.train_size:,} / {entry.test_size:,}; fix the entry's train_size/test_size"
        )


# --------------------------------------------------------------------------- loading


def load_dataset(
    dataset: str | Dataset = "fashion_mnist",
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
    verify: bool = True,
    source: str = "idx",
    tfds_dir: str | os.PathLike | None = None,
) -> OfficialSplit:
    """Load a dataset's official train / test split: uint8 images (N, H, W), int32 labels (N,).

    ``dataset``: a registered name (:data:`DATASETS`) or a :class:`Dataset` entry. ``data_dir``
    defaults to :func:`default_data_dir` for it. Missing files are downloaded there from the
    entry's mirrors when ``download`` is true. ``verify`` checks each file's official size and
    SHA-256 and the official example counts (turn it off only for custom files; the IDX headers,
    image size and label range are always checked). ``source="tfds"`` loads through
    tensorflow-datasets' builder (prepared offline from the same files into ``tfds_dir``, default
    ``~/.cache/jnn/tfds``) and returns the examples in the official order, so both sources give
    identical arrays. With ``source="idx"`` the arrays are read-only views of the decompressed
    files (copy before writing in place).
    """
    entry = get_dataset(dataset)
    if source not in _SOURCES:
        raise InputError(f"source must be one of {_SOURCES}, got {source!r}")
    if source == "tfds" and entry.tfds_name is None:
        raise InputError(f"dataset {entry.name!r} has no tensorflow-datasets builder; use 'idx'")
    tfds = _import_tfds() if source == "tfds" else None  # fail early when it is not installed
    directory = (
        pathlib.Path(data_dir).expanduser() if data_dir is not None else default_data_dir(entry)
    )
    # TFDS checks the hashes itself and falls back to the network on a mismatch: always verify.
    verify = verify or source == "tfds"
    _ensure_files(entry, directory, download=download, verify=verify)
    train_images, train_labels, test_images, test_labels = entry.files
    x_train, y_train = _read_pair(entry, directory, train_images, train_labels)
    x_test, y_test = _read_pair(entry, directory, test_images, test_labels)
    ds = OfficialSplit(x_train, y_train, x_test, y_test)
    if verify:
        _check_sizes(entry, ds, directory)
    if tfds is not None:
        tdir = (
            pathlib.Path(tfds_dir).expanduser() if tfds_dir is not None else _cache_root() / "tfds"
        )
        ds = _load_tfds(tfds, entry, directory, tdir, reference=ds)
    return ds


def load_fashion_mnist(
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
    verify: bool = True,
    source: str = "idx",
    tfds_dir: str | os.PathLike | None = None,
) -> OfficialSplit:
    """Fashion-MNIST's official train (60000, 28, 28) / test (10000, 28, 28) uint8 images and
    int32 labels: :func:`load_dataset` with ``"fashion_mnist"`` (its name before the registry)."""
    return load_dataset(
        "fashion_mnist",
        data_dir,
        download=download,
        verify=verify,
        source=source,
        tfds_dir=tfds_dir,
    )


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
    tfds,
    entry: Dataset,
    manual_dir: pathlib.Path,
    tfds_dir: pathlib.Path,
    reference: OfficialSplit,
) -> OfficialSplit:
    builder = tfds.builder(entry.tfds_name, data_dir=str(tfds_dir))
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
        x = np.asarray(data["image"], dtype=np.uint8).reshape(-1, *entry.image_shape)
        y = np.asarray(data["label"]).astype(np.int32)
        order = _match_order(ref_x, x, f"tfds {split_name} split")
        x, y = x[order], y[order]
        if not np.array_equal(y, ref_y):
            raise DataError(f"tfds {split_name} split: labels differ from the official IDX files")
        out += [x, y]
    return OfficialSplit(*out)


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
    train, val, test = (rng.permutation(np.concatenate(p)) for p in parts)
    return train, val, test


def split_indices(
    ds: OfficialSplit, protocol: str = DEFAULT_PROTOCOL, *, seed: int = 0, stratify: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) int64 index arrays into the pooled examples (train first, then test).

    Sizes below are for 60,000 official training and 10,000 test examples (Fashion-MNIST and
    MNIST); the default protocol is ``"original"``, the study's split.

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


def take_stratified(indices: np.ndarray, labels: np.ndarray, n: int | None) -> np.ndarray:
    """A class-balanced subset of ``n`` of ``indices`` (into ``labels``), in their original
    order: the first image of each class, then the second of each, ... (``n`` None or at least
    ``len(indices)``: all of them). A subset of a stratified split stays stratified."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
        raise InputError(f"n must be a positive number of examples (or None), got {n!r}")
    if n is None or n >= len(indices):
        return indices
    lab = labels[indices]
    rank = np.empty(len(indices), np.int64)  # position of each image within its class
    for c in np.unique(lab):
        rank[lab == c] = np.arange(np.sum(lab == c))
    order = np.lexsort((np.arange(len(indices)), rank))  # by rank, then by original order
    return indices[np.sort(order[:n])]


def split(
    ds: OfficialSplit, protocol: str = DEFAULT_PROTOCOL, *, seed: int = 0, stratify: bool = False
) -> Splits:
    """Split into train/val/test: uint8 images (n, H, W) and int32 labels (n,).

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
    """uint8 images (N, H, W) -> float32 in [0, 1]; shape (N, H * W) if ``flatten`` (the
    dataset's ``features``: 784 for 28x28)."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise InputError(
            f"to_float expects uint8 images, got dtype {images.dtype}; pass the raw images"
        )
    out = np.divide(images, np.float32(255), dtype=np.float32)
    return _flat(out) if flatten else out


def load_splits(
    protocol: str = DEFAULT_PROTOCOL,
    *,
    dataset: str | Dataset = "fashion_mnist",
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    stratify: bool = False,
    flatten: bool = True,
    as_float: bool = True,
    download: bool = True,
    verify: bool = True,
    source: str = "idx",
) -> Splits:
    """Load, split and convert one dataset: images float32 in [0, 1] of shape (N, features)
    ((N, 784) for Fashion-MNIST and MNIST), or (N, H, W) when not ``flatten``; uint8 when not
    ``as_float``. Labels int32 (N,).

    ``protocol`` defaults to ``"original"``, the study's split (48,600 / 5,400 / 6,000 of the
    official training images: the official test images never reach training); protocols as in
    :func:`split_indices` (``"original-vgg"``: empty validation arrays, (0, 784) / (0,)).
    ``dataset``: a name in :data:`DATASETS` or a :class:`Dataset`; ``data_dir``, ``download``,
    ``verify`` and ``source`` as in :func:`load_dataset`. The protocol, seed and dataset are
    checked (one-line InputError) before any file is read.
    """
    protocol = canonical_protocol(protocol)  # fail before loading
    _check_seed(seed)
    entry = get_dataset(dataset)
    if protocol not in entry.protocols:
        raise InputError(
            f"dataset {entry.name!r} does not support split protocol {protocol!r}: use one of "
            f"{', '.join(map(repr, entry.protocols))}"
        )
    official = load_dataset(entry, data_dir, download=download, verify=verify, source=source)
    s = split(official, protocol, seed=seed, stratify=stratify)

    def convert(x: np.ndarray) -> np.ndarray:
        if as_float:
            return to_float(x, flatten=flatten)
        return _flat(x) if flatten else x

    return Splits(
        convert(s.x_train), s.y_train, convert(s.x_val), s.y_val, convert(s.x_test), s.y_test
    )
