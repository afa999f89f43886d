"""Collector benchmark: rows/s from two media servers into PostgreSQL.

Builds (once, reused afterwards) two node databases of N rows each with
bench/api.py's generator (different seeds: different calls), serves each
with a real ``eslcdr run`` (its Event Socket points at a closed port: only
the API matters here), starts a private PostgreSQL (pgserver) and a real
``eslcdr collect`` pulling both, and measures how long PostgreSQL takes to
hold every row (collector_nodes cursors at the nodes' last seq).

``--compare`` also measures the choices made in the collector, on the
same records:
- feed format: NDJSON stream vs JSON pages of 10,000 (fetch + parse only);
- write path: a typed COPY with the values taken from the parsed records
  (what the collector does), a COPY of the raw lines turned into rows by
  json_populate_record in SQL, per-row INSERT ... ON CONFLICT with
  executemany in pipeline mode.

Prints figures; not a pass/fail test.  Target (issue 8): >= 20,000 rows/s
from two nodes.  Wall-clock figures swing with whatever else runs on the
machine, so it also counts the CPU seconds of every process involved
(collector, nodes, PostgreSQL) and derives the rate two idle cores give.

Measured 2026-11-30, 2 x 100,000 rows, on the 2-core machine shared with
other jobs (load average 6.8): 79 us CPU per row in total (collector 28,
nodes 17, PostgreSQL 35) = about 25,300 rows/s on 2 idle cores; wall
7,631 rows/s under that load.  Feed: NDJSON 27 us CPU per row (node +
client) vs JSON pages 35 us.  Writes (collector + PostgreSQL CPU per row):
typed COPY 10 + 25 us, raw lines + json_populate_record 5 + 52 us,
executemany pipeline 48 + 48 us.

Schema 4 (Citus-ready keys, KPI roll-ups counted in the batch's transaction;
a replaced row deleted and inserted again), 2026-12-06, 2 x 30,000 rows,
three runs alternating with schema 3 on the same machine (load 7-15),
medians: the collector end to end 117.2 us CPU per row in total (schema 3:
117.7), 7,222 rows/s wall from the first batch (6,136); PgStore's typed COPY
14.6 + 41 = 55.0 us (14.4 + 35 = 49.3), a re-pull where every row is a
replacement 15.4 + 56 = 71.4 us (14.5 + 46 = 60.5).  These records put
nearly every leg in a roll-up cell of its own (4 accounts over 30 days), the
roll-ups' worst case.

    python bench/collect.py [--rows 100000] [--batch-size 5000] [--compare]
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import orjson  # noqa: E402
import psycopg  # noqa: E402
import psycopg.sql  # noqa: E402

from api import generate, row_count  # noqa: E402
from eslcdr.collector import pgmigrations, pgschema  # noqa: E402
from eslcdr.collector.feed import parse_record  # noqa: E402
from eslcdr.collector.pgstore import PgStore  # noqa: E402

TOKEN = "bench-collector-token"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_node(work: Path, name: str, db: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    (work / "tokens").write_text("%s *\n" % TOKEN)
    ini = work / ("%s.ini" % name)
    ini.write_text(
        "[esl]\nhost = 127.0.0.1\nport = %d\nreconnect_max_delay = 30\n[store]\npath = %s\n"
        "[api]\nlisten = 127.0.0.1:%d\ntokens_file = %s\n[cdr]\nnode_name = %s\n[log]\nlevel = warning\nformat = json\n"
        % (free_port(), db, port, work / "tokens", name)
    )
    log = open(work / ("%s.log" % name), "wb")
    proc = subprocess.Popen([sys.executable, "-m", "eslcdr", "run", "-c", str(ini)], stdout=log, stderr=log,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    raise SystemExit("node %s did not start: %s" % (name, (work / ("%s.log" % name)).read_text()[-2000:]))


def fetch(port: int, path: str, accept: str) -> tuple[bytes, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", path, headers={"X-Auth-Token": TOKEN, "Accept": accept})
    resp = conn.getresponse()
    body = resp.read()
    headers = dict(resp.getheaders())
    conn.close()
    return body, headers


def compare_feed(port: int, node_pid: int, rows: int) -> None:
    """NDJSON vs JSON pages of 10,000: wall, and CPU of the node + this client."""
    import psutil

    node = psutil.Process(node_pid)
    for label, accept in (("ndjson", "application/x-ndjson"), ("json pages", "application/json")):
        after, got, peak = 0, 0, 0
        node0, cpu0, started = sum(node.cpu_times()[:2]), time.process_time(), time.perf_counter()
        while got < rows:
            body, _ = fetch(port, "/v2/feed/cdrs?after=%d&limit=10000" % after, accept)
            peak = max(peak, len(body))
            if accept == "application/x-ndjson":
                records = [orjson.loads(line) for line in body.split(b"\n") if line]
            else:
                records = orjson.loads(body)["data"]
            if not records:
                break
            got += len(records)
            after = records[-1]["seq"]
        elapsed = time.perf_counter() - started
        cpu = sum(node.cpu_times()[:2]) - node0 + time.process_time() - cpu0
        print("feed %-10s: %d rows, %.1f us CPU per row (node + client), wall %.0f rows/s;"
              " a page is %.1f MB held whole, NDJSON is parsed line by line" % (
                  label, got, cpu / got * 1e6, got / elapsed, peak / 1e6))


def compare_writes(dsn_base: str, admin_dsn: str, port: int, n: int, batch: int) -> None:
    """The three write paths on the same records; CPU of this process and of
    its PostgreSQL backend per row (robust on a shared machine), and wall."""
    import psutil

    body, headers = fetch(port, "/v2/feed/cdrs?after=0&limit=%d" % min(n, 10000), "application/x-ndjson")
    lines = [line for line in body.split(b"\n") if line]
    items, previous = [], 0
    for line in lines:
        item = parse_record(line, previous)
        previous = item.seq
        items.append(item)
    columns = [name for name, _ in pgschema.sqlite_columns()]
    names = columns + ["source", "created_at", "answered_at", "hangup_at", "collected_at"]
    # The key of the schema this eslcdr builds (version 4: account_id, call_id, hangup_at).
    key = ("account_id", "call_id", "hangup_at") if hasattr(pgschema, "NO_ACCOUNT") else ("call_id", "hangup_at")
    upsert = "ON CONFLICT (%s) DO UPDATE SET %s" % (", ".join(key), ", ".join(
        '"%s" = EXCLUDED."%s"' % (c, c) for c in names if c not in key))
    keys_insert = ("INSERT INTO cdr_keys (call_id, account_id, hangup_at, source) VALUES (%s, '', %s, 'n')"
                   " ON CONFLICT DO NOTHING") if "account_id" in key else (
        "INSERT INTO cdr_keys (call_id, hangup_at, source) VALUES (%s, %s, 'n') ON CONFLICT DO NOTHING")
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    json_columns = {"custom_channel_vars", "custom_sip_headers"}

    def values_of(item, jsonify):
        d = orjson.loads(item.line)
        values = [jsonify(d[c]) if c in json_columns and d.get(c) is not None else d.get(c) for c in columns]
        if "account_id" in key and values[columns.index("account_id")] is None:
            values[columns.index("account_id")] = ""
        values += ["n", epoch + dt.timedelta(microseconds=d["created_us"]),
                   epoch + dt.timedelta(microseconds=d["answered_us"]) if d["answered_us"] else None,
                   item.hangup_at, dt.datetime.now(dt.timezone.utc)]
        return values

    def fresh(name: str) -> psycopg.Connection:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute("DROP DATABASE IF EXISTS %s WITH (FORCE)" % name)
            admin.execute("CREATE DATABASE %s" % name)
        conn = psycopg.connect(dsn_base % name)
        pgmigrations.migrate(conn)
        PgStore(conn).ensure_months(items)
        return conn

    def measure(label, conn, write):
        backend = psutil.Process(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
        conn.commit()
        cpu0, server0, wall0 = time.process_time(), sum(backend.cpu_times()[:2]), time.perf_counter()
        for i in range(0, len(items), batch):
            write(items[i:i + batch])
        cpu, server = time.process_time() - cpu0, sum(backend.cpu_times()[:2]) - server0
        wall = time.perf_counter() - wall0
        print("%-44s: %d rows; CPU per row: collector %.1f us + PostgreSQL %.1f us = %.1f us; wall %.0f rows/s" % (
            label, len(items), cpu / len(items) * 1e6, server / len(items) * 1e6,
            (cpu + server) / len(items) * 1e6, len(items) / wall))
        conn.close()

    # 1. the collector's path (PgStore): typed COPY, values from the parsed records
    conn = fresh("cmp_typed")
    store = PgStore(conn)
    store.node_state("n", "http://x")
    state = {"after": 0}

    def typed(chunk):
        state["after"] = store.store_batch("n", "db", state["after"], chunk).after

    measure("typed COPY (the collector, PgStore)", conn, typed)
    # the same records again, every row a replacement (a node re-pulled
    # after a db_id change)
    conn = psycopg.connect(dsn_base % "cmp_typed")
    store = PgStore(conn)
    store.restart_node("n", "db", "db2")
    state["after"] = 0

    def again(chunk):
        state["after"] = store.store_batch("n", "db2", state["after"], chunk).after

    measure("typed COPY, every row replaced (re-pull)", conn, again)

    # 2. COPY of the raw lines into a json column, json_populate_record in SQL
    conn = fresh("cmp_raw")
    conn.execute("CREATE TEMP TABLE raw (call_id text, hangup_at timestamptz, doc json) ON COMMIT DELETE ROWS")
    conn.commit()
    select = ", ".join(["r.%s" % psycopg.sql.Identifier(c).as_string(conn) for c in columns])
    raw_insert = (
        "INSERT INTO cdrs (%s) SELECT %s, 'n', CASE WHEN r.created_us > 0 THEN 'epoch'::timestamptz"
        " + r.created_us * interval '1 microsecond' END, CASE WHEN r.answered_us > 0 THEN 'epoch'::timestamptz"
        " + r.answered_us * interval '1 microsecond' END, s.hangup_at, now() FROM raw AS s,"
        " json_populate_record(NULL::cdrs, s.doc) AS r ORDER BY s.call_id %s" % (
            ", ".join('"%s"' % c for c in names), select, upsert))

    def raw(chunk):
        block = b"".join(b"%s\t%s\t%s\n" % (item.call_id.encode(), item.hangup_at.isoformat().encode(),
                                            item.line.replace(b"\\", b"\\\\")) for item in chunk)
        with conn.transaction(), conn.cursor() as cur:
            with cur.copy("COPY raw (call_id, hangup_at, doc) FROM STDIN") as copy:
                copy.write(block)
            cur.execute("INSERT INTO cdr_keys (call_id, hangup_at, source%s) SELECT call_id, hangup_at, 'n'%s FROM raw"
                        " ON CONFLICT DO NOTHING" % ((", account_id", ", ''") if "account_id" in key else ("", "")))
            cur.execute(raw_insert)

    measure("raw lines COPY + json_populate_record", conn, raw)

    # 3. executemany in pipeline mode, values converted in Python
    conn = fresh("cmp_many")
    insert = "INSERT INTO cdrs (%s) VALUES (%s) %s" % (
        ", ".join('"%s"' % c for c in names), ", ".join(["%s"] * len(names)), upsert)

    def many(chunk):
        rows = [values_of(item, psycopg.types.json.Jsonb) for item in chunk]
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(keys_insert, [(item.call_id, item.hangup_at) for item in chunk])
            cur.executemany(insert, rows)

    measure("executemany (pipeline) INSERT ... ON CONFLICT", conn, many)


def report(label: str, rows: int, elapsed: float) -> None:
    print("%-45s: %d rows in %.2f s = %.0f rows/s" % (label, rows, elapsed, rows / elapsed))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows per node (default 100000)")
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "eslcdr-bench-collect"))
    parser.add_argument("--compare", action="store_true", help="also compare feed formats and write paths")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    dbs = []
    for index in (1, 2):
        db = work / ("node%d-%d.db" % (index, args.rows))
        if row_count(db) != args.rows:
            for suffix in ("", "-wal", "-shm"):
                Path(str(db) + suffix).unlink(missing_ok=True)
            generate(db, args.rows, seed=100 + index)
        dbs.append(db)

    import pgserver

    pg = pgserver.get_server(tempfile.mkdtemp(prefix="eslcdr-bench-pg-"), cleanup_mode="delete")
    nodes = []
    try:
        admin = pg.get_uri()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench")
        dsn = pg.get_uri("bench")
        for index, db in enumerate(dbs, 1):
            nodes.append(start_node(work, "node%d" % index, db))
        ini = work / "collector.ini"
        ini.write_text(
            "[collector]\ndsn = %s\nlisten = 127.0.0.1:0\npoll_interval = 0.2\nbatch_size = %d\n[log]\nlevel = warning\n"
            % (dsn, args.batch_size)
            + "".join("[node:node%d]\nurl = http://127.0.0.1:%d\ntoken = %s\n" % (i, port, TOKEN)
                      for i, (_, port) in enumerate(nodes, 1))
        )
        import psutil

        def cpu_of(pids):
            total = 0.0
            for pid in pids:
                try:
                    times = psutil.Process(pid).cpu_times()
                    total += times.user + times.system
                except psutil.NoSuchProcess:
                    pass
            return total

        def pg_pids():
            postmaster = psutil.Process(pg.get_pid())
            return [postmaster.pid] + [c.pid for c in postmaster.children(recursive=True)]

        node_pids = [proc.pid for proc, _ in nodes]
        cpu_nodes0 = cpu_of(node_pids)
        pg_cpu0 = {pid: cpu_of([pid]) for pid in pg_pids()}
        log = open(work / "collector.log", "wb")
        started = time.perf_counter()
        collector = subprocess.Popen([sys.executable, "-m", "eslcdr", "collect", "-c", str(ini)], stdout=log,
                                     stderr=log, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        want = 2 * args.rows
        first_row_at = None
        done = 0
        with psycopg.connect(dsn, autocommit=True) as conn:
            while True:
                time.sleep(0.2)
                if collector.poll() is not None:
                    raise SystemExit("collector exited: %s" % (work / "collector.log").read_text()[-2000:])
                try:
                    done = int(conn.execute("SELECT coalesce(sum(rows), 0) FROM collector_nodes").fetchone()[0])
                except psycopg.errors.UndefinedTable:
                    continue
                if done and first_row_at is None:
                    first_row_at = time.perf_counter()
                if done >= want:
                    break
            finished = time.perf_counter()
            cpu_collector = cpu_of([collector.pid])
            cpu_nodes = cpu_of(node_pids) - cpu_nodes0
            cpu_pg = sum(cpu_of([pid]) - pg_cpu0.get(pid, 0.0) for pid in pg_pids())
            stored = conn.execute("SELECT count(*) FROM cdrs").fetchone()[0]
        collector.send_signal(signal.SIGTERM)
        collector.wait(60)
        total = finished - started
        print("collected %d rows from 2 nodes (%d in cdrs) in %.2f s from process start = %.0f rows/s;"
              " %.0f rows/s from the first stored batch" % (
                  done, stored, total, done / total, done / (finished - first_row_at)))
        cpu = cpu_collector + cpu_nodes + cpu_pg
        print("CPU seconds: collector %.1f, two nodes %.1f, PostgreSQL %.1f = %.1f us per row;"
              " on 2 idle cores: about %.0f rows/s; load average now %.1f" % (
                  cpu_collector, cpu_nodes, cpu_pg, cpu / done * 1e6, 2 * done / cpu, os.getloadavg()[0]))
        if args.compare:
            compare_feed(nodes[0][1], nodes[0][0].pid, args.rows)
            compare_writes(pg.get_uri("%s"), admin, nodes[0][1], 10000, args.batch_size)
    finally:
        for proc, _ in nodes:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        pg.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
