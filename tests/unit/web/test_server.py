"""server.make_server in this process (gevent sockets, the test's hub): the
request limits one by one, and the private gevent.pywsgi hooks the server
overrides or relies on -- pinned, so that a gevent upgrade that moves one
fails here rather than silently dropping a limit.  The daemon's end-to-end
figures are in test_hostile_e2e.py."""

from __future__ import annotations

import dataclasses
import inspect
import io
import json
import socket
import time

import gevent
import gevent.socket
import pytest
from gevent import pywsgi

from eslcdr.web import server as srv
from eslcdr.web.limits import EVICT_AFTER, RECEIVE_GRACE
from eslcdr.config import ServerLimits

from tests.harness import wait_until


def test_the_gevent_hooks_the_server_relies_on_still_exist():
    handler = pywsgi.WSGIHandler
    one_request = inspect.getsource(handler.handle_one_request)
    one_response = inspect.getsource(handler.handle_one_response)
    # Overridden hooks, and gevent still calls them where we expect.
    assert "self.read_requestline()" in one_request
    assert "self.read_request(self.requestline)" in one_request
    assert "self.get_environ()" in one_request  # our body read and slot claim happen there
    assert "return self._handle_client_error(ex)" in one_request
    assert "self._send_error_response_if_possible(" in one_response
    assert "self.handle_error(*sys.exc_info())" in one_response
    assert "_discard()" in one_response  # a no-op for us: the body was read whole
    # The head is parsed through rfile.readline, so limits.Receiver sees every byte of it.
    assert "self.MessageClass(self.rfile, 0)" in inspect.getsource(handler.read_request)
    assert "self.rfile = sock.makefile(" in inspect.getsource(handler.__init__)
    # get_environ builds the Input our read_body reads; its errors are named as we match them.
    assert "self.wsgi_input = Input(" in inspect.getsource(handler.get_environ)
    assert issubclass(pywsgi._InvalidClientInput, OSError)
    assert "unexpected end of file" in inspect.getsource(pywsgi.Input)
    assert "def handle(self, sock, address)" in inspect.getsource(pywsgi.WSGIServer.handle)
    for name in ("response_length", "close_connection", "content_length", "code", "status"):
        assert hasattr(handler, name), name
    # Eviction: gevent's shutdown(SHUT_RD) ends a greenlet's pending read.
    assert "cancel_wait(self._read_event" in inspect.getsource(gevent.socket.socket.shutdown)


LIMITS = ServerLimits(header_timeout=2.0, idle_timeout=3.0, send_timeout=5.0, request_timeout=4.0,
                      min_receive_rate=500.0, max_connections=4, max_head_bytes=8192, max_body_bytes=1024)


def echo_app(environ, start_response):
    body = environ["wsgi.input"].read()
    answer = json.dumps({"length": len(body), "content_length": environ.get("CONTENT_LENGTH"),
                         "chunked": "HTTP_TRANSFER_ENCODING" in environ}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(answer)))])
    return [answer]


class _Sink:
    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


@pytest.fixture
def serve():
    started = []

    def start(limits: ServerLimits = LIMITS):
        server = srv.make_server(echo_app, "127.0.0.1", 0, limits=limits, log=_Sink(), error_log=_Sink())
        server.start()
        started.append(server)
        return server, server.server_port

    yield start
    for server in started:
        server.stop(timeout=1)


