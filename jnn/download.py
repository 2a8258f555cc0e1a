"""The one downloader of jnn: Fashion-MNIST files (``jnn.data``) and VGG16 weights
(``jnn.vgg_weights``) both come through :func:`fetch`.

A file is streamed from the first URL that serves the expected bytes into a temporary file
beside its destination, its size and digest checked while it arrives, and only then renamed into
place: an interrupted or corrupt download never appears under the real name, and a mirror that
serves wrong bytes is skipped for the next. A tqdm bar shows progress on a terminal (``progress``
None: only when stderr is a TTY). Errors are :class:`DownloadError`, which lists every URL tried
and why it failed; the callers turn it into their own one-line errors (what to do differs).

Time is bounded whatever the byte rate: each URL gets ``deadline`` seconds from the start of its
request, after which a watchdog thread shuts its connection down (the TLS handshake, the headers
or the body: a mirror that drip-feeds one byte at a time is cut like a silent one, where a
per-read socket timeout alone never fires). So :func:`fetch` returns or raises within about
``len(urls) * (deadline + timeout)`` seconds (``+ timeout``: a TCP connect in progress at the
deadline is not cut, it times out by itself), plus the time of DNS lookups, which no socket
timeout covers.

Why not pooch: its ``retrieve`` does download + hash + cache well, but takes one URL per file
(jnn.data tries several mirrors), has no size ceiling or whole-file deadline, and would be one
more dependency for ~100 lines that the tests already exercise against 127.0.0.1 servers.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import math
import os
import socket
import tempfile
import threading
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from jnn.errors import InputError

TIMEOUT_S = 30.0  # per socket operation (connect, each read)
DEADLINE_S = 600.0  # a whole file from one URL, whatever its byte rate (see the module doc)
CHUNK = 1 << 16  # at most this many bytes per read; a read returns what one recv() brought


class DownloadError(InputError):
    """No URL gave the expected file. ``failures``: (url, reason) per URL tried; ``corrupt``:
    every URL answered, but with bytes that failed the size or digest check."""

    def __init__(self, message: str, failures: Sequence[tuple[str, str]], corrupt: bool):
        super().__init__(message)
        self.failures, self.corrupt = list(failures), corrupt


class _BadBytes(Exception):
    """The bytes received are not the expected file (size or digest)."""


class _TooSlow(OSError):
    """The URL did not deliver the whole file within its deadline (a network failure, not bad
    bytes: another mirror, or a later try, may well be fast enough)."""


class _Watchdog:
    """Shuts down every connection of one download once ``seconds`` have passed.

    Each socket is registered right after it connects (:meth:`connection_class`); the watchdog
    keeps a duplicate of it, so shutting that down cuts the connection whatever wraps the
    original (TLS) and whatever phase it is in: a read blocked in the handshake, the headers or
    the body returns at once. ``expired`` tells the reader why its connection ended.
    """

    def __init__(self, seconds: float):
        self.expired = False
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        with self._lock:
            for sock in self._socks:
                sock.close()
            self._socks.clear()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._socks:
                _cut(sock)

    def track(self, sock: socket.socket) -> None:
        """Register a freshly connected socket (cut at once when the deadline already passed)."""
        dup = sock.dup()
        with self._lock:
            self._socks.append(dup)
            if self.expired:
                _cut(dup)

    def connection_class(self, base: type) -> type:
        """``base`` (an ``http.client`` connection class) registering each socket it opens."""
        watchdog = self

        class Watched(base):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                create = self._create_connection

                def create_and_track(*args, **kwargs):
                    sock = create(*args, **kwargs)
                    watchdog.track(sock)
                    return sock

                self._create_connection = create_and_track

        return Watched


def _cut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed by its owner or the peer
        pass


def _opener(watchdog: _Watchdog) -> urllib.request.OpenerDirector:
    """urllib's default opener (proxies, redirects, file://), its HTTP(S) connections watched."""

    def watched(handler: type) -> urllib.request.BaseHandler:
        class Watched(handler):
            def do_open(self, http_class, req, **kwargs):
                return super().do_open(watchdog.connection_class(http_class), req, **kwargs)

        return Watched()

    return urllib.request.build_opener(
        watched(urllib.request.HTTPHandler), watched(urllib.request.HTTPSHandler)
    )


