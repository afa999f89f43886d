"""``eslcdr run``: wires the stages together and supervises them.

socket -> decode (esl/client.py) -> legs (ingest/legs.py) -> CDR (ingest/cdr.py) -> writer
(store/writer.py) -> SQLite <- queries <- HTTP (api/app.py).

Each FreeSWITCH node has its own connection and leg tracker; every node
feeds the one writer.  The per-event path (``Pipeline.on_event``) is pure
computation plus an append to the writer's buffer: no I/O, so the socket
reader keeps up with FreeSWITCH.

Every long-lived greenlet is supervised: an unexpected crash is logged and
the greenlet restarted after a backoff.  Signal handlers only set an event;
shutdown is a bounded sequence (``Daemon``); SIGHUP re-reads the tokens file
and the ``[log] level``.  Under systemd the daemon speaks the notify protocol.
"""

from __future__ import annotations

import signal
import sqlite3
import time
from typing import Callable

import gevent
import gevent.event
import structlog

from .. import __version__
from . import logs
from .backfill import Backfill
from ..ingest.cdr import CdrBuilder, build_lost_cdr, should_record
from ..config import Config, ConfigError, EslNode
from ..config import load as load_config
from ..esl.client import NodeConnection
from ..esl.events import Event, EventDecoder
from ..ingest.legs import BRIEF_EVENTS, BRIEF_HEADERS, MAX_DTMF_DIGITS, FinishedLeg, LegTracker
from .monitor import Monitor, status_text
from .notify import Notifier
from ..store.retention import Retention
from ..store.spool import Spool
from .status import DaemonStatus, NodeStatus, WriterStatus
from ..supervise import IDLE_WAKE, keep_pool_threads, spawn_supervised
from ..store.db import connect_writer, recent_interaction_links, recent_interaction_starts
from ..api.tokens import TokenStore
from ..store.writer import Writer

log = structlog.get_logger(__name__)

HOUSEKEEPING_INTERVAL = 30.0
# How long a leg missing from "show channels" may still get its hangup event.
RESYNC_GRACE = 5.0
# How often legs marked by a resync are looked at, while there are any (a
# resync wakes the housekeeping); otherwise it sleeps until the next sweep: a
# daemon with calls trickling in or none is not woken every second for it.
LOST_CHECK_INTERVAL = 1.0
SHUTDOWN_DRAIN_TIMEOUT = 15.0
# Bugs in field mapping on a strange event must cost one CDR, not the reader.
BUILD_ERRORS = (KeyError, ValueError, TypeError, AttributeError, IndexError)


def now_us() -> int:
    return time.time_ns() // 1000


