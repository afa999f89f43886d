"""The central read side's statements read an index in their own order (real
PostgreSQL, schema version 7): a listing's first page never sorts the
account's rows, a detail or legs lookup never scans a table.  The planner is
told to avoid sequential scans and sorts (on a small table it would rightly
prefer them), so a plan that still holds one means no index can serve it --
e.g. the interaction start of pgquery.START no longer spelled as the index's."""

from __future__ import annotations

import re

import psycopg
import pytest

from eslcdr.collector import pgmigrations, pgquery
from eslcdr.collector.pgstore import PgStore
from eslcdr.query.params import KIND_CDRS, KIND_INTERACTIONS, ListQuery

from tests.unit.api.test_api import ACC_A, NOW_G, leg
from tests.unit.collector.test_collector_store import feed_items


@pytest.fixture
def conn(tmp_path, pg_dsn):
    conn = psycopg.connect(pg_dsn, autocommit=True)
    pgmigrations.migrate(conn)
    store = PgStore(conn)
    records = [leg(NOW_G - 60 * i, owner="user-%d" % (i % 3)) for i in range(30)]
    records += [leg(NOW_G - 30, interaction="not-kazoo-shaped-%d" % i) for i in range(3)]
    store.node_state("fs-a", "http://127.0.0.1:1")
    store.store_batch("fs-a", "db-a", 0, feed_items(tmp_path, records))
    conn.autocommit = True
    conn.execute("ANALYZE cdrs")
    for setting in ("enable_seqscan", "enable_sort", "enable_incremental_sort", "enable_hashjoin", "enable_material"):
        conn.execute("SET %s = off" % setting)
    yield conn
    conn.close()


def plan(conn, sql_args) -> str:
    sql, args = sql_args
    return "\n".join(row[0] for row in conn.execute("EXPLAIN " + sql, args).fetchall())


def listing(kind, owner, ascending, cursor=None):
    return ListQuery(kind=kind, account_id=ACC_A, owner_id=owner, created_from=NOW_G - 86400, created_to=NOW_G,
                     ascending=ascending, page_size=50, cursor=cursor, filters=(), utc_offset=0)


@pytest.mark.parametrize("ascending", [False, True])
@pytest.mark.parametrize("kind, owner, index", [
    (KIND_CDRS, None, "account_id_timestamp_seq_source_idx"),
    (KIND_CDRS, "user-1", "account_id_owner_id_timestamp_seq_source_idx"),
    # The central interaction id is a stored column (schema 7), the start
    # spelled over it: no look-up in interaction_aliases per row, no sort.
    (KIND_INTERACTIONS, None, "account_id_case_central_id_idx"),
    (KIND_INTERACTIONS, "user-1", "account_id_owner_id_case_central_id_idx"),
])
def test_a_first_page_reads_its_index_in_order_without_sorting(conn, kind, owner, index, ascending):
    text = plan(conn, pgquery.list_sql(listing(kind, owner, ascending)))
    assert index in text, text
    assert "->  Sort" not in text and not text.startswith("Sort"), text
    assert "Seq Scan" not in text, text
    # a following chunk (keyset position) reads the same index
    position = [NOW_G - 600, 5, "[node:fs-a]"] if kind == KIND_CDRS else [NOW_G, "zz"]
    text = plan(conn, pgquery.list_sql(listing(kind, owner, ascending), after=position))
    assert index in text and "Seq Scan" not in text and "->  Sort" not in text, text


def test_detail_and_legs_look_rows_up_by_index(conn):
    row = conn.execute("SELECT id, call_id, interaction_id FROM cdrs LIMIT 1").fetchone()
    for sql_args in (pgquery.detail_sql(ACC_A, row[0]), pgquery.detail_sql(ACC_A, row[1]),
                     pgquery.legs_sql(ACC_A, row[2]), pgquery.legs_sql(ACC_A, row[0])):
        text = plan(conn, sql_args)
        assert "Seq Scan" not in text, text
    # By CDR id through the primary key (its call_id): schema 9 has no index on id.
    for sql_args in (pgquery.detail_sql(ACC_A, row[0]), pgquery.legs_sql(ACC_A, row[0])):
        assert "_pkey" in plan(conn, sql_args), plan(conn, sql_args)


def test_cdrs_has_exactly_the_documented_indexes(conn):
    """Each index of cdrs costs every stored row: docs/collector.md names each
    one and the statement it serves (schema 9 dropped those no statement needs:
    a detail by CDR id reads the primary key)."""
    from pathlib import Path

    page = (Path(__file__).resolve().parents[3] / "docs" / "collector.md").read_text()
    documented = set(re.findall(r"^\| `(cdrs_\w+)[ `,]", page, re.M))
    rows = conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'cdrs'"
                        " AND schemaname = current_schema()").fetchall()
    assert {name for name, _ in rows} == documented
    owner_list = dict(rows)["cdrs_owner_list"]
    assert "WHERE (owner_id IS NOT NULL)" in owner_list, owner_list
