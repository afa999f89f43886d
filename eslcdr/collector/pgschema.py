"""The collector's PostgreSQL schema: columns, key expressions, monthly partitions.

``cdrs``: every SQLite column (JSON as jsonb, ``fax_success`` boolean, ``seq`` the node's) plus
``source``, ``created_at`` / ``answered_at`` / ``hangup_at``, ``collected_at``; ``PARTITION BY
RANGE (hangup_at)``, one partition per UTC month, no DEFAULT, each created outside any explicit
transaction under a session advisory lock, at most ``max_new_partitions`` a day per node.
Citus-ready (docs/collector.md): every unique key of cdrs and of the tables co-located with it
holds ``account_id``, never NULL (NO_ACCOUNT); cdrs' is ``(account_id, call_id, hangup_at)``.
``cdr_keys (call_id PRIMARY KEY, account_id, hangup_at, source)`` keeps call_id unique over the
fleet, says where each call's row lives and which node owns it (pgstore.py).
The migrations that build and change these tables: pgmigrations.py.
"""

from __future__ import annotations

import datetime as dt
from typing import Iterable

import psycopg
from psycopg import sql

from ..store.schema import COLUMNS, JSON_COLUMNS

UTC = dt.timezone.utc
# Advisory lock key (arbitrary, fixed) of partition creation (pgmigrations: the migrations').
LOCK_PARTITION = 0x65736C02
MONTHS_AHEAD = 2

# Columns the collector adds beside the SQLite ones.
EXTRA_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("source", "text NOT NULL", "the collector's `[node:NAME]` the row was pulled from"),
    ("created_at", "timestamptz", "`created_us` as a time"),
    ("answered_at", "timestamptz", "`answered_us` as a time; NULL when never answered"),
    ("hangup_at", "timestamptz NOT NULL", "`hangup_us` as a time (the partition key)"),
    ("collected_at", "timestamptz NOT NULL DEFAULT now()", "when the collector stored this version of the row"),
)


def pg_type(name: str, sqltype: str) -> str:
    """The PostgreSQL type of a SQLite column.

    INTEGER -> ``bigint``, REAL -> ``double precision``, TEXT -> ``text``, the
    JSON columns -> ``jsonb``, ``fax_success`` -> ``boolean`` (the feed sends
    it as one).
    """
    if name == "seq":
        return "bigint NOT NULL"
    if name in JSON_COLUMNS:
        return "jsonb"
    if name == "fax_success":
        return "boolean"
    base = sqltype.split()[0].upper()
    kind = {"INTEGER": "bigint", "REAL": "double precision", "TEXT": "text"}.get(base, "text")
    if "NOT NULL" in sqltype.upper():
        kind += " NOT NULL"
    return kind


def sqlite_columns() -> list[tuple[str, str]]:
    """(name, PG type) of every SQLite column, in the SQLite order."""
    return [(name, pg_type(name, sqltype)) for name, sqltype, _ in COLUMNS]


def _ident(name: str) -> sql.Identifier:
    return sql.Identifier(name)


# cdrs.account_id of a leg without an account (NULL on the node).
NO_ACCOUNT = ""
# The SIP Call-IDs cdrs_sip_call_id holds: at most this many bytes (a btree
# index row holds 2,704; a caller's Call-ID has no bound but the message's).
# A longer one is stored, in no index, and joins no node's legs.
INDEXED_SIP_CALL_ID = "octet_length(%ssip_call_id) <= 1024"


def micros_at(expr: str) -> str:
    """SQL: the timestamptz of ``expr`` microseconds since the Unix epoch."""
    return "'epoch'::timestamptz + %s * interval '1 microsecond'" % expr


# A staged row's (``_staged AS s``, pgstore.py) key columns as cdrs stores them.
STAGED_HANGUP_AT = "(%s)" % micros_at("s._hangup_us")
STAGED_ACCOUNT = "coalesce(s.account_id, '%s')" % NO_ACCOUNT


