"""Gallery lifecycle on the local backend: background builds, snapshots, GPU ownership, fingerprints, crops."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.gallery import NewItem
from service.gallery.local.backend import LocalGallery
from service.gallery.local.gpu_faiss import GpuFaissOwner
from service.gallery.local.index import FaissIndexRegistry, IndexConfig
from service.gallery.local.snapshots import (
    SnapshotHeader,
    SnapshotRejected,
    read_header,
    read_snapshot,
    snapshot_path,
    write_snapshot,
)
from service.gallery.local.store import FingerprintMismatchError, GalleryInUseError, GalleryStore
from tests.support.images import files_field, player_jpeg, player_png

DIM = 16
CONFIG = IndexConfig(hnsw_min_size=50, hnsw_m=8, hnsw_ef_construction=40, hnsw_ef_search=128)


@pytest.fixture()
def backend() -> str:
    """Everything here is about the local backend's index, snapshots and stored crops."""
    return "local"


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, DIM) float32 unit rows."""
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def items(vectors: np.ndarray, start: int = 0) -> list[NewItem]:
    return [NewItem(f"p{start + i}", {}, f"{start + i:064d}", v) for i, v in enumerate(vectors)]


def open_gallery(path: Path, config: IndexConfig = CONFIG, fingerprint: str = "fp") -> LocalGallery:
    return LocalGallery.open(path / "gallery.sqlite3", DIM, fingerprint, config)


def crash(gallery: LocalGallery) -> None:
    """Stop without the close-time snapshot, as a kill -9 would (the builder is stopped first)."""
    gallery.abandon()


def top1(gallery: LocalGallery, vectors: np.ndarray) -> list[str]:
    return [hits[0].item.label for hits in gallery.search("m", vectors, k=1)]


@pytest.fixture()
def gated() -> Iterator[tuple[threading.Event, threading.Event, Callable[[str, str], None]]]:
    """(reached, release, hook): the hook parks a build after it has read the store until release is set."""
    reached, release = threading.Event(), threading.Event()

    def hook(collection: str, point: str) -> None:
        if point == "built":
            reached.set()
            assert release.wait(60), "test never released the build"

    yield reached, release, hook
    release.set()


@pytest.mark.parametrize("under_lock", [1024, 2], ids=["swap-takes-delta", "catch-up-rounds"])
def test_query_during_background_build_completes_before_the_build(tmp_path: Path, gated: Any, under_lock: int) -> None:
    reached, release, hook = gated
    rng = np.random.default_rng(0)
    vectors = unit(rng, 70)
    gallery = open_gallery(tmp_path)
    gallery.index.build_hook = hook
    gallery.index.CATCH_UP_UNDER_LOCK = under_lock
    added = gallery.add("m", items(vectors[:40]))
    gallery.add("m", items(vectors[40:55], 40))  # crosses 50: the HNSW build starts, this add does not wait
    assert reached.wait(60)
    # While the build is parked: writes take the write lock, queries answer from the old index + delta.
    late = gallery.add("m", items(vectors[55:], 55))
    assert gallery.delete(added[3].id) is not None
    stats = gallery.index.stats("m")
    assert stats is not None and stats["building"] and stats["kind"] == "flat" and stats["delta"] == 15
    assert top1(gallery, vectors[[0, 10, 56, 69]]) == ["p0", "p10", "p56", "p69"]
    assert all(h.item.id != added[3].id for h in gallery.search("m", vectors[[3]], k=70)[0])
    assert gallery.index.stats("m")["building"]  # type: ignore[index]  # the query finished first
    release.set()
    gallery.index.wait_for_builds(60)
    stats = gallery.index.stats("m")
    # The delete came after the build read the store: replayed onto the new index as a tombstone.
    assert stats == {"kind": "hnsw", "size": 69, "tombstones": 1, "building": False, "delta": 0, "on_gpu": False}
    assert top1(gallery, vectors[[0, 56, 69]]) == ["p0", "p56", "p69"]
    assert {h.item.label for h in gallery.search("m", vectors[[0]], k=100)[0]} == {f"p{i}" for i in range(70) if i != 3}
    assert late[-1].label == "p69"
    gallery.close()


def test_tombstones_are_compacted_in_the_background(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    vectors = unit(rng, 120)
    config = IndexConfig(hnsw_min_size=50, hnsw_m=8, compact_min_tombstones=5, compact_fraction=0.01)
    gallery = open_gallery(tmp_path, config)
    added = gallery.add("m", items(vectors))
    gallery.index.wait_for_builds(60)
    for a in added[:6]:
        gallery.delete(a.id)
    gallery.index.wait_for_builds(60)
    assert gallery.index.stats("m") == {
        "kind": "hnsw",
        "size": 114,
        "tombstones": 0,
        "building": False,
        "delta": 0,
        "on_gpu": False,
    }
    assert gallery.index.builds_finished == 2
    assert top1(gallery, vectors[[0, 6]])[1] == "p6" and top1(gallery, vectors[[0]]) != ["p0"]
    gallery.close()


def _populate(path: Path) -> tuple[np.ndarray, list[str]]:
    """80 items (HNSW built, snapshotted), then 10 adds and 3 deletes after the snapshot -> (vectors, deleted)."""
    rng = np.random.default_rng(2)
    vectors = unit(rng, 90)
    gallery = open_gallery(path)
    added = gallery.add("m", items(vectors[:80]))
    gallery.index.wait_for_builds(60)
    assert snapshot_path(path / "indexes", "m").is_file()
    gallery.add("m", items(vectors[80:], 80))
    for a in added[:3]:
        gallery.delete(a.id)
    crash(gallery)
    return vectors, [a.id for a in added[:3]]


def test_restart_loads_the_snapshot_replays_the_rest_and_answers_like_a_rebuild(tmp_path: Path) -> None:
    _, deleted = _populate(tmp_path)
    queries = unit(np.random.default_rng(9), 12)
    restarted = open_gallery(tmp_path)
    report = restarted.load_report
    assert (report.from_snapshot, report.from_store, report.builds_started) == (1, 0, 0)
    assert (report.replayed_adds, report.replayed_deletes) == (10, 3)
    assert restarted.index.stats("m") == {
        "kind": "hnsw",
        "size": 87,
        "tombstones": 3,
        "building": False,
        "delta": 0,
        "on_gpu": False,
    }
    from_snapshot = [[(h.item.id, round(h.score, 5)) for h in hits] for hits in restarted.search("m", queries, 10)]
    restarted.close()  # writes a new snapshot holding the replayed changes

    again = open_gallery(tmp_path)
    assert (again.load_report.replayed_adds, again.load_report.replayed_deletes) == (0, 0)
    crash(again)
    for path in (tmp_path / "indexes").iterdir():
        path.unlink()
    rebuilt = open_gallery(tmp_path)
    assert rebuilt.load_report.from_store == 1 and rebuilt.load_report.builds_started == 1
    rebuilt.index.wait_for_builds(60)
    assert rebuilt.index.kind("m") == "hnsw"
    fresh = [[(h.item.id, round(h.score, 5)) for h in hits] for hits in rebuilt.search("m", queries, 10)]
    assert from_snapshot == fresh
    assert not {i for hits in fresh for i, _ in hits} & set(deleted)
    rebuilt.close()


def _damage(kind: str, path: Path) -> None:
    if kind == "corrupt":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    else:
        header = read_header(path)
        index, _, tombstones = read_snapshot(path, header, lambda kind: header.settings)
        changes: dict[str, Any] = {
            "other-model": {"model_fingerprint": "another-model"},
            "other-collection": {"collection_created_at": "2000-01-01"},
        }[kind]
        write_snapshot(path.parent, SnapshotHeader(**{**header.__dict__, **changes}), index, tombstones)


@pytest.mark.parametrize("damage", ["corrupt", "truncated", "other-model", "other-collection", "other-settings"])
def test_unusable_snapshot_is_ignored_with_a_log_line_and_rebuilt(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    vectors, deleted = _populate(tmp_path)
    config = CONFIG
    if damage == "other-settings":
        config = IndexConfig(hnsw_min_size=50, hnsw_m=12, hnsw_ef_construction=40)
    else:
        _damage(damage, snapshot_path(tmp_path / "indexes", "m"))
    with caplog.at_level(logging.WARNING, logger="service.gallery.local.backend"):
        gallery = open_gallery(tmp_path, config)
    assert gallery.load_report.from_snapshot == 0 and gallery.load_report.from_store == 1
    assert "snapshot of collection 'm' not used" in caplog.text
    assert gallery.size("m") == 87
    gallery.index.wait_for_builds(60)
    assert top1(gallery, vectors[[5, 85]]) == ["p5", "p85"]
    assert all(gallery.get(i) is None for i in deleted)
    gallery.close()


def test_dropped_collection_takes_its_snapshot_along(tmp_path: Path) -> None:
    _populate(tmp_path)
    gallery = open_gallery(tmp_path)
    assert gallery.drop_collection("m") == 87
    assert not snapshot_path(tmp_path / "indexes", "m").exists()
    gallery.add("m", items(unit(np.random.default_rng(3), 2)))
    gallery.close()
    again = open_gallery(tmp_path)
    assert again.size("m") == 2
    again.close()


# ---------------------------------------------------------------- GPU ownership (fake GPU: no CUDA here)


class _FakeGpuIndex:
    """Stands for a GPU index: forwards to a CPU index, failing any call made without the owner's lock."""

    def __init__(self, owner: GpuFaissOwner, inner: Any) -> None:
        self._owner, self._inner = owner, inner

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def guarded(*args: Any, **kwargs: Any) -> Any:
            assert self._owner.held_by_current_thread, f"{name} called on a GPU index without the owner's lock"
            return attr(*args, **kwargs)

        return guarded


