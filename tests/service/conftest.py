"""Fixtures for service tests: a tiny deterministic checkpoint and TestClient apps built on it."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

with warnings.catch_warnings():
    # Starlette suggests httpx2 for its TestClient; httpx is what this project pins.
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from model.checkpoint import read_checkpoint_spec
from service.app import create_app
from service.core.settings import Settings
from tests.support.milvus_server import PrefixPool

AppFactory = Callable[..., TestClient]
# The API contract runs on every gallery backend: local; milvus on Milvus Lite embedded on a file in tmp_path;
# milvus-server on the session's Milvus standalone server (tests/conftest.py), on collections of the test's own.
BACKENDS = ["local", "milvus", "milvus-server"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture()
def make_client(
    tiny_checkpoint: Path, tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> Iterator[AppFactory]:
    """Factory: make_client(**settings) -> a started TestClient; all are closed at test end."""
    clients: list[TestClient] = []
    server: dict[str, Any] = {}
    pool: PrefixPool | None = None
    prefix = ""
    if backend == "milvus-server":
        pool = request.getfixturevalue("milvus_prefixes")
        prefix = pool.take(read_checkpoint_spec(tiny_checkpoint).embedding_dim)
        server = {"gallery_backend": "milvus", "milvus_uri": pool.uri, "milvus_collection_prefix": prefix}

    def factory(**overrides: Any) -> TestClient:
        values: dict[str, Any] = {
            "checkpoint": tiny_checkpoint,
            "data_dir": tmp_path / "data",
            "device": "cpu",
            "max_batch_size": 8,
            "max_delay_ms": 2,
            "warmup_batches": 1,
            "decode_workers": 2,
            "gallery_backend": backend,
            **server,
        }
        values.update(overrides)
        client = TestClient(create_app(Settings(**values)))
        client.__enter__()
        clients.append(client)
        return client

    yield factory
    for client in reversed(clients):
        client.__exit__(None, None, None)
    if pool is not None:
        pool.give_back(prefix)


@pytest.fixture()
def client(make_client: AppFactory) -> TestClient:
    return make_client()
