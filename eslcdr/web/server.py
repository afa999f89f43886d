"""The hardened HTTP server: gevent.pywsgi, held to account.

``make_server(app, host, port, limits=...)`` serves a WSGI app with a handler
that treats every client as possibly hostile (``ServerLimits``, from ``[api]`` or
``[collector]``): reads, bodies and the connection cap are web/limits.py's; a
response write that makes no progress for ``send_timeout`` drops the client.
A request gevent cannot parse, or past a limit, gets Kazoo's JSON error envelope
and one warning line naming the reason -- never the raw bytes, which may hold a
token; gevent's own stderr messages and tracebacks are replaced.  Client mistakes
are logged once per kind and LOG_INTERVAL, their repeats counted (``Repeats``).
The access line holds the target through ``redact.Redactor``; unexpected errors
are logged with the exception type and stack frames, never the exception's text.
gevent's private hooks overridden or relied on here are pinned by
tests/unit/web/test_server.py, so that a gevent upgrade that drops one fails loudly.
"""

from __future__ import annotations

import io
import json
import re
import socket
import time
from typing import TYPE_CHECKING, Any, Callable

import gevent
import structlog
from gevent import pywsgi
from gevent.pool import Pool

from .. import __version__
from ..config import ServerLimits
from ..supervise import frames
from .limits import PROBATION, REJECT_SLACK, ClientFault, Receiver, Slots, fault_answer, read_body
from .redact import Redactor, presented_in_environ

if TYPE_CHECKING:
    from gevent.pywsgi import WSGIServer

__all__ = ["AccessLog", "STATUS_IS_STATE", "ServerLimits", "envelope_bytes", "make_server"]

log = structlog.get_logger(__name__)

LOG_INTERVAL = 10.0  # seconds: a kind of client mistake gets one line, then one http_repeated line
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT"})
_STATUS_REASONS = {400: "Bad Request", 408: "Request Timeout", 413: "Payload Too Large", 414: "URI Too Long",
                   431: "Request Header Fields Too Large", 500: "Internal Server Error",
                   503: "Service Unavailable"}
# The status in an access line (ApiHandler.format_request): `client "request line" STATUS LENGTH SECONDS`.
_ACCESS_STATUS = re.compile(r'" (\d{3}) ')
# Set in the WSGI environ by a route whose 5xx is its answer, not a failure (/health's
# 503: "degraded", polled by monitoring all through a FreeSWITCH outage, whose start
# and end have their own lines): its access line is debug, as a served request's.
STATUS_IS_STATE = "eslcdr.status_is_state"


class AccessLog:
    """pywsgi's access and error log as structlog ``http_request`` lines, one per request:
    a successful request at debug (a collector polls the feed every few seconds, the
    info log stays readable), a refused or failed one (4xx -- of which the server passes
    one per status every LOG_INTERVAL, ``Repeats`` -- 5xx but a ``STATUS_IS_STATE`` 503, or
    no status) at info."""

    def write(self, line: str) -> None:
        line = line.strip()
        if line:
            status = _ACCESS_STATUS.search(line)
            failed = status is None or int(status.group(1)) >= 400
            (log.info if failed else log.debug)("http_request", line=line)

    def flush(self) -> None:  # pywsgi may call it
        pass


def envelope_body(status: int, message: str, detail: str) -> bytes:
    """Kazoo's error envelope."""
    return json.dumps({"data": {"message": detail}, "error": str(status), "message": message,
                       "status": "error", "version": __version__}, separators=(",", ":")).encode()


def envelope_bytes(status: int, message: str, detail: str, extra_headers: str = "") -> bytes:
    """A complete HTTP/1.1 response (connection closed) with Kazoo's error envelope;
    ``extra_headers`` are whole header lines (CRLF-terminated)."""
    body = envelope_body(status, message, detail)
    head = "HTTP/1.1 %d %s\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n" % (
        status, _STATUS_REASONS.get(status, "Error"), len(body), extra_headers)
    return head.encode("latin-1") + body


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


