"""Fixtures for end-to-end tests: a real uvicorn process on a free port, configured through REID_* env vars."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.browser import OfflinePage, launch_chromium
from tests.support.gated_app import InferenceGate
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
def shared_gate(tmp_path_factory: pytest.TempPathFactory) -> InferenceGate:
    """The inference gate of ``shared_server`` (tests/support/gated_app.py); unarmed it changes nothing."""
    return InferenceGate(tmp_path_factory.mktemp("e2e-gate"))


@pytest.fixture(scope="module")
def shared_server(
    tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory, shared_gate: InferenceGate
) -> Iterator[LiveServer]:
    """One server for the read-mostly tests of a module, its model behind ``shared_gate``."""
    tmp = tmp_path_factory.mktemp("e2e-shared")
    env = {**server_env(tiny_checkpoint, tmp / "data"), **shared_gate.env()}
    server = LiveServer(env, log_path=tmp / "server.log", app="tests.support.gated_app:app")
    with server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless chromium for the module's browser tests (skipped where it is not installed, except in CI)."""
    with launch_chromium() as chromium:
        yield chromium


@pytest.fixture()
def offline_page(browser: Any) -> Iterator[OfflinePage]:
    """A fresh page of ``browser`` whose requests outside 127.0.0.1 are aborted and recorded."""
    page = OfflinePage(browser)
    yield page
    page.close()
