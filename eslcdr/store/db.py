"""The SQLite file: opening it (writer or read-only), and the write statements.

There is exactly one writer connection per process (the writer greenlet owns
it); readers open their own read-only connections (``mode=ro``), so a query can
never change data.  WAL mode: readers never block the writer, nor it them.  The
file and its side files are its owner's only (DB_FILE_MODE).  Inserts are a few
multi-row INSERTs per batch (``_insert_many``); every statement that writes rows
brings the KPI roll-ups up to date.  Invariants: ``insert_records`` is idempotent
on the leg (delivered twice it keeps its first row and ``seq``: the collector
never sees it twice; another leg under its call_id: reused.py); a row whose
content changes is never UPDATEd in place: ``rewrite_rows`` and
``replace_records`` delete and insert it again, with a new ``seq``, so the feed
delivers the new version (docs/api.md).  Collector
acknowledgements and ``meta`` go in the same transactions.  The retention
statements (deletes, storage figures) are store/retention.py's.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import stat
import time
from functools import lru_cache, partial
from itertools import chain
from json.encoder import encode_basestring as _json_string
from operator import itemgetter
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import sqlite_utils
import structlog

from .reused import store_reused
from .schema import JSON_COLUMNS, RECORD_COLUMNS, SCHEMA_VERSION, migrate, rollup_insert_statements, schema_version

log = structlog.get_logger(__name__)

AUTO_VACUUM_INCREMENTAL = 2
# The writer's commits checkpoint the WAL into the file once it holds this
# many pages (SQLite's default: 1,000).  A leg dirties ~7 pages (a leaf of
# each index its random keys land in), so the default copied back every
# ~140 legs; a longer WAL copies a page rewritten by many batches once (the
# right edges of the time indexes, the roll-ups, page 1): 12-17 % less
# SQLite CPU a row (bench/README.md, #18).  The WAL file reaches ~8 MB plus
# a batch (4,000 pages: ~16 MB, more than a node's WAL should hold).
WAL_CHECKPOINT_PAGES = 2000

# Rows go in as multi-row INSERTs of up to _PARAMS_PER_STATEMENT values: one
# sqlite3_step per statement instead of per row.  That is a third less CPU
# than executemany, and -- the writer runs in a thread -- each step is one
# release and re-acquisition of the GIL, which under a busy ESL reader costs
# up to the interpreter's switch interval every time.  (SQLite allows 32,766
# parameters per statement since 3.32.)
_PARAMS_PER_STATEMENT = 16384
_MAX_ROWS_PER_STATEMENT = 512
_INSERT_PREFIX = "INSERT INTO cdrs (%s) VALUES " % ", ".join('"%s"' % name for name in RECORD_COLUMNS)
_INSERT_SUFFIX = " ON CONFLICT DO NOTHING"
# A link whose leg is stored with the same interaction (a partner in this
# batch or an earlier one) says nothing the cdrs row does not: it is left out
# (a lookup on the call_id index instead of a write to three b-trees, one of
# them on a random key: ~1 page of the WAL a leg; bench/README.md, #18).
_LINK_PREFIX = ("INSERT OR IGNORE INTO interaction_links (call_id, interaction_id)"
                " SELECT l.column1, l.column2 FROM (VALUES ")
_LINK_SUFFIX = (") AS l WHERE NOT EXISTS (SELECT 1 FROM cdrs"
                " WHERE cdrs.call_id = l.column1 AND cdrs.interaction_id = l.column2)")


@lru_cache(maxsize=32)
def _values_sql(prefix: str, suffix: str, width: int, rows: int) -> str:
    # Built once per shape (a 128-row INSERT is ~18,000 characters).
    one = "(%s)" % ",".join("?" * width)
    return prefix + ",".join([one] * rows) + suffix


def _insert_many(conn: sqlite3.Connection, prefix: str, suffix: str, width: int, rows: Sequence[Sequence]) -> int:
    """Insert ``rows`` in statements of as many rows as fit (a power of
    two), then halving sizes (so at most 10 statement shapes per table are
    ever prepared and cached); returns how many rows were inserted
    (sqlite3_changes)."""
    inserted = 0
    start = 0
    size = _MAX_ROWS_PER_STATEMENT
    while size * width > _PARAMS_PER_STATEMENT:
        size >>= 1
    while start < len(rows):
        while size > len(rows) - start:
            size >>= 1
        chunk = rows[start : start + size]
        params = list(chain.from_iterable(chunk))
        inserted += max(conn.execute(_values_sql(prefix, suffix, width, size), params).rowcount, 0)
        start += size
    return inserted


_ROLLUP_MINUTES_SQL, _ROLLUP_PDD_SQL = rollup_insert_statements()
# The random id minted when the file was created (docs/api.md, the feed's db_id).
DB_ID_SQL = "SELECT value FROM meta WHERE key = 'db_id'"
# The newest seq handed out (AUTOINCREMENT's counter), 0 before any: a
# collector's lag in rows is this minus its cursor.
LAST_SEQ_SQL = "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'cdrs'), 0)"


def _last_seq(conn: sqlite3.Connection) -> int:
    return conn.execute(LAST_SEQ_SQL).fetchone()[0]


def _roll_up_after(conn: sqlite3.Connection, seq: int) -> None:
    """Add the rows written after ``seq`` to the KPI roll-ups (store/schema.py):
    every statement that writes cdrs rows is followed by this, before any
    later statement can rewrite or delete those rows (whose delete trigger
    takes them out again)."""
    conn.execute(_ROLLUP_MINUTES_SQL, (seq,))
    conn.execute(_ROLLUP_PDD_SQL, (seq,))


# The database holds every caller's numbers: readable by its owner only, as
# the spool (store/spool.py).  SQLite creates the -wal and -shm (and -journal)
# files with the mode of the database file, so they follow it.
DB_FILE_MODE = 0o600
# An existing file keeps a group read bit an operator gave it (a reporting
# group); everything else beyond DB_FILE_MODE is taken away.
_DB_KEPT_BITS = 0o640
_SIDE_FILES = ("-wal", "-shm", "-journal")


def _restrict_mode(path: Path) -> None:
    """Create the database file with DB_FILE_MODE whatever the umask
    (SQLite itself would create it 0644 minus the umask), and take access
    for others away from an existing file and its side files (a file made
    by an older eslcdr, or left by a crash, is 0644)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, DB_FILE_MODE)
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode) & _DB_KEPT_BITS | DB_FILE_MODE
        _chmod(path, lambda: os.fchmod(fd, mode))
    finally:
        os.close(fd)
    for suffix in _SIDE_FILES:
        side = Path(str(path) + suffix)
        _chmod(side, lambda: os.chmod(side, mode))


