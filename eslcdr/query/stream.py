"""Streaming a result in batches: exports in keyset chunks, small results in one statement.

``KeysetStream`` reads a keyset-ordered listing ``chunk`` rows per statement, each its own
short statement read to its end before its rows are handed out: constant memory however many
rows an export has, and no read snapshot held while the response is written (a stalled client
must not stop WAL checkpoints).  It pages exactly as the API's pages do, so a stream skips and
repeats nothing while rows arrive.  ``RowStream`` reads one statement in ``fetchmany`` batches
and holds its snapshot until closed: only for results known to be small.
Both run their first statement in the runner's thread pool (errors surface before any response
header is sent), later ones inline on the hub while each takes under ``INLINE_BATCH_SECONDS``
(a ``KeysetStream`` with ``ahead``: each in the pool, one chunk ahead); ``close()`` always gives
the connection (and heavy slot) back.
"""

from __future__ import annotations

import sqlite3
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from .reader import DatastoreError, Reader, StatementTimeout, rows_of

if TYPE_CHECKING:
    from .pool import ReaderPool

FETCH_BATCH = 500  # rows per batch or chunk of a stream, unless the caller says
WARM_CHUNKS = 8  # chunks of rows a warm statement reads ahead of a cold export (KeysetStream)
INLINE_BATCH_SECONDS = 0.05  # a streamed batch slower than this moves to the thread pool


class KeysetStream:
    """The rows of a keyset-ordered listing, ``chunk`` rows per statement.

    ``chunk_sql(start, n)`` gives the SQL for at most ``n`` rows from the
    row ``start`` on (inclusive; None: from the beginning).  Each chunk asks
    for ``chunk + 1`` rows and the extra one starts the next chunk -- the
    pagination algorithm of the API's pages, so a stream skips and repeats
    nothing while rows arrive, exactly as paging does.  Every chunk is its
    own short statement, read to its end before the rows are handed out:
    no read transaction is open while the response is written, so a client
    that stops reading pins no WAL snapshot and checkpoints go on.
    ``decode(fetched)`` turns a statement's result into the chunk's rows
    (default: as fetched; ``unpack_rows`` for ``packed_sql``).

    The first chunk runs in the constructor, in the runner's thread pool
    (errors surface before any header is sent).  With ``ahead``, each next
    chunk starts in the thread pool as soon as the previous one is read, so
    it is fetched while the caller renders and sends the previous one (at
    most one chunk ahead; it is read to its end there too).  Without, later
    chunks run inline, on the hub, while each takes under
    ``INLINE_BATCH_SECONDS`` (handing each to a thread costs a tuple export
    about a quarter of its speed); a slow one moves the rest to the pool.
    ``limit`` caps the rows of the whole stream.  ``close()`` waits for a
    chunk still being read (a bounded statement) and gives its connection back.
    """

    def __init__(self, pool: ReaderPool, chunk_sql: Callable[[Sequence[Any] | None, int], tuple[str, list[Any]]],
                 chunk: int, limit: int | None, heavy: bool = False,
                 decode: Callable[[list[tuple]], list[Any]] | None = None, ahead: bool = False,
                 warm: Callable[[int, int], tuple[str, list[Any]]] | None = None, descending: bool = True) -> None:
        self._pool = pool
        self._warm = warm
        self._descending = descending
        self._cold = False
        self._warmer: PendingChunk | None = None
        self._warmed: int | None = None
        self._heavy = heavy
        self._chunk_sql = chunk_sql
        self._chunk = chunk
        self._left = limit
        self._decode = decode
        self._ahead = ahead
        self._inline = False
        self._closed = False
        self._pending: PendingChunk | None = None
        first = self._start(None)
        self._first = first.result()
        self._cold = first.waited_on_disk

    @property
    def empty(self) -> bool:
        """True when the listing has no row at all."""
        return not self._first

    def _start(self, start: Sequence[Any] | None) -> "PendingChunk":
        size = self._chunk if self._left is None else min(self._chunk, self._left)
        sql, args = self._chunk_sql(start, size + 1)
        return PendingChunk(self._pool, sql, args, self._heavy, self._decode)

    def _read(self, start: Sequence[Any] | None) -> list[Any]:
        size = self._chunk if self._left is None else min(self._chunk, self._left)
        sql, args = self._chunk_sql(start, size + 1)
        started = time.monotonic()
        rows = self._pool.fetch_chunk(sql, args, self._inline, self._heavy)
        self._inline = time.monotonic() - started < INLINE_BATCH_SECONDS
        return rows if self._decode is None else self._decode(rows)

    def __iter__(self) -> Iterator[list[Any]]:
        rows, self._first = self._first, []
        while rows and not self._closed:
            size = self._chunk if self._left is None else min(self._chunk, self._left)
            batch, rest = rows[:size], rows[size:]
            if self._left is not None:
                self._left -= len(batch)
            more = bool(rest) and self._left != 0
            if more and self._ahead:
                self._pending = self._start(rest[0])
                if self._cold and self._warm is not None:
                    self._warm_after(rows)
            yield batch
            if not more:
                break
            if self._pending is not None:
                pending, self._pending = self._pending, None
                rows = pending.result()
                self._cold = self._cold or pending.waited_on_disk
            else:
                rows = self._read(rest[0])

    def _warm_after(self, rows: list[Any]) -> None:
        """Start the warm statement for the window after ``rows`` unless one
        runs, or what was warmed reaches more than half a window ahead."""
        if self._warmer is not None:
            if not self._warmer.ready():
                return
            warmer, self._warmer = self._warmer, None
            warmer.cancel()  # finished: collect it, the number is not needed
        first_key, last_key = rows[0][-2], rows[-1][-2]
        if type(first_key) is not int or type(last_key) is not int:
            return
        window = (abs(first_key - last_key) + 1) * WARM_CHUNKS
        if self._descending:
            edge = last_key if self._warmed is None else min(last_key, self._warmed)
            if last_key - edge > window // 2:
                return
            low, high, self._warmed = edge - window, edge, edge - window - 1
        else:
            edge = last_key if self._warmed is None else max(last_key, self._warmed)
            if edge - last_key > window // 2:
                return
            low, high, self._warmed = edge, edge + window, edge + window + 1
        self._warmer = PendingChunk(self._pool, *self._warm(low, high), heavy=False, decode=None)

    def close(self) -> None:
        self._closed = True
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()
        warmer, self._warmer = self._warmer, None
        if warmer is not None:
            warmer.cancel()


