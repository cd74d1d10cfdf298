"""Crash safety: kill -9 the server while 8 clients register crops, restart it on the same data dir, and check
that every acknowledged crop is there and queryable and that no request is visible half-written.

Each request carries 1-3 crops with unique labels and metadata {"req": <request id>, "n": <crops in it>}, so
after a restart every stored row can be traced to its request: a request is either complete or absent.
Requests in flight at the kill may have committed (complete) or not (absent); never partially.
"""

from __future__ import annotations

import json
import logging
import random
import signal
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.reliability.conftest import RUN_SLOW, ServerFactory, report
from tests.support.images import encode
from tests.support.live_server import LiveServer

logger = logging.getLogger(__name__)

pytestmark = pytest.mark.slow

COLLECTION = "crash"
CLIENTS = 8
MAX_REQUESTS_PER_CLIENT = 150  # bound per round, whatever happens
ROUND_TIME_LIMIT_S = 60.0
# ("acked", N): kill once N requests of this round were acknowledged; ("delay", s): kill s seconds after the first.
KILL_POINTS: list[tuple[str, float]] = [("acked", 5), ("acked", 30), ("delay", 1.7)]
if RUN_SLOW:
    KILL_POINTS += [("acked", 1), ("delay", 0.4), ("acked", 60), ("delay", 3.1), ("acked", 17)]


def crop_bytes(seed: int) -> bytes:
    """A distinct crop per seed: a random 8x4 colour grid blown up to 128x64 (h x w), as PNG."""
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 256, size=(8, 4, 3), dtype=np.uint8)
    return encode(Image.fromarray(grid).resize((64, 128), Image.Resampling.NEAREST), "PNG")


@dataclass
class Ledger:
    """What the clients sent and what the server acknowledged, across all rounds."""

    # A condition (usable as the lock): notified on every acknowledgement and whenever a client stops.
    lock: threading.Condition = field(default_factory=threading.Condition)
    clients_running: int = 0
    sent: dict[str, int] = field(default_factory=dict)  # request id -> crops in it
    acked: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # request id -> returned items
    seeds: dict[str, int] = field(default_factory=dict)  # label -> image seed
    unanswered: int = 0
    errors: list[str] = field(default_factory=list)


def client_loop(server_url: str, round_no: int, client_no: int, ledger: Ledger, stop: threading.Event) -> None:
    try:
        _send_requests(server_url, round_no, client_no, ledger, stop)
    finally:
        with ledger.lock:
            ledger.clients_running -= 1
            ledger.lock.notify_all()


def _send_requests(server_url: str, round_no: int, client_no: int, ledger: Ledger, stop: threading.Event) -> None:
    rng = random.Random(round_no * 100 + client_no)
    deadline = time.monotonic() + ROUND_TIME_LIMIT_S
    with httpx.Client(base_url=server_url, timeout=30.0) as client:
        for seq in range(MAX_REQUESTS_PER_CLIENT):
            if stop.is_set() or time.monotonic() > deadline:
                return
            req = f"r{round_no}c{client_no}s{seq}"
            count = rng.randint(1, 3)
            labels = [f"{req}i{k}" for k in range(count)]
            seeds = [hash((round_no, client_no, seq, k)) & 0x7FFFFFFF for k in range(count)]
            with ledger.lock:
                ledger.sent[req] = count
                ledger.seeds.update(zip(labels, seeds, strict=True))
            files = [
                ("files", (f"{label}.png", crop_bytes(s), "image/png")) for label, s in zip(labels, seeds, strict=True)
            ]
            data = {
                "collection": COLLECTION,
                "labels": labels,
                "metadata": [json.dumps({"req": req, "n": count, "k": k}) for k in range(count)],
            }
            try:
                response = client.post("/gallery", files=files, data=data)
            except httpx.HTTPError:
                with ledger.lock:
                    ledger.unanswered += 1
                return  # the server is gone: this request's fate is decided by what was committed
            if response.status_code != 201:
                with ledger.lock:
                    ledger.errors.append(f"{req}: {response.status_code} {response.text[:200]}")
                return
            with ledger.lock:
                ledger.acked[req] = response.json()["items"]
                ledger.lock.notify_all()


def run_round(
    server: LiveServer, round_no: int, kill_point: tuple[str, float], ledger: Ledger
) -> tuple[int, int | None]:
    """Load the server with 8 clients, kill -9 it at the kill point.

    Returns (requests acked in this round, the process's exit status: -9 when it was running and died by SIGKILL).
    """
    before = len(ledger.acked)
    stop = threading.Event()
    threads = [
        threading.Thread(target=client_loop, args=(server.url, round_no, c, ledger, stop), daemon=True)
        for c in range(CLIENTS)
    ]
    with ledger.lock:
        ledger.clients_running = len(threads)
    for thread in threads:
        thread.start()
    kind, value = kill_point
    with ledger.lock:
        if kind == "acked":
            # Woken by each acknowledgement (and by clients that stop): no polling.
            ledger.lock.wait_for(
                lambda: len(ledger.acked) - before >= value or ledger.clients_running == 0, ROUND_TIME_LIMIT_S
            )
        else:
            # A kill at a chosen moment of the load, by design: ``value`` seconds after the round's first
            # acknowledgement (so the server is loaded and has committed work); ends early only if every client
            # has stopped.
            ledger.lock.wait_for(lambda: len(ledger.acked) > before or ledger.clients_running == 0, ROUND_TIME_LIMIT_S)
            ledger.lock.wait_for(lambda: ledger.clients_running == 0, value)
    status = server.kill()
    stop.set()
    for thread in threads:
        thread.join(40)
        assert not thread.is_alive()
    return len(ledger.acked) - before, status


