"""The collector's PostgreSQL side on a real server (pgserver): migrations,
partitions, the batch upsert with its cursor, rejects."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os

import psycopg
import pytest

from eslcdr.query.params import FeedQuery
from eslcdr.query.sql import feed_sql
from eslcdr.store import db as store
from eslcdr.collector import pgmigrations, pgschema
from eslcdr.collector.feed import parse_record
from eslcdr.collector.pgrecords import FeedRecord, Rejected
from eslcdr.collector.pgstore import LOCK_TIMEOUT, STATEMENT_TIMEOUT, CursorMoved, PgStore
from eslcdr.keepalive import libpq_keepalive
from eslcdr.collector.worker import RETRYABLE
from eslcdr.store.schema import COLUMN_NAMES

from tests.harness import wait_until
from tests.unit.api.test_api import G, leg

UTC = dt.timezone.utc


def feed_items(tmp_path, records, after=0):
    """Records -> the feed lines a node serves (the real SQLite rendering)."""
    conn = store.connect_writer(tmp_path / ("node-%d.db" % len(list(tmp_path.iterdir()))))
    store.insert_records(conn, records)
    sql, args = feed_sql(FeedQuery(after, None))
    lines = [row[0].encode() for row in conn.execute(sql, args)]
    conn.close()
    items, previous = [], after
    for line in lines:
        item = parse_record(line, previous)
        previous = item.seq
        items.append(item)
    return items


@pytest.fixture
def pg(pg_dsn):
    conn = psycopg.connect(pg_dsn)
    pgmigrations.migrate(conn)
    pg = PgStore(conn)
    pg.node_state("fs1", "http://127.0.0.1:1")
    yield pg
    pg.close()


def rows(pg, sql="SELECT * FROM cdrs ORDER BY source, seq", args=()):
    with pg.conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        out = cur.execute(sql, args).fetchall()
    pg.conn.commit()
    return out


def ts(year, month, day=15):
    return int(dt.datetime(year, month, day, 12, tzinfo=UTC).timestamp()) + G


def test_every_migration_sends_citus_shard_commands_one_at_a_time(pg_dsn, monkeypatch):
    """Citus refuses some DDL after a parallel statement of the same transaction
    (schema 9's CREATE INDEX on a distributed cdrs): each migration's transaction
    sets citus.multi_shard_modify_mode itself, an inert placeholder here."""
    seen = "CREATE TABLE _mode_seen AS SELECT current_setting('citus.multi_shard_modify_mode', true) AS mode"
    monkeypatch.setattr(pgmigrations, "MIGRATIONS", pgmigrations.MIGRATIONS + (seen,))
    monkeypatch.setattr(pgmigrations, "SCHEMA_VERSION", len(pgmigrations.MIGRATIONS))
    with psycopg.connect(pg_dsn) as conn:
        pgmigrations.migrate(conn)
        assert conn.execute("SELECT mode FROM _mode_seen").fetchone()[0] == "sequential"
        # SET LOCAL: the session itself is left as it was
        assert conn.execute("SELECT current_setting('citus.multi_shard_modify_mode', true)").fetchone()[0] in (None, "")


def test_migrate_builds_every_table_once(pg_dsn):
    with psycopg.connect(pg_dsn) as conn:
        assert pgmigrations.migrate(conn) == 0
        assert pgmigrations.migrate(conn) == pgmigrations.SCHEMA_VERSION
        tables = {r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert {"cdrs", "cdr_keys", "collector_nodes", "collector_rejects", "eslcdr_schema"} <= tables
        kinds = dict(conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'cdrs'").fetchall())
    for name in COLUMN_NAMES:
        assert name in kinds, name
    assert kinds["custom_channel_vars"] == "jsonb"
    assert kinds["hangup_at"] == "timestamp with time zone"
    assert kinds["created_us"] == "bigint"


def test_a_column_the_sqlite_schema_gained_is_added(pg_dsn):
    with psycopg.connect(pg_dsn) as conn:
        pgmigrations.migrate(conn)
        conn.execute("ALTER TABLE cdrs DROP COLUMN remote_sdp")
        conn.commit()
        pgmigrations.migrate(conn)
        assert conn.execute(
            "SELECT data_type FROM information_schema.columns WHERE table_name = 'cdrs'"
            " AND column_name = 'remote_sdp'").fetchone() == ("text",)


def test_partitions_ahead_of_need(pg):
    created = pgschema.ensure_partitions(pg.conn, dt.datetime(2026, 12, 3, tzinfo=UTC))
    assert created == ["cdrs_y2026m12", "cdrs_y2027m01", "cdrs_y2027m02"]
    assert pgschema.ensure_partitions(pg.conn, dt.datetime(2026, 12, 3, tzinfo=UTC)) == []


def test_batch_stores_every_column_and_moves_the_cursor(pg, tmp_path):
    records = [leg(ts(2026, 11)), leg(ts(2026, 10), fax_success=1, answered_us=0), leg(ts(2025, 1))]
    items = feed_items(tmp_path, records)
    result = pg.store_batch("fs1", "db-1", 0, items)
    assert (result.stored, result.rejected, result.after) == (3, 0, items[-1].seq)
    got = {r["call_id"]: r for r in rows(pg)}
    assert len(got) == 3
    for item in items:
        doc = json.loads(item.line)
        row = got[doc["call_id"]]
        for name in COLUMN_NAMES:
            assert row[name] == doc.get(name), name  # the feed leaves NULLs out
        assert row["source"] == "fs1"
        assert row["hangup_at"] == dt.datetime(1970, 1, 1, tzinfo=UTC) + dt.timedelta(microseconds=doc["hangup_us"])
        assert row["created_at"] == dt.datetime(1970, 1, 1, tzinfo=UTC) + dt.timedelta(microseconds=doc["created_us"])
    unanswered = got[records[1]["call_id"]]
    assert unanswered["answered_at"] is None and unanswered["fax_success"] is True
    # old months got their partition on demand
    assert {"cdrs_y2025m01", "cdrs_y2026m10", "cdrs_y2026m11"} <= pgschema.existing_partitions(pg.conn)
    state = pg.node_state("fs1", "http://127.0.0.1:1")
    assert (state.after, state.db_id, state.rows) == (items[-1].seq, "db-1", 3)


def test_rewritten_row_replaces_the_stored_one(pg, tmp_path):
    record = leg(ts(2026, 11))
    first = feed_items(tmp_path, [record])
    pg.store_batch("fs1", "db-1", 0, first)
    record2 = dict(record, interaction_id="merged-interaction", billing_seconds=99)
    again = feed_items(tmp_path, [record2])
    line = json.loads(again[0].line)
    line["seq"] = 7
    rewritten = FeedRecord(7, record["call_id"], again[0].hangup_us, json.dumps(line).encode())
    pg.store_batch("fs1", "db-1", first[-1].seq, [rewritten])
    got = rows(pg)
    assert len(got) == 1
    assert (got[0]["interaction_id"], got[0]["billing_seconds"], got[0]["seq"]) == ("merged-interaction", 99, 7)


def test_a_new_hangup_time_moves_the_row_to_its_partition(pg, tmp_path):
    record = leg(ts(2026, 11, 30))
    first = feed_items(tmp_path, [record])
    pg.store_batch("fs1", "db-1", 0, first)
    later = dict(record, hangup_us=(ts(2026, 12, 1) - G) * 10**6, timestamp=ts(2026, 12, 1))
    item = feed_items(tmp_path, [later])[0]
    doc = json.loads(item.line)
    doc["seq"] = 5
    result = pg.store_batch("fs1", "db-1", first[-1].seq,
                            [FeedRecord(5, record["call_id"], item.hangup_us, json.dumps(doc).encode())])
    assert result.moved == 1
    got = rows(pg, "SELECT tableoid::regclass::text AS part, hangup_at FROM cdrs")
    assert got == [{"part": "cdrs_y2026m12", "hangup_at": item.hangup_at}]
    assert rows(pg, "SELECT count(*) AS n FROM cdr_keys") == [{"n": 1}]


def test_values_with_copy_escapes_arrive_intact(pg, tmp_path):
    # Backslashes (JSON escapes), a tab and a CR as JSON whitespace, a
    # call_id with a backslash and a tab: COPY's text format must keep all.
    record = leg(ts(2026, 11), caller_id_name='Tab\there "q" back\\slash \u00e9\r\n')
    record["call_id"] = "odd\\call\tid"
    record["id"] = "202611-" + record["call_id"]
    item = feed_items(tmp_path, [record])[0]
    raw = item.line.replace(b'"seq":', b'\t\r "seq":', 1)
    pg.store_batch("fs1", "db-1", 0, [FeedRecord(item.seq, item.call_id, item.hangup_us, raw)])
    got = rows(pg)
    assert [(r["call_id"], r["caller_id_name"]) for r in got] == [(record["call_id"], record["caller_id_name"])]


def test_a_stale_cursor_is_refused(pg, tmp_path):
    items = feed_items(tmp_path, [leg(ts(2026, 11))])
    pg.store_batch("fs1", "db-1", 0, items)
    # what an operator reads when two collectors pull one node into one database
    with pytest.raises(CursorMoved, match=r"node fs1: the cursor in PostgreSQL is after=%d db_id=db-1, this"
                       r" collector had after=0 db_id=db-1: moved by hand, or another eslcdr collect pulls \[node:fs1\]"
                       % items[-1].seq):
        pg.store_batch("fs1", "db-1", 0, items)
    with pytest.raises(CursorMoved):
        pg.store_batch("fs1", "db-2", items[-1].seq, items)
    assert len(rows(pg)) == 1


def test_values_postgres_refuses_are_kept_in_rejects(pg, tmp_path):
    good, bad = feed_items(tmp_path, [leg(ts(2026, 11)), leg(ts(2026, 11))])
    doc = json.loads(bad.line)
    doc["duration_seconds"] = "sixty"
    bad = FeedRecord(bad.seq, bad.call_id, bad.hangup_us, json.dumps(doc).encode())
    no_call = Rejected(bad.seq + 1, None, "record has no usable call_id", '{"seq": %d}' % (bad.seq + 1))
    result = pg.store_batch("fs1", "db-1", 0, [good, bad, no_call])
    assert (result.stored, result.rejected, result.after) == (1, 2, bad.seq + 1)
    assert [r["call_id"] for r in rows(pg)] == [good.call_id]
    rejects = rows(pg, "SELECT seq, call_id, error, record FROM collector_rejects ORDER BY seq")
    assert [(r["seq"], r["call_id"]) for r in rejects] == [(bad.seq, bad.call_id), (bad.seq + 1, None)]
    assert "sixty" in rejects[0]["error"] and json.loads(rejects[0]["record"]) == doc
    assert rows(pg, "SELECT call_id FROM cdr_keys") == [{"call_id": good.call_id}]


def test_the_stored_versions_are_found_by_index_probes_whatever_the_statistics(pg, tmp_path, monkeypatch):
    """store_batch looks the node's stored versions up in cdr_keys by the
    batch's call ids: index probes, never a scan of every key (it grew with
    the table, 13-16 us a stored row at 1,000,000 keys, and a node the
    statistics did not know yet got a nested loop over the scan).  A re-sent
    batch still replaces its rows, and a record refused at staging leaves
    its stored version as it was."""
    pg.conn.execute("INSERT INTO cdr_keys (call_id, account_id, hangup_at, source) SELECT md5(g::text), 'acc-x',"
                    " now(), 'fs-big' FROM generate_series(1, 100000) AS g")
    pg.conn.execute("ANALYZE cdr_keys")  # fs1 unknown to the statistics, as a new node is
    pg.conn.commit()
    plans = []
    execute = psycopg.Cursor.execute

    def explained(cur, query, params=None, **kw):
        if isinstance(query, str) and query.startswith("INSERT INTO _old"):
            plans.append("\n".join(r[0] for r in execute(cur, "EXPLAIN " + query, params).fetchall()))
        return execute(cur, query, params, **kw)

    monkeypatch.setattr(psycopg.Cursor, "execute", explained)
    items = feed_items(tmp_path, [leg(ts(2026, 11, 1 + i % 28)) for i in range(1000)])
    assert pg.store_batch("fs1", "db-1", 0, items).stored == 1000
    before = rows(pg)
    doc = json.loads(items[0].line)
    doc["duration_seconds"] = "sixty"  # refused by the COPY: its stored version stays
    refused = FeedRecord(30, items[0].call_id, items[0].hangup_us, json.dumps(doc).encode())
    again = [replayed(item, 30 + i, billing_seconds=7) for i, item in enumerate(items[1:], 1)]
    result = pg.store_batch("fs1", "db-1", items[-1].seq, [refused] + again)
    assert (result.stored, result.moved, result.rejected) == (999, 0, 1)
    after = {r["call_id"]: r for r in rows(pg)}
    assert len(after) == 1000 and after[items[0].call_id] == before[0]
    assert {after[i.call_id]["billing_seconds"] for i in items[1:]} == {7}
    assert len(plans) == 2
    for plan in plans:
        assert "cdr_keys_pkey" in plan and "Seq Scan on cdr_keys" not in plan, plan


def test_restart_node_resets_the_cursor(pg, tmp_path):
    items = feed_items(tmp_path, [leg(ts(2026, 11))])
    pg.store_batch("fs1", "db-1", 0, items)
    pg.restart_node("fs1", "db-1", "db-2")
    state = pg.node_state("fs1", "http://127.0.0.1:1")
    assert (state.after, state.db_id) == (0, "db-2")
    with pytest.raises(CursorMoved):
        pg.restart_node("fs1", "db-1", "db-3")


def test_docs_psql_examples_run(pg, tmp_path):
    from tests.unit.test_docs import code_blocks, page

    blocks = code_blocks(page("collector"), "sql")
    statements = []
    for block in blocks:
        for text in block.split(";"):
            body = "\n".join(ln for ln in text.splitlines() if not ln.strip().startswith("--")).strip()
            if body:
                statements.append(body)
    assert len(statements) == 6
    now = int(dt.datetime.now(UTC).timestamp()) + G
    # Both legs in the current hour (so also this month): a minute earlier
    # fell into the previous hour when the test ran at hh:00.
    hour_start = now - (now - G) % 3600
    # Two inbound legs, one answered; four outbound: two answered, one
    # unanswered seizure, and a LOSE_RACE that seized nothing (ASR 66.7 %).
    outbound = [leg(hour_start + 3, call_direction="outbound"), leg(hour_start + 3, call_direction="outbound"),
                leg(hour_start + 4, call_direction="outbound", answered_us=0, hangup_cause="NO_ANSWER"),
                leg(hour_start + 5, call_direction="outbound", answered_us=0, hangup_cause="LOSE_RACE")]
    pg.store_batch("fs1", "db-1", 0, feed_items(tmp_path, [leg(hour_start + 1), leg(hour_start + 2, answered_us=0)]
                                                + outbound))
    results = []
    for statement in statements:
        with pg.conn.cursor() as cur:
            results.append(cur.execute(statement).fetchall())
        pg.conn.commit()
    assert results[0] == []  # no call crossed nodes
    assert results[1][0][2] == 6  # six legs in the last hour of fs1
    assert [(r[1], float(r[2])) for r in results[2]] == [(3, 66.7)]  # ASR as cdrs/stats counts it: 2 of 3 answered
    assert [r[1:] for r in results[5]] == [(2, 50.0)]  # the same from the roll-ups


def test_the_feed_names_its_newest_seq(tmp_path):
    from tests.unit.api.test_api import COLLECTOR, Env

    env = Env(tmp_path)
    try:
        env.insert([leg(ts(2026, 11)), leg(ts(2026, 11))])
        response = env.get("/v2/feed/cdrs?after=0&limit=1", headers=COLLECTOR)
        assert response.headers["X-Feed-Last-Seq"] == "2"
    finally:
        env.close()


def test_an_object_in_a_text_column_and_a_nul_are_refused_values(pg, tmp_path):
    first, second, third = feed_items(tmp_path, [leg(ts(2026, 11)) for _ in range(3)])
    odd = []
    for item, change in ((first, {"caller_id_name": "nul\u0000here"}), (second, {"duration_seconds": {"x": 1}})):
        doc = json.loads(item.line)
        doc.update(change)
        odd.append(FeedRecord(item.seq, item.call_id, item.hangup_us, json.dumps(doc).encode()))
    result = pg.store_batch("fs1", "db-1", 0, odd + [third])
    assert (result.stored, result.rejected, result.after) == (1, 2, third.seq)
    assert [r["call_id"] for r in rows(pg)] == [third.call_id]
    rejects = rows(pg, "SELECT seq, record FROM collector_rejects ORDER BY seq")
    assert [r["seq"] for r in rejects] == [first.seq, second.seq]
    assert json.loads(rejects[1]["record"])["duration_seconds"] == {"x": 1}



def test_a_value_past_a_postgresql_limit_is_refused_not_the_whole_node(pg, tmp_path):
    # An indexed value of a few KB (random, so it does not compress: past the
    # 2,704 bytes a btree index row holds), e.g. an interaction id a dialplan
    # copied from caller input (a caller's SIP Call-ID was one, before
    # cdrs_sip_call_id left long ones out: test_central_interactions).  Before,
    # that ProgramLimitExceeded failed the whole batch, again at every retry:
    # the node's later CDRs never reached PostgreSQL.
    long_id = base64.b64encode(os.urandom(6000)).decode()
    before, long_one, after = feed_items(tmp_path, [leg(ts(2026, 11)), leg(ts(2026, 11), interaction=long_id),
                                                    leg(ts(2026, 11))])
    result = pg.store_batch("fs1", "db-1", 0, [before, long_one, after])
    assert (result.stored, result.rejected, result.after) == (2, 1, after.seq)
    assert [r["call_id"] for r in rows(pg)] == [before.call_id, after.call_id]
    rejects = rows(pg, "SELECT seq, call_id, reason, error, record FROM collector_rejects")
    assert [(r["seq"], r["call_id"], r["reason"]) for r in rejects] == [(long_one.seq, long_one.call_id, "refused_value")]
    assert "index row size" in rejects[0]["error"] and long_id in rejects[0]["record"]
    assert rows(pg, "SELECT count(*) AS n FROM cdr_keys") == [{"n": 2}]


# ------------------------------------------------------------------ one owner per call


def replayed(item: FeedRecord, seq: int, **changes) -> FeedRecord:
    """A node's record as another node could send it: a new seq, other values."""
    doc = json.loads(item.line)
    doc.update(changes, seq=seq)
    hangup_us = doc["hangup_us"]
    return FeedRecord(seq, item.call_id, hangup_us, json.dumps(doc).encode())


