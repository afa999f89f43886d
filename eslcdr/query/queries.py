"""Read-only queries behind the API: parameters, keyset cursors, SQL, streaming.

Parsing.  ``parse_list_query`` turns the query string of a list request into
a frozen ``ListQuery`` or raises ``ParamError`` (rendered by the API as
Kazoo's ``validation error``).  Time bounds are Gregorian seconds, inclusive,
defaulting to ``now - max_range .. now``.  Filter field names are checked
against the ``cdrs`` columns; a dot path (``custom_channel_vars.owner_id``)
is allowed into the JSON columns and becomes a *bound* JSON path parameter:
no client text is ever spliced into SQL.

Pagination is keyset, never OFFSET.  Every listing has a total order on a
unique key: ``(timestamp, seq)`` for CDR lists (the hangup time; ``seq`` is
unique) and ``(start, interaction_id)`` for interaction lists.  An
interaction's start is the time prefix of a Kazoo-shaped id
(``<Gregorian seconds>-<8 hex>``, Kazoo's interaction_time), so such an
interaction keeps its place even when an earlier leg's CDR arrives after its
partner's (an A-leg often hangs up last); any other id (a UUID from
``interaction_id_vars``) starts at its earliest leg's creation -- an earlier
leg arriving later moves that interaction back by its ring time.  A page asks for
``page_size + 1`` rows; the extra row, if any, becomes the ``next_start_key``
and the next page starts *at* it (inclusive).  Rows that arrive between
pages cannot shift anything: a row is either on the unvisited side of the
cursor (and shows up later, once) or on the visited side (and is not shown);
no existing row is skipped or repeated.  The cursor also carries the
effective time range of the first page, so "the last 31 days" does not
slide under a client that pages slowly.  Cursors are opaque urlsafe base64
of a small JSON array and are validated like any input.

Execution.  ``ReaderPool`` keeps a few read-only connections
(``store.connect_reader``, memory-mapped).  A progress handler aborts any
single SQLite call that runs longer than ``statement_timeout``
(``StatementTimeout``).  Calls that may run long before their first row --
every page query, the opening of every stream -- run in gevent's thread pool
(``GeventRunner``), SQLite releasing the GIL, so the hub and the ESL reader
on it keep running.  Exports read through ``KeysetStream``: chunks of rows,
each its own statement read to its end (constant memory however many rows an
export has, and no read snapshot held while the response is written -- a
stalled client must not stop WAL checkpoints), inline while they are quick.

Result rows are stored columns for list rows (``kazoo.list_values`` shapes
them in Python) and SQLite-rendered JSON/CSV text for full records
(``kazoo.record_sql``).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import math
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence, TypeVar

import orjson

from ..config import ApiConfig
from .kazoo import SOURCE_COLUMNS, record_sql
from ..ingest.legs import GREGORIAN_OFFSET
from ..store.schema import COLUMN_NAMES, INTEGER_COLUMNS, JSON_COLUMNS, interaction_start
from ..store.db import connect_reader

if TYPE_CHECKING:
    from ..supervise import ThreadJob

T = TypeVar("T")
Params = Mapping[str, Sequence[str]]

KIND_CDRS = "cdrs"
KIND_INTERACTIONS = "interactions"
_KIND_CODES = {KIND_CDRS: "c", KIND_INTERACTIONS: "i"}
_CURSOR_VERSION = 1  # interaction cursors: 2 (start time, interaction id)
_INTERACTION_CURSOR_VERSION = 2

MAX_GREGORIAN = 315537897599  # 9999-12-31T23:59:59Z
MAX_UTC_OFFSET = 86400
MAX_FILTERS = 32
MAX_FILTER_VALUE = 1024
MAX_START_KEY = 512
FEED_DEFAULT_LIMIT = 1000
FEED_MAX_LIMIT = 10000
FETCH_BATCH = 500
WARM_CHUNKS = 8  # chunks of rows a warm statement reads ahead of a cold export (KeysetStream)
INLINE_BATCH_SECONDS = 0.05  # a streamed batch slower than this moves to the thread pool
READER_MMAP_BYTES = 1 << 34  # SQLite caps it at its build's maximum (2 GiB here)
_PROGRESS_STEPS = 4000  # VM instructions between deadline checks
# The same for a packed chunk read in a worker thread: every check is a Python
# call, which waits for the GIL (up to the 5 ms switch interval) while the hub
# renders -- 25 checks per 1,000-row chunk stalled the worker more than SQLite
# worked.  A million instructions take a few ms; the deadline is checked once
# more when the statement ends.
_COARSE_PROGRESS_STEPS = 1_000_000
# A heavy request's Python work on the hub (the buckets of a month by minute,
# their CSV or JSON: ~0.5 s) runs in slices of HEAVY_SLICE seconds, each
# followed by HEAVY_PAUSE seconds that no heavy request works (HeavyLane.pacer).
# Yielding to other greenlets is not enough: a worker thread (a light page's
# query, the writer) takes the GIL back for every row it reads, and while the
# hub computes it waits up to the switch interval (5 ms) each time -- 51 rows,
# a quarter of a second.  In the pause the hub idles in its poll, GIL free.
HEAVY_SLICE = 0.003
HEAVY_PAUSE = 0.002
_PATH_SEGMENT = re.compile(r"[A-Za-z0-9_\-]{1,128}")
_MODB_CALL_ID = re.compile(r"\d{6}-(.+)", re.DOTALL)
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_FILTER_KEYS = ("has_key", "key_missing", "has_value", "value_missing")


class ParamError(ValueError):
    """A query parameter is invalid: Kazoo's ``data.<param>.<code>`` error."""

    def __init__(self, param: str, code: str, message: str, cause: Any = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code
        self.message = message
        self.cause = cause

    def as_data(self) -> dict[str, Any]:
        detail: dict[str, Any] = {"message": self.message}
        if self.cause is not None:
            detail["cause"] = self.cause
        return {self.param: {self.code: detail}}


class StatementTimeout(Exception):
    """A statement ran longer than ``[api] statement_timeout`` and was aborted."""


class DatastoreError(Exception):
    """The database could not be opened or queried."""


# ---------------------------------------------------------------- parameters


@dataclass(frozen=True, slots=True)
class FieldRef:
    name: str  # as the client wrote it
    column: str
    json_path: str | None  # e.g. '$."owner_id"' (a bound parameter)


@dataclass(frozen=True, slots=True)
class Filter:
    op: str  # eq, ne, has_key, key_missing, has_value, value_missing
    field: FieldRef
    value: str | None = None


@dataclass(frozen=True, slots=True)
class Cursor:
    kind: str
    key: int  # hangup timestamp (CDR lists) or interaction start (interaction lists), Gregorian s
    seq: int | str  # seq (CDR lists) or interaction id (interaction lists): unique with the key
    created_from: int
    created_to: int


@dataclass(frozen=True, slots=True)
class ListQuery:
    kind: str
    account_id: str
    owner_id: str | None
    created_from: int
    created_to: int
    ascending: bool
    page_size: int | None  # None: every row (paginate=false, CSV)
    cursor: Cursor | None
    filters: tuple[Filter, ...]
    utc_offset: int


@dataclass(frozen=True, slots=True)
class FeedQuery:
    after: int
    limit: int | None  # None: everything (NDJSON stream)


def first(params: Params, name: str) -> str | None:
    values = params.get(name)
    return values[0] if values else None


def parse_bool(params: Params, name: str, default: bool) -> bool:
    raw = first(params, name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ParamError(name, "type", "%s must be true or false" % name, raw[:64])


def parse_int(params: Params, name: str, low: int, high: int, unit: str = "an integer") -> int | None:
    raw = first(params, name)
    if raw is None:
        return None
    text = raw.strip()
    # int() also accepts '1_000' and non-ASCII digits; the API does not.
    if not re.fullmatch(r"[+-]?[0-9]{1,20}", text):
        raise ParamError(name, "type", "%s must be %s" % (name, unit), raw[:64])
    value = int(text)
    if not low <= value <= high:
        raise ParamError(
            name, "minimum" if value < low else "maximum",
            "%s must be between %d and %d" % (name, low, high), raw[:64],
        )
    return value


def resolve_field(name: str, param: str) -> FieldRef:
    """A filterable field: a column, or a dot path into a JSON column."""
    if name in COLUMN_NAMES:
        return FieldRef(name, name, None)
    head, dot, rest = name.partition(".")
    if dot and head in JSON_COLUMNS:
        segments = rest.split(".")
        if all(_PATH_SEGMENT.fullmatch(segment) for segment in segments):
            return FieldRef(name, head, "$" + "".join('."%s"' % s for s in segments))
    raise ParamError(param, "unknown_field", "%s is not a CDR field" % name[:128], name[:128])


def parse_filters(params: Params) -> tuple[Filter, ...]:
    filters: list[Filter] = []
    for key, values in params.items():
        if key.startswith("filter_not_"):
            op, field_name = "ne", key[len("filter_not_"):]
        elif key.startswith("filter_"):
            op, field_name = "eq", key[len("filter_"):]
        elif key in _FILTER_KEYS:
            for value in values:
                filters.append(Filter(key, resolve_field(value, key)))
            continue
        else:
            continue
        field = resolve_field(field_name, key)
        for value in values:
            if len(value) > MAX_FILTER_VALUE:
                raise ParamError(key, "maxLength", "%s is longer than %d characters" % (key, MAX_FILTER_VALUE))
            if field.json_path is None and field.column.endswith("call_id"):
                # Kazoo accepts a CDR id (YYYYMM-<call_id>) for call id filters.
                match = _MODB_CALL_ID.fullmatch(value)
                value = match.group(1) if match else value
            filters.append(Filter(op, field, value))
    if len(filters) > MAX_FILTERS:
        raise ParamError("filter", "maxItems", "at most %d filters per request" % MAX_FILTERS, len(filters))
    return tuple(filters)


def encode_cursor(cursor: Cursor) -> str:
    version = _INTERACTION_CURSOR_VERSION if cursor.kind == KIND_INTERACTIONS else _CURSOR_VERSION
    payload = [version, _KIND_CODES[cursor.kind], cursor.key, cursor.seq,
               cursor.created_from, cursor.created_to]
    raw = json.dumps(payload, separators=(",", ":")).encode("ascii")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(text: str, kind: str, max_range: int) -> Cursor:
    invalid = ParamError("start_key", "invalid", "start_key is not a key this listing returned", text[:64])
    if len(text) > MAX_START_KEY:
        raise invalid
    try:
        raw = base64.urlsafe_b64decode(text.strip() + "=" * (-len(text.strip()) % 4))
        payload = json.loads(raw.decode("ascii"))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise invalid from None
    interactions = kind == KIND_INTERACTIONS
    version = _INTERACTION_CURSOR_VERSION if interactions else _CURSOR_VERSION
    if not (isinstance(payload, list) and len(payload) == 6 and payload[0] == version
            and payload[1] == _KIND_CODES[kind]
            and all(type(v) is int for v in payload[4:])):
        raise invalid
    _, _, key, seq, created_from, created_to = payload
    key_ok = type(key) is int and -2**62 < key < 2**62
    if interactions:
        key_ok = key_ok and type(seq) is str and 0 < len(seq) <= 256
        seq_ok = True
    else:
        seq_ok = type(seq) is int and 0 <= seq < 2**62
    if not (key_ok and 0 <= created_from <= created_to <= MAX_GREGORIAN
            and created_to - created_from <= max_range and seq_ok):
        raise invalid
    return Cursor(kind, key, seq, created_from, created_to)


def check_range(created_from: int, created_to: int, max_range: int) -> None:
    """Kazoo's date_range validation (crossbar_view:time_range/5 wording)."""
    if created_to < created_from:
        raise ParamError(
            "created_from", "date_range",
            "created_to %d is prior to created_from %d" % (created_to, created_from), created_from,
        )
    if created_to - created_from > max_range:
        raise ParamError(
            "created_from", "date_range",
            "created_to %d is more than %d seconds from created_from %d" % (created_to, max_range, created_from),
            created_to,
        )


def parse_list_query(
    params: Params,
    *,
    kind: str,
    account_id: str,
    owner_id: str | None,
    api: ApiConfig,
    now: float,
    unpaginated: bool,
) -> ListQuery:
    """Validate a list/interaction-list request into a ListQuery."""
    time_unit = "an integer (Gregorian seconds)"
    req_from = parse_int(params, "created_from", 0, MAX_GREGORIAN, time_unit)
    req_to = parse_int(params, "created_to", 0, MAX_GREGORIAN, time_unit)
    page_size = parse_int(params, "page_size", 1, api.max_page_size)
    utc_offset = parse_int(params, "utc_offset", -MAX_UTC_OFFSET, MAX_UTC_OFFSET, "an integer (seconds)") or 0
    ascending = parse_bool(params, "ascending", False)
    paginate = parse_bool(params, "paginate", True)
    start_key = first(params, "start_key")
    cursor = decode_cursor(start_key, kind, api.max_range) if start_key else None
    filters = parse_filters(params)

    # An explicit bound wins; else the first page's bound (kept in the
    # cursor); else Kazoo's default of now / to - max_range.
    created_to = req_to if req_to is not None else (
        cursor.created_to if cursor else int(now) + GREGORIAN_OFFSET)
    created_from = req_from if req_from is not None else (
        cursor.created_from if cursor and req_to is None else max(0, created_to - api.max_range))
    check_range(created_from, created_to, api.max_range)
    if unpaginated or not paginate:
        size = None
    else:
        size = page_size or api.default_page_size
    return ListQuery(kind, account_id, owner_id, created_from, created_to, ascending, size,
                     cursor, filters, utc_offset)


def parse_feed_query(params: Params, streamed: bool) -> FeedQuery:
    after = parse_int(params, "after", 0, 2**62) or 0
    limit = parse_int(params, "limit", 1, FEED_MAX_LIMIT)
    if limit is None and not streamed:
        limit = FEED_DEFAULT_LIMIT
    return FeedQuery(after, limit)


# ----------------------------------------------------------------------- SQL


def _quote(name: str) -> str:
    return '"%s"' % name


def _filter_sql(flt: Filter, alias: str) -> tuple[str, list[Any]]:
    column = "%s.%s" % (alias, _quote(flt.field.column))
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
_SOURCE_SELECT = ", ".join("c.%s AS v%d" % (_quote(name), i) for i, name in enumerate(SOURCE_COLUMNS))
_KEYS_SELECT = ", %%s AS v%d, %%s AS v%d" % (LIST_ROW_WIDTH - 2, LIST_ROW_WIDTH - 1)


def list_sql(query: ListQuery) -> tuple[str, list[Any]]:
    """SQL for a CDR or interaction listing.

    Result rows are the SOURCE_COLUMNS values (``kazoo.list_values`` shapes
    them) followed by the keyset position: (timestamp, seq) for CDRs,
    (start, interaction_id) for interactions.
    """
    if query.kind == KIND_INTERACTIONS:
        return _interactions_sql(query)
    clauses = ["c.account_id = ?"]
    args: list[Any] = [query.account_id]
    if query.owner_id is not None:
        clauses.append("c.owner_id = ?")
        args.append(query.owner_id)
    low, high = query.created_from, query.created_to
    if query.cursor is not None:
        # SQLite does not bound an index range by a row-value comparison:
        # narrow the key range to the cursor's key (so a deep page seeks,
        # not scans) and let the row value settle ties on that key.
        if query.ascending:
            low = max(low, query.cursor.key)
        else:
            high = min(high, query.cursor.key)
        clauses.append('(c."timestamp", c.seq) %s (?, ?)' % (">=" if query.ascending else "<="))
        args += [query.cursor.key, query.cursor.seq]
    clauses.append('c."timestamp" BETWEEN ? AND ?')
    args += [low, high]
    filter_clauses, filter_args = where_filters(query.filters, "c")
    order = "ASC" if query.ascending else "DESC"
    sql = "SELECT %s%s FROM cdrs AS c WHERE %s ORDER BY c.\"timestamp\" %s, c.seq %s" % (
        _SOURCE_SELECT, _KEYS_SELECT % ('c."timestamp"', "c.seq"), " AND ".join(clauses + filter_clauses),
        order, order)
    return _limit(sql, args + filter_args, query)


_START = interaction_start("c")


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
    clauses = ["c.account_id = ?"]
    args: list[Any] = [query.account_id]
    same_owner = ""
    if query.owner_id is not None:
        clauses.append("c.owner_id = ?")
        args.append(query.owner_id)
        same_owner = " AND o.owner_id = c.owner_id"
    low, high = query.created_from, query.created_to
    if query.cursor is not None:
        # As for CDR lists: the cursor narrows the indexed range, the row
        # value settles ties on the start.
        if query.ascending:
            low = max(low, query.cursor.key)
        else:
            high = min(high, query.cursor.key)
        clauses.append("(%s, c.interaction_id) %s (?, ?)" % (_START, ">=" if query.ascending else "<="))
        args += [query.cursor.key, query.cursor.seq]
    clauses.append("%s BETWEEN ? AND ?" % _START)
    args += [low, high]
    clauses.append("c.interaction_id IS NOT NULL")
    filter_clauses, filter_args = where_filters(query.filters, "c")
    clauses += filter_clauses
    args += filter_args
    clauses.append(
        "NOT EXISTS (SELECT 1 FROM cdrs AS o WHERE o.interaction_id = c.interaction_id"
        " AND o.account_id = c.account_id%s"
        " AND (ifnull(o.created_us, 0) < ifnull(c.created_us, 0)"
        " OR (ifnull(o.created_us, 0) = ifnull(c.created_us, 0) AND o.seq < c.seq)))" % same_owner
    )
    order = "ASC" if query.ascending else "DESC"
    sql = "SELECT %s%s FROM cdrs AS c WHERE %s ORDER BY %s %s, c.interaction_id %s" % (
        _SOURCE_SELECT, _KEYS_SELECT % (_START, "c.interaction_id"), " AND ".join(clauses), _START, order, order)
    return _limit(sql, args, query)


def _limit(sql: str, args: list[Any], query: ListQuery) -> tuple[str, list[Any]]:
    if query.page_size is not None:
        sql += " LIMIT ?"
        args.append(query.page_size + 1)
    return sql, args


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


def cursor_for(query: ListQuery, row: Sequence[Any]) -> Cursor:
    """The cursor that starts a page at ``row`` (a list_sql row)."""
    return Cursor(query.kind, row[-2], row[-1], query.created_from, query.created_to)


def detail_sql(account_id: str, cdr_id: str, fmt: str = "json") -> tuple[str, list[Any]]:
    """One full record (``kazoo.record_sql``) by CDR id, or failing that by call id."""
    return ("SELECT %s FROM cdrs AS c WHERE c.account_id = ? AND (c.id = ? OR c.call_id = ?)"
            " ORDER BY c.id = ? DESC LIMIT 1" % record_sql(fmt), [account_id, cdr_id, cdr_id, cdr_id])


def legs_sql(account_id: str, leg_or_interaction: str, fmt: str = "json",
             start: Sequence[Any] | None = None, limit: int | None = None) -> tuple[str, list[Any]]:
    """Every leg of the interaction named by an interaction id, a CDR id or a
    call id, as full records in creation order.

    A leg without an interaction id is its own interaction.  Three indexed
    equalities joined by OR (SQLite's OR-by-union plan), each scoped to the
    account.  Rows are (record, created key, seq); ``start`` (a row) and
    ``limit`` read them in keyset chunks.
    """
    args = [account_id, leg_or_interaction, leg_or_interaction, account_id, leg_or_interaction]
    after = ""
    if start is not None:
        after = " AND (COALESCE(c.created_us, -1), c.seq) >= (?, ?)"
        args += [start[-2], start[-1]]
    sql = (
        "WITH target(iid, seq) AS (SELECT interaction_id, seq FROM cdrs"
        " WHERE account_id = ? AND (id = ? OR call_id = ?) LIMIT 1)"
        " SELECT %s, COALESCE(c.created_us, -1), c.seq FROM cdrs AS c WHERE c.account_id = ? AND (c.interaction_id = ?"
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
    clauses, args = ["c.account_id = ?"], [account_id]
    if owner_id is not None:
        clauses.append("c.owner_id = ?")
        args.append(owner_id)
    clauses.append('c."timestamp" BETWEEN ? AND ?')
    args += [low, high]
    return "SELECT count(c.custom_channel_vars) FROM cdrs AS c WHERE %s" % " AND ".join(clauses), args


# ------------------------------------------------------------------ execution


class Done:
    """An already finished job (what ``InlineRunner.spawn`` returns)."""

    def __init__(self, fn: Callable[[], T]) -> None:
        try:
            self._value, self._error = fn(), None
        except Exception as exc:  # re-raised by get(), like a thread pool would
            self._value, self._error = None, exc

    def get(self) -> Any:
        if self._error is not None:
            raise self._error
        return self._value

    def ready(self) -> bool:
        return True


class InlineRunner:
    """Runs SQLite calls in the caller (tests, tools without a hub)."""

    def spawn(self, fn: Callable[[], T]) -> Done:
        return Done(fn)


class GeventRunner:
    """Runs SQLite calls in the current hub's thread pool.

    SQLite releases the GIL while it works, so the hub -- and the ESL reader
    on it -- keeps running; ``spawn`` returns a job whose ``get()`` waits
    cooperatively.  The named query errors travel back as values: raised in
    the worker thread, gevent would print each one raw to stderr, outside the
    structured log.
    """

    def spawn(self, fn: Callable[[], T]) -> "ThreadJob[T]":
        # Here, not at import: the daemon patches before building the API.
        from ..supervise import spawn_in_thread

        return spawn_in_thread(fn, errors=(StatementTimeout, DatastoreError))


class Reader:
    """One read-only connection whose every call is bounded in time."""

    def __init__(self, conn: sqlite3.Connection, timeout: float) -> None:
        self.conn = conn
        self.timeout = timeout
        self._deadline = math.inf
        self._timed_out = False
        conn.set_progress_handler(self._progress, _PROGRESS_STEPS)

    def _progress(self) -> int:
        if time.monotonic() > self._deadline:
            self._timed_out = True
            return 1  # non-zero aborts the statement (OperationalError: interrupted)
        return 0

    def call(self, fn: Callable[[], T], coarse: bool = False) -> T:
        """``fn()`` (SQLite calls on this connection), aborted past the timeout.

        ``coarse``: for a statement in a worker thread, the deadline is
        checked every _COARSE_PROGRESS_STEPS instructions and at its end
        (a statement that finished late is a timeout too)."""
        self._deadline = time.monotonic() + self.timeout
        self._timed_out = False
        if coarse:
            self.conn.set_progress_handler(self._progress, _COARSE_PROGRESS_STEPS)
        try:
            result = fn()
            if coarse and time.monotonic() > self._deadline:
                raise StatementTimeout("statement ran longer than %.1f s" % self.timeout)
            return result
        except sqlite3.OperationalError as exc:
            if self._timed_out:
                raise StatementTimeout("statement ran longer than %.1f s" % self.timeout) from None
            raise DatastoreError(str(exc)) from None
        except sqlite3.Error as exc:
            raise DatastoreError(str(exc)) from None
        finally:
            self._deadline = math.inf
            if coarse:
                self.conn.set_progress_handler(self._progress, _PROGRESS_STEPS)


def is_heavy(query: ListQuery) -> bool:
    """A listing with filters: they are not indexed, so SQLite may evaluate
    them (JSON paths, NOT ...) on every row of the time range before it finds
    a page -- hundreds of ms on 100k rows, where a plain first page takes a
    few.  Such statements go through the pool's heavy lane."""
    return bool(query.filters)


class HeavyLane:
    """At most ``slots`` heavy statements run at once; the others wait
    (cooperatively, at most ``wait`` seconds, then ``StatementTimeout``).

    Without it a dozen filter-heavy listings fill gevent's thread pool and
    share two cores and the GIL with everything else, and a one-row page
    waits behind them.  Light statements never wait here.

    ``pacer()`` paces a heavy request's Python work on the hub: slices of
    HEAVY_SLICE seconds, one request's at a time, each followed by
    HEAVY_PAUSE seconds left to everything else.
    """

    def __init__(self, slots: int, wait: float) -> None:
        self.slots = slots
        self.wait = wait
        self._semaphore: Any = None
        self._quiet_until = 0.0

    def pacer(self) -> Callable[[], None]:
        """A ``breathe()`` for one heavy request's loop on the hub: call it
        every few items.  Once the request has worked HEAVY_SLICE seconds it
        sleeps until the lane's pause is over -- while one request pauses, no
        other heavy request works either -- and starts a new slice.  The
        first slice starts once a pause under way is over."""
        self._wait_quiet()
        resumed = time.perf_counter()

        def breathe() -> None:
            nonlocal resumed
            now = time.perf_counter()
            if now - resumed >= HEAVY_SLICE:
                self._rest(now)
                resumed = time.perf_counter()

        return breathe

    def _rest(self, now: float) -> None:
        self._quiet_until = max(self._quiet_until, now + HEAVY_PAUSE)
        self._wait_quiet()

    def _wait_quiet(self) -> None:
        import gevent  # here: the daemon patches before building the API

        while True:
            left = self._quiet_until - time.perf_counter()
            if left <= 0:
                return
            gevent.sleep(left)

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()

    def acquire(self) -> None:
        if self._semaphore is None:
            from gevent.lock import BoundedSemaphore  # here: the daemon patches before building the API

            self._semaphore = BoundedSemaphore(self.slots)
        if not self._semaphore.acquire(timeout=self.wait):
            raise StatementTimeout("too many filtered queries at once: none freed a slot in %.1f s" % self.wait)

    def release(self) -> None:
        self._semaphore.release()


def _rows_of(conn: sqlite3.Connection, sql: str, args: Sequence[Any]) -> list[tuple]:
    """Every row of a statement, the cursor closed after: its read
    transaction ends here, not when the cursor is collected."""
    cursor = conn.execute(sql, args)
    try:
        return cursor.fetchall()
    finally:
        cursor.close()


class ReaderPool:
    """A few idle read-only connections, opened on demand."""

    def __init__(
        self,
        path: str | Path,
        statement_timeout: float,
        *,
        runner: InlineRunner | GeventRunner | None = None,
        max_idle: int = 8,
        heavy_slots: int = 2,
    ) -> None:
        self.path = path
        self.statement_timeout = statement_timeout
        self.runner = runner or GeventRunner()
        self._idle: list[Reader] = []
        self._max_idle = max_idle
        self.heavy = HeavyLane(heavy_slots, statement_timeout)

    def acquire(self) -> Reader:
        if self._idle:
            return self._idle.pop()
        try:
            conn = connect_reader(self.path)
            # Readers wait briefly on a lock (WAL recovery), never for seconds.
            conn.execute("PRAGMA busy_timeout=1000")
            # Memory-mapped reads: a listing touches one table page per row,
            # and a pread() per page was half the cost of an export.
            conn.execute("PRAGMA mmap_size=%d" % READER_MMAP_BYTES)
        except sqlite3.Error as exc:
            raise DatastoreError("cannot open %s: %s" % (self.path, exc)) from None
        return Reader(conn, self.statement_timeout)

    def release(self, reader: Reader) -> None:
        if len(self._idle) < self._max_idle:
            self._idle.append(reader)
        else:
            reader.conn.close()

    def close(self) -> None:
        while self._idle:
            self._idle.pop().conn.close()

    def fetch_all(self, sql: str, args: Sequence[Any], limit: int = 100_000, heavy: bool = False) -> list[tuple]:
        """A bounded result (a page, one CDR) in one call; ``heavy`` waits for
        a slot of the heavy lane first."""
        if heavy:
            with self.heavy.slot():
                return self.fetch_all(sql, args, limit)
        reader = self.acquire()
        try:
            return self.runner.spawn(lambda: reader.call(lambda: reader.conn.execute(sql, args).fetchmany(limit))).get()
        finally:
            self.release(reader)

    def fetch_chunk(self, sql: str, args: Sequence[Any], inline: bool, heavy: bool = False) -> list[tuple]:
        """Every row of a statement with a LIMIT, read to its end: the
        statement is finished and its read transaction over when this returns.
        A heavy chunk waits for a slot of the heavy lane and never runs inline."""
        if heavy:
            with self.heavy.slot():
                return self.fetch_chunk(sql, args, False)
        reader = self.acquire()

        def run() -> list[tuple]:
            return _rows_of(reader.conn, sql, args)

        try:
            if inline:
                return reader.call(run)
            return self.runner.spawn(lambda: reader.call(run)).get()
        finally:
            self.release(reader)

    def stream(self, sql: str, args: Sequence[Any], batch: int = FETCH_BATCH) -> "RowStream":
        """One statement read in batches: it holds its read snapshot until
        closed, so only for results known to be small.  Exports use
        ``keyset_stream``."""
        return RowStream(self, sql, args, batch)

    def keyset_stream(self, chunk_sql: Callable[[Sequence[Any] | None, int], tuple[str, list[Any]]],
                      chunk: int = FETCH_BATCH, limit: int | None = None, heavy: bool = False,
                      decode: Callable[[list[tuple]], list[Any]] | None = None,
                      ahead: bool = False, warm: Callable[[int, int], tuple[str, list[Any]]] | None = None,
                      descending: bool = True) -> "KeysetStream":
        return KeysetStream(self, chunk_sql, chunk, limit, heavy, decode, ahead, warm, descending)


class KeysetStream:
    """The rows of a keyset-ordered listing, ``chunk`` rows per statement.

    ``chunk_sql(start, n)`` gives the SQL for at most ``n`` rows from the
    row ``start`` on (inclusive; None: from the beginning).  Each chunk asks
    for ``chunk + 1`` rows and the extra one starts the next chunk -- the
    pagination algorithm of the API's pages, so a stream skips and repeats
    nothing while rows arrive, exactly as paging does.  Every chunk is its
    own short statement, read to its end before the rows are handed out:
    no read transaction is open while the response is written, so a client
    that stops reading pins no WAL snapshot and checkpoints go on.
    ``decode(fetched)`` turns a statement's result into the chunk's rows
    (default: as fetched; ``unpack_rows`` for ``packed_sql``).

    The first chunk runs in the constructor, in the runner's thread pool
    (errors surface before any header is sent).  With ``ahead``, each next
    chunk starts in the thread pool as soon as the previous one is read, so
    it is fetched while the caller renders and sends the previous one (at
    most one chunk ahead; it is read to its end there too).  Without, later
    chunks run inline, on the hub, while each takes under
    ``INLINE_BATCH_SECONDS`` (handing each to a thread costs a tuple export
    about a quarter of its speed); a slow one moves the rest to the pool.
    ``limit`` caps the rows of the whole stream.  ``close()`` waits for a
    chunk still being read (a bounded statement) and gives its connection back.
    """

    def __init__(self, pool: ReaderPool, chunk_sql: Callable[[Sequence[Any] | None, int], tuple[str, list[Any]]],
                 chunk: int, limit: int | None, heavy: bool = False,
                 decode: Callable[[list[tuple]], list[Any]] | None = None, ahead: bool = False,
                 warm: Callable[[int, int], tuple[str, list[Any]]] | None = None, descending: bool = True) -> None:
        self._pool = pool
        self._warm = warm
        self._descending = descending
        self._cold = False
        self._warmer: PendingChunk | None = None
        self._warmed: int | None = None
        self._heavy = heavy
        self._chunk_sql = chunk_sql
        self._chunk = chunk
        self._left = limit
        self._decode = decode
        self._ahead = ahead
        self._inline = False
        self._closed = False
        self._pending: PendingChunk | None = None
        first = self._start(None)
        self._first = first.result()
        self._cold = first.waited_on_disk

    @property
    def empty(self) -> bool:
        """True when the listing has no row at all."""
        return not self._first

    def _start(self, start: Sequence[Any] | None) -> "PendingChunk":
        size = self._chunk if self._left is None else min(self._chunk, self._left)
        sql, args = self._chunk_sql(start, size + 1)
        return PendingChunk(self._pool, sql, args, self._heavy, self._decode)

    def _read(self, start: Sequence[Any] | None) -> list[Any]:
        size = self._chunk if self._left is None else min(self._chunk, self._left)
        sql, args = self._chunk_sql(start, size + 1)
        started = time.monotonic()
        rows = self._pool.fetch_chunk(sql, args, self._inline, self._heavy)
        self._inline = time.monotonic() - started < INLINE_BATCH_SECONDS
        return rows if self._decode is None else self._decode(rows)

    def __iter__(self) -> Iterator[list[Any]]:
        rows, self._first = self._first, []
        while rows and not self._closed:
            size = self._chunk if self._left is None else min(self._chunk, self._left)
            batch, rest = rows[:size], rows[size:]
            if self._left is not None:
                self._left -= len(batch)
            more = bool(rest) and self._left != 0
            if more and self._ahead:
                self._pending = self._start(rest[0])
                if self._cold and self._warm is not None:
                    self._warm_after(rows)
            yield batch
            if not more:
                break
            if self._pending is not None:
                pending, self._pending = self._pending, None
                rows = pending.result()
                self._cold = self._cold or pending.waited_on_disk
            else:
                rows = self._read(rest[0])

    def _warm_after(self, rows: list[Any]) -> None:
        """Start the warm statement for the window after ``rows`` unless one
        runs, or what was warmed reaches more than half a window ahead."""
        if self._warmer is not None:
            if not self._warmer.ready():
                return
            warmer, self._warmer = self._warmer, None
            warmer.cancel()  # finished: collect it, the number is not needed
        first_key, last_key = rows[0][-2], rows[-1][-2]
        if type(first_key) is not int or type(last_key) is not int:
            return
        window = (abs(first_key - last_key) + 1) * WARM_CHUNKS
        if self._descending:
            edge = last_key if self._warmed is None else min(last_key, self._warmed)
            if last_key - edge > window // 2:
                return
            low, high, self._warmed = edge - window, edge, edge - window - 1
        else:
            edge = last_key if self._warmed is None else max(last_key, self._warmed)
            if edge - last_key > window // 2:
                return
            low, high, self._warmed = edge, edge + window, edge + window + 1
        self._warmer = PendingChunk(self._pool, *self._warm(low, high), heavy=False, decode=None)

    def close(self) -> None:
        self._closed = True
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()
        warmer, self._warmer = self._warmer, None
        if warmer is not None:
            warmer.cancel()


def waited_on_disk(wall: float, cpu: float) -> bool:
    """Whether a statement that took ``wall`` seconds, ``cpu`` of them
    running, mostly waited: page faults on a file not in the page cache."""
    return wall > 0.002 and wall > 2 * cpu


class PendingChunk:
    """One chunk statement started in the runner's thread pool (with a heavy
    slot first when ``heavy``); ``result()`` waits for its rows, ``cancel()``
    for its end.  Either gives the connection (and slot) back, once."""

    def __init__(self, pool: ReaderPool, sql: str, args: Sequence[Any], heavy: bool,
                 decode: Callable[[list[tuple]], list[Any]] | None) -> None:
        self._pool = pool
        self._heavy = heavy
        self._decode = decode
        if heavy:
            pool.heavy.acquire()
        try:
            self._reader: Reader | None = pool.acquire()
        except BaseException:
            if heavy:
                pool.heavy.release()
            raise
        reader = self._reader

        def run() -> list[tuple]:
            return _rows_of(reader.conn, sql, args)

        self.waited_on_disk = False

        def timed() -> list[tuple]:
            started, cpu = time.perf_counter(), time.thread_time()
            rows = reader.call(run, coarse=True)
            self.waited_on_disk = waited_on_disk(time.perf_counter() - started, time.thread_time() - cpu)
            return rows

        self._job = pool.runner.spawn(timed)

    def result(self) -> list[Any]:
        """The chunk's rows, decoded here: decoding holds the GIL, which a
        worker thread would first have to win from the hub."""
        try:
            rows = self._job.get()
        finally:
            self._done()
        return rows if self._decode is None else self._decode(rows)

    def ready(self) -> bool:
        return self._job.ready()

    def cancel(self) -> None:
        try:
            self._job.get()
        except (StatementTimeout, DatastoreError):
            pass  # nobody wants these rows any more
        finally:
            self._done()

    def _done(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            self._pool.release(reader)
            if self._heavy:
                self._pool.heavy.release()


class RowStream:
    """Rows of one statement in batches of ``fetchmany``.

    The statement runs and its first batch is read in the constructor, in
    the runner's thread pool: that is where SQLite may sort or scan before
    its first row, and errors surface before any response header is sent.
    Later batches run inline, on the hub, while each takes under
    ``INLINE_BATCH_SECONDS``: handing every batch to a thread costs an
    export about a quarter of its speed (sqlite3 takes the GIL back for each
    row).  The first slow batch moves the rest of the stream to the pool.
    ``close()`` (also called on exhaustion) returns the connection to the
    pool; unread rows are discarded.
    """

    def __init__(self, pool: ReaderPool, sql: str, args: Sequence[Any], batch: int) -> None:
        self._pool = pool
        self._batch = batch
        self._reader: Reader | None = pool.acquire()
        self._cursor: sqlite3.Cursor | None = None
        try:
            started = time.monotonic()
            self._first = self._pool.runner.spawn(lambda: self._reader.call(lambda: self._open(sql, args))).get()
            self._inline = time.monotonic() - started < INLINE_BATCH_SECONDS
        except BaseException:
            self.close()
            raise

    @property
    def empty(self) -> bool:
        """True when the statement returned no row at all."""
        return not self._first

    def _open(self, sql: str, args: Sequence[Any]) -> list[tuple]:
        self._cursor = self._reader.conn.execute(sql, args)
        return self._cursor.fetchmany(self._batch)

    def _next_batch(self) -> list[tuple]:
        reader, cursor, size = self._reader, self._cursor, self._batch
        if not self._inline:
            return self._pool.runner.spawn(lambda: reader.call(lambda: cursor.fetchmany(size))).get()
        started = time.monotonic()
        rows = reader.call(lambda: cursor.fetchmany(size))
        self._inline = time.monotonic() - started < INLINE_BATCH_SECONDS
        return rows

    def __iter__(self) -> Iterator[list[tuple]]:
        try:
            rows, self._first = self._first, []
            while rows:
                yield rows
                if len(rows) < self._batch or self._reader is None:
                    break
                rows = self._next_batch()
        finally:
            self.close()

    def close(self) -> None:
        reader, self._reader = self._reader, None
        if reader is None:
            return
        if self._cursor is not None:
            try:
                self._cursor.close()
            except sqlite3.Error:
                pass  # the connection is still usable; the statement is gone
            self._cursor = None
        self._pool.release(reader)
