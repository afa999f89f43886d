"""``eslcdr collect``: the process that runs one worker per node.

Start: read the config, connect to PostgreSQL and migrate (an unreachable
server is a one-line error and exit 1: systemd restarts the unit), create
the partitions ahead of need, start one supervised greenlet per node, one
joining the legs stored before schema 7 across nodes (``join_existing``), a
housekeeping greenlet (partitions for the coming months, checked hourly),
and the HTTP server (the daemon's hardened server, bounded by the
``[collector]`` limits): the central API over PostgreSQL (``readside``, the
fleet's live channels), ``/health`` and ``/metrics``; then tell systemd
``READY=1`` (and ``WATCHDOG=1`` every ``WATCHDOG_USEC/2``).

Stop (SIGTERM/SIGINT only set an event): stop the HTTP server, interrupt
the workers that wait on the network or sleep, wait (bounded) for those
inside a PostgreSQL transaction to commit it, close, exit 0.
"""

from __future__ import annotations

import datetime as dt
import signal
import socket
import time
from typing import TYPE_CHECKING, Callable

import gevent
import gevent.event
import psycopg
import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .. import __version__
from ..api.app import assemble
from ..api.wsgi import CdrApi
from ..service.notify import Notifier
from ..web.server import make_server
from ..supervise import spawn_supervised
from . import pginteractions, pgmigrations, pgschema
from .pgstore import pg_connect
from .config import CollectorConfig
from .fleet import Fleet
from .readside import PgReadSide
from .worker import NodeWorker

if TYPE_CHECKING:
    from gevent.pywsgi import WSGIServer

log = structlog.get_logger(__name__)

SHUTDOWN_TIMEOUT = 30.0
PARTITION_CHECK_INTERVAL = 3600.0
STATUS_INTERVAL = 10.0
JOIN_EXISTING = "join-existing"  # the one-off greenlet (pginteractions.join_existing)


# ------------------------------------------------------------------ metrics


class CollectorMetrics:
    """Turns the workers' plain counters into metric families at scrape time."""

    def __init__(self, collector: "Collector") -> None:
        self._collector = collector

    def collect(self):
        def family(cls, name, doc):
            return cls(name, doc, labels=["node"])

        stored = family(CounterMetricFamily, "eslcdr_collect_rows_stored", "Rows inserted or replaced in PostgreSQL")
        rejected = family(CounterMetricFamily, "eslcdr_collect_rows_rejected", "Records kept in collector_rejects")
        batches = family(CounterMetricFamily, "eslcdr_collect_batches", "Committed batches")
        errors = family(CounterMetricFamily, "eslcdr_collect_errors", "Failed pulls (retried)")
        restarts = family(CounterMetricFamily, "eslcdr_collect_db_restarts", "Node database replaced: restarted at seq 0")
        rate = family(GaugeMetricFamily, "eslcdr_collect_rows_per_second", "Rows stored per second (last 10 s)")
        lag_rows = family(GaugeMetricFamily, "eslcdr_collect_lag_rows", "Rows the node has that are not stored yet")
        lag_seconds = family(GaugeMetricFamily, "eslcdr_collect_lag_seconds", "Seconds since the node was last caught up")
        cursor = family(GaugeMetricFamily, "eslcdr_collect_cursor", "Last seq stored from the node")
        up = family(GaugeMetricFamily, "eslcdr_collect_up", "1 unless the last pull failed")
        last_error = GaugeMetricFamily(
            "eslcdr_collect_last_error_timestamp_seconds", "When the last error happened (0: none), by its kind (side:name)",
            labels=["node", "error"]
        )
        for name, worker in self._collector.workers.items():
            stored.add_metric([name], worker.rows_stored)
            rejected.add_metric([name], worker.rows_rejected)
            batches.add_metric([name], worker.batches)
            errors.add_metric([name], worker.errors)
            restarts.add_metric([name], worker.db_restarts)
            rate.add_metric([name], worker.rows_per_second)
            if worker.lag_rows is not None:
                lag_rows.add_metric([name], worker.lag_rows)
            if worker.lag_seconds is not None:
                lag_seconds.add_metric([name], worker.lag_seconds)
            cursor.add_metric([name], worker.after)
            up.add_metric([name], 0 if worker.state == "error" else 1)
            last_error.add_metric([name, worker.last_error_kind or ""], worker.last_error_at or 0)
        yield from (stored, rejected, batches, errors, restarts, rate, lag_rows, lag_seconds, cursor, up, last_error)


def make_app(config: CollectorConfig, health: Callable[[], dict], registry: CollectorRegistry) -> CdrApi:
    """The central API over PostgreSQL (the Kazoo routes of a node, no feed), its
    live channels the fleet's (``fleet.Fleet``), ``/health`` (503 unless every
    node is fine) and ``/metrics``."""
    api = config.api
    read = PgReadSide(config.dsn, api.statement_timeout, heavy_slots=api.heavy_queries,
                      connect_timeout=config.timeout, redact=config.redact)
    return assemble(api, socket.gethostname(), read, health=health, registry=registry,
                    channels=Fleet(config))


# ------------------------------------------------------------------ the process


