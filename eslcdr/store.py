"""The SQLite file: opening it (writer or read-only), and batched inserts.

There is exactly one writer connection per process (the writer greenlet owns
it); readers open their own read-only connections (``mode=ro``), so a query
can never change data.  The file is in WAL mode, so readers never block the
writer and the writer never blocks readers.

Schema work (WAL, tables, indexes) goes through sqlite-utils; the insert
path is one ``executemany`` per batch, the cheapest way to write many rows.

``insert_records`` is idempotent on ``call_id``: a leg delivered twice (a
duplicate HANGUP_COMPLETE, a replayed capture, a re-imported json_cdr file)
keeps its first row and its ``seq``, so the collector never sees it twice.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Iterable, Mapping

import sqlite_utils

from .schema import JSON_COLUMNS, RECORD_COLUMNS, migrate

_INSERT_SQL = "INSERT INTO cdrs (%s) VALUES (%s) ON CONFLICT DO NOTHING" % (
    ", ".join('"%s"' % name for name in RECORD_COLUMNS),
    ", ".join("?" for _ in RECORD_COLUMNS),
)


def connect_writer(path: str | Path) -> sqlite3.Connection:
    """Open (creating and migrating as needed) the database for writing."""
    path = Path(path)
    if str(path) != ":memory:" and path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=5.0)
    sqlite_utils.Database(conn).enable_wal()
    # NORMAL is durable against a process crash in WAL mode; an OS crash may
    # lose the last transactions, which FreeSWITCH could not resend anyway.
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=5000")
    migrate(conn)
    return conn


def connect_reader(path: str | Path) -> sqlite3.Connection:
    """Open the database read-only (it must exist)."""
    uri = "file:%s?mode=ro" % Path(path).resolve()
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=5.0)
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("PRAGMA query_only=1")
    return conn


_JSON_INDEXES = tuple(i for i, name in enumerate(RECORD_COLUMNS) if name in JSON_COLUMNS)


def record_row(record: Mapping[str, object]) -> list:
    """A CDR record (mapping of field -> value) as an INSERT parameter list."""
    get = record.get
    row = [get(name) for name in RECORD_COLUMNS]
    for index in _JSON_INDEXES:
        value = row[index]
        if value is not None and not isinstance(value, str):
            row[index] = json.dumps(value, ensure_ascii=False, sort_keys=True)
    # sqlite3 stores bool as 0/1 by itself (bool is an int).
    return row


_LINK_SQL = "INSERT OR IGNORE INTO interaction_links (call_id, interaction_id) VALUES (?, ?)"


def insert_records(
    conn: sqlite3.Connection,
    records: Iterable[Mapping[str, object]],
    merges: Iterable[tuple[str, str]] = (),
) -> int:
    """Insert records in one transaction; return how many rows were new.

    Each record's ``call_id`` and its ``links`` (other legs' ids, not a
    column) are remembered in ``interaction_links`` so that a daemon
    restarted mid-call gives the late legs the same interaction id.
    ``merges`` are (old id, new id) pairs: rows written with the old id
    move to the new one (two groups found to be one call).
    """
    records = list(records)
    rows = [record_row(record) for record in records]
    links = []
    for record in records:
        interaction_id = record.get("interaction_id")
        if interaction_id:
            # The leg itself is in cdrs; its partners may not be written yet.
            links.extend((other, interaction_id) for other in record.get("links", ()))
    merges = list(merges)
    if not rows and not merges:
        return 0
    conn.execute("BEGIN IMMEDIATE")
    try:
        before = conn.total_changes
        conn.executemany(_INSERT_SQL, rows)
        new = conn.total_changes - before
        conn.executemany(_LINK_SQL, links)
        for old, new_id in merges:
            conn.execute("UPDATE cdrs SET interaction_id = ? WHERE interaction_id = ?", (new_id, old))
            conn.execute(
                "UPDATE interaction_links SET interaction_id = ? WHERE interaction_id = ?", (new_id, old)
            )
    except BaseException:
        # SQLite already rolled back on some errors (SQLITE_FULL): a second
        # ROLLBACK would fail and hide the real error.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return new


def recent_interaction_links(conn: sqlite3.Connection, limit: int) -> list[tuple[str, str]]:
    """The newest (call id, interaction id) pairs of written legs and of the
    legs they named, oldest first."""
    links = conn.execute(
        "SELECT call_id, interaction_id FROM interaction_links ORDER BY rowid DESC LIMIT ?", (limit,)
    ).fetchall()
    legs = conn.execute(
        "SELECT call_id, interaction_id FROM cdrs WHERE interaction_id IS NOT NULL ORDER BY seq DESC LIMIT ?",
        (limit,),
    ).fetchall()
    rows = links + legs
    rows.reverse()
    return rows
