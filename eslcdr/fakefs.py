"""The FreeSWITCH stand-in: a gevent server that speaks mod_event_socket.

``eslcdr fakefs``, ``eslcdr demo``, the tests and the benchmarks use it in
place of a real FreeSWITCH.  It speaks the inbound Event Socket protocol as
FreeSWITCH 1.10 does, byte for byte (``auth/request``, ``auth``, ``event
plain|json ...``, ``filter``, ``nixevent``, ``noevents``, ``api status``,
``api show channels [as json|count]``, ``exit`` and the disconnect notice,
``-ERR command not found`` for the rest).

How it works
------------
*Templates.*  Every event is held as a template: its headers in wire order
(duplicates kept: FreeSWITCH sends ``Hangup-Cause`` twice) with the parts that
change from one use to the next cut out as *slots*: Unique-IDs and every
other UUID, times (``Event-Date-*``, ``*-Time``, ``*_epoch``, ``*_uepoch``,
``*_stamp``), ``Event-Sequence``, ``Core-UUID``, the host name, and for
generated calls the caller's number and name, the call durations and the
Kazoo variables added to them (``ecallmgr_Account-ID`` ...).  Each
template is encoded once per format with :func:`eslcdr.events.encode_plain` /
``encode_json`` and split at the slots, so sending an event only joins bytes:
the stand-in must stay much faster than the daemon it feeds.

*Sources.*  :class:`ReplaySource` serves the events of raw captures in file
order (out-of-order ``Event-Sequence`` included); repetition *r* maps every
UUID to a fresh deterministic one and moves every time *r* capture-lengths
later, so one capture gives many distinct calls.  :class:`GeneratedSource`
builds calls from call templates cut out of the real captures (package data
in ``fakefs_templates/``): per call a weighted scenario, new UUIDs, a new
caller (some names carry commas, quotes and non-ASCII), a later start and a
longer or shorter talk time, all drawn from one seeded RNG; and, as a Kazoo
platform's FreeSWITCH has them on every leg, the ``ecallmgr_*`` account,
owner, authorizing and (on some calls) interaction ids, from a second one.
:class:`StaticSource` sends decoded event dicts as given.

*Server.*  One pump greenlet plays the source, like FreeSWITCH's core: it
keeps the table that ``show channels`` reads and hands each event to every
connection whose subscription and filters accept it.  Each connection has its
own queue and writer greenlet, as mod_event_socket has a queue per listener.
Events emitted while no client is subscribed are lost, as with FreeSWITCH;
by default the stream only starts at the first subscription, and ``hold``
pauses it whenever nobody listens (useful for exact tests).

*Flow control.*  FreeSWITCH never waits for a client: a listener whose queue
overflows loses events and is dropped.  The stand-in does that with
``backpressure=False``; by default it rather waits for slow clients, so that
"as fast as possible" means as fast as the client reads.  ``prerender``
builds every frame before listening, for benchmarks that must not pay for
the stand-in.

*Faults* are counted in events of the stream: close every connection after
event N (``drop_after``), stop sending anything for S seconds after event N
(``stall_after``), restart with a new ``Core-UUID`` after event N
(``restart_after``: the shutdown notice, connections closed, the channel
table emptied, the stream continuing where it was), and a malformed frame
before every Nth event a connection receives (``malformed_every``).

Use: ``FakeFreeSWITCH(port=0, events=GeneratedSource(calls=50)).start()``,
then ``.port``, ``.wait_done(timeout)``, ``.live_channels()``, ``.stop()``;
``add_arguments`` / ``run`` are the ``eslcdr fakefs`` command.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import itertools
import json
import random
import re
import signal
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Iterable, Iterator, Union

import gevent
from gevent.event import Event as GeventEvent
from gevent.lock import Semaphore
from gevent.queue import Empty, Full, Queue
from gevent.server import StreamServer

from .events import (
    JSON,
    PLAIN,
    Event,
    EventDecodeError,
    decode_event,
    encode_json,
    encode_plain,
    plain_header_pairs,
)
from .frames import Frame, FrameParser, ProtocolError
from .legs import gregorian_seconds

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8021
DEFAULT_PASSWORD = "ClueCon"

FS_VERSION_HUMAN = "1.10.12-release 64bit"
FS_VERSION_FULL = "1.10.12-release~64bit"
AUTH_REQUEST = b"Content-Type: auth/request\n\n"
GOODBYE = "Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"
SHUTDOWN = "The system is being shut down.\n"
# mod_event_socket: listener queue length and how many lost events kill it.
MAX_QUEUE_LEN = 100_000
MAX_MISSED = 500
# With backpressure the source waits once a client is this far behind: frames
# are ~5 KiB, so this bounds the memory a slow reader costs.
BACKPRESSURE_LEVEL = 2_000

_FORMATS = MappingProxyType({"plain": PLAIN, "json": JSON})

# switch_event.c EVENT_NAMES: what `event` / `nixevent` accept.
EVENT_NAMES = frozenset(
    """CUSTOM CLONE CHANNEL_CREATE CHANNEL_DESTROY CHANNEL_STATE CHANNEL_CALLSTATE
    CHANNEL_ANSWER CHANNEL_HANGUP CHANNEL_HANGUP_COMPLETE CHANNEL_EXECUTE
    CHANNEL_EXECUTE_COMPLETE CHANNEL_HOLD CHANNEL_UNHOLD CHANNEL_BRIDGE CHANNEL_UNBRIDGE
    CHANNEL_PROGRESS CHANNEL_PROGRESS_MEDIA CHANNEL_OUTGOING CHANNEL_PARK CHANNEL_UNPARK
    CHANNEL_APPLICATION CHANNEL_ORIGINATE CHANNEL_UUID API LOG INBOUND_CHAN OUTBOUND_CHAN
    STARTUP SHUTDOWN PUBLISH UNPUBLISH TALK NOTALK SESSION_CRASH MODULE_LOAD MODULE_UNLOAD
    DTMF MESSAGE PRESENCE_IN NOTIFY_IN PRESENCE_OUT PRESENCE_PROBE MESSAGE_WAITING
    MESSAGE_QUERY ROSTER CODEC BACKGROUND_JOB DETECTED_SPEECH DETECTED_TONE PRIVATE_COMMAND
    HEARTBEAT TRAP ADD_SCHEDULE DEL_SCHEDULE EXE_SCHEDULE RE_SCHEDULE RELOADXML NOTIFY
    PHONE_FEATURE PHONE_FEATURE_SUBSCRIBE SEND_MESSAGE RECV_MESSAGE REQUEST_PARAMS
    CHANNEL_DATA GENERAL COMMAND SESSION_HEARTBEAT CLIENT_DISCONNECTED SERVER_DISCONNECTED
    SEND_INFO RECV_INFO RECV_RTCP_MESSAGE SEND_RTCP_MESSAGE CALL_SECURE NAT RECORD_START
    RECORD_STOP PLAYBACK_START PLAYBACK_STOP CALL_UPDATE FAILURE SOCKET_DATA
    MEDIA_BUG_START MEDIA_BUG_STOP CONFERENCE_DATA_QUERY CONFERENCE_DATA CALL_SETUP_REQ
    CALL_SETUP_RESULT CALL_DETAIL DEVICE_STATE TEXT SHUTDOWN_REQUESTED ALL""".split()
)

SHOW_SYNTAX = (
    "codec|endpoint|application|api|dialplan|file|timer|calls [count]|channels "
    "[count|like <match string>]|uuid_calls|uuid_channels|calls|detailed_calls|bridged_calls|"
    "detailed_bridged_calls|aliases|complete|chat|management|modules|nat_map|say|interfaces|"
    "interface_types|tasks|limits|status"
)

# The `channels` table of switch_core_sqldb.c (1.10), in column order, with the
# CHANNEL_CREATE header each column starts from (None: left empty).
CHANNEL_COLUMNS = (
    ("uuid", "Unique-ID"),
    ("direction", "Call-Direction"),
    ("created", "Event-Date-Local"),
    ("created_epoch", None),
    ("name", "Channel-Name"),
    ("state", "Channel-State"),
    ("cid_name", "Caller-Caller-ID-Name"),
    ("cid_num", "Caller-Caller-ID-Number"),
    ("ip_addr", "Caller-Network-Addr"),
    ("dest", "Caller-Destination-Number"),
    ("application", "variable_current_application"),
    ("application_data", "variable_current_application_data"),
    ("dialplan", "Caller-Dialplan"),
    ("context", "Caller-Context"),
    ("read_codec", "Channel-Read-Codec-Name"),
    ("read_rate", "Channel-Read-Codec-Rate"),
    ("read_bit_rate", "Channel-Read-Codec-Bit-Rate"),
    ("write_codec", "Channel-Write-Codec-Name"),
    ("write_rate", "Channel-Write-Codec-Rate"),
    ("write_bit_rate", "Channel-Write-Codec-Bit-Rate"),
    ("secure", None),
    ("hostname", "FreeSWITCH-Switchname"),
    ("presence_id", "Channel-Presence-ID"),
    ("presence_data", "Channel-Presence-Data"),
    ("accountcode", "variable_accountcode"),
    ("callstate", "Channel-Call-State"),
    ("callee_name", "Caller-Callee-ID-Name"),
    ("callee_num", "Caller-Callee-ID-Number"),
    ("callee_direction", None),
    ("call_uuid", "Channel-Call-UUID"),
    ("sent_callee_name", None),
    ("sent_callee_num", None),
    ("initial_cid_name", "Caller-Caller-ID-Name"),
    ("initial_cid_num", "Caller-Caller-ID-Number"),
    ("initial_ip_addr", "Caller-Network-Addr"),
    ("initial_dest", "Caller-Destination-Number"),
    ("initial_dialplan", "Caller-Dialplan"),
    ("initial_context", "Caller-Context"),
)
# Columns that later events of a channel refresh (FreeSWITCH updates the row
# on state, call-state, execute and callee changes; initial_* never change).
_CHANNEL_REFRESHED = frozenset(
    "state callstate application application_data read_codec read_rate read_bit_rate "
    "write_codec write_rate write_bit_rate callee_name callee_num call_uuid presence_id "
    "presence_data cid_name cid_num dest".split()
)
_CHANNEL_EVENTS = frozenset(
    "CHANNEL_CREATE CHANNEL_STATE CHANNEL_CALLSTATE CHANNEL_ANSWER CHANNEL_PROGRESS "
    "CHANNEL_PROGRESS_MEDIA CHANNEL_BRIDGE CHANNEL_UNBRIDGE CHANNEL_EXECUTE CHANNEL_HANGUP "
    "CHANNEL_HANGUP_COMPLETE CHANNEL_DESTROY".split()
)
_CHANNEL_GONE = frozenset(("CHANNEL_HANGUP_COMPLETE", "CHANNEL_DESTROY"))
# An event's Channel-Call-State is the state *before* it (CHANNEL_ANSWER says
# EARLY); the core db has the new one, which CHANNEL_CALLSTATE would bring.
_CALLSTATE_AFTER = MappingProxyType(
    {
        "CHANNEL_PROGRESS": "RINGING",
        "CHANNEL_PROGRESS_MEDIA": "EARLY",
        "CHANNEL_ANSWER": "ACTIVE",
        "CHANNEL_BRIDGE": "ACTIVE",
        "CHANNEL_HANGUP": "HANGUP",
    }
)

Pairs = tuple[tuple[str, str], ...]


# --------------------------------------------------------------------------
# Events as header pairs


def event_pairs(frame: Frame) -> tuple[Pairs, str | None]:
    """An event frame's headers in wire order, duplicates kept, and its body.

    ``decode_event`` gives a dict (the last duplicate wins); the stand-in
    needs the exact header list to send events as FreeSWITCH did.
    """
    if frame.content_type == JSON:
        return _json_pairs(frame.body)
    if frame.content_type == PLAIN:
        return _plain_pairs(frame.body)
    raise EventDecodeError("not an event frame: %r" % frame.content_type)


def _json_pairs(body: bytes) -> tuple[Pairs, str | None]:
    try:
        items = json.loads(body, object_pairs_hook=list)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EventDecodeError("invalid JSON event: %s" % exc) from None
    if not isinstance(items, list) or not all(isinstance(item, tuple) for item in items):
        raise EventDecodeError("JSON event is not an object")
    pairs, text = [], None
    for name, value in items:
        if name == "_body":
            text = value
        elif name != "Content-Length":
            if isinstance(value, list):
                value = "ARRAY::" + "|:".join(str(item) for item in value)
            elif value is None:
                value = ""
            pairs.append((name, value if isinstance(value, str) else str(value)))
    return tuple(pairs), text


def _plain_pairs(body: bytes) -> tuple[Pairs, str | None]:
    head, _, rest = body.partition(b"\n\n")
    pairs, length = [], None
    for name, value in plain_header_pairs(head.decode("utf-8", "replace")):
        if name == "Content-Length" and value.isascii() and value.isdigit():
            length = int(value)
        else:
            pairs.append((name, value))
    text = rest[:length].decode("utf-8", "replace") if length is not None else None
    return tuple(pairs), text


def read_capture(capture: Union[str, Path, bytes]) -> list[tuple[Pairs, str | None]]:
    """The events of a raw capture (a path, or the bytes), in stream order."""
    data = capture if isinstance(capture, bytes) else Path(capture).read_bytes()
    parser = FrameParser()
    parser.feed(data)
    events = []
    for item in parser.items():
        if isinstance(item, ProtocolError):
            raise ValueError("malformed capture: %s" % item.reason)
        if item.content_type in (PLAIN, JSON):
            events.append(event_pairs(item))
    return events


_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def extract_calls(capture: Union[str, Path, bytes]) -> list[list[tuple[Pairs, str | None]]]:
    """Split a capture into calls: events linked by any shared UUID.

    This is how the call templates in ``fakefs_templates/`` were cut out of
    the captures (each file names its capture and call index).
    """
    events = read_capture(capture)
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    keys = []
    for pairs, _ in events:
        values = dict(pairs)
        core = values.get("Core-UUID")
        ids = {m for _, v in pairs for m in _UUID_RE.findall(v)} - {core}
        key = root(values.get("Unique-ID") or next(iter(sorted(ids)), "") or str(len(keys)))
        for other in ids:
            parent[root(other)] = key
        keys.append(key)
    calls: dict[str, list] = {}
    for key, event in zip(keys, events):
        calls.setdefault(root(key), []).append(event)
    return list(calls.values())


# --------------------------------------------------------------------------
# Templates: events with slots, encoded once per format

# Slot kinds.  A slot is (kind, original text, reference time in µs).
_UUID, _CORE, _HOST, _SEQ, _USEC, _SEC, _LOCAL, _GMT = range(8)
_CNUM, _CNAME, _DUR_S, _DUR_MS, _DUR_US = range(8, 13)
_ACCOUNT, _OWNER, _AUTHORIZING, _INTERACTION = range(13, 17)
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
# The channel variables a Kazoo platform's ecallmgr exports to every leg of a
# call (Authorizing-ID only on the caller's side, Call-Interaction-ID not on
# every call), so that generated calls belong to accounts as Kazoo's do.  The
# captures have none: call_template() adds them, and each is one slot.
_KAZOO_VARS = MappingProxyType(
    {
        "variable_ecallmgr_Account-ID": _ACCOUNT,
        "variable_ecallmgr_Owner-ID": _OWNER,
        "variable_ecallmgr_Authorizing-ID": _AUTHORIZING,
        "variable_ecallmgr_Call-Interaction-ID": _INTERACTION,
    }
)


@dataclass(frozen=True, slots=True)
class _Template:
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


def _event_ts(event: dict) -> int:
    value = event.get("Event-Date-Timestamp", "")
    return int(value) if value.isdigit() else 0


def _compile(pairs: Pairs, body: str | None, finders: tuple[Finder, ...]) -> _Template:
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
        marked_body = _marked(_cut("_body", body, event, (_find_ids,), slots, index))
    body_length = len(body.encode("utf-8")) if body is not None else 0
    chunks = {}
    for ctype in (PLAIN, JSON):
        parts = _MARK_RE.split(_encode_pairs(ctype, marked, marked_body, body_length))
        chunks[ctype] = (tuple(parts[0::2]), tuple(int(p) for p in parts[1::2]))
    seq = event.get("Event-Sequence", "")
    return _Template(
        event_id=event.get("Event-Name", ""),
        subclass=event.get("Event-Subclass"),
        ts=_event_ts(event),
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
    quotes exactly as ``eslcdr.events`` expects.  ``body`` may hold slot
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


def _find_ids(name: str, value: str, event: dict):
    if name == "Event-Sequence":
        return ((0, len(value), _SEQ, 0),) if value.isdigit() else ()
    if name in _HOST_HEADERS:
        return ((0, len(value), _HOST, 0),)
    core = event.get("Core-UUID")
    return [
        (m.start(), m.end(), _CORE if m.group() == core else _UUID, 0)
        for m in _UUID_RE.finditer(value)
    ]


def _find_times(name: str, value: str, event: dict):
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


def _caller_finder(number: str | None, name: str | None) -> Finder:
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


def _find_kazoo(name: str, value: str, event: dict):
    kind = _KAZOO_VARS.get(name)
    return ((0, len(value), kind, 0),) if kind is not None else ()


def _duration_finder(pivot: int | None) -> Finder:
    """Slots for the durations a longer talk (or ring) time changes.

    Only non-zero durations of events after the pivot: a leg that was never
    answered keeps billsec 0.
    """

    def find(header: str, value: str, event: dict):
        kind = _DURATIONS.get(header)
        if kind is None or pivot is None or not value.isdigit() or value == "0":
            return ()
        return ((0, len(value), kind, 0),) if _event_ts(event) > pivot else ()

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


def _derive_uuid(key: str, original: str) -> str:
    digest = hashlib.sha1(("%s|%s" % (key, original)).encode("utf-8")).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


class _Context:
    """How one replay repetition or one generated call fills the slots."""

    __slots__ = (
        "key",
        "shift_us",
        "pivot_us",
        "delta_us",
        "cnum",
        "cname",
        "kazoo",
        "_uuids",
        "cache",
    )

    def __init__(
        self, key=None, shift_us=0, pivot_us=None, delta_us=0, cnum="", cname="", kazoo=None
    ):
        self.key = key  # None: ids unchanged
        self.shift_us = shift_us  # every time moves by this (whole seconds)
        self.pivot_us = _NEVER if pivot_us is None else pivot_us
        self.delta_us = delta_us  # times after the pivot move this much more
        self.cnum = cnum
        self.cname = cname
        self.kazoo: dict[int, str] = kazoo or {}  # Kazoo variable slot kind -> value
        self._uuids: dict[str, str] = {}
        # per format: slot -> its bytes on the wire
        self.cache: dict[str, dict[Slot, bytes]] = {PLAIN: {}, JSON: {}}

    def shift(self, usec: int) -> int:
        return self.shift_us + (self.delta_us if usec > self.pivot_us else 0)

    def text(self, slot: Slot, emission: "_Emission") -> str:
        kind, text, ref = slot
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
            return str(value + self.shift(value))
        if kind == _SEC:
            return str((ref + self.shift(ref)) // 1_000_000)
        if kind in (_LOCAL, _GMT):
            moved = (ref + self.shift(ref)) // 1_000_000 - ref // 1_000_000
            return _shift_date(kind, text, moved)
        if kind == _CNUM:
            return self.cnum
        if kind == _CNAME:
            return self.cname
        if kind in self.kazoo:
            return self.kazoo[kind]
        return str(int(text) + self.delta_us // _DUR_UNITS[kind])

    def fill(self, ctype: str, slot: Slot, emission: "_Emission") -> bytes:
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
            new = self._uuids[original] = _derive_uuid(self.key, original)
        return new


class _Emission:
    """One event of the stream: a template, its context and its place."""

    __slots__ = ("template", "ctx", "seq", "due", "core", "host", "position", "_frames")

    def __init__(self, template: _Template, ctx: _Context, seq: int, due: float | None = None):
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


# --------------------------------------------------------------------------
# Event sources


class ReplaySource:
    """The events of raw captures, in their exact order, ``repeat`` times.

    Repetition 0 is the capture as recorded (ids and times unchanged, unless
    ``time_base`` moves the first event to that Unix time).  Repetition *r*
    maps every UUID to a fresh one derived from (*r*, old UUID), and moves
    every time and ``Event-Sequence`` *r* capture-lengths later.
    """

    def __init__(
        self,
        captures: Iterable[Union[str, Path, bytes]],
        repeat: int = 1,
        time_base: float | None = None,
    ):
        if repeat < 1:
            raise ValueError("repeat must be at least 1")
        finders = (_find_ids, _find_times)
        self._templates = [
            _compile(pairs, body, finders)
            for capture in captures
            for pairs, body in read_capture(capture)
        ]
        if not self._templates:
            raise ValueError("the captures hold no events")
        self.repeat = repeat
        first = self._templates[0]
        self.core_uuid = first.original("Core-UUID")
        self.hostname = first.original("FreeSWITCH-Hostname")
        times = [t.ts for t in self._templates if t.ts] or [0]
        seqs = [t.seq for t in self._templates if t.seq] or [0]
        # Whole seconds, so epoch seconds and date strings move in step.
        self.period_us = ((max(times) - min(times)) // 1_000_000 + 2) * 1_000_000
        self.seq_span = max(seqs) - min(seqs) + 1
        self.base_us = 0
        if time_base is not None:
            self.base_us = (int(time_base) - min(times) // 1_000_000) * 1_000_000

    def __len__(self) -> int:
        return len(self._templates) * self.repeat

    def __iter__(self) -> Iterator[_Emission]:
        for rep in range(self.repeat):
            ctx = _Context(
                key=None if rep == 0 else "replay:%d" % rep,
                shift_us=self.base_us + rep * self.period_us,
            )
            for template in self._templates:
                yield _Emission(template, ctx, template.seq + rep * self.seq_span)


@dataclass(frozen=True, slots=True)
class CallTemplate:
    """A whole call cut out of a capture, to clone into generated calls."""

    name: str
    weight: float
    events: tuple[_Template, ...]  # with the Kazoo variables, but no Call-Interaction-ID
    # The same with a Call-Interaction-ID too (Kazoo sets one on some calls only).
    interaction_events: tuple[_Template, ...]
    t0: int  # first Event-Date-Timestamp, µs
    pivot: int | None  # last answer/bridge/progress: later times stretch
    answered: bool


# Events whose last occurrence marks where a call's talk (or ring) time is.
_PIVOT_EVENTS = frozenset(
    ("CHANNEL_ANSWER", "CHANNEL_BRIDGE", "CHANNEL_PROGRESS", "CHANNEL_PROGRESS_MEDIA")
)


def _caller_side(events: list[dict]) -> frozenset[str]:
    """The Unique-IDs of the caller's side (Kazoo's A leg): the leg the call
    starts from and its loopback twin.  The legs the call goes on to (bridged
    to, or the far end of a SIP call) are the callee's side."""
    first = events[0].get("Unique-ID", "")
    twins = {
        e.get("variable_other_loopback_leg_uuid", "") for e in events if e.get("Unique-ID") == first
    }
    return frozenset({first} | twins) - {""}


