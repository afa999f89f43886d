"""The socket side of the API: gevent.pywsgi, held to account.

``make_server(app, host, port, limits=...)`` serves the WSGI app with a
handler that treats every client as possibly hostile:

- Time bounds (``ServerLimits``, from ``[api]``): a connection that sends
  nothing for ``idle_timeout`` seconds -- a new one, or a keep-alive between
  requests -- is closed; a request head (request line and headers) must be
  complete ``header_timeout`` seconds after its first byte, else 408 (the
  slow-header attack); a response write that makes no progress for
  ``send_timeout`` seconds drops the client (a reader that stopped reading).
- At most ``max_connections`` connections are served at once; the next ones
  get a 503 envelope and are closed, and past a small slack the server stops
  accepting until a slot frees (the kernel's backlog holds them).
- Every request gevent cannot parse (bad request line, bad HTTP version, more
  than 100 headers, a too-long line) gets Kazoo's JSON error envelope and one
  structured warning line naming the reason -- never the raw bytes, which may
  hold a token; gevent's own stderr messages and tracebacks are replaced.
- The access log line holds the request target through ``redact.Redactor``
  (decoded spellings of ``auth_token``, the presented credentials, known
  tokens anywhere in path or query).  Unexpected errors are logged with the
  exception type and the stack frames, never the exception's text or repr
  (a ``UnicodeDecodeError`` carries the undecodable bytes).
"""

from __future__ import annotations

import json
import socket
import time
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import gevent
import structlog
from gevent import pywsgi
from gevent.pool import Pool

from . import __version__
from .config import DEFAULTS, ApiConfig
from .redact import Redactor, presented_in_environ

if TYPE_CHECKING:
    from gevent.pywsgi import WSGIServer

log = structlog.get_logger("eslcdr.http")

# Connections past the cap that are still accepted (to be answered 503);
# beyond these the listener pauses.
REJECT_SLACK = 16
REFUSAL_LOG_INTERVAL = 10.0  # seconds between "connections refused" lines under a flood
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT"})
_STATUS_REASONS = {400: "Bad Request", 408: "Request Timeout", 414: "URI Too Long",
                   503: "Service Unavailable"}


@dataclass(frozen=True, slots=True)
class ServerLimits:
    header_timeout: float
    idle_timeout: float
    send_timeout: float
    max_connections: int

    @classmethod
    def from_api(cls, api: ApiConfig) -> "ServerLimits":
        return cls(api.header_timeout, api.idle_timeout, api.send_timeout, api.max_connections)

    @classmethod
    def default(cls) -> "ServerLimits":
        api = DEFAULTS["api"]
        return cls(float(api["header_timeout"]), float(api["idle_timeout"]), float(api["send_timeout"]),
                   int(api["max_connections"]))


def envelope_bytes(status: int, message: str, detail: str, extra_headers: str = "") -> bytes:
    """A complete HTTP/1.1 response (connection closed) with Kazoo's error envelope;
    ``extra_headers`` are whole header lines (CRLF-terminated)."""
    body = json.dumps({"data": {"message": detail}, "error": str(status), "message": message,
                       "status": "error", "version": __version__}, separators=(",", ":")).encode()
    head = "HTTP/1.1 %d %s\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n" % (
        status, _STATUS_REASONS.get(status, "Error"), len(body), extra_headers)
    return head.encode("latin-1") + body


def _frames(tb: Any) -> str:
    """The stack of a traceback without the exception's message."""
    return "".join(traceback.format_tb(tb))[-4000:]


def bad_request_reason(exc: BaseException) -> str:
    """A fixed name for why gevent refused a request (never its text)."""
    text = str(exc)
    if text.startswith("Invalid http version"):
        return "bad_http_version"
    if text.startswith(("Invalid HTTP method", "Expected GET method")):
        return "bad_request_line"
    if text.startswith("Invalid headers status"):
        return "bad_header_line"
    if "more than" in text and "headers" in text:
        return "too_many_headers"
    if "Content-Length" in text:
        return "bad_content_length"
    if text.startswith("invalid literal for int()"):
        return "bad_number"  # a Content-Length or an HTTP version that is not one
    if type(exc).__name__ == "_InvalidClientInput":
        return "bad_body"  # e.g. a broken chunked body
    return "bad_request:" + type(exc).__name__


