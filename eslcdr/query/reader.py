"""One read-only SQLite connection, every call bounded in time, and where its calls run.

``Reader`` wraps a connection whose progress handler aborts any single SQLite call that runs
longer than ``statement_timeout`` (``StatementTimeout``); any other SQLite failure is a
``DatastoreError``.  These two are the only errors a query raises past this module.
A runner decides where a call runs: ``GeventRunner`` in the hub's thread pool -- SQLite
releases the GIL, so the hub and the ESL reader on it keep running while a statement sorts
or scans -- and ``InlineRunner`` in the caller (tests, tools without a hub).  Both return a
job whose ``get()`` gives the value or raises the call's error.
``rows_of`` reads a statement to its end and closes its cursor: its read transaction ends
there, not when the cursor is collected.
"""

from __future__ import annotations

import math
import sqlite3
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeVar

if TYPE_CHECKING:
    from ..supervise import ThreadJob

T = TypeVar("T")

_PROGRESS_STEPS = 4000  # VM instructions between deadline checks
# The same for a packed chunk read in a worker thread: every check is a Python
# call, which waits for the GIL (up to the 5 ms switch interval) while the hub
# renders -- 25 checks per 1,000-row chunk stalled the worker more than SQLite
# worked.  A million instructions take a few ms; the deadline is checked once
# more when the statement ends.
_COARSE_PROGRESS_STEPS = 1_000_000


class StatementTimeout(Exception):
    """A statement ran longer than ``[api] statement_timeout`` and was aborted."""


class DatastoreError(Exception):
    """The database could not be opened or queried."""


class Done:
    """An already finished job (what ``InlineRunner.spawn`` returns)."""

    def __init__(self, fn: Callable[[], T]) -> None:
        try:
            self._value, self._error = fn(), None
        except Exception as exc:  # re-raised by get(), like a thread pool would
            self._value, self._error = None, exc

    def get(self) -> Any:
        if self._error is not None:
            raise self._error
        return self._value

    def ready(self) -> bool:
        return True


class InlineRunner:
    """Runs SQLite calls in the caller (tests, tools without a hub)."""

    def spawn(self, fn: Callable[[], T]) -> Done:
        return Done(fn)


class GeventRunner:
    """Runs SQLite calls in the current hub's thread pool.

    SQLite releases the GIL while it works, so the hub -- and the ESL reader
    on it -- keeps running; ``spawn`` returns a job whose ``get()`` waits
    cooperatively.  The named query errors travel back as values: raised in
    the worker thread, gevent would print each one raw to stderr, outside the
    structured log.
    """

    def spawn(self, fn: Callable[[], T]) -> "ThreadJob[T]":
        # Here, not at import: the daemon patches before building the API.
        from ..supervise import spawn_in_thread

        return spawn_in_thread(fn, errors=(StatementTimeout, DatastoreError))


class Reader:
    """One read-only connection whose every call is bounded in time."""

    def __init__(self, conn: sqlite3.Connection, timeout: float) -> None:
        self.conn = conn
        self.timeout = timeout
        self._deadline = math.inf
        self._timed_out = False
        conn.set_progress_handler(self._progress, _PROGRESS_STEPS)

    def _progress(self) -> int:
        if time.monotonic() > self._deadline:
            self._timed_out = True
            return 1  # non-zero aborts the statement (OperationalError: interrupted)
        return 0

    def call(self, fn: Callable[[], T], coarse: bool = False) -> T:
        """``fn()`` (SQLite calls on this connection), aborted past the timeout.

        ``coarse``: for a statement in a worker thread, the deadline is
        checked every _COARSE_PROGRESS_STEPS instructions and at its end
        (a statement that finished late is a timeout too)."""
        self._deadline = time.monotonic() + self.timeout
        self._timed_out = False
        if coarse:
            self.conn.set_progress_handler(self._progress, _COARSE_PROGRESS_STEPS)
        try:
            result = fn()
            if coarse and time.monotonic() > self._deadline:
                raise StatementTimeout("statement ran longer than %.1f s" % self.timeout)
            return result
        except sqlite3.OperationalError as exc:
            if self._timed_out:
                raise StatementTimeout("statement ran longer than %.1f s" % self.timeout) from None
            raise DatastoreError(str(exc)) from None
        except sqlite3.Error as exc:
            raise DatastoreError(str(exc)) from None
        finally:
            self._deadline = math.inf
            if coarse:
                self.conn.set_progress_handler(self._progress, _PROGRESS_STEPS)


def rows_of(conn: sqlite3.Connection, sql: str, args: Sequence[Any]) -> list[tuple]:
    """Every row of a statement, the cursor closed after: its read
    transaction ends here, not when the cursor is collected."""
    cursor = conn.execute(sql, args)
    try:
        return cursor.fetchall()
    finally:
        cursor.close()
