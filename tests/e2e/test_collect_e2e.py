"""The collector end to end: real media servers (``eslcdr run`` on the
stand-in ``eslcdr fakefs``, generated calls), a real ``eslcdr collect``
process, a real PostgreSQL server (pgserver), and faults in between."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gevent
import gevent.server
import gevent.socket
import psycopg
import pytest

from eslcdr.store import db as store
from eslcdr.collector import pgmigrations, pgschema
from eslcdr.store.schema import COLUMN_NAMES, JSON_COLUMNS

from tests.harness import ROOT, DaemonProcess, db_rows, read_log_events, write_config
from tests.e2e.test_hostile_e2e import closed_by_server

WAIT = 60.0
TOKEN = "collector-secret-token"
UTC = dt.timezone.utc
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check, timeout: float = WAIT, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for %s" % what)
        gevent.sleep(0.1)


class FakeFS:
    """``eslcdr fakefs`` as a subprocess: generated calls."""

    def __init__(self, log_path: Path, calls: int, seed: int, hostname: str, cps: float = 0) -> None:
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "eslcdr", "fakefs", "--port", "0", "--calls", str(calls), "--seed", str(seed),
             "--hostname", hostname, "--cps", str(cps), "--hold", "--exit-when-done"],
            stdout=subprocess.PIPE, stderr=self._log, env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        line = self.proc.stdout.readline().decode()
        assert "stand-in on" in line, line
        self.port = int(line.split("stand-in on ", 1)[1].split()[0].rsplit(":", 1)[1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc.stdout.close()
        self._log.close()


class MediaServer:
    """A stand-in and the ``eslcdr run`` daemon reading it, API on a fixed port."""

    def __init__(self, root: Path, name: str, calls: int, seed: int, cps: float = 0) -> None:
        self.root = root / name
        self.root.mkdir(exist_ok=True)
        self.name = name
        (self.root / "tokens").write_text("%s *\n" % TOKEN)
        self.api_port = free_port()
        self.fakefs = FakeFS(self.root / "fakefs.log", calls, seed, "%s.example.com" % name, cps)
        self.daemon: DaemonProcess | None = None
        self.start()

    @property
    def db(self) -> Path:
        return self.root / "cdrs.db"

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self.api_port

    def start(self) -> None:
        ini = write_config(self.root, self.fakefs.port, extra="")
        text = ini.read_text().replace("listen = 127.0.0.1:0", "listen = 127.0.0.1:%d" % self.api_port)
        ini.write_text(text.replace("node_name = fs-test", "node_name = %s" % self.name))
        self.daemon = DaemonProcess(ini, self.root / "daemon.log")
        self.daemon.api_port()

    def stop(self) -> None:
        if self.daemon is not None:
            assert self.daemon.stop() == 0
            self.daemon = None

    def close(self) -> None:
        self.stop()
        self.fakefs.stop()

    def rows(self) -> list[dict]:
        return db_rows(self.db)

    def settled_rows(self, calls_at_least: int = 1) -> list[dict]:
        """The node's rows once its stand-in has delivered every call (it
        exits then; --hold pauses it while the daemon is away) and no new row
        arrived for a second.  Quiet alone is not enough: real-time calls can
        leave a second without a hangup while some are still up."""
        previous = -1
        rows = []
        deadline = time.monotonic() + WAIT
        while self.fakefs.proc.poll() is None and time.monotonic() < deadline:
            gevent.sleep(0.2)
        while time.monotonic() < deadline:
            rows = self.rows()
            if len(rows) == previous and len(rows) >= calls_at_least:
                return rows
            previous = len(rows)
            gevent.sleep(1.0)
        raise AssertionError("node %s never settled" % self.name)


class CollectorProcess:
    def __init__(self, root: Path, dsn: str, nodes: dict, extra: str = "", env: dict | None = None) -> None:
        self.env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
        self.ini = root / "collector.ini"
        self.ini.write_text(
            "[collector]\ndsn = %s\nlisten = 127.0.0.1:0\npoll_interval = 0.1\nbatch_size = 10\n"
            "timeout = 2\nretry_max_delay = 0.5\n%s\n[log]\nlevel = debug\nformat = json\n" % (dsn, extra)
            + "".join("[node:%s]\nurl = %s\ntoken = %s\n" % ((name,) + (node if isinstance(node, tuple) else (node, TOKEN)))
                      for name, node in nodes.items())
        )
        self.log_path = root / "collector.log"
        self.start()

    def start(self) -> None:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "eslcdr", "collect", "-c", str(self.ini)],
            stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
        )

    def events(self) -> list[dict]:
        return read_log_events(self.log_path)

    def events_named(self, name: str) -> list[dict]:
        return [e for e in self.events() if e.get("event") == name]

    def port(self) -> int:
        started = wait_for(lambda: self.events_named("collect_started") or self.proc.poll() is not None,
                           what="collector start")
        assert self.proc.poll() is None, self.log_path.read_text()[-3000:]
        return int(started[-1]["listen"].rsplit(":", 1)[1])

    def stop(self, sig=signal.SIGTERM) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        deadline = time.monotonic() + WAIT
        while self.proc.poll() is None and time.monotonic() < deadline:
            gevent.sleep(0.05)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
            self._log.close()
            return None
        self._log.close()
        return self.proc.returncode


def pg_rows(dsn: str, sql: str = "SELECT * FROM cdrs", args=()) -> list[dict]:
    with psycopg.connect(dsn, row_factory=psycopg.rows.dict_row) as conn:
        try:
            return conn.execute(sql, args).fetchall()
        except psycopg.errors.UndefinedTable:
            return []


def wait_collected(dsn: str, nodes: list[MediaServer], timeout: float = WAIT) -> list[dict]:
    """PostgreSQL's rows once it holds every call_id of every node, each in
    the node's version (same seq)."""
    def complete():
        want = {(n.name, r["call_id"], r["seq"]) for n in nodes for r in n.rows()}
        got = pg_rows(dsn)
        have = {(r["source"], r["call_id"], r["seq"]) for r in got}
        return got if want and want <= have else None

    return wait_for(complete, timeout, "PostgreSQL to hold every node's rows")


