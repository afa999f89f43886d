"""The collector's PostgreSQL keys (Citus-ready) and KPI roll-ups on a real
server (pgserver): every unique key holds account_id, no UPDATE moves a row
to another account, partitions are made outside explicit transactions, and
the roll-ups equal a recount from the legs after any sequence of batches."""

from __future__ import annotations

import csv
import datetime as dt
import io
import itertools
import json
import uuid

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eslcdr.collector import pgmigrations, pgquery, pgrollups, pgschema
from eslcdr.collector.feed import parse_record
from eslcdr.collector.pgrecords import FeedRecord
from eslcdr.collector.pgstore import PgStore
from eslcdr.collector.readside import PgReadSide, stats_rows
from eslcdr.query import params, sql, stats
from eslcdr.store import db as store

from tests.unit.api.test_api import G, leg
from tests.unit.collector.test_collector_store import feed_items, pg, replayed, rows, ts  # noqa: F401 (pg is a fixture)

UTC = dt.timezone.utc
# The tables that would be distributed by account_id (co-located).
DISTRIBUTED = ("cdrs", "stats_minutes", "stats_pdd_hours", "stats_hours", "stats_hour_causes")


def rollups(conn):
    """(stats_minutes, stats_pdd_hours, stats_hours, stats_hour_causes) as stored, and as recounted from cdrs."""
    with conn.cursor() as cur:
        stored = [cur.execute("SELECT * FROM stats_minutes ORDER BY 1, 2, 3, 4, 5").fetchall(),
                  cur.execute("SELECT * FROM stats_pdd_hours ORDER BY 1, 2, 3").fetchall(),
                  cur.execute("SELECT * FROM stats_hours ORDER BY 1, 2, 3").fetchall(),
                  cur.execute("SELECT * FROM stats_hour_causes ORDER BY 1, 2, 3").fetchall()]
        recount = [cur.execute(statement).fetchall() for statement in pgrollups.recount_sql()]
    conn.commit()
    return stored, recount


# ------------------------------------------------------------------ keys


def test_every_unique_key_of_the_distributed_tables_holds_account_id(pg, tmp_path):
    pg.store_batch("fs1", "db-1", 0, feed_items(tmp_path, [leg(ts(2026, 11)), leg(ts(2026, 10))]))
    found = rows(pg, """
        SELECT t.relname AS table, i.relname AS index, array_agg(a.attname::text ORDER BY a.attname) AS columns
        FROM pg_index x JOIN pg_class t ON t.oid = x.indrelid JOIN pg_class i ON i.oid = x.indexrelid
        JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = ANY(x.indkey::int2[])
        WHERE x.indisunique AND t.relnamespace = current_schema()::regnamespace
        GROUP BY 1, 2 ORDER BY 1, 2""")
    partitions = pgschema.existing_partitions(pg.conn)
    checked = [r for r in found if r["table"] in DISTRIBUTED or r["table"] in partitions]
    assert {r["table"] for r in checked} >= set(DISTRIBUTED) | {"cdrs_y2026m10", "cdrs_y2026m11"}
    for r in checked:
        assert "account_id" in r["columns"], r
    assert [r["columns"] for r in checked if r["table"] == "cdrs"] == [["account_id", "call_id", "hangup_at"]]
    # no serial / identity column, account_id never NULL
    columns = rows(pg, "SELECT table_name, column_name, column_default, is_identity, is_nullable"
                       " FROM information_schema.columns WHERE table_name = ANY(%s)", (list(DISTRIBUTED),))
    assert not [c for c in columns if "nextval" in (c["column_default"] or "") or c["is_identity"] == "YES"]
    assert {c["table_name"] for c in columns if c["column_name"] == "account_id" and c["is_nullable"] == "NO"} \
        == set(DISTRIBUTED)


