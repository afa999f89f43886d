"""The stand-in's mod_json_cdr files and its 'away' faults.

The files are checked against the real mod_json_cdr files recorded beside
the J captures (tests/data/json_cdr/), and against what the daemon's
importer makes of them: the CDR built from a file equals the one built from
the live events of the same leg.
"""

from __future__ import annotations

import json
from pathlib import Path

import gevent
import pytest

from eslcdr import config, fakefs
from eslcdr.ingest.cdr import CdrBuilder
from eslcdr.fakefs.json_cdr import json_cdr_document, json_cdr_filename
from eslcdr.service.importer import json_cdr_to_event
from eslcdr.ingest.legs import LegTracker

from tests.conftest import DATA, capture_events
from tests.unit.fakefs.test_fakefs import TIMEOUT, Client, capture_frames, raw_frame, serve  # noqa: F401 (fixture)

JSON_CDR = DATA / "json_cdr"
START = 1_900_000_000.0


def hangups(events) -> dict[str, dict]:
    return {e["Unique-ID"]: e for e in events if e.get("Event-Name") == "CHANNEL_HANGUP_COMPLETE"}


@pytest.mark.parametrize("run", ["J_plain", "J_json"])
def test_documents_equal_the_real_mod_json_cdr_files(run):
    by_leg = hangups(capture_events("json_cdr/%s.esl" % run))
    files = sorted((JSON_CDR / run).glob("*.cdr.json"))
    assert len(files) == len(by_leg) == 12
    for path in files:
        real = json.loads(path.read_text(encoding="utf-8"))
        event = by_leg[real["variables"]["uuid"]]
        ours = json_cdr_document(event)
        assert json_cdr_filename(event) == path.name  # a_ exactly on the "A" legs
        for key in ("core-uuid", "switchname", "variables"):
            assert ours[key] == real[key], (path.name, key)  # variables: byte-identical encoding
        assert ours["channel_data"]["direction"] == real["channel_data"]["direction"]
        assert ours["callflow"][0]["caller_profile"] == real["callflow"][0]["caller_profile"]
        assert ours["callflow"][0]["times"] == real["callflow"][0]["times"]
        assert ("app_log" in ours) == ("app_log" in real), path.name
        if "app_log" in real:
            last = real["app_log"]["applications"][-1]
            assert ours["app_log"]["applications"][-1]["app_name"] == last["app_name"]


def wait_for(predicate, timeout: float = TIMEOUT) -> None:
    with gevent.Timeout(timeout):
        while not predicate():
            gevent.sleep(0.01)


def test_generated_calls_write_one_file_per_leg_heard_or_not(serve, tmp_path):
    source = fakefs.GeneratedSource(calls=30, seed=7, start_time=START)
    expected = hangups(e.event() for e in source)
    # Nobody ever listens: every event is lost, every file is written.
    fake = serve(source, wait_for_subscriber=False, json_cdr_dir=str(tmp_path))
    assert fake.wait_done(TIMEOUT)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(json_cdr_filename(e) for e in expected.values())
    assert any(n.startswith("a_") for n in names) and any(not n.startswith("a_") for n in names)
    assert fake.json_cdr.written == len(expected)
    for name in names:
        document = json.loads((tmp_path / name).read_bytes())
        event = expected[document["variables"]["uuid"]]
        # The switch's own Core-UUID and name (the emissions above had none).
        event.update({"Core-UUID": fake.core_uuid, "FreeSWITCH-Switchname": fake.hostname})
        assert document == json_cdr_document(event)


def test_a_file_builds_the_cdr_the_live_events_build():
    """Every generated leg: importer(file) == CDR of the live events."""
    cfg = config.from_mapping({"cdr": {"node_name": "fs1"}})
    source = fakefs.GeneratedSource(calls=60, seed=3, start_time=START)
    live_tracker, file_tracker = LegTracker(cfg.cdr.interaction_id_vars), LegTracker(cfg.cdr.interaction_id_vars)
    builder = CdrBuilder(cfg.cdr, "fs1")
    live, from_file = {}, {}
    for emission in source:
        event = emission.event()
        leg = live_tracker.feed(event, 0)
        if leg is not None:
            live[leg.hangup["Unique-ID"]] = builder.build(leg)
            # The file as the stand-in writes it, read back as the importer does.
            document = json.loads(json.dumps(json_cdr_document(event)))
            file_leg = file_tracker.feed(json_cdr_to_event(document), 0)
            from_file[file_leg.hangup["Unique-ID"]] = builder.build(file_leg)
    assert len(live) > 100 and set(live) == set(from_file)
    # What mod_json_cdr does not write: the callee (Caller-Callee-ID-*) and
    # the direction of an originator (a B-leg's partner).
    unknown = {"callee_id_name", "callee_id_number", "other_leg_direction"}
    for call_id, record in live.items():
        mine = from_file[call_id]
        differing = {f for f, value in record.items() if mine.get(f) != value and f != "interaction_id"}
        assert differing <= unknown, (call_id, differing)
        if mine["other_leg_direction"] is not None:
            assert mine["other_leg_direction"] == record["other_leg_direction"]
        if mine["callee_id_number"] is not None:  # from variables, when they hold it
            assert mine["callee_id_number"] == record["callee_id_number"]

    def groups(records):
        by_interaction = {}
        for r in records.values():
            by_interaction.setdefault(r["interaction_id"], set()).add(r["call_id"])
        return sorted(map(sorted, by_interaction.values()))

    assert groups(from_file) == groups(live)