def _chmod(path: Path, change) -> None:
    try:
        current = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    try:
        change()
    except PermissionError as exc:  # not the owner (e.g. an import run by another user)
        log.warning("db_file_mode_unchanged", path=str(path), mode=oct(current), error=exc.strerror)


def _bind_none_directly() -> None:
    """sqlite3 binds int, float and str as they are, but sends every other
    parameter through its adapter protocol first: for None (half of a CDR
    row's 70 values) that is a failed registry look-up and an AttributeError
    built and dropped on the protocol type, ~1 µs a value.  An adapter
    registered for None (itself) is found at the first look-up: ~6 µs less
    a row (bench/README.md, #18).  The registry is the sqlite3 module's,
    process-wide; the adapter changes no value."""
    sqlite3.register_adapter(type(None), _same)


def _same(value: object) -> object:
    return value


def connect_writer(path: str | Path) -> sqlite3.Connection:
    """Open (creating and migrating as needed) the database for writing."""
    path = Path(path)
    if str(path) != ":memory:":
        if path.parent and not path.parent.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
        _restrict_mode(path)
    _bind_none_directly()
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=5.0)
    _incremental_auto_vacuum(conn, path)
    sqlite_utils.Database(conn).enable_wal()
    # NORMAL is durable against a process crash in WAL mode; an OS crash may
    # lose the last transactions, which FreeSWITCH could not resend anyway.
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=5000")
    # REPLACE (row rewrites) deletes the old row: with recursive triggers
    # that delete fires the KPI roll-up trigger too (store/schema.py).
    conn.execute("PRAGMA recursive_triggers=ON")
    # The WAL is reused, not shrunk, after a checkpoint: cap what it keeps
    # after a burst (e.g. a retention run).
    conn.execute("PRAGMA journal_size_limit=%d" % (64 * 1024 * 1024))
    conn.execute("PRAGMA wal_autocheckpoint=%d" % WAL_CHECKPOINT_PAGES)
    _migrate_logged(conn, path)
    # A batch's temporary b-trees (the roll-ups' GROUP BY) in memory, not a
    # file created and deleted in /var/tmp at every commit.  Set after the
    # migrations: a VACUUM or an index build of a big file needs the disk.
    conn.execute("PRAGMA temp_store=MEMORY")
    return conn


