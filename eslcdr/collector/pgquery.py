"""SQL of the central read side: the node's listings (``query.sql``) spelled for PostgreSQL.

Same rows, same order, same meaning as ``query.sql`` on a node: listing rows are
``kazoo.SOURCE_COLUMNS`` (custom_channel_vars as jsonb's text), the keyset position
(timestamp, seq / start, interaction id), then ``source``; the interaction start is
``store.schema.interaction_start`` written in PostgreSQL; filters compare values as
SQLite's do (a JSON boolean is ``1``/``0`` as text, an array or object the node's text
of it, a JSON real its 15 digits, an INTEGER column only equals a number).  Rows of every
node are in one table: a CDR listing is ordered by (timestamp, seq, source) -- seqs are
per node -- and a cursor's (timestamp, seq) starts at the first node of that pair (with
its source: at that node's row).  An interaction is the central one (``pginteractions``):
listed, keyed and found by the row's stored ``central_id``; a record reads its node's id
and the central one.  Invariants: every statement is scoped by ``account_id``; every
client value is a bound parameter (``%s``), a JSON path included.
"""

from __future__ import annotations

import functools
import json
import math
import re
import sqlite3
from contextlib import closing
from typing import Any, Sequence

from ..ingest.legs import GREGORIAN_OFFSET
from ..query.kazoo import SOURCE_COLUMNS
from ..query.params import KIND_INTERACTIONS, Filter, ListQuery
from ..query.stats import UNKNOWN_CAUSE, USER_OUTCOMES, WORST_COLUMNS, StatsQuery, WorstQuery
from ..store.schema import COLUMN_NAMES, INTEGER_COLUMNS, COLUMNS, LOW_MOS, counted_sql, seizure_sql, sql_list
from .pgschema import NO_ACCOUNT

_REAL_COLUMNS = frozenset(name for name, sqltype, _ in COLUMNS if sqltype.startswith("REAL"))
_PATH_SEGMENT = re.compile(r'"([^"]*)"')
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def col(name: str, alias: str = "c") -> str:
    return '%s."%s"' % (alias, name)


def selected(name: str) -> str:
    """A column as a node holds it: a leg without an account is stored centrally
    with account_id NO_ACCOUNT (a key column is never NULL) and read as NULL."""
    return "NULLIF(%s, '%s')" % (col(name), NO_ACCOUNT) if name == "account_id" else col(name)


# The interaction start (store.schema.INTERACTION_START): a Kazoo-shaped id's
# time prefix, else the earliest leg's creation, in Gregorian seconds.
# Centrally the interaction is the central one (pginteractions.py): its id is
# the group's central id, stored in each row (the node's for a call on one
# node).  START is spelled exactly as pgmigrations' cdrs_*_interactions indexes.
CENTRAL = col("central_id")
START = (
    "CASE WHEN {0} ~ '^[0-9]{{11}}-[0-9a-fA-F]' THEN substr({0}, 1, 11)::bigint"
    " ELSE COALESCE(c.interaction_created_us, c.created_us, 0) / 1000000 + {1} END".format(CENTRAL, GREGORIAN_OFFSET)
)
_HANGUP = col("timestamp")
# What a full record reads: every column in COLUMN_NAMES order, then the node
# it came from and the central interaction id (``readside.render`` makes the record).
RECORD_SELECT = ", ".join(selected(name) for name in COLUMN_NAMES + ("source",)) + ", " + CENTRAL


def listed(name: str) -> str:
    """A listing column: custom_channel_vars as jsonb's text (psycopg would
    parse it with the json module; ``readside.listing_vars`` makes it the node's)."""
    return "%s::text" % col(name) if name == "custom_channel_vars" else selected(name)


_SOURCE_SELECT = ", ".join(listed(name) for name in SOURCE_COLUMNS)
# An interaction listing row names the central interaction.
_INTERACTION_SELECT = ", ".join(CENTRAL if name == "interaction_id" else listed(name) for name in SOURCE_COLUMNS)


