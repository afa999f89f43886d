"""Where the daemon's time goes: sums py-spy's raw stacks (``bench/live.py
--profile DIR`` writes them, one file per run) into the parts of the ingest
path, in per cent of the samples.

    python bench/profile_split.py DIR/paced-50.txt [...]

A sample is put in the first part that matches, from the thread's root:
the SQLite thread's work by the statement it runs; on the main thread a
socket call, the thread hand-over, gevent's own loop (switches, timers,
events), else the deepest eslcdr module on the stack.  The main thread's
and the SQLite thread's samples are summed apart, each in per cent of its
own.  A main-thread sample whose innermost frame is the hub's loop itself
(``Hub.run``) is the hub waiting in epoll_wait more than anything: py-spy
``--nonblocking`` counts such a thread as running (perf on the same runs
puts gevent's, libev's and greenlet's own code at ~3 % of the main
thread's CPU where py-spy shows 20-40 % of "Hub.run"), so those samples are
counted apart and left out of the main thread's shares.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

WORKER_PARTS = (
    ("_last_seq", "SQLite thread: _last_seq query"),
    ("_roll_up_after", "SQLite thread: roll-up upserts"),
    ("record_row", "SQLite thread: row lists"),
    ("_insert_many", "SQLite thread: INSERT statements"),
    ("insert_records", "SQLite thread: BEGIN/COMMIT, links"),
    ("delete_expired", "SQLite thread: retention"),
)
MODULES = (
    ("eslcdr/esl/frames.py", "frames"),
    ("eslcdr/esl/events.py", "event decoding"),
    ("eslcdr/ingest/legs.py", "leg tracker"),
    ("eslcdr/ingest/interactions.py", "leg tracker"),
    ("eslcdr/ingest/cdr.py", "CDR building"),
    ("eslcdr/store/writer.py", "writer greenlet"),
    ("eslcdr/store/db.py", "writer greenlet"),
    ("eslcdr/esl/client.py", "reader loop"),
    ("eslcdr/service/daemon.py", "pipeline, housekeeping"),
)
GEVENT_LOOP = ("gevent/hub.py", "gevent/timeout.py", "gevent/event.py", "gevent/_abstract_linkable.py",
               "gevent/greenlet.py", "gevent/_hub_primitives.py", "gevent/_waiter.py")


IDLE_LOOP = "hub's loop (mostly waiting in epoll_wait: left out)"


def part(frames: list[str]) -> str:
    if frames[0].startswith("_WorkerGreenlet.run"):
        for name, label in WORKER_PARTS:
            if any(frame.startswith(name + " ") for frame in frames):
                return label
        return "thread hand-over (SQLite thread side)"
    leaf = frames[-1]
    if leaf.startswith("Hub.run "):
        return IDLE_LOOP
    if "gevent/_socket" in leaf:
        return "socket calls"
    if any("gevent/threadpool.py" in f or "gevent/_threading.py" in f or "gevent/pool.py" in f for f in frames):
        return "thread hand-over (hub side)"
    if any(path in leaf for path in GEVENT_LOOP) or leaf.startswith("Hub.run"):
        return "gevent loop: wake-ups, switches, timers"
    for frame in reversed(frames):
        for path, label in MODULES:
            if path in frame:
                return label
        if "eslcdr/" in frame:
            return "other eslcdr (API, monitor, logs)"
    return "other"


def split(paths: list[str]) -> Counter:
    counts: Counter = Counter()
    for path in paths:
        with open(path) as f:
            for line in f:
                stack, _, count = line.rstrip("\n").rpartition(" ")
                if stack:
                    counts[part(stack.split(";"))] += int(count)
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="FILE", help="py-spy raw stacks (bench/live.py --profile DIR)")
    for path in parser.parse_args().paths:
        counts = split([path])
        idle = counts.pop(IDLE_LOOP, 0)
        sqlite = {label: n for label, n in counts.items() if label.startswith(("SQLite thread", "thread hand-over (SQLite"))}
        main_thread = {label: n for label, n in counts.items() if label not in sqlite}
        print("%s: %d samples (%d of the hub's loop left out)" % (path, sum(counts.values()) + idle, idle))
        for name, parts in (("main thread", main_thread), ("SQLite thread", sqlite)):
            total = sum(parts.values()) or 1
            print("  %s: %d samples" % (name, total))
            for label, count in sorted(parts.items(), key=lambda item: -item[1]):
                print("    %5.1f %%  %s" % (100.0 * count / total, label))
    return 0


if __name__ == "__main__":
    sys.exit(main())
