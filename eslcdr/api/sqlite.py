"""The read side over a node's SQLite file: ``readside.ReadSide`` on ``query/``.

``SqliteReadSide`` is the only part of the API that knows SQL or SQLite: it
runs ``query/`` statements on a ``ReaderPool`` of read-only connections
(statement timeout, gevent's thread pool, the heavy lane for unindexed
filters) and streams long results in keyset chunks, each its own short
statement. ``direct_ack`` stores a collector's acknowledgement when the
daemon's writer does not (a short write of its own).
"""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from typing import Any, Callable, ContextManager, Sequence

import structlog

from ..query.params import FeedQuery, ListQuery, cursor_for
from ..query.pool import ReaderPool, is_heavy
from ..query.reader import GeventRunner, InlineRunner
from ..query.sql import detail_sql, feed_sql, legs_sql, list_sql, packed_sql, unpack_rows, warm_sql
from ..query.stream import KeysetStream
from ..query.stats import StatsQuery, WorstQuery, run_stats, worst_sql
from ..store.db import DB_ID_SQL, LAST_SEQ_SQL, record_ack
from .readside import AckFn

log = structlog.get_logger(__name__)

# Rows per chunk of a CSV listing export: each chunk is one statement (its own
# short read transaction) of about 2 ms per 1,000 rows here.
CSV_BATCH = 1000


class SqliteReadSide:
    """``ReadSide`` over the SQLite file at ``path``; ``pool`` is its ReaderPool."""

    def __init__(self, path: str, statement_timeout: float, *, heavy_slots: int,
                 runner: InlineRunner | GeventRunner | None = None) -> None:
        self.pool = ReaderPool(path, statement_timeout, runner=runner, heavy_slots=heavy_slots)

    @staticmethod
    def _chunk_sql(query: ListQuery) -> Callable[[Sequence[Any] | None, int], tuple[str, list[Any]]]:
        def chunk_sql(start: Sequence[Any] | None, n: int) -> tuple[str, list[Any]]:
            return list_sql(replace(query, page_size=n - 1,
                                    cursor=query.cursor if start is None else cursor_for(query, start)))

        return chunk_sql

    def list_page(self, query: ListQuery) -> list[Sequence[Any]]:
        sql, args = list_sql(query)
        return self.pool.fetch_all(sql, args, limit=query.page_size + 1, heavy=is_heavy(query))

    def list_rows(self, query: ListQuery) -> KeysetStream:
        return self.pool.keyset_stream(self._chunk_sql(query), heavy=is_heavy(query))

    def list_export(self, query: ListQuery) -> KeysetStream:
        # Packed chunks, read one ahead in the thread pool while the hub renders.
        # On a cold page cache, the rows ahead are read in file order first.
        chunk_sql = self._chunk_sql(query)
        return self.pool.keyset_stream(
            lambda start, n: packed_sql(*chunk_sql(start, n)),
            chunk=CSV_BATCH, heavy=is_heavy(query), decode=unpack_rows, ahead=True,
            descending=not query.ascending,
            warm=lambda low, high: warm_sql(query.account_id, query.owner_id, low, high))

    def detail(self, account_id: str, cdr_id: str, fmt: str) -> str | None:
        rows = self.pool.fetch_all(*detail_sql(account_id, cdr_id, fmt), limit=1)
        return rows[0][0] if rows else None

    def legs(self, account_id: str, leg_id: str, fmt: str) -> KeysetStream:
        return self.pool.keyset_stream(lambda start, n: legs_sql(account_id, leg_id, fmt, start, n))

    def stats(self, query: StatsQuery) -> dict[str, Any]:
        return run_stats(self.pool, query)

    def worst(self, query: WorstQuery) -> list[Sequence[Any]]:
        # Filters are not indexed: SQLite may test them on every leg of the range.
        return self.pool.fetch_all(*worst_sql(query), limit=query.limit, heavy=bool(query.filters))

    def feed_page(self, query: FeedQuery) -> list[Sequence[Any]]:
        return self.pool.fetch_all(*feed_sql(query), limit=query.limit)

    def feed_rows(self, query: FeedQuery) -> KeysetStream:
        return self.pool.keyset_stream(
            lambda start, n: feed_sql(FeedQuery(query.after if start is None else start[-1] - 1, n)),
            limit=query.limit)

    def db_id(self) -> str:
        return self.pool.fetch_all(DB_ID_SQL, (), limit=1)[0][0]

    def last_seq(self) -> int:
        return self.pool.fetch_all(LAST_SEQ_SQL, (), limit=1)[0][0]

    def heavy_slot(self) -> ContextManager[None]:
        return self.pool.heavy.slot()

    def pacer(self) -> Callable[[], None]:
        return self.pool.heavy.pacer()

    def close(self) -> None:
        self.pool.close()


def direct_ack(path: str) -> AckFn:
    """``acknowledge(token_sha256, after, at_us)`` writing to the file at ``path`` itself."""

    def acknowledge(key: str, after: int, at_us: int) -> None:
        try:
            record_ack(path, key, after, at_us)
        except sqlite3.Error as exc:
            # Not fatal: the collector acknowledges again with its next pull.
            log.warning("feed_ack_not_stored", error=str(exc))

    return acknowledge
