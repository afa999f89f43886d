"""Lossless decoding of FreeSWITCH event bodies (``text/event-plain`` and
``text/event-json``) into a dict of ``str -> str``.

Plain events (``decode_plain``) are split into lines first and each value
percent-decoded after (greenswitch decodes the whole block first, which
breaks values that hold an encoded newline, such as SDP).  JSON events
(``decode_json``) re-encode ``ARRAY::`` variables in FreeSWITCH's plain form,
so both subscriptions decode to the same values.  A body is kept under
``_body``.

Bytes that are not UTF-8 are replaced (U+FFFD), never fatal; so is NUL
(PostgreSQL's text and jsonb cannot hold it, so a row carrying one would be
refused by the collector: ``without_nul``).  A body that cannot be decoded at
all raises ``EventDecodeError`` for the caller to count.  Here too: the
answers a resync reads (``show channels as json``, ``uuid_dump <uuid> json``).
"""

from __future__ import annotations

import json
from itertools import compress, repeat
from operator import is_not
from typing import Callable, Iterable, Iterator, TypedDict, Union
from urllib.parse import quote, unquote

import msgspec
import orjson

from .errors import CommandFailed
from .frames import Frame

Event = dict[str, str]

PLAIN = "text/event-plain"
JSON = "text/event-json"
EVENT_TYPES = (PLAIN, JSON)


# switch_url_encode(): control bytes, non-ASCII bytes and these are escaped.
_URL_UNSAFE = '\r\n "#%&+:;<=>?@[\\]^`{|}'
_URL_SAFE = "".join(
    chr(c) for c in range(33, 127) if chr(c) not in _URL_UNSAFE and not chr(c).isalnum()
)


def percent_encode(value: str) -> str:
    """A value as FreeSWITCH writes it in a plain event (and in mod_json_cdr
    files with ``encode-values``): switch_url_encode."""
    return quote(value, safe=_URL_SAFE)


class EventDecodeError(ValueError):
    """The body of an event frame could not be decoded."""


NUL = "\x00"
NUL_REPLACEMENT = "\ufffd"
# A JSON text carries U+0000 only as this escape (a raw control byte is not
# JSON); a plain event only percent-encoded (FreeSWITCH encodes control bytes).
_JSON_NUL = b"\\u0000"
_PLAIN_NULS = (b"%00", b"\x00")


def without_nul(event: Event) -> Event:
    """The event with every NUL in a header name or value replaced by U+FFFD
    (call it only when the body may hold one: it copies the event)."""
    return {name.replace(NUL, NUL_REPLACEMENT): value.replace(NUL, NUL_REPLACEMENT)
            for name, value in event.items()}


def json_may_hold_nul(body: bytes) -> bool:
    """Whether a JSON text may decode to a string holding NUL.

    memchr for a backslash first (~0.2 µs for an event of 5 KB; events
    without SDP have none); then rfind, which skips on the needle's first
    byte -- the rare backslash -- where ``in`` skips on its last, a ``0``
    that JSON is full of: 2.2 against 5.2 µs on a hangup holding SDP.
    """
    return b"\\" in body and body.rfind(_JSON_NUL) >= 0


def plain_may_hold_nul(body: bytes) -> bool:
    return any(marker in body for marker in _PLAIN_NULS)


def _array_value(items: list) -> str:
    return "ARRAY::" + "|:".join(str(item) for item in items)


def decode_json(body: bytes) -> Event:
    """Values are raw strings; ``ARRAY::`` variables arrive as JSON arrays and
    are re-encoded in FreeSWITCH's plain form (``ARRAY::a|:b``).  The body is
    ``_body`` already.  NUL (``\\u0000`` in a name or a value) is replaced as in
    a plain event (``%00``).  Parsed with orjson (about twice as fast as the
    stdlib on these events).
    """
    try:
        try:
            # orjson parses FreeSWITCH's events in half the time of json.
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            # Not UTF-8 (orjson refuses it) or not JSON: the stdlib parser
            # on the text with bad bytes replaced decides which.
            data = json.loads(body.decode("utf-8", "replace"))
    except json.JSONDecodeError as exc:
        raise EventDecodeError("invalid JSON event: %s" % exc) from None
    except RecursionError:
        raise EventDecodeError("invalid JSON event: nested too deep") from None
    if not isinstance(data, dict):
        raise EventDecodeError("JSON event is not an object")
    # Keys whose value is not a string (ARRAY:: variables arrive as lists),
    # found with C-level iterators: a Python loop over every header of every
    # event would cost as much as parsing it.
    odd = list(compress(data, map(is_not, map(type, data.values()), repeat(str))))
    for key in odd:
        data[key] = _as_text(data[key])
    if json_may_hold_nul(body):
        return without_nul(data)
    return data


