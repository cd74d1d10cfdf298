"""Time-ordered item ids (UUIDv7, RFC 9562) for the local gallery: their text order is registration order.

48 bits of Unix milliseconds, the version nibble 7, a 12-bit counter that orders ids made within one millisecond,
the variant bits, then 62 random bits. ``resume_after`` keeps a new process from going below the last id stored
(a clock set back across a restart), so a listing cursor that names a deleted item can still be placed.

    ids = OrderedIds()
    ids.resume_after("0190f1c2-...")   # the newest id already stored, if any
    item_id = ids()                    # "0190f1c2-5a3b-7000-8d1e-..."
"""

from __future__ import annotations

import logging
import secrets
import threading
import time

logger = logging.getLogger(__name__)

_MS_MASK = (1 << 48) - 1
_COUNTER_MAX = 0xFFF


def is_ordered_id(item_id: str) -> bool:
    """True for a UUIDv7 string (the version nibble, character 14, is '7')."""
    return len(item_id) == 36 and item_id[14] == "7"


def _parts(item_id: str) -> tuple[int, int]:
    digits = item_id.replace("-", "")
    return int(digits[:12], 16), int(digits[13:16], 16)


class OrderedIds:
    """A thread-safe generator of increasing UUIDv7 strings."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ms = 0
        self._counter = 0

    def resume_after(self, item_id: str | None) -> None:
        """Never hand out an id at or below ``item_id`` (a UUIDv7 already stored; anything else is ignored)."""
        if item_id is None or not is_ordered_id(item_id):
            return
        ms, counter = _parts(item_id)
        with self._lock:
            if (ms, counter) > (self._ms, self._counter):
                self._ms, self._counter = ms, counter

    def __call__(self) -> str:
        with self._lock:
            now = time.time_ns() // 1_000_000
            if now > self._ms:
                self._ms, self._counter = now, 0
            elif self._counter < _COUNTER_MAX:
                self._counter += 1
            else:  # 4096 ids within one millisecond: take the next one
                self._ms, self._counter = self._ms + 1, 0
            ms, counter = self._ms, self._counter
        value = (ms & _MS_MASK) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | secrets.randbits(62)
        digits = f"{value:032x}"
        return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"
