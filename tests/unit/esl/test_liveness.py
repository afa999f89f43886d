"""A FreeSWITCH alive at the TCP level that answers nothing is declared dead and
reconnected (esl/liveness.py); a quiet healthy one costs one ping per interval.
Real TCP: the stand-in frozen as by SIGSTOP, and a scripted peer that stops reading."""

from __future__ import annotations

import time

import gevent
import structlog

from eslcdr.esl.client import NodeConnection
from eslcdr.esl.liveness import PING
from eslcdr.fakefs import FakeFreeSWITCH, ReplaySource

from tests.conftest import DATA, capture_events
from tests.unit.esl.test_esl import ACCEPTED, AUTH_REQUEST, Recorder, node, read_command, scripted_server

IDLE = 0.3  # the tests' idle interval (IDLE_CHECK is 15 s)
DEADLINE = 30.0  # generous: the machine may be loaded


def wait_for(predicate, timeout: float = DEADLINE) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        gevent.sleep(0.02)
    return True


def supervised(port: int, rec: Recorder, **overrides) -> tuple[NodeConnection, gevent.Greenlet]:
    connection = NodeConnection(node(port, **overrides), rec.on_event, lambda rows: (), rec.on_error)
    connection.idle_check = IDLE
    return connection, gevent.spawn(connection.run)


def count_pings(fake: FakeFreeSWITCH) -> list[str]:
    """The ``api`` commands the stand-in answers, by name, as they come."""
    names: list[str] = []
    answer = fake.api

    def counted(name: str, args: str = "") -> str:
        names.append(name)
        return answer(name, args)

    fake.api = counted
    return names


def test_a_frozen_freeswitch_is_declared_dead_logged_once_and_reconnected_when_it_answers_again():
    fake = FakeFreeSWITCH(events=ReplaySource([DATA / "S1_json.esl"]), hold=True).start()
    rec = Recorder()
    connection, runner = supervised(fake.port, rec, command_timeout="0.5")
    try:
        with structlog.testing.capture_logs() as logs:
            assert wait_for(lambda: connection.state == "connected" and fake.done())
            fake.freeze()  # the socket stays open; nothing is answered any more
            assert wait_for(lambda: connection.unresponsive == 1), "a silent FreeSWITCH was never declared dead"
            assert connection.state != "connected"
            assert "api uptime" in connection.last_error and "no reply" in connection.last_error
            gevent.sleep(3 * (IDLE + 0.5))  # still frozen: reconnecting fails (no greeting), nothing more is counted
            assert connection.state != "connected" and connection.unresponsive == 1
            fake.thaw()
            assert wait_for(lambda: connection.state == "connected"), "not reconnected once FreeSWITCH answered again"
    finally:
        connection.stop()
        runner.join(timeout=5)
        fake.stop()
    assert connection.reconnects == 1 and connection.unresponsive == 1
    declared = [line for line in logs if line["event"] == "esl_unresponsive"]
    assert len(declared) == 1 and declared[0]["node"] == connection.node.name and "api uptime" in declared[0]["reason"]
    assert not [line for line in logs if line["event"] == "esl_disconnected"]
    # Every event of the capture once: no ping reply ever came down the event path.
    assert [e["Event-Sequence"] for e in rec.events] == [e["Event-Sequence"] for e in capture_events("S1_json.esl")]
    assert rec.errors == []


def test_a_peer_that_stops_reading_is_declared_dead_within_interval_and_timeout():
    # A minimal FreeSWITCH: greets, accepts the login and the three commands of
    # the login sequence, then reads nothing more (the socket stays open).
    connected = gevent.event.Event()
    release = gevent.event.Event()
    replies = [
        ACCEPTED,
        b"Content-Type: command/reply\nReply-Text: +OK event listener enabled json\n\n",
        b"Content-Type: api/response\nContent-Length: 6\n\nUP 0s\n",
        b'Content-Type: api/response\nContent-Length: 16\n\n{"row_count":0}\n',
    ]

    def script(sock):
        sock.sendall(AUTH_REQUEST)
        for reply in replies:
            read_command(sock)
            sock.sendall(reply)
        connected.set()
        release.wait(timeout=DEADLINE)
        sock.close()

    server = scripted_server(script)
    rec = Recorder()
    connection, runner = supervised(server.server_port, rec, command_timeout="0.5")
    try:
        assert connected.wait(timeout=DEADLINE)
        # Polled with the promised bound as the deadline (+ a loaded machine's margin).
        assert wait_for(lambda: connection.unresponsive == 1, timeout=IDLE + 0.5 + 10.0)
    finally:
        release.set()
        connection.stop()
        runner.join(timeout=5)
        server.stop()
    assert rec.events == [] and rec.errors == []


def test_a_healthy_idle_freeswitch_stays_connected_for_one_ping_per_interval():
    fake = FakeFreeSWITCH(events=ReplaySource([DATA / "S1_json.esl"]), hold=True).start()
    pings = count_pings(fake)
    rec = Recorder()
    connection, runner = supervised(fake.port, rec, command_timeout="5")
    try:
        assert wait_for(lambda: connection.state == "connected" and fake.done())
        assert wait_for(lambda: pings.count("uptime") >= 1)
        began, before = time.monotonic(), pings.count("uptime")
        assert wait_for(lambda: pings.count("uptime") >= before + 5), "the idle connection is not pinged"
        elapsed = time.monotonic() - began
        assert connection.state == "connected"
        sent = pings.count("uptime") - before
    finally:
        connection.stop()
        runner.join(timeout=5)
        fake.stop()
    assert connection.reconnects == 0 and connection.unresponsive == 0
    # At most one ping per interval of silence (the reply is silence broken).
    assert sent <= elapsed / IDLE + 1
    assert PING == "api uptime" and set(pings) == {"global_getvar", "show", "uptime"}  # login, resync, pings
    assert [e["Event-Sequence"] for e in rec.events] == [e["Event-Sequence"] for e in capture_events("S1_json.esl")]
    assert rec.errors == []  # no "reply without a command"


def test_a_busy_stream_is_not_pinged_until_it_goes_quiet():
    # An event every 0.05 s: never the 2 s of silence a ping waits for.
    events = capture_events("S1_json.esl")
    fake = FakeFreeSWITCH(events=ReplaySource([DATA / "S1_json.esl"]), hold=True, pause_after=1).start()
    pings = count_pings(fake)
    rec = Recorder()
    connection, runner = supervised(fake.port, rec, command_timeout="5")
    connection.idle_check = 2.0
    try:
        assert wait_for(lambda: connection.state == "connected" and len(rec.events) == 1)
        before = pings.count("uptime")
        for count in range(2, len(events) + 1):
            fake.pause_after = count
            fake.resume()
            assert wait_for(lambda: len(rec.events) == count)
            gevent.sleep(0.05)
        sent = pings.count("uptime") - before
        assert wait_for(lambda: pings.count("uptime") > before), "not pinged once quiet"
    finally:
        connection.stop()
        runner.join(timeout=5)
        fake.stop()
    assert sent == 0
    assert connection.reconnects == 0 and rec.errors == []