def test_only_the_node_that_stored_a_call_may_replace_it(pg, tmp_path):
    pg.node_state("fs2", "http://127.0.0.1:2")
    items = feed_items(tmp_path, [leg(ts(2026, 11, 10)), leg(ts(2026, 11, 11))])
    pg.store_batch("fs1", "db-1", 0, items)
    before = rows(pg)
    same, moved = items
    # fs2 sends fs1's calls: one with new values, one hung up in another month
    hostile = [replayed(same, 1, billing_seconds=99999),
               replayed(moved, 2, billing_seconds=99999, hangup_us=moved.hangup_us - 30 * 86_400 * 10**6)]
    own = [replayed(feed_items(tmp_path, [leg(ts(2026, 11, 12))])[0], 3)]
    result = pg.store_batch("fs2", "db-2", 0, hostile + own)
    assert (result.stored, result.moved, result.rejected, result.after) == (1, 0, 2, own[-1].seq)
    assert [r for r in rows(pg) if r["source"] == "fs1"] == before  # unchanged, in place
    assert [r["call_id"] for r in rows(pg) if r["source"] == "fs2"] == [own[0].call_id]
    rejects = rows(pg, "SELECT node, seq, call_id, reason, error, record FROM collector_rejects ORDER BY seq")
    assert [(r["node"], r["seq"], r["call_id"], r["reason"]) for r in rejects] == [
        ("fs2", 1, same.call_id, "other_node"), ("fs2", 2, moved.call_id, "other_node")]
    assert all(r["error"] == "call_id already stored from node fs1" for r in rejects)
    assert json.loads(rejects[0]["record"])["billing_seconds"] == 99999
    assert rows(pg, "SELECT call_id, source FROM cdr_keys ORDER BY source, call_id") == sorted(
        [{"call_id": i.call_id, "source": "fs1"} for i in items], key=lambda r: r["call_id"]) + [
        {"call_id": own[0].call_id, "source": "fs2"}]
    # fs1 itself still may: a rewrite, and a move to another month
    result = pg.store_batch("fs1", "db-1", items[-1].seq, [
        replayed(same, 10, billing_seconds=7), replayed(moved, 11, hangup_us=moved.hangup_us - 30 * 86_400 * 10**6)])
    assert (result.stored, result.moved, result.rejected) == (2, 1, 0)
    got = {r["call_id"]: r for r in rows(pg) if r["source"] == "fs1"}
    assert got[same.call_id]["billing_seconds"] == 7 and got[moved.call_id]["hangup_at"].month == 10


