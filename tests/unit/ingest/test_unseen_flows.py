"""Call flows the captures do not hold, built from their real 1.10.12 events.

Each flow is made of events of tests/data (S2, S5): ids, times and only the
headers FreeSWITCH's source says differ are changed (each test names the
function); nothing FreeSWITCH does not send is added.  The events go
through the real tracker and builder (test_cdr.run_capture) and the DESIGN
section 4 fields are checked.
"""

from __future__ import annotations

from eslcdr.ingest.legs import LegTracker

from tests.unit.ingest.test_cdr import run_capture

# S2(c): ``originate {originate_timeout=5}sofia/internal/s2_ring@127.0.0.1:5080
# &park()`` -- no caller leg; the far end (on this FreeSWITCH) rings and is
# cancelled after 5 s.
S2_OUT = "2a34e9f9-06f2-4d47-a3b4-ad616ecd79b3"  # sofia/internal/..., NO_ANSWER
S2_IN = "b51cc3e9-62bb-4da3-90e8-96d3bb414ee5"  # sofia/external/..., ORIGINATOR_CANCEL
S2_SIP_CALL_ID = "94617c0e-6481-1240-1998-fef378d51a2b"
# S5(a): ``originate sofia/internal/s5_dtmf@127.0.0.1:5080 s5_sender XML
# default`` -- no caller leg; both ends answered, no bridge.
S5_OUT = "ef73b69e-757e-41b9-9bd4-00711d4d78b6"
S5_IN = "03680d03-8f09-4db2-bff4-53db9cc236ee"
S5_SIP_CALL_ID = "a2515eaa-6481-1240-1998-fef378d51a2b"


def real(events, call_id: str, name: str) -> dict[str, str]:
    """A copy of the one ``name`` event of leg ``call_id``."""
    [event] = [e for e in events if e["Unique-ID"] == call_id and e["Event-Name"] == name]
    return dict(event)


def edited(event: dict[str, str], ids: dict[str, str] | None = None, **headers: str | None) -> dict[str, str]:
    """``event`` with every id of ``ids`` replaced in every value, then
    ``headers`` set (``None`` drops one)."""
    out = {}
    for name, value in event.items():
        for old, new in (ids or {}).items():
            value = value.replace(old, new)
        out[name] = value
    for name, value in headers.items():
        if value is None:
            out.pop(name, None)
        else:
            out[name] = value
    return out


# ------------------------------------------------------ early media only


