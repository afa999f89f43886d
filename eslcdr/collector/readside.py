"""The central read side: ``api.readside.ReadSide`` over the collector's PostgreSQL.

``PgReadSide`` answers what ``api.sqlite.SqliteReadSide`` answers on a node, for every
node's rows: listings (``pgquery``) come back as the node's listing rows (JSON's with
their node, ``source``; a CSV export's without), rendered by the one implementation of
the Kazoo shapes (``query.kazoo``, ``query.list_csv``); a full record by
``kazoo.record_sql`` in an in-memory SQLite table holding the row as the node stores it:
the same text, byte for byte, then in JSON ``central_interaction_id`` where it differs
from the node's id (``pginteractions``) and ``source`` (its node).
Connections: at most ``POOL_SIZE``, read-only, autocommit (a snapshot a statement),
``statement_timeout`` on each, waiting by ``cooperative_wait``; a cancelled statement is
``StatementTimeout``, any other failure ``DatastoreError`` (the DSN's password redacted).
Long reads are keyset chunks, one statement each (an export's next one read while the
previous one is rendered in pieces).  KPIs (``stats``) read the roll-ups (``pgrollups``)
and the legs only where the node reads legs (``stats.split``; a direction filter reads roll-ups).
"""

from __future__ import annotations

import dataclasses
import json
import re
import select
import sqlite3
import time
from typing import Any, Callable, ContextManager, Iterator, Sequence, TypeVar

import gevent
import gevent.monkey
import gevent.queue
import gevent.socket
import orjson
import psycopg

from ..api.core import ApiError
from ..keepalive import libpq_keepalive
from ..query.kazoo import SOURCE_COLUMNS, record_sql
from ..query.params import KIND_INTERACTIONS, FeedQuery, ListQuery, NodeSeq
from ..query.pool import HeavyLane, is_heavy
from ..query.reader import DatastoreError, StatementTimeout
from ..query.stats import StatsQuery, WorstQuery, compute, split
from ..store.db import record_row
from ..store.schema import COLUMN_NAMES, COLUMNS, JSON_COLUMNS, RECORD_COLUMNS
from . import pgquery, pgrollups

T = TypeVar("T")

POOL_SIZE = 8  # PostgreSQL connections of the API at most
CHUNK = 1000  # rows per statement of a streamed listing
# Rows per statement of a CSV export: fewer statements (and waits) a row, ~1 µs a row
# less of this process's CPU than CHUNK's; two chunks of rows in memory at most (~8 MB).
EXPORT_CHUNK = 2500
# Rows an export hands the renderer at a time (PgBatches' pieces): ~1 µs a row less
# of this process's CPU than whole 2,500-row chunks (bench/README.md); between two
# pieces the chunk ahead reads what PostgreSQL sent, and other requests run.
RENDER_ROWS = 250
# The pause between two pieces: a timer, so the hub's loop turns once and polls its
# I/O first (sleep(0) may run the export again before polling; gevent.idle waits for
# a loop with nothing to do, which a busy collector may not have).
_TURN = 1e-5
_N_SOURCE = len(SOURCE_COLUMNS)
_CCV = SOURCE_COLUMNS.index("custom_channel_vars")
_TIMESTAMP = SOURCE_COLUMNS.index("timestamp")  # a CDR listing's key
_FAX = COLUMN_NAMES.index("fax_success")
_IID = COLUMN_NAMES.index("interaction_id")
_WIDTH = len(COLUMN_NAMES)
# A value after a key that is not a string (a string may match too: slower, not wrong).
_NOT_A_STRING = re.compile(r'"\s*:\s*[^"\s]')
_IDLE = psycopg.pq.TransactionStatus.IDLE
_MEMORY_TABLE = "CREATE TABLE cdrs (%s)" % ", ".join(
    '"%s" %s' % (name, sqltype.split()[0]) for name, sqltype, _ in COLUMNS)
