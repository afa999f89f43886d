"""Captures replayed by the stand-in over TCP into ``eslcdr run``: the
``cdrs`` table holds one row per leg, every field as the events imply."""

from __future__ import annotations

import json

import pytest

from eslcdr.fakefs import FakeFreeSWITCH, ReplaySource, StaticSource

from tests.conftest import DATA, capture_events
from tests.harness import DaemonProcess, db_rows, settle, wait_rows, wait_until, write_config
from tests.expected_cdrs import EXPECTED, INTERACTIONS, ROW_COUNT, S7_LEG_IDS


def check_fields(rows: list[dict], capture: str) -> None:
    by_id = {r["call_id"]: r for r in rows}
    assert set(by_id) == set(EXPECTED[capture])
    for call_id, expected in EXPECTED[capture].items():
        row = by_id[call_id]
        for field, value in expected.items():
            got = row[field]
            if field in ("custom_sip_headers", "custom_channel_vars"):
                got = json.loads(got)
            elif isinstance(value, bool):
                got = None if got is None else bool(got)
            assert got == value, (capture, call_id, field)
        assert row["id"] == "202611-" + call_id
        assert row["node"] == "fs-test"


def check_interactions(rows: list[dict], capture: str) -> None:
    by_id = {r["call_id"]: r["interaction_id"] for r in rows}
    ids = []
    for call in INTERACTIONS[capture]:
        found = {by_id[c] for c in call}
        assert len(found) == 1, call
        ids.append(found.pop())
    assert len(set(ids)) == len(ids)


def replay(tmp_path, capture_files, fmt="json", expected_rows=None, **fake_options):
    return serve(tmp_path, ReplaySource([DATA / f for f in capture_files]), fmt, expected_rows, **fake_options)


def serve(tmp_path, source, fmt="json", expected_rows=None, **fake_options):
    """Stand-in serving ``source`` into a fresh ``eslcdr run``; the rows once
    every event was delivered and nothing more arrived."""
    fake = FakeFreeSWITCH(events=source, hold=True, **fake_options)
    fake.start()
    daemon = DaemonProcess(write_config(tmp_path, fake.port, fmt), tmp_path / "daemon.log")
    try:
        rows = wait_rows(tmp_path / "cdrs.db", expected_rows)
        assert fake.wait_done(timeout=30)
        rows = settle(tmp_path / "cdrs.db")
    finally:
        code = daemon.stop()
        fake.stop()
    assert code == 0, (tmp_path / "daemon.log").read_text()[-3000:]
    return rows, daemon


SCENARIO_CAPTURES = sorted(EXPECTED)  # S1..S7, plain and json


@pytest.mark.parametrize("capture", SCENARIO_CAPTURES)
def test_scenario_through_socket_and_daemon(tmp_path, capture):
    # A plain capture is served as JSON (and vice versa): the stand-in
    # re-encodes in the subscribed format, as FreeSWITCH would.
    fmt = "plain" if capture.endswith("_json") else "json"
    rows, _ = replay(tmp_path, [capture + ".esl"], fmt=fmt, expected_rows=ROW_COUNT[capture])
    assert len(rows) == ROW_COUNT[capture]
    check_fields(rows, capture)
    check_interactions(rows, capture)


@pytest.mark.parametrize("capture", ["S7_json", "S7_plain"])
def test_burst_one_row_per_leg(tmp_path, capture):
    rows, _ = replay(tmp_path, [capture + ".esl"], expected_rows=80)
    assert len(rows) == 80
    assert {r["call_id"] for r in rows} == set(S7_LEG_IDS[capture])
    check_fields(rows, capture)
    check_interactions(rows, capture)
    assert len({r["seq"] for r in rows}) == 80


def test_same_capture_twice_adds_no_row(tmp_path):
    events = capture_events("S1_json.esl")
    rows, _ = serve(tmp_path, StaticSource(events + events), expected_rows=4)
    assert len(rows) == 4
    # And again, into a restarted daemon with the same file.
    rows_again, _ = replay(tmp_path, ["S1_json.esl"], expected_rows=5)
    assert [(r["seq"], r["call_id"]) for r in rows_again] == [(r["seq"], r["call_id"]) for r in rows]


def test_dropped_socket_mid_stream_loses_no_cdr(tmp_path):
    # The stand-in closes the socket after 150 of S7's 300 events; the stream
    # holds while nobody listens, the daemon reconnects and gets the rest.
    rows, daemon = replay(tmp_path, ["S7_json.esl"], expected_rows=80, drop_after=150)
    assert len(rows) == 80
    assert all(r["hangup_cause"] == "NORMAL_CLEARING" for r in rows)
    check_interactions(rows, "S7_json")
    events = [e["event"] for e in daemon.log_events()]
    # The drop may hit before or after the login sequence completed.
    drops = events.count("esl_disconnected") + events.count("esl_connect_failed")
    assert drops >= 1
    assert events.count("esl_resync") >= 1 and events.count("esl_connected") >= 1