def _with_kazoo_vars(pairs: Pairs, caller_side: bool, interaction: bool) -> Pairs:
    """An event with the Kazoo variables after its channel variables.

    Their values are left empty: slots fill them per call.  Events without
    channel variables (DTMF) stay as they are: FreeSWITCH puts none there.
    """
    last = max((i for i, (name, _) in enumerate(pairs) if name.startswith("variable_")), default=-1)
    if last < 0:
        return pairs
    added = tuple(
        (name, "")
        for name, kind in _KAZOO_VARS.items()
        if (kind != _AUTHORIZING or caller_side) and (kind != _INTERACTION or interaction)
    )
    return pairs[: last + 1] + added + pairs[last + 1 :]


def call_template(data: dict) -> CallTemplate:
    """Compile one ``fakefs_templates/*.json`` document."""
    raw = [
        (tuple((n, v) for n, v in event["headers"]), event.get("body")) for event in data["events"]
    ]
    events = [dict(pairs) for pairs, _ in raw]
    caller_side = _caller_side(events)
    times = [_event_ts(event) for event in events]
    marks = [ts for event, ts in zip(events, times) if event.get("Event-Name") in _PIVOT_EVENTS]
    pivot = max(marks) if marks else None
    finders = (
        _find_ids,
        _find_times,
        _caller_finder(data.get("caller_number"), data.get("caller_name")),
        _duration_finder(pivot),
        _find_kazoo,
    )

    def compile_events(interaction: bool) -> tuple[_Template, ...]:
        return tuple(
            _compile(
                _with_kazoo_vars(pairs, event.get("Unique-ID") in caller_side, interaction),
                body,
                finders,
            )
            for (pairs, body), event in zip(raw, events)
        )

    return CallTemplate(
        name=data["name"],
        weight=float(data.get("weight", 1)),
        events=compile_events(interaction=False),
        interaction_events=compile_events(interaction=True),
        t0=min(ts for ts in times if ts),
        pivot=pivot,
        answered=any(event.get("Event-Name") == "CHANNEL_ANSWER" for event in events),
    )


