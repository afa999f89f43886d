"""Central interactions: a call that crossed media servers is one interaction.

With the propagated header (``[cdr] interaction_id_vars``) both nodes record the same
``interaction_id``: nothing to do.  Without it, legs of one account on different nodes
that share a ``sip_call_id`` and were created within ``SIP_LINK_WINDOW_US`` of each other
(the node's own Call-ID rule, ``ingest.interactions``) join their interactions.
``interaction_aliases (account_id, interaction_id) -> central_id`` holds every joined
node id whose central id differs (an id without a row is its own central id); a group's
central id is its least member (``COLLATE "C"``: for Kazoo-shaped ids the earliest
second).  ``link_batch`` keeps it in the batch's transaction, after the rows are written,
under advisory locks per account bucket (two nodes' batches of one call serialise, the
later sees the earlier's rows).  ``central_of`` / ``group_of`` are the SQL the read side
uses.  Invariants: every key holds account_id; a leg without an account joins nothing;
a node's own interaction_id is never rewritten (it stays an alias of the central one).
"""

from __future__ import annotations

import zlib
import psycopg
import structlog

from ..ingest.interactions import SIP_LINK_WINDOW_US

log = structlog.get_logger(__name__)

LOCK_ALIASES = 0x65736C03  # advisory lock class (pgschema's keys: ...01, ...02)
BUCKETS = 64  # account buckets, each one advisory lock

_ACCOUNTS = (
    "SELECT DISTINCT s.account_id FROM _staged AS s WHERE s.sip_call_id IS NOT NULL"
    " AND s.account_id <> '' AND s.interaction_id IS NOT NULL"
)
# Another node's legs of the same account and SIP Call-ID created within the
# window (it hung up after its creation: a bound on hangup_at, the partition key).
_PAIRS = (
    "SELECT DISTINCT s.account_id, s.interaction_id, o.interaction_id FROM _staged AS s"
    " JOIN cdrs AS o ON o.account_id = s.account_id AND o.sip_call_id = s.sip_call_id"
    " AND o.source <> %(source)s"
    " AND o.hangup_at >= to_timestamp((s.created_us - %(window)s) / 1000000.0)"
    " WHERE s.sip_call_id IS NOT NULL AND s.account_id <> '' AND s.interaction_id IS NOT NULL"
    " AND o.interaction_id IS NOT NULL AND o.interaction_id <> s.interaction_id"
    " AND abs(o.created_us - s.created_us) <= %(window)s"
)
_CENTRALS = (
    "SELECT interaction_id, central_id FROM interaction_aliases"
    " WHERE account_id = %s AND interaction_id = ANY(%s)"
)
_MOVE_GROUP = "UPDATE interaction_aliases SET central_id = %s WHERE account_id = %s AND central_id = %s"
_ALIAS = (
    "INSERT INTO interaction_aliases (account_id, interaction_id, central_id) VALUES (%s, %s, %s)"
    " ON CONFLICT (account_id, interaction_id) DO UPDATE SET central_id = EXCLUDED.central_id"
)


def bucket(account_id: str) -> int:
    return zlib.crc32(account_id.encode("utf-8")) % BUCKETS


def link_batch(cur: psycopg.Cursor, node: str) -> int:
    """Join the staged legs' interactions with other nodes' (the rows already
    written, in the batch's transaction); return how many ids changed group."""
    accounts = [row[0] for row in cur.execute(_ACCOUNTS).fetchall()]
    if not accounts:
        return 0
    for number in sorted({bucket(account) for account in accounts}):
        cur.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_ALIASES, number))
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
    changed = 0
    for old in sorted(parent):
        new = root(old)
        cur.execute(_MOVE_GROUP, (new, account, old))
        cur.execute(_ALIAS, (account, old, new))
        changed += 1
    return changed


def _c_order(text: str) -> bytes:
    """PostgreSQL's ``COLLATE "C"`` order (bytes of UTF-8)."""
    return text.encode("utf-8")


def central_of(alias: str = "c") -> str:
    """SQL: the central interaction id of a row of ``cdrs AS alias``."""
    return ("COALESCE((SELECT a.central_id FROM interaction_aliases AS a WHERE a.account_id = {0}.account_id"
            " AND a.interaction_id = {0}.interaction_id), {0}.interaction_id)".format(alias))


def group_of(central: str, account: str) -> str:
    """SQL: every node id of the central interaction ``central`` (an SQL
    expression) in ``account`` (an SQL expression), the central id first."""
    return ("SELECT {0} UNION ALL SELECT g.interaction_id FROM interaction_aliases AS g"
            " WHERE g.account_id = {1} AND g.central_id = {0}".format(central, account))


def resolve(account_param: str, id_sql: str) -> str:
    """SQL: the central id of the node id ``id_sql`` in the account."""
    return ("COALESCE((SELECT r.central_id FROM interaction_aliases AS r WHERE r.account_id = {0}"
            " AND r.interaction_id = {1}), {1})".format(account_param, id_sql))

