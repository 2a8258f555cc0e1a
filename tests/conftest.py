"""Shared fixtures: the real Fashion-MNIST files (never downloaded by the tests)."""

import functools
import http.server
import os
import pathlib
import threading

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_internet(monkeypatch):
    """Tests never reach the real mirrors: a download goes to a closed port on 127.0.0.1 (refused
    at once, like offline) unless a test serves files itself (the ``mirror`` fixture)."""
    import dataclasses

    from jnn import data

    monkeypatch.setattr(data, "MIRRORS", ("http://127.0.0.1:9/",))
    for name, entry in list(data.DATASETS.items()):
        closed = dataclasses.replace(entry, mirrors=("http://127.0.0.1:9/",))
        monkeypatch.setitem(data.DATASETS, name, closed)


@pytest.fixture(scope="session")
def fashion_dir() -> pathlib.Path:
    """Folder with the four official .gz files: $JNN_DATA_DIR, else <repo>/../shared/data/..."""
    from jnn.data import FILES

    env = os.environ.get("JNN_DATA_DIR")
    folder = pathlib.Path(env) if env else REPO.parent / "shared" / "data" / "fashion-mnist"
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        pytest.skip(f"Fashion-MNIST files {missing} not in {folder}; set JNN_DATA_DIR")
    return folder


@pytest.fixture(scope="session")
def fashion(fashion_dir):
    """The real dataset as a jnn.data.FashionMNIST (uint8 images, int32 labels), loaded once."""
    from jnn.data import load_fashion_mnist

    return load_fashion_mnist(fashion_dir, download=False)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def mirror(tmp_path, fashion_dir):
    """A local HTTP server on 127.0.0.1: /good/ serves the real files, /bad/ corrupted ones."""
    from jnn.data import FILES, TEST_LABELS

    root = tmp_path / "www"
    (root / "good").mkdir(parents=True)
    (root / "bad").mkdir()
    (root / "empty").mkdir()
    for name in FILES:
        (root / "good" / name).symlink_to(fashion_dir / name)
    labels = (fashion_dir / TEST_LABELS).read_bytes()
    flipped = labels[:100] + bytes([labels[100] ^ 0xFF]) + labels[101:]
    (root / "bad" / TEST_LABELS).write_bytes(flipped)
    (root / "bad" / "short" / TEST_LABELS).parent.mkdir()
    (root / "bad" / "short" / TEST_LABELS).write_bytes(labels[:-1])
    (root / "bad" / "long" / TEST_LABELS).parent.mkdir()
    (root / "bad" / "long" / TEST_LABELS).write_bytes(labels + b"\x00")
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()