def test_another_leg_under_an_id_another_node_stored_is_stored_under_a_key_of_its_own(pg, tmp_path):
    # A caller sent fs2 the Call-ID of a leg of fs1 (inbound-use-callid-as-uuid:
    # fs2's leg has that Unique-ID).  Another creation: another leg, stored as
    # <call_id>~<created_us> from fs2 (collector/pgreused.py); before, refused
    # as other_node and missing from every central listing and KPI.
    from tests.unit.collector.test_collector_rollups import rollups

    pg.node_state("fs2", "http://127.0.0.1:2")
    [victim] = feed_items(tmp_path, [leg(ts(2026, 11, 10))])
    pg.store_batch("fs1", "db-1", 0, [victim])
    before = rows(pg)
    created = victim.fields()["created_us"] + 3_600_000_000
    caller = replayed(victim, 1, created_us=created, billing_seconds=42)
    result = pg.store_batch("fs2", "db-2", 0, [caller])
    assert (result.stored, result.rejected) == (1, 0)
    key = "%s~%d" % (victim.call_id, created)
    assert [r for r in rows(pg) if r["source"] == "fs1"] == before
    [stored] = [r for r in rows(pg) if r["source"] == "fs2"]
    assert (stored["call_id"], stored["id"], stored["billing_seconds"]) == (
        key, "%s~%d" % (victim.fields()["id"], created), 42)
    # fs2's next version of its leg replaces its own row; fs1's very leg sent by fs2 is refused.
    result = pg.store_batch("fs2", "db-2", 1, [replayed(caller, 3, billing_seconds=43)])
    assert (result.stored, result.rejected) == (1, 0)
    result = pg.store_batch("fs2", "db-2", 3, [replayed(victim, 4, billing_seconds=99999)])
    assert (result.stored, result.rejected) == (0, 1)
    assert [(r["call_id"], r["billing_seconds"]) for r in rows(pg) if r["source"] == "fs2"] == [(key, 43)]
    assert [r["reason"] for r in rows(pg, "SELECT reason FROM collector_rejects")] == ["other_node"]
    stored_cells, recount = rollups(pg.conn)
    assert stored_cells == recount


