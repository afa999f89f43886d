"""The collector end to end: real media servers (``eslcdr run`` on the
stand-in ``eslcdr fakefs``, generated calls), a real ``eslcdr collect``
process, a real PostgreSQL server (pgserver), and faults in between."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import gevent
import gevent.server
import gevent.socket
import psycopg
import pytest

from eslcdr import store
from eslcdr.schema import COLUMN_NAMES, JSON_COLUMNS

from .e2e import ROOT, DaemonProcess, db_rows, write_config

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
             "--hostname", hostname, "--cps", str(cps), "--hold"],
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
        """The node's rows once no new row arrived for a second."""
        previous = -1
        rows = []
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            rows = self.rows()
            if len(rows) == previous and len(rows) >= calls_at_least:
                return rows
            previous = len(rows)
            gevent.sleep(1.0)
        raise AssertionError("node %s never settled" % self.name)


class CollectorProcess:
    def __init__(self, root: Path, dsn: str, nodes: dict[str, str], extra: str = "") -> None:
        self.ini = root / "collector.ini"
        self.ini.write_text(
            "[collector]\ndsn = %s\nlisten = 127.0.0.1:0\npoll_interval = 0.1\nbatch_size = 10\n"
            "timeout = 2\nretry_max_delay = 0.5\n%s\n[log]\nlevel = debug\nformat = json\n" % (dsn, extra)
            + "".join("[node:%s]\nurl = %s\ntoken = %s\n" % (name, url, TOKEN) for name, url in nodes.items())
        )
        self.log_path = root / "collector.log"
        self.start()

    def start(self) -> None:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "eslcdr", "collect", "-c", str(self.ini)],
            stdout=self._log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )

    def events(self) -> list[dict]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
        return out

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

    def make(nodes: dict[str, str], extra: str = "") -> CollectorProcess:
        process = CollectorProcess(tmp_path, pg_dsn, nodes, extra)
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
    process = collector({"fs-a": first.url, "fs-b": second.url})
    process.port()
    wait_collected(pg_dsn, [first, second])
    got = assert_exactly_once(pg_dsn, [first, second])
    assert len(got) == len(rows_a) + len(rows_b)
    for node, rows in ((first, rows_a), (second, rows_b)):
        state = node_state(pg_dsn, node.name)
        assert state["after"] == max(r["seq"] for r in rows)
        assert state["rows"] == len(rows)  # each row committed once
        assert state["db_id"] and state["last_error"] is None
    assert pg_rows(pg_dsn, "SELECT * FROM collector_rejects") == []
    assert process.stop() == 0
