"""reid-fetch through the real download path: weight files served from a loopback HTTP server
(tests/support/file_server.py) under their upstream names, as the zoo's mirror.

The fault tests need no real weights: the files are synthetic torchreid state dicts (OSNet-x0.25 with random
weights and each entry's classifier size, saved the way torchreid saves them) and each zoo entry is pinned to its
synthetic file's hash for the test, so every check the real files go through (hash, classifier size, strict
import) runs here too, in any checkout. With ../shared/data, two more tests use the real torchreid files: their
pinned hashes, and one real fetch end to end.

Covered: success (checkpoint, provenance in the model card and in GET /info, reuse from the cache), a wrong hash,
a truncated download, a server error then a retry, an interrupted download resumed with a Range request, a server
that ignores ranges, a complete .part (416), a web page instead of the file, a concurrent fetch (lock), a file of
another model, offline (connection refused) from the CLI without a traceback.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import torch

from model.checkpoint import load_checkpoint, read_checkpoint_spec
from model.osnet import OSNET_ARCHITECTURES
from model.torchreid_import import load_torchreid_checkpoint, torchreid_name
from tests.conftest import REPO_ROOT, shared_file
from tests.support.file_server import Fault, FileServer
from tests.support.live_server import free_port
from training.zoo.download import part_path
from training.zoo.fetch import CACHE_ENV, MIRROR_ENV, FetchError, cache_dir, fetch_model
from training.zoo.registry import ZOO, ZooEntry

REAL_MARKET = ZOO["osnet_x0_25_market1501"]
REAL_MSMT17 = ZOO["osnet_x0_25_msmt17"]


class Interrupted(BaseException):
    """Stands in for Ctrl-C: a BaseException, so nothing on the way catches it as an ordinary error."""


def synthetic_torchreid_file(entry: ZooEntry, seed: int) -> bytes:
    """A torchreid-style weight file for ``entry``'s architecture and classifier size (random weights): the state
    dict under torchreid's names, saved with torch.save as the model zoo's files are (~2.5 MB for OSNet-x0.25)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = OSNET_ARCHITECTURES[entry.architecture](
            num_classes=entry.num_classes, neck="none", classifier_bias=True
        )
    state = {name: tensor for key, tensor in model.state_dict().items() if (name := torchreid_name(key)) is not None}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


MARKET_BYTES = synthetic_torchreid_file(REAL_MARKET, seed=1)
MSMT17_BYTES = synthetic_torchreid_file(REAL_MSMT17, seed=2)
# The entries as the tests see them: pinned to the synthetic files (name, file name and class count unchanged).
MARKET = dataclasses.replace(REAL_MARKET, sha256=hashlib.sha256(MARKET_BYTES).hexdigest())
MSMT17 = dataclasses.replace(REAL_MSMT17, sha256=hashlib.sha256(MSMT17_BYTES).hexdigest())


@pytest.fixture()
def market_bytes() -> bytes:
    return MARKET_BYTES


@pytest.fixture()
def msmt17_bytes() -> bytes:
    return MSMT17_BYTES


@pytest.fixture()
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FileServer]:
    """The two synthetic files under their upstream names, set as the zoo's mirror, the entries pinned to them."""
    monkeypatch.setitem(ZOO, MARKET.name, MARKET)
    monkeypatch.setitem(ZOO, MSMT17.name, MSMT17)
    with FileServer({MARKET.file_name: MARKET_BYTES, MSMT17.file_name: MSMT17_BYTES}) as srv:
        monkeypatch.setenv(MIRROR_ENV, srv.base_url)
        yield srv


def fetch(name: str, cache: Path, **kwargs: object) -> object:
    return fetch_model(name, cache=cache, retries=2, backoff_s=0.0, timeout_s=20.0, progress=False, **kwargs)


@pytest.mark.shared_data
def test_pinned_hashes_are_those_of_the_shared_files() -> None:
    assert hashlib.sha256(shared_file("osnet_x0_25_market1501.pth").read_bytes()).hexdigest() == REAL_MARKET.sha256
    assert hashlib.sha256(shared_file("osnet_x0_25_msmt17.pth").read_bytes()).hexdigest() == REAL_MSMT17.sha256


