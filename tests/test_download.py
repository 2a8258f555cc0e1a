"""jnn.download.fetch, the one downloader (data files and VGG16 weights), on file:// URLs."""

from __future__ import annotations

import hashlib

import pytest

from jnn import download
from jnn.errors import InputError


@pytest.fixture
def files(tmp_path):
    good, bad = tmp_path / "good.bin", tmp_path / "bad.bin"
    good.write_bytes(b"the expected bytes" * 1000)
    bad.write_bytes(b"something else!!!!" * 1000)
    sha = hashlib.sha256(good.read_bytes()).hexdigest()
    return good.as_uri(), bad.as_uri(), sha, good.stat().st_size


def test_first_url_with_the_right_bytes_wins(files, tmp_path):
    good, bad, sha, size = files
    missing = (tmp_path / "missing.bin").as_uri()
    dst = tmp_path / "out" / "file.bin"
    got = download.fetch([missing, bad, good], dst, expected=("sha256", sha), size=size)
    assert got == dst and hashlib.sha256(dst.read_bytes()).hexdigest() == sha
    assert sorted(p.name for p in dst.parent.iterdir()) == ["file.bin"]  # no .part left


def test_wrong_bytes_everywhere_is_corrupt_and_leaves_nothing(files, tmp_path):
    good, bad, sha, size = files
    dst = tmp_path / "out" / "file.bin"
    with pytest.raises(download.DownloadError) as e:
        download.fetch([bad], dst, expected=("sha256", sha))
    assert e.value.corrupt and "fails its hash check" in str(e.value)
    assert isinstance(e.value, InputError) and list(dst.parent.iterdir()) == []
    with pytest.raises(download.DownloadError, match="more than the expected 10 bytes") as e:
        download.fetch([good], dst, size=10)
    assert e.value.corrupt


def test_unreachable_is_not_corrupt_and_names_every_url(files, tmp_path):
    good, bad, sha, size = files
    urls = [(tmp_path / "a.bin").as_uri(), bad]
    with pytest.raises(download.DownloadError) as e:
        download.fetch(urls, tmp_path / "file.bin", expected=("sha256", sha))
    assert not e.value.corrupt and [u for u, _ in e.value.failures] == urls
    assert all(u in str(e.value) for u in urls)
