"""Kazoo's shapes of a CDR: list rows, interaction rows, full records, and its CSV rules.

List and interaction rows are built in Python from a tuple of stored columns
(``SOURCE_COLUMNS`` + the custom channel variables; ``list_values`` holds crossbar's
``cb_cdrs`` derivations); full records (CDR detail, legs, the collector feed) are rendered by
SQLite itself as a JSON object or a CSV record (``record_sql``).  The split follows measurement
on a 1,000,000-row file: list rows need many derivations, which cost less in Python than as SQL
expressions (SQLite re-evaluates every shared sub-expression); full records are plain columns
with large text (SDPs), which SQLite encodes faster, in the worker thread, GIL released.

Text values are never null (Kazoo's ``""`` default), so JSON and CSV agree: a CSV cell is the
JSON value's text (numbers as digits, lists as compact JSON).  CSV is RFC 4180 with every field
quoted, and spreadsheet-safe: a cell a spreadsheet would evaluate as a formula gets a leading
``'`` (one rule, ``FORMULA_FIRST`` and the constants beside it).  JSON is never altered.
"""

from __future__ import annotations

import csv
import functools
import io
import math
import re
import time
from typing import Any, Iterable, Mapping, Sequence

import orjson

from ..ingest.legs import GREGORIAN_OFFSET
from ..store.schema import COLUMN_NAMES, COLUMNS, JSON_COLUMNS

_TEXT_COLUMNS = frozenset(name for name, sqltype, _ in COLUMNS if sqltype.startswith("TEXT")) - JSON_COLUMNS

LIST_COLUMNS: tuple[str, ...] = (
    "id", "call_id", "caller_id_number", "caller_id_name", "callee_id_number",
    "callee_id_name", "duration_seconds", "billing_seconds", "timestamp",
    "hangup_cause", "disposition", "other_leg_call_id", "owner_id", "to", "from",
    "direction", "request", "authorizing_id", "cost", "dialed_number",
    "calling_from", "datetime", "unix_timestamp", "rfc_1036", "iso_8601",
    "iso_8601_combined", "call_type", "rate", "rate_name", "bridge_id",
    "recording_url", "media_recordings", "media_server", "call_priority",
    "interaction_id",
)
INTERACTION_COLUMNS: tuple[str, ...] = LIST_COLUMNS + ("inception_direction",)
# A full record (detail, legs, feed): every stored column, then what Kazoo's
# CDR documents carry besides (channel_created_time: created_us, in µs).
RECORD_FIELDS: tuple[str, ...] = COLUMN_NAMES + ("channel_created_time",)
# The same as CSV columns: the id first, as every Kazoo CSV starts.
RECORD_CSV_FIELDS: tuple[str, ...] = ("id",) + tuple(n for n in RECORD_FIELDS if n != "id")
# Kazoo's CSV_HEADER_MAP (crossbar.hrl) for the columns we have: how its CSV
# writer names them in the header row.
CSV_HEADER_NAMES: Mapping[str, str] = {"id": "ID", "account_id": "Account ID"}

# What a list row reads, in the order list_values unpacks it (no SDP blobs:
# they are most of a row's bytes).  custom_channel_vars is last.
SOURCE_COLUMNS: tuple[str, ...] = (
    "id", "call_id", "caller_id_number", "caller_id_name", "callee_id_number",
    "callee_id_name", "duration_seconds", "billing_seconds", "timestamp",
    "hangup_cause", "disposition", "other_leg_call_id", "owner_id", "to", "from",
    "call_direction", "request", "authorizing_id", "account_id", "from_uri",
    "media_server", "interaction_id", "custom_channel_vars",
)
_DIRECTION = SOURCE_COLUMNS.index("call_direction")
_AUTHORIZING_ID = SOURCE_COLUMNS.index("authorizing_id")
_RECORDINGS = LIST_COLUMNS.index("media_recordings")
_DURATION = LIST_COLUMNS.index("duration_seconds")
_BILLING = LIST_COLUMNS.index("billing_seconds")

