"""The running daemon's figures at one moment: one snapshot, read in one place.

``Daemon.status()`` builds a ``DaemonStatus`` from the counters of its
objects (connections, pipelines, writer, retention, backfill); everything
that shows them reads the snapshot, never the objects: ``/health``
(``DaemonStatus.health``), Prometheus (service/metrics.py), systemd's ``STATUS=``
and the summary log line (service/monitor.py), the demo's status line (service/demo.py).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

# The fields of NodeStatus and WriterStatus are /health's keys, in its order.


def _fields(value: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    return {f.name: getattr(value, f.name) for f in fields(value) if f.name not in skip}


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """One FreeSWITCH node: its Event Socket connection and its pipeline."""

    name: str
    state: str
    host: str
    port: int
    connected_since: float | None
    reconnects: int
    # Connections declared dead: FreeSWITCH silent, its reply to a ping missing (esl/liveness.py).
    unresponsive: int
    protocol_errors: int
    events: int
    cdrs: int
    live_legs: int
    last_error: str | None

    @property
    def connected(self) -> bool:
        return self.state == "connected"

    def health(self) -> dict[str, Any]:
        return _fields(self, skip=("name",))


@dataclass(frozen=True, slots=True)
class WriterStatus:
    """The one SQLite writer (all zero before it exists)."""

    backlog: int = 0
    written: int = 0
    duplicates: int = 0
    refused: int = 0
    failures: int = 0
    deleted: int = 0
    spool_backlog: int = 0
    spooled: int = 0
    lost: int = 0
    spool_merges: int = 0
    merges_waiting: int = 0
    merges_lost: int = 0
    last_error: str | None = None
    last_write_at: float | None = None

    @classmethod
    def of(cls, writer: Any) -> "WriterStatus":
        """The figures of a ``writer.Writer`` (its attributes of these names)."""
        return cls(**{f.name: getattr(writer, f.name) for f in fields(cls)})

    @property
    def healthy(self) -> bool:
        """Writing (a past error no longer holds CDRs back) and the spool
        empty (of CDRs and of interaction merges)."""
        return (self.last_error is None or self.backlog == 0) and self.spool_backlog == 0 and self.spool_merges == 0

    def health(self) -> dict[str, Any]:
        return _fields(self)


@dataclass(frozen=True, slots=True)
class DaemonStatus:
    version: str
    uptime_seconds: float
    nodes: tuple[NodeStatus, ...]
    # None before the writer exists (Prometheus then leaves its families out).
    writer: WriterStatus | None
    # Retention's figures (``Retention.health``: file size, oldest row,
    # collectors by their shortened key); ``bytes`` is None before the first
    # storage check, {} without retention.
    store: Mapping[str, Any]
    # ``Backfill.stats()``; None when [backfill] json_cdr_dir is off.
    backfill: Mapping[str, Any] | None

    @property
    def connected(self) -> int:
        return sum(1 for node in self.nodes if node.connected)

    @property
    def live_legs(self) -> int:
        return sum(node.live_legs for node in self.nodes)

    @property
    def written(self) -> int:
        return self.writer.written if self.writer else 0

    @property
    def backlog(self) -> int:
        return self.writer.backlog if self.writer else 0

    @property
    def spool_backlog(self) -> int:
        return self.writer.spool_backlog if self.writer else 0

    @property
    def healthy(self) -> bool:
        """Every node connected and the writer healthy."""
        return self.connected == len(self.nodes) and (self.writer is None or self.writer.healthy)

    def health(self) -> dict[str, Any]:
        """The body of ``/health``."""
        return {
            "status": "ok" if self.healthy else "degraded",
            "version": self.version,
            "uptime_seconds": self.uptime_seconds,
            "nodes": {node.name: node.health() for node in self.nodes},
            "store": dict(self.store),
            "writer": (self.writer or WriterStatus()).health(),
            "backfill": dict(self.backfill) if self.backfill is not None else None,
        }
