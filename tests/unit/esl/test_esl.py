"""The Event Socket client and its supervisor, against real TCP peers:
the stand-in, and small scripted servers for the failure modes."""

from __future__ import annotations

import gevent
import gevent.server
import pytest
from greenswitch.esl import NotConnectedError

from eslcdr import config, keepalive
from eslcdr.esl import client as esl
from eslcdr.backoff import backoff_delay
from eslcdr.esl.client import (
    AuthenticationError,
    CommandTimeout,
    EslClient,
    NodeConnection,
)
from eslcdr.esl.events import parse_channel_rows
from eslcdr.fakefs import FakeFreeSWITCH, ReplaySource, StaticSource
from eslcdr.esl.frames import FrameParser

from tests.conftest import DATA, capture_events

AUTH_REQUEST = b"Content-Type: auth/request\n\n"
ACCEPTED = b"Content-Type: command/reply\nReply-Text: +OK accepted\n\n"


def node(port: int, **overrides) -> config.EslNode:
    values = {"port": str(port), "command_timeout": "1", "connect_timeout": "1", "reconnect_max_delay": "0.2"}
    values.update(overrides)
    return config.from_mapping({"esl": values, "cdr": {"node_name": "t"}}).nodes[0]


class Recorder:
    def __init__(self):
        self.events = []
        self.errors = []

    def on_event(self, event):
        self.events.append(event)

    def on_error(self, reason, skipped):
        self.errors.append(reason)


def scripted_server(script):
    """A one-shot TCP server: ``script(sock)`` plays the FreeSWITCH side."""
    server = gevent.server.StreamServer(("127.0.0.1", 0), lambda sock, addr: script(sock))
    server.start()
    return server


def read_command(sock) -> bytes:
    data = b""
    while not data.endswith(b"\n\n"):
        chunk = sock.recv(1024)
        if not chunk:
            break
        data += chunk
    return data


def test_login_subscribe_and_events_from_stand_in():
    fake = FakeFreeSWITCH(events=ReplaySource([DATA / "S5_plain.esl"]), hold=True).start()
    rec = Recorder()
    client = EslClient(node(fake.port), rec.on_event, rec.on_error)
    try:
        client.connect()
        reply = client.command("event json CHANNEL_CREATE CHANNEL_HANGUP_COMPLETE DTMF")
        assert reply.data == "+OK event listener enabled json"
        assert fake.wait_done(timeout=10)
        with gevent.Timeout(10):
            while len(rec.events) < 22:
                gevent.sleep(0.01)
    finally:
        client.close()
        fake.stop()
    names = [e["Event-Name"] for e in rec.events]
    assert names.count("DTMF") == 14 and names.count("CHANNEL_HANGUP_COMPLETE") == 4
    assert rec.errors == []


def test_wrong_password_raises_authentication_error():
    fake = FakeFreeSWITCH(password="right").start()
    client = EslClient(node(fake.port, password="nope"), Recorder().on_event, Recorder().on_error)
    try:
        with pytest.raises(AuthenticationError, match="refused the password"):
            client.connect()
    finally:
        client.close()
        fake.stop()


def test_command_without_reply_times_out():
    def silent(sock):
        sock.sendall(AUTH_REQUEST)
        read_command(sock)
        sock.sendall(ACCEPTED)
        read_command(sock)  # never answers
        gevent.sleep(5)

    server = scripted_server(silent)
    client = EslClient(node(server.server_port), Recorder().on_event, Recorder().on_error)
    try:
        client.connect()
        with pytest.raises(CommandTimeout):
            client.send("api status")
    finally:
        client.close()
        server.stop()


@pytest.mark.parametrize("paced", [False, True])
def test_a_read_waits_no_longer_than_the_read_timeout(paced):
    # A switch silent for good while nothing pings it (liveness is
    # NodeConnection's): the read ends after read_timeout and the client is
    # closed like a dead one -- unpaced in recv, paced in the wait that
    # follows a read after a silence (``_rest``); both waited for ever.
    event = b'{"Event-Name":"HEARTBEAT","Unique-ID":"x"}'

    def quiet(sock):
        sock.sendall(AUTH_REQUEST)
        read_command(sock)
        sock.sendall(ACCEPTED)
        gevent.sleep(2 * esl.SPARSE_AFTER)  # the client's next read comes after a silence
        sock.sendall(b"Content-Length: %d\nContent-Type: text/event-json\n\n%s" % (len(event), event))
        gevent.sleep(30)

    server = scripted_server(quiet)
    rec = Recorder()
    client = EslClient(node(server.server_port), rec.on_event, rec.on_error)
    client.read_timeout = 3.0
    try:
        client.connect()
        client.pace = paced
        assert client.wait_closed(timeout=20), "the read still waits after 20 s"
    finally:
        client.close()
        server.stop()
    assert "timed out" in client.close_reason
    assert [e["Event-Name"] for e in rec.events] == ["HEARTBEAT"] and rec.errors == []


