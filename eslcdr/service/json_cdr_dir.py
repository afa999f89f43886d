"""The ``[backfill] json_cdr_dir`` folder, as mod_json_cdr writes it (blocking:
the backfill runs these in gevent's thread pool, docs/backfill.md).

mod_json_cdr writes one file per leg into its ``log-dir``: ``<uuid>.cdr.json``,
``a_<uuid>.cdr.json`` for "A" legs with ``prefix-a-leg``, and with ``rotate``
into dated subfolders.  ``entries``/``next_files`` list the files changed since
a mark, LIST_STEP entries per call; ``find`` looks legs up by their two names
without listing; ``read_files`` parses them into the events they stand for.
Invariants: the folder is FreeSWITCH's -- only listed, ``stat``-ed and opened
for reading; a file naming another leg than its name, or unreadable, is a
``FileRead`` without an event (and its error), never an exception.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import structlog

from ..esl.events import Event
from .importer import JsonCdrError, parse_json_cdr

log = structlog.get_logger(__name__)

SUFFIX = ".cdr.json"
A_PREFIX = "a_"
LIST_STEP = 4096  # directory entries per call of next_files


def call_id_of(name: str) -> str:
    """``a_<uuid>.cdr.json`` / ``<uuid>.cdr.json`` -> ``<uuid>``."""
    stem = name[: -len(SUFFIX)]
    return stem[len(A_PREFIX) :] if stem.startswith(A_PREFIX) else stem


@dataclass(frozen=True, slots=True)
class FileFound:
    path: str
    mtime_ns: int
    size: int

    @property
    def call_id(self) -> str:
        return call_id_of(os.path.basename(self.path))


@dataclass(frozen=True, slots=True)
class FileRead:
    found: FileFound
    event: Event | None  # None: unreadable
    error: str = ""
    replaced_bytes: bool = False


# -- the folder (blocking: these run in threads) ---------------------------


def entries(folder: str, since_ns: int, subfolders_seen: list[tuple[int, str]]) -> Iterator[os.DirEntry]:
    """The folder's entries, and those of its subfolders changed since the
    mark (mod_json_cdr's ``rotate`` adds a dated subfolder per rotation; a
    folder whose mtime is older got no file since).  Every subfolder goes
    into ``subfolders_seen`` as (mtime, path)."""
    subfolders = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.endswith(SUFFIX):
                yield entry
            elif not entry.name.startswith("."):
                try:
                    info = entry.stat()
                except OSError:
                    continue
                if stat.S_ISDIR(info.st_mode):
                    subfolders_seen.append((info.st_mtime_ns, entry.path))
                    if info.st_mtime_ns >= since_ns:
                        subfolders.append(entry.path)
    for path in sorted(subfolders):
        try:
            with os.scandir(path) as entries:
                yield from (entry for entry in entries if entry.name.endswith(SUFFIX))
        except OSError as exc:
            log.warning("json_cdr_subfolder_unreadable", path=path, error=str(exc))


def next_files(entries: Iterator[os.DirEntry], since_ns: int, until_ns: int) -> tuple[list[FileFound], bool]:
    """Up to LIST_STEP entries: the files with since <= mtime < until; and
    whether the listing is over."""
    found = []
    for count, entry in enumerate(entries, 1):
        try:
            info = entry.stat()
        except OSError:
            continue  # removed meanwhile
        if stat.S_ISREG(info.st_mode) and since_ns <= info.st_mtime_ns < until_ns:
            found.append(FileFound(entry.path, info.st_mtime_ns, info.st_size))
        if count >= LIST_STEP:
            return found, False
    return found, True


def read_files(files: list[FileFound]) -> list[FileRead]:
    out = []
    for found in files:
        try:
            with open(found.path, "rb") as handle:
                event, replaced = parse_json_cdr(handle.read())
        except (OSError, JsonCdrError) as exc:
            out.append(FileRead(found, None, str(exc)))
            continue
        if event.get("Unique-ID") != found.call_id:
            out.append(FileRead(found, None, "the file names leg %s" % event.get("Unique-ID")))
            continue
        out.append(FileRead(found, event, replaced_bytes=replaced))
    return out


def find(folder: str, call_ids: list[str], rotating: bool) -> list[FileFound]:
    """The files of these legs, looked up by name.  Without ``rotate`` the
    folder is never listed (it may hold millions of files); with it, the
    folder holds only the dated subfolders and the newest gets the files."""
    places = [folder]
    if rotating:
        try:
            with os.scandir(folder) as entries:
                subfolders = [e for e in entries if not e.name.startswith(".") and e.is_dir()]
            if subfolders:
                places.append(max(subfolders, key=lambda e: e.stat().st_mtime_ns).path)
        except OSError:
            pass
    found = []
    for call_id in call_ids:
        for place in places:
            for name in (A_PREFIX + call_id + SUFFIX, call_id + SUFFIX):
                path = os.path.join(place, name)
                try:
                    info = os.stat(path)
                except OSError:
                    continue
                if stat.S_ISREG(info.st_mode):
                    found.append(FileFound(path, info.st_mtime_ns, info.st_size))
    return found


def folder_problem(folder: str) -> str | None:
    """Why the json_cdr folder cannot be read, or None (``eslcdr check``)."""
    path = Path(folder)
    if not path.is_dir():
        return "%s is not a folder" % folder
    if not os.access(path, os.R_OK | os.X_OK):
        return "%s is not readable by this user" % folder
    return None
