"""The central API's figures (issue 17, point 6) on a collector's PostgreSQL.

Rows are cloned from real legs (bench/api.py's generator writes a node's
SQLite file; its feed lines, as a node serves them, are the templates), spread
over ``--nodes`` nodes (each its own seqs), ``--accounts`` accounts and the
last ``--days`` days, and loaded through the collector's own write path
(``PgStore.store_batch``, batches per node; ``--writers`` connections at once)
into a private PostgreSQL (pgserver), or ``--dsn`` (an existing, empty
database; ``--citus``: distributed after the schema by the SQL of
docs/collector.md's "Distributing on Citus", read from that page).  Then, while ``--live-nodes`` more nodes
keep storing in a process of their own, one greenlet and one connection each
as in ``eslcdr collect`` (their rows/s measured):
- an account's CDR first page (``PgReadSide.list_page``, 50 rows), p50/p99;
- an account's interaction first page, p50/p99;
- an account's last day (before the live nodes' hour) as CSV (``list_export`` +
  ``query.list_csv``), rows/s; with
  ``--http`` also as a client gets it: a real ``eslcdr collect`` on the database,
  ``GET /v2/accounts/{A}/cdrs?created_from=..&created_to=..`` with ``Accept: text/csv``
  read by ``http.client`` (its bytes checked against the in-process CSV's);
- the live channels of 20 stand-in nodes, one down (bench/fleet_channels.py);
- the account's ``cdrs/stats``, 30 days hourly (``PgReadSide.stats``), p50/p99.
``--reuse`` measures a database loaded by an earlier run again (``--dsn``).

Prints figures; not a pass/fail test.  Issue targets: first page p99 < 20 ms,
account day CSV >= 100,000 rows/s, stats 30 days hourly p99 < 200 ms,
channels of 20 nodes p99 < 300 ms with one down, storing >= 20,000 rows/s.

    python bench/central.py [--rows 1000000] [--nodes 20] [--accounts 50] [--days 30] [--requests 200]
    python bench/central.py --rows 10000000   # the issue's size
    python bench/central.py --rows 50000 --day-rows 30000 --csv-only [--http]   # a busy account's day as CSV
    python bench/central.py --dsn postgresql://127.0.0.1:9700/bench --citus   # on a Citus coordinator
"""

from __future__ import annotations

# As ``eslcdr collect`` runs: psycopg then waits cooperatively (an export's
# next chunk is read while the previous one is rendered).
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import hashlib  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from api import generate  # noqa: E402  (first: it patches for gevent, and psycopg then waits cooperatively)
import gevent  # noqa: E402
import orjson  # noqa: E402
import psutil  # noqa: E402
import psycopg  # noqa: E402
from fleet_channels import percentile  # noqa: E402
from eslcdr.store import db as store  # noqa: E402
from eslcdr.collector import pgmigrations  # noqa: E402
from eslcdr.collector.pgquery import list_sql  # noqa: E402
from eslcdr.collector.feed import parse_record  # noqa: E402
from eslcdr.collector.pgrecords import FeedRecord  # noqa: E402
from eslcdr.collector.pgstore import PgStore  # noqa: E402
from eslcdr.collector.readside import PgReadSide  # noqa: E402
from eslcdr.collector import worker  # noqa: E402
from eslcdr.ingest.interactions import GREGORIAN_OFFSET  # noqa: E402
from eslcdr.api.core import dumps  # noqa: E402
from eslcdr.query import kazoo  # noqa: E402
from eslcdr.query.list_csv import list_csv  # noqa: E402
from eslcdr.query.stats import StatsQuery  # noqa: E402
from eslcdr.query.reader import StatementTimeout  # noqa: E402
from eslcdr.query.params import KIND_CDRS, KIND_INTERACTIONS, FeedQuery, ListQuery  # noqa: E402
from eslcdr.query.sql import feed_sql  # noqa: E402


def templates(work: Path, count: int = 300) -> list[dict]:
    """Real legs as a node's feed serves them (bench/api.py's generator)."""
    db = work / "templates.db"
    generate(db, count, seed=17)
    conn = store.connect_writer(db)
    sql, args = feed_sql(FeedQuery(0, None))
    docs = [orjson.loads(row[0]) for row in conn.execute(sql, args)]
    conn.close()
    return docs


