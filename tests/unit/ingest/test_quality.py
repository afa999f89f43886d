"""Quality columns (DESIGN §3.7): every leg of every shared capture against
its raw variables, the migration of an old file, import, and the API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eslcdr import config
from eslcdr.service import importer
from eslcdr.store import schema
from eslcdr.store import db as store
from eslcdr.ingest.cdr import CdrBuilder
from eslcdr.ingest.legs import FinishedLeg, LegTracker

from tests.conftest import CAPTURES, DATA
from tests.harness import database_before
from tests.unit.ingest.test_cdr import run_capture

CFG = config.from_mapping({"cdr": {"node_name": "fs1"}})
QUALITY = tuple(name for name, _, _ in schema.QUALITY_COLUMNS)
STRAIGHT = {  # column -> (variable, type): copied as they are
    "audio_in_quality_percentage": ("rtp_audio_in_quality_percentage", float),
    "audio_in_flaw_total": ("rtp_audio_in_flaw_total", int),
    "audio_in_packets": ("rtp_audio_in_packet_count", int),
    "audio_in_media_packets": ("rtp_audio_in_media_packet_count", int),
    "audio_in_skip_packets": ("rtp_audio_in_skip_packet_count", int),
    "audio_in_jitter_max_variance": ("rtp_audio_in_jitter_max_variance", float),
    "audio_in_mean_interval": ("rtp_audio_in_mean_interval", float),
    "audio_out_media_packets": ("rtp_audio_out_media_packet_count", int),
    "codec": ("rtp_use_codec_name", str),
    "codec_rate": ("rtp_use_codec_rate", int),
    "codec_ptime": ("rtp_use_codec_ptime", int),
    "local_media_ip": ("local_media_ip", str),
}


def expected_quality(event: dict) -> dict:
    """What DESIGN §3.7 says each column holds, read off the raw event."""
    if event["Channel-Name"].startswith("loopback/"):
        return dict.fromkeys(QUALITY)
    var = {k[len("variable_"):]: v for k, v in event.items() if k.startswith("variable_")}
    out = {col: (kind(var[name]) if name in var else None) for col, (name, kind) in STRAIGHT.items()}
    media = out["audio_in_media_packets"]
    out["audio_in_mos"] = float(var["rtp_audio_in_mos"]) if media else None
    out["remote_media_ip"] = var.get("remote_audio_ip") or var.get("remote_media_ip")
    port = var.get("remote_audio_port") or var.get("remote_media_port")
    out["remote_media_port"] = int(port) if port else None
    created = int(event["Caller-Channel-Created-Time"])
    stages = [int(event[h]) for h in ("Caller-Channel-Progress-Time", "Caller-Channel-Progress-Media-Time",
                                      "Caller-Channel-Answered-Time")]
    reached = [t for t in stages if t]
    out["pdd_ms"] = (reached[0] - created) // 1000 if reached else None
    answered = int(event["Caller-Channel-Answered-Time"]) > 0
    if answered and "rtp_audio_in_packet_count" in var:
        out["no_rtp_in"] = 1 if media == 0 else 0
    else:
        out["no_rtp_in"] = None
    return out


def hangups(events: list[dict]) -> dict[str, dict]:
    return {e["Unique-ID"]: e for e in events if e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE"}


@pytest.mark.parametrize("capture", CAPTURES)
def test_every_quality_column_against_the_raw_variables(events_of, capture):
    events = events_of(capture)
    records, _ = run_capture(events)
    raw = hangups(events)
    assert records
    for call_id, record in records.items():
        expected = expected_quality(raw[call_id])
        got = {name: record[name] for name in QUALITY}
        assert got == expected, (capture, record["channel_name"])
        for name, value in got.items():  # numbers are numbers, never text
            if value is not None and name not in ("codec", "remote_media_ip", "local_media_ip"):
                assert isinstance(value, (int, float)) and not isinstance(value, bool), name


def by_channel(capture: str, events_of) -> dict[str, dict]:
    records, _ = run_capture(events_of(capture))
    return {r["channel_name"]: r for r in records.values()}


@pytest.mark.parametrize("capture", ["S4_json", "S4_plain"])
def test_bridged_sip_leg_that_received_audio(events_of, capture):
    leg = by_channel(capture, events_of)["sofia/internal/s4_answer@127.0.0.1:5080"]
    assert leg["audio_in_mos"] == 4.5 and leg["audio_in_quality_percentage"] == 100.0
    assert (leg["audio_in_packets"], leg["audio_in_media_packets"], leg["audio_in_skip_packets"]) == (99, 99, 2)
    assert leg["audio_in_mean_interval"] == 20.0 and leg["audio_in_flaw_total"] == 0
    assert (leg["codec"], leg["codec_rate"], leg["codec_ptime"]) == ("PCMU", 8000, 20)
    assert leg["remote_media_ip"] == leg["local_media_ip"] == "127.0.0.1"
    assert leg["no_rtp_in"] == 0
    assert leg["audio_in_jitter_max_variance"] == {"S4_json": 132.71, "S4_plain": 34.78}[capture]


@pytest.mark.parametrize("capture", ["S4_json", "S5_json", "json_cdr/J_plain"])
def test_answered_leg_without_received_audio_has_no_mos(events_of, capture):
    """FreeSWITCH says MOS 4.50 / quality 100 for a leg that received nothing."""
    callee = [r for name, r in by_channel(capture, events_of).items() if name.startswith("sofia/external/")]
    assert len(callee) == 1
    leg = callee[0]
    assert leg["answered_us"] > 0 and leg["audio_in_media_packets"] == 0
    assert leg["audio_in_mos"] is None and leg["no_rtp_in"] == 1
    assert leg["audio_out_media_packets"] > 0


def test_dtmf_only_leg_counts_as_no_rtp(events_of):
    # S5: the callee received 103 packets, all RFC 2833 DTMF, no audio.
    leg = by_channel("S5_json", events_of)["sofia/external/1000@127.0.0.1"]
    assert (leg["audio_in_packets"], leg["audio_in_media_packets"]) == (103, 0)
    assert leg["no_rtp_in"] == 1 and leg["audio_in_mos"] is None and leg["codec"] == "G722"


@pytest.mark.parametrize("capture", ["S1_json", "S6_plain", "S7_plain", "json_cdr/J_json"])
def test_loopback_legs_have_no_quality_at_all(events_of, capture):
    loopback = [r for name, r in by_channel(capture, events_of).items() if name.startswith("loopback/")]
    assert loopback
    for leg in loopback:
        assert {name: leg[name] for name in QUALITY} == dict.fromkeys(QUALITY)


@pytest.mark.parametrize("capture", ["S2_plain", "S2_json"])
def test_unanswered_sip_leg_with_ringing_has_a_pdd_but_no_media(events_of, capture):
    events = events_of(capture)
    raw = hangups(events)
    leg = by_channel(capture, events_of)["sofia/internal/s2_ring@127.0.0.1:5080"]
    event = raw[leg["call_id"]]
    assert leg["answered_us"] == 0
    progress = int(event["Caller-Channel-Progress-Time"])
    assert progress and leg["pdd_ms"] == (progress - int(event["Caller-Channel-Created-Time"])) // 1000
    assert leg["no_rtp_in"] is None and leg["audio_in_mos"] is None and leg["codec"] is None
    assert leg["local_media_ip"] == "127.0.0.1"


def test_unanswered_sip_legs_without_progress_have_no_pdd(events_of):
    for name, leg in by_channel("S3_json", events_of).items():
        if name.startswith("sofia/"):
            assert leg["pdd_ms"] is None and leg["no_rtp_in"] is None, name


def synthetic_leg(events_of, **changes) -> dict:
    """The S4 B-leg's hangup with some variables changed (None removes one)."""
    leg = by_channel("S4_json", events_of)["sofia/internal/s4_answer@127.0.0.1:5080"]
    event = dict(hangups(events_of("S4_json"))[leg["call_id"]])
    for name, value in changes.items():
        if value is None:
            event.pop(name, None)
        else:
            event[name] = value
    return CdrBuilder(CFG.cdr, "fs1").build(FinishedLeg(hangup=event, digits="", fax=(), bridge_partner="", interaction_id="x", links=()))