def test_every_gpu_index_call_goes_through_the_owner_and_its_device() -> None:
    devices: list[int] = []
    owner = GpuFaissOwner.create(device=2, resources_factory=object)
    assert owner is not None and owner.device == 2
    real_to_gpu = owner.to_gpu

    def to_gpu(cpu_index: Any, converter: Any = None) -> Any:
        def convert(resources: Any, device: int, index: Any) -> Any:
            assert owner.held_by_current_thread
            devices.append(device)
            return _FakeGpuIndex(owner, index)

        return real_to_gpu(cpu_index, convert)

    owner.to_gpu = to_gpu  # type: ignore[method-assign]
    owner.to_cpu = lambda index: index._inner  # type: ignore[method-assign]
    registry = FaissIndexRegistry(DIM, IndexConfig(hnsw_min_size=10_000, compact_min_tombstones=4), gpu=owner)
    rng = np.random.default_rng(4)
    vectors = unit(rng, 64)
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def work(part: int) -> None:
        try:
            start.wait()
            ids = np.arange(part * 16, part * 16 + 16)
            registry.add("c", ids, vectors[ids])
            registry.search("c", vectors[ids[:2]], k=3)
            registry.remove("c", ids[:2])  # GPU flat: tombstones, compaction rebuild past 4
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(p,)) for p in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    registry.wait_for_builds(60)
    assert not errors and registry.builds_finished >= 1  # tombstones past 4 started a compaction
    registry.schedule_build("c")  # compact the rest too
    registry.wait_for_builds(60)
    assert devices and set(devices) == {2}
    stats = registry.stats("c")
    assert stats is not None and stats["on_gpu"] and stats["size"] == 56 and stats["tombstones"] == 0
    hits = registry.search("c", vectors[[2, 3, 0]], k=1)
    assert [h[0][0] for h in hits[:2]] == [2, 3] and hits[2][0][0] != 0  # 0 was deleted
    registry.close()