_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("", "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_NO_VARS: dict[str, Any] = {}


# ------------------------------------------------------------ list rows


def _vars(raw: str | None) -> Mapping[str, Any]:
    """custom_channel_vars as a dict ({} when empty or not a JSON object)."""
    if not raw or raw == "{}":
        return _NO_VARS
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _NO_VARS
    return value if isinstance(value, dict) else _NO_VARS


def to_integer(value: Any) -> int:
    """Kazoo's to_integer for a variable: ints, digit strings, float strings; else 0."""
    if value is None or value == "":
        return 0
    if type(value) is int:
        return value
    try:
        return int(value)
    except (TypeError, ValueError):
        try:
            return int(float(value))
        except (TypeError, ValueError, OverflowError):
            return 0


def compact_json(value: Any) -> str:
    return orjson.dumps(value).decode("utf-8")


def _text(value: Any) -> str:
    return "" if value is None else value if isinstance(value, str) else compact_json(value)


def call_cost(ccv: Mapping[str, Any], billing_seconds: int) -> int:
    """kapps_call_util:call_cost in units (1/10000 dollar): rate per minute,
    rate minimum, increments, surcharge, no-charge time and discount."""
    get = ccv.get
    seconds = billing_seconds - to_integer(get("billing_seconds_offset"))
    if seconds <= 0 or seconds <= to_integer(get("rate_nocharge_time")):
        return 0
    rate = to_integer(get("rate"))
    increment = to_integer(get("rate_increment")) or 60
    minimum = to_integer(get("rate_minimum"))
    surcharge = to_integer(get("surcharge"))
    if seconds <= minimum:
        cost = math.trunc(surcharge + (minimum / 60) * rate)
    else:
        cost = math.trunc(
            surcharge + (minimum / 60) * rate
            + math.ceil((seconds - minimum) / increment) * ((increment / 60) * rate)
        )
    return math.trunc(cost - math.trunc(to_integer(get("discount_percentage")) * 0.01 * cost))


def recordings_list(ccv: Mapping[str, Any]) -> list:
    value = ccv.get("media_recordings")
    if value is None:
        return []
    return [_no_nulls(item) for item in value if item is not None] if isinstance(value, list) else [_no_nulls(value)]


def _no_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _no_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_no_nulls(v) for v in value if v is not None]
    return value


@functools.lru_cache(maxsize=4096)
def day_texts(days: int) -> tuple[str, str]:
    """('2017-02-13', 'Mon, 13 Feb 2017') for a day number since 1970-01-01.

    A listing spans few days: the day part is formatted once per day.
    """
    t = time.gmtime(days * 86400)
    return ("%04d-%02d-%02d" % (t.tm_year, t.tm_mon, t.tm_mday),
            "%s, %02d %s %d" % (_WEEKDAYS[t.tm_wday], t.tm_mday, _MONTHS[t.tm_mon], t.tm_year))


def _user_part(uri: str | None) -> str:
    return uri.split("@", 1)[0] if uri else ""