def account_scope(account_id: str, owner_id: str | None) -> tuple[list[str], list[Any]]:
    clauses, args = ["c.account_id = %s"], [account_id]
    if owner_id is not None:
        clauses.append("c.owner_id = %s")
        args.append(owner_id)
    return clauses, args


def _as_number(value: str | None, integer: bool) -> int | float | None:
    """A filter value as SQLite's numeric affinity reads it (None: matches no number)."""
    text = (value or "").strip()
    lowered = text.lower()
    if integer and lowered in ("true", "false"):
        return 1 if lowered == "true" else 0
    if not _NUMBER.fullmatch(text):
        return None
    number = float(text)
    if integer:
        return int(number) if number.is_integer() and abs(number) < 2**63 else None
    return number


def _jsonb_text(value: Any) -> str:
    """A JSON value as jsonb's text of it: ``", "`` and ``": "``, an object's keys
    shortest first, then in byte order."""
    if isinstance(value, dict):
        keys = sorted(value, key=lambda key: (len(key.encode()), key.encode()))
        return "{%s}" % ", ".join("%s: %s" % (_jsonb_text(key), _jsonb_text(value[key])) for key in keys)
    if isinstance(value, list):
        return "[%s]" % ", ".join(map(_jsonb_text, value))
    return json.dumps(value, ensure_ascii=False)


def node_container_text(value: str) -> str | None:
    """A filter value that a node's JSON array or object equals -- SQLite's text of
    what the node wrote (store.db: keys sorted, as json_extract gives it, without
    spaces) -- as jsonb's text of that value; else None (no array or object is equal)."""
    if value[:1] not in ("[", "{"):
        return None
    try:
        parsed = json.loads(value)
    except ValueError:
        return None
    if json.dumps(parsed, ensure_ascii=False, sort_keys=True, separators=(",", ":")) != value:
        return None
    return _jsonb_text(parsed)


@functools.lru_cache(maxsize=256)
def node_real_text(value: str) -> str | None:
    """A filter value that a node's JSON real (or integer past 64 bits, which SQLite
    reads as a real) equals -- SQLite's text of a REAL: 15 significant digits,
    ``0.3`` for 0.30000000000000004 -- as printf's ``%.14e`` of it (what
    ``to_char`` gives a float8 with ``_REAL_DIGITS``); else None."""
    try:
        number = float(value)
    except ValueError:
        return None
    if not math.isfinite(number):
        return None
    with closing(sqlite3.connect(":memory:")) as memory:
        text = memory.execute("SELECT CAST(? AS TEXT)", (number,)).fetchone()[0]
    return "%.14e" % number if text == value else None


_REAL_DIGITS = "9.99999999999999EEEE"
_INT64 = "-9223372036854775808 AND 9223372036854775807"


