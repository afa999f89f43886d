"""The fleet's live channels (eslcdr/collector/fleet.py) over real sockets:
a real ``eslcdr run`` fed by the stand-in, a stopped node (connection
refused), a stalled one (accepts, never answers), and small HTTP servers
answering what a broken or hostile node would (401, oversized, not Kazoo)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import gevent
import gevent.pywsgi
import gevent.server
import orjson
import pytest
from structlog.testing import capture_logs

from eslcdr.collector import config as cc
from eslcdr.collector.config import FeedNode
from eslcdr.collector.fleet import Fleet, ask_fleet, channels_path, fleet_channels
from eslcdr.fakefs import FakeFreeSWITCH, StaticSource

from tests.conftest import capture_events
from tests.harness import DaemonProcess, wait_until, write_config
from tests.e2e.test_channels_e2e import ACC, TOKENS, Pushed, channels, get_json, tagged

TOKEN = "token-collector"  # the daemon's '*' token (TOKENS)
SLACK = 2.0  # what a loaded machine may add to the timeout; a fan-out that waited on a node needs far more
CAP = 1 << 20


def stopped_url() -> str:
    """A port nobody listens on: connection refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return "http://127.0.0.1:%d" % port


class Stalled:
    """Accepts every connection, reads nothing, never answers (``head``:
    bytes it sends first, e.g. a response's head and part of its body; then,
    with ``trickle``, one more byte every ``trickle`` seconds, for ever)."""

    def __init__(self, head: bytes = b"", trickle: float = 0) -> None:
        self.held: list[socket.socket] = []
        self.head = head
        self.trickle = trickle
        self.server = gevent.server.StreamServer(("127.0.0.1", 0), self.hold)
        self.server.start()
        self.url = "http://127.0.0.1:%d" % self.server.server_port

    def hold(self, sock, _address) -> None:
        self.held.append(sock)
        if self.head:
            sock.sendall(self.head)
        while self.trickle:
            gevent.sleep(self.trickle)
            sock.sendall(b" ")
        gevent.sleep(3600)

    def stop(self) -> None:
        self.trickle = 0
        self.server.stop(timeout=0)
        for sock in self.held:
            sock.close()


class Answering:
    """A real HTTP server answering every request with ``status`` and
    ``body`` (chunked when ``length`` is False); keeps the tokens it got."""

    def __init__(self, body: bytes, status: str = "200 OK", length: bool = True) -> None:
        self.tokens: list[str] = []
        self.paths: list[str] = []
        self.body, self.status = body, status  # what the next request gets

        def app(environ, start_response):
            self.tokens.append(environ.get("HTTP_X_AUTH_TOKEN", ""))
            self.paths.append(environ["PATH_INFO"])
            body, status = self.body, self.status
            headers = [("Content-Type", "application/json")]
            if length:
                headers.append(("Content-Length", str(len(body))))
                start_response(status, headers)
                return [body]
            start_response(status, headers)
            return (body[i:i + 65536] for i in range(0, len(body), 65536))  # no length: chunked

        self.server = gevent.pywsgi.WSGIServer(("127.0.0.1", 0), app, log=None, error_log=None)
        self.server.start()
        self.url = "http://127.0.0.1:%d" % self.server.server_port

    def stop(self) -> None:
        self.server.stop(timeout=0)


def kazoo(channels: list) -> bytes:
    return orjson.dumps({"data": channels, "status": "success", "page_size": len(channels)})


def reasons(result) -> dict[str, str]:
    return {u.node: u.reason for u in result.unreachable}


