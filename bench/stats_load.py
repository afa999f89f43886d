"""Stats under load: a light page's latency and the ingest rate while three
clients ask for 31 days of KPIs by minute as CSV (issue 15, point 5).

Sets up a real ``eslcdr run`` daemon reading a real ``eslcdr fakefs``
stand-in (generated calls in real time, ``--cps``), its database first
filled with N rows of history spread over the last 31 days
(bench/stats.py's generator, default 100,000 rows), and measures over HTTP:

1. alone: the first page of one account's CDR list (50 rows), p50/p95, the
   ingest rate (rows committed per second, from ``sqlite_sequence``) and how
   long after its hangup each new row became visible (p50, max);
2. loaded: the same while C clients (default 3, each its own process) ask
   over and over for ``cdrs/stats?interval=60`` over the whole 31-day range
   (44,701 minute buckets) with ``Accept: text/csv``.

Prints figures; not a pass/fail test.  The acceptance of issue 15: loaded
first page p50 < 50 ms, p95 < 250 ms, and ingest going on.

    python bench/stats_load.py [--rows 100000] [--cps 2] [--clients 3] [--seconds 30] [--warmup 40]
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GREGORIAN_UNIX_OFFSET = 62167219200
TOKEN = "bench-stats-load"
MONTH = 2682000  # [api] max_range's default: the longest range a client may ask for


def generate(db: Path, rows: int) -> str:
    """The history rows (bench/stats.py, in a child: it patches gevent); the account to query."""
    code = ("import sys; sys.path.insert(0, %r); import stats; from pathlib import Path; "
            "stats.generate(Path(%r), %d, 31); print(stats.ACCOUNTS[0])" % (str(HERE), str(db), rows))
    out = subprocess.run([sys.executable, "-c", code], check=True, stdout=subprocess.PIPE, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    return out.stdout.strip().splitlines()[-1]


def last_seq(db: Path) -> int:
    conn = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=5)
    try:
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'cdrs'").fetchone()
        return row[0] if row else 0
    finally:
        conn.close()


def get(conn: http.client.HTTPConnection, url: str, accept: str = "application/json") -> bytes:
    conn.request("GET", url, headers={"X-Auth-Token": TOKEN, "Accept": accept})
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError("%s -> %d %s" % (url[:80], response.status, body[:200]))
    return body


def stats_client(port: int, url: str) -> None:
    """Child: ask for the stats CSV until killed."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    while True:
        started = time.perf_counter()
        body = get(conn, url, "text/csv")
        print("%.3f %d" % (time.perf_counter() - started, body.count(b"\n")), flush=True)


def percentile(times: list[float], share: float) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))] * 1000


def watch_ingest(db: Path, after: int, stop: threading.Event, lags: list[float]) -> None:
    """Every 0.1 s, the rows committed since the last look: how long after
    their hangup each became visible (the stand-in's calls are in real time)."""
    conn = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=5)
    try:
        while not stop.wait(0.1):
            now = time.time()
            for seq, hangup_us in conn.execute("SELECT seq, hangup_us FROM cdrs WHERE seq > ? ORDER BY seq",
                                               (after,)).fetchall():
                after = seq
                lags.append(now - hangup_us / 1e6)
    finally:
        conn.close()