_MEMORY_INSERT = "INSERT INTO cdrs VALUES (%s)" % ", ".join("?" * len(COLUMN_NAMES))


def unmatchable(*texts: str | None) -> bool:
    """Whether a value holds a NUL: PostgreSQL text never does, so no row matches
    (and PostgreSQL would refuse the parameter)."""
    return any(text is not None and "\x00" in text for text in texts)


def not_served(route: str) -> ApiError:
    return ApiError(501, "not_implemented", {"message": "%s is not served by the collector yet" % route})


def stored_json(name: str, value: Any) -> Any:
    """A JSON column's value as the node's SQLite file holds it (``record_row``'s text)."""
    return record_row({name: value})[RECORD_COLUMNS.index(name)]


_POLL = gevent.monkey.get_original("select", "poll")  # poll(2) itself, not gevent's
_MASKS = {psycopg.waiting.WAIT_R: select.POLLIN, psycopg.waiting.WAIT_W: select.POLLOUT,
          psycopg.waiting.WAIT_RW: select.POLLIN | select.POLLOUT}
WAITS = {psycopg.waiting.WAIT_R: gevent.socket.wait_read, psycopg.waiting.WAIT_W: gevent.socket.wait_write,
         psycopg.waiting.WAIT_RW: gevent.socket.wait_readwrite}


def cooperative_wait(gen: Any, fileno: int, interval: float, limit: float | None = None) -> Any:
    """Run psycopg's generator ``gen`` on the socket ``fileno`` as its wait under
    gevent does (the other greenlets run while the socket is not ready), with
    less CPU: a poll(2) that does not block asks the socket first, and only when
    nothing is there does the greenlet wait in gevent's hub (at most ``interval``
    seconds a time, then psycopg is told nothing came, as its own wait does).  Past ``limit``
    seconds: StatementTimeout (a server alive but not enforcing its statement_timeout)."""
    deadline = None if limit is None else time.monotonic() + limit
    poller = _POLL()
    try:
        state = next(gen)
        poller.register(fileno, _MASKS[state])
        while True:
            events = poller.poll(0)
            if not events:
                if deadline is not None and time.monotonic() > deadline:
                    raise StatementTimeout("no answer from PostgreSQL within %.1f s" % limit)
                try:
                    WAITS[state](fileno, timeout=interval)
                except TimeoutError:
                    pass
                events = poller.poll(0)
            ready = 0
            if events:
                event = events[0][1]
                ready = (psycopg.waiting.READY_R if event & select.POLLIN else 0) | \
                    (psycopg.waiting.READY_W if event & select.POLLOUT else 0)
                if not ready:  # POLLHUP, POLLERR or POLLNVAL alone
                    raise psycopg.OperationalError("connection socket closed")
            state = gen.send(ready)
            poller.modify(fileno, _MASKS[state])
    except StopIteration as end:
        return end.value


class GreenConnection(psycopg.Connection):
    """A connection waiting by ``cooperative_wait``: a listing chunk of 1,000 rows
    comes in ~40 reads of libpq's 16 kB buffer and, with an export's next chunk
    read ahead, most of them are already there; psycopg's own wait under gevent
    takes a hub round trip for each (~1 µs a row).  A wait with a ``timeout`` is
    psycopg's own."""

    limit: float | None = None  # seconds one wait may take (PgPool's: past its statement timeout)

    def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
        if timeout is not None or interval is None:
            return super().wait(gen, interval, timeout)
        return cooperative_wait(gen, self.pgconn.socket, interval, self.limit)


