"""Writing pulled records into PostgreSQL: one transaction per batch.

``store_batch`` writes a node's records (after its stored cursor, in seq
order), counts them in the KPI roll-ups (pgrollups.py) and moves the node's
cursor (``collector_nodes.after``, locked and compared first: a mismatch is
``CursorMoved``), all in one transaction: exactly once.  The rows go by
COPY into a temporary ``_staged`` (typed: bench/collect.py measured it the
cheapest), then set-based SQL: find the node's stored versions of the calls
(``cdr_keys``), claim the keys (a call another node owns is refused:
``other_node``; another leg under its id is re-keyed, pgreused.py), delete the
old versions by their whole key (into ``_gone``) and insert the new ones --
never an UPDATE of ``account_id``.  A value PostgreSQL refuses makes that step
go one row at a time under savepoints; every record not stored is kept whole in
``collector_rejects`` (``pgrecords.REASONS``): nothing lost, nothing blocking the node.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Sequence

import psycopg
from psycopg import sql

from ..keepalive import libpq_keepalive, postgres_server_keepalive
from . import pginteractions, pgreused, pgrollups
from .pgrecords import (DAY_US, EPOCH, REASON_OTHER_NODE, REASON_PARTITION_LIMIT, REASON_REFUSED, SQLITE_COLUMNS,
                        FeedRecord, Rejected, RowShape, staged_values)
from .pgschema import (STAGED_ACCOUNT, STAGED_HANGUP_AT, UTC, create_partitions_for, existing_partitions,
                       month_start, micros_at as _us, next_month, partition_name, sqlite_columns)

# PostgreSQL refuses values in these ways (a limit too: a caller's long SIP Call-ID
# in an index); anything else (connection lost, ...) fails the batch, retried.
ROW_ERRORS = (psycopg.errors.DataError, psycopg.errors.IntegrityError, psycopg.errors.ProgramLimitExceeded)

# The bounds of the collector's own PostgreSQL connections (docs/collector.md,
# "Waits on PostgreSQL"): a lock held elsewhere fails the statement after
# LOCK_TIMEOUT (LockNotAvailable), a batch statement after STATEMENT_TIMEOUT
# (QueryCanceled; 5,000 rows take < 1 s), a server gone silent (no FIN/RST)
# is found by TCP keepalive (keepalive.py), a server alive that lets a
# statement run on past it by our own bound on each wait (BoundedConnection):
# all psycopg.Error, retried.
LOCK_TIMEOUT = 30.0
STATEMENT_TIMEOUT = 300.0


class BoundedConnection(psycopg.Connection):
    """A connection whose every wait ends after ``limit`` seconds (None: no bound),
    with psycopg's own _WaitTimeout, an OperationalError."""

    limit: float | None = None

    def wait(self, gen: Any, interval: float | None = None, timeout: float | None = None) -> Any:
        more = {} if interval is None else {"interval": interval}
        return super().wait(gen, timeout=self.limit if timeout is None else timeout, **more)


def pg_connect(dsn: str, connect_timeout: float, application_name: str = "eslcdr-collect",
               lock_timeout: float = LOCK_TIMEOUT, statement_timeout: float | None = STATEMENT_TIMEOUT,
               **kwargs) -> psycopg.Connection:
    """A connection with every wait bounded: connect, locks, statements
    (None: unbounded, for a migration that rewrites a big table), a dead server,
    and each wait on our side (2 x statement_timeout + 1 s)."""
    settings = "-c lock_timeout=%d %s" % (int(lock_timeout * 1000), postgres_server_keepalive())
    if statement_timeout is not None:
        settings += " -c statement_timeout=%d" % int(statement_timeout * 1000)
    conn = BoundedConnection.connect(dsn, connect_timeout=max(1, int(connect_timeout)),
                                     application_name=application_name, options=settings, **libpq_keepalive(),
                                     **kwargs)
    conn.limit = None if statement_timeout is None else 2 * statement_timeout + 1.0
    return conn

class CursorMoved(Exception):
    """The node's stored cursor or db_id is not what the worker expected."""


