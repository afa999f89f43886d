"""The stand-in's generated calls carry RTP quality as FreeSWITCH reports it:
per answered SIP leg, consistent counters, MOS from the quality percentage,
some lossy legs, some answered legs that received no RTP at all."""

from __future__ import annotations

from collections import Counter

from eslcdr.events import JSON, PLAIN, decode_event
from eslcdr.fakefs import GeneratedSource
from eslcdr.fakefs.quality import MOS_LOW, mos_of
from eslcdr.frames import Frame


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
        elif mos < MOS_LOW:
            kinds["bad"] += 1
            assert float(get("variable_rtp_audio_in_jitter_max_variance")) >= 25
        else:
            kinds["good"] += 1
    assert kinds["no_rtp"] >= 3 and kinds["bad"] >= 5 and kinds["good"] > kinds["bad"] + kinds["no_rtp"]
    assert codecs["PCMU"] > codecs["PCMA"] > 0
    assert len(remote) > 0.9 * sum(kinds.values())


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
