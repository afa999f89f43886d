"""A node's leg under a call_id another node stored: the same leg, or another.

``cdr_keys`` gives each call_id to the node that stored it first, so no node
can rewrite another's rows (``other_node``).  But a Unique-ID is not unique
across nodes when a caller chooses it: Kazoo's sofia profiles take an inbound
leg's SIP Call-ID as its Unique-ID (``inbound-use-callid-as-uuid``), so a
caller who sends to one media server the id of a leg of another -- a B-leg's
Call-ID it learned as the callee -- makes a second leg under that id.  As on
the node (store/reused.py): a record whose ``created_us`` differs from the
stored row's is another leg, stored under ``<call_id>~<created_us>`` (its
``id`` likewise), owned by its own node; the same leg (same creation) from
another node is still refused.  Only records ``cdr_keys`` refused are looked
at, each by two single-row reads (no join: Citus distributes the two tables
by different keys).
"""

from __future__ import annotations

from typing import Sequence

import orjson
import psycopg
import structlog

from ..store.reused import REUSED_SEPARATOR, reused_suffix
from .pgrecords import FeedRecord

log = structlog.get_logger(__name__)

_KEY = "SELECT account_id, hangup_at FROM cdr_keys WHERE call_id = %s"
_CREATED = "SELECT created_us FROM cdrs WHERE account_id = %s AND call_id = %s AND hangup_at = %s"
# A second round of store_batch starts from empty staging tables.
CLEAR_ROUND = ("DELETE FROM _staged", "DELETE FROM _old", "DELETE FROM _gone")


def other_legs(cur: psycopg.Cursor, node: str, records: Sequence[FeedRecord]) -> list[FeedRecord]:
    """Of ``records`` (refused: their call_id is another node's), those that
    are other legs, each re-keyed to ``<call_id>~<created_us>``."""
    again = []
    for record in records:
        doc = record.fields()
        created_us = doc.get("created_us")
        if type(created_us) is not int or REUSED_SEPARATOR in record.call_id:
            continue
        key = cur.execute(_KEY, (record.call_id,)).fetchone()
        stored = cur.execute(_CREATED, (key[0], record.call_id, key[1])).fetchone() if key else None
        if stored is None or stored[0] == created_us:
            continue  # the same leg from another node: refused as before
        suffix = reused_suffix(created_us)
        doc = dict(doc, call_id=record.call_id + suffix, id="%s%s" % (doc.get("id"), suffix))
        again.append(FeedRecord(record.seq, doc["call_id"], record.hangup_us, orjson.dumps(doc), doc))
        log.warning("cdr_call_id_reused", node=node, call_id=record.call_id, stored_as=doc["call_id"])
    return again