def template_documents() -> list[dict]:
    """The call templates shipped in ``eslcdr/fakefs_templates/``."""
    folder = resources.files(__package__).joinpath("fakefs_templates")
    docs = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json"):
            docs.append(json.loads(entry.read_text(encoding="utf-8")))
    if not docs:
        raise ValueError("no call templates in %s" % folder)
    return docs


# Caller names exercise quoting downstream: commas, quotes, non-ASCII.
CALLER_NAMES = (
    "Alicia Martín",
    "Bob O'Neil",
    "Müller, Jürgen",
    'Zoë "Z" Ng',
    "José Álvarez",
    "李小龙",
    "Smith, John",
    "Renée Dubois",
    "Ørjan Ås",
    'Ali "Boss" Khan',
    "Nguyễn Văn An",
    "Σωκράτης Π.",
    "Иван Петров",
    "Dr. Amara Okafor",
    "ACME Corp, Sales",
    "François-Xavier d'Aubigné",
)


def _caller_number(rng: random.Random) -> str:
    draw = rng.random()
    if draw < 0.4:
        return "1%03d" % rng.randrange(1000)  # an extension
    if draw < 0.8:
        return "+1%d%02d%d%02d%04d" % (
            rng.randint(2, 9),
            rng.randrange(100),
            rng.randint(2, 9),
            rng.randrange(100),
            rng.randrange(10_000),
        )
    if draw < 0.95:
        return "+44%d" % rng.randrange(10**9, 10**10)
    return "0%d" % rng.randrange(10**8, 10**9)  # national format


