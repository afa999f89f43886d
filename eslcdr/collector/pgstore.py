"""Writing pulled records into PostgreSQL: one transaction per batch.

A batch is the records of one node after its stored cursor, in seq order.
``store_batch`` writes them and moves the node's cursor (``collector_nodes
.after``) in the same transaction, so after a crash PostgreSQL holds either
the rows and the new cursor or neither: the next pull asks for exactly what
is missing.  The node's row is locked first (``FOR UPDATE``) and its cursor
and db_id compared with what the worker believes; a mismatch (a second
collector pulling the same node) aborts the batch with ``CursorMoved``
instead of writing twice.

The rows go in by COPY of the raw feed lines, in one block per batch, into
a temporary table (``call_id, seq, hangup_us, doc json``); set-based SQL
does the rest: ``json_populate_record`` turns each document into a ``cdrs``
row (PostgreSQL parses and converts in C; the collector only checks each
line and reads its seq, call_id and hangup time), then the upsert of
pgschema's header.  bench/collect.py compared this with per-row
``executemany`` INSERTs in pipeline mode and with a typed COPY whose values
are converted in Python: the staged COPY costs the least CPU per row, and
the collector's single Python process does the least of it.

A value PostgreSQL refuses (a string in an integer column, a date out of
range) makes the batch fail with a DataError; the batch is then written one
row at a time under savepoints and each refused record is stored whole in
``collector_rejects`` with the error: nothing is lost, nothing blocks the
node, and an operator can look at it.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Sequence

import psycopg
from psycopg import sql

from .pgschema import EXTRA_COLUMNS, UTC, create_partitions, existing_partitions, month_start, partition_name, sqlite_columns

# PostgreSQL refuses values in these ways; anything else (connection lost,
# serialisation failure) fails the whole batch and is retried.
ROW_ERRORS = (psycopg.errors.DataError, psycopg.errors.IntegrityError)
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)


class CursorMoved(Exception):
    """The node's stored cursor or db_id is not what the worker expected."""


@dataclass(frozen=True, slots=True)
class FeedRecord:
    """One line of a node's feed, checked: its raw JSON and the keys used."""

    seq: int
    call_id: str
    hangup_us: int  # the partition key, µs since the epoch
    line: bytes  # the JSON document as received (UTF-8)

    @property
    def hangup_at(self) -> dt.datetime:
        return EPOCH + dt.timedelta(microseconds=self.hangup_us)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A feed line with a good seq that cannot become a row."""

    seq: int
    call_id: str | None
    error: str
    line: str


@dataclass(frozen=True, slots=True)
class NodeState:
    node: str
    url: str
    db_id: str | None
    after: int
    rows: int
    last_error: str | None


@dataclass(frozen=True, slots=True)
class BatchResult:
    stored: int  # rows inserted or replaced
    moved: int  # rows whose hangup time changed (moved between partitions)
    rejected: int  # records stored in collector_rejects
    after: int


# Hangup times PostgreSQL and the partitions can hold: 1970 .. 9999.
MAX_HANGUP_US = 253_402_300_800_000_000
GREGORIAN_OFFSET = 62_167_219_200
DAY_US = 86_400_000_000


def hangup_micros(hangup_us: object, timestamp: object) -> int | None:
    """The partition key of a record: its hangup time (µs), else its
    Gregorian-seconds ``timestamp``; None when neither is a usable number."""
    if type(hangup_us) is int and 0 < hangup_us < MAX_HANGUP_US:
        return hangup_us
    if type(timestamp) is int and GREGORIAN_OFFSET < timestamp < GREGORIAN_OFFSET + MAX_HANGUP_US // 1_000_000:
        return (timestamp - GREGORIAN_OFFSET) * 1_000_000
    return None


_COPY_ESCAPES = re.compile(rb"[\\\t\n\r]")


def _copy_escape(value: bytes) -> bytes:
    """A value in COPY's text format (backslash, tab, newline, CR escaped)."""
    if _COPY_ESCAPES.search(value) is None:
        return value
    return (
        value.replace(b"\\", b"\\\\").replace(b"\t", b"\\t").replace(b"\n", b"\\n").replace(b"\r", b"\\r")
    )


def copy_block(rows: Sequence[FeedRecord]) -> bytes:
    """The batch as one block of COPY text: call_id, seq, hangup_us, doc."""
    escape = _copy_escape
    return b"".join(
        [b"%s\t%d\t%d\t%s\n" % (escape(r.call_id.encode()), r.seq, r.hangup_us, escape(r.line)) for r in rows]
    )


STAGED_HANGUP_AT = "('epoch'::timestamptz + s.hangup_us * interval '1 microsecond')"
_SQLITE_COLUMNS = [name for name, _ in sqlite_columns()]
_EXTRA_NAMES = [name for name, _, _ in EXTRA_COLUMNS if name != "collected_at"]