def test_a_call_being_stored_by_another_node_is_refused_once_that_commits(pg, pg_dsn, tmp_path):
    import threading

    item = feed_items(tmp_path, [leg(ts(2026, 11))])[0]
    pg.ensure_months([item])
    with psycopg.connect(pg_dsn) as other:
        other.execute("INSERT INTO collector_nodes (node, url) VALUES ('fs2', 'x')")
        other.commit()
        # fs2's transaction has taken the call and not committed yet
        other.execute("INSERT INTO cdr_keys (call_id, account_id, hangup_at, source) VALUES (%s, 'a', now(), 'fs2')",
                      (item.call_id,))
        done = []
        worker = threading.Thread(target=lambda: done.append(pg.store_batch("fs1", "db-1", 0, [item])), daemon=True)
        worker.start()
        # fs1's batch waits on a lock (fs2's uncommitted key), not merely slow.
        with psycopg.connect(pg_dsn, autocommit=True) as watcher:
            assert wait_until(lambda: watcher.execute(
                "SELECT count(*) FROM pg_locks WHERE pid = %s AND NOT granted",
                (pg.conn.info.backend_pid,)).fetchone()[0], timeout=30)
        assert done == []  # waits for fs2's transaction
        other.commit()
        worker.join(10)
    assert (done[0].stored, done[0].rejected) == (0, 1)
    assert rows(pg) == []
    assert rows(pg, "SELECT reason FROM collector_rejects") == [{"reason": "other_node"}]


