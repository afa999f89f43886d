"""The SQLite file and the writer: idempotent batches, full disk loses nothing."""

from __future__ import annotations

import contextlib
import sqlite3
import time
import uuid

import gevent
import greenlet as greenlet_module
import pytest

from eslcdr.store import schema
from eslcdr.store.db import WAL_CHECKPOINT_PAGES, connect_reader, connect_writer, insert_records, recent_interaction_links
from eslcdr.store.writer import Writer

from tests.harness import database_before, wait_until


def record(n: int, interaction: str = "63900000000-aaaaaaaa") -> dict:
    call_id = "call-%06d" % n
    return {
        "id": "202611-" + call_id,
        "call_id": call_id,
        "interaction_id": interaction,
        "links": ["peer-%06d" % n],
        "caller_id_name": "Caller, \"%d\" é" % n,
        "timestamp": 63962946913 + n,
        "custom_channel_vars": {"k": n},
        "fax_success": None,
    }


def rows(path) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT seq, call_id, interaction_id FROM cdrs ORDER BY seq").fetchall()


def test_schema_is_migrated_and_versioned(tmp_path):
    conn = connect_writer(tmp_path / "a.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    cols = [r[1] for r in conn.execute("PRAGMA table_info(cdrs)")]
    assert cols == list(schema.COLUMN_NAMES)
    conn.close()
    # Opening again applies nothing and keeps the data.
    assert schema.migrate(connect_writer(tmp_path / "a.db")) == schema.SCHEMA_VERSION


def test_cdrs_indexes_are_the_ones_a_query_uses(tmp_path):
    # Every index is a random b-tree page written per leg (#18): the set is
    # pinned; idx_cdrs_account_interaction went in schema 10, on an old file
    # too (tests/unit/query/test_queries.py pins the plans that used it).
    expected = {"sqlite_autoindex_cdrs_1", "sqlite_autoindex_cdrs_2", "idx_cdrs_account_ts", "idx_cdrs_owner_ts",
                "idx_cdrs_ts", "idx_cdrs_interaction", "idx_cdrs_stats", "idx_cdrs_account_istart",
                "idx_cdrs_owner_istart"}
    old = database_before(tmp_path / "old.db", schema.drop_account_interaction_index)
    assert "idx_cdrs_account_interaction" in {r[1] for r in old.execute("PRAGMA index_list(cdrs)")}
    old.close()
    for path in (tmp_path / "new.db", tmp_path / "old.db"):
        conn = connect_writer(path)
        assert {r[1] for r in conn.execute("PRAGMA index_list(cdrs)")} == expected
        conn.close()


def test_newer_schema_refused(tmp_path):
    conn = connect_writer(tmp_path / "a.db")
    conn.execute("PRAGMA user_version = 99")
    with pytest.raises(schema.SchemaTooNew, match="version 99 is newer than this eslcdr") as refused:
        schema.migrate(conn)
    assert (refused.value.found, refused.value.supported) == (99, schema.SCHEMA_VERSION)


def test_insert_is_idempotent_on_call_id(tmp_path):
    conn = connect_writer(tmp_path / "a.db")
    assert insert_records(conn, [record(1), record(2)]) == 2
    assert insert_records(conn, [record(2), record(3)]) == 1
    assert [r[1] for r in rows(tmp_path / "a.db")] == ["call-000001", "call-000002", "call-000003"]
    seqs = [r[0] for r in rows(tmp_path / "a.db")]
    assert seqs == sorted(set(seqs))  # strictly increasing (an ignored duplicate may skip one)


def test_json_columns_and_links_written(tmp_path):
    conn = connect_writer(tmp_path / "a.db")
    insert_records(conn, [record(7)])
    got = conn.execute("SELECT custom_channel_vars, caller_id_name FROM cdrs").fetchone()
    assert got == ('{"k": 7}', 'Caller, "7" é')
    assert dict(recent_interaction_links(conn, 10)) == {
        "call-000007": "63900000000-aaaaaaaa",
        "peer-000007": "63900000000-aaaaaaaa",
    }


def test_links_only_for_legs_not_stored_with_the_interaction(tmp_path):
    """A partner stored with the same interaction (in this batch or before)
    gets no link row; one not written yet, written with another id, or a SIP
    key does; a restarted daemon recalls every pair all the same."""
    conn = connect_writer(tmp_path / "a.db")
    a = dict(record(1), links=["call-000002", "call-000003", "sip:acc c1"])
    b = dict(record(2), links=["call-000001"])
    other = dict(record(4, "63900000000-bbbbbbbb"), links=[])
    insert_records(conn, [other])
    insert_records(conn, [a, b])
    c = dict(record(3), links=["call-000001", "call-000004"])
    insert_records(conn, [c])
    links = set(conn.execute("SELECT call_id, interaction_id FROM interaction_links").fetchall())
    assert links == {
        ("call-000003", "63900000000-aaaaaaaa"),  # not written when call-000001 was
        ("sip:acc c1", "63900000000-aaaaaaaa"),
        ("call-000004", "63900000000-aaaaaaaa"),  # stored with another interaction
    }
    recalled = dict(recent_interaction_links(conn, 10))
    assert {k: recalled[k] for k in ("call-000001", "call-000002", "call-000003", "sip:acc c1")} == dict.fromkeys(
        ("call-000001", "call-000002", "call-000003", "sip:acc c1"), "63900000000-aaaaaaaa")


def test_record_row_json_text_is_json_dumps(tmp_path):
    import json

    from eslcdr.store.db import JSON_COLUMNS, RECORD_COLUMNS, record_row

    for value in ({"b": 'é\n"x', "a": "1"}, {"a": 1}, {"z": {"y": [1, 2]}}, {}, [], ["x"], {"a": None}):
        row = record_row(dict(record(1), custom_channel_vars=value, custom_sip_headers=value))
        for name in JSON_COLUMNS:
            assert row[RECORD_COLUMNS.index(name)] == json.dumps(value, ensure_ascii=False, sort_keys=True)
    partial = record_row({"call_id": "x", "custom_sip_headers": {}})  # columns missing: NULL
    assert partial[RECORD_COLUMNS.index("call_id")] == "x" and partial[RECORD_COLUMNS.index("codec")] is None


def test_none_is_bound_without_the_adapter_protocol(tmp_path):
    """The writer registers None's adapter (sqlite3 otherwise looks None up
    in its registry and fails on the protocol type, ~1 µs a value): NULL is
    stored all the same."""
    conn = connect_writer(tmp_path / "a.db")
    assert sqlite3.adapters.get((type(None), sqlite3.PrepareProtocol)) is not None
    insert_records(conn, [dict(record(1), caller_id_name=None, codec=None)])
    assert conn.execute("SELECT typeof(caller_id_name), typeof(codec), typeof(call_id) FROM cdrs").fetchone() == (
        "null", "null", "text")


def test_merge_rewrites_interaction(tmp_path):
    conn = connect_writer(tmp_path / "a.db")
    insert_records(conn, [record(1, "old"), record(2, "keep")])
    insert_records(conn, [], merges=[("old", "keep")])
    assert {r[2] for r in rows(tmp_path / "a.db")} == {"keep"}


def test_merge_gives_both_groups_the_earlier_interaction_start(tmp_path):
    conn = connect_writer(tmp_path / "a.db")
    late = [dict(record(1, "winner"), created_us=9_000_000, interaction_created_us=8_000_000),
            dict(record(2, "winner"), created_us=8_000_000, interaction_created_us=8_000_000)]
    early = [dict(record(3, "loser"), created_us=5_000_000, interaction_created_us=5_000_000),
             dict(record(4, "other"), created_us=1_000_000, interaction_created_us=1_000_000)]
    insert_records(conn, late + early)
    seq_before = dict(conn.execute("SELECT call_id, seq FROM cdrs"))
    insert_records(conn, [], merges=[("loser", "winner")])
    got = dict(conn.execute("SELECT call_id, interaction_created_us FROM cdrs WHERE interaction_id = 'winner'"))
    assert got == {"call-000001": 5_000_000, "call-000002": 5_000_000, "call-000003": 5_000_000}
    # The rows that changed take new seqs (the feed delivers them again); others keep theirs.
    seq_after = dict(conn.execute("SELECT call_id, seq FROM cdrs"))
    assert all(seq_after[c] > max(seq_before.values()) for c in got)
    assert seq_after["call-000004"] == seq_before["call-000004"]
    assert conn.execute("SELECT interaction_created_us FROM cdrs WHERE call_id = 'call-000004'").fetchone() == (
        1_000_000,)


def test_an_upgrade_of_an_older_file_is_logged_a_new_or_current_file_is_not(tmp_path):
    # The first start after an upgrade may migrate a big file for minutes before the
    # daemon is ready: the log says so, from and to which version (before: nothing
    # between tokens_loaded and daemon_started).
    from structlog.testing import capture_logs

    old = database_before(tmp_path / "old.db", schema.add_interaction_created)
    old.close()
    with capture_logs() as logs:
        connect_writer(tmp_path / "old.db").close()
        connect_writer(tmp_path / "old.db").close()  # current now
        connect_writer(tmp_path / "new.db").close()
    lines = [(e["event"], e["db"], e["found_version"], e["version"]) for e in logs if e["event"].startswith("schema_")]
    found = schema.MIGRATIONS.index(schema.add_interaction_created)
    assert lines == [("schema_migration_begin", str(tmp_path / "old.db"), found, schema.SCHEMA_VERSION),
                     ("schema_migration_done", str(tmp_path / "old.db"), found, schema.SCHEMA_VERSION)]
    assert [e["seconds"] >= 0 for e in logs if e["event"] == "schema_migration_done"] == [True]


def test_migration_fills_interaction_start_of_old_rows(tmp_path):
    path = tmp_path / "old.db"
    old = database_before(path, schema.add_interaction_created)
    for n, (iid, created) in enumerate([("u-1", 7_000_000), ("u-1", 3_000_000), ("u-2", 4_000_000),
                                        (None, 2_000_000), ("u-3", None)]):
        old.execute("INSERT INTO cdrs (id, call_id, interaction_id, created_us) VALUES (?, ?, ?, ?)",
                    ("202601-%d" % n, "c%d" % n, iid, created))
    seqs = old.execute("SELECT call_id, seq FROM cdrs").fetchall()
    old.close()
    conn = connect_writer(path)
    got = conn.execute("SELECT call_id, interaction_created_us FROM cdrs ORDER BY call_id").fetchall()
    assert got == [("c0", 3_000_000), ("c1", 3_000_000), ("c2", 4_000_000), ("c3", None), ("c4", None)]
    assert conn.execute("SELECT call_id, seq FROM cdrs").fetchall() == seqs
    # The listing's indexes are rebuilt on the new expression, and used.
    plan = " ".join(r[-1] for r in conn.execute(
        "EXPLAIN QUERY PLAN SELECT interaction_id FROM cdrs WHERE account_id = 'a' ORDER BY %s, interaction_id"
        % schema.interaction_start()))
    assert "idx_cdrs_account_istart" in plan and "TEMP B-TREE" not in plan
    indexed = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'idx_cdrs_owner_istart'").fetchone()[0]
    assert "interaction_created_us" in indexed


def test_a_batch_rolls_up_its_own_rows_not_the_table(tmp_path):
    # The roll-ups of a batch read the rows after the seq it started from,
    # by the primary key: their cost is the batch's, however big the file.
    # (The planner picked idx_cdrs_stats and visited every row of it.)
    conn = connect_writer(tmp_path / "a.db")
    insert_records(conn, [dict(record(n), account_id="acct-%d" % (n % 3)) for n in range(300)])
    for sql in schema.rollup_insert_statements():
        plan = " / ".join(r[-1] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, (299,)))
        assert "INTEGER PRIMARY KEY (rowid>?)" in plan and "idx_cdrs" not in plan, plan
    # A batch's temporary b-trees (GROUP BY) stay in memory: no file per commit.
    assert conn.execute("PRAGMA temp_store").fetchone()[0] == 2


