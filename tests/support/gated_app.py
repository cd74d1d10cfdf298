"""``service.app:app`` with one inference call held at a gate the test controls (for requests "in flight").

    gate = InferenceGate(tmp_path / "gate")
    server = LiveServer({**env, **gate.env()}, app="tests.support.gated_app:app").start()
    gate.arm()                 # the next inference call will stop at the gate
    ...                        # send a request; gate.wait_entered() returns once the worker holds its batch
    gate.release()             # that call runs; later calls pass freely until the next arm()

The two sides meet through named pipes (FIFOs): opening one end blocks until the other end is opened, so neither
side polls or sleeps. Calls pass freely unless armed; the first call after ``arm()`` consumes the ``armed`` flag
and waits, so each arm() holds exactly one call (and a restarted server's warm-up is not held).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

from service.app import app
from service.inference.embedder import Embedder

logger = logging.getLogger(__name__)

GATE_ENV = "TEST_INFERENCE_GATE_DIR"

__all__ = ["GATE_ENV", "InferenceGate", "app", "queue_depth"]


def queue_depth(client: httpx.Client) -> float:
    """Crops waiting in the server's inference queue, read from /metrics."""
    match = re.search(r"^reid_queue_depth (\S+)$", client.get("/metrics").text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


class InferenceGate:
    """Test side of the gate: a folder with the FIFOs ``entered`` and ``release`` and the ``armed`` flag file."""

    def __init__(self, folder: Path, timeout_s: float = 60.0) -> None:
        self.folder = folder
        self.timeout_s = timeout_s
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("entered", "release"):
            if not (folder / name).exists():
                os.mkfifo(folder / name)

    def env(self) -> dict[str, str]:
        return {GATE_ENV: str(self.folder)}

    def arm(self) -> None:
        (self.folder / "armed").touch()

    def _meet(self, name: str, mode: str) -> None:
        """Open one end of FIFO ``name`` (blocks until the server opens the other) and close it again."""
        done = threading.Event()

        def open_and_close() -> None:
            with open(self.folder / name, mode):
                pass
            done.set()

        opener = threading.Thread(target=open_and_close, daemon=True)
        opener.start()
        if not done.wait(self.timeout_s):
            # Unblock our own opener before failing, so no thread is left hanging on the FIFO.
            with open(self.folder / name, "wb" if mode == "rb" else "rb"):
                pass
            raise AssertionError(f"the server never reached the inference gate ({name}) in {self.timeout_s:.0f} s")

    def wait_entered(self) -> None:
        """Return once the inference worker is inside the gated call (its batch taken off the queue)."""
        self._meet("entered", "rb")

    def release(self) -> None:
        self._meet("release", "wb")


def _gated(original: Callable[[Embedder, np.ndarray], np.ndarray], folder: Path) -> Callable[..., np.ndarray]:
    def embed_batch(self: Embedder, crops: np.ndarray) -> np.ndarray:
        # Only the batcher's single worker thread calls this after warm-up, so check-then-unlink is not racy.
        armed = folder / "armed"
        if armed.exists():
            armed.unlink()  # one held call per arm(), also across a restart on the same folder
            logger.info("inference gate: holding a batch of %d crops", crops.shape[0])
            with open(folder / "entered", "wb"):
                pass
            with open(folder / "release", "rb") as fh:
                fh.read()
            logger.info("inference gate: released")
        return original(self, crops)

    return embed_batch


_folder = os.environ.get(GATE_ENV)
if _folder:
    Embedder.embed_batch = _gated(Embedder.embed_batch, Path(_folder))  # type: ignore[method-assign]