class Pipeline:
    """Events of one node -> CDR records for the writer."""

    def __init__(self, node: EslNode, config: Config, writer: Writer, clock: Callable[[], int] = now_us) -> None:
        self.node_name = node.name
        self._builder = CdrBuilder(config.cdr, node.name)
        self._writer = writer
        self._clock = clock
        self.tracker = LegTracker(
            interaction_id_vars=config.cdr.interaction_id_vars,
            leg_ttl_us=int(config.store.leg_ttl * 1_000_000),
            account_id_vars=config.cdr.account_id_vars,
            owner_id_vars=config.cdr.owner_id_vars,
            authorizing_id_vars=config.cdr.authorizing_id_vars,
        )
        # JSON events the tracker needs little of are decoded light.
        self.decoder = EventDecoder(self.tracker.headers_read, brief_events=BRIEF_EVENTS,
                                    brief_headers=BRIEF_HEADERS, known=self.tracker.knows)
        self.events = 0
        self.cdrs = 0
        self.skipped = 0
        self.build_errors = 0
        self.backfilled = 0
        self.last_event_at: float | None = None
        # Set when [backfill] json_cdr_dir serves this node (daemon.Daemon).
        self.backfill: Backfill | None = None

    def on_event(self, event: Event) -> None:
        self.events += 1
        self._take(event)

    def on_backfill(self, event: Event) -> bool:
        """A hangup read from the leg's json_cdr file: the same path as a
        live one (a leg already finished here is ignored); True when a CDR
        was submitted."""
        if self._take(event):
            self.backfilled += 1
            return True
        return False

    def _take(self, event: Event) -> bool:
        tracker = self.tracker
        finished = tracker.feed(event, self._clock())
        if tracker.merges:
            self._writer.merge_interactions(tracker.merges)
            tracker.merges = []
        if tracker.refused_ids:
            for refused in tracker.refused_ids:
                # The caller's INVITE named its call (ingest/interactions.py).
                log.warning("interaction_id_refused", node=self.node_name, call_id=refused.call_id,
                            variable=refused.variable, value=refused.value, reason=refused.reason)
            tracker.refused_ids = []
        if finished is None:
            return False
        if not should_record(finished.hangup):
            self.skipped += 1
            return False
        if finished.dtmf_count > MAX_DTMF_DIGITS:
            log.warning("dtmf_digits_truncated", node=self.node_name, call_id=finished.hangup.get("Unique-ID"),
                        received=finished.dtmf_count, kept=MAX_DTMF_DIGITS)
        record = self._build(finished)
        return record is not None and self._submit(record)

    def _build(self, finished: FinishedLeg) -> dict | None:
        try:
            return self._builder.build(finished)
        except BUILD_ERRORS as exc:
            self.build_errors += 1
            log.error("cdr_build_failed", node=self.node_name, call_id=finished.hangup.get("Unique-ID"), error=repr(exc))
            return None

    def replace_from_file(self, event: Event, interaction_id: str) -> bool:
        """The complete CDR of a leg already written off as not seen, from
        its json_cdr file: it replaces the stored row (with a new seq)."""
        call_id = event["Unique-ID"]
        now = self._clock()
        self.tracker.note_finished(call_id, now)
        if not should_record(event):
            return False
        interaction_id = interaction_id or self.tracker.interaction_of(call_id) or ""
        leg = FinishedLeg(
            hangup=event,
            digits="",
            fax=(),
            bridge_partner="",
            interaction_id=interaction_id,
            links=tuple(self.tracker.links_of(event)),
            finished_us=now,
            interaction_created_us=self.tracker.interaction_created_us(interaction_id),
        )
        record = self._build(leg)
        if record is None:
            return False
        if not self._writer.submit_replacement(record):
            log.error("cdr_lost_backlog_full", node=self.node_name, call_id=call_id, record=record)
            return False
        return True

    def _submit(self, record: dict) -> bool:
        if self._writer.submit(record):
            self.cdrs += 1
            return True
        # Neither memory nor the spool can take it: the record itself
        # goes to the log, the last place it can be recovered from.
        log.error("cdr_lost_backlog_full", node=self.node_name, call_id=record["call_id"], record=record)
        return False

    def on_resync(self, rows: list[dict[str, str]]) -> list[str]:
        """After (re)connecting, with the rows of ``show channels``: legs
        FreeSWITCH no longer lists may have ended unseen (written off after
        a grace, take_lost); legs it lists that we never saw are added.
        Returns those new legs' ids (the connection dumps their variables)."""
        now = self._clock()
        alive = {row["uuid"] for row in rows}
        marked = self.tracker.resync(alive, now, grace_us=int(RESYNC_GRACE * 1_000_000))
        added = self.tracker.seed(rows, now)
        log.info("esl_resync", node=self.node_name, alive=len(alive), tracked=len(self.tracker),
                 missing=marked, added=len(added))
        if self.backfill is not None:
            self.backfill.request_scan()
        return added

    def write_off_lost(self) -> None:
        backfill = self.backfill
        if backfill is not None:
            # Before writing a leg off, its own json_cdr file (file I/O in a
            # thread: this runs in the housekeeping greenlet).
            due = self.tracker.due_lost(self._clock())
            rescued = sum(1 for event in backfill.rescue(due) if self.on_backfill(event))
            if rescued:
                backfill.count_rescued(rescued)
                log.info("hangup_from_json_cdr", node=self.node_name, legs=rescued)
        now = self._clock()
        lost = self.tracker.take_lost(now)
        for leg in lost:
            self._submit(build_lost_cdr(leg, self.node_name, now))
            if backfill is not None:
                backfill.await_file(leg.call_id, leg.interaction_id)
        if lost:
            log.warning("hangup_not_seen", node=self.node_name, legs=len(lost))

    def housekeeping(self) -> None:
        expired = self.tracker.expire(self._clock())
        if expired:
            log.warning("legs_expired", node=self.node_name, count=len(expired))


