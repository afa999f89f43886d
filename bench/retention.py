"""Retention benchmark: deletion rate, its cost to ingest, file size before and
after (figures, not pass/fail).

Builds a real SQLite file with ``--old`` rows hung up three days ago (the
full-size records of the API tests), then runs the daemon's Writer in its
gevent thread pool three times over a fresh copy:

1. retention alone: rows deleted per second (batches of 1000, each followed
   by ``PRAGMA incremental_vacuum``), file size before / after;
2. ingest alone: ``--new`` records submitted in bursts every 50 ms at
   ``--rate`` CDRs/s (then as fast as possible), the latency from submit to
   commit (p50/p99/max) and records committed per second;
3. both at once: the same ingest while retention deletes the old rows.

    python bench/retention.py [--old 100000] [--new 50000] [--rate 1000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import gevent

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from eslcdr.store import db as store  # noqa: E402
from eslcdr.ingest.legs import GREGORIAN_OFFSET  # noqa: E402
from eslcdr.store.writer import Writer  # noqa: E402
from tests.unit.api.test_api import leg  # noqa: E402

DAY = 86_400


def build(path: Path, old: int) -> None:
    conn = store.connect_writer(path)
    now_g = int(time.time()) + GREGORIAN_OFFSET
    for start in range(0, old, 5000):
        store.insert_records(conn, [leg(now_g - 2 * DAY - (start + i) % DAY) for i in range(min(5000, old - start))])
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def file_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, Path(str(path) + "-wal")) if p.exists())


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0


def run(path: Path, new: int, retention: bool, rate: float) -> dict:
    """Submit ``new`` records at ``rate`` per second (bursts every 50 ms, as
    the ESL reader hands them over; 0 = all at once) while retention runs
    or not; latency = submit to commit of each burst."""
    conn = store.connect_writer(path)
    now_g = int(time.time()) + GREGORIAN_OFFSET
    commits: list[tuple[int, float]] = []
    writer = Writer(conn, batch_size=500, flush_interval=0.01, capacity=new + 1,
                    on_written=lambda new_rows, dup: commits.append((writer.written, time.perf_counter())))
    records = [leg(now_g - i % 3600) for i in range(new)]
    greenlet = gevent.spawn(writer.run)
    started = time.perf_counter()
    cpu_started = time.process_time()
    if retention:
        writer.schedule_retention(now_g - DAY, frozenset())
    bursts: list[tuple[int, float]] = []
    burst = max(1, int(rate * 0.05)) if rate else 200
    for start in range(0, new, burst):
        for record in records[start:start + burst]:
            writer.submit(record)
        bursts.append((min(new, start + burst), time.perf_counter()))
        if rate:
            gevent.sleep(max(0.0, started + (start + burst) / rate - time.perf_counter()))
        else:
            gevent.sleep(0)
    writer.wait_idle(timeout=600)
    ingest_done = time.perf_counter()
    ingest_cpu = time.process_time() - cpu_started
    deleted_during_ingest = writer.deleted
    while writer.retention_running:
        gevent.sleep(0.01)
    all_done = time.perf_counter()
    writer.stop()
    greenlet.join(timeout=60)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    latencies = []
    for count, submitted in bursts:
        committed = next((t for written, t in commits if written >= count), None)
        if committed is not None:
            latencies.append(committed - submitted)
    return {
        "ingest_s": ingest_done - started,
        "ingest_rows_per_s": new / (ingest_done - started) if new else 0,
        "ingest_cpu_s": ingest_cpu,
        "cpu_s": time.process_time() - cpu_started,
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "max_ms": max(latencies, default=0) * 1000,
        "deleted": writer.deleted,
        "deleted_during_ingest": deleted_during_ingest,
        "total_s": all_done - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=int, default=100_000)
    parser.add_argument("--new", type=int, default=50_000)
    parser.add_argument("--rate", type=float, default=1000, help="CDRs per second offered (then full speed)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="eslcdr-retention-"))
    try:
        base = folder / "base.db"
        build(base, args.old)
        print("database: %d old rows, %.1f MB" % (args.old, file_bytes(base) / 1e6))

        copy = folder / "a.db"
        shutil.copy(base, copy)
        before = file_bytes(copy)
        only_delete = run(copy, 0, retention=True, rate=0)
        after = file_bytes(copy)
        print("retention alone: %d rows in %.2f s = %.0f rows/s (%.2f CPU s = %.0f rows per CPU s); "
              "file %.1f MB -> %.1f MB"
              % (only_delete["deleted"], only_delete["total_s"], only_delete["deleted"] / only_delete["total_s"],
                 only_delete["cpu_s"], only_delete["deleted"] / only_delete["cpu_s"], before / 1e6, after / 1e6))

        for rate in (args.rate, 0):
            for label, retention in (("ingest alone", False), ("ingest while deleting", True)):
                copy = folder / ("%s.db" % label.replace(" ", "_"))
                shutil.copy(base, copy)
                result = run(copy, args.new, retention, rate)
                print("%s at %s: %d rows in %.2f s = %.0f rows/s (%.2f CPU s); submit->commit p50 %.0f ms, "
                      "p99 %.0f ms, max %.0f ms; deleted %d meanwhile, %d in all (%.2f s)"
                      % (label, "%d/s" % rate if rate else "full speed", args.new, result["ingest_s"],
                         result["ingest_rows_per_s"], result["ingest_cpu_s"], result["p50_ms"], result["p99_ms"],
                         result["max_ms"], result["deleted_during_ingest"], result["deleted"], result["total_s"]))
                os.remove(copy)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
