"""What one connection listens to: mod_event_socket's event subscription and filters.

A :class:`Subscription` answers the commands that change it as
``parse_command`` does (``event plain|json ...``, ``nixevent``, ``noevents``,
``filter``: the reply text, which the listener wraps) and decides, for each
event the server offers, whether this connection wants it (``wants``):
its names (``ALL``, or ``CUSTOM`` and subclasses) and then the filters, as
``event_handler()`` applies them (any positive filter admits, a negative one
vetoes).  Invariants: no I/O and no queue here (the listener owns those);
``on_subscribe`` is called whenever a command turns events on, so the server's
stream can start at the first subscriber.
"""

from __future__ import annotations

import re
from types import MappingProxyType
from typing import Callable, Iterator

from ..esl.events import JSON, PLAIN
from .templates import Emission

FORMATS = MappingProxyType({"plain": PLAIN, "json": JSON})

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


def _keywords(tokens: list[str]) -> Iterator[tuple[str | None, str | None]]:
    """(event name, None) for each word that names an event (others are
    skipped), then (None, subclass) for every word after ``CUSTOM``."""
    custom = False
    for token in tokens:
        if custom:
            yield None, token
            continue
        name = _event_type(token)
        if name is not None:
            custom = name == "CUSTOM"
            yield name, None


class Subscription:
    """One connection's event format, names, subclasses and filters."""

    def __init__(self, on_subscribe: Callable[[], None]) -> None:
        self._on_subscribe = on_subscribe
        self.ctype = PLAIN
        self.events_on = False
        self.all_events = False
        self.names: set[str] = set()
        self.subclasses: set[str] = set()
        self.filters: list[tuple[str, str]] = []

    # -- commands (each returns the Reply-Text)

    def event(self, command: str) -> str:
        _, _, rest = command.partition(" ")
        tokens = rest.split(" ") if rest else []
        if tokens and tokens[0].lower() == "xml":
            return "-ERR the stand-in does not send xml events"
        if tokens and tokens[0].lower() in FORMATS:
            self.ctype = FORMATS[tokens.pop(0).lower()]
        count = 0
        for name, subclass in _keywords(tokens):
            if subclass is not None:
                self.subclasses.add(subclass)
                continue
            count += 1
            if name == "ALL":
                self.all_events = True
            self.names.add(name)
        if not count:
            return "-ERR no keywords supplied"
        self._subscribe()
        return "+OK event listener enabled %s" % ("json" if self.ctype == JSON else "plain")

    def nixevent(self, command: str) -> str:
        _, _, rest = command.partition(" ")
        count = 0
        for name, subclass in _keywords(rest.split(" ") if rest else []):
            if subclass is not None:
                self.subclasses.discard(subclass)
                continue
            count += 1
            if name == "ALL":
                self.all_events = False
                self.names.clear()
            elif name != "CUSTOM":
                if self.all_events:  # ALL becomes every single name but this one
                    self.all_events = False
                    self.names = set(EVENT_NAMES) - {"ALL"}
                self.names.discard(name)
        if not count:
            return "-ERR no keywords supplied"
        self._subscribe()
        return "+OK events nixed"

    def noevents(self) -> str:
        if not self.events_on:
            return "-ERR not listening for events"
        self.events_on = False
        self.all_events = False
        self.names.clear()
        self.subclasses.clear()
        return "+OK no longer listening for events"

    def _subscribe(self) -> None:
        self.events_on = True
        self._on_subscribe()

    def filter(self, args: str) -> str:
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

    def wants(self, emission: Emission) -> bool:
        if not self.events_on:
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

    def _passes_filters(self, emission: Emission) -> bool:
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