def us_time(value):
    return None if value is None else EPOCH + dt.timedelta(microseconds=value)


def assert_same_row(sqlite_row: dict, pg_row: dict) -> None:
    for name in COLUMN_NAMES:
        want, got = sqlite_row[name], pg_row[name]
        if name in JSON_COLUMNS:
            want = None if want is None else json.loads(want)
        elif name == "fax_success":
            want = None if want is None else bool(want)
        elif name == "account_id" and want is None:
            want = pgschema.NO_ACCOUNT  # a key column: never NULL centrally (docs/collector.md)
        assert got == want, (name, sqlite_row["call_id"], want, got)
    assert pg_row["hangup_at"] == us_time(sqlite_row["hangup_us"])
    assert pg_row["created_at"] == us_time(sqlite_row["created_us"])
    assert pg_row["answered_at"] == (us_time(sqlite_row["answered_us"]) if sqlite_row["answered_us"] else None)


def assert_exactly_once(dsn: str, nodes: list[MediaServer]) -> list[dict]:
    got = pg_rows(dsn)
    by_call = {}
    for row in got:
        assert row["call_id"] not in by_call, "call %s stored twice" % row["call_id"]
        by_call[row["call_id"]] = row
    expected = {r["call_id"]: (n, r) for n in nodes for r in n.rows()}
    assert set(by_call) == set(expected)
    for call_id, (node, row) in expected.items():
        assert by_call[call_id]["source"] == node.name
        assert_same_row(row, by_call[call_id])
    return got


@pytest.fixture
def media(tmp_path):
    servers: list[MediaServer] = []

    def make(name: str, calls: int = 30, seed: int = 1, cps: float = 0) -> MediaServer:
        server = MediaServer(tmp_path, name, calls, seed, cps)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


@pytest.fixture
def collector(tmp_path, pg_dsn):
    started: list[CollectorProcess] = []

    def make(nodes: dict, extra: str = "", env: dict | None = None) -> CollectorProcess:
        process = CollectorProcess(tmp_path, pg_dsn, nodes, extra, env)
        started.append(process)
        return process

    yield make
    for process in started:
        if process.proc.poll() is None:
            process.stop()


