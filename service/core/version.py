"""The project's version, read from the installed package metadata (pyproject.toml is its one source).

from service.core.version import VERSION   # "0.2.0"; shown by reid-serve --version, GET /info, /openapi.json
"""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version

logger = logging.getLogger(__name__)

DISTRIBUTION = "soccernet-reid"


def project_version() -> str:
    """The installed distribution's version; '0+unknown' when the code runs without being installed."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "0+unknown"


VERSION = project_version()