def test_reader_is_read_only(tmp_path):
    connect_writer(tmp_path / "a.db").close()
    reader = connect_reader(tmp_path / "a.db")
    with pytest.raises(sqlite3.OperationalError):
        reader.execute("DELETE FROM cdrs")


def run_writer(writer: Writer) -> gevent.Greenlet:
    return gevent.spawn(writer.run)


@contextlib.contextmanager
def running(writer: Writer):
    """The writer's greenlet for the block's duration."""
    greenlet = run_writer(writer)
    try:
        yield greenlet
    finally:
        writer.stop()
        greenlet.join(timeout=10)


def test_writer_batches_and_drains(tmp_path):
    conn = connect_writer(tmp_path / "a.db")
    writer = Writer(conn, batch_size=7, flush_interval=0.05)
    greenlet = run_writer(writer)
    for n in range(100):
        assert writer.submit(record(n))
    assert writer.wait_idle(timeout=10)
    writer.stop()
    greenlet.join(timeout=10)
    assert greenlet.dead
    assert writer.written == 100
    assert len(rows(tmp_path / "a.db")) == 100


def test_a_reader_pausing_past_the_window_gets_the_batch_committed_at_once(tmp_path):
    window = 4.0  # long: "at once" is told from "when the window closes" on a loaded machine too
    conn = connect_writer(tmp_path / "a.db")
    writer = Writer(conn, batch_size=50, flush_interval=window)
    with running(writer):
        gevent.sleep(window + 0.05)  # a window since the last transaction (none yet)
        opened = time.monotonic()
        for n in range(3):
            writer.submit(record(n))
        # A pause ending before the window closes: more may still join.
        writer.quiet_until(opened + window / 2)
        gevent.sleep(0.1)
        assert writer.written == 0 and writer.backlog == 3
        # A pause past the window's end: nothing can join the batch any
        # more, so it is committed now, not when the window closes.
        writer.quiet_until(opened + window + 1)
        assert wait_until(lambda: writer.written == 3, timeout=window / 2)
        assert len(rows(tmp_path / "a.db")) == 3