def _as_text(value) -> str:
    if isinstance(value, list):
        return _array_value(value)
    if value is None:
        return ""
    return json.dumps(value) if isinstance(value, dict) else str(value)


def plain_header_pairs(head: str) -> Iterator[tuple[str, str]]:
    """(name, value) of each line of a plain event's header block, values
    percent-decoded after the split (an encoded newline stays in its value)."""
    for line in head.split("\n"):
        if not line:
            continue
        name, colon, value = line.partition(": ")
        if not colon:
            # "Name:" with an empty value, or a line that is not a header.
            name, colon, value = line.partition(":")
            if not colon:
                raise EventDecodeError("plain event line without a name: %r" % line[:80])
        if "%" in value:
            value = unquote(value, errors="replace")
        yield name, value


def decode_plain(body: bytes) -> Event:
    """One ``Name: value`` header a line, every value percent-encoded by
    FreeSWITCH.  A body (``Content-Length`` inside the event, as on
    BACKGROUND_JOB) follows the blank line and is kept under ``_body``.
    """
    text = body.decode("utf-8", "replace")
    head, sep, rest = text.partition("\n\n")
    event: Event = dict(plain_header_pairs(head))
    if sep:
        length = event.get("Content-Length")
        if length is not None and length.isascii() and length.isdigit():
            # The inner length counts bytes, the text is already decoded: cut
            # on the raw body instead.
            raw_rest = body[body.index(b"\n\n") + 2 :]
            event["_body"] = raw_rest[: int(length)].decode("utf-8", "replace")
        elif rest.strip():
            event["_body"] = rest
    if plain_may_hold_nul(body):
        return without_nul(event)
    return event


def decode_event(frame: Frame) -> Event:
    """Decode an event frame; raises EventDecodeError on a bad body."""
    ctype = frame.content_type
    if ctype == JSON:
        return decode_json(frame.body)
    if ctype == PLAIN:
        return decode_plain(frame.body)
    raise EventDecodeError("not an event frame: %r" % ctype)


def event_name(event: Event) -> str:
    """The event's name; CUSTOM events are named by their subclass."""
    name = event.get("Event-Name", "")
    if name == "CUSTOM":
        return event.get("Event-Subclass", "CUSTOM")
    return name


def encode_plain(event: Event) -> bytes:
    """Encode an event as a ``text/event-plain`` body, as FreeSWITCH does.

    Used by the stand-in; ``_body`` becomes an inner Content-Length body.
    """
    lines = []
    body = event.get("_body")
    for name, value in event.items():
        if name == "_body" or name == "Content-Length":
            continue
        lines.append("%s: %s\n" % (name, percent_encode(value)))
    text = "".join(lines)
    if body is not None:
        raw = body.encode("utf-8")
        return (text + "Content-Length: %d\n\n" % len(raw)).encode("utf-8") + raw
    return (text + "\n").encode("utf-8")


