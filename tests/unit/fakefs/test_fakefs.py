"""The FreeSWITCH stand-in, over real TCP sockets (gevent sockets, no patching).

Byte-level checks compare with the real FreeSWITCH 1.10.12 captures in
tests/data; every read has a timeout, and no test asserts how long anything
took.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
from pathlib import Path

import gevent
import pytest
from gevent import socket
from gevent.queue import Queue

from eslcdr import fakefs
from eslcdr.esl.events import JSON, PLAIN, EventDecodeError, decode_event, event_name
from eslcdr.esl.frames import Frame, FrameParser, ProtocolError

DATA = Path(__file__).resolve().parents[2] / "data"
CAPTURE_LIST = (
    "CHANNEL_CREATE CHANNEL_ANSWER CHANNEL_HANGUP_COMPLETE CHANNEL_PROGRESS "
    "CHANNEL_PROGRESS_MEDIA CHANNEL_BRIDGE DTMF CUSTOM spandsp::txfaxresult spandsp::rxfaxresult"
)
GREETING = b"Content-Type: auth/request\n\n"
ACCEPTED = b"Content-Type: command/reply\nReply-Text: +OK accepted\n\n"
GOODBYE = (
    b"Content-Type: text/disconnect-notice\nContent-Length: 67\n\n"
    b"Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"
)
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TIMEOUT = 5.0


def reply(text: str) -> bytes:
    return b"Content-Type: command/reply\nReply-Text: %s\n\n" % text.encode()


class Client:
    """A bare ESL client: raw bytes kept, frames parsed with FrameParser."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.sock.settimeout(TIMEOUT)
        self.parser = FrameParser()
        self.pending: collections.deque = collections.deque()
        self.closed = False

    def send(self, command: str) -> None:
        self.sock.sendall(command.encode("utf-8") + b"\n\n")

    def read_exact(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            if not chunk:
                break
            data += chunk
        return data

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        if not chunk:
            self.closed = True
            tail = self.parser.eof()
            if tail is not None:
                self.pending.append(tail)
            return False
        self.parser.feed(chunk)
        self.pending.extend(self.parser.items())
        return True

    def item(self):
        """The next Frame or ProtocolError; None once the server closed."""
        while not self.pending:
            if self.closed or not self._fill():
                return self.pending.popleft() if self.pending else None
        return self.pending.popleft()

    def frame(self) -> Frame:
        item = self.item()
        assert isinstance(item, Frame), item
        return item

    def command(self, command: str) -> Frame:
        self.send(command)
        return self.frame()

    def login(self, password: str = "ClueCon") -> None:
        assert self.read_exact(len(GREETING)) == GREETING
        self.send("auth " + password)
        assert self.read_exact(len(ACCEPTED)) == ACCEPTED

    def subscribe(self, fmt: str = "plain", names: str = CAPTURE_LIST) -> None:
        reply_frame = self.command("event %s %s" % (fmt, names))
        assert reply_frame.headers["Reply-Text"] == "+OK event listener enabled %s" % fmt

    def events(self, count: int) -> list[Frame]:
        return [self.frame() for _ in range(count)]

    def rest(self) -> list:
        """Everything until the server closes the connection."""
        items = []
        while True:
            item = self.item()
            if item is None:
                return items
            items.append(item)

    def silent_for(self, seconds: float) -> bool:
        """True when nothing arrives for that long."""
        self.sock.settimeout(seconds)
        try:
            return not self.pending and not self.sock.recv(1, socket.MSG_PEEK)
        except socket.timeout:
            return True
        finally:
            self.sock.settimeout(TIMEOUT)

    def close(self) -> None:
        self.sock.close()


def capture_frames(name: str) -> list[Frame]:
    parser = FrameParser()
    parser.feed((DATA / name).read_bytes())
    return [f for f in parser.items() if isinstance(f, Frame) and f.content_type in (PLAIN, JSON)]


def raw_frame(frame: Frame) -> bytes:
    head = b"Content-Length: %d\nContent-Type: %s\n\n" % (
        len(frame.body),
        frame.content_type.encode(),
    )
    return head + frame.body


def decoded(frame: Frame) -> dict:
    event = decode_event(frame)
    event.pop("Content-Length", None)  # the inner one of events with a body
    return event


@pytest.fixture
def serve():
    started = []

    def make(events=None, **options) -> fakefs.FakeFreeSWITCH:
        fake = fakefs.FakeFreeSWITCH(port=0, events=events, **options).start()
        started.append(fake)
        return fake

    yield make
    for fake in started:
        fake.stop(timeout=2.0)


def fed_source():
    """A StaticSource the test feeds one event at a time."""
    feed: Queue = Queue()

    def events():
        while True:
            event = feed.get(timeout=TIMEOUT)
            if event is None:
                return
            yield event

    return feed, fakefs.StaticSource(events())


def s1_events() -> list[dict]:
    return [decoded(f) for f in capture_frames("S1_plain.esl")]


# ---------------------------------------------------------------- protocol


def test_greeting_auth_and_exit_bytes(serve):
    fake = serve()
    client = Client(fake.port)
    client.login()
    client.send("exit")
    assert client.read_exact(200) == reply("+OK bye") + GOODBYE
    assert client.sock.recv(10) == b""  # closed by the server


def test_a_second_start_is_refused_by_name_and_the_first_server_keeps_serving(serve):
    fake = serve()
    with pytest.raises(fakefs.AlreadyStarted, match="already listening on port %d" % fake.port):
        fake.start()
    Client(fake.port).login()


def test_wrong_password_is_refused_and_closed(serve):
    fake = serve()
    client = Client(fake.port)
    assert client.read_exact(len(GREETING)) == GREETING
    client.send("auth nope")
    # parse_command answers -ERR invalid, then listener_run says goodbye.
    assert client.read_exact(500) == reply("-ERR invalid") + GOODBYE
    assert client.sock.recv(10) == b""


def test_commands_before_auth_are_not_found(serve):
    fake = serve()
    client = Client(fake.port)
    assert client.read_exact(len(GREETING)) == GREETING
    client.send("api status")
    assert client.read_exact(len(reply("-ERR command not found"))) == reply(
        "-ERR command not found"
    )
    client.send("event plain ALL")
    assert client.frame().headers["Reply-Text"] == "-ERR command not found"
    client.send("auth ClueCon")
    assert client.read_exact(len(ACCEPTED)) == ACCEPTED


def test_no_auth_in_time_says_goodbye(serve):
    fake = serve(auth_timeout=0.1)
    client = Client(fake.port)
    assert client.read_exact(500) == GREETING + GOODBYE  # then closed


def test_userauth_is_refused(serve):
    fake = serve()
    client = Client(fake.port)
    assert client.read_exact(len(GREETING)) == GREETING
    client.send("userauth 1000@default:1234")
    assert client.read_exact(500) == reply("-ERR invalid") + GOODBYE


def test_unknown_commands_and_api(serve):
    fake = serve()
    client = Client(fake.port)
    client.login()
    assert client.command("frobnicate now").headers["Reply-Text"] == "-ERR command not found"
    assert client.command("auth ClueCon").headers["Reply-Text"] == "-ERR command not found"
    response = client.command("api nosuch thing")
    assert response.headers["Content-Type"] == "api/response"
    assert response.body == b"-ERR nosuch Command not found!\n"
    assert client.command("event plain").headers["Reply-Text"] == "-ERR no keywords supplied"
    assert client.command("noevents").headers["Reply-Text"] == "-ERR not listening for events"


def test_subscription_replies(serve):
    fake = serve()
    client = Client(fake.port)
    client.login()
    assert (
        client.command("event plain ALL").headers["Reply-Text"]
        == "+OK event listener enabled plain"
    )
    assert (
        client.command("event json CHANNEL_CREATE").headers["Reply-Text"]
        == "+OK event listener enabled json"
    )
    # Without a format word the format stays what it was.
    assert client.command("event DTMF").headers["Reply-Text"] == "+OK event listener enabled json"
    assert client.command("nixevent DTMF").headers["Reply-Text"] == "+OK events nixed"
    assert client.command("noevents").headers["Reply-Text"] == "+OK no longer listening for events"


def test_filter_replies(serve):
    fake = serve()
    client = Client(fake.port)
    client.login()
    assert (
        client.command("filter Unique-ID abc").headers["Reply-Text"]
        == "+OK filter added. [Unique-ID]=[abc]"
    )
    assert client.command("filter Event-Name CHANNEL_ANSWER").headers["Reply-Text"] == (
        "+OK filter added. [Event-Name]=[CHANNEL_ANSWER]"
    )
    assert (
        client.command("filter delete Unique-ID abc").headers["Reply-Text"]
        == "+OK filter deleted. [Unique-ID][abc]"
    )
    assert client.command("filter Unique-ID").headers["Reply-Text"] == "-ERR invalid syntax"


def test_api_status_looks_like_freeswitch(serve):
    fake = serve()
    client = Client(fake.port)
    client.login()
    response = client.command("api status")
    assert response.headers["Content-Type"] == "api/response"
    assert int(response.headers["Content-Length"]) == len(response.body)
    lines = response.body.decode().split("\n")
    assert re.fullmatch(
        r"UP \d+ years?, \d+ days?, \d+ hours?, \d+ minutes?, \d+ seconds?, "
        r"\d+ milliseconds?, \d+ microseconds?",
        lines[0],
    )
    assert lines[1] == "FreeSWITCH (Version 1.10.12-release 64bit) is ready"
    assert lines[2] == "0 session(s) since startup"
    assert lines[3] == "0 session(s) - peak 0, last 5min 0 "
    assert lines[5] == "1000 session(s) max"


def test_show_channels_follows_the_stream(serve):
    feed, source = fed_source()
    fake = serve(source)
    client = Client(fake.port)
    client.login()
    empty = client.command("api show channels as json")
    assert empty.body == b'{"row_count": 0}\n'  # show_function's own text
    assert client.command("api show channels").body == b"\n0 total.\n"
    client.subscribe()
    events = s1_events()
    creates = [e for e in events if e["Event-Name"] == "CHANNEL_CREATE"]
    first_hangup = next(
        i for i, e in enumerate(events) if e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE"
    )
    for event in events[:first_hangup]:
        feed.put(event)
    client.events(first_hangup)
    listing = json.loads(client.command("api show channels as json").body)
    assert listing["row_count"] == 4
    rows = {row["uuid"]: row for row in listing["rows"]}
    assert set(rows) == {e["Unique-ID"] for e in creates}
    first = rows[creates[0]["Unique-ID"]]
    assert list(first) == [column for column, _ in fakefs.CHANNEL_COLUMNS]
    assert first["name"] == creates[0]["Channel-Name"]
    assert first["cid_num"] == "1000" and first["cid_name"] == "Alice"
    assert first["call_uuid"] == creates[0]["Channel-Call-UUID"]
    assert first["created_epoch"] == str(
        int(creates[0]["Caller-Channel-Created-Time"]) // 1_000_000
    )
    assert first["callstate"] == "ACTIVE"  # refreshed by the later events
    assert all(isinstance(value, str) for row in listing["rows"] for value in row.values())
    assert client.command("api show channels count").body == b"\n4 total.\n"
    table = client.command("api show channels").body.decode().split("\n")
    assert table[0] == ",".join(column for column, _ in fakefs.CHANNEL_COLUMNS)
    assert len(table) == 1 + 4 + 3 and table[-3:] == ["", "4 total.", ""]
    for event in events[first_hangup:]:
        feed.put(event)
    client.events(len(events) - first_hangup)
    assert client.command("api show channels as json").body == b'{"row_count": 0}\n'
    status = client.command("api status").body.decode()
    assert "4 session(s) since startup" in status
    feed.put(None)


# ---------------------------------------------------------------- replay


@pytest.mark.parametrize("name", ["S1_plain.esl", "S1_json.esl", "S6_plain.esl", "S7_plain.esl"])
def test_replay_is_byte_identical_to_the_capture(serve, name):
    frames = capture_frames(name)
    fake = serve(fakefs.ReplaySource([DATA / name]))
    client = Client(fake.port)
    client.login()
    client.subscribe("json" if "json" in name else "plain")
    received = client.events(len(frames))
    # Hangup-Cause twice, out-of-order Event-Sequence and all.
    assert [raw_frame(f) for f in received] == [raw_frame(f) for f in frames]
    assert fake.wait_done(TIMEOUT)


def test_replay_in_the_other_format_decodes_to_the_same_values(serve):
    frames = capture_frames("S4_json.esl")
    fake = serve(fakefs.ReplaySource([DATA / "S4_json.esl"]))
    client = Client(fake.port)
    client.login()
    client.subscribe("plain")
    received = client.events(len(frames))
    assert all(f.content_type == PLAIN for f in received)
    assert [decoded(f) for f in received] == [decoded(f) for f in frames]


@pytest.mark.parametrize("name", ["S1_all_plain.esl", "S4_json.esl", "S5_plain.esl", "S6_json.esl"])
def test_reencoding_capture_events_round_trips(name):
    for frame in capture_frames(name):
        pairs, body = fakefs.event_pairs(frame)
        event = dict(pairs)
        if body is not None:
            event["_body"] = body
        assert event == decoded(frame)
        for ctype in (PLAIN, JSON):
            template = fakefs.templates.compile_template(pairs, body, ())
            again = Frame(
                {"Content-Type": ctype},
                fakefs.templates.Emission(template, fakefs.templates.Context(), 0).body(ctype),
            )
            assert decoded(again) == event


def test_only_subscribed_events_are_sent(serve):
    feed, source = fed_source()
    fake = serve(source)
    expected = [decoded(f) for f in capture_frames("S6_plain.esl")]
    hangups = Client(fake.port)
    hangups.login()
    hangups.subscribe("json", "CHANNEL_HANGUP_COMPLETE")
    fax = Client(fake.port)
    fax.login()
    fax.subscribe("plain", "CUSTOM spandsp::rxfaxresult")
    everything = Client(fake.port)
    everything.login()
    everything.subscribe("plain", "ALL")
    for event in expected + [None]:
        feed.put(event)
    assert fake.wait_done(TIMEOUT)
    got = [decoded(f) for f in hangups.events(2)]
    assert got == [e for e in expected if e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE"]
    got = [decoded(f) for f in fax.events(1)]
    assert [event_name(e) for e in got] == ["spandsp::rxfaxresult"]
    assert [decoded(f) for f in everything.events(len(expected))] == expected
    for client in (hangups, fax, everything):
        assert client.silent_for(0.05)


def test_nixevent_narrows_all(serve):
    feed, source = fed_source()
    fake = serve(source)
    client = Client(fake.port)
    client.login()
    assert client.command("nixevent CHANNEL_CREATE").headers["Reply-Text"] == "+OK events nixed"
    client.subscribe("plain", "ALL")
    client.command("nixevent CHANNEL_CREATE CHANNEL_PROGRESS_MEDIA")
    for event in s1_events() + [None]:
        feed.put(event)
    expected = [
        e
        for e in s1_events()
        if e["Event-Name"] not in ("CHANNEL_CREATE", "CHANNEL_PROGRESS_MEDIA")
    ]
    assert [decoded(f) for f in client.events(len(expected))] == expected


def test_filters_select_events(serve):
    events = s1_events()
    leg = events[0]["Unique-ID"]
    feed, source = fed_source()
    fake = serve(source)
    one_leg = Client(fake.port)
    one_leg.login()
    one_leg.command("filter Unique-ID %s" % leg.upper())  # compared without case
    one_leg.subscribe()
    vetoed = Client(fake.port)
    vetoed.login()
    vetoed.command("filter Event-Name /^CHANNEL_(ANSWER|HANGUP_COMPLETE)$/")
    vetoed.command("filter Unique-ID -%s" % leg)
    vetoed.subscribe()
    for event in events + [None]:
        feed.put(event)
    assert fake.wait_done(TIMEOUT)
    mine = [e for e in events if e["Unique-ID"] == leg]
    assert [decoded(f) for f in one_leg.events(len(mine))] == mine
    others = [
        e
        for e in events
        if e["Event-Name"] in ("CHANNEL_ANSWER", "CHANNEL_HANGUP_COMPLETE")
        and e["Unique-ID"] != leg
    ]
    assert [decoded(f) for f in vetoed.events(len(others))] == others
    assert one_leg.silent_for(0.05) and vetoed.silent_for(0.05)


def test_repeat_gives_fresh_ids_and_later_times():
    source = fakefs.ReplaySource([DATA / "S7_plain.esl"], repeat=3)
    per_rep = len(capture_frames("S7_plain.esl"))
    events = []
    for emission in source:
        emission.core, emission.host = source.core_uuid, source.hostname
        events.append(emission.event())
    assert len(events) == len(source) == 3 * per_rep
    reps = [events[i * per_rep : (i + 1) * per_rep] for i in range(3)]
    assert reps[0] == [decoded(f) for f in capture_frames("S7_plain.esl")]
    ids = [{e["Unique-ID"] for e in rep} for rep in reps]
    assert len(ids[0]) == 80 and all(len(i) == 80 for i in ids)
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    for later in reps[1:]:
        mapping = {}
        for a, b in zip(reps[0], later):
            assert a.keys() == b.keys()
            for key in a:
                old, new = UUID_RE.findall(a[key]), UUID_RE.findall(b[key])
                assert len(old) == len(new), key
                for o, n in zip(old, new):
                    if key == "Core-UUID":
                        assert o == n  # the switch is the same
                    else:
                        assert mapping.setdefault(o, n) == n and n != o
        # Other-Leg-Unique-ID, variable_*, Channel-Call-UUID: all follow one map.
        assert len(set(mapping.values())) == len(mapping)
    for earlier, later in zip(reps, reps[1:]):
        assert min(int(e["Event-Date-Timestamp"]) for e in later) > max(
            int(e["Event-Date-Timestamp"]) for e in earlier
        )
        shift = int(later[0]["Event-Date-Timestamp"]) - int(earlier[0]["Event-Date-Timestamp"])
        assert shift % 1_000_000 == 0
        for a, b in zip(earlier, later):
            for key in (
                "Caller-Channel-Created-Time",
                "Caller-Channel-Answered-Time",
                "variable_end_uepoch",
            ):
                if a.get(key, "0") != "0":
                    assert int(b[key]) - int(a[key]) == shift
            if "variable_end_epoch" in a:
                assert int(b["variable_end_epoch"]) == int(b["variable_end_uepoch"]) // 1_000_000
                assert b["variable_end_stamp"] > a["variable_end_stamp"]
            assert b["Event-Date-GMT"] != a["Event-Date-GMT"]
    # Event order is the capture's, out-of-order Event-Sequence included.
    seqs = [[int(e["Event-Sequence"]) for e in rep] for rep in reps]
    steps = [[y - x for x, y in zip(s, s[1:])] for s in seqs]
    assert steps[0] == steps[1] == steps[2] and min(steps[0]) < 0


def test_replay_time_base_moves_the_first_event():
    source = fakefs.ReplaySource([DATA / "S1_plain.esl"], time_base=2_000_000_000.25)
    first = next(iter(source))
    first.core, first.host = source.core_uuid, source.hostname
    event = first.event()
    assert int(event["Event-Date-Timestamp"]) // 1_000_000 == 2_000_000_000
    assert event["Event-Date-GMT"] == "Wed, 18 May 2033 03:33:20 GMT"


def test_capture_with_garbage_is_refused():
    with pytest.raises(ValueError):
        fakefs.ReplaySource([b"Content-Type: auth/request\n\nnot a header\n\n"])


# ---------------------------------------------------------------- generated calls


def generated_events(**options) -> list[dict]:
    source = fakefs.GeneratedSource(**options)
    out = []
    for emission in source:
        emission.core, emission.host = source.core_uuid, source.hostname
        out.append(emission.event())
    return out


@pytest.mark.slow
def test_generated_calls_are_deterministic_by_seed():
    first = fakefs.GeneratedSource(calls=30, seed=5, start_time=1_900_000_000.0)
    again = fakefs.GeneratedSource(calls=30, seed=5, start_time=1_900_000_000.0)
    other = fakefs.GeneratedSource(calls=30, seed=6, start_time=1_900_000_000.0)

    def frames(source):
        out = []
        for emission in source:
            emission.core, emission.host = source.core_uuid, source.hostname
            out.append(emission.frame(JSON))
        return out

    assert frames(first) == frames(again)
    assert frames(first) != frames(other)
    # Without a start time (now) only the times differ.
    ids = [(e["Unique-ID"], e["Event-Name"]) for e in generated_events(calls=10, seed=5)]
    assert ids == [(e["Unique-ID"], e["Event-Name"]) for e in generated_events(calls=10, seed=5)]


def test_max_talk_caps_the_talk_time_and_changes_nothing_else():
    def lifetimes(**options) -> dict[str, float]:
        """Seconds from a leg's first event to its hangup."""
        first: dict[str, int] = {}
        out = {}
        for e in generated_events(calls=60, seed=3, start_time=1_900_000_000.0, **options):
            at = int(e["Event-Date-Timestamp"])
            first.setdefault(e["Unique-ID"], at)
            if e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE":
                out[e["Unique-ID"]] = (at - first[e["Unique-ID"]]) / 1e6
        return out

    free, capped = lifetimes(), lifetimes(max_talk=2)
    assert capped.keys() == free.keys()  # the same calls and legs
    assert max(free.values()) > 60  # talk times average 30 s uncapped...
    # ...and a capped leg lives at most its template's own time (the fax
    # call's is 34 s) plus 2 s.
    assert max(capped.values()) < 40
    assert all(capped[call_id] <= seconds + 1e-6 for call_id, seconds in free.items())
    with pytest.raises(ValueError):
        fakefs.GeneratedSource(calls=1, max_talk=-1)


def test_generated_legs_are_whole_and_linked(serve):
    fake = serve(fakefs.GeneratedSource(calls=40, seed=11, start_time=1_900_000_000.0))
    client = Client(fake.port)
    client.login()
    client.subscribe("json")
    assert fake.wait_done(TIMEOUT)
    count = fake.position
    events = [decoded(f) for f in client.events(count)]
    assert client.silent_for(0.05)
    legs = collections.defaultdict(list)
    for event in events:
        legs[event["Unique-ID"]].append(event)
    assert len({e["Core-UUID"] for e in events}) == 1
    for leg in legs.values():
        names = [e["Event-Name"] for e in leg]
        assert names[0] == "CHANNEL_CREATE" and names[-1] == "CHANNEL_HANGUP_COMPLETE"
        assert names.count("CHANNEL_CREATE") == 1 and names.count("CHANNEL_HANGUP_COMPLETE") == 1
        assert len({e["Channel-Name"] for e in leg}) == 1
        assert all(e.get("variable_uuid", e["Unique-ID"]) == e["Unique-ID"] for e in leg)
        hangup = leg[-1]
        assert int(hangup["Caller-Channel-Hangup-Time"]) >= int(
            hangup["Caller-Channel-Created-Time"]
        )
        assert int(hangup["variable_duration"]) == int(hangup["variable_end_epoch"]) - int(
            hangup["variable_start_epoch"]
        )
        if hangup["variable_answer_uepoch"] != "0":
            assert int(hangup["variable_billsec"]) == int(hangup["variable_end_epoch"]) - int(
                hangup["variable_answer_epoch"]
            )
        else:
            assert hangup["variable_billsec"] == "0"
    # Every link between legs points at a leg of the stream.
    for event in events:
        for key in (
            "Other-Leg-Unique-ID",
            "Channel-Call-UUID",
            "variable_other_loopback_leg_uuid",
            "variable_originating_leg_uuid",
            "variable_bridge_uuid",
            "variable_signal_bond",
        ):
            if event.get(key):
                assert event[key] in legs, key
    assert fake.live_channels() == []


def test_generated_mix_looks_like_the_captures():
    events = generated_events(calls=200, seed=1, start_time=1_900_000_000.0)
    names = collections.Counter(event_name(e) for e in events)
    causes = collections.Counter(
        e["Hangup-Cause"] for e in events if e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE"
    )
    assert (
        names["DTMF"]
        and names["spandsp::txfaxresult"]
        and names["spandsp::rxfaxresult"]
        and names["CHANNEL_BRIDGE"]
    )
    assert {
        "NORMAL_CLEARING",
        "USER_BUSY",
        "CALL_REJECTED",
        "NO_ANSWER",
        "ORIGINATOR_CANCEL",
    } <= set(causes)
    assert causes["NORMAL_CLEARING"] > sum(causes.values()) / 2  # mostly answered
    assert any(e.get("variable_sip_h_X-Account-ID") == "acme" for e in events)
    callers = {
        e["Caller-Caller-ID-Name"]
        for e in events
        if e["Event-Name"] == "CHANNEL_CREATE" and "Caller-Caller-ID-Name" in e
    }
    assert (
        any("," in n for n in callers)
        and any('"' in n for n in callers)
        and any(not n.isascii() for n in callers)
    )
    numbers = {e["Caller-Caller-ID-Number"] for e in events if e["Event-Name"] == "CHANNEL_CREATE"}
    assert len(numbers) > 50
    # The templates' own caller is gone everywhere (durations may say 1000).
    for event in events:
        for key, value in event.items():
            assert "Alice" not in value, key
    first = min(int(e["Event-Date-Timestamp"]) for e in events)
    assert first // 1_000_000 == 1_900_000_000
    talk = [
        int(e["variable_billsec"]) for e in events if e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE"
    ]
    assert len(set(talk)) > 20  # durations vary


def test_generated_events_decode_the_same_in_both_formats():
    source = fakefs.GeneratedSource(calls=15, seed=2, start_time=1_900_000_000.0)
    for emission in source:
        emission.core, emission.host = source.core_uuid, source.hostname
        plain = Frame({"Content-Type": PLAIN}, emission.body(PLAIN))
        as_json = Frame({"Content-Type": JSON}, emission.body(JSON))
        assert decoded(plain) == decoded(as_json)


KAZOO = "variable_ecallmgr_"
HEX32 = re.compile(r"[0-9a-f]{32}")


def generated_calls(**options) -> list[list[dict]]:
    """The decoded events of each generated call (one Context per call)."""
    source = fakefs.GeneratedSource(**options)
    calls: dict = {}  # keyed by the context itself: an id() could be reused
    for emission in source:
        emission.core, emission.host = source.core_uuid, source.hostname
        calls.setdefault(emission.ctx, []).append(emission.event())
    return list(calls.values())


def kazoo_vars(event: dict) -> dict:
    return {k[len(KAZOO) :]: v for k, v in event.items() if k.startswith(KAZOO)}


def call_kazoo(call: list[dict]) -> tuple:
    """(account, owner, interaction) of a call, checked equal on every leg."""
    with_vars = [e for e in call if any(k.startswith("variable_") for k in e)]
    values = {
        (v["Account-ID"], v["Owner-ID"], v.get("Call-Interaction-ID"))
        for v in map(kazoo_vars, with_vars)
    }
    assert len(values) == 1, values
    return values.pop()


def test_generated_legs_carry_the_kazoo_variables_of_their_call():
    calls = generated_calls(calls=80, seed=4, start_time=1_900_000_000.0)
    interactions = 0
    for call in calls:
        account, owner, interaction = call_kazoo(call)
        assert account in fakefs.DEFAULT_ACCOUNTS and HEX32.fullmatch(owner)
        for event in call:
            if not any(k.startswith("variable_") for k in event):
                # DTMF: FreeSWITCH sends no channel variables, so none are added.
                assert event["Event-Name"] == "DTMF" and not kazoo_vars(event)
        creates = [e for e in call if e["Event-Name"] == "CHANNEL_CREATE"]
        number = creates[0]["Caller-Caller-ID-Number"]
        assert owner == fakefs.generated.kazoo_id("user", number)  # the owner follows the caller
        # Authorizing-ID: the caller's legs only (the first and its loopback
        # twin), the same device on each.
        first = creates[0]["Unique-ID"]
        caller_side = {first, creates[0].get("variable_other_loopback_leg_uuid")}
        for event in call:
            if event["Event-Name"] != "DTMF":
                authorizing = kazoo_vars(event).get("Authorizing-ID")
                if event["Unique-ID"] in caller_side:
                    assert authorizing == fakefs.generated.kazoo_id("device", number)
                else:
                    assert authorizing is None
        if interaction is not None:
            interactions += 1
            start = min(int(e["Event-Date-Timestamp"]) for e in call) // 1_000_000
            seconds, _, tail = interaction.partition("-")
            assert int(seconds) == start + 62167219200 and re.fullmatch(r"[0-9a-f]{8}", tail)
    assert 0.25 * len(calls) < interactions < 0.75 * len(calls)  # some calls only
    # A bridged call's callee legs have no Authorizing-ID but the same account.
    bridged = next(c for c in calls if any("s1_answer-b" in e["Channel-Name"] for e in c))
    callee = [e for e in bridged if "s1_answer" in e["Channel-Name"]]
    assert callee and all("Authorizing-ID" not in kazoo_vars(e) for e in callee)


def test_generated_accounts_follow_the_seed():
    def accounts(seed, **options):
        calls = generated_calls(calls=40, seed=seed, start_time=1_900_000_000.0, **options)
        return [call_kazoo(call) for call in calls]

    assert fakefs.DEFAULT_ACCOUNTS[0] == "demo-account"  # the demo's curl commands
    assert all(HEX32.fullmatch(a) for a in fakefs.DEFAULT_ACCOUNTS[1:])
    first = accounts(1)
    assert first == accounts(1)  # same seed, same accounts, owners and interactions
    assert {a for a, _, _ in first} == set(fakefs.DEFAULT_ACCOUNTS)
    assert [a for a, _, _ in first] != [a for a, _, _ in accounts(2)]
    assert [i for _, _, i in first] != [i for _, _, i in accounts(2)]
    mine = accounts(1, accounts=("north", "south"))
    assert {a for a, _, _ in mine} == {"north", "south"}
    with pytest.raises(ValueError):
        fakefs.GeneratedSource(accounts=())


def test_accounts_change_nothing_else_and_encode_like_other_values():
    odd = 'Acme, "Ünïcode" 100%'
    plain_calls = generated_calls(calls=20, seed=3, start_time=1_900_000_000.0)
    odd_calls = generated_calls(calls=20, seed=3, start_time=1_900_000_000.0, accounts=(odd,))
    for ours, theirs in zip(plain_calls, odd_calls):
        for a, b in zip(ours, theirs):
            a.pop("variable_ecallmgr_Account-ID", None)
            assert b.pop("variable_ecallmgr_Account-ID", odd) == odd
            assert a == b
    source = fakefs.GeneratedSource(calls=5, seed=3, start_time=1_900_000_000.0, accounts=(odd,))
    for emission in source:
        emission.core, emission.host = source.core_uuid, source.hostname
        as_plain = decoded(Frame({"Content-Type": PLAIN}, emission.body(PLAIN)))
        assert as_plain == decoded(Frame({"Content-Type": JSON}, emission.body(JSON)))


def test_shipped_templates_are_the_captured_calls():
    docs = fakefs.template_documents()
    assert len(docs) == 12
    for doc in docs:
        call = fakefs.extract_calls(DATA / doc["source"])[doc["call"]]
        shipped = [(tuple(map(tuple, e["headers"])), e.get("body")) for e in doc["events"]]
        assert shipped == call, doc["name"]


# ---------------------------------------------------------------- faults


def test_drop_after_closes_without_notice_and_hold_resumes(serve):
    frames = capture_frames("S1_plain.esl")
    fake = serve(fakefs.ReplaySource([DATA / "S1_plain.esl"]), drop_after=5, hold=True)
    client = Client(fake.port)
    client.login()
    client.subscribe()
    rest = client.rest()
    assert [raw_frame(f) for f in rest] == [raw_frame(f) for f in frames[:5]]  # no goodbye
    again = Client(fake.port)
    again.login()
    again.subscribe()
    assert fake.wait_done(TIMEOUT)
    assert [raw_frame(f) for f in again.events(len(frames) - 5)] == [
        raw_frame(f) for f in frames[5:]
    ]


def test_events_while_nobody_listens_are_lost(serve):
    feed, source = fed_source()
    events = s1_events()
    fake = serve(source)
    client = Client(fake.port)
    client.login()
    client.subscribe()
    for event in events[:3]:
        feed.put(event)
    assert [decoded(f) for f in client.events(3)] == events[:3]
    fake.drop_connections()
    assert client.rest() == []
    for event in events[3:6]:
        feed.put(event)
    with gevent.Timeout(TIMEOUT):
        while fake.position < 6:
            gevent.sleep(0.01)
    again = Client(fake.port)
    again.login()
    again.subscribe()
    for event in events[6:8]:
        feed.put(event)
    assert [decoded(f) for f in again.events(2)] == events[6:8]
    feed.put(None)
    assert fake.wait_done(TIMEOUT)
    assert again.silent_for(0.05)


def test_stall_sends_nothing_then_resumes(serve):
    frames = capture_frames("S1_plain.esl")
    fake = serve(fakefs.ReplaySource([DATA / "S1_plain.esl"]), stall_after=3, stall_seconds=1.0)
    client = Client(fake.port)
    client.login()
    client.subscribe()
    assert [raw_frame(f) for f in client.events(3)] == [raw_frame(f) for f in frames[:3]]
    client.send("api status")
    assert client.silent_for(0.3)  # neither events nor the reply
    rest = client.events(len(frames) - 3)
    assert [raw_frame(f) for f in rest] == [raw_frame(f) for f in frames[3:]]
    assert client.frame().headers["Content-Type"] == "api/response"


def test_api_uptime_answers_as_mod_commands(serve):
    fake = serve()
    client = Client(fake.port)
    client.login()
    gevent.sleep(1.1)
    seconds = client.command("api uptime")
    assert seconds.headers["Content-Type"] == "api/response" and re.fullmatch(rb"[1-9]\d*\n", seconds.body)
    millis = int(client.command("api uptime ms").body)
    assert int(seconds.body) * 1000 <= millis < (int(seconds.body) + 60) * 1000
    assert client.command("api uptime d").body == b"0\n"
    assert client.command("api uptime weeks").body == b"-USAGE: %s\n" % fakefs.UPTIME_SYNTAX.encode()


def test_frozen_answers_nothing_emits_nothing_and_greets_nobody_until_thawed(serve):
    frames = capture_frames("S1_plain.esl")
    fake = serve(fakefs.ReplaySource([DATA / "S1_plain.esl"]), pause_after=3)
    client = Client(fake.port)
    client.login()
    client.subscribe()
    assert [raw_frame(f) for f in client.events(3)] == [raw_frame(f) for f in frames[:3]]
    fake.freeze()
    fake.resume()
    client.send("api uptime")
    late = Client(fake.port)  # the kernel accepts it; nobody greets it
    assert client.silent_for(0.5) and late.silent_for(0.1)  # neither events nor the reply
    assert fake.position == 3
    fake.thaw()
    late.login()
    items = client.events(len(frames) - 3 + 1)  # the reply and the stream's rest, in either order
    assert [f.headers["Content-Type"] for f in items].count("api/response") == 1
    rest = [raw_frame(f) for f in items if f.headers["Content-Type"] != "api/response"]
    assert rest == [raw_frame(f) for f in frames[3:]]


def test_restart_changes_core_uuid_and_continues(serve):
    frames = capture_frames("S1_plain.esl")
    fake = serve(fakefs.ReplaySource([DATA / "S1_plain.esl"]), restart_after=4, hold=True)
    old_core = fake.core_uuid
    client = Client(fake.port)
    client.login()
    client.subscribe()
    items = client.rest()
    assert [raw_frame(f) for f in items[:4]] == [raw_frame(f) for f in frames[:4]]
    assert items[4].headers["Content-Type"] == "text/disconnect-notice"
    assert items[4].body == b"The system is being shut down.\n"
    assert len(items) == 5
    assert fake.core_uuid != old_core and fake.restarts == 1
    again = Client(fake.port)
    again.login()
    assert json.loads(again.command("api show channels as json").body)["row_count"] == 0
    again.subscribe()
    rest = [decoded(f) for f in again.events(len(frames) - 4)]
    expected = [decoded(f) for f in frames[4:]]
    assert {e["Core-UUID"] for e in rest} == {fake.core_uuid}
    for got, want in zip(rest, expected):
        want["Core-UUID"] = fake.core_uuid
        assert got == want


def test_restart_downtime_refuses_connections(serve):
    fake = serve(restart_downtime=30.0)
    first = Client(fake.port)
    first.login()
    fake.restart()
    assert first.rest()[0].body == b"The system is being shut down.\n"
    late = Client(fake.port)
    assert late.sock.recv(100) == b""  # no greeting: the switch is down


def test_prerendered_replay_is_still_byte_identical(serve):
    frames = capture_frames("S1_json.esl")
    fake = serve(fakefs.ReplaySource([DATA / "S1_json.esl"], repeat=2), prerender="json")
    client = Client(fake.port)
    client.login()
    client.subscribe("json")
    received = client.events(2 * len(frames))
    assert [raw_frame(f) for f in received[: len(frames)]] == [raw_frame(f) for f in frames]
    assert received[len(frames)].body != frames[0].body


def test_malformed_frames_are_mixed_in(serve):
    frames = capture_frames("S1_json.esl")
    fake = serve(fakefs.ReplaySource([DATA / "S1_json.esl"]), malformed_every=2)
    client = Client(fake.port)
    client.login()
    client.subscribe("json")
    assert fake.wait_done(TIMEOUT)
    client.send("exit")
    good, bad = [], 0
    for item in client.rest():
        if isinstance(item, ProtocolError):
            bad += 1
            continue
        if item.content_type != JSON:
            continue
        try:
            good.append(decoded(item))
        except EventDecodeError:
            bad += 1
    assert bad == len(frames) // 2
    assert good == [decoded(f) for f in frames]


def test_slow_reader_is_dropped_without_backpressure(serve):
    fake = serve(
        fakefs.GeneratedSource(calls=300, seed=4, start_time=1_900_000_000.0),
        backpressure=False,
        queue_limit=5,
    )
    client = Client(fake.port)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.login()
    client.subscribe("json")
    assert fake.wait_done(TIMEOUT)  # while the client reads nothing
    assert fake.connections() == 0  # FreeSWITCH gave up on it
    client.close()


def test_slow_reader_holds_the_stream_with_backpressure(serve):
    # ~20 MB of events: more than any socket buffers hold.
    fake = serve(
        fakefs.GeneratedSource(calls=300, seed=4, start_time=1_900_000_000.0), queue_limit=5
    )
    client = Client(fake.port)
    client.login()
    client.subscribe("json")
    assert not fake.wait_done(0.2)  # the source waits for the reader
    count = 0
    while not fake.done():
        client.frame()
        count += 1
    count += len(client.events(fake.position - count))
    assert count == fake.position and fake.connections() == 1


# ---------------------------------------------------------------- command line


def test_cli_arguments_and_sources():
    parser = argparse.ArgumentParser()
    fakefs.add_arguments(parser)
    args = parser.parse_args([])
    assert (args.host, args.port, args.password) == ("127.0.0.1", 8021, "ClueCon")
    assert isinstance(fakefs.source_from_args(args), fakefs.GeneratedSource)
    args = parser.parse_args(
        [
            "--replay",
            str(DATA / "S1_plain.esl"),
            "--repeat",
            "2",
            "--drop-after",
            "3",
            "--stall-after",
            "4",
            "--stall-seconds",
            "0.5",
            "--restart-after",
            "9",
            "--malformed-every",
            "7",
            "--calls",
            "0",
            "--cps",
            "2.5",
            "--seed",
            "9",
            "--hold",
        ]
    )
    source = fakefs.source_from_args(args)
    assert isinstance(source, fakefs.ReplaySource) and len(source) == 30
    assert (
        args.drop_after,
        args.stall_after,
        args.stall_seconds,
        args.restart_after,
        args.malformed_every,
    ) == (3, 4, 0.5, 9, 7)
    with pytest.raises(SystemExit):
        parser.parse_args(["--drop-after", "0"])
    assert fakefs.source_from_args(parser.parse_args([])).accounts == fakefs.DEFAULT_ACCOUNTS
    source = fakefs.source_from_args(parser.parse_args(["--accounts", "acme, beta,gamma"]))
    assert source.accounts == ("acme", "beta", "gamma")
    with pytest.raises(SystemExit):
        parser.parse_args(["--accounts", "acme,,beta"])
    # A port past 65535 is a usage error, not an OverflowError from bind().
    assert parser.parse_args(["--port", "65535"]).port == 65535
    with pytest.raises(SystemExit):
        parser.parse_args(["--port", "65536"])


def test_cli_run_serves_until_delivered():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    parser = argparse.ArgumentParser()
    fakefs.add_arguments(parser)
    args = parser.parse_args(
        ["--port", str(port), "--replay", str(DATA / "S6_json.esl"), "--exit-when-done"]
    )
    runner = gevent.spawn(fakefs.run, args)
    with gevent.Timeout(TIMEOUT):
        while True:
            try:
                client = Client(port)
                break
            except ConnectionRefusedError:
                gevent.sleep(0.01)
    client.login()
    client.subscribe("json")
    assert [decoded(f) for f in client.events(8)] == [
        decoded(f) for f in capture_frames("S6_json.esl")
    ]
    assert runner.get(timeout=TIMEOUT) == 0


def test_cli_run_rejects_a_missing_capture(capsys):
    parser = argparse.ArgumentParser()
    fakefs.add_arguments(parser)
    args = parser.parse_args(["--replay", "/nonexistent/capture.esl"])
    assert fakefs.run(args) == 2
    assert "capture.esl" in capsys.readouterr().err
