"""Templates: events with slots, encoded once per format.

Every event the stand-in sends is held as a :class:`Template`: its headers in
wire order (duplicates kept: FreeSWITCH sends ``Hangup-Cause`` twice) with the
parts that change from one use to the next cut out as *slots*: Unique-IDs and
every other UUID, times (``Event-Date-*``, ``*-Time``, ``*_epoch``,
``*_uepoch``, ``*_stamp``), ``Event-Sequence``, ``Core-UUID``, the host name,
and for generated calls the caller's number and name, the call durations and
the Kazoo variables added to them (``ecallmgr_Account-ID`` ...).  *Finders*
say where the slots are; :func:`compile_template` cuts them out, encodes the marked
event once per format with :func:`eslcdr.esl.events.encode_plain` /
``encode_json`` and splits the bytes at the slot markers.

A :class:`Context` (one replay repetition, or one generated call) says how to
fill the slots: fresh deterministic UUIDs, times moved by a shift (and, after
a pivot, by a delta that stretches the talk time), a caller.  An
:class:`Emission` is one event of the stream (template + context + sequence
number + due time); sending it only joins bytes, so the stand-in stays much
faster than the daemon it feeds.  Slot values are cached per context and
format, except those that belong to the emission (Core-UUID, host, sequence).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Callable, Iterable, Union

from ..esl.events import JSON, PLAIN, Event, decode_event, encode_json, encode_plain
from ..esl.frames import Frame
from .capture import UUID_RE, Pairs

# Slot kinds.  A slot is (kind, original text, reference time in µs).
_UUID, _CORE, _HOST, _SEQ, _USEC, _SEC, _LOCAL, _GMT = range(8)
_CNUM, _CNAME, _DUR_S, _DUR_MS, _DUR_US = range(8, 13)
SLOT_ACCOUNT, SLOT_OWNER, SLOT_AUTHORIZING, SLOT_INTERACTION = range(13, 17)
# RTP quality variables of generated calls (quality.py); ref = leg and variable.
SLOT_RTP = 17
# A leg's creation times: a generated call's post-dial delay moves every
# other time of the call, never these (so each leg's PDD grows by it).
_USEC_C, _SEC_C, _LOCAL_C, _GMT_C = range(18, 22)
_AT_CREATION = MappingProxyType({_USEC: _USEC_C, _SEC: _SEC_C, _LOCAL: _LOCAL_C, _GMT: _GMT_C})
_FROM_CREATION = MappingProxyType({v: k for k, v in _AT_CREATION.items()})
_CREATION_HEADERS = frozenset((
    "Caller-Channel-Created-Time", "Caller-Profile-Created-Time",
    "variable_start_epoch", "variable_start_uepoch", "variable_start_stamp",
))
# Kinds whose value belongs to the emission (not to the call or repetition).
_PER_EMISSION = frozenset((_CORE, _HOST, _SEQ))
_DUR_UNITS = MappingProxyType({_DUR_S: 1_000_000, _DUR_MS: 1_000, _DUR_US: 1})
_NEVER = 1 << 62

Slot = tuple[int, str, int]
Finder = Callable[[str, str, dict], Iterable[tuple[int, int, int, int]]]

_MARK = "~~S%d~~"
_MARK_RE = re.compile(rb"~~S(\d+)~~")
_SIMPLE_RE = re.compile(r"[0-9A-Za-z._-]*")
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
        "variable_duration": _DUR_S,
        "variable_billsec": _DUR_S,
        "variable_flow_billsec": _DUR_S,
        "variable_mduration": _DUR_MS,
        "variable_billmsec": _DUR_MS,
        "variable_flow_billmsec": _DUR_MS,
        "variable_uduration": _DUR_US,
        "variable_billusec": _DUR_US,
        "variable_flow_billusec": _DUR_US,
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


@dataclass(frozen=True, slots=True)
class Template:
    """One event with its variable parts cut out as slots."""

    event_id: str  # Event-Name (CUSTOM for custom events)
    subclass: str | None
    ts: int  # original Event-Date-Timestamp, µs
    seq: int  # original Event-Sequence
    slots: tuple[Slot, ...]
    # lower-cased header name -> pieces (text, or a slot index); the last
    # duplicate wins, as with decode_event and switch_event_get_header.
    values: dict[str, tuple[Union[str, int], ...]]
    # content type -> (static byte chunks, slot index between each two chunks)
    chunks: dict[str, tuple[tuple[bytes, ...], tuple[int, ...]]]

    def original(self, name: str) -> str | None:
        pieces = self.values.get(name.lower())
        if pieces is None:
            return None
        return "".join(p if isinstance(p, str) else self.slots[p][1] for p in pieces)


def event_ts(event: dict) -> int:
    value = event.get("Event-Date-Timestamp", "")
    return int(value) if value.isdigit() else 0


def compile_template(pairs: Pairs, body: str | None, finders: tuple[Finder, ...]) -> Template:
    event = dict(pairs)
    slots: list[Slot] = []
    index: dict[Slot, int] = {}
    marked, values = [], {}
    for name, value in pairs:
        pieces = _cut(name, value, event, finders, slots, index)
        values[name.lower()] = pieces
        marked.append((name, _marked(pieces)))
    marked_body = None
    if body is not None:
        # Only ids inside a body (BACKGROUND_JOB "+OK <uuid>"): same length,
        # so its Content-Length holds.
        marked_body = _marked(_cut("_body", body, event, (find_ids,), slots, index))
    body_length = len(body.encode("utf-8")) if body is not None else 0
    chunks = {}
    for ctype in (PLAIN, JSON):
        parts = _MARK_RE.split(_encode_pairs(ctype, marked, marked_body, body_length))
        chunks[ctype] = (tuple(parts[0::2]), tuple(int(p) for p in parts[1::2]))
    seq = event.get("Event-Sequence", "")
    return Template(
        event_id=event.get("Event-Name", ""),
        subclass=event.get("Event-Subclass"),
        ts=event_ts(event),
        seq=int(seq) if seq.isdigit() else 0,
        slots=tuple(slots),
        values=values,
        chunks=chunks,
    )


def _cut(name, value, event, finders, slots, index) -> tuple[Union[str, int], ...]:
    if "~~S" in value:
        raise ValueError("header %s holds the stand-in's slot marker" % name)
    spans = sorted(span for find in finders for span in find(name, value, event))
    pieces: list[Union[str, int]] = []
    pos = 0
    for start, end, kind, ref in spans:
        if start < pos:  # overlapping finds: the first one wins
            continue
        if start > pos:
            pieces.append(value[pos:start])
        slot = (kind, value[start:end], ref)
        if slot not in index:
            index[slot] = len(slots)
            slots.append(slot)
        pieces.append(index[slot])
        pos = end
    if pos < len(value) or not pieces:
        pieces.append(value[pos:])
    return tuple(pieces)


def _marked(pieces) -> str:
    return "".join(p if isinstance(p, str) else _MARK % p for p in pieces)


def _encode_pairs(
    ctype: str, pairs: list[tuple[str, str]], body: str | None, body_length: int
) -> bytes:
    """Encode header pairs as FreeSWITCH does, duplicates included.

    Each header goes through the project's own encoders, so the stand-in
    quotes exactly as ``eslcdr.esl.events`` expects.  ``body`` may hold slot
    markers: ``body_length`` is the real one.
    """
    if ctype == PLAIN:
        text = b"".join(encode_plain({name: value})[:-1] for name, value in pairs)
        if body is None:
            return text + b"\n"
        return text + b"Content-Length: %d\n\n" % body_length + body.encode("utf-8")
    items = [encode_json({name: value})[1:-1] for name, value in pairs]
    if body is not None:
        # switch_event_serialize_json: Content-Length, then _body, at the end.
        items.append(b'"Content-Length":"%d"' % body_length)
        items.append(b'"_body":' + _json_string(body))
    return b"{" + b",".join(items) + b"}"


def _json_string(text: str) -> bytes:
    return encode_json({"x": text})[5:-1]


def _escape(ctype: str, text: str) -> bytes:
    """A slot value as it appears on the wire in the given format."""
    if _SIMPLE_RE.fullmatch(text):
        return text.encode("ascii")
    if ctype == PLAIN:
        return encode_plain({"x": text})[3:-2]
    return _json_string(text)[1:-1]


def find_ids(name: str, value: str, event: dict):
    if name == "Event-Sequence":
        return ((0, len(value), _SEQ, 0),) if value.isdigit() else ()
    if name in _HOST_HEADERS:
        return ((0, len(value), _HOST, 0),)
    core = event.get("Core-UUID")
    return [
        (m.start(), m.end(), _CORE if m.group() == core else _UUID, 0)
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
        return ((0, len(value), _USEC, 0),)
    # Second-resolution values follow their µs twin (end_epoch/end_uepoch,
    # Event-Date-Local/Event-Date-Timestamp) so both stay consistent.
    ref = _reference_usec(name, event)
    if _SEC_RE.fullmatch(value):
        return ((0, len(value), _SEC, ref or int(value) * 1_000_000),)
    if _LOCAL_RE.fullmatch(value):
        return ((0, len(value), _LOCAL, ref or _local_usec(value)),)
    if _GMT_RE.fullmatch(value):
        return ((0, len(value), _GMT, ref or _local_usec(_gmt_to_local(value))),)
    return [
        (m.start(), m.end(), _SEC, int(m.group()) * 1_000_000)
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
            spans += [(m.start(), m.end(), _CNAME, 0) for m in name_re.finditer(value)]
        if number_re is not None:
            spans += [(m.start(), m.end(), _CNUM, 0) for m in number_re.finditer(value)]
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


def _shift_date(kind: int, text: str, seconds: int) -> str:
    if not seconds:
        return text
    if kind == _LOCAL:
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


def derive_uuid(key: str, original: str) -> str:
    digest = hashlib.sha1(("%s|%s" % (key, original)).encode("utf-8")).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


class Context:
    """How one replay repetition or one generated call fills the slots."""

    __slots__ = (
        "key",
        "shift_us",
        "pivot_us",
        "delta_us",
        "cnum",
        "cname",
        "kazoo",
        "rtp",
        "ring_from_us",
        "ring_us",
        "_uuids",
        "cache",
    )

    def __init__(
        self, key=None, shift_us=0, pivot_us=None, delta_us=0, cnum="", cname="", kazoo=None,
        rtp=None, ring_from_us=None, ring_us=0,
    ):
        self.key = key  # None: ids unchanged
        self.shift_us = shift_us  # every time moves by this (whole seconds)
        self.pivot_us = _NEVER if pivot_us is None else pivot_us
        self.delta_us = delta_us  # times after the pivot move this much more
        self.cnum = cnum
        self.cname = cname
        self.kazoo: dict[int, str] = kazoo or {}  # Kazoo variable slot kind -> value
        self.rtp: dict[int, str] = rtp or {}  # SLOT_RTP slot ref -> value (quality.py)
        # every time but the legs' creation moves this much more: a longer
        # post-dial delay (None: the call never rings, nothing moves)
        self.ring_from_us = _NEVER if ring_from_us is None else ring_from_us
        self.ring_us = ring_us
        self._uuids: dict[str, str] = {}
        # per format: slot -> its bytes on the wire
        self.cache: dict[str, dict[Slot, bytes]] = {PLAIN: {}, JSON: {}}

    def shift(self, usec: int, ring: bool = True) -> int:
        return (self.shift_us + (self.delta_us if usec > self.pivot_us else 0)
                + (self.ring_us if ring and usec >= self.ring_from_us else 0))

    def text(self, slot: Slot, emission: "Emission") -> str:
        kind, text, ref = slot
        ring = kind not in _FROM_CREATION
        if not ring:
            kind = _FROM_CREATION[kind]
        if kind == _UUID:
            return self._uuid(text)
        if kind == _CORE:
            return emission.core
        if kind == _HOST:
            return emission.host
        if kind == _SEQ:
            return str(emission.seq)
        if kind == _USEC:
            value = int(text)
            return str(value + self.shift(value, ring))
        if kind == _SEC:
            return str((ref + self.shift(ref, ring)) // 1_000_000)
        if kind in (_LOCAL, _GMT):
            moved = (ref + self.shift(ref, ring)) // 1_000_000 - ref // 1_000_000
            return _shift_date(kind, text, moved)
        if kind == _CNUM:
            return self.cnum
        if kind == _CNAME:
            return self.cname
        if kind in self.kazoo:
            return self.kazoo[kind]
        if kind == SLOT_RTP:
            return self.rtp.get(ref, text)
        extra = self.delta_us + (self.ring_us if ref and self.ring_from_us != _NEVER else 0)
        return str(int(text) + extra // _DUR_UNITS[kind])

    def fill(self, ctype: str, slot: Slot, emission: "Emission") -> bytes:
        """Encode a slot; remembered unless it belongs to the emission."""
        data = _escape(ctype, self.text(slot, emission))
        if slot[0] not in _PER_EMISSION:
            self.cache[ctype][slot] = data
        return data

    def _uuid(self, original: str) -> str:
        if self.key is None:
            return original
        new = self._uuids.get(original)
        if new is None:
            new = self._uuids[original] = derive_uuid(self.key, original)
        return new


class Emission:
    """One event of the stream: a template, its context and its place."""

    __slots__ = ("template", "ctx", "seq", "due", "core", "host", "position", "_frames")

    def __init__(self, template: Template, ctx: Context, seq: int, due: float | None = None):
        self.template = template
        self.ctx = ctx
        self.seq = seq
        self.due = due  # seconds after the stream start, None: at once
        self.core = ""
        self.host = ""
        self.position = 0
        self._frames: dict[str, bytes] = {}

    def frame(self, ctype: str) -> bytes:
        """The whole ESL frame in the given format (built once, then shared)."""
        data = self._frames.get(ctype)
        if data is None:
            body = self.body(ctype)
            data = b"Content-Length: %d\nContent-Type: %s\n\n" % (len(body), ctype.encode()) + body
            self._frames[ctype] = data
        return data

    def body(self, ctype: str) -> bytes:
        statics, ids = self.template.chunks[ctype]
        cache = self.ctx.cache[ctype]
        fill = self.ctx.fill
        values = [cache.get(slot) or fill(ctype, slot, self) for slot in self.template.slots]
        parts = [b""] * (2 * len(ids) + 1)
        parts[0::2] = statics
        parts[1::2] = [values[i] for i in ids]
        return b"".join(parts)

    def value(self, name: str) -> str | None:
        """A header's decoded value (case-insensitive, as FreeSWITCH looks up)."""
        pieces = self.template.values.get(name.lower())
        if pieces is None:
            return None
        slots = self.template.slots
        return "".join(p if isinstance(p, str) else self.ctx.text(slots[p], self) for p in pieces)

    def event(self) -> Event:
        """The decoded event, as a client's ``decode_event`` gives it."""
        return decode_event(Frame({"Content-Type": PLAIN}, self.body(PLAIN)))