def _filter_sql(flt: Filter) -> tuple[str, list[Any]]:
    name = flt.field.column
    column = col(name)
    path = flt.field.json_path
    if path is not None:
        segments = _PATH_SEGMENT.findall(path)
        node, node_args = "(%s #> %%s::text[])" % column, [segments]
        # SQLite's json_extract as text: a JSON boolean is 1 / 0, a string its text.
        text = ("(CASE jsonb_typeof(%s) WHEN 'boolean' THEN (%s)::boolean::int::text"
                " ELSE %s #>> %%s::text[] END)" % (node, node, column))
        text_args = node_args + node_args + [segments]
        missing, missing_args = "%s #>> %%s::text[] IS NULL" % column, [segments]
    else:
        node, node_args = column, []
        text = ("(%s)::int::text" % column) if name == "fax_success" else "(%s)::text" % column
        text_args = []
        missing, missing_args = "%s IS NULL" % column, []
    if flt.op in ("has_key", "key_missing"):
        present = "%s IS NOT NULL" % node
        return (present if flt.op == "has_key" else "NOT (%s)" % present), list(node_args)
    if flt.op in ("has_value", "value_missing"):
        return "COALESCE(%s, '') %s ''" % (text, "!=" if flt.op == "has_value" else "="), list(text_args)
    value = flt.value or ""
    if "\x00" in value:  # PostgreSQL text never holds a NUL: equal to nothing
        equal, eq_args = "false", []
    elif path is None and (name in INTEGER_COLUMNS or name in _REAL_COLUMNS):
        number = _as_number(value, name in INTEGER_COLUMNS)
        if number is None:
            equal, eq_args = "false", []
        elif name == "fax_success":
            equal, eq_args = "(%s)::int = %%s" % column, [number]
        else:
            equal, eq_args = "%s = %%s" % column, [number]
    elif path is None:
        equal, eq_args = "%s = %%s" % column, [value]
    elif value.lower() in ("true", "false"):
        equal = "(jsonb_typeof(%s) = 'boolean' AND %s #>> %%s::text[] = %%s OR %s = %%s)" % (node, column, text)
        eq_args = node_args + [segments, value.lower()] + text_args + [value]
    else:
        # An array or object equals the node's text of it (jsonb's text has spaces);
        # a number that SQLite reads as a REAL, its 15 significant digits.
        equal = ("(CASE jsonb_typeof({n}) WHEN 'array' THEN ({n})::text = %s WHEN 'object' THEN ({n})::text = %s"
                 " WHEN 'number' THEN CASE WHEN ({n})::text ~ '^-?[0-9]+$' AND ({n})::numeric BETWEEN {int64}"
                 " THEN {t} = %s ELSE btrim(to_char(CASE WHEN abs(({n})::numeric) < 1e308 THEN ({n})::float8 END,"
                 " '{digits}')) = %s END ELSE {t} = %s END)").format(n=node, t=text, int64=_INT64, digits=_REAL_DIGITS)
        container = node_container_text(value)
        eq_args = (node_args * 2 + [container] + node_args + [container] + node_args * 2 + text_args + [value]
                   + node_args * 2 + [node_real_text(value)] + text_args + [value])
    if flt.op == "eq":
        return equal, eq_args
    return "(%s OR NOT COALESCE(%s, false))" % (missing, equal), missing_args + eq_args


def _where_filters(filters: Sequence[Filter]) -> tuple[list[str], list[Any]]:
    clauses, args = [], []
    for flt in filters:
        sql, flt_args = _filter_sql(flt)
        clauses.append(sql)
        args.extend(flt_args)
    return clauses, args


