"""The spool: CDRs that SQLite cannot take yet, on disk (docs/configuration.md).

An append-only file of JSON lines, one CDR record (an object) or interaction
merge (``["merge", old id, new id]``) per line, each append fsynced.  The
writer appends when its in-memory backlog is full or SQLite keeps failing,
and replays the file into SQLite when it takes writes again (and at start):
it reads from the offset it has reached, inserts (idempotent on call_id, so a
line replayed twice -- after a crash between the commit and the truncation --
still gives one row), and only once every line is committed truncates the
file.  A torn last line (a crash mid-append) is cut off at open (``_open``).

Blocking file I/O: callers run these methods in the thread pool and hold
``lock`` (a gevent lock) around them, so an append never interleaves with a
read or the truncation.  ``SpoolFeed`` and ``MergeBacklog`` are the writer's
side (store/writer.py): the spooler greenlet, spills, merges in memory.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Callable, ContextManager, Iterable, Iterator, NamedTuple

import gevent.event
import gevent.lock
import structlog

log = structlog.get_logger(__name__)

READ_CHUNK = 1 << 20
# A merge line is a JSON array starting with this; a record line is an object.
MERGE = "merge"
MERGE_LINE = b"["  # how a merge line starts in the file (a record's: b"{")


class Merge(NamedTuple):
    """Interaction ``old`` became ``new``: rows (and records replayed before
    this line) with ``old`` move to ``new`` (db.insert_records' merges)."""

    old: str
    new: str


class Spool:
    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.lock = gevent.lock.BoundedSemaphore()
        # Bytes of the file already replayed and committed to SQLite.
        self.offset = 0
        self.size = 0
        # Records, and merge lines, in the file not yet replayed (exact
        # within this process).
        self.backlog = 0
        self.merges = 0
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
        lines = merges = end = total = 0
        line_start = True
        with open(self.path, "rb") as f:
            while True:
                chunk = f.read(READ_CHUNK)
                if not chunk:
                    break
                count = chunk.count(b"\n")
                merges += _merge_lines(chunk, line_start)
                if count:
                    lines += count
                    end = total + chunk.rfind(b"\n") + 1
                total += len(chunk)
                line_start = chunk[-1:] == b"\n"
            f.seek(end)
            merges -= end < total and _merge_lines(f.read(1))  # a torn merge line
        if end < total:
            log.warning("spool_torn_line_skipped", path=str(self.path), bytes=total - end)
            self.skipped += 1
            with open(self.path, "r+b") as f:
                f.truncate(end)
                os.fsync(f.fileno())
        self.size = end
        self.backlog = lines - merges
        self.merges = merges
        if lines:
            log.warning("spool_found", path=str(self.path), records=self.backlog, merges=merges)

    @property
    def empty(self) -> bool:
        return self.offset >= self.size

    def append(self, records: Iterable[dict | Merge]) -> int:
        """Write the records (and merges, in order), fsync; raise OSError if
        they could not be (then nothing counts as written: a partial line is
        cut off again).  Returns how many lines were written."""
        lines = [json.dumps([MERGE, *r] if isinstance(r, Merge) else r, ensure_ascii=False,
                            separators=(",", ":"), default=_jsonable) + "\n"
                 for r in records]
        if not lines:
            return 0
        data = "".join(lines).encode("utf-8")
        merges = _merge_lines(data)
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
        self.backlog += len(lines) - merges
        self.merges += merges
        self.appended += len(lines) - merges
        return len(lines)

    def read(self, max_lines: int) -> tuple[list[dict], list[Merge], int]:
        """The records and merges of up to ``max_lines`` lines after the
        replayed offset, and the offset after them (pass it to ``committed``
        once they are stored: the records first, then the merges).  A merge
        already moves the records read before it: the same ids as once they
        are stored, without rewriting their rows (``_merge_interaction``)."""
        records: list[dict] = []
        merges: list[Merge] = []
        groups: dict[object, list[dict]] = {}  # interaction id -> the records read with it
        offset = self.offset
        if offset >= self.size:
            return records, merges, offset
        with open(self.path, "rb") as f:
            f.seek(offset)
            while len(records) + len(merges) < max_lines and offset < self.size:
                line = f.readline(min(self.size - offset, 64 * READ_CHUNK))
                if not line:
                    break
                offset += len(line)
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                if isinstance(record, dict):
                    records.append(record)
                    groups.setdefault(record.get("interaction_id"), []).append(record)
                elif _is_merge(record):
                    merge = Merge(record[1], record[2])
                    merges.append(merge)
                    moved = groups.pop(merge.old, ())
                    for moving in moved:
                        moving["interaction_id"] = merge.new
                    groups.setdefault(merge.new, []).extend(moved)
                else:
                    self.skipped += 1
                    log.error("spool_line_unreadable", path=str(self.path), at=offset - len(line),
                              line=line[:4000].decode("utf-8", "replace"))
        return records, merges, offset

    def committed(self, offset: int, count: int, merges: int = 0) -> None:
        """The lines up to ``offset`` are committed: ``count`` records, ``merges`` merges."""
        self.offset = offset
        self.backlog = max(0, self.backlog - count)
        self.merges = max(0, self.merges - merges)
        self.replayed += count

    def truncate_if_replayed(self) -> bool:
        """Empty the file once everything in it is committed."""
        if self.offset < self.size or self.size == 0:
            return False
        with open(self.path, "r+b") as f:
            f.truncate(0)
            os.fsync(f.fileno())
        log.info("spool_replayed", path=str(self.path), records=self.replayed)
        self.offset = self.size = self.backlog = self.merges = 0
        return True


class SpoolFeed:
    """What the writer hands to its spool and takes back from it.

    Records past the writer's capacity wait in ``overflow`` (bounded by the
    writer) for the spooler greenlet (``run``), which appends them, fsynced;
    after a failed write the writer spills its backlog (``spill``).  Each
    append takes the interaction merges waiting in memory (MergeBacklog)
    along, after its records; the spooler appends them on their own too
    while the file holds lines to replay.  So a merge reaches the file after
    the records it renames there.  The file's I/O goes through ``offload``
    (the writer's thread), holding the spool's lock.  Only when the file
    cannot be written is a record lost: logged in full, at error; merges
    then stay in memory.
    """

    def __init__(self, spool: Spool, offload: Callable[[Callable], object], on_spooled: Callable[[], None],
                 idle_wait: float, merges: MergeBacklog) -> None:
        self.spool = spool
        self._merges = merges
        self._offload = offload
        self._on_spooled = on_spooled  # records to replay: wakes the writer
        self._idle_wait = idle_wait
        self.overflow: list[dict] = []
        self.wake = gevent.event.Event()
        self.spooled = 0
        self.lost = 0
        self.stopping = False

    @property
    def backlog(self) -> int:
        """Records in the file (or on their way to it) not yet in SQLite."""
        return len(self.overflow) + self.spool.backlog

    @property
    def waiting(self) -> int:
        """Records and merges in the file (or on their way) not yet in SQLite."""
        return len(self.overflow) + self.spool.backlog + self.spool.merges

    @property
    def in_use(self) -> bool:
        """Records may wait in the file or on their way to it: a merge must
        follow them there (applied now, it would miss them)."""
        return bool(self.overflow) or not self.spool.empty

    def hand_over(self, record: dict, limit: int) -> bool:
        if len(self.overflow) >= limit:
            return False
        self.overflow.append(record)
        if not self.wake.is_set():
            self.wake.set()
        return True

    def _append(self, records: list[dict]) -> list[Merge]:
        """Append ``records`` and, after them, the merges waiting; the merges
        (or OSError: then they wait still)."""
        with self._merges.spooling() as merges:
            self._io(lambda: self.spool.append(records + merges))
        return merges

    def _io(self, work: Callable):
        with self.spool.lock:
            return self._offload(work)

    def run(self) -> None:
        """The spooler greenlet: append the overflow, a batch per fsync, and
        the merges waiting while the spool is in use."""
        while True:
            due = bool(self.overflow) or self._merges.for_spool
            if due and (self._spool_batch() or self.overflow):
                continue
            if self.stopping:
                return
            if due:  # the file failed: try again on new work (or after idle_wait), not in a loop
                self.wake.clear()
            self.wake.wait(timeout=self._idle_wait)
            self.wake.clear()

    def _spool_batch(self) -> bool:
        records = self.overflow[:]
        try:
            merges = self._append(records)
        except OSError as exc:
            del self.overflow[: len(records)]
            self.lost += len(records)
            for record in records:
                log.error("cdr_lost_spool_unwritable", spool=str(self.spool.path), error=str(exc), record=record)
            self._merges.wake()  # the overflow gone, they may be the next transaction's: wake their taker
            return False
        del self.overflow[: len(records)]
        self.spooled += len(records)
        log.warning("cdrs_spooled", records=len(records), merges=len(merges), spool_backlog=self.backlog)
        self._on_spooled()
        return True

    def spill(self, pending: list[dict]) -> bool:
        """Move ``pending`` (the writer's backlog) and the merges waiting to
        the file; False if it could not take them: they stay (SQLite may
        come back first)."""
        records = pending[:]
        try:
            merges = self._append(records)
        except OSError as exc:
            log.error("spool_unwritable", spool=str(self.spool.path), error=str(exc), backlog=len(pending),
                      merges=len(self._merges))
            return False
        del pending[: len(records)]
        self.spooled += len(records)
        log.warning("backlog_spooled", records=len(records), merges=len(merges), spool_backlog=self.backlog)
        return True

    def read(self, max_lines: int) -> tuple[list[dict], list[Merge], int]:
        """The next records and merges to replay, and the offset after them."""
        return self._io(lambda: self.spool.read(max_lines))

    def replayed(self, offset: int, count: int, merges: int = 0) -> None:
        """The records and merges ``read`` gave are committed: empty the file once all are."""
        spool = self.spool
        spool.committed(offset, count, merges)
        # (no switch between the lock's release and the checks: gevent wakes
        # a waiter on the next loop turn)
        if spool.empty and not self.overflow:
            self._io(spool.truncate_if_replayed)


class MergeBacklog:
    """The interaction merges in memory (``items``), oldest first; at most
    ``limit``: past that a new one is lost, logged at error.

    A merge is in one place: here, or a line of the spool file (older than
    all here).  While the spool is in use (``spool_in_use``: lines to replay,
    or records on their way there) the next append takes them all, after its
    records (``spooling``); else the next transaction applies them all
    (``applying``).  Records in memory carry every merged id already
    (Writer.merge_interactions), so either order with them is right.  The
    first ``held`` are in that transaction or append, in flight: no one else
    takes any meanwhile, and only its success removes them.  ``on_waiting``
    wakes whoever is to take those free (``for_spool``, ``for_transaction``).
    """

    def __init__(self, limit: int, on_waiting: Callable[[], None],
                 spool_in_use: Callable[[], bool] = lambda: False) -> None:
        self.items: list[Merge] = []
        self.held = 0
        self.lost = 0
        self._limit = limit
        self._on_waiting = on_waiting
        self._spool_in_use = spool_in_use

    def __len__(self) -> int:
        return len(self.items)

    def add(self, merges: list[tuple[str, str]]) -> None:
        room = max(0, self._limit - len(self.items))
        for old, new in merges[room:]:
            self.lost += 1
            log.error("interaction_merge_lost", old=old, new=new, merges_waiting=len(self.items))
        self.items.extend(Merge(old, new) for old, new in merges[:room])
        self.wake()

    @property
    def for_transaction(self) -> bool:
        return bool(self.items) and not self.held and not self._spool_in_use()

    @property
    def for_spool(self) -> bool:
        return bool(self.items) and not self.held and self._spool_in_use()

    def wake(self) -> None:
        if self.items and not self.held:
            self._on_waiting()

    def applying(self) -> ContextManager[list[Merge]]:
        """The merges for the transaction about to run (none while the spool is in use)."""
        return self._taken(not self._spool_in_use())

    def spooling(self) -> ContextManager[list[Merge]]:
        """The merges for the append to the spool about to run: all of them."""
        return self._taken(True)

    @contextlib.contextmanager
    def _taken(self, take: bool) -> Iterator[list[Merge]]:
        if not take or self.held:
            yield []
            return
        merges = self.items[:]
        self.held = len(merges)
        try:
            yield merges
        except BaseException:
            self.held = 0
            self.wake()
            raise
        del self.items[: len(merges)]
        self.held = 0
        self.wake()


def _merge_lines(data: bytes, line_start: bool = True) -> int:
    """The merge lines that start in ``data`` (``line_start``: a line starts at its first byte)."""
    return data.count(b"\n" + MERGE_LINE) + (line_start and data.startswith(MERGE_LINE))


def _is_merge(line: object) -> bool:
    return (isinstance(line, list) and len(line) == 3 and line[0] == MERGE
            and isinstance(line[1], str) and isinstance(line[2], str))


def _jsonable(value: object) -> object:
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return str(value)