def test_command_that_cannot_be_sent_times_out():
    # A switch that stops reading: the socket buffers fill and sendall would
    # wait for ever; the command gives up after command_timeout instead.
    def deaf(sock):
        sock.sendall(AUTH_REQUEST)
        read_command(sock)
        sock.sendall(ACCEPTED)
        gevent.sleep(30)  # reads nothing more

    server = scripted_server(deaf)
    client = EslClient(node(server.server_port), Recorder().on_event, Recorder().on_error)
    try:
        client.connect()
        with gevent.Timeout(20, AssertionError("send() still waiting after 20 s")):
            with pytest.raises(CommandTimeout, match="not sent"):
                client.send("api " + "x" * (64 << 20))  # more than both sockets' buffers
        assert not client.connected  # the stream is out of step: nothing more is sent
    finally:
        client.close()
        server.stop()


def test_no_greeting_times_out():
    server = scripted_server(lambda sock: gevent.sleep(5))
    client = EslClient(node(server.server_port), Recorder().on_event, Recorder().on_error)
    try:
        with pytest.raises(CommandTimeout, match="auth/request"):
            client.connect()
    finally:
        client.close()
        server.stop()


def test_rude_rejection_is_reported():
    def reject(sock):
        body = b"Access Denied, go away.\n"
        sock.sendall(b"Content-Type: text/rude-rejection\nContent-Length: %d\n\n%s" % (len(body), body))
        sock.close()

    server = scripted_server(reject)
    client = EslClient(node(server.server_port), Recorder().on_event, Recorder().on_error)
    try:
        with pytest.raises(NotConnectedError, match="Access Denied"):
            client.connect()
    finally:
        client.close()
        server.stop()


def test_half_closed_socket_mid_frame_reported_and_partial_event_dropped():
    event = (DATA / "S1_json.esl").read_bytes()
    first = event.index(b"Content-Length:")
    partial = event[first : first + 500]  # a frame header and part of its body

    def half_close(sock):
        sock.sendall(AUTH_REQUEST)
        read_command(sock)
        sock.sendall(ACCEPTED + partial)
        sock.shutdown(2 - 1)  # SHUT_WR: FreeSWITCH side stops sending
        gevent.sleep(2)

    server = scripted_server(half_close)
    rec = Recorder()
    client = EslClient(node(server.server_port), rec.on_event, rec.on_error)
    try:
        client.connect()
        assert client.wait_closed(timeout=5)
    finally:
        client.close()
        server.stop()
    assert rec.events == []
    assert rec.errors == ["stream ended inside a frame body"]
    assert not client.connected


def test_malformed_frame_and_non_utf8_do_not_kill_the_reader():
    good = b'{"Event-Name":"CHANNEL_CREATE","Unique-ID":"u1","Caller-Caller-ID-Name":"Jos\xe9"}'

    def messy(sock):
        sock.sendall(AUTH_REQUEST)
        read_command(sock)
        sock.sendall(ACCEPTED)
        sock.sendall(b"garbage line\n\n")
        sock.sendall(b"Content-Length: 7\nContent-Type: text/event-json\n\n{broken")
        sock.sendall(b"Content-Length: %d\nContent-Type: text/event-json\n\n%s" % (len(good), good))
        gevent.sleep(2)

    server = scripted_server(messy)
    rec = Recorder()
    client = EslClient(node(server.server_port), rec.on_event, rec.on_error)
    try:
        client.connect()
        with gevent.Timeout(5):
            while not rec.events:
                gevent.sleep(0.01)
    finally:
        client.close()
        server.stop()
    assert rec.events == [{"Event-Name": "CHANNEL_CREATE", "Unique-ID": "u1", "Caller-Caller-ID-Name": "Jos\ufffd"}]
    assert len(rec.errors) == 2


def test_supervisor_reconnects_resubscribes_and_resyncs():
    fake = FakeFreeSWITCH(events=ReplaySource([DATA / "S7_json.esl"]), hold=True, drop_after=100).start()
    rec = Recorder()
    resyncs = []
    connection = NodeConnection(node(fake.port), rec.on_event, resyncs.append, rec.on_error)
    runner = gevent.spawn(connection.run)
    try:
        with gevent.Timeout(20):
            while len(rec.events) < 300 or connection.state != "connected":
                gevent.sleep(0.01)
    finally:
        connection.stop()
        runner.join(timeout=5)
        fake.stop()
    # The drop hit during the first login; the second got the rest, in order.
    assert len(rec.events) == 300
    assert [e["Event-Sequence"] for e in rec.events] == [e["Event-Sequence"] for e in capture_events("S7_json.esl")]
    assert resyncs  # show channels after the successful login
    assert connection.state == "stopped"