def _migrate_logged(conn: sqlite3.Connection, path: Path) -> None:
    """Migrate; a file an older eslcdr wrote is upgraded between two log lines
    (a big one may take minutes, before the daemon says it is ready)."""
    found = schema_version(conn)
    if not 0 < found < SCHEMA_VERSION:
        migrate(conn)  # a new file, or one already current (or newer: refused)
        return
    log.info("schema_migration_begin", db=str(path), found_version=found, version=SCHEMA_VERSION)
    started = time.monotonic()
    migrate(conn)
    log.info("schema_migration_done", db=str(path), found_version=found, version=SCHEMA_VERSION,
             seconds=round(time.monotonic() - started, 2))


def _incremental_auto_vacuum(conn: sqlite3.Connection, path: Path) -> None:
    """auto_vacuum = INCREMENTAL, so pages freed by retention can be given
    back to the file system (``PRAGMA incremental_vacuum``).

    On a new file the setting takes effect when the first table is created.
    A file created without it needs one VACUUM, which rewrites the whole
    file (and needs as much free disk again): done once, logged.
    """
    if conn.execute("PRAGMA auto_vacuum").fetchone()[0] == AUTO_VACUUM_INCREMENTAL:
        return
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    has_tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    if not has_tables:
        return
    size = path.stat().st_size if path.exists() else 0
    log.warning("auto_vacuum_migration_begin", db=str(path), bytes=size)
    started = time.monotonic()
    conn.execute("VACUUM")
    log.warning(
        "auto_vacuum_migration_done",
        db=str(path),
        bytes_before=size,
        bytes_after=path.stat().st_size if path.exists() else 0,
        seconds=round(time.monotonic() - started, 2),
    )


def connect_reader(path: str | Path) -> sqlite3.Connection:
    """Open the database read-only (it must exist)."""
    uri = "file:%s?mode=ro" % Path(path).resolve()
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=5.0)
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("PRAGMA query_only=1")
    return conn


_EMPTY_JSON = {dict: "{}", list: "[]", tuple: "[]"}
# The text of a JSON column: json.dumps(value, ensure_ascii=False,
# sort_keys=True), from one encoder (json.dumps builds a new one per call
# when given options: half of record_row's time).
_json_text = json.JSONEncoder(ensure_ascii=False, sort_keys=True).encode
_JSON_INDEXES = tuple(i for i, name in enumerate(RECORD_COLUMNS) if name in JSON_COLUMNS)
# A record's values in column order (every key present: the CDR builder's
# records; others take the slower path).
_RECORD_VALUES = itemgetter(*RECORD_COLUMNS)


def _json_object_text(value: Mapping) -> str:
    """_json_text of a mapping of strings to strings (a CDR's custom
    variables and headers), the same text at a third less CPU; any other
    value goes to _json_text."""
    try:
        return "{" + ", ".join([_json_string(key) + ": " + _json_string(value[key]) for key in sorted(value)]) + "}"
    except TypeError:  # a key or value that is not a string
        return _json_text(value)


def record_row(record: Mapping[str, object]) -> list:
    """A CDR record (mapping of field -> value) as an INSERT parameter list."""
    try:
        row = list(_RECORD_VALUES(record))
    except KeyError:
        row = list(map(record.get, RECORD_COLUMNS))
    for index in _JSON_INDEXES:
        value = row[index]
        if value is None or isinstance(value, str):
            continue
        if not value:  # most legs have no custom headers: "{}" without json.dumps
            row[index] = _EMPTY_JSON.get(type(value)) or _json_text(value)
        elif type(value) is dict:
            row[index] = _json_object_text(value)
        else:
            row[index] = _json_text(value)
    # sqlite3 stores bool as 0/1 by itself (bool is an int).
    return row


# A rewritten row is deleted and inserted again (REPLACE resolves the
# call_id/id conflict by deleting the old row), so it takes the next seq:
# the feed delivers its new version to collectors that already pulled it.
_REPLACE_SQL = "INSERT OR REPLACE INTO cdrs (%s) VALUES (%s)" % (
    ", ".join('"%s"' % name for name in RECORD_COLUMNS),
    ", ".join("?" for _ in RECORD_COLUMNS),
)