def waited_on_disk(wall: float, cpu: float) -> bool:
    """Whether a statement that took ``wall`` seconds, ``cpu`` of them
    running, mostly waited: page faults on a file not in the page cache."""
    return wall > 0.002 and wall > 2 * cpu


class PendingChunk:
    """One chunk statement started in the runner's thread pool (with a heavy
    slot first when ``heavy``); ``result()`` waits for its rows, ``cancel()``
    for its end.  Either gives the connection (and slot) back, once."""

    def __init__(self, pool: ReaderPool, sql: str, args: Sequence[Any], heavy: bool,
                 decode: Callable[[list[tuple]], list[Any]] | None) -> None:
        self._pool = pool
        self._heavy = heavy
        self._decode = decode
        if heavy:
            pool.heavy.acquire()
        try:
            self._reader: Reader | None = pool.acquire()
        except BaseException:
            if heavy:
                pool.heavy.release()
            raise
        reader = self._reader

        def run() -> list[tuple]:
            return rows_of(reader.conn, sql, args)

        self.waited_on_disk = False

        def timed() -> list[tuple]:
            started, cpu = time.perf_counter(), time.thread_time()
            rows = reader.call(run, coarse=True)
            self.waited_on_disk = waited_on_disk(time.perf_counter() - started, time.thread_time() - cpu)
            return rows

        self._job = pool.runner.spawn(timed)

    def result(self) -> list[Any]:
        """The chunk's rows, decoded here: decoding holds the GIL, which a
        worker thread would first have to win from the hub."""
        try:
            rows = self._job.get()
        finally:
            self._done()
        return rows if self._decode is None else self._decode(rows)

    def ready(self) -> bool:
        return self._job.ready()

    def cancel(self) -> None:
        try:
            self._job.get()
        except (StatementTimeout, DatastoreError):
            pass  # nobody wants these rows any more
        finally:
            self._done()

    def _done(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            self._pool.release(reader)
            if self._heavy:
                self._pool.heavy.release()


class RowStream:
    """Rows of one statement in batches of ``fetchmany``.

    The statement runs and its first batch is read in the constructor, in
    the runner's thread pool: that is where SQLite may sort or scan before
    its first row, and errors surface before any response header is sent.
    Later batches run inline, on the hub, while each takes under
    ``INLINE_BATCH_SECONDS``: handing every batch to a thread costs an
    export about a quarter of its speed (sqlite3 takes the GIL back for each
    row).  The first slow batch moves the rest of the stream to the pool.
    ``close()`` (also called on exhaustion) returns the connection to the
    pool; unread rows are discarded.
    """

    def __init__(self, pool: ReaderPool, sql: str, args: Sequence[Any], batch: int) -> None:
        self._pool = pool
        self._batch = batch
        self._reader: Reader | None = pool.acquire()
        self._cursor: sqlite3.Cursor | None = None
        try:
            started = time.monotonic()
            self._first = self._pool.runner.spawn(lambda: self._reader.call(lambda: self._open(sql, args))).get()
            self._inline = time.monotonic() - started < INLINE_BATCH_SECONDS
        except BaseException:
            self.close()
            raise

    @property
    def empty(self) -> bool:
        """True when the statement returned no row at all."""
        return not self._first

    def _open(self, sql: str, args: Sequence[Any]) -> list[tuple]:
        self._cursor = self._reader.conn.execute(sql, args)
        return self._cursor.fetchmany(self._batch)

    def _next_batch(self) -> list[tuple]:
        reader, cursor, size = self._reader, self._cursor, self._batch
        if not self._inline:
            return self._pool.runner.spawn(lambda: reader.call(lambda: cursor.fetchmany(size))).get()
        started = time.monotonic()
        rows = reader.call(lambda: cursor.fetchmany(size))
        self._inline = time.monotonic() - started < INLINE_BATCH_SECONDS
        return rows

    def __iter__(self) -> Iterator[list[tuple]]:
        try:
            rows, self._first = self._first, []
            while rows:
                yield rows
                if len(rows) < self._batch or self._reader is None:
                    break
                rows = self._next_batch()
        finally:
            self.close()

    def close(self) -> None:
        reader, self._reader = self._reader, None
        if reader is None:
            return
        if self._cursor is not None:
            try:
                self._cursor.close()
            except sqlite3.Error:
                pass  # the connection is still usable; the statement is gone
            self._cursor = None
        self._pool.release(reader)
