"""Derive expected.json (the test oracle of the F set) from the raw captures.

Run once from the repository root and review the diff:

    python tests/data/flows/derive_expected.py

Independent of eslcdr on purpose: it imports nothing from the package. It
splits each capture into frames on Content-Length, reads plain bodies line by
line (each value percent-decoded after the split) and json bodies with
json.loads, and applies the source order of DESIGN section 4 (first non-empty
source wins) to the CHANNEL_HANGUP_COMPLETE of each leg:

- call_id: Unique-ID; call_direction: Call-Direction; channel_name: Channel-Name
- caller_id_*: v:origination_caller_id_*, v:effective_caller_id_*, Caller-Caller-ID-*
- callee_id_*: v:origination_callee_id_*, v:effective_callee_id_*, Caller-Callee-ID-*
- duration_seconds: int(v:duration)
- billing_seconds: ceil(v:billmsec / 1000), else v:billsec; 0 when
  Caller-Channel-Answered-Time is 0
- ringing_seconds: floor((answer, else hangup) - (Progress-Time, else
  Progress-Media-Time)) in seconds; 0 without ringing; never negative
- hangup_cause: v:bridge_hangup_cause only when v:current_application is
  'bridge'; then v:hangup_cause, Hangup-Cause
- hangup_code: v:proto_specific_hangup_cause, v:last_bridge_proto_specific_hangup_cause
- disposition: v:sip_hangup_disposition, v:originate_disposition, v:endpoint_disposition
- other_leg_call_id: Other-Leg-Unique-ID, v:bridge_uuid, v:last_bridge_to,
  v:originating_leg_uuid, v:signal_bond, else the leg's (last) CHANNEL_BRIDGE partner
- created_us / answered_us / hangup_us: Caller-Channel-Created / -Answered / -Hangup-Time
- timestamp: Event-Date-Timestamp // 1e6 + 62167219200 (Gregorian seconds)
- sip_call_id: v:sip_call_id

A field no source defines is null. Flows (interactions) are the connected
groups of legs over the link fields the capture README names
(Other-Leg-Unique-ID, v:bridge_uuid, v:last_bridge_to, v:originating_leg_uuid,
v:other_loopback_leg_uuid, the CHANNEL_BRIDGE pair, a shared v:sip_call_id),
each named after the one `Flow<name>` caller name in it; the script stops if
a group does not have the README's size and kind of legs or the hangup causes
differ from the README's counts. `role` labels a leg by what it is in its
flow (channel, destination, whether it is the flow's originated call), so
the two runs can be compared without their ids.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

HERE = Path(__file__).resolve().parent
RUNS = ("F_plain", "F_json")
GREGORIAN_OFFSET = 62167219200
# README: "legs" column of the table, and the hangup causes per run.
FLOW_SIZES = {"blind": 6, "attended": 6, "refer": 6, "group": 8, "pickup": 6}
README_CAUSES = {"NORMAL_CLEARING": 21, "ORIGINATOR_CANCEL": 5, "LOSE_RACE": 2, "PICKED_OFF": 2,
                 "BLIND_TRANSFER": 1, "DESTINATION_OUT_OF_ORDER": 1}
LINKS = ("Other-Leg-Unique-ID", "variable_bridge_uuid", "variable_last_bridge_to",
         "variable_originating_leg_uuid", "variable_other_loopback_leg_uuid",
         "Bridge-A-Unique-ID", "Bridge-B-Unique-ID")


def read_events(path: Path) -> list[dict]:
    data, pos, out = path.read_bytes(), 0, []
    while pos < len(data):
        end = data.index(b"\n\n", pos)
        headers = dict(line.split(": ", 1) for line in data[pos:end].decode().split("\n"))
        pos = end + 2
        length = int(headers.get("Content-Length", 0))
        body, pos = data[pos:pos + length], pos + length
        if headers["Content-Type"] == "text/event-plain":
            event = {}
            for line in body.decode().split("\n"):
                if line:
                    name, value = line.split(": ", 1)
                    event[name] = unquote(value)
            out.append(event)
        elif headers["Content-Type"] == "text/event-json":
            out.append(json.loads(body))
    return out


def first(event: dict, *names: str):
    for name in names:
        value = event.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def cdr(event: dict, bridge_partner: str | None) -> dict:
    answered = int(event["Caller-Channel-Answered-Time"])
    hangup = int(event["Caller-Channel-Hangup-Time"])
    ring = int(event["Caller-Channel-Progress-Time"]) or int(event["Caller-Channel-Progress-Media-Time"])
    if not answered:
        billing = 0
    elif event.get("variable_billmsec"):
        billing = math.ceil(int(event["variable_billmsec"]) / 1000)
    else:
        billing = int(event["variable_billsec"])
    cause = ("variable_bridge_hangup_cause",) if event.get("variable_current_application") == "bridge" else ()
    return {
        "call_id": event["Unique-ID"],
        "channel_name": event["Channel-Name"],
        "call_direction": event["Call-Direction"],
        "caller_id_name": first(event, "variable_origination_caller_id_name", "variable_effective_caller_id_name",
                                "Caller-Caller-ID-Name"),
        "caller_id_number": first(event, "variable_origination_caller_id_number",
                                  "variable_effective_caller_id_number", "Caller-Caller-ID-Number"),
        "callee_id_name": first(event, "variable_origination_callee_id_name", "variable_effective_callee_id_name",
                                "Caller-Callee-ID-Name"),
        "callee_id_number": first(event, "variable_origination_callee_id_number",
                                  "variable_effective_callee_id_number", "Caller-Callee-ID-Number"),
        "duration_seconds": max(0, int(event["variable_duration"])),
        "billing_seconds": billing,
        "ringing_seconds": max(0, ((answered or hangup) - ring) // 1_000_000) if ring else 0,
        "hangup_cause": first(event, *cause, "variable_hangup_cause", "Hangup-Cause"),
        "hangup_code": first(event, "variable_proto_specific_hangup_cause",
                             "variable_last_bridge_proto_specific_hangup_cause"),
        "disposition": first(event, "variable_sip_hangup_disposition", "variable_originate_disposition",
                             "variable_endpoint_disposition"),
        "other_leg_call_id": first(event, "Other-Leg-Unique-ID", "variable_bridge_uuid", "variable_last_bridge_to",
                                   "variable_originating_leg_uuid", "variable_signal_bond") or bridge_partner,
        "created_us": int(event["Caller-Channel-Created-Time"]),
        "answered_us": answered,
        "hangup_us": hangup,
        "timestamp": int(event["Event-Date-Timestamp"]) // 1_000_000 + GREGORIAN_OFFSET,
        "sip_call_id": first(event, "variable_sip_call_id"),
    }


def connected(events: list[dict], links: tuple[str, ...] = LINKS) -> list[set[str]]:
    """The connected groups of legs over the ``links`` headers and a shared
    v:sip_call_id (every leg an event names, whether or not it hung up)."""
    parent: dict[str, str] = {}

    def root(leg: str) -> str:
        while parent.setdefault(leg, leg) != leg:
            leg = parent[leg]
        return leg

    by_sip_call_id: dict[str, str] = {}
    for event in events:
        leg = event["Unique-ID"]
        root(leg)
        others = [event[h] for h in links if event.get(h)]
        if event.get("variable_sip_call_id"):
            others.append(by_sip_call_id.setdefault(event["variable_sip_call_id"], leg))
        for other in others:
            parent[root(other)] = root(leg)
    groups: dict[str, set] = {}
    for leg in parent:
        groups.setdefault(root(leg), set()).add(leg)
    return list(groups.values())


def flows(events: list[dict]) -> dict[str, str]:
    """Leg -> flow name: connected groups over the README's link fields."""
    names = {}
    for legs in connected(events):
        flow_names = {e["variable_origination_caller_id_name"] for e in events
                      if e["Unique-ID"] in legs and e.get("variable_origination_caller_id_name")}
        (name,) = flow_names  # exactly one originated flow per group
        names.update(dict.fromkeys(legs, name.removeprefix("Flow")))
    return names


