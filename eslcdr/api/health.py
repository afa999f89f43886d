"""``GET /health`` (the daemon's state) and ``GET /metrics`` (Prometheus).

For monitoring, not for web pages: they name the database file and
FreeSWITCH's address, so they need no token and no CORS header lets another
origin's page read them (``NO_CORS_PATHS``; their OPTIONS preflight gets none
either, and the browser stops there).  ``/health`` answers 503 when the
state's ``status`` is not ``"ok"``; ``/metrics`` exports the registry the
API's own metrics were created in (plus what the daemon registered there).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import bottle
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from ..web.server import STATUS_IS_STATE
from .core import Core, Route

HealthFn = Callable[[], Mapping[str, Any]]
HEALTH_PATH = "/health"
METRICS_PATH = "/metrics"
NO_CORS_PATHS = frozenset({HEALTH_PATH, METRICS_PATH})


class Health:
    def __init__(self, core: Core, health: HealthFn, registry: CollectorRegistry) -> None:
        self.core = core
        self.health_fn = health
        self.registry = registry

    def routes(self) -> list[Route]:
        return [(HEALTH_PATH, "GET", self.health), (METRICS_PATH, "GET", self.prometheus)]

    def health(self) -> Any:
        info = dict(self.health_fn())
        status = 200 if info.get("status", "ok") == "ok" else 503
        # A 503 here is the state asked for, not a failed request: logged at debug.
        bottle.request.environ[STATUS_IS_STATE] = True
        return self.core.json_response(info, status)

    def prometheus(self) -> Any:
        bottle.response.content_type = CONTENT_TYPE_LATEST
        return generate_latest(self.registry)
