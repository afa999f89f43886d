"""The socket side of the API: gevent.pywsgi, held to account.

``make_server(app, host, port, limits=...)`` serves the WSGI app with a
handler that treats every client as possibly hostile (``ServerLimits``, from
``[api]`` -- or the collector's ``[collector]``):

- Time: a connection that sends nothing for ``idle_timeout`` seconds -- a new
  one, or a keep-alive between requests -- is closed.  From a request's first
  byte, every wait for the client (``_Receiver``) is bounded: the head must be
  complete within ``header_timeout``, the whole request within
  ``request_timeout``, and after RECEIVE_GRACE seconds its bytes must average
  ``min_receive_rate`` per second; else 408 (slow-header and slow-body
  attacks).  A response write that makes no progress for ``send_timeout``
  seconds drops the client (a reader that stopped reading).
- Size: the head (request line and headers together) is counted against
  ``max_head_bytes`` as it is read (431); a body is read by the server before
  the application runs, whole and at most ``max_body_bytes`` (a larger
  Content-Length is answered 413 before a byte of it is read; a chunked body
  as soon as it passes the limit; a broken one is a 400), so no route ever
  waits on a client or spools a body.
- Slots: at most ``max_connections`` connections hold one; newcomers past
  them are read on probation and, with a whole request, take the slot of the
  holder furthest behind (idle or below the receive rate), else get 503
  (``ApiWSGIServer``).  Past the probation places the listener answers 503,
  then pauses until a slot frees (the kernel's backlog holds them).
- Every request gevent cannot parse (bad request line, bad HTTP version, more
  than 100 headers) gets Kazoo's JSON error envelope and one structured
  warning line naming the reason -- never the raw bytes, which may hold a
  token; gevent's own stderr messages and tracebacks are replaced.  Client
  mistakes are logged once per kind and LOG_INTERVAL, their repeats counted
  (``_Repeats``): a flood stays a few lines.
- The access log line holds the request target through ``redact.Redactor``
  (decoded spellings of ``auth_token``, the presented credentials, known
  tokens anywhere in path or query).  Unexpected errors are logged with the
  exception type and the stack frames, never the exception's text or repr
  (a ``UnicodeDecodeError`` carries the undecodable bytes).

gevent's private hooks overridden or relied on here are pinned by
tests/unit/web/test_server.py, so that a gevent upgrade that drops one fails loudly.
"""

from __future__ import annotations

import io
import json
import socket
import time
import traceback
from typing import TYPE_CHECKING, Any, Callable

import gevent
import structlog
from gevent import pywsgi
from gevent.pool import Pool

from .. import __version__
from ..config import ServerLimits
from .redact import Redactor, presented_in_environ

if TYPE_CHECKING:
    from gevent.pywsgi import WSGIServer

__all__ = ["ClientFault", "ServerLimits", "envelope_bytes", "make_server"]

log = structlog.get_logger(__name__)

# Connections past the cap that are still accepted: on probation (they may
# take a slow holder's slot), then some more to be answered 503; beyond these
# the listener pauses (the kernel's backlog holds them).
PROBATION = 16
REJECT_SLACK = 16
LOG_INTERVAL = 10.0  # seconds: a kind of client mistake gets one line, then one http_repeated line
RECEIVE_GRACE = 2.0  # seconds of a request before min_receive_rate applies
EVICT_AFTER = 1.0  # seconds a client must be behind before it may be evicted at the cap
RECV_SIZE = 16384  # bytes asked of one recv: a head or body overshoots its limit by this at most
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT"})
_STATUS_REASONS = {400: "Bad Request", 408: "Request Timeout", 413: "Payload Too Large", 414: "URI Too Long",
                   431: "Request Header Fields Too Large", 500: "Internal Server Error",
                   503: "Service Unavailable"}


