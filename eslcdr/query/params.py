"""Request parameters of the read side: query strings into frozen dataclasses, keyset cursors.

``parse_list_query`` / ``parse_feed_query`` turn a query string into a frozen ``ListQuery`` /
``FeedQuery`` or raise ``ParamError`` (rendered by the API as Kazoo's ``validation error``).
Time bounds are Gregorian seconds, inclusive, defaulting to ``now - max_range .. now``
(``requested_range`` then ``effective_range``; the stats routes take them the same way).  A
filter names a ``cdrs`` column or a dot path into a JSON column (``custom_channel_vars.owner_id``),
kept as a *bound* JSON path parameter: no client text is ever spliced into SQL.

Cursors (``start_key`` / ``next_start_key``) name a listing's unique keyset position --
``(timestamp, seq)`` for CDR lists (centrally, and only on a tie, the seq's node too),
``(start, interaction_id)`` for interaction lists -- plus the first page's effective time
range, so "the last 31 days" does not slide under a client that pages slowly.  They are
opaque urlsafe base64 of a small JSON array, validated like any input; ``cursor_for(query,
row)`` is the cursor that starts a page at ``row`` (inclusive).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..config import ApiConfig
from ..ingest.legs import GREGORIAN_OFFSET
from ..store.schema import COLUMN_NAMES, JSON_COLUMNS

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
GREGORIAN_SECONDS = "an integer (Gregorian seconds)"  # the unit a time bound's error names
SECONDS = "an integer (seconds)"
_PATH_SEGMENT = re.compile(r"[A-Za-z0-9_\-]{1,128}")
_SOURCE = re.compile(r"[A-Za-z0-9._-]{1,64}")  # a collector's [node:NAME]
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
    # Central CDR lists only: the node of ``seq`` (seqs are per node), when
    # another node's row has the same (key, seq) just before this one.
    source: str | None = None


@dataclass(frozen=True, slots=True)
class NodeSeq:
    """A central CDR listing row's tie (its last value) when (key, seq) alone is ambiguous."""

    seq: int
    source: str


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
    if cursor.source is not None:
        payload.append(cursor.source)
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
    source = None
    if isinstance(payload, list) and len(payload) == 7 and not interactions:
        source = payload.pop()
        if not (type(source) is str and _SOURCE.fullmatch(source)):
            raise invalid
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
    return Cursor(kind, key, seq, created_from, created_to, source)


def cursor_for(query: ListQuery, row: Sequence[Any]) -> Cursor:
    """The cursor that starts a page at ``row`` (a list_sql row: its keyset position last)."""
    tie = row[-1]
    if type(tie) is NodeSeq:
        return Cursor(query.kind, row[-2], tie.seq, query.created_from, query.created_to, tie.source)
    return Cursor(query.kind, row[-2], tie, query.created_from, query.created_to)


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


def requested_range(params: Params) -> tuple[int | None, int | None]:
    """``created_from`` / ``created_to`` as the client gave them (None: not given)."""
    return (parse_int(params, "created_from", 0, MAX_GREGORIAN, GREGORIAN_SECONDS),
            parse_int(params, "created_to", 0, MAX_GREGORIAN, GREGORIAN_SECONDS))


def effective_range(req_from: int | None, req_to: int | None, cursor: Cursor | None, max_range: int,
                    now: float) -> tuple[int, int]:
    """The inclusive time range a request reads, checked (``check_range``).

    An explicit bound wins; else the first page's bound (kept in the
    cursor); else Kazoo's default of now / to - max_range."""
    created_to = req_to if req_to is not None else (
        cursor.created_to if cursor else int(now) + GREGORIAN_OFFSET)
    created_from = req_from if req_from is not None else (
        cursor.created_from if cursor and req_to is None else max(0, created_to - max_range))
    check_range(created_from, created_to, max_range)
    return created_from, created_to


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
    req_from, req_to = requested_range(params)
    page_size = parse_int(params, "page_size", 1, api.max_page_size)
    utc_offset = parse_int(params, "utc_offset", -MAX_UTC_OFFSET, MAX_UTC_OFFSET, SECONDS) or 0
    # crossbar_view:direction/2: newest first unless ascending=true, and descending=true wins.
    descending = parse_bool(params, "descending", False)
    ascending = parse_bool(params, "ascending", False) and not descending
    paginate = parse_bool(params, "paginate", True)
    start_key = first(params, "start_key")
    cursor = decode_cursor(start_key, kind, api.max_range) if start_key else None
    filters = parse_filters(params)
    created_from, created_to = effective_range(req_from, req_to, cursor, api.max_range, now)
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
