"""Interaction ids a caller can choose (ingest/interactions.py): an id from a
variable FreeSWITCH filled from the INVITE's X- headers (``sip_h_*``, the
default list ends with ``sip_h_X-Call-Interaction-ID``) is taken only when a
listing would still place the call where it happened."""

from __future__ import annotations

import pytest

from eslcdr import config
from eslcdr.ingest.interactions import GREGORIAN_OFFSET, MAX_HEADER_ID_LENGTH, derive_interaction_id
from eslcdr.ingest.legs import LegTracker

CFG = config.from_mapping({"cdr": {"node_name": "fs1"}})
HEADER = "variable_sip_h_X-Call-Interaction-ID"
CREATED_US = 1_765_000_000_000_000  # 2025-12-06
CREATED_G = CREATED_US // 1_000_000 + GREGORIAN_OFFSET  # the same instant in Gregorian seconds


def _tracker() -> LegTracker:
    return LegTracker(CFG.cdr.interaction_id_vars, account_id_vars=CFG.cdr.account_id_vars)


def _hangup(call_id: str, **headers: str) -> dict:
    return {"Event-Name": "CHANNEL_HANGUP_COMPLETE", "Unique-ID": call_id,
            "Caller-Channel-Created-Time": str(CREATED_US), **headers}


@pytest.mark.parametrize("value", [
    "%011d-4f2a9c" % CREATED_G,  # the node that bridged it named it now
    "%011d-4f2a9c" % (CREATED_G - 3 * 3600),  # a call transferred to this node after 3 h
    "%011d-4f2a9c" % (CREATED_G + 60),  # the other node's clock a minute ahead
    "6b0a7c1e-2f3d-4e5a-9b8c-7d6e5f4a3b2c",  # a Unique-ID (docs/configuration.md): placed by the leg
])
def test_an_id_from_the_invite_that_places_the_call_when_it_happened_is_taken(value):
    leg = _tracker().feed(_hangup("a", **{HEADER: value}), CREATED_US)
    assert leg.interaction_id == value


@pytest.mark.parametrize("value, reason", [
    ("00000000001-0", "time"),  # listed at year 0: hidden from every listing of its day
    ("%011d-4f2a9c" % (CREATED_G - 2 * 86400), "time"),
    ("%011d-4f2a9c" % (CREATED_G + 3600), "time"),
    ("99999999999-ffff", "time"),
    ("x" * (MAX_HEADER_ID_LENGTH + 1), "length"),
    ("call\x01id", "characters"),
])
def test_an_id_from_the_invite_that_would_misplace_the_call_is_refused(value, reason):
    tracker = _tracker()
    leg = tracker.feed(_hangup("a", **{HEADER: value}), CREATED_US)
    # As if the header had not come: the id is derived from the leg.
    assert leg.interaction_id == derive_interaction_id("a", CREATED_US)
    assert [(r.call_id, r.variable, r.reason) for r in tracker.refused_ids] == [
        ("a", "sip_h_X-Call-Interaction-ID", reason)]
    assert len(tracker.refused_ids[0].value) <= 80


def test_a_refused_header_lets_the_next_variable_of_the_list_name_the_call():
    tracker = LegTracker(("sip_h_X-Call-Interaction-ID", "ecallmgr_Call-Interaction-ID"))
    leg = tracker.feed(_hangup("a", **{HEADER: "00000000001-0",
                                       "variable_ecallmgr_Call-Interaction-ID": "63902000000-77aa"}), CREATED_US)
    assert leg.interaction_id == "63902000000-77aa"


def test_a_variable_the_dialplan_sets_is_trusted_whatever_its_time():
    # Only the sip_h_ variables come from the caller; Kazoo's own
    # ecallmgr_Call-Interaction-ID is set by ecallmgr and kept as it is.
    tracker = _tracker()
    leg = tracker.feed(_hangup("a", **{"variable_ecallmgr_Call-Interaction-ID": "00000000001-0"}), CREATED_US)
    assert leg.interaction_id == "00000000001-0"
    assert tracker.refused_ids == []


def test_a_leg_refused_on_every_event_is_reported_once():
    tracker = _tracker()
    for name in ("CHANNEL_CREATE", "CHANNEL_ANSWER", "CHANNEL_HANGUP_COMPLETE"):
        tracker.feed(dict(_hangup("a", **{HEADER: "00000000001-0"}), **{"Event-Name": name}), CREATED_US)
    assert len(tracker.refused_ids) == 1
