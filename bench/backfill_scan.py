"""Backfill benchmark: what the json_cdr folder costs the daemon (figures,
not pass/fail).

Fills a temporary folder with N real-shaped mod_json_cdr files (the stand-in's
generated calls, as ``eslcdr fakefs --json-cdr-dir`` writes them) and runs the
daemon's ``Backfill`` against a real SQLite file through a real Pipeline and
Writer, in these situations:

1. cold: every file is new (a first start on a full folder): list, read,
   parse, build and commit every leg;
2. restart, nothing new: the mark stored by (1) skips every file;
3. restart after losing the mark (mark 0), every leg stored: list and stat
   every file, one indexed lookup per name, no file read;
4. the rescue look-up of 1,000 legs by name (what a write-off costs).

    python bench/backfill_scan.py [--files 100000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gevent import monkey  # noqa: E402

monkey.patch_all()

import gevent  # noqa: E402
import structlog  # noqa: E402

from eslcdr.service import backfill as backfill_module  # noqa: E402
from eslcdr.service import json_cdr_dir  # noqa: E402
from eslcdr import config  # noqa: E402
from eslcdr.service.backfill import Backfill  # noqa: E402
from eslcdr.service.daemon import Pipeline  # noqa: E402
from eslcdr.fakefs import GeneratedSource  # noqa: E402
from eslcdr.fakefs.json_cdr import json_cdr_document, json_cdr_filename  # noqa: E402
from eslcdr.store.db import connect_writer  # noqa: E402
from eslcdr.store.writer import Writer  # noqa: E402


def fill(folder: Path, files: int) -> float:
    started = time.perf_counter()
    written = 0
    when = time.time() - 3600  # FreeSWITCH wrote them an hour ago
    source = GeneratedSource(calls=None, seed=3, start_time=time.time() - 86400)
    for emission in source:
        if emission.template.event_id != "CHANNEL_HANGUP_COMPLETE":
            continue
        event = emission.event()
        event.update({"Core-UUID": "bench-core", "FreeSWITCH-Switchname": "bench"})
        path = folder / json_cdr_filename(event)
        path.write_bytes(json.dumps(json_cdr_document(event)).encode("utf-8") + b"\n")
        os.utime(path, (when, when))
        written += 1
        if written >= files:
            break
    return time.perf_counter() - started


def daemon_parts(db: Path, folder: Path):
    cfg = config.from_mapping({"store": {"path": str(db)}, "cdr": {"node_name": "bench"}})
    conn = connect_writer(db)
    writer = Writer(conn, batch_size=cfg.store.batch_size, capacity=10_000_000)
    writer_greenlet = gevent.spawn(writer.run)
    pipeline = Pipeline(cfg.nodes[0], cfg, writer)
    backfill = Backfill(str(folder), pipeline, writer, str(db), lambda: None)
    return conn, writer, writer_greenlet, pipeline, backfill


def one_scan(db: Path, folder: Path, forget_mark: bool = False) -> dict:
    """A fresh daemon's start scan; returns its figures."""
    if forget_mark:
        conn = connect_writer(db)
        conn.execute("DELETE FROM meta WHERE key = ?", (backfill_module.HWM_KEY,))
        conn.close()
    conn, writer, writer_greenlet, pipeline, backfill = daemon_parts(db, folder)
    runner = gevent.spawn(backfill.run)
    started = time.perf_counter()
    while backfill.scans == 0:
        gevent.sleep(0.01)
    scanned = time.perf_counter() - started
    assert writer.wait_idle(timeout=600)
    committed = time.perf_counter() - started
    figures = {
        "listed": backfill.files_listed,
        "backfilled": backfill.backfilled,
        "scan_s": round(scanned, 2),
        "committed_s": round(committed, 2),
    }
    rescue_ids = [r[0] for r in conn.execute("SELECT call_id FROM cdrs LIMIT 1000")]
    backfill.stop()
    runner.join(timeout=10)
    writer.stop()
    writer_greenlet.join(timeout=30)
    conn.close()
    return figures, rescue_ids


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--keep", metavar="DIR", help="use (and keep) this folder")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # errors only
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="eslcdr-backfill-"))
    work.mkdir(parents=True, exist_ok=True)
    folder, db = work / "json_cdr", work / "cdrs.db"
    try:
        if not folder.exists() or len(os.listdir(folder)) < args.files:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            print("writing %d files ... %.1f s" % (args.files, fill(folder, args.files)), flush=True)
        for path in (db, Path(str(db) + "-wal"), Path(str(db) + "-shm")):
            path.unlink(missing_ok=True)
        size = sum(entry.stat().st_size for entry in os.scandir(folder))
        print("folder: %d files, %.0f MB" % (len(os.listdir(folder)), size / 1e6))

        cold, rescue_ids = one_scan(db, folder)
        print("1. cold start, every file new:       %s  (%.0f legs/s)"
              % (cold, cold["backfilled"] / max(cold["committed_s"], 1e-9)))
        again, _ = one_scan(db, folder)
        print("2. restart, nothing new (mark kept):  %s" % again)
        lost_mark, _ = one_scan(db, folder, forget_mark=True)
        print("3. restart, mark lost, all stored:    %s" % lost_mark)

        started = time.perf_counter()
        found = gevent.get_hub().threadpool.apply(json_cdr_dir.find, (str(folder), rescue_ids, False))
        read = gevent.get_hub().threadpool.apply(json_cdr_dir.read_files, (found,))
        print("4. rescue look-up of %d legs by name: %.3f s (%d found, %d read)"
              % (len(rescue_ids), time.perf_counter() - started, len(found), len(read)))
        missing = ["00000000-0000-4000-8000-%012d" % i for i in range(1000)]
        started = time.perf_counter()
        gevent.get_hub().threadpool.apply(json_cdr_dir.find, (str(folder), missing, False))
        print("   look-up of 1000 legs without a file: %.3f s" % (time.perf_counter() - started))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