def phase(port: int, db: Path, light_url: str, seconds: float) -> dict:
    """Light pages back to back for ``seconds``; their latency, and the ingest
    rate and commit lag meanwhile."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    times: list[float] = []
    lags: list[float] = []
    stop = threading.Event()
    seq0, started = last_seq(db), time.monotonic()
    watcher = threading.Thread(target=watch_ingest, args=(db, seq0, stop, lags), daemon=True)
    watcher.start()
    while time.monotonic() - started < seconds:
        began = time.perf_counter()
        get(conn, light_url)
        times.append(time.perf_counter() - began)
        time.sleep(0.02)  # a person clicking, not a loop hammering
    elapsed = time.monotonic() - started
    stop.set()
    watcher.join(10)
    rows = last_seq(db) - seq0
    conn.close()
    return {"n": len(times), "p50": percentile(times, 0.5), "p95": percentile(times, 0.95),
            "max": max(times) * 1000, "ingest": rows / elapsed, "rows": rows,
            "lag50": percentile(lags, 0.5) / 1000 if lags else float("nan"),
            "lagmax": max(lags) if lags else float("nan")}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="history rows over the last 31 days")
    parser.add_argument("--cps", type=float, default=2.0, help="calls per second of the stand-in")
    parser.add_argument("--clients", type=int, default=3, help="concurrent stats clients")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each measured phase")
    parser.add_argument("--warmup", type=float, default=40.0,
                        help="seconds of calls before measuring (calls last ~30 s: the rate settles)")
    parser.add_argument("--stats-client", nargs=2, metavar=("PORT", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stats_client:
        stats_client(int(args.stats_client[0]), args.stats_client[1])
        return

    work = Path(tempfile.mkdtemp(prefix="eslcdr-bench-stats-load-"))
    db = work / "cdrs.db"
    procs: list[subprocess.Popen] = []
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    try:
        account = generate(db, args.rows)
        (work / "tokens").write_text("%s %s\n" % (TOKEN, account))
        fake_log = open(work / "fakefs.log", "wb")
        fake = subprocess.Popen([sys.executable, "-m", "eslcdr", "fakefs", "--port", "0", "--calls", "0",
                                 "--cps", str(args.cps), "--hold"],
                                stdout=subprocess.PIPE, stderr=fake_log, env=env)
        procs.append(fake)
        line = fake.stdout.readline().decode()
        esl_port = int(line.split("stand-in on ", 1)[1].split()[0].rsplit(":", 1)[1])
        api_port = free_port()
        (work / "eslcdr.ini").write_text(
            "[esl]\nhost = 127.0.0.1\nport = %d\n[store]\npath = %s\n"
            "[api]\nlisten = 127.0.0.1:%d\ntokens_file = %s\n[log]\nlevel = warning\n"
            % (esl_port, db, api_port, work / "tokens"))
        daemon_log = open(work / "daemon.log", "wb")
        daemon = subprocess.Popen([sys.executable, "-m", "eslcdr", "run", "-c", str(work / "eslcdr.ini")],
                                  stdout=daemon_log, stderr=subprocess.STDOUT, env=env)
        procs.append(daemon)
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", api_port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or daemon.poll() is not None:
                    raise RuntimeError("daemon did not start: %s" % (work / "daemon.log").read_text()[-2000:])
                time.sleep(0.2)
        time.sleep(args.warmup)

        now_g = int(time.time()) + GREGORIAN_UNIX_OFFSET
        base = "/v2/accounts/%s" % account
        light = base + "/cdrs"
        stats_url = base + "/cdrs/stats?created_from=%d&created_to=%d&interval=60" % (now_g - MONTH, now_g)
        conn = http.client.HTTPConnection("127.0.0.1", api_port, timeout=600)
        started = time.perf_counter()
        lines = get(conn, stats_url, "text/csv").count(b"\n")
        stats_alone = time.perf_counter() - started
        conn.close()
        print("%d history rows over 31 days, stand-in at %.1f calls/s; stats CSV: %d lines, %.2f s alone"
              % (args.rows, args.cps, lines, stats_alone))

        alone = phase(api_port, db, light, args.seconds)
        clients = [subprocess.Popen([sys.executable, __file__, "--stats-client", str(api_port), stats_url],
                                    stdout=subprocess.PIPE, text=True, env=env) for _ in range(args.clients)]
        procs.extend(clients)
        durations: list[float] = []

        def collect(proc: subprocess.Popen) -> None:
            for out in proc.stdout:
                durations.append(float(out.split()[0]))

        readers = [threading.Thread(target=collect, args=(c,), daemon=True) for c in clients]
        for reader in readers:
            reader.start()
        time.sleep(3.0)  # every client has a request in flight
        loaded = phase(api_port, db, light, args.seconds)
        for label, figures in (("alone", alone), ("%d stats clients" % args.clients, loaded)):
            print("%-16s first page p50 %7.1f ms  p95 %7.1f ms  max %7.1f ms (%d requests) | ingest %.2f rows/s"
                  " (%d rows), committed %.2f s after hangup (p50), %.2f s (max)"
                  % (label, figures["p50"], figures["p95"], figures["max"], figures["n"], figures["ingest"],
                     figures["rows"], figures["lag50"], figures["lagmax"]))
        if durations:
            print("stats CSV under load: %d answered, p50 %.2f s, max %.2f s"
                  % (len(durations), percentile(durations, 0.5) / 1000, max(durations)))
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