class Cloner:
    """Legs cloned from the templates: new ids, account, owner, times; per-node seqs."""

    def __init__(self, docs: list[dict], accounts: int, seed: int) -> None:
        self.docs, self.rng = docs, random.Random(seed)
        self.accounts = ["%032x" % (0xACC0000 + i) for i in range(accounts)]
        self.seq: dict[int, int] = {}

    def interaction(self, node: int, created: int) -> list[FeedRecord]:
        rng = self.rng
        account = self.accounts[rng.randrange(len(self.accounts))]
        owner = "%032x" % (0x5E0000 + rng.randrange(200))
        iid = "%d-%08x" % (created + GREGORIAN_OFFSET, rng.getrandbits(32))
        out = []
        for leg in range(rng.choice((1, 2, 2, 3))):
            doc = dict(self.docs[rng.randrange(len(self.docs))])
            call_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            duration = max(1, int(doc.get("duration_seconds") or 60))
            hangup = created + duration
            seq = self.seq[node] = self.seq.get(node, 0) + 1
            ccv = dict(doc.get("custom_channel_vars") or {}, account_id=account)
            doc.update(seq=seq, call_id=call_id, id=time.strftime("%Y%m", time.gmtime(hangup)) + "-" + call_id,
                       interaction_id=iid, account_id=account, owner_id=owner if leg == 0 else None,
                       created_us=created * 10**6 + leg, hangup_us=hangup * 10**6,
                       answered_us=(created + 3) * 10**6 if doc.get("answered_us") else 0,
                       timestamp=hangup + GREGORIAN_OFFSET, custom_channel_vars=ccv,
                       node="fs%d" % node, media_server="fs%d.example.com" % node)
            out.append(FeedRecord(seq, call_id, hangup * 10**6, orjson.dumps(doc), doc))
        return out


def citus_statements() -> list[str]:
    """The statements of docs/collector.md's "Distributing on Citus" block
    (its first ``text`` block), comments dropped: the SQL is written there only."""
    section = (ROOT / "docs" / "collector.md").read_text().split("\n## Distributing on Citus\n", 1)[1]
    block = re.search(r"^```text\n(.*?)^```", section, re.M | re.S).group(1)
    code = "\n".join(line.split("--", 1)[0] for line in block.splitlines())
    return [" ".join(part.split()) for part in code.split(";") if part.strip()]


PROGRESS_ROWS = 500_000


def load(store_: PgStore, cloner: Cloner, nodes: list[int], rows: int, start: int, span: int, batch: int,
         stop: threading.Event | None = None, stored: Callable[[int], None] | None = None) -> tuple[int, float]:
    """Store ``rows`` legs hung up over [start, start + span) through store_batch; (rows, seconds)."""
    pending: dict[int, list[FeedRecord]] = {n: [] for n in nodes}
    after = {n: store_.node_state("fs%d" % n, "http://127.0.0.1:1").after for n in nodes}
    made, step, began = 0, span / max(rows, 1), time.perf_counter()

    def flush(node: int) -> None:
        items = pending[node]
        store_.ensure_months(items, "fs%d" % node)
        after[node] = store_.store_batch("fs%d" % node, "db-fs%d" % node, after[node], items).after
        if stored is not None:
            stored(len(items))
        pending[node] = []

    t = float(start)
    while made < rows and not (stop and stop.is_set()):
        node = nodes[made % len(nodes)]
        legs = cloner.interaction(node, int(t))
        pending[node] += legs
        made += len(legs)
        t += step * len(legs)
        if len(pending[node]) >= batch:
            flush(node)
    for node in nodes:
        if pending[node]:
            flush(node)
    return made, time.perf_counter() - began


def load_parallel(dsn: str, cloner: Cloner, nodes: list[int], rows: int, start: int, span: int, batch: int,
                  writers: int) -> tuple[int, float]:
    """``load`` by ``writers`` greenlets, each with its own connection and its
    share of the nodes (as the collector's workers store several nodes at once)."""
    writers = max(1, min(writers, len(nodes)))
    began = time.perf_counter()
    done = [0]

    def stored(count: int) -> None:  # a line per PROGRESS_ROWS rows (a long load can be followed)
        done[0] += count
        if done[0] // PROGRESS_ROWS != (done[0] - count) // PROGRESS_ROWS:
            secs = time.perf_counter() - began
            print("  loading: %d rows in %.0f s = %.0f rows/s; load average %.2f"
                  % (done[0], secs, done[0] / secs, os.getloadavg()[0]), flush=True)

    def one(index: int) -> int:
        store_ = PgStore.connect(dsn)
        try:
            share = rows // writers + (index < rows % writers)
            return load(store_, cloner, nodes[index::writers], share, start, span, batch, stored=stored)[0]
        finally:
            store_.close()

    jobs = [gevent.spawn(one, i) for i in range(writers)]
    gevent.joinall(jobs, raise_error=True)
    return sum(job.value for job in jobs), time.perf_counter() - began


