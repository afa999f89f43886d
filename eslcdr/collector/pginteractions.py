"""Central interactions: a call that crossed media servers is one interaction.

With the propagated header (``[cdr] interaction_id_vars``) both nodes record the same
``interaction_id``: nothing to do.  Without it, legs of one account on different nodes
that share a ``sip_call_id`` and were created within ``SIP_LINK_WINDOW_US`` of each other
(the node's own Call-ID rule, ``ingest.interactions``) join their interactions.  A group's
central id is its least member (``COLLATE "C"``: for Kazoo-shaped ids the earliest second);
``interaction_aliases (account_id, interaction_id) -> central_id`` holds every joined node
id whose central id differs, and each row of ``cdrs`` holds its central id (``central_id``,
what the read side lists, keys and finds by).  ``link_batch`` keeps both in the batch's
transaction, after the rows are written, under advisory locks per account bucket (two
nodes' batches of one call serialise, the later sees the earlier's rows); ``join_existing``
joins the rows stored before (once, in bounded chunks).  Invariants: every key holds
account_id; a row's central_id is its interaction_id's alias, else its interaction_id; a
leg without an account joins nothing; a node's own interaction_id is never rewritten.
"""

from __future__ import annotations

import zlib
from typing import Callable, Iterable

import psycopg
import structlog

from ..ingest.interactions import SIP_LINK_WINDOW_US
from .pgschema import INDEXED_SIP_CALL_ID, NO_ACCOUNT, STAGED_HANGUP_AT

log = structlog.get_logger(__name__)

LOCK_ALIASES = 0x65736C03  # advisory lock class (pgmigrations' ...01, pgschema's ...02)
BUCKETS = 64  # account buckets, each one advisory lock

# The accounts of the batch's legs that have an interaction.
_ACCOUNTS = (
    "SELECT DISTINCT s.account_id FROM _staged AS s WHERE s.account_id <> '' AND s.interaction_id IS NOT NULL"
)
# The batch's rows whose node id is already joined: their group's central id.
_JOINED = (
    "SELECT s.account_id, a.central_id, array_agg(s.call_id), array_agg(" + STAGED_HANGUP_AT + ")"
    " FROM _staged AS s JOIN interaction_aliases AS a ON a.account_id = s.account_id"
    " AND a.interaction_id = s.interaction_id WHERE s.account_id <> '' GROUP BY 1, 2"
)
_SET_ROWS = ("UPDATE cdrs SET central_id = %s WHERE account_id = %s AND call_id = ANY(%s) AND hangup_at = ANY(%s)"
             " AND central_id IS DISTINCT FROM %s")
# Another node's legs of the same account and SIP Call-ID created within the
# window (it hung up after its creation: a bound on hangup_at, the partition key).
_PAIRS = (
    "SELECT DISTINCT s.account_id, s.interaction_id, o.interaction_id FROM _staged AS s"
    " JOIN cdrs AS o ON o.account_id = s.account_id AND o.sip_call_id = s.sip_call_id"
    " AND o.source <> %(source)s AND " + INDEXED_SIP_CALL_ID % "o." +
    " AND o.hangup_at >= to_timestamp((s.created_us - %(window)s) / 1000000.0)"
    " WHERE s.sip_call_id IS NOT NULL AND s.account_id <> '' AND s.interaction_id IS NOT NULL"
    " AND o.interaction_id IS NOT NULL AND o.interaction_id <> s.interaction_id"
    " AND abs(o.created_us - s.created_us) <= %(window)s"
)
_CENTRALS = (
    "SELECT interaction_id, central_id FROM interaction_aliases"
    " WHERE account_id = %s AND interaction_id = ANY(%s)"
)
# A join moves groups (old central id -> new, the pairs as two arrays): one
# statement per table and account, router queries on Citus.
_MOVES = "unnest(%s::text[], %s::text[]) AS m(old, new)"
_MOVE_GROUP = ("UPDATE interaction_aliases AS a SET central_id = m.new FROM " + _MOVES
               + " WHERE a.account_id = %s AND a.central_id = m.old")
_ALIAS = (
    "INSERT INTO interaction_aliases (account_id, interaction_id, central_id) VALUES {rows}"
    " ON CONFLICT (account_id, interaction_id) DO UPDATE SET central_id = EXCLUDED.central_id"
)
_MOVE_ROWS = "UPDATE cdrs AS c SET central_id = m.new FROM " + _MOVES + " WHERE c.account_id = %s AND c.central_id = m.old"

def bucket(account_id: str) -> int:
    return zlib.crc32(account_id.encode("utf-8")) % BUCKETS


def _lock(cur: psycopg.Cursor, accounts: Iterable[str]) -> None:
    # One statement (a batch of 50 accounts' legs took ~35 round trips): the
    # function scan takes the buckets in the array's ascending order, no deadlock.
    numbers = sorted({bucket(account) for account in accounts})
    cur.execute("SELECT pg_advisory_xact_lock(%s, b) FROM unnest(%s::int[]) AS b", (LOCK_ALIASES, numbers))


