"""jnn.data's dataset registry: entries, derived shapes, MNIST on IDX files the tests generate.

No MNIST file can be downloaded here, so the MNIST entry's loading path runs on small valid IDX
files written into tmp folders (right magic numbers and shapes, wrong digests): verification must
refuse them with a one-line error saying what to do, and the documented ways to load custom files
(``verify=False``, or an entry naming their own digests) must work.
"""

import dataclasses
import functools
import gzip
import hashlib
import http.server
import pathlib
import stat
import threading

import numpy as np
import pytest

from jnn import data
from jnn.data import (
    TEST_IMAGES,
    TEST_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    DataError,
    Dataset,
    OfficialSplit,
    default_data_dir,
    get_dataset,
    load_dataset,
    load_splits,
    register_dataset,
)
from jnn.errors import InputError

NAMES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)
CLOSED = "http://127.0.0.1:9/"  # refused at once, like offline


@pytest.fixture(autouse=True)
def _own_registry(monkeypatch):
    """Each test gets a copy of the registry whose entries never reach the real mirrors (conftest
    only redirects Fashion-MNIST's MIRRORS); registrations vanish with the test."""
    offline = {k: dataclasses.replace(v, mirrors=(CLOSED,)) for k, v in data.DATASETS.items()}
    monkeypatch.setattr(data, "DATASETS", offline)


def one_line(excinfo: pytest.ExceptionInfo, *needles: str) -> str:
    """The error is a one-line InputError (a ValueError) that mentions every needle."""
    assert isinstance(excinfo.value, InputError) and isinstance(excinfo.value, ValueError)
    msg = str(excinfo.value)
    assert "\n" not in msg and msg.strip() == msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


# --------------------------------------------------------------------------- generated IDX files


def idx_gz(array: np.ndarray, magic: int) -> bytes:
    """An IDX file of unsigned bytes, gzipped: magic, one big-endian uint32 per dim, the data."""
    header = b"".join(int(v).to_bytes(4, "big") for v in (magic, *array.shape))
    return gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0)


def tiny_mnist(folder: pathlib.Path, n_train: int = 30, n_test: int = 10, shape=(28, 28)):
    """Write four valid MNIST-layout IDX files (images 2051, labels 2049) under the official
    names; returns (folder, the arrays written as an OfficialSplit)."""
    rng = np.random.default_rng(1)
    arrays = OfficialSplit(
        rng.integers(0, 256, (n_train, *shape)).astype(np.uint8),
        (np.arange(n_train) % 10).astype(np.int32),
        rng.integers(0, 256, (n_test, *shape)).astype(np.uint8),
        (np.arange(n_test)[::-1] % 10).astype(np.int32),
    )
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in zip(NAMES, arrays):
        (folder / name).write_bytes(idx_gz(array, 2051 if array.ndim == 3 else 2049))
    return folder, arrays


def entry_for(folder: pathlib.Path, **changes) -> Dataset:
    """A test-only entry naming the real sizes and SHA-256 of the files in ``folder``."""
    files = {}
    for name in NAMES:
        blob = (folder / name).read_bytes()
        files[name] = (len(blob), hashlib.sha256(blob).hexdigest())
    fields = dict(name="tiny_mnist", title="tiny MNIST", files=files, train_size=30, test_size=10)
    fields["class_names"] = get_dataset("mnist").class_names
    return Dataset(**(fields | changes))


def assert_equal(got: OfficialSplit, want: OfficialSplit) -> None:
    for x, y in zip(got, want):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


# --------------------------------------------------------------------------- the registry


