"""What every resource shares: envelopes, errors, the token check, negotiation.

``Core`` holds the request-independent state (``[api]`` settings, node name,
tokens, sessions, clock, the rows counter) and answers for the current Bottle request:
its parameters, its token's scope (unknown -> 401, another account -> 403;
the ``*`` token reads any), JSON or CSV (``?accept=`` wins over Accept), the
success envelope and Kazoo's error envelope ``{"status": "error", "error":
"<code>", "message", "data", ...}`` -- for Bottle's own 404/405/500 too, never
an HTML page.  ``guard`` turns a handler's named failures into that envelope.
Invariants: no JSON answer holds a null; every envelope carries the request
id, node, timestamp, version and the presented token (as Kazoo echoes it).
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.parse
from typing import Any, Callable, Mapping, MutableMapping, Sequence

import bottle
import structlog
from prometheus_client import Counter

from .. import __version__
from ..config import ApiConfig
from ..query.params import ParamError, first
from ..query.reader import DatastoreError, StatementTimeout
from ..supervise import frames
from ..web.redact import Redactor, presented_in_environ
from .sessions import SessionStore
from .tokens import COLLECTOR, TokenStore

log = structlog.get_logger(__name__)

Params = Mapping[str, Sequence[str]]
Route = tuple[str, str, Callable[..., Any]]  # rule, method, handler
ACCOUNT = "/v2/accounts/<account_id>"  # the prefix of an account's routes
MAX_QUERY_FIELDS = 200
# Kazoo's CSV_CONTENT_TYPES: a client asking for octet-stream gets CSV.
CSV_TYPES = ("text/csv", "text/comma-separated-values", "application/octet-stream")
JSON_TYPES = ("application/json", "application/x-json")
_FILE_NAME_UNSAFE = re.compile(r'[\x00-\x1f\x7f"\\/;]')
dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode


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


def token_of(environ: MutableMapping[str, Any]) -> str:
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


def _is_utf8(text: str) -> bool:
    """False for text that held bytes not UTF-8 (decoded with surrogateescape)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def error_payload(status: int, message: str, data: Any, meta: Mapping[str, Any]) -> dict[str, Any]:
    return {"data": data, "error": str(status), "message": message, "status": "error", **meta}


