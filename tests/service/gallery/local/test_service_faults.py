"""The local gallery under deletes, full disks, failing builds and a (fake) GPU: right answers, clear errors."""

from __future__ import annotations

import contextlib
import errno
import gc
import math
import os
import re
import sqlite3
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest

from service.gallery import NewItem
from service.gallery.local.backend import LocalGallery
from service.gallery.local.gpu_faiss import GpuFaissOwner
from service.gallery.local.index import FaissIndexRegistry, IndexConfig, _CollectionIndex
from service.gallery.local.snapshots import SnapshotHeader, snapshot_path, write_snapshot
from tests.support.images import files_field, player_png

DIM = 16
CONFIG = IndexConfig(hnsw_min_size=50, hnsw_m=8, hnsw_ef_construction=40, hnsw_ef_search=64)


@pytest.fixture()
def backend() -> str:
    return "local"


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    """(n, dim) float32 unit rows."""
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def items(vectors: np.ndarray, start: int = 0) -> list[NewItem]:
    return [NewItem(f"p{start + i}", {}, f"{start + i:064d}", v) for i, v in enumerate(vectors)]


def exact(vectors: np.ndarray, live: np.ndarray, queries: np.ndarray, k: int) -> list[list[int]]:
    """Exact top-k ids (row numbers) among the live rows."""
    ids = np.flatnonzero(live)
    scores = queries @ vectors[ids].T
    return [ids[np.argsort(-row, kind="stable")[:k]].tolist() for row in scores]


# ---------------------------------------------------------------- deletes filtered inside the search