def list_sql(query: ListQuery, after: Sequence[Any] | None = None, limit: int | None = None,
             keyed: bool = True) -> tuple[str, list[Any]]:
    """A CDR or interaction listing: rows of SOURCE_COLUMNS, key, tie, source.

    From ``query.cursor`` on (inclusive), or from the row whose (key, tie,
    source) is ``after`` on (inclusive: a stream's next chunk); at most ``limit``
    rows (default: page_size + 1; None with no page size: every row).  Not
    ``keyed``, a CDR listing's rows leave the key out (it is their ``timestamp``
    value): SOURCE_COLUMNS, tie, source -- as wide as a node's listing row."""
    interactions = query.kind == KIND_INTERACTIONS
    key = START if interactions else _HANGUP
    # Text in byte order, as SQLite compares it (not the database's collation).
    tie = '%s COLLATE "C"' % CENTRAL if interactions else "c.seq"
    clauses, args = account_scope(query.account_id, query.owner_id)
    low, high = query.created_from, query.created_to
    op = ">=" if query.ascending else "<="
    if after is not None:
        position = after if interactions else tuple(after)
        if interactions:
            clauses.append("(%s, %s) %s (%%s, %%s)" % (key, tie, op))
            args += [position[0], position[1]]
        else:
            clauses.append('(%s, %s, c.source COLLATE "C") %s (%%s, %%s, %%s)' % (key, tie, op))
            args += list(position)
    elif query.cursor is not None and query.cursor.source is not None and not interactions:
        clauses.append('(%s, %s, c.source COLLATE "C") %s (%%s, %%s, %%s)' % (key, tie, op))
        args += [query.cursor.key, query.cursor.seq, query.cursor.source]
    elif query.cursor is not None:
        clauses.append("(%s, %s) %s (%%s, %%s)" % (key, tie, op))
        args += [query.cursor.key, query.cursor.seq]
    clauses.append("%s BETWEEN %%s AND %%s" % key)
    args += [low, high]
    if interactions:
        clauses.append("%s IS NOT NULL" % CENTRAL)
    filter_clauses, filter_args = _where_filters(query.filters)
    clauses += filter_clauses
    args += filter_args
    if interactions:
        # The interaction's first leg (in the account; of the user on a
        # user's listing): earliest creation, then seq, then node.
        clauses.append(
            "NOT EXISTS (SELECT 1 FROM cdrs AS o WHERE o.account_id = c.account_id AND o.central_id = c.central_id%s"
            " AND (COALESCE(o.created_us, 0), o.seq, o.source COLLATE \"C\")"
            " < (COALESCE(c.created_us, 0), c.seq, c.source COLLATE \"C\"))"
            % (" AND o.owner_id = c.owner_id" if query.owner_id is not None else ""))
    order = "ASC" if query.ascending else "DESC"
    third = "" if interactions else ', c.source COLLATE "C" %s' % order
    selected_columns = _INTERACTION_SELECT if interactions else _SOURCE_SELECT
    sql = "SELECT %s, %s, c.source FROM cdrs AS c WHERE %s ORDER BY %s %s, %s %s%s" % (
        selected_columns, "%s, %s" % (key, tie) if keyed or interactions else tie, " AND ".join(clauses),
        key, order, tie, order, third)
    if limit is None and query.page_size is not None:
        limit = query.page_size + 1
    if limit is not None:
        sql += " LIMIT %s"
        args.append(limit)
    return sql, args


# A CDR id is ``YYYYMM-<call_id>`` (store.schema): a row found by its id is
# found by its call_id too, through the primary key (schema 9 has no index on id).
_CDR_ID = re.compile(r"[0-9]{6}-(.+)", re.S)


def call_ids(leg_id: str) -> list[str]:
    """The call ids a CDR or call id can name: itself, and the call id of a CDR id."""
    match = _CDR_ID.fullmatch(leg_id)
    return [leg_id, match.group(1)] if match else [leg_id]


def detail_sql(account_id: str, cdr_id: str) -> tuple[str, list[Any]]:
    """One row's columns (RECORD_SELECT) by CDR id, else by call id."""
    return ("SELECT %s FROM cdrs AS c WHERE c.account_id = %%s AND c.call_id = ANY(%%s)"
            " AND (c.id = %%s OR c.call_id = %%s) ORDER BY c.id = %%s DESC LIMIT 1" % RECORD_SELECT,
            [account_id, call_ids(cdr_id), cdr_id, cdr_id, cdr_id])


def legs_sql(account_id: str, leg_id: str) -> tuple[str, list[Any]]:
    """Every leg of the central interaction named by an interaction id (central
    or a node's own), CDR or call id (RECORD_SELECT), in creation order (no
    creation first, as SQLite sorts NULL)."""
    return (
        "WITH target AS (SELECT central_id AS cid, call_id FROM cdrs"
        " WHERE account_id = %%s AND call_id = ANY(%%s) AND (id = %%s OR call_id = %%s) LIMIT 1),"
        " named AS (SELECT COALESCE((SELECT a.central_id FROM interaction_aliases AS a WHERE a.account_id = %%s"
        " AND a.interaction_id = %%s), %%s) AS cid UNION ALL SELECT cid FROM target)"
        # Two arms, each an index look-up (one OR of them read the account's
        # every row); a leg without a central id is in the second only.
        " SELECT * FROM (SELECT %s FROM cdrs AS c WHERE c.account_id = %%s AND c.central_id IN (SELECT cid FROM named)"
        " UNION ALL SELECT %s FROM cdrs AS c WHERE c.account_id = %%s"
        " AND c.call_id = (SELECT call_id FROM target WHERE cid IS NULL)) AS c"
        ' ORDER BY c.created_us ASC NULLS FIRST, c.seq, c.source COLLATE "C"' % (RECORD_SELECT, RECORD_SELECT),
        [account_id, call_ids(leg_id), leg_id, leg_id, account_id, leg_id, leg_id, account_id, account_id])


