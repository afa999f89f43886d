"""API benchmark: latency of list pages and throughput of CSV and the feed.

Builds (once, reused afterwards) a database of N CDR rows -- default
1,000,000 -- with realistic legs: 1-3 legs per interaction, four accounts,
50 users each, 30 days of calls, SDPs, custom channel variables, and caller
names with commas, quotes, newlines and non-ASCII text.  Rows are generated
with executemany in one transaction.

Then it serves the real app (``eslcdr.api.app.create_app`` + ``make_server``, the
gevent WSGIServer, gevent monkey-patched as in ``eslcdr run``) on 127.0.0.1
in a child process and measures over HTTP with a keep-alive connection:

- CSV export of one account's month (a quarter of the rows): rows/s, cold
  (first export by a fresh server process after the file was dropped from
  the OS page cache, with --cold) then warm, and the server process's CPU
  seconds (its SQLite worker thread included); an interaction-list CSV;
- list first page and interaction list first page: p50/p99 over R requests;
- a deep page (a start_key half way through the account's rows);
- the legs of one interaction (JSON and CSV): p50/p99;
- the collector feed: NDJSON pull of every row, and JSON pages of 10,000.

Prints figures; not a pass/fail test.  Targets (issue #9, DESIGN §6): list
first page p99 < 50 ms, CSV >= 100,000 rows/s on a 1,000,000-row file, cold
and warm.

    python bench/api.py [--rows 1000000] [--db PATH] [--requests 200] [--rebuild] [--cold]
"""

from __future__ import annotations

# Before anything imports bottle or sockets (as ``eslcdr run`` does): bottle's
# request/response objects are thread-locals, and patched late they would be
# shared by every greenlet of the served child.
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import csv  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import sqlite3  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eslcdr import config  # noqa: E402
from eslcdr.store import db as store  # noqa: E402
from eslcdr.api import app as api
from eslcdr.query import queries
from eslcdr.ingest.legs import GREGORIAN_OFFSET  # noqa: E402
from eslcdr.store.schema import RECORD_COLUMNS  # noqa: E402

ACCOUNTS = ["4b0cd3c1e0a2f2c6a8d9e1f20a3b4c5d", "7e1f3a9b2c4d5e6f708192a3b4c5d6e7",
            "a1b2c3d4e5f60718293a4b5c6d7e8f90", "0f1e2d3c4b5a69788796a5b4c3d2e1f0"]
NAMES = ["Smith, John", 'Bob "The Builder"', "Line\nBreak", "Ærøskøbing Ltd", "渡辺 健", "Plain Name",
         "O'Brien, Mary", "Müller GmbH", "", "=cmd|' /C calc'!A0"]
SDP = ("v=0\r\no=FreeSWITCH 1700000000 1700000001 IN IP4 10.0.0.5\r\ns=FreeSWITCH\r\n"
       "c=IN IP4 10.0.0.5\r\nt=0 0\r\nm=audio 16384 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\n"
       "a=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\n")