def _insert_sql(columns: Sequence[str]) -> sql.Composed:
    names = list(columns) + _EXTRA_NAMES + ["collected_at"]
    select = [sql.SQL("r.{}").format(sql.Identifier(name)) for name in columns]
    select += [
        sql.Placeholder("source"),
        sql.SQL("CASE WHEN r.created_us > 0 THEN 'epoch'::timestamptz + r.created_us * interval '1 microsecond' END"),
        sql.SQL("CASE WHEN r.answered_us > 0 THEN 'epoch'::timestamptz + r.answered_us * interval '1 microsecond' END"),
        sql.SQL(STAGED_HANGUP_AT),
        sql.SQL("now()"),
    ]
    updates = [
        sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(name))
        for name in names
        if name not in ("call_id", "hangup_at")
    ]
    return sql.SQL(
        "INSERT INTO cdrs ({cols}) SELECT {select} FROM _staged AS s,"
        " json_populate_record(NULL::cdrs, s.doc) AS r {where} ORDER BY s.call_id"
        " ON CONFLICT (call_id, hangup_at) DO UPDATE SET {updates}"
    ).format(
        cols=sql.SQL(", ").join(sql.Identifier(n) for n in names),
        select=sql.SQL(", ").join(select),
        where=sql.SQL("{where}"),
        updates=sql.SQL(", ").join(updates),
    )


