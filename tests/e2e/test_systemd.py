"""systemd integration: the notify protocol, the watchdog, SIGHUP reload, the unit.

The end-to-end tests run ``eslcdr run`` as a real subprocess with
``$NOTIFY_SOCKET`` pointing at a Unix datagram socket bound here, as systemd
would, and the FreeSWITCH stand-in in this process.  Intervals are checked
loosely (counts in a window, never a duration).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import gevent
import gevent.socket
import pytest

from eslcdr.fakefs import FakeFreeSWITCH, GeneratedSource
from eslcdr.service.notify import Notifier, socket_address, watchdog_interval

from tests.harness import ROOT, DaemonProcess, db_rows, settle, wait_rows

WAIT = 30.0
UNIT = ROOT / "systemd" / "eslcdr.service"


# ------------------------------------------------------------------ helpers


class NotifyListener:
    """A bound AF_UNIX datagram socket collecting (monotonic time, fields)."""

    def __init__(self, abstract: bool = False) -> None:
        self.sock = gevent.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._dir = None
        if abstract:
            name = "eslcdr-test-%d-%d" % (os.getpid(), time.monotonic_ns())
            self.sock.bind("\0" + name)
            self.env_value = "@" + name
        else:
            # AF_UNIX paths are limited to 108 bytes: a short folder in /tmp.
            self._dir = tempfile.mkdtemp(prefix="nfy")
            path = os.path.join(self._dir, "notify.sock")
            self.sock.bind(path)
            self.env_value = path
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._reader = gevent.spawn(self._read)

    def _read(self) -> None:
        while True:
            data = self.sock.recv(65536)
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def with_key(self, key: str, value: str | None = None) -> list[tuple[float, dict[str, str]]]:
        return [(t, m) for t, m in self.messages if key in m and (value is None or m[key] == value)]

    def wait_for(self, key: str, value: str | None = None, count: int = 1, timeout: float = WAIT) -> list:
        deadline = time.monotonic() + timeout
        while len(self.with_key(key, value)) < count:
            if time.monotonic() > deadline:
                raise AssertionError("no %s=%s after %.0f s; got %r" % (key, value, timeout, self.messages[-20:]))
            gevent.sleep(0.02)
        return self.with_key(key, value)

    def close(self) -> None:
        self._reader.kill()
        self.sock.close()
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_ini(tmp_path: Path, esl_port: int, level: str = "info", store: str = "", log: str = "") -> Path:
    ini = tmp_path / "eslcdr.ini"
    ini.write_text(
        "[esl]\nhost = 127.0.0.1\nport = %d\ncommand_timeout = 3\nreconnect_max_delay = 0.5\n"
        "[store]\npath = %s\nflush_interval = 0.05\n%s"
        "[api]\nlisten = 127.0.0.1:0\ntokens_file = %s\n"
        "[cdr]\nnode_name = fs-test\n"
        "[log]\nlevel = %s\nformat = json\n%s"
        % (esl_port, tmp_path / "cdrs.db", store, tmp_path / "tokens", level, log)
    )
    if not (tmp_path / "tokens").exists():
        (tmp_path / "tokens").write_text("")
    return ini


def start_daemon(tmp_path: Path, ini: Path, listener: NotifyListener, watchdog_usec: int | None = None) -> DaemonProcess:
    env = {"NOTIFY_SOCKET": listener.env_value}
    if watchdog_usec:
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    return DaemonProcess(ini, tmp_path / "daemon.log", env=env)


def events_named(daemon: DaemonProcess, name: str) -> list[dict]:
    return [e for e in daemon.log_events() if e.get("event") == name]


def wait_log(daemon: DaemonProcess, name: str, count: int = 1, timeout: float = WAIT) -> list[dict]:
    deadline = time.monotonic() + timeout
    while len(events_named(daemon, name)) < count:
        if time.monotonic() > deadline or daemon.proc.poll() is not None:
            raise AssertionError("no %r in the log: %s" % (name, daemon.log_path.read_text()[-3000:]))
        gevent.sleep(0.05)
    return events_named(daemon, name)


def http_status(port: int, token: str) -> int:
    request = urllib.request.Request("http://127.0.0.1:%d/v2/feed/cdrs?after=0&limit=1" % port)
    request.add_header("X-Auth-Token", token)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def burst(port: int, calls: int, seed: int) -> FakeFreeSWITCH:
    """The stand-in on ``port`` sending ``calls`` finished calls at once."""
    return FakeFreeSWITCH(host="127.0.0.1", port=port, events=GeneratedSource(calls=calls, cps=0, seed=seed)).start()


# ------------------------------------------------------------ notify module


def test_socket_address_forms():
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@abstract/name") == "\0abstract/name"
    assert socket_address("") is None
    assert socket_address("vsock:2:1234") is None


def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process_only():
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval({}) is None


def test_notifier_is_a_no_op_outside_systemd():
    notifier = Notifier.from_environ({"WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert notifier.ready("x") is False and notifier.watchdog() is False


@pytest.mark.parametrize("abstract", [False, True])
def test_notifier_sends_datagrams(abstract):
    listener = NotifyListener(abstract=abstract)
    try:
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": listener.env_value, "WATCHDOG_USEC": "2000000"})
        assert notifier.watchdog_interval == 1.0
        assert notifier.ready("nodes 0/1 connected\nsecond line")
        assert notifier.watchdog()
        assert notifier.stopping()
        listener.wait_for("STOPPING", "1")
        fields = [m for _, m in listener.messages]
        # A newline in a value must not start a new field.
        assert fields[0] == {"READY": "1", "STATUS": "nodes 0/1 connected second line"}
        assert fields[1] == {"WATCHDOG": "1"}
        notifier.close()
    finally:
        listener.close()


def test_notifier_survives_a_vanished_socket(tmp_path):
    notifier = Notifier(str(tmp_path / "gone.sock"))
    assert notifier.watchdog() is False  # logged once, never raised
    assert notifier.watchdog() is False


# ------------------------------------------------------ the daemon, for real


def test_ready_status_watchdog_and_stopping_from_eslcdr_run(tmp_path):
    port = free_port()
    listener = NotifyListener()
    # 0.4 s watchdog: a ping expected every 0.2 s.
    daemon = start_daemon(tmp_path, write_ini(tmp_path, port), listener, watchdog_usec=400_000)
    fake = None
    try:
        # Ready although FreeSWITCH is not there yet: database open, API listening.
        ready = listener.wait_for("READY", "1")
        assert "nodes 0/1 connected" in ready[0][1]["STATUS"]
        # Before it: what it is doing while not ready (a migration may take long).
        assert listener.messages[0][1] == {"STATUS": "opening the database %s" % (tmp_path / "cdrs.db")}
        assert (tmp_path / "cdrs.db").exists()
        assert daemon.api_port() > 0
        fake = burst(port, calls=10, seed=3)
        rows = wait_rows(tmp_path / "cdrs.db", 10)
        assert len(rows) >= 10
        # STATUS follows the live figures: connected, and the CDRs written.
        deadline = time.monotonic() + WAIT
        while True:
            statuses = [m["STATUS"] for _, m in listener.with_key("STATUS")]
            if any("nodes 1/1 connected" in s and "%d CDRs written" % len(db_rows(tmp_path / "cdrs.db")) in s for s in statuses):
                break
            assert time.monotonic() < deadline, statuses
            gevent.sleep(0.1)
        # Pings keep coming: many in a 2 s window (0.2 s apart, so ~10).
        before = len(listener.with_key("WATCHDOG", "1"))
        gevent.sleep(2.0)
        pings = listener.with_key("WATCHDOG", "1")
        assert len(pings) - before >= 4
        gaps = [b[0] - a[0] for a, b in zip(pings, pings[1:])]
        assert sorted(gaps)[len(gaps) // 2] < 0.4  # the median gap is within WATCHDOG_USEC
        daemon.proc.send_signal(signal.SIGTERM)
        listener.wait_for("STOPPING", "1")
        assert daemon.wait_exit() == 0
        assert listener.with_key("READY")[0][0] < listener.with_key("STOPPING")[0][0]
    finally:
        daemon.stop()
        if fake is not None:
            fake.stop()
        listener.close()


def test_no_watchdog_pings_without_watchdog_usec(tmp_path):
    listener = NotifyListener(abstract=True)
    daemon = start_daemon(tmp_path, write_ini(tmp_path, free_port()), listener)
    try:
        listener.wait_for("READY", "1")
        gevent.sleep(1.0)
        assert listener.with_key("WATCHDOG") == []
        assert events_named(daemon, "daemon_started")[0]["systemd"] is True
    finally:
        assert daemon.stop() == 0
        listener.close()


def test_watchdog_stops_while_the_writer_is_stuck_and_resumes(tmp_path):
    port = free_port()
    listener = NotifyListener()
    ini = write_ini(tmp_path, port, store="stall_timeout = 1\n")
    daemon = start_daemon(tmp_path, ini, listener, watchdog_usec=400_000)
    fake = None
    lock = None
    try:
        listener.wait_for("READY", "1")
        listener.wait_for("WATCHDOG", "1", count=3)
        # Another process holds the write lock: the writer cannot commit.
        lock = sqlite3.connect(str(tmp_path / "cdrs.db"), isolation_level=None, timeout=10)
        lock.execute("BEGIN EXCLUSIVE")
        fake = burst(port, calls=20, seed=5)
        withheld = wait_log(daemon, "watchdog_withheld")
        assert "writer stalled" in withheld[0]["reason"]
        gevent.sleep(0.5)  # a datagram sent just before the check may still arrive
        stalled_count = len(listener.with_key("WATCHDOG", "1"))
        gevent.sleep(2.0)  # ten intervals
        assert len(listener.with_key("WATCHDOG", "1")) == stalled_count
        assert db_rows(tmp_path / "cdrs.db") == []
        # systemctl status says where the CDRs wait: the writer moved them to the spool.
        deadline = time.monotonic() + WAIT
        while not any("in the spool" in m["STATUS"] for _, m in listener.with_key("STATUS")):
            assert time.monotonic() < deadline, listener.with_key("STATUS")[-3:]
            gevent.sleep(0.1)
        # The lock goes away: the backlog is committed and the pings resume.
        lock.execute("COMMIT")
        lock.close()
        lock = None
        assert len(wait_rows(tmp_path / "cdrs.db", 20)) >= 20
        wait_log(daemon, "watchdog_resumed")
        listener.wait_for("WATCHDOG", "1", count=stalled_count + 3)
    finally:
        if lock is not None:
            lock.close()
        assert daemon.stop() == 0
        if fake is not None:
            fake.stop()
        listener.close()


def test_sighup_reloads_tokens_and_log_level(tmp_path):
    port = free_port()
    listener = NotifyListener()
    old_token, new_token = "old-token-" + "a" * 30, "new-token-" + "b" * 30
    tokens = tmp_path / "tokens"
    tokens.write_text("%s *\n" % old_token)
    ini = write_ini(tmp_path, port, level="info")
    daemon = start_daemon(tmp_path, ini, listener)
    fake = None
    try:
        listener.wait_for("READY", "1")
        api = daemon.api_port()
        assert http_status(api, old_token) == 200
        assert http_status(api, new_token) == 401
        # At info, a refused request is logged, a served one is not (debug).
        refused = wait_log(daemon, "http_request")
        assert len(refused) == 1 and '" 401 ' in refused[0]["line"]

        # Phase 1 at info: CDRs are written, no per-batch line.
        fake = burst(port, calls=5, seed=11)
        first = len(wait_rows(tmp_path / "cdrs.db", 5))
        assert first >= 5
        fake.stop()
        assert events_named(daemon, "batch_written") == []

        # Swap the token keeping size and mtime: only SIGHUP can notice.
        stamp = tokens.stat()
        tokens.write_text("%s *\n" % new_token)
        os.utime(tokens, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
        ini.write_text(ini.read_text().replace("level = info", "level = debug"))
        gevent.sleep(1.5)  # past the tokens file's own once-a-second check
        assert http_status(api, new_token) == 401

        daemon.proc.send_signal(signal.SIGHUP)
        reloaded = wait_log(daemon, "reloaded")
        assert reloaded[0]["log_level"] == "debug" and reloaded[0]["applied"] == ["log_level", "tokens_file"]
        listener.wait_for("RELOADING", "1")
        listener.wait_for("READY", "1", count=2)
        assert http_status(api, new_token) == 200
        assert http_status(api, old_token) == 401

        # Phase 2 at debug: the per-batch lines are back.
        fake = burst(port, calls=5, seed=12)
        assert len(wait_rows(tmp_path / "cdrs.db", first + 5)) >= first + 5
        wait_log(daemon, "batch_written")
        assert daemon.proc.poll() is None  # SIGHUP did not end the process
    finally:
        assert daemon.stop() == 0
        if fake is not None:
            fake.stop()
        listener.close()


def test_sighup_with_a_broken_config_keeps_running(tmp_path):
    listener = NotifyListener()
    ini = write_ini(tmp_path, free_port())
    daemon = start_daemon(tmp_path, ini, listener)
    try:
        listener.wait_for("READY", "1")
        ini.write_text(ini.read_text().replace("level = info", "level = loud"))
        daemon.proc.send_signal(signal.SIGHUP)
        # One line: the tokens file applied, the config (its [log] level) refused, and why.
        [refused] = wait_log(daemon, "reload_refused")
        assert refused["level"] == "error" and "[log] level" in refused["config_error"]
        assert (refused["applied"], refused["refused"], refused["log_level"]) == (["tokens_file"], ["log_level"], "info")
        assert events_named(daemon, "reloaded") == []
        assert daemon.proc.poll() is None
    finally:
        assert daemon.stop() == 0
        listener.close()


def test_summary_line_per_interval_and_no_batch_lines_at_info(tmp_path):
    port = free_port()
    listener = NotifyListener()
    ini = write_ini(tmp_path, port, log="summary_interval = 0.5\n")
    daemon = start_daemon(tmp_path, ini, listener)
    fake = None
    try:
        listener.wait_for("READY", "1")
        fake = burst(port, calls=8, seed=21)
        wait_rows(tmp_path / "cdrs.db", 8)
        assert fake.wait_done(timeout=WAIT)
        rows = settle(tmp_path / "cdrs.db", 1.0)  # a call has several legs: wait for all
        # Per-interval figures add up to what was received and stored, once
        # a summary has covered the last of them.
        deadline = time.monotonic() + WAIT
        while True:
            summaries = events_named(daemon, "summary")
            if summaries and summaries[-1]["written_total"] == len(rows):
                break
            assert time.monotonic() < deadline, summaries[-3:]
            gevent.sleep(0.1)
        assert len(summaries) >= 2
        assert all(s["level"] == "info" for s in summaries)
        assert sum(s["cdrs"] for s in summaries) == len(rows)
        assert sum(s["nodes"]["fs-test"]["cdrs"] for s in summaries) == len(rows)
        assert sum(s["events"] for s in summaries) > len(rows)
        assert summaries[-1]["nodes"]["fs-test"]["state"] == "connected"
        assert summaries[-1]["backlog"] == 0 and summaries[-1]["spool_backlog"] == 0
        assert summaries[-1]["written_total"] == len(rows)
        assert events_named(daemon, "batch_written") == []
        assert events_named(daemon, "esl_connected")  # a state change is still logged
    finally:
        assert daemon.stop() == 0
        if fake is not None:
            fake.stop()
        listener.close()


# ------------------------------------------------------------------ the unit


def systemd_analyze() -> str:
    # Not a skip: without it the hardening checks would silently drop out.
    path = shutil.which("systemd-analyze")
    assert path is not None, "systemd-analyze is missing: `make test` installs it (apt-get install systemd)"
    return path


def unit_with_exec(tmp_path: Path, unit: Path, replacements: dict[str, str]) -> Path:
    text = unit.read_text()
    for old, new in replacements.items():
        text = text.replace(old, new)
    copy = tmp_path / "eslcdr.service"
    copy.write_text(text)
    return copy


def verify_unit(unit: Path) -> None:
    result = subprocess.run(
        [systemd_analyze(), "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "eslcdr.service" not in result.stderr, result.stderr


def exposure(unit: Path) -> float:
    result = subprocess.run(
        [systemd_analyze(), "security", "--offline=true", str(unit)], capture_output=True, text=True, timeout=60
    )
    found = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert found, result.stdout + result.stderr
    return float(found.group(1))


def test_unit_is_notify_with_watchdog_and_reload():
    text = UNIT.read_text()
    assert "\nType=notify\n" in text
    assert re.search(r"\nWatchdogSec=\d+", text)
    assert "\nExecReload=/bin/kill -HUP $MAINPID\n" in text
    assert "\nExecStart=/opt/eslcdr/bin/eslcdr run -c /etc/eslcdr/eslcdr.ini\n" in text
    assert "\nStateDirectory=eslcdr\n" in text
    assert "\nRestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX\n" in text


def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    eslcdr = shutil.which("eslcdr", path=os.path.dirname(sys.executable))
    assert eslcdr is not None, "no eslcdr executable next to this Python (pip install -e .) for /opt/eslcdr/bin/eslcdr"
    verify_unit(unit_with_exec(tmp_path, UNIT, {"/opt/eslcdr/bin/eslcdr": eslcdr}))


def test_systemd_analyze_security_exposure_at_most_2_5():
    score = exposure(UNIT)
    assert score <= 2.5, score


def test_a_weak_unit_scores_worse(tmp_path):
    # The parser reads the real figure: the stock hardening-free unit is far above.
    plain = tmp_path / "plain.service"
    plain.write_text("[Service]\nExecStart=/bin/true\n")
    assert exposure(plain) > 5.0
