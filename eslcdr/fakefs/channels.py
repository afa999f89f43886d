"""The channel table behind ``show channels``.

FreeSWITCH answers ``show channels`` from the ``channels`` table of its core
database, which the core keeps from channel events.  :class:`ChannelTable`
does the same from the stream the pump plays: a row per ``CHANNEL_CREATE``
(columns in the order of ``switch_core_sqldb.c``, each from the header it
starts from), refreshed by later channel events (the call state becomes the
one the event leads to), gone at ``CHANNEL_HANGUP_COMPLETE`` /
``CHANNEL_DESTROY``.  ``channels_json`` and ``channels_delim`` write the
rows as mod_commands does (``as json``, and the default delimited form with
its ``N total.`` footer).  The table also keeps each live channel's latest
event, for ``uuid_dump``: its headers and variables as a CHANNEL_DATA event
(``dump_json`` / ``dump_text``, mod_commands' two forms).
"""

from __future__ import annotations

import json
from types import MappingProxyType

from .templates import Emission

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


class ChannelTable:
    """Live channels, kept from the stream as FreeSWITCH's core db is."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, str]] = {}
        self.latest: dict[str, Emission] = {}  # what uuid_dump shows
        self.created = 0
        self.peak = 0

    def observe(self, emission: Emission) -> None:
        name = emission.template.event_id
        if name not in _CHANNEL_EVENTS:
            return
        key = emission.value("Unique-ID")
        if not key:
            return
        if name == "CHANNEL_CREATE":
            self.rows[key] = self._row(emission)
            self.latest[key] = emission
            self.created += 1
            self.peak = max(self.peak, len(self.rows))
        elif name in _CHANNEL_GONE:
            self.rows.pop(key, None)
            self.latest.pop(key, None)
        elif key in self.rows:
            row = self.rows[key]
            self._refresh(row, emission)
            row["callstate"] = _CALLSTATE_AFTER.get(name, row["callstate"])
            self.latest[key] = emission

    def dump(self, key: str) -> dict[str, str] | None:
        """The channel's headers and variables now, as ``uuid_dump`` gives
        them (a CHANNEL_DATA event); None when there is no such channel."""
        emission = self.latest.get(key)
        row = self.rows.get(key)
        if emission is None or row is None:
            return None
        event = {k: v for k, v in emission.event().items() if k != "_body"}
        event["Event-Name"] = "CHANNEL_DATA"
        event["Channel-Call-State"] = row["callstate"]
        if row["callstate"] in ("ACTIVE", "HELD"):
            event["Answer-State"] = "answered"
        return event

    @staticmethod
    def _row(emission: Emission) -> dict[str, str]:
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
    def _refresh(row: dict[str, str], emission: Emission) -> None:
        for column, header in CHANNEL_COLUMNS:
            if header and column in _CHANNEL_REFRESHED:
                value = emission.value(header)
                if value:
                    row[column] = value

    def clear(self) -> None:
        self.rows.clear()
        self.latest.clear()


def dump_json(event: dict[str, str]) -> str:
    # switch_event_serialize_json: ARRAY:: variables become JSON arrays.
    doc = {
        k: v[7:].split("|:") if v.startswith("ARRAY::") else v for k, v in event.items()
    }
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


def dump_text(event: dict[str, str]) -> str:
    return "".join("%s: %s\n" % (k, v) for k, v in event.items())


def channels_json(rows: list[dict[str, str]]) -> str:
    if not rows:
        return '{"row_count": 0}\n'  # show_function's text when no row matched
    return json.dumps(
        {"row_count": len(rows), "rows": rows}, ensure_ascii=False, separators=(",", ":")
    )


def channels_delim(rows: list[dict[str, str]], delim: str = ",") -> str:
    lines = []
    if rows:
        lines.append(delim.join(column for column, _ in CHANNEL_COLUMNS) + "\n")
        lines.extend(
            delim.join(row[column] for column, _ in CHANNEL_COLUMNS) + "\n" for row in rows
        )
    lines.append("\n%d total.\n" % len(rows))
    return "".join(lines)
