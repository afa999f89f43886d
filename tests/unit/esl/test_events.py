"""Event decoding: plain and JSON, lossless, tolerant of bad bytes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eslcdr.esl.events import (
    EventDecodeError,
    decode_event,
    decode_json,
    decode_plain,
    encode_json,
    encode_plain,
    event_name,
)
from eslcdr.esl.frames import Frame

from tests.conftest import SCENARIOS

# Headers whose values do not depend on ids, clocks or ports of one run.
STABLE = (
    "Event-Name",
    "Channel-Name",
    "Call-Direction",
    "Caller-Caller-ID-Number",
    "Caller-Caller-ID-Name",
    "Caller-Destination-Number",
    "Hangup-Cause",
    "variable_hangup_cause",
    "variable_sip_h_X-Account-ID",
    "variable_sip_h_X-Tenant",
    "DTMF-Digit",
    "variable_fax_success",
    "variable_fax_document_total_pages",
    "variable_fax_result_text",
    "variable_DP_MATCH",
    "Event-Subclass",
    "FreeSWITCH-IPv6",
)


def stable_view(events):
    view = [tuple((h, e.get(h)) for h in STABLE) for e in events]
    return sorted(view, key=repr)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_plain_and_json_captures_decode_to_same_values(events_of, scenario):
    # Two executions of one scenario: ids and clocks differ, the rest agrees.
    plain = events_of(scenario + "_plain")
    as_json = events_of(scenario + "_json")
    assert len(plain) == len(as_json)
    assert set().union(*map(set, plain)) == set().union(*map(set, as_json))
    if scenario != "S7":  # the burst's 20 calls interleave differently per run
        assert stable_view(plain) == stable_view(as_json)
    else:
        assert sorted(e["Event-Name"] for e in plain) == sorted(e["Event-Name"] for e in as_json)


def test_percent_decoding_after_line_split_keeps_sdp_newlines(events_of):
    hangups = [e for e in events_of("S4_plain") if e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE"]
    sdps = [e["variable_rtp_local_sdp_str"] for e in hangups if "variable_rtp_local_sdp_str" in e]
    assert sdps
    for sdp in sdps:
        assert sdp.startswith("v=0\r\no=FreeSWITCH")
        assert "\r\nm=audio " in sdp


def test_plain_values_percent_decoded(events_of):
    first = events_of("S1_plain")[0]
    assert first["FreeSWITCH-IPv6"] == "fd00::2"
    assert first["Caller-Callee-ID-Name"] == "Outbound Call"


def test_json_array_variables_match_plain_form(events_of):
    plain = {e["variable_DP_MATCH"] for e in events_of("S7_plain") if "variable_DP_MATCH" in e}
    as_json = {e["variable_DP_MATCH"] for e in events_of("S7_json") if "variable_DP_MATCH" in e}
    assert plain and plain == as_json
    assert all(v.startswith("ARRAY::") for v in as_json)


def test_repeated_header_keeps_value(events_of):
    hangup = next(e for e in events_of("S1_plain") if e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE")
    assert hangup["Hangup-Cause"] == "NORMAL_CLEARING"


def test_plain_event_with_body(events_of):
    job = next(e for e in events_of("S1_all_plain") if e["Event-Name"] == "BACKGROUND_JOB")
    assert job["_body"] == "+OK eb92a79c-874b-4f79-9d96-34adfc846d06\n"
    assert job["Job-Command"] == "originate"


def test_json_event_with_body():
    body = b'{"Event-Name":"CUSTOM","Event-Subclass":"sms::recv","Content-Length":"5","_body":"hello"}'
    event = decode_json(body)
    assert event["_body"] == "hello"
    assert event_name(event) == "sms::recv"


def test_fax_custom_event_name(events_of):
    names = {event_name(e) for e in events_of("S6_json")}
    assert {"spandsp::txfaxresult", "spandsp::rxfaxresult"} <= names


def test_non_utf8_bytes_replaced_not_fatal():
    plain = decode_plain(b"Event-Name: CHANNEL_CREATE\nCaller-Caller-ID-Name: Jos\xe9\n\n")
    assert plain["Caller-Caller-ID-Name"] == "Jos\ufffd"
    encoded = decode_plain(b"Event-Name: X\nName: Jos%E9\n\n")
    assert encoded["Name"] == "Jos\ufffd"
    js = decode_json(b'{"Event-Name":"CHANNEL_CREATE","Caller-Caller-ID-Name":"Jos\xe9"}')
    assert js["Caller-Caller-ID-Name"] == "Jos\ufffd"


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[1,2,3]", b'"just a string"', b"\xff\xfe"],
)
def test_bad_json_bodies_raise_decode_error(body):
    with pytest.raises(EventDecodeError):
        decode_json(body)


def test_plain_line_without_name_raises_decode_error():
    with pytest.raises(EventDecodeError):
        decode_plain(b"Event-Name: X\njunk line\n\n")


def test_non_string_json_values_become_strings():
    event = decode_json(b'{"Event-Name":"X","n":5,"t":true,"z":null,"a":["x","y"]}')
    assert event == {"Event-Name": "X", "n": "5", "t": "True", "z": "", "a": "ARRAY::x|:y"}


def test_decode_event_rejects_non_event_frames():
    with pytest.raises(EventDecodeError):
        decode_event(Frame({"Content-Type": "command/reply"}))


@pytest.mark.parametrize("scenario", ["S1_plain", "S4_json", "S6_plain", "S1_all_plain"])
def test_encoders_round_trip(events_of, scenario):
    for event in events_of(scenario):
        assert decode_plain(encode_plain(event)) == event
        assert decode_json(encode_json(event)) == event


header_names = st.text(st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters=":"), min_size=1, max_size=20)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(header_names, st.text(max_size=50), min_size=1, max_size=10))
def test_any_values_round_trip_through_plain(values):
    event = {"Event-Name": "CUSTOM", **values}
    event.pop("_body", None)
    event.pop("Content-Length", None)
    # NUL, the one character no text column takes, comes back as U+FFFD.
    assert decode_plain(encode_plain(event)) == {k: v.replace("\x00", "\ufffd") for k, v in event.items()}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=500))
def test_random_bodies_decode_or_raise_decode_error(body):
    for decoder in (decode_plain, decode_json):
        try:
            event = decoder(body)
        except EventDecodeError:
            continue
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in event.items())


# ------------------------------------------------------------------ NUL

NUL_HEADERS = {
    "variable_origination_caller_id_name": "Al\x00ice",  # the caller name
    "variable_sip_h_X-Tenant": "t\x00enant",  # an X- header
    "variable_ecallmgr_Note": "n\x00ote",  # a custom channel variable
    "variable_ecallmgr_Bad\x00Key": "v\x00",  # ... with a NUL in its name
}


def with_nuls(events):
    return [dict(e, **NUL_HEADERS) for e in events]


def nul_free(value) -> bool:
    if isinstance(value, dict):
        return all(nul_free(k) and nul_free(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(map(nul_free, value))
    return not isinstance(value, str) or ("\x00" not in value and "\\u0000" not in value)


def records_of(events, decode):
    from eslcdr.ingest.cdr import CdrBuilder
    from eslcdr.config import from_mapping
    from eslcdr.ingest.legs import LegTracker

    tracker, builder = LegTracker(), CdrBuilder(from_mapping({}).cdr, "fs1")
    records = []
    for event in events:
        leg = tracker.feed(decode(event), int(event.get("Event-Date-Timestamp") or 0))
        if leg is not None:
            records.append(builder.build(leg))
    return records


def frame_decoders():
    from eslcdr.esl.events import JSON, PLAIN, EventDecoder
    from eslcdr.ingest.legs import TRACKED_HEADERS

    fast, reference = EventDecoder(TRACKED_HEADERS), EventDecoder(fast=False)
    return {
        "plain": lambda e: reference.decode(Frame({"Content-Type": PLAIN}, encode_plain(e))),
        "json": lambda e: reference.decode(Frame({"Content-Type": JSON}, encode_json(e))),
        "json-fast": lambda e: fast.decode(Frame({"Content-Type": JSON}, encode_json(e))),
    }


@pytest.mark.parametrize("path", ["plain", "json", "json-fast"])
def test_nul_in_a_value_or_name_becomes_u_fffd_when_decoded(events_of, path):
    from eslcdr.store.db import record_row

    events = with_nuls(events_of("S1_json"))
    # The encoders write it as FreeSWITCH does: %00 in plain, \u0000 in JSON.
    assert b"%00" in encode_plain(events[0]) and b"\\u0000" in encode_json(events[0])
    records = records_of(events, frame_decoders()[path])
    assert len(records) == 4
    for record in records:
        assert nul_free(record), record
        assert nul_free(record_row(record))  # the JSON columns' text too
        assert record["caller_id_name"] == "Al\ufffdice"
        assert record["custom_sip_headers"]["x_tenant"] == "t\ufffdenant"
        assert record["custom_channel_vars"]["note"] == "n\ufffdote"
        assert record["custom_channel_vars"]["bad\ufffdkey"] == "v\ufffd"


def test_nul_in_a_json_cdr_file_becomes_u_fffd(tmp_path):
    import json

    from eslcdr.service.importer import parse_json_cdr

    from tests.conftest import DATA

    path = sorted((DATA / "json_cdr" / "J_json").glob("*.cdr.json"))[0]
    data = json.loads(path.read_text())
    data["variables"].update({"sip_h_X-Tenant": "t\x00enant", "ecallmgr_Note": "n%00ote"})  # raw, and encode-values
    event, _ = parse_json_cdr(json.dumps(data).encode())
    assert event["variable_sip_h_X-Tenant"] == "t\ufffdenant"
    assert event["variable_ecallmgr_Note"] == "n\ufffdote"
    assert nul_free(event)


def test_postgresql_takes_the_record_of_a_value_that_held_nul(events_of, pg_dsn):
    # What the collector does with a row: text columns and jsonb.  Without
    # the replacement PostgreSQL refuses both (the control below).
    import psycopg

    from eslcdr.store.schema import JSON_COLUMNS, RECORD_COLUMNS
    from eslcdr.store.db import record_row

    events = with_nuls(events_of("S1_json"))
    records = records_of(events, frame_decoders()["plain"])
    with psycopg.connect(pg_dsn) as conn:
        for record in records:
            for name, value in zip(RECORD_COLUMNS, record_row(record)):
                if isinstance(value, str):
                    cast = "jsonb" if name in JSON_COLUMNS else "text"
                    assert conn.execute("SELECT %%s::%s" % cast, (value,)).fetchone()[0] is not None
        with pytest.raises(psycopg.DataError):
            conn.execute("SELECT %s::text", ("Al\x00ice",))
        conn.rollback()
        with pytest.raises(psycopg.DataError):
            conn.execute("SELECT %s::jsonb", (json.dumps({"note": "n\x00ote"}),))