class Daemon:
    """The running ``eslcdr run``: its stages, greenlets and shutdown.

    Shutdown: stop accepting HTTP, close the Event Sockets, drain the writer,
    close the database.  SIGHUP re-reads the tokens file and the ``[log] level``
    (in the "reload" greenlet).  Under systemd the daemon speaks the notify
    protocol (service/notify.py): READY=1 once the database is open and the API
    listens, STATUS=/WATCHDOG=1 from the monitor (service/monitor.py),
    RELOADING=1 around a reload and STOPPING=1 when the shutdown starts.
    """

    def __init__(self, config: Config, api_factory: Callable | None = None, notifier: Notifier | None = None) -> None:
        self.config = config
        self._api_factory = api_factory
        self.notifier = notifier if notifier is not None else Notifier.from_environ()
        self.log_level = config.log.level
        self._stop = gevent.event.Event()
        self._reload = gevent.event.Event()
        self._resynced = gevent.event.Event()  # wakes the housekeeping: legs to write off
        self._greenlets: list[gevent.Greenlet] = []
        self.conn: sqlite3.Connection | None = None
        self.writer: Writer | None = None
        self.retention: Retention | None = None
        self.tokens: TokenStore | None = None
        self.pipelines: dict[str, Pipeline] = {}
        self.nodes: dict[str, NodeConnection] = {}
        self.http = None
        self.monitor: Monitor | None = None
        self.backfill: Backfill | None = None
        self._backfilling: gevent.Greenlet | None = None  # its greenlet
        self.started_at = time.time()
        self.exit_code = 0

    # -- start --------------------------------------------------------------
    def start(self) -> None:
        cfg = self.config
        keep_pool_threads()  # before anything runs in the pool
        # One token set for the API and retention (a broken file at start
        # raises TokenFileError: a configuration error).
        self.tokens = TokenStore(cfg.api.tokens_file)
        # systemctl status shows this while a one-time migration (e.g. the
        # auto_vacuum VACUUM of a big file) keeps the service from being ready.
        self.notifier.status("opening the database %s" % cfg.store.path)
        self.conn = connect_writer(cfg.store.path)
        try:
            spool = Spool(cfg.store.spool_path)
        except OSError as exc:
            # Ingest matters more: run without a spool, say so loudly.
            log.error("spool_unusable", path=cfg.store.spool_path, error=str(exc))
            spool = None
        self.writer = Writer(
            self.conn,
            batch_size=cfg.store.batch_size,
            flush_interval=cfg.store.flush_interval,
            capacity=cfg.store.queue_size,
            spool=spool,
        )
        remembered = recent_interaction_links(self.conn, 25_000)
        starts = recent_interaction_starts(self.conn, 25_000)
        for node in cfg.nodes:
            pipeline = Pipeline(node, cfg, self.writer)
            pipeline.tracker.remember_interactions(remembered)
            pipeline.tracker.remember_interaction_starts(starts)
            self.pipelines[node.name] = pipeline
            self.nodes[node.name] = NodeConnection(
                node, pipeline.on_event, self._on_resync(pipeline), decoder=pipeline.decoder,
                on_pause=self.writer.quiet_until, on_subscribe=pipeline.tracker.subscribing,
            )
        self.supervise("writer", self.writer.run)
        self.supervise("spooler", self.writer.run_spooler)
        if cfg.backfill.json_cdr_dir:
            # The folder is the local FreeSWITCH's: the [esl] node's.
            local = cfg.nodes[0].name
            self.backfill = Backfill(
                cfg.backfill.json_cdr_dir,
                self.pipelines[local],
                self.writer,
                cfg.store.path,
                lambda: self.nodes[local].connected_since,
            )
            self.pipelines[local].backfill = self.backfill
            self._backfilling = self.supervise("backfill", self.backfill.run)
        for name, connection in self.nodes.items():
            self.supervise("esl:" + name, self._run_node(connection))
        self.supervise("housekeeping", self._housekeeping)
        self.retention = Retention(cfg, self.writer, self._stop, self.tokens)
        self.supervise("retention", self.retention.run)
        if self._api_factory is not None:
            self.http = self._api_factory(self)
            self.http.start()
        self.monitor = Monitor(
            self,
            self.notifier,
            summary_interval=cfg.log.summary_interval,
            stall_timeout=cfg.store.stall_timeout,
        )
        self.supervise("monitor", lambda: self.monitor.run(self._stop))
        self.supervise("reload", self._reloader)
        log.info(
            "daemon_started",
            version=__version__,
            db=cfg.store.path,
            nodes=[node.name for node in cfg.nodes],
            api="%s:%d" % (cfg.api.host, self.http.port) if self.http is not None else None,
            systemd=self.notifier.enabled,
            watchdog_interval=self.notifier.watchdog_interval,
        )
        # The database is open and the API listens: ready, even while
        # FreeSWITCH is still unreachable (the nodes keep reconnecting).
        self.notifier.ready(status_text(self.status()))

    def _on_resync(self, pipeline: Pipeline) -> Callable[[list[dict[str, str]]], list[str]]:
        def on_resync(rows: list[dict[str, str]]) -> list[str]:
            added = pipeline.on_resync(rows)
            if pipeline.tracker.suspected:
                self._resynced.set()
            return added

        return on_resync

    def _run_node(self, connection: NodeConnection) -> Callable[[], None]:
        def run() -> None:
            connection.run()
            if connection.fatal:
                log.error("fatal", node=connection.node.name, error=connection.fatal)
                self.exit_code = 2
                self._stop.set()

        return run

    def supervise(self, name: str, target: Callable[[], None]) -> gevent.Greenlet:
        """Run ``target`` in a greenlet until the daemon stops; restart it
        if it crashes."""
        greenlet = spawn_supervised(name, target, self._stop)
        self._greenlets.append(greenlet)
        return greenlet

    @property
    def greenlets(self) -> list[gevent.Greenlet]:
        return list(self._greenlets)

    def _reloader(self) -> None:
        while not self._stop.is_set():
            # Woken by SIGHUP or the stop: an idle daemon is not woken to poll.
            gevent.wait([self._reload, self._stop], count=1, timeout=IDLE_WAKE)
            if self._reload.is_set():
                self._reload.clear()
                self.reload()

    def reload(self) -> None:
        """Re-read the tokens file and ``[log] level`` (SIGHUP, ``systemctl
        reload``).  Every other setting needs a restart.  One line: ``reloaded``
        (info) when both applied, else ``reload_refused`` (error) naming what
        applied, what was refused and why (the previous value stays)."""
        self.notifier.reloading()
        source = self.config.source
        applied, refused, errors = [], [], {}
        if not source.startswith("<"):  # else built in memory (demo, tests): no file to re-read
            try:
                level = load_config(source).log.level
            except ConfigError as exc:
                refused.append("log_level")
                errors["config_error"] = str(exc)
            else:
                applied.append("log_level")
                if level != self.log_level:
                    logs.configure(level, self.config.log.format)
                    self.log_level = level
        if self.tokens is not None:
            self.tokens.reload()
            (refused if self.tokens.error else applied).append("tokens_file")
            if self.tokens.error:
                errors["tokens_error"] = self.tokens.error
        fields = dict(applied=applied, refused=refused, **errors, log_level=self.log_level,
                      tokens=self.tokens.count if self.tokens else None, config=source)
        if refused:
            log.error("reload_refused", **fields)
        else:
            log.info("reloaded", **fields)
        self.notifier.ready(status_text(self.status()))

    def request_reload(self) -> None:
        self._reload.set()

    def _housekeeping(self) -> None:
        """Every second while a resync's marked legs wait to be written off
        (the resync wakes it), else once a sweep (HOUSEKEEPING_INTERVAL)."""
        last_sweep = time.monotonic()
        while not self._stop.is_set():
            watching = any(pipeline.tracker.suspected for pipeline in self.pipelines.values())
            next_sweep = last_sweep + HOUSEKEEPING_INTERVAL - time.monotonic()
            timeout = min(LOST_CHECK_INTERVAL, next_sweep) if watching else next_sweep
            gevent.wait([self._resynced, self._stop], count=1, timeout=max(0.0, timeout))
            self._resynced.clear()
            if self._stop.is_set():
                break
            sweep = time.monotonic() - last_sweep >= HOUSEKEEPING_INTERVAL
            for pipeline in self.pipelines.values():
                pipeline.write_off_lost()
                if sweep:
                    pipeline.housekeeping()
            if sweep:
                last_sweep = time.monotonic()

    # -- state ----------------------------------------------------------------
    def trackers(self) -> dict[str, LegTracker]:
        """Node name -> its leg tracker (read by the live channels route)."""
        return {name: pipeline.tracker for name, pipeline in self.pipelines.items()}

    def status(self) -> DaemonStatus:
        """The live figures now: the one place they are read from the
        daemon's objects (/health, /metrics, STATUS=, the summary line and
        the demo's status line all show this snapshot)."""
        return DaemonStatus(
            version=__version__,
            uptime_seconds=round(time.time() - self.started_at, 1),
            nodes=tuple(
                NodeStatus(
                    name=name,
                    state=connection.state,
                    host=connection.node.host,
                    port=connection.node.port,
                    connected_since=connection.connected_since,
                    reconnects=connection.reconnects,
                    unresponsive=connection.unresponsive,
                    protocol_errors=connection.protocol_errors,
                    events=self.pipelines[name].events,
                    cdrs=self.pipelines[name].cdrs,
                    live_legs=len(self.pipelines[name].tracker),
                    last_error=connection.last_error,
                )
                for name, connection in self.nodes.items()
            ),
            writer=None if self.writer is None else WriterStatus.of(self.writer),
            store=self.retention.health() if self.retention else {},
            backfill=self.backfill.stats() if self.backfill is not None else None,
        )

    def health(self) -> dict:
        """The body of /health."""
        return self.status().health()

    # -- stop ---------------------------------------------------------------
    def request_stop(self) -> None:
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._stop.wait(timeout=timeout)

    def serve_forever(self) -> int:
        gevent.signal_handler(signal.SIGTERM, self.request_stop)
        gevent.signal_handler(signal.SIGINT, self.request_stop)
        gevent.signal_handler(signal.SIGHUP, self.request_reload)
        while not self._stop.wait(timeout=3600):
            pass
        self.shutdown()
        return self.exit_code

    def shutdown(self) -> None:
        self._stop.set()
        self.notifier.stopping("stopping: draining %d CDRs" % (self.writer.backlog if self.writer else 0))
        log.info("shutdown_begin")
        if self.http is not None:
            self.http.stop(timeout=5)
        for connection in self.nodes.values():
            connection.stop()
        if self.backfill is not None:
            self.backfill.stop()
        if self._backfilling is not None:  # what its scan submits before it stops is drained too
            self._backfilling.join(timeout=SHUTDOWN_DRAIN_TIMEOUT)
        drained = True
        if self.writer is not None:
            drained = self.writer.wait_idle(timeout=SHUTDOWN_DRAIN_TIMEOUT)
            self.writer.stop()
        gevent.joinall(self._greenlets, timeout=SHUTDOWN_DRAIN_TIMEOUT)
        for greenlet in self._greenlets:
            if not greenlet.dead:
                greenlet.kill(block=True, timeout=2)
        if self.conn is not None:
            self.conn.close()
        self.notifier.close()
        log.info(
            "shutdown_done",
            drained=drained,
            unwritten=self.writer.backlog if self.writer else 0,
            written=self.writer.written if self.writer else 0,
        )