def _stream(
    url: str, out, *, size: int | None, algo: str, timeout: float, deadline: float, bar
) -> str:
    """Copy ``url`` into the open file ``out``; returns the hex digest. Raises _BadBytes when
    more than ``size`` bytes arrive, _TooSlow when the whole file takes longer than ``deadline``
    seconds (checked after every read, and enforced by the watchdog during a blocked one)."""
    digest, received, watchdog = hashlib.new(algo), 0, _Watchdog(deadline)
    try:
        with watchdog, _opener(watchdog).open(url, timeout=timeout) as r:
            if bar.total is None:
                bar.total = int(r.headers.get("Content-Length") or 0) or None
            while not watchdog.expired and (block := r.read1(CHUNK)):
                received += len(block)
                if size is not None and received > size:
                    raise _BadBytes(f"more than the expected {size:,} bytes")
                digest.update(block)
                out.write(block)
                bar.update(len(block))
    except (OSError, ValueError, http.client.HTTPException):
        if not watchdog.expired:
            raise
    if watchdog.expired:
        raise _TooSlow(
            f"took longer than its {deadline:g} s deadline ({received:,} bytes arrived); "
            "try again later or on a faster network"
        )
    if size is not None and received != size:
        raise _BadBytes(f"got {received:,} bytes, expected {size:,}")
    return digest.hexdigest()


def _make_folders(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; the ones created, outermost first (a failed
    download removes them again, so it leaves nothing behind)."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()][::-1]
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def fetch(
    urls: Sequence[str],
    dst: str | os.PathLike,
    *,
    expected: tuple[str, str] | None = None,
    size: int | None = None,
    timeout: float = TIMEOUT_S,
    deadline: float = DEADLINE_S,
    progress: bool | None = None,
) -> Path:
    """Download the first of ``urls`` that gives the expected bytes to ``dst`` (atomically).

    ``expected=(algorithm, hex)``: the file's digest must start with ``hex`` (a full digest or
    a published prefix); ``size``: its exact byte count. ``timeout``: seconds per socket
    operation (connect, each read); ``deadline``: seconds for one URL's whole file, whatever
    its byte rate. The bound: returns or raises within about ``len(urls) * (deadline +
    timeout)`` seconds plus DNS lookups (module doc). Returns the absolute ``dst``. Raises
    :class:`DownloadError` naming every URL and its failure (network errors, HTTP errors, a
    missed deadline and wrong bytes alike); nothing is left behind but what was already there.
    """
    from tqdm.auto import tqdm

    for name, value in (("timeout", timeout), ("deadline", deadline)):
        if isinstance(value, bool) or not (isinstance(value, int | float) and 0 < value < math.inf):
            raise InputError(f"download {name} must be finite seconds > 0, got {value!r}")
    dst = Path(dst).absolute()
    algo, want = expected or ("sha256", "")
    failures, corrupt = [], 0
    created = _make_folders(dst.parent) if urls else []
    for url in urls:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".part", dir=dst.parent)
        tmp = Path(tmp_name)
        try:
            with (
                os.fdopen(fd, "wb") as out,
                tqdm(total=size, unit="B", unit_scale=True, desc=f"Downloading {dst.name}",
                     leave=False, disable=None if progress is None else not progress) as bar,
            ):  # fmt: skip
                got = _stream(
                    url, out, size=size, algo=algo, timeout=timeout, deadline=deadline, bar=bar
                )
            if not got.startswith(want):
                raise _BadBytes(f"fails its hash check ({algo} {got[:12]}..., expected {want})")
            os.replace(tmp, dst)
            return dst
        except _BadBytes as e:
            corrupt += 1
            failures.append((url, str(e)))
        except (OSError, ValueError, http.client.HTTPException) as e:  # URLError is an OSError
            failures.append((url, str(getattr(e, "reason", None) or e)))
        finally:
            tmp.unlink(missing_ok=True)
    for folder in reversed(created):  # the folders made for dst, if still empty
        with contextlib.suppress(OSError):
            folder.rmdir()
    detail = "; ".join(f"{u}: {why}" for u, why in failures) or "no URLs"
    raise DownloadError(
        f"could not download {dst.name} ({detail})", failures, bool(urls) and corrupt == len(urls)
    )