def link_batch(cur: psycopg.Cursor, node: str) -> int:
    """Give the staged legs' rows (already written, in the batch's
    transaction) their central ids and join their interactions with other
    nodes'; return how many ids changed group."""
    accounts = [row[0] for row in cur.execute(_ACCOUNTS).fetchall()]
    if not accounts:
        return 0
    _lock(cur, accounts)
    # Under the lock: the aliases other batches committed are seen, and no
    # group of these accounts moves meanwhile.
    for account, central, call_ids, hangups in cur.execute(_JOINED).fetchall():
        cur.execute(_SET_ROWS, (central, account, call_ids, hangups, central))
    pairs = cur.execute(_PAIRS, {"source": node, "window": SIP_LINK_WINDOW_US}).fetchall()
    by_account: dict[str, list[tuple[str, str]]] = {}
    for account, ours, theirs in pairs:
        by_account.setdefault(account, []).append((ours, theirs))
    changed = 0
    for account, links in sorted(by_account.items()):
        changed += _join(cur, account, links)
    if changed:
        log.info("interactions_joined", node=node, ids=changed, accounts=len(by_account))
    return changed


def _join(cur: psycopg.Cursor, account: str, links: list[tuple[str, str]]) -> int:
    """Join the groups of each linked pair of ids (node or central ones);
    return how many central ids stopped being one."""
    ids = sorted({i for link in links for i in link})
    central = dict(cur.execute(_CENTRALS, (account, ids)).fetchall())
    parent: dict[str, str] = {}

    def root(item: str) -> str:
        while parent.get(item, item) != item:
            item = parent[item]
        return item

    for ours, theirs in links:
        a, b = root(central.get(ours, ours)), root(central.get(theirs, theirs))
        if a != b:
            low, high = sorted((a, b), key=_c_order)
            parent[high] = low
    if not parent:
        return 0
    olds = sorted(parent)
    news = [root(old) for old in olds]
    cur.execute(_MOVE_GROUP, (olds, news, account))
    cur.execute(_ALIAS.format(rows=", ".join(["(%s, %s, %s)"] * len(olds))),
                [value for old, new in zip(olds, news) for value in (account, old, new)])
    cur.execute(_MOVE_ROWS, (olds, news, account))
    return len(parent)


def _c_order(text: str) -> bytes:
    """PostgreSQL's ``COLLATE "C"`` order (bytes of UTF-8)."""
    return text.encode("utf-8")


# ------------------------------------------------------- the rows stored before
# Legs stored before the central id (schema 7) were never joined across nodes.
# join_existing walks every account's SIP Call-IDs in order, CHUNK at a time,
# each chunk in its own transaction under its account's lock, and keeps its
# position in eslcdr_schema.join_after ([account, last Call-ID]; NULL: done).
CHUNK = 2000
LOCK_JOIN_EXISTING = 0x65736C04  # one collector walks them (a session lock)
_NEXT_ACCOUNT = "SELECT min(account_id) FROM cdrs WHERE %s AND account_id > %%s" % (INDEXED_SIP_CALL_ID % "")
_CALL_IDS = ("SELECT DISTINCT sip_call_id FROM cdrs WHERE account_id = %%s AND sip_call_id > %%s AND %s"
             " ORDER BY 1 LIMIT %%s" % (INDEXED_SIP_CALL_ID % ""))
_OLD_PAIRS = (
    "SELECT DISTINCT s.central_id, o.central_id FROM cdrs AS s JOIN cdrs AS o ON o.account_id = s.account_id"
    " AND o.sip_call_id = s.sip_call_id AND o.source <> s.source AND abs(o.created_us - s.created_us) <= %s"
    " AND " + INDEXED_SIP_CALL_ID % "o." + " WHERE s.account_id = %s AND s.sip_call_id = ANY(%s) AND o.sip_call_id = ANY(%s)"
    " AND s.central_id IS NOT NULL AND o.central_id IS NOT NULL AND o.central_id <> s.central_id"
)


def join_existing(conn: psycopg.Connection, chunk: int = CHUNK,
                  stopped: Callable[[], bool] = lambda: False) -> int | None:
    """Join the stored legs of calls that crossed nodes (the rule of
    ``link_batch``), from the saved position on, until done or ``stopped()``
    (checked between chunks); ``conn`` idle.  Returns how many ids changed
    group, None when another collector is at it."""
    conn.autocommit = True
    try:
        if not conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_JOIN_EXISTING,)).fetchone()[0]:
            return None
        try:
            return _walk(conn, chunk, stopped)
        finally:
            if not conn.closed:
                conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_JOIN_EXISTING,))
    finally:
        if not conn.closed:
            conn.autocommit = False


def _walk(conn: psycopg.Connection, chunk: int, stopped: Callable[[], bool]) -> int:
    position = conn.execute("SELECT join_after FROM eslcdr_schema").fetchone()[0]
    if position is None:
        return 0
    account, after = (position if position else [NO_ACCOUNT, None])
    changed = chunks = 0
    while True:
        if stopped():
            log.info("interactions_joined_existing", chunks=chunks, ids=changed, done=False)
            return changed
        if after is None:  # the next account
            account = conn.execute(_NEXT_ACCOUNT, (account,)).fetchone()[0]
            if account is None:
                break
            after = ""
        call_ids = [row[0] for row in conn.execute(_CALL_IDS, (account, after, chunk)).fetchall()]
        if not call_ids:
            after = None
            continue
        with conn.transaction(), conn.cursor() as cur:
            _lock(cur, [account])
            pairs = cur.execute(_OLD_PAIRS, (SIP_LINK_WINDOW_US, account, call_ids, call_ids)).fetchall()
            changed += _join(cur, account, pairs) if pairs else 0
            cur.execute("UPDATE eslcdr_schema SET join_after = %s", ([account, call_ids[-1]],))
        chunks += 1
        after = call_ids[-1] if len(call_ids) == chunk else None
    conn.execute("UPDATE eslcdr_schema SET join_after = NULL")
    log.info("interactions_joined_existing", chunks=chunks, ids=changed, done=True)
    return changed
