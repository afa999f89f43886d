"""Kazoo's shapes of a CDR: the list row, the interaction row, the full record.

Pure functions from SQLite row tuples to dicts, shared by JSON and CSV.

List rows follow crossbar's ``cb_cdrs`` column list and derivations:

- ``timestamp`` is the call *start* (stored hangup ``timestamp`` minus
  ``duration_seconds``) as a string of Gregorian seconds, and every date
  column is derived from it: ``unix_timestamp`` (string), ``rfc_1036``
  (``Mon, 13 Feb 2017 18:11:23 GMT``), ``iso_8601`` (the date only),
  ``iso_8601_combined`` (``2017-02-13T18:11:23Z``) and ``datetime``
  (``2017-02-13 18:11:23``, the only one shifted by ``utc_offset``);
- ``dialed_number`` is the user part of ``request`` (inbound legs) or of
  ``to`` (outbound legs); ``calling_from`` is ``caller_id_number`` (inbound)
  or the user part of ``from_uri`` (outbound);
- ``authorizing_id`` is empty when it equals the account id (Kazoo: a call
  the account itself authorised);
- ``cost`` (units, string) is computed only for ``account_billing =
  per_minute`` legs, as ``kapps_call_util:call_cost`` does, else ``"0"``;
  ``rate`` is ``custom_channel_vars.rate`` (units) in dollars as a string;
- ``call_type`` (``account_billing``), ``rate_name``, ``recording_url``,
  ``call_priority`` come from ``custom_channel_vars`` with Kazoo's ``""``
  default, ``media_recordings`` is always a list;
- ``bridge_id`` is ``custom_channel_vars.bridge_id`` when ecallmgr set it,
  else our ``other_leg_call_id``, else ``""``.

Missing text values are ``""`` as in Kazoo (never null) so JSON and CSV
agree.  The full record (CDR detail, legs, collector feed) is every stored
column, JSON columns as objects and ``fax_success`` as a boolean.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, Iterable, Mapping, Sequence

from .schema import COLUMN_NAMES, JSON_COLUMNS

GREGORIAN_UNIX_OFFSET = 62167219200

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

# The stored columns a list row needs, in the order ``list_row`` unpacks
# them (no SDP blobs: they are most of a row's bytes).
SOURCE_COLUMNS: tuple[str, ...] = (
    "id", "call_id", "caller_id_number", "caller_id_name", "callee_id_number",
    "callee_id_name", "duration_seconds", "billing_seconds", "timestamp",
    "hangup_cause", "disposition", "other_leg_call_id", "owner_id", "to", "from",
    "call_direction", "request", "authorizing_id", "account_id", "from_uri",
    "media_server", "interaction_id", "custom_channel_vars",
)

_AUTHORIZING_ID = SOURCE_COLUMNS.index("authorizing_id")
_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("", "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_NO_CCV: dict[str, Any] = {}


def _text(value: Any) -> str:
    return "" if value is None else value if isinstance(value, str) else str(value)


def _user_part(uri: Any) -> str:
    return _text(uri).split("@", 1)[0]


def _ccv(raw: str | None) -> Mapping[str, Any]:
    # Most legs carry a few variables; skip the parser for empty ones.
    if not raw or raw == "{}":
        return _NO_CCV
    try:
        value = json.loads(raw)
    except ValueError:
        return _NO_CCV
    return value if isinstance(value, dict) else _NO_CCV


def _int(ccv: Mapping[str, Any], key: str, default: int = 0) -> int:
    value = ccv.get(key)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        try:
            return int(float(value))
        except (TypeError, ValueError, OverflowError):
            return default


def call_cost(ccv: Mapping[str, Any], billing_seconds: int) -> int:
    """Kazoo's per-minute cost in units (1/10000 dollar)."""
    seconds = billing_seconds - _int(ccv, "billing_seconds_offset")
    if seconds <= 0 or seconds <= _int(ccv, "rate_nocharge_time"):
        return 0
    rate = _int(ccv, "rate")
    increment = _int(ccv, "rate_increment", 60) or 60
    minimum = _int(ccv, "rate_minimum")
    surcharge = _int(ccv, "surcharge")
    if seconds <= minimum:
        cost = math.trunc(surcharge + (minimum / 60) * rate)
    else:
        cost = math.trunc(
            surcharge
            + (minimum / 60) * rate
            + math.ceil((seconds - minimum) / increment) * ((increment / 60) * rate)
        )
    discount = math.trunc(_int(ccv, "discount_percentage") * 0.01 * cost)
    return math.trunc(cost - discount)


