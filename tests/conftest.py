"""Shared fixtures: the real Fashion-MNIST files (never downloaded by the tests)."""

import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


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
