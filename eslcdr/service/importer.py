"""``eslcdr import``: backfill CDRs from FreeSWITCH mod_json_cdr files.

A json_cdr file holds one leg: ``variables`` (URL-encoded when mod_json_cdr
runs with ``encode-values``, its default), ``channel_data`` and
``callflow[0]`` (the leg's current caller profile and its ``times``).  Each
file is turned into the CHANNEL_HANGUP_COMPLETE event FreeSWITCH would have
sent for that leg, so the same CDR builder and leg linking apply and a leg
imported and also seen live yields the same row.  Inserts are idempotent on
``call_id``: importing a folder twice adds nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator
from urllib.parse import unquote

import structlog

from ..ingest.cdr import CdrBuilder, should_record
from ..config import Config
from ..esl.events import Event, json_may_hold_nul, without_nul
from ..ingest.legs import FinishedLeg, LegTracker
from ..store.db import connect_writer, insert_records, recent_interaction_links, recent_interaction_starts

log = structlog.get_logger(__name__)

_TIMES = (
    ("created_time", "Caller-Channel-Created-Time"),
    ("answered_time", "Caller-Channel-Answered-Time"),
    ("progress_time", "Caller-Channel-Progress-Time"),
    ("progress_media_time", "Caller-Channel-Progress-Media-Time"),
    ("hangup_time", "Caller-Channel-Hangup-Time"),
    ("transfer_time", "Caller-Channel-Transfer-Time"),
    ("bridged_time", "Caller-Channel-Bridged-Time"),
)
_PROFILE = (
    ("caller_id_name", "Caller-Caller-ID-Name"),
    ("caller_id_number", "Caller-Caller-ID-Number"),
    ("callee_id_name", "Caller-Callee-ID-Name"),
    ("callee_id_number", "Caller-Callee-ID-Number"),
    ("destination_number", "Caller-Destination-Number"),
    ("ani", "Caller-ANI"),
    ("network_addr", "Caller-Network-Addr"),
    ("chan_name", "Caller-Channel-Name"),
)


class JsonCdrError(ValueError):
    """The file is not a mod_json_cdr record."""


@dataclass(frozen=True, slots=True)
class ImportResult:
    new: int
    duplicates: int
    failed: int


def _other_leg(profile: dict) -> tuple[str, dict]:
    """The partner's role (``originator`` / ``originatee``) and caller profile."""
    for role in ("originator", "originatee"):
        section = profile.get(role)
        if isinstance(section, dict):
            profiles = section.get(role + "_caller_profiles") or []
            if profiles and isinstance(profiles[0], dict):
                return role, profiles[0]
    return "", {}


def _media_stats(stats: object, event: Event) -> None:
    """RTP counters the variables lack, from ``callStats.audio`` (the same
    figures, as JSON numbers, in every mod_json_cdr file of a leg with RTP)."""
    audio = stats.get("audio") if isinstance(stats, dict) else None
    if not isinstance(audio, dict):
        return
    for section, prefix in (("inbound", "variable_rtp_audio_in_"), ("outbound", "variable_rtp_audio_out_")):
        counters = audio.get(section)
        if not isinstance(counters, dict):
            continue
        for name, value in counters.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                event.setdefault(prefix + name, "%.2f" % value if isinstance(value, float) else str(value))


def json_cdr_to_event(data: dict) -> Event:
    """The CHANNEL_HANGUP_COMPLETE equivalent of one json_cdr document."""
    variables = data.get("variables")
    if not isinstance(variables, dict):
        raise JsonCdrError("no 'variables' object")
    callflow = data.get("callflow") or [{}]
    flow = callflow[0] if isinstance(callflow, list) else callflow
    profile = flow.get("caller_profile") or {}
    times = flow.get("times") or {}
    event: Event = {"Event-Name": "CHANNEL_HANGUP_COMPLETE"}
    for name, value in variables.items():
        if isinstance(value, list):
            value = "ARRAY::" + "|:".join(unquote(str(v)) for v in value)
        event["variable_" + name] = unquote(str(value))
    _media_stats(data.get("callStats"), event)
    call_id = event.get("variable_uuid") or profile.get("uuid")
    if not call_id:
        raise JsonCdrError("no leg uuid")
    event["Unique-ID"] = call_id
    channel = data.get("channel_data") or {}
    event["Call-Direction"] = channel.get("direction") or event.get("variable_direction", "")
    event["Channel-Name"] = event.get("variable_channel_name") or profile.get("chan_name", "")
    event["FreeSWITCH-Hostname"] = data.get("switchname", "")
    event["Core-UUID"] = data.get("core-uuid", "")
    for field, header in _PROFILE:
        if profile.get(field):
            event[header] = str(profile[field])
    for field, header in _TIMES:
        event[header] = str(times.get(field, "0"))
    event["Event-Date-Timestamp"] = event.get("variable_end_uepoch") or event["Caller-Channel-Hangup-Time"]
    event["Hangup-Cause"] = event.get("variable_hangup_cause", "")
    if event.get("variable_presence_id"):
        event["Channel-Presence-ID"] = event["variable_presence_id"]
    role, other = _other_leg(profile)
    if other.get("uuid"):
        event["Other-Type"] = role
        event["Other-Leg-Unique-ID"] = other["uuid"]
        if role == "originatee":
            # A leg that originate/bridge created is an outbound channel; an
            # originator's direction is not in the file (left unknown).
            event["Other-Leg-Direction"] = "outbound"
        for field, header in (
            ("caller_id_name", "Other-Leg-Caller-ID-Name"),
            ("caller_id_number", "Other-Leg-Caller-ID-Number"),
            ("destination_number", "Other-Leg-Destination-Number"),
        ):
            if other.get(field):
                event[header] = str(other[field])
    return event