class PgPool:
    """At most ``size`` connections, opened on demand; a waiter gets one
    within ``timeout`` seconds or a StatementTimeout."""

    def __init__(self, dsn: str, statement_timeout: float, connect_timeout: float, size: int,
                 redact: Callable[[str], str]) -> None:
        self._dsn = dsn
        self._options = "-c statement_timeout=%d -c default_transaction_read_only=on" % int(statement_timeout * 1000)
        self._connect_timeout = max(1, int(connect_timeout))
        self.timeout = statement_timeout
        self._idle: list[psycopg.Connection] = []
        self._slots = gevent.queue.Queue(size)
        for _ in range(size):
            self._slots.put_nowait(None)
        self.redact = redact
        self._closed = False

    def _open(self) -> psycopg.Connection:
        conn = GreenConnection.connect(self._dsn, autocommit=True, connect_timeout=self._connect_timeout,
                                       options=self._options, application_name="eslcdr-collect-api",
                                       **libpq_keepalive())  # a server gone silent: keepalive.py
        conn.limit = 2 * self.timeout + 1.0  # a server alive that lets a statement run on
        return conn

    def fetch(self, sql: str, args: Sequence[Any], binary: bool = False) -> list[tuple]:
        """Every row of one statement (bounded by its LIMIT or its account's rows);
        ``binary``: the values in PostgreSQL's binary format (the same Python values
        for text and integers, less CPU to load)."""
        return self.run(lambda conn: conn.execute(sql, args, binary=binary).fetchall())

    def run(self, work: Callable[[psycopg.Connection], T]) -> T:
        """``work(conn)`` on a pooled connection (its statements each under the
        statement timeout); a transaction it opens is ended by it."""
        try:
            self._slots.get(timeout=self.timeout)
        except gevent.queue.Empty:
            raise StatementTimeout("no PostgreSQL connection free within %.1f s" % self.timeout) from None
        conn = None
        try:
            conn = self._idle.pop() if self._idle else self._open()
            result = work(conn)
        except psycopg.errors.QueryCanceled:
            raise StatementTimeout("statement ran longer than %.1f s" % self.timeout) from None
        except psycopg.Error as exc:
            idle = conn is not None and not conn.closed and conn.info.transaction_status == _IDLE
            if idle:
                self._idle.append(conn)
                conn = None
            raise DatastoreError(self.redact(str(exc).strip())) from None
        else:
            if not self._closed and conn.info.transaction_status == _IDLE:
                self._idle.append(conn)
                conn = None
            return result
        finally:
            if conn is not None:
                conn.close()
            self._slots.put_nowait(None)

    def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def listing_vars(text: str | None) -> str | None:
    """custom_channel_vars of a listing row (jsonb's text) as ``kazoo.list_values``
    reads the node's: an object whose values are all strings is its own text
    (``orjson.loads`` makes the same dict of it as of the node's; no key order
    shows); any other value becomes the node's stored text, as psycopg's json
    module and ``record_row`` make it (nested objects sorted, numbers as the
    json module reads them).  Parsed once, by the renderer: a chunk holds no
    dicts for the garbage collector to walk.  (First the cheap proof, as many
    colons as ``": "``: each colon, so each key's, is followed by a string.)"""
    if text is None or (text[:1] == "{" and (text.count(":") == text.count('": "')
                                             or _NOT_A_STRING.search(text) is None)):
        return text
    return stored_json("custom_channel_vars", json.loads(text))


def _list_row(row: Sequence[Any], sourced: bool = True) -> list[Any]:
    """A ``pgquery.list_sql`` row (values, key, tie, source) as the read side's listing
    row: the values as the node's (``listing_vars``), then with ``sourced`` the node it
    came from, then the keyset position.  (One list, changed in place.)"""
    values = list(row)
    if sourced:
        values.insert(_N_SOURCE, values.pop())
    else:
        del values[-1]
    values[_CCV] = listing_vars(values[_CCV])
    return values


