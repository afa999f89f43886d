"""Legs that reuse a stored leg's Unique-ID: each is stored under a key of its own.

Where FreeSWITCH takes an inbound leg's SIP Call-ID as its Unique-ID (Kazoo's
profiles set ``inbound-use-callid-as-uuid``) the caller chooses it, and
FreeSWITCH gives a finished channel's id to a new one.  ``insert_records`` is
idempotent on ``call_id``; a row holding that id is the same leg only when its
``created_us`` is the same too.  Another leg is stored as
``<Unique-ID>~<created_us>`` (then ``~2``, ``~3``... should a caller have sent
that as a Call-ID too): the same key each time its record comes again, so a
replay stays a duplicate.  Before, the new leg was dropped as a duplicate of
the old: a caller could make calls that left no CDR.
"""

from __future__ import annotations

import sqlite3
from typing import Callable, Iterator, Sequence

import structlog

from .schema import RECORD_COLUMNS

log = structlog.get_logger(__name__)

REUSED_SEPARATOR = "~"
MAX_REUSED_KEYS = 8  # candidate keys of one leg; past them the record goes to the log
_CALL_ID, _ID, _CREATED = (RECORD_COLUMNS.index(name) for name in ("call_id", "id", "created_us"))
_CREATED_OF = "SELECT created_us FROM cdrs WHERE call_id = ?"


def reused_suffix(created_us: object) -> str:
    """What a leg under another leg's Unique-ID adds to its call_id and id
    (here and in the collector, collector/pgreused.py)."""
    return "%s%s" % (REUSED_SEPARATOR, created_us)


def _keys(call_id: str, created_us: object) -> Iterator[str]:
    yield call_id
    own = call_id + reused_suffix(created_us)
    yield own
    for n in range(2, MAX_REUSED_KEYS):
        yield "%s%s%d" % (own, REUSED_SEPARATOR, n)


def _holds_another_leg(conn: sqlite3.Connection, key: str, created_us: object) -> bool:
    stored = conn.execute(_CREATED_OF, (key,)).fetchone()
    return stored is not None and stored[0] != created_us


def store_reused(conn: sqlite3.Connection, rows: Sequence[list], insert: Callable[[list[list]], int]) -> int:
    """After an insert of ``rows`` that stored fewer than given: each row whose
    ``call_id`` holds another leg goes in (``insert`` of a list of rows) under the first of its
    keys free or holding this same leg.  Returns how many rows were new."""
    new = 0
    for row in rows:
        call_id, created_us = row[_CALL_ID], row[_CREATED]
        if not _holds_another_leg(conn, call_id, created_us):
            continue  # stored now, or a duplicate of this very leg
        key = next((k for k in _keys(call_id, created_us) if not _holds_another_leg(conn, k, created_us)), None)
        own = list(row)
        if key is not None:
            own[_ID], own[_CALL_ID] = "%s%s" % (row[_ID], key[len(call_id):]), key
            if insert([own]):
                new += 1
                log.warning("cdr_call_id_reused", call_id=call_id, stored_as=key)
            continue
        log.error("cdr_call_id_reused_too_often", call_id=call_id, record=dict(zip(RECORD_COLUMNS, own)))
    return new
