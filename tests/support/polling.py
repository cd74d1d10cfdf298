"""Waiting on an observable state (a server ready, a queue filled, a log line) with a deadline.

    wait_until(lambda: queue_depth(client) >= 8, "8 crops queued")

This polls a condition the test can see; it never stands for "enough time has passed": order between threads and
processes comes from events and gates, and the deadline only turns a hang into a failure.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 60.0, interval_s: float = 0.05) -> None:
    """Return once ``condition()`` is true; AssertionError naming ``what`` after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(interval_s)