def _recordings(ccv: Mapping[str, Any]) -> list:
    value = ccv.get("media_recordings")
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _dates(gregorian: int, utc_offset: int) -> tuple[str, str, str, str, str]:
    """(datetime, unix_timestamp, rfc_1036, iso_8601, iso_8601_combined)."""
    unix = gregorian - GREGORIAN_UNIX_OFFSET
    try:
        t = time.gmtime(unix)
        local = time.gmtime(unix + utc_offset) if utc_offset else t
    except (OverflowError, OSError, ValueError):
        return ("", str(unix), "", "", "")
    day = "%04d-%02d-%02d" % (t.tm_year, t.tm_mon, t.tm_mday)
    clock = "%02d:%02d:%02d" % (t.tm_hour, t.tm_min, t.tm_sec)
    pretty = "%04d-%02d-%02d %02d:%02d:%02d" % (
        local.tm_year, local.tm_mon, local.tm_mday, local.tm_hour, local.tm_min, local.tm_sec,
    )
    rfc_1036 = "%s, %02d %s %d %s GMT" % (_WEEKDAYS[t.tm_wday], t.tm_mday, _MONTHS[t.tm_mon], t.tm_year, clock)
    return (pretty, str(unix), rfc_1036, day, "%sT%sZ" % (day, clock))


def list_row(values: Sequence[Any], utc_offset: int = 0) -> dict[str, Any]:
    """A list row from a tuple of SOURCE_COLUMNS values."""
    (cdr_id, call_id, caller_number, caller_name, callee_number, callee_name,
     duration, billing, timestamp, hangup_cause, disposition, other_leg, owner_id,
     to, from_, direction, request, authorizing_id, account_id, from_uri,
     media_server, interaction_id, ccv_raw) = values
    ccv = _ccv(ccv_raw)
    duration = duration or 0
    billing = billing or 0
    start = (timestamp or 0) - duration
    pretty, unix, rfc_1036, day, combined = _dates(start, utc_offset)
    if direction == "inbound":
        dialed, calling = _user_part(request), _text(caller_number)
    elif direction == "outbound":
        dialed, calling = _user_part(to), _user_part(from_uri)
    else:
        dialed = calling = ""
    billing_type = ccv.get("account_billing")
    return {
        "id": _text(cdr_id),
        "call_id": _text(call_id),
        "caller_id_number": _text(caller_number),
        "caller_id_name": _text(caller_name),
        "callee_id_number": _text(callee_number),
        "callee_id_name": _text(callee_name),
        "duration_seconds": duration,
        "billing_seconds": billing,
        "timestamp": str(start),
        "hangup_cause": _text(hangup_cause),
        "disposition": _text(disposition),
        "other_leg_call_id": _text(other_leg),
        "owner_id": _text(owner_id),
        "to": _text(to),
        "from": _text(from_),
        "direction": _text(direction),
        "request": _text(request),
        "authorizing_id": "" if authorizing_id == account_id else _text(authorizing_id),
        "cost": str(call_cost(ccv, billing)) if billing_type == "per_minute" else "0",
        "dialed_number": dialed,
        "calling_from": calling,
        "datetime": pretty,
        "unix_timestamp": unix,
        "rfc_1036": rfc_1036,
        "iso_8601": day,
        "iso_8601_combined": combined,
        "call_type": _text(billing_type),
        "rate": repr(_int(ccv, "rate") / 10000),
        "rate_name": _text(ccv.get("rate_name")),
        "bridge_id": _text(ccv.get("bridge_id") or other_leg),
        "recording_url": _text(ccv.get("recording_url")),
        "media_recordings": _recordings(ccv),
        "media_server": _text(media_server),
        "call_priority": _text(ccv.get("call_priority")),
        "interaction_id": _text(interaction_id),
    }


def interaction_row(values: Sequence[Any], utc_offset: int = 0, by_user: bool = False) -> dict[str, Any]:
    """An interaction row: the list row of its first leg plus inception_direction.

    As in Kazoo: for the account listing a leg some device/user authorised
    was originated by the account ("origination"), else it came from outside
    ("termination"); for a user's listing the leg's direction decides.
    """
    row = list_row(values, utc_offset)
    if by_user:
        row["inception_direction"] = "origination" if row["direction"] == "inbound" else "termination"
    else:
        row["inception_direction"] = "origination" if values[_AUTHORIZING_ID] else "termination"
    return row


def full_record(values: Sequence[Any]) -> dict[str, Any]:
    """Every stored column of a ``SELECT *`` tuple (COLUMN_NAMES order)."""
    record = dict(zip(COLUMN_NAMES, values))
    for name in JSON_COLUMNS:
        raw = record.get(name)
        if isinstance(raw, str):
            try:
                record[name] = json.loads(raw)
            except ValueError:
                pass  # keep what was stored rather than hide it
    fax = record.get("fax_success")
    if fax is not None:
        record["fax_success"] = bool(fax)
    return record


def csv_value(value: Any) -> str:
    """One CSV cell: text as is, numbers as digits, structures as JSON text."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return str(value)


def csv_cells(row: Mapping[str, Any], columns: Iterable[str]) -> list[str]:
    return [csv_value(row.get(name)) for name in columns]