# ------------------------------------------------------------------ KPIs
# query/stats.py's leg statements (stats_statements, worst_sql) spelled for
# PostgreSQL: the same legs (loopback legs nowhere), the same rows per bucket.
_SEIZURE = seizure_sql("c.call_direction", "COALESCE(c.hangup_cause, '')")
_ANSWERED = "c.answered_us > 0"
_USER = "c.hangup_cause IN (%s)" % sql_list(USER_OUTCOMES)
_COUNTED = counted_sql("COALESCE(c.channel_name, '')").replace("%", "%%")  # psycopg: a literal % is %%


def _kpi_scope(account_id: str, owner_id: str | None, ranges: Sequence[tuple[int, int]],
               filters: Sequence[Filter]) -> tuple[str, list[Any]]:
    clauses, args = account_scope(account_id, owner_id)
    clauses += [_in(ranges), _COUNTED]
    args += [bound for pair in ranges for bound in pair]
    filter_clauses, filter_args = _where_filters(filters)
    return " AND ".join(clauses + filter_clauses), args + filter_args


def _in(ranges: Sequence[tuple[int, int]]) -> str:
    return "(%s)" % (" OR ".join("%s BETWEEN %%s AND %%s" % _HANGUP for _ in ranges) or "false")


# The figures of stats_statements' counters rows, over the legs ``l`` of stats_sql.
_COUNTERS = (
    "count(*)", "count(*) FILTER (WHERE l.inbound)", "count(*) FILTER (WHERE l.inbound AND l.ans)",
    "count(*) FILTER (WHERE l.seiz)", "count(*) FILTER (WHERE l.seiz AND l.ans)",
    "count(*) FILTER (WHERE l.seiz AND NOT l.ans AND l.user_outcome)",
    "COALESCE(sum(l.billing_seconds) FILTER (WHERE l.seiz AND l.ans), 0)::float8",
    "count(l.audio_in_mos)", "COALESCE(sum(l.audio_in_mos::numeric), 0)::float8",
    "count(*) FILTER (WHERE l.audio_in_mos < %r)" % LOW_MOS, "count(l.no_rtp_in)",
    "count(*) FILTER (WHERE l.no_rtp_in = 1)",
)
_NO_COUNTERS = ", ".join("NULL::float8" if figure.endswith("float8") else "NULL::bigint" for figure in _COUNTERS)
_COUNTERS_ROW, _CAUSES_ROW, _PDD_ROW = 0, 1, 2  # which of stats_statements' rows a row of stats_sql is