def node_state(dsn: str, node: str) -> dict:
    return pg_rows(dsn, "SELECT * FROM collector_nodes WHERE node = %s", (node,))[0]


# ------------------------------------------------------------------ tests


def test_two_media_servers_one_postgresql_every_column(media, collector, pg_dsn):
    first, second = media("fs-a", seed=1), media("fs-b", seed=2)
    rows_a, rows_b = first.settled_rows(30), second.settled_rows(30)
    notify_dir = tempfile.mkdtemp(prefix="sd-")
    notify = gevent.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(os.path.join(notify_dir, "notify"))
    notify.settimeout(WAIT)
    process = collector({"fs-a": first.url, "fs-b": second.url},
                        env={"NOTIFY_SOCKET": os.path.join(notify_dir, "notify")})
    process.port()
    assert notify.recv(4096).decode().startswith("READY=1\nSTATUS=2 nodes")
    wait_collected(pg_dsn, [first, second])
    got = assert_exactly_once(pg_dsn, [first, second])
    assert len(got) == len(rows_a) + len(rows_b)
    for node, rows in ((first, rows_a), (second, rows_b)):
        state = node_state(pg_dsn, node.name)
        assert state["after"] == max(r["seq"] for r in rows)
        assert state["rows"] == len(rows)  # each row committed once
        assert state["db_id"] and state["last_error"] is None
    assert pg_rows(pg_dsn, "SELECT * FROM collector_rejects") == []
    # The pulls acknowledged what PostgreSQL holds: the nodes' retention
    # keeps nothing back any more, and would keep anything above it.
    key = hashlib.sha256(TOKEN.encode()).hexdigest()
    for node, rows in ((first, rows_a), (second, rows_b)):
        wait_for(lambda: db_rows(node.db, "SELECT token_sha256, acked_seq FROM collector_acks")
                 == [{"token_sha256": key, "acked_seq": max(r["seq"] for r in rows)}], what="the final ack")
    assert process.stop() == 0
    messages = []
    notify.settimeout(5)
    while not any(m.startswith("STOPPING=1") for m in messages):
        messages.append(notify.recv(4096).decode())
    notify.close()


class FaultProxy:
    """A TCP proxy in front of a node's API that cuts or stalls responses.

    ``cut_after``: the first ``cuts`` connections are closed after that many
    response bytes (mid-line).  ``stall``: responses are held that long
    before a byte is forwarded.
    """

    def __init__(self, target_port: int, cut_after: int | None = None, cuts: int = 0, stall: float = 0) -> None:
        self.target_port = target_port
        self.cut_after = cut_after
        self.cuts_left = cuts
        self.stall = stall
        self.connections = 0
        self.server = gevent.server.StreamServer(("127.0.0.1", 0), self._handle)
        self.server.start()

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self.server.server_port

    def _handle(self, client, _address) -> None:
        self.connections += 1
        limit = None
        if self.cut_after is not None and self.cuts_left > 0:
            self.cuts_left -= 1
            limit = self.cut_after
        upstream = gevent.socket.create_connection(("127.0.0.1", self.target_port))
        pump = gevent.spawn(self._pump, client, upstream)
        try:
            if self.stall:
                gevent.sleep(self.stall)
            sent = 0
            while True:
                data = upstream.recv(65536)
                if not data:
                    break
                if limit is not None and sent + len(data) >= limit:
                    client.sendall(data[: limit - sent])
                    break
                client.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            pump.kill()
            upstream.close()
            client.close()

    @staticmethod
    def _pump(client, upstream) -> None:
        try:
            while True:
                data = client.recv(65536)
                if not data:
                    break
                upstream.sendall(data)
        except OSError:
            pass

    def stop(self) -> None:
        self.server.stop(timeout=1)