def generate(path: Path, rows: int, seed: int = 7, uuid_share: float = 0.0) -> None:
    rng = random.Random(seed)
    conn = store.connect_writer(path)
    now = int(time.time())
    span = 30 * 86400
    sql = "INSERT INTO cdrs (%s) VALUES (%s)" % (
        ", ".join('"%s"' % c for c in RECORD_COLUMNS), ", ".join("?" for _ in RECORD_COLUMNS))
    position = {name: i for i, name in enumerate(RECORD_COLUMNS)}
    template: list = [None] * len(RECORD_COLUMNS)
    for name, value in {"app_name": "eslcdr", "app_version": "0.1.0", "node": "fs1",
                        "media_server": "fs1.example.com", "from": "1000@example.com",
                        "from_uri": "1000@example.com", "to": "2000@example.com", "to_uri": "2000@example.com",
                        "presence_id": "1000@example.com", "user_agent": "Yealink SIP-T46S 66.86.0.15",
                        "ringing_seconds": 3, "disposition": "recv_bye", "digits_dialed": "",
                        "local_sdp": SDP, "remote_sdp": SDP}.items():
        template[position[name]] = value
    started = time.perf_counter()
    conn.execute("BEGIN")
    batch: list[tuple] = []
    made = 0
    step = span / max(rows, 1)
    t = float(now - span)  # time order = insertion order, as the writer produces it
    while made < rows:
        legs = rng.choice((1, 2, 2, 2, 3))
        account = ACCOUNTS[rng.randrange(len(ACCOUNTS))]
        owner = "user%02d" % rng.randrange(50)
        created = int(t)
        interaction = "%d-%08x" % (created + GREGORIAN_OFFSET, rng.getrandbits(32))
        if rng.random() < uuid_share:  # an operator's interaction_id_vars holding a UUID
            interaction = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        a_leg = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        ccv = json.dumps({"account_id": account, "owner_id": owner, "bridge_id": a_leg,
                          "account_billing": "per_minute", "rate": "100", "rate_name": "US-48"},
                         sort_keys=True)
        for leg in range(min(legs, rows - made)):
            call_id = a_leg if leg == 0 else str(uuid.UUID(int=rng.getrandbits(128), version=4))
            answered = rng.random() < 0.7
            duration = rng.randrange(1, 600)
            hangup = created + duration
            row = list(template)
            for name, value in (
                ("id", time.strftime("%Y%m", time.gmtime(hangup)) + "-" + call_id),
                ("call_id", call_id), ("interaction_id", interaction), ("account_id", account),
                ("owner_id", owner if leg == 0 else None), ("authorizing_id", "dev%03d" % rng.randrange(200)),
                ("channel_name", "sofia/internal/1%03d@example.com" % rng.randrange(1000)),
                ("call_direction", "inbound" if leg == 0 else "outbound"),
                ("caller_id_name", rng.choice(NAMES)), ("caller_id_number", "+1555%07d" % rng.randrange(10**7)),
                ("callee_id_name", rng.choice(NAMES)), ("callee_id_number", "%d" % rng.randrange(1000, 9999)),
                ("request", "2%03d@example.com" % rng.randrange(1000)),
                ("created_us", created * 10**6 + leg), ("answered_us", (created + 3) * 10**6 if answered else 0),
                ("hangup_us", hangup * 10**6), ("timestamp", hangup + GREGORIAN_OFFSET),
                ("duration_seconds", duration), ("billing_seconds", duration - 3 if answered else 0),
                ("hangup_cause", "NORMAL_CLEARING" if answered else "NO_ANSWER"),
                ("hangup_code", "sip:200" if answered else "sip:480"),
                ("other_leg_call_id", a_leg if leg else None), ("custom_channel_vars", ccv),
                ("custom_sip_headers", '{"x_customer": "c%d"}' % rng.randrange(100)),
            ):
                row[position[name]] = value
            batch.append(tuple(row))
            made += 1
        t += step * legs
        if len(batch) >= 20000:
            conn.executemany(sql, batch)
            batch.clear()
    if batch:
        conn.executemany(sql, batch)
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("ANALYZE")
    conn.close()
    elapsed = time.perf_counter() - started
    print("generated %d rows in %.1f s (%.0f rows/s), %.0f MB" % (
        rows, elapsed, rows / elapsed, path.stat().st_size / 1e6))


def row_count(path: Path) -> int:
    try:
        conn = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
        try:
            return conn.execute("SELECT max(seq) FROM cdrs").fetchone()[0] or 0
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


def serve(db: Path, tokens_file: Path) -> None:
    """Child process: the API as the daemon runs it (patched gevent, WSGIServer)."""
    import structlog

    # stdout carries the port number to the parent; logs go to stderr.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    cfg = config.from_mapping({"store": {"path": str(db)},
                               "api": {"tokens_file": str(tokens_file), "statement_timeout": "60"}})
    server = api.make_server(api.create_app(cfg), "127.0.0.1", 0, log=None)
    server.start()
    print(server.server_port, flush=True)
    server.serve_forever()


def get(conn: http.client.HTTPConnection, url: str, token: str, accept: str = "application/json") -> bytes:
    conn.request("GET", url, headers={"X-Auth-Token": token, "Accept": accept})
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError("%s -> %d %s" % (url, response.status, body[:300]))
    return body