def test_nat_adjusted_source_wins_over_the_sdp_address(events_of):
    leg = synthetic_leg(events_of, variable_remote_audio_ip="203.0.113.9", variable_remote_audio_port="40002",
                        variable_remote_media_ip="10.1.1.1", variable_remote_media_port="16384")
    assert (leg["remote_media_ip"], leg["remote_media_port"]) == ("203.0.113.9", 40002)
    leg = synthetic_leg(events_of, variable_remote_media_ip="10.1.1.1", variable_remote_media_port="16384")
    assert (leg["remote_media_ip"], leg["remote_media_port"]) == ("10.1.1.1", 16384)


def test_pdd_takes_the_first_stage_reached(events_of):
    created = 1_795_000_000_000_000
    stages = {"Caller-Channel-Created-Time": str(created), "Caller-Channel-Progress-Time": "0",
              "Caller-Channel-Progress-Media-Time": str(created + 2_345_999),
              "Caller-Channel-Answered-Time": str(created + 9_000_000)}
    assert synthetic_leg(events_of, **stages)["pdd_ms"] == 2345  # 183 before answer, floored
    stages["Caller-Channel-Progress-Time"] = str(created + 1_500_000)
    assert synthetic_leg(events_of, **stages)["pdd_ms"] == 1500  # 180 first
    for name in ("Caller-Channel-Progress-Time", "Caller-Channel-Progress-Media-Time",
                 "Caller-Channel-Answered-Time"):
        stages[name] = "0"
    assert synthetic_leg(events_of, **stages)["pdd_ms"] is None


