"""DynamicBatcher with real threads and a deterministic, gated numpy 'model'.

Ordering comes from events, never from sleeps: the model signals when the worker has entered it (and holds it
there until the test opens its gate), and a queue observer lets the test wait until N crops are queued.
"""

from __future__ import annotations

import asyncio
import threading
import time
import types

import numpy as np
import pytest

from service.core.errors import NotReadyError, OverloadedError
from service.inference.batching import DynamicBatcher

WAIT_S = 30.0  # a failure bound for waits on events, never a speed target


class RecordingModel:
    """(B, 3, 2, 2) uint8 -> (B, 4) float32 (mean of each pixel position); records batch sizes.

    ``entered`` is set when the worker calls the model; the call then blocks until ``gate`` is set.
    """

    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[int] = []
        self.fail_on = fail_on
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        self.entered.set()
        if not self.gate.wait(WAIT_S):
            raise RuntimeError("test gate never opened")
        self.batches.append(crops.shape[0])
        if self.fail_on is not None and (crops[:, 0, 0, 0] == self.fail_on).any():
            raise RuntimeError("model exploded")
        return crops.reshape(crops.shape[0], 3, 4).mean(axis=1).astype(np.float32)


class QueueWatch:
    """BatchObserver that lets a test wait until the batcher reports a given queue depth."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.depth = 0

    def observe_batch(self, size: int, seconds: float) -> None:
        pass

    def set_queue_depth(self, depth: int) -> None:
        with self._cond:
            self.depth = depth
            self._cond.notify_all()

    def wait_depth_sync(self, batcher: DynamicBatcher, depth: int) -> None:
        # Reports may arrive out of order from two threads, so the predicate reads the real queue; the reports
        # only wake this wait up.
        with self._cond:
            if not self._cond.wait_for(lambda: batcher.depth == depth, WAIT_S):
                raise AssertionError(f"queue depth stayed {batcher.depth}, expected {depth}")

    async def wait_depth(self, batcher: DynamicBatcher, depth: int) -> None:
        await asyncio.to_thread(self.wait_depth_sync, batcher, depth)


async def entered(model: RecordingModel) -> None:
    """Wait until the worker is inside the model (holding its batch, blocked on the gate when closed)."""
    assert await asyncio.to_thread(model.entered.wait, WAIT_S), "the worker never called the model"


def crop(value: int) -> np.ndarray:
    return np.full((3, 2, 2), value, dtype=np.uint8)


def make(model: RecordingModel, watch: QueueWatch | None = None, **kwargs: float) -> DynamicBatcher:
    options = {"max_batch_size": 4, "max_delay_s": 0.02, "max_queue": 64, **kwargs}
    batcher = DynamicBatcher(model, observer=watch, **options)  # type: ignore[arg-type]
    batcher.start()
    return batcher


def test_results_come_back_in_order_for_each_request() -> None:
    model = RecordingModel()
    batcher = make(model)

    async def main() -> list[np.ndarray]:
        requests = [[crop(10 * r + i) for i in range(r + 1)] for r in range(5)]
        return await asyncio.gather(*(batcher.embed(req) for req in requests))

    try:
        results = asyncio.run(main())
    finally:
        batcher.stop()
    for r, result in enumerate(results):
        assert result.shape == (r + 1, 4)
        np.testing.assert_array_equal(result[:, 0], [10 * r + i for i in range(r + 1)])
    assert max(model.batches) <= 4
    assert sum(model.batches) == 15


def test_concurrent_requests_share_batches() -> None:
    model = RecordingModel()
    model.gate.clear()
    watch = QueueWatch()
    batcher = make(model, watch, max_batch_size=8, max_delay_s=0.05)

    async def main() -> list[np.ndarray]:
        plug = asyncio.create_task(batcher.embed([crop(100)]))
        await entered(model)  # the worker holds the plug's batch of one at the gate
        tasks = [asyncio.create_task(batcher.embed([crop(i)])) for i in range(8)]
        await watch.wait_depth(batcher, 8)
        model.gate.set()
        await plug
        return await asyncio.gather(*tasks)

    try:
        results = asyncio.run(main())
    finally:
        batcher.stop()
    # The eight single-crop requests queued while the worker was busy run as one batch.
    assert model.batches == [1, 8]
    assert [float(r[0, 0]) for r in results] == [float(i) for i in range(8)]


def test_requests_completed_by_one_batch_resume_in_queue_order() -> None:
    """The single-crop requests of one batch get their results in the order they queued (no overtaking)."""
    model = RecordingModel()
    model.gate.clear()
    watch = QueueWatch()
    batcher = make(model, watch, max_batch_size=8, max_delay_s=0.05)
    resumed: list[int] = []

    async def one(i: int) -> None:
        await batcher.embed([crop(i)])
        resumed.append(i)

    async def main() -> None:
        plug = asyncio.create_task(batcher.embed([crop(100)]))
        await entered(model)
        tasks = [asyncio.create_task(one(i)) for i in range(8)]
        await watch.wait_depth(batcher, 8)
        model.gate.set()
        await plug
        await asyncio.gather(*tasks)

    try:
        asyncio.run(main())
    finally:
        batcher.stop()
    assert model.batches == [1, 8]
    assert resumed == list(range(8))


def test_full_queue_answers_overloaded_and_keeps_working() -> None:
    model = RecordingModel()
    model.gate.clear()
    watch = QueueWatch()
    batcher = make(model, watch, max_queue=4, max_batch_size=1, max_delay_s=0.0)

    async def main() -> np.ndarray:
        first = asyncio.create_task(batcher.embed([crop(1)]))
        await entered(model)  # the worker took it and blocks on the gate
        waiting = asyncio.create_task(batcher.embed([crop(2), crop(3), crop(4)]))
        await watch.wait_depth(batcher, 3)
        with pytest.raises(OverloadedError) as info:
            await batcher.embed([crop(5), crop(6)])  # 3 queued + 2 > 4: refused whole
        assert info.value.status_code == 503 and info.value.headers["Retry-After"] == "1"
        assert batcher.depth == 3  # nothing of the refused request was queued
        # The cheap pre-check (run before decoding uploads) agrees with the binding one.
        with pytest.raises(OverloadedError):
            batcher.ensure_capacity(2)
        batcher.ensure_capacity(1)
        model.gate.set()
        await first
        result = await waiting
        # Capacity is back once the queue drains.
        await batcher.embed([crop(7), crop(8), crop(9), crop(10)])
        return result

    try:
        result = asyncio.run(main())
    finally:
        batcher.stop()
    np.testing.assert_array_equal(result[:, 0], [2, 3, 4])
    assert sum(model.batches) == 8


def test_cancelled_request_does_not_break_its_batch() -> None:
    model = RecordingModel()
    model.gate.clear()
    watch = QueueWatch()
    batcher = make(model, watch, max_batch_size=8, max_delay_s=0.05)

    async def main() -> tuple[np.ndarray, np.ndarray]:
        plug = asyncio.create_task(batcher.embed([crop(9)]))
        await entered(model)  # a, b and c queue up behind the plug's batch
        a = asyncio.create_task(batcher.embed([crop(1), crop(2)]))
        b = asyncio.create_task(batcher.embed([crop(3)]))
        c = asyncio.create_task(batcher.embed([crop(4), crop(5)]))
        await watch.wait_depth(batcher, 5)
        b.cancel()  # client went away while queued (cancels b's future at once)
        model.gate.set()
        with pytest.raises(asyncio.CancelledError):
            await b
        await plug
        return await a, await c

    try:
        a, c = asyncio.run(main())
    finally:
        batcher.stop()
    np.testing.assert_array_equal(a[:, 0], [1, 2])
    np.testing.assert_array_equal(c[:, 0], [4, 5])
    assert model.batches == [1, 4]  # the cancelled crop was never computed


def test_model_error_fails_only_that_batch() -> None:
    model = RecordingModel(fail_on=66)
    batcher = make(model, max_batch_size=1, max_delay_s=0.0)

    async def main() -> np.ndarray:
        with pytest.raises(RuntimeError, match="exploded"):
            await batcher.embed([crop(66)])
        return await batcher.embed([crop(7)])

    try:
        after = asyncio.run(main())
    finally:
        batcher.stop()
    assert after[0, 0] == 7


def test_stop_fails_what_is_still_queued() -> None:
    model = RecordingModel()
    model.gate.clear()
    watch = QueueWatch()
    batcher = make(model, watch, max_batch_size=1, max_delay_s=0.0)

    async def main() -> None:
        first = asyncio.create_task(batcher.embed([crop(1)]))
        await entered(model)  # the first crop is in flight, held at the gate
        queued = asyncio.create_task(batcher.embed([crop(2)]))
        await watch.wait_depth(batcher, 1)
        stopper = asyncio.get_running_loop().run_in_executor(None, batcher.stop)
        # stop() fails the queued request while the batch in flight is still held at the gate.
        with pytest.raises(NotReadyError):
            await queued
        with pytest.raises(NotReadyError):
            await batcher.embed([crop(3)])
        model.gate.set()
        await stopper
        assert (await first)[0, 0] == 1  # the batch in flight finished

    asyncio.run(main())
    assert model.batches == [1]


class VirtualClock:
    """The batcher's clock, moved only by its own timed waits (VirtualCondition): latencies become exact."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.model_called_at: list[float] = []

    def monotonic(self) -> float:
        return self.now


