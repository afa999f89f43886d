"""Where a stored row's CPU goes: ``PgStore.store_batch`` in-process, statement by statement.

Stores ``--batches`` batches of ``--batch-size`` new legs (cloned as bench/central.py does,
each batch parsed from feed lines by ``feed.parse_record`` as ``eslcdr collect`` does) for
``--nodes`` new nodes into a PostgreSQL kept in ``--data`` (a private pgserver, made once and
filled to ``--base`` rows first through the same write path), and prints this process's CPU
and the backend's (``/proc/<pid>/schedstat``: ns) per stored row, the backend's split by
statement (psycopg's ``Cursor.execute`` / ``Cursor.copy`` wrapped; a COPY's own Python apart).
``--code DIR`` imports eslcdr from DIR (another checkout: old and new code alternate on the
same database).  Prints figures; not a pass/fail test.

    python bench/store_split.py --data /tmp/pg-split --base 1000000 [--batches 16] [--code /work/main]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def schedstat_ns(pid: int) -> int:
    return int(Path("/proc/%d/schedstat" % pid).read_text().split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="the PostgreSQL data directory (made when missing)")
    parser.add_argument("--base", type=int, default=100_000, help="rows the database holds before measuring")
    parser.add_argument("--batches", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--code", help="import eslcdr from this checkout (default: this one)")
    parser.add_argument("--known", action="store_true",
                        help="store for nodes the fill stored (known to the statistics), not new ones")
    parser.add_argument("--run", type=int, default=int(time.time()), help="the measured nodes' names' suffix")
    args = parser.parse_args()
    if args.code:  # eslcdr first from there: central.py's imports then find it loaded
        sys.path.insert(0, str(Path(args.code).resolve()))
        import eslcdr

        assert Path(eslcdr.__file__).resolve().is_relative_to(Path(args.code).resolve()), eslcdr.__file__
    sys.path.insert(1, str(ROOT / "bench"))
    import central  # noqa: E402  (gevent-patched, as eslcdr collect)
    import psycopg
    import pgserver
    from eslcdr.collector import pgmigrations, worker
    from eslcdr.collector.feed import parse_record
    from eslcdr.collector.pgstore import PgStore

    pg = pgserver.get_server(args.data, cleanup_mode="stop")
    dsn = pg.get_uri()
    store = PgStore.connect(dsn)
    pgmigrations.migrate(store.conn)
    store.conn.commit()
    with tempfile.TemporaryDirectory(prefix="eslcdr-bench-split-") as work:
        cloner = central.Cloner(central.templates(Path(work)), 50, seed=args.run % 100000)
    now = int(time.time())
    have = store.conn.execute("SELECT count(*) FROM cdr_keys").fetchone()[0]
    store.conn.commit()
    if have < args.base:
        made, secs = central.load_parallel(dsn, cloner, list(range(1000 + have // 100_000 * 20, 1020 + have // 100_000 * 20)),
                                           args.base - have, now - 30 * 86400, 30 * 86400, 5000, 2)
        print("filled %d rows in %.0f s" % (made, secs), flush=True)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
    keys = store.conn.execute("SELECT count(*) FROM cdr_keys").fetchone()[0]
    store.conn.commit()

    # The measured batches' feed lines, made before.
    names = (["fs%d" % (1000 + n) for n in range(args.nodes)] if args.known
             else ["m%d-%d" % (args.run, n) for n in range(args.nodes)])
    after = {n: store.node_state(names[n], "http://127.0.0.1:1").after for n in range(args.nodes)}
    pools = {n: central.LinePool(cloner, 5000 + n, args.batch_size, now - 3600, 3600) for n in range(args.nodes)}
    for n, pool in pools.items():
        pool.seq = after[n]
    batches = []
    for b in range(args.batches):
        n = b % args.nodes
        batches.append((n, pools[n].batch(args.batch_size)))

    backend = store.conn.info.backend_pid
    split: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])  # statement -> [backend ns, python ns]
    real_execute, real_copy = psycopg.Cursor.execute, psycopg.Cursor.copy

    def label(query) -> str:
        text = query if isinstance(query, str) else str(query)
        text = " ".join(text.split())
        into = text.split("INSERT INTO ", 1)[1].split(" ", 1)[0] if "INSERT INTO " in text else ""
        return text[:48] + (" ... INSERT INTO " + into if into and not text.startswith("INSERT") else "")

    def execute(self, query, params=None, **kw):
        b0 = schedstat_ns(backend)
        try:
            return real_execute(self, query, params, **kw)
        finally:
            split[label(query)][0] += schedstat_ns(backend) - b0

    from contextlib import contextmanager

    @contextmanager
    def copy(self, statement, params=None, **kw):
        b0, p0 = schedstat_ns(backend), time.thread_time_ns()
        try:
            with real_copy(self, statement, params, **kw) as c:
                yield c
        finally:
            cell = split[label(statement)]
            cell[0] += schedstat_ns(backend) - b0
            cell[1] += time.thread_time_ns() - p0

    worker.fewer_young_collections()
    psycopg.Cursor.execute, psycopg.Cursor.copy = execute, copy
    stored = 0
    load0 = os.getloadavg()[0]
    b0, p0, w0 = schedstat_ns(backend), time.process_time_ns(), time.perf_counter()
    for n, lines in batches:
        items, previous = [], after[n]
        for line in lines:
            item = parse_record(line, previous)
            previous = item.seq
            items.append(item)
        result = store.store_batch(names[n], "db-" + names[n], after[n], items)
        after[n] = result.after
        stored += result.stored
    secs = time.perf_counter() - w0
    backend_ns, python_ns = schedstat_ns(backend) - b0, time.process_time_ns() - p0
    psycopg.Cursor.execute, psycopg.Cursor.copy = real_execute, real_copy
    print("code %s, %s nodes, %d keys before: %d rows in %.2f s = %.0f rows/s; CPU per row: collector %.1f us + PostgreSQL"
          " %.1f us = %.1f us (%.0f rows/s on 2 idle cores); load average %.2f / %.2f" % (
              args.code or ROOT, "known" if args.known else "new", keys, stored, secs, stored / secs, python_ns / stored / 1000,
              backend_ns / stored / 1000, (python_ns + backend_ns) / stored / 1000,
              2e9 * stored / (python_ns + backend_ns), load0, os.getloadavg()[0]))
    for name, (pg_ns, py_ns) in sorted(split.items(), key=lambda kv: -kv[1][0]):
        if pg_ns / stored >= 50:
            print("  %6.1f us PostgreSQL%s  %s" % (pg_ns / stored / 1000,
                                                   " (+%.1f us Python)" % (py_ns / stored / 1000) if py_ns else "",
                                                   name))
    store.close()


if __name__ == "__main__":
    main()