# Kazoo account ids are 32 hex digits; "demo-account" comes first so that the
# demo's curl commands (GET /v2/accounts/demo-account/cdrs) find calls.
DEFAULT_ACCOUNTS = (
    "demo-account",
    "434d23e00e7f65e1ca9281d75dc8cade",
    "7d55e8c9e89f7a344864ee58ae76cb7b",
)
# Share of generated calls that carry a Call-Interaction-ID; the daemon
# derives one for the others.
INTERACTION_SHARE = 0.5


def _kazoo_id(kind: str, key: str) -> str:
    """A Kazoo-style id (32 hex digits, as CouchDB's) that ``key`` always gets."""
    return hashlib.sha1(("%s:%s" % (kind, key)).encode("utf-8")).hexdigest()[:32]


@dataclass(slots=True)
class _CallPlan:
    template: CallTemplate
    events: tuple[_Template, ...]  # the template's, with or without an interaction id
    ctx: _Context
    start_us: int

    def event_time(self, index: int) -> int:
        ts = self.events[index].ts
        return ts + self.ctx.shift(ts)


class GeneratedSource:
    """Calls cloned from the call templates, deterministic for a seed.

    ``calls`` calls (None: no end) start as a Poisson stream of ``cps`` calls
    per second from ``start_time``.  With ``cps`` > 0 events are sent in real
    time and ``start_time`` defaults to now; with 0 they are sent as fast as
    the clients read, their times spaced as at 10 calls per second and ending
    (by default) before now.  Each call picks a scenario by weight (about 3 in
    4 answered), a caller, and a talk (or ring) time.

    Every leg carries the Kazoo variables of its call: ``ecallmgr_Account-ID``
    (one of ``accounts``), ``ecallmgr_Owner-ID`` (the caller's user),
    ``ecallmgr_Authorizing-ID`` (the caller's device, on the caller's legs)
    and, on about half the calls, ``ecallmgr_Call-Interaction-ID``.
    """

    SIMULATED_CPS = 10.0

    def __init__(
        self,
        calls: int | None = 100,
        cps: float = 0.0,
        seed: int = 0,
        start_time: float | None = None,
        templates: Iterable[dict] | None = None,
        accounts: Iterable[str] = DEFAULT_ACCOUNTS,
    ):
        if calls is not None and calls < 0:
            raise ValueError("calls must not be negative")
        if cps < 0:
            raise ValueError("cps must not be negative")
        self.accounts = tuple(accounts)
        if not self.accounts or not all(self.accounts):
            raise ValueError("accounts must be one or more non-empty ids")
        self.calls = calls
        self.cps = cps
        self.seed = seed
        self.start_time = start_time
        self.templates = [
            call_template(doc)
            for doc in (templates if templates is not None else template_documents())
        ]
        self._weights = [t.weight for t in self.templates]
        first = self.templates[0].events[0]
        self.core_uuid = _derive_uuid("core:%s" % seed, first.original("Core-UUID") or "")
        self.hostname = first.original("FreeSWITCH-Hostname")

    def __iter__(self) -> Iterator[_Emission]:
        rng = random.Random(self.seed)
        start = self.start_time if self.start_time is not None else self._default_start()
        # Whole seconds: the calls' order then does not depend on the start.
        start_us = int(start) * 1_000_000
        plans = self._plans(rng, start_us)
        heap: list = []
        order = itertools.count()
        seq = itertools.count(1)
        pending = next(plans, None)
        while heap or pending is not None:
            # A call joins the merge once the stream reaches its start.
            if pending is not None and (not heap or pending.start_us <= heap[0][0]):
                heapq.heappush(heap, (pending.event_time(0), next(order), pending, 0))
                pending = next(plans, None)
                continue
            when, _, plan, index = heapq.heappop(heap)
            due = (when - start_us) / 1_000_000 if self.cps > 0 else None
            yield _Emission(plan.events[index], plan.ctx, next(seq), due)
            if index + 1 < len(plan.events):
                # Within a call the capture's order is kept, whatever the times say.
                later = max(when, plan.event_time(index + 1))
                heapq.heappush(heap, (later, next(order), plan, index + 1))

    def _default_start(self) -> float:
        now = time.time()
        if self.cps or self.calls is None:
            return now  # real time: the calls happen now
        # As fast as read: the calls are the recent past, all over by now
        # (a daemon's "last month" queries then find them).
        return now - self.calls / self.SIMULATED_CPS - 2 * 3600

    def _plans(self, rng: random.Random, start_us: int) -> Iterator[_CallPlan]:
        rate = self.cps or self.SIMULATED_CPS
        when = start_us
        # The Kazoo variables draw from their own RNG: the calls themselves
        # (scenarios, callers, times) stay what they were before they existed.
        kazoo_rng = random.Random("kazoo:%s" % self.seed)
        numbers = itertools.count() if self.calls is None else range(self.calls)
        for index in numbers:
            template = rng.choices(self.templates, self._weights)[0]
            extra = self._extra_seconds(rng, template)
            number = _caller_number(rng)
            name = rng.choice(CALLER_NAMES) if rng.random() < 0.8 else number
            # Whole seconds keep epoch seconds, µs and date strings in step;
            # rounded up so that no call starts before start_time.
            shift = -((template.t0 - when) // 1_000_000) * 1_000_000
            # One random() per call whatever the number of accounts (choice()
            # would not), so the accounts given change nothing else.
            account = self.accounts[int(kazoo_rng.random() * len(self.accounts))]
            kazoo = {
                _ACCOUNT: account,
                _OWNER: _kazoo_id("user", number),
                _AUTHORIZING: _kazoo_id("device", number),
            }
            events = template.events
            if kazoo_rng.random() < INTERACTION_SHARE:
                # Kazoo's shape: <gregorian seconds of the call start>-<8 hex>.
                kazoo[_INTERACTION] = "%d-%08x" % (
                    gregorian_seconds(template.t0 + shift),
                    kazoo_rng.getrandbits(32),
                )
                events = template.interaction_events
            ctx = _Context(
                key="call:%s:%d" % (self.seed, index),
                shift_us=shift,
                pivot_us=template.pivot,
                delta_us=extra * 1_000_000,
                cnum=number,
                cname=name,
                kazoo=kazoo,
            )
            yield _CallPlan(template, events, ctx, template.t0 + shift)
            when += int(rng.expovariate(rate) * 1_000_000)

    @staticmethod
    def _extra_seconds(rng: random.Random, template: CallTemplate) -> int:
        if template.pivot is None:
            return 0
        if template.answered:
            return min(int(rng.expovariate(1 / 30)), 1800)  # talk time
        return rng.randint(0, 10)  # ring time


class StaticSource:
    """Decoded event dicts, sent as given (any iterable, even one that blocks)."""

    core_uuid = None
    hostname = None

    def __init__(self, events: Iterable[Event]):
        self._events = events

    def __iter__(self) -> Iterator[_Emission]:
        ctx = _Context()
        for event in self._events:
            body = event.get("_body")
            # decode_event keeps a body's inner Content-Length: encoding redoes it.
            skip = ("_body", "Content-Length") if body is not None else ("_body",)
            pairs = tuple((k, v) for k, v in event.items() if k not in skip)
            yield _Emission(_compile(pairs, body, ()), ctx, 0)


Source = Union[ReplaySource, GeneratedSource, StaticSource]


# --------------------------------------------------------------------------
# The channel table behind `show channels`


class _ChannelTable:
    """Live channels, kept from the stream as FreeSWITCH's core db is."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, str]] = {}
        self.created = 0
        self.peak = 0

    def observe(self, emission: _Emission) -> None:
        name = emission.template.event_id
        if name not in _CHANNEL_EVENTS:
            return
        key = emission.value("Unique-ID")
        if not key:
            return
        if name == "CHANNEL_CREATE":
            self.rows[key] = self._row(emission)
            self.created += 1
            self.peak = max(self.peak, len(self.rows))
        elif name in _CHANNEL_GONE:
            self.rows.pop(key, None)
        elif key in self.rows:
            row = self.rows[key]
            self._refresh(row, emission)
            row["callstate"] = _CALLSTATE_AFTER.get(name, row["callstate"])

    @staticmethod
    def _row(emission: _Emission) -> dict[str, str]:
        row = {}
        for column, header in CHANNEL_COLUMNS:
            row[column] = (emission.value(header) or "") if header else ""
        created = (
            emission.value("Caller-Channel-Created-Time")
            or emission.value("Event-Date-Timestamp")
            or ""
        )
        row["created_epoch"] = str(int(created) // 1_000_000) if created.isdigit() else ""
        return row

    @staticmethod
    def _refresh(row: dict[str, str], emission: _Emission) -> None:
        for column, header in CHANNEL_COLUMNS:
            if header and column in _CHANNEL_REFRESHED:
                value = emission.value(header)
                if value:
                    row[column] = value

    def clear(self) -> None:
        self.rows.clear()


def _channels_json(rows: list[dict[str, str]]) -> str:
    if not rows:
        return '{"row_count": 0}\n'  # show_function's text when no row matched
    return json.dumps(
        {"row_count": len(rows), "rows": rows}, ensure_ascii=False, separators=(",", ":")
    )


def _channels_delim(rows: list[dict[str, str]], delim: str = ",") -> str:
    lines = []
    if rows:
        lines.append(delim.join(column for column, _ in CHANNEL_COLUMNS) + "\n")
        lines.extend(
            delim.join(row[column] for column, _ in CHANNEL_COLUMNS) + "\n" for row in rows
        )
    lines.append("\n%d total.\n" % len(rows))
    return "".join(lines)


# --------------------------------------------------------------------------
# One client connection (a mod_event_socket listener)

_COMMAND_END = re.compile(rb"\n\r?\n")
_DROP, _SHUTDOWN, _CLOSE = "drop", "shutdown", "close"


def _reply(text: str) -> bytes:
    return b"Content-Type: command/reply\nReply-Text: %s\n\n" % text.encode("utf-8")


def _notice(message: str) -> bytes:
    data = message.encode("utf-8")
    return b"Content-Type: text/disconnect-notice\nContent-Length: %d\n\n" % len(data) + data


def _malformed_frame(count: int) -> bytes:
    """Three kinds of garbage in turn, each something a reader must survive."""
    kind = count % 3
    if kind == 1:
        return b"this line is not an ESL header\n\n"
    if kind == 2:
        return b"Content-Length: many\nContent-Type: text/event-plain\n\n"
    body = b'{"Event-Name": truncated'
    return b"Content-Length: %d\nContent-Type: text/event-json\n\n" % len(body) + body


def _event_type(token: str) -> str | None:
    # switch_name_event: case-insensitive, "SWITCH_EVENT_" prefix allowed.
    name = token.upper()
    if name.startswith("SWITCH_EVENT_"):
        name = name[13:]
    return name if name in EVENT_NAMES else None


def _regex_match(expression: str, value: str) -> bool:
    # switch_regex_perform: "/re/flags" or a bare expression.
    flags = 0
    if expression.startswith("/"):
        body, slash, options = expression[1:].rpartition("/")
        expression = body if slash else expression[1:]
        if slash and "i" in options:
            flags |= re.IGNORECASE
    try:
        return re.search(expression, value, flags) is not None
    except re.error:
        return False


class _Listener:
    """One connection: command reader here, event writer in its own greenlet."""

    def __init__(self, server: "FakeFreeSWITCH", sock: socket.socket):
        self.server = server
        self.sock = sock
        self.ctype = PLAIN
        self.authed = False
        self.events_on = False
        self.all_events = False
        self.names: set[str] = set()
        self.subclasses: set[str] = set()
        self.filters: list[tuple[str, str]] = []
        self.queue: Queue = Queue(maxsize=server.queue_limit)
        self.drained = GeventEvent()  # the writer took from the queue
        self.alive = True
        self.closing = False  # told to go: takes no more events
        self.busy = False
        self.missed = 0
        self.sent = 0
        self.stall_until = 0.0
        self._lock = Semaphore()
        self._buf = bytearray()
        self._shut = False

    # -- lifecycle

    def serve(self) -> None:
        writer = gevent.spawn(self._write_loop)
        try:
            self._send(AUTH_REQUEST)
            last = self._command_loop()
            self._finish(last)
        except OSError:
            self.abort()
        finally:
            self.abort()
            writer.join(timeout=1.0)
            writer.kill(block=False)

    def abort(self) -> None:
        """Close without a word, as a broken connection does."""
        if self.alive:
            self.alive = False
            self._wake_writer()
        self._close_socket()

    def idle(self) -> bool:
        return not self.alive or (self.queue.empty() and not self.busy)

    def _finish(self, last: bytes) -> None:
        # mod_event_socket drops what is still queued and says goodbye.
        if not self.alive:
            return
        self.alive = False
        self._wake_writer()
        try:
            self._send(last + _notice(GOODBYE))
        except OSError:
            pass
        self._close_socket()

    def _wake_writer(self) -> None:
        try:
            self.queue.put_nowait(_CLOSE)
        except Full:
            pass

    def _close_socket(self) -> None:
        # FIN first; the command reader goes on reading until the client
        # closes, and the second call closes for real.  Closing at once with
        # unread client bytes would make the kernel send a RST, which throws
        # away events the client has received but not read yet.
        if self._shut:
            self.sock.close()
            return
        self._shut = True
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.sock.close()
            return
        gevent.spawn_later(2.0, self.sock.close)  # a client that never closes

    def _send(self, data: bytes, events: bool = False) -> None:
        with self._lock:
            wait = self.stall_until - time.monotonic()
            if wait > 0:
                gevent.sleep(wait)  # a stalled switch answers nothing
            if events and not self.alive:
                return
            self.sock.sendall(data)

    # -- commands

    def _command_loop(self) -> bytes:
        """Read and run commands; returns the last reply before goodbye."""
        timeout = self.server.auth_timeout  # FreeSWITCH waits 25 s for the first
        while self.alive:
            command = self._read_command(timeout)
            timeout = None
            if command is None:
                return b""
            out, keep = self._execute(*command)
            if not keep:
                return out
            if out:
                self._send(out)
        return b""

    def _read_command(self, timeout: float | None) -> tuple[str, dict[str, str]] | None:
        while True:
            command = self._take_command()
            if command is not None:
                return command
            data = self._recv(timeout)
            if not data:
                return None
            self._buf += data

    def _take_command(self) -> tuple[str, dict[str, str]] | None:
        buf = self._buf
        while buf[:1] in (b"\r", b"\n"):  # read_packet skips stray line ends
            del buf[:1]
        match = _COMMAND_END.search(buf)
        if match is None:
            return None
        lines = bytes(buf[: match.start()]).decode("utf-8", "replace").split("\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.rstrip("\r").partition(":")
            headers[name.strip().lower()] = value.strip()
        length = (
            int(headers["content-length"]) if headers.get("content-length", "").isdigit() else 0
        )
        if len(buf) < match.end() + length:
            return None  # sendmsg/sendevent body not all here yet
        del buf[: match.end() + length]
        return lines[0].rstrip("\r"), headers

    def _recv(self, timeout: float | None) -> bytes:
        try:
            with gevent.Timeout(timeout, False):
                return self.sock.recv(65536)
        except OSError:
            return b""
        return b""  # timed out

    def _execute(self, command: str, headers: dict[str, str]) -> tuple[bytes, bool]:
        """Run one command as parse_command does; (output, keep the session)."""
        lower = command.lower()
        if lower.startswith("exit") or command.startswith("..."):
            return _reply("+OK bye"), False
        if not self.authed:
            return self._authenticate(command, lower)
        if lower.startswith("filter "):
            return _reply(self._filter(command[7:])), True
        if lower.startswith("api "):
            return self._api(command[4:]), True
        if lower.startswith("event"):
            return _reply(self._event(command)), True
        if lower.startswith("nixevent"):
            return _reply(self._nixevent(command)), True
        if lower.startswith("noevents"):
            return _reply(self._noevents()), True
        return _reply("-ERR command not found"), True

    def _authenticate(self, command: str, lower: str) -> tuple[bytes, bool]:
        if lower.startswith("auth "):
            if command[5:] == self.server.password:
                self.authed = True
                return _reply("+OK accepted"), True
            return _reply("-ERR invalid"), False
        if lower.startswith("userauth "):
            return _reply("-ERR invalid"), False  # no directory users here
        return _reply("-ERR command not found"), True

    def _api(self, line: str) -> bytes:
        name, _, args = line.partition(" ")
        data = self.server.api(name, args).encode("utf-8") or b"-ERR no reply\n"
        return b"Content-Type: api/response\nContent-Length: %d\n\n" % len(data) + data

    def _event(self, command: str) -> str:
        _, _, rest = command.partition(" ")
        tokens = rest.split(" ") if rest else []
        if tokens and tokens[0].lower() == "xml":
            return "-ERR the stand-in does not send xml events"
        count = 0
        custom = False
        for i, token in enumerate(tokens):
            if i == 0 and token.lower() in _FORMATS:
                self.ctype = _FORMATS[token.lower()]
                continue
            if custom:  # after CUSTOM every word is a subclass
                self.subclasses.add(token)
                continue
            name = _event_type(token)
            if name is None:
                continue
            count += 1
            if name == "ALL":
                self.all_events = True
            self.names.add(name)
            custom = name == "CUSTOM"
        if not count:
            return "-ERR no keywords supplied"
        self._subscribe()
        return "+OK event listener enabled %s" % ("json" if self.ctype == JSON else "plain")

    def _nixevent(self, command: str) -> str:
        _, _, rest = command.partition(" ")
        count = 0
        custom = False
        for token in rest.split(" ") if rest else []:
            if custom:
                self.subclasses.discard(token)
                continue
            name = _event_type(token)
            if name is None:
                continue
            count += 1
            if name == "CUSTOM":
                custom = True
            elif name == "ALL":
                self.all_events = False
                self.names.clear()
            else:
                if self.all_events:  # ALL becomes every single name but this one
                    self.all_events = False
                    self.names = set(EVENT_NAMES) - {"ALL"}
                self.names.discard(name)
        if not count:
            return "-ERR no keywords supplied"
        self._subscribe()
        return "+OK events nixed"

    def _noevents(self) -> str:
        self._drop_queued_events()
        if not self.events_on:
            return "-ERR not listening for events"
        self.events_on = False
        self.all_events = False
        self.names.clear()
        self.subclasses.clear()
        return "+OK no longer listening for events"

    def _subscribe(self) -> None:
        self.events_on = True
        self.server._subscribed.set()

    def _filter(self, args: str) -> str:
        name, space, value = args.lstrip(" ").partition(" ")
        if name.lower() == "delete" and space:
            name, _, value = value.partition(" ")
            if name.lower() == "all":
                self.filters.clear()
            else:
                self.filters = [
                    (n, v)
                    for n, v in self.filters
                    if not (n.lower() == name.lower() and (not value or v == value))
                ]
            return "+OK filter deleted. [%s][%s]" % (name, value)
        if not space:
            return "-ERR invalid syntax"
        if name.lower() == "add":
            name, _, value = value.partition(" ")
        self.filters.append((name, value))
        return "+OK filter added. [%s]=[%s]" % (name, value)

    # -- events

    def wants(self, emission: _Emission) -> bool:
        if not (self.authed and self.events_on):
            return False
        template = emission.template
        if not self.all_events:
            if template.event_id not in self.names:
                return False
            if (
                template.event_id == "CUSTOM"
                and template.subclass
                and template.subclass not in self.subclasses
            ):
                return False
        return not self.filters or self._passes_filters(emission)

    def _passes_filters(self, emission: _Emission) -> bool:
        # event_handler(): any positive filter admits, a negative one vetoes.
        send = False
        for name, raw in self.filters:
            value = emission.value(name)
            if value is None:
                continue
            positive = True
            i = 0
            while i < len(raw) and raw[i] in "+- ":
                if raw[i] != " ":
                    positive = raw[i] == "+"
                i += 1
            expected = raw[i:]
            if send and positive:
                continue
            if raw.startswith("/"):
                matched = _regex_match(expected, value)
            else:
                matched = value.lower() == expected.lower()
            if matched:
                if not positive:
                    return False
                send = True
        return send

    def listening(self) -> bool:
        return self.alive and not self.closing and self.authed and self.events_on

    def offer(self, emission: _Emission) -> None:
        """Queue an event if this connection wants it (never blocks)."""
        if self.closing or not self.alive or not self.wants(emission):
            return
        try:
            self.queue.put_nowait(emission)
        except Full:
            # mod_event_socket counts lost events and drops a listener that
            # cannot keep up.
            self.missed += 1
            if self.missed > MAX_MISSED:
                self.abort()

    def control(self, item) -> None:
        """Queue a fault marker behind the events already queued."""
        if not self.alive:
            return
        if item in (_DROP, _SHUTDOWN):
            self.closing = True
        try:
            self.queue.put(item, timeout=1.0)
        except Full:
            self.abort()

    def _drop_queued_events(self) -> None:
        kept = []
        while True:
            try:
                item = self.queue.get_nowait()
            except Empty:
                break
            if not isinstance(item, _Emission):
                kept.append(item)
        for item in kept:
            self.queue.put_nowait(item)

    def _write_loop(self) -> None:
        while self.alive:
            try:
                item = self.queue.get(timeout=0.5)
            except Empty:
                continue
            batch = [item]
            while len(batch) < 256:
                try:
                    batch.append(self.queue.get_nowait())
                except Empty:
                    break
            self.drained.set()
            self.busy = True
            try:
                self._write_batch(batch)
            except OSError:
                self.abort()
            finally:
                self.busy = False

    def _write_batch(self, batch: list) -> None:
        out: list[bytes] = []
        every = self.server.malformed_every
        for item in batch:
            if isinstance(item, _Emission):
                self.sent += 1
                if every and self.sent % every == 0:
                    out.append(_malformed_frame(self.sent // every))
                out.append(item.frame(self.ctype))
                continue
            if out:
                self._send(b"".join(out), events=True)
                out = []
            if not self._act(item):
                return
        if out:
            self._send(b"".join(out), events=True)

    def _act(self, item) -> bool:
        """Carry out a fault marker; False when the connection is gone."""
        if item == _DROP:
            self.abort()
            return False
        if item == _SHUTDOWN:
            if self.alive:
                self.alive = False
                self._send(_notice(SHUTDOWN))
                self._close_socket()
            return False
        if item == _CLOSE:
            return False
        _, seconds = item  # ("stall", seconds)
        self.stall_until = time.monotonic() + seconds
        return True


# --------------------------------------------------------------------------
# The server


def _as_source(events) -> Source | None:
    if events is None or isinstance(events, (ReplaySource, GeneratedSource, StaticSource)):
        return events
    return StaticSource(events)


class FakeFreeSWITCH:
    """A FreeSWITCH Event Socket (inbound) on ``host:port``.

    ``events`` is a :class:`ReplaySource`, a :class:`GeneratedSource`, any
    iterable of decoded event dicts, or None (api only).  ``port=0`` picks a
    free port: read ``.port`` after :meth:`start`.  ``prerender="json"`` (or
    "plain") builds every frame of a finite source before listening.
    """

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = 0,
        password: str = DEFAULT_PASSWORD,
        events=None,
        *,
        core_uuid: str | None = None,
        hostname: str | None = None,
        wait_for_subscriber: bool = True,
        hold: bool = False,
        backpressure: bool = True,
        queue_limit: int = MAX_QUEUE_LEN,
        auth_timeout: float = 25.0,
        drop_after: int | None = None,
        stall_after: int | None = None,
        stall_seconds: float = 5.0,
        restart_after: int | None = None,
        restart_downtime: float = 0.0,
        malformed_every: int | None = None,
        prerender: str | None = None,
    ):
        self.host = host
        self.port = port
        self.password = password
        self._source = _as_source(events)
        self.core_uuid = core_uuid or getattr(self._source, "core_uuid", None) or str(uuid.uuid4())
        self.hostname = hostname or getattr(self._source, "hostname", None) or "vm"
        self.wait_for_subscriber = wait_for_subscriber
        self.hold = hold
        self.backpressure = backpressure
        self.queue_limit = queue_limit
        self.auth_timeout = auth_timeout
        self.drop_after = drop_after
        self.stall_after = stall_after
        self.stall_seconds = stall_seconds
        self.restart_after = restart_after
        self.restart_downtime = restart_downtime
        self.malformed_every = malformed_every
        self.prerender = prerender
        self.position = 0  # events the stream has emitted so far
        self.restarts = 0
        self.error: Exception | None = None
        self._listeners: set[_Listener] = set()
        self._channels = _ChannelTable()
        self._subscribed = GeventEvent()
        self._source_done = self._source is None
        self._stopping = False
        self._down_until = 0.0
        self._started = 0.0
        self._server: StreamServer | None = None
        self._pump = None

    # -- public API

    def start(self) -> "FakeFreeSWITCH":
        """Listen (returns once the socket is bound) and start the pump."""
        if self._server is not None:
            raise RuntimeError("already started")
        if self.prerender and self._source is not None:
            self._source = self._render_all(self._source, _FORMATS[self.prerender])
        self._server = StreamServer((self.host, self.port), self._handle)
        self._server.start()
        self.port = self._server.server_port
        self._started = time.time()
        if self._source is not None:
            self._pump = gevent.spawn(self._run_source)
        return self

    def _render_all(self, source, ctype: str) -> list[_Emission]:
        """Build every frame before serving, so that serving costs only the
        socket writes (benchmarks).  A restart then keeps the old Core-UUID
        in these frames."""
        if getattr(source, "calls", 0) is None:
            raise ValueError("cannot prerender an endless stream")
        emissions = list(source)
        for emission in emissions:
            emission.core = self.core_uuid
            emission.host = self.hostname
            emission.frame(ctype)
        return emissions

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        if self._server is not None:
            self._server.close()
        for listener in list(self._listeners):
            listener.abort()
        if self._pump is not None:
            self._pump.kill(block=True, timeout=timeout)
        if self._server is not None:
            self._server.stop(timeout=timeout)

    def __enter__(self) -> "FakeFreeSWITCH":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def done(self) -> bool:
        """The source is exhausted and every connection has been sent its share."""
        return self._source_done and all(listener.idle() for listener in list(self._listeners))

    def wait_done(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.done():
            if time.monotonic() >= deadline:
                return False
            gevent.sleep(0.005)
        return True

    def live_channels(self) -> list[dict[str, str]]:
        """The rows ``show channels`` would list now (copies)."""
        return [dict(row) for row in self._channels.rows.values()]

    def connections(self) -> int:
        return sum(1 for listener in list(self._listeners) if listener.alive)

    def restart(self) -> None:
        """Restart FreeSWITCH: notice and close every connection, new Core-UUID,
        empty channel table; the stream goes on where it was."""
        self.restarts += 1
        self.core_uuid = _derive_uuid("restart:%d" % self.restarts, self.core_uuid)
        self._down_until = time.monotonic() + self.restart_downtime
        self._channels.clear()
        self._broadcast(_SHUTDOWN)

    def drop_connections(self) -> None:
        """Close every connection after what is queued for it, without a word."""
        self._broadcast(_DROP)

    def api(self, name: str, args: str = "") -> str:
        """The text of an ``api`` command, as mod_commands writes it."""
        lower = name.lower()
        if lower == "status":
            return self._status()
        if lower == "show":
            return self._show(args)
        if lower == "version":
            return "FreeSWITCH Version %s ( 64bit)\n" % FS_VERSION_FULL
        if lower in ("hostname", "switchname"):
            return self.hostname
        return "-ERR %s Command not found!\n" % name

    # -- connections

    def _handle(self, sock: socket.socket, address) -> None:
        if self._stopping or time.monotonic() < self._down_until:
            sock.close()  # the switch is down: nothing answers
            return
        listener = _Listener(self, sock)
        self._listeners.add(listener)
        try:
            listener.serve()
        finally:
            self._listeners.discard(listener)

    def _has_subscriber(self) -> bool:
        return any(listener.listening() for listener in list(self._listeners))

    def _broadcast(self, item) -> None:
        for listener in list(self._listeners):
            listener.control(item)

    # -- the stream

    def _run_source(self) -> None:
        try:
            if self.wait_for_subscriber:
                self._await_subscriber()
            self._play()
        except (OSError, ValueError, EventDecodeError) as exc:
            self.error = exc
            print("eslcdr fakefs: event source failed: %s" % exc, file=sys.stderr)
        finally:
            self._source_done = True

    def _play(self) -> None:
        started = time.monotonic()
        paused = 0.0
        for emission in self._source:
            if self._stopping:
                return
            if emission.due is not None:
                wait = started + paused + emission.due - time.monotonic()
                if wait > 0:
                    gevent.sleep(wait)
            if self.hold:
                paused += self._await_subscriber()
            if self.backpressure:
                self._throttle()
            self._emit(emission)
            if self.position % 64 == 0:
                gevent.sleep(0)  # let the writers run

    def _await_subscriber(self) -> float:
        began = time.monotonic()
        while not self._stopping:
            self._subscribed.clear()
            if self._has_subscriber():
                break
            self._subscribed.wait(timeout=0.5)
        return time.monotonic() - began

    def _throttle(self) -> None:
        level = min(BACKPRESSURE_LEVEL, self.queue_limit)
        for listener in list(self._listeners):
            while listener.alive and listener.queue.qsize() >= level and not self._stopping:
                listener.drained.clear()
                if listener.queue.qsize() >= level:
                    listener.drained.wait(timeout=0.5)

    def _emit(self, emission: _Emission) -> None:
        self.position += 1
        emission.position = self.position
        emission.core = self.core_uuid
        emission.host = self.hostname
        self._channels.observe(emission)
        for listener in list(self._listeners):
            listener.offer(emission)
        self._inject_faults()

    def _inject_faults(self) -> None:
        position = self.position
        if position == self.drop_after:
            self.drop_connections()
        if position == self.stall_after:
            self._broadcast(("stall", self.stall_seconds))
        if position == self.restart_after:
            self.restart()

    # -- api commands

    def _show(self, args: str) -> str:
        argv = [token for token in args.split(" ") if token]
        if not argv:
            return "-USAGE: %s\n" % SHOW_SYNTAX
        what = argv[0].lower()
        if what == "status":
            return self._status()
        if what != "channels":
            return "-USAGE: %s\n" % SHOW_SYNTAX
        rows = self.live_channels()
        if len(argv) > 1 and argv[1].lower() == "count":
            return "\n%d total.\n" % len(rows)
        form = argv[2].lower() if len(argv) > 2 and argv[1].lower() == "as" else "delim"
        if form == "json":
            return _channels_json(rows)
        if form in ("delim", "csv"):
            return _channels_delim(rows, argv[3] if form == "delim" and len(argv) > 3 else ",")
        return "-ERR Cannot find format %s\n" % form

    def _status(self) -> str:
        up = max(0.0, time.time() - self._started)
        micro = int(up * 1_000_000)
        parts = []
        for unit, size in (
            ("year", 365 * 86400_000_000),
            ("day", 86400_000_000),
            ("hour", 3600_000_000),
            ("minute", 60_000_000),
            ("second", 1_000_000),
            ("millisecond", 1_000),
            ("microsecond", 1),
        ):
            count, micro = divmod(micro, size)
            parts.append("%d %s%s" % (count, unit, "" if count == 1 else "s"))
        live = len(self._channels.rows)
        return (
            "UP %s\n" % ", ".join(parts)
            + "FreeSWITCH (Version %s) is ready\n" % FS_VERSION_HUMAN
            + "%d session(s) since startup\n" % self._channels.created
            + "%d session(s) - peak %d, last 5min %d \n"
            % (live, self._channels.peak, self._channels.peak)
            + "0 session(s) per Sec out of max 1000, peak 0, last 5min 0 \n"
            + "1000 session(s) max\n"
            + "min idle cpu 0.00/99.00\n"
            + "Current Stack Size/Max 240K/8192K\n"
        )


# --------------------------------------------------------------------------
# Command line (`eslcdr fakefs`)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _account_list(text: str) -> tuple[str, ...]:
    accounts = tuple(item.strip() for item in text.split(","))
    if not all(accounts):
        raise argparse.ArgumentTypeError("expected comma-separated account ids")
    return accounts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``eslcdr fakefs``."""
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help="address to listen on (default %(default)s)"
    )
    parser.add_argument(
        "--port",
        type=_non_negative_int,
        default=DEFAULT_PORT,
        help="port (default %(default)s, 0: any free one)",
    )
    parser.add_argument(
        "--password", default=DEFAULT_PASSWORD, help="auth password (default %(default)s)"
    )
    source = parser.add_argument_group("event source (generated calls unless --replay)")
    source.add_argument(
        "--replay", nargs="+", metavar="FILE", help="serve the events of raw Event Socket captures"
    )
    source.add_argument(
        "--repeat",
        type=_positive_int,
        default=1,
        metavar="N",
        help="replay N times, each with new ids and later times",
    )
    source.add_argument(
        "--now", action="store_true", help="move replayed times so the first event is now"
    )
    source.add_argument(
        "--calls",
        type=_non_negative_int,
        default=100,
        metavar="N",
        help="generated calls (default %(default)s, 0: no end)",
    )
    source.add_argument(
        "--cps",
        type=_non_negative_float,
        default=0.0,
        metavar="R",
        help="calls per second, in real time (default 0: as fast as read)",
    )
    source.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="S",
        help="seed of the generated calls (default %(default)s)",
    )
    source.add_argument(
        "--accounts",
        type=_account_list,
        default=DEFAULT_ACCOUNTS,
        metavar="A,B,C",
        help="Kazoo account ids the generated calls are spread over (default: %s)"
        % ",".join(DEFAULT_ACCOUNTS),
    )
    source.add_argument(
        "--hostname", help="FreeSWITCH-Hostname of the events (default: the captures')"
    )
    stream = parser.add_argument_group("stream")
    stream.add_argument(
        "--no-wait",
        action="store_true",
        help="start the stream at once, not at the first subscription",
    )
    stream.add_argument(
        "--hold",
        action="store_true",
        help="pause the stream while no client is subscribed (FreeSWITCH would lose the events)",
    )
    stream.add_argument(
        "--no-backpressure",
        action="store_true",
        help="never wait for slow clients: overflow their queue as FreeSWITCH does",
    )
    stream.add_argument(
        "--queue-limit",
        type=_positive_int,
        default=MAX_QUEUE_LEN,
        metavar="N",
        help="events queued per client (default %(default)s)",
    )
    stream.add_argument(
        "--exit-when-done", action="store_true", help="exit once the stream has been delivered"
    )
    faults = parser.add_argument_group("fault injection (N counts events of the stream)")
    faults.add_argument(
        "--drop-after", type=_positive_int, metavar="N", help="close every connection after event N"
    )
    faults.add_argument(
        "--stall-after",
        type=_positive_int,
        metavar="N",
        help="send nothing for --stall-seconds after event N",
    )
    faults.add_argument(
        "--stall-seconds",
        type=_non_negative_float,
        default=5.0,
        metavar="S",
        help="stall length (default %(default)s)",
    )
    faults.add_argument(
        "--restart-after",
        type=_positive_int,
        metavar="N",
        help="restart with a new Core-UUID after event N",
    )
    faults.add_argument(
        "--restart-downtime",
        type=_non_negative_float,
        default=0.0,
        metavar="S",
        help="refuse connections for S seconds after the restart",
    )
    faults.add_argument(
        "--malformed-every",
        type=_positive_int,
        metavar="N",
        help="send a malformed frame before every Nth event of a connection",
    )


