"""jnn.download.fetch, the one downloader (data files and VGG16 weights), on file:// URLs and
on 127.0.0.1 servers that misbehave (drip-feed bytes)."""

from __future__ import annotations

import hashlib
import http.server
import threading
import time

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
    assert isinstance(e.value, InputError) and not dst.parent.exists()  # made for it, removed
    with pytest.raises(download.DownloadError, match="more than the expected 10 bytes") as e:
        download.fetch([good], dst, size=10)
    assert e.value.corrupt


def test_a_failed_download_removes_only_the_folders_it_made(files, tmp_path):
    """Second adversarial pass: data.load_fashion_mnist('/missing/sub') left both folders
    behind when the download failed ('nothing is left behind' was the promise)."""
    good, bad, sha, size = files
    kept = tmp_path / "kept"
    kept.mkdir()
    dst = kept / "a" / "b" / "file.bin"
    with pytest.raises(download.DownloadError):
        download.fetch([bad], dst, expected=("sha256", sha))
    assert kept.is_dir() and list(kept.iterdir()) == []


def test_unreachable_is_not_corrupt_and_names_every_url(files, tmp_path):
    good, bad, sha, size = files
    urls = [(tmp_path / "a.bin").as_uri(), bad]
    with pytest.raises(download.DownloadError) as e:
        download.fetch(urls, tmp_path / "file.bin", expected=("sha256", sha))
    assert not e.value.corrupt and [u for u, _ in e.value.failures] == urls
    assert all(u in str(e.value) for u in urls)


# --------------------------------------------------------------------------------------------
# A mirror that drip-feeds bytes: a per-read socket timeout never fires, the deadline must
# --------------------------------------------------------------------------------------------

DRIP_S = 0.2  # one byte this often: ~30 minutes for the 5 KB labels file if never cut off


class _Drip(http.server.BaseHTTPRequestHandler):
    """Drip-feeds one byte every DRIP_S: of the body (``/body``, Content-Length 10,000) or of an
    endless header (``/headers``), until the server's ``stop`` event is set."""

    protocol_version = "HTTP/1.0"

    def do_GET(self):  # noqa: N802 - http.server's name
        try:
            if self.path == "/body":
                self.send_response(200)
                self.send_header("Content-Length", "10000")
                self.end_headers()
                self.wfile.flush()
                self._drip(b"x")
            else:
                self.wfile.write(b"HTTP/1.0 200 OK\r\nX-Slow: ")
                self._drip(b"a")
        except OSError:  # the client hung up (cut off): done
            pass

    def _drip(self, byte: bytes) -> None:
        for _ in range(10_000):
            if self.server.stop.wait(DRIP_S):
                return
            self.wfile.write(byte)
            self.wfile.flush()

    def log_message(self, *args):
        pass


@pytest.fixture
def drip_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Drip)
    server.stop = threading.Event()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.stop.set()  # ends the drips, so a fetch still waiting (before the fix) returns too
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("path", ["/body", "/headers"])
def test_a_drip_feeding_mirror_is_cut_off_at_the_deadline(drip_server, tmp_path, path):
    """Issue 19: the deadline was checked only after a whole 64 KiB read, so a mirror sending a
    byte every 0.2 s held fetch for hours. Now a watchdog cuts the connection at ``deadline``
    (1 s here) in the body as in the headers, and the next URL is tried."""
    dst, outcome = tmp_path / "out" / "file.bin", {}
    good = tmp_path / "good.bin"
    good.write_bytes(b"the expected bytes")
    urls = [drip_server + path, good.as_uri()]

    def run():
        try:
            outcome["path"] = download.fetch(urls, dst, deadline=1.0, timeout=30.0)
            outcome["error"] = download.fetch(urls[:1], tmp_path / "other.bin", deadline=1.0)
        except Exception as e:  # reported below
            outcome["error"] = e

    start = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(60)  # 'it returned at all': the bound is ~2 s, the drip would last 2,000 s
    assert not thread.is_alive(), f"fetch still waiting after {time.monotonic() - start:.0f} s"
    assert outcome["path"] == dst and dst.read_bytes() == b"the expected bytes"
    err = outcome["error"]
    assert isinstance(err, download.DownloadError), repr(err)
    assert "took longer than its 1 s deadline" in str(err) and "\n" not in str(err)
    assert not err.corrupt  # a slow mirror is unavailable, its bytes are not wrong
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.bin", "out"]  # no .part left


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), True, "10"])
def test_deadline_and_timeout_must_be_positive_seconds(tmp_path, bad):
    for name in ("deadline", "timeout"):
        with pytest.raises(InputError, match=f"download {name} must be finite seconds > 0"):
            download.fetch(["file:///nonexistent"], tmp_path / "f.bin", **{name: bad})
