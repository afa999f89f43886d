"""Ingest benchmark: the S7 burst capture plus the S1-S6 call mix (real
FreeSWITCH 1.10 captures, JSON) replayed N times (default 30: 10,560 events,
2,850 legs) over a real TCP socket, read by

  bare       a buffered socket reader that only splits frames and json.loads them
  gs+json    greenswitch 0.0.19's line reader with json.loads on the bodies
  greenswitch  stock greenswitch (plain events, its own decoding, do-nothing handler)
  eslcdr     the whole pipeline: socket -> decode -> legs -> CDR -> committed in SQLite

Each reader gets its own stand-in process (prerendered frames, on the other
core), so serving costs nothing on the measured core.  Prints, per reader,
the median over --rounds of wall seconds, legs/s, events/s and the CPU time
of the reading process (eslcdr: incl. its SQLite writer thread) per leg, then
the ratios the DESIGN's targets are stated in; figures, not pass/fail.

    python bench/ingest.py [--repeat 30] [--rounds 5] [--only eslcdr,bare]
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CAPTURES = [ROOT / "tests" / "data" / ("%s_json.esl" % name) for name in ("S7", "S1", "S2", "S3", "S4", "S5", "S6")]
SUBSCRIBE = "CHANNEL_CREATE CHANNEL_ANSWER CHANNEL_HANGUP_COMPLETE CHANNEL_PROGRESS CHANNEL_PROGRESS_MEDIA CHANNEL_BRIDGE DTMF CUSTOM spandsp::txfaxresult spandsp::rxfaxresult"


def serve(port: int, repeat: int, fmt: str) -> None:
    """Child process: one stand-in with every frame rendered up front."""
    from eslcdr.fakefs import FakeFreeSWITCH, ReplaySource

    fake = FakeFreeSWITCH(port=port, events=ReplaySource(CAPTURES, repeat=repeat), prerender=fmt)
    fake.start()
    print("ready", flush=True)
    fake.wait_done(timeout=600)
    gevent.sleep(2)
    fake.stop()


def count_events_and_legs() -> tuple[int, int]:
    from eslcdr.esl.events import JSON, decode_event
    from eslcdr.esl.frames import Frame, FrameParser

    events = legs = 0
    for capture in CAPTURES:
        parser = FrameParser()
        parser.feed(capture.read_bytes())
        for frame in parser.items():
            if isinstance(frame, Frame) and frame.content_type == JSON:
                events += 1
                legs += decode_event(frame).get("Event-Name") == "CHANNEL_HANGUP_COMPLETE"
    return events, legs


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    def __init__(self, repeat: int, fmt: str):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(self.port), "--repeat", str(repeat), "--format", fmt],
            stdout=subprocess.PIPE,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        line = self.proc.stdout.readline()
        assert line.strip() == b"ready", line

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


def bare(port: int, events: int) -> float:
    sock = socket.create_connection(("127.0.0.1", port))
    reader = sock.makefile("rb", buffering=1 << 16)
    start = time.perf_counter()
    sock.sendall(b"auth ClueCon\n\nevent json %s\n\n" % SUBSCRIBE.encode())
    seen = 0
    while seen < events:
        headers = {}
        while True:
            line = reader.readline()
            if line in (b"\n", b""):
                break
            name, _, value = line.partition(b": ")
            headers[name] = value.strip()
        length = int(headers.get(b"Content-Length", 0))
        body = reader.read(length) if length else b""
        if headers.get(b"Content-Type") == b"text/event-json":
            json.loads(body)
            seen += 1
    elapsed = time.perf_counter() - start
    sock.close()
    return elapsed


def greenswitch_reader(port: int, events: int, decode_json: bool) -> float:
    from greenswitch.esl import InboundESL

    done = gevent.event.Event()
    count = [0]

    class JsonInbound(InboundESL):
        def handle_event(self, event):  # greenswitch's dispatch, JSON bodies
            if event.headers.get("Content-Type") == "text/event-json":
                data = self._read_socket(self.sock_file, int(event.headers["Content-Length"]))
                event.headers.update(json.loads(data))
                self._esl_event_queue.put(event)
                return
            super().handle_event(event)

    def handler(event):
        count[0] += 1
        if count[0] >= events:
            done.set()

    client = (JsonInbound if decode_json else InboundESL)("127.0.0.1", port, "ClueCon")
    start = time.perf_counter()
    client.connect()
    client.register_handle("*", handler)
    client.send("event %s %s" % ("json" if decode_json else "plain", SUBSCRIBE))
    done.wait(timeout=300)
    elapsed = time.perf_counter() - start
    client._run = False
    client.sock.close()
    return elapsed


def eslcdr_pipeline(port: int, legs: int, events: int = 0, split: dict | None = None) -> tuple[float, int]:
    """Wall seconds from Daemon.start() until ``legs`` rows are committed.
    ``split`` (optional) receives where the time went: when the last event
    was taken (``read_s``), the CPU of the main thread (reader, tracker,
    builder: ``main_cpu_s``) and of the others (the SQLite writer thread)."""
    from eslcdr import config
    from eslcdr.service.daemon import Daemon

    with tempfile.TemporaryDirectory() as tmp:
        cfg = config.from_mapping(
            {
                "esl": {"port": str(port)},
                "store": {"path": os.path.join(tmp, "bench.db")},
                "cdr": {"node_name": "bench"},
                "log": {"level": "warning", "format": "json"},
            }
        )
        daemon = Daemon(cfg)
        start = time.perf_counter()
        cpu_start, main_start = time.process_time(), time.thread_time()
        daemon.start()
        read_s = None
        # "Committed and visible": the writer's counter moves after COMMIT.
        while daemon.writer.written < legs and time.perf_counter() - start < 300:
            if read_s is None and events and sum(p.events for p in daemon.pipelines.values()) >= events:
                read_s = time.perf_counter() - start
            gevent.sleep(0.001)
        elapsed = time.perf_counter() - start
        if split is not None:
            main_cpu = time.thread_time() - main_start
            split.update(read_s=read_s or elapsed, main_cpu_s=main_cpu,
                         other_cpu_s=time.process_time() - cpu_start - main_cpu)
        written = daemon.writer.written
        daemon.shutdown()
    return elapsed, written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", help="comma-separated readers to run (default: all)")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--format", default="json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.repeat, args.format)
        return 0
    from eslcdr.service import logs

    logs.configure("warning", "json")
    events, legs = count_events_and_legs()
    events, legs = events * args.repeat, legs * args.repeat
    print("stream: %d events, %d legs (%s x%d)" % (events, legs, "+".join(p.stem for p in CAPTURES), args.repeat))
    runs = {
        "bare": ("json", lambda port: bare(port, events)),
        "gs+json": ("json", lambda port: greenswitch_reader(port, events, True)),
        "greenswitch": ("plain", lambda port: greenswitch_reader(port, events, False)),
        "eslcdr": ("json", None),
        "eslcdr-plain": ("plain", None),
    }
    if args.only:
        runs = {name: run for name, run in runs.items() if name in args.only.split(",")}
    wall: dict[str, float] = {}
    cpu_per_leg: dict[str, float] = {}
    for name, (fmt, run) in runs.items():
        times, cpu, splits = [], [], []
        for _ in range(args.rounds):
            server = Server(args.repeat, fmt)
            try:
                cpu_start = time.process_time()
                if run is None:
                    split: dict = {}
                    elapsed, written = eslcdr_pipeline(server.port, legs, events, split)
                    splits.append(split)
                    assert written == legs, "only %d of %d legs written" % (written, legs)
                else:
                    elapsed = run(server.port)
                cpu.append(time.process_time() - cpu_start)
            finally:
                server.close()
            times.append(elapsed)
        wall[name] = median(times)
        cpu_per_leg[name] = median(cpu) / legs * 1e6
        print("%-13s median %.3f s  (runs: %s)  %7.0f legs/s  %7.0f events/s  cpu %.0f us/leg" % (
            name, wall[name], " ".join("%.3f" % t for t in times), legs / wall[name], events / wall[name],
            cpu_per_leg[name]))
        if splits:
            print("%13s last event taken at %.3f s; CPU us/leg: main thread (read, decode, legs, CDR) %.0f,"
                  " writer thread %.0f" % ("", median([s["read_s"] for s in splits]),
                                           median([s["main_cpu_s"] for s in splits]) / legs * 1e6,
                                           median([s["other_cpu_s"] for s in splits]) / legs * 1e6))
    print()
    if "eslcdr" in wall and "greenswitch" in wall:
        print("eslcdr vs stock greenswitch (b/a): %.2fx its speed (target >= 3.0x)" % (wall["greenswitch"] / wall["eslcdr"]))
    if "eslcdr" in wall and "bare" in wall:
        print("eslcdr vs bare floor (b/c): %.2f of its speed (target >= 0.8)" % (wall["bare"] / wall["eslcdr"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
