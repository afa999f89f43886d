"""SQL of the read side: every statement the API runs on ``cdrs``, each fragment written once.

Keyset, never OFFSET.  A listing is in total order on a unique key -- ``(timestamp, seq)``
for CDRs, ``(start, interaction_id)`` for interactions (``schema.interaction_start``: a
Kazoo-shaped id's time prefix, else the earliest leg's creation) -- and a page reads
``page_size + 1`` rows from its cursor on, inclusive: the extra row starts the next page.  A row
written between pages lands on the unvisited side of the cursor (shown later, once) or the
visited side (not shown): no row is skipped or repeated.

Invariants: every listing, record and stats statement is scoped by ``account_id``
(``account_scope``); every client value is a bound parameter (a filter's JSON path too).
List rows are ``kazoo.SOURCE_COLUMNS`` then the two keyset columns (``LIST_ROW_WIDTH``);
full records are SQLite-rendered JSON or CSV text (``kazoo.record_sql``).
"""

from __future__ import annotations

from typing import Any, Sequence

import orjson

from .kazoo import SOURCE_COLUMNS, record_sql
from .params import KIND_INTERACTIONS, FeedQuery, Filter, ListQuery
from .reader import DatastoreError
from ..store.schema import INTEGER_COLUMNS, interaction_start


def column_sql(name: str, alias: str = "c") -> str:
    """A column of ``cdrs AS <alias>`` as an SQL expression."""
    return '%s."%s"' % (alias, name)


def in_range(expr: str) -> str:
    """``expr`` in an inclusive range: two args, low and high."""
    return "%s BETWEEN ? AND ?" % expr


_HANGUP = column_sql("timestamp")
HANGUP_IN_RANGE = in_range(_HANGUP)  # a leg hung up in [low, high] (Gregorian seconds)


def account_scope(account_id: str, owner_id: str | None) -> tuple[list[str], list[Any]]:
    """The clauses (and args) that keep a statement on ``cdrs AS c`` to one
    account's legs, or one user's of it."""
    clauses, args = ["c.account_id = ?"], [account_id]
    if owner_id is not None:
        clauses.append("c.owner_id = ?")
        args.append(owner_id)
    return clauses, args


def _filter_sql(flt: Filter, alias: str) -> tuple[str, list[Any]]:
    column = column_sql(flt.field.column, alias)
    path = flt.field.json_path
    if path is None:
        expr, args = column, []
    else:
        expr, args = "json_extract(%s, ?)" % column, [path]
    as_text = "CAST(%s AS TEXT)" % expr
    if flt.op in ("has_key", "key_missing"):
        present = ("json_type(%s, ?) IS NOT NULL" % column) if path else ("%s IS NOT NULL" % column)
        return (present if flt.op == "has_key" else "NOT (%s)" % present), list(args)
    if flt.op in ("has_value", "value_missing"):
        return "COALESCE(%s, '') %s ''" % (as_text, "!=" if flt.op == "has_value" else "="), list(args)
    value: Any = flt.value
    if path is None and flt.field.column in INTEGER_COLUMNS:
        lowered = (value or "").lower()
        if lowered in ("true", "false"):
            value = 1 if lowered == "true" else 0
        # INTEGER affinity converts '42' to 42 for the comparison; text that
        # is not a number simply matches nothing.
        equal, eq_args = "%s = ?" % expr, args + [value]
    elif path is None:
        equal, eq_args = "%s = ?" % expr, args + [value]
    elif (value or "").lower() in ("true", "false"):
        equal = "(json_type(%s, ?) = ? OR %s = ?)" % (column, as_text)
        eq_args = [path, value.lower()] + args + [value]
    else:
        equal, eq_args = "%s = ?" % as_text, args + [value]
    if flt.op == "eq":
        return equal, eq_args
    return "(%s IS NULL OR NOT %s)" % (expr, equal), args + eq_args


def where_filters(filters: Sequence[Filter], alias: str) -> tuple[list[str], list[Any]]:
    clauses, args = [], []
    for flt in filters:
        sql, flt_args = _filter_sql(flt, alias)
        clauses.append(sql)
        args.extend(flt_args)
    return clauses, args


# Listing rows: SOURCE_COLUMNS, then the two keyset columns; named v0, v1, ...
# so that packed_sql can refer to them from outside.
LIST_ROW_WIDTH = len(SOURCE_COLUMNS) + 2
_SOURCE_SELECT = ", ".join("%s AS v%d" % (column_sql(name), i) for i, name in enumerate(SOURCE_COLUMNS))
_KEYS_SELECT = ", %%s AS v%d, %%s AS v%d" % (LIST_ROW_WIDTH - 2, LIST_ROW_WIDTH - 1)
_START = interaction_start("c")


