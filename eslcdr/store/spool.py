"""The spool: CDRs that SQLite cannot take yet, on disk (docs/database.md).

An append-only file of JSON lines, one CDR record per line, each append
fsynced before it returns.  The writer appends when its in-memory backlog
is full or SQLite keeps failing, and replays the file into SQLite when it
takes writes again (and at start): it reads from the offset it has reached,
inserts (idempotent on call_id, so a line replayed twice -- after a crash
between the commit and the truncation -- still gives one row), and only
once every line is committed truncates the file.  A torn last line (a crash
mid-append) is cut off at open (``Spool._open``).

Blocking file I/O: callers run these methods in the thread pool and hold
``lock`` (a gevent lock) around them, so an append never interleaves with a
read or the truncation.  ``SpoolFeed`` is the writer's side (store/writer.py):
the spooler greenlet, spills, and merges applied as records are read back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterable

import gevent.event
import gevent.lock
import structlog

log = structlog.get_logger(__name__)

READ_CHUNK = 1 << 20


class Spool:
    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.lock = gevent.lock.BoundedSemaphore()
        # Bytes of the file already replayed and committed to SQLite.
        self.offset = 0
        self.size = 0
        # Records in the file not yet replayed (exact within this process).
        self.backlog = 0
        self.appended = 0
        self.replayed = 0
        self.skipped = 0
        self._open()

    def _open(self) -> None:
        """Count the lines and cut off a torn last line.

        A crash in the middle of an append leaves a torn last line: it is cut
        off with a warning (its CDR was not reported as spooled, so it is
        accounted for by the error log of the caller, never lost silently), so
        the next append starts on a line of its own.

        The file is opened for appending (created if need be) here, not at the
        first outage: a spool that cannot be written (its folder read-only or
        not a folder) raises at start, while nothing needs it yet.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
        # Count the lines a chunk at a time: a spool may be far larger than memory.
        lines = end = total = 0
        with open(self.path, "rb") as f:
            while True:
                chunk = f.read(READ_CHUNK)
                if not chunk:
                    break
                count = chunk.count(b"\n")
                if count:
                    lines += count
                    end = total + chunk.rfind(b"\n") + 1
                total += len(chunk)
        if end < total:
            log.warning("spool_torn_line_skipped", path=str(self.path), bytes=total - end)
            self.skipped += 1
            with open(self.path, "r+b") as f:
                f.truncate(end)
                os.fsync(f.fileno())
        self.size = end
        self.backlog = lines
        if self.backlog:
            log.warning("spool_found", path=str(self.path), records=self.backlog)

    @property
    def empty(self) -> bool:
        return self.offset >= self.size

    def append(self, records: Iterable[dict]) -> int:
        """Write the records, fsync; raise OSError if they could not be (then
        nothing counts as written: a partial line is cut off again)."""
        lines = [json.dumps(r, ensure_ascii=False, separators=(",", ":"), default=_jsonable) + "\n"
                 for r in records]
        if not lines:
            return 0
        data = "".join(lines).encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            try:
                written = os.write(fd, data)
                while written < len(data):
                    written += os.write(fd, data[written:])
                os.fsync(fd)
            except OSError:
                # Leave no partial line behind for the next append to join.
                try:
                    os.ftruncate(fd, self.size)
                except OSError:
                    pass
                raise
        finally:
            os.close(fd)
        self.size += len(data)
        self.backlog += len(lines)
        self.appended += len(lines)
        return len(lines)

    def read(self, max_records: int) -> tuple[list[dict], int]:
        """Up to ``max_records`` records after the replayed offset, and the
        offset after them (pass it to ``committed`` once they are stored)."""
        records: list[dict] = []
        offset = self.offset
        if offset >= self.size:
            return records, offset
        with open(self.path, "rb") as f:
            f.seek(offset)
            while len(records) < max_records and offset < self.size:
                line = f.readline(min(self.size - offset, 64 * READ_CHUNK))
                if not line:
                    break
                offset += len(line)
                try:
                    record = json.loads(line)
                except ValueError:
                    self.skipped += 1
                    log.error("spool_line_unreadable", path=str(self.path), at=offset - len(line),
                              line=line[:4000].decode("utf-8", "replace"))
                    continue
                if isinstance(record, dict):
                    records.append(record)
        return records, offset

    def committed(self, offset: int, count: int) -> None:
        self.offset = offset
        self.backlog = max(0, self.backlog - count)
        self.replayed += count

    def truncate_if_replayed(self) -> bool:
        """Empty the file once everything in it is committed."""
        if self.offset < self.size or self.size == 0:
            return False
        with open(self.path, "r+b") as f:
            f.truncate(0)
            os.fsync(f.fileno())
        log.info("spool_replayed", path=str(self.path), records=self.replayed)
        self.offset = self.size = self.backlog = 0
        return True


