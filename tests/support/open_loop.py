"""A cheap open-loop HTTP load generator for overload tests: fixed arrival rate, bounded in-flight, many processes.

    body, headers = prebuilt_multipart(files=files_field(png, png), data={"collection": "c"})
    result = run_open_loop(url, "/query", body, headers, rate_rps=400.0, seconds=10.0, processes=2, max_in_flight=256)
    result.sent, result.not_offered, result.statuses, result.offered_rps

Each request body is built once and the very same bytes are posted again and again over keep-alive connections,
so a client spends well under a millisecond per request instead of re-encoding a multipart body. Arrivals are open loop:
request i is due at ``start + i / rate`` whatever happened to the earlier ones. When ``max_in_flight`` requests
are already waiting for an answer, a due arrival is not sent and is counted in ``not_offered`` (so client memory
stays bounded and the shortfall is reported, never hidden). Every response is checked as it arrives: status
counted, 503s checked for Retry-After and {"error": "overloaded"}.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import queue
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

logger = logging.getLogger(__name__)

MAX_PROBLEMS = 20


@dataclass
class LoadResult:
    """What the client(s) did and saw; counts are summed over processes."""

    scheduled: int = 0
    sent: int = 0
    not_offered: int = 0
    answered: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    first_send: float = float("inf")
    last_send: float = 0.0
    last_answer: float = 0.0
    max_latency_s: float = 0.0
    peak_in_flight: int = 0
    processes: int = 0
    seconds: float = 0.0

    @property
    def send_span_s(self) -> float:
        """Scheduled load time, or the real first-to-last send span when the client fell behind."""
        span = self.last_send - self.first_send if self.sent else 0.0
        return max(self.seconds, span)

    @property
    def offered_rps(self) -> float:
        """Requests really put on the wire per second."""
        return self.sent / self.send_span_s if self.send_span_s > 0 else 0.0

    def merge(self, other: LoadResult) -> None:
        self.scheduled += other.scheduled
        self.sent += other.sent
        self.not_offered += other.not_offered
        self.answered += other.answered
        self.statuses.update(other.statuses)
        self.problems.extend(other.problems[: MAX_PROBLEMS - len(self.problems)])
        self.first_send = min(self.first_send, other.first_send)
        self.last_send = max(self.last_send, other.last_send)
        self.last_answer = max(self.last_answer, other.last_answer)
        self.max_latency_s = max(self.max_latency_s, other.max_latency_s)
        self.peak_in_flight += other.peak_in_flight
        self.processes += other.processes
        self.seconds = max(self.seconds, other.seconds)


def prebuilt_multipart(
    files: Sequence[tuple[str, tuple[str, bytes, str]]], data: Mapping[str, Any]
) -> tuple[bytes, dict[str, str]]:
    """Encode a multipart form once: (body bytes, headers with the Content-Type carrying its boundary)."""
    request = httpx.Request("POST", "http://127.0.0.1/", files=list(files), data=dict(data))
    body = request.read()
    return body, {"Content-Type": request.headers["Content-Type"]}


def check_response(response: httpx.Response, result: LoadResult) -> None:
    """Count the status; note anything that is neither 200 nor a well-formed 503 overloaded."""
    status = response.status_code
    result.statuses[str(status)] += 1
    problem = None
    if status == 503:
        try:
            error = response.json().get("error")
        except ValueError:
            error = None
        if "Retry-After" not in response.headers or error != "overloaded":
            problem = f"503 without Retry-After/overloaded: {dict(response.headers)} {response.text[:200]}"
    elif status != 200:
        problem = f"{status}: {response.text[:200]}"
    if problem and len(result.problems) < MAX_PROBLEMS:
        result.problems.append(problem)


async def _open_loop(
    url: str,
    path: str,
    body: bytes,
    headers: Mapping[str, str],
    rate_rps: float,
    seconds: float,
    max_in_flight: int,
    start_at: float,
    phase_s: float,
    timeout_s: float,
) -> LoadResult:
    result = LoadResult(processes=1, seconds=seconds)
    total = int(rate_rps * seconds)
    result.scheduled = total
    in_flight = 0
    tasks: set[asyncio.Task[None]] = set()
    limits = httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=max_in_flight)

    async def fire(client: httpx.AsyncClient) -> None:
        nonlocal in_flight
        sent_at = time.monotonic()
        try:
            response = await client.post(path, content=body, headers=headers)
        except httpx.HTTPError as exc:
            result.statuses[f"transport_error:{type(exc).__name__}"] += 1
            if len(result.problems) < MAX_PROBLEMS:
                result.problems.append(repr(exc))
        else:
            result.answered += 1  # only a real HTTP response counts; a cancelled request (below) does not
            result.last_answer = time.monotonic()
            result.max_latency_s = max(result.max_latency_s, result.last_answer - sent_at)
            check_response(response, result)
        finally:
            in_flight -= 1

    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as client:
        # Open the keep-alive connections before the clock starts, so the first second is not spent connecting.
        await asyncio.gather(*(client.get("/healthz") for _ in range(min(max_in_flight, 8))))
        start = start_at + phase_s
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        index = 0
        while index < total:
            now = time.monotonic()
            if now - start > seconds + 1.0:
                # Hopelessly behind schedule: what is left was never offered.
                result.not_offered += total - index
                break
            due = min(total, int((now - start) * rate_rps) + 1)
            while index < due:
                index += 1
                if in_flight >= max_in_flight:
                    result.not_offered += 1
                    continue
                in_flight += 1
                result.sent += 1
                result.peak_in_flight = max(result.peak_in_flight, in_flight)
                stamp = time.monotonic()
                result.first_send = min(result.first_send, stamp)
                result.last_send = stamp
                task = asyncio.create_task(fire(client))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            next_due = start + index / rate_rps
            await asyncio.sleep(max(0.0, next_due - time.monotonic()))
        if tasks:
            await asyncio.wait(set(tasks), timeout=timeout_s + 5.0)
        leftovers = list(tasks)
        for task in leftovers:
            task.cancel()
        if leftovers:
            result.statuses["never_answered"] += len(leftovers)
            await asyncio.gather(*leftovers, return_exceptions=True)
    return result


def _child(
    results: multiprocessing.Queue[LoadResult | str], args: tuple[Any, ...]
) -> None:  # pragma: no cover - runs in a child process
    try:
        results.put(asyncio.run(_open_loop(*args)))
    except BaseException as exc:  # report, never hang the parent
        results.put(f"client process failed: {exc!r}")


def run_open_loop(
    url: str,
    path: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    rate_rps: float,
    seconds: float,
    processes: int = 1,
    max_in_flight: int = 256,
    timeout_s: float = 30.0,
    warmup_s: float = 3.0,
) -> LoadResult:
    """Offer ``rate_rps`` (split evenly over ``processes`` spawned clients) for ``seconds``; the summed result.

    ``max_in_flight`` bounds each process; the clients start together ``warmup_s`` after this call (time to spawn
    them and open their connections). Bounded: every process is joined within seconds + timeout_s + margin.
    """
    per_process = rate_rps / processes
    start_at = time.monotonic() + warmup_s
    if processes == 1:
        return asyncio.run(
            _open_loop(url, path, body, dict(headers), per_process, seconds, max_in_flight, start_at, 0.0, timeout_s)
        )
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[LoadResult | str] = context.Queue()
    children = []
    for i in range(processes):
        # Stagger the processes so their arrivals interleave instead of landing in bursts of ``processes``.
        phase = i / rate_rps
        args = (url, path, body, dict(headers), per_process, seconds, max_in_flight, start_at, phase, timeout_s)
        child = context.Process(target=_child, args=(results, args), daemon=True)
        child.start()
        children.append(child)
    total = LoadResult(seconds=seconds)
    deadline = start_at + seconds + timeout_s + 15.0
    failures = []
    for _ in children:
        try:
            outcome = results.get(timeout=max(1.0, deadline - time.monotonic()))
        except queue.Empty:
            failures.append("a client process sent no result in time")
            break
        if isinstance(outcome, str):
            failures.append(outcome)
        else:
            total.merge(outcome)
    for child in children:
        child.join(timeout=5.0)
        if child.is_alive():
            child.kill()
            child.join(timeout=5.0)
    total.problems.extend(failures)
    if failures:
        total.statuses["client_failure"] += len(failures)
    return total
