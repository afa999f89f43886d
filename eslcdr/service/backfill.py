"""Backfill: legs whose hangup eslcdr never heard, from FreeSWITCH's mod_json_cdr
files (``[backfill] json_cdr_dir``, docs/backfill.md; the folder is json_cdr_dir.py's).

- *scan*: at start, and SETTLE then LATE_SCAN seconds after every (re)connect, the
  files changed since the high-water mark (``meta`` key ``backfill_mtime_ns``:
  every older file was handled); legs the tracker or the database know are skipped.
- *rescue*: a leg about to be written off as ``eslcdr_hangup_not_seen`` has its
  own two file names looked up first.
- *awaiting*: a leg written off all the same is looked up every TICK for a day;
  when its file comes, the not-seen row is replaced (with a new ``seq``).
A file's event goes the live path (tracker, CdrBuilder): the live row's fields,
stored once.  Invariants: the mark is stored only when the writer holds nothing
uncommitted (a crash never leaves it past a lost CDR); every folder and database
read runs in the thread pool in bounded steps: the ESL readers never wait on disk.
"""

from __future__ import annotations

import os
import sqlite3
import time
from typing import Any, Callable, TypeVar

import gevent
import gevent.event
import structlog

from ..esl.events import Event
from ..ingest.legs import GREGORIAN_OFFSET
from ..store.db import connect_reader, read_meta
from ..supervise import in_thread
from .json_cdr_dir import FileFound, FileRead, entries, find, next_files, read_files

log = structlog.get_logger(__name__)

T = TypeVar("T")

HWM_KEY = "backfill_mtime_ns"
NOT_SEEN = "eslcdr_hangup_not_seen"
SECOND_NS = 1_000_000_000
# A file younger than this may still be being written (mod_json_cdr writes in
# place); the scan after a reconnect also waits this long, so that the files
# it leaves for later were all written while connected.
SETTLE = 2.0
# Re-examined below the mark: a listing can miss a file whose name appears
# after its mtime (written, then renamed in), and clocks step.
MARGIN = 10.0
# A second scan this long after a reconnect: with ``queue-capacity``,
# mod_json_cdr writes from a thread, so the file of a leg that hung up while
# disconnected can appear after the reconnect.
LATE_SCAN = 15.0
TICK = 2.0  # awaiting look-ups, pending scans, the mark
MARK_INTERVAL = 30.0
AWAIT_FOR = 86_400.0  # how long a not-seen leg's file is waited for
MAX_AWAITING = 100_000
READ_STEP = 256  # files read and fed per step
LOOKUP_STEP = 512  # call ids per database query / awaiting look-ups per tick
MAX_BAD_FILES = 10_000  # unreadable files remembered (BadFiles)
# What reading the folder or the database can fail with and be retried later.
READ_ERRORS = (OSError, sqlite3.Error)


def _in_thread(work: Callable[..., T], *args: Any) -> T:
    """Blocking folder / database work, its READ_ERRORS raised here (each
    caller handles them)."""
    return in_thread(work, *args, errors=READ_ERRORS)


class BadFiles:
    """The unreadable files warned about, each as (mtime_ns, size): not read nor
    warned about again until it changes.  At most ``limit`` are remembered; past
    them the one warned about longest ago is forgotten (read, and warned about,
    once more should it come up again)."""

    def __init__(self, limit: int = MAX_BAD_FILES) -> None:
        self._limit = limit
        self._known: dict[str, tuple[int, int]] = {}  # path -> (mtime_ns, size), oldest first

    def __len__(self) -> int:
        return len(self._known)

    def known(self, found: FileFound) -> bool:
        return self._known.get(found.path) == (found.mtime_ns, found.size)

    def add(self, found: FileFound) -> bool:
        """Remember ``found``; True when it is news (to be warned about)."""
        if self.known(found):
            return False
        self._known.pop(found.path, None)
        self._known[found.path] = (found.mtime_ns, found.size)
        if len(self._known) > self._limit:
            del self._known[next(iter(self._known))]
        return True


# -- the backfill greenlet -------------------------------------------------


