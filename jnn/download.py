"""The one downloader of jnn: Fashion-MNIST files (``jnn.data``) and VGG16 weights
(``jnn.vgg_weights``) both come through :func:`fetch`.

A file is streamed from the first URL that serves the expected bytes into a temporary file
beside its destination, its size and digest checked while it arrives, and only then renamed into
place: an interrupted or corrupt download never appears under the real name, and a mirror that
serves wrong bytes is skipped for the next. A tqdm bar shows progress on a terminal (``progress``
None: only when stderr is a TTY). Errors are :class:`DownloadError`, which lists every URL tried
and why it failed; the callers turn it into their own one-line errors (what to do differs).

Why not pooch: its ``retrieve`` does download + hash + cache well, but takes one URL per file
(jnn.data tries several mirrors), has no size ceiling or whole-file deadline, and would be one
more dependency for ~60 lines that the tests already exercise against 127.0.0.1 servers.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from jnn.errors import InputError

TIMEOUT_S = 30.0  # per socket operation (connect, each read)
DEADLINE_S = 600.0  # a whole file from one URL
CHUNK = 1 << 16


class DownloadError(InputError):
    """No URL gave the expected file. ``failures``: (url, reason) per URL tried; ``corrupt``:
    every URL answered, but with bytes that failed the size or digest check."""

    def __init__(self, message: str, failures: Sequence[tuple[str, str]], corrupt: bool):
        super().__init__(message)
        self.failures, self.corrupt = list(failures), corrupt


class _BadBytes(Exception):
    """The bytes received are not the expected file (size or digest)."""


def _stream(url: str, out, *, size: int | None, algo: str, timeout: float, bar) -> str:
    """Copy ``url`` into the open file ``out``; returns the hex digest. Raises _BadBytes when
    more than ``size`` bytes arrive or the whole file takes longer than DEADLINE_S."""
    digest, received = hashlib.new(algo), 0
    deadline = time.monotonic() + DEADLINE_S
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
        if bar.total is None:
            bar.total = int(response.headers.get("Content-Length") or 0) or None
        while block := response.read(CHUNK):
            received += len(block)
            if size is not None and received > size:
                raise _BadBytes(f"more than the expected {size:,} bytes")
            if time.monotonic() > deadline:
                raise _BadBytes(f"took longer than {DEADLINE_S:.0f} s")
            digest.update(block)
            out.write(block)
            bar.update(len(block))
    if size is not None and received != size:
        raise _BadBytes(f"got {received:,} bytes, expected {size:,}")
    return digest.hexdigest()


def fetch(
    urls: Sequence[str],
    dst: str | os.PathLike,
    *,
    expected: tuple[str, str] | None = None,
    size: int | None = None,
    timeout: float = TIMEOUT_S,
    progress: bool | None = None,
) -> Path:
    """Download the first of ``urls`` that gives the expected bytes to ``dst`` (atomically).

    ``expected=(algorithm, hex)``: the file's digest must start with ``hex`` (a full digest or
    a published prefix); ``size``: its exact byte count. Returns the absolute ``dst``. Raises
    :class:`DownloadError` naming every URL and its failure (network errors, HTTP errors and
    wrong bytes alike); nothing is left behind but what was already there.
    """
    from tqdm.auto import tqdm

    dst = Path(dst).absolute()
    algo, want = expected or ("sha256", "")
    failures, corrupt = [], 0
    for url in urls:
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".part", dir=dst.parent)
        tmp = Path(tmp_name)
        try:
            with (
                os.fdopen(fd, "wb") as out,
                tqdm(total=size, unit="B", unit_scale=True, desc=f"Downloading {dst.name}",
                     leave=False, disable=None if progress is None else not progress) as bar,
            ):  # fmt: skip
                got = _stream(url, out, size=size, algo=algo, timeout=timeout, bar=bar)
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
    detail = "; ".join(f"{u}: {why}" for u, why in failures) or "no URLs"
    raise DownloadError(
        f"could not download {dst.name} ({detail})", failures, bool(urls) and corrupt == len(urls)
    )
