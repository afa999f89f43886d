"""Event-to-queryable latency: a HANGUP_COMPLETE sent by the stand-in -> its
row visible through the API.

The stand-in (``eslcdr fakefs``, generated calls in real time at ``--cps``)
and the daemon (``eslcdr run``) are real subprocesses.  This process is a
second Event Socket client of the stand-in (a thread, subscribed to
CHANNEL_HANGUP_COMPLETE only): when a hangup reaches it, it left the
stand-in for the daemon too.  It also polls the collector feed (``GET
/v2/feed/cdrs?after=``, a ``*`` token) every ``--poll`` seconds and takes,
for each new row, (time first seen) - (time its hangup was sent).  The poll
interval is part of the figure (at most one interval late).  Prints p50 /
p99 / max over the legs; figures, not pass/fail.

Use half the maximum ingest rate (bench/ingest.py prints legs/s; the
generated mix has ~2.6 legs per call):

    python bench/latency.py --cps 400 --seconds 30
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def listen_hangups(port: int, sent: dict[str, int], stop: threading.Event) -> None:
    """A second ESL client: Unique-ID -> when its HANGUP_COMPLETE arrived (µs)."""
    sys.path.insert(0, str(ROOT))
    from eslcdr.esl.events import EVENT_TYPES, decode_event
    from eslcdr.esl.frames import Frame, FrameParser

    while not stop.is_set():
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=1)
            break
        except OSError:
            time.sleep(0.05)
    else:
        return
    sock.sendall(b"auth ClueCon\n\nevent json CHANNEL_HANGUP_COMPLETE\n\n")
    parser = FrameParser()
    sock.settimeout(0.5)
    while not stop.is_set():
        try:
            data = sock.recv(1 << 16)
        except socket.timeout:
            continue
        except OSError:
            return
        if not data:
            return
        now_us = time.time_ns() // 1000
        parser.feed(data)
        for item in parser.items():
            if isinstance(item, Frame) and item.content_type in EVENT_TYPES:
                call_id = decode_event(item).get("Unique-ID")
                if call_id:
                    sent.setdefault(call_id, now_us)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    rank = max(1, round(share * len(ordered) + 0.5))  # nearest rank
    return ordered[min(rank, len(ordered)) - 1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cps", type=float, default=200.0, help="calls per second (default 200)")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long calls start (default 20)")
    parser.add_argument("--poll", type=float, default=0.01, help="feed poll interval, s (default 0.01)")
    args = parser.parse_args()

    token = "bench-latency-token-0123456789"
    esl_port, api_port = free_port(), free_port()
    calls = int(args.cps * args.seconds)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "tokens").write_text("%s *\n" % token)
        ini = Path(tmp) / "eslcdr.ini"
        ini.write_text(
            "[esl]\nport = %d\n[store]\npath = %s/cdrs.db\n[api]\nlisten = 127.0.0.1:%d\ntokens_file = %s/tokens\n"
            "[log]\nlevel = warning\nformat = json\n" % (esl_port, tmp, api_port, tmp)
        )
        fake = subprocess.Popen(
            [sys.executable, "-m", "eslcdr", "fakefs", "--port", str(esl_port), "--calls", str(calls),
             "--cps", str(args.cps), "--seed", "7"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        daemon = subprocess.Popen(
            [sys.executable, "-m", "eslcdr", "run", "-c", str(ini)],
            env=env, stdout=subprocess.DEVNULL, stderr=open(Path(tmp) / "daemon.log", "wb"),
        )
        sent: dict[str, int] = {}
        stop = threading.Event()
        listener = threading.Thread(target=listen_hangups, args=(esl_port, sent, stop), daemon=True)
        listener.start()
        latencies: list[float] = []
        unmatched = 0
        after = 0
        deadline = time.time() + args.seconds + 60
        quiet_since = None
        try:
            while time.time() < deadline:
                url = "http://127.0.0.1:%d/v2/feed/cdrs?after=%d&limit=5000" % (api_port, after)
                request = urllib.request.Request(url, headers={"X-Auth-Token": token})
                try:
                    with urllib.request.urlopen(request, timeout=5) as response:
                        answer = json.loads(response.read())
                except OSError:
                    time.sleep(0.2)
                    continue
                seen_us = time.time_ns() // 1000
                rows = answer.get("data") or []
                for row in rows:
                    sent_us = sent.get(row.get("call_id"))
                    if sent_us is None:
                        unmatched += 1
                    else:
                        latencies.append((seen_us - sent_us) / 1000.0)
                after = answer.get("next_after", after)
                if rows:
                    quiet_since = None
                elif latencies and fake.poll() is not None:
                    quiet_since = quiet_since or time.time()
                    if time.time() - quiet_since > 3:
                        break
                time.sleep(args.poll)
        finally:
            stop.set()
            daemon.terminate()
            fake.terminate()
            daemon.wait(timeout=30)
            fake.wait(timeout=30)
    if not latencies:
        print("no rows seen")
        return 1
    print("cps %.0f, %d legs: latency p50 %.1f ms  p99 %.1f ms  max %.1f ms  (poll every %.0f ms; %d rows unmatched)" % (
        args.cps, len(latencies), percentile(latencies, 0.50), percentile(latencies, 0.99), max(latencies),
        args.poll * 1000, unmatched))
    return 0


if __name__ == "__main__":
    sys.exit(main())
