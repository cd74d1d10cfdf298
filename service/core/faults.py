"""Fault injection for crash tests: pause the process at a named point so a test can kill -9 it right there.

Off unless the environment asks for it (never set in production):

    REID_FAULT_PAUSE_AT=snapshot_write REID_FAULT_MARKER=/tmp/at-point uvicorn service.app:app

When the code reaches ``pause_point("snapshot_write")`` it creates the marker file (the test waits for it)
and blocks that thread for good; the test then sends SIGKILL. Points: ``build`` (a background index build has
read the store, nothing swapped yet), ``snapshot_write`` (half a snapshot file is on disk, not renamed yet).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

logger = logging.getLogger(__name__)

PAUSE_ENV = "REID_FAULT_PAUSE_AT"
MARKER_ENV = "REID_FAULT_MARKER"


def pause_point(name: str) -> None:
    """Block forever here when REID_FAULT_PAUSE_AT names this point (after touching REID_FAULT_MARKER)."""
    if os.environ.get(PAUSE_ENV) != name:
        return
    logger.warning("fault injection: paused at %r until the process is killed", name)
    marker = os.environ.get(MARKER_ENV)
    if marker:
        Path(marker).write_text(name)
    threading.Event().wait()