def fetch_all_rows(client: httpx.Client) -> tuple[int, list[dict[str, Any]]]:
    rows: list[dict[str, Any]] = []
    total = -1
    while True:
        page = client.get("/gallery", params={"collection": COLLECTION, "offset": len(rows), "limit": 1000})
        assert page.status_code == 200, page.text
        body = page.json()
        total = body["total"]
        rows.extend(body["items"])
        if not body["items"] or len(rows) >= total:
            return total, rows


def verify(server: LiveServer, ledger: Ledger) -> dict[str, int]:
    """All acknowledged crops present and queryable; every request all-or-nothing. Returns figures."""
    with server.client() as client:
        total, rows = fetch_all_rows(client)
        assert total == len(rows), f"GET /gallery says total={total} but pages hold {len(rows)} rows"
        assert len({r["id"] for r in rows}) == len(rows), "duplicate ids in the listing"
        collections = {c["name"]: c["size"] for c in client.get("/collections").json()["collections"]}
        assert collections.get(COLLECTION, 0) == total

        by_request: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            by_request[row["metadata"]["req"]].append(row)
        partial = {
            req: (len(items), items[0]["metadata"]["n"])
            for req, items in by_request.items()
            if len(items) != items[0]["metadata"]["n"] or len({i["metadata"]["k"] for i in items}) != len(items)
        }
        assert not partial, f"half-written requests visible: {partial}"
        complete = len(by_request) - len(partial)
        unknown = set(by_request) - set(ledger.sent)
        assert not unknown, f"rows from requests nobody sent: {unknown}"

        stored = {r["id"]: r for r in rows}
        acked_items = [item for items in ledger.acked.values() for item in items]
        lost = [item for item in acked_items if item["id"] not in stored]
        assert not lost, f"{len(lost)} acknowledged crops lost: {lost[:5]}"
        for item in acked_items:
            assert stored[item["id"]]["label"] == item["label"]
            single = client.get(f"/gallery/{item['id']}")
            assert single.status_code == 200 and single.json()["label"] == item["label"], single.text

        # Each acknowledged crop, queried with its own image, comes back top-1 with score ~1.
        for start in range(0, len(acked_items), 16):
            chunk = acked_items[start : start + 16]
            files = [("files", ("q.png", crop_bytes(ledger.seeds[i["label"]]), "image/png")) for i in chunk]
            answer = client.post("/query", files=files, data={"collection": COLLECTION, "top_k": 3})
            assert answer.status_code == 200, answer.text
            for item, result in zip(chunk, answer.json()["results"], strict=True):
                top = result["matches"][0]
                assert top["id"] == item["id"] and top["score"] > 0.999, (item, result["matches"])
        committed_unacked = len(set(by_request) - set(ledger.acked))
    return {
        "rows": total,
        "acked_crops": len(acked_items),
        "acked_crops_found": sum(item["id"] in stored for item in acked_items),
        "complete_requests": complete,
        "partial_requests": len(partial),
        "committed_unacked_requests": committed_unacked,
    }


def test_kill_9_while_registering_loses_nothing(make_server: ServerFactory) -> None:
    server = make_server(REID_LOG_LEVEL="WARNING")
    ledger = Ledger()
    statuses: list[int | None] = []
    acked_per_round: list[int] = []
    figures: dict[str, int] = {}
    for round_no, kill_point in enumerate(KILL_POINTS):
        acked_now, status = run_round(server, round_no, kill_point, ledger)
        statuses.append(status)
        acked_per_round.append(acked_now)
        assert not ledger.errors, ledger.errors[:5]
        server.start()  # same port, same data dir
        figures = verify(server, ledger)
        report(
            "crash round",
            round=round_no,
            kill_point=f"{kill_point[0]}={kill_point[1]}",
            acked_requests_this_round=acked_now,
            exit_status=status,
            **figures,
        )
    # Every round really killed a live, loaded server: SIGKILL was what ended it, after it had acknowledged work.
    kills = sum(status == -signal.SIGKILL for status in statuses)
    assert kills == len(KILL_POINTS), statuses
    # Each round, timed ones included, had acknowledged work when the kill came (at least its kill point's count).
    for (kind, value), acked in zip(KILL_POINTS, acked_per_round, strict=True):
        assert acked >= (value if kind == "acked" else 1), (KILL_POINTS, acked_per_round)
    crops_lost = figures["acked_crops"] - figures["acked_crops_found"]
    report(
        "crash safety",
        kills_survived=kills,
        requests_tried=len(ledger.sent),
        requests_acked=len(ledger.acked),
        requests_unanswered_at_kill=ledger.unanswered,
        crops_acked=figures["acked_crops"],
        crops_lost=crops_lost,
        rows_after_last_restart=figures["rows"],
        complete_requests=figures["complete_requests"],
        partial_requests=figures["partial_requests"],
    )