def parse_json_cdr(raw: bytes) -> tuple[Event, bool]:
    """A json_cdr file's bytes -> (its CHANNEL_HANGUP_COMPLETE equivalent,
    whether bytes that are not UTF-8 had to be replaced).

    Raises ``JsonCdrError`` with a reason a person can act on: empty,
    truncated or otherwise not JSON, not a mod_json_cdr object.
    """
    if not raw.strip():
        raise JsonCdrError("empty file")
    replaced = False
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        # FreeSWITCH writes UTF-8; keep the leg, mark the damage (U+FFFD).
        text = raw.decode("utf-8", "replace")
        replaced = True
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        stripped = text.rstrip()
        if stripped.startswith("{") and not stripped.endswith("}"):
            # An object cut short: a write that did not finish.
            raise JsonCdrError("truncated JSON (%d bytes, ends before the object closes)" % len(raw)) from None
        raise JsonCdrError("not JSON: %s" % exc) from None
    if not isinstance(data, dict):
        raise JsonCdrError("not a JSON object")
    event = json_cdr_to_event(data)
    # NUL as the JSON escape, or percent-encoded (encode-values): replaced
    # as the ESL decoders do (esl/events.py).
    if json_may_hold_nul(raw) or b"%00" in raw:
        event = without_nul(event)
    return event, replaced


def iter_files(paths: Iterable[str | Path]) -> Iterator[Path]:
    for path in map(Path, paths):
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*.json") if p.is_file())
        else:
            yield path


def load_events(paths: Iterable[str | Path]) -> tuple[list[Event], int]:
    events, failed = [], 0
    for path in iter_files(paths):
        try:
            with open(path, "rb") as handle:
                event, replaced = parse_json_cdr(handle.read())
            if replaced:
                log.warning("import_file_not_utf8", path=str(path), hint="bad bytes replaced by U+FFFD")
            events.append(event)
        except (OSError, JsonCdrError) as exc:
            failed += 1
            log.error("import_file_failed", path=str(path), error=str(exc))
    return events, failed


def build_records(events: list[Event], config: Config, tracker: LegTracker) -> list[dict]:
    """Link the legs (in creation order), then build their CDRs."""
    events = sorted(events, key=lambda e: int(e.get("Caller-Channel-Created-Time") or 0))
    finished: list[FinishedLeg] = []
    for event in events:
        leg = tracker.feed(event, int(event.get("Event-Date-Timestamp") or 0))
        if leg is not None and should_record(event):
            finished.append(leg)
    builder = CdrBuilder(config.cdr, config.cdr.node_name)
    records = []
    for leg in finished:
        record = builder.build(leg)
        # A later file may have merged this leg's group: take the final id.
        record["interaction_id"] = tracker.interaction_of(record["call_id"]) or record["interaction_id"]
        # ... and the start of the whole group: every file was read first, so
        # a leg written before its earlier partner's file still gets it.
        started = tracker.interaction_created_us(record["interaction_id"])
        if started and (record["interaction_created_us"] is None or started < record["interaction_created_us"]):
            record["interaction_created_us"] = started
        records.append(record)
    return records


def import_paths(config: Config, paths: Iterable[str | Path], batch_size: int = 1000) -> ImportResult:
    events, failed = load_events(paths)
    conn = connect_writer(config.store.path)
    try:
        tracker = LegTracker(config.cdr.interaction_id_vars)
        tracker.remember_interactions(recent_interaction_links(conn, 100_000))
        tracker.remember_interaction_starts(recent_interaction_starts(conn, 100_000))
        records = build_records(events, config, tracker)
        new = 0
        for start in range(0, len(records), batch_size):
            new += insert_records(conn, records[start : start + batch_size], merges=tracker.merges)
            tracker.merges = []
    finally:
        conn.close()
    result = ImportResult(new=new, duplicates=len(records) - new, failed=failed)
    log.info("import_done", files=len(events) + failed, new=result.new, duplicates=result.duplicates, failed=failed)
    return result
