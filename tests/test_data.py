"""jnn.data: loading, verification, download (against a local fake mirror), splits, tfds."""

import builtins
import gzip
import hashlib
import inspect
import os
import pathlib
import socket
import stat
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jnn import data
from jnn.data import (
    CLASS_NAMES,
    FILES,
    TEST_IMAGES,
    TEST_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    DataError,
    FashionMNIST,
    Splits,
    default_data_dir,
    load_dataset,
    load_fashion_mnist,
    load_splits,
    split,
    split_indices,
    to_float,
)
from jnn.errors import InputError

# MD5s published by Zalando for the official release (README of zalandoresearch/fashion-mnist).
OFFICIAL_MD5 = {
    TRAIN_IMAGES: "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    TRAIN_LABELS: "25c81989df183df01b3e8a0aad5dffbe",
    TEST_IMAGES: "bef4ecab320f06d8554ea6380940ec79",
    TEST_LABELS: "bb300cfdad3c16e7a12a480ee83cd310",
}


# --------------------------------------------------------------------------- helpers


def assert_clear(excinfo: pytest.ExceptionInfo, *needles: str) -> str:
    """The error is a one-line DataError that mentions every needle (e.g. the file name)."""
    assert isinstance(excinfo.value, DataError)
    assert isinstance(excinfo.value, ValueError)
    msg = str(excinfo.value)
    assert "\n" not in msg and msg.strip() == msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


def folder_with(tmp_path: pathlib.Path, real: pathlib.Path, **overrides: bytes) -> pathlib.Path:
    """A folder with symlinks to the real files, except ``overrides`` (file key -> content)."""
    names = {"ti": TRAIN_IMAGES, "tl": TRAIN_LABELS, "vi": TEST_IMAGES, "vl": TEST_LABELS}
    folder = tmp_path / "data"
    folder.mkdir()
    replaced = {names[k]: v for k, v in overrides.items()}
    for name in FILES:
        if name in replaced:
            (folder / name).write_bytes(replaced[name])
        else:
            (folder / name).symlink_to(real / name)
    return folder


def idx_images(images: np.ndarray, magic: int = 2051) -> bytes:
    n, r, c = images.shape
    header = b"".join(int(v).to_bytes(4, "big") for v in (magic, n, r, c))
    return gzip.compress(header + images.astype(np.uint8).tobytes())


def idx_labels(labels: np.ndarray, magic: int = 2049) -> bytes:
    header = magic.to_bytes(4, "big") + len(labels).to_bytes(4, "big")
    return gzip.compress(header + np.asarray(labels, np.uint8).tobytes())


def synthetic_folder(tmp_path: pathlib.Path, **overrides: bytes) -> pathlib.Path:
    """Small valid IDX files (20 train, 10 test) under the official names, plus overrides."""
    rng = np.random.default_rng(0)
    content = {
        "ti": idx_images(rng.integers(0, 256, (20, 28, 28))),
        "tl": idx_labels(np.arange(20) % 10),
        "vi": idx_images(rng.integers(0, 256, (10, 28, 28))),
        "vl": idx_labels(np.arange(10)),
    }
    content.update(overrides)
    names = {"ti": TRAIN_IMAGES, "tl": TRAIN_LABELS, "vi": TEST_IMAGES, "vl": TEST_LABELS}
    folder = tmp_path / "synthetic"
    folder.mkdir()
    for key, blob in content.items():
        (folder / names[key]).write_bytes(blob)
    return folder


def flip_byte(blob: bytes, at: int) -> bytes:
    return blob[:at] + bytes([blob[at] ^ 0xFF]) + blob[at + 1 :]


def assert_same(a: FashionMNIST, b: FashionMNIST) -> None:
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


# --------------------------------------------------------------------------- real data


def test_class_names():
    assert CLASS_NAMES[0] == "T-shirt/top" and CLASS_NAMES[9] == "Ankle boot"
    assert len(CLASS_NAMES) == 10 and len(set(CLASS_NAMES)) == 10