def role(event: dict) -> str:
    originated = (event.get("variable_origination_caller_id_name") or "").startswith("Flow")
    return "%s %s%s" % (event["Channel-Name"], event["Caller-Destination-Number"], " (X)" if originated else "")


def derive(run: str) -> dict:
    events = read_events(HERE / (run + ".esl"))
    hangups = {e["Unique-ID"]: e for e in events if e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE"}
    assert len(hangups) == 32 == sum(e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE" for e in events)
    assert Counter(e["Hangup-Cause"] for e in hangups.values()) == README_CAUSES
    partner: dict[str, str] = {}
    for event in events:
        if event["Event-Name"] == "CHANNEL_BRIDGE":
            a, b = event["Bridge-A-Unique-ID"], event["Bridge-B-Unique-ID"]
            partner.update({a: b, b: a})
    flow_of = flows(events)
    assert Counter(flow_of.values()) == FLOW_SIZES and set(flow_of) == set(hangups)
    legs = {}
    for call_id, event in sorted(hangups.items(), key=lambda item: (flow_of[item[0]], role(item[1]), item[0])):
        legs[call_id] = {"flow": flow_of[call_id], "role": role(event), **cdr(event, partner.get(call_id))}
    return legs


def main() -> None:
    oracle = {"about": "Derived by derive_expected.py from the raw captures; see its docstring.",
              "runs": {run: derive(run) for run in RUNS}}
    (HERE / "expected.json").write_text(json.dumps(oracle, indent=1) + "\n")


if __name__ == "__main__":
    main()
