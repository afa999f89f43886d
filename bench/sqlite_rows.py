"""The SQLite writer's cost a row, in-process: ``insert_records`` of the stand-in's
generated legs (``eslcdr fakefs``'s, seed 7, via bench/event_path.py) in transactions of
``--batch`` rows -- the live regime's 7-30, or a burst's 128-500 -- on a file first filled
to ``--base`` rows (copies of the same legs, later in time: as a node's file after a
while).  Prints the thread's CPU a row (time.thread_time: ns, user + system), and the
write and read system calls a row (/proc/self/io: the number the load does not change;
SQLite writes a WAL frame in two and copies it back at a checkpoint in one of each);
``--frames`` also counts the WAL frames a row by b-tree (which index costs what).
``--code DIR`` imports eslcdr from DIR (old and new trees alternate).

    python bench/sqlite_rows.py [--batch 14] [--base 10000] [--rounds 3] [--frames] [--code /work/main]
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def io_calls() -> tuple[int, int]:
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["syscw"]), int(fields["syscr"])


def copies(records: list[dict], tag: str, shift_s: int) -> list[dict]:
    """The records with new call ids (and interactions), ``shift_s`` later."""
    out = []
    for record in records:
        record = dict(record)
        record["call_id"] = call_id = record["call_id"] + tag
        record["id"] = record["id"][:7] + call_id
        if record.get("interaction_id"):
            record["interaction_id"] += tag
        record["links"] = [link + tag for link in record.get("links", ())]
        record["timestamp"] += shift_s
        for name in ("created_us", "hangup_us", "interaction_created_us"):
            if record.get(name):
                record[name] += shift_s * 1_000_000
        out.append(record)
    return out


def wal_frames(path: Path, conn) -> Counter:
    """WAL frames by the b-tree their page belongs to (dbstat)."""
    names = dict(conn.execute("SELECT pageno, name FROM dbstat"))
    raw = Path(str(path) + "-wal").read_bytes()
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    counts: Counter = Counter()
    for offset in range(32, len(raw) - 24, size + 24):
        page = struct.unpack(">I", raw[offset : offset + 4])[0]
        counts[names.get(page, "(pointer map, free list)")] += 1
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=14, help="rows a transaction (default %(default)s)")
    parser.add_argument("--base", type=int, default=10_000, help="rows in the file first (default %(default)s)")
    parser.add_argument("--calls", type=int, default=1500, help="generated calls measured (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="new files measured (default %(default)s)")
    parser.add_argument("--frames", action="store_true", help="WAL frames a row by b-tree (one more file)")
    parser.add_argument("--code", help="import eslcdr from this checkout (default: this one)")
    args = parser.parse_args()
    code = Path(args.code).resolve() if args.code else ROOT
    sys.path[:0] = [str(code), str(code / "bench")]
    import event_path
    from eslcdr import config
    from eslcdr.store import db

    tmp = Path(tempfile.mkdtemp(prefix="sqlite-rows-"))
    (tmp / "tokens").write_text("")
    cfg = config.from_mapping({"store": {"path": str(tmp / "x.db")}, "api": {"tokens_file": str(tmp / "tokens")}})
    records = [r for r in event_path.one_pass(event_path.stream(args.calls, "text/event-json"), cfg, True)[1]
               if isinstance(r, dict)]
    span = 86_400

    def filled(path: Path):
        conn = db.connect_writer(path)
        for k in range(-(-args.base // len(records))):
            batch = copies(records, "-b%d" % k, k * span)[: args.base - k * len(records)]
            for i in range(0, len(batch), 500):
                db.insert_records(conn, batch[i : i + 500])
        return conn, copies(records, "-m", (args.base // len(records) + 1) * span)

    print("%s: %d rows a round in transactions of %d, on files of %d rows" % (code, len(records), args.batch, args.base))
    for n in range(args.rounds):
        path = tmp / ("r%d.db" % n)
        conn, measured = filled(path)
        writes, reads = io_calls()
        cpu = time.thread_time()
        for i in range(0, len(measured), args.batch):
            db.insert_records(conn, measured[i : i + args.batch])
        cpu = time.thread_time() - cpu
        writes_after, reads_after = io_calls()
        conn.close()
        rows = len(measured)
        print("  %.1f µs CPU a row, %.1f write and %.1f read calls a row"
              % (cpu / rows * 1e6, (writes_after - writes) / rows, (reads_after - reads) / rows))
        path.unlink()
    if args.frames:
        path = tmp / "frames.db"
        conn, measured = filled(path)
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        measured = measured[:800]  # the WAL holds them all
        for i in range(0, len(measured), args.batch):
            db.insert_records(conn, measured[i : i + args.batch])
        counts = wal_frames(path, conn)
        print("  WAL frames a row: %.2f" % (sum(counts.values()) / len(measured)))
        for name, count in counts.most_common():
            print("    %5.2f  %s" % (count / len(measured), name))
        conn.close()
    for leftover in tmp.iterdir():
        leftover.unlink()
    tmp.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