def test_registry_names_and_derived_shapes():
    assert list(data.DATASETS) == ["fashion_mnist", "mnist"]
    for name, title in (("fashion_mnist", "Fashion-MNIST"), ("mnist", "MNIST")):
        entry = get_dataset(name)
        assert entry.name == name and entry.title == title
        assert entry.input_shape == (28, 28, 1) and entry.image_shape == (28, 28)
        assert entry.features == 784  # derived: 28 * 28 * 1, written nowhere
        assert entry.num_classes == 10 == len(entry.class_names)
        assert (entry.train_size, entry.test_size) == (60_000, 10_000)
        assert entry.protocols == data.PROTOCOLS
        assert tuple(entry.files) == NAMES  # same official names, in the loaders' order
    assert get_dataset("mnist").class_names == tuple("0123456789")
    assert get_dataset("fashion_mnist").class_names[9] == "Ankle boot"
    small = dataclasses.replace(data.MNIST, name="small", input_shape=(8, 6, 1))
    assert small.features == 48 and small.image_shape == (8, 6)
    assert get_dataset(small) is small  # an entry passes through


@pytest.mark.parametrize("name", ["cifar10", "MNIST", "", None, 3])
def test_unknown_dataset_is_a_one_line_error_listing_the_names(name):
    with pytest.raises(InputError) as e:
        get_dataset(name)
    one_line(e, repr(name), "'fashion_mnist'", "'mnist'")
    with pytest.raises(InputError, match="unknown dataset"):  # before any file is read
        load_splits("original", dataset=name, data_dir="/nonexistent", download=False)


def test_fashion_mnist_aliases_are_its_entry():
    entry = data.FASHION_MNIST
    assert data.DATASETS["fashion_mnist"].files == entry.files
    assert data.FILES is entry.files and dict(data.FILES) == dict(entry.files)
    assert data.CLASS_NAMES is entry.class_names and data.IMAGE_SHAPE == entry.image_shape
    assert data.NUM_CLASSES == entry.num_classes
    assert data.FashionMNIST is OfficialSplit
    assert data.default_data_dir() == default_data_dir("fashion_mnist")


def test_mnist_entry_matches_the_tfds_registry_and_known_mirrors():
    """Sizes and SHA-256 as tensorflow-datasets registers them for MNIST's four files."""
    tfds = pytest.importorskip("tensorflow_datasets")
    registry = pathlib.Path(tfds.__file__).parent / "url_checksums" / "mnist.txt"
    registered = {}
    for line in registry.read_text().splitlines():
        if line.strip():
            _url, size, sha, name = line.split("\t")
            registered[name] = (int(size), sha)
    assert registered == dict(data.MNIST.files)
    assert data.MNIST.mirrors[0] == "https://ossci-datasets.s3.amazonaws.com/mnist/"
    assert all(m.endswith("/") for m in data.MNIST.mirrors)


def test_entries_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        data.MNIST.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        data.MNIST.files[TRAIN_IMAGES] = (1, "0" * 64)  # type: ignore[index]
    with pytest.raises(TypeError):  # keywords only: no field order to get wrong
        Dataset("x", "X", {}, ("a", "b"))  # type: ignore[misc]
    assert hash(data.MNIST) == hash(dataclasses.replace(data.MNIST))


@pytest.mark.parametrize(
    "changes,needles",
    [
        ({"name": "My-Set"}, ["'My-Set'", "lower-case"]),
        ({"files": {TRAIN_IMAGES: (1, "0" * 64)}}, ["1 files", "expected 4"]),
        ({"files": dict.fromkeys(NAMES, (0, "0" * 64))}, [TRAIN_IMAGES, "SHA-256"]),
        ({"files": dict.fromkeys(NAMES, (10, "XYZ"))}, [TRAIN_IMAGES, "64 lower-case hex"]),
        ({"class_names": ("only",)}, ["1 class names", "2 to 256"]),
        ({"input_shape": (32, 32, 3)}, ["(32, 32, 3)", "(H, W, 1)"]),
        ({"input_shape": (28, 0, 1)}, ["(28, 0, 1)"]),
        ({"train_size": -1}, ["train_size"]),
        ({"protocols": ("random",)}, ["'random'", "pooled70k"]),
        ({"protocols": ()}, ["non-empty"]),
    ],
    ids=[
        "name",
        "count",
        "size",
        "sha",
        "classes",
        "channels",
        "zero-dim",
        "sizes",
        "proto",
        "none",
    ],
)
def test_bad_entries_are_refused_when_built(changes, needles):
    with pytest.raises(InputError) as e:
        dataclasses.replace(data.MNIST, **changes)
    one_line(e, *needles)