def test_a_stopped_and_a_stalled_node_are_named_and_never_hold_the_healthy_nodes_legs(tmp_path):
    events = tagged(capture_events("S1_json.esl"))
    legs = {e["Unique-ID"] for e in events[0:2]}  # the CHANNEL_CREATEs of the loopback pair
    source = Pushed()
    fake = FakeFreeSWITCH(events=StaticSource(source), hold=False)
    fake.start()
    (tmp_path / "tokens").write_text(TOKENS)
    daemon = DaemonProcess(write_config(tmp_path, fake.port), tmp_path / "daemon.log")
    stalled = Stalled()
    try:
        port = daemon.api_port()
        source.push(*events[0:2])
        assert wait_until(lambda: set(channels(port)) == legs), channels(port)
        config = cc.from_mapping({
            "node:fs-east": {"url": "http://127.0.0.1:%d" % port, "token": TOKEN},
            "node:fs-down": {"url": stopped_url(), "token": "token-of-the-stopped-node"},
            "node:fs-stalled": {"url": stalled.url, "token": "token-of-the-stalled-node"},
        })
        assert config.channels_timeout == 2.0  # the documented default
        for account, user, path in ((ACC, None, "/v2/accounts/%s/channels" % ACC),
                                    (ACC, "user-1", "/v2/accounts/%s/users/user-1/channels" % ACC),
                                    (None, None, "/v2/channels")):
            started = time.monotonic()
            with capture_logs() as logged:
                result = ask_fleet(config, account, user)
            elapsed = time.monotonic() - started
            assert elapsed < config.channels_timeout + SLACK, elapsed
            # the node's own answer, each leg naming the node it is on
            node_answer = get_json(port, path, TOKEN)["data"]
            assert [c["uuid"] for c in result.channels] == [c["uuid"] for c in node_answer]
            assert {c["uuid"] for c in result.channels} == legs
            assert all(c["source"] == "fs-east" and c["node"] == "fs-test" for c in result.channels)
            assert [{k: v for k, v in c.items() if k not in ("source", "elapsed_s")} for c in result.channels] == [
                {k: v for k, v in c.items() if k != "elapsed_s"} for c in node_answer]
            assert reasons(result) == {"fs-down": "connection refused",
                                       "fs-stalled": "no answer within 2 s (waiting for the answer)"}
            fields = result.fields()
            assert fields["page_size"] == 2
            assert {u["node"] for u in fields["unreachable_nodes"]} == {"fs-down", "fs-stalled"}
            # one log line for the fan-out, naming the nodes, never a token
            assert [e["event"] for e in logged] == ["fleet_channels"]
            text = repr(logged)
            assert "fs-stalled" in text and not any(n.token in text for n in config.nodes)

        # A node's '*' token that the node does not know: its 401, as a reason.
        wrong = FeedNode("fs-east", "http://127.0.0.1:%d" % port, "token-not-in-the-file")
        result = fleet_channels([wrong], channels_path(ACC), 2.0, max_bytes=CAP)
        assert result.channels == ()
        assert reasons(result) == {"fs-east": "HTTP 401: invalid_credentials: invalid credentials"}
    finally:
        stalled.stop()
        daemon.stop()
        fake.stop()


def test_the_deadline_is_one_for_all_nodes():
    # Five stalled nodes: asked one after the other they would take 5 timeouts.
    stalled = [Stalled() for _ in range(5)]
    healthy = Answering(kazoo([{"uuid": "u1", "timestamp": 2}]))
    try:
        nodes = [FeedNode("s%d" % i, s.url, "tok-%d" % i) for i, s in enumerate(stalled)]
        nodes.append(FeedNode("ok", healthy.url, "tok-ok"))
        started = time.monotonic()
        result = fleet_channels(nodes, "/v2/channels", 1.0, max_bytes=CAP)
        assert time.monotonic() - started < 1.0 + SLACK
        assert [c["uuid"] for c in result.channels] == ["u1"]
        assert sorted(reasons(result)) == ["s0", "s1", "s2", "s3", "s4"]
        assert healthy.tokens == ["tok-ok"] and healthy.paths == ["/v2/channels"]
    finally:
        healthy.stop()
        for s in stalled:
            s.stop()