class Core:
    def __init__(self, api: ApiConfig, node: str, tokens: TokenStore, sessions: SessionStore,
                 clock: Callable[[], float], rows: Counter) -> None:
        self.api = api
        self.node = node
        self.tokens = tokens
        self.sessions = sessions
        self.clock = clock
        self.rows = rows  # eslcdr_api_rows: CDR rows sent, by route and format

    # -- envelopes and errors -------------------------------------------------

    def meta(self) -> dict[str, Any]:
        return self.meta_for(bottle.request.environ)

    def meta_for(self, environ: MutableMapping[str, Any]) -> dict[str, Any]:
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

    def envelope(self, data_json: str, fields: Mapping[str, Any]) -> bytes:
        """A success envelope around ``data`` already rendered as JSON text."""
        bottle.response.content_type = "application/json"
        tail = dumps({**fields, "status": "success", **self.meta()})
        return ('{"data":%s,%s' % (data_json, tail[1:])).encode("utf-8")

    def json_response(self, payload: Mapping[str, Any], status: int = 200) -> bytes:
        bottle.response.status = status
        bottle.response.content_type = "application/json"
        return dumps(without_nulls(payload)).encode("utf-8")

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

    def bottle_error(self, err: bottle.HTTPError) -> bytes:
        """Bottle's own errors (no route, wrong verb, unhandled exception)."""
        code = err.status_code
        if code == 404:
            return self.error_response(404, "faulty_request", {"message": "faulty request"})
        if code == 405:
            return self.error_response(405, "invalid_method", {"message": "method not allowed"})
        if code >= 500:
            # Never the exception's text or repr: it may hold request bytes.
            exc = err.exception
            log.error("api_unhandled_exception", path=self.log_path(), error=type(exc).__name__,
                      frames=frames(getattr(exc, "__traceback__", None)))
            return self.error_response(500, "unspecified_fault", {"message": "unspecified fault"})
        return self.error_response(code, "bad request", {"message": str(err.body)[:200]})

    def known_token(self, text: str) -> bool:
        """Whether text is a token of the tokens file or a login session's (logs redact those)."""
        return self.tokens.known(text) or self.sessions.known(text)

    def log_path(self) -> str:
        """The request path fit for a log line (no token, however it was put there)."""
        environ = bottle.request.environ
        return Redactor(self.known_token, presented_in_environ(environ)).target(environ.get("PATH_INFO", ""))

    # -- the request ----------------------------------------------------------

    def params(self) -> dict[str, list[str]]:
        query = bottle.request.environ.get("QUERY_STRING", "")
        try:
            params = urllib.parse.parse_qs(
                query, keep_blank_values=True, errors="surrogateescape", max_num_fields=MAX_QUERY_FIELDS
            )
        except ValueError:
            raise ApiError(400, "validation error", {"query": {"maxItems": {
                "message": "at most %d query parameters" % MAX_QUERY_FIELDS}}}) from None
        if not query.isascii() or "%" in query:
            # A percent-escape that is not UTF-8 (a lone surrogate here): a
            # filter would silently match nothing, a number fail vaguely.
            for name, values in params.items():
                if not all(map(_is_utf8, values)) or not _is_utf8(name):
                    raise ParamError(name.encode("utf-8", "surrogateescape").decode("utf-8", "replace"), "type",
                                     "the value is not UTF-8 text")
        return params

    @staticmethod
    def presented_token() -> str | None:
        return token_of(bottle.request.environ) or None

    def scope(self) -> str:
        """The presented token's account (or COLLECTOR); 401 if none is valid.

        A token is an API key of the tokens file or a live login session."""
        token = self.presented_token()
        account = None
        if token:
            account = self.sessions.lookup(token, self.tokens.lookup_digest)
            if account is None:
                account = self.tokens.lookup(token)
        if account is None:
            raise invalid_credentials()
        return account

    def authorize(self, account_id: str) -> str:
        """The scope, when it may read ``account_id``; 401 / 403 otherwise."""
        scope = self.scope()
        if scope != COLLECTOR and scope != account_id:
            raise forbidden()
        return scope

    def account_params(self, account_id: str) -> dict[str, list[str]]:
        """The parameters of a request on ``account_id``'s data, once its token may read them."""
        params = self.params()
        self.authorize(account_id)
        return params

    def wants_csv(self, params: Params) -> bool:
        return self.wants(params, CSV_TYPES, "csv")

    @staticmethod
    def wants(params: Params, media_types: Sequence[str], short: str) -> bool:
        """``?accept=<short or type>`` wins; else the Accept header ranks one of
        ``media_types`` above JSON."""
        accept_param = (first(params, "accept") or "").strip().lower()
        if accept_param:
            return accept_param == short or accept_param in media_types
        return accepts_first(bottle.request.headers.get("Accept", ""), media_types, JSON_TYPES)

    # -- CSV answers and row counts -------------------------------------------

    @staticmethod
    def file_name(params: Params, default: str) -> str:
        """The download's name: ``X-File-Name``, else ``?file_name=``, else ``default``
        (Kazoo's api_util:csv_file_name/2 asks the header first), made safe for the header."""
        name = bottle.request.headers.get("X-File-Name") or first(params, "file_name") or default
        name = _FILE_NAME_UNSAFE.sub("_", os.path.basename(name.strip()))[:200]
        return name or default

    @staticmethod
    def csv_headers(file_name: str) -> None:
        bottle.response.content_type = "text/csv"  # exactly, as Kazoo (the body is UTF-8)
        fallback = file_name.encode("ascii", "replace").decode("ascii").replace("?", "_")
        disposition = 'attachment; filename="%s"' % fallback
        if fallback != file_name:
            disposition += "; filename*=UTF-8''%s" % urllib.parse.quote(file_name, safe="")
        bottle.response.set_header("Content-Disposition", disposition)

    def rows_counter(self, fmt: str) -> Counter:
        """The ``eslcdr_api_rows`` counter of the current route and ``fmt``."""
        route = bottle.request.environ.get("bottle.route")
        return self.rows.labels(route.rule if route else "unmatched", fmt)

    def count_rows(self, fmt: str, n: int) -> None:
        self.rows_counter(fmt).inc(n)