def stats_sql(query: StatsQuery, ranges: Sequence[tuple[int, int]],
              pdd_ranges: Sequence[tuple[int, int]] | None = None) -> tuple[str, list[Any]]:
    """(sql, args) of the three aggregates of ``stats.stats_statements`` in one
    read of the legs (a MATERIALIZED CTE of their few columns, aggregated
    three times): the counters and the seizures per cause of the legs hung up
    in any of the inclusive ``ranges``, the seizures per pdd_ms of those in
    ``pdd_ranges`` (default: ``ranges``); ``stats_kinds`` splits its rows
    (kind, bucket, cause, pdd_ms, counters..., seizures) into stats_statements'."""
    pdd_ranges = ranges if pdd_ranges is None else pdd_ranges
    where, args = _kpi_scope(query.account_id, query.owner_id, list(ranges) + list(pdd_ranges), query.filters)
    legs = (
        "SELECT {hangup} / {i} AS bucket, {main} AS main,"
        " CASE WHEN {seiz} AND {main} THEN CASE WHEN COALESCE(c.hangup_cause, '') = '' THEN '{unknown}'"
        " ELSE c.hangup_cause END END AS cause,"
        " CASE WHEN {seiz} AND {pdd} THEN c.pdd_ms END AS pdd,"
        " c.call_direction = 'inbound' AS inbound, {seiz} AS seiz, {ans} AS ans, {user} AS user_outcome,"
        " c.billing_seconds, c.audio_in_mos, c.no_rtp_in FROM cdrs AS c WHERE {where}"
    ).format(hangup=_HANGUP, i=query.interval, main=_in(ranges), pdd=_in(pdd_ranges), seiz=_SEIZURE,
             unknown=UNKNOWN_CAUSE, ans=_ANSWERED, user=_USER, where=where)  # interval: an int from parse
    sql = (
        "WITH l AS MATERIALIZED ({legs})"
        " SELECT {counters_row}, l.bucket, NULL::text, NULL::bigint, {counters}, NULL::bigint FROM l"
        " WHERE l.main GROUP BY 2"
        " UNION ALL SELECT {causes_row}, l.bucket, l.cause, NULL, {none}, count(*) FROM l"
        " WHERE l.cause IS NOT NULL GROUP BY 2, 3"
        " UNION ALL SELECT {pdd_row}, l.bucket, NULL, l.pdd, {none}, count(*) FROM l WHERE l.pdd IS NOT NULL GROUP BY 2, 4"
    ).format(legs=legs, counters=", ".join(_COUNTERS), none=_NO_COUNTERS, counters_row=_COUNTERS_ROW,
             causes_row=_CAUSES_ROW, pdd_row=_PDD_ROW)
    main_args = [bound for pair in ranges for bound in pair]
    return sql, main_args + main_args + [bound for pair in pdd_ranges for bound in pair] + args


def stats_kinds(rows: Sequence[Sequence[Any]]) -> list[list[tuple]]:
    """stats_sql's rows as stats_statements' [counters, causes, pdd]."""
    kinds: list[list[tuple]] = [[], [], []]
    for row in rows:
        kind, bucket = row[0], row[1]
        if kind == _COUNTERS_ROW:
            kinds[0].append((bucket,) + tuple(row[4:-1]))
        elif kind == _CAUSES_ROW:
            kinds[1].append((bucket, row[2], row[-1]))
        else:
            kinds[2].append((bucket, row[3], row[-1]))
    return kinds


def worst_sql(query: WorstQuery) -> tuple[str, list[Any]]:
    """The worst legs (``stats.WORST_COLUMNS``) in ``stats.worst_sql``'s order;
    rows of two nodes at the same (value, timestamp, seq): by node name, last first."""
    where, args = _kpi_scope(query.account_id, query.owner_id, [(query.created_from, query.created_to)],
                             query.filters)
    tie = 'c."timestamp" DESC, c.seq DESC, c.source COLLATE "C" DESC'
    if query.kind == "mos":
        where += " AND c.audio_in_mos IS NOT NULL"
        order = "c.audio_in_mos ASC, " + tie
    elif query.kind == "pdd":
        where += " AND %s AND c.pdd_ms IS NOT NULL" % _SEIZURE
        order = "c.pdd_ms DESC, " + tie
    else:
        where += " AND c.no_rtp_in = 1"
        order = tie
    columns = ", ".join(col(name) for name in WORST_COLUMNS)
    return ("SELECT %s FROM cdrs AS c WHERE %s ORDER BY %s LIMIT %%s" % (columns, where, order),
            args + [query.limit])