def source_from_args(args: argparse.Namespace) -> Source:
    if args.replay:
        return ReplaySource(
            args.replay, repeat=args.repeat, time_base=time.time() if args.now else None
        )
    return GeneratedSource(
        calls=args.calls or None, cps=args.cps, seed=args.seed, accounts=args.accounts
    )


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted (or, with --exit-when-done, until delivered)."""
    try:
        source = source_from_args(args)
    except (OSError, ValueError, EventDecodeError) as exc:
        print("eslcdr fakefs: %s" % exc, file=sys.stderr)
        return 2
    fake = FakeFreeSWITCH(
        args.host,
        args.port,
        args.password,
        source,
        hostname=args.hostname,
        wait_for_subscriber=not args.no_wait,
        hold=args.hold,
        backpressure=not args.no_backpressure,
        queue_limit=args.queue_limit,
        drop_after=args.drop_after,
        stall_after=args.stall_after,
        stall_seconds=args.stall_seconds,
        restart_after=args.restart_after,
        restart_downtime=args.restart_downtime,
        malformed_every=args.malformed_every,
    )
    try:
        fake.start()
    except OSError as exc:
        print(
            "eslcdr fakefs: cannot listen on %s:%s: %s" % (args.host, args.port, exc),
            file=sys.stderr,
        )
        return 1
    what = (
        "replaying %d event(s)" % len(source)
        if isinstance(source, ReplaySource)
        else ("%s generated call(s)" % (args.calls or "endless"))
    )
    print(
        "FreeSWITCH stand-in on %s:%d (password %s), %s"
        % (args.host, fake.port, args.password, what),
        flush=True,
    )
    stop = GeventEvent()
    handlers = [
        gevent.signal_handler(signal.SIGTERM, stop.set),
        gevent.signal_handler(signal.SIGINT, stop.set),
    ]
    try:
        while not stop.wait(timeout=0.5):
            if args.exit_when_done and fake.done() and fake.position:
                break
    except KeyboardInterrupt:
        pass
    finally:
        for handler in handlers:
            handler.cancel()
        fake.stop()
    return 1 if fake.error else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="eslcdr fakefs", description="FreeSWITCH Event Socket stand-in"
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
