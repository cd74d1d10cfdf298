"""End to end through a real uvicorn process: register, query, delete, restarts (graceful and kill -9),
threshold behaviour, concurrent clients, limits over real sockets."""

from __future__ import annotations

import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.gated_app import InferenceGate, queue_depth
from tests.support.images import encode, files_field, noise_image, player_jpeg, player_png
from tests.support.live_server import LiveServer, server_env
from tests.support.open_loop import prebuilt_multipart
from tests.support.polling import wait_until

pytestmark = pytest.mark.slow

ServerFactory = Callable[..., LiveServer]


def register(client: httpx.Client, collection: str, players: list[int], variant: int = 0) -> list[dict[str, Any]]:
    response = client.post(
        "/gallery",
        files=files_field(*(player_png(p, variant) for p in players)),
        data={"collection": collection, "labels": [f"player-{p}" for p in players]},
    )
    assert response.status_code == 201, response.text
    return list(response.json()["items"])


def ask(client: httpx.Client, collection: str, payloads: list[bytes], **data: Any) -> dict[str, Any]:
    response = client.post("/query", files=files_field(*payloads), data={"collection": collection, **data})
    assert response.status_code == 200, response.text
    return dict(response.json())


def batch_counters(server: LiveServer) -> dict[str, float]:
    """Totals read from /metrics: inference batches run and crops embedded."""
    with server.client() as client:
        text = client.get("/metrics").text
    values = {}
    for line in text.splitlines():
        if line.startswith(("reid_inference_batch_size_count ", "reid_crops_embedded_total ")):
            name, value = line.split()
            values["batches" if "batch" in name else "crops"] = float(value)
    return values


def ranking(result: dict[str, Any]) -> list[list[tuple[str, str]]]:
    return [[(m["id"], m["label"]) for m in r["matches"]] for r in result["results"]]


def test_register_query_delete_and_restarts(make_server: ServerFactory) -> None:
    server = make_server()
    with server.client() as client:
        items = register(client, "match", list(range(6)))
        before = ask(client, "match", [player_png(3, 1), player_jpeg(5)], top_k=4)
        assert [r["matches"][0]["label"] for r in before["results"]] == ["player-3", "player-5"]
        assert client.delete(f"/gallery/{items[0]['id']}").status_code == 200
        before = ask(client, "match", [player_png(3, 1), player_jpeg(5)], top_k=4)
        listing = client.get("/gallery", params={"collection": "match"}).json()
    assert listing["total"] == 5

    server.restart()  # graceful: SIGTERM, lifespan shutdown
    with server.client() as client:
        assert client.get("/gallery", params={"collection": "match"}).json() == listing
        after = ask(client, "match", [player_png(3, 1), player_jpeg(5)], top_k=4)
        assert ranking(after) == ranking(before)
        for b, a in zip(before["results"], after["results"], strict=True):
            assert [m["score"] for m in a["matches"]] == pytest.approx([m["score"] for m in b["matches"]], abs=1e-5)
        late = register(client, "match", [7])

    server.restart(hard=True)  # kill -9 right after a 201: the committed row must still be there
    with server.client() as client:
        assert client.get(f"/gallery/{late[0]['id']}").status_code == 200
        assert client.get("/gallery", params={"collection": "match"}).json()["total"] == 6
        top = ask(client, "match", [player_png(7)], top_k=1)["results"][0]["matches"][0]
        assert top["id"] == late[0]["id"]
        assert client.delete("/collections/match").json()["deleted_items"] == 6
    server.restart()
    with server.client() as client:
        assert client.get("/collections").json() == {"collections": []}


# Fixed before looking at any score: an exact re-upload scores 1.0 (same pixels, same embedding), while the untrained
# tiny model puts any other image at ~0.98 of its nearest registered crop.
STRICT_THRESHOLD = 0.995


