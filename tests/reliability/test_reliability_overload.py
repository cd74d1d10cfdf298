"""Overload: measure the sustainable rate of 4-crop queries, then offer 11x that (asserting >= 10x really went out)
for 10 s (30 s with RUN_SLOW_TESTS=1) against a small bounded queue. Only 200 and 503-with-Retry-After come back, no
request is lost or times out, the server's peak memory (VmHWM) stays within a bound and the first queries after the
load succeed at once.

Why the production architecture (osnet_x1_0 at its real 256x128 input, random weights) instead of the tiny test
checkpoint: the server decodes every upload before the queue can refuse it, so with the tiny model a 503 costs
about half what a 200 does (flooded, it answered ~90 req/s in all against ~47 req/s sustainable) and 10x cannot even
be answered, let alone sent, on 2 shared cores. With a real model a query costs ~40 ms of inference per
crop while a refusal costs a few ms, so the server saturates at a few queries per second and 10x is a modest
absolute rate that one cheap open-loop client (tests/support/open_loop.py: body built once, keep-alive
connections, fixed arrival schedule) sends in full.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
import torch

from model import build_model, save_checkpoint
from tests.reliability.conftest import RUN_SLOW, ServerFactory, report
from tests.support.images import files_field, player_png
from tests.support.open_loop import prebuilt_multipart, run_open_loop

logger = logging.getLogger(__name__)

pytestmark = pytest.mark.slow

ARCHITECTURE = "osnet_x1_0"
INPUT_SIZE = (256, 128)
LOAD_SECONDS = 30.0 if RUN_SLOW else 10.0
CALIBRATION_WARMUP_SECONDS = 1.0
CALIBRATION_SECONDS = 4.0
CALIBRATION_CLIENTS = 4
CROPS_PER_REQUEST = 4
MAX_QUEUE = CALIBRATION_CLIENTS * CROPS_PER_REQUEST  # calibration never sees a 503; the overload always does
OFFER_MULTIPLE = 11.0  # scheduled; the assertion is on what really went out
REQUIRED_MULTIPLE = 10.0
CLIENT_PROCESSES = 1  # one process sends 11x with room to spare (see the peak_in_flight figure); raise if not
MAX_IN_FLIGHT = 64  # per client process; a due arrival finding this many unanswered is counted as not offered
RECOVERY_QUERIES = 5
RECOVERY_TIMEOUT_S = 10.0
# What the overload may add to the warmed-up server's peak RSS. The calibration already ran full batches, so the
# baseline VmHWM holds the model and one batch's activations. On top, the overload can hold at most MAX_QUEUE
# queued crops (16 x 96 KiB at 3x256x128) and CLIENT_PROCESSES * MAX_IN_FLIGHT = 64 requests in the server, each
# with a 67 KiB body and 4 decoded crops (< 1 MiB with Pillow's temporaries): < 70 MiB if all peaked together.
# 128 MiB leaves room for allocator slack; a queue or request buffer that grew with the offered load would blow it
# (11x for 30 s is ~2,000 requests, ~8,000 crops, ~750 MiB of pixels).
RSS_GROWTH_LIMIT = 128 * 1024 * 1024


def hwm_bytes(pid: int) -> int:
    """The process's peak resident set size so far (VmHWM)."""
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


def production_checkpoint(path: Path) -> Path:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model(ARCHITECTURE, num_classes=0, input_size=INPUT_SIZE).eval()
        save_checkpoint(model, path, threshold=0.5, metrics={"note": "untrained"}, train_meta={"purpose": "tests"})
    return path


async def calibrate(url: str, body: bytes, headers: dict[str, str]) -> float:
    """Completed requests per second with CALIBRATION_CLIENTS closed-loop clients (the queue never empties)."""
    start = time.monotonic()
    count_from = start + CALIBRATION_WARMUP_SECONDS
    stop_at = count_from + CALIBRATION_SECONDS
    done = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal done
        for _ in range(10_000):  # bounded; the clock ends it long before
            if time.monotonic() >= stop_at:
                return
            response = await client.post("/query", content=body, headers=headers)
            assert response.status_code == 200, response.text
            if count_from <= time.monotonic() < stop_at:
                done += 1

    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        await asyncio.gather(*(worker(client) for _ in range(CALIBRATION_CLIENTS)))
    return done / CALIBRATION_SECONDS


