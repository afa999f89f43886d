"""Backfill from mod_json_cdr files, end to end: the stand-in (in this
process) writes a real file per leg and loses events while the daemon is
away; ``eslcdr run`` is a real subprocess with ``[backfill] json_cdr_dir``.

Each run is compared with a reference: the same generated calls (same seed,
same start) heard completely by a daemon that was never away.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from pathlib import Path

import gevent

from eslcdr.fakefs import FakeFreeSWITCH, GeneratedSource
from eslcdr.fakefs.json_cdr import json_cdr_document, json_cdr_filename

from tests.harness import DaemonProcess, db_rows, settle, wait_rows, write_config
from tests.harness import wait_until as poll_until

START = time.time() - 3 * 3600  # whole seconds are kept by the generator
CALLS = 40
SEED = 11
# What mod_json_cdr files do not hold (docs/backfill.md): the callee and the
# direction of an originator.
NOT_IN_FILES = {"callee_id_name", "callee_id_number", "other_leg_direction"}
NOT_SEEN = "eslcdr_hangup_not_seen"
WAIT = 30.0
SETTLED = 3.0  # seconds: older than the backfill's SETTLE, as FreeSWITCH left it


def source() -> GeneratedSource:
    return GeneratedSource(calls=CALLS, seed=SEED, start_time=START)


def hangup_ids(first: int, last: int) -> set[str]:
    """Unique-IDs of the legs whose hangup is event first..last (1-based)."""
    out = set()
    for position, emission in enumerate(source(), 1):
        if first <= position <= last and emission.template.event_id == "CHANNEL_HANGUP_COMPLETE":
            out.add(emission.value("Unique-ID"))
    return out


def total_events() -> int:
    return sum(1 for _ in source())


def backfill_config(folder: Path | None) -> str:
    return "[backfill]\njson_cdr_dir = %s\n" % folder if folder else ""


_REFERENCE: dict[str, dict] = {}


def reference(tmp_path_factory) -> dict[str, dict]:
    """The rows of a daemon that heard every event (computed once)."""
    if not _REFERENCE:
        tmp = tmp_path_factory.mktemp("reference")
        fake = FakeFreeSWITCH(events=source(), hold=True).start()
        daemon = DaemonProcess(write_config(tmp, fake.port), tmp / "daemon.log")
        try:
            assert fake.wait_done(WAIT)
            rows = settle(tmp / "cdrs.db", 1.0)
        finally:
            assert daemon.stop() == 0
            fake.stop()
        _REFERENCE.update({r["call_id"]: r for r in rows})
    return _REFERENCE


def wait_until(predicate, timeout: float = WAIT) -> None:
    """``e2e.wait_until`` that fails the test when the condition never held."""
    assert poll_until(predicate, timeout), "timed out"


def groups(rows: dict[str, dict]) -> list[list[str]]:
    by_interaction: dict[str, set] = {}
    for row in rows.values():
        by_interaction.setdefault(row["interaction_id"], set()).add(row["call_id"])
    return sorted(sorted(g) for g in by_interaction.values())


def assert_complete(rows: list[dict], expected: dict[str, dict], from_files: set[str]) -> None:
    """Every leg once, each field as the live events give it."""
    by_id = {r["call_id"]: r for r in rows}
    assert len(by_id) == len(rows)
    assert set(by_id) == set(expected)
    for call_id, want in expected.items():
        got = by_id[call_id]
        # The interaction's start is what the tracker knew: a leg it took
        # from `show channels` after the drop is known to the second only.
        skip = {"seq", "interaction_id", "interaction_created_us"} | (
            NOT_IN_FILES if call_id in from_files else set())
        differing = {f for f in want if f not in skip and got[f] != want[f]}
        assert not differing, (call_id, {f: (got[f], want[f]) for f in differing})
        if "interaction_created_us" in want:
            assert got["interaction_created_us"] // 10**6 == want["interaction_created_us"] // 10**6, call_id
    assert groups(by_id) == groups({c: expected[c] for c in expected})


def folder_state(folder: Path) -> dict[str, tuple]:
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size, p.stat().st_mode) for p in folder.iterdir()}


def log_events(daemon: DaemonProcess, name: str) -> list[dict]:
    return [e for e in daemon.log_events() if e.get("event") == name]


# -- the daemon stopped and started again ---------------------------------


def stopped_and_restarted(tmp_path, with_files: bool, pause_at: int, away: int, rows_expected: int):
    folder = tmp_path / "json_cdr"
    folder.mkdir()
    fake = FakeFreeSWITCH(
        events=source(), hold=True, pause_after=pause_at, json_cdr_dir=str(folder)
    ).start()
    ini = write_config(tmp_path, fake.port, extra=backfill_config(folder if with_files else None))
    db = tmp_path / "cdrs.db"
    first = DaemonProcess(ini, tmp_path / "first.log")
    try:
        wait_until(lambda: fake.paused() and fake.delivered())
        settle(db, 0.5)
    finally:
        assert first.stop() == 0
    before = folder_state(folder)
    # FreeSWITCH goes on while eslcdr is stopped: these events reach nobody.
    fake.resume(away_events=away)
    wait_until(lambda: fake.unheard == away)
    second = DaemonProcess(ini, tmp_path / "second.log")
    try:
        assert fake.wait_done(WAIT)
        # The files written just before the restart are taken by the scan a
        # few seconds after the connection (SETTLE), not by the first one.
        wait_rows(db, rows_expected)
        rows = settle(db, 1.5)
    finally:
        assert second.stop() == 0
        fake.stop()
    return rows, first, second, before, folder


def test_daemon_stopped_legs_that_ended_meanwhile_come_from_their_files(tmp_path, tmp_path_factory):
    expected = reference(tmp_path_factory)
    pause_at, away = 150, 200
    lost = hangup_ids(pause_at + 1, pause_at + away)
    assert len(lost) > 10
    rows, _, second, before, folder = stopped_and_restarted(tmp_path, True, pause_at, away, len(expected))
    assert_complete(rows, expected, from_files=lost)
    assert not [r for r in rows if r["disposition"] == NOT_SEEN]
    scans = log_events(second, "backfill_scan")
    assert sum(s["backfilled"] for s in scans) == len(lost)
    # Read only: the folder is as FreeSWITCH left it (the stand-in kept
    # adding the files of the legs after the restart).
    after = folder_state(folder)
    assert {name: after[name] for name in before} == before


def test_daemon_stopped_without_files_loses_those_legs_as_before(tmp_path, tmp_path_factory):
    expected = reference(tmp_path_factory)
    pause_at, away = 150, 200
    lost = hangup_ids(pause_at + 1, pause_at + away)
    rows, *_ = stopped_and_restarted(tmp_path, False, pause_at, away, len(expected) - len(lost))
    by_id = {r["call_id"]: r for r in rows}
    assert set(by_id) == set(expected) - lost
    assert len(rows) == len(by_id)


# -- the socket dropped ---------------------------------------------------


def socket_dropped(tmp_path, drop_at: int, away: int, with_files: bool, **fake_options):
    folder = tmp_path / "json_cdr"
    folder.mkdir()
    fake = FakeFreeSWITCH(
        events=source(),
        hold=True,
        away_after=drop_at,
        away_events=away,
        json_cdr_dir=str(folder),
        **fake_options,
    ).start()
    ini = write_config(tmp_path, fake.port, extra=backfill_config(folder if with_files else None))
    daemon = DaemonProcess(ini, tmp_path / "daemon.log")
    return fake, daemon, tmp_path / "cdrs.db"


def test_socket_dropped_every_leg_once_and_complete_from_files(tmp_path, tmp_path_factory):
    expected = reference(tmp_path_factory)
    drop_at, away = 250, 120
    lost = hangup_ids(drop_at + 1, drop_at + away)
    fake, daemon, db = socket_dropped(tmp_path, drop_at, away, with_files=True)
    try:
        assert fake.wait_done(WAIT)
        # The legs the daemon followed are rescued when the resync grace
        # ends; the others by the scans after the reconnect.
        wait_until(lambda: len(db_rows(db)) >= len(expected))
        rows = settle(db, 1.5)
        port = daemon.api_port()
        metrics = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10).read().decode()
        health = json.loads(urllib.request.urlopen("http://127.0.0.1:%d/health" % port, timeout=10).read())
    finally:
        assert daemon.stop() == 0
        fake.stop()
    assert_complete(rows, expected, from_files=lost)
    assert not [r for r in rows if r["disposition"] == NOT_SEEN]
    assert log_events(daemon, "esl_resync")
    assert "eslcdr_backfill_legs_total %s" % float(len(lost)) in metrics
    assert health["backfill"]["backfilled"] + health["backfill"]["rescued"] == len(lost)
    assert health["backfill"]["rescued"] > 0 and health["backfill"]["readable"] is True


def test_socket_dropped_without_files_writes_not_seen_rows_as_before(tmp_path, tmp_path_factory):
    expected = reference(tmp_path_factory)
    drop_at, away = 250, 120
    fake, daemon, db = socket_dropped(tmp_path, drop_at, away, with_files=False)
    try:
        assert fake.wait_done(WAIT)
        wait_until(lambda: any(r["disposition"] == NOT_SEEN for r in db_rows(db)))
        rows = settle(db, 1.5)
    finally:
        assert daemon.stop() == 0
        fake.stop()
    not_seen = {r["call_id"] for r in rows if r["disposition"] == NOT_SEEN}
    assert not_seen and not_seen <= hangup_ids(drop_at + 1, drop_at + away)
    assert {r["call_id"] for r in rows} <= set(expected)


def test_not_seen_row_replaced_when_its_file_appears_later(tmp_path, tmp_path_factory):
    expected = reference(tmp_path_factory)
    drop_at, away = 250, 120
    lost = hangup_ids(drop_at + 1, drop_at + away)
    # The files appear 8 s after their hangup: after the resync grace (5 s),
    # so the legs the daemon followed are first written off as not seen.
    fake, daemon, db = socket_dropped(tmp_path, drop_at, away, with_files=True, json_cdr_delay=8.0)
    try:
        assert fake.wait_done(WAIT)
        wait_until(lambda: any(r["disposition"] == NOT_SEEN for r in db_rows(db)))
        first_seen = {r["call_id"]: r["seq"] for r in db_rows(db) if r["disposition"] == NOT_SEEN}
        top_seq = max(r["seq"] for r in db_rows(db))
        wait_until(lambda: not any(r["disposition"] == NOT_SEEN for r in db_rows(db)), timeout=40)
        wait_until(lambda: len(db_rows(db)) >= len(expected), timeout=40)
        rows = settle(db, 1.5)
    finally:
        assert daemon.stop() == 0
        fake.stop()
    assert_complete(rows, expected, from_files=lost)
    by_id = {r["call_id"]: r for r in rows}
    for call_id, old_seq in first_seen.items():
        assert by_id[call_id]["seq"] > top_seq >= old_seq  # a new seq: the feed delivers it again
    assert log_events(daemon, "not_seen_replaced")


# -- bad files --------------------------------------------------------------


def test_bad_files_warn_and_lose_nothing_else(tmp_path, tmp_path_factory):
    expected = reference(tmp_path_factory)
    folder = tmp_path / "json_cdr"
    folder.mkdir()
    # The files of every leg, as FreeSWITCH wrote them while eslcdr was not running.
    hangups = [e.event() for e in source() if e.template.event_id == "CHANNEL_HANGUP_COMPLETE"]
    fake = FakeFreeSWITCH().start()  # up, but no call right now
    for event in hangups:
        event.update({"Core-UUID": fake.core_uuid, "FreeSWITCH-Switchname": fake.hostname})
        (folder / json_cdr_filename(event)).write_text(json.dumps(json_cdr_document(event)) + "\n")
    names = sorted(folder.iterdir())
    old = time.time() - 60
    for path in names:
        os.utime(path, (old, old))
    truncated, not_utf8, being_written = names[0], names[1], names[2]
    truncated.write_bytes(truncated.read_bytes()[:500])  # FreeSWITCH died mid-write
    os.utime(truncated, (old, old))
    document = json.loads(not_utf8.read_bytes())
    document["callflow"][0]["caller_profile"]["caller_id_name"] = "\udcff"
    not_utf8.write_bytes(json.dumps(document, ensure_ascii=False).encode("utf-8", "surrogateescape"))
    os.utime(not_utf8, (old, old))
    whole = being_written.read_bytes()
    being_written.write_bytes(whole[: len(whole) // 3])  # still being written: recent mtime
    (folder / "notes.txt").write_text("not a CDR")
    (folder / "a_garbage.cdr.json").write_bytes(b"\x00\x01 binary")
    os.utime(folder / "a_garbage.cdr.json", (old, old))
    ini = write_config(tmp_path, fake.port, extra=backfill_config(folder))
    daemon = DaemonProcess(ini, tmp_path / "daemon.log")
    try:
        waited = 0.0
        while len(db_rows(tmp_path / "cdrs.db")) < len(expected) - 2:
            os.utime(being_written)  # FreeSWITCH is still writing it
            gevent.sleep(0.2)
            waited += 0.2
            assert waited < WAIT
        being_written.write_bytes(whole)  # now complete: a later scan takes it
        rows = wait_rows(tmp_path / "cdrs.db", len(expected) - 1, timeout=40)
        rows = settle(tmp_path / "cdrs.db", 1.0)
    finally:
        assert daemon.stop() == 0
        fake.stop()
    by_id = {r["call_id"]: r for r in rows}
    truncated_leg = truncated.name[:-9].removeprefix("a_")
    assert set(by_id) == set(expected) - {truncated_leg}
    warned = {e["path"]: e["error"] for e in log_events(daemon, "json_cdr_unreadable")}
    assert "truncated JSON" in warned[str(truncated)]
    assert str(folder / "a_garbage.cdr.json") in warned
    assert str(being_written) not in warned  # too fresh to judge, then whole
    assert [e["path"] for e in log_events(daemon, "json_cdr_not_utf8")] == [str(not_utf8)]
    not_utf8_leg = not_utf8.name[:-9].removeprefix("a_")
    assert by_id[not_utf8_leg]["hangup_cause"] == expected[not_utf8_leg]["hangup_cause"]


# -- incremental ------------------------------------------------------------


def write_files(folder: Path, hangups: list[dict], fake: FakeFreeSWITCH, age: float) -> list[Path]:
    paths = []
    when = time.time() - age
    for event in hangups:
        event.update({"Core-UUID": fake.core_uuid, "FreeSWITCH-Switchname": fake.hostname})
        path = folder / json_cdr_filename(event)
        path.write_text(json.dumps(json_cdr_document(event)) + "\n")
        os.utime(path, (when, when))
        paths.append(path)
    return paths


def test_restarts_read_only_new_files_and_store_each_leg_once(tmp_path, tmp_path_factory):
    expected = reference(tmp_path_factory)
    folder = tmp_path / "json_cdr"
    folder.mkdir()
    hangups = [e.event() for e in source() if e.template.event_id == "CHANNEL_HANGUP_COMPLETE"]
    fake = FakeFreeSWITCH().start()
    write_files(folder, hangups[:100], fake, age=120)
    ini = write_config(tmp_path, fake.port, extra=backfill_config(folder))
    db = tmp_path / "cdrs.db"
    try:
        first = DaemonProcess(ini, tmp_path / "first.log")
        try:
            assert len(wait_rows(db, 100)) == 100
            wait_until(lambda: log_events(first, "backfill_scan"))
        finally:
            assert first.stop() == 0
        seqs = {r["call_id"]: r["seq"] for r in db_rows(db)}
        # FreeSWITCH wrote 30 more while eslcdr was stopped.
        write_files(folder, hangups[100:], fake, age=SETTLED)
        second = DaemonProcess(ini, tmp_path / "second.log")
        try:
            rows = wait_rows(db, len(expected))
            wait_until(lambda: len(log_events(second, "backfill_scan")) >= 2)
            rows = settle(db, 0.5)
        finally:
            assert second.stop() == 0
    finally:
        fake.stop()
    assert_complete(rows, expected, from_files=set(expected))
    # The first 100 legs kept their rows (and seqs): stored once.
    assert {r["call_id"]: r["seq"] for r in rows if r["call_id"] in seqs} == seqs
    # The restart listed only the files newer than the stored mark.
    scans = log_events(second, "backfill_scan")
    assert scans[0]["files"] == len(hangups) - 100 and scans[0]["backfilled"] == len(hangups) - 100
    assert all(scan["backfilled"] == 0 for scan in scans[1:])


def test_check_reports_the_json_cdr_folder(tmp_path):
    from tests.unit.test_cli import eslcdr  # a subprocess, gevent serving the stand-in meanwhile

    fake = FakeFreeSWITCH().start()
    try:
        results = {}
        for name, folder in (("missing", tmp_path / "nope"), ("there", tmp_path)):
            ini = write_config(tmp_path, fake.port, extra=backfill_config(folder))
            results[name] = eslcdr("check", "-c", str(ini), cwd=tmp_path, timeout=WAIT)
    finally:
        fake.stop()
    assert results["missing"].returncode == 1
    assert "json_cdr_dir %s: %s is not a folder" % (tmp_path / "nope", tmp_path / "nope") in results["missing"].stdout
    assert results["there"].returncode == 0, results["there"].stdout
    assert "json_cdr_dir %s: readable" % tmp_path in results["there"].stdout


def test_a_stop_during_a_scan_leaves_nothing_it_read_unwritten(tmp_path):
    # SIGTERM while the first scan of a folder of many files still reads
    # them: what the scan handed to the writer before it saw the stop is
    # committed too (it went on with its listing and left records in memory:
    # 'drained: true, unwritten: 80'), the rest is read at the next start.
    folder = tmp_path / "json_cdr"
    folder.mkdir()
    fake = FakeFreeSWITCH().start()
    many = GeneratedSource(calls=1500, seed=SEED, start_time=START)
    hangups = [e.event() for e in many if e.template.event_id == "CHANNEL_HANGUP_COMPLETE"]
    write_files(folder, hangups, fake, age=60)
    ini = write_config(tmp_path, fake.port, extra=backfill_config(folder))
    daemon = DaemonProcess(ini, tmp_path / "daemon.log")
    try:
        wait_until(lambda: db_rows(tmp_path / "cdrs.db"))
        assert daemon.stop() == 0
    finally:
        daemon.stop()
        fake.stop()
    rows = len(db_rows(tmp_path / "cdrs.db"))
    assert 0 < rows < len(hangups), "the stop did not come during the scan"
    done, = log_events(daemon, "shutdown_done")
    assert done["drained"] is True and done["unwritten"] == 0, done
    assert done["written"] == rows
