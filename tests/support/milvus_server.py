"""Start, kill -9 and restart a real Milvus Lite gRPC server (``milvus-lite server``) for tests and benchmarks.

    with MilvusLiteServer(tmp_path / "milvus") as server:
        env = {"REID_GALLERY_BACKEND": "milvus", "REID_MILVUS_URI": server.uri}
        server.kill()       # SIGKILL: no shutdown, as in a crash
        server.start()      # same port, same data folder
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import grpc

from tests.support.live_server import free_port

logger = logging.getLogger(__name__)


class MilvusServerError(RuntimeError):
    """The server exited or did not answer in time; the message carries the end of its log."""


class MilvusLiteServer:
    """One ``milvus-lite server`` subprocess on a loopback port, its output in ``data_dir/../<name>.log``."""

    def __init__(self, data_dir: Path, port: int | None = None, ready_timeout_s: float = 60.0) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.ready_timeout_s = ready_timeout_s
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-milvus.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> MilvusLiteServer:
        """Launch the server and wait until its gRPC port accepts a channel (a deadline, not a sleep)."""
        if self.running:
            raise RuntimeError("Milvus Lite server already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        binary = Path(sys.executable).parent / "milvus-lite"
        command = [str(binary), "server", "--data-dir", str(self.data_dir), "--host", "127.0.0.1"]
        command += ["--port", str(self.port)]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ}
            )
        self.wait_ready()
        return self

    def wait_ready(self) -> float:
        start = time.monotonic()
        while time.monotonic() - start < self.ready_timeout_s:
            if not self.running:
                raise MilvusServerError(f"milvus-lite server exited before ready:\n{self.tail()}")
            with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
                try:
                    grpc.channel_ready_future(channel).result(timeout=1.0)
                    return time.monotonic() - start
                except grpc.FutureTimeoutError:
                    continue
        raise MilvusServerError(f"milvus-lite server not ready after {self.ready_timeout_s:.0f} s:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def kill(self) -> None:
        """kill -9: nothing is flushed or closed, as in a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> MilvusLiteServer:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.kill()
