"""Slots: where an event's varying parts are, and what kind each is.

A slot is (kind, original text, reference time in µs): a Unique-ID or any
other UUID, ``Core-UUID``, the host name, ``Event-Sequence``, a time
(``Event-Date-*``, ``*-Time``, ``*_epoch``, ``*_uepoch``, ``*_stamp``, in µs,
seconds, local or GMT text; a leg's creation times apart), and for generated
calls the caller's number and name, the call durations, the Kazoo variables
and the RTP quality variables.  A *finder* ``(header, value, event) ->
[(start, end, kind, ref)]`` says where a header's slots are (``find_ids``,
``find_times``, ``find_kazoo``, ``caller_finder``, ``duration_finder``;
quality.py's ``rtp_finder``).  Invariants: pure (no state, no clock); a time in
seconds or as text refers to its µs twin, so both move together; the date
helpers parse and format by hand (``strptime`` is slow and follows the locale).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Callable, Iterable

from .capture import UUID_RE

# Slot kinds.  A slot is (kind, original text, reference time in µs).
SLOT_UUID, SLOT_CORE, SLOT_HOST, SLOT_SEQ, SLOT_USEC, SLOT_SEC, SLOT_LOCAL, SLOT_GMT = range(8)
SLOT_CNUM, SLOT_CNAME, SLOT_DUR_S, SLOT_DUR_MS, SLOT_DUR_US = range(8, 13)
SLOT_ACCOUNT, SLOT_OWNER, SLOT_AUTHORIZING, SLOT_INTERACTION = range(13, 17)
# RTP quality variables of generated calls (quality.py); ref = leg and variable.
SLOT_RTP = 17
# A leg's creation times: a generated call's post-dial delay moves every
# other time of the call, never these (so each leg's PDD grows by it).
_USEC_C, _SEC_C, _LOCAL_C, _GMT_C = range(18, 22)
_AT_CREATION = MappingProxyType({SLOT_USEC: _USEC_C, SLOT_SEC: _SEC_C, SLOT_LOCAL: _LOCAL_C, SLOT_GMT: _GMT_C})
FROM_CREATION = MappingProxyType({v: k for k, v in _AT_CREATION.items()})
_CREATION_HEADERS = frozenset((
    "Caller-Channel-Created-Time", "Caller-Profile-Created-Time",
    "variable_start_epoch", "variable_start_uepoch", "variable_start_stamp",
))
# Kinds whose value belongs to the emission (not to the call or repetition).
PER_EMISSION = frozenset((SLOT_CORE, SLOT_HOST, SLOT_SEQ))
DUR_UNITS = MappingProxyType({SLOT_DUR_S: 1_000_000, SLOT_DUR_MS: 1_000, SLOT_DUR_US: 1})

Slot = tuple[int, str, int]
Finder = Callable[[str, str, dict], Iterable[tuple[int, int, int, int]]]

_HOST_HEADERS = frozenset(("FreeSWITCH-Hostname", "FreeSWITCH-Switchname"))
_TIME_NAME_RE = re.compile(
    r"^Event-Date-|-Time$|_u?epoch$|_stamp$|[Tt]ransfer[-_][Ss]ource$|transfer_history$"
)
_USEC_RE = re.compile(r"1\d{15}")
_SEC_RE = re.compile(r"1\d{9}")
_LOCAL_RE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
_GMT_RE = re.compile(r"[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT")
_EMBEDDED_SEC_RE = re.compile(r"(?<!\d)1\d{9}(?=:)")  # "1795727852:<uuid>:bl_xfer:..."
# Headers where a caller's number could be a false hit (durations, counters).
_NOT_CALLER_RE = re.compile(
    r"(?i)duration|msec|usec|sec$|_ms$|epoch|-time$|timestamp|stamp$|sequence|ringback"
)
_DURATIONS = MappingProxyType(
    {
        "variable_duration": SLOT_DUR_S,
        "variable_billsec": SLOT_DUR_S,
        "variable_flow_billsec": SLOT_DUR_S,
        "variable_mduration": SLOT_DUR_MS,
        "variable_billmsec": SLOT_DUR_MS,
        "variable_flow_billmsec": SLOT_DUR_MS,
        "variable_uduration": SLOT_DUR_US,
        "variable_billusec": SLOT_DUR_US,
        "variable_flow_billusec": SLOT_DUR_US,
    }
)
_SINCE_CREATED = frozenset(("variable_duration", "variable_mduration", "variable_uduration"))
# The channel variables a Kazoo platform's ecallmgr exports to every leg of a
# call (Authorizing-ID only on the caller's side, Call-Interaction-ID not on
# every call), so that generated calls belong to accounts as Kazoo's do.  The
# captures have none: call_template() adds them, and each is one slot.
KAZOO_VARS = MappingProxyType(
    {
        "variable_ecallmgr_Account-ID": SLOT_ACCOUNT,
        "variable_ecallmgr_Owner-ID": SLOT_OWNER,
        "variable_ecallmgr_Authorizing-ID": SLOT_AUTHORIZING,
        "variable_ecallmgr_Call-Interaction-ID": SLOT_INTERACTION,
    }
)



def event_ts(event: dict) -> int:
    value = event.get("Event-Date-Timestamp", "")
    return int(value) if value.isdigit() else 0


def find_ids(name: str, value: str, event: dict):
    if name == "Event-Sequence":
        return ((0, len(value), SLOT_SEQ, 0),) if value.isdigit() else ()
    if name in _HOST_HEADERS:
        return ((0, len(value), SLOT_HOST, 0),)
    core = event.get("Core-UUID")
    return [
        (m.start(), m.end(), SLOT_CORE if m.group() == core else SLOT_UUID, 0)
        for m in UUID_RE.finditer(value)
    ]


def find_times(name: str, value: str, event: dict):
    spans = _time_spans(name, value, event)
    if spans and (name in _CREATION_HEADERS
                  or (name.startswith("Event-Date-") and event.get("Event-Name") == "CHANNEL_CREATE")):
        return [(start, end, _AT_CREATION[kind], ref) for start, end, kind, ref in spans]
    return spans


def _time_spans(name: str, value: str, event: dict):
    if not _TIME_NAME_RE.search(name):
        return ()
    if _USEC_RE.fullmatch(value):
        return ((0, len(value), SLOT_USEC, 0),)
    # Second-resolution values follow their µs twin (end_epoch/end_uepoch,
    # Event-Date-Local/Event-Date-Timestamp) so both stay consistent.
    ref = _reference_usec(name, event)
    if _SEC_RE.fullmatch(value):
        return ((0, len(value), SLOT_SEC, ref or int(value) * 1_000_000),)
    if _LOCAL_RE.fullmatch(value):
        return ((0, len(value), SLOT_LOCAL, ref or _local_usec(value)),)
    if _GMT_RE.fullmatch(value):
        return ((0, len(value), SLOT_GMT, ref or _local_usec(_gmt_to_local(value))),)
    return [
        (m.start(), m.end(), SLOT_SEC, int(m.group()) * 1_000_000)
        for m in _EMBEDDED_SEC_RE.finditer(value)
    ]


def _reference_usec(name: str, event: dict) -> int:
    if name.startswith("Event-Date-"):
        twin = "Event-Date-Timestamp"
    elif name.endswith(("_epoch", "_stamp")):
        twin = name.rsplit("_", 1)[0] + "_uepoch"
    else:
        return 0
    value = event.get(twin, "")
    return int(value) if _USEC_RE.fullmatch(value) else 0


def caller_finder(number: str | None, name: str | None) -> Finder:
    """Slots for the template call's caller number and name."""
    number_re = re.compile(r"(?<![\w.+])%s(?![\w.])" % re.escape(number)) if number else None
    name_re = re.compile(re.escape(name)) if name else None

    def find(header: str, value: str, event: dict):
        if _NOT_CALLER_RE.search(header):
            return ()
        spans = []
        if name_re is not None:
            spans += [(m.start(), m.end(), SLOT_CNAME, 0) for m in name_re.finditer(value)]
        if number_re is not None:
            spans += [(m.start(), m.end(), SLOT_CNUM, 0) for m in number_re.finditer(value)]
        return spans

    return find