def test_person_absent_from_gallery_gets_no_match(shared_server: LiveServer) -> None:
    with shared_server.client() as client:
        register(client, "threshold", [0, 1, 2, 3])
        stranger = encode(noise_image(11), "JPEG")
        decided = ask(client, "threshold", [player_png(2), stranger], threshold=STRICT_THRESHOLD)["results"]
    assert decided[0]["matches"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert decided[0]["match"] == "player-2"
    assert decided[1]["match"] is None and decided[1]["matches"]  # ranked candidates, but nobody close enough


def test_concurrent_clients_get_the_sequential_results(shared_server: LiveServer, shared_gate: InferenceGate) -> None:
    with shared_server.client() as client:
        register(client, "crowd", list(range(10)))
    queries = [[player_png(p, 1)] if p % 2 else [player_jpeg(p), player_png((p + 3) % 10, 2)] for p in range(12)]
    with shared_server.client() as client:
        sequential = [ask(client, "crowd", q, top_k=5) for q in queries]

    before = batch_counters(shared_server)
    crops = sum(len(q) for q in queries)
    # Hold the model with a one-crop plug so that all twelve requests are queued together when it resumes.
    shared_gate.arm()

    def one(q: list[bytes]) -> dict[str, Any]:
        with shared_server.client() as c:
            return ask(c, "crowd", q, top_k=5)

    with ThreadPoolExecutor(len(queries) + 1) as pool:
        plug = pool.submit(one, [player_png(0)])
        shared_gate.wait_entered()
        released = False
        try:
            pending = [pool.submit(one, q) for q in queries]
            with shared_server.client() as client:
                wait_until(lambda: queue_depth(client) >= crops, f"{crops} crops queued")
                assert queue_depth(client) == crops
            shared_gate.release()
            released = True
        finally:
            if not released:  # never leave the module's shared server stuck at the gate
                shared_gate.release()
        concurrent = [future.result() for future in pending]
        plug.result()
    for seq, conc in zip(sequential, concurrent, strict=True):
        assert ranking(conc) == ranking(seq)
        for s, c in zip(seq["results"], conc["results"], strict=True):
            assert c["match"] == s["match"]
            assert [m["score"] for m in c["matches"]] == pytest.approx([m["score"] for m in s["matches"]], abs=1e-4)
    after = batch_counters(shared_server)
    batches = after["batches"] - before["batches"] - 1  # less the plug's batch
    embedded = after["crops"] - before["crops"] - 1
    max_batch = int(shared_server.env["REID_MAX_BATCH_SIZE"])
    # Every crop went through the model exactly once, in full batches: concurrent requests share batches.
    assert embedded == crops
    assert batches == -(-crops // max_batch)
    mean_batch = embedded / batches
    assert mean_batch > 1
    print(
        f"{len(queries)} concurrent requests, {crops} crops -> {batches:.0f} inference batches (mean {mean_batch:.1f})"
    )


def metric(server: LiveServer, name: str) -> float:
    """One unlabelled value from /metrics (0 when absent)."""
    with server.client() as client:
        for line in client.get("/metrics").text.splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[1])
    return 0.0


def send_and_hold(server: LiveServer, path: str, body: bytes, headers: dict[str, str]) -> socket.socket:
    """Send a whole HTTP request over a raw socket and keep the connection open without reading the answer:
    a client that the test can make give up (close) at a moment of its choosing."""
    sock = socket.create_connection((server.host, server.port), timeout=60)
    head = [f"POST {path} HTTP/1.1", f"Host: {server.host}:{server.port}", f"Content-Length: {len(body)}"]
    head += [f"{key}: {value}" for key, value in headers.items()]
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    return sock


def test_clients_that_give_up_have_their_crops_dropped(shared_server: LiveServer, shared_gate: InferenceGate) -> None:
    """Clients that disconnect while their crops wait in the queue: those crops are dropped, never embedded
    (reid_crops_embedded_total counts only the crops of clients still waiting), and the others get their answers.

    Order from events only: the model is held at the gate with the plug's batch; the quitters' requests are queued
    (queue depth), then closed, and the server has noticed (reid_abandoned_requests_total) before the patient
    clients queue theirs (depth again) and the gate opens.
    """
    with shared_server.client() as client:
        register(client, "impatient", [0, 1, 2])
    payload = [player_png(p) for p in (0, 1, 2, 1, 0, 2, 1, 0)]  # 8 crops: one full batch of the test server
    body, headers = prebuilt_multipart(files_field(*payload), {"collection": "impatient", "top_k": 1})
    quitters_count, patient_count = 4, 4

    def patient() -> dict[str, Any]:
        with shared_server.client() as c:
            response = c.post("/query", content=body, headers=headers)
            assert response.status_code == 200, response.text
            return dict(response.json())

    crops_before = metric(shared_server, "reid_crops_embedded_total")
    abandoned_before = metric(shared_server, "reid_abandoned_requests_total")
    shared_gate.arm()
    with ThreadPoolExecutor(patient_count + 1) as pool, shared_server.client() as client:
        plug = pool.submit(patient)
        shared_gate.wait_entered()
        released = False
        try:
            quitters = [send_and_hold(shared_server, "/query", body, headers) for _ in range(quitters_count)]
            wait_until(lambda: queue_depth(client) == 8 * quitters_count, "the quitters' crops queued")
            for sock in quitters:
                sock.close()  # gives up: the server sees the connection end while the crops are still queued
            wait_until(
                lambda: metric(shared_server, "reid_abandoned_requests_total") - abandoned_before == quitters_count,
                "the server noticed every quitter",
            )
            stayers = [pool.submit(patient) for _ in range(patient_count)]
            wait_until(lambda: queue_depth(client) == 8 * (quitters_count + patient_count), "the patient crops queued")
            shared_gate.release()
            released = True
        finally:
            if not released:  # never leave the module's shared server stuck at the gate
                shared_gate.release()
        results = [f.result() for f in [plug, *stayers]]
    for result in results:
        assert [r["match"] for r in result["results"]] == [f"player-{p}" for p in (0, 1, 2, 1, 0, 2, 1, 0)]
    embedded = metric(shared_server, "reid_crops_embedded_total") - crops_before
    # The plug's batch and the patient clients' crops; none of the 32 crops whose clients had gone.
    assert embedded == 8 * (1 + patient_count)
    assert shared_server.running


def test_limits_over_real_sockets(make_server: ServerFactory) -> None:
    server = make_server(REID_MAX_UPLOAD_BYTES="200000", REID_MAX_QUEUE="2", REID_API_KEY="k")
    headers = {"X-API-Key": "k"}
    with server.client(headers=headers) as client:
        big = client.post("/gallery", files=files_field(b"\0" * 300_000), data={"collection": "c", "labels": ["a"]})
        assert big.status_code == 413 and big.json()["error"] == "payload_too_large"
        crowded = client.post(
            "/gallery",
            files=files_field(*(player_png(i) for i in range(3))),
            data={"collection": "c", "labels": ["a", "b", "c"]},
        )
        assert crowded.status_code == 503 and crowded.json()["error"] == "overloaded"
        assert crowded.headers["Retry-After"] == "1"
        assert client.get("/collections").json() == {"collections": []}
        assert register(client, "c", [1, 2])[0]["label"] == "player-1"
    with server.client() as anonymous:
        assert anonymous.get("/collections").status_code == 401
        assert anonymous.get("/readyz").status_code == 200
    assert server.running


def test_reid_serve_cli_serves_with_env_settings(tiny_checkpoint: Path, tmp_path: Path) -> None:
    env = server_env(tiny_checkpoint, tmp_path / "cli-data", REID_THRESHOLD="0.25")
    cli = LiveServer(env, use_cli=True, log_path=tmp_path / "cli.log")
    assert Path(cli.command()[0]).name == "reid-serve"  # the console script itself, not python -m uvicorn
    with cli as server, server.client() as client:
        info = client.get("/info").json()
        assert (info["threshold"], info["threshold_source"]) == (0.25, "setting")
        # The default on a CPU: onnxruntime, said in /info and in the start-up log.
        assert info["runtime"] == "onnxruntime"
        register(client, "cli", [4])
    assert (tmp_path / "cli-data" / "gallery.sqlite3").is_file()
    assert "runtime onnxruntime (auto on CPU" in server.logs()
