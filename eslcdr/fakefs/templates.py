"""Templates: events with slots, encoded once per format.

Every event the stand-in sends is held as a :class:`Template`: its headers in
wire order (duplicates kept: FreeSWITCH sends ``Hangup-Cause`` twice) with the
parts that change from one use to the next cut out as *slots* (slots.py's
finders say where): :func:`compile_template` cuts them out, encodes the marked
event once per format with :func:`eslcdr.esl.events.encode_plain` /
``encode_json`` and splits the bytes at the slot markers.  A :class:`Context`
(one replay repetition, or one generated call) says how to fill the slots:
fresh deterministic UUIDs, times moved by a shift (and, after a pivot, by a
delta that stretches the talk time), a caller.  An :class:`Emission` is one
event of the stream (template + context + sequence number + due time); sending
it only joins bytes, so the stand-in stays much faster than the daemon it feeds.
Slot values are cached per context and format, except those that belong to the
emission (Core-UUID, host, sequence).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from typing import Union

from ..esl.events import JSON, PLAIN, Event, decode_event, encode_json, encode_plain
from ..esl.frames import Frame
from .capture import Pairs
from .slots import (
    DUR_UNITS,
    FROM_CREATION,
    PER_EMISSION,
    SLOT_CNAME,
    SLOT_CNUM,
    SLOT_CORE,
    SLOT_GMT,
    SLOT_HOST,
    SLOT_LOCAL,
    SLOT_RTP,
    SLOT_SEC,
    SLOT_SEQ,
    SLOT_USEC,
    SLOT_UUID,
    Finder,
    Slot,
    event_ts,
    find_ids,
    shift_date,
)

_NEVER = 1 << 62  # a pivot or ring start that never comes
_MARK = "~~S%d~~"
_MARK_RE = re.compile(rb"~~S(\d+)~~")
_SIMPLE_RE = re.compile(r"[0-9A-Za-z._-]*")


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
        ring = kind not in FROM_CREATION
        if not ring:
            kind = FROM_CREATION[kind]
        if kind == SLOT_UUID:
            return self._uuid(text)
        if kind == SLOT_CORE:
            return emission.core
        if kind == SLOT_HOST:
            return emission.host
        if kind == SLOT_SEQ:
            return str(emission.seq)
        if kind == SLOT_USEC:
            value = int(text)
            return str(value + self.shift(value, ring))
        if kind == SLOT_SEC:
            return str((ref + self.shift(ref, ring)) // 1_000_000)
        if kind in (SLOT_LOCAL, SLOT_GMT):
            moved = (ref + self.shift(ref, ring)) // 1_000_000 - ref // 1_000_000
            return shift_date(kind, text, moved)
        if kind == SLOT_CNUM:
            return self.cnum
        if kind == SLOT_CNAME:
            return self.cname
        if kind in self.kazoo:
            return self.kazoo[kind]
        if kind == SLOT_RTP:
            return self.rtp.get(ref, text)
        extra = self.delta_us + (self.ring_us if ref and self.ring_from_us != _NEVER else 0)
        return str(int(text) + extra // DUR_UNITS[kind])

    def fill(self, ctype: str, slot: Slot, emission: "Emission") -> bytes:
        """Encode a slot; remembered unless it belongs to the emission."""
        data = _escape(ctype, self.text(slot, emission))
        if slot[0] not in PER_EMISSION:
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
