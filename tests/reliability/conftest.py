"""Fixtures for reliability tests: every test drives a real uvicorn process (tests/support/live_server.py).

Long variants (the 30 s overload soak, more kill points) run only with RUN_SLOW_TESTS=1.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.live_server import LiveServer, server_env

logger = logging.getLogger(__name__)

ServerFactory = Callable[..., LiveServer]

RUN_SLOW = os.environ.get("RUN_SLOW_TESTS", "") == "1"


@pytest.fixture()
def make_server(tiny_checkpoint: Path, tmp_path: Path) -> Iterator[ServerFactory]:
    """make_server(data_dir=None, start=True, app=..., **env_overrides) -> LiveServer (stopped at test end)."""
    servers: list[LiveServer] = []

    def factory(
        data_dir: Path | None = None, start: bool = True, app: str = "service.app:app", **extra: str
    ) -> LiveServer:
        env = server_env(tiny_checkpoint, data_dir or tmp_path / "data", **extra)
        server = LiveServer(env, log_path=tmp_path / f"server{len(servers)}.log", app=app)
        servers.append(server)
        return server.start() if start else server

    yield factory
    for server in servers:
        server.stop()


def report(name: str, **figures: object) -> None:
    """Print one line of figures (visible with -s or in the captured output of a failing test)."""
    print(f"[reliability] {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))