def ask(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    with gevent.socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        data, deadline = b"", time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
        return data


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def body_of(answer: bytes) -> dict:
    return json.loads(answer.partition(b"\r\n\r\n")[2])


PUT = b"PUT /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"


def test_bodies_are_read_whole_before_the_app_and_bounded(serve):
    _, port = serve()
    answer = ask(port, PUT + b"Content-Length: 5\r\n\r\nhello")
    assert status(answer) == 200 and body_of(answer)["length"] == 5
    # Chunked: de-chunked for the app, which sees a plain Content-Length.
    answer = ask(port, PUT + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    assert status(answer) == 200 and body_of(answer) == {"length": 5, "content_length": "5", "chunked": False}
    answer = ask(port, PUT + b"Content-Length: 1024\r\n\r\n" + b"x" * 1024)
    assert status(answer) == 200 and body_of(answer)["length"] == 1024
    # One byte over: 413, the announced body never read.
    answer = ask(port, PUT + b"Content-Length: 1025\r\n\r\n")
    assert status(answer) == 413 and body_of(answer)["message"] == "request entity too large"
    answer = ask(port, PUT + b"Transfer-Encoding: chunked\r\n\r\n401\r\n" + b"x" * 1025 + b"\r\n0\r\n\r\n")
    assert status(answer) == 413
    # A broken chunked body: 400, not 500.
    answer = ask(port, PUT + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n")
    assert status(answer) == 400 and body_of(answer)["data"]["message"] == "the request body could not be read"


def test_the_head_is_capped_in_total(serve):
    _, port = serve()
    lines = [b"X-H%02d: %s\r\n" % (i, b"v" * 91) for i in range(90)]  # 90 lines of 100 bytes
    answer = ask(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + b"".join(lines) + b"\r\n")
    assert status(answer) == 431 and body_of(answer)["error"] == "431"
    answer = ask(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + b"".join(lines[:80]) + b"\r\n")
    assert status(answer) == 200


def test_a_body_below_the_receive_rate_is_dropped_after_the_grace(serve):
    _, port = serve()
    with gevent.socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(PUT + b"Content-Length: 100\r\n\r\n")
        started = time.monotonic()
        answer = b""
        for _ in range(20):  # one byte every 0.3 s: far below 500 bytes/s
            try:
                sock.sendall(b"x")
            except OSError:
                break
            sock.settimeout(0.3)
            try:
                answer = sock.recv(65536)
            except socket.timeout:
                continue
            break
        waited = time.monotonic() - started
    assert status(answer) == 408 and b"too slowly" in answer
    assert RECEIVE_GRACE <= waited < LIMITS.request_timeout


def test_a_steady_body_gets_time_for_what_it_sends(serve):
    """Past the grace, a client keeping up with min_receive_rate is not cut off."""
    _, port = serve(dataclasses.replace(LIMITS, request_timeout=10.0, max_body_bytes=4096))
    with gevent.socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(PUT + b"Content-Length: 3000\r\n\r\n")
        for _ in range(30):  # 100 bytes every 0.1 s: 1000 bytes/s for 3 s
            sock.sendall(b"y" * 100)
            gevent.sleep(0.1)
        answer = sock.recv(65536)
    assert status(answer) == 200 and body_of(answer)["length"] == 3000


def half_closed(port: int, request: bytes) -> bytes:
    """``request`` sent, then the client's write side shut (SHUT_WR): it reads
    on until the server closes. A server that waits for more gives no answer
    within the socket's timeout (less than request_timeout: not its 408)."""
    with gevent.socket.create_connection(("127.0.0.1", port), timeout=LIMITS.request_timeout - 1) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data


def test_a_client_that_half_closes_is_answered_or_refused_and_the_app_never_sees_a_cut_body(serve):
    seen = []

    def recording_app(environ, start_response):
        seen.append(environ["wsgi.input"].read())
        return echo_app({**environ, "wsgi.input": io.BytesIO(seen[-1])}, start_response)

    server = srv.make_server(recording_app, "127.0.0.1", 0, limits=LIMITS, log=_Sink(), error_log=_Sink())
    server.start()
    try:
        port = server.server_port
        # A whole request, then the half-close: the client still reads its answer.
        answer = half_closed(port, PUT + b"Content-Length: 5\r\n\r\nhello")
        assert status(answer) == 200 and body_of(answer)["length"] == 5
        # A body cut short by the half-close (Content-Length or chunked): a
        # 400 naming the body at once, and the app never runs on a part of it.
        for cut in (PUT + b"Content-Length: 10\r\n\r\nhello",
                    PUT + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"):
            answer = half_closed(port, cut)
            assert answer[:12] == b"HTTP/1.1 400", answer
            assert body_of(answer)["data"]["message"] == "the request body could not be read"
        assert seen == [b"hello"]
        assert wait_until(lambda: server.active_connections == 0 and not server.probation, timeout=10)
        assert status(ask(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")) == 200
    finally:
        server.stop(timeout=1)


def test_an_idle_holder_makes_room_and_a_slow_probationer_cannot(serve):
    server, port = serve(dataclasses.replace(LIMITS, max_connections=2, idle_timeout=30.0))
    idle = [gevent.socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2)]
    assert wait_until(lambda: server.active_connections == 2, timeout=10)
    # A newcomer with a slow body stays on probation: it takes no slot.
    slow = gevent.socket.create_connection(("127.0.0.1", port), timeout=10)
    slow.sendall(PUT + b"Content-Length: 50\r\n\r\n")
    gevent.sleep(EVICT_AFTER + 0.2)
    assert len(server.probation) == 1 and all(closed(sock) is None for sock in idle)
    # A whole request takes the slot of an idle holder (closed without a word).
    assert status(ask(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")) == 200
    assert sorted(closed(sock) is None for sock in idle) == [False, True]
    for sock in idle + [slow]:
        sock.close()


def test_stop_closes_the_connections_kept_alive_between_requests_and_lets_a_request_finish(serve):
    # A collector keeps its connection to a node open between two pulls: the
    # node's stop must not wait its whole timeout for that client to leave.
    server, port = serve(dataclasses.replace(LIMITS, idle_timeout=600.0))
    kept = gevent.socket.create_connection(("127.0.0.1", port), timeout=10)
    kept.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # HTTP/1.1: kept alive after the answer
    assert b" 200 " in kept.recv(65536)
    busy = gevent.socket.create_connection(("127.0.0.1", port), timeout=10)
    busy.sendall(PUT + b"Content-Length: 10\r\n\r\n12345")  # in a request: half its body sent
    assert wait_until(lambda: server.active_connections == 2, timeout=10)
    stopping = gevent.spawn(server.stop, 600)
    assert closed(kept) == b""  # closed by the server, without a word
    assert not stopping.dead  # the request in progress may still end ...
    busy.sendall(b"67890")
    answer = busy.recv(65536)
    assert status(answer) == 200 and body_of(answer)["length"] == 10
    busy.close()
    # ... and then the stop returns: nothing else held it (the 600 s were never waited).
    assert wait_until(lambda: stopping.dead, timeout=10) and stopping.successful()
    kept.close()


def closed(sock) -> bytes | None:
    sock.settimeout(0.3)
    try:
        return sock.recv(65536)
    except socket.timeout:
        return None
    except OSError:
        return b""


def test_repeats_are_counted_and_summed_up():
    from structlog.testing import capture_logs

    repeats = srv.Repeats(interval=0.2)
    with capture_logs() as logs:
        admitted = [repeats.admit("http_request:401") for _ in range(5)]
        assert repeats.admit("http_bad_request:bad_body")
        gevent.sleep(0.4)  # the interval ends: the summary goes out
        assert repeats.admit("http_request:401")
    assert admitted == [True, False, False, False, False]
    assert [(e["event"], e["kind"], e["repeated"]) for e in logs] == [("http_repeated", "http_request:401", 4)]
    with capture_logs() as logs:
        repeats.admit("http_request:401")
        repeats.flush()  # the server stops
    assert [(e["kind"], e["repeated"]) for e in logs] == [("http_request:401", 1)]


def test_the_access_lines_go_to_the_structured_log_a_failed_request_at_info():
    # The one sink of the daemon's and the collector's servers (before, each had its
    # own, and the collector's put refused requests at debug, out of the info log).
    from structlog.testing import capture_logs

    def app(environ, start_response):
        code = environ["PATH_INFO"].strip("/")
        start_response("%s X" % code, [("Content-Length", "0")])
        return [b""]

    server = srv.make_server(app, "127.0.0.1", 0, limits=LIMITS)
    server.start()
    try:
        with capture_logs() as logs:
            for code in (200, 401, 500):
                answer = ask(server.server_port, b"GET /%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % code)
                assert status(answer) == code
            deadline = time.monotonic() + 5
            while len(logs) < 3 and time.monotonic() < deadline:
                gevent.sleep(0.01)
    finally:
        server.stop(timeout=1)
    lines = [(e["log_level"], e["line"].split('"')[1]) for e in logs if e["event"] == "http_request"]
    assert lines == [("debug", "GET /200 HTTP/1.1"), ("info", "GET /401 HTTP/1.1"), ("info", "GET /500 HTTP/1.1")]
