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


def test_after_a_restart_a_reused_id_neither_joins_nor_renames_the_written_call(events_of, tmp_path):
    # The daemon restarted after the victim's call (account Y) was written; a
    # caller in account X sends the id of its first leg as Call-ID, and an
    # interaction id of their own in the INVITE.  Before, the new leg found
    # the preloaded id of the victim's call: it joined it, and the merge that
    # its header forced rewrote every row of the victim's call to the caller's
    # id (store.insert_records applies merges to any account's rows).
    from eslcdr.store import db as store

    victim = same_call_ids_elsewhere(events_of("S1_json"), "v:", "acct-y")
    written = finished_records(victim)
    conn = store.connect_writer(tmp_path / "cdrs.db")
    store.insert_records(conn, written)
    fresh = LegTracker(CFG.cdr.interaction_id_vars)
    fresh.remember_interactions(store.recent_interaction_links(conn, 25_000))
    fresh.remember_interaction_starts(store.recent_interaction_starts(conn, 25_000))
    again, reused = reusing(victim, 120)
    chosen = "caller-chosen-interaction"
    attack = [dict(e, **{"variable_ecallmgr_Account-ID": "acct-x",
                         "variable_sip_h_X-Call-Interaction-ID": chosen}) for e in again]
    builder = CdrBuilder(CFG.cdr, "fs1")
    theirs = []
    for n, event in enumerate(attack):
        finished = fresh.feed(event, 1_000_000 * n)
        if finished is not None:
            theirs.append(builder.build(finished))
    assert len(theirs) == ROW_COUNT["S1_json"]
    assert {r["interaction_id"] for r in theirs} == {chosen}
    assert fresh.merges == []  # nothing for the writer to rewrite in account Y
    store.insert_records(conn, theirs, fresh.merges)
    victims = conn.execute("SELECT DISTINCT interaction_id FROM cdrs WHERE account_id = 'acct-y'").fetchall()
    assert victims == [(written[0]["interaction_id"],)]


def test_a_create_repeated_after_its_hangup_is_not_a_new_leg(events_of):
    # The same CHANNEL_CREATE again (a stream replayed, a duplicate delivered)
    # carries the finished leg's own creation: it is that leg's, ignored --
    # no live leg appears, and no write-off follows it.
    events = events_of("S1_json")
    tracker = LegTracker(CFG.cdr.interaction_id_vars)
    for n, event in enumerate(events):
        tracker.feed(event, 1_000_000 * n)
    creates = [e for e in events if e["Event-Name"] == "CHANNEL_CREATE"]
    for event in creates:
        assert tracker.feed(dict(event), 10**9) is None
    assert tracker.live_legs() == []
    # One of another creation under the same id is a new channel (the caller's Call-ID again).
    again = dict(creates[0], **{"Caller-Channel-Created-Time": str(int(creates[0]["Caller-Channel-Created-Time"]) + 60_000_000)})
    tracker.feed(again, 10**9)
    assert [leg.call_id for leg in tracker.live_legs()] == [creates[0]["Unique-ID"]]