def _export_rows(rows: list[Sequence[Any]], keyed: bool) -> list[Sequence[Any]]:
    """``pgquery.list_sql`` rows as a CSV export's listing rows (``_list_row``
    without the node): where ``listing_vars`` passes the variables on as they
    are, psycopg's tuple -- not ``keyed`` (a CDR export's: values, tie, source,
    as wide as the node's rows: the renderer reads the values) the row itself,
    in place; ``keyed`` (values, key, tie, source) without its source."""
    if keyed:
        rows = [row[:-1] for row in rows]
    # listing_vars' proofs once for the whole chunk (~0.2 µs a row less than a call a
    # row): a text's colons are at least its '": "'s (none spans a newline), so
    # equal sums are equal counts in every text; no _NOT_A_STRING spans one either
    # (no JSON text starts with a colon or ends with one).  A text that is no object
    # passes too: the renderer reads no variables from it, as from the node's.
    whole = "\n".join([row[_CCV] or "" for row in rows])
    if whole.count(":") == whole.count('": "') or _NOT_A_STRING.search(whole) is None:
        return rows
    for i, row in enumerate(rows):
        text = row[_CCV]
        node_vars = listing_vars(text)
        if node_vars is not text:
            values = list(row)
            values[_CCV] = node_vars
            rows[i] = values
    return rows


def render(rows: Sequence[Sequence[Any]], fmt: str) -> list[str]:
    """Full records (COLUMN_NAMES values, then the source and the central
    interaction id when there are) as ``kazoo.record_sql`` renders them on a
    node; a JSON record ends with ``"central_interaction_id"`` where it differs
    from the node's ``interaction_id`` (a call that crossed nodes), then
    ``"source"``, its node's ``[node:NAME]`` (CSV: the node's columns only)."""
    memory = sqlite3.connect(":memory:")
    try:
        memory.execute(_MEMORY_TABLE)
        extras = []
        for row in rows:
            values = list(row[:_WIDTH])
            central = row[_WIDTH + 1] if len(row) > _WIDTH + 1 else None
            extra = {"central_interaction_id": central} if central not in (None, values[_IID]) else {}
            if len(row) > _WIDTH:
                extra["source"] = row[_WIDTH]
            extras.append(extra)
            for index, name in enumerate(COLUMN_NAMES):
                if name in JSON_COLUMNS and values[index] is not None:
                    values[index] = stored_json(name, values[index])
            if values[_FAX] is not None:
                values[_FAX] = int(values[_FAX])
            memory.execute(_MEMORY_INSERT, values)
        texts = [text for text, in memory.execute("SELECT %s FROM cdrs AS c ORDER BY rowid" % record_sql(fmt))]
        if fmt != "json":
            return texts
        return [text if not extra else "%s,%s" % (text[:-1], orjson.dumps(extra).decode("utf-8")[1:])
                for text, extra in zip(texts, extras)]
    finally:
        memory.close()


def stats_rows(conn: psycopg.Connection, query: StatsQuery, use_rollups: bool = True) -> list[list[tuple]]:
    """[counters, causes, pdd] rows of ``query`` (``stats.compute``'s input) in one
    REPEATABLE READ snapshot: the totals are exactly the sum of the buckets
    (``use_rollups`` False: from the legs alone, to check the roll-ups)."""
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    try:
        # A direction filter: the roll-ups' cells have directions (the edges' legs: filtered).
        direction = pgrollups.direction_of(query.filters)
        parts = split(dataclasses.replace(query, filters=()) if direction else query, use_rollups)
        if parts is None:
            whole = [(query.created_from, query.created_to)]
            return pgquery.stats_kinds(conn.execute(*pgquery.stats_sql(query, whole)).fetchall())
        rows = pgrollups.read_rollups(conn, query.account_id, parts.minutes[0], parts.minutes[1],
                                      query.interval, parts.hours, direction)
        if parts.pdd_edges:  # (edges: within pdd_edges)
            edges = pgquery.stats_sql(query, parts.edges, parts.pdd_edges)
            for kind, more in zip(rows, pgquery.stats_kinds(conn.execute(*edges).fetchall())):
                kind += more
        return rows
    finally:
        conn.rollback()


