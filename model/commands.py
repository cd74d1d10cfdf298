"""Commands printed for a user to paste: a console script is named so that it runs from the current folder.

    command("reid-export")   # "reid-export" with the venv active, ".venv/bin/reid-export" when it is not

Shared by the service's and training's messages (both depend on model/, never on each other). Torch-free.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

logger = logging.getLogger(__name__)


def command(name: str) -> str:
    """``name`` as a user can paste it here: bare when the shell finds this environment's copy on PATH, else the
    path of the copy beside the running interpreter (relative to the current folder when below it)."""
    bin_dir = Path(sys.executable).parent
    ours = bin_dir / name
    found = shutil.which(name)
    if not ours.is_file() or (found is not None and Path(found).resolve() == ours.resolve()):
        return name
    try:
        relative = os.path.relpath(ours, Path.cwd())
    except ValueError:  # another drive (Windows)
        return str(ours)
    return relative if not relative.startswith("..") else str(ours)
