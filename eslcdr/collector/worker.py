"""One node's worker: pull the feed, store batches, back off on errors.

A worker owns its HTTP connection (``FeedClient``) and its PostgreSQL
connection (``PgStore``): nothing is shared between nodes, so a node that
is down, slow or sending garbage costs only its own worker's time, and the
others keep their pace (gevent switches at every socket wait).  A pull
(``NodeWorker.pull_once``) stores its batches, each one PostgreSQL
transaction with the cursor; a failed pull is retried after a capped,
jittered backoff.  The request with ``after=`` is also the node's
acknowledgement: its retention keeps every row above the cursor stored here.

Shutdown: ``stop()`` sets an event; the service interrupts a worker only
while it waits on the network or sleeps (``interruptible``), never inside a
PostgreSQL transaction, so SIGTERM finishes the batch being committed.
"""

from __future__ import annotations

import gc
import time
from typing import Callable

import gevent
import gevent.event
import psycopg
import structlog

from ..backoff import backoff_delay
from .config import CollectorConfig, FeedNode
from .feed import TRANSPORT_ERRORS, FeedClient, FeedError, FeedProtocolError, HangupWindow, lines_of, parse_record
from .pgrecords import FeedRecord, Rejected
from .pgstore import CursorMoved, NodeClaimed, PgStore

log = structlog.get_logger(__name__)

# Everything a pull may raise that a later pull may not: the node or the
# network (TRANSPORT_ERRORS), PostgreSQL (psycopg.Error), another collector
# moving the cursor (CursorMoved) or holding the node's claim (NodeClaimed:
# retried, so this one takes over once the other stops).
RETRYABLE = TRANSPORT_ERRORS + (psycopg.Error, CursorMoved, NodeClaimed)
FEED_LIMIT = 10_000  # the node's maximum page; one request per 10k rows at most
RATE_WINDOW = 10.0
TOUCH_INTERVAL = 10.0
# A changed db_id: the re-pull from 0 waits backoff_delay(changes in the
# last hour, DB_ID_BACKOFF_BASE, cap); past DB_ID_CHANGES_WARN changes an
# hour the node is flapping (warned, shown as an error).
DB_ID_WINDOW = 3600.0
DB_ID_BACKOFF_BASE = 1.0
DB_ID_BACKOFF_CAP = 60.0
DB_ID_CHANGES_WARN = 3
# Python's generation-0 threshold while workers run (default 700 allocations):
# a batch's parsed records (thousands of dicts holding dicts) live across
# many young collections and each pushed them on towards the full ones that
# walk the whole heap (~3 us a stored row, ~30 ms a full pass: bench/README.md).
GC_YOUNG_THRESHOLD = 50_000


def fewer_young_collections() -> None:
    """Raise the generation-0 threshold to GC_YOUNG_THRESHOLD (never lower it)."""
    young, *older = gc.get_threshold()
    if young < GC_YOUNG_THRESHOLD:
        gc.set_threshold(GC_YOUNG_THRESHOLD, *older)