class NodeClaimed(Exception):
    """Another connection (a second collector) pulls this node into this database."""


# One connection at a time pulls a node: it holds (CLAIM_CLASS, hashtext(node)), a session advisory lock.
CLAIM_CLASS = 0x65736C63  # "eslc"


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
    partitions: tuple[str, ...] = ()  # partitions created for this batch


def _insert_sql(columns: Sequence[str]) -> str:
    names = list(columns) + ["source", "created_at", "answered_at", "hangup_at", "collected_at", "central_id"]
    select = [STAGED_ACCOUNT if name == "account_id" else "s.%s" % sql.Identifier(name).as_string(None)
              for name in columns] + [
        "%(source)s",
        "CASE WHEN s.created_us > 0 THEN %s END" % _us("s.created_us"),
        "CASE WHEN s.answered_us > 0 THEN %s END" % _us("s.answered_us"),
        STAGED_HANGUP_AT,
        "now()",
        # Its own node id until link_batch gives it its group's (pginteractions.py).
        "s.interaction_id" if "interaction_id" in columns else "NULL",
    ]
    quoted = [sql.Identifier(name).as_string(None) for name in names]
    # No ON CONFLICT: the node's stored version of a call was deleted first
    # (DELETE_OLD), and another node's calls left the batch (CLAIM_KEYS).  No
    # ORDER BY either: CLAIM_KEYS locked the batch's calls in cdr_keys (in
    # call_id order), so no other transaction inserts one of these keys, and
    # sorting ~2 KB rows past work_mem went to disk.
    return "INSERT INTO cdrs (%s) SELECT %s FROM _staged AS s {where}" % (
        ", ".join(quoted), ", ".join(select))


# The node's stored version of the batch's calls (where cdr_keys says it
# lives), read by the staged calls' ids (an array) from cdr_keys alone, by
# index probes (PROBES: the planner would scan up to ~130 keys an id, a CPU
# cost growing with the table that its I/O guesses call cheaper), no join
# whose plan hangs on its guess of the temporary _staged -- joined to it,
# cdr_keys was read by a sequential scan every batch (1,000,000 keys: 13-20 us
# a stored row; a node the statistics did not know yet: a nested loop over
# it, 180-590 us a row; now 2-5 us; bench/store_split.py).  Then whether the new version
# lives elsewhere (another hangup time or account: another partition, another
# shard), only when there are old versions.
PROBES = ("SET LOCAL enable_seqscan = off", "SET LOCAL enable_seqscan TO DEFAULT")
OLD_TABLE = ("CREATE TEMPORARY TABLE IF NOT EXISTS _old (call_id text NOT NULL, account_id text NOT NULL,"
             " hangup_at timestamptz NOT NULL) ON COMMIT DELETE ROWS")
FIND_OLD = ("INSERT INTO _old SELECT k.call_id, k.account_id, k.hangup_at FROM cdr_keys AS k"
            " WHERE k.call_id = ANY(%b) AND k.source = %s")  # %b: the array dumped in binary, 1.1 -> 0.2 us an id
OLD_MONTHS = ("SELECT count(*) FILTER (WHERE o.account_id <> " + STAGED_ACCOUNT + " OR o.hangup_at <> "
              + STAGED_HANGUP_AT + "), array_agg(DISTINCT date_trunc('month', o.hangup_at, 'UTC') AT TIME ZONE 'UTC')"
              " FROM _old AS o JOIN _staged AS s USING (call_id)")
# Stored rows out, by their whole key, into _gone for the roll-ups: one row
# (the row-by-row path), or the rows of one month (one partition; the keys
# as arrays: one statement, not one per row).  Deleted and inserted again,
# never updated: no UPDATE changes account_id.
_GONE = ") INSERT INTO _gone SELECT * FROM gone"
_RETURNING = " RETURNING " + ", ".join('c."%s"' % n for n in pgrollups.SOURCE_NAMES)
DELETE_OLD = (
    "WITH gone AS (DELETE FROM cdrs AS c WHERE c.account_id = %s AND c.call_id = %s AND c.hangup_at = %s"
    " AND c.source = %s" + _RETURNING + _GONE
)
DELETE_OLD_MONTH = (
    "WITH gone AS (DELETE FROM cdrs AS c USING _old AS o WHERE c.account_id = o.account_id"
    " AND c.call_id = o.call_id AND c.hangup_at = o.hangup_at AND c.hangup_at >= %(low)s AND c.hangup_at < %(high)s"
    " AND o.hangup_at >= %(low)s AND o.hangup_at < %(high)s AND c.source = %(source)s" + _RETURNING + _GONE
)