# The latest acknowledgement of a collector token, capped at the highest seq
# ever given: a cursor from another (replaced) database cannot acknowledge
# rows that do not exist yet.
_ACK_SQL = (
    "INSERT INTO collector_acks (token_sha256, acked_seq, first_pull_us, last_pull_us) "
    "VALUES (?1, min(?2, (" + LAST_SEQ_SQL + ")), ?3, ?3) "
    "ON CONFLICT (token_sha256) DO UPDATE SET acked_seq = excluded.acked_seq, last_pull_us = excluded.last_pull_us"
)


_META_SQL = "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value"


def read_meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


def rewrite_rows(
    conn: sqlite3.Connection, where: str, args: Sequence[object], changes: Mapping[str, object]
) -> int:
    """Rewrite stored rows in place of themselves, each with a new ``seq``.

    ``where`` selects the rows (SQL over the cdrs columns, ``?`` parameters
    in ``args``); ``changes`` maps column -> new value.  Every rewrite of a
    stored row must go through here or ``replace_records`` so the feed
    delivers the new version again.  Call inside a transaction; returns the
    number of rows rewritten.  (SQLite materialises a SELECT from the table
    it inserts into before inserting, so the statement sees each old row
    once.)
    """
    unknown = set(changes) - set(RECORD_COLUMNS)
    if unknown:
        raise ValueError("not cdrs columns: %s" % ", ".join(sorted(unknown)))
    columns = ", ".join('"%s"' % name for name in RECORD_COLUMNS)
    select = ", ".join("?" if name in changes else '"%s"' % name for name in RECORD_COLUMNS)
    params = [_column_value(name, changes[name]) for name in RECORD_COLUMNS if name in changes]
    sql = "INSERT OR REPLACE INTO cdrs (%s) SELECT %s FROM cdrs WHERE %s ORDER BY seq" % (columns, select, where)
    before = _last_seq(conn)
    # rowcount (sqlite3_changes) counts the rows this statement wrote: not
    # REPLACE's implicit deletes, nor what triggers (the KPI roll-ups) write.
    written = max(conn.execute(sql, params + list(args)).rowcount, 0)
    _roll_up_after(conn, before)
    return written


# schema.INTERACTION_START's test, in Python.
_KAZOO_SHAPED = re.compile(r"[0-9]{11}-[0-9a-fA-F]")


def _merge_interaction(conn: sqlite3.Connection, old: str, new_id: str) -> None:
    """Move the rows of interaction ``old`` to ``new_id``: they join the
    merged call, which started when the earlier of the two groups did, so
    rows of either group that carry a later start take the earlier one (the
    tracker gives legs written after the merge the same).  The winner's rows
    are rewritten only when the start matters (an id not Kazoo-shaped) and
    they carry one (a row without falls back to its leg's creation)."""
    start = conn.execute(
        "SELECT min(ifnull(interaction_created_us, created_us)) FROM cdrs WHERE interaction_id IN (?, ?)",
        (old, new_id),
    ).fetchone()[0]
    if start is None:
        rewrite_rows(conn, "interaction_id = ?", (old,), {"interaction_id": new_id})
        return
    rewrite_rows(conn, "interaction_id = ?", (old,), {"interaction_id": new_id, "interaction_created_us": start})
    if _KAZOO_SHAPED.match(new_id):
        return  # the list places it by the time in its id: its own rows need no rewrite
    rewrite_rows(conn, "interaction_id = ? AND interaction_created_us > ?", (new_id, start),
                 {"interaction_created_us": start})


def _column_value(name: str, value: object) -> object:
    if name in JSON_COLUMNS and value is not None and not isinstance(value, str):
        return _json_text(value)
    return value


def replace_records(conn: sqlite3.Connection, records: Iterable[Mapping[str, object]]) -> int:
    """Store each record in place of any row with its call_id (or id), with a
    new ``seq`` (e.g. a complete leg from its json_cdr file replacing a row
    written as hangup-not-seen).  Call inside a transaction."""
    rows = [record_row(record) for record in records]
    if not rows:
        return 0
    before = _last_seq(conn)
    written = max(conn.executemany(_REPLACE_SQL, rows).rowcount, 0)  # without trigger writes
    _roll_up_after(conn, before)
    return written