def drop_from_page_cache(path: Path) -> None:
    """Evict the file's pages from the OS page cache (clean pages of a file no
    process maps: the database is checkpointed and the server not started yet)."""
    for name in (str(path), str(path) + "-wal"):
        try:
            fd = os.open(name, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, all its threads (Linux /proc)."""
    with open("/proc/%d/stat" % pid) as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def download_csv(conn, url: str, token: str, path: Path) -> tuple[int, int, float]:
    """Stream an export to a file (timed), then count its records (not timed)."""
    started = time.perf_counter()
    conn.request("GET", url, headers={"X-Auth-Token": token, "Accept": "text/csv"})
    response = conn.getresponse()
    size = 0
    buffer = memoryview(bytearray(1 << 20))  # readinto: no new bytes object per read
    with open(path, "wb") as out:
        while True:
            n = response.readinto(buffer)
            if not n:
                break
            size += n
            out.write(buffer[:n])
    elapsed = time.perf_counter() - started
    with open(path, encoding="utf-8", newline="") as handle:
        rows = sum(1 for _ in csv.reader(handle)) - 1
    path.unlink()
    return rows, size, elapsed


def latency(conn, url: str, token: str, n: int) -> tuple[float, float, bytes]:
    get(conn, url, token)  # warm the page cache and the statement cache
    times = []
    body = b""
    for _ in range(n):
        started = time.perf_counter()
        body = get(conn, url, token)
        times.append(time.perf_counter() - started)
    times.sort()
    return times[len(times) // 2] * 1000, times[min(len(times) - 1, int(len(times) * 0.99))] * 1000, body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--db", type=Path, default=Path(tempfile.gettempdir()) / "eslcdr-bench-api.db")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--uuid-share", type=float, default=0.0,
                        help="share of interactions whose id is a UUID, not Kazoo-shaped (on --rebuild)")
    parser.add_argument("--pages-only", action="store_true", help="first pages only: no CSV, no feed")
    parser.add_argument("--csv-only", action="store_true", help="the CSV exports only")
    parser.add_argument("--cold", action="store_true",
                        help="drop the database file from the OS page cache before the server starts, "
                             "so that the first CSV export reads from disk")
    parser.add_argument("--serve", nargs=2, metavar=("DB", "TOKENS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(Path(args.serve[0]), Path(args.serve[1]))
        return

    if args.rebuild or row_count(args.db) != args.rows:
        for suffix in ("", "-wal", "-shm"):
            try:
                os.remove(str(args.db) + suffix)
            except FileNotFoundError:
                pass
        generate(args.db, args.rows, uuid_share=args.uuid_share)
    else:
        print("reusing %s (%d rows)" % (args.db, args.rows))
    # As the daemon does at start: pending migrations (new indexes) first.
    started = time.perf_counter()
    store.connect_writer(args.db).close()
    print("opened for writing (migrations, if any) in %.1f s" % (time.perf_counter() - started))

    if args.cold:
        drop_from_page_cache(args.db)
    workdir = Path(tempfile.mkdtemp(prefix="eslcdr-bench-"))
    tokens_file = workdir / "tokens"
    tokens_file.write_text("bench-account-token %s\nbench-collector-token *\n" % ACCOUNTS[0])
    # The server runs in its own process so the client's parsing does not
    # share a GIL with it.
    child = subprocess.Popen([sys.executable, __file__, "--serve", str(args.db), str(tokens_file)],
                             stdout=subprocess.PIPE, text=True)
    try:
        port = int(child.stdout.readline())
    except ValueError:
        child.kill()
        raise
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    token, collector = "bench-account-token", "bench-collector-token"
    base = "/v2/accounts/%s" % ACCOUNTS[0]
    now_g = int(time.time()) + GREGORIAN_OFFSET
    month = "created_from=%d&created_to=%d" % (now_g - 31 * 86400, now_g)
    try:
        print("\n%d rows; account %s; %d requests per latency figure; load average %s" % (
            args.rows, ACCOUNTS[0][:8], args.requests, " ".join("%.2f" % x for x in os.getloadavg())))
        if not args.pages_only:
            for run, label in ((1, "cold" if args.cold else "first"), (2, "warm"), (3, "warm")):
                cpu = cpu_seconds(child.pid)
                rows, size, elapsed = download_csv(conn, base + "/cdrs?" + month, token, workdir / "export.csv")
                cpu = cpu_seconds(child.pid) - cpu
                print("CSV export (run %d, %s): %d rows, %.1f MB in %.2f s = %.0f rows/s, server CPU %.2f s"
                      "   [target >= 100,000 rows/s]" % (run, label, rows, size / 1e6, elapsed, rows / elapsed, cpu))
            rows, size, elapsed = download_csv(conn, base + "/cdrs/interaction?" + month, token,
                                               workdir / "export.csv")
            print("CSV interaction list: %d rows, %.1f MB in %.2f s = %.0f rows/s" % (
                rows, size / 1e6, elapsed, rows / elapsed))
            if args.csv_only:
                return
        p50, p99, body = latency(conn, base + "/cdrs", token, args.requests)
        print("list first page (50 rows)          p50 %6.2f ms  p99 %6.2f ms   [target p99 < 50 ms]" % (p50, p99))
        p50, p99, _ = latency(conn, base + "/cdrs?page_size=1000", token, max(20, args.requests // 10))
        print("list first page (1000 rows)        p50 %6.2f ms  p99 %6.2f ms" % (p50, p99))
        p50, p99, _ = latency(conn, base + "/cdrs/interaction", token, args.requests)
        print("interaction list first page (50)   p50 %6.2f ms  p99 %6.2f ms" % (p50, p99))
        p50, p99, _ = latency(conn, base + "/cdrs/interaction?ascending=true", token, args.requests)
        print("interaction list, oldest first     p50 %6.2f ms  p99 %6.2f ms" % (p50, p99))
        p50, p99, _ = latency(conn, base + "/users/user07/cdrs/interaction", token, args.requests)
        print("user interaction list first page   p50 %6.2f ms  p99 %6.2f ms" % (p50, p99))
        p50, p99, _ = latency(conn, base + "/users/user07/cdrs", token, args.requests)
        print("user list first page (50)          p50 %6.2f ms  p99 %6.2f ms" % (p50, p99))
        p50, p99, _ = latency(conn, base + "/cdrs?filter_custom_channel_vars.owner_id=user07", token,
                              max(20, args.requests // 10))
        print("list + JSON-path filter (50)       p50 %6.2f ms  p99 %6.2f ms" % (p50, p99))

        # A start_key half way through the account's month of rows.
        db = sqlite3.connect("file:%s?mode=ro" % args.db, uri=True)
        total = db.execute("SELECT count(*) FROM cdrs WHERE account_id = ?", (ACCOUNTS[0],)).fetchone()[0]
        key, seq = db.execute(
            'SELECT "timestamp", seq FROM cdrs WHERE account_id = ? ORDER BY "timestamp" DESC, seq DESC'
            " LIMIT 1 OFFSET ?", (ACCOUNTS[0], total // 2)).fetchone()
        db.close()
        cursor = queries.encode_cursor(queries.Cursor(queries.KIND_CDRS, key, seq, now_g - 2682000, now_g))
        p50, p99, _ = latency(conn, base + "/cdrs?start_key=" + cursor, token, args.requests)
        print("deep page (row %7d of %7d)   p50 %6.2f ms  p99 %6.2f ms" % (total // 2, total, p50, p99))

        # The legs of an interaction with three legs (full records, SDPs included).
        db = sqlite3.connect("file:%s?mode=ro" % args.db, uri=True)
        recent = db.execute("SELECT interaction_id FROM cdrs WHERE account_id = ? ORDER BY seq DESC LIMIT 300",
                            (ACCOUNTS[0],)).fetchall()
        three = next((iid for iid, in recent if db.execute(
            "SELECT count(*) FROM cdrs WHERE account_id = ? AND interaction_id = ?", (ACCOUNTS[0], iid)
        ).fetchone()[0] == 3), recent[0][0])
        db.close()
        p50, p99, _ = latency(conn, base + "/cdrs/legs/" + three, token, args.requests)
        print("legs of an interaction (3, JSON)   p50 %6.2f ms  p99 %6.2f ms" % (p50, p99))
        p50, p99, _ = latency(conn, base + "/cdrs/legs/%s?accept=csv" % three, token, args.requests)
        print("legs of an interaction (3, CSV)    p50 %6.2f ms  p99 %6.2f ms" % (p50, p99))
        if args.pages_only:
            return

        started = time.perf_counter()
        body = get(conn, "/v2/feed/cdrs?after=0", collector, accept="application/x-ndjson")
        elapsed = time.perf_counter() - started
        lines = body.count(b"\n")
        print("feed NDJSON: %d rows, %.0f MB in %.2f s = %.0f rows/s" % (lines, len(body) / 1e6, elapsed,
                                                                          lines / elapsed))
        started, after, pulled = time.perf_counter(), 0, 0
        while pulled < min(args.rows, 200_000):
            page = json.loads(get(conn, "/v2/feed/cdrs?limit=10000&after=%d" % after, collector))
            if not page["data"]:
                break
            pulled += len(page["data"])
            after = page["next_after"]
        elapsed = time.perf_counter() - started
        print("feed JSON pages of 10,000: %d rows in %.2f s = %.0f rows/s" % (pulled, elapsed, pulled / elapsed))
    finally:
        conn.close()
        child.terminate()
        child.wait(10)


if __name__ == "__main__":
    main()
