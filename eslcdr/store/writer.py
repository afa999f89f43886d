"""The writer: the only greenlet that writes to SQLite.

The ESL readers hand CDR records to ``submit()``, which only appends to a
bounded in-memory list (no I/O, never blocks the socket reader); the writer
commits them in batches (``Writer.run``, ``_gather``), each in one
transaction with the interaction links of its legs and any interaction
merges, in a thread of gevent's pool (sqlite3 releases the GIL while SQLite
works, so the ESL readers keep decoding meanwhile).

When SQLite fails (disk full, file locked, I/O error) the batch is kept and
retried with capped jittered backoff.  Nothing is refused while the spool
(store/spool.py) can be written (``Writer`` says how); only when it cannot
either is a record lost, logged in full at error level.  Retention
(store/retention.py) schedules deletions; the writer runs them in small
batches between two insert batches, as it replays the spool.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Callable

import gevent
import gevent.event
import structlog

from ..backoff import backoff_delay
from ..supervise import IDLE_WAKE, in_thread
from .db import insert_records
from .retention import delete_expired
from .spool import MergeBacklog, Spool, SpoolFeed

log = structlog.get_logger(__name__)

# Key of a record submitted to replace the stored row of its call_id (not a
# column: record_row ignores it).
REPLACES_STORED = "replaces_stored"
MIN_OVERFLOW = 1000
# A batch waits for this many records (or for as long as they took to come
# at the rate of the batch before), at most flush_interval: a row costs less
# in a bigger transaction (SQLite CPU ~125, 100, 80 µs a row in batches of
# 16, 64, 256, bench/README.md #18; a row dirties ~6 pages of the WAL in a
# 16-row batch, ~4 in a 64-row one), and neither end of a burst is kept
# waiting.  128: at 200 calls/s (~660 legs/s) a batch gathers for ~0.19 s
# instead of ~0.1 (72 against 80 µs a row in-process); more would cost
# latency at higher rates (256: p99 +~150 ms at ~1,200 legs/s,
# bench/latency.py --cps 400).
GATHER_ROWS = 128

# Errors worth retrying: SQLITE_FULL, SQLITE_BUSY/LOCKED, SQLITE_IOERR all
# arrive as OperationalError; a DatabaseError covers a file that vanished.
RETRYABLE = (sqlite3.OperationalError, sqlite3.DatabaseError)


def _in_thread(work: Callable[[], int]) -> int:
    """Run blocking SQLite work in gevent's thread pool (one call at a time:
    the writer greenlet waits for it, so the connection has one user); SQLite
    and OS errors are raised here (see ``supervise.in_thread``)."""
    return in_thread(work, errors=(sqlite3.Error, OSError))


def _split(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """(new records, records replacing a stored row)"""
    return ([record for record in records if not record.get(REPLACES_STORED)],
            [record for record in records if record.get(REPLACES_STORED)])


class Writer:
    """The only writer of the SQLite file.

    A batch gathers after its first record wakes the writer: it is committed
    (up to ``batch_size`` records) once GATHER_ROWS records wait, or when the
    batch's window closes -- the time the last batch took to bring
    GATHER_ROWS records, never more than ``flush_interval`` after the first
    record.  So a media server's trickle of CDRs costs a few transactions a
    second, not one per leg, while a burst starts its first transaction early
    and its last one does not wait.

    After a failed transaction the writer moves its whole backlog, and the
    interaction merges it was to apply, to the spool file (so a crash or
    SIGKILL during a long outage loses nothing, and memory stays bounded
    however long it lasts); records arriving past ``capacity``, and merges
    while the spool holds records, are appended to it by the spooler
    greenlet.  The spool is replayed (idempotent on call_id) a batch at a
    time, interleaved with live batches, as soon as SQLite takes writes --
    which includes the start.  Only when the spool cannot be written either
    is a record lost: the spooler, or ``submit()``'s caller when even the
    queue to the spooler is full, logs it in full at error level.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        batch_size: int = 500,
        flush_interval: float = 0.2,
        capacity: int = 100_000,
        max_retry_delay: float = 10.0,
        on_written: Callable[[int, int], None] | None = None,
        offload: Callable[[Callable[[], int]], int] | None = None,
        retention_batch: int = 250,
        spool: Spool | None = None,
    ) -> None:
        self._conn = conn
        self._batch_size = batch_size
        self._gather_rows = min(batch_size, GATHER_ROWS)
        self._flush_interval = flush_interval
        self._capacity = capacity
        self._max_retry_delay = max_retry_delay
        self._on_written = on_written
        self._offload = offload or _in_thread
        self._wake = gevent.event.Event()
        self._pending: list[dict] = []
        self._overflow = max(capacity, MIN_OVERFLOW)
        # Collector acknowledgements (token sha256 -> (seq, pull time µs)),
        # the latest per token, stored with the next transaction.
        self._acks: dict[str, tuple[int, int]] = {}
        # The retention run in progress: (cutoff timestamp, collector keys).
        self._retention: tuple[int, frozenset[str]] | None = None
        self._retention_deleted = 0
        self._retention_batch = retention_batch
        self.deleted = 0
        # The spool (on disk) takes what memory cannot: records past
        # ``capacity`` (via the feed's overflow and the spooler greenlet)
        # and the whole backlog once SQLite has failed (the writer spills it);
        # interaction merges wait in memory for the next transaction or append.
        self._merges = MergeBacklog(self._overflow, self._wake_for_merges,
                                    lambda: self._feed is not None and self._feed.in_use)
        self._feed = None if spool is None else SpoolFeed(spool, self._offload, self._wake_up, IDLE_WAKE,
                                                          self._merges)
        # meta table entries (e.g. the backfill's high-water mark), stored
        # with the next transaction: after every record submitted before.
        self._meta: dict[str, str] = {}
        self._idle = gevent.event.Event()
        self._idle.set()
        self._stopping = False
        # The window of the batch gathering: it closes at _first_at + _window
        # (monotonic), _first_at being when its first work arrived.  _flush:
        # how many of the records waiting are written without a window
        # (wait_idle asks for those waiting when it is called).
        self._first_at = time.monotonic()
        self._window = flush_interval
        self._timer = None  # closes the window of a batch gathering (_arrives)
        self._taken_at = time.monotonic()
        self._flush = 0
        self.batches = 0
        self.written = 0
        self.duplicates = 0
        self.refused = 0
        self.failures = 0
        self.last_write_at: float | None = None
        self.last_error: str | None = None
        # Monotonic time of the last commit, or of the last moment nothing
        # was waiting: how long CDRs have waited without progress.
        self._progress_at = time.monotonic()

    # -- the producer side (called from ESL readers: no I/O) ------------
    @property
    def backlog(self) -> int:
        return len(self._pending)

    @property
    def spool_backlog(self) -> int:
        """Records in the spool (or on their way to it) not yet in SQLite."""
        return self._feed.backlog if self._feed is not None else 0

    @property
    def spooled(self) -> int:
        return self._feed.spooled if self._feed is not None else 0

    @property
    def lost(self) -> int:
        return self._feed.lost if self._feed is not None else 0

    @property
    def merges_waiting(self) -> int:
        """Interaction merges held in memory (for the next transaction, or
        on their way to the spool)."""
        return len(self._merges)

    merges_lost = property(lambda self: self._merges.lost)
    # Merge lines in the spool file, not yet applied in SQLite.
    spool_merges = property(lambda self: self._feed.spool.merges if self._feed is not None else 0)

    def _spool_waiting(self) -> int:
        return self._feed.waiting if self._feed is not None else 0

    def stalled_seconds(self, now: float) -> float:
        """Seconds work has been waiting without a commit (0 when idle);
        CDRs and merges waiting in the spool are waiting too."""
        if not self._pending and not self._merges and not self._acks and not self._spool_waiting():
            return 0.0
        return max(0.0, now - self._progress_at)

    def submit(self, record: dict) -> bool:
        """Take a record; False only when neither memory nor the spool can
        (the caller then logs the record in full)."""
        if len(self._pending) >= self._capacity:
            # The overflow is only a hand-over to the spooler, drained each
            # time the reader yields: bounded, but not by a tiny queue_size.
            if self._feed is not None and self._feed.hand_over(record, self._overflow):
                return True
            self.refused += 1
            return False
        pending = self._pending
        pending.append(record)
        if self._idle.is_set():
            self._arrives()
        elif len(pending) >= self._gather_rows and not self._wake.is_set():
            self._wake.set()  # enough for a batch: no reason to wait
        return True

    def _arrives(self) -> None:
        """The first work after the writer went idle: its window opens.  A
        timer wakes the writer when it closes (a flush or a full batch does
        sooner): one wake-up per batch, not one more to start waiting."""
        self._idle.clear()
        # Until now nothing waited: a stall is counted from here, not from
        # when the writer went idle (it may have slept IDLE_WAKE since).
        self._progress_at = self._first_at = time.monotonic()
        self._close_timer()
        timer = self._timer = gevent.get_hub().loop.timer(self._window)
        timer.start(self._wake.set, update=True)

    def _close_timer(self) -> None:
        if self._timer is not None:
            self._timer.close()  # (stops it)
            self._timer = None

    def quiet_until(self, at: float) -> None:
        """A reader hands over nothing before ``at`` (monotonic: it lets events
        gather until then).  If the batch's window closes before that, no
        record can join it: commit it now, in the reader's wake-up, not on a
        wake-up of its own -- still no sooner than a window after the last."""
        window = self._window
        if self._pending and not self._flush and self._first_at + window <= at:
            if self._taken_at + window <= time.monotonic():
                self._flush = len(self._pending)
                self._wake.set()

    def acknowledge(self, key: str, after: int, at_us: int) -> None:
        """A collector pulled the feed with ``after``: store it with the next
        transaction (no I/O here: the API must not wait for the writer)."""
        self._acks[key] = (after, at_us)
        if self._idle.is_set():
            self._arrives()

    def note_meta(self, key: str, value: str) -> None:
        """Store ``meta[key] = value`` with the next transaction (no I/O)."""
        self._meta[key] = value
        if self._idle.is_set():
            self._arrives()

    def submit_replacement(self, record: dict) -> bool:
        """A record that replaces the stored row of its call_id (new seq)."""
        record[REPLACES_STORED] = True
        return self.submit(record)

    def schedule_retention(self, cutoff_timestamp: int, collectors: frozenset[str]) -> None:
        """Delete rows hung up before ``cutoff_timestamp`` (Gregorian s) that
        every registered collector of ``collectors`` has acknowledged: in
        batches of ``retention_batch`` rows, one between two insert batches,
        until none is left."""
        self._retention = (cutoff_timestamp, collectors)
        if not self._wake.is_set():
            self._wake.set()

    @property
    def retention_running(self) -> bool:
        return self._retention is not None

    def merge_interactions(self, merges: list[tuple[str, str]]) -> None:
        """Two interactions found to be one: rows already written are updated
        in the next transaction; records still waiting are updated here (a
        later batch must not write the old id after that UPDATE ran).  While
        the spool holds records (or takes some), the merges follow them into
        it: its replay applies them after the records before them."""
        for old, new in merges:
            for waiting in (self._pending, self._feed.overflow if self._feed is not None else ()):
                for record in waiting:
                    if record.get("interaction_id") == old:
                        record["interaction_id"] = new
        self._merges.add(merges)

    def _wake_for_merges(self) -> None:
        """Wake whoever is to take the merges waiting (MergeBacklog)."""
        if self._merges.for_spool:
            self._feed.wake.set()
        elif self._idle.is_set():
            self._arrives()

    # -- the writer greenlet --------------------------------------------
    def run(self) -> None:
        """Write batches until stop() and the backlog is drained.

        The first work wakes the writer; the batch then gathers (_gather)
        until it is full or its window closes, and is committed in one
        transaction.  Under load batches are full; when CDRs trickle in, a
        batch holds what arrived within ``flush_interval``.
        """
        attempt = 0
        while True:
            has_work = self._has_work()
            if not has_work:
                self._idle.set()
                self._flush = 0
                if not self._spool_waiting():
                    self._progress_at = time.monotonic()
                if self._stopping:
                    return
                if self._retention is None and not self._replay_due():
                    self._wake.wait(timeout=IDLE_WAKE)
                    self._wake.clear()
                    continue
            try:
                if has_work:
                    self._gather()
                    self._write_one_batch()
                if self._replay_due():
                    self._replay_one_chunk()
                # Deletion interleaves with the inserts: small batches while
                # a batch gathers (until its window closes) and one after
                # it, none while a backlog of a whole batch is waiting --
                # ingest first, always.
                if (
                    self._retention is not None
                    and not self._stopping
                    and len(self._pending) < self._batch_size
                ):
                    self._delete_one_batch()
                attempt = 0
            except RETRYABLE as exc:
                attempt += 1
                self.failures += 1
                self.last_error = str(exc)
                delay = backoff_delay(attempt, base=0.1, cap=self._max_retry_delay)
                log.error(
                    "sqlite_write_failed",
                    error=str(exc),
                    backlog=len(self._pending),
                    retry_in=round(delay, 3),
                )
                # SQLite has already kept us waiting (busy_timeout): put the
                # backlog on disk, so a crash or kill meanwhile loses nothing.
                self._spill()
                if self._stopping and attempt >= 3:
                    log.error("writer_gave_up", unwritten=len(self._pending), spooled=self.spool_backlog)
                    return
                gevent.sleep(delay)
                continue
            # Let the readers run before the next batch (if none is due, the
            # wait at the top of the loop does).
            if self._has_work() or self._retention is not None or self._replay_due():
                gevent.sleep(0)

    def _has_work(self) -> bool:
        return bool(self._pending or self._merges.for_transaction or self._acks or self._meta)

    def _gather(self) -> None:
        """Wait for the batch to gather: until GATHER_ROWS records wait or
        its window closes (or a flush, or stop).  Meanwhile the spool is
        replayed and retention deletes, a chunk at a time."""
        deadline = self._first_at + self._window
        while not self._stopping and not self._flush and len(self._pending) < self._gather_rows:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if self._replay_due():
                self._replay_one_chunk()
            elif self._retention is not None:
                self._delete_one_batch()
            else:
                self._wake.clear()
                self._wake.wait(timeout=left)

    # -- the spool (store/spool.py, SpoolFeed) ---------------------------
    def run_spooler(self) -> None:
        """Append records past ``capacity`` to the spool, fsynced per batch.
        Only if that fails is a record lost: logged in full, at error."""
        if self._feed is not None:
            self._feed.run()

    def _wake_up(self) -> None:
        if not self._wake.is_set():
            self._wake.set()

    def _spill(self) -> None:
        """Move the in-memory backlog and merges to the spool (after a failed write)."""
        if self._feed is not None and (self._pending or self._merges):
            self._feed.spill(self._pending)

    def _replay_due(self) -> bool:
        feed = self._feed
        # Live records first while memory is filling up.
        return (
            feed is not None
            and not feed.spool.empty
            and not self._stopping
            and len(self._pending) < max(1, self._capacity // 2)
        )

    def _replay_one_chunk(self) -> None:
        feed = self._feed
        records, merges, offset = feed.read(self._batch_size)
        conn = self._conn
        inserts, replacements = _split(records)
        new = self._offload(lambda: insert_records(conn, inserts, merges=merges, replacements=replacements))
        new += len(replacements)
        self._progress_at = time.monotonic()
        self.written += new
        self.duplicates += len(records) - new
        self.last_write_at = time.time()
        feed.replayed(offset, len(records), len(merges))
        log.debug("spool_batch_replayed", rows=new, duplicates=len(records) - new, merges=len(merges),
                  spool_backlog=feed.backlog)

    def _write_one_batch(self) -> None:
        self._close_timer()
        taken_at = time.monotonic()
        waited = taken_at - self._first_at
        batch = self._pending[: self._batch_size]
        acks = dict(self._acks)
        meta = dict(self._meta)
        inserts, replacements = _split(batch)
        started = time.perf_counter()
        conn = self._conn
        with self._merges.applying() as merges:
            new = self._offload(
                lambda: insert_records(conn, inserts, merges=merges, replacements=replacements, acks=acks, meta=meta)
            )
        # Only now that the transaction committed do the records leave memory.
        del self._pending[: len(batch)]
        for key, value in acks.items():
            if self._acks.get(key) == value:
                del self._acks[key]
        for key, value in meta.items():
            if self._meta.get(key) == value:
                del self._meta[key]
        new += len(replacements)
        self.written += new
        self.duplicates += len(batch) - new
        self.batches += 1
        self.last_write_at = time.time()
        now = self._progress_at = time.monotonic()
        # The next window: as long as GATHER_ROWS took to arrive at the rate
        # this batch came in at, at most flush_interval.  What arrived
        # during this transaction has waited since it began.
        rate = len(batch) / max(taken_at - self._taken_at, 1e-6)
        self._window = min(self._flush_interval, GATHER_ROWS / rate) if batch else self._flush_interval
        self._taken_at = taken_at
        self._first_at = taken_at if self._pending else now
        self._flush = max(0, self._flush - max(len(batch), 1))
        if self._on_written is not None:
            self._on_written(new, len(batch) - new)
        if not batch and not merges:
            return  # acknowledgements only: nothing worth a line
        log.debug(
            "batch_written",
            rows=new,
            duplicates=len(batch) - new,
            merges=len(merges),
            # how long the batch's first record waited for its transaction
            waited_ms=round(waited * 1000, 1),
            ms=round((time.perf_counter() - started) * 1000, 2),
        )

    def _delete_one_batch(self) -> None:
        job = self._retention
        if job is None:
            return
        cutoff, collectors = job
        conn, limit = self._conn, self._retention_batch
        started = time.perf_counter()
        deleted = self._offload(lambda: delete_expired(conn, cutoff, collectors, limit))
        self.deleted += deleted
        self._retention_deleted += deleted
        if deleted:
            log.debug("retention_batch", rows=deleted, ms=round((time.perf_counter() - started) * 1000, 2))
        if deleted < limit and self._retention is job:
            self._retention = None
            if self._retention_deleted:
                log.info("retention_deleted", rows=self._retention_deleted, cutoff_timestamp=cutoff)
            self._retention_deleted = 0

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._feed is not None:
            self._feed.stopping = True
            self._feed.wake.set()

    def wait_idle(self, timeout: float) -> bool:
        """True once everything submitted so far is committed (what waits
        now is written without waiting for a window)."""
        self._flush = max(self._flush, len(self._pending), 1)
        self._wake.set()
        return self._idle.wait(timeout=timeout)
