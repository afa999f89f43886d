"""Retention and storage figures (docs/database.md).

Once at start and every ``[store] retention_check_interval`` seconds (at
most a minute) the ``Retention`` greenlet learns the ``*`` tokens in force
(the possible collectors), has the writer delete the rows older than
``retention_days`` that every registered collector has acknowledged, and
refreshes the figures ``/health`` and ``/metrics`` show (``Retention.check``
says each step).  A tokens file that cannot be read skips the deletion, never
guesses; the figures are read on a read-only connection in the thread pool,
never on the writer's.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Callable, Protocol

import gevent.event
import structlog

from ..config import Config
from ..ingest.legs import GREGORIAN_OFFSET
from .db import connect_reader, storage_stats
from ..supervise import in_thread
from .writer import Writer

log = structlog.get_logger(__name__)

DAY = 86_400


class CollectorScopes(Protocol):
    """What retention needs of the credentials (the API's ``TokenStore``
    provides it; the store does not import the API)."""

    @property
    def error(self) -> str | None: ...

    def collector_keys(self) -> frozenset[str] | None: ...


class Retention:
    def __init__(
        self,
        config: Config,
        writer: Writer,
        stop: gevent.event.Event,
        tokens: CollectorScopes,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = config.store
        self._tokens = tokens
        self._writer = writer
        self._stop = stop
        self._clock = clock
        self._reported_error: str | None = None
        self._held_back_logged_at = float("-inf")
        self.stats: dict = {}
        self.checks = 0

    def run(self) -> None:
        while True:
            self.check()
            if self._stop.wait(timeout=self._store.retention_check_interval):
                return

    def check(self) -> None:
        """One check:

        1. asks the daemon's ``TokenStore`` (as ``CollectorScopes``) for the
           ``*`` tokens in force: the possible collectors (a token removed from
           the file holds nothing back once the removal applies; a file caught
           half-written or emptied during an edit keeps the previous set, see
           eslcdr/api/tokens.py; a file that cannot be read skips the
           deletion, never guesses);
        2. when ``retention_days`` > 0, asks the writer to delete rows hung up
           more than that many days ago that every registered collector (a
           current ``*`` token with a row in ``collector_acks``) has
           acknowledged; the writer does it in small batches between its
           insert batches;
        3. refreshes the figures ``/health`` and ``/metrics`` show: file size,
           oldest row, rows each collector has not pulled yet -- on a
           read-only connection in the thread pool, never on the writer's.
        """
        collectors: frozenset[str] | None = self._tokens.collector_keys()
        error = self._tokens.error
        if error is not None:
            if self._reported_error != error:
                log.error("retention_skipped_tokens_unreadable", error=error)
            collectors = None
        self._reported_error = error
        days = self._store.retention_days
        if days and collectors is not None:
            cutoff = int(self._clock()) + GREGORIAN_OFFSET - days * DAY
            self._warn_if_held_back(cutoff)
            self._writer.schedule_retention(cutoff, collectors)
        self.checks += 1
        try:
            self.stats = in_thread(self._read_stats, collectors or frozenset(), errors=(sqlite3.Error,))
        except sqlite3.Error as exc:
            log.warning("storage_stats_failed", error=str(exc))

    def _warn_if_held_back(self, cutoff: int) -> None:
        """A collector that stopped pulling keeps every row from then on:
        say so (hourly) while rows an hour past due are kept for it, so the
        operator removes its token or mends it before the disk fills."""
        stats = self.stats
        oldest = stats.get("oldest_timestamp")
        behind = {key: c for key, c in stats.get("collectors", {}).items() if c["unpulled"]}
        if oldest is None or oldest >= cutoff - 3600 or not behind or self._writer.retention_running:
            return
        now = self._clock()
        if now - self._held_back_logged_at < 3600:
            return
        self._held_back_logged_at = now
        log.warning(
            "retention_held_back_by_collector",
            oldest_timestamp=oldest,
            collectors={
                "sha256:" + key[:12]: {"acked_seq": c["acked_seq"], "unpulled": c["unpulled"],
                                       "last_pull_at": c["last_pull_us"] / 1e6}
                for key, c in behind.items()
            },
        )

    def _read_stats(self, collectors: frozenset[str]) -> dict:
        conn = connect_reader(self._store.path)
        try:
            return storage_stats(conn, self._store.path, collectors)
        finally:
            conn.close()

    def health(self) -> dict:
        """The figures for /health (collector keys shortened: they name the
        token's sha256 line in the tokens file)."""
        stats = self.stats
        oldest = stats.get("oldest_timestamp")
        return {
            "path": self._store.path,
            "bytes": stats.get("bytes"),
            "wal_bytes": stats.get("wal_bytes"),
            "free_pages": stats.get("free_pages"),
            "oldest_timestamp": oldest,
            "oldest_age_seconds": (
                None if oldest is None else int(self._clock()) + GREGORIAN_OFFSET - oldest
            ),
            "retention_days": self._store.retention_days,
            "deleted": self._writer.deleted,
            "unpulled_max": stats.get("unpulled_max", 0),
            "collectors": {
                "sha256:" + key[:12]: {
                    "acked_seq": c["acked_seq"],
                    "unpulled": c["unpulled"],
                    "last_pull_at": c["last_pull_us"] / 1e6,
                }
                for key, c in stats.get("collectors", {}).items()
            },
        }
