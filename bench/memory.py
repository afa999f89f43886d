"""Memory benchmark: RSS of the leg tracker with N live legs, and its growth
while many calls pass (figures, not pass/fail).

Generated calls (the stand-in's templates, as JSON event frames, the
daemon's default subscription) go through the daemon's own decoder and
``Pipeline``; the writer only counts: the socket and SQLite are left out so
the figure is the decoder's, the tracker's and the CDR builder's own.
Housekeeping (which trims what the tracker remembers of finished calls)
runs every ``--sweep`` events (a few seconds of this stream; the daemon
trims every second and expires every 30 s).

    python bench/memory.py [--live 10000] [--calls 200000 1000000]

The growth figure compares RSS at the first and the last ``--calls``
checkpoint (calls started, counted from the stream); the issue's target is
< 10 % from 200,000 to 1,000,000 calls (about ten minutes on one core).

``--daemon`` measures the real thing instead: ``eslcdr run`` (socket, SQLite
writer, API) fed by ``eslcdr fakefs`` as fast as it reads, one stand-in per
stretch between checkpoints (each with its own seed; the daemon reconnects);
at each checkpoint, once every CDR is committed, the daemon's RSS.  The
stand-in is paused while the daemon's writer lags (``deliver``).  The
database (a few GB for 1,000,000 calls) goes in ``--workdir``, removed after.

    python bench/memory.py --live 0 --daemon --calls 200000 1000000
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from eslcdr import config  # noqa: E402
from eslcdr.service.daemon import Pipeline  # noqa: E402
from eslcdr.esl.events import JSON  # noqa: E402
from eslcdr.fakefs import GeneratedSource  # noqa: E402
from eslcdr.esl.frames import Frame  # noqa: E402

JSON_HEADERS = {"Content-Type": JSON}


def rss_mb(pid: str = "self") -> float:
    for line in Path("/proc/%s/status" % pid).read_text().splitlines():
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


def decoded(pipe: Pipeline, emission) -> dict:
    """The event as the daemon decodes it (light for the events it reads
    little of)."""
    return pipe.decoder.decode(Frame(JSON_HEADERS, emission.body(JSON)))


def call_number(emission) -> int:
    """1-based number of the generated call the event belongs to (its
    context's key is ``call:<seed>:<index>``)."""
    return int(emission.ctx.key.rsplit(":", 1)[1]) + 1


def live_legs(count: int) -> None:
    pipe, _ = pipeline()
    gc.collect()
    before = rss_mb()
    source = GeneratedSource(calls=None, seed=7)
    for emission in source:
        if emission.template.event_id in ("CHANNEL_CREATE", "CHANNEL_ANSWER"):
            pipe.on_event(decoded(pipe, emission))
            if len(pipe.tracker) >= count:
                break
    gc.collect()
    after = rss_mb()
    print("live legs %7d: RSS %.1f MB (tracker and events: +%.1f MB)" % (len(pipe.tracker), after, after - before),
          flush=True)


def remembered(pipe: Pipeline) -> str:
    tracker = pipe.tracker
    return "remembered: %d interactions, %d keys, %d finished legs" % (
        len(tracker._members), len(tracker._interaction), len(tracker._finished))


def many_calls(checkpoints: list[int], sweep: int, cps: float) -> None:
    """RSS after each checkpoint of calls started, as calls keep passing."""
    pipe, writer = pipeline()
    source = GeneratedSource(calls=None, cps=cps, seed=11)
    started = time.perf_counter()
    cpu_started = time.process_time()
    targets = sorted(checkpoints)
    first_rss = None
    on_event = pipe.on_event
    for n, emission in enumerate(source):
        on_event(decoded(pipe, emission))
        if n % sweep == 0:
            pipe.housekeeping()
        if n % 1000 == 0 and call_number(emission) >= targets[0]:
            # Right after a sweep at every checkpoint: the same state.
            pipe.housekeeping()
            gc.collect()
            rss = rss_mb()
            first_rss = rss if first_rss is None else first_rss
            print("calls %8d: RSS %.1f MB (%+.1f %%), %d CDRs, %d events, live legs %d, %s; %.0f s (CPU %.0f s)" % (
                targets[0], rss, 100 * (rss - first_rss) / first_rss, writer.count, n + 1,
                len(pipe.tracker), remembered(pipe), time.perf_counter() - started,
                time.process_time() - cpu_started), flush=True)
            targets.pop(0)
            if not targets:
                break
    if len(checkpoints) > 1:
        print("growth from %d to %d calls: %+.1f %%" % (
            min(checkpoints), max(checkpoints), 100 * (rss - first_rss) / first_rss), flush=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def health(api_port: int) -> dict:
    url = "http://127.0.0.1:%d/health" % api_port
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:  # 503 while a node is disconnected
        return json.loads(exc.read())


def settled(api_port: int, timeout: float = 600.0) -> dict:
    """/health once every CDR is committed (nothing waiting, count still)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        time.sleep(2.0)
        try:
            info = health(api_port)
        except OSError:
            continue
        writer = info["writer"]
        now = (writer["written"], writer["backlog"], writer["spool_backlog"])
        if now == last and not writer["backlog"] and not writer["spool_backlog"]:
            return info
        last = now
    raise SystemExit("the daemon did not settle within %.0f s" % timeout)


def deliver(fake: subprocess.Popen, api_port: int, max_waiting: int = 5000) -> int:
    """Wait for the stand-in to deliver its calls.  It sends as fast as the
    daemon reads, which is faster than SQLite commits: it is paused (SIGSTOP)
    while more than ``max_waiting`` CDRs wait in the daemon, so the figure is
    that of a daemon keeping up, not of a full queue (``queue_size`` records
    in memory, the rest spooled)."""
    paused = False
    while fake.poll() is None:
        time.sleep(0.2)
        try:
            writer = health(api_port)["writer"]
        except OSError:
            continue
        waiting = writer["backlog"] + writer["spool_backlog"]
        if not paused and waiting > max_waiting:
            fake.send_signal(signal.SIGSTOP)
            paused = True
        elif paused and waiting < max_waiting // 5:
            fake.send_signal(signal.SIGCONT)
            paused = False
    return fake.returncode


def through_daemon(checkpoints: list[int], workdir: str | None) -> None:
    """RSS of a real ``eslcdr run`` after each checkpoint of calls."""
    esl_port, api_port = free_port(), free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    tmp = tempfile.mkdtemp(prefix="eslcdr-memory-", dir=workdir)
    daemon = fake = None
    try:
        ini = Path(tmp) / "eslcdr.ini"
        ini.write_text(
            "[esl]\nport = %d\n[store]\npath = %s/cdrs.db\n[api]\nlisten = 127.0.0.1:%d\n"
            "[log]\nlevel = warning\nformat = json\n" % (esl_port, tmp, api_port)
        )
        daemon = subprocess.Popen(
            [sys.executable, "-m", "eslcdr", "run", "-c", str(ini)],
            env=env, stdout=subprocess.DEVNULL, stderr=open(Path(tmp) / "daemon.log", "wb"),
        )
        started = time.perf_counter()
        done = 0
        first_rss = rss = None
        for seed, target in enumerate(sorted(checkpoints), start=11):
            fake = subprocess.Popen(
                [sys.executable, "-m", "eslcdr", "fakefs", "--port", str(esl_port), "--calls", str(target - done),
                 "--seed", str(seed), "--exit-when-done"],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            if deliver(fake, api_port) != 0:
                raise SystemExit("eslcdr fakefs failed (exit %d)" % fake.returncode)
            fake = None
            info = settled(api_port)
            done = target
            rss = rss_mb(str(daemon.pid))
            first_rss = rss if first_rss is None else first_rss
            node = next(iter(info["nodes"].values()))
            print("daemon, calls %8d: RSS %.1f MB (%+.1f %%), %d CDRs written, live legs %d, db %.0f MB; %.0f s" % (
                target, rss, 100 * (rss - first_rss) / first_rss, info["writer"]["written"], node["live_legs"],
                os.path.getsize(Path(tmp) / "cdrs.db") / 1e6, time.perf_counter() - started), flush=True)
        if len(checkpoints) > 1:
            print("daemon, growth from %d to %d calls: %+.1f %%" % (
                min(checkpoints), max(checkpoints), 100 * (rss - first_rss) / first_rss), flush=True)
    finally:
        if fake is not None:
            fake.send_signal(signal.SIGCONT)
            fake.terminate()
            fake.wait(timeout=30)
        if daemon is not None:
            daemon.terminate()
            daemon.wait(timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--live", type=int, default=10000, help="live legs to hold (0: skip)")
    parser.add_argument("--calls", type=int, nargs="*", default=[200000, 1000000],
                        help="report RSS after this many calls (default 200000 1000000)")
    parser.add_argument("--sweep", type=int, default=50000,
                        help="events between two housekeeping sweeps (default 50000)")
    parser.add_argument("--cps", type=float, default=10.0,
                        help="calls per second of the generated stream's clock: how many calls overlap"
                             " (default 10: about 1,000 live legs; 110: about 10,000)")
    parser.add_argument("--daemon", action="store_true",
                        help="measure a real eslcdr run fed by eslcdr fakefs (see above)")
    parser.add_argument("--workdir", help="folder for --daemon's database (default: the system's temp)")
    args = parser.parse_args()
    print("start: RSS %.1f MB" % rss_mb(), flush=True)
    if args.live:
        live_legs(args.live)
    if args.calls and args.daemon:
        through_daemon(args.calls, args.workdir)
    elif args.calls:
        many_calls(args.calls, args.sweep, args.cps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
