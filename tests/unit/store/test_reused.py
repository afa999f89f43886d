"""A leg under a stored leg's Unique-ID (a caller's Call-ID sent again) is
stored under a key of its own; a replay of either stays a duplicate."""

from __future__ import annotations

import sqlite3

from eslcdr.store.db import connect_writer, insert_records

from tests.unit.store.test_store import record


def leg(created_us: int, n: int = 1) -> dict:
    return dict(record(n), created_us=created_us, caller_id_name="leg created at %d" % created_us, account_id="acct")


def stored(path) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT id, call_id, created_us, caller_id_name FROM cdrs ORDER BY seq").fetchall()


def test_a_second_leg_under_a_stored_call_id_is_stored_under_its_own_key(tmp_path):
    conn = connect_writer(tmp_path / "a.db")
    assert insert_records(conn, [leg(1_000)]) == 1
    assert insert_records(conn, [leg(2_000), leg(1_000)]) == 1  # the new leg, and a replay of the first
    # Two in one batch, and the replays of both.
    assert insert_records(conn, [leg(3_000), leg(4_000), leg(2_000)]) == 2
    assert insert_records(conn, [leg(1_000), leg(2_000), leg(3_000), leg(4_000)]) == 0
    assert stored(tmp_path / "a.db") == [
        ("202611-call-000001", "call-000001", 1_000, "leg created at 1000"),
        ("202611-call-000001~2000", "call-000001~2000", 2_000, "leg created at 2000"),
        ("202611-call-000001~3000", "call-000001~3000", 3_000, "leg created at 3000"),
        ("202611-call-000001~4000", "call-000001~4000", 4_000, "leg created at 4000"),
    ]
    # The roll-ups count each leg once.
    assert conn.execute("SELECT sum(legs) FROM stats_minutes").fetchone()[0] == 4


def test_a_caller_who_sent_the_own_key_as_call_id_too_does_not_take_its_place(tmp_path):
    conn = connect_writer(tmp_path / "a.db")
    squatter = dict(leg(9_000, n=2), id="202611-call-000001~2000", call_id="call-000001~2000")
    assert insert_records(conn, [leg(1_000), squatter]) == 2
    assert insert_records(conn, [leg(2_000)]) == 1
    assert insert_records(conn, [leg(2_000)]) == 0
    assert [r[1:3] for r in stored(tmp_path / "a.db")] == [
        ("call-000001", 1_000), ("call-000001~2000", 9_000), ("call-000001~2000~2", 2_000)]