class _RecordingIndex:
    """Wraps a CPU FAISS index, recording the k and the search parameters of every search."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls: list[tuple[int, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def search(self, queries: np.ndarray, k: int, params: Any = None) -> Any:
        self.calls.append((k, params))
        return self._inner.search(queries, k, params=params)


def test_hnsw_search_fetches_k_and_lets_faiss_skip_the_deleted_ones() -> None:
    rng = np.random.default_rng(0)
    vectors = unit(rng, 400)
    registry = FaissIndexRegistry(DIM, IndexConfig(hnsw_min_size=10, hnsw_ef_search=64, compact_min_tombstones=10**9))
    registry.auto_build = False  # tombstones pile up, as between two compactions
    hnsw = faiss.IndexIDMap2(faiss.IndexHNSWFlat(DIM, 8, faiss.METRIC_INNER_PRODUCT))
    hnsw.add_with_ids(vectors, np.arange(400))
    registry.install("c", hnsw, "hnsw", set())
    gone = rng.permutation(400)[:160]  # 40% deleted
    registry.remove("c", gone)
    live = np.ones(400, dtype=bool)
    live[gone] = False
    index = registry._get("c")
    assert index is not None
    recorder = _RecordingIndex(index.main)
    index.main = recorder
    hits = registry.search("c", vectors[:20], k=5)
    # Only k neighbours are asked for, the beam stays at its configured width, and FAISS gets the filter.
    assert [k for k, _ in recorder.calls] == [5]
    params = recorder.calls[0][1]
    # efSearch widened by the live share only (64 / 0.6), not to k + tombstones (165) as before.
    assert params is not None and params.efSearch == math.ceil(64 / 0.6) and params.sel is not None
    found = {i for row in hits for i, _ in row}
    assert found and not found & set(gone.tolist())
    assert all(len(row) == 5 for row in hits)
    truth = exact(vectors, live, vectors[:20], 5)
    assert np.mean([len(set(t) & {i for i, _ in row}) / 5 for t, row in zip(truth, hits, strict=True)]) > 0.9


# ---------------------------------------------------------------- GPU (fake: no CUDA here)


class _GpuLikeIndex:
    """Stands for a GPU flat index: every call needs the owner's lock, no search parameters (no selector on the
    GPU), at most 2048 neighbours per search, and its destruction is checked to happen under the lock."""

    def __init__(self, owner: GpuFaissOwner, inner: Any, freed_without_lock: list[str]) -> None:
        self._owner, self._inner, self._freed_without_lock = owner, inner, freed_without_lock

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def guarded(*args: Any, **kwargs: Any) -> Any:
            assert self._owner.held_by_current_thread, f"{name} called on a GPU index without the owner's lock"
            return attr(*args, **kwargs)

        return guarded

    def search(self, queries: np.ndarray, k: int, **kwargs: Any) -> Any:
        assert self._owner.held_by_current_thread, "search on a GPU index without the owner's lock"
        assert not kwargs.get("params"), "GPU flat search takes no IDSelector"
        if k > 2048:
            raise RuntimeError(f"GPU index only supports k <= 2048 (asked {k})")
        return self._inner.search(queries, k)

    def __del__(self) -> None:
        if not self._owner.held_by_current_thread:
            self._freed_without_lock.append(threading.current_thread().name)


def fake_gpu_owner(freed_without_lock: list[str]) -> GpuFaissOwner:
    owner = GpuFaissOwner.create(device=0, resources_factory=object)
    assert owner is not None
    real_to_gpu = owner.to_gpu

    def to_gpu(cpu_index: Any, converter: Any = None) -> Any:
        def convert(resources: Any, device: int, index: Any) -> Any:
            assert owner.held_by_current_thread
            return _GpuLikeIndex(owner, faiss.clone_index(index), freed_without_lock)

        return real_to_gpu(cpu_index, convert)

    def to_cpu(index: Any) -> Any:
        with owner.use():
            return faiss.clone_index(index._inner)

    owner.to_gpu = to_gpu  # type: ignore[method-assign]
    owner.to_cpu = to_cpu  # type: ignore[method-assign]
    return owner


def test_gpu_answers_stay_right_with_more_deletes_than_one_gpu_search_returns() -> None:
    # One player's 3,000 crops deleted, 20 live look-alikes left, plus other players: no compaction meanwhile.
    rng = np.random.default_rng(1)
    player = unit(rng, 1)[0]
    deleted_crops = unit(rng, 3000) * 0.05 + player
    lookalikes = unit(rng, 20) * 0.3 + player
    others = unit(rng, 2000)
    vectors = np.concatenate([deleted_crops, lookalikes, others]).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    freed: list[str] = []
    config = IndexConfig(hnsw_min_size=10**9, compact_min_tombstones=10**9)
    registry = FaissIndexRegistry(DIM, config, gpu=fake_gpu_owner(freed))
    ids = np.arange(len(vectors))
    registry.add("c", ids, vectors)
    registry.remove("c", ids[:3000])
    stats = registry.stats("c")
    assert stats is not None and stats["on_gpu"] and stats["tombstones"] == 3000
    live = np.ones(len(vectors), dtype=bool)
    live[:3000] = False
    queries = np.stack([player, vectors[3005], vectors[4000]])
    hits = registry.search("c", queries, k=10)
    assert [[i for i, _ in row] for row in hits] == exact(vectors, live, queries, 10)
    assert {i for i, _ in hits[0]} <= set(range(3000, 3020))  # the live look-alikes, not "no match"
    registry.close()


def test_every_gpu_index_is_freed_under_the_owners_lock() -> None:
    freed: list[str] = []
    registry = FaissIndexRegistry(
        DIM, IndexConfig(hnsw_min_size=10**9, compact_min_tombstones=4, compact_fraction=0.0), gpu=fake_gpu_owner(freed)
    )
    rng = np.random.default_rng(2)
    vectors = unit(rng, 40)
    registry.add("c", np.arange(40), vectors)
    registry.remove("c", np.arange(6))  # past 4 tombstones: a compaction rebuild swaps a new GPU index in
    registry.wait_for_builds(60)
    assert registry.builds_finished >= 1
    cpu = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
    cpu.add_with_ids(vectors[:5], np.arange(100, 105))
    registry.install("c", cpu, "flat", set())  # a snapshot installed over a GPU index
    registry.add("d", np.arange(200, 210), vectors[:10])
    registry.drop("d")  # a dropped collection's GPU index
    registry.close()
    gc.collect()
    assert freed == [], f"GPU indexes freed without the owner's lock in threads {freed}"
    registry.release_all()  # what the gallery does at close
    gc.collect()
    assert freed == [], f"GPU indexes freed without the owner's lock at close in threads {freed}"


# ---------------------------------------------------------------- builds: a failing abort, short read transactions


def test_a_failing_abort_still_ends_the_build_and_loses_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    vectors = unit(rng, 30)
    registry = FaissIndexRegistry(DIM, IndexConfig(hnsw_min_size=10**9))
    registry.add("c", np.arange(20), vectors[:20])
    gate, release = threading.Event(), threading.Event()

    def hook(collection: str, point: str) -> None:
        if point == "start":
            gate.set()
            assert release.wait(30)
            raise RuntimeError("build failed")

    def failing_abort(self: _CollectionIndex, build_generation: int) -> None:
        raise RuntimeError("abort failed too")

    registry.build_hook = hook
    monkeypatch.setattr(_CollectionIndex, "abort_build", failing_abort)
    assert registry.schedule_build("c")
    assert gate.wait(30)
    registry.add("c", np.arange(20, 30), vectors[20:])  # goes to the build's delta
    release.set()
    registry.wait_for_builds(30)
    stats = registry.stats("c")
    assert stats is not None and not stats["building"]
    hits = registry.search("c", vectors[25:26], k=1)
    assert hits[0][0][0] == 25  # the delta's items are still found
    registry.build_hook = None
    monkeypatch.undo()
    assert registry.schedule_build("c")  # and a later build can start
    registry.wait_for_builds(30)
    assert registry.size("c") == 30
    assert [h[0][0] for h in registry.search("c", vectors, k=1)] == list(range(30))
    registry.close()


def test_a_background_build_holds_no_read_transaction_between_chunks(tmp_path: Path) -> None:
    gallery = LocalGallery.open(tmp_path / "gallery.sqlite3", DIM, "fp", CONFIG, snapshots=False)
    rng = np.random.default_rng(4)
    gallery.add("m", items(unit(rng, 40)))
    store = gallery.store
    between_chunks, go_on = threading.Event(), threading.Event()
    real_read = store.read_collection

    @contextlib.contextmanager
    def paused_read(collection: str) -> Iterator[Any]:
        with real_read(collection, chunk=8) as view:

            def chunks() -> Iterator[Any]:
                for n, chunk in enumerate(view.chunks):
                    yield chunk
                    if n == 1:
                        between_chunks.set()
                        assert go_on.wait(30)

            yield type(view)(view.watermark_id, view.deletion_seq, view.size, chunks())

    gallery.index.source = type("Source", (), {"read_collection": staticmethod(paused_read)})()
    assert gallery.index.schedule_build("m")
    assert between_chunks.wait(30)
    # Writers carry on, and the WAL can be checkpointed completely and restarted while the build is midway.
    gallery.add("m", items(unit(rng, 20), start=100))
    with sqlite3.connect(tmp_path / "gallery.sqlite3") as conn:
        busy, log_frames, checkpointed = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    go_on.set()
    gallery.index.wait_for_builds(30)
    assert (busy, log_frames, checkpointed) == (0, 0, 0)
    assert gallery.size("m") == 60
    gallery.close()


# ---------------------------------------------------------------- snapshots: header checksum, full disk


def test_a_corrupt_but_parseable_watermark_falls_back_to_a_rebuild(tmp_path: Path) -> None:
    gallery = LocalGallery.open(tmp_path / "gallery.sqlite3", DIM, "fp", CONFIG)
    vectors = unit(np.random.default_rng(5), 30)
    gallery.add("m", items(vectors))
    gallery.close()
    path = snapshot_path(tmp_path / "indexes", "m")
    data = path.read_bytes()
    match = re.search(rb'"watermark_id": (\d\d)', data)
    assert match is not None
    # Same length, still valid JSON, a smaller watermark: replay would re-add ids the index already holds.
    smaller = str(int(match.group(1)) - 10).rjust(2, "1").encode()
    path.write_bytes(data[: match.start(1)] + smaller + data[match.end(1) :])
    again = LocalGallery.open(tmp_path / "gallery.sqlite3", DIM, "fp", CONFIG)
    assert again.load_report.from_store == 1 and again.load_report.from_snapshot == 0
    assert [h[0].item.label for h in again.search("m", vectors, k=1)] == [f"p{i}" for i in range(30)]
    again.close()


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (skips the test where mounting is not allowed)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder: Path, leave_bytes: int) -> Path:
    """Fill ``folder``'s filesystem up to ``leave_bytes`` free; returns the filler file (delete it to free space)."""
    filler = folder / "filler"
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    with open(filler, "wb") as fh:
        fh.write(b"\0" * max(0, free - leave_bytes))
    return filler


