"""Spool benchmark: how fast CDRs go to the spool file while SQLite is
unwritable, and how fast they are replayed into SQLite once it is writable
again (figures, not pass/fail).

Full-size records (those of the API tests); appends of ``--batch`` records,
each fsynced, as the spooler does; then the daemon's Writer replays the
file into a real SQLite file.

    python bench/spool.py [--records 50000] [--batch 500]
"""

from __future__ import annotations

import argparse
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
from eslcdr.store.spool import Spool  # noqa: E402
from eslcdr.store.writer import Writer  # noqa: E402
from tests.unit.api.test_api import leg  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="eslcdr-spool-"))
    try:
        now_g = int(time.time()) + GREGORIAN_OFFSET
        records = [leg(now_g - i) for i in range(args.records)]
        spool = Spool(folder / "cdrs.db.spool")
        started, cpu = time.perf_counter(), time.process_time()
        for start in range(0, args.records, args.batch):
            spool.append(records[start:start + args.batch])
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        size = (folder / "cdrs.db.spool").stat().st_size
        print("spooled %d records in %.2f s = %.0f records/s (%.2f CPU s; fsync per %d); %.1f MB, %.0f bytes/record"
              % (args.records, elapsed, args.records / elapsed, cpu, args.batch, size / 1e6, size / args.records))

        conn = store.connect_writer(folder / "cdrs.db")
        spool = Spool(folder / "cdrs.db.spool")
        writer = Writer(conn, batch_size=args.batch, flush_interval=0.01, spool=spool)
        started, cpu = time.perf_counter(), time.process_time()
        greenlet = gevent.spawn(writer.run)
        while spool.backlog or (folder / "cdrs.db.spool").stat().st_size:
            gevent.sleep(0.01)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        writer.stop()
        greenlet.join(timeout=60)
        rows = conn.execute("SELECT count(*) FROM cdrs").fetchone()[0]
        conn.close()
        print("replayed %d rows into SQLite in %.2f s = %.0f rows/s (%.2f CPU s)"
              % (rows, elapsed, rows / elapsed, cpu))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
