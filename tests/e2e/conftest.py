"""Fixtures for end-to-end tests: a real uvicorn process on a free port, configured through REID_* env vars."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.live_server import LiveServer, server_env

ServerFactory = Callable[..., LiveServer]


@pytest.fixture()
def make_server(tiny_checkpoint: Path, tmp_path: Path) -> Iterator[ServerFactory]:
    """make_server(**REID_env_overrides) -> a started LiveServer (stopped at test end; log printed on failure)."""
    servers: list[LiveServer] = []

    def factory(data_dir: Path | None = None, **extra: str) -> LiveServer:
        env = server_env(tiny_checkpoint, data_dir or tmp_path / "data", **extra)
        server = LiveServer(env, log_path=tmp_path / f"server{len(servers)}.log")
        servers.append(server)
        return server.start()

    yield factory
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def shared_server(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server for the read-mostly tests of a module."""
    tmp = tmp_path_factory.mktemp("e2e-shared")
    server = LiveServer(server_env(tiny_checkpoint, tmp / "data"), log_path=tmp / "server.log")
    with server:
        yield server
