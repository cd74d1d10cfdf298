"""Start, stop, kill -9 and restart a real ``uvicorn service.app:app`` process for end-to-end tests.

    with LiveServer(env={"REID_CHECKPOINT": str(ckpt), "REID_DATA_DIR": str(tmp)}) as server:
        httpx.get(f"{server.url}/readyz")
        server.kill()        # SIGKILL, no shutdown hooks
        server.start()       # same port, same data dir

Settings reach the server through REID_* environment variables only, exactly as in production.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import httpx

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def server_env(checkpoint: Path, data_dir: Path, **extra: str) -> dict[str, str]:
    """REID_* environment for a small CPU test server (one torch thread, batches of 8); extra entries win."""
    env = {
        "REID_CHECKPOINT": str(checkpoint),
        "REID_DATA_DIR": str(data_dir),
        "REID_DEVICE": "cpu",
        "REID_MAX_BATCH_SIZE": "8",
        "REID_MAX_DELAY_MS": "5",
        "REID_WARMUP_BATCHES": "1",
        "REID_TORCH_THREADS": "1",
        "OMP_NUM_THREADS": "1",
    }
    env.update(extra)
    return env


class ServerStartError(RuntimeError):
    """The server exited or did not turn ready in time; the message carries the end of its log."""


class LiveServer:
    """One uvicorn subprocess serving service.app:app, its output captured in a log file."""

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        log_path: Path | None = None,
        app: str = "service.app:app",
        python: str = sys.executable,
        ready_timeout_s: float = 120.0,
        use_cli: bool = False,
    ) -> None:
        self.env = dict(env)
        self.host = host
        self.port = port or free_port(host)
        self.app = app
        self.python = python
        self.ready_timeout_s = ready_timeout_s
        self.use_cli = use_cli
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="reid-live-server-", suffix=".log")
            os.close(fd)
            log_path = Path(name)
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self, **kwargs: object) -> httpx.Client:
        """An httpx client bound to this server (timeout 60 s unless given)."""
        kwargs.setdefault("timeout", 60.0)
        return httpx.Client(base_url=self.url, **kwargs)  # type: ignore[arg-type]

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def command(self) -> list[str]:
        """The command line: ``python -m uvicorn APP`` or, with ``use_cli``, the installed ``reid-serve`` script
        (the entry point Docker and ``make serve`` run), which serves service.app's factory whatever ``app`` is."""
        address = ["--host", self.host, "--port", str(self.port), "--log-level", "info"]
        if self.use_cli:
            script = Path(self.python).parent / "reid-serve"
            if not script.is_file():
                raise ServerStartError(f"reid-serve is not installed beside {self.python} (pip install -e .)")
            return [str(script), *address]
        return [self.python, "-m", "uvicorn", self.app, *address, "--workers", "1"]

    def start(self, wait: bool = True) -> LiveServer:
        """Launch the process (appending to the log) and, by default, wait until /readyz answers 200."""
        if self.running:
            raise RuntimeError("server already running")
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        command = self.command()
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== start #{self.starts + 1}: {' '.join(command)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.starts += 1
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout_s: float | None = None) -> float:
        """Poll /readyz until 200; returns the seconds waited. Raises ServerStartError on exit or timeout."""
        deadline_s = timeout_s if timeout_s is not None else self.ready_timeout_s
        start = time.monotonic()
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() - start < deadline_s:
                if self.process is None or self.process.poll() is not None:
                    code = None if self.process is None else self.process.returncode
                    raise ServerStartError(f"server exited with code {code} before ready:\n{self.tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.url}/readyz").status_code == 200:
                        return time.monotonic() - start
                time.sleep(0.1)
        raise ServerStartError(f"server not ready after {deadline_s:.0f} s:\n{self.tail()}")

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.logs().splitlines()[-lines:])

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """Graceful stop (SIGTERM: uvicorn runs the lifespan shutdown); SIGKILL if it hangs."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning("server did not stop within %.0f s; killing it", timeout_s)
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        self.process = None
        return code

    def kill(self) -> int | None:
        """kill -9: no shutdown hooks run, as in a crash or an OOM kill."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        code = self.process.returncode
        self.process = None
        return code

    def restart(self, hard: bool = False) -> LiveServer:
        """Stop (or kill when hard) and start again on the same port with the same environment."""
        if hard:
            self.kill()
        else:
            self.stop()
        return self.start()

    def __enter__(self) -> LiveServer:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