def test_garbage_or_missing_variables_become_null(events_of):
    leg = synthetic_leg(events_of, variable_rtp_audio_in_mos="nan", variable_rtp_use_codec_rate="fast",
                        variable_rtp_audio_in_jitter_max_variance="inf", variable_rtp_audio_in_flaw_total="",
                        variable_rtp_audio_in_media_packet_count=None)
    assert leg["audio_in_mos"] is None and leg["codec_rate"] is None
    assert leg["audio_in_jitter_max_variance"] is None and leg["audio_in_flaw_total"] is None
    # Without the media packet count nothing says whether audio came in.
    assert leg["audio_in_media_packets"] is None and leg["no_rtp_in"] is None
    bad_mos = synthetic_leg(events_of, variable_rtp_audio_in_mos="1.12", variable_rtp_audio_in_flaw_total="240")
    assert bad_mos["audio_in_mos"] == 1.12 and bad_mos["audio_in_flaw_total"] == 240


def test_early_media_on_an_unanswered_leg_keeps_its_mos(events_of):
    created = 1_795_000_000_000_000
    leg = synthetic_leg(events_of, **{"Caller-Channel-Created-Time": str(created),
                                      "Caller-Channel-Progress-Time": "0",
                                      "Caller-Channel-Progress-Media-Time": str(created + 800_000),
                                      "Caller-Channel-Answered-Time": "0",
                                      "variable_rtp_audio_in_mos": "4.21"})
    assert leg["answered_us"] == 0 and leg["pdd_ms"] == 800
    assert leg["audio_in_mos"] == 4.21 and leg["no_rtp_in"] is None


# --------------------------------------------------------------- storage


def test_migration_gives_old_files_the_columns_with_nulls(tmp_path, events_of):
    path = tmp_path / "old.db"
    conn = database_before(path, schema.add_quality_columns)
    base = [name for name, _, _ in schema.BASE_COLUMNS[1:]]
    conn.execute("INSERT INTO cdrs (id, call_id, timestamp, channel_name) VALUES ('202601-old', 'old', 1, 'sofia/x')")
    conn.close()
    assert "audio_in_mos" not in base
    writer = store.connect_writer(path)
    try:
        assert writer.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
        columns = [row[1] for row in writer.execute("PRAGMA table_info(cdrs)")]
        assert columns == list(schema.COLUMN_NAMES)
        old = writer.execute("SELECT %s FROM cdrs WHERE call_id = 'old'" % ", ".join(QUALITY)).fetchone()
        assert old == (None,) * len(QUALITY)
        # New legs are written with their quality.
        records, _ = run_capture(events_of("S4_json"))
        store.insert_records(writer, records.values())
        stored = writer.execute("SELECT audio_in_mos, typeof(audio_in_mos), codec_rate, typeof(codec_rate), "
                                "no_rtp_in FROM cdrs WHERE codec IS NOT NULL ORDER BY no_rtp_in").fetchall()
        assert stored == [(4.5, "real", 8000, "integer", 0), (None, "null", 8000, "integer", 1)]
    finally:
        writer.close()


@pytest.mark.parametrize("run", ["J_plain", "J_json"])
def test_import_gives_the_quality_of_the_live_events(run, events_of):
    events, failed = importer.load_events([DATA / "json_cdr" / run])
    assert failed == 0
    imported = {r["call_id"]: r for r in importer.build_records(events, CFG, LegTracker(()))}
    live, _ = run_capture(events_of("json_cdr/%s" % run))
    assert set(imported) == set(live)
    assert any(r["audio_in_mos"] for r in live.values())
    for call_id, record in live.items():
        assert {n: imported[call_id][n] for n in QUALITY} == {n: record[n] for n in QUALITY}, call_id


def test_import_reads_call_stats_when_the_variables_lack_them(tmp_path, events_of):
    """Some FreeSWITCH builds put the RTP counters only in callStats."""
    source = DATA / "json_cdr" / "J_json"
    folder = tmp_path / "stripped"
    folder.mkdir()
    for path in source.glob("*.json"):
        data = json.loads(path.read_text())
        data["variables"] = {k: v for k, v in data["variables"].items() if not k.startswith("rtp_audio_")}
        (folder / path.name).write_text(json.dumps(data))
    full = {r["call_id"]: r for r in importer.build_records(importer.load_events([source])[0], CFG,
                                                               LegTracker(()))}
    stripped = {r["call_id"]: r for r in importer.build_records(importer.load_events([folder])[0], CFG,
                                                                   LegTracker(()))}
    with_media = [c for c, r in full.items() if r["audio_in_packets"] is not None]
    assert len(with_media) == 2
    for call_id in full:
        assert {n: stripped[call_id][n] for n in QUALITY} == {n: full[call_id][n] for n in QUALITY}
