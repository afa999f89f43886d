"""Reading raw Event Socket captures into header pairs.

A capture is the bytes a client received from FreeSWITCH.  The project's own
sans-IO :class:`~eslcdr.esl.frames.FrameParser` cuts it into frames; every event
frame (``text/event-plain`` or ``text/event-json``) becomes its headers *in
wire order, duplicates kept* (``decode_event`` gives a dict where the last
duplicate wins; the stand-in must send events exactly as FreeSWITCH did) and
its body.  :func:`extract_calls` groups a capture's events into calls: events
linked by any shared UUID (a union-find over every UUID in every value), which
is how the call templates in ``call_templates/`` were cut out of the captures.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Union

from ..esl.events import JSON, PLAIN, EventDecodeError, plain_header_pairs
from ..esl.frames import Frame, FrameParser, ProtocolError

Pairs = tuple[tuple[str, str], ...]


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


UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def extract_calls(capture: Union[str, Path, bytes]) -> list[list[tuple[Pairs, str | None]]]:
    """Split a capture into calls: events linked by any shared UUID.

    This is how the call templates in ``call_templates/`` were cut out of
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
        ids = {m for _, v in pairs for m in UUID_RE.findall(v)} - {core}
        key = root(values.get("Unique-ID") or next(iter(sorted(ids)), "") or str(len(keys)))
        for other in ids:
            parent[root(other)] = key
        keys.append(key)
    calls: dict[str, list] = {}
    for key, event in zip(keys, events):
        calls.setdefault(root(key), []).append(event)
    return list(calls.values())