def test_ten_times_the_sustainable_rate_gets_only_200_or_503(make_server: ServerFactory, tmp_path: Path) -> None:
    checkpoint = production_checkpoint(tmp_path / f"{ARCHITECTURE}.safetensors")
    # torch, not the CPU default onnxruntime: this test is about admission control, and onnxruntime's 3x faster
    # forward would triple the 10x rate that one client process on a 2-core machine must offer (measured: it
    # reached only 6x of onnxruntime's sustainable rate, 148 of 264 req/s scheduled).
    server = make_server(
        REID_CHECKPOINT=str(checkpoint), REID_MAX_QUEUE=str(MAX_QUEUE), REID_LOG_LEVEL="WARNING", REID_RUNTIME="torch"
    )
    with server.client() as client:
        seeded = client.post(
            "/gallery",
            files=files_field(*(player_png(p) for p in range(4))),
            data={"collection": "load", "labels": [f"p{p}" for p in range(4)]},
        )
        assert seeded.status_code == 201, seeded.text
    assert server.process is not None
    pid = server.process.pid
    body, headers = prebuilt_multipart(
        files_field(*[player_png(4, 1)] * CROPS_PER_REQUEST), {"collection": "load", "top_k": 3}
    )

    sustainable = asyncio.run(calibrate(server.url, body, headers))
    assert sustainable > 0
    baseline_hwm = hwm_bytes(pid)
    baseline_rss = psutil.Process(pid).memory_info().rss
    sampler = RssSampler(pid)
    sampler.start()
    load = run_open_loop(
        server.url,
        "/query",
        body,
        headers,
        rate_rps=OFFER_MULTIPLE * sustainable,
        seconds=LOAD_SECONDS,
        processes=CLIENT_PROCESSES,
        max_in_flight=MAX_IN_FLIGHT,
    )
    # Recovery: the very next queries succeed, one after the other, with no retry.
    load_ended = time.monotonic()
    with server.client(timeout=RECOVERY_TIMEOUT_S) as client:
        after: list[int | str] = []
        for _ in range(RECOVERY_QUERIES):
            try:
                after.append(client.post("/query", content=body, headers=headers).status_code)
            except httpx.HTTPError as exc:
                after.append(repr(exc))
    recovery_s = time.monotonic() - load_ended
    sampler.done.set()
    sampler.join()
    peak_hwm = hwm_bytes(pid)
    offered_multiple = load.offered_rps / sustainable

    report(
        "overload",
        model=f"{ARCHITECTURE}@{INPUT_SIZE[0]}x{INPUT_SIZE[1]}",
        crops_per_request=CROPS_PER_REQUEST,
        max_queue_crops=MAX_QUEUE,
        sustainable_rps=round(sustainable, 2),
        scheduled_rps=round(OFFER_MULTIPLE * sustainable, 1),
        offered_rps=round(load.offered_rps, 1),
        offered_x=round(offered_multiple, 2),
        seconds=round(load.send_span_s, 2),
        scheduled=load.scheduled,
        sent=load.sent,
        not_offered=load.not_offered,
        answered=load.answered,
        statuses=dict(load.statuses),
        ok_rps=round(load.statuses["200"] / load.send_span_s, 2),
        max_latency_s=round(load.max_latency_s, 2),
        peak_in_flight=load.peak_in_flight,
        client_processes=load.processes,
        baseline_rss_mib=round(baseline_rss / 2**20, 1),
        peak_rss_sampled_mib=round(sampler.peak / 2**20, 1),
        baseline_hwm_mib=round(baseline_hwm / 2**20, 1),
        peak_hwm_mib=round(peak_hwm / 2**20, 1),
        hwm_growth_mib=round((peak_hwm - baseline_hwm) / 2**20, 1),
        hwm_growth_limit_mib=RSS_GROWTH_LIMIT // 2**20,
        rss_samples=sampler.samples,
        after_load=after,
        recovery_s=round(recovery_s, 2),
    )
    assert offered_multiple >= REQUIRED_MULTIPLE, (
        f"the load generator offered only {load.offered_rps:.1f} req/s = {offered_multiple:.2f}x the sustainable "
        f"{sustainable:.2f} req/s ({load.sent} sent, {load.not_offered} not offered at the in-flight bound "
        f"{MAX_IN_FLIGHT} x {CLIENT_PROCESSES} process(es)); raise CLIENT_PROCESSES or MAX_IN_FLIGHT"
    )
    assert not load.problems, load.problems[:5]
    assert set(load.statuses) <= {"200", "503"}, load.statuses
    assert load.answered == load.sent, "some requests got no answer"
    assert load.statuses["503"] > 0, "the load never reached the queue bound: not an overload"
    assert load.statuses["200"] > 0, "nothing was served during the overload"
    assert peak_hwm - baseline_hwm < RSS_GROWTH_LIMIT, (peak_hwm, baseline_hwm)
    assert after == [200] * RECOVERY_QUERIES, after
