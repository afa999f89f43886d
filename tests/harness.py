"""End-to-end harness: the stand-in in this process, ``eslcdr run`` as a
real subprocess, a real SQLite file between them.

The test process cooperates with gevent (every wait is ``gevent.sleep``), so
the in-process stand-in keeps serving while a test polls the database.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import gevent

ROOT = Path(__file__).resolve().parent.parent
WAIT = 30.0


def write_config(tmp_path: Path, esl_port: int, fmt: str = "json", password: str = "ClueCon", extra: str = "") -> Path:
    db = tmp_path / "cdrs.db"
    tokens = tmp_path / "tokens"
    if not tokens.exists():
        tokens.write_text("")
    ini = tmp_path / "eslcdr.ini"
    ini.write_text(
        "[esl]\nhost = 127.0.0.1\nport = %d\npassword = %s\nformat = %s\ncommand_timeout = 3\nreconnect_max_delay = 1\n"
        "[store]\npath = %s\nflush_interval = 0.05\n"
        "[api]\nlisten = 127.0.0.1:0\ntokens_file = %s\n"
        "[cdr]\nnode_name = fs-test\n"
        "[log]\nlevel = debug\nformat = json\n%s" % (esl_port, password, fmt, db, tokens, extra)
    )
    return ini


def read_log_events(path: Path) -> list[dict]:
    """The JSON log lines of a process (other lines, e.g. a traceback, skipped)."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


class DaemonProcess:
    def __init__(self, ini: Path, log_path: Path, env: dict[str, str] | None = None,
                 preexec_fn: Callable[[], None] | None = None):
        self.ini = ini
        self.log_path = log_path
        self._log = open(log_path, "ab")
        env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "eslcdr", "run", "-c", str(ini)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(ini.parent),
            preexec_fn=preexec_fn,
        )

    def wait_exit(self, timeout: float = WAIT) -> int | None:
        waited = 0.0
        while self.proc.poll() is None and waited < timeout:
            gevent.sleep(0.05)
            waited += 0.05
        return self.proc.poll()

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.wait_exit()
        if code is None:
            self.proc.kill()
            code = self.wait_exit(5)
        self._log.close()
        return code

    def log_events(self) -> list[dict]:
        return read_log_events(self.log_path)

    def api_port(self, timeout: float = WAIT) -> int:
        """The port the daemon's API bound (listen = 127.0.0.1:0)."""
        waited = 0.0
        while waited < timeout:
            for event in self.log_events():
                if event.get("event") == "daemon_started" and event.get("api"):
                    return int(event["api"].rsplit(":", 1)[1])
            gevent.sleep(0.05)
            waited += 0.05
        raise AssertionError("daemon did not start: %s" % self.log_path.read_text()[-2000:])


def db_rows(db: Path, sql: str = "SELECT * FROM cdrs ORDER BY seq") -> list[dict]:
    if not db.exists():
        return []
    conn = sqlite3.connect("file:%s?mode=ro" % db, uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql)]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def wait_rows(db: Path, count: int, timeout: float = WAIT) -> list[dict]:
    """Poll until the table holds ``count`` rows (or the timeout passes)."""
    waited = 0.0
    rows = db_rows(db)
    while len(rows) < count and waited < timeout:
        gevent.sleep(0.05)
        waited += 0.05
        rows = db_rows(db)
    return rows


def wait_until(predicate: Callable[[], object], timeout: float = WAIT, interval: float = 0.05):
    """Poll ``predicate`` until it returns something true or ``timeout``
    seconds passed; its last value (so ``assert wait_until(...)`` fails when
    the condition never held). A deadline, not a count of sleeps: a loaded
    machine gets the whole timeout."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()) and time.monotonic() < deadline:
        gevent.sleep(interval)
    return value


def settle(db: Path, seconds: float = 0.5) -> list[dict]:
    """Rows after nothing new arrived for a while (to catch extra rows)."""
    gevent.sleep(seconds)
    return db_rows(db)


def exchange(port: int, request: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes to a local server, read until it closes (bounded)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            data += chunk
        return data


def database_before(path: Path, migration: Callable) -> sqlite3.Connection:
    """A database file as an older eslcdr left it: every migration before
    ``migration`` applied (autocommit connection; close it before opening
    the file with store.connect_writer)."""
    from eslcdr.store import schema

    conn = sqlite3.connect(str(path), isolation_level=None)
    for version, earlier in enumerate(schema.MIGRATIONS[: schema.MIGRATIONS.index(migration)]):
        earlier(conn)
        conn.execute("PRAGMA user_version = %d" % (version + 1))
    return conn