def list_sql(query: ListQuery) -> tuple[str, list[Any]]:
    """SQL for a CDR or interaction listing.

    Result rows are the SOURCE_COLUMNS values (``kazoo.list_values`` shapes
    them) followed by the keyset position: (timestamp, seq) for CDRs,
    (start, interaction_id) for interactions.
    """
    if query.kind == KIND_INTERACTIONS:
        return _interactions_sql(query)
    clauses, args = _keyset_scope(query, _HANGUP, "c.seq")
    filter_clauses, filter_args = where_filters(query.filters, "c")
    return _listing(query, _HANGUP, "c.seq", clauses + filter_clauses, args + filter_args)


def _keyset_scope(query: ListQuery, key: str, tie: str) -> tuple[list[str], list[Any]]:
    """The account scope and the keyset range of a listing ordered by
    (key, tie): the time range on ``key``, from the cursor on (inclusive).

    SQLite does not bound an index range by a row-value comparison: the
    cursor narrows the key range to its key (so a deep page seeks, not
    scans) and the row value settles ties on that key."""
    clauses, args = account_scope(query.account_id, query.owner_id)
    low, high = query.created_from, query.created_to
    if query.cursor is not None:
        if query.ascending:
            low = max(low, query.cursor.key)
        else:
            high = min(high, query.cursor.key)
        clauses.append("(%s, %s) %s (?, ?)" % (key, tie, ">=" if query.ascending else "<="))
        args += [query.cursor.key, query.cursor.seq]
    clauses.append(in_range(key))
    args += [low, high]
    return clauses, args


def _listing(query: ListQuery, key: str, tie: str, clauses: list[str], args: list[Any]) -> tuple[str, list[Any]]:
    """The listing statement: its rows in (key, tie) order, LIMIT page_size + 1."""
    order = "ASC" if query.ascending else "DESC"
    sql = "SELECT %s%s FROM cdrs AS c WHERE %s ORDER BY %s %s, %s %s" % (
        _SOURCE_SELECT, _KEYS_SELECT % (key, tie), " AND ".join(clauses), key, order, tie, order)
    if query.page_size is not None:
        sql += " LIMIT ?"
        args.append(query.page_size + 1)
    return sql, args


def _interactions_sql(query: ListQuery) -> tuple[str, list[Any]]:
    """One row per interaction -- its first leg in the account (and of the
    user, on a user's listing), as Kazoo's reduce keeps the earliest channel
    -- ordered by (start, interaction id), the time range on the start.

    The start (schema.interaction_start) is the time prefix of a Kazoo-shaped
    id, else the earliest leg's creation as every row of the interaction
    carries it (``interaction_created_us``): both kinds of id page together,
    and the position does not move when an earlier leg is written later.  The
    (account[, owner], start, interaction id) index gives the rows in listing
    order, so a page reads about page_size interactions' legs.
    """
    clauses, args = _keyset_scope(query, _START, "c.interaction_id")
    clauses.append("c.interaction_id IS NOT NULL")
    filter_clauses, filter_args = where_filters(query.filters, "c")
    clauses += filter_clauses
    args += filter_args
    # The earlier legs are looked up by interaction id (idx_cdrs_interaction:
    # ~3 rows), their account and owner checked on the row: the unary + keeps
    # the planner off the account's indexes, which would read every leg of
    # the account for each row listed.
    clauses.append(
        "NOT EXISTS (SELECT 1 FROM cdrs AS o WHERE o.interaction_id = c.interaction_id"
        " AND +o.account_id = c.account_id%s"
        " AND (ifnull(o.created_us, 0) < ifnull(c.created_us, 0)"
        " OR (ifnull(o.created_us, 0) = ifnull(c.created_us, 0) AND o.seq < c.seq)))"
        % (" AND +o.owner_id = c.owner_id" if query.owner_id is not None else "")
    )
    return _listing(query, _START, "c.interaction_id", clauses, args)