class SpoolFeed:
    """What the writer hands to its spool and takes back from it.

    Records past the writer's capacity wait in ``overflow`` (bounded by the
    writer) for the spooler greenlet (``run``), which appends them, fsynced;
    after a failed write the writer spills its backlog (``spill``).  Merges
    of interactions seen while records sit in the file are applied as they
    are read back (``read``).  The file's I/O goes through ``offload`` (the
    writer's thread), holding the spool's lock.  Only when the file cannot
    be written is a record lost: logged in full, at error.
    """

    def __init__(self, spool: Spool, offload: Callable[[Callable], object], on_spooled: Callable[[], None],
                 idle_wait: float) -> None:
        self.spool = spool
        self._offload = offload
        self._on_spooled = on_spooled  # records to replay: wakes the writer
        self._idle_wait = idle_wait
        self.overflow: list[dict] = []
        self.wake = gevent.event.Event()
        self.merges: dict[str, str] = {}
        self.spooled = 0
        self.lost = 0
        self.stopping = False

    @property
    def backlog(self) -> int:
        """Records in the file (or on their way to it) not yet in SQLite."""
        return len(self.overflow) + self.spool.backlog

    def hand_over(self, record: dict, limit: int) -> bool:
        if len(self.overflow) >= limit:
            return False
        self.overflow.append(record)
        if not self.wake.is_set():
            self.wake.set()
        return True

    def note_merge(self, old: str, new: str) -> None:
        if self.spool.size or self.overflow:
            self.merges[old] = new

    def _io(self, work: Callable):
        with self.spool.lock:
            return self._offload(work)

    def run(self) -> None:
        """The spooler greenlet: append the overflow, a batch per fsync."""
        spool = self.spool
        while True:
            if not self.overflow:
                if self.stopping:
                    return
                self.wake.wait(timeout=self._idle_wait)
                self.wake.clear()
                continue
            batch = self.overflow[:]
            try:
                self._io(lambda: spool.append(batch))
            except OSError as exc:
                del self.overflow[: len(batch)]
                self.lost += len(batch)
                for record in batch:
                    log.error("cdr_lost_spool_unwritable", spool=str(spool.path), error=str(exc), record=record)
                continue
            del self.overflow[: len(batch)]
            self.spooled += len(batch)
            log.warning("cdrs_spooled", records=len(batch), spool_backlog=self.backlog)
            self._on_spooled()

    def spill(self, pending: list[dict]) -> None:
        """Move ``pending`` (the writer's backlog) to the file; on failure
        keep it in memory: SQLite may come back before the spool does."""
        spool = self.spool
        batch = pending[:]
        try:
            self._io(lambda: spool.append(batch))
        except OSError as exc:
            log.error("spool_unwritable", spool=str(spool.path), error=str(exc), backlog=len(pending))
            return
        del pending[: len(batch)]
        self.spooled += len(batch)
        log.warning("backlog_spooled", records=len(batch), spool_backlog=self.backlog)

    def read(self, max_records: int) -> tuple[list[dict], int]:
        """The next records to replay, merges applied, and the offset after them."""
        records, offset = self._io(lambda: self.spool.read(max_records))
        merges = self.merges
        for record in records:
            interaction_id = record.get("interaction_id")
            for _ in range(16):  # follow chained merges, bounded
                if interaction_id not in merges:
                    break
                interaction_id = merges[interaction_id]
            if interaction_id is not None:
                record["interaction_id"] = interaction_id
        return records, offset

    def replayed(self, offset: int, count: int) -> None:
        """The records ``read`` gave are committed: empty the file once all are."""
        spool = self.spool
        spool.committed(offset, count)
        # (no switch between the lock's release and the checks: gevent wakes
        # a waiter on the next loop turn)
        if spool.empty and not self.overflow and self._io(spool.truncate_if_replayed) and not self.overflow:
            self.merges.clear()


def _jsonable(value: object) -> object:
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return str(value)