def find_kazoo(name: str, value: str, event: dict):
    kind = KAZOO_VARS.get(name)
    return ((0, len(value), kind, 0),) if kind is not None else ()


def duration_finder(pivot: int | None) -> Finder:
    """Slots for the durations a longer talk (or ring) time changes.

    Only non-zero durations of events after the pivot: a leg that was never
    answered keeps billsec 0.
    """

    def find(header: str, value: str, event: dict):
        kind = _DURATIONS.get(header)
        if kind is None or pivot is None or not value.isdigit() or value == "0":
            return ()
        # ref 1: a created -> hangup duration, which a longer post-dial delay
        # lengthens (creation times stay, the hangup moves)
        ref = 1 if header in _SINCE_CREATED else 0
        return ((0, len(value), kind, ref),) if event_ts(event) > pivot else ()

    return find


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def _parse_local(text: str) -> datetime:
    # "2026-11-26 21:15:10"; by hand: strptime is slow and %a/%b follow the locale.
    return datetime(
        int(text[0:4]),
        int(text[5:7]),
        int(text[8:10]),
        int(text[11:13]),
        int(text[14:16]),
        int(text[17:19]),
    )


def _format_local(moment: datetime) -> str:
    return "%04d-%02d-%02d %02d:%02d:%02d" % (
        moment.year,
        moment.month,
        moment.day,
        moment.hour,
        moment.minute,
        moment.second,
    )


def _gmt_to_local(text: str) -> str:
    # "Thu, 26 Nov 2026 21:15:10 GMT" -> "2026-11-26 21:15:10"
    month = _MONTHS.index(text[8:11]) + 1
    return "%s-%02d-%s %s" % (text[12:16], month, text[5:7], text[17:25])


def _local_usec(text: str) -> int:
    return int((_parse_local(text) - datetime(1970, 1, 1)).total_seconds()) * 1_000_000


def shift_date(kind: int, text: str, seconds: int) -> str:
    if not seconds:
        return text
    if kind == SLOT_LOCAL:
        return _format_local(_parse_local(text) + timedelta(seconds=seconds))
    moment = _parse_local(_gmt_to_local(text)) + timedelta(seconds=seconds)
    return "%s, %02d %s %04d %02d:%02d:%02d GMT" % (
        _DAYS[moment.weekday()],
        moment.day,
        _MONTHS[moment.month - 1],
        moment.year,
        moment.hour,
        moment.minute,
        moment.second,
    )
