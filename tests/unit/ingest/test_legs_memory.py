"""What the leg tracker remembers of finished calls stays bounded, and
consistent, however many calls pass; a long call keeps its interaction id
while it lasts."""

from __future__ import annotations

import pytest
from eslcdr import config
from eslcdr.fakefs import GeneratedSource
from eslcdr.ingest.interactions import MAX_KEYS
from eslcdr.ingest.legs import TRIM_EVERY, LegTracker

CFG = config.from_mapping({"cdr": {"node_name": "fs1"}})


def _event(name: str, call_id: str, created_us: int, **headers: str) -> dict:
    return {"Event-Name": name, "Unique-ID": call_id, "Caller-Channel-Created-Time": str(created_us), **headers}


def _short_call(tracker: LegTracker, n: int, now_us: int) -> None:
    a, b = "%08x-short-a" % n, "%08x-short-b" % n
    tracker.feed(_event("CHANNEL_CREATE", a, now_us), now_us)
    tracker.feed(_event("CHANNEL_CREATE", b, now_us, **{"Other-Leg-Unique-ID": a}), now_us)
    tracker.feed(_event("CHANNEL_HANGUP_COMPLETE", b, now_us, **{"Other-Leg-Unique-ID": a}), now_us)
    tracker.feed(_event("CHANNEL_HANGUP_COMPLETE", a, now_us), now_us)


def test_a_long_call_keeps_its_interaction_while_many_calls_pass():
    tracker = LegTracker(max_interactions=10)
    created = 1_000_000_000
    tracker.feed(_event("CHANNEL_CREATE", "aaaaaaaa-long", created), created)
    tracker.feed(_event("CHANNEL_CREATE", "bbbbbbbb-long", created + 2_000_000,
                        **{"Other-Leg-Unique-ID": "aaaaaaaa-long"}), created + 2_000_000)
    interaction_id = tracker.interaction_of("aaaaaaaa-long")
    now = created + 3_000_000
    for n in range(200):
        _short_call(tracker, n, now + n)
        if n % 20 == 0:
            tracker.trim()  # as each expire does
    tracker.trim()
    # The remembered finished calls were trimmed to the cap...
    assert len(tracker._members) <= 10 + 1
    # ...but not the live call: both its legs still end in one interaction,
    # with the A-leg's creation as its start.
    b = tracker.feed(_event("CHANNEL_HANGUP_COMPLETE", "bbbbbbbb-long", created + 2_000_000,
                            **{"Other-Leg-Unique-ID": "aaaaaaaa-long"}), now + 300)
    a = tracker.feed(_event("CHANNEL_HANGUP_COMPLETE", "aaaaaaaa-long", created), now + 301)
    assert b.interaction_id == a.interaction_id == interaction_id
    assert b.interaction_created_us == a.interaction_created_us == created


def test_the_tracker_trims_its_memory_of_finished_legs_itself():
    # Nobody calls trim or expire: finished legs (hangups, CDR files,
    # write-offs) stay within the cap and one trimming interval.
    tracker = LegTracker(max_remembered=10)
    now = 1_000_000_000
    for n in range(3 * TRIM_EVERY):
        a = "%08x-a" % n
        tracker.feed(_event("CHANNEL_CREATE", a, now), now)
        if n % 3 == 0:
            tracker.feed(_event("CHANNEL_HANGUP_COMPLETE", a, now), now)
        elif n % 3 == 1:
            tracker.note_finished(a, now)
        else:
            tracker.resync(set(), now, grace_us=0)
            assert [leg.call_id for leg in tracker.take_lost(now)] == [a]
    assert len(tracker._finished) <= 10 + TRIM_EVERY
    # ...and still knows the latest finished legs as finished.
    assert tracker.feed(_event("CHANNEL_HANGUP_COMPLETE", "%08x-a" % (3 * TRIM_EVERY - 3), now), now) is None
    assert tracker.duplicates == 1


@pytest.mark.slow
def test_remembered_calls_stay_bounded_and_consistent_as_generated_calls_pass():
    cap = 100
    tracker = LegTracker(
        CFG.cdr.interaction_id_vars,
        max_remembered=cap,
        max_interactions=cap,
        account_id_vars=CFG.cdr.account_id_vars,
        owner_id_vars=CFG.cdr.owner_id_vars,
        authorizing_id_vars=CFG.cdr.authorizing_id_vars,
    )
    finished = 0
    for n, emission in enumerate(GeneratedSource(calls=1500, seed=5)):
        now = n * 1000
        if tracker.feed(emission.event(), now) is not None:
            finished += 1
        if n % 500 == 0:
            tracker.expire(now)
            live = {tracker.interaction_of(call_id) for call_id in tracker.live_call_ids()}
            # Only interactions with a live leg may stay past the cap.
            assert len(tracker._members) <= cap + len(live)
            # Every key names a remembered interaction and every remembered
            # interaction's keys are there: nothing kept for a forgotten one.
            keys = [key for members in tracker._members.values() for key in members]
            assert sorted(keys) == sorted(tracker._interaction)
            assert set(tracker._interaction.values()) <= set(tracker._members)
            for remembered in (tracker._started, tracker._written, tracker._explicit, tracker._finished):
                assert len(remembered) <= max(cap, len(tracker._members))
    assert finished > 4 * cap * 3
    assert len(tracker) == 0  # every generated call ended
    tracker.expire(n * 1000)
    assert len(tracker._members) <= cap
    assert len(tracker._interaction) <= 10 * cap


def test_calls_a_caller_puts_in_one_live_interaction_do_not_grow_memory_without_bound():
    # A caller keeps one call up (any event keeps it fresh) and makes call
    # after call, each with the same interaction id in its INVITE (any id not
    # Kazoo-shaped is taken): every leg joined that one interaction, which
    # has a live leg so is never forgotten -- its keys piled up without end.
    header = {"variable_sip_h_X-Call-Interaction-ID": "caller-chosen"}
    tracker = LegTracker(("sip_h_X-Call-Interaction-ID",), max_remembered=100, max_interactions=100)
    now = 1_000_000_000
    tracker.feed(_event("CHANNEL_CREATE", "aaaaaaaa-long", now, **header), now)
    for n in range(6 * TRIM_EVERY):
        a, b = "%08x-short-a" % n, "%08x-short-b" % n
        tracker.feed(_event("CHANNEL_CREATE", a, now, **header), now)
        tracker.feed(_event("CHANNEL_CREATE", b, now, **{"Other-Leg-Unique-ID": a}), now)
        tracker.feed(_event("CHANNEL_HANGUP_COMPLETE", b, now, **{"Other-Leg-Unique-ID": a}), now)
        assert tracker.feed(_event("CHANNEL_HANGUP_COMPLETE", a, now, **header), now).interaction_id == "caller-chosen"
        tracker.feed(_event("DTMF", "aaaaaaaa-long", now, **{"DTMF-Digit": "1"}), now)
    assert len(tracker._interaction) <= MAX_KEYS + 2 * TRIM_EVERY < 12 * TRIM_EVERY  # each call's 2 legs
    assert sum(map(len, tracker._members.values())) == len(tracker._interaction)
    # The live call still ends in its interaction.
    assert tracker.feed(_event("CHANNEL_HANGUP_COMPLETE", "aaaaaaaa-long", now), now).interaction_id == "caller-chosen"
