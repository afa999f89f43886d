"""Live channels: the tracker's live view (pure, fed the real captures), the
re-seeding from ``show channels as json``, and the API route (webtest).

Over a real socket with a real ``eslcdr run``: test_channels_e2e.py.
"""

from __future__ import annotations

import json

import pytest
import webtest

from eslcdr.api import app as api
from eslcdr.store import db as store
from eslcdr.ingest.live import LiveChannels
from eslcdr.config import from_mapping
from eslcdr.esl.events import parse_channel_rows, parse_dump
from eslcdr.ingest.interactions import derive_interaction_id
from eslcdr.ingest.legs import GREGORIAN_OFFSET, LegTracker
from eslcdr.query.reader import InlineRunner
from eslcdr.api.tokens import TokenStore

ACC = "4b0cd3c1e0a2f2c6a8d9e1f20a3b4c5d"
OTHER = "7e1f3a9b2c4d5e6f708192a3b4c5d6e7"
ACCOUNT_VAR = "variable_ecallmgr_Account-ID"
OWNER_VAR = "variable_ecallmgr_Owner-ID"


def with_accounts(events, account_of):
    """The capture's events, each leg tagged with the account ``account_of(uuid)``
    gives (the captures come from a FreeSWITCH without Kazoo)."""
    out = []
    for event in events:
        account = account_of(event["Unique-ID"])
        out.append(dict(event, **{ACCOUNT_VAR: account, OWNER_VAR: "owner-" + event["Unique-ID"][:4]})
                   if account else dict(event))
    return out


def by_id(tracker, **scope):
    return {leg.call_id: leg for leg in tracker.live_legs(**scope)}


def test_legs_appear_change_and_vanish_as_s1_plays(events_of):
    events = with_accounts(events_of("S1_json"), lambda uuid: ACC)
    tracker = LegTracker()
    seen_states: dict[str, list[str]] = {}
    for n, event in enumerate(events):
        tracker.feed(event, 1_000_000 + n)
        live = by_id(tracker)
        call_id, name = event["Unique-ID"], event["Event-Name"]
        if name == "CHANNEL_HANGUP_COMPLETE":
            assert call_id not in live
            continue
        leg = live[call_id]
        seen_states.setdefault(call_id, []).append(leg.state)
        assert leg.direction == event["Call-Direction"]
        assert leg.channel_name == event["Channel-Name"]
        assert leg.destination == event["Caller-Destination-Number"]
        assert leg.caller_id_number == event["Caller-Caller-ID-Number"]
        assert leg.account_id == ACC and leg.owner_id == "owner-" + call_id[:4]
        assert leg.created_us == int(event["Caller-Channel-Created-Time"])
        assert leg.interaction_id == tracker.interaction_of(call_id)
        if name == "CHANNEL_CREATE":
            assert leg.state == "DOWN" and not leg.answered and leg.answered_us == 0
        elif name == "CHANNEL_PROGRESS_MEDIA":
            assert leg.state == "EARLY" and not leg.answered
        elif name == "CHANNEL_ANSWER":
            assert leg.state == "ACTIVE" and leg.answered
            assert leg.answered_us == int(event["Caller-Channel-Answered-Time"])
        elif name == "CHANNEL_BRIDGE":
            partner = event["Other-Leg-Unique-ID"]
            assert leg.other_leg == partner
            assert live[partner].other_leg == call_id and live[partner].state == "ACTIVE"
    assert len(tracker) == 0 and tracker.live_legs() == []
    bridge_a = events[0]["Unique-ID"]  # loopback/s1_bridge-a: created, early media, answered
    assert seen_states[bridge_a] == ["DOWN", "EARLY", "ACTIVE"]


def test_live_view_is_scoped_and_a_copy(events_of):
    events = events_of("S1_json")
    first_two = {events[0]["Unique-ID"]}
    tagged = with_accounts(events, lambda uuid: ACC if uuid in first_two else OTHER)
    tracker = LegTracker()
    for n, event in enumerate(tagged[:6]):  # up to the second call's CREATEs
        tracker.feed(event, n)
    assert set(by_id(tracker, account_id=ACC)) == first_two
    assert len(by_id(tracker, account_id=OTHER)) == 3
    assert set(by_id(tracker, account_id=ACC, owner_id="owner-" + events[0]["Unique-ID"][:4])) == first_two
    assert by_id(tracker, account_id=ACC, owner_id="nobody") == {}
    snapshot = tracker.live_legs()
    for n, event in enumerate(tagged[6:]):
        tracker.feed(event, 100 + n)
    assert len(snapshot) == 4 and all(leg.state == "DOWN" or leg.state == "EARLY" for leg in snapshot)


