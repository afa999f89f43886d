"""Leg tracker + CDR builder on the real captures, against hand-written values."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from eslcdr import config
from eslcdr.ingest.cdr import CdrBuilder, build_cdr, build_lost_cdr, cdr_id, should_record
from eslcdr.ingest.legs import FinishedLeg, LegTracker
from eslcdr.ingest.interactions import derive_interaction_id

from tests.expected_cdrs import EXPECTED, INTERACTIONS, ROW_COUNT

CFG = config.from_mapping({"cdr": {"node_name": "fs1"}})
FIELDS_STORED_AS_EMPTY = {"custom_sip_headers": {}}


def run_capture(events, tracker=None, cfg=CFG):
    if tracker is None:
        tracker = LegTracker(cfg.cdr.interaction_id_vars)
    builder = CdrBuilder(cfg.cdr, "fs1")
    records = {}
    for n, event in enumerate(events):
        finished = tracker.feed(event, 1_000_000 * n)
        if finished is not None and should_record(finished.hangup):
            record = builder.build(finished)
            assert record["call_id"] not in records
            records[record["call_id"]] = record
    return records, tracker


@pytest.mark.parametrize("capture", sorted(EXPECTED))
def test_every_field_matches_hand_written_expectation(events_of, capture):
    records, _ = run_capture(events_of(capture))
    assert len(records) == ROW_COUNT[capture]
    for call_id, expected in EXPECTED[capture].items():
        record = records[call_id]
        for field, value in expected.items():
            got = record[field]
            if isinstance(value, bool):
                got = bool(got) if got is not None else None
            assert got == value, (capture, call_id, field)


@pytest.mark.parametrize("capture", sorted(INTERACTIONS))
def test_legs_of_one_call_share_one_interaction_id(events_of, capture):
    records, tracker = run_capture(events_of(capture))
    ids_per_call = []
    for call in INTERACTIONS[capture]:
        ids = {records[call_id]["interaction_id"] for call_id in call}
        assert len(ids) == 1, (capture, call)
        ids_per_call.append(ids.pop())
    assert len(set(ids_per_call)) == len(ids_per_call)
    assert tracker.merges == []


def test_record_fields_common_to_all_legs(events_of):
    records, _ = run_capture(events_of("S1_json"))
    for record in records.values():
        assert record["app_name"] == "eslcdr"
        assert record["node"] == "fs1"
        assert record["id"] == "202611-" + record["call_id"]
        assert record["custom_channel_vars"] == {}


def test_s4_custom_channel_vars_and_sip_headers(events_of):
    cfg = config.from_mapping({"cdr": {"custom_vars": "s4_exported_var, s4_seen_account", "custom_var_prefixes": "my_"}})
    records, _ = run_capture(events_of("S4_plain"), cfg=cfg)
    out = {r["channel_name"]: r for r in records.values()}
    # Loopback copies the originate variables to the -b half; "set" stays local.
    assert out["loopback/s4_call-b"]["custom_channel_vars"] == {
        "s4_exported_var": "exported-to-b-leg",
        "originate_var": "orig123",
    }
    assert out["loopback/s4_call-a"]["custom_channel_vars"] == {"originate_var": "orig123"}
    callee = out["sofia/external/1000@127.0.0.1"]
    assert callee["custom_sip_headers"] == {"x_account_id": "acme", "x_tenant": "blue"}
    assert callee["custom_channel_vars"]["s4_seen_account"] == "acme"


_NAME_PARTS = st.sampled_from(["variable_", "sip_h_", "sip_h_X-a", "sip_h_x-B", "sip_h_Y-a", "my_a", "my-A", "mine_a",
                                "-", "\n", "\nvariable_my_a"])


@settings(max_examples=300, deadline=None)
@example(prefixes=["sip_h_", "my"], names=["x", "sip_h_Y-a", "my_a", "x", "sip_h_X-a", "my_b\nvariable_my_a"])
@given(prefixes=st.lists(st.sampled_from(["my_", "my", "mine_", "sip_h_", "sip_h_X"]), max_size=3),
       names=st.lists(st.lists(_NAME_PARTS, max_size=3).map("".join), max_size=12))
def test_custom_fields_are_each_name_read_alone(prefixes, names):
    # What the candidate search finds is what each name gives alone:
    # an X- SIP header first, else the first configured prefix that leaves a
    # name (prefixes that start one another, or sip_h_, included), in the
    # event's order, the last of two names with one key winning.
    import re

    cfg = config.from_mapping({"cdr": {"custom_var_prefixes": ", ".join(prefixes)}})
    event = {"variable_" + name if n % 3 else name: str(n) for n, name in enumerate(names)}
    event.update({"Unique-ID": "u", "Event-Name": "CHANNEL_HANGUP_COMPLETE"})
    channel_vars, sip_headers = {}, {}
    alternatives = "".join("|%s(.+)" % re.escape(prefix) for prefix in prefixes)
    for name in "\n".join(event).split("\n"):  # a name holding a newline is its lines
        found = re.fullmatch(r"variable_(?:sip_h_([Xx]-.+)%s)" % alternatives, name)
        value = event.get(name)
        if found is None or value is None:
            continue
        key = next(group for group in found.groups() if group is not None).lower().replace("-", "_")
        (sip_headers if found.group(1) is not None else channel_vars)[key] = value
    record = build_cdr(FinishedLeg(event, "", (), "", "i", ()), cfg.cdr, "n")
    assert list(record["custom_channel_vars"].items()) == list(channel_vars.items())
    assert list(record["custom_sip_headers"].items()) == list(sip_headers.items())


def test_custom_field_names_remembered_by_a_builder_stay_bounded():
    # Names come from the events: a flood of distinct ones must not grow the
    # builder's memory of them past SEEN_NAMES, and each still lands.
    from eslcdr.ingest.cdr import SEEN_NAMES

    builder = CdrBuilder(config.from_mapping({}).cdr, "n")
    for n in range(SEEN_NAMES + 10):
        event = {"Unique-ID": "u%d" % n, "variable_ecallmgr_Flood-%d" % n: "v", "variable_sip_h_X-F%d" % n: "h"}
        record = builder.build(FinishedLeg(event, "", (), "", "i", ()))
        assert record["custom_channel_vars"] == {"flood_%d" % n: "v"}
        assert record["custom_sip_headers"] == {"x_f%d" % n: "h"}
    assert 0 < len(builder.rules.seen) <= SEEN_NAMES


def test_account_and_owner_from_configured_variables(events_of):
    cfg = config.from_mapping({"cdr": {"account_id_vars": "sip_h_X-Account-ID", "owner_id_vars": "s4_bleg_var"}})
    records, _ = run_capture(events_of("S4_json"), cfg=cfg)
    found = {r["channel_name"]: (r["account_id"], r["owner_id"]) for r in records.values()}
    assert found["sofia/internal/s4_answer@127.0.0.1:5080"] == ("acme", "bleg-only")
    assert found["loopback/s4_call-a"] == (None, None)


def test_default_config_never_reads_account_from_sip_headers(events_of):
    records, _ = run_capture(events_of("S4_json"))
    assert {r["account_id"] for r in records.values()} == {None}


def test_hangup_complete_for_unknown_leg_still_complete(events_of):
    hangups = [e for e in events_of("S6_plain") if e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE"]
    records, _ = run_capture(hangups)
    assert len(records) == 2
    for record in records.values():
        assert record["fax_success"] is True
        assert record["fax_total_pages"] == 2
        assert record["duration_seconds"] > 30


def test_fax_fields_from_spandsp_event_when_variables_missing(events_of):
    events = []
    for event in events_of("S6_json"):
        if event["Event-Name"] == "CHANNEL_HANGUP_COMPLETE":
            event = {k: v for k, v in event.items() if not k.startswith("variable_fax_")}
        events.append(event)
    records, _ = run_capture(events)
    for record in records.values():
        assert record["fax_success"] is True
        assert record["fax_transferred_pages"] == 2
        assert record["fax_transfer_rate"] == 14400
        assert record["fax_ecm_used"] is True


def test_duplicate_hangup_makes_no_second_record(events_of):
    events = events_of("S3_json")
    doubled = events + [e for e in events if e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE"]
    records, tracker = run_capture(doubled)
    assert len(records) == 8
    assert tracker.duplicates == 8


def test_out_of_order_events_same_records(events_of):
    events = events_of("S1_json")
    forward, _ = run_capture(events)
    # Every event but the hangups in reverse order, hangups last.
    others = [e for e in events if e["Event-Name"] != "CHANNEL_HANGUP_COMPLETE"][::-1]
    hangups = [e for e in events if e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE"]
    shuffled, _ = run_capture(others + hangups)
    assert {k: {f: v for f, v in r.items() if f != "interaction_id"} for k, r in shuffled.items()} == {
        k: {f: v for f, v in r.items() if f != "interaction_id"} for k, r in forward.items()
    }
    assert len({r["interaction_id"] for r in shuffled.values()}) == 1


def test_process_cdr_false_writes_nothing(events_of):
    events = [dict(e, variable_process_cdr="false") for e in events_of("S3_plain")]
    records, _ = run_capture(events)
    assert records == {}


def test_explicit_interaction_id_carried_to_linked_legs(events_of):
    events = events_of("S1_plain")
    root = events[0]["Unique-ID"]
    tagged = [dict(e, **{"variable_ecallmgr_Call-Interaction-ID": "63900000000-abcdef12"}) if e["Unique-ID"] == root else e for e in events]
    records, _ = run_capture(tagged)
    assert {r["interaction_id"] for r in records.values()} == {"63900000000-abcdef12"}


def test_interaction_survives_restart_through_remembered_links(events_of):
    events = events_of("S1_json")
    first_hangup = next(i for i, e in enumerate(events) if e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE")
    before, _ = run_capture(events[: first_hangup + 1])
    (record,) = before.values()
    remembered = [(record["call_id"], record["interaction_id"])] + [(l, record["interaction_id"]) for l in record["links"]]
    fresh = LegTracker()
    fresh.remember_interactions(remembered)
    after, _ = run_capture(events[first_hangup + 1 :], tracker=fresh)
    assert {r["interaction_id"] for r in after.values()} == {record["interaction_id"]}


def test_legs_expire_and_memory_stays_bounded():
    tracker = LegTracker(leg_ttl_us=10_000_000, max_remembered=1000, max_interactions=1000)
    for n in range(5000):
        tracker.feed({"Unique-ID": "leg-%d" % n, "Event-Name": "CHANNEL_CREATE"}, n * 1000)
    assert len(tracker) == 5000
    expired = tracker.expire(5000 * 1000 + 10_000_000 + 1)
    assert len(expired) == 5000
    assert len(tracker) == 0
    assert len(tracker._interaction) <= 1000


def test_resync_writes_off_vanished_legs_after_grace(events_of):
    events = [e for e in events_of("S1_json") if e["Event-Name"] == "CHANNEL_CREATE"]
    tracker = LegTracker()
    for event in events:
        tracker.feed(event, 0)
    keep = events[0]["Unique-ID"]
    assert tracker.resync({keep}, 1_000_000, grace_us=5_000_000) == 3
    assert tracker.take_lost(5_999_999) == []  # still in grace
    lost = tracker.take_lost(6_000_000)
    assert {leg.call_id for leg in lost} == {e["Unique-ID"] for e in events[1:]}
    record = build_lost_cdr(lost[0], "fs1", 6_000_000)
    assert record["disposition"] == "eslcdr_hangup_not_seen"
    assert tracker.live_call_ids() == [keep]


def test_a_resync_judges_only_the_legs_known_before_the_subscription():
    # FreeSWITCH's core db (what show channels reads) may list a channel after
    # its CHANNEL_CREATE was sent: a leg first heard on this connection is not
    # missing from the list, just new.  Marked, it was written off after the
    # grace and its real hangup then ignored (eslcdr demo: 4-32 legs a start).
    tracker = LegTracker()
    tracker.feed(_event("CHANNEL_CREATE", "old-gone", 1_000_000), 1)
    tracker.feed(_event("CHANNEL_CREATE", "old-live", 1_000_000), 1)
    tracker.subscribing()
    tracker.feed(_event("CHANNEL_CREATE", "new-unlisted", 2_000_000), 2)
    assert tracker.resync({"old-live"}, 3, grace_us=0) == 1
    assert [leg.call_id for leg in tracker.take_lost(4)] == ["old-gone"]
    assert tracker.feed(_event("CHANNEL_HANGUP_COMPLETE", "new-unlisted", 2_000_000), 5).interaction_id
    # Without a subscription noted (a resync called alone), every unlisted leg is judged.
    tracker.feed(_event("CHANNEL_CREATE", "late", 6_000_000), 6)
    assert tracker.resync(set(), 7, grace_us=0) == 2


def test_hangup_arriving_within_grace_wins_over_resync(events_of):
    # FreeSWITCH may answer "show channels" before it flushed the queued
    # HANGUP_COMPLETE of a leg that just ended.
    events = events_of("S6_json")
    hangups = [e for e in events if e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE"]
    tracker = LegTracker()
    for event in events:
        if event["Event-Name"] != "CHANNEL_HANGUP_COMPLETE":
            tracker.feed(event, 0)
    tracker.resync(set(), 1_000_000, grace_us=5_000_000)
    finished = [tracker.feed(e, 2_000_000) for e in hangups]
    assert all(finished)
    assert tracker.take_lost(10_000_000) == []


def test_hangup_with_headers_missing_still_makes_a_record():
    tracker = LegTracker()
    leg = tracker.feed({"Event-Name": "CHANNEL_HANGUP_COMPLETE", "Unique-ID": "bare-leg"}, 1_795_727_713_000_000)
    record = build_cdr(leg, CFG.cdr, "fs1")
    assert record["call_id"] == "bare-leg"
    assert record["id"] == "202611-bare-leg"
    assert record["timestamp"] == 1_795_727_713 + 62167219200
    assert record["duration_seconds"] == 0 and record["billing_seconds"] == 0
    assert record["hangup_cause"] is None and record["fax_success"] is None


def test_event_without_unique_id_ignored():
    tracker = LegTracker()
    assert tracker.feed({"Event-Name": "CHANNEL_HANGUP_COMPLETE"}, 0) is None
    assert len(tracker) == 0


def test_garbage_values_do_not_break_the_builder():
    tracker = LegTracker()
    event = {
        "Event-Name": "CHANNEL_HANGUP_COMPLETE",
        "Unique-ID": "odd",
        "Caller-Channel-Created-Time": "not-a-number",
        "Caller-Channel-Answered-Time": "12x",
        "variable_billmsec": "-5",
        "variable_duration": "abc",
        "variable_fax_success": "1",
        "variable_fax_document_total_pages": "two",
        "Event-Date-Timestamp": "1795727713000000",
    }
    record = build_cdr(tracker.feed(event, 0), CFG.cdr, "fs1")
    assert record["billing_seconds"] == 0
    assert record["duration_seconds"] == 0
    assert record["fax_success"] is True and record["fax_total_pages"] is None


@pytest.mark.parametrize("capture", sorted(INTERACTIONS))
def test_legs_of_one_call_carry_the_earliest_legs_creation(events_of, capture):
    # The interaction list places a call by this value: every leg must carry
    # the same one, the earliest creation of the call's legs, whichever leg
    # hangs up first.
    records, _ = run_capture(events_of(capture))
    for call in INTERACTIONS[capture]:
        starts = {records[call_id]["interaction_created_us"] for call_id in call}
        assert starts == {min(records[call_id]["created_us"] for call_id in call)}, (capture, call)


def _event(name: str, call_id: str, created_us: int, **headers: str) -> dict:
    return {"Event-Name": name, "Unique-ID": call_id, "Caller-Channel-Created-Time": str(created_us), **headers}


def test_tracker_keeps_the_earliest_creation_per_interaction():
    tracker = LegTracker(("my_iid",))
    tracker.feed(_event("CHANNEL_CREATE", "a", 5_000_000, variable_my_iid="u-1"), 1)
    tracker.feed(_event("CHANNEL_CREATE", "b", 7_000_000, **{"Other-Leg-Unique-ID": "a"}), 2)
    # The B-leg (created later) ends first: it carries the A-leg's creation.
    b = tracker.feed(_event("CHANNEL_HANGUP_COMPLETE", "b", 7_000_000, **{"Other-Leg-Unique-ID": "a"}), 3)
    assert (b.interaction_id, b.interaction_created_us) == ("u-1", 5_000_000)
    a = tracker.feed(_event("CHANNEL_HANGUP_COMPLETE", "a", 5_000_000, variable_my_iid="u-1"), 4)
    assert (a.interaction_id, a.interaction_created_us) == ("u-1", 5_000_000)
    # A leg first seen at its hangup (no CREATE seen) still counts.
    c = tracker.feed(_event("CHANNEL_HANGUP_COMPLETE", "c", 9_000_000, variable_my_iid="u-2"), 5)
    assert c.interaction_created_us == 9_000_000
    # A lost leg carries it too.
    tracker.feed(_event("CHANNEL_CREATE", "d", 3_000_000, **{"Other-Leg-Unique-ID": "e"}), 6)
    tracker.feed(_event("CHANNEL_CREATE", "e", 2_000_000), 7)
    tracker.resync(set(), 8, grace_us=0)
    lost = {leg.call_id: leg for leg in tracker.take_lost(9)}
    assert {leg.interaction_created_us for leg in lost.values()} == {2_000_000}
    assert build_lost_cdr(lost["d"], "fs1", 10)["interaction_created_us"] == 2_000_000


def test_an_interaction_variable_set_but_empty_is_as_if_not_set():
    # The last of interaction_id_vars present but empty (a dialplan that
    # exports it before it has a value) gave the leg the id "" (and every
    # leg it names); a leg without an id gets the derived one.
    tracker = LegTracker(("my_iid",))
    a = tracker.feed(_event("CHANNEL_HANGUP_COMPLETE", "a", 5_000_000, variable_my_iid=""), 1)
    assert a.interaction_id == derive_interaction_id("a", 5_000_000)
    tracker = LegTracker(("first_iid", "my_iid"))
    b = tracker.feed(_event("CHANNEL_HANGUP_COMPLETE", "b", 5_000_000, variable_first_iid="", variable_my_iid="u-9"), 1)
    assert b.interaction_id == "u-9"


def test_merged_interaction_takes_the_earlier_creation():
    tracker = LegTracker(("my_iid",))
    # Two groups, the explicit one created later: the explicit id wins the
    # merge, the derived group's earlier creation is kept.
    tracker.feed(_event("CHANNEL_CREATE", "x", 1_000_000, variable_sip_call_id="shared"), 1)
    tracker.feed(_event("CHANNEL_CREATE", "y", 4_000_000, variable_my_iid="u-9"), 2)
    assert tracker.interaction_created_us("u-9") == 4_000_000
    y = tracker.feed(_event("CHANNEL_HANGUP_COMPLETE", "y", 4_000_000, variable_my_iid="u-9",
                            variable_sip_call_id="shared"), 3)
    assert (y.interaction_id, y.interaction_created_us) == ("u-9", 1_000_000)
    assert tracker.interaction_created_us("u-9") == 1_000_000
    x = tracker.feed(_event("CHANNEL_HANGUP_COMPLETE", "x", 1_000_000, variable_sip_call_id="shared"), 4)
    assert (x.interaction_id, x.interaction_created_us) == ("u-9", 1_000_000)


def test_remembered_starts_and_trimming():
    tracker = LegTracker(max_remembered=10, max_interactions=10, leg_ttl_us=1)
    tracker.remember_interactions([("late", "u-r")])
    tracker.remember_interaction_starts([("u-r", 6_000_000), ("u-r", 8_000_000)])
    late = tracker.feed(_event("CHANNEL_HANGUP_COMPLETE", "late", 9_000_000), 1)
    assert (late.interaction_id, late.interaction_created_us) == ("u-r", 6_000_000)
    for n in range(50):
        tracker.feed(_event("CHANNEL_CREATE", "leg-%d" % n, 10_000_000 + n), 2)
    tracker.expire(10**9)
    assert len(tracker._started) <= 10


# ------------------------------------------------------------------ DTMF flood


def dtmf_flood(events, count: int, digit: str = "5"):
    """The capture with ``count`` DTMF events on its first hung-up leg, just
    before that leg's hangup."""
    at = next(i for i, e in enumerate(events) if e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE")
    call_id = events[at]["Unique-ID"]
    dtmf = {"Event-Name": "DTMF", "Unique-ID": call_id, "DTMF-Digit": digit, "DTMF-Duration": "2000"}
    return events[:at] + [dtmf] * count + events[at:], call_id


def test_a_dtmf_flood_stores_the_first_digits_and_counts_them_all(events_of):
    from eslcdr.ingest.legs import MAX_DTMF_DIGITS

    events, call_id = dtmf_flood(events_of("S1_json"), 72_000)
    tracker = LegTracker()
    finished = [leg for n, e in enumerate(events) if (leg := tracker.feed(e, n)) is not None]
    leg = next(leg for leg in finished if leg.hangup["Unique-ID"] == call_id)
    assert leg.dtmf_count == 72_000
    assert leg.digits == "5" * MAX_DTMF_DIGITS == build_cdr(leg, CFG.cdr, "fs1")["digits_dialed"]
    # FreeSWITCH's own digits_dialed variable is capped alike.
    hangup = dict(leg.hangup, variable_digits_dialed="1" * 72_000)
    import dataclasses

    assert build_cdr(dataclasses.replace(leg, hangup=hangup), CFG.cdr, "fs1")["digits_dialed"] == "1" * MAX_DTMF_DIGITS


def test_a_dtmf_flood_keeps_the_trackers_memory_per_leg_bounded(events_of):
    import tracemalloc

    events = events_of("S1_json")
    at = next(i for i, e in enumerate(events) if e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE")
    tracker = LegTracker()
    for n, event in enumerate(events[:at]):
        tracker.feed(event, n)
    # Distinct digit strings, as decoded events give (each its own object),
    # and a DTMF-Digit longer than one character, which nothing else bounds.
    floods = [{"Event-Name": "DTMF", "Unique-ID": events[at]["Unique-ID"], "DTMF-Digit": "%d" % (n % 10) + "#" * 9}
              for n in range(72_000)]
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for n, event in enumerate(floods):
            tracker.feed(event, at + n)
        grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    finally:
        tracemalloc.stop()
    assert grown < 16_384, grown  # the old list of 72,000 digits: ~600 KB
    leg = tracker.feed(events[at], len(events))
    assert len(leg.digits) == 256 and leg.dtmf_count == 72_000


# ------------------------------------------------------------------ SIP Call-ID links

_UUID = __import__("re").compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def same_call_ids_elsewhere(events, tag: str, account: str | None, shift_s: int = 0):
    """The capture's calls again under new leg ids (``tag``), in ``account``
    (``ecallmgr_Account-ID``), ``shift_s`` later -- with the same SIP
    Call-IDs, as a caller who chose them would send."""
    import uuid

    def new_id(match):
        return str(uuid.uuid5(uuid.NAMESPACE_OID, tag + match.group(0)))

    out = []
    for event in events:
        copy = {}
        for name, value in event.items():
            if name != "variable_sip_call_id" and tag:
                value = _UUID.sub(new_id, value)
            if shift_s and len(value) == 16 and value.isdigit():  # µs times
                value = str(int(value) + shift_s * 1_000_000)
            copy[name] = value
        if account is not None:
            copy["variable_ecallmgr_Account-ID"] = account
        out.append(copy)
    return out


def interaction_groups(records, capture, tag=""):
    import uuid

    def leg(call_id):
        return str(uuid.uuid5(uuid.NAMESPACE_OID, tag + call_id)) if tag else call_id

    return [{records[leg(c)]["interaction_id"] for c in call} for call in INTERACTIONS[capture]]


def test_a_sip_call_id_links_legs_of_one_account_only(events_of):
    # S3's two SIP calls FreeSWITCH placed to itself link only through their
    # Call-ID.  The same Call-IDs in another account, a second later, must
    # join nothing there; each account's own two ends still link.
    ours = same_call_ids_elsewhere(events_of("S3_json"), "", "acct-a")
    theirs = same_call_ids_elsewhere(events_of("S3_json"), "b:", "acct-b", shift_s=1)
    records, _ = run_capture(ours + theirs)
    assert len(records) == 2 * ROW_COUNT["S3_json"]
    for tag in ("", "b:"):
        assert all(len(ids) == 1 for ids in interaction_groups(records, "S3_json", tag))
    by_account = {}
    for record in records.values():
        by_account.setdefault(record["account_id"], set()).add(record["interaction_id"])
    assert set(by_account) == {"acct-a", "acct-b"}
    assert not by_account["acct-a"] & by_account["acct-b"]


def test_a_sip_call_id_reused_later_in_the_same_account_joins_nothing(events_of):
    # An hour later (SIP_LINK_WINDOW_US is 30 s): a UA that reuses Call-IDs.
    first = events_of("S3_json")
    later = same_call_ids_elsewhere(first, "later:", None, shift_s=3600)
    records, _ = run_capture(first + later)
    assert all(len(ids) == 1 for ids in interaction_groups(records, "S3_json"))
    assert all(len(ids) == 1 for ids in interaction_groups(records, "S3_json", "later:"))
    earlier_ids = set().union(*interaction_groups(records, "S3_json"))
    later_ids = set().union(*interaction_groups(records, "S3_json", "later:"))
    assert not earlier_ids & later_ids


def test_restart_keeps_sip_links_within_account_and_window(events_of, tmp_path):
    # A daemon restarted between the two ends of each self-call: the links it
    # stored give the late end its call's id; after the restart, another
    # account's legs with the same Call-IDs, and the same account's an hour
    # later, still join nothing.
    from eslcdr.store import db as store

    events = same_call_ids_elsewhere(events_of("S3_json"), "", "acct-a")
    ends = [e for call in INTERACTIONS["S3_json"] for e in call]
    first_hangup = next(i for i, e in enumerate(events)
                        if e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE" and e["Unique-ID"] in ends[4:])
    before, _ = run_capture(events[: first_hangup + 1])
    conn = store.connect_writer(tmp_path / "cdrs.db")
    store.insert_records(conn, before.values())
    fresh = LegTracker()
    fresh.remember_interactions(store.recent_interaction_links(conn, 25_000))
    fresh.remember_interaction_starts(store.recent_interaction_starts(conn, 25_000))
    theirs = same_call_ids_elsewhere(events_of("S3_json"), "b:", "acct-b", shift_s=1)
    later = same_call_ids_elsewhere(events_of("S3_json"), "later:", "acct-a", shift_s=3600)
    after, _ = run_capture(events[first_hangup + 1:] + theirs + later, tracker=fresh)
    records = {**before, **after}
    groups = {tag: interaction_groups(records, "S3_json", tag) for tag in ("", "b:", "later:")}
    assert all(len(ids) == 1 for calls in groups.values() for ids in calls)
    ours, other, again = (set().union(*calls) for calls in groups.values())
    assert not ours & other and not ours & again


# ------------------------------------------------- derived ids, unique across a fleet

SECOND_US = 1_795_727_746_000_000  # a whole second, Unix µs


def _uuid7(ms: int, rand_a: int, rand_b: int) -> str:
    """A version 7 UUID: 48 bits of Unix ms first, so UUIDs minted within
    ~65 s share their first 8 hex digits."""
    import uuid

    return str(uuid.UUID(int=(ms << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b))


_TIME_ORDERED = st.builds(_uuid7, st.integers(SECOND_US // 1000, SECOND_US // 1000 + 999),
                          st.integers(0, 2**12 - 1), st.integers(0, 2**62 - 1))
# origination_uuids a client chose, e.g. from a counter under a fixed prefix
_CLIENT_CHOSEN = st.builds("0badcafe-0000-4000-8000-{:012x}".format, st.integers(0, 2**48 - 1))


@settings(max_examples=200, deadline=None)
@given(call_ids=st.lists(st.one_of(_TIME_ORDERED, _CLIENT_CHOSEN), min_size=2, max_size=60, unique=True),
       nodes=st.integers(1, 3), offsets=st.randoms(use_true_random=False))
def test_calls_started_in_one_second_never_share_a_derived_id(call_ids, nodes, offsets):
    # Each call's A-leg (and a B-leg naming it) on one of ``nodes`` media
    # servers, every call created within the same second: no two calls may
    # share an id, on one node or across the fleet.  The id keeps Kazoo's
    # shape, the second in front.
    import re

    from eslcdr.ingest.interactions import gregorian_seconds

    trackers = [LegTracker() for _ in range(nodes)]
    ids: dict[str, set[str]] = {}
    for n, a_leg in enumerate(call_ids):
        tracker, created = trackers[n % nodes], SECOND_US + offsets.randrange(1_000_000)
        b_leg = "b-leg-%d" % n
        tracker.feed(_event("CHANNEL_CREATE", a_leg, created), n)
        tracker.feed(_event("CHANNEL_CREATE", b_leg, created + 1, **{"Other-Leg-Unique-ID": a_leg}), n)
        for leg in (b_leg, a_leg):
            finished = tracker.feed(_event("CHANNEL_HANGUP_COMPLETE", leg, created), n)
            ids.setdefault(a_leg, set()).add(finished.interaction_id)
    assert all(len(found) == 1 for found in ids.values())
    derived = [found.pop() for found in ids.values()]
    assert len(set(derived)) == len(call_ids)
    assert all(re.fullmatch(r"%d-[0-9a-f]{16}" % gregorian_seconds(SECOND_US), i) for i in derived)


def test_an_old_format_id_in_the_stored_links_stays_and_a_new_call_keeps_apart():
    # Ids written before the derivation changed (`<seconds>-<first 8 hex
    # digits of the A-leg>`) are read back from interaction_links after a
    # restart: the old call's late legs keep that id; a new call of the same
    # second whose UUID shares those 8 digits gets an id of its own.
    from eslcdr.ingest.interactions import gregorian_seconds

    old_a = _uuid7(SECOND_US // 1000, 1, 1)
    old_id = "%d-%s" % (gregorian_seconds(SECOND_US), old_a[:8])
    tracker = LegTracker()
    tracker.remember_interactions([(old_a, old_id)])
    late = tracker.feed(_event("CHANNEL_HANGUP_COMPLETE", "late-b-leg", SECOND_US + 1,
                               **{"Other-Leg-Unique-ID": old_a}), 1)
    assert late.interaction_id == old_id
    new_a = _uuid7(SECOND_US // 1000 + 500, 2, 2)
    assert new_a[:8] == old_a[:8]
    new = tracker.feed(_event("CHANNEL_HANGUP_COMPLETE", new_a, SECOND_US + 500_000), 2)
    assert new.interaction_id != old_id
    assert new.interaction_id.startswith("%d-" % gregorian_seconds(SECOND_US))
    assert tracker.merges == []


def two_nodes(events, header: str | None):
    """S4's call as if its SIP hop went from one node to another: the
    receiving sofia/external leg on node 2, the rest on node 1.  S4's bridge
    set ``sip_h_X-Tenant`` in its dial string and the receiving leg shows it
    as ``variable_sip_h_X-Tenant``; ``header`` renames that header."""
    out = []
    for event in events:
        if header is not None and "variable_sip_h_X-Tenant" in event:
            event = {(header if name == "variable_sip_h_X-Tenant" else name): (
                "call-7f3a" if name == "variable_sip_h_X-Tenant" else value) for name, value in event.items()}
        out.append(event)
    node2 = {e["Unique-ID"] for e in out if e.get("Channel-Name", "").startswith("sofia/external/")}
    return [e for e in out if e["Unique-ID"] not in node2], [e for e in out if e["Unique-ID"] in node2]


def test_two_nodes_give_a_bridged_call_one_id_through_the_propagated_header(events_of):
    # Default config on both nodes: the header the calling node set on its
    # bridge (sip_h_X-Call-Interaction-ID) names the call on both.
    assert "sip_h_X-Call-Interaction-ID" in CFG.cdr.interaction_id_vars
    node1, node2 = two_nodes(events_of("S4_json"), "variable_sip_h_X-Call-Interaction-ID")
    first, _ = run_capture(node1)
    second, _ = run_capture(node2)
    assert len(first) == 3 and len(second) == 1
    assert {r["interaction_id"] for r in [*first.values(), *second.values()]} == {"call-7f3a"}
    # Without it each node derives its own id for the same call.
    node1, node2 = two_nodes(events_of("S4_json"), None)
    first, _ = run_capture(node1)
    second, _ = run_capture(node2)
    assert len({r["interaction_id"] for r in first.values()}) == 1
    assert {r["interaction_id"] for r in first.values()}.isdisjoint(r["interaction_id"] for r in second.values())


def test_a_lost_legs_record_keeps_the_sip_call_id_its_events_showed():
    tracker = LegTracker()
    tracker.feed(_event("CHANNEL_CREATE", "sip-leg", 1_000_000, variable_sip_call_id="a84b4c76e66710@pc33"), 1)
    tracker.feed(_event("CHANNEL_CREATE", "loop-leg", 1_000_000), 2)
    tracker.resync(set(), 3, grace_us=0)
    lost = {leg.call_id: build_lost_cdr(leg, "fs1", 4) for leg in tracker.take_lost(4)}
    assert {call_id: r["sip_call_id"] for call_id, r in lost.items()} == {
        "sip-leg": "a84b4c76e66710@pc33", "loop-leg": None}


def test_a_lost_legs_record_keeps_its_account_and_what_its_events_showed(events_of):
    # The S1 call's legs, created and answered, then FreeSWITCH restarted:
    # each written-off row keeps its account (an account token must see it),
    # owner, channel, direction and answer; billing stays 0 (the end is
    # unknown).  They were NULL: the rows belonged to no account.
    kazoo = {"variable_ecallmgr_Account-ID": "acct-s1", "variable_ecallmgr_Owner-ID": "owner-s1"}
    every = [{**e, **kazoo} for e in events_of("S1_json")]  # as Kazoo sets them on each channel
    events = [e for e in every if e["Event-Name"] != "CHANNEL_HANGUP_COMPLETE"]
    hangups = {e["Unique-ID"]: e for e in every if e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE"}
    tracker = LegTracker()
    for event in events:
        tracker.feed(event, 1)
    tracker.resync(set(), 2, grace_us=0)
    lost = {leg.call_id: build_lost_cdr(leg, "fs1", 3_000_000) for leg in tracker.take_lost(3)}
    assert set(lost) == set(hangups)
    complete = {call_id: build_cdr(LegTracker().feed(event, 1), CFG.cdr, "fs1") for call_id, event in hangups.items()}
    for call_id, record in lost.items():
        full = complete[call_id]
        # (caller and callee: as the channel last showed them, the CDR's
        # from the hangup's effective ids: not compared)
        for field in ("account_id", "owner_id", "authorizing_id", "channel_name", "call_direction", "presence_id"):
            assert record[field] == full[field], (call_id, field)
        assert record["answered_us"] == full["answered_us"] > 0
        assert record["billing_seconds"] == 0 and record["disposition"] == "eslcdr_hangup_not_seen"
    assert {(r["account_id"], r["owner_id"]) for r in lost.values()} == {("acct-s1", "owner-s1")}


def _month_of(unix_us: int) -> str:
    from datetime import datetime, timezone

    when = datetime.fromtimestamp(unix_us / 1_000_000, tz=timezone.utc)
    return "%04d%02d" % (when.year, when.month)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(1970, 2100), st.integers(1, 12), st.integers(-3_000_000, 3_000_000)),
                min_size=1, max_size=20))
def test_cdr_id_month_at_every_month_edge_in_any_order(points):
    # cdr_id remembers the month of the last id: a hangup a µs either side
    # of a month's edge, after one of any other month, still gets its own.
    from datetime import datetime, timezone

    for year, month, offset in points:
        unix_us = int(datetime(year, month, 1, tzinfo=timezone.utc).timestamp()) * 1_000_000 + offset
        assert cdr_id("leg", unix_us) == "%s-leg" % _month_of(unix_us)