def timed(fn, n: int, budget: float = 120.0) -> list[float]:
    """Up to ``n`` timings (ms), fewer when they pass ``budget`` seconds; a
    statement timeout ends them (it is the figure then)."""
    out: list[float] = []
    start = time.perf_counter()
    for _ in range(n):
        began = time.perf_counter()
        try:
            fn()
        except StatementTimeout:
            out.append(float("inf"))
            break
        out.append((time.perf_counter() - began) * 1000)
        if began - start > budget:
            break
    return out


class LinePool:
    """A node's feed lines, made once and served again with new call_ids and
    seqs (a bytes replace): after its warm-up the live writer spends its CPU
    on the collector's work (parsing the lines, storing them), not on cloning."""

    def __init__(self, cloner: Cloner, node: int, rows: int, start: int, span: int) -> None:
        self.node, self.lines, self.seq, self.round = node, [], 0, 0
        t, step = float(start), span / max(rows, 1)
        while len(self.lines) < rows:
            for record in cloner.interaction(node, int(t)):
                self.lines.append((record.seq, record.call_id.encode(), record.line))
            t += step

    def batch(self, size: int) -> list[bytes]:
        out = []
        while len(out) < size:
            index = self.seq % len(self.lines)
            if index == 0:
                self.round += 1
            seq, call_id, line = self.lines[index]
            self.seq += 1
            new_id = b"%08x" % self.round + call_id[8:]
            out.append(line.replace(call_id, new_id).replace(b'"seq":%d,' % seq, b'"seq":%d,' % self.seq, 1))
        return out


def store_live(args: argparse.Namespace) -> None:
    """Child: ``--live-nodes`` nodes storing their last hour's legs until
    SIGUSR1, as the collector does: one greenlet and one PostgreSQL
    connection per node in one process, each batch parsed from feed lines
    (``feed.parse_record``) and stored by ``PgStore.store_batch``; prints the rate."""
    dsn, first, now = args.live[0], int(args.live[1]), int(args.live[2])
    worker.fewer_young_collections()  # as the collector's workers do
    # SIGUSR1 stops it (eslcdr's imports patch threading for gevent: a thread
    # blocked reading stdin would block the process).
    stop = threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: stop.set())
    work = Path(tempfile.mkdtemp(prefix="eslcdr-bench-live-"))
    cloner = Cloner(templates(work), args.accounts, seed=9 + first)  # other call ids on a --reuse run
    nodes = list(range(first, first + args.live_nodes))
    pools = {n: LinePool(cloner, n, 2 * args.batch_size, now - 3600, 3600) for n in nodes}
    stored = {n: 0 for n in nodes}
    writers = {n: PgStore.connect(dsn) for n in nodes}
    backends = [psutil.Process(w.conn.info.backend_pid) for w in writers.values()]
    print("ready", flush=True)
    began = time.perf_counter()
    cpu0 = time.process_time(), sum(sum(b.cpu_times()[:2]) for b in backends)

    def run(node: int) -> None:
        writer = writers[node]
        name = "fs%d" % node
        after = writer.node_state(name, "http://127.0.0.1:1").after
        while not stop.is_set():
            items, previous = [], after
            for line in pools[node].batch(args.batch_size):
                item = parse_record(line, previous)
                previous = item.seq
                items.append(item)
            result = writer.store_batch(name, "db-" + name, after, items)
            after = result.after
            stored[node] += result.stored

    gevent.joinall([gevent.spawn(run, n) for n in nodes])
    secs = time.perf_counter() - began
    mine, server = time.process_time() - cpu0[0], sum(sum(b.cpu_times()[:2]) for b in backends) - cpu0[1]
    for writer in writers.values():
        writer.close()
    shutil.rmtree(work, ignore_errors=True)
    rows = max(1, sum(stored.values()))
    print("storing meanwhile (%d nodes, a greenlet and a connection each, batches of %d): %d rows in %.1f s"
          " = %.0f rows/s; CPU per row: this process %.1f us + its PostgreSQL backends %.1f us"
          " (%.0f rows/s on 2 idle cores)" % (len(nodes), args.batch_size, rows, secs, rows / secs,
                                             mine / rows * 1e6, server / rows * 1e6, 2 * rows / (mine + server)))