def citus_rules(conn):
    """Stand-ins for what Citus refuses: an UPDATE of the distribution
    column, a partition created inside an explicit transaction."""
    conn.execute("""CREATE FUNCTION no_account_move() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN IF NEW.account_id IS DISTINCT FROM OLD.account_id THEN
          RAISE EXCEPTION 'UPDATE moves % to account %', OLD.call_id, NEW.account_id; END IF;
        RETURN NEW; END $$""")
    conn.execute("CREATE TRIGGER no_account_move BEFORE UPDATE ON cdrs FOR EACH ROW"  # and its partitions
                 " EXECUTE FUNCTION no_account_move()")
    conn.execute("""CREATE FUNCTION ddl_alone() RETURNS event_trigger LANGUAGE plpgsql AS $$
        BEGIN IF transaction_timestamp() <> statement_timestamp() THEN
          RAISE EXCEPTION 'DDL inside an explicit transaction'; END IF; END $$""")
    conn.execute("CREATE EVENT TRIGGER ddl_alone ON ddl_command_start WHEN TAG IN ('CREATE TABLE')"
                 " EXECUTE FUNCTION ddl_alone()")
    conn.commit()


def test_a_call_that_changes_account_or_month_is_deleted_and_inserted_again(pg, tmp_path):
    first = feed_items(tmp_path, [leg(ts(2026, 11, 10), account="acc-a"), leg(ts(2026, 11, 11), account="acc-a")])
    pg.store_batch("fs1", "db-1", 0, first)
    citus_rules(pg.conn)
    same, other = first
    # another account; another account and month (a new partition, made for it)
    result = pg.store_batch("fs1", "db-1", first[-1].seq, [
        replayed(same, 10, account_id="acc-b"),
        replayed(other, 11, account_id=None, hangup_us=other.hangup_us - 60 * 86_400 * 10**6)])
    assert (result.stored, result.moved, result.rejected, result.partitions) == (2, 2, 0, ("cdrs_y2026m09",))
    got = rows(pg, "SELECT call_id, account_id, hangup_at, seq FROM cdrs ORDER BY seq")
    assert [(r["call_id"], r["account_id"], r["seq"]) for r in got] == [
        (same.call_id, "acc-b", 10), (other.call_id, pgschema.NO_ACCOUNT, 11)]
    assert got[1]["hangup_at"].month == 9
    keys = rows(pg, "SELECT call_id, account_id, hangup_at FROM cdr_keys ORDER BY call_id")
    assert sorted((r["call_id"], r["account_id"], r["hangup_at"]) for r in got) == [
        (k["call_id"], k["account_id"], k["hangup_at"]) for k in keys]
    stored, recount = rollups(pg.conn)
    assert stored == recount and [r[0] for r in stored[0]] == ["acc-b"]  # a leg without account counts nowhere


def test_a_replacement_postgres_refuses_leaves_the_stored_row_and_its_counts(pg, tmp_path):
    item = feed_items(tmp_path, [leg(ts(2026, 11, 10), account="acc-a")])[0]
    pg.store_batch("fs1", "db-1", 0, [item])
    before = rows(pg), rollups(pg.conn)
    doc = json.loads(replayed(item, 5, account_id="acc-b", billing_seconds=1).line)
    # a time PostgreSQL cannot hold: taken by the COPY into the staging table
    # (a bigint), refused by the INSERT that turns it into a timestamptz
    doc["created_us"] = 2**63 - 1
    result = pg.store_batch("fs1", "db-1", item.seq, [FeedRecord(5, item.call_id, item.hangup_us,
                                                                 json.dumps(doc).encode())])
    assert (result.stored, result.rejected, result.after) == (0, 1, 5)
    assert (rows(pg), rollups(pg.conn)) == before
    assert rows(pg, "SELECT account_id FROM cdr_keys") == [{"account_id": "acc-a"}]


def test_partitions_are_created_outside_explicit_transactions(pg):
    citus_rules(pg.conn)
    created, refused = pgschema.create_partitions_for(pg.conn, [dt.date(2024, 5, 1), dt.date(2024, 6, 1)], "fs1", 1)
    assert (created, refused) == (["cdrs_y2024m06"], {dt.date(2024, 5, 1)})
    assert pgschema.ensure_partitions(pg.conn, dt.datetime(2031, 1, 2, tzinfo=UTC))[0] == "cdrs_y2031m01"
    assert pg.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE and not pg.conn.autocommit
    with pytest.raises(psycopg.errors.RaiseException):  # the stand-in refuses DDL in a transaction
        with pg.conn.transaction():
            pg.conn.execute("SELECT 1")
            pg.conn.execute("CREATE TABLE x (a int)")