def test_away_loses_events_and_refuses_connections_meanwhile(serve, tmp_path):
    frames = capture_frames("S1_plain.esl")
    fake = serve(
        fakefs.ReplaySource([DATA / "S1_plain.esl"]),
        away_after=4,
        away_events=5,
        pause_after=9,
        hold=True,
        json_cdr_dir=str(tmp_path),
    )
    client = Client(fake.port)
    client.login()
    client.subscribe()
    assert [raw_frame(f) for f in client.rest()] == [raw_frame(f) for f in frames[:4]]
    wait_for(fake.paused)
    assert fake.unheard == 5 and fake.position == 9
    fake.resume()
    again = Client(fake.port)
    again.login()
    again.subscribe()
    rest = again.events(len(frames) - 9)
    assert [raw_frame(f) for f in rest] == [raw_frame(f) for f in frames[9:]]
    # Legs that hung up while nobody listened have their file all the same.
    assert len(list(tmp_path.glob("*.cdr.json"))) == len(hangups(capture_events("S1_plain.esl")))


def test_connections_are_refused_while_away(serve):
    fake = serve(fakefs.ReplaySource([DATA / "S1_plain.esl"]), pause_after=2, hold=True)
    client = Client(fake.port)
    client.login()
    client.subscribe()
    client.events(2)
    wait_for(fake.paused)
    fake.go_away(3)  # the next 3 events will be played away
    assert client.rest() == []
    late = Client(fake.port)
    assert late.sock.recv(100) == b""  # refused: out of reach
    fake.resume()
    wait_for(lambda: fake.unheard == 3)
    back = Client(fake.port)
    back.login()
    back.subscribe()
    assert len(back.events(2)) == 2


def test_resume_away_plays_events_nobody_hears(serve, tmp_path):
    source = fakefs.GeneratedSource(calls=10, seed=1, start_time=START)
    total = len(list(source))
    fake = serve(source, pause_after=20, hold=True, json_cdr_dir=str(tmp_path))
    client = Client(fake.port)
    client.login()
    client.subscribe()
    assert len(client.events(20)) == 20
    wait_for(fake.paused)
    client.close()
    fake.resume(away_events=30)
    wait_for(lambda: fake.unheard == 30)
    back = Client(fake.port)
    back.login()
    back.subscribe()
    assert len(back.events(total - 50)) == total - 50
    assert fake.wait_done(TIMEOUT) and back.silent_for(0.05)


def test_delayed_and_truncated_files(serve, tmp_path):
    source = fakefs.GeneratedSource(calls=6, seed=2, start_time=START)
    legs = len(hangups(e.event() for e in source))
    fake = serve(
        source,
        wait_for_subscriber=False,
        json_cdr_dir=str(tmp_path),
        json_cdr_delay=0.3,
        json_cdr_truncate_every=4,
    )
    assert fake.wait_done(TIMEOUT)
    wait_for(lambda: fake.json_cdr.written == legs)
    broken = 0
    for path in tmp_path.glob("*.cdr.json"):
        try:
            json.loads(path.read_bytes())
        except json.JSONDecodeError:
            broken += 1
    assert broken == legs // 4
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_cli_json_cdr_options(tmp_path):
    import argparse

    parser = argparse.ArgumentParser()
    fakefs.add_arguments(parser)
    args = parser.parse_args(
        ["--json-cdr-dir", str(tmp_path), "--json-cdr-no-prefix", "--away-after", "5", "--away-events", "7"]
    )
    assert args.json_cdr_dir == str(tmp_path) and args.json_cdr_no_prefix
    assert (args.away_after, args.away_events) == (5, 7)
    missing = parser.parse_args(["--json-cdr-dir", str(tmp_path / "nope"), "--port", "0"])
    assert fakefs.run(missing) == 2


def test_no_prefix_names_every_file_by_uuid(serve, tmp_path):
    source = fakefs.GeneratedSource(calls=5, seed=4, start_time=START)
    fake = serve(source, wait_for_subscriber=False, json_cdr_dir=str(tmp_path), json_cdr_prefix_a_leg=False)
    assert fake.wait_done(TIMEOUT)
    names = [p.name for p in Path(tmp_path).iterdir()]
    assert names and not any(n.startswith("a_") for n in names)