def test_a_record_after_a_long_idle_spell_is_not_counted_as_stalled(tmp_path):
    # The watchdog's stall counts from the last moment nothing waited: the
    # record's arrival, not the moment the writer went idle (an idle writer
    # sleeps IDLE_WAKE between looks; a short [store] stall_timeout must not
    # see the first record after a quiet spell as a stuck writer).
    conn = connect_writer(tmp_path / "a.db")
    writer = Writer(conn, batch_size=50, flush_interval=0.5)
    with running(writer):
        gevent.sleep(1.5)  # idle
        assert writer.stalled_seconds(time.monotonic()) == 0.0
        writer.submit(record(1))
        assert writer.stalled_seconds(time.monotonic()) < 1.0
        assert wait_until(lambda: writer.written == 1, timeout=5)


def test_a_trickle_batch_wakes_the_writer_when_its_window_closes_not_at_its_first_record(tmp_path):
    # Each wake-up of the writer greenlet is a turn of the hub and two
    # switches: the first record of a batch starts a timer for the window's
    # end instead of waking the writer to wait for that end itself (before:
    # one wake-up at the first record, one at the window's end).
    conn = connect_writer(tmp_path / "a.db")
    writer = Writer(conn, batch_size=50, flush_interval=0.5)
    switches: list[str] = []
    with running(writer) as greenlet:

        def trace(event, args):
            if event in ("switch", "throw") and args[1] is greenlet:
                switches.append(event)

        gevent.sleep(0.1)  # the writer is idle
        previous = greenlet_module.settrace(trace)
        try:
            for n in range(3):
                writer.submit(record(n))
            gevent.sleep(0.2)  # within the window
            assert switches == [] and writer.written == 0
            assert wait_until(lambda: writer.written == 3, timeout=5)
        finally:
            greenlet_module.settrace(previous)
        # The window's end, then the transaction's result from the thread.
        assert len(switches) <= 2, switches


