"""Interaction lists mixing Kazoo-shaped ids (``<11 digits>-<hex>``, listed by
the time in the id) and other ids (UUIDs from ``interaction_id_vars``,
listed by their earliest leg's creation): one order, one range, keyset pages
that never skip or repeat, also while CDRs arrive -- also when a call's
earliest leg (its A-leg) is written after its partners."""

from __future__ import annotations

import pytest
import base64
import json
import tempfile
import uuid
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eslcdr import config
from eslcdr.ingest.cdr import CdrBuilder
from eslcdr.ingest.legs import GREGORIAN_OFFSET, LegTracker

from tests.unit.api.test_api import ACC_A, NOW_G, Env, leg


def start_of(iid: str, legs: list[dict]) -> int:
    head, _, tail = iid.partition("-")
    if len(head) == 11 and head.isdigit() and tail and all(c in "0123456789abcdefABCDEF" for c in tail[:1]):
        return int(head)
    return min(r["created_us"] for r in legs) // 10**6 + 62167219200


def page_through(env: Env, url: str, arrive=lambda page: None) -> list[dict]:
    rows, next_url = [], url
    for page in range(500):
        body = env.get(next_url).json
        rows += body["data"]
        arrive(page)
        if "next_start_key" not in body:
            return rows
        next_url = url + "&start_key=" + body["next_start_key"]
    raise AssertionError("paging did not end")


def test_uuid_and_kazoo_ids_share_one_order_and_range(env_path=None):
    with tempfile.TemporaryDirectory() as tmp:
        env = Env(Path(tmp))
        try:
            u_old = str(uuid.uuid4())
            k_mid = "%d-0badcafe" % (NOW_G - 600)
            u_new = str(uuid.uuid4())
            records = [
                # A UUID interaction whose first leg started 900 s ago; its
                # later leg (started 400 s ago) does not make it newer.
                leg(NOW_G - 100, interaction=u_old, created_g=NOW_G - 900),
                leg(NOW_G - 90, interaction=u_old, created_g=NOW_G - 400, call_direction="outbound"),
                leg(NOW_G - 50, interaction=k_mid, created_g=NOW_G - 600),
                leg(NOW_G - 10, interaction=u_new, created_g=NOW_G - 200),
                # An interaction id that only looks Kazoo-ish is listed by its leg.
                leg(NOW_G - 5, interaction="1234567890-abc", created_g=NOW_G - 300),
            ]
            env.insert(records)
            url = "/v2/accounts/%s/cdrs/interaction?page_size=1" % ACC_A
            rows = page_through(env, url)
            assert [r["interaction_id"] for r in rows] == [u_new, "1234567890-abc", k_mid, u_old]
            assert rows[-1]["call_id"] == records[0]["call_id"]  # the earliest leg is the row
            asc = page_through(env, url + "&ascending=true")
            assert [r["interaction_id"] for r in asc] == [u_old, k_mid, "1234567890-abc", u_new]
            # The range is on the start: u_old started before it even though a leg is inside.
            ranged = env.get("/v2/accounts/%s/cdrs/interaction?created_from=%d&created_to=%d"
                             % (ACC_A, NOW_G - 650, NOW_G - 250)).json["data"]
            assert [r["interaction_id"] for r in ranged] == ["1234567890-abc", k_mid]
            # The user's listing: its own legs only, same rule.
            user = env.get("/v2/accounts/%s/users/user-1/cdrs/interaction" % ACC_A).json["data"]
            assert [r["interaction_id"] for r in user] == [u_new, "1234567890-abc", k_mid, u_old]
            # Legs by a UUID interaction id.
            legs = env.get("/v2/accounts/%s/cdrs/legs/%s" % (ACC_A, u_old)).json["data"]
            assert [r["call_id"] for r in legs] == [records[0]["call_id"], records[1]["call_id"]]
        finally:
            env.close()


# Few distinct times, so pages often split runs of equal starts.
OFFSETS = st.integers(min_value=0, max_value=8).map(lambda i: 2000 + 45 * i)


