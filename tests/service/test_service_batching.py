"""DynamicBatcher with real threads and a deterministic numpy 'model'."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from service.batching import DynamicBatcher
from service.errors import NotReadyError, OverloadedError


class RecordingModel:
    """(B, 3, 2, 2) uint8 -> (B, 4) float32 (mean of each pixel position); records batch sizes."""

    def __init__(self, delay_s: float = 0.0, fail_on: int | None = None) -> None:
        self.batches: list[int] = []
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        self.gate.wait(10)
        self.batches.append(crops.shape[0])
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail_on is not None and (crops[:, 0, 0, 0] == self.fail_on).any():
            raise RuntimeError("model exploded")
        return crops.reshape(crops.shape[0], 3, 4).mean(axis=1).astype(np.float32)


def crop(value: int) -> np.ndarray:
    return np.full((3, 2, 2), value, dtype=np.uint8)


def make(model: RecordingModel, **kwargs: float) -> DynamicBatcher:
    options = {"max_batch_size": 4, "max_delay_s": 0.02, "max_queue": 64, **kwargs}
    batcher = DynamicBatcher(model, **options)  # type: ignore[arg-type]
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
    model.gate.clear()  # hold the worker so the queue fills up first
    batcher = make(model, max_batch_size=8, max_delay_s=0.05)

    async def main() -> None:
        tasks = [asyncio.create_task(batcher.embed([crop(i)])) for i in range(8)]
        await asyncio.sleep(0.01)
        model.gate.set()
        await asyncio.gather(*tasks)

    try:
        asyncio.run(main())
    finally:
        batcher.stop()
    # The first batch may have been taken before all eight arrived, but together they need few batches.
    assert sum(model.batches) == 8
    assert len(model.batches) <= 2
    assert max(model.batches) >= 4


def test_full_queue_answers_overloaded_and_keeps_working() -> None:
    model = RecordingModel()
    model.gate.clear()
    batcher = make(model, max_queue=4, max_batch_size=1, max_delay_s=0.0)

    async def main() -> np.ndarray:
        first = asyncio.create_task(batcher.embed([crop(1)]))
        await asyncio.sleep(0.05)  # the worker takes it and blocks on the gate
        waiting = asyncio.create_task(batcher.embed([crop(2), crop(3), crop(4)]))
        await asyncio.sleep(0.01)
        with pytest.raises(OverloadedError) as info:
            await batcher.embed([crop(5), crop(6)])  # 3 queued + 2 > 4: refused whole
        assert info.value.status_code == 503 and info.value.headers["Retry-After"] == "1"
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


def test_cancelled_request_does_not_break_its_batch() -> None:
    model = RecordingModel(delay_s=0.0)
    model.gate.clear()
    batcher = make(model, max_batch_size=8, max_delay_s=0.05)

    async def main() -> tuple[np.ndarray, np.ndarray]:
        a = asyncio.create_task(batcher.embed([crop(1), crop(2)]))
        b = asyncio.create_task(batcher.embed([crop(3)]))
        c = asyncio.create_task(batcher.embed([crop(4), crop(5)]))
        await asyncio.sleep(0.01)
        b.cancel()  # client went away while queued
        model.gate.set()
        with pytest.raises(asyncio.CancelledError):
            await b
        return await a, await c

    try:
        a, c = asyncio.run(main())
    finally:
        batcher.stop()
    np.testing.assert_array_equal(a[:, 0], [1, 2])
    np.testing.assert_array_equal(c[:, 0], [4, 5])
    assert sum(model.batches) == 4  # the cancelled crop was never computed


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
    batcher = make(model, max_batch_size=1, max_delay_s=0.0)

    async def main() -> None:
        first = asyncio.create_task(batcher.embed([crop(1)]))
        queued = asyncio.create_task(batcher.embed([crop(2)]))
        await asyncio.sleep(0.05)
        stopper = asyncio.get_running_loop().run_in_executor(None, batcher.stop)
        await asyncio.sleep(0.05)
        model.gate.set()
        await stopper
        assert (await first)[0, 0] == 1  # the batch in flight finished
        with pytest.raises(NotReadyError):
            await queued
        with pytest.raises(NotReadyError):
            await batcher.embed([crop(3)])

    asyncio.run(main())


def test_delay_bounds_latency_of_a_lone_crop() -> None:
    model = RecordingModel()
    batcher = make(model, max_batch_size=32, max_delay_s=0.03)

    async def main() -> float:
        start = time.perf_counter()
        await batcher.embed([crop(1)])
        return time.perf_counter() - start

    try:
        elapsed = asyncio.run(main())
    finally:
        batcher.stop()
    assert 0.02 <= elapsed < 1.0
    assert model.batches == [1]