class NodeWorker:
    def __init__(
        self,
        node: FeedNode,
        config: CollectorConfig,
        stop: gevent.event.Event,
        connect: Callable[[], PgStore] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node = node
        self.name = node.name
        self._config = config
        self._stop = stop
        self._connect = connect or (lambda: PgStore.connect(config.dsn, connect_timeout=config.timeout))
        self._clock = clock
        self._client = FeedClient(node.url, node.token, config.timeout, config.max_pull_seconds, config.min_pull_rate)
        self._store: PgStore | None = None
        self.interruptible = True
        # -- state shown on /health and /metrics --
        self.state = "starting"
        self.db_id: str | None = None
        self.after = 0
        self.node_last_seq: int | None = None
        self.rows_stored = 0
        self.rows_rejected = 0
        self.batches = 0
        self.errors = 0
        self.db_restarts = 0
        self.last_error: str | None = None
        # The last error's kind, "<side>:<name>" (node:FeedError, postgresql:OperationalError,
        # node:db_id_flapping): a bounded set, unlike the message (a metric label).
        self.last_error_kind: str | None = None
        self.last_error_at: float | None = None
        self._failing_since = 0.0  # when the current run of failed pulls began
        self.last_pull_at: float | None = None
        self.caught_up_at: float | None = None
        self._recent: list[tuple[float, int]] = []
        self._touched_at = 0.0
        self._db_id_changes: list[float] = []  # when the node's db_id changed, last hour

    # -- figures -------------------------------------------------------------
    @property
    def lag_rows(self) -> int | None:
        if self.node_last_seq is None:
            return None
        return max(0, self.node_last_seq - self.after)

    @property
    def lag_seconds(self) -> float | None:
        """0 when the last pull reached the end of the feed; else how long
        since it last did (since start when it never did)."""
        if self.caught_up_at is None:
            return None
        if self.state == "caught_up":
            return 0.0
        return max(0.0, self._clock() - self.caught_up_at)

    @property
    def rows_per_second(self) -> float:
        now = self._clock()
        recent = [(t, n) for t, n in self._recent if now - t <= RATE_WINDOW]
        self._recent = recent
        return round(sum(n for _, n in recent) / RATE_WINDOW, 1)

    # -- the loop ------------------------------------------------------------
    def run(self) -> None:
        fewer_young_collections()
        attempt = 0
        self.caught_up_at = self._clock()
        while not self._stop.is_set():
            try:
                more = self.pull_once()
                if attempt:
                    self._recovered(attempt)
                attempt = 0
            except RETRYABLE as exc:
                attempt += 1
                self._failed(exc, attempt)
                continue
            if not more:
                self._wait(self._config.poll_interval)
        self.close()

    def _wait(self, seconds: float) -> None:
        self.interruptible = True
        self._stop.wait(timeout=seconds)

    def _failed(self, exc: BaseException, attempt: int) -> None:
        self.errors += 1
        self.state = "error"
        # Which side failed: the central PostgreSQL (every node's worker says
        # so at once), this node (its HTTP answer, the network to it), or a
        # second collector pulling the node into the same database.
        on = ("collector" if isinstance(exc, NodeClaimed)
              else "postgresql" if isinstance(exc, (psycopg.Error, CursorMoved)) else "node")
        # psycopg/libpq may name a piece of the DSN's password: never shown.
        message = self._config.redact("%s%s: %s" % ("PostgreSQL: " if on == "postgresql" else "",
                                                    type(exc).__name__, exc))
        self.last_error = message[:500]
        self.last_error_kind = "%s:%s" % (on, type(exc).__name__)
        self.last_error_at = self._clock()
        if attempt == 1:
            self._failing_since = self.last_error_at
        delay = backoff_delay(attempt, base=0.5, cap=self._config.retry_max_delay)
        log.error("collect_pull_failed", node=self.name, on=on, error=self.last_error, after=self.after,
                  attempt=attempt, retry_in=round(delay, 2))
        self._client.close()
        if on == "postgresql":
            # The connection may be broken or the cursor stale: start over.
            self._drop_store()
        else:
            self._note_error_in_db(message)
        self._wait(delay)

    def _recovered(self, attempts: int) -> None:
        """The first good pull after failed ones: one line says so (and for how long it failed)."""
        log.info("collect_pull_recovered", node=self.name, failed_attempts=attempts, after=self.after,
                 failing_seconds=round(self._clock() - self._failing_since, 1), last_error=self.last_error)

    def _note_error_in_db(self, message: str) -> None:
        store = self._store
        if store is None:
            return
        self.interruptible = False
        try:
            store.record_error(self.name, message)
        except psycopg.Error:
            self._drop_store()
        finally:
            self.interruptible = True

    def _drop_store(self) -> None:
        if self._store is not None:
            try:
                self._store.close()
            except psycopg.Error:
                pass
            self._store = None

    def close(self) -> None:
        self._client.close()
        self._drop_store()

    def _open_store(self) -> PgStore:
        if self._store is None:
            self.interruptible = False
            try:
                store = self._connect()
                try:
                    store.claim_node(self.name)  # one collector pulls a node into a database
                    state = store.node_state(self.name, self.node.url)
                except BaseException:
                    store.close()  # the claim, if taken, goes with the connection
                    raise
            finally:
                self.interruptible = True
            self._store = store
            self.after, self.db_id = state.after, state.db_id
        return self._store

    def pull_once(self) -> bool:
        """One request; True when the node may have more right away.

        ``GET feed?after=<stored cursor>&limit=<feed_limit>`` -> the response's
        ``X-DB-ID`` is compared with the stored one (a different id: the node's
        database is a new file; the cursor restarts at 0, logged, and the
        upsert by call_id makes the replay harmless; the re-pull waits a backoff
        that grows with the changes of the last hour, and past
        ``DB_ID_CHANGES_WARN`` of them the node is shown failing: an id that
        keeps changing is two databases answering one URL, not a replaced file)
        -> lines are checked (hangup times inside the window:
        ``feed.HangupWindow``) and gathered into a batch of at most
        ``batch_size`` records and ``max_batch_bytes`` bytes -> each batch is
        one PostgreSQL transaction with the cursor.  When a pull ends early (an
        error, a cut connection) the complete records already received are
        still stored before the error is handled, then the pull is retried.
        """
        store = self._open_store()
        cfg = self._config
        recovering = self.state == "error"
        self.interruptible = True
        response = self._client.open(self.after, FEED_LIMIT)
        self.last_pull_at = self._clock()
        if response.last_seq is not None:
            self.node_last_seq = response.last_seq
        if not response.db_id:
            raise FeedError("the node's feed has no X-DB-ID (eslcdr too old?)")
        if self.db_id is not None and response.db_id != self.db_id:
            self._client.close()  # the body belongs to the old cursor
            self._database_changed(store, response.db_id)
            return True
        db_id = response.db_id
        batch: list[FeedRecord | Rejected] = []
        size = 0
        received = 0
        previous = self.after
        window = HangupWindow.around(self._clock(), cfg.max_record_age_days)
        try:
            for line in lines_of(response, cfg.max_record_bytes):
                if received >= FEED_LIMIT:
                    raise FeedProtocolError("the node sent more than the %d records asked for" % FEED_LIMIT)
                item = parse_record(line, previous, window)
                previous = item.seq
                batch.append(item)
                size += len(line)
                received += 1
                if len(batch) >= cfg.batch_size or size >= cfg.max_batch_bytes:
                    self._store_batch(store, db_id, batch)
                    batch, size = [], 0
                    if self._stop.is_set():
                        # Shutting down: this batch was the last one.
                        self._client.close()
                        return False
        except TRANSPORT_ERRORS:
            # The complete records received before a cut or a bad line are
            # good: store them, then let the caller back off and resume.
            if batch:
                self._store_batch(store, db_id, batch)
            raise
        if batch:
            self._store_batch(store, db_id, batch)
        if received < FEED_LIMIT:
            self.state = "caught_up"
            self.caught_up_at = self._clock()
            if self.node_last_seq is not None and self.node_last_seq < self.after:
                self.node_last_seq = self.after
            if received == 0 and (recovering or self.db_id is None
                                  or self._clock() - self._touched_at >= TOUCH_INTERVAL):
                # An idle node: note in PostgreSQL that it answers (and its
                # db_id on first contact), at most every TOUCH_INTERVAL.
                self.interruptible = False
                try:
                    store.touch(self.name, db_id)
                finally:
                    self.interruptible = True
                self.db_id = db_id
                self._touched_at = self._clock()
            return False
        self.state = "catching_up"
        return True

    def _database_changed(self, store: PgStore, new_db_id: str) -> None:
        """Restart the node at seq 0, after a backoff that grows with the
        changes of the last hour; past a few, the node is shown failing."""
        now = self._clock()
        self._db_id_changes = [t for t in self._db_id_changes if now - t < DB_ID_WINDOW] + [now]
        changes = len(self._db_id_changes)
        log.warning("collect_node_database_changed", node=self.name, old_db_id=self.db_id,
                    new_db_id=new_db_id, old_after=self.after, changes_last_hour=changes)
        self.interruptible = False
        try:
            store.restart_node(self.name, self.db_id, new_db_id)
        finally:
            self.interruptible = True
        self.db_id, self.after = new_db_id, 0
        self.db_restarts += 1
        delay = backoff_delay(changes, base=DB_ID_BACKOFF_BASE,
                              cap=max(self._config.retry_max_delay, DB_ID_BACKOFF_CAP))
        if changes > DB_ID_CHANGES_WARN:
            self.errors += 1
            self.state = "error"
            self.last_error = ("db_id changed %d times in the last hour: two databases behind one URL?"
                               " (re-pulled from seq 0 each time)" % changes)
            self.last_error_kind = "node:db_id_flapping"
            self.last_error_at = now
            log.warning("collect_node_db_id_flapping", node=self.name, changes_last_hour=changes,
                        retry_in=round(delay, 2))
        self._wait(delay)

    def _store_batch(self, store: PgStore, db_id: str, batch: list) -> None:
        started = time.perf_counter()
        self.interruptible = False
        try:
            result = store.store_batch(self.name, db_id, self.after, batch,
                                       max_new_partitions=self._config.max_new_partitions)
        finally:
            self.interruptible = True
        self.after, self.db_id = result.after, db_id
        self.rows_stored += result.stored
        self.rows_rejected += result.rejected
        self.batches += 1
        now = self._clock()
        self._recent.append((now, result.stored))
        while self._recent and now - self._recent[0][0] > RATE_WINDOW:
            del self._recent[0]
        if self.state == "error":
            self.state = "catching_up"
        log.info("collect_batch_stored", node=self.name, rows=result.stored, rejected=result.rejected,
                 moved=result.moved, after=result.after, ms=round((time.perf_counter() - started) * 1000, 1),
                 **({"partitions_created": list(result.partitions)} if result.partitions else {}))

    def health(self) -> dict:
        return {
            "state": self.state,
            "url": self.node.url,
            "db_id": self.db_id,
            "after": self.after,
            "node_last_seq": self.node_last_seq,
            "lag_rows": self.lag_rows,
            "lag_seconds": None if self.lag_seconds is None else round(self.lag_seconds, 1),
            "rows_stored": self.rows_stored,
            "rows_rejected": self.rows_rejected,
            "rows_per_second": self.rows_per_second,
            "batches": self.batches,
            "errors": self.errors,
            "db_restarts": self.db_restarts,
            "db_id_changes_last_hour": sum(1 for t in self._db_id_changes if self._clock() - t < DB_ID_WINDOW),
            "last_pull_at": self.last_pull_at,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
        }
