"""Optional peer for benchmarks/service_vs_raw.py: benchmarks/floor_app.py's work as a Ray Serve deployment.

@serve.batch(32 crops, 5 ms) around the same ONNX graph, PIL decode, numpy top-1 over 500 random unit vectors.
Imported only where ``ray[serve]`` is installed (it is not part of the project's dependencies); the benchmark
skips the peer otherwise.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


@contextmanager
def serve_peer(graph: Path, threads: int, gallery: int = 500) -> Iterator[str]:
    """Start Ray, deploy the peer at /query on a free port, yield its base URL, shut Ray down."""
    import onnxruntime as ort
    import ray
    from PIL import Image
    from ray import serve
    from starlette.requests import Request

    from tests.support.live_server import free_port

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class Peer:
        def __init__(self) -> None:
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            self.session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
            self.input = self.session.get_inputs()[0].name
            self.height, self.width = self.session.get_inputs()[0].shape[2:]
            dim = self.session.get_outputs()[0].shape[1]
            vectors = np.random.default_rng(0).standard_normal((gallery, dim), np.float32)
            self.gallery = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

        def decode(self, data: bytes) -> np.ndarray:
            image = Image.open(io.BytesIO(data)).convert("RGB").resize((self.width, self.height), Image.BILINEAR)
            return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)

        @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
        async def embed(self, crops: list[np.ndarray]) -> list[np.ndarray]:
            (embeddings,) = self.session.run(None, {self.input: np.stack(crops)})
            return list(embeddings)

        async def __call__(self, request: Request) -> dict[str, Any]:
            form = await request.form()
            crops = [self.decode(await part.read()) for part in form.getlist("files")]  # type: ignore[union-attr]
            scores = np.stack(await asyncio.gather(*(self.embed(c) for c in crops))) @ self.gallery.T
            best = scores.argmax(axis=1)
            return {"results": [{"id": int(i), "score": float(s[i])} for i, s in zip(best, scores, strict=True)]}

    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(Peer.bind(), route_prefix="/query")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()
