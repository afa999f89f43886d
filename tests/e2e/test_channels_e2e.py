"""Live channels end to end: the stand-in in this process plays a real
capture one step at a time into a real ``eslcdr run``; the test reads
``GET /v2/accounts/{ACCOUNT_ID}/channels`` over HTTP after each step.  A
restarted daemon shows the legs still up at once, from ``show channels as
json`` (and ``uuid_dump``), before any new event."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import gevent
import gevent.queue

from eslcdr.fakefs import FakeFreeSWITCH, StaticSource

from tests.conftest import capture_events
from tests.harness import WAIT, DaemonProcess, write_config

ACC = "4b0cd3c1e0a2f2c6a8d9e1f20a3b4c5d"
TOKENS = "token-a %s\ntoken-collector *\n" % ACC


class Pushed:
    """Events the test hands to the stand-in one by one (a blocking iterable)."""

    def __init__(self) -> None:
        self.queue: gevent.queue.Queue = gevent.queue.Queue()

    def __iter__(self):
        while True:
            event = self.queue.get()
            if event is None:
                return
            yield event

    def push(self, *events) -> None:
        for event in events:
            self.queue.put(event)


def tagged(events):
    return [dict(e, **{"variable_ecallmgr_Account-ID": ACC, "variable_ecallmgr_Owner-ID": "user-1"})
            for e in events]


def get_json(port: int, path: str, token: str) -> dict:
    request = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), headers={"X-Auth-Token": token})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def channels(port: int, path: str = "/v2/accounts/%s/channels" % ACC, token: str = "token-a") -> dict[str, dict]:
    return {c["uuid"]: c for c in get_json(port, path, token)["data"]}


def wait_for(check, what: str, timeout: float = WAIT):
    """Poll ``check()`` until it returns something truthy (bounded)."""
    waited = 0.0
    while waited < timeout:
        try:
            found = check()
        except (urllib.error.URLError, OSError):
            found = None
        if found:
            return found
        gevent.sleep(0.05)
        waited += 0.05
    raise AssertionError("timed out waiting for %s" % what)


def test_channels_follow_the_calls_and_come_back_after_a_restart(tmp_path):
    events = tagged(capture_events("S1_json.esl"))
    extra_create = tagged(capture_events("S3_json.esl"))[0]  # a leg born while no daemon listens
    uuids = [e["Unique-ID"] for e in events]
    bridge_a, bridge_b, answer_a, answer_b = uuids[0], uuids[1], uuids[4], uuids[5]
    source = Pushed()
    fake = FakeFreeSWITCH(events=StaticSource(source), hold=False)
    fake.start()
    (tmp_path / "tokens").write_text(TOKENS)
    ini = write_config(tmp_path, fake.port)
    daemon = DaemonProcess(ini, tmp_path / "daemon.log")
    second = None
    try:
        port = daemon.api_port()
        wait_for(lambda: fake.connections() and get_json(port, "/health", "")["status"] == "ok", "connected")
        assert channels(port) == {}

        source.push(*events[0:2])  # CHANNEL_CREATE of the loopback pair
        live = wait_for(lambda: len(channels(port)) == 2 and channels(port), "two legs")
        assert {c["state"] for c in live.values()} == {"DOWN"} and not any(c["answered"] for c in live.values())
        assert live[bridge_a]["direction"] == "outbound" and live[bridge_b]["direction"] == "inbound"
        assert live[bridge_a]["node"] == "fs-test" and live[bridge_a]["owner_id"] == "user-1"

        source.push(*events[2:4])  # CHANNEL_PROGRESS_MEDIA
        wait_for(lambda: {c["state"] for c in channels(port).values()} == {"EARLY"}, "early media")

        source.push(*events[4:10])  # two more CREATEs, four ANSWERs
        live = wait_for(lambda: len(channels(port)) == 4 and all(c["answered"] for c in channels(port).values())
                        and channels(port), "four answered legs")
        assert {c["state"] for c in live.values()} == {"ACTIVE"}
        assert "other_leg" not in live[bridge_b] or live[bridge_b]["other_leg"] != answer_a

        source.push(events[10])  # CHANNEL_BRIDGE bridge-b <-> answer-a
        live = wait_for(lambda: channels(port)[bridge_b].get("other_leg") == answer_a and channels(port),
                        "the bridge")
        assert live[answer_a]["other_leg"] == bridge_b
        assert live[bridge_b]["interaction_id"] == live[answer_a]["interaction_id"]

        # Hold and unhold (CHANNEL_HOLD / CHANNEL_UNHOLD, subscribed).
        source.push(dict(events[10], **{"Event-Name": "CHANNEL_HOLD"}))
        wait_for(lambda: channels(port)[bridge_b]["state"] == "HELD", "the hold")
        source.push(dict(events[10], **{"Event-Name": "CHANNEL_UNHOLD"}))
        wait_for(lambda: channels(port)[bridge_b]["state"] == "ACTIVE", "the unhold")

        source.push(events[11])  # CHANNEL_HANGUP_COMPLETE of answer-b
        live = wait_for(lambda: answer_b not in channels(port) and channels(port), "the hangup")
        assert set(live) == {bridge_a, bridge_b, answer_a}

        # The socket drops: the daemon reconnects and still shows the three.
        fake.drop_connections()
        wait_for(lambda: get_json(port, "/health", "")["nodes"]["fs-test"]["reconnects"] >= 1
                 and get_json(port, "/health", "")["status"] == "ok", "the reconnect")
        assert set(channels(port)) == {bridge_a, bridge_b, answer_a}

        # The daemon stops; a leg is born while nobody listens; a new daemon
        # shows all four at once, from show channels, with no new event.
        assert daemon.stop() == 0
        wait_for(lambda: fake.connections() == 0, "the daemon gone")
        source.push(extra_create)
        wait_for(lambda: extra_create["Unique-ID"] in {r["uuid"] for r in fake.live_channels()}, "the new leg")
        second = DaemonProcess(ini, tmp_path / "daemon2.log")
        port = second.api_port()
        # show channels lists the legs at once; uuid_dump gives each its account
        # a moment later (one command per leg): wait for both.
        everything = wait_for(lambda: len(channels(port, "/v2/channels", "token-collector")) == 4
                              and len(channels(port)) == 4
                              and channels(port, "/v2/channels", "token-collector"), "re-seeded legs")
        assert set(everything) == {bridge_a, bridge_b, answer_a, extra_create["Unique-ID"]}
        for call_id in (bridge_a, bridge_b, answer_a):
            assert everything[call_id]["answered"] is True and everything[call_id]["state"] == "ACTIVE"
        # uuid_dump gave the re-seeded legs their account and owner.
        assert set(channels(port)) == set(everything)
        assert {c["owner_id"] for c in everything.values()} == {"user-1"}
        new = everything[extra_create["Unique-ID"]]
        assert new["answered"] is False and new["direction"] == "outbound"
        assert new["channel_name"] == extra_create["Channel-Name"]
        assert new["destination"] == extra_create["Caller-Destination-Number"]
        assert new["timestamp"] == int(extra_create["Caller-Channel-Created-Time"]) // 1_000_000 + 62167219200

        source.push(*events[12:])  # the remaining hangups
        wait_for(lambda: set(channels(port, "/v2/channels", "token-collector")) == {extra_create["Unique-ID"]},
                 "the last hangups")
    finally:
        source.push(None)
        for process in (daemon, second):
            if process is not None:
                process.stop()
        fake.stop()
    log = [e for e in second.log_events() if e.get("event") == "esl_resync"]
    assert log and log[0]["added"] == 4


def test_stand_in_uuid_dump_answers_like_mod_commands():
    events = capture_events("S1_json.esl")
    fake = FakeFreeSWITCH(events=StaticSource(events[:10]), wait_for_subscriber=False)
    fake.start()
    try:
        assert fake.wait_done(timeout=10)
        uuid = events[1]["Unique-ID"]
        dump = json.loads(fake.api("uuid_dump", uuid + " json"))
        assert dump["Event-Name"] == "CHANNEL_DATA" and dump["Unique-ID"] == uuid
        assert dump["Channel-Call-State"] == "ACTIVE" and dump["Answer-State"] == "answered"
        assert dump["Channel-Name"] == events[1]["Channel-Name"]
        text = fake.api("uuid_dump", uuid)
        assert "Unique-ID: %s\n" % uuid in text and "Event-Name: CHANNEL_DATA\n" in text
        assert fake.api("uuid_dump", "no-such-uuid json") == "-ERR No such channel!\n"
    finally:
        fake.stop()
