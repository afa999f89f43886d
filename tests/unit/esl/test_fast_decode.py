"""The fast event decoder against the reference one (issue 9).

``EventDecoder`` keeps only the tracker's headers of light events and decodes
the rest whole with a typed decoder; ``decode_event`` is the slow, obvious
reference.  Every capture (the JSON ones as recorded, the plain ones
re-encoded as JSON) goes through both: the light events must keep exactly
the reference values of the headers they keep, the others must be equal
whole, and the CDRs built from either must be identical.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eslcdr import config
from eslcdr.ingest.cdr import CdrBuilder, should_record
from eslcdr.esl.events import JSON, LIGHT_EVENTS, EventDecoder, decode_event, encode_json
from eslcdr.esl.frames import Frame
from eslcdr.ingest.legs import BRIEF_EVENTS, BRIEF_HEADERS, TRACKED_HEADERS, LegTracker

from tests.conftest import CAPTURES, capture_frames

CFG = config.from_mapping({"cdr": {"node_name": "fs1"}})
TRACKER = LegTracker(CFG.cdr.interaction_id_vars)
FAST = EventDecoder(TRACKER.headers_read)
REFERENCE = EventDecoder(fast=False)


def json_frames(capture: str) -> list[Frame]:
    """The capture's event frames as FreeSWITCH would send them in JSON."""
    frames = []
    for frame in capture_frames(capture):
        if frame.content_type == JSON:
            frames.append(frame)
        elif frame.content_type == "text/event-plain":
            body = encode_json(decode_event(frame))
            frames.append(Frame({"Content-Type": JSON, "Content-Length": str(len(body))}, body))
    return frames


def expected_view(reference: dict) -> dict:
    if reference.get("Event-Name") in LIGHT_EVENTS:
        return {name: reference[name] for name in FAST.light_headers if name in reference}
    return reference


@pytest.mark.parametrize("capture", CAPTURES)
def test_fast_decoder_keeps_reference_values(capture):
    frames = json_frames(capture)
    assert frames
    light = 0
    for frame in frames:
        reference = REFERENCE.decode(frame)
        fast = FAST.decode(frame)
        assert fast == expected_view(reference)
        light += reference.get("Event-Name") in LIGHT_EVENTS
    assert light > 0


def build_all(events) -> tuple[dict, list, list]:
    """CDRs, merges, and the live view after every event (what the
    channels route would show at that moment)."""
    tracker = LegTracker(CFG.cdr.interaction_id_vars)
    builder = CdrBuilder(CFG.cdr, "fs1")
    records = {}
    views = []
    for n, event in enumerate(events):
        finished = tracker.feed(event, 1_000_000 * n)
        if finished is not None and should_record(finished.hangup):
            records[finished.hangup["Unique-ID"]] = builder.build(finished)
        views.append(tracker.live_legs())
    return records, tracker.merges, views


@pytest.mark.parametrize("capture", CAPTURES)
def test_same_cdrs_through_fast_and_reference_paths(capture):
    frames = json_frames(capture)
    reference = build_all(REFERENCE.decode(f) for f in frames)
    fast = build_all(FAST.decode(f) for f in frames)
    assert reference[0]
    assert any(reference[2])
    assert fast == reference


def test_light_events_really_are_light():
    frames = json_frames("S1_json.esl")
    create = next(f for f in frames if b'"CHANNEL_CREATE"' in f.body[:40])
    event = FAST.decode(create)
    assert set(event) <= set(TRACKER.headers_read)
    assert len(REFERENCE.decode(create)) > 3 * len(event)


def test_configured_interaction_variable_is_kept():
    cfg = config.from_mapping({"cdr": {"interaction_id_vars": "my_call_key"}})
    decoder = EventDecoder(LegTracker(cfg.cdr.interaction_id_vars).headers_read)
    body = json.dumps({"Event-Name": "CHANNEL_ANSWER", "Unique-ID": "u1", "variable_my_call_key": "k-1",
                       "variable_other": "x"}).encode()
    assert decoder.decode(Frame({"Content-Type": JSON}, body)) == {
        "Event-Name": "CHANNEL_ANSWER", "Unique-ID": "u1", "variable_my_call_key": "k-1"}