def encode_json(event: Event) -> bytes:
    """Encode an event as a ``text/event-json`` body (ARRAY:: as lists)."""
    out: dict[str, object] = {}
    for name, value in event.items():
        if value.startswith("ARRAY::") and name.startswith("variable_"):
            out[name] = value[7:].split("|:")
        else:
            out[name] = value
    if "_body" in event:
        out["Content-Length"] = str(len(event["_body"].encode("utf-8")))
    return json.dumps(out, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


# ---------------------------------------------------------------------------
# The fast path: decode only what is read.
#
# CHANNEL_CREATE / PROGRESS / ANSWER / BRIDGE / DTMF are most of the frames,
# and the leg tracker reads a handful of their ~150 headers.  msgspec decodes
# a JSON body into a TypedDict of just those headers, skipping
# every other key in C, and that costs less than json.loads of the whole
# body.  HANGUP_COMPLETE (the CDR needs every variable) and CUSTOM events
# (the fax result's fax-* headers) are decoded whole.  Progress, DTMF and
# hold events of a leg the tracker already follows keep fewer still (the
# brief view: msgspec compares every key it skips with every field, so a
# field costs ~1,500 instructions an event).  Anything the typed
# decoder does not expect -- bytes that are not UTF-8, a value that is
# neither a string nor a list of strings -- falls back to ``decode_event``,
# the reference path, so both paths give the same values for what they
# keep (a test feeds every capture through both).
# ---------------------------------------------------------------------------

# Events whose readers need only the light headers.
LIGHT_EVENTS = frozenset(
    {
        "CHANNEL_CREATE",
        "CHANNEL_PROGRESS",
        "CHANNEL_PROGRESS_MEDIA",
        "CHANNEL_ANSWER",
        "CHANNEL_BRIDGE",
        "CHANNEL_CALLSTATE",
        "CHANNEL_HOLD",
        "CHANNEL_UNHOLD",
        "DTMF",
    }
)
# No None: a JSON null (never sent by FreeSWITCH) goes the reference way.
_LightValue = Union[str, list[str]]
_NAME_PREFIX = b'{"Event-Name":"'
_NAME_START = len(_NAME_PREFIX)
_LIGHT_NAMES = frozenset(name.encode() for name in LIGHT_EVENTS)
# The order in which FreeSWITCH writes the headers the tracker reads (the
# event's own headers, the caller profile's, the other leg's); variables
# come after all of them, in the order they were set.
_EMISSION_ORDER = {
    name: rank
    for rank, name in enumerate((
        "Event-Name", "Event-Subclass", "Bridge-A-Unique-ID", "Bridge-B-Unique-ID", "DTMF-Digit",
        "Channel-Call-State", "Channel-Name", "Unique-ID", "Call-Direction", "Channel-Presence-ID",
        "Answer-State", "Caller-Caller-ID-Name", "Caller-Caller-ID-Number", "Caller-Callee-ID-Name",
        "Caller-Callee-ID-Number", "Caller-Destination-Number", "Caller-Channel-Created-Time",
        "Caller-Channel-Answered-Time", "Other-Leg-Unique-ID",
    ))
}


def _emission_rank(name: str) -> int:
    return _EMISSION_ORDER.get(name, len(_EMISSION_ORDER))


def _as_kept(event: dict, body: bytes) -> bool:
    """A light or brief view made an Event in place (ARRAY:: variables
    arrive as lists); False when a value kept holds NUL."""
    if b"[" in body:  # no bracket, no list
        for key in [key for key, value in event.items() if value.__class__ is list]:
            event[key] = _array_value(event[key])
    # NUL comes only as an escape (a backslash): the few values kept are
    # searched, not the body (the names are the fields' own).
    return not (b"\\" in body and NUL in "".join(event.values()))


def _light_decoder(headers: list[str]) -> msgspec.json.Decoder:
    """A decoder of the named headers alone, straight into a dict (a
    TypedDict: no struct to convert, a header the body lacks is absent)."""
    # msgspec looks a key up from the field after the last one matched:
    # fields in FreeSWITCH's order find each header at the first try (and
    # every key not kept is compared with every field: few fields, cheap).
    headers = sorted(headers, key=_emission_rank)
    light = TypedDict("LightEvent", {header: _LightValue for header in headers}, total=False)  # type: ignore[misc]
    return msgspec.json.Decoder(light)


class EventDecoder:
    """Decodes event frames; JSON events the readers need little of are
    decoded light: only ``light_headers`` (plus the event's name) are kept.

    Brief events (``brief_events``) of a leg ``known(Unique-ID)`` keep only
    ``brief_headers``: the tracker reads no more of a leg it already follows
    (ingest/legs.py BRIEF_EVENTS); any other such event is decoded light.
    ``fast=False`` gives the reference decoder (every header of every event).
    """

    def __init__(
        self,
        light_headers: Iterable[str] = (),
        fast: bool = True,
        brief_events: Iterable[str] = (),
        brief_headers: Iterable[str] = (),
        known: Callable[[str], bool] | None = None,
    ) -> None:
        headers = ["Event-Name"]
        headers.extend(h for h in dict.fromkeys(light_headers) if h != "Event-Name")
        self.light_headers: tuple[str, ...] = tuple(headers)
        self.fast = fast
        self._light = _light_decoder(headers)
        self.brief_events = frozenset(brief_events) & LIGHT_EVENTS if known is not None else frozenset()
        self._brief_names = frozenset(name.encode() for name in self.brief_events)
        brief = ["Event-Name", "Unique-ID"]
        brief.extend(h for h in dict.fromkeys(brief_headers) if h not in brief)
        self.brief_headers: tuple[str, ...] = tuple(brief)
        self._brief = _light_decoder(brief)
        self._known = known
        self._typed_whole = msgspec.json.Decoder(dict[str, Union[str, list[str]]])
        self.light_decoded = 0
        self.brief_decoded = 0
        self.whole_decoded = 0

    def decode(self, frame: Frame) -> Event:
        """Decode an event frame; raises EventDecodeError on a bad body."""
        if not self.fast or frame.content_type != JSON:
            return decode_event(frame)
        body = frame.body
        # FreeSWITCH writes Event-Name first: a hangup is seen without a
        # light pass, which would be wasted on it.
        if body.startswith(_NAME_PREFIX):
            name = body[_NAME_START : body.find(b'"', _NAME_START, 96)]
            if name not in _LIGHT_NAMES:
                return self._whole(body)
            if name in self._brief_names:
                event = self._brief_of(body)
                if event is not None:
                    return event
        return self._light_of(body)

    def _light_of(self, body: bytes) -> Event:
        try:
            event = self._light.decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError):
            return self._reference(body)
        if event.get("Event-Name") not in LIGHT_EVENTS:
            return self._whole(body)
        if not _as_kept(event, body):
            return self._reference(body)  # decode_json replaces NUL
        self.light_decoded += 1
        return event

    def _brief_of(self, body: bytes) -> Event | None:
        """The brief view of a brief event of a known leg, else None."""
        try:
            event = self._brief.decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError):
            return None
        if not _as_kept(event, body):
            return None
        call_id = event.get("Unique-ID")
        if event.get("Event-Name") not in self.brief_events or (call_id and not self._known(call_id)):
            return None
        self.brief_decoded += 1
        return event

    def _whole(self, body: bytes) -> Event:
        if json_may_hold_nul(body):
            return self._reference(body)  # decode_json replaces it
        try:
            # Typed: anything but strings and lists of strings is refused in C.
            event = self._typed_whole.decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError):
            return self._reference(body)
        if b"[" in body:
            # ARRAY:: variables arrive as lists; no bracket, no list.
            for key in list(compress(event, map(is_not, map(type, event.values()), repeat(str)))):
                event[key] = _array_value(event[key])
        if event.get("Event-Name") in LIGHT_EVENTS:
            # A light event whose name the peek could not read.
            return {name: event[name] for name in self.light_headers if name in event}
        self.whole_decoded += 1
        return event

    def _reference(self, body: bytes) -> Event:
        # What the typed decoders refuse (bytes that are not UTF-8, values
        # that are not strings): the reference decoder, then the light view.
        event = decode_json(body)
        if event.get("Event-Name") in LIGHT_EVENTS:
            self.light_decoded += 1
            return {name: event[name] for name in self.light_headers if name in event}
        self.whole_decoded += 1
        return event


def parse_channel_rows(body: str) -> list[dict[str, str]]:
    """Rows of ``show channels as json`` (``{"row_count":0}`` when none),
    each with a ``uuid``; values as strings."""
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        raise CommandFailed("show channels: not JSON: %r" % body[:80]) from None
    rows = (data.get("rows") or []) if isinstance(data, dict) else []
    return [
        {str(k): "" if v is None else str(v) for k, v in row.items()}
        for row in rows
        if isinstance(row, dict) and row.get("uuid")
    ]


def parse_dump(body: str) -> Event | None:
    """The CHANNEL_DATA event of ``uuid_dump <uuid> json``; None if gone."""
    if not body.lstrip().startswith("{"):
        return None  # "-ERR No such channel!"
    try:
        event = decode_json(body.encode("utf-8"))
    except EventDecodeError:
        return None
    event.setdefault("Event-Name", "CHANNEL_DATA")
    return event if event.get("Unique-ID") else None