class ClientFault(BaseException):
    """A client passed one of the limits while its request was read (``reason``:
    a key of ``_FAULTS``): it gets that status, one warning line, and its
    connection is closed.  A BaseException, so that gevent's generic handlers
    between the read and ``handle_one_request`` do not take it for a parse error."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# reason -> (status, log event, envelope message, envelope detail; %d: the limit)
_FAULTS = {
    "header_timeout": (408, "http_request_timeout", "request_timeout", "request head not received in time"),
    "request_timeout": (408, "http_request_timeout", "request_timeout", "request not received in time"),
    "min_receive_rate": (408, "http_request_timeout", "request_timeout", "request received too slowly"),
    "evicted": (408, "http_request_timeout", "request_timeout", "request received too slowly"),
    "head_too_large": (431, "http_bad_request", "request header fields too large",
                       "the request head is larger than %d bytes"),
    "body_too_large": (413, "http_bad_request", "request entity too large",
                       "the request body is larger than %d bytes"),
    "bad_body": (400, "http_bad_request", "bad_request", "the request body could not be read"),
    "no_slot": (503, "http_connections_refused", "too_many_connections", "too many connections"),
}


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


class _Repeats:
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


class _Receiver:
    """The read side of one connection (the handler's ``rfile``): its own buffer
    over the socket, and every wait for the client bounded.

    Between requests the client has ``idle_timeout`` for a first byte
    (``next_request``).  From that byte on, a request (head and body) must be
    complete within ``request_timeout``, its head within ``header_timeout``, and
    after RECEIVE_GRACE seconds its bytes must keep up with ``min_receive_rate``
    per second on average; past any of them a read raises ``ClientFault`` (408).
    The head's bytes count against ``max_head_bytes`` (431).  ``evict`` -- the
    server at its cap -- ends a wait at once.  Only a read that finds the buffer
    short waits (one ``recv`` at a time, its timeout the nearest deadline).
    """

    closed = False  # gevent asks

    def __init__(self, sock: Any, limits: ServerLimits) -> None:
        self._sock = sock
        self._limits = limits
        self._buf = bytearray()
        self.since = time.monotonic()  # start of the wait for a request, or of the request
        self.in_request = False
        self.received = 0  # bytes of the current request received so far
        self.head_left: int | None = None  # bytes its head may still take; None: not in a head
        self.waiting = False  # blocked on the client right now
        self.evicted = False

    def next_request(self) -> bool:
        """Wait for the first byte of the next request; False when the client
        closed, stayed silent for idle_timeout or was evicted."""
        self.since, self.in_request, self.head_left = time.monotonic(), False, None
        self.received = 0
        if not self._buf:
            try:
                if not self._fill(self.since + self._limits.idle_timeout, "idle_timeout"):
                    return False
            except (ClientFault, OSError):
                return False
            self.since = time.monotonic()
        self.in_request, self.received, self.head_left = True, len(self._buf), self._limits.max_head_bytes
        return True

    def head_read(self) -> None:
        self.head_left = None

    def deadline(self) -> tuple[float, str]:
        limits = self._limits
        at, why = self.since + limits.request_timeout, "request_timeout"
        if self.head_left is not None and self.since + limits.header_timeout < at:
            at, why = self.since + limits.header_timeout, "header_timeout"
        if limits.min_receive_rate:
            paced = self.since + RECEIVE_GRACE + self.received / limits.min_receive_rate
            if paced < at:
                at, why = paced, "min_receive_rate"
        return at, why

    def behind(self, now: float) -> float | None:
        """Seconds this client is behind: how long it has been waited for, less
        what its bytes earned at min_receive_rate; None unless it is waited for."""
        if not self.waiting or self.evicted:
            return None
        rate = self._limits.min_receive_rate
        earned = self.received / rate if rate and self.in_request else 0.0
        return now - self.since - earned

    def evict(self) -> None:
        self.evicted = True
        try:
            self._sock.shutdown(socket.SHUT_RD)  # gevent ends the pending recv with an error
        except OSError:
            pass

    def _fill(self, deadline: float, why: str) -> int:
        """One recv into the buffer (0: the client closed)."""
        if self.evicted:
            raise ClientFault("evicted")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ClientFault(why)
        self.waiting = True
        self._sock.settimeout(remaining)
        try:
            data = self._sock.recv(RECV_SIZE)
        except TimeoutError:
            raise ClientFault("evicted" if self.evicted else why) from None
        except OSError:
            if self.evicted:
                raise ClientFault("evicted") from None
            raise
        finally:
            self.waiting = False
            self._sock.settimeout(self._limits.send_timeout)  # for the answer's writes
        self._buf += data
        self.received += len(data)
        return len(data)

    def _take(self, size: int) -> bytes:
        data = bytes(self._buf[:size])
        del self._buf[:size]
        if self.head_left is not None:
            if len(data) > self.head_left:
                raise ClientFault("head_too_large")
            self.head_left -= len(data)
        return data

    def read(self, size: int = -1) -> bytes:
        size = -1 if size is None else size
        while (size < 0 or len(self._buf) < size) and self._fill(*self.deadline()):
            pass
        return self._take(len(self._buf) if size < 0 else size)

    def readline(self, limit: int | None = -1) -> bytes:
        limit = -1 if limit is None else limit
        if self.head_left is not None:  # one byte past the head's budget is enough to refuse it
            limit = self.head_left + 1 if limit < 0 else min(limit, self.head_left + 1)
        searched = 0
        while True:
            end = self._buf.find(b"\n", searched, None if limit < 0 else limit)
            if end >= 0:
                return self._take(end + 1)
            if 0 <= limit <= len(self._buf):
                return self._take(limit)
            searched = len(self._buf)
            if not self._fill(*self.deadline()):
                return self._take(len(self._buf))

    def close(self) -> None:
        self.closed = True


def read_body(given: Any, limit: int) -> bytes:
    """The whole body of a request from gevent's ``wsgi.input`` (Content-Length
    or chunked), at most ``limit`` bytes: one byte more is ClientFault(413); a
    broken chunked body is ClientFault(400)."""
    try:
        body = given.read(limit + 1)
    except OSError as exc:
        if type(exc).__name__ == "_InvalidClientInput" or str(exc).startswith("unexpected end of file"):
            raise ClientFault("bad_body") from None
        raise  # the connection itself failed
    if len(body) > limit:
        raise ClientFault("body_too_large")
    return body


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

    def fault_answer(reason: str) -> tuple[int, str, str, str]:
        """(status, log event, message, detail) of a ClientFault."""
        status, event, message, detail = _FAULTS[reason]
        if "%d" in detail:
            detail %= limits.max_head_bytes if status == 431 else limits.max_body_bytes
        return status, event, message, detail

    class ApiHandler(pywsgi.WSGIHandler):
        _parsed = False  # this request's head was parsed (it gets an access line)
        _logged = False  # this request already has its own log line

        def __init__(self, sock: Any, address: Any, server: Any) -> None:
            super().__init__(sock, address, server)
            self.rfile.close()  # gevent's buffered reader: never read, the socket stays open
            # gevent drops its rfile when the connection ends; the server still
            # asks the receiver whether it evicted this one.
            self.receiver = self.rfile = _Receiver(sock, limits)

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
                          frames=_frames(exc.__traceback__))

        def _client(self) -> str:
            address = self.client_address
            return str(address[0]) if isinstance(address, tuple) else str(address or "-")

        def _warn(self, event: str, kind: str, **fields: Any) -> None:
            """One warning line, or a count in the next http_repeated line."""
            self._logged = True
            if self.server.repeats.admit("%s:%s" % (event, kind)):
                log.warning(event, client=self._client(), **fields)

        def _fault(self, fault: ClientFault) -> tuple[int, str, str]:
            status, event, message, detail = fault_answer(fault.reason)
            fields: dict[str, Any] = {"status": status, "reason": fault.reason}
            if status == 408 and fault.reason != "evicted":
                fields[fault.reason] = getattr(limits, fault.reason)
            self._warn(event, fault.reason, **fields)
            return status, message, detail

        # -- reading a request: idle wait, then its deadlines (_Receiver) --------

        def read_requestline(self):
            if not self.receiver.next_request():
                return ""  # closed, silent for idle_timeout, or evicted: close without a word
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
            if self not in self.server.holders and not self.server.take_slot(self):
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
                          error=t.__name__, frames=_frames(tb))
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
        """At most ``max_connections`` connections hold a slot.  A new one past
        them is still accepted, on probation (at most PROBATION of them), and
        reads its request; with the whole request in hand it takes the slot of
        the holder furthest behind (see ``_Receiver.behind``: idle, or receiving
        below ``min_receive_rate``, for EVICT_AFTER seconds at least), which is
        closed, or else it is answered 503.  Past PROBATION a newcomer replaces
        the probationer furthest behind, or is answered 503 at once.  So clients
        that send slowly, however many and however often they come back, keep
        neither the slots nor the probation places from a client that sends its
        request at once."""

        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, **kw)
            self.holders: set[ApiHandler] = set()
            self.probation: set[ApiHandler] = set()
            self.repeats = _Repeats()

        @property
        def active_connections(self) -> int:
            return len(self.holders)

        def _evict_from(self, group: set) -> bool:
            """Close the member of ``group`` furthest behind (EVICT_AFTER at least)."""
            now = time.monotonic()
            victim, worst = None, EVICT_AFTER
            for handler in group:
                behind = handler.receiver.behind(now)
                if behind is not None and behind >= worst:
                    victim, worst = handler, behind
            if victim is None:
                return False
            victim.receiver.evict()
            group.discard(victim)
            return True

        def take_slot(self, handler: ApiHandler) -> bool:
            """A probationer with its whole request: a free slot, or a holder's."""
            if len(self.holders) >= limits.max_connections and not self._evict_from(self.holders):
                return False
            self.probation.discard(handler)
            self.holders.add(handler)
            return True

        def handle(self, sock, address):
            if len(self.holders) < limits.max_connections:
                group = self.holders
            elif len(self.probation) < PROBATION or self._evict_from(self.probation):
                group = self.probation
            else:
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
                self.holders.discard(handler)
                self.probation.discard(handler)

        def stop(self, timeout: float | None = None) -> None:
            super().stop(timeout)
            self.repeats.flush()

    kwargs.setdefault("spawn", Pool(limits.max_connections + PROBATION + REJECT_SLACK))
    return ApiWSGIServer((host, port), app, handler_class=ApiHandler, **kwargs)
