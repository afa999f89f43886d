"""The main thread's event path in-process, without a socket: the stand-in's
generated calls (``eslcdr fakefs``'s, seed 7) cut into frames, decoded, fed
to the leg tracker and built into CDRs exactly as ``EslClient._take`` does it
for a read, in 512 KiB pieces; the writer only counts the records.

    python bench/event_path.py [--calls 1000] [--format json|plain] [--passes 3] [--mb 0] [--check]

Prints the CPU per leg of the passes (hot caches: the live main thread costs
~1.5-2x that).  On a loaded machine, count instructions instead, which the
load does not change: the difference between ``--passes 1`` and ``--passes 3``
under ``valgrind --tool=callgrind --callgrind-out-file=/dev/null`` is two
passes' ("Collected"; ``--mb 8`` keeps that to a minute).  ``--check`` prints
a hash of every record, merge and live-leg snapshot of one pass: equal
before and after a change means the same CDRs.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from eslcdr import config  # noqa: E402
from eslcdr.esl.client import EslClient  # noqa: E402
from eslcdr.esl.frames import FrameParser  # noqa: E402
from eslcdr.fakefs.generated import GeneratedSource  # noqa: E402
from eslcdr.service.daemon import Pipeline  # noqa: E402

READ = 512 * 1024  # as esl/client.py's READ_CHUNK
CLOCK_US = 1_700_000_000_000_000  # a fixed clock: --check hashes the same records each time
START = 1_699_990_000.0


def stream(calls: int, ctype: str) -> bytes:
    # A fixed start: the same bytes every run (--check).
    source = GeneratedSource(calls=calls, cps=0, seed=7, start_time=START)
    out = bytearray()
    for emission in source:
        emission.core, emission.host = source.core_uuid, source.hostname
        out += emission.frame(ctype)
    return bytes(out)


class CountingWriter:
    """What the pipeline hands over, kept only for --check."""

    def __init__(self, keep: bool):
        self.records: list | None = [] if keep else None
        self.count = 0

    def submit(self, record: dict) -> bool:
        self.count += 1
        if self.records is not None:
            self.records.append(record)
        return True

    def merge_interactions(self, merges) -> None:
        if self.records is not None:
            self.records.append(("merge", list(merges)))


def one_pass(data: bytes, cfg, check: bool) -> tuple[int, list | None]:
    writer = CountingWriter(check)
    pipeline = Pipeline(cfg.nodes[0], cfg, writer, clock=lambda: CLOCK_US)
    errors: list = []
    client = EslClient(cfg.nodes[0], pipeline.on_event, lambda reason, skipped: errors.append(reason), pipeline.decoder)
    parser = FrameParser()
    view = memoryview(data)
    for offset in range(0, len(data), READ):
        parser.feed(view[offset : offset + READ])
        client._take(parser)
        if check:
            writer.records.append(("live", sorted(repr(leg) for leg in pipeline.tracker.live_legs())))
    if check:
        writer.records.append(("errors", errors))
    return writer.count, writer.records


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000, help="generated calls (default %(default)s)")
    parser.add_argument("--format", choices=("json", "plain"), default="json")
    parser.add_argument("--passes", type=int, default=3, help="passes over the stream (default %(default)s)")
    parser.add_argument("--mb", type=float, default=0, help="only the stream's first MB (0: all)")
    parser.add_argument("--check", action="store_true", help="print a hash of one pass's records")
    args = parser.parse_args()

    data = stream(args.calls, "text/event-%s" % args.format)
    if args.mb:
        data = data[: int(args.mb * 1_000_000)]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "tokens").write_text("")
        cfg = config.from_mapping({"store": {"path": str(Path(tmp) / "cdrs.db")},
                                   "api": {"tokens_file": str(Path(tmp) / "tokens")}})
        if args.check:
            legs, records = one_pass(data, cfg, True)
            print("%d legs, records hash %s" % (legs, hashlib.sha256(repr(records).encode()).hexdigest()))
            return 0
        legs = 0
        started = time.process_time()
        for _ in range(args.passes):
            legs += one_pass(data, cfg, False)[0]
        cpu = time.process_time() - started
    print("%s, %d bytes, %d passes: %d legs, %.1f µs CPU a leg"
          % (args.format, len(data), args.passes, legs, cpu / max(legs, 1) * 1e6))
    return 0


if __name__ == "__main__":
    sys.exit(main())