def frame_of(body: bytes) -> Frame:
    return Frame({"Content-Type": JSON, "Content-Length": str(len(body))}, body)


def test_array_variables_on_light_and_whole_events():
    for name in ("CHANNEL_BRIDGE", "CHANNEL_HANGUP_COMPLETE"):
        body = json.dumps({"Event-Name": name, "Unique-ID": "u1",
                           "variable_originated_legs": ["a;x;1", "b;y;2"]}).encode()
        assert FAST.decode(frame_of(body))["variable_originated_legs"] == "ARRAY::a;x;1|:b;y;2"


def test_bytes_that_are_not_utf8_fall_back_to_the_reference():
    body = b'{"Event-Name":"CHANNEL_CREATE","Unique-ID":"u\xff1","Caller-Caller-ID-Name":"\xfe","x":"\xfd"}'
    assert FAST.decode(frame_of(body)) == {"Event-Name": "CHANNEL_CREATE", "Unique-ID": "u\ufffd1",
                                           "Caller-Caller-ID-Name": "\ufffd"}


def test_duplicate_keys_keep_the_last_value_as_the_reference():
    body = b'{"Event-Name":"CHANNEL_HANGUP_COMPLETE","Hangup-Cause":"A","Hangup-Cause":"B","Unique-ID":"u"}'
    assert FAST.decode(frame_of(body)) == REFERENCE.decode(frame_of(body))
    light = b'{"Event-Name":"CHANNEL_ANSWER","Unique-ID":"a","Unique-ID":"b"}'
    assert FAST.decode(frame_of(light)) == REFERENCE.decode(frame_of(light))


json_values = st.one_of(
    st.text(max_size=20),
    st.lists(st.text(max_size=8), max_size=3),
    st.integers(),
    st.none(),
    st.booleans(),
)
header_names = st.one_of(st.sampled_from(TRACKED_HEADERS), st.text(min_size=1, max_size=12))


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sorted(LIGHT_EVENTS) + ["CHANNEL_HANGUP_COMPLETE", "CUSTOM", "HEARTBEAT"]),
    st.dictionaries(header_names, json_values, max_size=12),
)
def test_any_event_decodes_as_the_reference_keeps_it(name, headers):
    headers["Event-Name"] = name
    frame = frame_of(json.dumps(headers).encode())
    assert FAST.decode(frame) == expected_view(REFERENCE.decode(frame))


class _Recording(dict):
    """An event that notes every header name read from it."""

    reads: set[str] = set()

    def get(self, key, default=None):
        _Recording.reads.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        _Recording.reads.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        _Recording.reads.add(key)
        return super().__contains__(key)


@pytest.mark.parametrize("capture", ["S1_json.esl", "S5_json.esl", "S6_json.esl", "S7_json.esl"])
def test_tracker_reads_no_header_of_a_light_event_that_the_decoder_drops(capture):
    # Whoever makes the tracker read a new header must list it in
    # TRACKED_HEADERS, or the fast path silently loses it.
    tracker = LegTracker(CFG.cdr.interaction_id_vars)
    _Recording.reads = set()
    for n, frame in enumerate(json_frames(capture)):
        event = REFERENCE.decode(frame)
        if event.get("Event-Name") in LIGHT_EVENTS:
            tracker.feed(_Recording(event), 1_000_000 * n)
        else:
            tracker.feed(event, 1_000_000 * n)
    assert _Recording.reads
    assert _Recording.reads <= set(tracker.headers_read)


def brief_decoder(tracker: LegTracker) -> EventDecoder:
    return EventDecoder(tracker.headers_read, brief_events=BRIEF_EVENTS, brief_headers=BRIEF_HEADERS,
                        known=tracker.knows)