def test_legs_whose_hangup_was_missed_still_get_a_row(tmp_path):
    # Without hold, events emitted while disconnected are lost, as with a real
    # FreeSWITCH; the resync after the reconnect writes the vanished legs.
    before_drop = capture_events("S7_json.esl")[:150]
    seen = {event["Unique-ID"] for event in before_drop}
    # Hung up before the drop: the rest of the legs seen lost their hangup
    # unless the daemon was back before the stream moved past it.
    hung_up = {e["Unique-ID"] for e in before_drop if e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE"}
    assert seen - hung_up  # the capture gives the scenario legs to miss

    def rows_once_every_seen_leg_has_one() -> list[dict] | None:
        rows = db_rows(tmp_path / "cdrs.db")
        return rows if seen <= {r["call_id"] for r in rows} else None

    fake = FakeFreeSWITCH(events=ReplaySource([DATA / "S7_json.esl"]), drop_after=150)
    fake.start()
    daemon = DaemonProcess(write_config(tmp_path, fake.port), tmp_path / "daemon.log")
    try:
        assert fake.wait_done(timeout=30)
        # Every leg the daemon saw before the drop gets a row (after the
        # resync grace of 5 s + a check interval): polled, not slept.
        rows = wait_until(rows_once_every_seen_leg_has_one)
    finally:
        assert daemon.stop() == 0
        fake.stop()
    assert rows is not None, "not every leg seen before the drop got a row"
    missed = [r for r in rows if r["disposition"] == "eslcdr_hangup_not_seen"]
    # The scenario must produce hangups not seen, on legs that did not hang up before the drop.
    assert missed
    assert {r["call_id"] for r in missed} <= seen - hung_up
    assert all(r["hangup_cause"] is None for r in missed)


def test_malformed_frames_skipped_no_cdr_lost(tmp_path):
    rows, daemon = replay(tmp_path, ["S3_plain.esl"], expected_rows=8, malformed_every=3)
    assert len(rows) == 8
    check_fields(rows, "S3_plain")
    errors = [e for e in daemon.log_events() if e["event"] == "esl_protocol_error"]
    assert errors


def test_process_cdr_false_writes_nothing(tmp_path):
    events = [dict(e, variable_process_cdr="false") if e.get("Channel-Name", "").endswith("-b") else e for e in capture_events("S1_json.esl")]
    rows, _ = serve(tmp_path, StaticSource(events), expected_rows=2)
    assert sorted(r["channel_name"] for r in rows) == ["loopback/s1_answer-a", "loopback/s1_bridge-a"]


def test_wrong_password_is_a_clear_fatal_error(tmp_path):
    fake = FakeFreeSWITCH(password="right")
    fake.start()
    daemon = DaemonProcess(write_config(tmp_path, fake.port, password="Zq9-not-the-pw"), tmp_path / "daemon.log")
    try:
        code = daemon.wait_exit()
    finally:
        daemon.stop()
        fake.stop()
    assert code == 2
    failures = [e for e in daemon.log_events() if e["event"] == "esl_auth_failed"]
    # FreeSWITCH's own answer shown whole (the log scrubber took "password: -ERR"
    # for a secret and showed "[redacted] invalid")
    assert failures and failures[0]["error"] == "FreeSWITCH refused the password (-ERR invalid)"
    assert "Zq9-not-the-pw" not in (tmp_path / "daemon.log").read_text()


def test_freeswitch_down_at_start_then_up(tmp_path):
    import socket

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    daemon = DaemonProcess(write_config(tmp_path, port), tmp_path / "daemon.log")
    try:
        import gevent

        # Wait for a refused attempt (not a fixed sleep: a loaded machine
        # may take longer than that just to start the daemon).
        for _ in range(300):
            if any(e["event"] == "esl_connect_failed" for e in daemon.log_events()):
                break
            gevent.sleep(0.1)
        assert daemon.proc.poll() is None  # still retrying
        fake = FakeFreeSWITCH(port=port, events=ReplaySource([DATA / "S6_json.esl"]), hold=True)
        fake.start()
        rows = wait_rows(tmp_path / "cdrs.db", 2)
        fake.stop()
    finally:
        assert daemon.stop() == 0
    assert len(rows) == 2
    assert [e["event"] for e in daemon.log_events()].count("esl_connect_failed") >= 1


def test_two_freeswitch_nodes_one_database(tmp_path):
    first = FakeFreeSWITCH(events=ReplaySource([DATA / "S1_json.esl"]), hold=True).start()
    second = FakeFreeSWITCH(events=ReplaySource([DATA / "S3_plain.esl"]), hold=True, password="other").start()
    ini = write_config(
        tmp_path,
        first.port,
        extra="[esl:fs2]\nport = %d\npassword = other\nformat = plain\n" % second.port,
    )
    daemon = DaemonProcess(ini, tmp_path / "daemon.log")
    try:
        rows = wait_rows(tmp_path / "cdrs.db", 12)
        rows = settle(tmp_path / "cdrs.db")
    finally:
        assert daemon.stop() == 0
        first.stop()
        second.stop()
    nodes = {}
    for row in rows:
        nodes.setdefault(row["node"], set()).add(row["call_id"])
    assert nodes == {"fs-test": set(EXPECTED["S1_json"]), "fs2": set(EXPECTED["S3_plain"])}


def test_interaction_id_survives_a_daemon_restart_mid_call(tmp_path):
    events = capture_events("S4_json.esl")
    first_hangup = next(i for i, e in enumerate(events) if e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE")
    before, after = events[: first_hangup + 1], events[first_hangup + 1 :]
    fake = FakeFreeSWITCH(events=StaticSource(before), hold=True).start()
    daemon = DaemonProcess(write_config(tmp_path, fake.port), tmp_path / "daemon.log")
    try:
        assert len(wait_rows(tmp_path / "cdrs.db", 1)) == 1
    finally:
        assert daemon.stop() == 0
        fake.stop()
    # A new daemon process; FreeSWITCH still has the other three legs.
    fake = FakeFreeSWITCH(events=StaticSource(after), hold=True).start()
    daemon = DaemonProcess(write_config(tmp_path, fake.port), tmp_path / "daemon2.log")
    try:
        rows = wait_rows(tmp_path / "cdrs.db", 4)
    finally:
        assert daemon.stop() == 0
        fake.stop()
    assert len(rows) == 4
    assert len({r["interaction_id"] for r in rows}) == 1


@pytest.mark.parametrize("fmt", ["json", "plain"])
def test_nul_in_caller_name_x_header_and_custom_var_is_stored_as_u_fffd(tmp_path, fmt):
    # FreeSWITCH sends it as \u0000 (JSON) or %00 (plain); SQLite would keep
    # it, PostgreSQL (the collector) refuses it: the row holds U+FFFD instead.
    from tests.unit.esl.test_events import NUL_HEADERS, nul_free

    events = [dict(e, **NUL_HEADERS) for e in capture_events("S1_json.esl")]
    rows, _ = serve(tmp_path, StaticSource(events), fmt=fmt, expected_rows=4)
    assert len(rows) == 4
    for row in rows:
        assert nul_free(row), row
        assert row["caller_id_name"] == "Al\ufffdice"
        assert json.loads(row["custom_sip_headers"])["x_tenant"] == "t\ufffdenant"
        assert json.loads(row["custom_channel_vars"]) == {"note": "n\ufffdote", "bad\ufffdkey": "v\ufffd"}


def test_a_dtmf_flood_through_the_socket_stores_256_digits_and_logs_the_count(tmp_path):
    from tests.unit.ingest.test_cdr import dtmf_flood

    events, call_id = dtmf_flood(capture_events("S1_json.esl"), 5_000, digit="7")
    rows, daemon = serve(tmp_path, StaticSource(events), expected_rows=4)
    by_id = {r["call_id"]: r for r in rows}
    assert by_id[call_id]["digits_dialed"] == "7" * 256
    assert all(r["digits_dialed"] is None for c, r in by_id.items() if c != call_id)
    truncated = [e for e in daemon.log_events() if e["event"] == "dtmf_digits_truncated"]
    assert [(e["call_id"], e["received"], e["kept"]) for e in truncated] == [(call_id, 5_000, 256)]


def test_the_same_sip_call_id_in_two_accounts_makes_two_interactions(tmp_path):
    # S3's self-calls link only through their Call-ID; the same Call-IDs sent
    # in another account's calls a second later, through the socket into
    # eslcdr run: each account's ends still link, no id spans accounts.
    from tests.unit.ingest.test_cdr import same_call_ids_elsewhere

    ours = same_call_ids_elsewhere(capture_events("S3_json.esl"), "", "acct-a")
    theirs = same_call_ids_elsewhere(capture_events("S3_json.esl"), "b:", "acct-b", shift_s=1)
    rows, _ = serve(tmp_path, StaticSource(ours + theirs), expected_rows=2 * ROW_COUNT["S3_json"])
    assert len(rows) == 2 * ROW_COUNT["S3_json"]
    check_interactions([r for r in rows if r["account_id"] == "acct-a"], "S3_json")
    accounts_of: dict[str, set] = {}
    for row in rows:
        accounts_of.setdefault(row["interaction_id"], set()).add(row["account_id"])
    assert all(len(accounts) == 1 for accounts in accounts_of.values()), accounts_of
    assert len(accounts_of) == 2 * len(INTERACTIONS["S3_json"])
