"""Retention and storage figures (docs/database.md): the greenlet and its statements.

Once at start and every ``[store] retention_check_interval`` seconds (at
most a minute) the ``Retention`` greenlet learns the ``*`` tokens in force
(the possible collectors), has the writer delete the rows older than
``retention_days`` that every registered collector has acknowledged, and
refreshes the figures ``/health`` and ``/metrics`` show (``Retention.check``
says each step).  A tokens file that cannot be read skips the deletion, never
guesses; the figures are read on a read-only connection in the thread pool.
``delete_expired`` runs on the writer's connection, in the writer's thread:
small batches between insert batches, freed pages given back (auto_vacuum).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Protocol

import gevent.event
import structlog

from ..config import Config
from ..ingest.legs import GREGORIAN_OFFSET
from ..supervise import in_thread
from .db import connect_reader

if TYPE_CHECKING:  # the writer runs delete_expired: it imports this module
    from .writer import Writer

log = structlog.get_logger(__name__)

DAY = 86_400


# ------------------------------------------------------------------ the statements (a connection given)

NO_BOUND = 2**63 - 1


def retention_bound(conn: sqlite3.Connection, collectors: Iterable[str]) -> int:
    """The highest seq every registered collector has acknowledged.

    A collector is a current ``*`` token (``collectors``: their sha256 in
    hex) that has pulled the feed at least once (a row in collector_acks).
    With none, nothing holds rows back.
    """
    keys = sorted(set(collectors))
    if not keys:
        return NO_BOUND
    marks = ", ".join("?" for _ in keys)
    row = conn.execute(
        "SELECT min(acked_seq) FROM collector_acks WHERE token_sha256 IN (%s)" % marks, keys
    ).fetchone()
    return NO_BOUND if row[0] is None else row[0]


def delete_expired(
    conn: sqlite3.Connection, cutoff_timestamp: int, collectors: Iterable[str], limit: int = 1000
) -> int:
    """Delete at most ``limit`` rows hung up before ``cutoff_timestamp``
    (Gregorian seconds) that every registered collector has acknowledged,
    with their interaction links; give the freed pages back to the file
    system.  One short transaction; returns the rows deleted (fewer than
    ``limit``: nothing more is due)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        bound = retention_bound(conn, collectors)
        deleted = conn.execute(
            "DELETE FROM cdrs WHERE seq IN "
            "(SELECT seq FROM cdrs WHERE timestamp < ? AND seq <= ? LIMIT ?) "
            "RETURNING call_id, interaction_id",
            (cutoff_timestamp, bound, limit),
        ).fetchall()
        if deleted:
            conn.executemany("DELETE FROM interaction_links WHERE call_id = ?", [(c,) for c, _ in deleted])
            # Links of partners that were never written (a process_cdr=false
            # leg), once no row of their interaction is left.
            interactions = {(i,) for _, i in deleted if i}
            conn.executemany(
                "DELETE FROM interaction_links WHERE interaction_id = ?1 "
                "AND NOT EXISTS (SELECT 1 FROM cdrs WHERE interaction_id = ?1)",
                interactions,
            )
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    if deleted:
        # auto_vacuum = INCREMENTAL: move the freed pages to the end of the
        # file and truncate it (a few hundred pages per batch).
        # (executescript: sqlite3's execute() steps a row-less pragma once,
        # which frees a single page.)
        conn.executescript("PRAGMA incremental_vacuum;")
    return len(deleted)


def storage_stats(conn: sqlite3.Connection, path: str | Path, collectors: Iterable[str]) -> dict:
    """Size, oldest row and per collector the rows it has not pulled yet."""
    path = Path(path)

    def size(p: Path) -> int:
        try:
            return p.stat().st_size
        except FileNotFoundError:
            return 0

    oldest = conn.execute("SELECT min(timestamp) FROM cdrs").fetchone()[0]
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    page_count = conn.execute("PRAGMA page_count").fetchone()[0]
    freelist = conn.execute("PRAGMA freelist_count").fetchone()[0]
    keys = sorted(set(collectors))
    per_collector = {}
    if keys:
        marks = ", ".join("?" for _ in keys)
        for key, acked, last_pull_us in conn.execute(
            "SELECT token_sha256, acked_seq, last_pull_us FROM collector_acks WHERE token_sha256 IN (%s)" % marks,
            keys,
        ).fetchall():
            unpulled = conn.execute("SELECT count(*) FROM cdrs WHERE seq > ?", (acked,)).fetchone()[0]
            per_collector[key] = {"acked_seq": acked, "unpulled": unpulled, "last_pull_us": last_pull_us}
    return {
        "bytes": size(path),
        "wal_bytes": size(Path(str(path) + "-wal")),
        "pages": page_count,
        "page_size": page_size,
        "free_pages": freelist,
        "oldest_timestamp": oldest,
        "collectors": per_collector,
        "unpulled_max": max((c["unpulled"] for c in per_collector.values()), default=0),
    }


# ------------------------------------------------------------------ the greenlet


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
        self._scheduled = False  # a deletion was asked for
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
        2. refreshes the figures ``/health`` and ``/metrics`` show: file size,
           oldest row, rows each collector has not pulled yet -- on a
           read-only connection in the thread pool, never on the writer's;
        3. when ``retention_days`` > 0, warns if a collector holds rows back
           (judged on those figures, read after the previous check's deletion
           ran to its end), then asks the writer to delete rows hung up
           more than that many days ago that every registered collector (a
           current ``*`` token with a row in ``collector_acks``) has
           acknowledged; the writer does it in small batches between its
           insert batches.
        """
        collectors: frozenset[str] | None = self._tokens.collector_keys()
        error = self._tokens.error
        if error is not None:
            if self._reported_error != error:
                log.error("retention_skipped_tokens_unreadable", error=error)
            collectors = None
        self._reported_error = error
        try:
            self.stats = in_thread(self._read_stats, collectors or frozenset(), errors=(sqlite3.Error,))
        except sqlite3.Error as exc:
            log.warning("storage_stats_failed", error=str(exc))
        days = self._store.retention_days
        if days and collectors is not None:
            cutoff = int(self._clock()) + GREGORIAN_OFFSET - days * DAY
            self._warn_if_held_back(cutoff)
            self._writer.schedule_retention(cutoff, collectors)
            self._scheduled = True
        self.checks += 1

    def _warn_if_held_back(self, cutoff: int) -> None:
        """A collector that stopped pulling keeps every row from then on:
        say so (hourly) while rows an hour past due are kept for it, so the
        operator removes its token or mends it before the disk fills.
        Only once an earlier deletion ran to its end: until then the oldest
        row may be one that is simply due (a first start with retention on)."""
        if not self._scheduled or self._writer.retention_running:
            return
        stats = self.stats
        oldest = stats.get("oldest_timestamp")
        behind = {key: c for key, c in stats.get("collectors", {}).items() if c["unpulled"]}
        if oldest is None or oldest >= cutoff - 3600 or not behind:
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
