"""Reader connection pools and the heavy-query lane.

``ReaderPool`` keeps a few idle read-only connections (``store.connect_reader``, memory-mapped,
a short busy timeout), each a ``Reader`` bounded by ``statement_timeout``, opened on demand;
it runs a bounded result in one call (``fetch_all``, ``fetch_chunk``) and opens streams
(``stream``, ``keyset_stream``).  A connection is given back after every call or stream, and
beyond ``max_idle`` it is closed.  A connection that cannot be opened is a ``DatastoreError``.
``HeavyLane``: statements that may read every row of a range (``is_heavy``: filtered listings;
stats; filtered worst legs) take one of ``[api] heavy_queries`` slots first, waiting at most
``statement_timeout`` (then ``StatementTimeout``); light statements never wait there.  Its
``pacer()`` slices a heavy request's Python work on the hub so light pages keep their latency.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .params import ListQuery
from .reader import DatastoreError, GeventRunner, InlineRunner, Reader, StatementTimeout, rows_of
from .stream import FETCH_BATCH, KeysetStream, RowStream
from ..store.db import connect_reader

READER_MMAP_BYTES = 1 << 34  # SQLite caps it at its build's maximum (2 GiB here)
# A heavy request's Python work on the hub (the buckets of a month by minute,
# their CSV or JSON: ~0.5 s) runs in slices of HEAVY_SLICE seconds, each
# followed by HEAVY_PAUSE seconds that no heavy request works (HeavyLane.pacer).
# Yielding to other greenlets is not enough: a worker thread (a light page's
# query, the writer) takes the GIL back for every row it reads, and while the
# hub computes it waits up to the switch interval (5 ms) each time -- 51 rows,
# a quarter of a second.  In the pause the hub idles in its poll, GIL free.
HEAVY_SLICE = 0.003
HEAVY_PAUSE = 0.002


def is_heavy(query: ListQuery) -> bool:
    """A listing with filters: they are not indexed, so SQLite may evaluate
    them (JSON paths, NOT ...) on every row of the time range before it finds
    a page -- hundreds of ms on 100k rows, where a plain first page takes a
    few.  Such statements go through the pool's heavy lane."""
    return bool(query.filters)


class HeavyLane:
    """At most ``slots`` heavy statements run at once; the others wait
    (cooperatively, at most ``wait`` seconds, then ``StatementTimeout``).

    Without it a dozen filter-heavy listings fill gevent's thread pool and
    share two cores and the GIL with everything else, and a one-row page
    waits behind them.  Light statements never wait here.

    ``pacer()`` paces a heavy request's Python work on the hub: slices of
    HEAVY_SLICE seconds, one request's at a time, each followed by
    HEAVY_PAUSE seconds left to everything else.
    """

    def __init__(self, slots: int, wait: float) -> None:
        self.slots = slots
        self.wait = wait
        self._semaphore: Any = None
        self._quiet_until = 0.0

    def pacer(self) -> Callable[[], None]:
        """A ``breathe()`` for one heavy request's loop on the hub: call it
        every few items.  Once the request has worked HEAVY_SLICE seconds it
        sleeps until the lane's pause is over -- while one request pauses, no
        other heavy request works either -- and starts a new slice.  The
        first slice starts once a pause under way is over."""
        self._wait_quiet()
        resumed = time.perf_counter()

        def breathe() -> None:
            nonlocal resumed
            now = time.perf_counter()
            if now - resumed >= HEAVY_SLICE:
                self._rest(now)
                resumed = time.perf_counter()

        return breathe

    def _rest(self, now: float) -> None:
        self._quiet_until = max(self._quiet_until, now + HEAVY_PAUSE)
        self._wait_quiet()

    def _wait_quiet(self) -> None:
        import gevent  # here: the daemon patches before building the API

        while True:
            left = self._quiet_until - time.perf_counter()
            if left <= 0:
                return
            gevent.sleep(left)

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()

    def acquire(self) -> None:
        if self._semaphore is None:
            from gevent.lock import BoundedSemaphore  # here: the daemon patches before building the API

            self._semaphore = BoundedSemaphore(self.slots)
        if not self._semaphore.acquire(timeout=self.wait):
            raise StatementTimeout("too many filtered queries at once: none freed a slot in %.1f s" % self.wait)

    def release(self) -> None:
        self._semaphore.release()


