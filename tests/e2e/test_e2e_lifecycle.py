"""Gallery lifecycle through real uvicorn processes: kill -9 mid-build and mid-snapshot, model upgrades.

Fault points (service/core/faults.py) park the server exactly where the crash must happen; the test waits for the
marker file the server writes there, then sends SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from model.cli import import_torchreid_main
from model.spec import file_sha256
from tests.e2e.conftest import ServerFactory
from tests.support.checkpoints import make_tiny_checkpoint
from tests.support.images import files_field, player_png
from tests.support.live_server import REPO_ROOT, LiveServer, ServerStartError, server_env

pytestmark = pytest.mark.slow


def wait_for_file(path: Path, server: LiveServer | None = None, timeout_s: float = 120.0) -> None:
    """Until ``path`` exists (the server reached the fault point); fails early when the server died."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if server is not None and not server.running:
            raise AssertionError(f"server exited before reaching the fault point:\n{server.tail()}")
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout_s} s"
        time.sleep(0.05)


def register(client: httpx.Client, players: range) -> dict[int, str]:
    response = client.post(
        "/gallery",
        files=files_field(*(player_png(p) for p in players)),
        data={"collection": "m", "labels": [f"player-{p}" for p in players]},
    )
    assert response.status_code == 201, response.text
    return {p: item["id"] for p, item in zip(players, response.json()["items"], strict=True)}


def top1(client: httpx.Client, players: list[int]) -> list[str]:
    response = client.post("/query", files=files_field(*(player_png(p) for p in players)), data={"collection": "m"})
    assert response.status_code == 200, response.text
    return [r["matches"][0]["id"] for r in response.json()["results"]]


def check_everything_acknowledged_is_there(server: LiveServer, acked: dict[int, str], deleted: set[int]) -> None:
    with server.client() as client:
        listed = client.get("/gallery", params={"collection": "m", "limit": 1000}).json()
        assert {i["id"] for i in listed["items"]} == {acked[p] for p in acked if p not in deleted}
        alive = sorted(p for p in acked if p not in deleted)
        assert top1(client, alive) == [acked[p] for p in alive]


def test_kill9_during_a_background_build_loses_no_acknowledged_item(make_server: ServerFactory, tmp_path: Path) -> None:
    marker = tmp_path / "at-build"
    server = make_server(REID_HNSW_MIN_SIZE="12", REID_FAULT_PAUSE_AT="build", REID_FAULT_MARKER=str(marker))
    with server.client() as client:
        acked = register(client, range(0, 8))
        acked |= register(client, range(8, 14))  # crosses 12: the HNSW build starts and parks
        wait_for_file(marker, server)
        acked |= register(client, range(14, 18))  # acknowledged while the build is parked
        assert client.delete(f"/gallery/{acked[3]}").status_code == 200
        assert top1(client, [0, 15]) == [acked[0], acked[15]]
    server.kill()
    server.env = {k: v for k, v in server.env.items() if not k.startswith("REID_FAULT")}
    server.start()
    check_everything_acknowledged_is_there(server, acked, {3})
    assert "1 from the store, 1 background builds started" in server.logs()


def test_kill9_during_a_snapshot_write_keeps_the_previous_snapshot(make_server: ServerFactory, tmp_path: Path) -> None:
    data = tmp_path / "data"
    snapshot = data / "indexes" / "m.index"
    server = make_server(data_dir=data, REID_HNSW_MIN_SIZE="12")
    with server.client() as client:
        acked = register(client, range(0, 14))  # the background build writes the first snapshot
    wait_for_file(snapshot, server)
    server.stop()  # nothing changed since the build's snapshot: it stays as it is
    first_snapshot = snapshot.read_bytes()

    marker = tmp_path / "at-snapshot"
    server.env |= {"REID_FAULT_PAUSE_AT": "snapshot_write", "REID_FAULT_MARKER": str(marker)}
    server.start()
    with server.client() as client:
        acked |= register(client, range(14, 17))
        assert client.delete(f"/gallery/{acked[5]}").status_code == 200
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)  # the close-time snapshot starts and parks half-written
    wait_for_file(marker)
    server.kill()
    assert (data / "indexes" / "m.index.tmp").exists() and snapshot.read_bytes() == first_snapshot

    server.env = {k: v for k, v in server.env.items() if not k.startswith("REID_FAULT")}
    server.start()
    check_everything_acknowledged_is_there(server, acked, {5})
    logs = server.logs()
    assert "hnsw snapshot loaded" in logs and "(+3 adds, 1 deletes replayed)" in logs
    assert not (data / "indexes" / "m.index.tmp").exists()