class PgStore:
    """One worker's PostgreSQL connection (not shared between greenlets)."""

    def __init__(self, conn: psycopg.Connection, columns: Sequence[str] | None = None) -> None:
        self.conn = conn
        columns = list(columns or _SQLITE_COLUMNS)
        template = _insert_sql(columns).as_string(conn)
        self._insert_all = template.replace("{where}", "")
        self._insert_one = template.replace("{where}", "WHERE s.seq = %(seq)s")
        self._partitions: set[str] = set()
        conn.execute(
            "CREATE TEMPORARY TABLE IF NOT EXISTS _staged (call_id text NOT NULL, seq bigint NOT NULL,"
            " hangup_us bigint NOT NULL, doc json NOT NULL) ON COMMIT DELETE ROWS"
        )
        conn.commit()

    @classmethod
    def connect(cls, dsn: str, connect_timeout: float = 10.0, application_name: str = "eslcdr-collect") -> "PgStore":
        conn = psycopg.connect(
            dsn, connect_timeout=max(1, int(connect_timeout)), application_name=application_name
        )
        return cls(conn)

    def close(self) -> None:
        self.conn.close()

    # -- node state --------------------------------------------------------
    def node_state(self, node: str, url: str) -> NodeState:
        """The node's stored cursor (a new node starts at 0)."""
        with self.conn.transaction():
            self.conn.execute(
                "INSERT INTO collector_nodes (node, url) VALUES (%s, %s)"
                " ON CONFLICT (node) DO UPDATE SET url = EXCLUDED.url",
                (node, url),
            )
            row = self.conn.execute(
                "SELECT node, url, db_id, after, rows, last_error FROM collector_nodes WHERE node = %s", (node,)
            ).fetchone()
        return NodeState(*row)

    def restart_node(self, node: str, old_db_id: str | None, new_db_id: str) -> None:
        """The node's database is a new file: start it again from seq 0."""
        with self.conn.transaction():
            updated = self.conn.execute(
                "UPDATE collector_nodes SET db_id = %s, after = 0, restarts = restarts + 1"
                " WHERE node = %s AND db_id IS NOT DISTINCT FROM %s",
                (new_db_id, node, old_db_id),
            ).rowcount
            if updated != 1:
                raise CursorMoved("node %s: db_id changed under us" % node)

    def record_error(self, node: str, error: str | None) -> None:
        with self.conn.transaction():
            self.conn.execute(
                "UPDATE collector_nodes SET last_error = %s, last_pull_at = now() WHERE node = %s",
                (error[:2000] if error else None, node),
            )

    def touch(self, node: str, db_id: str) -> None:
        """A pull that brought nothing new: the node is reachable (and its
        database id is known from the first contact on)."""
        with self.conn.transaction():
            self.conn.execute(
                "UPDATE collector_nodes SET last_pull_at = now(), last_error = NULL,"
                " db_id = COALESCE(db_id, %s) WHERE node = %s",
                (db_id, node),
            )

    # -- partitions --------------------------------------------------------
    def ensure_months(self, records: Sequence[FeedRecord]) -> None:
        days = {r.hangup_us // DAY_US for r in records}
        months = {month_start(EPOCH + dt.timedelta(days=day)) for day in days}
        missing = {m for m in months if partition_name(m) not in self._partitions}
        if not missing:
            return
        self._partitions = existing_partitions(self.conn)
        self.conn.commit()
        missing = {m for m in missing if partition_name(m) not in self._partitions}
        if missing:
            self._partitions.update(create_partitions(self.conn, missing))

    # -- the batch ---------------------------------------------------------
    def store_batch(
        self, node: str, db_id: str, expected_after: int, items: Sequence[FeedRecord | Rejected]
    ) -> BatchResult:
        """Upsert the records, keep the rejects, move the cursor to the last seq."""
        if not items:
            return BatchResult(0, 0, 0, expected_after)
        # One row per call: a leg rewritten twice within one batch keeps its
        # newest version (the feed sends them in seq order).
        latest: dict[str, FeedRecord] = {}
        refused: list[Rejected] = []
        for item in items:
            if isinstance(item, FeedRecord):
                latest[item.call_id] = item
            else:
                refused.append(item)
        rows = list(latest.values())
        new_after = items[-1].seq
        self.ensure_months(rows)
        conn = self.conn
        with conn.transaction():
            found = conn.execute(
                "SELECT db_id, after FROM collector_nodes WHERE node = %s FOR UPDATE", (node,)
            ).fetchone()
            if found is None or found[1] != expected_after or (found[0] is not None and found[0] != db_id):
                raise CursorMoved(
                    "node %s: stored cursor %r, expected (%s, %d)" % (node, found, db_id, expected_after)
                )
            with conn.cursor() as cur:
                with cur.copy("COPY _staged (call_id, seq, hangup_us, doc) FROM STDIN") as copy:
                    copy.write(copy_block(rows))
                moved = self._delete_moved(cur)
                cur.execute(
                    "INSERT INTO cdr_keys (call_id, hangup_at) SELECT s.call_id, " + STAGED_HANGUP_AT +
                    " FROM _staged AS s ORDER BY s.call_id ON CONFLICT (call_id) DO UPDATE SET hangup_at = EXCLUDED.hangup_at"
                    " WHERE cdr_keys.hangup_at <> EXCLUDED.hangup_at"
                )
                rejected = len(refused)
                for item in refused:
                    reject(cur, node, db_id, item.seq, item.call_id, item.error, item.line)
                stored = 0
                if rows:
                    try:
                        with conn.transaction():
                            cur.execute(self._insert_all, {"source": node})
                            stored = cur.rowcount
                    except ROW_ERRORS:
                        stored, bad = self._one_by_one(cur, node, db_id, rows)
                        rejected += bad
                cur.execute(
                    "UPDATE collector_nodes SET after = %s, db_id = %s, rows = rows + %s,"
                    " last_pull_at = now(), last_error = NULL WHERE node = %s",
                    (new_after, db_id, stored, node),
                )
        return BatchResult(stored, moved, rejected, new_after)

    def _delete_moved(self, cur: psycopg.Cursor) -> int:
        # Rows stored under another hangup time live in another partition:
        # the upsert below would not see them.  Rare (a written-off leg
        # replaced by its real record), so one DELETE per row is fine.
        cur.execute(
            "SELECT k.call_id, k.hangup_at FROM cdr_keys AS k JOIN _staged AS s USING (call_id)"
            " WHERE k.hangup_at <> " + STAGED_HANGUP_AT
        )
        moved = cur.fetchall()
        if moved:
            cur.executemany("DELETE FROM cdrs WHERE call_id = %s AND hangup_at = %s", moved)
        return len(moved)

    def _one_by_one(
        self, cur: psycopg.Cursor, node: str, db_id: str, rows: Sequence[FeedRecord]
    ) -> tuple[int, int]:
        stored = rejected = 0
        for record in rows:
            try:
                with self.conn.transaction():
                    cur.execute(self._insert_one, {"source": node, "seq": record.seq})
                    stored += cur.rowcount
            except ROW_ERRORS as exc:
                rejected += 1
                cur.execute("DELETE FROM cdr_keys WHERE call_id = %s AND NOT EXISTS"
                            " (SELECT 1 FROM cdrs WHERE call_id = %s)", (record.call_id, record.call_id))
                reject(cur, node, db_id, record.seq, record.call_id, str(exc).strip(),
                       record.line.decode("utf-8", "replace"))
        return stored, rejected


def reject(cur: psycopg.Cursor, node: str, db_id: str | None, seq: int | None, call_id: str | None,
           error: str, line: str) -> None:
    """Keep a record PostgreSQL (or the collector's checks) refused."""
    line = line.replace("\x00", "\\u0000")  # text cannot hold NUL
    cur.execute(
        "INSERT INTO collector_rejects (node, db_id, seq, call_id, error, record) VALUES (%s, %s, %s, %s, %s, %s)",
        (node, db_id, seq, call_id, error[:2000], line),
    )