@st.composite
def interaction(draw):
    kind = draw(st.sampled_from(["kazoo", "uuid"]))
    start = NOW_G - draw(OFFSETS)
    iid = ("%d-%08x" % (start, draw(st.integers(0, 3)))) if kind == "kazoo" else str(
        uuid.UUID(int=draw(st.integers(0, 2**128 - 1)), version=4))
    return iid, start


def legs_of(iid: str, start: int, count: int, after: int = 0) -> list[dict]:
    """``count`` legs of an interaction, created at or after its start (+ after)."""
    return [leg(start + after + 30 + i, interaction=iid, created_g=start + after + i,
                call_direction="inbound" if i == 0 else "outbound") for i in range(count)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    initial=st.lists(st.tuples(interaction(), st.integers(1, 3)), max_size=14),
    arrivals=st.lists(st.lists(st.one_of(
        st.tuples(st.just("new"), interaction(), st.integers(1, 2)),
        st.tuples(st.just("more"), st.integers(0, 50), st.integers(1, 2))), max_size=3), max_size=8),
    page_size=st.integers(1, 5),
    ascending=st.booleans(),
)
@pytest.mark.slow
def test_mixed_ids_page_without_skip_or_repeat_while_cdrs_arrive(initial, arrivals, page_size, ascending):
    with tempfile.TemporaryDirectory() as tmp:
        env = Env(Path(tmp))
        try:
            known: dict[str, list[dict]] = {}
            for (iid, start), count in initial:
                known.setdefault(iid, []).extend(env.insert(legs_of(iid, start, count)))
            before = set(known)

            def arrive(page: int) -> None:
                if page >= len(arrivals):
                    return
                for what, a, b in arrivals[page]:
                    if what == "new":
                        (iid, start), count = a, b
                    else:  # a later leg of an interaction already there
                        if not known:
                            continue
                        iid = sorted(known)[a % len(known)]
                        start, count = min(r["created_us"] for r in known[iid]) // 10**6 + 62167219200, b
                        known[iid].extend(env.insert(legs_of(iid, start, count, after=1 + len(known[iid]))))
                        continue
                    known.setdefault(iid, []).extend(env.insert(legs_of(iid, start, count)))

            url = "/v2/accounts/%s/cdrs/interaction?page_size=%d&ascending=%s" % (
                ACC_A, page_size, str(ascending).lower())
            rows = page_through(env, url, arrive)
            seen = [r["interaction_id"] for r in rows]
            assert len(seen) == len(set(seen)), "an interaction was repeated"
            assert before <= set(seen), "an interaction that existed before paging was skipped"
            assert set(seen) <= set(known)
            keys = [(start_of(iid, known[iid]), iid) for iid in seen]
            assert keys == sorted(keys, reverse=not ascending)
            for row in rows:  # each row is its interaction's earliest leg
                first = min(known[row["interaction_id"]], key=lambda r: r["created_us"])
                assert row["call_id"] == first["call_id"]
        finally:
            env.close()


# -- A-legs written after their B-legs, through the real tracker and builder

TRACKED = config.from_mapping({"cdr": {"node_name": "fs1", "interaction_id_vars": "my_interaction"}})


def call_events(iid: str, a_created_us: int, b_delay_us: int, b_first: bool = True) -> list[dict]:
    """One two-leg call with a UUID interaction id on the A-leg (as from
    ``interaction_id_vars``): CREATE A, CREATE B, then the hangups, the
    B-leg's (created later) first."""
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    b_created = a_created_us + b_delay_us
    common = {"variable_ecallmgr_Account-ID": ACC_A, "variable_ecallmgr_Owner-ID": "user-1"}
    a_vars = dict(common, **{"variable_my_interaction": iid, "Call-Direction": "inbound"})
    b_vars = dict(common, **{"Other-Leg-Unique-ID": a, "Call-Direction": "outbound"})

    def event(name: str, call_id: str, created: int, hangup: int, extra: dict) -> dict:
        ev = {"Event-Name": name, "Unique-ID": call_id, "Caller-Channel-Created-Time": str(created),
              "Channel-Name": "sofia/internal/%s" % call_id[:8], **extra}
        if name == "CHANNEL_HANGUP_COMPLETE":
            ev.update({"Caller-Channel-Hangup-Time": str(hangup), "Event-Date-Timestamp": str(hangup),
                       "Hangup-Cause": "NORMAL_CLEARING"})
        return ev

    b_hangup = b_created + 30_000_000
    a_hangup = b_hangup + 5_000_000
    hangups = [event("CHANNEL_HANGUP_COMPLETE", b, b_created, b_hangup, b_vars),
               event("CHANNEL_HANGUP_COMPLETE", a, a_created_us, a_hangup, a_vars)]
    if not b_first:
        hangups.reverse()
    return [event("CHANNEL_CREATE", a, a_created_us, 0, a_vars),
            event("CHANNEL_CREATE", b, b_created, 0, b_vars)] + hangups


