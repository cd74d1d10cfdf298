"""A loopback HTTP file server with Range support and scripted faults, for testing downloads offline.

    with FileServer({"w.pth": data}) as server:
        server.faults.append(Fault("status", status=503))      # the next request gets a 503, later ones the file
        download(server.url("w.pth"), dest)
        server.requests                                        # what was asked and answered, in order

Faults are consumed one per request, in order:
- ``status``: answer with that HTTP status and a short body.
- ``cut``: send the headers of the full answer, then only the bytes before absolute offset ``at``, then close.
- ``hold``: like ``cut``, but after those bytes wait for ``release`` (an Event) before closing, so a test can
  interrupt the client mid-download while the connection is still open; ``held`` is set once they are sent.
- ``ignore_range``: answer 200 with the whole file even when a Range was asked for.
- ``html``: answer 200 with a small text/html page (what Google Drive sends instead of a file over quota).
Requests with ``Range: bytes=START-[END]`` get 206 + Content-Range, or 416 + ``bytes */SIZE`` past the end.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

logger = logging.getLogger(__name__)

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
HOLD_TIMEOUT_S = 60.0  # a forgotten release must not hang the suite


@dataclass(frozen=True)
class Fault:
    kind: str  # "status" | "cut" | "hold" | "ignore_range" | "html"
    status: int = 503
    at: int = 0


@dataclass(frozen=True)
class Served:
    """One request as the server saw and answered it."""

    path: str
    range: str | None
    status: int
    body_bytes: int


class FileServer:
    """ThreadingHTTPServer on 127.0.0.1 (an OS-chosen port) serving ``files`` by name from memory."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = dict(files)
        self.faults: deque[Fault] = deque()
        self.requests: list[Served] = []
        self.held = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="file-server", daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    def next_fault(self) -> Fault | None:
        with self._lock:
            return self.faults.popleft() if self.faults else None

    def record(self, served: Served) -> None:
        with self._lock:
            self.requests.append(served)

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)


def _handler_for(server: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            logger.debug("file server: " + format, *args)

        def do_GET(self) -> None:
            name = self.path.lstrip("/").split("?", 1)[0]
            asked = self.headers.get("Range")
            fault = server.next_fault()
            if fault is not None and fault.kind == "status":
                self._reply(fault.status, b"scripted failure\n", asked)
                return
            if fault is not None and fault.kind == "html":
                self._reply(200, b"<html><body>Quota exceeded</body></html>\n", asked, content_type="text/html")
                return
            data = server.files.get(name)
            if data is None:
                self._reply(404, b"no such file\n", asked)
                return
            size = len(data)
            start, status = 0, 200
            match = _RANGE.match(asked or "")
            if match and not (fault is not None and fault.kind == "ignore_range"):
                start = int(match.group(1))
                if start >= size:
                    self._reply(416, b"", asked, extra={"Content-Range": f"bytes */{size}"})
                    return
                status = 206
            end = size  # this server only answers open-ended ranges, which is all the client asks for
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(end - start))
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
            self.end_headers()
            stop = end
            if fault is not None and fault.kind in ("cut", "hold"):
                stop = max(start, min(end, fault.at))
            body = data[start:stop]
            # Recorded before the client can see the answer, so a test reading `requests` afterwards never races.
            server.record(Served(name, asked, status, len(body)))
            with contextlib.suppress(OSError):
                self.wfile.write(body)
                self.wfile.flush()
            if fault is not None and fault.kind == "hold":
                server.held.set()
                server.release.wait(HOLD_TIMEOUT_S)
            if stop < end:
                self.close_connection = True  # the client sees fewer bytes than Content-Length promised

        def _reply(
            self,
            status: int,
            body: bytes,
            asked: str | None,
            extra: dict[str, str] | None = None,
            content_type: str = "text/plain",
        ) -> None:
            server.record(Served(self.path.lstrip("/"), asked, status, len(body)))
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

    return Handler
