"""Memory benchmark: RSS of the leg tracker with N live legs, and its growth
while many calls pass (figures, not pass/fail).

Feeds generated calls (the stand-in's templates, as decoded events) straight
into a Pipeline whose writer only counts: the socket and SQLite are left out
so the figure is the tracker's and the CDR builder's own.

    python bench/memory.py [--live 10000] [--legs 50000 250000]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from eslcdr import config  # noqa: E402
from eslcdr.daemon import Pipeline  # noqa: E402
from eslcdr.fakefs import GeneratedSource  # noqa: E402


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class CountingWriter:
    def __init__(self) -> None:
        self.count = 0

    def submit(self, record) -> bool:
        self.count += 1
        return True

    def merge_interactions(self, merges) -> None:
        pass


def pipeline() -> tuple[Pipeline, CountingWriter]:
    cfg = config.from_mapping({"cdr": {"node_name": "bench"}})
    writer = CountingWriter()
    return Pipeline(cfg.nodes[0], cfg, writer), writer


def live_legs(count: int) -> None:
    pipe, _ = pipeline()
    gc.collect()
    before = rss_mb()
    source = GeneratedSource(calls=None, seed=7)
    for emission in source:
        event = emission.event()
        if event.get("Event-Name") in ("CHANNEL_CREATE", "CHANNEL_ANSWER"):
            pipe.on_event(event)
        if len(pipe.tracker) >= count:
            break
    gc.collect()
    after = rss_mb()
    print("live legs %7d: RSS %.1f MB (tracker and events: +%.1f MB)" % (len(pipe.tracker), after, after - before))


def many_legs(checkpoints: list[int]) -> None:
    """RSS after each checkpoint of CDRs built, as calls keep passing."""
    pipe, writer = pipeline()
    source = GeneratedSource(calls=None, seed=11)
    started = time.perf_counter()
    targets = list(checkpoints)
    for n, emission in enumerate(source):
        pipe.on_event(emission.event())
        if n % 50000 == 0:
            pipe.housekeeping()
        if writer.count >= targets[0]:
            gc.collect()
            print("CDRs %8d: RSS %.1f MB, live legs %d, %.0f s" % (
                writer.count, rss_mb(), len(pipe.tracker), time.perf_counter() - started))
            targets.pop(0)
            if not targets:
                return


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--live", type=int, default=10000)
    parser.add_argument("--legs", type=int, nargs="*", default=[50000, 250000],
                        help="report RSS after this many CDRs (default 50000 250000)")
    args = parser.parse_args()
    print("start: RSS %.1f MB" % rss_mb())
    live_legs(args.live)
    if args.legs:
        many_legs(sorted(args.legs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