CSV_RUNS = 5  # exports of the day measured (best rows/s, least CPU)
HTTP_TOKEN = "bench-central-csv-token-0123456789abcdef"  # the collector's '*' token in --http


def csv_in_process(read: PgReadSide, day: ListQuery) -> tuple[list[tuple], str]:
    """The day's CSV by ``list_export`` + ``list_csv``, CSV_RUNS times:
    [(rows, seconds, bytes, CPU seconds)], and the sha256 of the body a client
    would get (header record included)."""
    header = kazoo.csv_records([kazoo.csv_header(kazoo.LIST_COLUMNS)]).encode("utf-8")
    runs, digest = [], ""
    for _ in range(CSV_RUNS):
        began, cpu, rows, size, sha = time.perf_counter(), time.process_time(), 0, 0, hashlib.sha256(header)
        for batch in read.list_export(day):
            rows += len(batch)
            text = list_csv(batch)
            size += len(text)
            sha.update(text)
        runs.append((rows, time.perf_counter() - began, size, time.process_time() - cpu))
        digest = sha.hexdigest()
    return runs, digest


def start_collector(work: Path, dsn: str) -> tuple[subprocess.Popen, int]:
    """A real ``eslcdr collect`` of this tree serving the database (one node
    configured, unreachable: it pulls nothing); (process, API port)."""
    (work / "tokens").write_text("%s *\n" % HTTP_TOKEN)
    ini = work / "collector.ini"
    ini.write_text("[collector]\ndsn = %s\nlisten = 127.0.0.1:0\ntokens_file = %s\nretry_max_delay = 30\n"
                   "[log]\nlevel = info\nformat = json\n[node:bench-none]\nurl = http://127.0.0.1:1\ntoken = x\n"
                   % (dsn, work / "tokens"))
    log_path = work / "collector.log"
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "eslcdr", "collect", "-c", str(ini)], stdout=log_file,
                                stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        for line in log_path.read_text(errors="replace").splitlines():
            if '"collect_started"' in line:
                return proc, int(json.loads(line)["listen"].rsplit(":", 1)[1])
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("eslcdr collect did not start: %s" % log_path.read_text(errors="replace")[-2000:])


