"""A caller's Call-ID as the leg's Unique-ID (Kazoo's sofia profiles set
``inbound-use-callid-as-uuid``): FreeSWITCH lets a new channel take the id
once the old one is gone, so a caller can send the Call-ID of a finished call
again -- their own earlier call, or a leg they learned the id of.  That is a
new leg: it gets its own CDR, it does not vanish as a "duplicate" of the old.
"""

from __future__ import annotations

from eslcdr.ingest.cdr import CdrBuilder, should_record
from eslcdr.ingest.legs import LegTracker

from tests.expected_cdrs import ROW_COUNT
from tests.unit.ingest.test_cdr import CFG, same_call_ids_elsewhere


def finished_records(events) -> list[dict]:
    tracker = LegTracker(CFG.cdr.interaction_id_vars)
    builder = CdrBuilder(CFG.cdr, "fs1")
    records = []
    for n, event in enumerate(events):
        finished = tracker.feed(event, 1_000_000 * n)
        if finished is not None and should_record(finished.hangup):
            records.append(builder.build(finished))
    return records


def reusing(events, shift_s: int) -> tuple[list[dict], str]:
    """The capture's call again ``shift_s`` later, its first leg under the
    same Unique-ID (the caller's Call-ID), the legs FreeSWITCH made for it
    under new ones."""
    import uuid

    first = next(e["Unique-ID"] for e in events if e["Event-Name"] == "CHANNEL_CREATE")
    renamed = str(uuid.uuid5(uuid.NAMESPACE_OID, "again:" + first))
    again = same_call_ids_elsewhere(events, "again:", None, shift_s=shift_s)
    return [{k: v.replace(renamed, first) for k, v in e.items()} for e in again], first


def test_a_new_channel_under_a_finished_legs_id_is_a_new_leg(events_of):
    first = events_of("S1_json")
    again, reused = reusing(first, 120)
    records = finished_records(first + again)
    assert len(records) == 2 * ROW_COUNT["S1_json"]
    twice = [r for r in records if r["call_id"] == reused]
    assert [r["created_us"] - twice[0]["created_us"] for r in twice] == [0, 120_000_000]
    # The second call is not joined to the first one's interaction.
    n = ROW_COUNT["S1_json"]
    assert len({r["interaction_id"] for r in records[:n]}) == len({r["interaction_id"] for r in records[n:]}) == 1
    assert records[0]["interaction_id"] != records[n]["interaction_id"]


def test_late_events_of_a_finished_leg_stay_ignored(events_of):
    # CHANNEL_DESTROY and any other event after the hangup start nothing.
    events = events_of("S1_json")
    late = [dict(e, **{"Event-Name": "CHANNEL_DESTROY"}) for e in events if e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE"]
    hangups = [dict(e) for e in events if e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE"]
    assert len(finished_records(events + late + hangups)) == ROW_COUNT["S1_json"]
