"""CDR builder: a finished leg -> one CDR record (docs/database.md).  Pure.

The record is a dict of column -> value, in the ``cdrs`` table's terms (see
store/schema.py).  Each field takes the first non-empty of its sources, in the
order of the table in docs/database.md; CHANNEL_HANGUP_COMPLETE carries every channel
variable, the leg tracker adds DTMF digits, the fax result event and the
bridge partner.  ``should_record`` applies ``process_cdr=false``.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone

from .. import __version__
from ..config import CdrConfig
from ..esl.events import Event
from .legs import GREGORIAN_OFFSET, MAX_DTMF_DIGITS, FinishedLeg, LostLeg, gregorian_seconds, parse_int

Record = dict[str, object]

_FAX_FIELDS = (
    # (column, channel variable, spandsp event header, converter)
    ("fax_result_code", "variable_fax_result_code", "fax-result-code", "int"),
    ("fax_result_text", "variable_fax_result_text", "fax-result-text", "str"),
    ("fax_ecm_used", "variable_fax_ecm_used", "fax-ecm-used", "bool"),
    ("fax_total_pages", "variable_fax_document_total_pages", "fax-document-total-pages", "int"),
    ("fax_transferred_pages", "variable_fax_document_transferred_pages", "fax-document-transferred-pages", "int"),
    ("fax_transfer_rate", "variable_fax_transfer_rate", "fax-transfer-rate", "int"),
    ("fax_bad_rows", "variable_fax_bad_rows", "fax-bad-rows", "int"),
)
_TRUE = frozenset({"1", "true", "yes", "on", "t", "y"})
_NO_FAX_EVENT: dict[str, str] = {}  # never written to

# Quality columns taken as they are from one channel variable (docs/api.md).
_QUALITY_FIELDS = (
    # (column, header, converter)
    ("audio_in_quality_percentage", "variable_rtp_audio_in_quality_percentage", float),
    ("audio_in_flaw_total", "variable_rtp_audio_in_flaw_total", int),
    ("audio_in_packets", "variable_rtp_audio_in_packet_count", int),
    ("audio_in_media_packets", "variable_rtp_audio_in_media_packet_count", int),
    ("audio_in_skip_packets", "variable_rtp_audio_in_skip_packet_count", int),
    ("audio_in_jitter_max_variance", "variable_rtp_audio_in_jitter_max_variance", float),
    ("audio_in_mean_interval", "variable_rtp_audio_in_mean_interval", float),
    ("audio_out_media_packets", "variable_rtp_audio_out_media_packet_count", int),
    ("codec", "variable_rtp_use_codec_name", str),
    ("codec_rate", "variable_rtp_use_codec_rate", int),
    ("codec_ptime", "variable_rtp_use_codec_ptime", int),
    ("local_media_ip", "variable_local_media_ip", str),
)
_PDD_STAGES = ("Caller-Channel-Progress-Time", "Caller-Channel-Progress-Media-Time", "Caller-Channel-Answered-Time")


def first(event: Event, *names: str) -> str | None:
    """The first non-empty value among the named headers."""
    for name in names:
        value = event.get(name)
        if value:
            return value
    return None


def _convert(value: str | None, kind: str):
    if value is None or value == "":
        return None
    if kind == "int":
        try:
            return int(value)
        except ValueError:
            return None
    if kind == "bool":
        return value.strip().lower() in _TRUE
    return value


def _number(value: str | None, kind: type):
    """A variable as int/float/str; None when absent, empty or not a finite number."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if kind is str:
        return value
    try:
        number = float(value) if kind is float else int(value)
    except ValueError:
        if kind is not int:
            return None
        try:  # "20.00" for an integer variable
            number = int(float(value))
        except (ValueError, OverflowError):
            return None
    if kind is float and not math.isfinite(number):
        return None
    return number


_NO_QUALITY: Record = {name: None for name in (
    *(column for column, _, _ in _QUALITY_FIELDS),
    "audio_in_mos", "remote_media_ip", "remote_media_port", "pdd_ms", "no_rtp_in",
)}


