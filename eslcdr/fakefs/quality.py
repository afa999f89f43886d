"""RTP quality of generated calls: per leg, what FreeSWITCH's ``switch_rtp``
reports at hangup, drawn per call so the quality columns and the /ui page
have something to show.

The answered SIP legs of the call templates carry the ``rtp_audio_in_*`` /
``rtp_audio_out_*`` variables, the codec and the remote media address of the
capture they come from.  :func:`rtp_finder` cuts those values out as
``SLOT_RTP`` slots (one per leg and variable, so a leg's values stay consistent
across its events); :func:`draw_quality` fills them for one call from its
own RNG: most legs good, some lossy (MOS below the KPIs' ``LOW_MOS``), some answered legs
that received no RTP at all (FreeSWITCH then still says MOS 4.50 and
quality 100: it counts flaws among packets received, and there were none).
FreeSWITCH's formulas: ``mos_of``.
"""

from __future__ import annotations

import random

from .slots import SLOT_RTP, Finder

# Variables slotted per leg, with their codes in the slot ref.
RTP_VARIABLES = (
    "variable_rtp_audio_in_raw_bytes",
    "variable_rtp_audio_in_media_bytes",
    "variable_rtp_audio_in_packet_count",
    "variable_rtp_audio_in_media_packet_count",
    "variable_rtp_audio_in_skip_packet_count",
    "variable_rtp_audio_in_jitter_packet_count",
    "variable_rtp_audio_in_flush_packet_count",
    "variable_rtp_audio_in_jitter_min_variance",
    "variable_rtp_audio_in_jitter_max_variance",
    "variable_rtp_audio_in_jitter_loss_rate",
    "variable_rtp_audio_in_jitter_burst_rate",
    "variable_rtp_audio_in_mean_interval",
    "variable_rtp_audio_in_flaw_total",
    "variable_rtp_audio_in_quality_percentage",
    "variable_rtp_audio_in_mos",
    "variable_rtp_audio_out_raw_bytes",
    "variable_rtp_audio_out_media_bytes",
    "variable_rtp_audio_out_packet_count",
    "variable_rtp_audio_out_media_packet_count",
    "variable_remote_media_ip",
    "variable_remote_media_port",
    # the codec (per call: both ends of a SIP call agree on it)
    "variable_rtp_use_codec_name",
    "variable_read_codec",
    "variable_write_codec",
    "variable_original_read_codec",
    "Channel-Read-Codec-Name",
    "Channel-Write-Codec-Name",
    "variable_rtp_use_pt",
    "variable_rtp_audio_recv_pt",
    "variable_rtp_last_audio_codec_string",
)
_CODE = {name: code for code, name in enumerate(RTP_VARIABLES)}
_STRIDE = 64
_CODECS = (("PCMU", "0"), ("PCMA", "8"))
# Share of answered SIP legs that are lossy / that receive no RTP at all.
BAD_SHARE = 0.15
NO_RTP_SHARE = 0.08


def rtp_legs(events: list[dict]) -> dict[str, int]:
    """Unique-ID -> leg number, for legs whose hangup reports RTP stats."""
    legs: dict[str, int] = {}
    for event in events:
        if event.get("Event-Name") == "CHANNEL_HANGUP_COMPLETE" and \
                "variable_rtp_audio_in_packet_count" in event:
            legs.setdefault(event["Unique-ID"], len(legs))
    return legs


def rtp_finder(legs: dict[str, int]) -> Finder:
    def find(header: str, value: str, event: dict):
        code = _CODE.get(header)
        if code is None or not value:
            return ()
        leg = legs.get(event.get("Unique-ID", ""))
        if leg is None:
            return ()
        return ((0, len(value), SLOT_RTP, leg * _STRIDE + code),)

    return find


def mos_of(r: float) -> float:
    """FreeSWITCH's MOS of a leg (switch_rtp.c): ``quality_percentage`` R is the
    share of received packets without a flaw (lost or late), ``mos`` = 1 +
    0.035 R + 7e-6 R (R - 60) (100 - R), so a clean leg has 4.50.
    ``largest_jb_size`` is always 0 (a FreeSWITCH bug), ``jitter_*_rate`` are
    unbounded ratios.
    """
    return 1 + 0.035 * r + 0.000007 * r * (r - 60) * (100 - r)