def test_a_snapshot_that_hits_a_full_disk_leaves_no_partial_file(tmp_path: Path) -> None:
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
    index.add_with_ids(unit(np.random.default_rng(6), 2000), np.arange(2000))  # ~130 KB
    header = SnapshotHeader("m", "t0", "fp", DIM, "flat")
    with small_disk(tmp_path / "disk", "1m") as disk:
        small = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
        small.add_with_ids(unit(np.random.default_rng(7), 5), np.arange(5))
        previous = write_snapshot(disk, header, small, set()).read_bytes()
        fill(disk, 64 * 1024)
        with pytest.raises(OSError) as err:
            write_snapshot(disk, header, index, set())
        assert err.value.errno == errno.ENOSPC or "No space" in str(err.value)
        assert sorted(p.name for p in disk.iterdir()) == ["filler", "m.index"]  # no m.index.tmp
        assert snapshot_path(disk, "m").read_bytes() == previous


def test_a_full_disk_answers_507_keeps_what_was_acknowledged_and_queries_go_on(
    make_client: Any, tmp_path: Path
) -> None:
    with small_disk(tmp_path / "disk", "4m") as disk:
        client = make_client(data_dir=disk / "data")
        first = client.post("/gallery", files=files_field(player_png(1)), data={"collection": "m", "labels": ["a"]})
        assert first.status_code == 201, first.text
        acknowledged = [first.json()["items"][0]["id"]]
        filler = fill(disk, 32 * 1024)
        answer = None
        for player in range(2, 40):
            response = client.post(
                "/gallery",
                files=files_field(player_png(player), player_png(player, 1), player_png(player, 2)),
                data={"collection": "m", "labels": ["b", "b", "b"]},
            )
            if response.status_code != 201:
                answer = response
                break
            acknowledged += [i["id"] for i in response.json()["items"]]
        assert answer is not None, "the disk never filled"
        assert answer.status_code == 507, answer.text
        body = answer.json()
        assert body["error"] == "insufficient_storage" and "disk" in body["detail"] and "full" in body["detail"]
        # Reads go on, nothing acknowledged is lost.
        query = client.post("/query", files=files_field(player_png(1)), data={"collection": "m", "top_k": "1"})
        assert query.status_code == 200 and query.json()["results"][0]["matches"][0]["id"] == acknowledged[0]
        for item_id in acknowledged:
            assert client.get(f"/gallery/{item_id}").status_code == 200
        listed = client.get("/gallery", params={"collection": "m", "limit": 1000}).json()
        assert {i["id"] for i in listed["items"]} == set(acknowledged)
        # Space back: registrations work again.
        filler.unlink()
        again = client.post("/gallery", files=files_field(player_png(99)), data={"collection": "m", "labels": ["c"]})
        assert again.status_code == 201, again.text