def run_reindex(checkpoint: Path, data: Path, batch_size: int = 4, **env: str) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "service.gallery.local.reindex", "--checkpoint", str(checkpoint), "--data-dir", str(data),
    ]
    command += ["--device", "cpu", "--batch-size", str(batch_size), "--no-progress"]
    full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", **env}
    return subprocess.Popen(command, cwd=REPO_ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def answers(server: LiveServer, players: list[int]) -> list[list[tuple[str, float]]]:
    with server.client() as client:
        response = client.post(
            "/query",
            files=files_field(*(player_png(p, variant=1) for p in players)),
            data={"collection": "m", "top_k": str(len(players))},  # every item: no top-k boundary to flip
        )
    assert response.status_code == 200, response.text
    return [[(m["label"], m["score"]) for m in r["matches"]] for r in response.json()["results"]]


def upgrade_by_reindex(
    old: Path, new: Path, tmp_path: Path, players: list[int], batch_size: int, **new_env: str
) -> None:
    """A gallery of ``players`` registered with ``old``; ``new`` refused on it; reid-reindex killed -9 after its
    first batch, the gallery still ``old``'s; resumed; then ``new`` serves it exactly as a gallery registered with
    ``new`` from the start (same labels, same scores), stored crops included. ``new_env``: REID_* for ``new``."""
    data = tmp_path / "data"
    demo = LiveServer(server_env(old, data), log_path=tmp_path / "old.log")
    with demo, demo.client() as client:
        registered = register(client, range(len(players)))

    # The new model over the old model's gallery: refused, naming both models and the two ways forward.
    refused = LiveServer(server_env(new, data, **new_env), log_path=tmp_path / "refused.log")
    refused.start(wait=False)
    assert refused.process is not None
    assert refused.process.wait(120) != 0
    log = refused.logs()
    assert file_sha256(old) in log and file_sha256(new) in log
    assert "REID_DATA_DIR" in log and "reid-reindex --checkpoint" in log

    # Reindex, killed -9 after its first batch, then resumed.
    marker = tmp_path / "at-batch"
    crashed = run_reindex(new, data, batch_size, REID_FAULT_PAUSE_AT="reindex_batch", REID_FAULT_MARKER=str(marker))
    try:
        wait_for_file(marker)
    finally:
        crashed.kill()
        crashed.wait()
    with pytest.raises(ServerStartError):  # still the old model's gallery until the switch
        LiveServer(server_env(new, data, **new_env), log_path=tmp_path / "still-refused.log").start()
    resumed = run_reindex(new, data, batch_size)
    output = resumed.communicate(timeout=300)[0].decode()
    assert resumed.returncode == 0, output
    assert f"resuming: {batch_size} of {len(players)} items already re-embedded" in output

    with LiveServer(server_env(new, data, **new_env), log_path=tmp_path / "upgraded.log") as upgraded:
        reindexed = answers(upgraded, players)
        with upgraded.client() as client:
            image = client.get(f"/gallery/{registered[2]}/image")
            assert image.status_code == 200 and image.content == player_png(2)
    fresh_server = LiveServer(server_env(new, tmp_path / "fresh", **new_env), log_path=tmp_path / "fresh.log")
    with fresh_server as fresh:
        with fresh.client() as client:
            register(client, range(len(players)))
        expected = answers(fresh, players)
    # Every query scores every item as the fresh gallery does (compared per label: near-ties may order either way).
    for got, want in zip(reindexed, expected, strict=True):
        assert dict(got) == pytest.approx(dict(want), abs=1e-4)
        assert len(got) == len(players)


def test_model_upgrade_refused_then_reindexed_to_another_tiny_model(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """The default run's reindex of a populated gallery: six crops, the tiny model to another seed of it (torch
    runtime for the new model, so no second ONNX export)."""
    other = make_tiny_checkpoint(tmp_path / "tiny-seed1.safetensors", seed=1)
    assert file_sha256(other) != file_sha256(tiny_checkpoint)
    upgrade_by_reindex(tiny_checkpoint, other, tmp_path, list(range(6)), batch_size=2, REID_RUNTIME="torch")


@pytest.mark.shared_data
@pytest.mark.skipif(os.environ.get("RUN_SLOW_TESTS", "") != "1", reason="about 2 min on 2 cores: RUN_SLOW_TESTS=1")
def test_model_upgrade_refused_then_reindexed_to_imported_osnet(
    tiny_checkpoint: Path, osnet_x0_25_market_weights: Path, tmp_path: Path
) -> None:
    osnet = tmp_path / "osnet_x0_25.safetensors"
    assert import_torchreid_main([str(osnet_x0_25_market_weights), str(osnet)]) == 0
    upgrade_by_reindex(tiny_checkpoint, osnet, tmp_path, list(range(10)), batch_size=4)