def test_shared_files_are_the_official_release(fashion_dir):
    """The hard-coded SHA-256/sizes come from files whose MD5s equal the published ones."""
    for name, (size, sha) in FILES.items():
        blob = (fashion_dir / name).read_bytes()
        assert len(blob) == size
        assert hashlib.md5(blob).hexdigest() == OFFICIAL_MD5[name]
        assert hashlib.sha256(blob).hexdigest() == sha


def test_real_data_loads(fashion):
    assert isinstance(fashion, FashionMNIST)
    assert fashion.train_images.shape == (60_000, 28, 28)
    assert fashion.test_images.shape == (10_000, 28, 28)
    assert fashion.train_labels.shape == (60_000,) and fashion.test_labels.shape == (10_000,)
    assert fashion.train_images.dtype == np.uint8 and fashion.test_images.dtype == np.uint8
    assert fashion.train_labels.dtype == np.int32 and fashion.test_labels.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(fashion.train_labels), [6_000] * 10)
    np.testing.assert_array_equal(np.bincount(fashion.test_labels), [1_000] * 10)
    assert fashion.train_images.min() == 0 and fashion.train_images.max() == 255
    # Pixel means published alongside the files (README.txt): 72.9404 train, 73.1466 test.
    assert abs(fashion.train_images.mean() - 72.9404) < 1e-3
    assert abs(fashion.test_images.mean() - 73.1466) < 1e-3


@pytest.mark.slow
def test_data_dir_from_env(fashion_dir, fashion, monkeypatch):
    monkeypatch.setenv("JNN_DATA_DIR", str(fashion_dir))
    assert default_data_dir() == fashion_dir
    assert_same(load_fashion_mnist(download=False), fashion)