def list_values(values: Sequence[Any], utc_offset: int = 0) -> list[Any]:
    """A list row's values in LIST_COLUMNS order, from SOURCE_COLUMNS values.

    List rows follow crossbar's ``cb_cdrs`` columns and derivations:

    - ``timestamp`` is the call *start* -- stored hangup ``timestamp`` minus
      ``duration_seconds`` -- as a string of Gregorian seconds, and every date
      column derives from it: ``unix_timestamp`` (string), ``rfc_1036``
      (``Mon, 13 Feb 2017 18:11:23 GMT``), ``iso_8601`` (the date only),
      ``iso_8601_combined`` (``2017-02-13T18:11:23Z``), ``datetime``
      (``2017-02-13 18:11:23``, the only one shifted by ``utc_offset``);
    - ``dialed_number`` is the user part of ``request`` on inbound legs, of
      ``to`` on outbound legs; ``calling_from`` is ``caller_id_number`` (inbound)
      or the user part of ``from_uri`` (outbound);
    - ``authorizing_id`` is empty when it equals the account id (a call the
      account itself authorised);
    - ``cost`` (units of 1/10000 dollar, string) is ``kapps_call_util:call_cost``
      for ``account_billing = per_minute`` legs, else ``"0"``; ``rate`` is
      ``custom_channel_vars.rate`` (units) in dollars as a string;
    - ``call_type`` (``account_billing``), ``rate_name``, ``recording_url`` and
      ``call_priority`` come from ``custom_channel_vars`` with Kazoo's ``""``
      default; ``media_recordings`` is always a list;
    - ``bridge_id`` is ``custom_channel_vars.bridge_id`` when ecallmgr set it,
      else our ``other_leg_call_id``, else ``""``.

    Text columns come from SQLite as str or None (TEXT affinity), so
    ``x or ""`` is Kazoo's ``""`` default at its cheapest.
    """
    (cdr_id, call_id, caller_number, caller_name, callee_number, callee_name,
     duration, billing, timestamp, hangup_cause, disposition, other_leg, owner_id,
     to, from_, direction, request, authorizing_id, account_id, from_uri,
     media_server, interaction_id, ccv_raw) = values
    ccv = _vars(ccv_raw)
    duration = duration or 0
    billing = billing or 0
    start = (timestamp or 0) - duration
    unix = start - GREGORIAN_OFFSET
    days, seconds = divmod(unix, 86400)
    try:
        day, rfc_day = day_texts(days)
        local = day_texts((unix + utc_offset) // 86400)[0] if utc_offset else day
    except (OverflowError, OSError, ValueError):  # not a date time.gmtime knows
        day = rfc_day = local = ""
    hours, rest = divmod(seconds, 3600)
    clock = "%02d:%02d:%02d" % (hours, rest // 60, rest % 60)
    if utc_offset:
        hours, rest = divmod((unix + utc_offset) % 86400, 3600)
        pretty = "%s %02d:%02d:%02d" % (local, hours, rest // 60, rest % 60)
    else:
        pretty = "%s %s" % (day, clock)
    if direction == "inbound":
        dialed, calling = _user_part(request), caller_number or ""
    elif direction == "outbound":
        dialed, calling = _user_part(to), _user_part(from_uri)
    else:
        dialed = calling = ""
    if ccv:
        get = ccv.get
        billing_type = get("account_billing")
        extras = (
            _text(billing_type),
            repr(to_integer(get("rate")) / 10000),
            _text(get("rate_name")),
            _text(get("bridge_id")) or other_leg or "",
            _text(get("recording_url")),
            recordings_list(ccv),
            media_server or "",
            _text(get("call_priority")),
        )
        cost = str(call_cost(ccv, billing)) if billing_type == "per_minute" else "0"
    else:
        extras = ("", "0.0", "", other_leg or "", "", [], media_server or "", "")
        cost = "0"
    return [
        cdr_id or "", call_id or "", caller_number or "", caller_name or "",
        callee_number or "", callee_name or "", duration, billing, str(start),
        hangup_cause or "", disposition or "", other_leg or "", owner_id or "",
        to or "", from_ or "", direction or "", request or "",
        "" if authorizing_id == account_id else authorizing_id or "",
        cost, dialed, calling, pretty, str(unix),
        "%s %s GMT" % (rfc_day, clock) if rfc_day else "",
        day, "%sT%sZ" % (day, clock) if day else "",
        *extras, interaction_id or "",
    ]


def interaction_values(values: Sequence[Any], utc_offset: int = 0, by_user: bool = False) -> list[Any]:
    """An interaction row (INTERACTION_COLUMNS order): the list row of the
    interaction's first leg plus ``inception_direction``.

    As in Kazoo: on the account listing a leg some device/user authorised
    was originated inside the account ("origination"), else it came from
    outside ("termination"); on a user's listing the leg's direction decides.
    """
    row = list_values(values, utc_offset)
    if by_user:
        row.append("origination" if values[_DIRECTION] == "inbound" else "termination")
    else:
        row.append("origination" if values[_AUTHORIZING_ID] else "termination")
    return row


def as_cells(values: list[Any]) -> list[str]:
    """A list/interaction row's values as CSV cells (in place)."""
    values[_DURATION] = str(values[_DURATION])
    values[_BILLING] = str(values[_BILLING])
    values[_RECORDINGS] = compact_json(values[_RECORDINGS])
    return values


# ------------------------------------------------------ spreadsheet safety
#
# Caller names come from SIP display names, which callers control: a cell a
# spreadsheet would evaluate -- one starting with =, @, tab, CR, or + / -
# followed by anything but a plain number -- gets a leading apostrophe, the
# usual neutraliser (OWASP "CSV injection").  +442071838750 and -5 stay as
# they are.  CSV only: JSON values are never altered.  The rule is the
# constants below; spreadsheet_safe (Python), formula_ahead (the regular
# expressions of the fast CSV paths, here and in list_csv) and
# spreadsheet_safe_sql (full records, rendered by SQLite) are built from them.

FORMULA_FIRST = "=@\t\r"  # a cell starting with one of these is a formula;
FORMULA_SIGNS = "+-"  # one starting with a sign too, unless a plain number follows:
# digits, or digits, one point, digits.  A range both a regular expression's
# character class and SQLite's GLOB class read the same way.
PLAIN_DIGITS = "0-9"
DECIMAL_POINT = "."
FORMULA_GUARD = "'"  # what goes before a formula cell

_FORMULA_START = frozenset(FORMULA_FIRST + FORMULA_SIGNS)
_PLAIN_NUMBER_RE = "[{d}]+(?:{p}[{d}]+)?".format(d=PLAIN_DIGITS, p=re.escape(DECIMAL_POINT))
_PLAIN_NUMBER = re.compile(_PLAIN_NUMBER_RE)


def formula_ahead(end: str) -> str:
    """A regular expression (lookaheads) matching where a formula cell starts,
    in text where each cell is followed by a match of ``end``.  (One class of
    every first character, then the plain-number exception: most cells fail
    the class alone, ~30% faster than an alternation.)"""
    return "(?=[%s%s])(?![%s]%s(?:%s))" % (re.escape(FORMULA_FIRST), re.escape(FORMULA_SIGNS),
                                          re.escape(FORMULA_SIGNS), _PLAIN_NUMBER_RE, end)


# The NUL before a formula cell, in NUL + cells joined by NULs: one scan
# per record, fast because it starts with a literal.
_FORMULA_CELL = re.compile("\x00" + formula_ahead(r"\x00|\Z"))


def spreadsheet_safe(cell: str) -> str:
    first = cell[:1]
    if first not in _FORMULA_START:
        return cell
    if first in FORMULA_SIGNS and _PLAIN_NUMBER.fullmatch(cell, 1):
        return cell
    return FORMULA_GUARD + cell


def _sql_text(text: str) -> str:
    """A string literal for SQL; a control character as char(n)."""
    if len(text) == 1 and not text.isprintable():
        return "char(%d)" % ord(text)
    return "'%s'" % text.replace("'", "''")


def spreadsheet_safe_sql(expr: str) -> str:
    """``spreadsheet_safe`` of a text expression, in SQL (full-record CSV)."""
    plain = ("({r} != '' AND {r} NOT GLOB '*[^{d}{p}]*' AND {r} NOT GLOB '*{p}*{p}*'"
             " AND {r} NOT GLOB '{p}*' AND {r} NOT GLOB '*{p}')").format(
        r="substr(%s, 2)" % expr, d=PLAIN_DIGITS, p=DECIMAL_POINT)  # GLOB reads the point literally
    return "CASE WHEN substr({e}, 1, 1) IN ({formula}) OR (substr({e}, 1, 1) IN ({signs}) AND NOT {plain})" \
        " THEN {guard} || {e} ELSE {e} END".format(
            e=expr, formula=", ".join(map(_sql_text, FORMULA_FIRST)), signs=", ".join(map(_sql_text, FORMULA_SIGNS)),
            plain=plain, guard=_sql_text(FORMULA_GUARD))


def csv_header(columns: Sequence[str]) -> list[str]:
    """The header row of a CSV of ``columns``, named as Kazoo's CSV writer does."""
    return [CSV_HEADER_NAMES.get(name, name) for name in columns]


def csv_records(rows: Iterable[Sequence[str]]) -> str:
    """RFC 4180 records -- CRLF, every field quoted, quotes doubled -- of str
    cells, spreadsheet-safe (``spreadsheet_safe``).

    Quoting every field lets one join and two replaces per record do the
    work of a per-field scan (5x faster than the csv module here).  A record
    holding a NUL, the join marker, goes through the csv module instead.
    """
    out = []
    for cells in rows:
        joined = "\x00".join(cells)
        if joined.count("\x00") == len(cells) - 1:
            joined = _FORMULA_CELL.sub("\x00" + FORMULA_GUARD, "\x00" + joined)[1:]
            out.append('"%s"\r\n' % joined.replace('"', '""').replace("\x00", '","'))
        else:
            buffer = io.StringIO()
            csv.writer(buffer, lineterminator="\r\n", quoting=csv.QUOTE_ALL).writerow(
                [spreadsheet_safe(cell) for cell in cells])
            out.append(buffer.getvalue())
    return "".join(out)


# ------------------------------------------------------------ full records


def _q(name: str) -> str:
    return 'c."%s"' % name


def record_text(text: str) -> str:
    """A full record's JSON as rendered by record_sql, with the nulls SQL
    leaves (inside arrays of the JSON columns) dropped too.  Most records
    hold no ``null`` at all and pass through untouched."""
    if "null" not in text:
        return text
    return orjson.dumps(_no_nulls(orjson.loads(text))).decode("utf-8")


def _valid_json(name: str) -> str:
    # A stored value that is not JSON is sent as a JSON string, never dropped.
    return "CASE WHEN json_valid(%s) THEN %s ELSE json_quote(%s) END" % ((_q(name),) * 3)


def _fax_success(true: str, false: str, null: str) -> str:
    return "CASE WHEN c.fax_success IS NULL THEN %s WHEN c.fax_success THEN %s ELSE %s END" % (null, true, false)


def _json_object(pairs: Sequence[tuple[str, str]]) -> str:
    """A JSON object, keys in order.  SQL functions take at most 127
    arguments in older SQLite builds: past 40 keys the object grows by
    json_set, which appends in order and keeps nulls (json_patch drops them)."""
    text = "json_object(%s)" % ", ".join("'%s', %s" % pair for pair in pairs[:40])
    for i in range(40, len(pairs), 40):
        text = "json_set(%s, %s)" % (text, ", ".join("'$.\"%s\"', %s" % pair for pair in pairs[i:i + 40]))
    return text


def _csv_record(cells: Sequence[str]) -> str:
    """A CSV record: every field quoted, printf's %w doubles inner quotes."""
    parts = ["printf('%s', %s)" % (",".join(['"%w"'] * len(cells[i:i + 40])), ", ".join(cells[i:i + 40]))
             for i in range(0, len(cells), 40)]
    return " || ',' || ".join(parts)


def record_sql(fmt: str) -> str:
    """The select expression rendering every field (RECORD_FIELDS) of ``cdrs AS c``.

    ``json``: an object, JSON columns as JSON values, ``fax_success`` a
    boolean; a field without a value (NULL) is left out, at any depth, as
    Kazoo does -- json_patch onto ``{}`` drops null members and keeps the
    order.  ``csv``: a record in RECORD_CSV_FIELDS order, JSON columns as compact
    JSON text, ``fax_success`` as ``true``/``false``/empty, NULL as empty.
    """
    if fmt == "json":
        pairs = []
        for name in COLUMN_NAMES:
            if name in JSON_COLUMNS:
                pairs.append((name, "json(%s)" % _valid_json(name)))
            elif name == "fax_success":
                pairs.append((name, "json(%s)" % _fax_success("'true'", "'false'", "'null'")))
            else:
                pairs.append((name, _q(name)))
        pairs.append(("channel_created_time", _q("created_us")))
        return "json_patch('{}', %s)" % _json_object(pairs)
    cells = []
    for name in RECORD_CSV_FIELDS:
        if name == "channel_created_time":
            cells.append("COALESCE(CAST(%s AS TEXT), '')" % _q("created_us"))
        elif name in JSON_COLUMNS:
            cells.append("COALESCE(json(%s), '')" % _valid_json(name))
        elif name == "fax_success":
            cells.append(_fax_success("'true'", "'false'", "''"))
        elif name in _TEXT_COLUMNS:
            cells.append(spreadsheet_safe_sql("COALESCE(CAST(%s AS TEXT), '')" % _q(name)))
        else:
            cells.append("COALESCE(CAST(%s AS TEXT), '')" % _q(name))
    return _csv_record(cells)