# ------------------------------------------------------------------ roll-ups


def test_the_rollups_move_in_the_batch_s_transaction(pg, tmp_path):
    items = feed_items(tmp_path, [leg(ts(2026, 11)), leg(ts(2026, 11), call_direction="outbound", pdd_ms=900)])
    pg.ensure_months(items)
    pg.conn.execute("""CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'roll-ups refused'; END $$""")
    pg.conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON stats_pdd_hours FOR EACH ROW EXECUTE FUNCTION refuse()")
    pg.conn.commit()
    with pytest.raises(psycopg.errors.RaiseException):
        pg.store_batch("fs1", "db-1", 0, items)
    pg.conn.rollback()
    # nothing of the batch: no row, no cell, the cursor where it was
    assert rows(pg) == [] and rollups(pg.conn)[0] == [[], [], [], []]
    assert pg.node_state("fs1", "x").after == 0
    pg.conn.execute("DROP TRIGGER refuse ON stats_pdd_hours")
    pg.conn.commit()
    assert pg.store_batch("fs1", "db-1", 0, items).stored == 2
    stored, recount = rollups(pg.conn)
    assert stored == recount and len(stored[1]) == 1


def test_read_rollups_gives_the_node_s_kpis(pg, tmp_path):
    hour = ts(2026, 11, 10) - (ts(2026, 11, 10) - G) % 3600
    node, lines = _node_and_feed(tmp_path, hour)
    # a first version of some rows, then the node's (a replacement each)
    early = [replayed(item, item.seq, billing_seconds=999, account_id="acc-b") for item in lines[:10]]
    pg.store_batch("fs1", "db-1", 0, early)
    pg.store_batch("fs1", "db-1", early[-1].seq,
                   lines[10:] + [replayed(item, len(lines) + n + 1) for n, item in enumerate(lines[:10])])
    for interval in (3600, 600):
        query = stats.StatsQuery("acc-a", None, hour, hour + 3 * 3600 - 1, interval, ())
        hours = (hour // 3600, hour // 3600 + 2) if interval % 3600 == 0 else None
        got = pgrollups.read_rollups(pg.conn, "acc-a", hour // 60, (hour + 3 * 3600) // 60 - 1, interval, hours)
        if hours is None:  # pdd needs whole hours: from the legs, as the node does
            got[2] = node.execute(*stats.stats_statements(query)[2]).fetchall()
        central = stats.compute(query, got)
        assert central["totals"]["legs"] > 10 and central["totals"]["pdd_legs"] > 3
        assert _rounded(central) == _rounded(stats.read_stats(node, query)), interval
    node.close()


def _rounded(value):
    if isinstance(value, float):
        return round(value, 9)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def test_central_stats_and_worst_after_replacements_are_the_node_s(pg, pg_dsn, tmp_path, monkeypatch):
    """PgReadSide.stats / .worst over rows stored, then replaced, then refused
    from another node: the node's answer for every shape of query (roll-ups
    with ragged edges, PDD from legs, a user's, filtered, odd intervals); a
    direction filter read from the roll-ups, the legs of its ragged edges only."""
    hour = ts(2026, 11, 10) - (ts(2026, 11, 10) - G) % 3600
    node, lines = _node_and_feed(tmp_path, hour)
    early = [replayed(item, item.seq, billing_seconds=999, account_id="acc-b", audio_in_mos=1.0) for item in lines[:10]]
    pg.store_batch("fs1", "db-1", 0, early)
    pg.store_batch("fs1", "db-1", early[-1].seq,
                   lines[10:] + [replayed(item, len(lines) + n + 1) for n, item in enumerate(lines[:10])])
    pg.node_state("fs2", "http://127.0.0.1:2")
    pg.store_batch("fs2", "db-2", 0, [replayed(item, n + 1, billing_seconds=5) for n, item in enumerate(lines[:5])])
    read = PgReadSide(pg_dsn, 10.0, heavy_slots=1)
    try:
        span = (hour, hour + 3 * 3600 - 1)
        ragged = (hour + 17, hour + 3 * 3600 - 45)
        codec = params.parse_filters({"filter_call_direction": ["outbound"]})
        inbound = params.parse_filters({"filter_call_direction": ["inbound"]})
        not_inbound = params.parse_filters({"filter_not_call_direction": ["inbound"]})
        shapes = [(None, span, 3600, ()), (None, ragged, 3600, ()), (None, ragged, 600, ()), (None, span, 60, ()),
                  (None, ragged, 86400, ()), (None, span, 90, ()), ("user-1", ragged, 1800, ()),
                  (None, ragged, 3600, codec), (None, span, 3600, codec), (None, span, 7200, inbound),
                  (None, ragged, 600, inbound), (None, ragged, 3600, not_inbound)]
        legs_read = []  # the ranges of each legs statement
        stats_sql = pgquery.stats_sql
        monkeypatch.setattr(pgquery, "stats_sql", lambda query, ranges, pdd_ranges=None: (
            legs_read.append((query.filters, list(ranges), pdd_ranges)) or stats_sql(query, ranges, pdd_ranges)))
        for owner, (low, high), interval, filters in shapes:
            query = stats.StatsQuery("acc-a", owner, low, high, interval, filters)
            legs_read.clear()
            central = read.stats(query)
            if owner is None and filters in ((), codec, inbound) and interval % 3600 == 0:
                # the roll-ups: legs only before the first and after the last whole hour
                assert all(edge[1] - edge[0] < 3600 for _, ranges, pdd in legs_read for edge in ranges + list(pdd)), (
                    query, legs_read)
                assert (low, high) != span or legs_read == [], (query, legs_read)
            assert central["totals"]["legs"] > 5, query
            # mos_avg within float rounding: the node adds REAL values (in its roll-ups'
            # or its legs' order), the collector numeric ones, exactly.
            assert _rounded(central) == _rounded(stats.read_stats(node, query)), query
            assert _rounded(central) == _rounded(stats.read_stats(node, query, use_rollups=False)), query
            assert _csv_rounded(stats.csv_text(central)) == _csv_rounded(stats.csv_text(stats.read_stats(node, query)))
        for kind in stats.WORST_KINDS:
            for owner, filters in ((None, ()), ("user-1", codec)):
                query = stats.WorstQuery("acc-a", owner, span[0], span[1], kind, 7, filters)
                expected = node.execute(*stats.worst_sql(query)).fetchall()
                assert expected and [tuple(r) for r in read.worst(query)] == expected, (kind, owner)
        assert read.stats(stats.StatsQuery("acc-a\x00", None, *span, 3600, ()))["totals"]["legs"] == 0
    finally:
        read.close()
        node.close()


def _csv_rounded(text):
    """CSV records, a float's cell rounded as _rounded rounds it."""
    return [[str(_rounded(float(cell))) if "." in cell and not cell.startswith("{") else cell for cell in row]
            for row in csv.reader(io.StringIO(text))]


def _node_and_feed(tmp_path, hour):
    """A node's SQLite file with 40 varied legs over three hours, and its feed."""
    records = []
    for n in range(40):
        when = hour + (n * 271) % (3 * 3600)
        records.append(leg(when, account="acc-a" if n % 5 else "acc-b", duration=30 + n,
                           owner="user-1" if n % 2 else "user-2",
                           call_direction=("inbound", "outbound")[n % 2],
                           hangup_cause=("NORMAL_CLEARING", "USER_BUSY", "LOSE_RACE", None, "NO_ROUTE_DESTINATION")[n % 5],
                           answered_us=0 if n % 3 == 0 else (when - G - 20) * 10**6,
                           billing_seconds=0 if n % 3 == 0 else n,
                           audio_in_mos=(None, 4.41, 3.2, 4.5)[n % 4], no_rtp_in=(None, 0, 1)[n % 3],
                           pdd_ms=(None, 120, 800, 120, 2500)[n % 5],
                           channel_name="loopback/x-a" if n % 11 == 0 else "sofia/internal/1000@example.com"))
    node = store.connect_writer(tmp_path / "node.db")
    store.insert_records(node, records)
    statement, args = sql.feed_sql(params.FeedQuery(0, None))
    lines, previous = [], 0
    for row in node.execute(statement, args):
        lines.append(parse_record(row[0].encode(), previous))
        previous = lines[-1].seq
    return node, lines


def test_migration_4_keys_and_counts_the_rows_already_stored(pg_dsn, tmp_path):
    with psycopg.connect(pg_dsn) as conn:
        with conn.transaction(), conn.cursor() as cur:  # a database of version 3
            cur.execute("CREATE TABLE eslcdr_schema (version integer NOT NULL)")
            cur.execute("INSERT INTO eslcdr_schema VALUES (3)")
            for migration in pgmigrations.MIGRATIONS[:3]:
                migration(cur)
        conn.execute("CREATE TABLE cdrs_y2026m11 PARTITION OF cdrs FOR VALUES FROM ('2026-11-01') TO ('2026-12-01')")
        values = [("acc-a", "inbound", 4.5, None), ("acc-a", "outbound", None, 300), (None, "inbound", 3.1, None),
                  ("acc-b", "outbound", 2.0, 700)]
        items = feed_items(tmp_path, [leg(ts(2026, 11, 3 + n), account=a, call_direction=d, audio_in_mos=m,
                                          pdd_ms=p) for n, (a, d, m, p) in enumerate(values)])
        names = [n for n in pgrollups.SOURCE_NAMES] + ["seq", "id", "call_id"]
        for item in items:
            doc = json.loads(item.line)
            conn.execute("INSERT INTO cdrs (%s, source, hangup_at) VALUES (%s, 'fs1', %%s)" % (
                ", ".join('"%s"' % n for n in names), ", ".join(["%s"] * len(names))),
                [doc.get(n) for n in names] + [item.hangup_at])
            conn.execute("INSERT INTO cdr_keys VALUES (%s, %s, 'fs1')", (item.call_id, item.hangup_at))
        conn.execute("INSERT INTO cdr_keys VALUES ('row-dropped-with-its-month', now(), 'fs1')")
        conn.commit()
        assert pgmigrations.migrate(conn) == 3
        assert sorted(conn.execute("SELECT call_id, account_id FROM cdr_keys").fetchall()) == sorted(
            (item.call_id, a or "") for item, (a, _, _, _) in zip(items, values))
    store_ = PgStore(psycopg.connect(pg_dsn))
    stored, recount = rollups(store_.conn)
    assert stored == recount and sum(r[5] for r in stored[0]) == 3 and len(stored[1]) == 2
    # the stored rows are replaced like any (their old counts out)
    store_.node_state("fs1", "x")
    store_.store_batch("fs1", "db-1", 0, [replayed(items[0], 1, account_id="acc-b", billing_seconds=3)])
    stored, recount = rollups(store_.conn)
    assert stored == recount and sorted(r[0] for r in stored[0]) == ["acc-a", "acc-b", "acc-b"]
    store_.close()


# ------------------------------------------------------------------ the property


def doc_of(call_id, seq, fields, base):
    """A feed record with the fields the roll-ups read."""
    hangup = base + fields["offset"]
    answered = fields["answered"]
    doc = {"seq": seq, "id": "x-" + call_id, "call_id": call_id, "account_id": fields["account"],
           "timestamp": hangup, "hangup_us": (hangup - G) * 10**6, "created_us": (hangup - G - 90) * 10**6,
           "answered_us": (hangup - G - 60) * 10**6 if answered else 0, "call_direction": fields["direction"],
           "hangup_cause": fields["cause"], "billing_seconds": 60 if answered else 0,
           "audio_in_mos": fields["mos"], "no_rtp_in": fields["no_rtp"], "pdd_ms": fields["pdd"],
           "channel_name": "loopback/a" if fields["loopback"] else "sofia/internal/1000"}
    if fields["refused"] == "copy":
        doc["duration_seconds"] = "sixty"
    elif fields["refused"] == "insert":
        del doc["id"]
    return FeedRecord(seq, call_id, doc["hangup_us"], json.dumps(doc).encode())


FIELDS = st.fixed_dictionaries({
    "account": st.sampled_from(["acc-a", "acc-b", None]),
    # three minutes of one hour, one minute of the next month
    "offset": st.sampled_from([0, 59, 60, 150, 40 * 86400]),
    "direction": st.sampled_from(["inbound", "outbound", None]),
    "cause": st.sampled_from(["NORMAL_CLEARING", "USER_BUSY", "LOSE_RACE", None]),
    "answered": st.booleans(),
    "mos": st.sampled_from([None, 4.41, 3.59, 1.3]),
    "no_rtp": st.sampled_from([None, 0, 1]),
    "pdd": st.sampled_from([None, 0, 350, 351]),
    "loopback": st.booleans(),
    "refused": st.sampled_from([None] * 8 + ["copy", "insert"]),
})
# A step: a node's batch of new calls and of calls sent before (by itself:
# a replacement; by the other node: refused, or another leg if created at
# another time), or a db_id change.
ITEM = st.tuples(st.sampled_from(["new", "again"]), st.integers(0, 50), FIELDS)
STEP = st.one_of(st.tuples(st.just("batch"), st.sampled_from(["fs1", "fs2"]), st.lists(ITEM, min_size=1, max_size=6)),
                 st.tuples(st.just("db_id"), st.sampled_from(["fs1", "fs2"]), st.just([])))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(STEP, min_size=1, max_size=10))
def test_rollups_equal_a_recount_after_any_batches(pg, steps):
    conn = pg.conn
    conn.execute("TRUNCATE cdrs, cdr_keys, collector_rejects, stats_minutes, stats_hours, stats_hour_causes, stats_pdd_hours,"
                 " collector_nodes")
    conn.commit()
    base = ts(2026, 11, 10) - (ts(2026, 11, 10) - G) % 3600
    state = {node: {"db_id": "db-0", "after": 0} for node in ("fs1", "fs2")}
    for node in state:
        pg.node_state(node, "http://x")
        pg.touch(node, "db-0")
    sent: list[str] = []  # every call_id sent, by either node
    owner: dict[str, str] = {}  # call_id -> the node whose row is stored
    expected: dict[str, tuple] = {}  # call_id -> (account_id, timestamp) of the stored row
    created_of: dict[str, int] = {}  # call_id -> created_us of the stored row
    for kind, node, items in steps:
        mine = state[node]
        if kind == "db_id":
            new = "db-%d" % (int(mine["db_id"][3:]) + 1)
            pg.restart_node(node, mine["db_id"], new)
            mine.update(db_id=new, after=0)
            continue
        batch, latest = [], {}
        for n, (how, pick, fields) in enumerate(items, 1):
            call_id = sent[pick % len(sent)] if how == "again" and sent else str(uuid.uuid4())
            record = doc_of(call_id, mine["after"] + n, fields, base)
            batch.append(record)
            latest[call_id] = (record, fields)
            if call_id not in sent:
                sent.append(call_id)
        result = pg.store_batch(node, mine["db_id"], mine["after"], batch)
        mine["after"] = batch[-1].seq
        stored_now = 0
        for call_id, (record, fields) in latest.items():
            doc = json.loads(record.line)
            # Another node's call: refused if the same leg (its creation), else
            # another leg, under a key of its own (collector/pgreused.py).
            key = call_id
            if owner.get(call_id, node) != node and created_of[call_id] != doc["created_us"]:
                key = "%s~%d" % (call_id, doc["created_us"])
            if owner.get(key, node) == node and not fields["refused"]:
                owner[key], created_of[key] = node, doc["created_us"]
                expected[key] = (fields["account"] or "", doc["timestamp"])
                stored_now += 1
        assert result.stored == stored_now
        got = dict(((r[0], (r[1], r[2])) for r in conn.execute('SELECT call_id, account_id, "timestamp" FROM cdrs')))
        conn.commit()
        assert got == expected
        stored, recount = rollups(conn)
        assert stored == recount
    # And the KPIs read from them are the legs' (ragged edges, the legs' hour
    # from its minute cells, then from its hour cells).
    directions = ((), params.parse_filters({"filter_call_direction": ["outbound"]}),
                  params.parse_filters({"filter_call_direction": ["inbound"]}))
    for interval, low, filters in itertools.product((60, 3600), (base + 30, base - 30), directions):
        query = stats.StatsQuery("acc-a", None, low, base + 2 * 3600 - 1, interval, filters)
        assert stats.compute(query, stats_rows(conn, query)) == stats.compute(query, stats_rows(conn, query, False))
