"""The HTTP side of ``eslcdr run``: the API app on a gevent.pywsgi server.

The daemon's health and metrics feed ``/health`` and ``/metrics``; the
server's own access log goes through structlog (``server.AccessLog``: one line
per request, its target redacted); ``[api]`` bounds the server
(timeouts, sizes, receive rate, connection cap: ``config.ServerLimits``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from ..api.app import create_app, make_server
from ..ingest.live import LiveChannels
from .metrics import DaemonCollector

class ApiServer:
    def __init__(self, daemon) -> None:
        config = daemon.config
        registry = CollectorRegistry()
        registry.register(DaemonCollector(daemon))
        self.tokens = daemon.tokens
        self.app = create_app(config, health=daemon.health, registry=registry, tokens=self.tokens,
                              acknowledge=daemon.writer.acknowledge,
                              channels=LiveChannels(daemon.trackers))
        self.server = make_server(self.app, config.api.host, config.api.port, limits=config.api.limits)

    @property
    def port(self) -> int:
        return self.server.server_port

    def start(self) -> None:
        self.server.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.server.stop(timeout=timeout)
        close = getattr(self.app, "close", None)
        if close is not None:
            close()


def serve_api(daemon) -> ApiServer:
    return ApiServer(daemon)
