"""Resumable HTTP download with timeouts, retries, a progress bar and a sha256 check; the file appears atomically.

    result = download("https://example.org/w.pth", Path("cache/w.pth"), sha256="c0ff...", retries=4)
    result.path, result.sha256, result.resumed_bytes

httpx does the HTTP (timeouts, redirects, keep-alive) and tqdm the progress bar. Neither resumes, and pooch, the
other candidate (already installed), downloads into a temporary file that it deletes on any failure, so a broken
connection there always restarts from byte 0. Resume is therefore done here, on top of httpx: the bytes go to
``<dest>.part``; a retry (or the next run, after Ctrl-C or a lost connection) sends ``Range: bytes=N-`` and appends
the ``206 Partial Content`` answer; a server that ignores ranges (``200``) makes it start over. Only a complete
file whose sha256 matches is renamed to ``dest`` (os.replace: the name never points at a partial file).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import httpx
from tqdm import tqdm

from model.checkpoint import file_sha256

logger = logging.getLogger(__name__)

# Answers worth trying again: the server (or a proxy) is busy or broken for now.
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
USER_AGENT = "soccernet-reid (reid-fetch)"
_CONTENT_RANGE = re.compile(r"^bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)$")


class DownloadError(RuntimeError):
    """The file could not be downloaded; the message says from where and why."""

    def __init__(self, url: str, message: str) -> None:
        super().__init__(message)
        self.url = url


class Unreachable(DownloadError):
    """No connection could be made at all (offline, DNS failure, connection refused) on any attempt."""


class HashMismatch(DownloadError):
    """The complete file's sha256 is not the pinned one; the file was deleted."""


class _Retry(Exception):
    """One attempt failed in a way that another attempt may fix."""


@dataclass(frozen=True)
class Downloaded:
    """A completed, hash-checked download."""

    path: Path
    url: str
    sha256: str
    size: int
    attempts: int
    resumed_bytes: int  # bytes already on disk (from an earlier run or attempt) that were not downloaded again


ChunkHook = Callable[[int, int | None], None]


def part_path(dest: Path) -> Path:
    """Where the bytes of an unfinished download of ``dest`` are kept between attempts and runs."""
    return dest.with_name(dest.name + ".part")


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """'bytes 100-199/200' -> (100, 200); 'bytes */200' -> (None, 200); unknown parts are None."""
    match = _CONTENT_RANGE.match((value or "").strip())
    if not match:
        return None, None
    start = int(match.group(1)) if match.group(1) is not None else None
    total = int(match.group(3)) if match.group(3) != "*" else None
    return start, total


