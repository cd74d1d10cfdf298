"""Overload: measure the sustainable rate of 8-crop queries, then offer 10x that for 10 s (30 s with
REID_RUN_SLOW=1) with a small bounded queue. Only 200 and 503-with-Retry-After come back, no request is lost or
times out, the server's memory stays bounded (peak RSS reported) and the first request after the load succeeds.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil
import pytest

from tests.reliability.conftest import RUN_SLOW, ServerFactory, report
from tests.support.images import files_field, player_png

logger = logging.getLogger(__name__)

pytestmark = pytest.mark.slow

LOAD_SECONDS = 30.0 if RUN_SLOW else 10.0
CALIBRATION_SECONDS = 3.0
MAX_IN_FLIGHT = 64
CROPS_PER_REQUEST = 8
MAX_QUEUE = 4 * CROPS_PER_REQUEST
RSS_GROWTH_LIMIT = 512 * 1024 * 1024  # bytes over the warmed-up server's RSS


def hwm_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


class RssSampler(threading.Thread):
    def __init__(self, pid: int, period_s: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.period_s = period_s
        self.peak = 0
        self.samples = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            self.samples += 1
            self.done.wait(self.period_s)


async def one_query(client: httpx.AsyncClient, payload: bytes) -> httpx.Response:
    # Several crops per request: the server's work per request dwarfs the client's, so one Python client on a
    # shared 2-core machine can really offer 10x what the server sustains.
    files = files_field(*[payload] * CROPS_PER_REQUEST)
    return await client.post("/query", files=files, data={"collection": "load", "top_k": 3})


async def calibrate(url: str, payload: bytes) -> float:
    """Completed requests per second with 4 closed-loop clients."""
    done = 0
    stop_at = time.monotonic() + CALIBRATION_SECONDS

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal done
        while time.monotonic() < stop_at:
            response = await one_query(client, payload)
            assert response.status_code == 200, response.text
            done += 1

    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        await asyncio.gather(*(worker(client) for _ in range(4)))
    return done / CALIBRATION_SECONDS


async def overload(url: str, payload: bytes, rate: float) -> tuple[Counter[str], int, list[str]]:
    """Open-loop arrivals at ``rate``/s for LOAD_SECONDS, at most MAX_IN_FLIGHT at once."""
    statuses: Counter[str] = Counter()
    problems: list[str] = []
    slots = asyncio.Semaphore(MAX_IN_FLIGHT)
    limits = httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=MAX_IN_FLIGHT)
    tried = 0

    async def fire(client: httpx.AsyncClient) -> None:
        try:
            response = await one_query(client, payload)
        except httpx.HTTPError as exc:
            statuses["transport_error"] += 1
            problems.append(repr(exc))
            return
        finally:
            slots.release()
        statuses[str(response.status_code)] += 1
        if response.status_code == 503:
            body = response.json()
            if "Retry-After" not in response.headers or body.get("error") != "overloaded":
                problems.append(f"503 without Retry-After/overloaded: {response.headers} {body}")
        elif response.status_code != 200:
            problems.append(f"{response.status_code}: {response.text[:200]}")

    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        tasks = []
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < LOAD_SECONDS:
            due = int(elapsed * rate) + 1
            while tried < due and time.monotonic() - start < LOAD_SECONDS:
                await slots.acquire()
                tasks.append(asyncio.create_task(fire(client)))
                tried += 1
            await asyncio.sleep(0.001)
        await asyncio.gather(*tasks)
    return statuses, tried, problems


def test_ten_times_the_sustainable_rate_gets_only_200_or_503(make_server: ServerFactory) -> None:
    server = make_server(REID_MAX_QUEUE=str(MAX_QUEUE), REID_LOG_LEVEL="WARNING")
    payload = player_png(4, 1)
    with server.client() as client:
        seeded = client.post(
            "/gallery",
            files=files_field(*(player_png(p) for p in range(4))),
            data={"collection": "load", "labels": [f"p{p}" for p in range(4)]},
        )
        assert seeded.status_code == 201
    assert server.process is not None
    pid = server.process.pid
    rate = asyncio.run(calibrate(server.url, payload))
    baseline_rss = psutil.Process(pid).memory_info().rss
    sampler = RssSampler(pid)
    sampler.start()
    load_start = time.monotonic()
    statuses, tried, problems = asyncio.run(overload(server.url, payload, 10 * rate))
    load_seconds = time.monotonic() - load_start
    # Recovery: the very next requests succeed, with no retry.
    with server.client() as client:
        after = [one_query_sync(client, payload) for _ in range(5)]
    sampler.done.set()
    sampler.join()
    peak_hwm = hwm_bytes(pid)

    report(
        "overload",
        sustainable_rate_rps=round(rate, 1),
        offered_rate_rps=round(10 * rate, 1),
        seconds=round(load_seconds, 1),
        requests_tried=tried,
        achieved_rps=round(tried / load_seconds, 1),
        statuses=dict(statuses),
        baseline_rss_mib=round(baseline_rss / 2**20, 1),
        peak_rss_mib=round(sampler.peak / 2**20, 1),
        vm_hwm_mib=round(peak_hwm / 2**20, 1),
        rss_samples=sampler.samples,
        after_load=after,
    )
    assert not problems, problems[:5]
    assert set(statuses) <= {"200", "503"}, statuses
    assert sum(statuses.values()) == tried, "some requests got no answer"
    assert statuses["503"] > 0, "the load never reached the queue bound: not an overload"
    assert statuses["200"] > 0
    assert sampler.peak - baseline_rss < RSS_GROWTH_LIMIT
    assert after == [200] * 5


def one_query_sync(client: httpx.Client, payload: bytes) -> int:
    files = files_field(*[payload] * CROPS_PER_REQUEST)
    response = client.post("/query", files=files, data={"collection": "load", "top_k": 3})
    return response.status_code