@pytest.mark.parametrize("trickle", [0, 0.2], ids=["stalled", "trickling"])
def test_a_node_stalling_or_trickling_mid_answer_is_cut_at_the_deadline(trickle):
    # A byte every 0.2 s never lets a socket's own timeout fire: only the
    # fan-out's deadline ends that answer.
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"data\": ["
    stalled = Stalled(head, trickle)
    try:
        started = time.monotonic()
        result = fleet_channels([FeedNode("slow", stalled.url, "tok")], "/v2/channels", 1.0, max_bytes=CAP)
        assert time.monotonic() - started < 1.0 + SLACK
        assert reasons(result) == {"slow": "no answer within 1 s (reading the answer)"}
    finally:
        stalled.stop()


def test_the_merge_is_oldest_first_and_keeps_each_nodes_channels():
    a = Answering(kazoo([{"uuid": "a-new", "timestamp": 30}, {"uuid": "a-old", "timestamp": 10}]))
    b = Answering(kazoo([{"uuid": "b-mid", "timestamp": 20, "node": "fs-b-1"}]), length=False)
    try:
        result = fleet_channels([FeedNode("a", a.url, "ta"), FeedNode("b", b.url, "tb")], "/v2/channels", 2.0,
                                max_bytes=CAP)
        assert [(c["uuid"], c["source"]) for c in result.channels] == [("a-old", "a"), ("b-mid", "b"), ("a-new", "a")]
        assert result.channels[1]["node"] == "fs-b-1" and result.unreachable == ()
        assert result.as_dict()["unreachable_nodes"] == [] and result.as_dict()["page_size"] == 3
    finally:
        a.stop()
        b.stop()


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "chunked"])
def test_an_oversized_answer_is_refused(length):
    channel = {"uuid": "u", "timestamp": 1, "caller_id_name": "x" * 1000}
    big = Answering(kazoo([channel] * 200), length=length)  # ~200 KB
    fits = Answering(kazoo([channel] * 2), length=length)
    try:
        result = fleet_channels([FeedNode("big", big.url, "t1"), FeedNode("fits", fits.url, "t2")],
                                "/v2/channels", 2.0, max_bytes=100_000)
        assert len(result.channels) == 2 and {c["source"] for c in result.channels} == {"fits"}
        expected = ("the answer of %d bytes is over channels_max_bytes (100000)" % len(kazoo([channel] * 200))
                    if length else "the answer is over channels_max_bytes (100000)")
        assert reasons(result) == {"big": expected}
    finally:
        big.stop()
        fits.stop()


@pytest.mark.parametrize("body, reason", [
    (b"<html>ok</html>", "the answer is not JSON: "),
    (b"[]", "the answer is not Kazoo's {\"data\": [channels]}"),
    (b'{"data": {"uuid": "u"}}', "the answer is not Kazoo's {\"data\": [channels]}"),
    (b'{"data": [{"uuid": "u"}, 7]}', "channel 1 of the answer is not an object with a uuid"),
    (b'{"data": [{"id": "u"}]}', "channel 0 of the answer is not an object with a uuid"),
])
def test_an_answer_that_is_not_channels_is_refused(body, reason):
    bad = Answering(body)
    good = Answering(kazoo([{"uuid": "g", "timestamp": 5}]))
    try:
        result = fleet_channels([FeedNode("bad", bad.url, "t1"), FeedNode("good", good.url, "t2")],
                                "/v2/channels", 2.0, max_bytes=CAP)
        assert [c["uuid"] for c in result.channels] == ["g"]
        assert reasons(result)["bad"].startswith(reason) and set(reasons(result)) == {"bad"}
    finally:
        bad.stop()
        good.stop()