def _caught(work: Callable[[T], list[Any]], arg: T) -> tuple[list[Any], Exception | None]:
    """``work(arg)``'s rows, or its failure (raised by the reader, not reported by gevent's hub)."""
    try:
        return work(arg), None
    except Exception as exc:
        return [], exc


class PgBatches:
    """Rows in batches, each the rows of one short statement (``next_chunk``).

    With ``ahead`` (a timeout), the next statement starts in a greenlet of its
    own as a batch is handed out: PostgreSQL reads it while the caller renders
    and sends that batch (psycopg waits cooperatively under gevent's patching);
    at most one statement ahead, so at most two batches in memory.  ``piece``:
    each batch is handed out in parts of at most that many rows, with a turn of
    the hub's loop between them (``_TURN``), where the statement ahead reads what
    PostgreSQL sent meanwhile (it can only send a socket buffer's worth ahead of
    the reader).
    ``close()`` waits up to the timeout for a statement under way, then kills
    it (its connection is closed)."""

    def __init__(self, first: list[Any], next_chunk: Callable[[list[Any]], list[Any]] | None,
                 ahead: float | None = None, piece: int | None = None) -> None:
        self._first = first
        self._next = next_chunk
        self._ahead = ahead
        self._piece = piece
        self._pending: gevent.Greenlet | None = None
        self._closed = False

    @property
    def empty(self) -> bool:
        return not self._first

    def __iter__(self) -> Iterator[list[Any]]:
        rows, self._first = self._first, []
        while rows and not self._closed:
            if self._ahead is not None and self._next is not None:
                self._pending = gevent.spawn(_caught, self._next, rows)
                gevent.sleep(0)  # it sends its statement
            piece = self._piece or len(rows)
            for start in range(0, len(rows), piece):
                if start:
                    gevent.sleep(_TURN)  # the statement ahead reads what has come
                    if self._closed:
                        return
                yield rows if piece == len(rows) else rows[start:start + piece]
            if self._closed:
                return
            if self._pending is not None:
                pending, self._pending = self._pending, None
                try:  # its slot's wait and its statement, each bounded by the timeout
                    rows, error = pending.get(timeout=2 * self._ahead + 1.0)
                except gevent.Timeout:
                    pending.kill(block=False)
                    raise StatementTimeout("the next chunk took longer than %.1f s" % (2 * self._ahead)) from None
                if error is not None:
                    raise error
            else:
                rows = self._next(rows) if self._next is not None else []

    def close(self) -> None:
        self._closed = True
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.join(self._ahead)
            pending.kill(block=False)


