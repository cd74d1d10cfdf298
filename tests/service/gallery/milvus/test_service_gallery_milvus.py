"""What only the milvus backend has to get right: filter escaping, the stored model, chunking, an unreachable
Milvus (bounded 503, recovery) and two replicas racing on the same crop bytes.

The backend-independent contract is in test_service_gallery.py (parametrised over both backends).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from service.gallery import BackendUnavailableError, DuplicateCropError, NewItem
from service.gallery.milvus.backend import MilvusConfig, MilvusGallery, ModelMismatchError
from service.gallery.milvus.filters import UnsafeFilterValueError, literal
from tests.service.gallery.test_service_gallery import DIM, items, unit
from tests.support.milvus_server import MilvusLiteServer
from tests.support.polling import wait_until


@pytest.fixture(scope="module")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusLiteServer]:
    """One Milvus Lite gRPC server for the module (start-up takes seconds); tests use their own prefixes."""
    with MilvusLiteServer(tmp_path_factory.mktemp("milvus") / "data") as server:
        yield server


def embedded(path: Path, fingerprint: str = "fp", dim: int = DIM) -> MilvusGallery:
    return MilvusGallery.open(MilvusConfig(uri=str(path / "milvus.db")), dim, fingerprint)


@pytest.mark.parametrize(
    "value", ['a"b', "a\\b", 'x" or gallery != "', "it's", "tab\there", "new\nline", "\\", '"', "ünï 🙂"]
)
def test_literal_round_trips_through_the_milvus_lite_parser(value: str) -> None:
    from milvus_lite.search.filter.tokens import tokenize

    tokens = tokenize(f"gallery == {literal(value)}")
    assert [t.value for t in tokens if t.kind.name == "STRING"] == [value]


def test_control_characters_without_a_portable_escape_are_refused() -> None:
    with pytest.raises(UnsafeFilterValueError):
        literal("a\x01b")


def test_quotes_and_backslashes_in_names_never_reach_other_galleries(tmp_path: Path) -> None:
    gallery = embedded(tmp_path)
    rng = np.random.default_rng(0)
    try:
        tricky = ['a"b', "a\\", 'x" or gallery != "', "x"]
        for n, name in enumerate(tricky):
            gallery.add(name, items(unit(rng, 2), prefix=f"g{n}-"))
        for n, name in enumerate(tricky):
            assert gallery.has_collection(name) and gallery.size(name) == 2
            hits = gallery.search(name, unit(rng, 1), k=10)[0]
            assert {h.item.collection for h in hits} == {name} and len(hits) == 2
            assert all(h.item.label.startswith(f"g{n}-") for h in hits)
        assert gallery.drop_collection('x" or gallery != "') == 2
        assert sorted(c.name for c in gallery.collections()) == sorted(['a"b', "a\\", "x"])
        assert gallery.size("x") == 2
    finally:
        gallery.close()


def test_labels_and_metadata_keep_quotes_and_long_unicode(tmp_path: Path) -> None:
    gallery = embedded(tmp_path)
    try:
        label = "🙂" * 128  # 128 characters, 512 UTF-8 bytes: the longest label the routes accept
        meta = {"note": 'say "hi" \\ bye', "nested": {"k": [1, 2.5, None]}}
        added = gallery.add("m", [NewItem(label, meta, "s" * 64, unit(np.random.default_rng(1), 1)[0])])
        assert gallery.get(added[0].id) == added[0]
        assert added[0].label == label and added[0].metadata == meta
    finally:
        gallery.close()


def test_more_items_than_one_insert_chunk_are_registered_and_listed_in_order(tmp_path: Path) -> None:
    gallery = embedded(tmp_path)
    try:
        vectors = unit(np.random.default_rng(2), 600)
        added = gallery.add("big", items(vectors))
        assert gallery.size("big") == 600
        total, page = gallery.list_items("big", offset=590, limit=20)
        assert total == 600 and [p.label for p in page] == [f"p{i}" for i in range(590, 600)]
        hits = gallery.search("big", vectors[[0, 599]], k=1)
        assert [h[0].item.id for h in hits] == [added[0].id, added[599].id]
    finally:
        gallery.close()


def test_another_model_refuses_to_start_on_a_filled_gallery(tmp_path: Path) -> None:
    first = embedded(tmp_path, fingerprint="model-a")
    first.add("m", items(unit(np.random.default_rng(3), 2)))
    first.close()
    with pytest.raises(ModelMismatchError, match="model-b"):
        embedded(tmp_path, fingerprint="model-b")
    with pytest.raises(ModelMismatchError, match="dimensional"):
        embedded(tmp_path, fingerprint="model-a", dim=DIM * 2)
    again = embedded(tmp_path, fingerprint="model-a")  # the same model still opens, data intact
    assert again.size("m") == 2
    again.close()


def test_an_empty_gallery_takes_the_new_model(tmp_path: Path) -> None:
    embedded(tmp_path, fingerprint="model-a").close()
    second = embedded(tmp_path, fingerprint="model-b")
    second.add("m", items(unit(np.random.default_rng(4), 1)))
    second.close()
    with pytest.raises(ModelMismatchError):
        embedded(tmp_path, fingerprint="model-a")


def test_unreachable_milvus_gives_backend_unavailable_then_recovers(milvus_server: MilvusLiteServer) -> None:
    config = MilvusConfig(uri=milvus_server.uri, prefix="unavailable", timeout_s=1.0)
    gallery = MilvusGallery.open(config, DIM, "fp")
    rng = np.random.default_rng(5)
    vectors = unit(rng, 3)
    gallery.add("m", items(vectors))
    assert milvus_server.process is not None
    pid = milvus_server.process.pid
    os.kill(pid, signal.SIGSTOP)  # frozen, not gone: only the per-call deadline can end these calls
    try:
        assert not gallery.health().ok
        for call in (
            lambda: gallery.search("m", vectors[:1], 1),
            lambda: gallery.add("m", items(unit(rng, 1), start=10)),
            lambda: gallery.list_items(None, 0, 10),
            lambda: gallery.collections(),
        ):
            with pytest.raises(BackendUnavailableError) as err:
                call()
            assert err.value.status_code == 503 and err.value.code == "backend_unavailable"
    finally:
        os.kill(pid, signal.SIGCONT)
    milvus_server.kill()  # and now gone: connection refused, then a restart on the same port
    assert not gallery.health().ok
    with pytest.raises(BackendUnavailableError):
        gallery.size("m")
    milvus_server.start()
    wait_until(lambda: gallery.health().ok, "the gallery to reconnect to the restarted Milvus")
    assert gallery.size("m") == 3  # the client reconnected by itself
    assert gallery.search("m", vectors[1:2], 1)[0][0].item.label == "p1"
    assert gallery.health().ok
    gallery.close()


def test_two_replicas_racing_on_the_same_bytes_never_both_keep_them(milvus_server: MilvusLiteServer) -> None:
    config = MilvusConfig(uri=milvus_server.uri, prefix="race")
    a, b = MilvusGallery.open(config, DIM, "fp"), MilvusGallery.open(config, DIM, "fp")
    rng = np.random.default_rng(6)
    outcomes: dict[str, list[str]] = {"kept": [], "refused": []}
    lock = threading.Lock()
    rounds = 12
    vectors = unit(rng, rounds)

    def register(gallery: MilvusGallery, gate: threading.Barrier, item_index: int) -> None:
        gate.wait()
        try:
            got = gallery.add("m", items(vectors[item_index : item_index + 1], start=item_index))
            with lock:
                outcomes["kept"].append(got[0].id)
        except DuplicateCropError:
            with lock:
                outcomes["refused"].append(str(item_index))

    for r in range(rounds):
        gate = threading.Barrier(2)
        threads = [threading.Thread(target=register, args=(g, gate, r)) for g in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    try:
        stored = a.list_items("m", 0, 1000)[1]
        by_hash: dict[str, int] = {}
        for item in stored:
            by_hash[item.sha256] = by_hash.get(item.sha256, 0) + 1
        print(f"racing registrations: {len(outcomes['kept'])} kept, {len(outcomes['refused'])} refused (409)")
        assert max(by_hash.values()) == 1  # never the same bytes twice
        assert sorted(i.id for i in stored) == sorted(outcomes["kept"])  # every 201 is there
        assert len(outcomes["kept"]) + len(outcomes["refused"]) == 2 * rounds
    finally:
        a.close()
        b.close()


def test_a_replica_serving_another_checkpoint_refuses_to_start(tiny_checkpoint: Path, tmp_path: Path) -> None:
    import warnings

    from service.app import create_app
    from service.core.settings import Settings
    from tests.support.checkpoints import make_tiny_checkpoint
    from tests.support.images import files_field, player_png

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    def settings(checkpoint: Path) -> Settings:
        uri = str(tmp_path / "shared-milvus.db")
        return Settings(
            checkpoint=checkpoint, data_dir=tmp_path, device="cpu", gallery_backend="milvus", milvus_uri=uri
        )

    with TestClient(create_app(settings(tiny_checkpoint))) as client:
        data = {"collection": "m", "labels": ["p0"]}
        assert client.post("/gallery", files=files_field(player_png(0)), data=data).status_code == 201
    other = make_tiny_checkpoint(tmp_path / "other.safetensors", seed=1)
    with pytest.raises(ModelMismatchError, match="serves model"), TestClient(create_app(settings(other))):
        pass
    with TestClient(create_app(settings(tiny_checkpoint))) as client:  # the right model still starts
        assert client.get("/readyz").status_code == 200