def packed_sql(sql: str, args: list[Any]) -> tuple[str, list[Any]]:
    """A ``list_sql`` statement whose rows come back as one value: a JSON
    array of the rows (each an array of LIST_ROW_WIDTH values), as a BLOB of
    UTF-8 (``unpack_rows`` reads it).

    SQLite builds it inside one step, which runs with the GIL released: in a
    worker thread, the whole chunk is read while the hub renders the previous
    one.  Fetched as tuples, sqlite3 takes the GIL back for every row, and a
    busy hub holds it for its switch interval each time.  Row order is the
    listing's: the aggregate reads the ordered subquery as a co-routine.
    """
    columns = ", ".join("v%d" % i for i in range(LIST_ROW_WIDTH))
    return "SELECT CAST(json_group_array(json_array(%s)) AS BLOB) FROM (%s)" % (columns, sql), args


def unpack_rows(fetched: list[tuple]) -> list[list[Any]]:
    """The rows of a ``packed_sql`` result: lists, values as stored (INTEGER
    as int, TEXT as str, NULL as None)."""
    try:
        return orjson.loads(fetched[0][0])
    except (orjson.JSONDecodeError, IndexError, TypeError) as exc:
        raise DatastoreError("packed rows are not a JSON array: %s" % exc) from None


def detail_sql(account_id: str, cdr_id: str, fmt: str = "json") -> tuple[str, list[Any]]:
    """One full record (``kazoo.record_sql``) by CDR id, or failing that by call id."""
    return ("SELECT %s FROM cdrs AS c WHERE c.account_id = ? AND (c.id = ? OR c.call_id = ?)"
            " ORDER BY c.id = ? DESC LIMIT 1" % record_sql(fmt), [account_id, cdr_id, cdr_id, cdr_id])


def legs_sql(account_id: str, leg_or_interaction: str, fmt: str = "json",
             start: Sequence[Any] | None = None, limit: int | None = None) -> tuple[str, list[Any]]:
    """Every leg of the interaction named by an interaction id, a CDR id or a
    call id, as full records in creation order.

    A leg without an interaction id is its own interaction.  Three indexed
    equalities joined by OR (SQLite's OR-by-union plan: idx_cdrs_interaction
    twice, the primary key), each row checked for the account (``+``: not a
    search of the account's index, which reads every leg of the account).
    Rows are (record, created key, seq); ``start`` (a row) and ``limit`` read
    them in keyset chunks.
    """
    args = [account_id, leg_or_interaction, leg_or_interaction, account_id, leg_or_interaction]
    after = ""
    if start is not None:
        after = " AND (COALESCE(c.created_us, -1), c.seq) >= (?, ?)"
        args += [start[-2], start[-1]]
    sql = (
        "WITH target(iid, seq) AS (SELECT interaction_id, seq FROM cdrs"
        " WHERE account_id = ? AND (id = ? OR call_id = ?) LIMIT 1)"
        " SELECT %s, COALESCE(c.created_us, -1), c.seq FROM cdrs AS c WHERE +c.account_id = ? AND (c.interaction_id = ?"
        " OR c.interaction_id = (SELECT iid FROM target)"
        " OR c.seq = (SELECT seq FROM target WHERE iid IS NULL))%s"
        " ORDER BY c.created_us, c.seq" % (record_sql(fmt), after)
    )
    if limit is not None:
        sql += " LIMIT ?"
        args.append(limit)
    return sql, args


def feed_sql(query: FeedQuery) -> tuple[str, list[Any]]:
    """Full records (JSON) after a seq in seq order; rows are (record, seq).

    seq order is commit order: one writer at a time (SQLite's write lock)
    takes AUTOINCREMENT values inside its transaction and commits them
    whole, so any snapshot holds every seq up to its newest commit --
    ``after=<last seq seen>`` never skips a row that becomes visible later.
    """
    sql = "SELECT %s, c.seq FROM cdrs AS c WHERE c.seq > ? ORDER BY c.seq" % record_sql("json")
    args: list[Any] = [query.after]
    if query.limit is not None:
        sql += " LIMIT ?"
        args.append(query.limit)
    return sql, args


def warm_sql(account_id: str, owner_id: str | None, low: int, high: int) -> tuple[str, list[Any]]:
    """A statement that reads the rows of an account (or one user's) hung up
    in [low, high] and returns one number: it brings their pages into the OS
    page cache, in file order (the index ascending), ahead of an export that
    reads them newest first -- a backward walk the kernel does not read ahead
    for, where a forward one is about three times faster from disk."""
    clauses, args = account_scope(account_id, owner_id)
    clauses.append(HANGUP_IN_RANGE)
    args += [low, high]
    return "SELECT count(c.custom_channel_vars) FROM cdrs AS c WHERE %s" % " AND ".join(clauses), args