class ProbeLock:
    """A re-entrant lock that records whether a thread ever had to wait for it (contention observed, not timed)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.contended = threading.Event()

    def __enter__(self) -> ProbeLock:
        if not self._lock.acquire(blocking=False):
            self.contended.set()  # someone holds it: this thread waits below
            self._lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def test_gpu_owner_lets_one_thread_in_at_a_time() -> None:
    owner = GpuFaissOwner(resources=object(), device=0)
    probe = ProbeLock()
    owner._lock = probe  # type: ignore[assignment]  # the owner's own lock, instrumented
    inside, second_in, release = threading.Event(), threading.Event(), threading.Event()

    def first() -> None:
        with owner.use():
            inside.set()
            release.wait(30)

    def second() -> None:
        inside.wait(30)
        with owner.use():
            second_in.set()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    try:
        assert inside.wait(30)
        # The second thread reached the owner while the first held it, and was made to wait: not "not yet there".
        assert probe.contended.wait(30), "the second thread never had to wait for the owner"
        assert not second_in.is_set()
    finally:
        release.set()
        for t in threads:
            t.join()
    assert second_in.is_set()


# ---------------------------------------------------------------- model fingerprint and crops


def test_another_models_gallery_is_refused_naming_both_fingerprints_and_the_ways_forward(tmp_path: Path) -> None:
    path = tmp_path / "gallery.sqlite3"
    store = GalleryStore(path, DIM, "aaaa1111")
    store.insert_items("m", items(unit(np.random.default_rng(5), 1)))
    store.close()
    with pytest.raises(FingerprintMismatchError) as err:
        GalleryStore(path, DIM, "bbbb2222")
    message = str(err.value)
    assert "aaaa1111" in message and "bbbb2222" in message
    assert "REID_DATA_DIR" in message and "reid-reindex --checkpoint" in message
    GalleryStore(path, DIM, "aaaa1111").close()  # the right model still opens it


def test_registered_crop_is_served_back_as_uploaded(make_client: Any) -> None:
    client = make_client()
    png, jpeg = player_png(1), player_jpeg(2)
    response = client.post("/gallery", files=files_field(png, jpeg), data={"collection": "m", "labels": ["a", "b"]})
    assert response.status_code == 201, response.text
    first, second = (i["id"] for i in response.json()["items"])
    image = client.get(f"/gallery/{first}/image")
    assert image.status_code == 200 and image.content == png and image.headers["content-type"] == "image/png"
    image = client.get(f"/gallery/{second}/image")
    assert image.content == jpeg and image.headers["content-type"] == "image/jpeg"
    missing = client.get("/gallery/3f1c2a9e-7b4d-4e8a-9c0f-2d6b5a1e8f70/image")
    assert missing.status_code == 404 and missing.json()["error"] == "item_not_found"


def test_without_store_crops_the_image_answers_404(make_client: Any) -> None:
    client = make_client(store_crops=False)
    response = client.post("/gallery", files=files_field(player_png(1)), data={"collection": "m", "labels": ["a"]})
    item_id = response.json()["items"][0]["id"]
    image = client.get(f"/gallery/{item_id}/image")
    assert image.status_code == 404
    assert image.json() == {
        "error": "image_not_stored",
        "detail": f"item {item_id} was registered without keeping its crop",
    }


def test_a_flipped_bit_in_the_vectors_fails_the_checksum(tmp_path: Path) -> None:
    import faiss

    index = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
    index.add_with_ids(unit(np.random.default_rng(7), 50), np.arange(50))
    header = SnapshotHeader("m", "t0", "fp", DIM, "flat")
    path = write_snapshot(tmp_path, header, index, set())
    read_snapshot(path, header, lambda kind: {})  # intact: loads
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the float data: faiss itself would load it silently
    path.write_bytes(bytes(data))
    with pytest.raises(SnapshotRejected, match="checksum"):
        read_snapshot(path, header, lambda kind: {})


def test_reindex_refuses_a_gallery_in_use_and_the_lock_goes_with_its_holder(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    from service.gallery.local.reindex import ReindexError, reindex

    gallery = LocalGallery.open(tmp_path / "gallery.sqlite3", 512, "old-model")
    with pytest.raises(ReindexError, match="in use by another process"):
        reindex(tmp_path, tiny_checkpoint, "cpu", progress=False)
    with pytest.raises(GalleryInUseError):
        LocalGallery.open(tmp_path / "gallery.sqlite3", 512, "old-model")
    gallery.close()
    assert reindex(tmp_path, tiny_checkpoint, "cpu", progress=False).items == 0  # empty gallery: just switched
