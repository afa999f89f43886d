"""Exports in keyset chunks: no read transaction is open between chunks (the
WAL can be checkpointed while a client reads slowly), and the rows come out
in listing order, none skipped or repeated, while rows keep arriving."""

from __future__ import annotations

import dataclasses

import pytest

from eslcdr.store import db as store
from eslcdr.query.params import KIND_CDRS, KIND_INTERACTIONS, FeedQuery, ListQuery, cursor_for
from eslcdr.query.pool import ReaderPool
from eslcdr.query.reader import InlineRunner
from eslcdr.query.sql import feed_sql, legs_sql, list_sql

from tests.unit.query.test_queries import ACC, NOW_G, db, record  # noqa: F401 -- db is a fixture


def listing(kind: str, ascending: bool) -> ListQuery:
    return ListQuery(kind, ACC, None, NOW_G - 10**6, NOW_G, ascending, None, None, (), 0)


def chunks_of(query: ListQuery):
    return lambda start, n: list_sql(dataclasses.replace(
        query, page_size=n - 1, cursor=None if start is None else cursor_for(query, start)))


def checkpoint_is_complete(writer) -> bool:
    busy, log, done = writer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    return busy == 0 and log == done


@pytest.mark.parametrize("kind", [KIND_CDRS, KIND_INTERACTIONS])
@pytest.mark.parametrize("ascending", [False, True])
def test_chunks_hold_no_snapshot_and_skip_or_repeat_nothing(db, kind, ascending):  # noqa: F811
    path, writer = db
    first = [record(NOW_G - 5000 + i // 3) for i in range(1000)]
    store.insert_records(writer, first)
    pool = ReaderPool(path, 5, runner=InlineRunner())
    query = listing(kind, ascending)
    stream = pool.keyset_stream(chunks_of(query), chunk=97)
    keys, call_ids = [], []
    for n, batch in enumerate(stream):
        keys += [(row[-2], row[-1]) for row in batch]
        call_ids += [row[1] for row in batch]
        # Between chunks: new rows everywhere in the range, and the WAL can be
        # checkpointed completely (no reader holds an old snapshot).
        store.insert_records(writer, [record(NOW_G - 5000 + (n * 37 + i * 11) % 400) for i in range(5)])
        assert checkpoint_is_complete(writer)
    assert len(keys) == len(set(keys)) and len(call_ids) == len(set(call_ids))
    assert keys == sorted(keys, reverse=not ascending)
    wanted = {r["interaction_id"] for r in first} if kind == KIND_INTERACTIONS else {r["call_id"] for r in first}
    # Interaction rows end with (start, interaction_id).
    assert wanted <= ({iid for _, iid in keys} if kind == KIND_INTERACTIONS else set(call_ids))


@pytest.mark.slow
def test_the_old_single_statement_stream_would_pin_the_wal(db):  # noqa: F811
    """The property the chunks exist for: one open statement blocks a complete checkpoint."""
    path, writer = db
    store.insert_records(writer, [record(NOW_G - i) for i in range(2000)])
    pool = ReaderPool(path, 5, runner=InlineRunner())
    stream = iter(pool.stream(*list_sql(listing(KIND_CDRS, False)), batch=100))
    next(stream)
    store.insert_records(writer, [record(NOW_G - i) for i in range(10)])
    assert not checkpoint_is_complete(writer)
    for _ in stream:
        pass
    assert checkpoint_is_complete(writer)


def test_feed_and_legs_chunks(db):  # noqa: F811
    path, writer = db
    iid = "%d-%s" % (NOW_G - 900, "abcdef12")
    legs = [record(NOW_G - 100 + i, interaction=iid, created_us=(NOW_G - 62167219200 - 900) * 10**6 + i % 7)
            for i in range(250)]
    store.insert_records(writer, legs + [record(NOW_G - i) for i in range(300)])
    pool = ReaderPool(path, 5, runner=InlineRunner())
    got = [row for batch in pool.keyset_stream(lambda s, n: legs_sql(ACC, iid, "json", s, n), chunk=40)
           for row in batch]
    assert len(got) == 250 and len({row[-1] for row in got}) == 250
    assert [(row[-2], row[-1]) for row in got] == sorted((row[-2], row[-1]) for row in got)
    feed = pool.keyset_stream(lambda s, n: feed_sql(FeedQuery(10 if s is None else s[-1] - 1, n)),
                              chunk=64, limit=333)
    seqs = [row[-1] for batch in feed for row in batch]
    assert seqs == list(range(11, 11 + 333))


def test_a_paused_feed_stream_holds_no_snapshot(db):  # noqa: F811
    path, writer = db
    store.insert_records(writer, [record(NOW_G - i) for i in range(1500)])
    pool = ReaderPool(path, 5, runner=InlineRunner())
    feed = iter(pool.keyset_stream(lambda s, n: feed_sql(FeedQuery(0 if s is None else s[-1] - 1, n)), chunk=100))
    seqs = [row[-1] for row in next(feed)]
    store.insert_records(writer, [record(NOW_G - i) for i in range(50)])  # the collector's reader pauses here
    assert checkpoint_is_complete(writer)
    seqs += [row[-1] for batch in feed for row in batch]
    assert seqs == list(range(1, 1551))
