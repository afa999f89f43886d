"""Watching the running daemon: systemd status and watchdog, the summary log.

One supervised greenlet runs ``Monitor.run``.  It keeps three schedules and
sleeps until the earliest: the watchdog ping (only while the writer and every
node's reader are alive and the writer is not stuck), ``STATUS=`` for
``systemctl status``, and one ``summary`` info line every ``[log]
summary_interval`` seconds (``Monitor`` details each).

Status and summary read the daemon's status snapshot (``Daemon.status()``);
the watchdog checks its greenlets and the writer's progress.  No I/O except
the notification datagrams and the log line.
"""

from __future__ import annotations

import time
from typing import Callable

import structlog

from .notify import Notifier
from .status import DaemonStatus

log = structlog.get_logger(__name__)

STATUS_INTERVAL = 5.0


def status_text(status: DaemonStatus) -> str:
    """One line for ``systemctl status``: nodes, CDRs written, backlog."""
    text = "nodes %d/%d connected, %d CDRs written, backlog %d, live legs %d" % (
        status.connected,
        len(status.nodes),
        status.written,
        status.backlog,
        status.live_legs,
    )
    if status.spool_backlog:
        text += ", %d CDRs waiting in the spool" % status.spool_backlog
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
        self._previous = self._counters(daemon.status())

    @staticmethod
    def _counters(status: DaemonStatus) -> dict[str, tuple[int, int, int]]:
        return {node.name: (node.events, node.cdrs, node.reconnects) for node in status.nodes}

    def line(self) -> dict:
        """The fields of one summary line; resets the interval."""
        status = self._daemon.status()
        now = self._counters(status)
        nodes = {}
        totals = [0, 0, 0]
        for node in status.nodes:
            before = self._previous.get(node.name, (0, 0, 0))
            delta = [a - b for a, b in zip(now[node.name], before)]
            totals = [t + d for t, d in zip(totals, delta)]
            nodes[node.name] = {
                "state": node.state,
                "events": delta[0],
                "cdrs": delta[1],
                "reconnects": delta[2],
                "live_legs": node.live_legs,
            }
            if not node.connected and node.last_error:
                nodes[node.name]["last_error"] = node.last_error
        self._previous = now
        return {
            "events": totals[0],
            "cdrs": totals[1],
            "reconnects": totals[2],
            "written_total": status.written,
            "backlog": status.backlog,
            "spool_backlog": status.spool_backlog,
            "nodes": nodes,
        }


class Monitor:
    """The three schedules of ``run``:

    - the watchdog (only under systemd with ``WatchdogSec=``): ``WATCHDOG=1``
      every ``WATCHDOG_USEC/2``, but only while the writer and every node's
      reader greenlet are alive and the writer is not stuck (CDRs waiting and no
      commit for ``[store] stall_timeout`` seconds).  When a check fails the
      pings stop and systemd restarts the service; the reason is logged once.
      The pings come from a greenlet, so a hub blocked by anything also stops
      them.
    - ``STATUS=`` for ``systemctl status`` (nodes connected, CDRs written,
      backlog), sent when it changes, checked every ``STATUS_INTERVAL`` (or
      every watchdog ping, when those are more frequent); never outside
      systemd (nobody to tell: an idle daemon is not woken for it).
    - one ``summary`` info line every ``[log] summary_interval`` seconds: what
      happened since the previous one (events, CDRs, reconnects, per node) and
      the backlog now.  Per-batch detail is at debug level.
    """

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
        # No systemd to tell (no $NOTIFY_SOCKET): no status to work out.
        next_status = now if self._notifier.enabled else None
        next_summary = now + self._summary_interval
        status_every = min(STATUS_INTERVAL, ping_every or STATUS_INTERVAL)
        while True:
            now = self._clock()
            if next_ping is not None and now >= next_ping:
                self.feed_watchdog(now)
                next_ping = now + ping_every
            if next_status is not None and now >= next_status:
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
            log.error("watchdog_withheld", reason=reason, backlog=self._daemon.status().backlog)
            self._withheld = reason

    def update_status(self) -> None:
        text = status_text(self._daemon.status())
        if text != self._last_status and self._notifier.status(text):
            self._last_status = text
