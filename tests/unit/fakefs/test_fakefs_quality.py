"""The stand-in's generated calls carry RTP quality as FreeSWITCH reports it:
per answered SIP leg, consistent counters, MOS from the quality percentage,
some lossy legs, some answered legs that received no RTP at all."""

from __future__ import annotations

import pytest
from collections import Counter

from eslcdr.esl.events import JSON, PLAIN, decode_event
from eslcdr.fakefs import GeneratedSource
from eslcdr.fakefs.quality import mos_of
from eslcdr.esl.frames import Frame
from eslcdr.store.schema import LOW_MOS  # the KPI's low MOS: the lossy legs are counted as such


def hangups(calls: int = 400, seed: int = 3) -> list[dict]:
    return [e.event() for e in GeneratedSource(calls=calls, seed=seed)
            if e.template.event_id == "CHANNEL_HANGUP_COMPLETE"]


def test_answered_sip_legs_have_consistent_rtp_figures():
    kinds: Counter = Counter()
    codecs: Counter = Counter()
    remote = set()
    for event in hangups():
        if "variable_rtp_audio_in_mos" not in event:
            continue  # loopback legs: no RTP session
        get = event.get
        media = int(get("variable_rtp_audio_in_media_packet_count"))
        packets = int(get("variable_rtp_audio_in_packet_count"))
        mos = float(get("variable_rtp_audio_in_mos"))
        quality = float(get("variable_rtp_audio_in_quality_percentage"))
        flaws = int(get("variable_rtp_audio_in_flaw_total"))
        billsec = int(get("variable_billsec"))
        ptime = int(get("variable_rtp_use_codec_ptime"))
        out = int(get("variable_rtp_audio_out_packet_count"))
        assert media == packets and 0 <= flaws <= max(media, 0)
        assert abs(mos - round(mos_of(quality), 2)) <= 0.011
        assert billsec * 1000 // ptime <= out <= billsec * 1000 // ptime + 3
        assert int(get("variable_rtp_audio_in_raw_bytes")) == media * 172
        codec = get("variable_rtp_use_codec_name")
        assert codec in ("PCMU", "PCMA")
        assert get("variable_read_codec") == get("Channel-Read-Codec-Name") == codec
        assert get("variable_rtp_use_pt") == {"PCMU": "0", "PCMA": "8"}[codec]
        codecs[codec] += 1
        remote.add((get("variable_remote_media_ip"), get("variable_remote_media_port")))
        assert int(get("variable_remote_media_port")) % 2 == 0
        if media == 0:
            kinds["no_rtp"] += 1
            assert mos == 4.5 and quality == 100.0  # what FreeSWITCH says when nothing came
        elif mos < LOW_MOS:
            kinds["bad"] += 1
            assert float(get("variable_rtp_audio_in_jitter_max_variance")) >= 25
        else:
            kinds["good"] += 1
    assert kinds["no_rtp"] >= 3 and kinds["bad"] >= 5 and kinds["good"] > kinds["bad"] + kinds["no_rtp"]
    assert codecs["PCMU"] > codecs["PCMA"] > 0
    assert len(remote) > 0.9 * sum(kinds.values())


@pytest.mark.slow
def test_quality_is_deterministic_and_the_same_in_both_formats():
    first = [e.get("variable_rtp_audio_in_mos") for e in hangups(60, seed=9)]
    assert first == [e.get("variable_rtp_audio_in_mos") for e in hangups(60, seed=9)]
    assert first != [e.get("variable_rtp_audio_in_mos") for e in hangups(60, seed=10)]
    for emission in GeneratedSource(calls=40, seed=9):
        if emission.template.event_id != "CHANNEL_HANGUP_COMPLETE":
            continue
        plain = decode_event(Frame({"Content-Type": PLAIN}, emission.body(PLAIN)))
        as_json = decode_event(Frame({"Content-Type": JSON}, emission.body(JSON)))
        assert plain == as_json


def outbound_pdd_ms(**options) -> list[int]:
    pdds = []
    for event in hangups_of(**options):
        progress = int(event.get("Caller-Channel-Progress-Time") or 0) or int(
            event.get("Caller-Channel-Progress-Media-Time") or 0)
        if progress and event["Call-Direction"] == "outbound":
            pdds.append((progress - int(event["Caller-Channel-Created-Time"])) // 1000)
    return pdds


def hangups_of(**options) -> list[dict]:
    return [e.event() for e in GeneratedSource(**options) if e.template.event_id == "CHANNEL_HANGUP_COMPLETE"]


@pytest.mark.slow
def test_post_dial_delay_varies_pdd_and_keeps_times_consistent():
    plain = outbound_pdd_ms(calls=200, seed=2)
    delayed = outbound_pdd_ms(calls=200, seed=2, post_dial_delay=True)
    assert max(plain) < 1000  # the captures ring at once
    assert len(delayed) == len(plain) and max(delayed) >= 6000
    assert sum(1 for p in delayed if p >= 1000) > len(delayed) // 3
    for event in hangups_of(calls=200, seed=2, post_dial_delay=True):
        created = int(event["Caller-Channel-Created-Time"])
        answered = int(event["Caller-Channel-Answered-Time"])
        hangup = int(event["Caller-Channel-Hangup-Time"])
        assert created <= hangup and (answered == 0 or created <= answered <= hangup)
        assert int(event["variable_duration"]) == int(event["variable_end_epoch"]) - int(event["variable_start_epoch"])
        assert int(event["variable_start_epoch"]) == created // 1_000_000