class PgReadSide:
    """``ReadSide`` over the collector's ``cdrs`` (every node's rows)."""

    def __init__(self, dsn: str, statement_timeout: float, *, heavy_slots: int, connect_timeout: float = 10.0,
                 redact: Callable[[str], str] = lambda text: text, pool_size: int = POOL_SIZE) -> None:
        self.pg = PgPool(dsn, statement_timeout, connect_timeout, pool_size, redact)
        self.heavy = HeavyLane(heavy_slots, statement_timeout)

    def _fetch(self, sql_args: tuple[str, list[Any]], heavy: bool = False, binary: bool = False) -> list[tuple]:
        if not heavy:
            return self.pg.fetch(*sql_args, binary=binary)
        with self.heavy.slot():
            return self.pg.fetch(*sql_args, binary=binary)

    def list_page(self, query: ListQuery) -> list[Sequence[Any]]:
        if unmatchable(query.account_id, query.owner_id):
            return []
        rows = self._fetch(pgquery.list_sql(query), is_heavy(query), binary=True)
        # Listing rows with their node; where two nodes' rows share (timestamp, seq),
        # the later one's position names its node (a cursor there starts at that row).
        out = [_list_row(row) for row in rows]
        if query.kind == KIND_INTERACTIONS:
            return out
        cursor = query.cursor
        for i, row in enumerate(rows):
            if (row[-3:-1] == rows[i - 1][-3:-1] if i else
                    cursor is not None and cursor.source is not None and tuple(row[-3:-1]) == (cursor.key, cursor.seq)):
                out[i][-1] = NodeSeq(row[-2], row[-1])
        return out

    def list_rows(self, query: ListQuery, sourced: bool = True) -> PgBatches:
        return self._listing(query, sourced, ahead=False)

    def list_export(self, query: ListQuery) -> PgBatches:
        # CSV: the node's columns only; each next chunk read while the hub renders
        # the previous one.
        return self._listing(query, sourced=False, ahead=True)

    def _listing(self, query: ListQuery, sourced: bool, ahead: bool) -> PgBatches:
        size = EXPORT_CHUNK if ahead else CHUNK
        # A CDR export reads its rows without their key (their timestamp value):
        # one value less to load and no copy of the row (~0.7 µs a row).
        keyed = sourced or query.kind == KIND_INTERACTIONS

        def chunk(after: Sequence[Any] | None) -> list[Any]:
            # Listing columns are text and bigint: binary loads them 0.3-0.6 µs a row faster.
            return self._fetch(pgquery.list_sql(query, after, size + 1, keyed), is_heavy(query), binary=True)

        def batch(rows: list[Any]) -> list[Any]:
            if not sourced:
                return _export_rows(rows[:size], keyed)
            return [_list_row(row) for row in rows[:size]]

        first = [] if unmatchable(query.account_id, query.owner_id) else chunk(None)

        def following(previous: list[Any]) -> list[Any]:
            nonlocal first
            if len(first) <= size:
                return []
            last = first[size]
            first = chunk(last[_N_SOURCE:] if keyed else (last[_TIMESTAMP], last[-2], last[-1]))
            return batch(first)

        return PgBatches(batch(first), following, self.pg.timeout if ahead else None, RENDER_ROWS if ahead else None)

    def detail(self, account_id: str, cdr_id: str, fmt: str) -> str | None:
        rows = [] if unmatchable(account_id, cdr_id) else self._fetch(pgquery.detail_sql(account_id, cdr_id))
        return render(rows, fmt)[0] if rows else None

    def legs(self, account_id: str, leg_id: str, fmt: str) -> PgBatches:
        rows = [] if unmatchable(account_id, leg_id) else self._fetch(pgquery.legs_sql(account_id, leg_id))
        return PgBatches([(text,) for text in render(rows, fmt)], None)

    def stats(self, query: StatsQuery) -> dict[str, Any]:
        """The node's KPIs over every node's legs: the roll-ups and the legs
        ``stats.split`` names, read in one snapshot; the route holds the heavy
        lane.  The buckets are added up here, on the hub, paced."""
        rows: list[list[tuple]] = [[], [], []]
        if not unmatchable(query.account_id, query.owner_id):
            rows = self.pg.run(lambda conn: stats_rows(conn, query))
        return compute(query, rows, self.heavy.pacer())

    def worst(self, query: WorstQuery) -> list[Sequence[Any]]:
        if unmatchable(query.account_id, query.owner_id):
            return []
        # Filters are not indexed: they may be tested on every leg of the range.
        return self._fetch(pgquery.worst_sql(query), bool(query.filters))

    def feed_page(self, query: FeedQuery) -> list[Sequence[Any]]:
        raise not_served("the feed")

    def feed_rows(self, query: FeedQuery) -> PgBatches:
        raise not_served("the feed")

    def db_id(self) -> str:
        raise not_served("the feed")

    def last_seq(self) -> int:
        raise not_served("the feed")

    def heavy_slot(self) -> ContextManager[None]:
        return self.heavy.slot()

    def pacer(self) -> Callable[[], None]:
        return self.heavy.pacer()

    def close(self) -> None:
        self.pg.close()