def _attempt(client: httpx.Client, url: str, part: Path, progress: bool, on_chunk: ChunkHook | None) -> int:
    """One GET of ``url`` into ``part``, resuming from its current size; returns the bytes reused from before."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with client.stream("GET", url, headers=headers) as response:
        status = response.status_code
        if status == 416 and offset:
            _, total = _parse_content_range(response.headers.get("content-range"))
            if total == offset:  # an earlier attempt got every byte; only the rename was missing
                return offset
            part.unlink()
            raise _Retry(f"the server refused to resume at byte {offset}; starting over")
        if status in RETRYABLE_STATUS:
            raise _Retry(f"HTTP {status} {response.reason_phrase}")
        if status >= 400:
            raise DownloadError(url, f"{url}: HTTP {status} {response.reason_phrase}")
        if response.headers.get("content-type", "").startswith("text/html"):
            # Google Drive answers with a web page (quota exceeded, sign-in) instead of the file.
            raise DownloadError(url, f"{url} answered with a web page, not the file (download quota or sign-in?)")
        if status == 206:
            start, total = _parse_content_range(response.headers.get("content-range"))
            if start != offset:
                part.unlink()
                raise _Retry(f"asked for bytes from {offset}, the server sent them from {start}; starting over")
            mode = "ab"
        else:
            if offset:
                logger.info("%s ignores range requests: downloading %s again from the start", url, part.name)
            offset, mode = 0, "wb"
            length = response.headers.get("content-length")
            total = int(length) if length and length.isdigit() else None
        received = offset
        with (
            part.open(mode) as handle,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=part.name.removesuffix(".part"),
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            try:
                # No chunk_size: a re-chunking buffer would lose its unwritten bytes when the connection drops.
                for chunk in response.iter_bytes():
                    handle.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
                    if on_chunk is not None:
                        on_chunk(received, total)
            except httpx.RemoteProtocolError as exc:  # h11: the body ended before Content-Length
                raise _Retry(f"the connection ended after {received} of {total} bytes") from exc
            handle.flush()
            os.fsync(handle.fileno())
    if total is not None and received != total:
        raise _Retry(f"the connection ended after {received} of {total} bytes")
    return offset


def download(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    retries: int = 4,
    timeout_s: float = 30.0,
    backoff_s: float = 1.0,
    progress: bool = True,
    on_chunk: ChunkHook | None = None,
    client: httpx.Client | None = None,
) -> Downloaded:
    """Download ``url`` to ``dest`` (resuming ``dest``.part if present); check ``sha256`` when given.

    Up to ``retries`` further attempts follow a lost connection, a timeout or a 408/429/5xx answer, waiting
    ``backoff_s`` * 2^k between them (capped at 30 s); each resumes where the last one stopped. ``timeout_s``
    bounds connecting and every read. ``on_chunk(bytes_on_disk, total_or_None)`` runs after each chunk is written.
    Raises Unreachable when no attempt could connect, HashMismatch (after deleting the file) on a wrong hash,
    DownloadError otherwise; a partial file stays in ``dest``.part for the next run to resume.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    own_client = client is None
    http = client or httpx.Client(
        follow_redirects=True,
        timeout=httpx.Timeout(timeout_s),
        # identity: byte ranges must count bytes of the file itself, not of a compressed transfer.
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
    )
    failures: list[Exception] = []
    resumed = 0
    try:
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(min(backoff_s * 2 ** (attempt - 1), 30.0))
            try:
                resumed = _attempt(http, url, part, progress, on_chunk)
                break
            except (_Retry, httpx.TransportError) as exc:
                failures.append(exc)
                logger.warning("download of %s, attempt %d of %d: %s", url, attempt + 1, retries + 1, _reason(exc))
        else:
            last = _reason(failures[-1])
            if all(isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout) for exc in failures):
                raise Unreachable(url, f"cannot connect to {url} ({last})")
            kept = part.stat().st_size if part.exists() else 0
            raise DownloadError(
                url, f"{url}: gave up after {len(failures)} attempts ({last}); {kept} bytes kept for the next run"
            )
    finally:
        if own_client:
            http.close()
    digest = file_sha256(part)
    if sha256 is not None and digest != sha256.lower():
        part.unlink()
        raise HashMismatch(url, f"{url}: sha256 {digest} is not the pinned {sha256.lower()}; the file was deleted")
    size = part.stat().st_size
    os.replace(part, dest)
    logger.info("downloaded %s (%d bytes, %d reused from an earlier attempt) to %s", url, size, resumed, dest)
    return Downloaded(dest, url, digest, size, attempts=len(failures) + 1, resumed_bytes=resumed)


def download_first(urls: Iterable[str], dest: Path, **kwargs: object) -> Downloaded:
    """``download`` from the first of ``urls`` that works; when none does, raises Unreachable if no source could be
    reached at all, else the last real failure. A wrong hash is final (mirrors hold the same file).
    """
    errors: list[DownloadError] = []
    for url in urls:
        try:
            return download(url, dest, **kwargs)  # type: ignore[arg-type]
        except HashMismatch:
            raise
        except DownloadError as exc:
            logger.warning("%s; trying the next source", exc)
            errors.append(exc)
    if not errors:
        raise ValueError("no URL to download from")
    # "Offline" only when no source could be reached; otherwise the most telling error is a real answer.
    answered = [exc for exc in errors if not isinstance(exc, Unreachable)]
    raise answered[-1] if answered else errors[-1]


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, _Retry) else f"{type(exc).__name__}: {text}"
