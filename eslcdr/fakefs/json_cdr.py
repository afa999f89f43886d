"""mod_json_cdr files: what FreeSWITCH writes to its ``log-dir`` per leg.

FreeSWITCH's mod_json_cdr writes one file per leg in the channel's reporting
state, just *before* the core fires CHANNEL_HANGUP_COMPLETE for it, so the
stand-in writes a leg's file when the pump reaches that event, before it
offers the event to any connection, whether a client listens or not.  The
document is built from that event (``json_cdr_document``), field by field as
the real files beside the captures (tests/data/json_cdr/, set J) show.

mod_json_cdr writes the file in place (a reader can catch it half written);
the stand-in writes a temporary name and renames it, so a reader never sees
half a file unless a fault asks for one (``JsonCdrWriter``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import gevent

from ..esl.events import Event, percent_encode

_TIMES = (
    ("created_time", "Caller-Channel-Created-Time"),
    ("profile_created_time", "Caller-Profile-Created-Time"),
    ("progress_time", "Caller-Channel-Progress-Time"),
    ("progress_media_time", "Caller-Channel-Progress-Media-Time"),
    ("answered_time", "Caller-Channel-Answered-Time"),
    ("bridged_time", "Caller-Channel-Bridged-Time"),
    ("last_hold_time", "Caller-Channel-Last-Hold"),
    ("hold_accum_time", "Caller-Channel-Hold-Accum"),
    ("hangup_time", "Caller-Channel-Hangup-Time"),
    ("resurrect_time", "Caller-Channel-Resurrect-Time"),
    ("transfer_time", "Caller-Channel-Transfer-Time"),
)
# caller_profile fields, in mod_json_cdr's order, and the header suffix
# each comes from (``Caller-`` for the leg, ``Other-Leg-`` for its partner).
_PROFILE = (
    ("username", "Username"),
    ("dialplan", "Dialplan"),
    ("caller_id_name", "Caller-ID-Name"),
    ("ani", "ANI"),
    ("aniii", "ANI-II"),
    ("caller_id_number", "Caller-ID-Number"),
    ("network_addr", "Network-Addr"),
    ("rdnis", "RDNIS"),
    ("destination_number", "Destination-Number"),
    ("uuid", "Unique-ID"),
    ("source", "Source"),
    ("context", "Context"),
    ("chan_name", "Channel-Name"),
)
_PARTNER_ROLES = ("originator", "originatee")


def _profile(event: Event, prefix: str) -> dict[str, str]:
    return {field: event.get(prefix + suffix, "") for field, suffix in _PROFILE}


def is_a_leg(event: Event) -> bool:
    """mod_json_cdr's "A" leg: no originator caller profile."""
    return event.get("Other-Type") != "originator"