def early_media_only(events_of):
    """S2(c) with 183 instead of 180: the called extension runs ``pre_answer``
    then ``sleep`` (instead of ``ring_ready``), and the originate carries
    ``ignore_early_media=true`` so that it keeps waiting for an answer (as
    S2(c) it ends NO_ANSWER after 5 s; without it the originate succeeds on
    early media, switch_ivr_originate.c check_channel_status ``early_ok``).

    switch_channel.c ``switch_channel_perform_mark_pre_answered`` stamps
    ``times->progress_media`` (never ``times->progress``), sets
    ``endpoint_disposition=EARLY MEDIA`` and fires CHANNEL_PROGRESS_MEDIA
    with ``Answer-State: early``; ``switch_channel_set_timestamps`` turns the
    times into ``progress_media_*`` / ``progress_*`` variables at hangup.
    Returns the events and each leg's 183 time (µs)."""
    events = events_of("S2_json")
    created = int(real(events, S2_OUT, "CHANNEL_CREATE")["Caller-Channel-Created-Time"])
    early = {S2_IN: created + 180_000, S2_OUT: created + 183_000}  # sent, then received

    def progress_media(call_id: str) -> dict[str, str]:
        ringing = real(events, call_id, "CHANNEL_PROGRESS")
        extra = {"variable_current_application": "pre_answer"} if call_id == S2_IN else {}
        return edited(ringing, **{
            "Event-Name": "CHANNEL_PROGRESS_MEDIA",
            "Event-Calling-Function": "switch_channel_perform_mark_pre_answered",
            "Event-Calling-Line-Number": "3560",
            "Answer-State": "early",
            "Caller-Channel-Progress-Time": "0",
            "Caller-Channel-Progress-Media-Time": str(early[call_id]),
            "variable_endpoint_disposition": "EARLY MEDIA",
        }, **extra)

    def hangup(call_id: str) -> dict[str, str]:
        after_us = early[call_id] - created
        return edited(real(events, call_id, "CHANNEL_HANGUP_COMPLETE"), **{
            "Caller-Channel-Progress-Time": "0",
            "Caller-Channel-Progress-Media-Time": str(early[call_id]),
            "variable_endpoint_disposition": "EARLY MEDIA",
            "variable_progress_stamp": None,
            "variable_progress_epoch": "0",
            "variable_progress_uepoch": "0",
            "variable_progress_media_epoch": str(early[call_id] // 1_000_000),
            "variable_progress_media_uepoch": str(early[call_id]),
            "variable_progress_mediasec": str(after_us // 1_000_000),
            "variable_progress_mediamsec": str(after_us // 1000),
            "variable_progress_mediausec": str(after_us),
        })

    out_vars = {"variable_ignore_early_media": "true"}
    flow = [
        edited(real(events, S2_OUT, "CHANNEL_CREATE"), **out_vars),
        real(events, S2_IN, "CHANNEL_CREATE"),
        progress_media(S2_IN),
        edited(progress_media(S2_OUT), **out_vars),
        edited(hangup(S2_OUT), **out_vars),
        hangup(S2_IN),
    ]
    return flow, early


def test_early_media_only_rings_from_the_183_and_bills_nothing(events_of):
    flow, early = early_media_only(events_of)
    records, tracker = run_capture(flow)
    assert set(records) == {S2_OUT, S2_IN}
    for call_id, record in records.items():
        hangup = flow[-2] if call_id == S2_OUT else flow[-1]
        hangup_us = int(hangup["Caller-Channel-Hangup-Time"])
        created_us = int(hangup["Caller-Channel-Created-Time"])
        assert record["answered_us"] == 0
        assert record["billing_seconds"] == 0
        # DESIGN: ringing from -Progress-Media-Time when -Progress-Time is 0,
        # to the hangup (never answered); pdd: created to the first stage.
        assert record["ringing_seconds"] == (hangup_us - early[call_id]) // 1_000_000
        assert record["pdd_ms"] == (early[call_id] - created_us) // 1000
        assert record["duration_seconds"] == int(hangup["variable_duration"])
    # The caller-less originate side cancels, the called side was cancelled.
    assert {c: (r["hangup_cause"], r["hangup_code"], r["disposition"]) for c, r in records.items()} == {
        S2_OUT: ("NO_ANSWER", None, "send_cancel"),
        S2_IN: ("ORIGINATOR_CANCEL", "sip:487", "recv_cancel"),
    }
    assert records[S2_OUT]["interaction_id"] == records[S2_IN]["interaction_id"]
    assert records[S2_OUT]["other_leg_call_id"] is None and records[S2_IN]["other_leg_call_id"] is None
    assert tracker.merges == []


def test_early_media_legs_are_live_as_early_never_answered(events_of):
    flow, _ = early_media_only(events_of)
    tracker = LegTracker()
    for n, event in enumerate(flow[:4]):
        tracker.feed(event, 1_000_000 + n)
    assert {leg.call_id: (leg.state, leg.answered, leg.answered_us) for leg in tracker.live_legs()} == {
        S2_OUT: ("EARLY", False, 0), S2_IN: ("EARLY", False, 0)}


# ------------------------------------- legs FreeSWITCH links to nothing


def uid(n: int) -> str:
    return "5eed0000-0000-4000-8000-%012d" % n


def sip_call_id(n: int) -> str:
    return "c0ffee00-%04d-1240-1998-fef378d51a2b" % n


def answered_alone(events, template: str, n: int, **variables: str) -> list[dict[str, str]]:
    """The CREATE, early media, ANSWER and HANGUP_COMPLETE of one S5(a) leg
    (its DTMF left out) as leg ``uid(n)`` with its own SIP Call-ID (its far
    end is another host), the hangup carrying ``variables``."""
    ids = {template: uid(n), S5_SIP_CALL_ID: sip_call_id(n)}
    names = ("CHANNEL_CREATE", "CHANNEL_PROGRESS_MEDIA", "CHANNEL_ANSWER", "CHANNEL_HANGUP_COMPLETE")
    legs = [edited(e, ids) for e in events if e["Unique-ID"] == template and e["Event-Name"] in names]
    legs[-1] = edited(legs[-1], **variables)
    return legs


def in_conference(member_id: int) -> dict[str, str]:
    """What mod_conference leaves on a member's channel (conference_member.c
    ``conference_member_add``: conference_member_id, _moderator, _ghost;
    mod_conference.c ``conference_function``: conference_name) -- no link to
    any other member: a conference is not a bridge."""
    return {
        "variable_current_application": "conference",
        "variable_current_application_data": "room@default",
        "variable_last_app": "conference",
        "variable_last_arg": "room@default",
        "variable_conference_name": "room",
        "variable_conference_member_id": str(member_id),
        "variable_conference_moderator": "false",
        "variable_conference_ghost": "false",
    }


def test_conference_members_dial_outs_and_eavesdroppers_are_calls_of_their_own(events_of):
    """Three callers join one conference, the conference dials a fourth
    (``conference room dial sofia/...``: mod_conference.c
    ``conference_outcall`` calls ``switch_ivr_originate`` with no session, so
    the leg gets no ``originating_leg_uuid`` -- switch_ivr_originate.c sets it
    only ``if (a_session)``), and a supervisor's leg ``eavesdrop``s on the
    first caller (switch_ivr_async.c ``switch_ivr_eavesdrop_session``: a media
    bug on the target, no CHANNEL_BRIDGE, no link variable).  FreeSWITCH links
    none of these legs to another, and Kazoo does not either: each inbound
    call gets its own Call-Interaction-ID (ecallmgr ``route_req_ccvs``), a
    conference dial request a new one (ecallmgr_fs_conferences_shared.erl
    ``exec_dial``: ``?CALL_INTERACTION_DEFAULT``).  So each leg is a call:
    five ids, no partner; the conference name, or the eavesdropped uuid in
    ``current_application_data``, joins nothing."""
    events = events_of("S5_json")
    flow = []
    for member in (1, 2, 3):
        flow += answered_alone(events, S5_IN, member, **in_conference(member))
    flow += answered_alone(events, S5_OUT, 4, **in_conference(4) | {"variable_current_application_data": "room"})
    flow += answered_alone(events, S5_OUT, 5, variable_current_application="eavesdrop",
                           variable_current_application_data=uid(1), variable_last_app="eavesdrop",
                           variable_last_arg=uid(1))
    flow.sort(key=lambda e: int(e["Event-Sequence"]))
    records, tracker = run_capture(flow)
    assert set(records) == {uid(n) for n in range(1, 6)}
    assert len({r["interaction_id"] for r in records.values()}) == 5
    assert {r["other_leg_call_id"] for r in records.values()} == {None}
    assert {r["hangup_cause"] for r in records.values()} == {"NORMAL_CLEARING"}
    assert [records[uid(n)]["call_direction"] for n in range(1, 6)] == ["inbound"] * 3 + ["outbound"] * 2
    assert tracker.merges == []