class Backfill:
    """Reads one FreeSWITCH node's json_cdr folder for the legs it missed.

    ``pipeline`` is that node's ``daemon.Pipeline`` (``on_backfill``,
    ``replace_from_file``, its tracker); ``connected_since`` returns when
    the node's connection came up (Unix seconds), None while it is down.
    """

    def __init__(
        self,
        folder: str,
        pipeline,
        writer,
        db_path: str,
        connected_since: Callable[[], float | None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.folder = folder
        self._pipeline = pipeline
        self._writer = writer
        self._db_path = db_path
        self._connected_since = connected_since
        self._clock = clock
        self._db: sqlite3.Connection | None = None
        self._stop = gevent.event.Event()
        self._wake = gevent.event.Event()
        self.mark_ns = 0  # the high-water mark (see the module header)
        self._stored_mark_ns = 0
        self._scans_due: list[float] = [0.0]  # clock times of the next scans
        self._last_scan_start: float | None = None
        self._last_mark_at = 0.0
        # not-seen call id -> (interaction id, clock time it was written off)
        self.awaiting: dict[str, tuple[str, float]] = {}
        self._bad = BadFiles()
        self._folder_ok: bool | None = None
        self._rotating = False  # the folder has subfolders (mod_json_cdr rotate)
        self._flat = False  # a listing found no subfolder: the folder's mtime tells news
        self._resync_at: float | None = None
        self.scans = 0
        self.files_listed = 0
        self.backfilled = 0
        self.rescued = 0
        self.replaced = 0
        self.bad_files = 0
        self.last_scan_seconds: float | None = None

    # -- called by the daemon (no I/O) ------------------------------------
    def request_scan(self) -> None:
        """After a (re)connect: scan once the connection has settled."""
        self._resync_at = now = self._clock()
        # A scan already due (the one at start) still runs first.
        due = [when for when in self._scans_due if when <= now]
        self._scans_due = due + [now + SETTLE, now + LATE_SCAN]
        self._wake.set()

    def await_file(self, call_id: str, interaction_id: str | None) -> None:
        """A leg was written off as not seen: replace it when its file comes."""
        if len(self.awaiting) < MAX_AWAITING:
            self.awaiting[call_id] = (interaction_id or "", self._clock())

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def stats(self) -> dict:
        return {
            "json_cdr_dir": self.folder,
            "readable": self._folder_ok,
            "scans": self.scans,
            "files_listed": self.files_listed,
            "backfilled": self.backfilled,
            "rescued": self.rescued,
            "replaced": self.replaced,
            "bad_files": self.bad_files,
            "awaiting": len(self.awaiting),
            "mark_ns": self.mark_ns,
            "last_scan_seconds": self.last_scan_seconds,
        }

    # -- rescue: called from the daemon's housekeeping greenlet -----------
    def rescue(self, call_ids: list[str]) -> list[Event]:
        """The hangups of these legs from their own files, where they exist."""
        if not call_ids:
            return []
        try:
            found = _in_thread(find, self.folder, call_ids, self._rotating)
            read = _in_thread(read_files, found)
        except READ_ERRORS as exc:
            log.warning("json_cdr_rescue_failed", error=str(exc), legs=len(call_ids))
            return []
        return [item.event for item in self._usable(read)]

    def count_rescued(self, legs: int) -> None:
        """Legs the write-off path stored from the files ``rescue`` gave."""
        self.rescued += legs

    # -- the greenlet -----------------------------------------------------
    def run(self) -> None:
        try:
            self._db = _in_thread(connect_reader, self._db_path)
            self._load_state()
            while not self._stop.is_set():
                now = self._clock()
                if self._scans_due and now >= self._scans_due[0]:
                    self._scans_due.pop(0)
                    self._scan()
                self._check_awaiting()
                self._advance_mark()
                self._store_mark()
                self._wake.clear()
                wait = TICK
                if self._scans_due:
                    wait = max(0.05, min(TICK, self._scans_due[0] - self._clock()))
                self._wake.wait(timeout=wait)
        finally:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _load_state(self) -> None:
        def load() -> tuple[int, list[tuple[str, str | None]], int]:
            stored = read_meta(self._db, HWM_KEY)
            # max(timestamp): one step down idx_cdrs_ts, however big the table.
            newest = self._db.execute("SELECT max(timestamp) FROM cdrs").fetchone()[0] or 0
            since = int(self._clock() - AWAIT_FOR) + GREGORIAN_OFFSET
            rows = self._db.execute(
                "SELECT call_id, interaction_id FROM cdrs WHERE timestamp >= ? AND disposition = ? LIMIT ?",
                (since, NOT_SEEN, MAX_AWAITING),
            ).fetchall()
            return (int(stored) if stored and stored.isdigit() else -1), rows, newest

        stored, rows, newest = _in_thread(load)
        if stored >= 0:
            self.mark_ns = self._stored_mark_ns = stored
        elif newest:
            # A database from before backfill was on: from its newest CDR.
            self.mark_ns = (newest - GREGORIAN_OFFSET) * SECOND_NS - int(MARGIN * SECOND_NS)
        # else: a new database takes every file the folder holds.
        now = self._clock()
        for call_id, interaction_id in rows:
            self.awaiting.setdefault(call_id, (interaction_id or "", now))
        log.info("backfill_started", json_cdr_dir=self.folder, mark_ns=self.mark_ns, awaiting=len(self.awaiting))

    # -- scans --------------------------------------------------------------
    def _scan(self) -> None:
        started = self._clock()
        since_ns = max(0, self.mark_ns)
        until_ns = int((started - SETTLE) * SECOND_NS)
        listed = new = replaced = bad = 0
        subfolders: list[tuple[int, str]] = []
        try:
            done = False
            if self._flat and _in_thread(os.stat, self.folder).st_mtime_ns < since_ns:
                # No name added, renamed or removed since the mark: nothing to list.
                done = True
            listing = entries(self.folder, since_ns, subfolders)  # runs in the threads below
            while not done and not self._stop.is_set():
                files, done = _in_thread(next_files, listing, since_ns, until_ns)
                listed += len(files)
                for start in range(0, len(files), READ_STEP):
                    if self._stop.is_set():
                        break
                    step_new, step_replaced, step_bad = self._handle(files[start : start + READ_STEP])
                    new += step_new
                    replaced += step_replaced
                    bad += step_bad
        except OSError as exc:
            self._folder_state(False, str(exc))
            self._retry_scan()
            return
        except sqlite3.Error as exc:
            log.warning("backfill_db_read_failed", error=str(exc))
            self._retry_scan()
            return
        self._folder_state(True)
        if not self._flat or subfolders:  # what a full listing found
            self._rotating = bool(subfolders)
            self._flat = not subfolders
        if self._stop.is_set():
            return
        self.scans += 1
        self.files_listed += listed
        self._last_scan_start = started
        # Every file older than this scan's window was handled (MARGIN for late names, clock steps).
        self.mark_ns = max(self.mark_ns, until_ns - int(MARGIN * SECOND_NS))
        self.last_scan_seconds = round(self._clock() - started, 3)
        log.info(
            "backfill_scan",
            files=listed,
            backfilled=new,
            replaced=replaced,
            bad=bad,
            seconds=self.last_scan_seconds,
        )
        if new or replaced:
            # The mark may only pass these legs once they are committed.
            self._writer.wait_idle(timeout=MARK_INTERVAL)
        self._store_mark()

    def _retry_scan(self) -> None:
        if not self._scans_due:
            self._scans_due.append(self._clock() + MARK_INTERVAL)

    def _handle(self, files: list[FileFound]) -> tuple[int, int, int]:
        """Read and feed the files of legs not handled yet; (new, replaced, bad)."""
        tracker = self._pipeline.tracker
        candidates = [
            found
            for found in files
            if not tracker.knows(found.call_id) and not self._bad.known(found)
        ]
        if not candidates:
            return 0, 0, 0
        stored = _in_thread(self._stored, [found.call_id for found in candidates])
        wanted = [found for found in candidates if stored.get(found.call_id, NOT_SEEN) == NOT_SEEN]
        if not wanted:
            return 0, 0, 0
        read = _in_thread(read_files, wanted)
        bad = len(read)
        usable = self._usable(read)
        bad -= len(usable)
        # Creation order, as the live events came: the first leg of a call
        # names its interaction.
        usable.sort(key=lambda item: int(item.event.get("Caller-Channel-Created-Time") or 0))
        new = replaced = 0
        for item in usable:
            call_id = item.found.call_id
            if call_id in stored:  # written off as not seen: replace it
                if self._pipeline.replace_from_file(item.event, self._interaction_of(call_id)):
                    replaced += 1
                self.awaiting.pop(call_id, None)
            elif self._pipeline.on_backfill(item.event):
                new += 1
        self.backfilled += new
        self.replaced += replaced
        gevent.sleep(0)  # let the readers run between steps
        return new, replaced, bad

    def _stored(self, call_ids: list[str]) -> dict[str, str | None]:
        """call id -> disposition of the stored row, for those stored."""
        out: dict[str, str | None] = {}
        for start in range(0, len(call_ids), LOOKUP_STEP):
            chunk = call_ids[start : start + LOOKUP_STEP]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                "SELECT call_id, disposition FROM cdrs WHERE call_id IN (%s)" % marks, chunk
            ).fetchall()
            out.update(rows)
        return out

    def _usable(self, read: list[FileRead]) -> list[FileRead]:
        """The files read whole; a bad one (empty, truncated, not JSON, not a
        mod_json_cdr object) gets one warning per (mtime, size) and is skipped."""
        usable = []
        for item in read:
            if item.event is not None:
                if item.replaced_bytes:
                    log.warning("json_cdr_not_utf8", path=item.found.path, hint="bad bytes replaced by U+FFFD, leg kept")
                usable.append(item)
                continue
            if self._bad.add(item.found):
                self.bad_files += 1
                log.warning("json_cdr_unreadable", path=item.found.path, error=item.error)
        return usable

    def _interaction_of(self, call_id: str) -> str:
        known = self._pipeline.tracker.interaction_of(call_id)
        return known or self.awaiting.get(call_id, ("", 0.0))[0]

    def _folder_state(self, ok: bool, error: str = "") -> None:
        if ok != self._folder_ok:
            if ok:
                log.info("json_cdr_dir_readable", json_cdr_dir=self.folder)
            else:
                log.error("json_cdr_dir_unreadable", json_cdr_dir=self.folder, error=error)
        self._folder_ok = ok

    # -- awaiting not-seen legs ---------------------------------------------
    def _check_awaiting(self) -> None:
        if not self.awaiting:
            return
        now = self._clock()
        for call_id, (_, since) in list(self.awaiting.items()):
            if now - since > AWAIT_FOR:
                del self.awaiting[call_id]
        batch = list(self.awaiting)[:LOOKUP_STEP]
        if not batch:
            return
        try:
            found = _in_thread(find, self.folder, batch, self._rotating)
            read = _in_thread(read_files, [f for f in found if not self._bad.known(f)])
        except READ_ERRORS as exc:
            self._folder_state(False, str(exc))
            return
        replaced = 0
        for item in self._usable(read):
            call_id = item.found.call_id
            if call_id not in self.awaiting:
                continue
            if self._pipeline.replace_from_file(item.event, self._interaction_of(call_id)):
                replaced += 1
            del self.awaiting[call_id]
        if replaced:
            self.replaced += replaced
            log.info("not_seen_replaced", legs=replaced, awaiting=len(self.awaiting))
        # Looked-up legs go to the back of the line.
        for call_id in batch:
            entry = self.awaiting.pop(call_id, None)
            if entry is not None:
                self.awaiting[call_id] = entry

    # -- the high-water mark ----------------------------------------------
    def _advance_mark(self) -> None:
        now = self._clock()
        if now - self._last_mark_at < MARK_INTERVAL:
            return
        self._last_mark_at = now
        since = self._connected_since()
        if (
            since is not None
            and not self._scans_due
            and self._resync_at is not None
            and self._last_scan_start is not None
            and self._last_scan_start >= self._resync_at + LATE_SCAN
        ):
            # Connected since before the late scan: every hangup since came live.
            self.mark_ns = max(self.mark_ns, int((now - SETTLE - MARGIN) * SECOND_NS))

    def _store_mark(self) -> None:
        # Only when every CDR submitted so far is committed: the mark must
        # never get ahead of a CDR a crash would lose.
        if self.mark_ns > self._stored_mark_ns and self._writer.backlog == 0:
            self._writer.note_meta(HWM_KEY, str(self.mark_ns))
            self._stored_mark_ns = self.mark_ns