# ------------------------------------------------------------------ partitions a node may create


def test_new_partitions_per_node_are_bounded_and_the_rest_rejected(pg, tmp_path):
    pg.node_state("fs2", "http://127.0.0.1:2")
    items = feed_items(tmp_path, [leg(ts(2024, month)) for month in (3, 4, 5, 6)])
    result = pg.store_batch("fs1", "db-1", 0, items, max_new_partitions=2)
    assert (result.stored, result.rejected, result.after) == (2, 2, items[-1].seq)
    # the newest months got theirs; the others are kept, with the reason
    assert {"cdrs_y2024m05", "cdrs_y2024m06"} <= pgschema.existing_partitions(pg.conn)
    assert not {"cdrs_y2024m03", "cdrs_y2024m04"} & pgschema.existing_partitions(pg.conn)
    rejects = rows(pg, "SELECT seq, reason, error FROM collector_rejects ORDER BY seq")
    assert [(r["seq"], r["reason"]) for r in rejects] == [(items[0].seq, "partition_limit"),
                                                          (items[1].seq, "partition_limit")]
    assert "2024-03" in rejects[0]["error"] and "max_new_partitions" in rejects[0]["error"]
    # a month that exists costs nothing; the bound is per node
    more = feed_items(tmp_path, [leg(ts(2024, 6)), leg(ts(2024, 3))])
    result = pg.store_batch("fs2", "db-2", 0, more, max_new_partitions=2)
    assert (result.stored, result.rejected) == (2, 0)
    made = rows(pg, "SELECT name, node FROM collector_partitions WHERE node IS NOT NULL ORDER BY name")
    assert made == [{"name": "cdrs_y2024m03", "node": "fs2"}, {"name": "cdrs_y2024m05", "node": "fs1"},
                    {"name": "cdrs_y2024m06", "node": "fs1"}]