def test_store_maps_sqlite_full_to_insufficient_storage(tmp_path: Path) -> None:
    from service.core.errors import InsufficientStorageError
    from service.gallery.local.store import GalleryStore

    with small_disk(tmp_path / "disk", "1m") as disk:
        store = GalleryStore(disk / "g.sqlite3", DIM)
        kept = store.insert_items("m", items(unit(np.random.default_rng(8), 2)))
        fill(disk, 8 * 1024)
        big = [
            NewItem(f"x{i}", {}, f"{i:064x}", np.ones(DIM, np.float32) / 4, crop=os.urandom(20_000)) for i in range(8)
        ]
        with pytest.raises(InsufficientStorageError, match="disk holding the gallery is full"):
            store.insert_items("m", big)
        assert [r.id for r in store.list_items("m", 0, 10)[1]] == [r.id for r in kept]
        store.close()


def test_cursor_ids_are_time_ordered_and_a_legacy_unknown_cursor_is_a_400(client: Any) -> None:
    response = client.post(
        "/gallery", files=files_field(player_png(1), player_png(2)), data={"collection": "m", "labels": ["a", "b"]}
    )
    ids = [i["id"] for i in response.json()["items"]]
    assert ids == sorted(ids) and all(uuid.UUID(i).version == 7 for i in ids)
    unknown = client.get("/gallery", params={"after": str(uuid.uuid4())})
    assert unknown.status_code == 400 and unknown.json()["error"] == "unknown_cursor"
    both = client.get("/gallery", params={"after": ids[0], "offset": 1})
    assert both.status_code == 400
