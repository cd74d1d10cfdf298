"""Shared fixtures: locating ../shared/data (skipping cleanly when absent) and unpacking CUHK03 once per run."""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

# Under CI=true a skip for a missing tool that CI installs fails (the rule and its list: tests/support/ci_skips.py).
from tests.support.ci_skips import pytest_runtest_makereport  # noqa: F401
from tests.support.milvus_server import MilvusStandaloneServer, PrefixPool, standalone_available

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# Two cores are shared between the test process and any server it starts.
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def milvus_standalone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusStandaloneServer]:
    """One Milvus standalone server per test session (start-up takes 5-20 s), on its own ports and data folder.

    Skipped when the ``milvus`` package (dev extra) is not installed. REID_TEST_MILVUS_NICE lowers its priority."""
    if not standalone_available():
        pytest.skip("the Milvus standalone server (PyPI package milvus, dev extra) is not installed")
    server = MilvusStandaloneServer(tmp_path_factory.mktemp("milvus-standalone") / "data")
    with server:
        yield server


@pytest.fixture(scope="session")
def milvus_prefixes(milvus_standalone: MilvusStandaloneServer) -> PrefixPool:
    return PrefixPool(milvus_standalone.uri)


def shared_file(name: str) -> Path:
    """Path of a file in ../shared/data, or skip the calling test when it is not there."""
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"real data not available: {path} is absent (only inside the project workplace)")
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """OSNet-x0.25 at 64x32, random weights with seed 0, checkpoint threshold 0.9: built once per test run.

    Its ONNX graph is exported here too, once, into a session-wide cache that REID_ONNX_CACHE_DIR points every
    app and server of the run at (they default to onnxruntime on the CPU): without it each test's fresh data dir
    would pay the export (seconds) again.
    """
    from tests.support.checkpoints import make_tiny_checkpoint, prepare_onnx_cache

    checkpoint = make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")
    previous = os.environ.get("REID_ONNX_CACHE_DIR")
    cache = os.environ["REID_ONNX_CACHE_DIR"] = str(tmp_path_factory.mktemp("onnx-cache"))
    if os.environ.get("REID_RUNTIME") != "torch":  # REID_RUNTIME=torch (.ci/mutations.py): no graph is served
        prepare_onnx_cache(checkpoint, Path(cache))
    yield checkpoint
    if previous is None:
        os.environ.pop("REID_ONNX_CACHE_DIR", None)
    else:
        os.environ["REID_ONNX_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def osnet_x0_25_market_weights() -> Path:
    """The official torchreid OSNet-x0.25 Market-1501 weight file (legacy pickle state dict)."""
    return shared_file("osnet_x0_25_market1501.pth")


@pytest.fixture(scope="session")
def cuhk03_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of CUHK03 crops named <pid>_<idx>.jpg (idx 00-04 camera A, 05-09 camera B), 64x128 (w x h)."""
    tar_path = shared_file("cuhk03_64x128.tar")
    out = tmp_path_factory.mktemp("cuhk03")
    with tarfile.open(tar_path) as tar:
        tar.extractall(out, filter="data")
    images = out / "dataset" / "images" / "full"
    assert images.is_dir(), f"unexpected layout inside {tar_path}"
    return images