def test_migration_3_names_the_owner_of_every_stored_call(pg_dsn, tmp_path):
    with psycopg.connect(pg_dsn) as conn:
        with conn.transaction(), conn.cursor() as cur:  # a database of the version before
            cur.execute("CREATE TABLE eslcdr_schema (version integer NOT NULL)")
            cur.execute("INSERT INTO eslcdr_schema VALUES (2)")
            for migration in pgmigrations.MIGRATIONS[:2]:
                migration(cur)
        conn.execute("CREATE TABLE cdrs_y2026m11 PARTITION OF cdrs FOR VALUES FROM ('2026-11-01') TO ('2026-12-01')")
        items = feed_items(tmp_path, [leg(ts(2026, 11)), leg(ts(2026, 11))])
        for item in items:
            conn.execute("INSERT INTO cdrs (seq, id, call_id, timestamp, source, hangup_at)"
                         " VALUES (%s, 'x', %s, 1, 'fs1', %s)", (item.seq, item.call_id, item.hangup_at))
            conn.execute("INSERT INTO cdr_keys VALUES (%s, %s)", (item.call_id, item.hangup_at))
        conn.execute("INSERT INTO cdr_keys VALUES ('row-dropped-with-its-month', now())")
        conn.execute("INSERT INTO collector_rejects (node, error, record) VALUES"
                     " ('fs1', 'record has no usable call_id', '{}'), ('fs1', 'invalid input syntax for type bigint', '{}')")
        conn.commit()
        assert pgmigrations.migrate(conn) == 2
        assert sorted(conn.execute("SELECT call_id, source FROM cdr_keys").fetchall()) == sorted(
            (item.call_id, "fs1") for item in items)
        assert conn.execute("SELECT reason FROM collector_rejects ORDER BY id").fetchall() == [
            ("bad_record",), ("refused_value",)]