# ---------------------------------------------------------------- partitions


def month_start(when: dt.datetime) -> dt.date:
    return dt.date(when.year, when.month, 1)


def next_month(month: dt.date) -> dt.date:
    return dt.date(month.year + (month.month == 12), month.month % 12 + 1, 1)


def partition_name(month: dt.date) -> str:
    return "cdrs_y%04dm%02d" % (month.year, month.month)


def existing_partitions(conn: psycopg.Connection) -> set[str]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'cdrs'"
        " AND p.relnamespace = current_schema()::regnamespace"
    ).fetchall()
    return {row[0] for row in rows}


def create_partitions(conn: psycopg.Connection, months: Iterable[dt.date]) -> list[str]:
    """Create the monthly partitions that do not exist yet (own transaction)."""
    return create_partitions_for(conn, months)[0]


def create_partitions_for(
    conn: psycopg.Connection, months: Iterable[dt.date], node: str | None = None, limit: int | None = None
) -> tuple[list[str], set[dt.date]]:
    """Create the missing monthly partitions among ``months``, for ``node``
    (None: ahead of need), at most ``limit`` a day for that node, newest
    first.  Returns (created, the months refused by the limit).

    Outside any explicit transaction (Citus distributes a new partition of a
    distributed table only then): ``conn`` must be idle; each statement
    commits on its own, under a session advisory lock.  A partition made
    and not yet written down (a crash in between) is found existing next
    time; it only does not count against its node."""
    months = sorted(set(months), reverse=True)
    if not months:
        return [], set()
    created: list[str] = []
    refused: set[dt.date] = set()
    conn.autocommit = True
    try:
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_PARTITION,))
        try:
            have = existing_partitions(conn)
            allowed = None
            if node is not None and limit is not None:
                used = conn.execute(
                    "SELECT count(*) FROM collector_partitions WHERE node = %s AND created_at > now() - interval '1 day'",
                    (node,),
                ).fetchone()[0]
                allowed = max(0, limit - used)
            for month in months:
                name = partition_name(month)
                if name in have:
                    continue
                if allowed is not None and len(created) >= allowed:
                    refused.add(month)
                    continue
                start = dt.datetime(month.year, month.month, 1, tzinfo=UTC)
                nxt = next_month(month)
                end = dt.datetime(nxt.year, nxt.month, 1, tzinfo=UTC)
                conn.execute(
                    sql.SQL("CREATE TABLE IF NOT EXISTS {} PARTITION OF cdrs FOR VALUES FROM ({}) TO ({})").format(
                        _ident(name), sql.Literal(start), sql.Literal(end)
                    )
                )
                # EXCLUDED.created_at (the column's default), not now(): Citus
                # refuses a non-IMMUTABLE function in DO UPDATE SET.
                conn.execute(
                    "INSERT INTO collector_partitions (name, node) VALUES (%s, %s)"
                    " ON CONFLICT (name) DO UPDATE SET node = EXCLUDED.node, created_at = EXCLUDED.created_at",
                    (name, node),
                )
                created.append(name)
        finally:
            if not conn.closed:  # a lost session has let go of it
                conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_PARTITION,))
    finally:
        if not conn.closed:
            conn.autocommit = False
    return sorted(created), refused


def ensure_partitions(conn: psycopg.Connection, now: dt.datetime, ahead: int = MONTHS_AHEAD) -> list[str]:
    """The current month's partition and ``ahead`` more.

    Created ahead of need; a batch holding a row of a month without a
    partition (an old backfilled call) creates it on demand first
    (``create_partitions_for``).  There is no DEFAULT partition: a default
    would have to be scanned, and would make creating later months fail when
    it held rows.
    """
    month = month_start(now)
    months = [month]
    for _ in range(ahead):
        month = next_month(month)
        months.append(month)
    return create_partitions(conn, months)