class ReaderPool:
    """A few idle read-only connections, opened on demand."""

    def __init__(
        self,
        path: str | Path,
        statement_timeout: float,
        *,
        runner: InlineRunner | GeventRunner | None = None,
        max_idle: int = 8,
        heavy_slots: int = 2,
    ) -> None:
        self.path = path
        self.statement_timeout = statement_timeout
        self.runner = runner or GeventRunner()
        self._idle: list[Reader] = []
        self._max_idle = max_idle
        self.heavy = HeavyLane(heavy_slots, statement_timeout)

    def acquire(self) -> Reader:
        if self._idle:
            return self._idle.pop()
        try:
            conn = connect_reader(self.path)
            # Readers wait briefly on a lock (WAL recovery), never for seconds.
            conn.execute("PRAGMA busy_timeout=1000")
            # Memory-mapped reads: a listing touches one table page per row,
            # and a pread() per page was half the cost of an export.
            conn.execute("PRAGMA mmap_size=%d" % READER_MMAP_BYTES)
        except sqlite3.Error as exc:
            raise DatastoreError("cannot open %s: %s" % (self.path, exc)) from None
        return Reader(conn, self.statement_timeout)

    def release(self, reader: Reader) -> None:
        if len(self._idle) < self._max_idle:
            self._idle.append(reader)
        else:
            reader.conn.close()

    def close(self) -> None:
        while self._idle:
            self._idle.pop().conn.close()

    def fetch_all(self, sql: str, args: Sequence[Any], limit: int = 100_000, heavy: bool = False) -> list[tuple]:
        """A bounded result (a page, one CDR) in one call; ``heavy`` waits for
        a slot of the heavy lane first."""
        if heavy:
            with self.heavy.slot():
                return self.fetch_all(sql, args, limit)
        reader = self.acquire()
        try:
            return self.runner.spawn(lambda: reader.call(lambda: reader.conn.execute(sql, args).fetchmany(limit))).get()
        finally:
            self.release(reader)

    def fetch_chunk(self, sql: str, args: Sequence[Any], inline: bool, heavy: bool = False) -> list[tuple]:
        """Every row of a statement with a LIMIT, read to its end: the
        statement is finished and its read transaction over when this returns.
        A heavy chunk waits for a slot of the heavy lane and never runs inline."""
        if heavy:
            with self.heavy.slot():
                return self.fetch_chunk(sql, args, False)
        reader = self.acquire()

        def run() -> list[tuple]:
            return rows_of(reader.conn, sql, args)

        try:
            if inline:
                return reader.call(run)
            return self.runner.spawn(lambda: reader.call(run)).get()
        finally:
            self.release(reader)

    def stream(self, sql: str, args: Sequence[Any], batch: int = FETCH_BATCH) -> RowStream:
        """One statement read in batches: it holds its read snapshot until
        closed, so only for results known to be small.  Exports use
        ``keyset_stream``."""
        return RowStream(self, sql, args, batch)

    def keyset_stream(self, chunk_sql: Callable[[Sequence[Any] | None, int], tuple[str, list[Any]]],
                      chunk: int = FETCH_BATCH, limit: int | None = None, heavy: bool = False,
                      decode: Callable[[list[tuple]], list[Any]] | None = None,
                      ahead: bool = False, warm: Callable[[int, int], tuple[str, list[Any]]] | None = None,
                      descending: bool = True) -> KeysetStream:
        return KeysetStream(self, chunk_sql, chunk, limit, heavy, decode, ahead, warm, descending)
