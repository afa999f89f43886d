"""Derive expected_cdrs.json (the test oracle of the S1-S7 captures) from the raw bytes.

Run once from the repository root and review the diff:

    python tests/data/derive_expected_cdrs.py

Independent of eslcdr on purpose: it imports nothing from the package. The
frame reader, the source order of the fields both sets share and the
CHANNEL_BRIDGE partner come from flows/derive_expected.py (see its
docstring); this script adds what the S set exercises, from the leg's
CHANNEL_HANGUP_COMPLETE unless said otherwise (DESIGN section 4, first
non-empty source wins):

- digits_dialed: v:digits_dialed unless 'none', else the leg's DTMF events'
  DTMF-Digit in capture order
- custom_sip_headers: v:sip_h_X-* -> key lower-cased, '-' -> '_'
- fax_*: v:fax_success, _result_code, _result_text, _ecm_used,
  _document_total_pages, _document_transferred_pages, _transfer_rate,
  _bad_rows, else the leg's spandsp::*faxresult event; success and ECM as
  bool ('1' / 'on' true), counts as int
- from: v:sip_from_uri, Channel-Presence-ID; to: v:sip_to_uri, v:sip_req_uri;
  request: v:sip_req_uri, Caller-Destination-Number; presence_id:
  Channel-Presence-ID, v:presence_id; media_server: FreeSWITCH-Hostname;
  user_agent: v:sip_user_agent

A field no source defines is left out of the leg (the tests check only the
fields listed).

Notes from the hand-derived oracle this replaces (its 60 S1-S6 legs and its
calls equal this script's output, field for field): several legs lack
Caller-Callee-ID-Name in their HANGUP_COMPLETE though earlier events had one
(FreeSWITCH swapped the caller profile; the callee number changed too), so
callee_id_name is left out, not back-filled; duration_seconds comes from whole
epoch seconds and can exceed the microsecond difference (S2 s2_ring: 4.34 s ->
5), and billing_seconds can be one more than it (billmsec 2040 -> 3); in S7, 3
plain legs have a CREATE Event-Date-Timestamp 20 ms after
Caller-Channel-Created-Time, and one json leg a HANGUP_COMPLETE one 20 ms after
Caller-Channel-Hangup-Time -- created_us / hangup_us are the Caller-Channel-*
times. Interactions are the connected groups of legs over
Other-Leg-Unique-ID, v:originating_leg_uuid, v:bridge_uuid, v:signal_bond,
v:last_bridge_to, v:other_loopback_leg_uuid, the CHANNEL_BRIDGE pair and a
shared v:sip_call_id (flows/derive_expected.py's grouping plus v:signal_bond).
The script stops unless the groups have the sizes the capture README gives
(S1 4, S2 2+2+4, S3 2x4 calls, S4 4, S5 2+2, S6 2, S7 20 calls of 4) and
every S7 call is the README's: caller 20NN, a loopback s7_<ms> -a/-b pair
bridged to a s7b_<ms> pair, <ms> cycling 1000..3000, every leg
NORMAL_CLEARING.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("flows_derive_expected", HERE / "flows" / "derive_expected.py")
flows = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(flows)

CAPTURES = tuple(f"S{n}_{fmt}" for n in range(1, 8) for fmt in ("plain", "json"))
README_SIZES = {"S1": [4], "S2": [2, 2, 4], "S3": [2, 2, 2, 2], "S4": [4], "S5": [2, 2], "S6": [2], "S7": [4] * 20}
LINKS = flows.LINKS + ("variable_signal_bond",)
FAX = {"fax_success": "variable_fax_success", "fax_result_code": "variable_fax_result_code",
       "fax_result_text": "variable_fax_result_text", "fax_ecm_used": "variable_fax_ecm_used",
       "fax_total_pages": "variable_fax_document_total_pages",
       "fax_transferred_pages": "variable_fax_document_transferred_pages",
       "fax_transfer_rate": "variable_fax_transfer_rate", "fax_bad_rows": "variable_fax_bad_rows"}
FAX_BOOLS = ("fax_success", "fax_ecm_used")
FAX_TEXTS = ("fax_result_text",)


def fax_value(field: str, raw: str):
    if field in FAX_BOOLS:
        return raw.lower() in ("1", "on", "true", "yes")
    return raw if field in FAX_TEXTS else int(raw)


def leg(event: dict, partner: str | None, dtmf: list[str], fax_event: dict | None) -> dict:
    first = flows.first
    record = flows.cdr(event, partner)
    digits = event.get("variable_digits_dialed")
    record.update({
        "digits_dialed": digits if digits and digits != "none" else "".join(dtmf) or None,
        "custom_sip_headers": {name[len("variable_sip_h_"):].lower().replace("-", "_"): value
                               for name, value in event.items()
                               if name.lower().startswith("variable_sip_h_x-")} or None,
        "from": first(event, "variable_sip_from_uri", "Channel-Presence-ID"),
        "to": first(event, "variable_sip_to_uri", "variable_sip_req_uri"),
        "request": first(event, "variable_sip_req_uri", "Caller-Destination-Number"),
        "presence_id": first(event, "Channel-Presence-ID", "variable_presence_id"),
        "media_server": first(event, "FreeSWITCH-Hostname"),
        "user_agent": first(event, "variable_sip_user_agent"),
    })
    for field, header in FAX.items():
        raw = first(event, header) or (first(fax_event, header) if fax_event else None)
        record[field] = None if raw is None else fax_value(field, raw)
    return {field: value for field, value in record.items() if value is not None}


def check_s7(calls: list[list[str]], legs: dict[str, dict]) -> None:
    seen = []
    for call in calls:
        names = sorted(legs[uid]["channel_name"] for uid in call)
        ms = names[0].split("_")[1].split("-")[0]
        assert names == [f"loopback/s7_{ms}-a", f"loopback/s7_{ms}-b",
                         f"loopback/s7b_{ms}-a", f"loopback/s7b_{ms}-b"], names
        callers = {legs[uid]["caller_id_number"] for uid in call}
        assert len(callers) == 1, callers
        seen.append((callers.pop(), ms))
    assert sorted(seen) == [(str(2000 + n), str(1000 + 500 * (n % 5))) for n in range(20)], sorted(seen)
    assert {r["hangup_cause"] for r in legs.values()} == {"NORMAL_CLEARING"}


def derive(capture: str) -> dict:
    events = flows.read_events(HERE / (capture + ".esl"))
    hangups = {e["Unique-ID"]: e for e in events if e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE"}
    assert len(hangups) == sum(e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE" for e in events), capture
    assert not any(e.get("variable_process_cdr") == "false" for e in hangups.values()), capture
    partner: dict[str, str] = {}
    dtmf: dict[str, list[str]] = {}
    fax: dict[str, dict] = {}
    for event in events:
        if event["Event-Name"] == "CHANNEL_BRIDGE":
            a, b = event["Bridge-A-Unique-ID"], event["Bridge-B-Unique-ID"]
            partner.update({a: b, b: a})
        elif event["Event-Name"] == "DTMF":
            dtmf.setdefault(event["Unique-ID"], []).append(event["DTMF-Digit"])
        elif event["Event-Name"] == "CUSTOM" and event.get("Event-Subclass", "").endswith("faxresult"):
            fax[event["Unique-ID"]] = event
    legs = {uid: leg(e, partner.get(uid), dtmf.get(uid, []), fax.get(uid)) for uid, e in hangups.items()}
    calls = [[uid for uid in group if uid in legs] for group in flows.connected(events, LINKS)]
    calls = [call for call in calls if call]
    assert sorted(map(len, calls)) == README_SIZES[capture.split("_")[0]], capture
    if capture.startswith("S7"):
        check_s7(calls, legs)
    # Calls in order of their first leg's creation, legs likewise (then by channel).
    order = {uid: (legs[uid]["created_us"], legs[uid]["channel_name"], uid) for uid in legs}
    calls = sorted((sorted(call, key=order.get) for call in calls), key=lambda call: order[call[0]])
    return {"legs": {uid: legs[uid] for call in calls for uid in call}, "interactions": calls}


def main() -> None:
    oracle = {"about": "Derived by derive_expected_cdrs.py from the raw captures; see its docstring.",
              "captures": {capture: derive(capture) for capture in CAPTURES}}
    (HERE / "expected_cdrs.json").write_text(json.dumps(oracle, indent=1) + "\n")


if __name__ == "__main__":
    main()