def test_a_node_missing_is_one_warning_however_often_the_page_asks_and_its_return_one_line():
    # The page asks every 5 s: a node down for an hour was 720 warnings an hour per open page.
    node = Answering(b"{}", status="503 Service Unavailable")
    fleet = Fleet(cc.from_mapping({"node:fs-a": {"url": node.url, "token": "a-star-token"}}))
    try:
        with capture_logs() as logged:
            for _ in range(3):
                assert reasons(fleet(ACC)) == {"fs-a": "HTTP 503: {}"}
            node.body, node.status = kazoo([]), "200 OK"
            assert reasons(fleet(ACC)) == {} and reasons(fleet()) == {}
            node.body, node.status = b"{}", "503 Service Unavailable"
            assert reasons(fleet(None)) == {"fs-a": "HTTP 503: {}"}
    finally:
        node.stop()
    assert [(e["event"], e["log_level"]) for e in logged] == [
        ("fleet_channels", "warning"), ("fleet_channels", "debug"), ("fleet_channels", "debug"),
        ("fleet_channels", "debug"), ("fleet_channels_nodes_back", "info"), ("fleet_channels", "debug"),
        ("fleet_channels", "warning")]
    assert logged[4]["nodes"] == ["fs-a"]


def test_a_node_echoing_its_token_never_shows_it():
    token = "s3cr3t-star-token-of-fs9"
    echo = Answering(orjson.dumps({"status": "error", "message": "no such token %s" % token}),
                     status="403 Forbidden")
    try:
        with capture_logs() as logged:
            result = fleet_channels([FeedNode("fs9", echo.url, token)], "/v2/channels", 2.0, max_bytes=CAP)
        assert echo.tokens == [token]  # it was sent...
        assert reasons(result) == {"fs9": "HTTP 403: no such token [redacted]"}  # ...and never shown
        assert token not in repr(logged) and token not in repr(result)
    finally:
        echo.stop()


def test_channels_path_and_the_config_keys():
    assert channels_path() == "/v2/channels"
    assert channels_path("acc") == "/v2/accounts/acc/channels"
    assert channels_path("a/b", "u ?") == "/v2/accounts/a%2Fb/users/u%20%3F/channels"
    with pytest.raises(ValueError):
        channels_path(None, "user")
    node = {"url": "http://10.0.0.5:8080", "token": "t"}
    cfg = cc.from_mapping({"node:fs1": node, "collector": {"channels_timeout": "0.5", "channels_max_bytes": "4096"}})
    assert (cfg.channels_timeout, cfg.channels_max_bytes) == (0.5, 4096)
    for key, value in (("channels_timeout", "0"), ("channels_max_bytes", "10")):
        with pytest.raises(cc.ConfigError, match=r"\[collector\] %s" % key):
            cc.from_mapping({"node:fs1": node, "collector": {key: value}})


def test_an_https_node_is_asked_over_tls_and_its_certificate_checked(tmp_path, monkeypatch):
    # The node is `openssl s_server -WWW` in its own process, serving the file
    # v2/channels of its folder (gevent's own TLS server needs monkey patching).
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    cert, key = tmp_path / "node.pem", tmp_path / "node.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=node",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "channels").write_bytes(kazoo([{"uuid": "tls-leg", "timestamp": 3}]))
    port = int(stopped_url().rsplit(":", 1)[1])
    server = subprocess.Popen(["openssl", "s_server", "-accept", "127.0.0.1:%d" % port, "-cert", str(cert),
                               "-key", str(key), "-WWW"], cwd=tmp_path, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    node = FeedNode("fs-tls", "https://127.0.0.1:%d" % port, "tok")
    try:
        # A certificate no CA of the system signed: refused, and said so.
        refused = wait_until(lambda: (r := fleet_channels([node], "/v2/channels", 2.0, max_bytes=CAP))
                             and r.unreachable[0].reason != "connection refused" and r)
        assert refused.channels == () and reasons(refused)["fs-tls"].startswith("TLS: CERTIFICATE_VERIFY_FAILED")
        # Trusted (OpenSSL reads SSL_CERT_FILE when a fan-out makes its context): the channels.
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        trusted = fleet_channels([node], "/v2/channels", 2.0, max_bytes=CAP)
        assert [(c["uuid"], c["source"]) for c in trusted.channels] == [("tls-leg", "fs-tls")] and not trusted.unreachable
    finally:
        server.kill()
        server.wait(10)