def _leg_stats(rng: random.Random, talk_s: int, ptime: int) -> dict[str, str]:
    expected = max(1, talk_s * 1000 // ptime)
    draw = rng.random()
    out_packets = expected + rng.randint(0, 3)
    stats = {
        "rtp_audio_out_packet_count": out_packets,
        "rtp_audio_out_media_packet_count": out_packets,
        "rtp_audio_out_raw_bytes": out_packets * 172,
        "rtp_audio_out_media_bytes": out_packets * 172,
        "rtp_audio_in_flush_packet_count": 0,
    }
    if draw < NO_RTP_SHARE:
        # Answered, but nothing came in (one-way audio, NAT): FreeSWITCH's
        # counters stay 0 and its MOS says 4.50.
        stats.update({
            "rtp_audio_in_raw_bytes": 0, "rtp_audio_in_media_bytes": 0,
            "rtp_audio_in_packet_count": 0, "rtp_audio_in_media_packet_count": 0,
            "rtp_audio_in_skip_packet_count": expected, "rtp_audio_in_jitter_packet_count": 0,
            "rtp_audio_in_jitter_min_variance": "0.00", "rtp_audio_in_jitter_max_variance": "0.00",
            "rtp_audio_in_jitter_loss_rate": "0.00", "rtp_audio_in_jitter_burst_rate": "0.00",
            "rtp_audio_in_mean_interval": "0.00", "rtp_audio_in_flaw_total": 0,
            "rtp_audio_in_quality_percentage": "100.00", "rtp_audio_in_mos": "4.50",
        })
        return {k: str(v) for k, v in stats.items()}
    if draw < NO_RTP_SHARE + BAD_SHARE:
        loss, jitter = rng.uniform(0.25, 0.55), rng.uniform(25.0, 160.0)
    else:
        loss, jitter = rng.betavariate(1.2, 250), rng.uniform(0.3, 12.0)
    received = max(1, int(expected * (1 - loss * 0.6)))
    flaws = min(received, int(expected * loss))
    quality = (received - flaws) / received * 100
    stats.update({
        "rtp_audio_in_raw_bytes": received * 172, "rtp_audio_in_media_bytes": received * 172,
        "rtp_audio_in_packet_count": received, "rtp_audio_in_media_packet_count": received,
        "rtp_audio_in_skip_packet_count": rng.randint(0, 12),
        "rtp_audio_in_jitter_packet_count": int(received * loss * 0.2),
        "rtp_audio_in_jitter_min_variance": "%.2f" % (jitter * rng.uniform(0.05, 0.3)),
        "rtp_audio_in_jitter_max_variance": "%.2f" % jitter,
        "rtp_audio_in_jitter_loss_rate": "%.2f" % (loss * rng.uniform(1, 30)),
        "rtp_audio_in_jitter_burst_rate": "%.2f" % (loss * rng.uniform(0.5, 10)),
        "rtp_audio_in_mean_interval": "%.2f" % (ptime + rng.uniform(-0.05, 0.4) * (1 + jitter / 20)),
        "rtp_audio_in_flaw_total": flaws,
        "rtp_audio_in_quality_percentage": "%.2f" % quality,
        "rtp_audio_in_mos": "%.2f" % mos_of(quality),
    })
    return {k: str(v) for k, v in stats.items()}


def draw_quality(rng: random.Random, legs: dict[str, int], talk_s: dict[str, int],
                 ptime: int = 20) -> dict[int, str]:
    """Slot values (``Context.rtp``) for one call's RTP legs."""
    codec, payload_type = _CODECS[0] if rng.random() < 0.7 else _CODECS[1]
    values: dict[int, str] = {}
    for call_id, leg in legs.items():
        stats = _leg_stats(rng, talk_s.get(call_id, 0), ptime)
        stats.update({
            "remote_media_ip": rng.choice(("203.0.113.%d", "198.51.100.%d", "192.0.2.%d")) % rng.randint(2, 250),
            "remote_media_port": str(rng.randrange(16384, 32768, 2)),
            "rtp_use_codec_name": codec, "read_codec": codec, "write_codec": codec,
            "original_read_codec": codec, "rtp_use_pt": payload_type, "rtp_audio_recv_pt": payload_type,
            "rtp_last_audio_codec_string": "%s@8000h@%di@1c" % (codec, ptime),
        })
        for name, code in _CODE.items():
            key = name[9:] if name.startswith("variable_") else name
            if key in ("Channel-Read-Codec-Name", "Channel-Write-Codec-Name"):
                values[leg * _STRIDE + code] = codec
            elif key in stats:
                values[leg * _STRIDE + code] = stats[key]
    return values
