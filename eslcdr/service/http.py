"""The HTTP side of ``eslcdr run``: the API app on a gevent.pywsgi server.

The daemon's health and metrics feed ``/health`` and ``/metrics``; the
server's own access log goes through structlog (one line per request, its
target redacted by ``server.make_server``); ``[api]`` bounds the server
(timeouts, sizes, receive rate, connection cap: ``config.ServerLimits``).
"""

from __future__ import annotations

import re

import structlog
from prometheus_client import CollectorRegistry

from ..api.app import create_app, make_server
from ..ingest.live import LiveChannels
from .metrics import DaemonCollector

log = structlog.get_logger(__name__)


# pywsgi's access line: `client - - [date] "request line" STATUS LENGTH SECONDS`.
_STATUS = re.compile(r'" (\d{3}) ')


class _AccessLog:
    """File-like sink for pywsgi's access log lines.

    A collector polls the feed every few seconds: successful requests are
    debug lines (the info log stays readable); refused or failed ones
    (4xx, 5xx: a wrong token, a bad query) stay at info -- of the 4xx, the
    server passes one per status every 10 s and counts the others
    (``server.Repeats``), so a client's mistakes cannot flood the log.
    """

    def write(self, line: str) -> None:
        line = line.strip()
        if line:
            status = _STATUS.search(line)
            failed = status is None or int(status.group(1)) >= 400
            (log.info if failed else log.debug)("http_request", line=line)

    def flush(self) -> None:  # pywsgi may call it
        pass


class ApiServer:
    def __init__(self, daemon) -> None:
        config = daemon.config
        registry = CollectorRegistry()
        registry.register(DaemonCollector(daemon))
        self.tokens = daemon.tokens
        self.app = create_app(config, health=daemon.health, registry=registry, tokens=self.tokens,
                              acknowledge=daemon.writer.acknowledge,
                              channels=LiveChannels(daemon.trackers))
        self.server = make_server(self.app, config.api.host, config.api.port, limits=config.api.limits,
                                  log=_AccessLog(), error_log=_AccessLog())

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