def csv_over_http(port: int, server: psutil.Process, day: ListQuery) -> tuple[list[tuple], str]:
    """The day's CSV as a client gets it from the collector, CSV_RUNS times:
    [(seconds, bytes, server CPU seconds, client CPU seconds)], sha256 of the body."""
    path = "/v2/accounts/%s/cdrs?created_from=%d&created_to=%d" % (day.account_id, day.created_from, day.created_to)
    runs, digest = [], ""
    for _ in range(CSV_RUNS):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        cpu0, mine0 = sum(server.cpu_times()[:2]), time.process_time()
        began = time.perf_counter()
        conn.request("GET", path, headers={"Accept": "text/csv", "X-Auth-Token": HTTP_TOKEN})
        answer = conn.getresponse()
        if answer.status != 200:
            raise SystemExit("GET %s: %d %s" % (path, answer.status, answer.read()[:500]))
        sha, size = hashlib.sha256(), 0
        while True:
            block = answer.read(1 << 20)
            if not block:
                break
            sha.update(block)
            size += len(block)
        secs = time.perf_counter() - began
        conn.close()
        runs.append((secs, size, sum(server.cpu_times()[:2]) - cpu0, time.process_time() - mine0))
        digest = sha.hexdigest()
    return runs, digest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--accounts", type=int, default=50)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--writers", type=int, default=4,
                        help="connections loading the nodes at once (default 4)")
    parser.add_argument("--live-nodes", type=int, default=4,
                        help="nodes storing while the queries run (default 4; the collector's shape)")
    parser.add_argument("--day-rows", type=int, default=0,
                        help="legs added to the measured account's last day (a large day's CSV)")
    parser.add_argument("--csv-only", action="store_true", help="the day's CSV only (no pages, channels)")
    parser.add_argument("--http", action="store_true",
                        help="the day's CSV also through a real eslcdr collect's HTTP route (Accept: text/csv)")
    parser.add_argument("--dsn", help="an existing, empty database (e.g. a Citus coordinator's) instead of"
                        " a private PostgreSQL (pgserver)")
    parser.add_argument("--citus", action="store_true",
                        help="with --dsn: after the schema, distribute it by docs/collector.md's Citus SQL")
    parser.add_argument("--reuse", action="store_true",
                        help="with --dsn: a database this bench loaded before is measured again, not loaded"
                             " (the 10 M-row load takes ~35 min; its reads can then be re-run on newer code)")
    parser.add_argument("--live", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.live:
        store_live(args)
        return
    if args.citus and not args.dsn:
        parser.error("--citus needs --dsn (a Citus coordinator's database)")
    if args.reuse and not args.dsn:
        parser.error("--reuse needs --dsn (the database loaded before)")

    work = Path(tempfile.mkdtemp(prefix="eslcdr-bench-central-"))
    pg = None
    try:
        if args.dsn:
            dsn = args.dsn
        else:
            import pgserver

            pg = pgserver.get_server(str(work / "pg"), cleanup_mode="delete")
            with psycopg.connect(pg.get_uri(), autocommit=True) as conn:
                conn.execute("CREATE DATABASE bench")
            dsn = pg.get_uri("bench")
        writer = PgStore.connect(dsn)
        pgmigrations.migrate(writer.conn)
        if args.reuse:
            with psycopg.connect(dsn, autocommit=True) as conn:
                loaded, newest = conn.execute("SELECT count(*), extract(epoch FROM max(hangup_at))::bigint"
                                              " FROM cdrs").fetchone()
                known = conn.execute("SELECT count(*) FROM collector_nodes").fetchone()[0]
            if not loaded:
                parser.error("--reuse: the database holds no rows")
        if args.citus and not args.reuse:
            with psycopg.connect(dsn, autocommit=True) as conn:
                for statement in citus_statements():
                    conn.execute(statement)
            print("distributed on Citus: %d statements of docs/collector.md" % len(citus_statements()))
        cloner = Cloner(templates(work), args.accounts, seed=5)
        span = args.days * 86400
        if args.reuse:  # the clock of the load: its last leg hung up an hour before its "now"
            now = newest + 3600
            print("reused: %d rows already loaded, the newest hung up at %s UTC"
                  % (loaded, time.strftime("%Y-%m-%d %H:%M", time.gmtime(newest))))
        else:
            now = int(time.time())
            made, secs = load_parallel(dsn, cloner, list(range(args.nodes)), args.rows, now - span - 3600, span,
                                       args.batch_size, args.writers)
            print("loaded %d rows (%d nodes, %d accounts, %d days) through PgStore.store_batch, %d connections,"
                  " in %.0f s: %.0f rows/s (cloning included); load average %.2f"
                  % (made, args.nodes, args.accounts, args.days, args.writers, secs, made / secs,
                     os.getloadavg()[0]))
        account = cloner.accounts[3]
        if args.day_rows and not args.reuse:
            # One account's busy day: its legs on every node, as the others' are.
            busy = Cloner(cloner.docs, 1, seed=6)
            busy.accounts = [account]
            busy.seq = cloner.seq
            made, secs = load(writer, busy, list(range(args.nodes)), args.day_rows, now - 86400 + 60, 86400 - 3600,
                              args.batch_size)
            print("loaded %d more rows in the account's last day in %.0f s" % (made, secs))
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE cdrs")

        # One more node keeps storing (the last hour) while the queries run: a
        # process of its own, as the collector is.
        first_live = known if args.reuse else args.nodes  # new nodes: an earlier run's live ones have seqs
        live = subprocess.Popen([sys.executable, __file__, "--live", dsn, str(first_live), str(now),
                                 "--accounts", str(args.accounts), "--batch-size", str(args.batch_size),
                                 "--live-nodes", str(args.live_nodes)],
                                stdout=subprocess.PIPE, text=True)
        while live.stdout.readline().strip() != "ready":  # its templates made, it stores
            pass
        read = PgReadSide(dsn, 30.0, heavy_slots=2)
        high = now + GREGORIAN_OFFSET

        def query(kind: str, days: float, size: int | None) -> ListQuery:
            return ListQuery(kind=kind, account_id=account, owner_id=None, created_from=high - int(days * 86400),
                             created_to=high, ascending=False, page_size=size, cursor=None, filters=(), utc_offset=0)

        for kind, label in () if args.csv_only else ((KIND_CDRS, "CDR"), (KIND_INTERACTIONS, "interaction")):
            q = query(kind, args.days, 50)
            timed(lambda: read.list_page(q), 5)
            t = timed(lambda: read.list_page(q), args.requests)
            print("%s first page (%d days, 50 rows), %d requests: p50 %.1f ms  p99 %.1f ms  max %.1f ms%s"
                  % (label, args.days, len(t), percentile(t, 50), percentile(t, 99), max(t),
                     " (the last one: statement timeout)" if max(t) == float("inf") else ""))
            with psycopg.connect(dsn, autocommit=True) as conn:  # its plan: an index read in order, no sort
                plan = [row[0] for row in conn.execute("EXPLAIN (ANALYZE) " + list_sql(q)[0], list_sql(q)[1])]
            print("  EXPLAIN ANALYZE: execution %s, %s" % (
                plan[-1].split(": ")[-1], "sorts" if any("Sort  (" in line for line in plan) else "no sort"))
        # The account's last day before the live nodes' hour: each export holds the same rows.
        day = replace(query(KIND_CDRS, 1, None), created_from=high - 3600 - 86400, created_to=high - 3600)
        csv_runs, in_process = csv_in_process(read, day)
        rows, secs, size, _ = min(csv_runs, key=lambda r: r[1])
        cpu = min(r[3] for r in csv_runs)
        print("an account's day as CSV: %d rows, %.1f MB in %.2f s = %.0f rows/s (best of %d; all: %s);"
              " this process's CPU %.1f us a row (least); load average %.2f"
              % (rows, size / 1e6, secs, rows / secs, CSV_RUNS, " ".join("%.0f" % (r[0] / r[1]) for r in csv_runs),
                 cpu / max(rows, 1) * 1e6, os.getloadavg()[0]))
        if args.http:
            collector, port = start_collector(work, dsn)
            try:
                http_runs, over_http = csv_over_http(port, psutil.Process(collector.pid), day)
            finally:
                collector.send_signal(signal.SIGTERM)
                collector.wait(60)
            secs = min(r[0] for r in http_runs)
            print("  the same day through eslcdr collect's HTTP route (Accept: text/csv, http.client): %.1f MB in"
                  " %.2f s = %.0f rows/s (best of %d; all: %s); the collector's CPU %.1f us a row, the client's"
                  " %.1f (least); body %s the in-process CSV's; load average %.2f"
                  % (http_runs[0][1] / 1e6, secs, rows / secs, CSV_RUNS,
                     " ".join("%.0f" % (rows / r[0]) for r in http_runs),
                     min(r[2] for r in http_runs) / max(rows, 1) * 1e6,
                     min(r[3] for r in http_runs) / max(rows, 1) * 1e6,
                     "==" if over_http == in_process else "!= (sha256 %s, in-process %s; rows stored meanwhile?)"
                     % (over_http[:12], in_process[:12]), os.getloadavg()[0]))
        if not args.csv_only:  # the account's KPIs, 30 days hourly (roll-ups; bench/central_stats.py: node beside)
            kpis = StatsQuery(account, None, high - args.days * 86400 + 1, high, 3600, ())
            timed(lambda: dumps(read.stats(kpis)), 3)
            t = timed(lambda: dumps(read.stats(kpis)), min(args.requests, 100))
            print("stats (%d days hourly, %d legs), %d requests: p50 %.1f ms  p99 %.1f ms  max %.1f ms"
                  % (args.days, read.stats(kpis)["totals"]["legs"], len(t), percentile(t, 50), percentile(t, 99),
                     max(t)))
        if not args.csv_only:
            channels = subprocess.run([sys.executable, str(ROOT / "bench" / "fleet_channels.py"), "--nodes", "20",
                                       "--down", "1", "--requests", str(min(args.requests, 200))],
                                      capture_output=True, text=True, timeout=600)
            print(channels.stdout.strip() or channels.stderr[-2000:])
        live.send_signal(signal.SIGUSR1)
        print(live.stdout.read().strip(), "  load average %.2f" % os.getloadavg()[0])
        live.wait(600)
        read.close()
        writer.close()
    finally:
        if pg is not None:
            pg.cleanup()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