def test_default_data_dir_is_a_cache_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("JNN_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_data_dir() == tmp_path / "jnn" / "fashion-mnist"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_data_dir() == pathlib.Path.home() / ".cache" / "jnn" / "fashion-mnist"


# --------------------------------------------------------------------------- bad files


@pytest.mark.parametrize("key,name", [("vl", TEST_LABELS), ("vi", TEST_IMAGES)])
def test_flipped_byte_fails_hash(tmp_path, fashion_dir, key, name):
    blob = (fashion_dir / name).read_bytes()
    folder = folder_with(tmp_path, fashion_dir, **{key: flip_byte(blob, len(blob) // 2)})
    with pytest.raises(DataError) as e:
        load_fashion_mnist(folder, download=False)
    assert_clear(e, name, str(folder), "SHA-256", "download=True")


def test_truncated_file(tmp_path, fashion_dir):
    blob = (fashion_dir / TEST_LABELS).read_bytes()[:-100]
    folder = folder_with(tmp_path, fashion_dir, vl=blob)
    with pytest.raises(DataError) as e:
        load_fashion_mnist(folder, download=False)
    assert_clear(e, TEST_LABELS, "5,048 bytes, expected 5,148", "truncated")
    with pytest.raises(DataError) as e:  # without the hash check the gzip stream still fails
        load_fashion_mnist(folder, download=False, verify=False)
    assert_clear(e, TEST_LABELS, "not a valid gzip file")


def test_not_gzip(tmp_path, fashion_dir):
    raw = gzip.decompress((fashion_dir / TEST_LABELS).read_bytes())
    folder = folder_with(tmp_path, fashion_dir, vl=raw)
    with pytest.raises(DataError) as e:
        load_fashion_mnist(folder, download=False)
    assert_clear(e, TEST_LABELS, "expected 5,148")
    with pytest.raises(DataError) as e:
        load_fashion_mnist(folder, download=False, verify=False)
    assert_clear(e, TEST_LABELS, "not a valid gzip file")


def test_missing_file_offline(tmp_path, fashion_dir):
    folder = folder_with(tmp_path, fashion_dir)
    (folder / TRAIN_LABELS).unlink()
    with pytest.raises(DataError) as e:
        load_fashion_mnist(folder, download=False)
    assert_clear(e, TRAIN_LABELS, "missing", str(folder), "JNN_DATA_DIR")


def _in_place_of(kind: str, path: pathlib.Path) -> None:
    """Put something that is not a data file at ``path``."""
    path.unlink()
    if kind == "folder":
        path.mkdir()
        (path / "x").write_text("x")
    elif kind == "fifo":
        os.mkfifo(path)  # reading it would block forever
    elif kind == "symlink-loop":
        path.symlink_to(path.name)
    else:  # dangling symlink
        path.symlink_to(path.parent / "gone.gz")


@pytest.mark.parametrize(
    "kind, says",
    [
        ("folder", "is a folder"),
        ("fifo", "is a FIFO"),
        ("symlink-loop", "symbolic links"),
        ("dangling", "which does not exist"),
    ],
)
@pytest.mark.parametrize("download", [True, False], ids=["download", "offline"])
def test_something_else_in_place_of_a_data_file_is_named(
    tmp_path, fashion_dir, monkeypatch, kind, says, download
):
    """Issue 19: a folder, FIFO or symlink loop in place of a data file was reported as a failed
    download (or as a missing file); it is named as what it is, and nothing is fetched."""
    folder = folder_with(tmp_path, fashion_dir)
    _in_place_of(kind, folder / TEST_LABELS)
    monkeypatch.setattr(data, "MIRRORS", ("http://127.0.0.1:9/never-asked/",))
    with pytest.raises(DataError) as e:
        load_fashion_mnist(folder, download=download)
    msg = assert_clear(e, TEST_LABELS, str(folder), says, "not the data file; remove it")
    assert "download" not in msg.split("; remove it")[0]
    assert ("downloaded again" in msg) == download


def _refuse_reading(monkeypatch, names: set[str]) -> None:
    """Reads of ``names`` fail as for a file of mode 000 (the tests may run as root, whom
    chmod does not stop): PermissionError from open and from gzip.open."""

    def guard(opener):
        def opened(path, *args, **kwargs):
            if pathlib.Path(path).name in names:
                raise PermissionError(13, "Permission denied", str(path))
            return opener(path, *args, **kwargs)

        return opened

    monkeypatch.setattr(builtins, "open", guard(builtins.open))
    monkeypatch.setattr(gzip, "open", guard(gzip.open))


@pytest.mark.parametrize("verify", [True, False], ids=["verify", "no-verify"])
def test_an_unreadable_data_file_is_one_line(tmp_path, fashion_dir, monkeypatch, verify):
    """Issue 19: PermissionError escaped as a traceback from the hash check, and without it was
    called "not a valid gzip file"."""
    folder = folder_with(tmp_path, fashion_dir)
    data._sha256_cached.cache_clear()
    _refuse_reading(monkeypatch, {TRAIN_IMAGES})
    with pytest.raises(DataError) as e:
        load_fashion_mnist(folder, download=False, verify=verify)
    msg = assert_clear(e, f"cannot read {TRAIN_IMAGES} in {folder}", "Permission denied")
    assert "chmod" in msg and "gzip" not in msg


def test_synthetic_files_load_without_verify(tmp_path):
    folder = synthetic_folder(tmp_path)
    ds = load_fashion_mnist(folder, download=False, verify=False)
    assert ds.train_images.shape == (20, 28, 28) and ds.test_images.shape == (10, 28, 28)
    assert ds.train_labels.dtype == np.int32
    with pytest.raises(DataError) as e:  # ...and verification rejects them
        load_fashion_mnist(folder, download=False)
    assert_clear(e, "bytes, expected")


@pytest.mark.parametrize(
    "overrides,needles",
    [
        ({"ti": idx_images(np.zeros((20, 28, 28)), magic=2049)}, [TRAIN_IMAGES, "2049", "2051"]),
        ({"vl": idx_labels(np.arange(10), magic=2051)}, [TEST_LABELS, "2051", "2049"]),
        ({"vi": idx_images(np.zeros((10, 27, 28)))}, [TEST_IMAGES, "27x28", "28x28"]),
        ({"tl": idx_labels(np.arange(19) % 10)}, [TRAIN_IMAGES, TRAIN_LABELS, "19"]),
        ({"vl": idx_labels(np.full(10, 10))}, [TEST_LABELS, "label 10", "0..9"]),
        ({"vl": gzip.compress(b"\x00\x00\x08\x01")}, [TEST_LABELS, "IDX header"]),
        (
            {"ti": gzip.compress(gzip.decompress(idx_images(np.zeros((20, 28, 28))))[:-5])},
            [TRAIN_IMAGES, "20x28x28", "truncated"],
        ),
    ],
    ids=["image-magic", "label-magic", "dims", "count", "label-range", "header", "payload"],
)
def test_malformed_idx(tmp_path, overrides, needles):
    folder = synthetic_folder(tmp_path, **overrides)
    with pytest.raises(DataError) as e:
        load_fashion_mnist(folder, download=False, verify=False)
    assert_clear(e, *needles)


def test_bad_source():
    with pytest.raises(ValueError, match="source"):
        load_fashion_mnist("/nonexistent", download=False, source="csv")


# --------------------------------------------------------------------------- download


@pytest.mark.slow
def test_download_into_default_cache(tmp_path, mirror, fashion, monkeypatch):
    monkeypatch.delenv("JNN_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "MIRRORS", (mirror + "good/",))
    assert_same(load_fashion_mnist(), fashion)
    cache = tmp_path / "cache" / "jnn" / "fashion-mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(FILES)  # no temp files left
    for path in cache.iterdir():  # readable by the group (issue 21), not mkstemp's 0600
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert_same(load_fashion_mnist(download=False), fashion)  # second call: no network needed


def _cache_without_test_labels(tmp_path, fashion_dir):
    folder = folder_with(tmp_path, fashion_dir)
    (folder / TEST_LABELS).unlink()
    return folder


def test_download_falls_back_to_next_mirror(tmp_path, fashion_dir, mirror, fashion, monkeypatch):
    folder = _cache_without_test_labels(tmp_path, fashion_dir)
    monkeypatch.setattr(data, "MIRRORS", (mirror + "empty/", mirror + "bad/", mirror + "good/"))
    assert_same(load_fashion_mnist(folder), fashion)
    assert (folder / TEST_LABELS).read_bytes() == (fashion_dir / TEST_LABELS).read_bytes()
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)


@pytest.mark.parametrize("path", ["bad/", "bad/short/", "bad/long/"])
def test_download_with_wrong_bytes_is_rejected(tmp_path, fashion_dir, mirror, monkeypatch, path):
    folder = _cache_without_test_labels(tmp_path, fashion_dir)
    monkeypatch.setattr(data, "MIRRORS", (mirror + path,))
    with pytest.raises(DataError) as e:
        load_fashion_mnist(folder)
    assert_clear(e, TEST_LABELS, "could not download", str(folder))
    assert sorted(p.name for p in folder.iterdir()) == sorted(set(FILES) - {TEST_LABELS})


def test_download_404(tmp_path, fashion_dir, mirror, monkeypatch):
    folder = _cache_without_test_labels(tmp_path, fashion_dir)
    monkeypatch.setattr(data, "MIRRORS", (mirror + "empty/",))
    with pytest.raises(DataError) as e:
        load_fashion_mnist(folder)
    assert_clear(e, TEST_LABELS, "404")


def test_download_offline(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on: connection refused, like offline
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(data, "MIRRORS", (f"http://127.0.0.1:{port}/",))
    folder = tmp_path / "nothing-here"
    with pytest.raises(DataError) as e:
        load_fashion_mnist(folder)
    assert_clear(e, "could not download", "offline", str(folder), "JNN_DATA_DIR")
    assert not folder.exists()  # the download made it and removed it again: nothing left


# --------------------------------------------------------------------------- splits

ALL_PROTOCOLS = ["pooled70k", "seed", "official", "original", "original-vgg"]
SIZES = {  # (train, val, test)
    "pooled70k": (56_000, 7_000, 7_000),
    "seed": (56_000, 7_000, 7_000),
    "official": (54_000, 6_000, 10_000),
    "original": (48_600, 5_400, 6_000),
    "original-vgg": (48_000, 0, 12_000),
}
# What the pool of each protocol is: all 70,000 images, or the 60,000 official training images.
POOL = {"pooled70k": 70_000, "seed": 70_000, "official": 70_000}
POOL |= {"original": 60_000, "original-vgg": 60_000}


def index_digest(idx: tuple[np.ndarray, ...]) -> str:
    return hashlib.sha256(b"".join(np.ascontiguousarray(i).tobytes() for i in idx)).hexdigest()


def test_protocol_names():
    assert data.PROTOCOLS == ("pooled70k", "official", "original", "original-vgg")
    assert data.PROTOCOL_ALIASES == {"seed": "pooled70k"}
    assert data.canonical_protocol("seed") == "pooled70k"
    for name in data.PROTOCOLS:
        assert data.canonical_protocol(name) == name


@pytest.mark.parametrize("protocol", ALL_PROTOCOLS)
@pytest.mark.parametrize("stratify", [False, True])
def test_split_sizes_disjoint_and_complete(fashion, protocol, stratify):
    sizes = SIZES[protocol]
    idx = split_indices(fashion, protocol, seed=0, stratify=stratify)
    assert tuple(len(i) for i in idx) == sizes
    assert all(i.dtype == np.int64 for i in idx)
    # A partition of the protocol's pool: disjoint, and every image of the pool used once.
    np.testing.assert_array_equal(np.sort(np.concatenate(idx)), np.arange(POOL[protocol]))
    s = split(fashion, protocol, seed=0, stratify=stratify)
    assert isinstance(s, Splits)
    pool_x = np.concatenate([fashion.train_images, fashion.test_images])
    pool_y = np.concatenate([fashion.train_labels, fashion.test_labels])
    for i, x, y in zip(idx, s[0::2], s[1::2]):
        assert x.dtype == np.uint8 and x.shape == (len(i), 28, 28) and y.dtype == np.int32
        np.testing.assert_array_equal(x, pool_x[i])
        np.testing.assert_array_equal(y, pool_y[i])
    if stratify:
        for y, n in zip(s[1::2], sizes):
            np.testing.assert_array_equal(np.bincount(y, minlength=10), [n // 10] * 10)


@pytest.mark.parametrize("protocol", ["original", "original-vgg"])
@pytest.mark.parametrize("seed", [0, 5])
def test_original_protocols_use_only_the_official_training_images(fashion, protocol, seed):
    for stratify in (False, True):
        idx = split_indices(fashion, protocol, seed=seed, stratify=stratify)
        assert all(i.max(initial=0) < 60_000 and i.min(initial=0) >= 0 for i in idx)
        s = split(fashion, protocol, seed=seed, stratify=stratify)
        for i, x, y in zip(idx, s[0::2], s[1::2]):  # the official 10k test set is not used
            np.testing.assert_array_equal(x, fashion.train_images[i])
            np.testing.assert_array_equal(y, fashion.train_labels[i])


def test_original_sizes_match_the_studys_reported_accuracies():
    """The arithmetic the sizes were inferred from (issue 13): each reported accuracy is k/n."""
    _, n_val, n_test = SIZES["original"]
    n_train = SIZES["original"][0]
    for acc in (0.8865, 5239 / 6000, 607 / 6000):
        assert abs(acc * n_test - round(acc * n_test)) < 1e-6
        assert abs(acc * 7_000 - round(acc * 7_000)) > 1e-3  # the pooled split does not fit
    train_acc = 47969 / 48600  # 0.98701646...
    assert f"{train_acc:.8f}" == "0.98701646"
    assert abs(train_acc * 56_000 - round(train_acc * 56_000)) > 1e-3
    assert (n_train, n_val, n_test) == (48_600, 5_400, 6_000) and n_train + n_val + n_test == 60_000
    assert 187 * 64 < SIZES["original-vgg"][2] <= 188 * 64  # the VGG log's 188 batches of 64


def test_original_vgg_has_an_empty_validation_set(fashion, fashion_dir):
    s = split(fashion, "original-vgg", seed=2)
    assert s.x_val.shape == (0, 28, 28) and s.x_val.dtype == np.uint8
    assert s.y_val.shape == (0,) and s.y_val.dtype == np.int32
    f = load_splits("original-vgg", seed=2, data_dir=fashion_dir, download=False)
    assert f.x_val.shape == (0, 784) and f.x_val.dtype == np.float32 and f.y_val.shape == (0,)
    np.testing.assert_array_equal(f.x_test, to_float(s.x_test))
    u = load_splits("original-vgg", data_dir=fashion_dir, download=False, as_float=False)
    assert u.x_val.shape == (0, 784) and u.x_val.dtype == np.uint8


def test_official_protocol_keeps_the_official_test_set(fashion):
    s = split(fashion, "official", seed=3)
    np.testing.assert_array_equal(s.x_test, fashion.test_images)
    np.testing.assert_array_equal(s.y_test, fashion.test_labels)


@pytest.mark.parametrize("protocol", ALL_PROTOCOLS)
def test_split_deterministic_per_seed(fashion, protocol):
    a = split_indices(fashion, protocol, seed=7)
    b = split_indices(fashion, protocol, seed=np.int64(7))
    c = split_indices(fashion, protocol, seed=8)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(np.sort(a[2]), np.sort(c[2])) or protocol == "official"
    assert not np.array_equal(np.sort(a[0]), np.sort(c[0]))  # another seed, another train set


@pytest.mark.parametrize("stratify", [False, True])
@pytest.mark.parametrize("seed", [0, 3])
def test_seed_alias_gives_identical_indices(fashion, seed, stratify):
    old = split_indices(fashion, "seed", seed=seed, stratify=stratify)
    new = split_indices(fashion, "pooled70k", seed=seed, stratify=stratify)
    for x, y in zip(old, new):
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes()


# sha256 of the concatenated int64 indices: existing run folders name their split, so these must
# never move. pooled70k and official recorded with the code before the "original" protocols were
# added; the "original" ones with the code before the dataset registry (commit e950a73).
FROZEN = {
    ("pooled70k", False, 0): "57ffb78e5b579a98",
    ("pooled70k", True, 3): "4180852706439142",
    ("official", False, 0): "3d34fcb272f5947f",
    ("official", True, 3): "b3df502ff1b631fa",
    ("original", False, 0): "59e1bc0a74d74086",
    ("original", True, 3): "493958bdc919258f",
    ("original-vgg", False, 0): "7cdbc934f7451e7a",
    ("original-vgg", True, 2): "9c62f3f29ea74b17",
}


@pytest.mark.parametrize("key", sorted(FROZEN), ids=str)
def test_existing_protocols_give_the_indices_they_always_gave(fashion, key):
    protocol, stratify, seed = key
    idx = split_indices(fashion, protocol, seed=seed, stratify=stratify)
    assert index_digest(idx)[:16] == FROZEN[key]


def read_idx(path: pathlib.Path) -> np.ndarray:
    """The IDX layout read without jnn: magic (byte 3 = number of dims), big-endian uint32 dims,
    then unsigned bytes."""
    raw = gzip.decompress(path.read_bytes())
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(raw[3])]
    return np.frombuffer(raw[4 + 4 * raw[3] :], np.uint8).reshape(dims)


@pytest.fixture(scope="module")
def idx_reference(fashion_dir) -> list[np.ndarray]:
    return [read_idx(fashion_dir / name) for name in FILES]


@pytest.mark.slow
def test_fashion_mnist_entry_reads_what_a_plain_idx_reader_reads(fashion_dir, idx_reference):
    official = load_dataset("fashion_mnist", fashion_dir, download=False)
    for got, want, dtype in zip(official, idx_reference, [np.uint8, np.int32] * 2):
        assert got.dtype == dtype and got.tobytes() == want.astype(dtype).tobytes()
    assert_same(load_fashion_mnist(fashion_dir, download=False), official)
    assert_same(load_dataset(data.FASHION_MNIST, fashion_dir, download=False), official)


@pytest.mark.slow
@pytest.mark.parametrize(
    "key",
    [
        ("original", False, 0),
        ("original-vgg", True, 2),
        ("pooled70k", True, 3),
        ("official", False, 0),
    ],
    ids=str,
)
def test_fashion_mnist_splits_as_before_the_registry(fashion_dir, fashion, idx_reference, key):
    """Through the registry, Fashion-MNIST gives the arrays it always gave: the official files
    as a plain IDX reader sees them, cut at the pinned indices (FROZEN), then scaled."""
    protocol, stratify, seed = key
    idx = split_indices(fashion, protocol, seed=seed, stratify=stratify)
    assert index_digest(idx)[:16] == FROZEN[key]
    images = np.concatenate([idx_reference[0], idx_reference[2]]).reshape(-1, 784)
    labels = np.concatenate([idx_reference[1], idx_reference[3]]).astype(np.int32)
    dataset = "fashion_mnist" if stratify else data.FASHION_MNIST  # a name or the entry
    s = load_splits(
        protocol,
        dataset=dataset,
        seed=seed,
        stratify=stratify,
        data_dir=fashion_dir,
        download=False,
    )
    for i, x, y in zip(idx, s[0::2], s[1::2]):
        assert x.dtype == np.float32 and x.shape == (len(i), 784)
        assert x.tobytes() == (images[i].astype(np.float32) / np.float32(255)).tobytes()
        assert y.dtype == np.int32 and y.tobytes() == labels[i].tobytes()


def assert_one_line_input_error(excinfo: pytest.ExceptionInfo, *needles: str) -> None:
    assert isinstance(excinfo.value, InputError) and isinstance(excinfo.value, ValueError)
    msg = str(excinfo.value)
    assert "\n" not in msg and msg.strip() == msg
    for needle in needles:
        assert needle in msg, (needle, msg)


@pytest.mark.parametrize("seed", [1.5, "0", True, -1, None])
@pytest.mark.parametrize("protocol", ["pooled70k", "original", "original-vgg"])
def test_bad_seed(fashion, seed, protocol):
    with pytest.raises(InputError) as e:
        split(fashion, protocol, seed=seed)
    assert_one_line_input_error(e, "seed", "non-negative int", repr(seed))


@pytest.mark.parametrize("protocol", ["random", "Original", "pooled", "", None, 0])
def test_bad_protocol(fashion, protocol):
    with pytest.raises(InputError) as e:
        split(fashion, protocol)
    assert_one_line_input_error(e, "protocol", repr(protocol), "'original'", "'seed'")
    with pytest.raises(InputError, match="protocol"):  # before touching any file
        load_splits(protocol, data_dir="/nonexistent", download=False)
    with pytest.raises(InputError, match="protocol"):
        split_indices(fashion, protocol, seed=-1)  # the protocol is checked first


@settings(max_examples=40, deadline=None)
@given(
    n_train=st.integers(0, 60),
    n_test=st.integers(0, 30),
    seed=st.integers(0, 2**32),
    stratify=st.booleans(),
    protocol=st.sampled_from(ALL_PROTOCOLS),
)
def test_split_indices_partition_any_size(n_train, n_test, seed, stratify, protocol):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n_train + n_test).astype(np.int32)
    ds = FashionMNIST(
        np.zeros((n_train, 28, 28), np.uint8),
        labels[:n_train],
        np.zeros((n_test, 28, 28), np.uint8),
        labels[n_train:],
    )
    idx = split_indices(ds, protocol, seed=seed, stratify=stratify)
    pool = n_train + n_test if POOL[protocol] == 70_000 else n_train
    np.testing.assert_array_equal(np.sort(np.concatenate(idx)), np.arange(pool))
    if protocol == "official":
        np.testing.assert_array_equal(idx[2], np.arange(n_train, n_train + n_test))
    if protocol == "original-vgg":
        assert len(idx[1]) == 0


# --------------------------------------------------------------------------- conversion


def test_to_float():
    images = np.array([[[0, 255], [51, 128]]], dtype=np.uint8)
    flat = to_float(images)
    assert flat.dtype == np.float32 and flat.shape == (1, 4)
    np.testing.assert_allclose(flat, [[0.0, 1.0, 0.2, 128 / 255]], rtol=1e-7)
    assert to_float(images, flatten=False).shape == (1, 2, 2)
    with pytest.raises(InputError, match="uint8"):
        to_float(images.astype(np.float32))
    assert to_float(np.zeros((0, 28, 28), np.uint8)).shape == (0, 784)


@pytest.mark.slow
def test_load_splits(fashion_dir, fashion):
    s = load_splits("official", seed=1, data_dir=fashion_dir, download=False, stratify=True)
    assert s.x_train.shape == (54_000, 784) and s.x_train.dtype == np.float32
    assert 0.0 <= s.x_train.min() and s.x_train.max() <= 1.0 and s.x_val.max() == 1.0
    assert s.y_train.dtype == np.int32
    ref = split(fashion, "official", seed=1, stratify=True)
    np.testing.assert_array_equal(s.x_val, to_float(ref.x_val))
    raw = load_splits(
        "pooled70k", data_dir=fashion_dir, download=False, as_float=False, flatten=False
    )
    assert raw.x_test.shape == (7_000, 28, 28) and raw.x_test.dtype == np.uint8


def test_load_splits_defaults_to_the_studys_split(fashion_dir):
    """No protocol: "original" (issue 21), so the official test images never reach training."""
    default = load_splits(data_dir=fashion_dir, download=False, as_float=False)
    explicit = load_splits("original", data_dir=fashion_dir, download=False, as_float=False)
    assert tuple(len(y) for y in default[1::2]) == SIZES["original"]
    for a, b in zip(default, explicit):
        assert a.tobytes() == b.tobytes()
    assert inspect.signature(split).parameters["protocol"].default == "original"
    assert inspect.signature(split_indices).parameters["protocol"].default == "original"


# --------------------------------------------------------------------------- tfds


def test_tfds_missing_gives_clear_error(fashion_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails
    with pytest.raises(DataError) as e:
        load_fashion_mnist(fashion_dir, download=False, source="tfds")
    assert_clear(e, "tensorflow-datasets", "jnn[tfds]")


def test_hashes_match_tfds_registry():
    tfds = pytest.importorskip("tensorflow_datasets")
    registry = pathlib.Path(tfds.__file__).parent / "url_checksums" / "fashion_mnist.txt"
    registered = {}
    for line in registry.read_text().splitlines():
        if line.strip():
            _url, size, sha, name = line.split("\t")
            registered[name] = (int(size), sha)
    assert registered == FILES


@pytest.mark.slow
def test_tfds_source_equals_idx(fashion_dir, fashion, tmp_path):
    pytest.importorskip("tensorflow_datasets")
    from_tfds = load_fashion_mnist(
        fashion_dir, download=False, source="tfds", tfds_dir=tmp_path / "tfds"
    )
    assert_same(from_tfds, fashion)