def test_the_wal_is_copied_back_every_wal_checkpoint_pages_not_every_1000(tmp_path):
    # A commit checkpoints once the WAL holds WAL_CHECKPOINT_PAGES pages:
    # the file grows past SQLite's default 1,000 pages and stops near it.
    path = tmp_path / "a.db"
    conn = connect_writer(path)
    wal = tmp_path / "a.db-wal"
    frame = conn.execute("PRAGMA page_size").fetchone()[0] + 24
    most = 0
    n = 0
    while n < 6000 and most < 1.5 * WAL_CHECKPOINT_PAGES:
        # Random keys, as FreeSWITCH's UUIDs: each row dirties its own leaves.
        insert_records(conn, [dict(record(n + k), id=uuid.uuid4().hex, call_id=str(uuid.uuid4())) for k in range(16)])
        n += 16
        most = max(most, wal.stat().st_size // frame)
    assert 1000 * 1.5 < most < WAL_CHECKPOINT_PAGES * 1.2, (most, n)


def test_full_disk_keeps_records_and_writes_them_when_space_returns(tmp_path):
    path = tmp_path / "a.db"
    conn = connect_writer(path)
    insert_records(conn, [record(0)])
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    # SQLITE_FULL, exactly as a full disk reports it.
    conn.execute("PRAGMA max_page_count = %d" % pages)
    writer = Writer(conn, batch_size=50, flush_interval=0.01, max_retry_delay=0.05)
    greenlet = run_writer(writer)
    for n in range(1, 301):
        writer.submit(record(n))
    assert wait_until(lambda: writer.failures > 0, timeout=10)
    assert "full" in writer.last_error
    assert writer.backlog == 300
    assert len(rows(path)) == 1
    conn.execute("PRAGMA max_page_count = 1073741823")
    assert writer.wait_idle(timeout=10)
    writer.stop()
    greenlet.join(timeout=10)
    assert len(rows(path)) == 301


def test_writer_refuses_past_capacity_and_says_so(tmp_path):
    conn = connect_writer(tmp_path / "a.db")
    writer = Writer(conn, capacity=3)
    assert [writer.submit(record(n)) for n in range(5)] == [True, True, True, False, False]
    assert writer.refused == 2


def test_merge_reaches_records_still_waiting(tmp_path):
    conn = connect_writer(tmp_path / "a.db")
    writer = Writer(conn, batch_size=2, flush_interval=0.01)
    for n in range(5):
        writer.submit(record(n, "old"))
    writer.merge_interactions([("old", "new")])
    greenlet = run_writer(writer)
    assert writer.wait_idle(timeout=10)
    writer.stop()
    greenlet.join(timeout=10)
    assert {r[2] for r in rows(tmp_path / "a.db")} == {"new"}


def modes(db) -> dict[str, int]:
    import os
    import stat

    return {p.name[len(db.name):] or "db": stat.S_IMODE(os.stat(p).st_mode)
            for p in db.parent.iterdir() if p.name.startswith(db.name)}


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_database_and_its_wal_and_shm_are_created_0600_whatever_the_umask(tmp_path, umask):
    import os

    db = tmp_path / "cdrs.db"
    old = os.umask(umask)
    try:
        conn = connect_writer(db)
        insert_records(conn, [record(1)])
        assert modes(db) == {"db": 0o600, "-wal": 0o600, "-shm": 0o600}
        conn.close()
    finally:
        os.umask(old)


def test_an_existing_world_readable_database_loses_access_for_others(tmp_path):
    # A file made by an older eslcdr (0644) and a -wal/-shm left by a crash:
    # others lose access, a group read bit given by the operator stays.
    import os
    import shutil

    db = tmp_path / "cdrs.db"
    conn = connect_writer(db)
    insert_records(conn, [record(1)])
    for suffix in ("-wal", "-shm"):  # as a crash leaves them
        shutil.copy(str(db) + suffix, tmp_path / ("kept" + suffix))
    conn.close()
    for suffix in ("-wal", "-shm"):
        shutil.copy(tmp_path / ("kept" + suffix), str(db) + suffix)
        os.chmod(str(db) + suffix, 0o666)
    os.chmod(db, 0o644)
    conn = connect_writer(db)
    assert modes(db) == {"db": 0o640, "-wal": 0o640, "-shm": 0o640}
    conn.close()
    os.chmod(db, 0o604)
    conn = connect_writer(db)
    insert_records(conn, [record(2)])
    assert modes(db) == {"db": 0o600, "-wal": 0o600, "-shm": 0o600}
    conn.close()


@pytest.mark.subprocess
def test_eslcdr_run_under_umask_0_keeps_the_database_private(tmp_path):
    import os

    from eslcdr.fakefs import FakeFreeSWITCH, ReplaySource

    from tests.conftest import DATA
    from tests.harness import DaemonProcess, wait_rows, write_config
    from tests.expected_cdrs import ROW_COUNT

    fake = FakeFreeSWITCH(events=ReplaySource([DATA / "S1_json.esl"]), hold=True).start()
    db = tmp_path / "cdrs.db"
    daemon = DaemonProcess(write_config(tmp_path, fake.port), tmp_path / "daemon.log", preexec_fn=lambda: os.umask(0))
    try:
        assert len(wait_rows(db, ROW_COUNT["S1_json"])) == ROW_COUNT["S1_json"]
        # The spool is made (empty) at start: private too.
        assert modes(db) == {"db": 0o600, "-wal": 0o600, "-shm": 0o600, ".spool": 0o600}  # while it runs
    finally:
        assert daemon.stop() == 0
        fake.stop()
    assert modes(db) == {"db": 0o600, ".spool": 0o600}


def test_migration_adds_sip_call_id_null_on_old_rows_filled_on_new_ones(tmp_path, events_of):
    from tests.expected_cdrs import EXPECTED
    from tests.unit.ingest.test_cdr import run_capture

    path = tmp_path / "old.db"
    old = database_before(path, schema.add_sip_call_id)
    old.execute("INSERT INTO cdrs (id, call_id, timestamp) VALUES ('202601-old', 'old', 1)")
    old.close()
    conn = connect_writer(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
    assert [r[1] for r in conn.execute("PRAGMA table_info(cdrs)")] == list(schema.COLUMN_NAMES)
    assert conn.execute("SELECT sip_call_id FROM cdrs WHERE call_id = 'old'").fetchone() == (None,)
    records, _ = run_capture(events_of("S3_json"))
    insert_records(conn, records.values())
    stored = dict(conn.execute("SELECT call_id, sip_call_id FROM cdrs WHERE call_id != 'old'"))
    assert stored == {call_id: leg.get("sip_call_id") for call_id, leg in EXPECTED["S3_json"].items()}
    assert len(set(filter(None, stored.values()))) == 2  # S3's two SIP calls, each end with its call's
    conn.close()
