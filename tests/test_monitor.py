"""The monitor's decisions on stand-in daemon state: when the watchdog is fed,
what STATUS says, what a summary line counts."""

from __future__ import annotations

from dataclasses import dataclass, field

from eslcdr.monitor import Monitor, Summary, status_text, unhealthy_reason


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

    def stalled_seconds(self, now: float) -> float:
        return self.stalled


@dataclass
class FakeConnection:
    state: str = "connected"
    reconnects: int = 0
    last_error: str | None = None


@dataclass
class FakePipeline:
    events: int = 0
    cdrs: int = 0
    tracker: list = field(default_factory=list)


class FakeDaemon:
    def __init__(self) -> None:
        self.writer = FakeWriter()
        self.nodes = {"fs1": FakeConnection(), "fs2": FakeConnection(state="disconnected", last_error="refused")}
        self.pipelines = {"fs1": FakePipeline(), "fs2": FakePipeline()}
        self.greenlets = [FakeGreenlet("writer"), FakeGreenlet("esl:fs1"), FakeGreenlet("esl:fs2"),
                          FakeGreenlet("monitor")]


class FakeNotifier:
    watchdog_interval = 1.0

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
    assert status_text(daemon) == "nodes 1/2 connected, 42 CDRs written, backlog 3, live legs 2"
    daemon.writer.spool_backlog = 7
    assert status_text(daemon).endswith(", 7 CDRs waiting in the spool")
    notifier = FakeNotifier()
    monitor = Monitor(daemon, notifier, summary_interval=60, stall_timeout=5)
    monitor.update_status()
    monitor.update_status()
    daemon.writer.written = 43
    monitor.update_status()
    # Sent once, then again only when it changed.
    assert len(notifier.sent) == 2
    assert "42 CDRs" in notifier.sent[0] and "43 CDRs" in notifier.sent[1]


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