def cursor_position(start_key: str) -> tuple[int, str]:
    payload = json.loads(base64.urlsafe_b64decode(start_key + "=" * (-len(start_key) % 4)))
    return payload[2], payload[3]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    # (A-leg created, seconds before NOW; B-leg created that many seconds later)
    calls=st.lists(st.tuples(st.integers(3000, 3010), st.integers(1, 12)), min_size=1, max_size=8),
    a_pages=st.data(),
    ascending=st.booleans(),
)
@pytest.mark.slow
def test_a_leg_written_after_its_b_leg_does_not_move_the_interaction(calls, a_pages, ascending):
    tracker = LegTracker(TRACKED.cdr.interaction_id_vars)
    builder = CdrBuilder(TRACKED.cdr, "fs1")
    b_records, a_records, a_created = [], {}, {}
    clock = 0
    for offset, b_delay in calls:
        iid = str(uuid.uuid4())
        a_created[iid] = (NOW_G - GREGORIAN_OFFSET - offset) * 10**6
        b_leg_done, a_leg_done = [], []
        for ev in call_events(iid, a_created[iid], b_delay * 10**6):
            clock += 1
            finished = tracker.feed(ev, clock)
            if finished is not None:
                (b_leg_done if not b_leg_done else a_leg_done).append(builder.build(finished))
        b_records += b_leg_done
        a_records[iid] = a_leg_done[0]
    # The A-legs (created earlier) are written while the list is paged,
    # each before the listing reads page n (drawn).
    when = {iid: a_pages.draw(st.integers(0, len(calls) + 1), label="A-leg of %s written before page" % iid)
            for iid in a_records}
    with tempfile.TemporaryDirectory() as tmp:
        env = Env(Path(tmp))
        try:
            env.insert(b_records)
            with env.writer:  # every written B-leg already carries its A-leg's creation
                stored = dict(env.writer.execute("SELECT interaction_id, interaction_created_us FROM cdrs"))
            assert stored == a_created

            def arrive(page: int) -> None:
                env.insert([a_records[iid] for iid in a_records if when[iid] == page + 1])

            env.insert([a_records[iid] for iid in a_records if when[iid] == 0])
            url = "/v2/accounts/%s/cdrs/interaction?page_size=1&ascending=%s" % (ACC_A, str(ascending).lower())
            rows, positions, next_url = [], [], url
            for page in range(50):
                body = env.get(next_url).json
                rows += body["data"]
                arrive(page)
                if "next_start_key" not in body:
                    break
                positions.append(cursor_position(body["next_start_key"]))
                next_url = url + "&start_key=" + body["next_start_key"]
            seen = [r["interaction_id"] for r in rows]
            assert sorted(seen) == sorted(a_created), "an interaction was skipped or repeated"
            # Each cursor holds the next interaction's position: its A-leg's
            # creation, whether or not that leg was written yet.
            a_start = {iid: us // 10**6 + GREGORIAN_OFFSET for iid, us in a_created.items()}
            assert positions == [(a_start[iid], iid) for iid in seen[1:]]
            keys = [(a_start[iid], iid) for iid in seen]
            assert keys == sorted(keys, reverse=not ascending)
        finally:
            env.close()
