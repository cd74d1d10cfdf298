"""Dependency-injection aliases: routes receive the objects built in the lifespan, never module globals.

@router.get("/collections")
async def list_collections(state: StateDep) -> ...
"""

from __future__ import annotations

import hmac
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Annotated, Literal

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from model.thresholds import threshold_for
from service.core.errors import NotReadyError, ServiceError
from service.core.metrics import ServiceMetrics
from service.core.settings import Settings
from service.gallery import Gallery
from service.gallery.batched_search import BatchedSearch
from service.inference.batching import DynamicBatcher
from service.inference.embedder import Embedder
from service.inference.imaging import ImageLimits

logger = logging.getLogger(__name__)

ThresholdSource = Literal["calibrated", "default", "setting"]


@dataclass(frozen=True)
class ThresholdPolicy:
    """The default match threshold and where it came from (setting > calibrated > default), and the checkpoint's
    thresholds per query size bucket (used only when the threshold comes from the checkpoint)."""

    value: float
    source: ThresholdSource
    checkpoint_value: float | None
    by_size: dict[str, float] = field(default_factory=dict)

    def for_crops(self, crops: int, override: float | None = None) -> float:
        """Threshold for a query pooled from ``crops`` crops: a request's ``override`` wins, then the size
        bucket's calibrated value, else ``value``."""
        if override is not None:
            return override
        return threshold_for(crops, self.by_size, self.value)


@dataclass
class ServiceState:
    """Everything the lifespan builds; kept on app.state.reid."""

    settings: Settings
    embedder: Embedder
    batcher: DynamicBatcher
    gallery: Gallery
    metrics: ServiceMetrics
    decode_pool: ThreadPoolExecutor
    searcher: BatchedSearch
    threshold: ThresholdPolicy
    image_limits: ImageLimits
    ready: bool = False


# The dependencies below are coroutines on purpose: FastAPI runs a plain `def` dependency in its thread pool, which
# cost every request three thread hops (and, under many concurrent requests, let them overtake one another).


async def get_state(request: Request) -> ServiceState:
    state: ServiceState | None = getattr(request.app.state, "reid", None)
    if state is None or not state.ready:
        raise NotReadyError()
    return state


async def get_settings(request: Request) -> Settings:
    settings: Settings | None = getattr(request.app.state, "settings", None)
    if settings is None:
        raise NotReadyError("settings are not loaded yet")
    return settings


_api_key_header = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    description="Required on every route but health and docs when REID_API_KEY is set.",
)


# Prometheus (and most HTTP clients) send a key as `Authorization: Bearer <key>`; it is accepted as well.
_bearer = HTTPBearer(
    auto_error=False,
    description="Alternative to X-API-Key: `Authorization: Bearer <REID_API_KEY>` (e.g. a Prometheus scrape).",
)


def _same_key(given: str | None, expected: str) -> bool:
    # compare_digest: the time taken does not reveal how many leading characters matched.
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


async def require_api_key(
    settings: Annotated[Settings, Depends(get_settings)],
    api_key: Annotated[str | None, Security(_api_key_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> None:
    """401 unless X-API-Key or the Authorization bearer token equals REID_API_KEY (when one is configured)."""
    expected = settings.api_key
    if expected is None:
        return
    token = bearer.credentials if bearer is not None else None
    # Both are compared every time (no short-circuit), so timing does not tell which header was checked.
    header_ok = _same_key(api_key, expected)
    bearer_ok = _same_key(token, expected)
    if not (header_ok or bearer_ok):
        raise ServiceError(401, "unauthorized", "missing or wrong API key (X-API-Key or Authorization: Bearer)")


StateDep = Annotated[ServiceState, Depends(get_state)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
