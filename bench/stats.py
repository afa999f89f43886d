"""KPI benchmark: latency of ``cdrs/stats`` and ``cdrs/worst`` on a big file,
and what the quality columns cost the ingest path.

Builds (once, reused afterwards) a database of N CDR rows -- default
1,000,000 -- shaped like a busy media server: four accounts, 50 users each,
1-3 legs per call (an inbound A-leg, outbound B-legs, now and then a
LOSE_RACE loser or a loopback pair), realistic hangup causes, PDD, MOS,
codecs, no-RTP legs, SDPs and custom variables, spread over ``--days`` days
(default 30, as bench/api.py; ``--days 1`` puts the whole million in one
day, the worst case for "a day in hourly buckets").

Then it serves the real app (``create_app`` + ``make_server``, gevent
monkey-patched as in ``eslcdr run``) in a child process and measures over
HTTP with a keep-alive connection, p50/p99 over R requests:

- ``stats`` of one account for the last day in hourly buckets (the target:
  p99 < 200 ms), JSON and CSV;
- the same for one user, and for the whole 31-day range;
- ``worst?by=mos`` / ``by=pdd`` for the last day.

``--ingest`` instead measures, in process, what the quality columns add to
the ingest path: the CDR builder's time per leg on the captured SIP and
loopback hangups, and insert_records' time per row with and without the
stats index.

    python bench/stats.py [--rows 1000000] [--days 30] [--db PATH] [--requests 200] [--rebuild]
    python bench/stats.py --ingest
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# bench/api.py patches gevent before eslcdr and bottle are imported (as
# ``eslcdr run`` does) and has the served child, the GET and the row count.
from api import get, row_count, serve  # noqa: E402
from eslcdr import config  # noqa: E402
from eslcdr.store import db as store  # noqa: E402
from eslcdr.ingest.legs import GREGORIAN_OFFSET  # noqa: E402
from eslcdr.store.schema import RECORD_COLUMNS  # noqa: E402

ACCOUNTS = ["4b0cd3c1e0a2f2c6a8d9e1f20a3b4c5d", "7e1f3a9b2c4d5e6f708192a3b4c5d6e7",
            "a1b2c3d4e5f60718293a4b5c6d7e8f90", "0f1e2d3c4b5a69788796a5b4c3d2e1f0"]
SDP = ("v=0\r\no=FreeSWITCH 1700000000 1700000001 IN IP4 10.0.0.5\r\ns=FreeSWITCH\r\n"
       "c=IN IP4 10.0.0.5\r\nt=0 0\r\nm=audio 16384 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\n"
       "a=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\n")
# (cause, answered, weight) of a B-leg
OUTCOMES = (("NORMAL_CLEARING", True, 60), ("USER_BUSY", False, 8), ("NO_ANSWER", False, 8),
            ("ORIGINATOR_CANCEL", False, 10), ("CALL_REJECTED", False, 3), ("NO_USER_RESPONSE", False, 2),
            ("NORMAL_TEMPORARY_FAILURE", False, 3), ("NO_ROUTE_DESTINATION", False, 2),
            ("RECOVERY_ON_TIMER_EXPIRE", False, 2), ("INCOMPATIBLE_DESTINATION", False, 2))


def generate(path: Path, rows: int, days: int, seed: int = 11) -> None:
    rng = random.Random(seed)
    conn = store.connect_writer(path)
    now = int(time.time())
    span = days * 86400
    sql = "INSERT INTO cdrs (%s) VALUES (%s)" % (
        ", ".join('"%s"' % c for c in RECORD_COLUMNS), ", ".join("?" for _ in RECORD_COLUMNS))
    position = {name: i for i, name in enumerate(RECORD_COLUMNS)}
    template: list = [None] * len(RECORD_COLUMNS)
    for name, value in {"app_name": "eslcdr", "app_version": "0.1.0", "node": "fs1",
                        "media_server": "fs1.example.com", "from": "1000@example.com",
                        "from_uri": "1000@example.com", "to": "2000@example.com", "to_uri": "2000@example.com",
                        "presence_id": "1000@example.com", "user_agent": "Yealink SIP-T46S 66.86.0.15",
                        "local_sdp": SDP, "remote_sdp": SDP, "local_media_ip": "10.0.0.5"}.items():
        template[position[name]] = value
    causes = [o for o in OUTCOMES for _ in range(o[2])]
    started = time.perf_counter()
    conn.execute("BEGIN")
    batch: list[tuple] = []
    made = 0
    step = span / max(rows, 1)
    t = float(now - span)
    while made < rows:
        account = ACCOUNTS[rng.randrange(len(ACCOUNTS))]
        owner = "user%02d" % rng.randrange(50)
        created = int(t)
        interaction = "%d-%08x" % (created + GREGORIAN_OFFSET, rng.getrandbits(32))
        cause, answered, _ = rng.choice(causes)
        kind = rng.random()
        # legs: the A-leg, its B-leg(s); sometimes a ring-group loser or a loopback pair
        legs = [("inbound", cause, answered, "sofia/external/+1555%07d@carrier" % rng.randrange(10**7))]
        legs.append(("outbound", cause, answered, "sofia/internal/1%03d@example.com" % rng.randrange(1000)))
        if kind < 0.1 and answered:
            legs.append(("outbound", "LOSE_RACE", False, "sofia/internal/1%03d@example.com" % rng.randrange(1000)))
        elif kind < 0.15:
            legs.insert(1, ("outbound", cause, answered, "loopback/queue-a"))
        a_leg = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        pdd = int(rng.lognormvariate(7.0, 0.6))  # ~1.1 s median, a long tail
        ring = rng.randrange(1, 25)
        talk = rng.randrange(1, 900)
        for n, (direction, leg_cause, leg_answered, channel) in enumerate(legs[: rows - made]):
            call_id = a_leg if n == 0 else str(uuid.UUID(int=rng.getrandbits(128), version=4))
            duration = ring + (talk if leg_answered else 0)
            hangup = created + duration
            row = list(template)
            values = {
                "id": time.strftime("%Y%m", time.gmtime(hangup)) + "-" + call_id, "call_id": call_id,
                "interaction_id": interaction, "account_id": account, "owner_id": owner if n == 0 else None,
                "channel_name": channel, "call_direction": direction,
                "caller_id_name": "Caller", "caller_id_number": "+1555%07d" % rng.randrange(10**7),
                "callee_id_number": "%d" % rng.randrange(1000, 9999), "request": "2000@example.com",
                "created_us": created * 10**6 + n, "answered_us": (created + ring) * 10**6 if leg_answered else 0,
                "hangup_us": hangup * 10**6, "timestamp": hangup + GREGORIAN_OFFSET,
                "duration_seconds": duration, "billing_seconds": talk if leg_answered else 0,
                "ringing_seconds": ring, "hangup_cause": leg_cause,
                "other_leg_call_id": a_leg if n else None,
                "custom_channel_vars": '{"account_id": "%s", "owner_id": "%s"}' % (account, owner),
                "custom_sip_headers": "{}",
            }
            if not channel.startswith("loopback/"):
                values["pdd_ms"] = pdd + (0 if direction == "outbound" else rng.randrange(5, 60))
                values["codec"] = rng.choice(("PCMA", "PCMU", "G722", "OPUS"))
                values["codec_rate"], values["codec_ptime"] = 8000, 20
                values["remote_media_ip"] = "192.0.2.%d" % rng.randrange(1, 255)
                values["remote_media_port"] = rng.randrange(16384, 32768)
                if leg_answered:
                    packets = talk * 50
                    dead = rng.random() < 0.01
                    values["audio_in_packets"] = 0 if dead else packets
                    values["audio_in_media_packets"] = 0 if dead else packets
                    values["audio_out_media_packets"] = packets
                    values["no_rtp_in"] = 1 if dead else 0
                    if not dead:
                        values["audio_in_mos"] = round(min(4.5, max(1.0, rng.gauss(4.3, 0.35))), 2)
                        values["audio_in_quality_percentage"] = 100.0
                        values["audio_in_flaw_total"] = rng.randrange(5)
            for name, value in values.items():
                row[position[name]] = value
            batch.append(tuple(row))
            made += 1
        t += step * len(legs)
        if len(batch) >= 20000:
            conn.executemany(sql, batch)
            batch.clear()
    if batch:
        conn.executemany(sql, batch)
    # The KPI roll-ups, as the daemon's writer keeps them (a raw INSERT does not).
    store._roll_up_after(conn, 0)
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("ANALYZE")
    conn.close()
    elapsed = time.perf_counter() - started
    print("generated %d rows over %d day(s) in %.1f s, %.0f MB" % (
        rows, days, elapsed, path.stat().st_size / 1e6))


def latency(conn, url: str, token: str, n: int, accept: str = "application/json") -> tuple[float, float, bytes]:
    body = get(conn, url, token, accept)  # warm the page cache
    times = []
    for _ in range(n):
        started = time.perf_counter()
        body = get(conn, url, token, accept)
        times.append(time.perf_counter() - started)
    times.sort()
    return times[len(times) // 2] * 1000, times[min(len(times) - 1, int(len(times) * 0.99))] * 1000, body


def bench_api(args) -> None:
    db = args.db or Path(tempfile.gettempdir()) / ("eslcdr-bench-stats-%dd.db" % args.days)
    if args.rebuild or row_count(db) != args.rows:
        for suffix in ("", "-wal", "-shm"):
            try:
                os.remove(str(db) + suffix)
            except FileNotFoundError:
                pass
        generate(db, args.rows, args.days)
    else:
        print("reusing %s (%d rows)" % (db, args.rows))
        started = time.perf_counter()
        store.connect_writer(db).close()  # a file from an older eslcdr: migrate (fills the roll-ups)
        print("opened for writing (migrations) in %.1f s" % (time.perf_counter() - started))
    check = sqlite3.connect("file:%s?mode=ro" % db, uri=True)
    newest = check.execute('SELECT max("timestamp") FROM cdrs').fetchone()[0]
    day_legs = check.execute('SELECT count(*) FROM cdrs WHERE account_id = ? AND "timestamp" > ?',
                             (ACCOUNTS[0], newest - 86400)).fetchone()[0]
    check.close()

    workdir = Path(tempfile.mkdtemp(prefix="eslcdr-bench-"))
    tokens_file = workdir / "tokens"
    tokens_file.write_text("bench-account-token %s\n" % ACCOUNTS[0])
    child = subprocess.Popen([sys.executable, __file__, "--serve", str(db), str(tokens_file)],
                             stdout=subprocess.PIPE, text=True)
    try:
        port = int(child.stdout.readline())
    except ValueError:
        child.kill()
        raise
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    token = "bench-account-token"
    base = "/v2/accounts/%s" % ACCOUNTS[0]
    day = "created_from=%d&created_to=%d" % (newest - 86400 + 1, newest)
    month = "created_from=%d&created_to=%d" % (newest - 2682000, newest)
    n = args.requests
    try:
        print("\n%d rows over %d day(s); account %s: %d legs in its last day; %d requests per figure" % (
            args.rows, args.days, ACCOUNTS[0][:8], day_legs, n))
        p50, p99, body = latency(conn, base + "/cdrs/stats?interval=3600&" + day, token, n)
        totals = json.loads(body)["data"]["totals"]
        print("stats, a day in hourly buckets      p50 %7.2f ms  p99 %7.2f ms   [target p99 < 200 ms]" % (p50, p99))
        print("   (legs %d, asr %.1f, ner %.1f, acd %.0f s, pdd p50/p95 %s/%s ms, mos %.2f over %d legs)" % (
            totals["legs"], totals.get("asr", 0), totals.get("ner", 0), totals.get("acd_seconds", 0),
            totals.get("pdd_ms_p50"), totals.get("pdd_ms_p95"), totals.get("mos_avg", 0), totals["mos_legs"]))
        p50, p99, _ = latency(conn, base + "/cdrs/stats?interval=3600&" + day, token, n, accept="text/csv")
        print("stats CSV, a day hourly             p50 %7.2f ms  p99 %7.2f ms" % (p50, p99))
        p50, p99, _ = latency(conn, base + "/users/user07/cdrs/stats?interval=3600&" + day, token, n)
        print("user stats, a day hourly            p50 %7.2f ms  p99 %7.2f ms" % (p50, p99))
        p50, p99, _ = latency(conn, base + "/cdrs/stats?interval=3600&filter_codec=PCMA&" + day, token,
                              max(10, n // 10))
        print("stats + filter_codec, a day hourly  p50 %7.2f ms  p99 %7.2f ms" % (p50, p99))
        p50, p99, _ = latency(conn, base + "/cdrs/worst?by=mos&limit=20&" + day, token, n)
        print("worst legs by MOS, a day            p50 %7.2f ms  p99 %7.2f ms" % (p50, p99))
        p50, p99, _ = latency(conn, base + "/cdrs/worst?by=pdd&limit=20&" + day, token, n)
        print("worst legs by PDD, a day            p50 %7.2f ms  p99 %7.2f ms" % (p50, p99))
        p50, p99, _ = latency(conn, base + "/cdrs/stats?interval=3600&" + month, token, max(5, n // 20))
        print("stats, 31 days in hourly buckets    p50 %7.2f ms  p99 %7.2f ms" % (p50, p99))
    finally:
        conn.close()
        child.terminate()
        child.wait(10)


def bench_ingest(args) -> None:
    """What the quality columns cost per leg: building and inserting."""
    from eslcdr.ingest import cdr
    from eslcdr.esl.events import EVENT_TYPES, decode_event
    from eslcdr.esl.frames import FrameParser
    from eslcdr.ingest.legs import FinishedLeg

    data = Path(__file__).resolve().parent.parent / "tests" / "data"
    hangups = []
    for name in ("S1_json.esl", "S4_json.esl", "S5_json.esl", "S3_json.esl"):
        parser = FrameParser()
        parser.feed((data / name).read_bytes())
        for frame in parser.items():
            if getattr(frame, "content_type", None) in EVENT_TYPES:
                event = decode_event(frame)
                if event.get("Event-Name") == "CHANNEL_HANGUP_COMPLETE":
                    hangups.append(event)
    legs = [FinishedLeg(hangup=e, digits="", fax=(), bridge_partner="", interaction_id="x", links=())
            for e in hangups]
    builder = cdr.CdrBuilder(config.from_mapping({}).cdr, "fs1")
    rounds = max(1, 20000 // len(legs))

    def per_leg(fn) -> float:
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(rounds):
                for leg in legs:
                    fn(leg)
            best = min(best, (time.perf_counter() - started) / (rounds * len(legs)))
        return best * 1e6

    full = per_leg(builder.build)
    quality = per_leg(lambda leg: cdr._quality(leg.hangup, 1, 1))
    print("CDR builder: %.1f us per leg, of which the quality columns %.1f us (%d captured legs, SIP and loopback)"
          % (full, quality, len(legs)))

    records = [builder.build(leg) for leg in legs]
    # CPU time (the machine may be shared), best of 5 runs, the two schemas
    # alternating so both see the same load.
    best = {True: float("inf"), False: float("inf")}
    total = 0
    for _ in range(5):
        for with_rollups in (True, False):
            with tempfile.TemporaryDirectory() as tmp:
                conn = store.connect_writer(Path(tmp) / "x.db")
                if not with_rollups:
                    conn.execute("DROP INDEX idx_cdrs_stats")
                    for trigger in ("insert", "update", "delete"):
                        conn.execute("DROP TRIGGER cdrs_stats_%s" % trigger)
                batches = []
                for n in range(100):  # batches of 500 rows, as the writer's batch_size
                    batch = []
                    for k in range(500):
                        record = records[k % len(records)]
                        copy = dict(record)
                        copy["call_id"] = copy["id"] = "%s-%d-%d" % (record["call_id"], n, k)
                        batch.append(copy)
                    batches.append(batch)
                total, started = 0, time.process_time()
                for batch in batches:
                    total += store.insert_records(conn, batch)
                best[with_rollups] = min(best[with_rollups], (time.process_time() - started) / total)
                conn.close()
    for with_rollups in (True, False):
        print("insert_records %s the stats index and roll-up triggers: %.1f us CPU per row (best of 5, %d rows)"
              % ("with   " if with_rollups else "without", best[with_rollups] * 1e6, total))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--db", type=Path)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--ingest", action="store_true", help="measure the ingest cost instead")
    parser.add_argument("--serve", nargs=2, metavar=("DB", "TOKENS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(Path(args.serve[0]), Path(args.serve[1]))
    elif args.ingest:
        bench_ingest(args)
    else:
        bench_api(args)


if __name__ == "__main__":
    main()