def test_supervisor_stops_on_wrong_password():
    fake = FakeFreeSWITCH(password="right").start()
    connection = NodeConnection(node(fake.port, password="nope"), Recorder().on_event, lambda alive: None)
    runner = gevent.spawn(connection.run)
    try:
        runner.join(timeout=10)
    finally:
        fake.stop()
    assert runner.dead
    assert connection.state == "auth_failed"
    assert "refused" in connection.fatal


def test_a_trickle_of_events_is_read_a_few_at_a_time(monkeypatch):
    # FreeSWITCH sends each event as it happens; once subscribed the reader
    # lets them gather in the socket (at most READ_PACE) rather than waking
    # for each one: ~5 reads for 40 events 10 ms apart instead of 40.
    reads = []

    class CountingParser(FrameParser):
        __slots__ = ()

        def feed(self, data: bytes) -> None:
            reads.append(len(data))
            super().feed(data)

    monkeypatch.setattr(esl, "FrameParser", CountingParser)

    def trickle():
        for n in range(40):
            gevent.sleep(0.01)
            yield {"Event-Name": "CHANNEL_CREATE", "Unique-ID": "leg-%02d" % n, "Channel-Name": "sofia/x/%d" % n}

    fake = FakeFreeSWITCH(events=StaticSource(trickle()), hold=True).start()
    rec = Recorder()
    connection = NodeConnection(node(fake.port), rec.on_event, lambda rows: None, rec.on_error)
    runner = gevent.spawn(connection.run)
    try:
        with gevent.Timeout(10):
            while len(rec.events) < 40:
                gevent.sleep(0.01)
        assert fake.wait_done(timeout=10)
    finally:
        connection.stop()
        runner.join(timeout=5)
        fake.stop()
    assert [e["Unique-ID"] for e in rec.events] == ["leg-%02d" % n for n in range(40)]
    assert rec.errors == []
    # The login, subscription and resync replies take a few reads of their own.
    assert len(reads) <= 20, reads


def test_the_legs_of_a_call_ending_after_a_silence_are_handed_over_before_the_pause():
    # The tail of long calls: a call's legs hang up tens of ms apart, seconds
    # after anything else.  The reader tells the writer it may commit only
    # once the call's other hangups are read (one transaction for them; it
    # used to pause at the first, so the writer committed it alone).
    calls = 3
    seen = []

    def trickle():
        for n in range(calls):
            gevent.sleep(2 * esl.SPARSE_AFTER)
            for leg in "ba":
                yield {"Event-Name": "CHANNEL_HANGUP_COMPLETE", "Unique-ID": "%s-%d" % (leg, n)}
                gevent.sleep(0.01)

    fake = FakeFreeSWITCH(events=StaticSource(trickle()), hold=True).start()
    connection = NodeConnection(node(fake.port), lambda event: seen.append(event["Unique-ID"]), lambda rows: None,
                                on_pause=lambda at: seen.append("pause"))
    runner = gevent.spawn(connection.run)
    try:
        with gevent.Timeout(10 + calls * 2 * esl.SPARSE_AFTER):
            last = "a-%d" % (calls - 1)
            while last not in seen or "pause" not in seen[seen.index(last):]:
                gevent.sleep(0.01)
    finally:
        connection.stop()
        runner.join(timeout=5)
        fake.stop()
    for n in range(calls):
        between = seen[seen.index("b-%d" % n):seen.index("a-%d" % n)]
        assert "pause" not in between, seen


def test_the_subscription_is_announced_before_it_is_made_once_a_connection():
    # The daemon's resync judges the legs known at this moment (ingest/legs.py
    # subscribing): it must come before the first event of the connection.
    seen = []
    fake = FakeFreeSWITCH(events=ReplaySource([DATA / "S1_json.esl"]), hold=True).start()
    connection = NodeConnection(node(fake.port), lambda event: seen.append(event["Event-Name"]),
                                lambda rows: seen.append("resync"), on_subscribe=lambda: seen.append("subscribe"))
    runner = gevent.spawn(connection.run)
    try:
        with gevent.Timeout(20):
            while len(seen) < len(capture_events("S1_json.esl")) + 2:
                gevent.sleep(0.02)
    finally:
        connection.stop()
        runner.join(timeout=5)
        fake.stop()
    # Events come as soon as the subscription is made, before show channels' answer.
    assert seen[0] == "subscribe" and seen.count("subscribe") == seen.count("resync") == 1, seen[:5]