class Repeats:
    """Client mistakes are logged once per kind and LOG_INTERVAL: the first line goes
    out as it comes, the repeats in the interval are counted, and one
    ``http_repeated`` line per kind gives their number when the interval ends (or
    the server stops) -- a flood of 401s or broken requests stays a few lines, and
    journald's rate limit keeps the lines that matter."""

    def __init__(self, interval: float = LOG_INTERVAL) -> None:
        self.interval = interval
        self._until: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._flusher: gevent.Greenlet | None = None

    def admit(self, kind: str) -> bool:
        """True: log this one; False: it was counted."""
        now = time.monotonic()
        until = self._until.get(kind, 0.0)
        if now >= until:
            self._until[kind] = now + self.interval
            return True
        self._counts[kind] = self._counts.get(kind, 0) + 1
        if self._flusher is None:
            self._flusher = gevent.spawn_later(until - now, self.flush)
        return False

    def flush(self) -> None:
        flusher, self._flusher = self._flusher, None
        if flusher is not None and flusher is not gevent.getcurrent():
            flusher.kill(block=False)
        counts, self._counts = self._counts, {}
        for kind, count in sorted(counts.items()):
            log.warning("http_repeated", kind=kind, repeated=count)


def make_server(app: Callable, host: str, port: int, limits: ServerLimits | None = None,
                **kwargs: Any) -> "WSGIServer":
    """A gevent WSGIServer for ``app`` with the bounds of ``limits``.

    ``app.is_token(text)``, when present, lets the access log redact known
    tokens wherever a client put them; the access lines go to ``AccessLog``.
    Extra keyword arguments go to ``WSGIServer`` (``log``, ``error_log``...).
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
        _parsed = False  # this request's head was parsed (it gets an access line)
        _logged = False  # this request already has its own log line

        def __init__(self, sock: Any, address: Any, server: Any) -> None:
            super().__init__(sock, address, server)
            self.rfile.close()  # gevent's buffered reader: never read, the socket stays open
            # gevent drops its rfile when the connection ends; the server still
            # asks the receiver whether it evicted this one.
            self.receiver = self.rfile = Receiver(sock, limits)

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
            except ClientFault as fault:  # the connection's boundary: nothing above knows it
                log.debug("http_connection_lost", client=self._client(), error=fault.reason)
            except Exception as exc:  # noqa: BLE001 -- connection boundary: gevent would print it raw
                log.error("http_handler_error", client=self._client(), error=type(exc).__name__,
                          frames=frames(exc.__traceback__))

        def _client(self) -> str:
            address = self.client_address
            return str(address[0]) if isinstance(address, tuple) else str(address or "-")

        def _warn(self, event: str, kind: str, **fields: Any) -> None:
            """One warning line, or a count in the next http_repeated line."""
            self._logged = True
            if self.server.repeats.admit("%s:%s" % (event, kind)):
                log.warning(event, client=self._client(), **fields)

        def _fault(self, fault: ClientFault) -> tuple[int, str, str]:
            status, event, message, detail = fault_answer(fault.reason, limits)
            fields: dict[str, Any] = {"status": status, "reason": fault.reason}
            if status == 408 and fault.reason != "evicted":
                fields[fault.reason] = getattr(limits, fault.reason)
            self._warn(event, fault.reason, **fields)
            return status, message, detail

        # -- reading a request: idle wait, then its deadlines (limits.Receiver) --------

        def read_requestline(self):
            if self.server.closing or not self.receiver.next_request():
                return ""  # closed, silent for idle_timeout, evicted, or stopping: close without a word
            return self.rfile.readline(pywsgi.MAX_REQUEST_LINE).decode("latin-1")

        def read_request(self, raw_requestline):
            result = super().read_request(raw_requestline)
            self.receiver.head_read()
            self._parsed = bool(result)
            if (self.content_length or 0) > limits.max_body_bytes:
                raise ClientFault("body_too_large")  # answered before a byte of it is read
            return result

        def get_environ(self):
            # The body is read here, before the application runs (at most
            # max_body_bytes, under the request's deadlines): the application
            # never waits on a client, and a connection on probation takes a
            # slot only with its whole request in hand.
            env = super().get_environ()
            body = read_body(self.wsgi_input, limits.max_body_bytes)
            if self.wsgi_input.chunked_input:  # de-chunked now: the app sees a plain body
                env.pop("HTTP_TRANSFER_ENCODING", None)
            if body or self.wsgi_input.chunked_input:
                env["CONTENT_LENGTH"] = str(len(body))
            env["wsgi.input"] = io.BytesIO(body)
            env["wsgi.input_terminated"] = True
            if not self.server.slots.take(self):
                raise ClientFault("no_slot")
            return env

        def handle_one_request(self):
            self._parsed = self._logged = False
            try:
                result = super().handle_one_request()
            except ClientFault as fault:  # in the request line or head: nothing answered yet
                status, message, detail = self._fault(fault)
                return (str(status), envelope(status, message, detail))
            if isinstance(result, tuple):
                code = int(result[0])
                if not self._logged:  # gevent's own 414 (request line too long)
                    reason = "request_line_too_long" if code == 414 else "bad_request"
                    self._warn("http_bad_request", reason, status=code, reason=reason)
                message = "faulty_request" if code == 414 else "bad_request"
                detail = "request uri too long" if code == 414 else "bad request"
                return (result[0], envelope(code, message, detail))
            return result

        def _handle_client_error(self, ex):
            # gevent prints a traceback for anything but ValueError and logs
            # the raw request line: one structured line instead.
            reason = bad_request_reason(ex)
            self._warn("http_bad_request", reason, status=400, reason=reason)
            return ("400", envelope(400, "bad_request", "bad request"))

        def log_error(self, msg, *args):
            self._warn("http_server_error", "gevent", message=str(msg)[:200])

        # -- errors while answering ---------------------------------------------

        def handle_error(self, t, v, tb):
            if issubclass(t, TimeoutError):
                self.close_connection = True
                self._warn("http_client_stalled", "send_timeout", path=self._loggable_target(),
                           send_timeout=limits.send_timeout, sent_bytes=self.response_length)
                return
            if not issubclass(t, gevent.GreenletExit) and not getattr(v, "eslcdr_logged", False):
                log.error("http_handler_error", client=self._client(), path=self._loggable_target(),
                          error=t.__name__, frames=frames(tb))
            self._send_error_response_if_possible(500)

        def _send_error_response_if_possible(self, error_code):
            if self.response_length or error_code not in (400, 500):
                return super()._send_error_response_if_possible(error_code)
            if error_code == 400:
                self._send_envelope(400, "bad_request", "bad request")
            else:
                self._send_envelope(500, "unspecified_fault", "unspecified fault")

        def _send_envelope(self, status: int, message: str, detail: str) -> None:
            body = envelope_body(status, message, detail)
            try:
                self.start_response("%d %s" % (status, _STATUS_REASONS[status]), [
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
            if self._logged:
                return  # its own line says what happened
            line = self.format_request()
            code = self.code if self.status else 0
            if 400 <= code < 500 and not self.server.repeats.admit("http_request:%d" % code):
                log.debug("http_request", line=line)  # counted in the next http_repeated line
                return
            if code == 503 and (self.environ or {}).get(STATUS_IS_STATE):
                log.debug("http_request", line=line)
                return
            self.server.log.write(line + "\n")

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
        """Connections held to ``limits.max_connections`` (``Slots``): past them
        on probation, then answered 503 at accept."""

        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, **kw)
            self.slots = Slots(limits.max_connections)
            self.repeats = Repeats()
            self.closing = False  # stop(): no next request on a kept-alive connection

        @property
        def active_connections(self) -> int:
            return len(self.slots.holders)

        @property
        def probation(self) -> set:
            return self.slots.probation

        def handle(self, sock, address):
            group = self.slots.place()
            if group is None:
                if self.repeats.admit("http_connections_refused:at_accept"):
                    log.warning("http_connections_refused", max_connections=limits.max_connections)
                try:
                    sock.settimeout(1.0)
                    sock.sendall(envelope(503, "too_many_connections", "too many connections"))
                except OSError:
                    pass
                finally:
                    sock.close()
                return
            handler = self.handler_class(sock, address, self)
            group.add(handler)
            try:
                handler.handle()
            finally:
                self.slots.release(handler)

        def stop(self, timeout: float | None = None) -> None:
            """Stop accepting; close the connections idle between two requests
            (a collector's keep-alive would hold the stop for the whole
            ``timeout``), let requests in progress end within it."""
            self.closing = True  # a connection accepted from here on reads no request
            self.slots.close_idle()
            super().stop(timeout)
            self.repeats.flush()

    kwargs.setdefault("spawn", Pool(limits.max_connections + PROBATION + REJECT_SLACK))
    kwargs.setdefault("log", AccessLog())
    kwargs.setdefault("error_log", AccessLog())
    return ApiWSGIServer((host, port), app, handler_class=ApiHandler, **kwargs)