@pytest.mark.parametrize("capture", CAPTURES)
def test_same_cdrs_with_brief_events_decoded_for_the_tracker(capture):
    # As the daemon wires it: the decoder asks the tracker that is fed.
    frames = json_frames(capture)
    tracker = LegTracker(CFG.cdr.interaction_id_vars)
    decoder = brief_decoder(tracker)
    events = []
    for n, frame in enumerate(frames):
        event = decoder.decode(frame)
        tracker.feed(event, 1_000_000 * n)
        events.append(event)
    assert build_all(events) == build_all(REFERENCE.decode(f) for f in frames)
    if capture in ("S1_json.esl", "S5_json.esl"):  # progress and DTMF of legs it follows
        assert decoder.brief_decoded > 0


def test_a_brief_event_keeps_the_brief_headers_only_for_a_known_leg():
    frames = json_frames("S5_json.esl")
    dtmf = next(f for f in frames if b'"DTMF"' in f.body[:40])
    reference = REFERENCE.decode(dtmf)
    known = EventDecoder(TRACKER.headers_read, brief_events=BRIEF_EVENTS, brief_headers=BRIEF_HEADERS,
                         known=lambda call_id: call_id == reference["Unique-ID"])
    assert known.decode(dtmf) == {name: reference[name] for name in BRIEF_HEADERS if name in reference}
    assert known.decode(dtmf)["DTMF-Digit"] == reference["DTMF-Digit"]
    unknown = EventDecoder(TRACKER.headers_read, brief_events=BRIEF_EVENTS, brief_headers=BRIEF_HEADERS,
                           known=lambda call_id: False)
    assert unknown.decode(dtmf) == expected_view(reference)
    answer = next(f for f in frames if b'"CHANNEL_ANSWER"' in f.body[:40])
    assert known.decode(answer) == expected_view(REFERENCE.decode(answer))


@pytest.mark.parametrize("capture", ["S1_json.esl", "S5_json.esl", "S7_json.esl"])
def test_tracker_reads_only_brief_headers_of_brief_events_of_a_known_leg(capture):
    tracker = LegTracker(CFG.cdr.interaction_id_vars)
    _Recording.reads = set()
    recorded = 0
    for n, frame in enumerate(json_frames(capture)):
        event = REFERENCE.decode(frame)
        if event.get("Event-Name") in BRIEF_EVENTS and tracker.knows(event.get("Unique-ID", "")):
            tracker.feed(_Recording(event), 1_000_000 * n)
            recorded += 1
        else:
            tracker.feed(event, 1_000_000 * n)
    assert recorded
    assert _Recording.reads <= set(BRIEF_HEADERS)


def test_nul_in_a_kept_value_of_a_light_or_brief_event_is_replaced():
    # NUL is looked for in the values kept, not in the body: a dropped
    # header holding one changes nothing, a kept one is replaced as the
    # reference does.
    decoder = EventDecoder(TRACKER.headers_read, brief_events=BRIEF_EVENTS, brief_headers=BRIEF_HEADERS,
                           known=lambda call_id: True)
    light = json.dumps({"Event-Name": "CHANNEL_ANSWER", "Unique-ID": "u1", "Caller-Caller-ID-Name": "A\x00l",
                        "Core-UUID": "c\x00"}).encode()
    brief = json.dumps({"Event-Name": "DTMF", "Unique-ID": "u1", "DTMF-Digit": "\x00", "Core-UUID": "c"}).encode()
    dropped = json.dumps({"Event-Name": "DTMF", "Unique-ID": "u1", "DTMF-Digit": "5", "Core-UUID": "c\x00"}).encode()
    assert b"\\u0000" in light and b"\\u0000" in brief
    assert decoder.decode(frame_of(light)) == {"Event-Name": "CHANNEL_ANSWER", "Unique-ID": "u1",
                                               "Caller-Caller-ID-Name": "A\ufffdl"}
    assert decoder.decode(frame_of(brief))["DTMF-Digit"] == "\ufffd"
    assert decoder.decode(frame_of(dropped)) == {"Event-Name": "DTMF", "Unique-ID": "u1", "DTMF-Digit": "5"}