def http_get(port: int, path: str) -> tuple[int, bytes]:
    sock = gevent.socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path.encode())
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@contextlib.contextmanager
def a_batch_held_in_its_transaction(node, rows, collector, pg_dsn):
    """The collector pulling ``node`` as fs-a with one batch in the middle held
    inside its transaction: an uncommitted cdr_keys row for one of its calls
    makes its INSERT INTO cdr_keys wait (after the batch's COPY), while the
    batches before it commit.  Yields (the collector, the blocking
    connection: roll it back to release the batch, the held call_id)."""
    with psycopg.connect(pg_dsn) as conn:
        pgmigrations.migrate(conn)
    middle = rows[len(rows) // 2]["call_id"]
    with psycopg.connect(pg_dsn) as blocker:
        blocker.execute("INSERT INTO cdr_keys (call_id, account_id, hangup_at, source) VALUES (%s, '', now(), 'blocker')",
                        (middle,))
        process = collector({"fs-a": node.url})
        process.port()
        wait_for(lambda: pg_rows(
            pg_dsn, "SELECT pid FROM pg_stat_activity WHERE application_name = 'eslcdr-collect'"
            " AND wait_event_type = 'Lock'"), what="a batch waiting inside its transaction")
        yield process, blocker, middle


def test_collector_killed_mid_batch_stores_each_row_once(media, collector, pg_dsn):
    node = media("fs-a", calls=40, seed=3)
    rows = node.settled_rows(40)
    with a_batch_held_in_its_transaction(node, rows, collector, pg_dsn) as (process, blocker, _):
        stored_before = len(pg_rows(pg_dsn))
        assert 0 < stored_before < len(rows)
        process.stop(signal.SIGKILL)
        blocker.rollback()
    assert len(pg_rows(pg_dsn)) == stored_before
    assert node_state(pg_dsn, "fs-a")["rows"] == stored_before
    process.start()
    wait_collected(pg_dsn, [node])
    assert_exactly_once(pg_dsn, [node])
    state = node_state(pg_dsn, "fs-a")
    assert state["rows"] == len(rows)  # no batch was committed twice
    assert state["after"] == max(r["seq"] for r in rows)
    assert process.stop() == 0


def test_node_stopped_restarted_replaced_and_rewritten(media, collector, pg_dsn):
    node = media("fs-a", calls=40, seed=4, cps=10)
    other = media("fs-b", calls=20, seed=5)
    process = collector({"fs-a": node.url, "fs-b": other.url})
    port = process.port()
    wait_for(lambda: len(pg_rows(pg_dsn, "SELECT 1 FROM cdrs WHERE source = 'fs-a'")) >= 10, what="fs-a rows")

    # 1. the node goes away for a while, then comes back with more calls
    node.stop()
    wait_for(lambda: [e for e in process.events_named("collect_pull_failed") if e["node"] == "fs-a"],
             what="the collector to notice fs-a is down")
    status, body = http_get(port, "/health")
    health = json.loads(body)
    assert status == 503 and health["nodes"]["fs-a"]["state"] == "error"
    assert health["nodes"]["fs-a"]["last_error"] and health["nodes"]["fs-b"]["state"] != "error"
    before = len(node.rows())
    node.start()
    # The real-time stream would run for two minutes: end it once the
    # restarted daemon has written more, so the node's rows stop changing.
    wait_for(lambda: len(node.rows()) >= before + 5, what="fs-a rows after its restart")
    node.fakefs.stop()
    rows_a = node.settled_rows(before + 5)
    wait_collected(pg_dsn, [node, other])
    assert_exactly_once(pg_dsn, [node, other])
    assert node_state(pg_dsn, "fs-a")["rows"] == len(rows_a)

    # 2. a row rewritten on the node after it was pulled: its new version wins
    target = rows_a[0]["call_id"]
    conn = store.connect_writer(node.db)
    conn.execute("BEGIN IMMEDIATE")
    assert store.rewrite_rows(conn, "call_id = ?", [target], {"interaction_id": "merged-by-test"}) == 1
    conn.execute("COMMIT")
    conn.close()
    wait_for(lambda: pg_rows(pg_dsn, "SELECT 1 FROM cdrs WHERE call_id = %s AND interaction_id = 'merged-by-test'",
                             (target,)), what="the rewritten row")
    assert_exactly_once(pg_dsn, [node, other])

    # 3. the node's database replaced by a new file: pulled again from seq 0
    old_db_id = node_state(pg_dsn, "fs-a")["db_id"]
    node.stop()
    old_calls = {r["call_id"] for r in node.rows()}
    for suffix in ("", "-wal", "-shm"):
        path = Path(str(node.db) + suffix)
        if path.exists():
            path.rename(str(path) + ".old")
    node.fakefs.stop()
    node.fakefs = FakeFS(node.root / "fakefs2.log", 15, 6, "fs-a.example.com")
    node.start()
    new_rows = node.settled_rows(15)
    wait_collected(pg_dsn, [node, other])
    changed = process.events_named("collect_node_database_changed")
    assert [(e["node"], e["old_db_id"]) for e in changed] == [("fs-a", old_db_id)]
    state = node_state(pg_dsn, "fs-a")
    assert state["db_id"] != old_db_id and state["restarts"] == 1 and state["after"] == max(r["seq"] for r in new_rows)
    got = pg_rows(pg_dsn, "SELECT call_id FROM cdrs WHERE source = 'fs-a'")
    ids = [r["call_id"] for r in got]
    assert len(ids) == len(set(ids)) and set(ids) == old_calls | {r["call_id"] for r in new_rows}
    for row in new_rows:
        assert_same_row(row, pg_rows(pg_dsn, "SELECT * FROM cdrs WHERE call_id = %s", (row["call_id"],))[0])
    assert process.stop() == 0


def test_connection_cut_mid_stream_loses_and_repeats_nothing(media, collector, pg_dsn):
    node = media("fs-a", calls=30, seed=7)
    rows = node.settled_rows(30)
    proxy = FaultProxy(node.api_port, cut_after=5000, cuts=3)
    try:
        process = collector({"fs-a": proxy.url})
        process.port()
        wait_collected(pg_dsn, [node])
        assert_exactly_once(pg_dsn, [node])
        assert node_state(pg_dsn, "fs-a")["rows"] == len(rows)
        failures = [e for e in process.events_named("collect_pull_failed") if e["node"] == "fs-a"]
        assert len(failures) >= 3 and proxy.connections >= 4
        assert process.stop() == 0
    finally:
        proxy.stop()


def test_a_stalling_node_does_not_delay_the_other(media, collector, pg_dsn):
    fast, slow = media("fs-a", calls=30, seed=8), media("fs-b", calls=10, seed=9)
    fast.settled_rows(30)
    slow.settled_rows(10)
    proxy = FaultProxy(slow.api_port, stall=3600)
    # fs-bad: the right node, a wrong token (through a plain proxy: two sections
    # naming one url are refused at start)
    plain = FaultProxy(fast.api_port)
    try:
        process = collector({"fs-a": fast.url, "fs-b": proxy.url, "fs-bad": (plain.url, "not-the-token")})
        port = process.port()
        wait_collected(pg_dsn, [fast])
        assert pg_rows(pg_dsn, "SELECT 1 FROM cdrs WHERE source <> 'fs-a'") == []
        wait_for(lambda: [e for e in process.events_named("collect_pull_failed") if e["node"] == "fs-b"],
                 what="fs-b's timeout")
        status, body = http_get(port, "/health")
        health = json.loads(body)
        assert status == 503 and health["status"] == "degraded"
        assert health["nodes"]["fs-a"]["state"] == "caught_up" and health["nodes"]["fs-a"]["lag_rows"] == 0
        assert "timed out" in health["nodes"]["fs-b"]["last_error"]
        assert health["nodes"]["fs-bad"]["last_error"].startswith(
            "FeedError: HTTP 401 from the feed: invalid_credentials: invalid credentials (the node does not know")
        assert "not-the-token" not in process.log_path.read_text()
        status, body = http_get(port, "/metrics")
        text = body.decode()
        assert status == 200
        assert 'eslcdr_collect_rows_stored_total{node="fs-a"} %d.0' % len(fast.rows()) in text
        assert 'eslcdr_collect_up{node="fs-b"} 0.0' in text and 'eslcdr_collect_up{node="fs-a"} 1.0' in text
        assert 'eslcdr_collect_lag_rows{node="fs-a"} 0.0' in text
        # The error label is the failure's kind, never its text (a bounded set of series).
        assert re.search(r'eslcdr_collect_last_error_timestamp_seconds\{error="node:FeedError",node="fs-bad"\} 1\.\d+e\+09', text)
        assert 'last_error_timestamp_seconds{error="",node="fs-a"} 0.0' in text
        assert process.stop() == 0
    finally:
        proxy.stop()
        plain.stop()


def test_sigterm_finishes_the_batch_being_committed(media, collector, pg_dsn):
    node = media("fs-a", calls=30, seed=10)
    rows = node.settled_rows(30)
    with a_batch_held_in_its_transaction(node, rows, collector, pg_dsn) as (process, blocker, middle):
        before = node_state(pg_dsn, "fs-a")
        process.proc.send_signal(signal.SIGTERM)
        gevent.sleep(1.0)
        assert process.proc.poll() is None  # still finishing its transaction
        blocker.rollback()
    assert process.stop() == 0
    after = node_state(pg_dsn, "fs-a")
    assert after["rows"] == before["rows"] + 10  # the held batch (batch_size 10) was committed
    assert len(pg_rows(pg_dsn)) == after["rows"]
    stored = pg_rows(pg_dsn, "SELECT max(seq) AS seq FROM cdrs")[0]["seq"]
    assert after["after"] == stored and middle in {r["call_id"] for r in pg_rows(pg_dsn)}


def test_lost_postgresql_connections_are_reopened_and_nothing_repeats(media, collector, pg_dsn):
    node = media("fs-a", calls=40, seed=11, cps=10)
    process = collector({"fs-a": node.url})
    process.port()
    terminated = 0
    for _ in range(2):
        wait_for(lambda: len(pg_rows(pg_dsn)) > terminated * 20, what="rows before cutting PostgreSQL")
        killed = pg_rows(pg_dsn, "SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity"
                                 " WHERE application_name = 'eslcdr-collect'")
        assert killed and all(r["ok"] for r in killed)
        terminated += 1
        gevent.sleep(0.5)
    node.fakefs.stop()  # end the real-time stream: the node's rows settle
    rows = node.settled_rows(1)
    wait_collected(pg_dsn, [node])
    assert_exactly_once(pg_dsn, [node])
    assert node_state(pg_dsn, "fs-a")["rows"] == len(rows)
    failures = [e for e in process.events_named("collect_pull_failed") if e["node"] == "fs-a"]
    assert failures and all("OperationalError" in e["error"] or "AdminShutdown" in e["error"] for e in failures)
    assert process.stop() == 0


def test_the_collectors_health_server_holds_clients_to_the_limits(collector, pg_dsn):
    """Issue 15.12: /health and /metrics are served by the daemon's hardened
    server with [collector]'s limits: a slow head is answered 408, a huge one 431,
    a silent connection is closed, and /health keeps answering meanwhile."""
    process = collector({"fs-gone": "http://127.0.0.1:%d" % free_port()},
                        extra="header_timeout = 1\nidle_timeout = 2\nmax_head_bytes = 16384\n")
    port = process.port()
    silent = gevent.socket.create_connection(("127.0.0.1", port), timeout=10)
    slow = gevent.socket.create_connection(("127.0.0.1", port), timeout=10)
    slow.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    slow_answer = None
    for i in range(20):  # a header line every 0.25 s, never the end of the head
        try:
            slow.sendall(b"X-Slow-%d: 1\r\n" % i)
        except OSError:
            pass
        status, body = http_get(port, "/health")  # others are served meanwhile
        assert status in (200, 503) and "nodes" in json.loads(body)
        slow_answer = closed_by_server(slow, 0.25)
        if slow_answer is not None:
            break
    assert slow_answer is not None and slow_answer.startswith(b"HTTP/1.1 408 "), slow_answer
    assert time.monotonic() - started < 4
    big = gevent.socket.create_connection(("127.0.0.1", port), timeout=10)
    big.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-Big-%d: %s\r\n" % (i, b"b" * 1000)
                                                                for i in range(20)))
    big_answer = closed_by_server(big, 5)
    assert big_answer is not None and big_answer.startswith(b"HTTP/1.1 431 "), big_answer
    assert closed_by_server(silent, 5) == b""  # closed after idle_timeout, without a word
    for sock in (silent, slow, big):
        sock.close()
    assert process.stop() == 0
    events = process.events()
    assert {e.get("reason") for e in events if e["event"] in ("http_request_timeout", "http_bad_request")} \
        == {"header_timeout", "head_too_large"}
