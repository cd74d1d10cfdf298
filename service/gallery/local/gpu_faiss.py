"""One owner for the GPU FAISS resources: every call that touches them goes through its lock.

FAISS requires the use of one ``StandardGpuResources`` (its CUDA streams and scratch memory) to be serialised;
searches from the request thread pool, adds from writers and background rebuilds would otherwise use it at the
same time. The device is the one REID_DEVICE names (``cuda:N`` -> N), not always device 0.

    owner = GpuFaissOwner.create(device=1)          # None when faiss has no GPU support or no GPU is visible
    with owner.use() as resources:
        gpu_index = faiss.index_cpu_to_gpu(resources, owner.device, cpu_index)
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import faiss

logger = logging.getLogger(__name__)


def gpu_faiss_available() -> bool:
    """True when this faiss build has GPU support and a GPU is visible to it."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class GpuFaissOwner:
    """Holds the GPU resources of one device and the lock every user of them takes (re-entrant)."""

    def __init__(self, resources: Any, device: int) -> None:
        self._resources = resources
        self.device = device
        self._lock = threading.RLock()
        self._holder: int | None = None

    @classmethod
    def create(cls, device: int, resources_factory: Callable[[], Any] | None = None) -> GpuFaissOwner | None:
        """The owner for GPU ``device``; None (CPU indexes) when faiss cannot use that GPU."""
        if resources_factory is None:
            if not gpu_faiss_available():
                return None
            if device >= faiss.get_num_gpus():
                raise ValueError(f"REID_DEVICE asks for GPU {device}, faiss sees {faiss.get_num_gpus()} GPU(s)")
            resources_factory = faiss.StandardGpuResources
        logger.info("FAISS flat indexes will live on GPU %d", device)
        return cls(resources_factory(), device)

    @contextlib.contextmanager
    def use(self) -> Iterator[Any]:
        """Hold the lock while the block runs; yields the resources (to pass to index_cpu_to_gpu)."""
        with self._lock:
            outer = self._holder
            self._holder = threading.get_ident()
            try:
                yield self._resources
            finally:
                self._holder = outer

    @property
    def held_by_current_thread(self) -> bool:
        return self._holder == threading.get_ident()

    def to_gpu(self, cpu_index: Any, converter: Callable[[Any, int, Any], Any] | None = None) -> Any:
        """Copy ``cpu_index`` to this owner's device (under the lock)."""
        convert = converter or faiss.index_cpu_to_gpu
        with self.use() as resources:
            return convert(resources, self.device, cpu_index)

    def to_cpu(self, gpu_index: Any) -> Any:
        """A CPU copy of ``gpu_index`` (for snapshots), under the lock."""
        with self.use():
            return faiss.index_gpu_to_cpu(gpu_index)