def test_a_connection_bounds_every_wait(pg_dsn):
    """Locks, statements and a silent server (TCP keepalive, unacked data):
    the collector's connections never wait for ever (docs/collector.md)."""
    with psycopg.connect(pg_dsn) as conn:
        pgmigrations.migrate(conn)
    store = PgStore.connect(pg_dsn)
    try:
        settings = {name: store.conn.execute("SHOW %s" % name).fetchone()[0]
                    for name in ("lock_timeout", "statement_timeout")}
        store.conn.rollback()
        assert settings == {"lock_timeout": "%ds" % LOCK_TIMEOUT, "statement_timeout": "%dmin" % (STATEMENT_TIMEOUT // 60)}
        params = store.conn.info.get_parameters()
        wanted = libpq_keepalive()
        assert {name: params.get(name) for name in wanted} == {name: str(v) for name, v in wanted.items()}
        assert wanted["keepalives_idle"] + wanted["keepalives_interval"] * wanted["keepalives_count"] <= 60
        # The server's end probes too (it drops a vanished collector's session and its node claims):
        # asked by this session (over a Unix socket PostgreSQL shows them as 0, so the source is read).
        asked = dict(store.conn.execute(
            "SELECT name, setting FROM pg_settings WHERE source = 'client' AND name IN ('tcp_keepalives_idle',"
            " 'tcp_keepalives_interval', 'tcp_keepalives_count', 'tcp_user_timeout')").fetchall())
        store.conn.rollback()
        assert set(asked) == {"tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count",
                              "tcp_user_timeout"}
    finally:
        store.close()


def test_a_statement_the_server_lets_run_on_fails_retryably_on_our_side(pg_dsn):
    """A server alive (its kernel answers the keepalives) that does not end a
    statement at statement_timeout (here: turned off in the session): the wait
    ends after 2 x statement_timeout + 1 s with an error the worker retries."""
    from eslcdr.collector.pgstore import pg_connect

    conn = pg_connect(pg_dsn, 5, statement_timeout=0.5)
    try:
        conn.execute("SET statement_timeout = 0")
        with pytest.raises(psycopg.OperationalError) as failed:
            conn.execute("SELECT pg_sleep(15)")
        assert isinstance(failed.value, RETRYABLE)
    finally:
        conn.close()
    with pg_connect(pg_dsn, 5, statement_timeout=None) as unbounded:  # the migration's: no bound of ours
        assert unbounded.execute("SELECT pg_sleep(3), 1").fetchone()[1] == 1


def test_a_held_lock_fails_the_batch_retryably_and_it_stores_once_after(pg_dsn, tmp_path):
    """An operator's LOCK TABLE (or a stuck session) used to block the node's
    worker for ever: the batch now fails within its lock_timeout with an
    error the worker retries, rolled back whole; the retry stores it once."""
    with psycopg.connect(pg_dsn) as conn:
        pgmigrations.migrate(conn)
    first, second = feed_items(tmp_path, [leg(ts(2026, 11)), leg(ts(2026, 11))])
    store = PgStore.connect(pg_dsn, lock_timeout=1.0)
    store.node_state("fs1", "http://127.0.0.1:1")
    store.store_batch("fs1", "db-1", 0, [first])  # the month's partition exists
    holder = psycopg.connect(pg_dsn)
    # The guard: the server ends the holder's session (and its lock) after
    # 20 s, so code without a lock bound stores late instead of hanging.
    holder.execute("SET idle_in_transaction_session_timeout = '20s'")
    holder.execute("LOCK TABLE collector_nodes IN ACCESS EXCLUSIVE MODE")
    # Without the bound, the batch waits for the guard and then stores: no error.
    with pytest.raises(psycopg.errors.LockNotAvailable) as failed:
        store.store_batch("fs1", "db-1", first.seq, [second])
    assert isinstance(failed.value, RETRYABLE)
    holder.rollback()
    holder.close()
    store.close()  # the worker drops its connection and opens a new one
    store = PgStore.connect(pg_dsn)
    try:
        state = store.node_state("fs1", "http://127.0.0.1:1")
        assert (state.after, state.rows) == (first.seq, 1)  # the failed batch left nothing
        result = store.store_batch("fs1", "db-1", state.after, [second])
        assert (result.stored, result.after) == (1, second.seq)
        assert sorted(r["call_id"] for r in rows(store)) == sorted([first.call_id, second.call_id])
        assert store.node_state("fs1", "http://127.0.0.1:1").rows == 2
    finally:
        store.close()