# A loopback leg (mod_loopback's half of a call routed back into the switch)
# is stored but counts in no KPI (store/schema.py counted_sql).
LOOPBACK_PREFIX = "loopback/"


def is_loopback(channel_name: str | None) -> bool:
    return bool(channel_name) and channel_name.startswith(LOOPBACK_PREFIX)


def _quality(event: Event, created_us: int, answered_us: int) -> Record:
    """The quality columns of docs/api.md (NULL where FreeSWITCH said nothing).

    Loopback legs are FreeSWITCH talking to itself: no RTP, and progress and
    answer are instant; every quality column stays NULL (they count nowhere
    in the KPIs either).
    """
    get = event.get
    if is_loopback(get("Channel-Name")):
        return dict(_NO_QUALITY)
    fields: Record = {column: _number(get(header), kind) for column, header, kind in _QUALITY_FIELDS}
    media_packets = fields["audio_in_media_packets"]
    # FreeSWITCH reports MOS 4.50 for a leg that received no audio at all.
    fields["audio_in_mos"] = (
        _number(get("variable_rtp_audio_in_mos"), float) if media_packets else None
    )
    fields["remote_media_ip"] = _number(
        get("variable_remote_audio_ip") or get("variable_remote_media_ip"), str
    )
    fields["remote_media_port"] = _number(
        get("variable_remote_audio_port") or get("variable_remote_media_port"), int
    )
    pdd_ms = None
    if created_us:
        for header in _PDD_STAGES:
            reached = parse_int(get(header))
            if reached:
                pdd_ms = (reached - created_us) // 1000 if reached >= created_us else None
                break
    fields["pdd_ms"] = pdd_ms
    no_rtp_in = None
    if answered_us and fields["audio_in_packets"] is not None and media_packets is not None:
        no_rtp_in = 0 if media_packets > 0 else 1
    fields["no_rtp_in"] = no_rtp_in
    return fields


def _epoch_seconds(us: int) -> int:
    return us // 1_000_000


def _field_key(name: str) -> str:
    return name.lower().replace("-", "_")


def should_record(event: Event) -> bool:
    return (event.get("variable_process_cdr") or "").lower() != "false"


# (first µs, last µs, "YYYYMM-") of the month of the last id made (legs
# hang up in the same month, one after another): one tuple, read and
# replaced whole, so a builder in another thread never sees half of it.
_id_month: tuple[int, int, str] = (0, -1, "")