def test_register_dataset(tmp_path):
    entry = entry_for(tiny_mnist(tmp_path / "tiny")[0])
    assert register_dataset(entry) is entry and get_dataset("tiny_mnist") is entry
    assert register_dataset(entry) is entry  # the same entry again: nothing to refuse
    other = dataclasses.replace(entry, title="another")
    with pytest.raises(InputError) as e:
        register_dataset(other)
    one_line(e, "'tiny_mnist'", "already registered", "replace=True")
    assert register_dataset(other, replace=True) is other and get_dataset("tiny_mnist") is other
    with pytest.raises(InputError) as e:
        register_dataset("mnist")  # type: ignore[arg-type]
    one_line(e, "Dataset", "str")


# --------------------------------------------------------------------------- MNIST, generated files


def test_generated_mnist_is_refused_by_verification(tmp_path):
    folder, _ = tiny_mnist(tmp_path / "mnist")
    with pytest.raises(DataError) as e:
        load_dataset("mnist", folder, download=False)
    msg = one_line(e, TRAIN_IMAGES, str(folder), "expected 9,912,422", "official MNIST")
    assert "download=True" in msg and "verify=False" in msg  # says what to do
    with pytest.raises(DataError) as e:  # the same through load_splits
        load_splits(dataset="mnist", data_dir=folder, download=False)
    one_line(e, "expected 9,912,422", "verify=False")


def stored_gzip(payload: bytes) -> bytes:
    """gzip with one stored (uncompressed) deflate block: exactly len(payload) + 23 bytes."""
    blob = gzip.compress(payload, compresslevel=0, mtime=0)
    assert len(blob) == len(payload) + 23
    return blob


def test_generated_file_of_the_official_size_fails_the_sha256(tmp_path):
    """A valid labels file of exactly MNIST's official test-labels size (4,542 bytes): the size
    check passes, the SHA-256 check refuses it (an entry with MNIST's official test-labels sum
    and the other three generated files' own sums, so only that file can fail)."""
    folder, _ = tiny_mnist(tmp_path / "mnist")
    size, sha = data.MNIST.files[TEST_LABELS]
    n_labels = size - 23 - 8  # minus the stored-block gzip framing and the IDX header
    payload = idx_header(2049, n_labels) + (np.arange(n_labels) % 10).astype(np.uint8).tobytes()
    (folder / TEST_LABELS).write_bytes(stored_gzip(payload))
    assert (folder / TEST_LABELS).stat().st_size == size
    mixed = entry_for(folder)
    entry = dataclasses.replace(mixed, files={**mixed.files, TEST_LABELS: (size, sha)})
    with pytest.raises(DataError) as e:
        load_dataset(entry, folder, download=False)
    one_line(e, TEST_LABELS, "SHA-256", sha[:16], "official tiny MNIST", "verify=False")
    with pytest.raises(DataError) as e:  # unverified, it parses: a valid IDX labels file
        load_dataset(entry, folder, download=False, verify=False)
    one_line(e, f"holds {n_labels:,} labels", "do not belong together")


def idx_header(magic: int, *dims: int) -> bytes:
    return b"".join(int(v).to_bytes(4, "big") for v in (magic, *dims))


