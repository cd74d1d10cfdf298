"""The shell commands a documentation page shows, as a reader would type them.

    commands = page_commands(ROOT / "docs" / "getting-started.md")   # ["make serve", "curl -s -X POST ...", ...]

Fenced ```bash blocks only; a line ending in a backslash continues on the next one; blank lines and comment lines
are skipped. A trailing `# comment` stays part of the command: pages checked this way keep their comments
on lines of their own.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

logger = logging.getLogger(__name__)

_FENCE = re.compile(r"^```bash[^\n]*\n(.*?)^```", re.M | re.S)


def page_commands(page: Path) -> list[str]:
    """Every command of the page's bash blocks, continuation lines joined, in page order."""
    commands: list[str] = []
    for block in _FENCE.findall(page.read_text()):
        pending = ""
        for raw in block.splitlines():
            line = raw.rstrip()
            if line.endswith("\\"):
                pending += line[:-1].strip() + " "
                continue
            line = (pending + line.strip()).strip()
            pending = ""
            if not line or line.startswith("#"):
                continue
            commands.append(line)
    return commands


def runs_command(script: str, command: str) -> bool:
    """Whether a shell script runs ``command`` as written: on a line of its own, maybe detached (setsid), in the
    background or with its output redirected."""
    pattern = re.compile(r"^\s*(?:setsid\s+|exec\s+)?" + re.escape(command) + r"\s*(?:$|[&>|;])", re.M)
    return bool(pattern.search(script))
