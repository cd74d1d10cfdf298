"""What only the milvus backend has to get right: filter escaping, the model claim, chunking, an unreachable Milvus
(bounded 503, recovery), replicas racing on the same crop bytes, drops racing registrations, and what another
replica sees when (max_staleness_ms).

Races, generations and staleness run on the session's Milvus standalone server (tests/conftest.py), which decides
where it and Milvus Lite differ. The backend-independent contract is in test_service_gallery.py.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.gallery import BackendUnavailableError, DuplicateCropError, NewItem
from service.gallery.milvus.backend import MilvusConfig, MilvusGallery, ModelMismatchError
from service.gallery.milvus.filters import UnsafeFilterValueError, literal
from tests.service.gallery.test_service_gallery import DIM, items, unit
from tests.support.milvus_server import MilvusLiteServer, PrefixPool
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


def test_an_empty_gallery_keeps_its_model_claim(tmp_path: Path) -> None:
    # A claim is not withdrawn when the galleries empty: a replica of the first model may still be serving on it
    # (the reason two models starting together cannot both pass). Another model takes another prefix.
    embedded(tmp_path, fingerprint="model-a").close()
    with pytest.raises(ModelMismatchError, match="model-a"):
        embedded(tmp_path, fingerprint="model-b")
    embedded(tmp_path, fingerprint="model-a").close()  # the failed start left no claim of model-b behind


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


@pytest.fixture()
def server_prefix(milvus_prefixes: PrefixPool) -> Iterator[str]:
    """A collection prefix on the session's standalone server, empty, wiped after the test."""
    prefix = milvus_prefixes.take(DIM)
    yield prefix
    milvus_prefixes.give_back(prefix)


def on_server(pool: PrefixPool, prefix: str, fingerprint: str = "fp", **config: Any) -> MilvusGallery:
    return MilvusGallery.open(MilvusConfig(uri=pool.uri, prefix=prefix, **config), DIM, fingerprint)