def json_cdr_document(event: Event) -> dict:
    """The mod_json_cdr document of a leg, from its CHANNEL_HANGUP_COMPLETE.

    - ``core-uuid`` / ``switchname``: ``Core-UUID`` / ``FreeSWITCH-Switchname``;
    - ``channel_data``: state ``CS_REPORTING``, ``Call-Direction``, state number 11;
    - ``callStats``: ``{}`` (RTP counters are not in the events);
    - ``variables``: every ``variable_*`` without the prefix, URL-encoded as in
      a plain event (``encode-values``, mod_json_cdr's default);
    - ``app_log``: the leg's last application (``current_application``), when
      it ran one (the events do not list the earlier ones);
    - ``callflow[0]``: ``caller_profile`` from the ``Caller-*`` headers, the
      partner's profile under ``originator`` / ``originatee`` from the
      ``Other-Leg-*`` headers (as ``Other-Type`` says), and ``times`` from the
      ``Caller-Channel-*-Time`` headers.
    """
    variables = {
        name[9:]: percent_encode(value)
        for name, value in event.items()
        if name.startswith("variable_")
    }
    profile = _profile(event, "Caller-")
    role = event.get("Other-Type")
    if role in _PARTNER_ROLES and event.get("Other-Leg-Unique-ID"):
        profile[role] = {role + "_caller_profiles": [_profile(event, "Other-Leg-")]}
    flow: dict[str, object] = {
        "dialplan": event.get("Caller-Dialplan", ""),
        "profile_index": event.get("Caller-Profile-Index", "1"),
        "caller_profile": profile,
        "times": {field: event.get(header, "0") for field, header in _TIMES},
    }
    document: dict[str, object] = {
        "core-uuid": event.get("Core-UUID", ""),
        "switchname": event.get("FreeSWITCH-Switchname") or event.get("FreeSWITCH-Hostname", ""),
        "channel_data": {
            "state": "CS_REPORTING",
            "direction": event.get("Call-Direction", ""),
            "state_number": "11",
            "flags": "",
            "caps": "",
        },
        "callStats": {},
        "variables": variables,
    }
    application = event.get("variable_current_application")
    if application:
        stamp = event.get("Caller-Channel-Answered-Time", "0")
        if stamp == "0":
            stamp = event.get("Caller-Channel-Created-Time", "0")
        document["app_log"] = {
            "applications": [
                {
                    "app_name": application,
                    "app_data": event.get("variable_current_application_data", ""),
                    "app_stamp": stamp,
                }
            ]
        }
    document["callflow"] = [flow]
    return document


def json_cdr_filename(event: Event, prefix_a_leg: bool = True) -> str:
    """``<uuid>.cdr.json``, or ``a_<uuid>.cdr.json`` for an "A" leg (one
    without an originator: ``prefix-a-leg``).
    """
    prefix = "a_" if prefix_a_leg and is_a_leg(event) else ""
    return "%s%s.cdr.json" % (prefix, event["Unique-ID"])


class JsonCdrWriter:
    """Writes the json_cdr file of every leg that hangs up into ``folder``.

    mod_json_cdr opens the file with O_TRUNC, writes, closes (with
    ``queue-capacity`` a thread writes it, possibly after the event went out).
    Here: a temporary name, then a rename.  Faults: ``delay`` (the file appears
    that many seconds after the hangup) and ``truncate_every`` (every Nth file
    is cut short, as when FreeSWITCH dies mid-write).
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        prefix_a_leg: bool = True,
        delay: float = 0.0,
        truncate_every: int | None = None,
    ):
        self.folder = Path(folder)
        self.prefix_a_leg = prefix_a_leg
        self.delay = delay
        self.truncate_every = truncate_every
        self.hangups = 0
        self.written = 0
        self.errors = 0
        self._pending: list[gevent.Greenlet] = []

    def hangup(self, event: Event) -> None:
        """Called at CHANNEL_HANGUP_COMPLETE, before the event is offered."""
        if not event.get("Unique-ID"):
            return
        name = json_cdr_filename(event, self.prefix_a_leg)
        data = json.dumps(json_cdr_document(event), ensure_ascii=False, separators=(",", ":"))
        raw = data.encode("utf-8") + b"\n"  # cJSON_PrintUnformatted, then a newline
        self.hangups += 1
        if self.truncate_every and self.hangups % self.truncate_every == 0:
            raw = raw[: len(raw) // 2]
        if self.delay > 0:
            self._pending = [g for g in self._pending if not g.dead]
            self._pending.append(gevent.spawn_later(self.delay, self._write, name, raw))
        else:
            self._write(name, raw)

    def _write(self, name: str, raw: bytes) -> None:
        # Temporary name outside the *.cdr.json pattern, then an atomic rename.
        temporary = self.folder / (".%s.tmp" % name)
        try:
            with open(temporary, "wb") as handle:
                handle.write(raw)
            os.replace(temporary, self.folder / name)
        except OSError as exc:
            self.errors += 1
            print("eslcdr fakefs: cannot write json_cdr %s: %s" % (name, exc), flush=True)
            return
        self.written += 1

    def cancel(self) -> None:
        """Forget the delayed files not written yet (the switch stops)."""
        gevent.killall(self._pending, block=False)
        self._pending = []