class VirtualCondition(threading.Condition):
    """A Condition whose timed wait passes the timeout on the virtual clock at once (a timeout, nobody notified);
    untimed waits (the idle worker) are real."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__()
        self.clock = clock

    def wait(self, timeout: float | None = None) -> bool:
        if timeout is None:
            return super().wait()
        self.clock.now += timeout
        return False


def test_delay_bounds_latency_of_a_lone_crop(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lone crop waits for company exactly max_delay_s, then runs alone: neither sooner nor later. Measured on a
    virtual clock that only the batcher's timed waits move, so the bound is exact and no test timing is involved."""
    from service.inference import batching

    clock = VirtualClock()
    monkeypatch.setattr(
        batching, "time", types.SimpleNamespace(monotonic=clock.monotonic, perf_counter=time.perf_counter)
    )
    model = RecordingModel()

    def timed_model(crops: np.ndarray) -> np.ndarray:
        clock.model_called_at.append(clock.now)
        return model(crops)

    batcher = DynamicBatcher(timed_model, max_batch_size=32, max_delay_s=0.03, max_queue=64)
    batcher._cond = VirtualCondition(clock)  # before start(): the worker's waits run on the virtual clock
    batcher.start()
    enqueued_at = clock.now
    try:
        # The wait_for bound only turns a hang into a failure.
        asyncio.run(asyncio.wait_for(batcher.embed([crop(1)]), WAIT_S))
    finally:
        batcher.stop()
    assert model.batches == [1]
    assert clock.model_called_at == [pytest.approx(enqueued_at + 0.03, abs=1e-9)]


def test_cancelled_crops_do_not_take_the_place_of_live_ones() -> None:
    model = RecordingModel()
    model.gate.clear()
    watch = QueueWatch()
    batcher = make(model, watch, max_batch_size=4, max_delay_s=0.05)

    async def main() -> np.ndarray:
        plug = asyncio.create_task(batcher.embed([crop(9)]))
        await entered(model)
        gone = asyncio.create_task(batcher.embed([crop(1), crop(2)]))
        live = asyncio.create_task(batcher.embed([crop(3), crop(4), crop(5), crop(6)]))
        await watch.wait_depth(batcher, 6)
        gone.cancel()  # its two crops are first in the queue
        model.gate.set()
        with pytest.raises(asyncio.CancelledError):
            await gone
        await plug
        return await live

    try:
        live = asyncio.run(main())
    finally:
        batcher.stop()
    np.testing.assert_array_equal(live[:, 0], [3, 4, 5, 6])
    # One full batch of the live crops: the dropped ones left no holes (not [1, 2, 2]).
    assert model.batches == [1, 4]
