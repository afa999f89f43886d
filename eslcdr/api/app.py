"""The HTTP API: Kazoo v2 compatible CDR routes, the collector feed, health, metrics.

``create_app(config, health=..., registry=...)`` builds everything (no module
state): a Bottle app with the routes of docs/api.md, wrapped in a small WSGI
layer that assigns the request id, strips a trailing slash and records
Prometheus metrics.  ``make_server`` serves it with gevent's WSGIServer and a
handler that answers even malformed HTTP (too-long request line, bad request)
with Kazoo's JSON error envelope and never writes ``auth_token`` to the
access log.

Kazoo clients first ``PUT /v2/api_auth`` with a tokens-file token and get a
session token (``sessions``); CORS headers go on every answer (``CdrApi``),
``OPTIONS`` on every route is a 204 preflight.  No JSON answer holds a null.

A request goes: route -> token (``X-Auth-Token``, ``auth_token`` or a Bearer
header: a login session or a tokens-file token; unknown -> 401) -> account scope (another account -> 403; the ``*``
token may read any) -> parameters (``queries.parse_*``; bad -> 400
``validation error``) -> SQL on a pooled read-only connection -> Kazoo shapes
(``kazoo``) -> JSON or CSV.  Every query is scoped by ``account_id`` in SQL, so
CDR ids, legs and filters of other accounts simply do not exist (404 / no
rows).

Bounded work: a JSON page holds at most ``max_page_size`` rows and is built
in memory; ``paginate=false``, CSV, legs and the NDJSON feed are streamed in
keyset chunks, each its own short statement (constant memory, no snapshot
held while a client reads).  Every error -- including Bottle's
own 404/405/500 -- is Kazoo's envelope ``{"status": "error", "error": "<code>",
"message", "data", ...}``, never an HTML page.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import time
import traceback
import urllib.parse
import uuid
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence

import bottle
import orjson
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from .. import __version__
from ..query import kazoo
from . import webpage
from ..ingest.live import ChannelsFn, no_channels
from ..config import Config
from ..query.params import (
    KIND_CDRS,
    KIND_INTERACTIONS,
    FeedQuery,
    ParamError,
    cursor_for,
    encode_cursor,
    first,
    parse_feed_query,
    parse_list_query,
)
from ..query.pool import ReaderPool, is_heavy
from ..query.reader import DatastoreError, GeventRunner, InlineRunner, StatementTimeout
from ..query.sql import detail_sql, feed_sql, legs_sql, list_sql, packed_sql, unpack_rows, warm_sql
from ..query.stream import KeysetStream
from ..query.list_csv import INCEPTION_ACCOUNT, INCEPTION_USER, list_csv
from ..web.redact import Redactor, presented_in_environ
from ..store.schema import COLUMN_NAMES
from ..store.db import DB_ID_SQL, LAST_SEQ_SQL, record_ack
from ..query.stats import WORST_COLUMNS, paced_chunks, parse_stats_query, parse_worst_query, run_stats, worst_sql
from ..query.stats import csv_text as stats_csv
from .sessions import SessionStore
from .tokens import COLLECTOR, TokenStore, digest, token_key

if TYPE_CHECKING:
    from gevent.pywsgi import WSGIServer

log = structlog.get_logger(__name__)

HealthFn = Callable[[], Mapping[str, Any]]
AckFn = Callable[[str, int, int], None]
MAX_QUERY_FIELDS = 200
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
# Kazoo's CSV_CONTENT_TYPES: a client asking for octet-stream gets CSV.
_CSV_TYPES = ("text/csv", "text/comma-separated-values", "application/octet-stream")
_JSON_TYPES = ("application/json", "application/x-json")
# CORS, as Kazoo's api_util:get_cors_headers (plus what our own routes read).
CORS_ALLOW_HEADERS = (
    "Content-Type, Depth, User-Agent, X-Http-Method-Override, X-File-Size, X-Requested-With, "
    "If-Modified-Since, X-File-Name, Cache-Control, X-Auth-Token, X-Kazoo-Cluster-ID, If-Match, "
    "Accept, Authorization, X-Request-ID"
)
CORS_EXPOSE_HEADERS = "Content-Type, X-Auth-Token, X-Request-ID, Location, ETag, Content-Disposition"
CORS_MAX_AGE = "86400"
HEALTH_PATH = "/health"
METRICS_PATH = "/metrics"
# For monitoring, not for web pages: they name the database file and
# FreeSWITCH's address, so no CORS header lets another origin's page read them
# (their OPTIONS preflight gets none either, and the browser stops there).
NO_CORS_PATHS = frozenset({HEALTH_PATH, METRICS_PATH})
_FILE_NAME_UNSAFE = re.compile(r'[\x00-\x1f\x7f"\\/;]')
_N_SOURCE = len(kazoo.SOURCE_COLUMNS)
# Rows per chunk of a CSV listing export: each chunk is one statement (its own
# short read transaction) of about 2 ms per 1,000 rows here.
CSV_BATCH = 1000
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode


def without_nulls(value: Any) -> Any:
    """``value`` with every None left out (dict members) or dropped (list items):
    Kazoo leaves out what has no value, and clients read ``.length`` of what is there."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [without_nulls(v) for v in value if v is not None]
    return value