@pytest.mark.shared_data
def test_the_real_file_fetches_against_the_real_pin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = shared_file("osnet_x0_25_market1501.pth")
    with FileServer({REAL_MARKET.file_name: real.read_bytes()}) as srv:
        monkeypatch.setenv(MIRROR_ENV, srv.base_url)
        result = fetch(REAL_MARKET.name, tmp_path / "cache", out=tmp_path / "market.safetensors")
    assert result.provenance["sha256"] == REAL_MARKET.sha256  # type: ignore[attr-defined]
    model, spec = load_checkpoint(tmp_path / "market.safetensors")
    assert spec.train_meta["num_classes"] == 751
    reference = load_torchreid_checkpoint(real, arch="osnet_x0_25")
    crops = torch.rand(2, 3, 64, 32, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(model.embed(crops), reference.embed(crops))


def test_fetch_writes_a_checkpoint_with_provenance_then_reuses_it(
    server: FileServer, tmp_path: Path, market_bytes: bytes
) -> None:
    result = fetch(MARKET.name, tmp_path / "cache", out=tmp_path / "market.safetensors")
    assert result.downloaded and result.checkpoint == tmp_path / "market.safetensors"  # type: ignore[attr-defined]
    assert [(r.status, r.range, r.body_bytes) for r in server.requests] == [(200, None, len(market_bytes))]

    model, spec = load_checkpoint(tmp_path / "market.safetensors")
    card = spec.provenance
    assert card["name"] == MARKET.name and card["architecture"] == "osnet_x0_25"
    assert card["source_url"] == server.url(MARKET.file_name)
    assert card["sha256"] == MARKET.sha256 and card["sha256_pinned"] is True
    assert card["size_bytes"] == len(market_bytes)
    assert "MIT" in card["weights_licence"] and "research" in card["data_terms"]
    assert card["training_data"].startswith("Market-1501")
    assert datetime.fromisoformat(card["fetched_at"]).tzinfo is not None
    assert spec.train_meta["num_classes"] == 751

    # The served checkpoint embeds exactly like the file imported directly.
    (tmp_path / "direct.pth").write_bytes(market_bytes)
    reference = load_torchreid_checkpoint(tmp_path / "direct.pth", arch="osnet_x0_25")
    crops = torch.rand(2, 3, 64, 32, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(model.embed(crops), reference.embed(crops))

    # Fetched again: nothing is downloaded, the cached checkpoint and its provenance stay.
    again = fetch(MARKET.name, tmp_path / "cache", out=tmp_path / "market.safetensors")
    assert not again.downloaded and again.provenance["fetched_at"] == card["fetched_at"]  # type: ignore[attr-defined]
    # Into another file: converted from the cached download, still no request.
    other = fetch(MARKET.name, tmp_path / "cache", out=tmp_path / "again.safetensors")
    assert not other.downloaded and other.provenance["source_url"] == card["source_url"]  # type: ignore[attr-defined]
    assert len(server.requests) == 1


def test_info_shows_the_provenance(server: FileServer, tmp_path: Path) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    from service.app import create_app
    from service.core.settings import Settings

    result = fetch(MSMT17.name, tmp_path / "cache")
    checkpoint = result.checkpoint  # type: ignore[attr-defined]
    assert checkpoint == tmp_path / "cache" / "models" / f"{MSMT17.name}.safetensors"
    settings = Settings(checkpoint=checkpoint, data_dir=tmp_path / "data", device="cpu", warmup_batches=1)
    with TestClient(create_app(settings)) as client:
        info = client.get("/info").json()
    assert info["provenance"]["name"] == MSMT17.name
    assert info["provenance"]["sha256"] == MSMT17.sha256
    assert info["provenance"]["source_url"] == server.url(MSMT17.file_name)
    assert info["provenance"]["training_data"].startswith("MSMT17")


def test_wrong_hash_fails_and_leaves_nothing(server: FileServer, tmp_path: Path, msmt17_bytes: bytes) -> None:
    server.files[MARKET.file_name] = msmt17_bytes  # a weight file of the zoo, but not the pinned one
    out = tmp_path / "market.safetensors"
    with pytest.raises(FetchError, match=f"sha256 {MSMT17.sha256} is not the pinned {MARKET.sha256}"):
        fetch(MARKET.name, tmp_path / "cache", out=out)
    assert not out.exists()
    left = sorted(p.name for p in (tmp_path / "cache").rglob("*") if p.suffix != ".lock")
    assert left == ["downloads"]  # no download, no .part, no checkpoint


def test_truncated_download_gives_up_clearly_and_keeps_the_part(
    server: FileServer, tmp_path: Path, market_bytes: bytes
) -> None:
    at = len(market_bytes) // 3
    server.faults.extend(Fault("cut", at=at) for _ in range(3))  # every attempt ends at the same byte
    out = tmp_path / "market.safetensors"
    with pytest.raises(FetchError, match=rf"gave up after 3 attempts \(the connection ended after {at} of "):
        fetch(MARKET.name, tmp_path / "cache", out=out)
    assert not out.exists()
    raw = tmp_path / "cache" / "downloads" / MARKET.file_name
    assert not raw.exists() and part_path(raw).stat().st_size == at
    # Attempts 2 and 3 asked only for what was missing.
    assert [r.range for r in server.requests] == [None, f"bytes={at}-", f"bytes={at}-"]


def test_truncated_file_of_an_unpinned_model_fails_in_the_importer(
    server: FileServer, tmp_path: Path, market_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    unpinned = ZooEntry(**{**MARKET.__dict__, "name": "unpinned_market", "sha256": None})
    monkeypatch.setitem(ZOO, unpinned.name, unpinned)
    server.files[MARKET.file_name] = market_bytes[: len(market_bytes) // 2]  # complete answer, broken file
    out = tmp_path / "unpinned.safetensors"
    with pytest.raises(FetchError, match=r"is not usable as unpinned_market: .*not a loadable torch weight file"):
        fetch(unpinned.name, tmp_path / "cache", out=out)
    assert not out.exists() and not (tmp_path / "cache" / "downloads" / MARKET.file_name).exists()


def test_another_models_file_is_refused_when_no_hash_is_pinned(
    server: FileServer, tmp_path: Path, msmt17_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    unpinned = ZooEntry(**{**MARKET.__dict__, "name": "unpinned_market", "sha256": None})
    monkeypatch.setitem(ZOO, unpinned.name, unpinned)
    server.files[MARKET.file_name] = msmt17_bytes
    with pytest.raises(FetchError, match="classifier has 1041 classes, unpinned_market has 751"):
        fetch(unpinned.name, tmp_path / "cache", out=tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_server_error_then_retry(server: FileServer, tmp_path: Path) -> None:
    server.faults.append(Fault("status", status=503))
    result = fetch(MARKET.name, tmp_path / "cache")
    assert result.downloaded  # type: ignore[attr-defined]
    assert [r.status for r in server.requests] == [503, 200]


def test_client_error_is_not_retried(server: FileServer, tmp_path: Path) -> None:
    del server.files[MARKET.file_name]
    with pytest.raises(FetchError, match=r"HTTP 404"):
        fetch(MARKET.name, tmp_path / "cache")
    assert [r.status for r in server.requests] == [404]


def test_interrupted_download_resumes_with_a_range_request(
    server: FileServer, tmp_path: Path, market_bytes: bytes
) -> None:
    at = 300_000  # the server sends this much, then holds the connection open until `release`
    server.faults.append(Fault("hold", at=at))

    def interrupt(on_disk: int, total: int | None) -> None:
        if on_disk >= at:
            raise Interrupted  # Ctrl-C while the connection is still open (the server holds it)

    out = tmp_path / "market.safetensors"
    with pytest.raises(Interrupted):
        fetch(MARKET.name, tmp_path / "cache", out=out, on_chunk=interrupt)
    assert server.held.wait(timeout=30)  # the server did hold the connection open (not closed it) meanwhile
    server.release.set()
    raw = tmp_path / "cache" / "downloads" / MARKET.file_name
    assert part_path(raw).stat().st_size == at and not raw.exists() and not out.exists()
    assert part_path(raw).read_bytes() == market_bytes[:at]

    result = fetch(MARKET.name, tmp_path / "cache", out=out)
    assert result.downloaded and result.provenance["sha256"] == MARKET.sha256  # type: ignore[attr-defined]
    first, second = server.requests
    assert (first.range, first.status, first.body_bytes) == (None, 200, at)
    assert (second.range, second.status, second.body_bytes) == (f"bytes={at}-", 206, len(market_bytes) - at)
    assert not part_path(raw).exists() and raw.read_bytes() == market_bytes
    assert read_checkpoint_spec(out).provenance["size_bytes"] == len(market_bytes)


def test_server_ignoring_ranges_restarts_from_zero(server: FileServer, tmp_path: Path, market_bytes: bytes) -> None:
    raw = tmp_path / "cache" / "downloads" / MARKET.file_name
    raw.parent.mkdir(parents=True)
    part_path(raw).write_bytes(b"\0" * 1000)  # stale bytes that must not survive
    server.faults.append(Fault("ignore_range"))
    result = fetch(MARKET.name, tmp_path / "cache")
    assert result.provenance["sha256"] == MARKET.sha256  # type: ignore[attr-defined]
    assert [(r.range, r.status) for r in server.requests] == [("bytes=1000-", 200)]


def test_offline_names_the_url_and_the_manual_path_without_a_traceback(tmp_path: Path) -> None:
    mirror = f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused
    env = {**os.environ, MIRROR_ENV: mirror, CACHE_ENV: str(tmp_path / "cache"), "PYTHONPATH": str(REPO_ROOT)}
    code = "import sys; from training.cli import fetch_main; sys.exit(fetch_main(sys.argv[1:]))"
    out = tmp_path / "market.safetensors"
    args = [MARKET.name, "--out", str(out), "--retries", "1", "--quiet"]
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"{mirror}/{MARKET.file_name}" in proc.stderr
    assert f"reid-import-torchreid --arch osnet_x0_25 {MARKET.file_name}" in proc.stderr
    assert REAL_MARKET.sha256 in proc.stderr  # so the manual download can be checked too
    assert not out.exists()


def test_cache_folder_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert cache_dir() == tmp_path / "xdg" / "soccernet-reid"


def test_list_and_unknown_names(capsys: pytest.CaptureFixture[str]) -> None:
    from training.cli import fetch_main

    assert fetch_main(["--list"]) == 0
    listing = capsys.readouterr().out
    for name in ZOO:
        assert name in listing
    with pytest.raises(SystemExit) as exit_info:
        fetch_main(["osnet_x9"])
    assert exit_info.value.code == 2
    assert "known: osnet_x1_0_market1501" in capsys.readouterr().err


def test_a_complete_part_left_before_the_rename_is_finished_without_downloading(
    server: FileServer, tmp_path: Path, market_bytes: bytes
) -> None:
    raw = tmp_path / "cache" / "downloads" / MARKET.file_name
    raw.parent.mkdir(parents=True)
    part_path(raw).write_bytes(market_bytes)  # every byte arrived, then the process died before os.replace
    result = fetch(MARKET.name, tmp_path / "cache")
    assert result.provenance["sha256"] == MARKET.sha256  # type: ignore[attr-defined]
    assert [(r.range, r.status, r.body_bytes) for r in server.requests] == [(f"bytes={len(market_bytes)}-", 416, 0)]


def test_a_web_page_instead_of_the_file_is_refused(server: FileServer, tmp_path: Path) -> None:
    server.faults.append(Fault("html"))  # what Google Drive sends when its download quota is exhausted
    with pytest.raises(FetchError, match="answered with a web page, not the file"):
        fetch(MARKET.name, tmp_path / "cache")
    assert [r.status for r in server.requests] == [200]  # not retried: another attempt gets the same page


def test_a_second_fetch_of_the_same_file_is_refused_while_one_runs(server: FileServer, tmp_path: Path) -> None:
    import fcntl

    lock = tmp_path / "cache" / "downloads" / f"{MARKET.file_name}.lock"
    lock.parent.mkdir(parents=True)
    with lock.open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a concurrent reid-fetch would hold it
        with pytest.raises(FetchError, match="another reid-fetch is downloading osnet_x0_25_market1501"):
            fetch(MARKET.name, tmp_path / "cache")
    assert server.requests == []
    assert fetch(MARKET.name, tmp_path / "cache").downloaded  # type: ignore[attr-defined]
