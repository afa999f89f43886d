"""The WSGI layer around the Bottle app: request ids, CORS, metrics, bad headers.

``CdrApi`` is what ``create_app`` returns.  On every request it assigns the
request id (a sane ``X-Request-ID`` is kept, else a new uuid), strips a
trailing slash, refuses a header whose bytes are not UTF-8 (400 in Kazoo's
envelope, where Bottle would fail with a 500), adds ``X-Request-ID`` and the
CORS headers to the answer (``preflight`` answers OPTIONS with a 204 that
gets the preflight's; paths in ``no_cors`` get none) and records the
request's Prometheus metrics once the server closes the body.  Bottle's
tracebacks never reach ``wsgi.errors``.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import bottle
import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram

from .core import Core, dumps, error_payload
from .readside import ReadSide

log = structlog.get_logger(__name__)

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
# CORS, as Kazoo's api_util:get_cors_headers (plus what our own routes read).
CORS_ALLOW_HEADERS = (
    "Content-Type, Depth, User-Agent, X-Http-Method-Override, X-File-Size, X-Requested-With, "
    "If-Modified-Since, X-File-Name, Cache-Control, X-Auth-Token, X-Kazoo-Cluster-ID, If-Match, "
    "Accept, Authorization, X-Request-ID"
)
CORS_EXPOSE_HEADERS = "Content-Type, X-Auth-Token, X-Request-ID, Location, ETag, Content-Disposition"
CORS_MAX_AGE = "86400"
# Header names a log line may carry as they are; any other becomes "other"
# (a client chooses header names too).
_NAMED_HEADERS = frozenset({
    "X-Auth-Token", "Authorization", "Accept", "X-File-Name", "X-Request-Id", "Referer", "User-Agent",
    "Origin", "Content-Type", "Cookie", "Host", "Accept-Encoding", "Accept-Language", "Connection",
})


@dataclass(frozen=True)
class Metrics:
    requests: Counter
    latency: Histogram
    rows: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> "Metrics":
        return cls(
            requests=Counter(
                "eslcdr_api_requests", "HTTP requests answered, by route and status",
                ["route", "status"], registry=registry,
            ),
            latency=Histogram(
                "eslcdr_api_request_duration_seconds",
                "time from request to the last byte of the response, by route",
                ["route"], registry=registry,
                buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            ),
            rows=Counter(
                "eslcdr_api_rows", "CDR rows sent, by route and format", ["route", "format"], registry=registry,
            ),
        )


def preflight(method: str) -> Callable[..., Any]:
    """OPTIONS on a route: 204 and ``Allow``; CdrApi adds the CORS headers."""
    allow = "%s, OPTIONS" % method

    def answer(**_: Any) -> bytes:
        bottle.response.status = 204
        bottle.response.set_header("Allow", allow)
        return b""

    return answer


class _ObservedBody:
    """Wraps a WSGI body; records metrics when the server closes it."""

    def __init__(self, body: Iterable[bytes], done: Callable[[], None]) -> None:
        self._body = body
        self._done = done

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._done()


class _WsgiErrors:
    """``wsgi.errors`` for Bottle: nothing it writes is logged as written."""

    def write(self, text: str) -> None:
        if text.startswith("<h1>Critical error"):  # the error handler itself failed
            log.error("api_critical_error")

    def flush(self) -> None:
        pass


_WSGI_ERRORS = _WsgiErrors()


def undecodable_header(environ: Mapping[str, Any]) -> str | None:
    """The name of the first request header that is not UTF-8, or None.

    WSGI hands header values over as latin-1 text; Bottle re-decodes them as
    UTF-8 when read and raises on bytes that are not.
    """
    for key, value in environ.items():
        if key.startswith("HTTP_") and isinstance(value, str) and not value.isascii():
            try:
                value.encode("latin-1").decode("utf-8")
            except UnicodeError:
                name = "-".join(part.capitalize() for part in key[5:].split("_"))
                return name if name in _NAMED_HEADERS else "other"
    return None


class CdrApi:
    """The WSGI application ``create_app`` returns.

    ``bottle`` is the inner Bottle app; ``read`` the read side (``pool`` its
    SQLite reader pool, None on another backend); ``close()`` closes it.
    """

    def __init__(self, app: bottle.Bottle, read: ReadSide, core: Core, metrics: Metrics,
                 cors_origins: Sequence[str] = ("*",), no_cors: frozenset[str] = frozenset()) -> None:
        self.bottle = app
        self.read = read
        self.pool = getattr(read, "pool", None)
        self.metrics = metrics
        self._core = core
        self.cors_origins = tuple(cors_origins)
        self.no_cors = no_cors

    def is_token(self, text: str) -> bool:
        """Whether text is a token of the tokens file or a login session's
        (the access log redacts those)."""
        return self._core.known_token(text)

    def cors_headers(self, environ: Mapping[str, Any], status: str, headers: list) -> list[tuple[str, str]]:
        """CORS headers for one response: the origin on every answer, and on a
        preflight (an OPTIONS answered 204) the methods, headers and max age;
        none on ``no_cors`` paths."""
        if not self.cors_origins or environ.get("PATH_INFO") in self.no_cors:
            return []
        if self.cors_origins == ("*",):
            out = [("Access-Control-Allow-Origin", "*")]
        else:
            origin = environ.get("HTTP_ORIGIN", "")
            out = [("Vary", "Origin")]
            if origin not in self.cors_origins:
                return out
            out.append(("Access-Control-Allow-Origin", origin))
        out.append(("Access-Control-Expose-Headers", CORS_EXPOSE_HEADERS))
        if environ.get("REQUEST_METHOD") == "OPTIONS" and status.startswith("204"):
            allow = next((value for name, value in headers if name.lower() == "allow"), "GET, OPTIONS")
            out += [("Access-Control-Allow-Methods", allow),
                    ("Access-Control-Allow-Headers", CORS_ALLOW_HEADERS),
                    ("Access-Control-Max-Age", CORS_MAX_AGE)]
        return out

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        started = time.perf_counter()
        supplied = environ.get("HTTP_X_REQUEST_ID", "")
        request_id = supplied if _REQUEST_ID.fullmatch(supplied) else uuid.uuid4().hex
        environ["eslcdr.request_id"] = request_id
        # Bottle writes tracebacks (exception text: request bytes) and the
        # path to wsgi.errors; Core.bottle_error logs the type and frames instead.
        environ["wsgi.errors"] = _WSGI_ERRORS
        path = environ.get("PATH_INFO", "")
        if len(path) > 1 and path.endswith("/"):
            environ["PATH_INFO"] = path.rstrip("/") or "/"
        status_seen: list[str] = []

        def start(status: str, headers: list, exc_info: Any = None) -> Callable:
            status_seen.append(status.split(" ", 1)[0])
            headers.append(("X-Request-ID", request_id))
            headers.extend(self.cors_headers(environ, status, headers))
            return start_response(status, headers, exc_info)

        bad_header = undecodable_header(environ)
        if bad_header is None:
            body = self.bottle(environ, start)
        else:
            body = self._bad_header(environ, bad_header, start)

        def done() -> None:
            route = environ.get("bottle.route")
            label = route.rule if route is not None else "unmatched"
            self.metrics.requests.labels(label, status_seen[-1] if status_seen else "000").inc()
            self.metrics.latency.labels(label).observe(time.perf_counter() - started)

        return _ObservedBody(body, done)

    def _bad_header(self, environ: dict, name: str, start: Callable) -> list[bytes]:
        """400 for a header whose bytes are not UTF-8 (Bottle would fail with a 500)."""
        log.warning(
            "api_bad_header", header=name, client=environ.get("REMOTE_ADDR"), status=400)
        environ["eslcdr.auth_token"] = ""  # a token next to undecodable bytes is not echoed
        payload = error_payload(400, "bad request", {"message": "header %s is not valid UTF-8" % name},
                                self._core.meta_for(environ))
        body = dumps(payload).encode("utf-8")
        start("400 Bad Request", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    def close(self) -> None:
        self.read.close()