def accepts_first(accept: str, preferred: Sequence[str], others: Sequence[str]) -> bool:
    """True when the Accept header ranks a ``preferred`` type above every one of ``others``
    (q values, then order); False when none of ``preferred`` is acceptable."""
    best_preferred = best_other = None
    for position, part in enumerate(accept.lower().split(",")):
        fields = part.split(";")
        media_type = fields[0].strip()
        quality = 1.0
        for field in fields[1:]:
            name, _, value = field.strip().partition("=")
            if name.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality <= 0:
            continue
        rank = (quality, -position)
        if media_type in preferred:
            best_preferred = max(best_preferred or rank, rank)
        elif media_type in others:
            best_other = max(best_other or rank, rank)
    return best_preferred is not None and (best_other is None or best_preferred > best_other)


def _records_json(rows: list[tuple]) -> list[str]:
    return [kazoo.record_text(row[0]) for row in rows]  # rendered by SQLite (kazoo.record_sql)


def _records_csv(rows: list[tuple]) -> bytes:
    return "".join([row[0] + "\r\n" for row in rows]).encode("utf-8")


class ApiError(Exception):
    """An error response in Kazoo's envelope."""

    def __init__(self, status: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.data = {} if data is None else data


def invalid_credentials() -> ApiError:
    return ApiError(401, "invalid_credentials", {"message": "invalid credentials"})


def forbidden() -> ApiError:
    return ApiError(403, "forbidden", {"message": "forbidden"})


def token_of(environ: dict) -> str:
    """The request's token: ``X-Auth-Token``, else the ``auth_token`` query
    value, else an ``Authorization: Bearer`` value; "" when none (cached)."""
    token = environ.get("eslcdr.auth_token")
    if token is None:
        token = environ.get("HTTP_X_AUTH_TOKEN") or ""
        query = environ.get("QUERY_STRING", "")
        if not token and query:
            try:
                values = urllib.parse.parse_qs(query, errors="replace", max_num_fields=MAX_QUERY_FIELDS)
            except ValueError:
                values = {}
            token = (values.get("auth_token") or [""])[0]
        if not token:
            authorization = environ.get("HTTP_AUTHORIZATION", "")
            if authorization[:7].lower() == "bearer ":
                token = authorization[7:].strip()
        environ["eslcdr.auth_token"] = token
    return token


def error_payload(status: int, message: str, data: Any, meta: Mapping[str, Any]) -> dict[str, Any]:
    return {"data": data, "error": str(status), "message": message, "status": "error", **meta}


# ------------------------------------------------------------------ metrics


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


class CdrApi:
    """The WSGI application ``create_app`` returns.

    ``bottle`` is the inner Bottle app; ``close()`` closes pooled connections.
    """

    def __init__(self, app: bottle.Bottle, pool: ReaderPool, metrics: Metrics, routes: "_Routes",
                 cors_origins: Sequence[str] = ("*",)) -> None:
        self.bottle = app
        self.pool = pool
        self.metrics = metrics
        self._routes = routes
        self.cors_origins = tuple(cors_origins)

    def is_token(self, text: str) -> bool:
        """Whether text is a token of the tokens file or a login session's
        (the access log redacts those)."""
        return self._routes._known_token(text)

    def cors_headers(self, environ: Mapping[str, Any], status: str, headers: list) -> list[tuple[str, str]]:
        """CORS headers for one response: the origin on every answer, and on a
        preflight (an OPTIONS answered 204) the methods, headers and max age;
        none on NO_CORS_PATHS."""
        if not self.cors_origins or environ.get("PATH_INFO") in NO_CORS_PATHS:
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
        # path to wsgi.errors; bottle_error logs the type and frames instead.
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

        bad_header = _undecodable_header(environ)
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
                                self._routes.meta_for(environ))
        body = _dumps(payload).encode("utf-8")
        start("400 Bad Request", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    def close(self) -> None:
        self.pool.close()


class _WsgiErrors:
    """``wsgi.errors`` for Bottle: nothing it writes is logged as written."""

    def write(self, text: str) -> None:
        if text.startswith("<h1>Critical error"):  # the error handler itself failed
            log.error("api_critical_error")

    def flush(self) -> None:
        pass


_WSGI_ERRORS = _WsgiErrors()


# Header names a log line may carry as they are; any other becomes "other"
# (a client chooses header names too).
_NAMED_HEADERS = frozenset({
    "X-Auth-Token", "Authorization", "Accept", "X-File-Name", "X-Request-Id", "Referer", "User-Agent",
    "Origin", "Content-Type", "Cookie", "Host", "Accept-Encoding", "Accept-Language", "Connection",
})


def _undecodable_header(environ: Mapping[str, Any]) -> str | None:
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


# ----------------------------------------------------------------- handlers


class _StreamBody:
    """A streamed response body that owns a KeysetStream (closed either way).

    Once the headers are out, a failing batch cannot become an error
    response: it is logged and re-raised, so the server drops the connection
    and the client sees a truncated body rather than a complete-looking one.
    """

    def __init__(self, chunks: Iterator[bytes], stream: KeysetStream) -> None:
        self._chunks = chunks
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._chunks
        except (StatementTimeout, DatastoreError) as exc:
            log.error("api_stream_aborted", error=str(exc))
            exc.eslcdr_logged = True  # the server drops the connection without a second line
            raise

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()
        self._stream.close()


class _Routes:
    def __init__(
        self,
        config: Config,
        pool: ReaderPool,
        tokens: TokenStore,
        health: HealthFn,
        registry: CollectorRegistry,
        metrics: Metrics,
        clock: Callable[[], float],
        acknowledge: AckFn,
        sessions: SessionStore,
        channels: ChannelsFn = no_channels,
    ) -> None:
        self.acknowledge = acknowledge
        self.channels_fn = channels
        self.api = config.api
        self.sessions = sessions
        self.node = config.cdr.node_name
        self.pool = pool
        self.tokens = tokens
        self.health_fn = health
        self.registry = registry
        self.metrics = metrics
        self.clock = clock

    # -- plumbing -----------------------------------------------------------

    def meta(self) -> dict[str, Any]:
        return self.meta_for(bottle.request.environ)

    def meta_for(self, environ: Mapping[str, Any]) -> dict[str, Any]:
        now = time.gmtime(self.clock())
        meta = {
            "request_id": environ.get("eslcdr.request_id", ""),
            "node": self.node,
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", now),
            "version": __version__,
        }
        token = token_of(environ)
        if token:
            meta["auth_token"] = token  # Kazoo echoes the request's token
        return meta

    def json_response(self, payload: Mapping[str, Any], status: int = 200) -> bytes:
        bottle.response.status = status
        bottle.response.content_type = "application/json"
        return _dumps(without_nulls(payload)).encode("utf-8")

    def error_response(self, status: int, message: str, data: Any = None) -> bytes:
        return self.json_response(error_payload(status, message, {} if data is None else data, self.meta()), status)

    def guard(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        """Turn the named failures of a handler into Kazoo error envelopes."""

        def guarded(**kwargs: Any) -> Any:
            try:
                return handler(**kwargs)
            except ApiError as exc:
                return self.error_response(exc.status, exc.message, exc.data)
            except ParamError as exc:
                return self.error_response(400, "validation error", exc.as_data())
            except StatementTimeout as exc:
                log.warning("api_statement_timeout", path=self.log_path(), error=str(exc))
                return self.error_response(503, "datastore timeout", {"message": str(exc)})
            except DatastoreError as exc:
                log.error("api_datastore_error", path=self.log_path(), error=str(exc))
                return self.error_response(503, "datastore fatal error", {"message": "datastore fatal error"})

        return guarded

    def _known_token(self, text: str) -> bool:
        return self.tokens.known(text) or self.sessions.known(text)

    def log_path(self) -> str:
        """The request path fit for a log line (no token, however it was put there)."""
        environ = bottle.request.environ
        return Redactor(self._known_token, presented_in_environ(environ)).target(environ.get("PATH_INFO", ""))

    def params(self) -> dict[str, list[str]]:
        query = bottle.request.environ.get("QUERY_STRING", "")
        try:
            return urllib.parse.parse_qs(
                query, keep_blank_values=True, errors="replace", max_num_fields=MAX_QUERY_FIELDS
            )
        except ValueError:
            raise ApiError(400, "validation error", {"query": {"maxItems": {
                "message": "at most %d query parameters" % MAX_QUERY_FIELDS}}}) from None

    @staticmethod
    def presented_token(params: Mapping[str, Sequence[str]] | None = None) -> str | None:
        return token_of(bottle.request.environ) or None

    def scope(self, params: Mapping[str, Sequence[str]]) -> str:
        """The presented token's account (or COLLECTOR); 401 if none is valid.

        A token is an API key of the tokens file or a live login session."""
        token = self.presented_token(params)
        account = None
        if token:
            account = self.sessions.lookup(token, self.tokens.lookup_digest)
            if account is None:
                account = self.tokens.lookup(token)
        if account is None:
            raise invalid_credentials()
        return account

    def authorize(self, params: Mapping[str, Sequence[str]], account_id: str) -> str:
        scope = self.scope(params)
        if scope != COLLECTOR and scope != account_id:
            raise forbidden()
        return scope

    @staticmethod
    def wants(params: Mapping[str, Sequence[str]], media_types: Sequence[str], short: str) -> bool:
        """``?accept=<short or type>`` wins; else the Accept header ranks one of
        ``media_types`` above JSON."""
        accept_param = (first(params, "accept") or "").strip().lower()
        if accept_param:
            return accept_param == short or accept_param in media_types
        return accepts_first(bottle.request.headers.get("Accept", ""), media_types, _JSON_TYPES)

    def file_name(self, params: Mapping[str, Sequence[str]], default: str) -> str:
        name = first(params, "file_name") or bottle.request.headers.get("X-File-Name") or default
        name = _FILE_NAME_UNSAFE.sub("_", os.path.basename(name.strip()))[:200]
        return name or default

    def csv_headers(self, file_name: str) -> None:
        bottle.response.content_type = "text/csv"  # exactly, as Kazoo (the body is UTF-8)
        fallback = file_name.encode("ascii", "replace").decode("ascii").replace("?", "_")
        disposition = 'attachment; filename="%s"' % fallback
        if fallback != file_name:
            disposition += "; filename*=UTF-8''%s" % urllib.parse.quote(file_name, safe="")
        bottle.response.set_header("Content-Disposition", disposition)

    def count_rows(self, fmt: str, n: int) -> None:
        route = bottle.request.environ.get("bottle.route")
        self.metrics.rows.labels(route.rule if route else "unmatched", fmt).inc(n)

    def envelope(self, data_json: str, fields: Mapping[str, Any]) -> bytes:
        """A success envelope around ``data`` already rendered as JSON text."""
        bottle.response.content_type = "application/json"
        tail = _dumps({**fields, "status": "success", **self.meta()})
        return ('{"data":%s,%s' % (data_json, tail[1:])).encode("utf-8")

    # -- streamed bodies ------------------------------------------------------

    def csv_body(self, stream: KeysetStream, render: Callable[[list[Any]], bytes], columns: Sequence[str],
                 file_name: str) -> _StreamBody:
        """Header record, then ``render(batch)`` (UTF-8 CSV records) for each batch of rows."""
        self.csv_headers(file_name)
        counter = self.metrics.rows.labels(bottle.request.environ["bottle.route"].rule, "csv")

        def chunks() -> Iterator[bytes]:
            yield kazoo.csv_records([kazoo.csv_header(columns)]).encode("utf-8")
            for batch in stream:
                counter.inc(len(batch))
                yield render(batch)

        return _StreamBody(chunks(), stream)

    def json_body(self, stream: KeysetStream, render: Callable[[list[tuple]], list[str]]) -> _StreamBody:
        """``{"data": [...], "page_size": n, "status": "success", ...}``, streamed;
        ``render(batch)`` gives the rows' JSON texts."""
        bottle.response.content_type = "application/json"
        meta = self.meta()
        counter = self.metrics.rows.labels(bottle.request.environ["bottle.route"].rule, "json")

        def chunks() -> Iterator[bytes]:
            yield b'{"data":['
            sent = 0
            for batch in stream:
                text = ",".join(render(batch))
                yield ((",%s" if sent else "%s") % text).encode("utf-8")
                sent += len(batch)
                counter.inc(len(batch))
            yield ("]," + _dumps({"page_size": sent, "status": "success", **meta})[1:]).encode("utf-8")

        return _StreamBody(chunks(), stream)

    def ndjson_body(self, stream: KeysetStream) -> _StreamBody:
        bottle.response.content_type = "application/x-ndjson"
        counter = self.metrics.rows.labels(bottle.request.environ["bottle.route"].rule, "ndjson")

        def chunks() -> Iterator[bytes]:
            for batch in stream:
                counter.inc(len(batch))
                yield "".join([kazoo.record_text(row[0]) + "\n" for row in batch]).encode("utf-8")

        return _StreamBody(chunks(), stream)

    # -- routes -------------------------------------------------------------

    def own_account(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        """``/v2/cdrs...`` without an account: the token's own account (PyKazoo's
        ``cdrs.get_cdrs()`` asks there).  A ``*`` token has none: 404, as an
        account-less CDR path is in Kazoo."""

        def with_account(**kwargs: Any) -> Any:
            account = self.scope(self.params())
            if account == COLLECTOR:
                raise ApiError(404, "faulty_request", {"message": "faulty request"})
            return handler(account_id=account, **kwargs)

        return with_account

    def list_cdrs(self, account_id: str, user_id: str | None = None) -> Any:
        return self._listing(KIND_CDRS, account_id, user_id)

    def list_interactions(self, account_id: str, user_id: str | None = None) -> Any:
        return self._listing(KIND_INTERACTIONS, account_id, user_id)

    def _listing(self, kind: str, account_id: str, user_id: str | None) -> Any:
        params = self.params()
        self.authorize(params, account_id)
        as_csv = self.wants(params, _CSV_TYPES, "csv")
        query = parse_list_query(
            params, kind=kind, account_id=account_id, owner_id=user_id,
            api=self.api, now=self.clock(), unpaginated=as_csv,
        )
        offset, interactions, by_user = query.utc_offset, kind == KIND_INTERACTIONS, user_id is not None
        columns = kazoo.INTERACTION_COLUMNS if interactions else kazoo.LIST_COLUMNS
        if interactions:
            def values_of(row: Sequence[Any]) -> list[Any]:
                return kazoo.interaction_values(row[:_N_SOURCE], offset, by_user)
        else:
            def values_of(row: Sequence[Any]) -> list[Any]:
                return kazoo.list_values(row[:_N_SOURCE], offset)

        def as_json(rows: list[tuple]) -> list[str]:
            return [orjson.dumps(dict(zip(columns, values_of(row)))).decode("utf-8") for row in rows]

        inception = None if not interactions else INCEPTION_USER if by_user else INCEPTION_ACCOUNT

        def as_csv_records(rows: list[Any]) -> bytes:
            return list_csv(rows, offset, inception)

        def chunk_sql(start: Sequence[Any] | None, n: int) -> tuple[str, list[Any]]:
            return list_sql(replace(query, page_size=n - 1,
                                    cursor=query.cursor if start is None else cursor_for(query, start)))

        if query.page_size is None:  # every row: in keyset chunks, no long snapshot
            if as_csv:
                # Packed chunks, read one ahead in the thread pool while the hub renders.
                # On a cold page cache, the rows ahead are read in file order first.
                stream = self.pool.keyset_stream(lambda start, n: packed_sql(*chunk_sql(start, n)),
                                                 chunk=CSV_BATCH, heavy=is_heavy(query), decode=unpack_rows,
                                                 ahead=True, descending=not query.ascending,
                                                 warm=lambda low, high: warm_sql(account_id, user_id, low, high))
                default = "interactions.csv" if interactions else "cdrs.csv"
                return self.csv_body(stream, as_csv_records, columns, self.file_name(params, default))
            return self.json_body(self.pool.keyset_stream(chunk_sql, heavy=is_heavy(query)), as_json)
        sql, args = list_sql(query)
        rows = self.pool.fetch_all(sql, args, limit=query.page_size + 1, heavy=is_heavy(query))
        page, rest = rows[: query.page_size], rows[query.page_size:]
        fields: dict[str, Any] = {"page_size": len(page)}
        if page:
            fields["start_key"] = encode_cursor(cursor_for(query, page[0]))
        elif query.cursor is not None:
            fields["start_key"] = first(params, "start_key")
        if rest:
            fields["next_start_key"] = encode_cursor(cursor_for(query, rest[0]))
        self.count_rows("json", len(page))
        return self.envelope("[%s]" % ",".join(as_json(page)), fields)

    def cdr_detail(self, account_id: str, cdr_id: str) -> Any:
        params = self.params()
        self.authorize(params, account_id)
        as_csv = self.wants(params, _CSV_TYPES, "csv")
        rows = self.pool.fetch_all(*detail_sql(account_id, cdr_id, "csv" if as_csv else "json"), limit=1)
        if not rows:
            raise ApiError(404, "could not find cdr with supplied id", {})
        self.count_rows("csv" if as_csv else "json", 1)
        if as_csv:
            self.csv_headers(self.file_name(params, "cdr-%s.csv" % cdr_id))
            return (kazoo.csv_records([kazoo.csv_header(kazoo.RECORD_CSV_FIELDS)]) + rows[0][0] + "\r\n").encode("utf-8")
        # Kazoo's revision (and ETag) of a document: changes whenever the record does.
        record = kazoo.record_text(rows[0][0])
        revision = hashlib.md5(record.encode("utf-8"), usedforsecurity=False).hexdigest()
        bottle.response.set_header("ETag", '"%s"' % revision)
        return self.envelope(record, {"revision": revision})

    def legs(self, account_id: str, leg_id: str) -> Any:
        params = self.params()
        self.authorize(params, account_id)
        as_csv = self.wants(params, _CSV_TYPES, "csv")
        fmt = "csv" if as_csv else "json"
        stream = self.pool.keyset_stream(lambda start, n: legs_sql(account_id, leg_id, fmt, start, n))
        if stream.empty:
            stream.close()
            raise ApiError(404, "could not find legs for supplied id", {})
        if as_csv:
            return self.csv_body(stream, _records_csv, kazoo.RECORD_CSV_FIELDS, self.file_name(params, "legs.csv"))
        return self.json_body(stream, _records_json)

    def stats(self, account_id: str, user_id: str | None = None) -> Any:
        """KPIs per time bucket (query/stats.py): JSON, or the buckets as CSV.

        Through the heavy lane (`max_range` by minute is 44,701 buckets: its
        statements read the whole range, and adding up and rendering the
        buckets is half a second of Python), that Python work paced on the hub."""
        params = self.params()
        self.authorize(params, account_id)
        query = parse_stats_query(params, account_id=account_id, owner_id=user_id, api=self.api,
                                  now=self.clock())
        as_csv = self.wants(params, _CSV_TYPES, "csv")
        with self.pool.heavy.slot():
            result = run_stats(self.pool, query)
            breathe = self.pool.heavy.pacer()
            if as_csv:
                body = stats_csv(result, breathe)
            else:
                parts = [_dumps(chunk)[1:-1] for chunk in paced_chunks(result["buckets"], breathe)]
                body = '{"totals":%s,"buckets":[%s]}' % (_dumps(result["totals"]), ",".join(parts))
        if as_csv:
            self.csv_headers(self.file_name(params, "cdr-stats.csv"))
            return body.encode("utf-8")
        return self.envelope(body, {})

    def worst(self, account_id: str, user_id: str | None = None) -> Any:
        """The worst legs of a range: lowest MOS, longest PDD, or no RTP received."""
        params = self.params()
        self.authorize(params, account_id)
        query = parse_worst_query(params, account_id=account_id, owner_id=user_id, api=self.api,
                                  now=self.clock())
        # Filters are not indexed: SQLite may test them on every leg of the range.
        rows = self.pool.fetch_all(*worst_sql(query), limit=query.limit, heavy=bool(query.filters))
        legs = [{name: value for name, value in zip(WORST_COLUMNS, row) if value is not None} for row in rows]
        if self.wants(params, _CSV_TYPES, "csv"):
            self.csv_headers(self.file_name(params, "cdr-worst-%s.csv" % query.kind))
            cells = [["" if leg.get(name) is None else str(leg[name]) for name in WORST_COLUMNS] for leg in legs]
            return kazoo.csv_records([WORST_COLUMNS] + cells).encode("utf-8")
        return self.envelope(_dumps(legs), {"page_size": len(legs)})

    def feed(self) -> Any:
        params = self.params()
        if self.scope(params) != COLLECTOR:
            raise forbidden()
        ndjson = self.wants(params, ("application/x-ndjson",), "ndjson")
        query = parse_feed_query(params, streamed=ndjson)
        # Pulling with after=N says "I have stored every seq <= N": the
        # acknowledgement retention waits for (docs/database.md).  Keyed by the
        # token's sha256, never the token.
        # A collector logged in through api_auth acknowledges as its API key.
        token = self.presented_token(params) or ""
        session_key = self.sessions.key_of(token)
        self.acknowledge(session_key.hex() if session_key is not None else token_key(token), query.after,
                         int(self.clock() * 1_000_000))
        db_id = self.pool.fetch_all(DB_ID_SQL, (), limit=1)[0][0]
        bottle.response.set_header("X-DB-ID", db_id)
        bottle.response.set_header("X-Feed-Last-Seq", str(self.pool.fetch_all(LAST_SEQ_SQL, (), limit=1)[0][0]))
        if ndjson:
            return self.ndjson_body(self.pool.keyset_stream(
                lambda start, n: feed_sql(FeedQuery(query.after if start is None else start[-1] - 1, n)),
                limit=query.limit))
        rows = self.pool.fetch_all(*feed_sql(query), limit=query.limit)
        self.count_rows("json", len(rows))
        next_after = rows[-1][1] if rows else query.after
        return self.envelope("[%s]" % ",".join(_records_json(rows)),
                             {"next_after": next_after, "db_id": db_id})

    def channels(self, account_id: str | None = None, user_id: str | None = None) -> Any:
        """Live legs from the trackers (a snapshot); ``/v2/channels``, every
        account's and those without one, is the collector scope's."""
        params = self.params()
        if account_id is None:
            if self.scope(params) != COLLECTOR:
                raise forbidden()
        else:
            self.authorize(params, account_id)
        found = self.channels_fn(account_id, user_id)
        # orjson: 10,000 live legs take 12 ms here, 80 ms with the stdlib encoder,
        # and the event readers wait meanwhile (one gevent hub).
        return self.envelope(orjson.dumps(found).decode("utf-8"), {"page_size": len(found)})

    # -- login (Kazoo's cb_api_auth / cb_user_auth) -------------------------

    def login_body(self) -> Any:
        """The request body as JSON; 413 past ``max_body_bytes`` (refused on its
        Content-Length, before a byte is read; at most one byte more of a chunked
        body is read), Kazoo's 400 when it is not JSON or cannot be read (a broken
        chunked body).  ``wsgi.input`` itself, never Bottle's ``request.body``, which
        reads the whole Content-Length into a temporary file first."""
        limit = self.api.limits.max_body_bytes
        too_large = ApiError(413, "request entity too large",
                             {"message": "the request body is larger than %d bytes" % limit})
        if bottle.request.content_length > limit:
            raise too_large
        try:
            body = bottle.request.environ["wsgi.input"].read(limit + 1)
        except OSError:  # gevent's broken chunked body, a connection cut mid-body
            raise ApiError(400, "bad request", {"message": "the request body could not be read"}) from None
        if len(body) > limit:
            raise too_large
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ApiError(400, "validation error", {"json": {"invalid": {
                "message": "failed to parse request body as JSON", "target": "body"}}}) from None

    def api_auth(self) -> Any:
        """``PUT /v2/api_auth {"data": {"api_key": KEY}}``: KEY is a token of
        the tokens file; the answer is a session token (201), as Kazoo."""
        payload = self.login_body()
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, dict):
            raise ApiError(400, "validation error", {"data": {"type": {
                "message": "the request envelope needs a data object", "target": "body"}}})
        api_key = data.get("api_key")
        account = self.tokens.lookup(api_key) if isinstance(api_key, str) and api_key else None
        if account is None:
            raise invalid_credentials()
        token = self.sessions.create(digest(api_key), account)
        bottle.request.environ["eslcdr.auth_token"] = token  # the envelope's auth_token
        data_json = _dumps({"account_id": account})
        revision = hashlib.md5(data_json.encode("utf-8"), usedforsecurity=False).hexdigest()
        bottle.response.status = 201
        return self.envelope(data_json, {"revision": revision})

    def user_auth(self) -> Any:
        """Kazoo's user/password login: there are no users here."""
        raise invalid_credentials()

    @staticmethod
    def preflight(method: str) -> Callable[..., Any]:
        """OPTIONS on a route: 204 and ``Allow``; CdrApi adds the CORS headers."""
        allow = "%s, OPTIONS" % method

        def answer(**_: Any) -> bytes:
            bottle.response.status = 204
            bottle.response.set_header("Allow", allow)
            return b""

        return answer

    def tokeninfo(self) -> Any:
        """Kazoo's ``GET /v2/auth/tokeninfo``: which account the presented
        token reads (``*`` for the collector scope); the page starts here."""
        scope = self.scope(self.params())
        return self.envelope(_dumps({"account_id": scope}), {})

    def health(self) -> Any:
        info = dict(self.health_fn())
        status = 200 if info.get("status", "ok") == "ok" else 503
        return self.json_response(info, status)

    def prometheus(self) -> Any:
        bottle.response.content_type = CONTENT_TYPE_LATEST
        return generate_latest(self.registry)

    # -- Bottle's own errors (no route, wrong verb, unhandled exception) -----

    def bottle_error(self, err: bottle.HTTPError) -> bytes:
        code = err.status_code
        if code == 404:
            return self.error_response(404, "faulty_request", {"message": "faulty request"})
        if code == 405:
            return self.error_response(405, "invalid_method", {"message": "method not allowed"})
        if code >= 500:
            # Never the exception's text or repr: it may hold request bytes.
            exc = err.exception
            log.error("api_unhandled_exception", path=self.log_path(), error=type(exc).__name__,
                           frames="".join(traceback.format_tb(getattr(exc, "__traceback__", None)))[-4000:])
            return self.error_response(500, "unspecified_fault", {"message": "unspecified fault"})
        return self.error_response(code, "bad request", {"message": str(err.body)[:200]})


def create_app(
    config: Config,
    *,
    health: HealthFn | None = None,
    registry: CollectorRegistry | None = None,
    tokens: TokenStore | None = None,
    clock: Callable[[], float] = time.time,
    runner: InlineRunner | GeventRunner | None = None,
    acknowledge: AckFn | None = None,
    channels: ChannelsFn | None = None,
    sessions: SessionStore | None = None,
) -> CdrApi:
    """Build the API for ``config`` (database ``[store] path``, ``[api]`` settings).

    ``health`` returns the daemon's state for ``/health`` (a ``status`` other
    than ``"ok"`` answers 503); ``registry`` receives the API's metrics and is
    what ``/metrics`` exports; ``tokens`` defaults to ``[api] tokens_file``;
    ``runner`` runs SQLite calls (default: gevent's thread pool);
    ``acknowledge(token_sha256, after, at_us)`` stores a collector's
    acknowledgement (the daemon passes its writer's; default: a short write
    of its own, waiting at most 200 ms for the lock).
    ``channels(account_id, owner_id)`` lists live legs (the daemon's trackers).
    ``sessions`` holds login sessions (default: ``[api] session_ttl``).
    """
    registry = registry if registry is not None else CollectorRegistry()
    metrics = Metrics.create(registry)
    pool = ReaderPool(config.store.path, config.api.statement_timeout, runner=runner,
                      heavy_slots=config.api.heavy_queries)
    routes = _Routes(
        config,
        pool,
        tokens if tokens is not None else TokenStore(config.api.tokens_file),
        health or (lambda: {"status": "ok"}),
        registry,
        metrics,
        clock,
        acknowledge or _direct_ack(config.store.path),
        sessions if sessions is not None else SessionStore(config.api.session_ttl),
        channels or no_channels,
    )
    app = bottle.Bottle(catchall=True)
    app.default_error_handler = routes.bottle_error
    guard = routes.guard
    account = "/v2/accounts/<account_id>"
    # Literal segments first: Bottle tries dynamic routes in definition order.
    table = (
        (account + "/cdrs", "GET", guard(routes.list_cdrs)),
        (account + "/cdrs/interaction", "GET", guard(routes.list_interactions)),
        (account + "/cdrs/legs/<leg_id>", "GET", guard(routes.legs)),
        (account + "/cdrs/stats", "GET", guard(routes.stats)),
        (account + "/cdrs/worst", "GET", guard(routes.worst)),
        (account + "/cdrs/<cdr_id>", "GET", guard(routes.cdr_detail)),
        (account + "/users/<user_id>/cdrs", "GET", guard(routes.list_cdrs)),
        (account + "/users/<user_id>/cdrs/interaction", "GET", guard(routes.list_interactions)),
        (account + "/channels", "GET", guard(routes.channels)),
        (account + "/users/<user_id>/channels", "GET", guard(routes.channels)),
        ("/v2/channels", "GET", guard(routes.channels)),
        (account + "/users/<user_id>/cdrs/stats", "GET", guard(routes.stats)),
        (account + "/users/<user_id>/cdrs/worst", "GET", guard(routes.worst)),
        ("/v2/feed/cdrs", "GET", guard(routes.feed)),
        ("/v2/auth/tokeninfo", "GET", guard(routes.tokeninfo)),
        (HEALTH_PATH, "GET", routes.health),
        (METRICS_PATH, "GET", routes.prometheus),
        ("/v2/cdrs", "GET", guard(routes.own_account(routes.list_cdrs))),
        ("/v2/cdrs/interaction", "GET", guard(routes.own_account(routes.list_interactions))),
        ("/v2/cdrs/legs/<leg_id>", "GET", guard(routes.own_account(routes.legs))),
        ("/v2/cdrs/<cdr_id>", "GET", guard(routes.own_account(routes.cdr_detail))),
        ("/v2/api_auth", "PUT", guard(routes.api_auth)),
        ("/v2/user_auth", "PUT", guard(routes.user_auth)),
    )
    for rule, method, handler in table:
        app.route(rule, method, handler)
        # Browsers preflight cross-origin requests; Bottle's 405 would block them.
        app.route(rule, "OPTIONS", routes.preflight(method))
    webpage.add_routes(app)
    return CdrApi(app, pool, metrics, routes, config.api.cors_origins)


def _direct_ack(path: str) -> AckFn:
    def acknowledge(key: str, after: int, at_us: int) -> None:
        try:
            record_ack(path, key, after, at_us)
        except sqlite3.Error as exc:
            # Not fatal: the collector acknowledges again with its next pull.
            log.warning("feed_ack_not_stored", error=str(exc))

    return acknowledge


# ------------------------------------------------------------------- server


def make_server(app: Callable, host: str, port: int, **kwargs: Any) -> "WSGIServer":
    """``server.make_server``: the app on gevent.pywsgi, bounded and redacting."""
    from ..web.server import make_server as make  # imports gevent.pywsgi: only when serving

    return make(app, host, port, **kwargs)