def test_hold_and_unhold_move_an_answered_leg(events_of):
    events = events_of("S1_json")
    create, answer = events[0], events[8]
    tracker = LegTracker()
    tracker.feed(create, 1)
    tracker.feed(answer, 2)
    states = []
    for n, name in enumerate(("CHANNEL_HOLD", "CHANNEL_PROGRESS", "CHANNEL_UNHOLD")):
        tracker.feed(dict(answer, **{"Event-Name": name}), 3 + n)
        (leg,) = tracker.live_legs()
        states.append((leg.state, leg.answered, leg.answered_us))
    answered_us = int(answer["Caller-Channel-Answered-Time"])
    # A late PROGRESS does not take a held call off hold.
    assert states == [("HELD", True, answered_us), ("HELD", True, answered_us), ("ACTIVE", True, answered_us)]


def test_out_of_order_progress_never_undoes_an_answer(events_of):
    events = events_of("S1_json")
    create, progress, answer = events[0], events[2], events[8]
    tracker = LegTracker()
    for n, event in enumerate((create, answer, progress)):
        tracker.feed(event, n)
    (leg,) = tracker.live_legs()
    assert leg.state == "ACTIVE" and leg.answered


CHANNEL_ROWS = """{"row_count":2,"rows":[
{"uuid":"seed-1","direction":"inbound","created":"2026-11-30 07:00:00","created_epoch":"1796108400",
 "name":"sofia/external/+15551230001@198.51.100.7","state":"CS_EXECUTE","cid_name":"Alice",
 "cid_num":"+15551230001","dest":"2000","presence_id":"","callstate":"ACTIVE","callee_name":"",
 "callee_num":"","call_uuid":"seed-1"},
{"uuid":"seed-2","direction":"outbound","created_epoch":"1796108401","name":"sofia/internal/2000@x",
 "callstate":"RINGING","cid_num":"+15551230001","dest":"2000","secure":null}]}"""


def test_seed_adds_unknown_legs_and_moves_known_ones_on(events_of):
    create = events_of("S1_json")[0]
    tracker = LegTracker()
    tracker.feed(create, 5)
    rows = parse_channel_rows(CHANNEL_ROWS)
    assert rows[1]["secure"] == ""
    known = dict(rows[1], uuid=create["Unique-ID"], callstate="EARLY")
    added = tracker.seed(rows + [known], 10)
    assert added == ["seed-1", "seed-2"]
    live = by_id(tracker)
    one = live["seed-1"]
    assert (one.direction, one.state, one.answered, one.caller_id_name, one.destination) == (
        "inbound", "ACTIVE", True, "Alice", "2000")
    assert one.created_us == 1796108400 * 1_000_000
    # derived from the seeded leg: its creation second, then its Unique-ID's hash
    assert one.interaction_id == derive_interaction_id("seed-1", 1796108400 * 1_000_000)
    assert one.interaction_id.startswith("%d-" % (1796108400 + GREGORIAN_OFFSET))
    assert live["seed-2"].state == "RINGING" and not live["seed-2"].answered
    assert live[create["Unique-ID"]].state == "EARLY"
    assert live[create["Unique-ID"]].channel_name == create["Channel-Name"]  # kept, not overwritten
    # Seeding again adds nothing; a finished leg is never brought back.
    assert tracker.seed(rows, 11) == []
    tracker.feed(dict(create, **{"Event-Name": "CHANNEL_HANGUP_COMPLETE"}), 12)
    assert tracker.seed([known], 13) == [] and create["Unique-ID"] not in by_id(tracker)


def test_uuid_dump_fills_in_a_seeded_leg(events_of):
    """``uuid_dump <uuid> json`` answers a CHANNEL_DATA event: fed like any
    event, it gives a seeded leg its account and owner."""
    answer = events_of("S1_json")[8]
    dump = dict(answer, **{"Event-Name": "CHANNEL_DATA", ACCOUNT_VAR: ACC, OWNER_VAR: "u1"})
    event = parse_dump(json.dumps(dump))
    assert event is not None and event["Event-Name"] == "CHANNEL_DATA"
    assert parse_dump("-ERR No such channel!\n") is None
    assert parse_dump('{"broken": ') is None
    tracker = LegTracker()
    tracker.seed([{"uuid": answer["Unique-ID"], "callstate": "ACTIVE", "created_epoch": "1"}], 1)
    assert tracker.live_legs(account_id=ACC) == []
    tracker.feed(event, 2)
    (leg,) = tracker.live_legs(account_id=ACC)
    assert leg.owner_id == "u1" and leg.channel_name == answer["Channel-Name"] and leg.answered