class Collector:
    def __init__(self, config: CollectorConfig, connect: Callable | None = None,
                 notifier: Notifier | None = None) -> None:
        self.config = config
        self.notifier = notifier if notifier is not None else Notifier.from_environ()
        self._stop = gevent.event.Event()
        self.workers: dict[str, NodeWorker] = {}
        self._greenlets: dict[str, gevent.Greenlet] = {}
        self._connect = connect
        self.http: WSGIServer | None = None  # server.make_server's: the limits of [collector]
        self.app: CdrApi | None = None
        self.started_at = time.time()

    def start(self) -> None:
        cfg = self.config
        # A migration may rewrite a big table: its statements are not bounded.
        with pg_connect(cfg.dsn, cfg.timeout, statement_timeout=None) as conn:
            found = pgmigrations.migrate(conn)
            created = pgschema.ensure_partitions(conn, dt.datetime.now(pgschema.UTC))
        log.info("collect_schema_ready", found_version=found, version=pgmigrations.SCHEMA_VERSION, partitions_created=created)
        self._spawn(JOIN_EXISTING, self._join_existing)
        for node in cfg.nodes:
            worker = NodeWorker(node, cfg, self._stop, connect=self._connect)
            self.workers[node.name] = worker
            self._spawn("node:" + node.name, worker.run)
        self._spawn("partitions", self._partitions)
        registry = CollectorRegistry()
        registry.register(CollectorMetrics(self))
        self.app = make_app(cfg, self.health, registry)
        self.http = make_server(self.app, cfg.api.host, cfg.api.port, limits=cfg.api.limits)
        self.http.start()
        log.info("collect_started", version=__version__, nodes=[n.name for n in cfg.nodes],
                 listen="%s:%d" % (cfg.api.host, self.http.server_port))
        self.notifier.ready(self.status_text())

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        """Run target in a greenlet; restart it if it crashes."""
        self._greenlets[name] = spawn_supervised(name, target, self._stop, redact=self.config.redact)

    def _join_existing(self) -> None:
        """Once: the legs stored before schema 7 that crossed nodes (a no-op
        after), beside the workers (each chunk takes its accounts' locks)."""
        with pg_connect(self.config.dsn, self.config.timeout) as conn:
            pginteractions.join_existing(conn, stopped=self._stop.is_set)
        self._greenlets.pop(JOIN_EXISTING, None)  # done: not a greenlet that must keep running

    def _partitions(self) -> None:
        while not self._stop.wait(timeout=PARTITION_CHECK_INTERVAL):
            try:
                with pg_connect(self.config.dsn, self.config.timeout) as conn:
                    created = pgschema.ensure_partitions(conn, dt.datetime.now(pgschema.UTC))
                if created:
                    log.info("collect_partitions_created", partitions=created)
            except psycopg.Error as exc:
                log.error("collect_partitions_failed", error=self.config.redact(str(exc)))

    def health(self) -> dict:
        nodes = {name: worker.health() for name, worker in self.workers.items()}
        healthy = all(n["state"] != "error" for n in nodes.values())
        return {
            "status": "ok" if healthy else "degraded",
            "version": __version__,
            "uptime_seconds": round(time.time() - self.started_at, 1),
            "rows_per_second": round(sum(n["rows_per_second"] for n in nodes.values()), 1),
            "nodes": nodes,
        }

    @property
    def port(self) -> int:
        return self.http.server_port if self.http else 0

    def request_stop(self) -> None:
        self._stop.set()

    def status_text(self) -> str:
        workers = self.workers.values()
        failing = sum(1 for w in workers if w.state == "error")
        rate = sum(w.rows_per_second for w in workers)
        return "%d nodes, %d failing, %.0f rows/s, %d rows stored" % (
            len(self.workers), failing, rate, sum(w.rows_stored for w in workers))

    def alive(self) -> bool:
        """Every greenlet still runs (the supervisor restarts crashed ones)."""
        return all(not g.dead for g in self._greenlets.values())

    def serve_forever(self) -> int:
        gevent.signal_handler(signal.SIGTERM, self.request_stop)
        gevent.signal_handler(signal.SIGINT, self.request_stop)
        interval = self.notifier.watchdog_interval
        # STATUS= at least every STATUS_INTERVAL; WATCHDOG=1 only while the
        # workers run (a wedged process is restarted by systemd).
        tick = min(interval, STATUS_INTERVAL) if interval else STATUS_INTERVAL
        while not self._stop.wait(timeout=tick):
            if interval and self.alive():
                self.notifier.watchdog()
            self.notifier.status(self.status_text())
        self.shutdown()
        return 0

    def shutdown(self) -> None:
        self._stop.set()
        self.notifier.stopping("stopping: finishing the current batches")
        log.info("collect_shutdown_begin")
        if self.http is not None:
            self.http.stop(timeout=2)
        deadline = time.monotonic() + SHUTDOWN_TIMEOUT
        while time.monotonic() < deadline:
            alive = [(name, g) for name, g in self._greenlets.items() if not g.dead]
            if not alive:
                break
            for name, greenlet in alive:
                worker = self.workers.get(name.split(":", 1)[1]) if name.startswith("node:") else None
                # A worker inside a transaction finishes it and then sees
                # the stop event; one waiting on the network is interrupted.
                if worker is None or worker.interruptible:
                    greenlet.kill(block=False)
            gevent.sleep(0.05)
        for name, greenlet in self._greenlets.items():
            if not greenlet.dead:
                log.error("collect_shutdown_forced", greenlet=name)
                greenlet.kill(block=True, timeout=2)
        for worker in self.workers.values():
            worker.close()
        if self.app is not None:
            self.app.close()
        log.info("collect_shutdown_done", rows_stored=sum(w.rows_stored for w in self.workers.values()))
        self.notifier.close()
