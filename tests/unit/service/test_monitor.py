"""The monitor's decisions on stand-in daemon state: when the watchdog is fed,
what STATUS says, what a summary line counts; the daemon's status snapshot
as /health and /metrics show it."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import pytest

from eslcdr.service.daemon import Daemon
from eslcdr.service.monitor import Monitor, Summary, status_text, unhealthy_reason


@dataclass
class FakeGreenlet:
    name: str
    dead: bool = False


@dataclass
class FakeWriter:
    written: int = 0
    backlog: int = 0
    spool_backlog: int = 0
    stalled: float = 0.0
    duplicates: int = 0
    refused: int = 0
    failures: int = 0
    deleted: int = 0
    spooled: int = 0
    lost: int = 0
    spool_merges: int = 0
    merges_waiting: int = 0
    merges_lost: int = 0
    last_error: str | None = None
    last_write_at: float | None = None

    def stalled_seconds(self, now: float) -> float:
        return self.stalled


@dataclass
class FakeNode:
    host: str = "127.0.0.1"
    port: int = 8021


@dataclass
class FakeConnection:
    state: str = "connected"
    reconnects: int = 0
    last_error: str | None = None
    node: FakeNode = field(default_factory=FakeNode)
    connected_since: float | None = None
    protocol_errors: int = 0
    unresponsive: int = 0


@dataclass
class FakePipeline:
    events: int = 0
    cdrs: int = 0
    tracker: list = field(default_factory=list)


class FakeDaemon:
    # The daemon's own snapshot, read from these stand-ins.
    status = Daemon.status

    def __init__(self) -> None:
        self.writer = FakeWriter()
        self.nodes = {"fs1": FakeConnection(), "fs2": FakeConnection(state="disconnected", last_error="refused")}
        self.pipelines = {"fs1": FakePipeline(), "fs2": FakePipeline()}
        self.greenlets = [FakeGreenlet("writer"), FakeGreenlet("esl:fs1"), FakeGreenlet("esl:fs2"),
                          FakeGreenlet("monitor")]
        self.retention = None
        self.backfill = None
        self.started_at = time.time()


class FakeNotifier:
    watchdog_interval = 1.0
    enabled = True

    def __init__(self) -> None:
        self.sent: list[str] = []

    def watchdog(self) -> bool:
        self.sent.append("WATCHDOG=1")
        return True

    def status(self, text: str) -> bool:
        self.sent.append("STATUS=" + text)
        return True


def test_unhealthy_when_a_reader_or_the_writer_greenlet_is_gone_or_the_writer_is_stuck():
    daemon = FakeDaemon()
    assert unhealthy_reason(daemon, stall_timeout=10, now=0) is None
    daemon.greenlets[3].dead = True  # not a reader or the writer: no matter
    assert unhealthy_reason(daemon, stall_timeout=10, now=0) is None
    daemon.greenlets[2].dead = True
    assert "esl:fs2" in unhealthy_reason(daemon, stall_timeout=10, now=0)
    daemon.greenlets[2].dead = False
    daemon.greenlets[0].dead = True
    assert "writer" in unhealthy_reason(daemon, stall_timeout=10, now=0)
    daemon.greenlets[0].dead = False
    daemon.writer.stalled = 10.0
    assert unhealthy_reason(daemon, stall_timeout=10, now=0) is None  # at the bound: still fine
    daemon.writer.stalled = 10.5
    assert "stalled" in unhealthy_reason(daemon, stall_timeout=10, now=0)


def test_watchdog_fed_only_while_healthy():
    daemon = FakeDaemon()
    notifier = FakeNotifier()
    monitor = Monitor(daemon, notifier, summary_interval=60, stall_timeout=5)
    monitor.feed_watchdog(0.0)
    daemon.writer.stalled = 6.0
    monitor.feed_watchdog(1.0)
    monitor.feed_watchdog(2.0)
    daemon.writer.stalled = 0.0
    monitor.feed_watchdog(3.0)
    assert notifier.sent == ["WATCHDOG=1", "WATCHDOG=1"]
    assert monitor.pings == 2


def test_status_line_and_only_changes_are_sent():
    daemon = FakeDaemon()
    daemon.writer.written, daemon.writer.backlog = 42, 3
    daemon.pipelines["fs1"].tracker = [1, 2]
    assert status_text(daemon.status()) == "nodes 1/2 connected, 42 CDRs written, backlog 3, live legs 2"
    daemon.writer.spool_backlog = 7
    assert status_text(daemon.status()).endswith(", 7 CDRs waiting in the spool")
    notifier = FakeNotifier()
    monitor = Monitor(daemon, notifier, summary_interval=60, stall_timeout=5)
    monitor.update_status()
    monitor.update_status()
    daemon.writer.written = 43
    monitor.update_status()
    # Sent once, then again only when it changed.
    assert len(notifier.sent) == 2
    assert "42 CDRs" in notifier.sent[0] and "43 CDRs" in notifier.sent[1]


def test_outside_systemd_the_monitor_works_out_no_status_and_sleeps_until_the_summary():
    # No $NOTIFY_SOCKET: nobody reads STATUS=, so an idle daemon is not woken
    # every STATUS_INTERVAL to build it (before: the daemon's whole status
    # snapshot every 5 s, for nothing).
    daemon = FakeDaemon()
    snapshots = []

    def status(self):
        snapshots.append(time.monotonic())
        return Daemon.status(self)

    daemon.status = status.__get__(daemon)
    notifier = FakeNotifier()
    notifier.enabled, notifier.watchdog_interval = False, None
    clock = [1000.0]
    monitor = Monitor(daemon, notifier, summary_interval=60, stall_timeout=5, clock=lambda: clock[0])
    built = len(snapshots)  # the summary's baseline

    class Stop:
        waits: list[float] = []

        def wait(self, timeout):
            self.waits.append(timeout)
            clock[0] += timeout
            return len(self.waits) >= 3

    stop = Stop()
    monitor.run(stop)
    assert stop.waits == [60.0, 60.0, 60.0]
    assert notifier.sent == []
    assert len(snapshots) - built == 2  # one a summary line, nothing between


def test_summary_counts_what_happened_since_the_previous_line():
    daemon = FakeDaemon()
    daemon.pipelines["fs1"].events, daemon.pipelines["fs1"].cdrs = 100, 10
    summary = Summary(daemon)
    daemon.pipelines["fs1"].events, daemon.pipelines["fs1"].cdrs = 150, 14
    daemon.nodes["fs2"].reconnects = 2
    daemon.writer.written, daemon.writer.backlog = 14, 1
    line = summary.line()
    assert (line["events"], line["cdrs"], line["reconnects"]) == (50, 4, 2)
    assert line["written_total"] == 14 and line["backlog"] == 1 and line["spool_backlog"] == 0
    assert line["nodes"]["fs1"] == {"state": "connected", "events": 50, "cdrs": 4, "reconnects": 0, "live_legs": 0}
    assert line["nodes"]["fs2"]["last_error"] == "refused"
    again = summary.line()
    assert (again["events"], again["cdrs"], again["reconnects"]) == (0, 0, 0)


# -- the daemon's figures as /health and /metrics show them ----------------

class FullBackfill:
    backfilled, rescued, replaced, bad_files, awaiting = 8, 9, 10, 11, {"a": 1, "b": 2}

    def stats(self) -> dict:
        return {"json_cdr_dir": "/j", "readable": True, "scans": 3, "files_listed": 30,
                "backfilled": self.backfilled, "rescued": self.rescued, "replaced": self.replaced,
                "bad_files": self.bad_files, "awaiting": len(self.awaiting), "mark_ns": 12, "last_scan_seconds": 0.25}


def full_daemon(tmp_path, degraded: bool = False):
    import gevent.event

    from eslcdr.config import from_mapping
    from eslcdr.service.daemon import Daemon
    from eslcdr.service.notify import Notifier
    from eslcdr.store.retention import Retention

    config = from_mapping({"esl": {"host": "127.0.0.1"},
                           "store": {"path": str(tmp_path / "c.db"), "retention_days": "30"},
                           "api": {"tokens_file": str(tmp_path / "tokens")}})
    daemon = Daemon(config, notifier=Notifier(None))
    daemon.started_at -= 100.0
    daemon.writer = FakeWriter(backlog=3, written=42, duplicates=1, refused=2, failures=4, deleted=5, spooled=6,
                               lost=7, merges_waiting=8, merges_lost=11, last_write_at=1700000000.5)
    daemon.nodes = {"fs1": FakeConnection(node=FakeNode("10.0.0.1", 8021), connected_since=1700000000.0,
                                          reconnects=1, protocol_errors=2),
                    "fs2": FakeConnection(node=FakeNode("10.0.0.2", 8022), state="connecting" if degraded else "connected",
                                          reconnects=1, protocol_errors=2, unresponsive=1,
                                          last_error="refused" if degraded else None)}
    daemon.pipelines = {"fs1": FakePipeline(events=100, cdrs=10, tracker=[1, 2]), "fs2": FakePipeline(events=5, cdrs=1)}
    daemon.retention = Retention(config, daemon.writer, gevent.event.Event(), tokens=None, clock=lambda: 1700000000.0)
    daemon.retention.stats = {"bytes": 4096, "wal_bytes": 512, "pages": 1, "page_size": 4096, "free_pages": 0,
                              "oldest_timestamp": 1700000000 - 86400 + 62167219200,
                              "collectors": {"ab" * 32: {"acked_seq": 40, "unpulled": 2, "last_pull_us": 1699999999000000}},
                              "unpulled_max": 2}
    daemon.backfill = FullBackfill()
    return daemon


def test_health_answers_every_figure_in_its_place(tmp_path):
    from eslcdr import __version__

    health = full_daemon(tmp_path).health()
    assert 99.0 < health.pop("uptime_seconds") < 200.0
    assert health == {
        "status": "ok",
        "version": __version__,
        "nodes": {
            "fs1": {"state": "connected", "host": "10.0.0.1", "port": 8021, "connected_since": 1700000000.0,
                    "reconnects": 1, "unresponsive": 0, "protocol_errors": 2, "events": 100, "cdrs": 10, "live_legs": 2, "last_error": None},
            "fs2": {"state": "connected", "host": "10.0.0.2", "port": 8022, "connected_since": None,
                    "reconnects": 1, "unresponsive": 1, "protocol_errors": 2, "events": 5, "cdrs": 1, "live_legs": 0, "last_error": None},
        },
        "store": {"path": str(tmp_path / "c.db"), "bytes": 4096, "wal_bytes": 512, "free_pages": 0,
                  "oldest_timestamp": 1700000000 - 86400 + 62167219200, "oldest_age_seconds": 86400,
                  "retention_days": 30, "deleted": 5, "unpulled_max": 2,
                  "collectors": {"sha256:abababababab": {"acked_seq": 40, "unpulled": 2, "last_pull_at": 1699999999.0}}},
        "writer": {"backlog": 3, "written": 42, "duplicates": 1, "refused": 2, "failures": 4, "deleted": 5,
                   "spool_backlog": 0, "spooled": 6, "lost": 7, "spool_merges": 0, "merges_waiting": 8,
                   "merges_lost": 11, "last_error": None, "last_write_at": 1700000000.5},
        "backfill": FullBackfill().stats(),
    }
    assert list(health) == ["status", "version", "nodes", "store", "writer", "backfill"]
    assert full_daemon(tmp_path, degraded=True).health()["status"] == "degraded"


def test_health_is_degraded_while_the_writer_fails_with_a_backlog_or_the_spool_holds_cdrs(tmp_path):
    daemon = full_daemon(tmp_path)
    daemon.writer.last_error = "disk I/O error"
    assert daemon.health()["status"] == "degraded"  # backlog 3
    daemon.writer.backlog = 0
    assert daemon.health()["status"] == "ok"
    daemon.writer.spool_backlog = 1
    assert daemon.health()["status"] == "degraded"
    daemon.writer.spool_backlog = 0
    daemon.writer.spool_merges = 2  # CDRs stored, their interactions not yet merged
    assert daemon.health()["status"] == "degraded"


METRICS = """\
# HELP eslcdr_events_total Events received from FreeSWITCH
# TYPE eslcdr_events_total counter
eslcdr_events_total{node="fs1"} 100.0
eslcdr_events_total{node="fs2"} 5.0
# HELP eslcdr_cdrs_built_total CDRs built from finished legs
# TYPE eslcdr_cdrs_built_total counter
eslcdr_cdrs_built_total{node="fs1"} 10.0
eslcdr_cdrs_built_total{node="fs2"} 1.0
# HELP eslcdr_protocol_errors_total Malformed frames or events skipped
# TYPE eslcdr_protocol_errors_total counter
eslcdr_protocol_errors_total{node="fs1"} 2.0
eslcdr_protocol_errors_total{node="fs2"} 2.0
# HELP eslcdr_reconnects_total Event Socket reconnects
# TYPE eslcdr_reconnects_total counter
eslcdr_reconnects_total{node="fs1"} 1.0
eslcdr_reconnects_total{node="fs2"} 1.0
# HELP eslcdr_esl_unresponsive_total Event Socket connections declared dead: no reply to the idle ping
# TYPE eslcdr_esl_unresponsive_total counter
eslcdr_esl_unresponsive_total{node="fs1"} 0.0
eslcdr_esl_unresponsive_total{node="fs2"} 1.0
# HELP eslcdr_connected 1 when the Event Socket is connected
# TYPE eslcdr_connected gauge
eslcdr_connected{node="fs1"} 1.0
eslcdr_connected{node="fs2"} 0.0
# HELP eslcdr_live_legs Legs being tracked
# TYPE eslcdr_live_legs gauge
eslcdr_live_legs{node="fs1"} 2.0
eslcdr_live_legs{node="fs2"} 0.0
# HELP eslcdr_cdrs_written_total CDR rows committed to SQLite
# TYPE eslcdr_cdrs_written_total counter
eslcdr_cdrs_written_total 42.0
# HELP eslcdr_cdrs_duplicate_total CDRs already stored (ignored)
# TYPE eslcdr_cdrs_duplicate_total counter
eslcdr_cdrs_duplicate_total 1.0
# HELP eslcdr_cdrs_refused_total CDRs refused: writer backlog full
# TYPE eslcdr_cdrs_refused_total counter
eslcdr_cdrs_refused_total 2.0
# HELP eslcdr_write_failures_total Failed SQLite transactions (retried)
# TYPE eslcdr_write_failures_total counter
eslcdr_write_failures_total 4.0
# HELP eslcdr_writer_backlog CDRs waiting to be written
# TYPE eslcdr_writer_backlog gauge
eslcdr_writer_backlog 3.0
# HELP eslcdr_cdrs_deleted_total CDR rows deleted by retention
# TYPE eslcdr_cdrs_deleted_total counter
eslcdr_cdrs_deleted_total 5.0
# HELP eslcdr_spool_backlog CDRs in the spool file, not yet in SQLite
# TYPE eslcdr_spool_backlog gauge
eslcdr_spool_backlog 0.0
# HELP eslcdr_cdrs_spooled_total CDRs written to the spool file
# TYPE eslcdr_cdrs_spooled_total counter
eslcdr_cdrs_spooled_total 6.0
# HELP eslcdr_cdrs_lost_total CDRs neither stored nor spooled (logged in full)
# TYPE eslcdr_cdrs_lost_total counter
eslcdr_cdrs_lost_total 9.0
# HELP eslcdr_spool_merges Interaction merges in the spool file, not yet applied in SQLite
# TYPE eslcdr_spool_merges gauge
eslcdr_spool_merges 0.0
# HELP eslcdr_interaction_merges_lost_total Interaction merges neither applied nor spooled (logged at error)
# TYPE eslcdr_interaction_merges_lost_total counter
eslcdr_interaction_merges_lost_total 11.0
# HELP eslcdr_backfill_legs_total Legs stored from their mod_json_cdr file (hangup not heard)
# TYPE eslcdr_backfill_legs_total counter
eslcdr_backfill_legs_total 17.0
# HELP eslcdr_backfill_replaced_total Not-seen rows replaced from a json_cdr file that came later
# TYPE eslcdr_backfill_replaced_total counter
eslcdr_backfill_replaced_total 10.0
# HELP eslcdr_backfill_bad_files_total Unreadable json_cdr files skipped
# TYPE eslcdr_backfill_bad_files_total counter
eslcdr_backfill_bad_files_total 11.0
# HELP eslcdr_backfill_awaiting Not-seen legs whose json_cdr file is awaited
# TYPE eslcdr_backfill_awaiting gauge
eslcdr_backfill_awaiting 2.0
# HELP eslcdr_db_bytes Size of the SQLite file (without its WAL)
# TYPE eslcdr_db_bytes gauge
eslcdr_db_bytes 4096.0
# HELP eslcdr_db_wal_bytes Size of the SQLite WAL file
# TYPE eslcdr_db_wal_bytes gauge
eslcdr_db_wal_bytes 512.0
# HELP eslcdr_db_oldest_cdr_timestamp_seconds Hangup time of the oldest stored CDR, Unix seconds
# TYPE eslcdr_db_oldest_cdr_timestamp_seconds gauge
eslcdr_db_oldest_cdr_timestamp_seconds 1.6999136e+09
# HELP eslcdr_feed_unpulled_rows Rows a registered collector has not pulled yet
# TYPE eslcdr_feed_unpulled_rows gauge
eslcdr_feed_unpulled_rows{collector="sha256:abababababab"} 2.0
# HELP eslcdr_feed_unpulled_rows_max Most rows any registered collector has not pulled yet
# TYPE eslcdr_feed_unpulled_rows_max gauge
eslcdr_feed_unpulled_rows_max 2.0
"""


def test_metrics_show_every_figure(tmp_path):
    from prometheus_client import CollectorRegistry, generate_latest

    from eslcdr.service.metrics import DaemonCollector

    daemon = full_daemon(tmp_path, degraded=True)
    registry = CollectorRegistry()
    registry.register(DaemonCollector(daemon))
    assert generate_latest(registry).decode() == METRICS
    # Before the first storage check (no figures yet) the store's families are left out.
    daemon.retention.stats = {}
    assert "eslcdr_db_bytes" not in generate_latest(registry).decode()
    daemon.backfill = None
    assert "eslcdr_backfill" not in generate_latest(registry).decode()


def test_the_status_is_a_frozen_snapshot_every_view_reads(tmp_path):
    from eslcdr.service.demo import line_text

    daemon = full_daemon(tmp_path, degraded=True)
    status = daemon.status()
    with pytest.raises(dataclasses.FrozenInstanceError):
        status.writer.written = 0
    daemon.writer.written = 1000
    daemon.pipelines["fs1"].tracker = []
    # Taken before: it does not follow the daemon's counters.
    assert (status.written, status.live_legs, status.connected) == (42, 2, 1)
    assert status.health()["writer"]["written"] == 42
    assert status_text(status) == "nodes 1/2 connected, 42 CDRs written, backlog 3, live legs 2"
    assert line_text(status, 2.5) == "live legs 2 | CDRs 42 (2.5/s) | backlog 3 | FreeSWITCH connecting"
    now = daemon.status()
    assert status_text(now) == "nodes 1/2 connected, 1000 CDRs written, backlog 3, live legs 0"
    assert line_text(dataclasses.replace(now, nodes=now.nodes[:1]), 0) == (
        "live legs 0 | CDRs 1000 (0.0/s) | backlog 3 | FreeSWITCH connected")
