"""Watching the running daemon: systemd status and watchdog, the summary log.

One supervised greenlet runs ``Monitor.run``.  It keeps three schedules and
sleeps until the earliest:

- the watchdog (only under systemd with ``WatchdogSec=``): ``WATCHDOG=1``
  every ``WATCHDOG_USEC/2``, but only while the writer and every node's
  reader greenlet are alive and the writer is not stuck (CDRs waiting and no
  commit for ``[store] stall_timeout`` seconds).  When a check fails the
  pings stop and systemd restarts the service; the reason is logged once.
  The pings come from a greenlet, so a hub blocked by anything also stops
  them.
- ``STATUS=`` for ``systemctl status`` (nodes connected, CDRs written,
  backlog), sent when it changes, checked every ``STATUS_INTERVAL`` (or
  every watchdog ping, when those are more frequent).
- one ``summary`` info line every ``[log] summary_interval`` seconds: what
  happened since the previous one (events, CDRs, reconnects, per node) and
  the backlog now.  Per-batch detail is at debug level.

Everything here reads plain counters of the daemon's objects: no I/O except
the notification datagrams and the log line.
"""

from __future__ import annotations

import time
from typing import Callable

import structlog

from .notify import Notifier

log = structlog.get_logger("eslcdr.monitor")

STATUS_INTERVAL = 5.0


def status_text(daemon) -> str:
    """One line for ``systemctl status``: nodes, CDRs written, backlog."""
    connected = sum(1 for c in daemon.nodes.values() if c.state == "connected")
    writer = daemon.writer
    live = sum(len(p.tracker) for p in daemon.pipelines.values())
    text = "nodes %d/%d connected, %d CDRs written, backlog %d, live legs %d" % (
        connected,
        len(daemon.nodes),
        writer.written if writer else 0,
        writer.backlog if writer else 0,
        live,
    )
    spooled = writer.spool_backlog if writer else 0
    if spooled:
        text += ", %d CDRs waiting in the spool" % spooled
    return text


def unhealthy_reason(daemon, stall_timeout: float, now: float) -> str | None:
    """Why the watchdog must not be fed now, or None when all is well."""
    for greenlet in daemon.greenlets:
        if (greenlet.name == "writer" or greenlet.name.startswith("esl:")) and greenlet.dead:
            return "greenlet %s is not running" % greenlet.name
    writer = daemon.writer
    if writer is not None:
        stalled = writer.stalled_seconds(now)
        if stalled > stall_timeout:
            return "writer stalled: CDRs waiting and nothing committed for more than %g s" % stall_timeout
    return None


class Summary:
    """Counters at the previous summary, to log what happened since."""

    def __init__(self, daemon) -> None:
        self._daemon = daemon
        self._previous = self._counters()

    def _counters(self) -> dict[str, tuple[int, int, int]]:
        daemon = self._daemon
        return {
            name: (daemon.pipelines[name].events, daemon.pipelines[name].cdrs, connection.reconnects)
            for name, connection in daemon.nodes.items()
        }

    def line(self) -> dict:
        """The fields of one summary line; resets the interval."""
        daemon = self._daemon
        now = self._counters()
        nodes = {}
        totals = [0, 0, 0]
        for name, values in now.items():
            before = self._previous.get(name, (0, 0, 0))
            delta = [a - b for a, b in zip(values, before)]
            totals = [t + d for t, d in zip(totals, delta)]
            connection = daemon.nodes[name]
            nodes[name] = {
                "state": connection.state,
                "events": delta[0],
                "cdrs": delta[1],
                "reconnects": delta[2],
                "live_legs": len(daemon.pipelines[name].tracker),
            }
            if connection.state != "connected" and connection.last_error:
                nodes[name]["last_error"] = connection.last_error
        self._previous = now
        writer = daemon.writer
        return {
            "events": totals[0],
            "cdrs": totals[1],
            "reconnects": totals[2],
            "written_total": writer.written if writer else 0,
            "backlog": writer.backlog if writer else 0,
            "spool_backlog": writer.spool_backlog if writer else 0,
            "nodes": nodes,
        }


class Monitor:
    def __init__(
        self,
        daemon,
        notifier: Notifier,
        *,
        summary_interval: float,
        stall_timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._daemon = daemon
        self._notifier = notifier
        self._summary_interval = summary_interval
        self._stall_timeout = stall_timeout
        self._clock = clock
        self._summary = Summary(daemon)
        self._last_status: str | None = None
        self._withheld: str | None = None
        self.pings = 0

    def run(self, stop) -> None:
        """Until ``stop`` (a gevent Event) is set."""
        now = self._clock()
        ping_every = self._notifier.watchdog_interval
        next_ping = now if ping_every else None
        next_status = now
        next_summary = now + self._summary_interval
        status_every = min(STATUS_INTERVAL, ping_every or STATUS_INTERVAL)
        while True:
            now = self._clock()
            if next_ping is not None and now >= next_ping:
                self.feed_watchdog(now)
                next_ping = now + ping_every
            if now >= next_status:
                self.update_status()
                next_status = now + status_every
            if now >= next_summary:
                log.info("summary", interval_s=self._summary_interval, **self._summary.line())
                next_summary = now + self._summary_interval
            wake = min(t for t in (next_ping, next_status, next_summary) if t is not None)
            if stop.wait(timeout=max(0.0, wake - self._clock())):
                return

    def feed_watchdog(self, now: float) -> None:
        reason = unhealthy_reason(self._daemon, self._stall_timeout, now)
        if reason is None:
            if self._withheld is not None:
                log.info("watchdog_resumed")
                self._withheld = None
            if self._notifier.watchdog():
                self.pings += 1
            return
        if reason != self._withheld:
            log.error("watchdog_withheld", reason=reason, backlog=self._daemon.writer.backlog if self._daemon.writer else 0)
            self._withheld = reason

    def update_status(self) -> None:
        text = status_text(self._daemon)
        if text != self._last_status and self._notifier.status(text):
            self._last_status = text