# cdr_keys takes the batch's calls: new ones, and the node's own (a new
# account and hangup time are written, unchanged ones rewritten so that
# RETURNING names them; cdr_keys is distributed by call_id, so its account_id
# may change); a call another node stored is left as it is, and the DELETE
# takes it out of the batch.  The ON CONFLICT waits for a concurrent
# transaction that inserted the same call, then sees its owner.
CLAIM_KEYS = (
    "WITH claimed AS (INSERT INTO cdr_keys (call_id, account_id, hangup_at, source)"
    " SELECT s.call_id, " + STAGED_ACCOUNT + ", " + STAGED_HANGUP_AT + ", %(source)s FROM _staged AS s"
    " ORDER BY s.call_id"
    " ON CONFLICT (call_id) DO UPDATE SET account_id = EXCLUDED.account_id, hangup_at = EXCLUDED.hangup_at"
    " WHERE cdr_keys.source = EXCLUDED.source RETURNING call_id)"
    " DELETE FROM _staged AS s WHERE NOT EXISTS (SELECT 1 FROM claimed AS c WHERE c.call_id = s.call_id)"
    " RETURNING s.seq, s.call_id"
)


class PgStore:
    """One worker's PostgreSQL connection (not shared between greenlets)."""

    def __init__(self, conn: psycopg.Connection, columns: Sequence[str] | None = None) -> None:
        self.conn = conn
        self._columns = list(columns or SQLITE_COLUMNS)
        self._shape = RowShape.of(self._columns)
        template = _insert_sql(self._columns)
        self._insert_all = template.replace("{where}", "")
        self._insert_one = template.replace("{where}", "WHERE s.seq = %(seq)s")
        quoted = ", ".join(sql.Identifier(name).as_string(conn) for name in self._columns)
        self._copy = "COPY _staged (%s, _hangup_us) FROM STDIN" % quoted
        self._stage_one = "INSERT INTO _staged (%s, _hangup_us) VALUES (%s)" % (
            quoted, ", ".join(["%s"] * (len(self._columns) + 1)))
        self._partitions: set[str] = set()
        # NOT NULL kept: the local COPY refuses a missing value (23502); Citus
        # would report the INSERT's refusal as XX000, failing the whole batch.
        kinds = dict(sqlite_columns())
        staged = ", ".join("%s %s" % (sql.Identifier(name).as_string(conn), kinds.get(name, "text"))
                           for name in self._columns)
        conn.execute(
            "CREATE TEMPORARY TABLE IF NOT EXISTS _staged (%s, _hangup_us bigint NOT NULL)"
            " ON COMMIT DELETE ROWS" % staged
        )
        conn.execute(pgrollups.GONE_TABLE)
        conn.execute(OLD_TABLE)
        conn.commit()

    @classmethod
    def connect(cls, dsn: str, connect_timeout: float = 10.0, application_name: str = "eslcdr-collect",
                lock_timeout: float = LOCK_TIMEOUT) -> "PgStore":
        return cls(pg_connect(dsn, connect_timeout, application_name, lock_timeout=lock_timeout))

    def close(self) -> None:
        self.conn.close()

    # -- node state --------------------------------------------------------
    def claim_node(self, node: str) -> None:
        """Hold the node's claim while this connection lives; NodeClaimed,
        naming the holder, when another connection holds it."""
        with self.conn.transaction():
            if self.conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", (CLAIM_CLASS, node)).fetchone()[0]:
                return
            holder = self.conn.execute(
                "SELECT concat_ws(', ', a.application_name, host(a.client_addr), 'backend pid ' || a.pid,"
                " 'connected since ' || date_trunc('second', a.backend_start)) FROM pg_locks l JOIN pg_stat_activity a"
                " ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.granted"
                " AND l.classid = %s::int4::oid AND l.objid = hashtext(%s)::oid", (CLAIM_CLASS, node)).fetchone()
        raise NodeClaimed("node %s is pulled into this database by another collector (%s): run one collector per"
                          " database and node" % (node, holder[0] if holder else "a session this role cannot see"))

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
            self.conn.execute("UPDATE collector_nodes SET last_error = %s, last_pull_at = now() WHERE node = %s",
                              (error[:2000] if error else None, node))

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
    def ensure_months(self, records: Sequence[FeedRecord], node: str | None = None,
                      limit: int | None = None) -> tuple[list[str], set[dt.date]]:
        """Create the partitions the records need; with ``limit``, at most
        that many a day for ``node``.  Returns the partitions created and
        the months left without one."""
        days = {r.hangup_us // DAY_US for r in records}  # a few days: the months of those
        missing = {month_start(EPOCH + dt.timedelta(days=day)) for day in days}
        missing = {m for m in missing if partition_name(m) not in self._partitions}
        if not missing:
            return [], set()
        self._partitions = existing_partitions(self.conn)
        self.conn.commit()
        missing = {m for m in missing if partition_name(m) not in self._partitions}
        if not missing:
            return [], set()
        created, refused = create_partitions_for(self.conn, missing, node, limit)
        self._partitions.update(created)
        return created, refused

    # -- the batch ---------------------------------------------------------
    def store_batch(
        self, node: str, db_id: str, expected_after: int, items: Sequence[FeedRecord | Rejected],
        max_new_partitions: int | None = None,
    ) -> BatchResult:
        """Upsert the records, keep the rejects, move the cursor to the last seq.
        ``max_new_partitions``: the node's bound on partitions created for it
        in 24 hours (None: no bound).

        The node's row is locked first (``FOR UPDATE``) and its cursor and
        db_id compared with what the worker believes (else ``CursorMoved``).
        Then, set-based: ``cdr_keys`` takes the new keys, updating only the
        node's own (``ON CONFLICT ... WHERE source = EXCLUDED.source``); a call
        it did not take is another node's: ``other_node`` in collector_rejects,
        unless another leg (pgreused.py: stored in a second round); the node's
        stored versions are deleted by their whole key (account_id, call_id,
        hangup_at) into ``_gone`` and the new rows inserted -- never an UPDATE
        of ``account_id`` (Citus refuses one); the roll-ups count ``_gone`` out
        and the inserted rows in.  The ``cdr_keys`` row lock serialises two
        transactions writing one call: the second then sees its owner."""
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
        created, no_partition = self.ensure_months(rows, node, max_new_partitions)
        if no_partition:
            kept = []
            for record in rows:
                if record.month in no_partition:
                    refused.append(Rejected(
                        record.seq, record.call_id,
                        "month %s has no partition and node %s may create at most %d new ones a day"
                        " (max_new_partitions)" % (record.month.strftime("%Y-%m"), node, max_new_partitions),
                        record.line.decode("utf-8", "replace"), REASON_PARTITION_LIMIT))
                else:
                    kept.append(record)
            rows = kept
        conn = self.conn
        with conn.transaction():
            found = conn.execute(
                "SELECT db_id, after FROM collector_nodes WHERE node = %s FOR UPDATE", (node,)
            ).fetchone()
            if found is None or found[1] != expected_after or (found[0] is not None and found[0] != db_id):
                stored = "no row" if found is None else "after=%s db_id=%s" % (found[1], found[0])
                raise CursorMoved(
                    "node %s: the cursor in PostgreSQL is %s, this collector had after=%d db_id=%s:"
                    " moved by hand, or another eslcdr collect pulls [node:%s] into this database?"
                    " (batch rolled back, resuming from the stored cursor)" % (node, stored, expected_after, db_id, node)
                )
            with conn.cursor() as cur:
                rejected = len(refused)
                for item in refused:
                    reject(cur, node, db_id, item.seq, item.call_id, item.error, item.line, item.reason)
                stored, moved, rejected, again = self._round(cur, node, db_id, rows, rejected, True)
                if again:  # other legs under ids another node stored: keys of their own (pgreused.py)
                    for statement in pgreused.CLEAR_ROUND:
                        cur.execute(statement)
                    more, more_moved, rejected, _ = self._round(cur, node, db_id, again, rejected, False)
                    stored, moved = stored + more, moved + more_moved
                cur.execute(
                    "UPDATE collector_nodes SET after = %s, db_id = %s, rows = rows + %s,"
                    " last_pull_at = now(), last_error = NULL WHERE node = %s",
                    (new_after, db_id, stored, node),
                )
        return BatchResult(stored, moved, rejected, new_after, tuple(created))

    def _round(self, cur: psycopg.Cursor, node: str, db_id: str, rows: Sequence[FeedRecord], rejected: int,
               rekey: bool) -> tuple[int, int, int, list[FeedRecord]]:
        """Stage, claim, write, link and count ``rows``: (stored, moved, rejected so far, re-keyed to store too)."""
        staged = self._stage(cur, node, db_id, rows)
        rejected += len(rows) - len(staged)
        replaced, moved, months = self._find_old(cur, node, [r.call_id for r in staged])
        taken, again = self._claim_keys(cur, node, db_id, staged, rekey)
        rejected += len(taken) - len(again)
        rows = [r for r in staged if r.seq not in taken]
        stored = 0
        if rows:
            stored, bad = self._write(cur, node, db_id, rows, months)
            rejected += bad
            pginteractions.link_batch(cur, node)  # legs of a call another node stored too
            pgrollups.apply_batch(cur, deleted=replaced > 0)  # last: the cells stay locked the shortest
        return stored, moved, rejected, again

    def _find_old(self, cur: psycopg.Cursor, node: str, call_ids: list[str]) -> tuple[int, int, list[dt.datetime]]:
        """The node's stored versions of the staged calls (``call_ids``) into
        _old: how many, how many live elsewhere (moved), the months they live in."""
        cur.execute(PROBES[0])
        replaced = cur.execute(FIND_OLD, (call_ids, node)).rowcount
        cur.execute(PROBES[1])
        if not replaced:
            return 0, 0, []
        # Its size known, the planner probes cdrs' key once per old row
        # (1 ms per row without: bench/collect.py), and joins it to _staged
        # by hashing.
        cur.execute("ANALYZE _old")
        moved, months = cur.execute(OLD_MONTHS).fetchone()
        return replaced, moved, months

    def _write(self, cur: psycopg.Cursor, node: str, db_id: str, rows: Sequence[FeedRecord],
               months: Sequence[dt.datetime]) -> tuple[int, int]:
        """Delete the stored versions (by month: one partition each) and
        insert the staged rows; on a refused value, row by row.  Returns
        (stored, rejected)."""
        try:
            with self.conn.transaction():
                for month in sorted(months):
                    start = month.date()
                    cur.execute(DELETE_OLD_MONTH, {"low": dt.datetime(start.year, start.month, 1, tzinfo=UTC),
                                                   "high": _month_end(start), "source": node})
                cur.execute(self._insert_all, {"source": node})
                return cur.rowcount, 0
        except ROW_ERRORS:
            return self._one_by_one(cur, node, db_id, rows)

    def _claim_keys(self, cur: psycopg.Cursor, node: str, db_id: str, rows: Sequence[FeedRecord],
                    rekey: bool) -> tuple[set[int], list[FeedRecord]]:
        """Take the batch's calls in cdr_keys; of those another node stored,
        other legs come back re-keyed (``rekey``), the rest go to
        collector_rejects.  Returns the seqs not taken, and the re-keyed."""
        cur.execute(CLAIM_KEYS, {"source": node})
        taken = dict(cur.fetchall())
        if not taken:
            return set(), []
        by_seq = {r.seq: r for r in rows}
        again = pgreused.other_legs(cur, node, [by_seq[seq] for seq in sorted(taken)]) if rekey else []
        kept = {r.seq for r in again}
        refused = {seq: call_id for seq, call_id in taken.items() if seq not in kept}
        owners = dict(cur.execute(
            "SELECT call_id, source FROM cdr_keys WHERE call_id = ANY(%s)", (list(refused.values()),)).fetchall())
        for seq, call_id in sorted(refused.items()):
            reject(cur, node, db_id, seq, call_id, "call_id already stored from node %s" % owners.get(call_id),
                   by_seq[seq].line.decode("utf-8", "replace"), REASON_OTHER_NODE)
        return set(taken), again

    def _stage(self, cur: psycopg.Cursor, node: str, db_id: str, rows: Sequence[FeedRecord]) -> Sequence[FeedRecord]:
        """COPY the rows into _staged; on a refused value, row by row (the
        refused ones into collector_rejects).  Returns the rows staged.  The
        values come from each record's parsed JSON: a typed COPY costs the
        least in all and on PostgreSQL (10 + 25 µs a row; json_populate_record
        5 + 52, pipelined INSERTs 48 + 48: bench/collect.py)."""
        columns, shape = self._columns, self._shape
        try:
            with self.conn.transaction():
                with cur.copy(self._copy) as copy:
                    write = copy.write_row
                    for record in rows:
                        write(staged_values(record, columns, shape))
            return rows
        except ROW_ERRORS:
            pass
        staged = []
        for record in rows:
            try:
                with self.conn.transaction():
                    cur.execute(self._stage_one, staged_values(record, columns, shape))
                staged.append(record)
            except ROW_ERRORS as exc:
                reject(cur, node, db_id, record.seq, record.call_id, str(exc).strip(),
                       record.line.decode("utf-8", "replace"), REASON_REFUSED)
        return staged

    def _one_by_one(self, cur: psycopg.Cursor, node: str, db_id: str, rows: Sequence[FeedRecord]) -> tuple[int, int]:
        """Each row with its old version's delete under its own savepoint: a
        row PostgreSQL refuses leaves its stored version (and cdr_keys' entry
        for it) as they were, and leaves _staged (the roll-ups count _staged)."""
        old = {row[0]: row for row in cur.execute("SELECT call_id, account_id, hangup_at FROM _old").fetchall()}
        stored = rejected = 0
        for record in rows:
            previous = old.get(record.call_id)
            try:
                with self.conn.transaction():
                    if previous is not None:
                        cur.execute(DELETE_OLD, (previous[1], previous[0], previous[2], node))
                    cur.execute(self._insert_one, {"source": node, "seq": record.seq})
                    stored += cur.rowcount
            except ROW_ERRORS as exc:
                rejected += 1
                cur.execute("DELETE FROM _staged WHERE seq = %s", (record.seq,))
                if previous is None:
                    cur.execute("DELETE FROM cdr_keys WHERE call_id = %s AND source = %s", (record.call_id, node))
                else:
                    cur.execute("UPDATE cdr_keys SET account_id = %s, hangup_at = %s WHERE call_id = %s AND source = %s",
                                (previous[1], previous[2], record.call_id, node))
                reject(cur, node, db_id, record.seq, record.call_id, str(exc).strip(),
                       record.line.decode("utf-8", "replace"), REASON_REFUSED)
        return stored, rejected


def _month_end(month: dt.date) -> dt.datetime:
    return dt.datetime(next_month(month).year, next_month(month).month, 1, tzinfo=UTC)


def reject(cur: psycopg.Cursor, node: str, db_id: str | None, seq: int | None, call_id: str | None,
           error: str, line: str, reason: str) -> None:
    """Keep a record PostgreSQL (or the collector's checks) refused, with
    its reason (one of REASONS) and the error in words."""
    line = line.replace("\x00", "\\u0000")  # text cannot hold NUL
    cur.execute(
        "INSERT INTO collector_rejects (node, db_id, seq, call_id, reason, error, record)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (node, db_id, seq, call_id, reason, error[:2000], line),
    )
