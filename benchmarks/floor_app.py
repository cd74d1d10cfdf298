"""The floor for benchmarks/service_vs_raw.py: the same ONNX graph in the FastAPI app a user writes in an afternoon.

No gallery store, no limits, no admission control: PIL decode in the thread pool, an asyncio micro-batcher
(FLOOR_BATCH crops within FLOOR_DELAY_MS), onnxruntime, then a numpy top-1 over FLOOR_GALLERY random unit vectors.

    FLOOR_GRAPH=graph.onnx uvicorn benchmarks.floor_app:app --port 8001
"""

import asyncio
import contextlib
import io
import os
from collections.abc import AsyncIterator

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, UploadFile
from fastapi.concurrency import run_in_threadpool
from PIL import Image

options = ort.SessionOptions()
options.intra_op_num_threads = int(os.environ.get("FLOOR_THREADS", "1"))
session = ort.InferenceSession(os.environ["FLOOR_GRAPH"], options, providers=["CPUExecutionProvider"])
HEIGHT, WIDTH = session.get_inputs()[0].shape[2:]
BATCH, DELAY_S = int(os.environ.get("FLOOR_BATCH", "32")), float(os.environ.get("FLOOR_DELAY_MS", "5")) / 1000
dim = session.get_outputs()[0].shape[1]
gallery = np.random.default_rng(0).standard_normal((int(os.environ.get("FLOOR_GALLERY", "500")), dim), np.float32)
gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = asyncio.Queue()


@contextlib.asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    task = asyncio.create_task(batcher())
    yield
    task.cancel()


app = FastAPI(lifespan=lifespan)


def decode(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data)).convert("RGB").resize((WIDTH, HEIGHT), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)


async def batcher() -> None:
    while True:
        items = [await queue.get()]
        deadline = asyncio.get_running_loop().time() + DELAY_S
        while len(items) < BATCH and (left := deadline - asyncio.get_running_loop().time()) > 0:
            try:
                items.append(await asyncio.wait_for(queue.get(), left))
            except TimeoutError:
                break
        batch = np.stack([pixels for pixels, _ in items])
        (emb,) = await run_in_threadpool(session.run, None, {session.get_inputs()[0].name: batch})
        for (_, future), row in zip(items, emb, strict=True):
            future.set_result(row)


@app.get("/readyz")
async def readyz() -> dict[str, str]:
    return {"status": "ready"}


@app.post("/query")
async def query(files: list[UploadFile]) -> dict[str, list[dict[str, float | int]]]:
    payloads = [await f.read() for f in files]
    crops = await asyncio.gather(*(run_in_threadpool(decode, data) for data in payloads))
    futures = [asyncio.get_running_loop().create_future() for _ in crops]
    for pixels, future in zip(crops, futures, strict=True):
        queue.put_nowait((pixels, future))
    scores = np.stack(await asyncio.gather(*futures)) @ gallery.T
    best = scores.argmax(axis=1)
    return {"results": [{"id": int(i), "score": float(s[i])} for i, s in zip(best, scores, strict=True)]}
