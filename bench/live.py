"""Live regime: CPU per leg of ``eslcdr run`` when events arrive as a media
server sends them (a few at a time, in real time), beside the burst figure.

The stand-in (``eslcdr fakefs``, generated calls) and the daemon (``eslcdr
run``, the default config but for paths and ports) are real subprocesses.
The daemon starts first and waits for FreeSWITCH; the stand-in is started
once it is idle.  CPU is the daemon process's own (its threads' run time
from /proc/<pid>/task/*/schedstat, in ns; utime + stime in clock ticks where
the kernel has no schedstat; its main thread -- socket, decoding, legs, CDRs
-- apart from its other threads, the SQLite writer's), so other load on the machine
changes it less than wall time; still compare figures of one run, and mind
the load average printed with them.

  burst   ``--calls N --cps 0``: as fast as the daemon reads; CPU from just
          before the stand-in starts until every CDR is committed (the
          row count stays put for 1.5 s), then the CPU per second of the
          idle daemon (connected, no events) over --idle seconds.
  paced   ``--cps R`` for every R of --rates, no end to the calls, talk
          times capped (--max-talk, so that the calls in flight reach their
          steady state within seconds): after --warmup seconds, CPU and
          committed legs over --window seconds (CPU per leg of the steady
          state: as many legs end in the window as start in it).  Latency:
          a second Event Socket client of the stand-in (a thread here) notes
          when each HANGUP_COMPLETE left the stand-in, and the database is
          polled (read-only, every --poll s) for the moment its row is
          committed; p50/p99/max over the legs committed in the window.

    python bench/live.py [--rates 10,50,200] [--warmup 10] [--window 20] [--profile DIR]
    python bench/live.py --issue-table   # issue 18's own runs: finite, default talk times, until all committed
    python bench/live.py --burst-calls 0 --rates 0.2,1,2 --window 120   # the trickle (a tail of long calls)

The window's legs are those committed in it; with --max-talk 5 every call
but the fax (34 s, 4 % of calls) ends within ~15 s of its start, so the
window sees as many legs end as start (the fax legs slightly fewer).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import free_port, listen_hangups, percentile  # noqa: E402

CLOCK_TICK = os.sysconf("SC_CLK_TCK")
ENV = dict(os.environ, PYTHONPATH=str(ROOT))
WAIT = 60.0


def stat_cpu(path: str) -> float:
    """utime + stime (s) of a /proc stat file."""
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state): utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def process_cpu(pid: int) -> float:
    """CPU of the whole process, threads that ended included."""
    return stat_cpu("/proc/%d/stat" % pid)


def wakeups(pid: int, tid: int) -> int:
    """Voluntary context switches of one thread: each is a wait it woke from
    (epoll_wait for the main thread, the pool's lock for the SQLite thread)."""
    try:
        with open("/proc/%d/task/%d/status" % (pid, tid)) as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches:"):
                    return int(line.split()[1])
    except FileNotFoundError:  # a pool thread that ended
        pass
    return 0


def run_time(pid: int, tid: int) -> float | None:
    """CPU (s) of one thread in ns from /proc/.../schedstat (None without it):
    a 10 ms clock tick is ~150 µs a leg of a 20 s window at 1 call/s."""
    try:
        with open("/proc/%d/task/%d/schedstat" % (pid, tid)) as f:
            return int(f.read().split()[0]) / 1e9
    except (FileNotFoundError, IndexError, ValueError):
        return None


class Sample:
    def __init__(self, pid: int, committed: int):
        self.at = time.monotonic()
        # The main thread (socket, decoding, legs, CDRs) apart from the
        # others (the SQLite writer's work in gevent's thread pool, whose
        # threads live as long as the daemon): by schedstat's ns where the
        # kernel has it, else by utime + stime (clock ticks).
        tids = [int(tid) for tid in os.listdir("/proc/%d/task" % pid)]
        times = [run_time(pid, tid) for tid in tids]
        # utime + stime of the process counts threads that ended too (gevent
        # lets a pool thread idle 5 s go): printed beside, as "ticks".
        self.ticks = process_cpu(pid)
        if None in times:
            self.main = stat_cpu("/proc/%d/task/%d/stat" % (pid, pid))
            self.cpu = self.ticks
        else:
            self.main = times[tids.index(pid)]
            self.cpu = sum(times)
        self.others = self.cpu - self.main
        self.main_wakeups = wakeups(pid, pid)
        self.other_wakeups = sum(wakeups(pid, int(tid)) for tid in os.listdir("/proc/%d/task" % pid) if int(tid) != pid)
        self.committed = committed


class Run:
    """One daemon with its database, and (later) one stand-in."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.port = free_port()
        self.db = tmp / "cdrs.db"
        self.log = tmp / "daemon.log"
        (tmp / "tokens").write_text("")
        ini = tmp / "eslcdr.ini"
        ini.write_text(
            "[esl]\nport = %d\nreconnect_max_delay = 0.5\n[store]\npath = %s\n"
            "[api]\nlisten = 127.0.0.1:0\ntokens_file = %s\n[log]\nlevel = info\nformat = json\n"
            % (self.port, self.db, tmp / "tokens")
        )
        self.daemon = subprocess.Popen(
            [sys.executable, "-m", "eslcdr", "run", "-c", str(ini)],
            env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(self.log, "wb"),
        )
        self.fake: subprocess.Popen | None = None
        self.reader: sqlite3.Connection | None = None
        self.seen_seq = 0
        self.committed = 0
        self.visible: dict[str, int] = {}
        self.await_log("daemon_started")
        self.reader = sqlite3.connect("file:%s?mode=ro" % self.db, uri=True, isolation_level=None)

    def await_log(self, event: str, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.daemon.poll() is not None:
                raise RuntimeError("eslcdr run exited: %s" % self.log.read_text()[-2000:])
            for line in self.log.read_text(errors="replace").splitlines():
                if line.startswith("{") and json.loads(line).get("event") == event:
                    return
            time.sleep(0.05)
        raise RuntimeError("no %s in the daemon's log within %ss" % (event, timeout))

    def settle(self, quiet: float = 0.005, timeout: float = 10.0) -> None:
        """Wait until the daemon uses (almost) no CPU: start-up is over."""
        deadline = time.monotonic() + timeout
        last = process_cpu(self.daemon.pid)
        while time.monotonic() < deadline:
            time.sleep(0.5)
            now = process_cpu(self.daemon.pid)
            if now - last <= quiet:
                return
            last = now

    def start_fake(self, *args: str) -> None:
        self.fake = subprocess.Popen(
            [sys.executable, "-m", "eslcdr", "fakefs", "--port", str(self.port), "--seed", "7", *args],
            env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def poll_rows(self) -> int:
        """Note the rows committed since the last poll; returns how many."""
        rows = self.reader.execute(
            "SELECT seq, call_id FROM cdrs WHERE seq > ? ORDER BY seq", (self.seen_seq,)
        ).fetchall()
        now_us = time.time_ns() // 1000
        for seq, call_id in rows:
            self.visible[call_id] = now_us
            self.seen_seq = seq
        self.committed += len(rows)
        return len(rows)

    def sample(self) -> Sample:
        return Sample(self.daemon.pid, self.committed)

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
        for proc in (self.daemon, self.fake):
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for proc in (self.daemon, self.fake):
            if proc is not None:
                proc.wait(timeout=30)


class Profiler:
    """py-spy (when asked for, and installed: not a dependency) sampling
    the daemon; raw collapsed stacks, summed by bench/profile_split.py."""

    RATE = 250  # samples a second; --profile-rate (a trickle needs more to gather a few hundred)

    def __init__(self, out: Path | None, pid: int, name: str):
        self.proc = None
        if out is None:
            return
        spy = Path(sys.executable).parent / "py-spy"
        out.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [str(spy) if spy.exists() else "py-spy", "record", "--pid", str(pid), "--rate", str(self.RATE),
             "--nonblocking", "--format", "raw", "--output", str(out / ("%s.txt" % name))],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout=30)


class Strace:
    """``strace -c -f`` on the daemon over the window (--strace DIR): system
    calls by name and thread, summed.  It slows every call: take the CPU
    figures from a run without it."""

    def __init__(self, out: Path | None, pid: int, name: str):
        self.proc = None
        if out is None:
            return
        out.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["strace", "-c", "-f", "-p", str(pid), "-o", str(out / ("%s.strace.txt" % name))],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)  # attached to every thread before the window starts

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout=30)


def load() -> str:
    return "%.2f" % os.getloadavg()[0]


def per_leg(before: Sample, last: Sample) -> dict:
    """CPU a leg committed between two samples taken from the stand-in's start."""
    legs = last.committed
    return {
        "legs": legs,
        "seconds": last.at - before.at,
        "us_per_leg": (last.cpu - before.cpu) / legs * 1e6,
        "main_us": (last.main - before.main) / legs * 1e6,
        "others_us": (last.others - before.others) / legs * 1e6,
        "ticks_us": (last.ticks - before.ticks) / legs * 1e6,
    }


def burst(calls: int, idle: float, poll: float, profile: Path | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run = Run(Path(tmp))
        try:
            run.settle()
            profiler = Profiler(profile, run.daemon.pid, "burst")
            before = run.sample()
            run.start_fake("--calls", str(calls), "--cps", "0")
            last = before
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                if run.poll_rows():
                    last = run.sample()
                elif run.committed and time.monotonic() - last.at > 1.5:
                    break
                time.sleep(poll)
            profiler.stop()
            idle_from = run.sample()
            time.sleep(idle)
            idle_to = run.sample()
        finally:
            run.close()
    return dict(per_leg(before, last), idle_cpu_per_s=(idle_to.cpu - idle_from.cpu) / (idle_to.at - idle_from.at))


def paced(cps: float, warmup: float, window: float, max_talk: int, poll: float, profile: Path | None,
          strace: Path | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run = Run(Path(tmp))
        sent: dict[str, int] = {}
        stop = threading.Event()
        try:
            run.settle()
            run.start_fake("--calls", "0", "--cps", str(cps), "--max-talk", str(max_talk))
            # The stream starts at the daemon's subscription; the listener
            # connects after it (a first subscriber would start it alone).
            run.await_log("esl_connected")
            listener = threading.Thread(target=listen_hangups, args=(run.port, sent, stop), daemon=True)
            listener.start()
            started = time.monotonic()
            first = None
            while True:
                run.poll_rows()
                now = time.monotonic()
                if first is None and now - started >= warmup:
                    profiler = Profiler(profile, run.daemon.pid, "paced-%g" % cps)
                    tracer = Strace(strace, run.daemon.pid, "paced-%g" % cps)
                    first = run.sample()
                    window_seqs_from = run.seen_seq
                elif first is not None and now - first.at >= window:
                    last = run.sample()
                    profiler.stop()
                    tracer.stop()
                    break
                time.sleep(poll)
            rows = run.reader.execute(
                "SELECT call_id FROM cdrs WHERE seq > ? AND seq <= ?", (window_seqs_from, run.seen_seq)
            ).fetchall()
        finally:
            stop.set()
            run.close()
    latencies = [(run.visible[c] - sent[c]) / 1000.0 for (c,) in rows if c in sent and c in run.visible]
    legs = last.committed - first.committed
    seconds = last.at - first.at
    return {
        "legs": legs,
        "legs_per_s": legs / seconds,
        "cpu_ms_per_s": (last.cpu - first.cpu) / seconds * 1e3,
        "ticks_us": (last.ticks - first.ticks) / legs * 1e6,
        "main_wakeups_per_s": (last.main_wakeups - first.main_wakeups) / seconds,
        "other_wakeups_per_s": (last.other_wakeups - first.other_wakeups) / seconds,
        "us_per_leg": (last.cpu - first.cpu) / legs * 1e6,
        "main_us": (last.main - first.main) / legs * 1e6,
        "others_us": (last.others - first.others) / legs * 1e6,
        "p50": percentile(latencies, 0.5) if latencies else float("nan"),
        "p99": percentile(latencies, 0.99) if latencies else float("nan"),
        "max": max(latencies) if latencies else float("nan"),
        "unmatched": len(rows) - len(latencies),
    }


# Issue 18's own table: finite runs with the stand-in's default talk times
# (exponential, mean 30 s), CPU from the stand-in's start until every CDR is
# committed -- so the tail of long calls, and the idle daemon between their
# hangups, count too (the paced windows above leave both out).
ISSUE_RUNS = ((3000, 0.0), (1000, 50.0), (500, 10.0))


def finite(calls: int, cps: float, poll: float) -> dict:
    """``--calls N --cps R --exit-when-done``: CPU until the stand-in has
    delivered its stream and the row count has stayed put for 1.5 s."""
    with tempfile.TemporaryDirectory() as tmp:
        run = Run(Path(tmp))
        try:
            run.settle()
            before = run.sample()
            run.start_fake("--calls", str(calls), "--cps", str(cps), "--exit-when-done")
            last = before
            deadline = time.monotonic() + 1800
            while time.monotonic() < deadline:
                if run.poll_rows():
                    last = run.sample()
                elif run.fake.poll() is not None and time.monotonic() - last.at > 1.5:
                    break
                time.sleep(poll)
        finally:
            run.close()
    return per_leg(before, last)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="10,50,200", help="paced calls/s, comma-separated (default %(default)s)")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before the window (default %(default)s)")
    parser.add_argument("--window", type=float, default=20.0, help="measured seconds per rate (default %(default)s)")
    parser.add_argument("--max-talk", type=int, default=5, help="stand-in's --max-talk (default %(default)s)")
    parser.add_argument("--burst-calls", type=int, default=3000, help="burst calls, 0: no burst (default %(default)s)")
    parser.add_argument("--idle", type=float, default=5.0, help="idle seconds measured after the burst (default %(default)s)")
    parser.add_argument("--poll", type=float, default=0.01, help="database poll interval, s (default %(default)s)")
    parser.add_argument("--profile", type=Path, help="sample the daemon with py-spy into this folder (raw stacks)")
    parser.add_argument("--profile-rate", type=int, default=Profiler.RATE,
                        help="py-spy samples a second (default %(default)s; at 1-2 calls/s 1000 and a 300 s window "
                             "bring ~500 of the main thread)")
    parser.add_argument("--strace", type=Path,
                        help="strace -c -f the daemon over each paced window into this folder (slows it: "
                             "its CPU figures then mean little)")
    parser.add_argument("--issue-table", action="store_true",
                        help="issue 18's own runs instead (--calls 3000/1000/500 at 0/50/10 calls/s, default talk "
                             "times, until every CDR is committed; ~8 min)")
    args = parser.parse_args()
    Profiler.RATE = args.profile_rate

    if args.issue_table:
        print("issue 18's table: CPU of the eslcdr run process per leg, stand-in start to last CDR committed")
        for calls, cps in ISSUE_RUNS:
            result = finite(calls, cps, args.poll)
            print("--calls %4d --cps %-3g: %5d legs in %6.1f s  cpu %4.0f us/leg (main %.0f + others %.0f; by ticks, "
                  "ended threads too, %.0f)  load %s" % (
                      calls, cps, result["legs"], result["seconds"], result["us_per_leg"], result["main_us"],
                      result["others_us"], result["ticks_us"], load()))
        return 0

    print("CPU of the eslcdr run process per committed leg (main thread + writer threads); load = 1-min load average")
    if args.burst_calls:
        result = burst(args.burst_calls, args.idle, args.poll, args.profile)
        print("burst  --calls %d --cps 0: %5d legs in %.2f s  cpu %4.0f us/leg (main %.0f + others %.0f)  "
              "idle %.4f s CPU/s  load %s" % (args.burst_calls, result["legs"], result["seconds"], result["us_per_leg"],
                                              result["main_us"], result["others_us"], result["idle_cpu_per_s"], load()))
    for rate in [float(r) for r in args.rates.split(",") if r]:
        result = paced(rate, args.warmup, args.window, args.max_talk, args.poll, args.profile, args.strace)
        print("paced  --cps %-4g: %5d legs (%.1f legs/s)  cpu %4.0f us/leg (main %.0f + others %.0f; by ticks, "
              "ended threads too, %.0f), %.2f ms/s  wake-ups/s main %.1f others %.1f  latency p50 %.0f ms p99 %.0f ms "
              "max %.0f ms (%d unmatched)  load %s" % (
                  rate, result["legs"], result["legs_per_s"], result["us_per_leg"], result["main_us"],
                  result["others_us"], result["ticks_us"], result["cpu_ms_per_s"], result["main_wakeups_per_s"],
                  result["other_wakeups_per_s"], result["p50"], result["p99"], result["max"], result["unmatched"],
                  load()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
