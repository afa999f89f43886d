"""Central KPI benchmark: ``cdrs/stats`` of one account over 30 days in hourly
buckets, answered by a node (SQLite) and by the collector (PostgreSQL).

Builds a node's database of N legs (bench/stats.py's generator, default
200,000 over 30 days), loads its feed into a private PostgreSQL (pgserver)
through the collector's own write path (``PgStore.store_batch``, which keeps
the roll-ups), then times, in process, p50/p99 over R reads of each read
side's answer as the route builds it: ``stats`` (roll-ups and ragged edges;
a filter reads legs) plus the JSON text.

    python bench/central_stats.py [--rows 200000] [--days 30] [--requests 30] [--keep DIR]

``--keep DIR`` keeps the node's file and the PostgreSQL data in DIR and, when
DIR holds them from an earlier run, measures them again (the load paid once;
old and new code can be alternated on one database).
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from stats import ACCOUNTS, generate  # noqa: E402  (bench/stats.py: gevent patched first)

import psycopg  # noqa: E402

from eslcdr.api.core import dumps  # noqa: E402
from eslcdr.collector import pgmigrations  # noqa: E402
from eslcdr.collector.feed import parse_record  # noqa: E402
from eslcdr.collector.pgstore import PgStore  # noqa: E402
from eslcdr.collector.readside import PgReadSide  # noqa: E402
from eslcdr.query import params, sql, stats  # noqa: E402


def load(dsn: str, db: Path, batch: int = 5000) -> float:
    """The node's feed into PostgreSQL through the collector's write path; rows/s."""
    conn = psycopg.connect(dsn)
    pgmigrations.migrate(conn)
    pg = PgStore(conn)
    pg.node_state("node1", "http://127.0.0.1:1")
    node = sqlite3.connect("file:%s?mode=ro" % db, uri=True)
    started, after, items, previous, total = time.perf_counter(), 0, [], 0, 0
    for text, _seq in node.execute(*sql.feed_sql(params.FeedQuery(0, None))):
        items.append(parse_record(text.encode(), previous))
        previous = items[-1].seq
        if len(items) == batch:
            after = pg.store_batch("node1", "db-1", after, items).after
            total, items = total + len(items), []
    if items:
        pg.store_batch("node1", "db-1", after, items)
        total += len(items)
    node.close()
    pg.close()
    return total / (time.perf_counter() - started)


def timed(fn, n: int) -> tuple[float, float]:
    fn()  # warm
    times = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.99))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--keep", type=Path, help="keep (or reuse) the node's file and the PostgreSQL data here")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="eslcdr-bench-cstats-"))
    work.mkdir(parents=True, exist_ok=True)
    db = work / "node.db"
    reuse = args.keep is not None and db.exists() and (work / "pg").exists()
    if not reuse:
        started = time.perf_counter()
        generate(db, args.rows, args.days)
        print("node: %d legs over %d days built in %.1f s" % (args.rows, args.days, time.perf_counter() - started))
    import pgserver

    server = pgserver.get_server(work / "pg", cleanup_mode="stop" if args.keep else "delete")
    try:
        dsn = server.get_uri("bench")
        if not reuse:
            with psycopg.connect(server.get_uri(), autocommit=True) as conn:
                conn.execute("CREATE DATABASE bench")
            print("loaded through PgStore.store_batch: %.0f rows/s" % load(dsn, db))
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("ANALYZE")
        node = sqlite3.connect("file:%s?mode=ro" % db, uri=True)
        newest = node.execute('SELECT max("timestamp") FROM cdrs').fetchone()[0]
        central = PgReadSide(dsn, 30.0, heavy_slots=1)
        outbound = params.parse_filters({"filter_call_direction": ["outbound"]})
        for label, filters in (("30 days hourly", ()), ("30 days hourly, filter_call_direction", outbound)):
            query = stats.StatsQuery(ACCOUNTS[0], None, newest - 30 * 86400 + 1, newest, 3600, filters)
            expected = stats.read_stats(node, query)
            got = central.stats(query)
            assert [b["legs"] for b in got["buckets"]] == [b["legs"] for b in expected["buckets"]], label
            for side, read in (("node", lambda: stats.read_stats(node, query)),
                               ("central", lambda: central.stats(query))):
                p50, p99 = timed(lambda: dumps(read()), args.requests)
                print("  %-38s %-8s p50 %7.1f ms  p99 %7.1f ms  (%d legs)" % (
                    label, side, p50, p99, expected["totals"]["legs"]))
        central.close()
        node.close()
    finally:
        server.cleanup()
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