def test_parse_channel_rows_handles_empty_and_garbage():
    assert parse_channel_rows('{"row_count": 0}\n') == []
    assert parse_channel_rows('{"rows": [{"name": "no uuid"}, 7, {"uuid": "u", "n": 5}]}') == [
        {"uuid": "u", "n": "5"}]


# ------------------------------------------------------------------ the route

TOKENS = {"token-a": ACC, "token-b": OTHER, "token-collector": "*"}


@pytest.fixture
def web(tmp_path, events_of):
    tokens = tmp_path / "tokens"
    tokens.write_text("".join("%s %s\n" % item for item in TOKENS.items()))
    config = from_mapping({"store": {"path": str(tmp_path / "cdrs.db")}, "api": {"tokens_file": str(tokens)}})
    store.connect_writer(config.store.path).close()
    events = events_of("S1_json")
    first = events[0]["Unique-ID"]
    tracker = LegTracker()
    for n, event in enumerate(with_accounts(events[:10], lambda uuid: ACC if uuid == first else None)):
        tracker.feed(event, n)
    now_us = int(events[9]["Event-Date-Timestamp"]) + 42_000_000
    channels = LiveChannels(lambda: {"fs1": tracker}, clock=lambda: now_us)
    app = api.create_app(config, tokens=TokenStore(tokens), runner=InlineRunner(), channels=channels)
    yield webtest.TestApp(app), events
    app.close()


def test_route_shows_kazoo_shaped_channels_of_the_account(web):
    client, events = web
    response = client.get("/v2/accounts/%s/channels" % ACC, headers={"X-Auth-Token": "token-a"})
    body = response.json
    assert body["status"] == "success" and body["page_size"] == 1
    (channel,) = body["data"]
    create = events[0]
    assert channel["uuid"] == create["Unique-ID"]
    assert channel["account_id"] == ACC and channel["owner_id"] == "owner-" + create["Unique-ID"][:4]
    assert channel["answered"] is True and channel["state"] == "ACTIVE" and channel["node"] == "fs1"
    assert channel["direction"] == "outbound" and channel["destination"] == create["Caller-Destination-Number"]
    created_s = int(create["Caller-Channel-Created-Time"]) // 1_000_000
    assert channel["timestamp"] == created_s + GREGORIAN_OFFSET
    assert channel["elapsed_s"] == (int(events[9]["Event-Date-Timestamp"]) + 42_000_000
                                    - int(create["Caller-Channel-Created-Time"])) // 1_000_000
    assert None not in channel.values() and "" not in channel.values()
    # A user's channels; another user's are empty.
    owner = channel["owner_id"]
    assert len(client.get("/v2/accounts/%s/users/%s/channels" % (ACC, owner),
                          headers={"X-Auth-Token": "token-a"}).json["data"]) == 1
    assert client.get("/v2/accounts/%s/users/nobody/channels" % ACC,
                      headers={"X-Auth-Token": "token-a"}).json["data"] == []


def test_route_scopes_tokens(web):
    client, _ = web
    assert client.get("/v2/accounts/%s/channels" % ACC, status=401).json["error"] == "401"
    assert client.get("/v2/accounts/%s/channels" % ACC, headers={"X-Auth-Token": "token-b"},
                      status=403).json["error"] == "403"
    assert client.get("/v2/accounts/%s/channels" % OTHER, headers={"X-Auth-Token": "token-b"}).json["data"] == []
    collector = {"X-Auth-Token": "token-collector"}
    assert len(client.get("/v2/accounts/%s/channels" % ACC, headers=collector).json["data"]) == 1
    # The system-wide list (Kazoo's GET /v2/channels) is the collector's:
    # every leg, also those without an account.
    everything = client.get("/v2/channels", headers=collector).json["data"]
    assert len(everything) == 4 and [c["timestamp"] for c in everything] == sorted(c["timestamp"] for c in everything)
    assert client.get("/v2/channels", headers={"X-Auth-Token": "token-a"}, status=403).json["error"] == "403"