def insert_records(
    conn: sqlite3.Connection,
    records: Iterable[Mapping[str, object]],
    merges: Iterable[tuple[str, str]] = (),
    *,
    replacements: Iterable[Mapping[str, object]] = (),
    acks: Mapping[str, tuple[int, int]] | None = None,
    meta: Mapping[str, str] | None = None,
) -> int:
    """Insert records in one transaction; return how many rows were new.

    Each record's ``call_id`` and its ``links`` (other legs' ids, not a
    column) are remembered in ``interaction_links`` so that a daemon
    restarted mid-call gives the late legs the same interaction id.
    ``merges`` are (old id, new id) pairs: rows written with the old id
    move to the new one (two groups found to be one call), each taking a new
    seq.  ``replacements`` replace the stored row of their call_id (new seq).
    ``acks`` maps a collector token's sha256 (hex) to (acknowledged seq,
    time of the pull in µs).  ``meta`` maps keys of the ``meta`` table to
    new values.
    """
    records = list(records)
    replacements = list(replacements)
    rows = [record_row(record) for record in records]
    links = []
    for record in records + replacements:
        interaction_id = record.get("interaction_id")
        if interaction_id:
            # The leg itself is in cdrs; its partners may not be written yet.
            links.extend((other, interaction_id) for other in record.get("links", ()))
    merges = list(merges)
    ack_rows = [(key, seq, at_us) for key, (seq, at_us) in (acks or {}).items()]
    meta_rows = list((meta or {}).items())
    if not rows and not merges and not replacements and not ack_rows and not meta_rows:
        return 0
    conn.execute("BEGIN IMMEDIATE")
    try:
        new = 0
        if rows:
            before = _last_seq(conn)
            new = _insert_many(conn, _INSERT_PREFIX, _INSERT_SUFFIX, len(RECORD_COLUMNS), rows)
            if new < len(rows):  # duplicates, or legs reusing a stored leg's id (reused.py)
                new += store_reused(conn, rows, partial(_insert_many, conn, _INSERT_PREFIX, _INSERT_SUFFIX, len(RECORD_COLUMNS)))
            if new:
                _roll_up_after(conn, before)
        if replacements:
            replace_records(conn, replacements)
        _insert_many(conn, _LINK_PREFIX, _LINK_SUFFIX, 2, links)
        for old, new_id in merges:
            _merge_interaction(conn, old, new_id)
            conn.execute(
                "UPDATE interaction_links SET interaction_id = ? WHERE interaction_id = ?", (new_id, old)
            )
        if ack_rows:
            conn.executemany(_ACK_SQL, ack_rows)
        if meta_rows:
            conn.executemany(_META_SQL, meta_rows)
    except BaseException:
        # SQLite already rolled back on some errors (SQLITE_FULL): a second
        # ROLLBACK would fail and hide the real error.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return new


def database_id(conn: sqlite3.Connection) -> str:
    """The random id minted when the file was created (docs/api.md, the feed's db_id)."""
    return conn.execute(DB_ID_SQL).fetchone()[0]


def record_ack(path: str | Path, key: str, after: int, at_us: int, busy_timeout_ms: int = 200) -> None:
    """Store one acknowledgement with a short-lived connection (for an API
    running without the daemon's writer).  Waits at most ``busy_timeout_ms``
    for the write lock: the next pull acknowledges again anyway."""
    # mode=rw: never create a missing file (it would be an empty one, 0644).
    conn = sqlite3.connect("file:%s?mode=rw" % Path(path).resolve(), uri=True, isolation_level=None,
                           timeout=busy_timeout_ms / 1000)
    try:
        conn.execute("PRAGMA busy_timeout=%d" % busy_timeout_ms)
        conn.execute(_ACK_SQL, (key, after, at_us))
    finally:
        conn.close()


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


def recent_interaction_starts(conn: sqlite3.Connection, limit: int) -> list[tuple[str, int]]:
    """(interaction id, creation µs of its earliest leg known) of the
    interactions of the newest ``limit`` rows."""
    return conn.execute(
        "SELECT interaction_id, min(ifnull(interaction_created_us, created_us)) FROM"
        " (SELECT interaction_id, interaction_created_us, created_us FROM cdrs"
        " WHERE interaction_id IS NOT NULL ORDER BY seq DESC LIMIT ?) GROUP BY interaction_id",
        (limit,),
    ).fetchall()