def test_generated_mnist_loads_unverified(tmp_path):
    folder, arrays = tiny_mnist(tmp_path / "mnist")
    assert_equal(load_dataset("mnist", folder, download=False, verify=False), arrays)
    s = load_splits("pooled70k", dataset="mnist", data_dir=folder, download=False, verify=False)
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (32, 4, 4)
    assert s.x_train.shape == (32, get_dataset("mnist").features) and s.x_train.dtype == np.float32
    pool = np.concatenate([arrays.train_images, arrays.test_images]).reshape(40, -1)
    rows = {r.tobytes() for r in pool}
    assert all((np.round(r * 255).astype(np.uint8)).tobytes() in rows for r in s.x_test)
    s = load_splits(dataset="mnist", data_dir=folder, download=False, verify=False)  # "original"
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (24, 3, 3)


def test_an_entry_with_the_files_own_digests_loads_them_verified(tmp_path):
    folder, arrays = tiny_mnist(tmp_path / "mnist")
    entry = entry_for(folder)
    assert_equal(load_dataset(entry, folder, download=False), arrays)  # passing the entry
    register_dataset(entry)  # or registering it under its name
    s = load_splits("official", dataset="tiny_mnist", data_dir=folder, download=False)
    np.testing.assert_array_equal(s.y_test, arrays.test_labels)  # official: the test set as is
    blob = (folder / TRAIN_LABELS).read_bytes()
    (folder / TRAIN_LABELS).write_bytes(blob[:-9] + bytes([blob[-9] ^ 1]) + blob[-8:])
    with pytest.raises(DataError) as e:  # one flipped byte: refused
        load_dataset("tiny_mnist", folder, download=False)
    one_line(e, TRAIN_LABELS, "SHA-256", "official tiny MNIST")


def test_an_entry_whose_sizes_disagree_with_its_verified_files(tmp_path):
    folder, _ = tiny_mnist(tmp_path / "mnist")
    with pytest.raises(DataError) as e:
        load_dataset(entry_for(folder, train_size=60_000), folder, download=False)
    one_line(e, "30 train / 10 test", "60,000 / 10", "train_size")


@pytest.mark.parametrize(
    "case,needles",
    [
        ("images", [TRAIN_IMAGES, "27x28", "expected 28x28 for MNIST"]),
        ("labels", [TRAIN_LABELS, "label 9", "0..2"]),
    ],
)
def test_files_that_do_not_fit_the_entry(tmp_path, case, needles):
    if case == "images":
        folder, _ = tiny_mnist(tmp_path / "mnist", shape=(27, 28))
        entry = get_dataset("mnist")
    else:
        folder, _ = tiny_mnist(tmp_path / "mnist")
        entry = dataclasses.replace(get_dataset("mnist"), class_names=("a", "b", "c"))
    with pytest.raises(DataError) as e:
        load_dataset(entry, folder, download=False, verify=False)
    one_line(e, *needles)


def test_fashion_files_are_not_mnist(fashion_dir):
    """The two datasets share file names: Fashion-MNIST's files are refused as MNIST."""
    with pytest.raises(DataError) as e:
        load_dataset("mnist", fashion_dir, download=False)
    one_line(e, "expected 9,912,422", "not the official MNIST one")


def test_protocol_and_source_the_entry_does_not_have(tmp_path):
    folder, _ = tiny_mnist(tmp_path / "mnist")
    entry = entry_for(folder, protocols=("official",))
    with pytest.raises(InputError) as e:
        load_splits("original", dataset=entry, data_dir="/nonexistent", download=False)
    one_line(e, "'tiny_mnist'", "'original'", "'official'")
    with pytest.raises(InputError) as e:
        load_dataset(entry, folder, download=False, source="tfds")
    one_line(e, "tensorflow-datasets", "'idx'")


# --------------------------------------------------------------------------- folders