class _Refusals:
    """Counts connections refused at the cap; logs at most one line per interval."""

    def __init__(self) -> None:
        self.count = 0
        self._unlogged = 0
        self._next_log = 0.0

    def refused(self, limit: int) -> None:
        self.count += 1
        self._unlogged += 1
        now = time.monotonic()
        if now >= self._next_log:
            log.warning("http_connections_refused", refused=self._unlogged, max_connections=limit)
            self._unlogged = 0
            self._next_log = now + REFUSAL_LOG_INTERVAL


def make_server(app: Callable, host: str, port: int, limits: ServerLimits | None = None,
                **kwargs: Any) -> "WSGIServer":
    """A gevent WSGIServer for ``app`` with the bounds of ``limits``.

    ``app.is_token(text)``, when present, lets the access log redact known
    tokens wherever a client put them.  Extra keyword arguments go to
    ``WSGIServer`` (``log``, ``error_log``...).
    """
    limits = limits or ServerLimits.default()
    is_token = getattr(app, "is_token", None)
    # The server's own answers (unparseable request, timeouts, connection cap)
    # carry the CORS origin too when any origin may read (``*``): a browser
    # page then sees the error instead of an opaque failure.
    cors = "Access-Control-Allow-Origin: *\r\n" if tuple(getattr(app, "cors_origins", ())) == ("*",) else ""

    def envelope(status: int, message: str, detail: str) -> bytes:
        return envelope_bytes(status, message, detail, cors)

    class ApiHandler(pywsgi.WSGIHandler):
        _head_timer: gevent.Timeout | None = None
        _parsed = False  # this request's head was parsed (it gets an access line)
        _logged = False  # this request already has its own log line

        def handle(self):
            try:
                # Headers and body go out in separate writes; with Nagle on, a
                # keep-alive client waits for its delayed ACK (~40 ms) each time.
                self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError):
                pass  # not a TCP socket (a unix socket)
            self.socket.settimeout(limits.send_timeout)
            try:
                return super().handle()
            except OSError as exc:  # the client went away while we answered it
                log.debug("http_connection_lost", client=self._client(), error=type(exc).__name__)
            except Exception as exc:  # noqa: BLE001 -- connection boundary: gevent would print it raw
                log.error("http_handler_error", client=self._client(), error=type(exc).__name__,
                          frames=_frames(exc.__traceback__))
            finally:
                self._cancel_head_timer()

        def _client(self) -> str:
            address = self.client_address
            return str(address[0]) if isinstance(address, tuple) else str(address or "-")

        def _cancel_head_timer(self) -> None:
            # The reference stays: handle_one_request knows its own timeout by it.
            if self._head_timer is not None:
                self._head_timer.close()

        # -- reading a request: idle wait, then a deadline for the head ----------

        def read_requestline(self):
            idle = gevent.Timeout(limits.idle_timeout)
            idle.start()
            try:
                if not self.rfile.peek(1):
                    return ""  # the client closed
            except gevent.Timeout as timeout:
                if timeout is not idle:
                    raise
                return ""  # silent for idle_timeout: close without a word
            except OSError:
                return ""
            finally:
                idle.close()
            self._head_timer = gevent.Timeout.start_new(limits.header_timeout)
            return self.rfile.readline(pywsgi.MAX_REQUEST_LINE).decode("latin-1")

        def read_request(self, raw_requestline):
            try:
                result = super().read_request(raw_requestline)
            finally:
                self._cancel_head_timer()
            self._parsed = bool(result)
            return result

        def handle_one_request(self):
            self._parsed = self._logged = False
            self._head_timer = None
            try:
                result = super().handle_one_request()
            except gevent.Timeout as timeout:
                if timeout is not self._head_timer:
                    raise
                self._logged = True
                log.warning("http_request_timeout", client=self._client(), status=408,
                            header_timeout=limits.header_timeout)
                try:
                    self.socket.sendall(envelope(408, "request_timeout", "request head not received in time"))
                except OSError:
                    pass
                return None
            finally:
                self._cancel_head_timer()
            if isinstance(result, tuple):
                code = int(result[0])
                if not self._logged:  # gevent's own 414 (request line too long)
                    self._logged = True
                    log.warning("http_bad_request", client=self._client(), status=code,
                                reason="request_line_too_long" if code == 414 else "bad_request")
                message = "faulty_request" if code == 414 else "bad_request"
                detail = "request uri too long" if code == 414 else "bad request"
                return (result[0], envelope(code, message, detail))
            return result

        def _handle_client_error(self, ex):
            # gevent prints a traceback for anything but ValueError and logs
            # the raw request line: one structured line instead.
            self._logged = True
            log.warning("http_bad_request", client=self._client(), status=400, reason=bad_request_reason(ex))
            return ("400", envelope(400, "bad_request", "bad request"))

        def log_error(self, msg, *args):
            log.warning("http_server_error", client=self._client(), message=str(msg)[:200])

        # -- errors while answering ---------------------------------------------

        def handle_error(self, t, v, tb):
            if issubclass(t, TimeoutError):
                self.close_connection = True
                log.warning("http_client_stalled", client=self._client(), path=self._loggable_target(),
                            send_timeout=limits.send_timeout, sent_bytes=self.response_length)
                return
            if not issubclass(t, gevent.GreenletExit) and not getattr(v, "eslcdr_logged", False):
                log.error("http_handler_error", client=self._client(), path=self._loggable_target(),
                          error=t.__name__, frames=_frames(tb))
            self._send_error_response_if_possible(500)

        def _send_error_response_if_possible(self, error_code):
            if self.response_length or error_code != 500:
                return super()._send_error_response_if_possible(error_code)
            body = envelope(500, "unspecified_fault", "unspecified fault").split(b"\r\n\r\n", 1)[1]
            try:
                self.start_response("500 Internal Server Error", [
                    ("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                    ("Connection", "close")] + ([("Access-Control-Allow-Origin", "*")] if cors else []))
                self.write(body)
            except OSError:
                self.close_connection = True

        # -- the access log -------------------------------------------------------

        def _loggable_target(self) -> str:
            if not self._parsed:
                return "-"
            environ = self.environ or {}
            return Redactor(is_token, presented_in_environ(environ)).target(self.path or "")[:2000]

        def log_request(self):
            if self._logged and not self._parsed:
                return  # a bad request: its own line says what happened
            self.server.log.write(self.format_request() + "\n")

        def format_request(self):
            length = self.response_length or "-"
            delta = "%.6f" % (self.time_finish - self.time_start) if self.time_finish else "-"
            method = self.command if self.command in _METHODS else "OTHER"  # a client's word
            request = "%s %s %s" % (method, self._loggable_target(), self.request_version) \
                if self._parsed else "-"
            status = (self._orig_status or self.status or "000")
            if isinstance(status, bytes):
                status = status.decode("latin-1")
            return '%s "%s" %s %s %s' % (self._client(), request, status.split()[0], length, delta)

    class ApiWSGIServer(pywsgi.WSGIServer):
        """Counts live connections; past ``max_connections`` answers 503."""

        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, **kw)
            self.active_connections = 0
            self.refusals = _Refusals()

        def handle(self, sock, address):
            if self.active_connections >= limits.max_connections:
                self.refusals.refused(limits.max_connections)
                try:
                    sock.settimeout(1.0)
                    sock.sendall(envelope(503, "too_many_connections", "too many connections"))
                except OSError:
                    pass
                finally:
                    sock.close()
                return
            self.active_connections += 1
            try:
                super().handle(sock, address)
            finally:
                self.active_connections -= 1

    kwargs.setdefault("spawn", Pool(limits.max_connections + REJECT_SLACK))
    return ApiWSGIServer((host, port), app, handler_class=ApiHandler, **kwargs)