def test_parse_channel_rows_uuids():
    assert parse_channel_rows('{"row_count": 0}\n') == []
    body = '{"row_count":2,"rows":[{"uuid":"a","name":"x"},{"uuid":"b"}]}'
    assert {row["uuid"] for row in parse_channel_rows(body)} == {"a", "b"}


@pytest.mark.parametrize("attempt", range(1, 40))
def test_backoff_is_capped_and_jittered(attempt):
    import random

    rng = random.Random(attempt)
    delays = [backoff_delay(attempt, base=0.5, cap=30.0, rng=rng) for _ in range(50)]
    ceiling = min(30.0, 0.5 * 2 ** (attempt - 1))
    assert all(ceiling / 2 <= d <= ceiling for d in delays)
    assert len(set(delays)) > 1


def test_the_gevent_socket_watcher_the_reader_paces_on_still_exists():
    """EslClient._readable (its passes) waits on the gevent socket's private read watcher;
    without it pacing silently turns off, so a gevent upgrade that renames it
    must fail here."""
    import gevent.socket

    left, right = gevent.socket.socketpair()
    try:
        watcher = getattr(left, "_read_event", None)
        assert watcher is not None
        right.sendall(b"x")
        assert gevent.socket.wait(watcher, timeout=5, timeout_exc=False) is None
        assert left.recv(1) == b"x"
    finally:
        left.close()
        right.close()


# What EslClient takes from greenswitch's InboundESL: the methods it
# overrides, with the signature greenswitch has for them, and the state
# ESLProtocol.__init__ creates that it reads and writes, with its type.
GREENSWITCH_OVERRIDDEN = {
    "__init__": "(self, host, port, password, timeout=5)",
    "connect": "(self)",
    "authenticate": "(self)",
    "send": "(self, data)",
    "stop": "(self)",
}
GREENSWITCH_STATE = {
    "host": str, "port": int, "password": str, "timeout": int, "connected": bool,
    "_commands_sent": list,  # the replies' AsyncResults, in command order
    "_auth_request_event": gevent.event.Event,  # set by the reader at auth/request
}


def test_every_greenswitch_part_the_client_relies_on_is_pinned():
    """A greenswitch upgrade that renames, re-signs or retypes any of them,
    or adds a method EslClient would shadow unawares, fails here."""
    import ast
    import inspect

    from greenswitch.esl import InboundESL

    assert {name: str(inspect.signature(getattr(InboundESL, name))) for name in GREENSWITCH_OVERRIDDEN} == (
        GREENSWITCH_OVERRIDDEN)
    base = InboundESL("fs.example", 8021, "pw", timeout=5)
    assert {name: type(getattr(base, name, None)) for name in GREENSWITCH_STATE} == GREENSWITCH_STATE
    # EslClient's own methods shadow nothing else of greenswitch's ...
    inherited = set(dir(InboundESL)) | set(vars(base))
    assert {name for name in vars(EslClient) if not name.startswith("__")} & inherited == (
        set(GREENSWITCH_OVERRIDDEN) - {"__init__"})
    # ... and every greenswitch attribute it touches is pinned above.
    touched = {node.attr for node in ast.walk(ast.parse(inspect.getsource(EslClient)))
               if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"}
    assert touched & inherited <= set(GREENSWITCH_OVERRIDDEN) | set(GREENSWITCH_STATE)
    assert set(GREENSWITCH_STATE) <= touched


def test_the_connected_socket_notices_a_vanished_host_within_a_minute():
    """The reader waits without a timeout: a host gone without FIN/RST is
    found by TCP keepalive (keepalive.py), not after the kernel's 2 h 11 min."""
    import socket

    fake = FakeFreeSWITCH().start()
    client = EslClient(node(fake.port), Recorder().on_event, Recorder().on_error)
    try:
        client.connect()
        sock = client.sock
        options = {name: sock.getsockopt(socket.IPPROTO_TCP, getattr(socket, name))
                   for name in ("TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT", "TCP_USER_TIMEOUT")}
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    finally:
        client.close()
        fake.stop()
    assert options == {"TCP_KEEPIDLE": keepalive.IDLE, "TCP_KEEPINTVL": keepalive.INTERVAL,
                       "TCP_KEEPCNT": keepalive.COUNT, "TCP_USER_TIMEOUT": keepalive.USER_TIMEOUT * 1000}
    assert options["TCP_KEEPIDLE"] + options["TCP_KEEPINTVL"] * options["TCP_KEEPCNT"] <= 60
    assert options["TCP_USER_TIMEOUT"] <= 60_000