def test_data_folder_per_dataset(tmp_path, monkeypatch):
    for var in ("JNN_DATA_DIR", "JNN_MNIST_DIR", "JNN_FASHION_MNIST_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_data_dir("mnist") == tmp_path / "cache" / "jnn" / "mnist"
    assert default_data_dir("fashion_mnist") == tmp_path / "cache" / "jnn" / "fashion-mnist"
    monkeypatch.setenv("JNN_DATA_DIR", str(tmp_path / "fashion"))  # Fashion-MNIST's only
    assert default_data_dir("fashion_mnist") == tmp_path / "fashion"
    assert default_data_dir("mnist") == tmp_path / "cache" / "jnn" / "mnist"
    monkeypatch.setenv("JNN_MNIST_DIR", str(tmp_path / "digits"))
    monkeypatch.setenv("JNN_FASHION_MNIST_DIR", str(tmp_path / "clothes"))  # wins over the old
    assert default_data_dir("mnist") == tmp_path / "digits"
    assert default_data_dir("fashion_mnist") == tmp_path / "clothes"
    assert get_dataset("mnist").env_var == "JNN_MNIST_DIR"


def test_default_folder_is_used_and_named(tmp_path, monkeypatch):
    monkeypatch.setenv("JNN_MNIST_DIR", str(tmp_path / "digits"))
    with pytest.raises(DataError) as e:
        load_dataset("mnist", download=False)
    one_line(e, TRAIN_IMAGES, "missing", str(tmp_path / "digits"), "JNN_MNIST_DIR", "MNIST")
    folder, arrays = tiny_mnist(tmp_path / "digits")
    assert_equal(load_dataset("mnist", download=False, verify=False), arrays)


# --------------------------------------------------------------------------- download


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def server(tmp_path):
    """A local HTTP server on 127.0.0.1 serving tmp_path/www; yields (root folder, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def test_download_through_an_entry_into_its_cache(tmp_path, server, monkeypatch):
    root, url = server
    _, arrays = tiny_mnist(root / "tiny")
    entry = register_dataset(entry_for(root / "tiny", mirrors=(url + "missing/", url + "tiny/")))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("JNN_TINY_MNIST_DIR", raising=False)
    assert_equal(load_dataset("tiny_mnist"), arrays)
    cache = tmp_path / "cache" / "jnn" / "tiny-mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(entry.files)  # no temp files left
    for path in cache.iterdir():  # readable by the group, not 0600 as mkstemp made it
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert_equal(load_dataset("tiny_mnist", download=False), arrays)


def test_mnist_download_refuses_files_that_are_not_the_official_ones(tmp_path, server):
    root, url = server
    tiny_mnist(root / "fake")  # a mirror serving generated files under the official names
    data.DATASETS["mnist"] = dataclasses.replace(data.MNIST, mirrors=(url + "fake/",))
    folder = tmp_path / "digits"
    with pytest.raises(DataError) as e:
        load_dataset("mnist", folder)
    one_line(e, "could not download", TRAIN_IMAGES, "9,912,422", str(folder), "JNN_MNIST_DIR")
    assert not folder.exists() or list(folder.iterdir()) == []  # nothing kept


def test_missing_files_and_no_mirrors(tmp_path):
    folder, _ = tiny_mnist(tmp_path / "tiny")
    entry = entry_for(folder, mirrors=())
    (folder / TEST_IMAGES).unlink()
    with pytest.raises(DataError) as e:
        load_dataset(entry, folder)  # download=True, but nowhere to download from
    msg = one_line(e, TEST_IMAGES, "no mirrors", str(folder), "JNN_TINY_MNIST_DIR")
    assert "official source" not in msg


def test_mirrors_module_alias_redirects_fashion_mnist_only(monkeypatch):
    """conftest patches data.MIRRORS; that still reaches Fashion-MNIST's downloads. With
    MIRRORS left alone, a replaced registry entry's mirrors are used instead."""
    monkeypatch.setattr(data, "MIRRORS", ("http://example.invalid/",))
    assert data._mirrors(get_dataset("fashion_mnist")) == ("http://example.invalid/",)
    assert data._mirrors(get_dataset("mnist")) == (CLOSED,)
    monkeypatch.setattr(data, "MIRRORS", data.FASHION_MNIST.mirrors)
    assert data._mirrors(get_dataset("fashion_mnist")) == (CLOSED,)