def cdr_id(call_id: str, hangup_us: int) -> str:
    """``YYYYMM-<call id>``, the month (UTC) of ``hangup_us``."""
    global _id_month
    first, last, prefix = _id_month
    if first <= hangup_us <= last:
        return prefix + call_id
    when = datetime.fromtimestamp(hangup_us / 1_000_000, tz=timezone.utc)
    prefix = "%04d%02d-" % (when.year, when.month)
    if when.year < 9999:
        start = datetime(when.year, when.month, 1, tzinfo=timezone.utc)
        after = datetime(when.year + when.month // 12, when.month % 12 + 1, 1, tzinfo=timezone.utc)
        # A µs short of either end: the float above rounds there.
        _id_month = (_unix_us(start) + 1, _unix_us(after) - 2, prefix)
    return prefix + call_id


def _unix_us(when: datetime) -> int:
    return int(when.timestamp()) * 1_000_000


SEEN_NAMES = 4096  # custom field names remembered by a builder (~1 MB at most)
_UNSEEN = object()  # a name the memory does not hold (None: known, not ours)


class _CustomFieldRules:
    """What custom_channel_vars / custom_sip_headers take, prepared once.

    Every wanted name starts with one of a few literal strings (``starts``):
    ``str.find`` of each over the event's header names, joined by newlines,
    finds the few candidates, and one regular expression tells which field
    each is, once per name (``seen``, at most SEEN_NAMES: names come from
    the events).  A Python loop over the ~200 names of every hangup costs
    more than the rest of the CDR; the regular expression searched over the
    whole text, a third of it.
    """

    __slots__ = ("pattern", "starts", "wanted", "seen")

    def __init__(self, config: CdrConfig) -> None:
        prefixes = [prefix for prefix in config.custom_var_prefixes if prefix]
        custom = r"|(?:%s)([^\n]+)" % "|".join(map(re.escape, prefixes)) if prefixes else ""
        self.pattern = re.compile(r"\nvariable_(?:sip_h_([Xx]-[^\n]+)%s)" % custom)
        # Where a match can start (a prefix that starts with another's is
        # found by the shorter one).
        starts = sorted({"\nvariable_" + start for start in ("sip_h_", *prefixes)}, key=len)
        self.starts = tuple(s for i, s in enumerate(starts) if not any(s.startswith(t) for t in starts[:i]))
        self.wanted = {"variable_" + name: _field_key(name) for name in config.custom_vars}
        self.seen: dict[str, tuple[bool, str] | None] = {}

    def field(self, name: str) -> tuple[bool, str] | None:
        """(an X- SIP header?, its key) of one line of the names, or None."""
        match = self.pattern.match("\n" + name)
        # Group 1 is an X- header's name, group 2 a prefixed variable's.
        field = (match.lastindex == 1, _field_key(match.group(match.lastindex))) if match else None
        if len(self.seen) >= SEEN_NAMES:
            self.seen.clear()
        self.seen[name] = field
        return field


def _custom_fields(event: Event, rules: _CustomFieldRules) -> tuple[dict[str, str], dict[str, str]]:
    """Custom channel variables and X- SIP headers."""
    channel_vars: dict[str, str] = {}
    sip_headers: dict[str, str] = {}
    text = "\n" + "\n".join(event)
    found = []
    for start in rules.starts:
        at = text.find(start)
        while at >= 0:
            found.append(at)
            at = text.find(start, at + 1)
    if len(rules.starts) > 1:
        found.sort()
    seen = rules.seen
    for at in found:
        end = text.find("\n", at + 1)
        name = text[at + 1 : end] if end > 0 else text[at + 1 :]
        field = seen.get(name, _UNSEEN)
        if field is _UNSEEN:
            field = rules.field(name)
        if field is None:
            continue
        value = event.get(name)
        if value is None:  # a header name holding a newline: not ours
            continue
        (sip_headers if field[0] else channel_vars)[field[1]] = value
    for name, key in rules.wanted.items():
        value = event.get(name)
        if value is not None:
            channel_vars[key] = value
    return channel_vars, sip_headers


def _ringing_seconds(event: Event, answered_us: int, hangup_us: int) -> int:
    ring_us = parse_int(event.get("Caller-Channel-Progress-Time")) or parse_int(
        event.get("Caller-Channel-Progress-Media-Time")
    )
    if not ring_us:
        return 0
    end_us = answered_us or hangup_us
    if not end_us:
        return 0
    # Whole seconds actually spent ringing (the µs difference, floored).
    return max(0, (end_us - ring_us) // 1_000_000)


def _billing_seconds(event: Event, answered_us: int) -> int:
    if not answered_us:
        return 0
    billmsec = event.get("variable_billmsec")
    if billmsec:
        return max(0, math.ceil(parse_int(billmsec) / 1000))
    return max(0, parse_int(event.get("variable_billsec")))


def _hangup_cause(event: Event) -> str | None:
    if event.get("variable_current_application") == "bridge":
        cause = event.get("variable_bridge_hangup_cause")
        if cause:
            return cause
    return first(event, "variable_hangup_cause", "Hangup-Cause")


_NO_FAX: Record = {name: None for name, _, _, _ in _FAX_FIELDS} | {"fax_success": None}


def _fax(event: Event, fax_event: dict[str, str]) -> Record:
    fields: Record = {}
    success = event.get("variable_fax_success") or fax_event.get("fax-success")
    if not success and not fax_event and not event.get("variable_fax_result_code"):
        return _NO_FAX  # (the caller copies it into the record)
    fields["fax_success"] = _convert(success, "bool") if success else False
    for column, variable, header, kind in _FAX_FIELDS:
        fields[column] = _convert(event.get(variable) or fax_event.get(header), kind)
    return fields


class CdrBuilder:
    """Builds the records of one node; the config's lookups prepared once."""

    def __init__(self, config: CdrConfig, node: str) -> None:
        self.config = config
        self.node = node
        self.rules = _CustomFieldRules(config)
        self.account_vars = tuple("variable_" + n for n in config.account_id_vars)
        self.owner_vars = tuple("variable_" + n for n in config.owner_id_vars)
        self.authorizing_vars = tuple("variable_" + n for n in config.authorizing_id_vars)

    def build(self, leg: FinishedLeg) -> Record:
        return _build(leg, self)


def build_cdr(leg: FinishedLeg, config: CdrConfig, node: str) -> Record:
    """The CDR record of one finished leg (one-off; see CdrBuilder)."""
    return CdrBuilder(config, node).build(leg)


def _build(leg: FinishedLeg, builder: CdrBuilder) -> Record:
    node = builder.node
    ev = leg.hangup
    # "a or b or None": the first non-empty of the sources (first(), inlined:
    # this runs once per leg with ~30 lookups).
    get = ev.get
    call_id = ev["Unique-ID"]
    created_us = parse_int(get("Caller-Channel-Created-Time"))
    answered_us = parse_int(get("Caller-Channel-Answered-Time"))
    event_us = parse_int(get("Event-Date-Timestamp"))
    # A hangup event stripped of its times still gets a date: when it came.
    hangup_us = parse_int(get("Caller-Channel-Hangup-Time")) or event_us or leg.finished_us
    timestamp_us = event_us or hangup_us
    channel_vars, sip_headers = _custom_fields(ev, builder.rules)
    duration = parse_int(get("variable_duration"))
    if not duration and created_us and hangup_us:
        duration = _epoch_seconds(hangup_us) - _epoch_seconds(created_us)
    digits = get("variable_digits_dialed")
    if not digits or digits == "none":
        digits = leg.digits or None
    elif len(digits) > MAX_DTMF_DIGITS:
        digits = digits[:MAX_DTMF_DIGITS]
    sip_from = get("variable_sip_from_uri")
    sip_to = get("variable_sip_to_uri")
    sip_req = get("variable_sip_req_uri")
    record: Record = {
        "id": cdr_id(call_id, timestamp_us),
        "call_id": call_id,
        "interaction_id": leg.interaction_id,
        "links": leg.links,  # not a column: feeds interaction_links
        "account_id": first(ev, *builder.account_vars),
        "owner_id": first(ev, *builder.owner_vars),
        "authorizing_id": first(ev, *builder.authorizing_vars),
        "app_name": "eslcdr",
        "app_version": __version__,
        "node": node,
        "media_server": get("FreeSWITCH-Hostname"),
        "channel_name": get("Channel-Name"),
        "call_direction": get("Call-Direction"),
        "caller_id_name": (
            get("variable_origination_caller_id_name")
            or get("variable_effective_caller_id_name")
            or get("Caller-Caller-ID-Name")
            or None
        ),
        "caller_id_number": (
            get("variable_origination_caller_id_number")
            or get("variable_effective_caller_id_number")
            or get("Caller-Caller-ID-Number")
            or None
        ),
        "callee_id_name": (
            get("variable_origination_callee_id_name")
            or get("variable_effective_callee_id_name")
            or get("Caller-Callee-ID-Name")
            or None
        ),
        "callee_id_number": (
            get("variable_origination_callee_id_number")
            or get("variable_effective_callee_id_number")
            or get("Caller-Callee-ID-Number")
            or None
        ),
        "request": sip_req or get("Caller-Destination-Number"),
        "from": sip_from or get("Channel-Presence-ID"),
        "from_uri": sip_from,
        "to": sip_to or sip_req,
        "to_uri": sip_to,
        "presence_id": (get("Channel-Presence-ID") or get("variable_presence_id") or None),
        "user_agent": get("variable_sip_user_agent"),
        "created_us": created_us or None,
        "interaction_created_us": _interaction_created(leg.interaction_created_us, created_us),
        "sip_call_id": get("variable_sip_call_id") or None,
        "answered_us": answered_us,
        "hangup_us": hangup_us,
        "timestamp": gregorian_seconds(timestamp_us),
        "duration_seconds": max(0, duration),
        "billing_seconds": _billing_seconds(ev, answered_us),
        "ringing_seconds": _ringing_seconds(ev, answered_us, hangup_us),
        "hangup_cause": _hangup_cause(ev),
        "hangup_code": (
            get("variable_proto_specific_hangup_cause")
            or get("variable_last_bridge_proto_specific_hangup_cause")
            or None
        ),
        "disposition": (
            get("variable_sip_hangup_disposition")
            or get("variable_originate_disposition")
            or get("variable_endpoint_disposition")
            or None
        ),
        "digits_dialed": digits,
        "other_leg_call_id": (
            get("Other-Leg-Unique-ID")
            or get("variable_bridge_uuid")
            or get("variable_last_bridge_to")
            or get("variable_originating_leg_uuid")
            or get("variable_signal_bond")
            or leg.bridge_partner
            or None
        ),
        "other_leg_caller_id_name": get("Other-Leg-Caller-ID-Name"),
        "other_leg_caller_id_number": get("Other-Leg-Caller-ID-Number"),
        "other_leg_destination_number": get("Other-Leg-Destination-Number"),
        "other_leg_direction": get("Other-Leg-Direction"),
        "custom_channel_vars": channel_vars,
        "custom_sip_headers": sip_headers,
        "local_sdp": get("variable_rtp_local_sdp_str"),
        "remote_sdp": get("variable_switch_r_sdp"),
    }
    record.update(_fax(ev, dict(leg.fax) if leg.fax else _NO_FAX_EVENT))
    record.update(_quality(ev, created_us, answered_us))
    return record


def _interaction_created(interaction_us: int, created_us: int) -> int | None:
    # The tracker's value has normally seen this leg too; a leg built from
    # elsewhere (a json_cdr file) may be earlier than what the tracker knew.
    if interaction_us and created_us:
        return min(interaction_us, created_us)
    return interaction_us or created_us or None


# A written-off leg's columns taken from its live view (LiveLeg's field names).
_SEEN_COLUMNS = (
    ("account_id", "account_id"), ("owner_id", "owner_id"), ("authorizing_id", "authorizing_id"),
    ("channel_name", "channel_name"), ("call_direction", "direction"), ("caller_id_name", "caller_id_name"),
    ("caller_id_number", "caller_id_number"), ("callee_id_name", "callee_id_name"),
    ("callee_id_number", "callee_id_number"), ("request", "destination"), ("presence_id", "presence_id"),
    ("other_leg_call_id", "other_leg"),
)


def build_lost_cdr(leg: LostLeg, node: str, now_us: int) -> Record:
    """A leg whose hangup was missed while disconnected: what we know of it.

    Written so that no leg silently disappears; ``hangup_cause`` is NULL and
    ``disposition`` says why, so such rows are easy to find.  What its events
    showed is kept (its account above all: an account's token must see it);
    billing is 0, its end unknown.
    """
    seen = leg.seen
    shown: Record = {} if seen is None else {column: getattr(seen, name) or None for column, name in _SEEN_COLUMNS}
    return shown | {
        "id": cdr_id(leg.call_id, now_us),
        "call_id": leg.call_id,
        "interaction_id": leg.interaction_id or None,
        "app_name": "eslcdr",
        "app_version": __version__,
        "node": node,
        "created_us": leg.created_us or None,
        "interaction_created_us": _interaction_created(leg.interaction_created_us, leg.created_us),
        "sip_call_id": leg.sip_call_id or None,
        "answered_us": seen.answered_us if seen is not None else 0,
        "hangup_us": now_us,
        "timestamp": now_us // 1_000_000 + GREGORIAN_OFFSET,
        "duration_seconds": max(0, _epoch_seconds(now_us) - _epoch_seconds(leg.created_us)) if leg.created_us else 0,
        "billing_seconds": 0,
        "ringing_seconds": 0,
        "disposition": "eslcdr_hangup_not_seen",
        "custom_channel_vars": {},
        "custom_sip_headers": {},
    }