def race(attempts: list[tuple[MilvusGallery, list[NewItem]]]) -> dict[str, list[str]]:
    """Run the registrations at the same moment (a barrier); the ids their 201s and 409s named."""
    gate = threading.Barrier(len(attempts))
    named: dict[str, list[str]] = {"201": [], "409": []}
    lock = threading.Lock()

    def register(gallery: MilvusGallery, new: list[NewItem]) -> None:
        gate.wait()
        try:
            got = gallery.add("m", new)
            with lock:
                named["201"].extend(i.id for i in got)
        except DuplicateCropError as exc:
            with lock:
                named["409"].extend(str(x) for _, x in exc.duplicates)

    threads = [threading.Thread(target=register, args=pair) for pair in attempts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return named


def test_two_replicas_racing_on_the_same_bytes_converge_on_one_item(
    milvus_prefixes: PrefixPool, server_prefix: str
) -> None:
    """50 rounds: both replicas register the same bytes at the same moment (a barrier). After every round exactly
    one item holds them, every id a 201 or a 409 named exists, and every 201 of the round named that item."""
    a, b = on_server(milvus_prefixes, server_prefix), on_server(milvus_prefixes, server_prefix)
    checker = on_server(milvus_prefixes, server_prefix, max_staleness_ms=0)  # Strong reads: sees every ack
    rng = np.random.default_rng(6)
    rounds = 50
    vectors = unit(rng, rounds)
    counts = {"201": 0, "409": 0}
    try:
        for r in range(rounds):
            # Same bytes (the sha256), different labels: the two requests are not identical.
            sha = f"{r:064x}"
            named = race([(a, [NewItem(f"a{r}", {}, sha, vectors[r])]), (b, [NewItem(f"b{r}", {}, sha, vectors[r])])])
            assert len(named["201"]) + len(named["409"]) == 2 and named["201"], named
            stored = checker._rows_by_id(named["201"] + named["409"], ["id", "sha256"])
            assert set(stored) == set(named["201"]) == set(named["201"] + named["409"])  # one id, and it exists
            assert all(checker.get(i) is not None for i in named["201"] + named["409"])
            counts["201"] += len(named["201"])
            counts["409"] += len(named["409"])
        assert checker.size("m") == rounds  # exactly one item per round
        total, listed = checker.list_items("m", 0, 1000)
        assert total == rounds and len({i.sha256 for i in listed}) == rounds
        print(f"\n{rounds} racing rounds on the standalone server: {counts['201']} answers 201, {counts['409']} 409")
    finally:
        for g in (a, b, checker):
            g.close()


def test_a_registration_that_loses_its_race_with_a_drop_never_resurfaces(
    milvus_prefixes: PrefixPool, server_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = on_server(milvus_prefixes, server_prefix), on_server(milvus_prefixes, server_prefix, max_staleness_ms=0)
    rng = np.random.default_rng(7)
    try:
        first = a.add("m", items(unit(rng, 2)))
        before_drop = a._state("m")
        assert b.drop_collection("m") == 2
        # A registration through A that read the gallery before the drop and writes after it (the interleaving
        # no lock can prevent across replicas): its row lands in the dropped generation.
        monkeypatch.setattr(a, "_state", lambda name, strong=False: before_drop)
        late = a.add("m", items(unit(rng, 1), prefix="l"))
        monkeypatch.undo()
        again = b.add("m", items(unit(rng, 3), prefix="n"))  # the name is used again
        for gallery in (a, b):
            assert gallery.size("m") == 3
            assert gallery.get(late[0].id) is None and gallery.get(first[0].id) is None
            assert [i.label for i in gallery.list_items("m", 0, 10)[1]] == ["n0", "n1", "n2"]
            hits = gallery.search("m", unit(rng, 1), k=10)[0]
            assert {h.item.id for h in hits} == {i.id for i in again}
        assert {c.name: c.size for c in b.collections()} == {"m": 3}
        # The next drop of the name also deletes the late row for good.
        assert b.drop_collection("m") == 3
        assert not b._rows_by_id([late[0].id], ["id"])
    finally:
        a.close()
        b.close()


def test_after_a_drop_returns_no_replica_registers_into_the_dropped_generation(
    milvus_prefixes: PrefixPool, server_prefix: str
) -> None:
    # A 10 s bound: B keeps the gallery's state for 5 s, longer than the drop takes without its wait.
    a = on_server(milvus_prefixes, server_prefix, max_staleness_ms=10_000)
    b = on_server(milvus_prefixes, server_prefix, max_staleness_ms=10_000)
    checker = on_server(milvus_prefixes, server_prefix, max_staleness_ms=0)
    rng = np.random.default_rng(8)
    try:
        a.add("m", items(unit(rng, 2)))
        wait_until(lambda: b.has_collection("m"), "replica B sees the gallery")  # B holds it in its cache now
        assert a.drop_collection("m") == 2
        added = b.add("m", items(unit(rng, 1), prefix="q"))  # right after the drop answered, through B
        assert checker.get(added[0].id) == added[0]
        assert checker.size("m") == 1
    finally:
        for g in (a, b, checker):
            g.close()


def test_reads_see_own_writes_at_once_and_other_replicas_within_the_staleness_bound(
    milvus_prefixes: PrefixPool, server_prefix: str
) -> None:
    a = on_server(milvus_prefixes, server_prefix)
    b = on_server(milvus_prefixes, server_prefix)
    strong = on_server(milvus_prefixes, server_prefix, max_staleness_ms=0)
    rng = np.random.default_rng(9)
    try:
        vectors = unit(rng, 3)
        added = a.add("m", items(vectors))
        # Own writes: at once, on every read path.
        assert a.size("m") == 3 and a.get(added[1].id) == added[1]
        assert a.search("m", vectors[[1]], k=1)[0][0].item.id == added[1].id
        # Another replica reading Strong: at once.
        assert strong.get(added[1].id) == added[1] and strong.size("m") == 3
        # Another replica at the default bound: by then (the deadline only turns a hang into a failure).
        wait_until(lambda: b.has_collection("m") and b.size("m") == 3, "replica B sees A's registration")
        gone = a.delete(added[0].id)
        assert gone is not None and a.get(added[0].id) is None and a.size("m") == 2  # own delete, at once
        assert strong.get(added[0].id) is None
    finally:
        for g in (a, b, strong):
            g.close()


def start_model(
    pool: PrefixPool,
    prefix: str,
    fingerprint: str,
    gate: threading.Barrier,
    opened: list[MilvusGallery],
    refused: list[str],
) -> None:
    gate.wait()
    try:
        opened.append(on_server(pool, prefix, fingerprint=fingerprint))  # list.append is atomic
    except ModelMismatchError:
        refused.append(fingerprint)


def test_two_models_starting_together_never_both_pass(milvus_prefixes: PrefixPool) -> None:
    for round_ in range(5):
        prefix = milvus_prefixes.take(DIM)
        gate = threading.Barrier(2)
        opened: list[MilvusGallery] = []
        refused: list[str] = []
        threads = [
            threading.Thread(
                target=start_model, args=(milvus_prefixes, prefix, f"model-{m}-{round_}", gate, opened, refused)
            )
            for m in "ab"
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        try:
            assert len(opened) <= 1 and len(opened) + len(refused) == 2, (opened, refused)
        finally:
            for g in opened:
                g.close()
            milvus_prefixes.give_back(prefix)


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
