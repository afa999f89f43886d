"""Issue 15, point 6, end to end: crafted event streams from the stand-in
(eslcdr.fakefs, in this process) over real TCP sockets into a real ``eslcdr
run``, whose feed a real ``eslcdr collect`` pulls into a real PostgreSQL.

One daemon reads two stand-ins -- one speaking JSON, one plain -- and one
collector pulls it; each test reads what one part stored.  The events are the
legs of real captures (tests/data) under new Unique-IDs, moved to a minute
ago (the collector takes hangups of the last 400 days only):

1. a DTMF flood: one leg of S1 with 5,000 DTMF events;
2. S3's SIP self-calls in account A, and again a second later in account B
   under the same caller-chosen Call-IDs;
3. NUL in the caller name, an X- SIP header and a custom channel variable
   (its name and its value) of S1's legs: ``\\u0000`` in the JSON stand-in's
   frames, ``%00`` in the plain one's;
4. S1's call in account A, and again two minutes later with its first leg
   under the same Unique-ID (a caller's Call-ID sent again, Kazoo's
   ``inbound-use-callid-as-uuid``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from eslcdr.fakefs import FakeFreeSWITCH, StaticSource

from tests.conftest import capture_events, fresh_database
from tests.harness import DaemonProcess, db_rows, settle, wait_rows, wait_until, write_config
from tests.expected_cdrs import INTERACTIONS, ROW_COUNT
from tests.unit.ingest.test_cdr import dtmf_flood, interaction_groups, same_call_ids_elsewhere
from tests.unit.ingest.test_reused_ids import reusing
from tests.e2e.test_collect_e2e import TOKEN, CollectorProcess, assert_same_row, pg_rows
from tests.e2e.test_collect_hostile_e2e import node_after
from tests.unit.esl.test_events import NUL_HEADERS, nul_free
from tests.e2e.test_hostile_e2e import envelope_of, get, status_of

ACCOUNT_A = "4b0cd3c1e0a2f2c6a8d9e1f20a3b4c5d"
ACCOUNT_B = "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b"
TOKEN_A = "account-a-token"
NODE = "fs-e2e"  # the daemon, as the collector names it
FLOOD = 5_000
WAIT = 60.0


def moved(capture: str, tag: str, account: str | None = None, later_s: int = 0) -> list[dict]:
    """The capture's events under new leg ids (``tag``), a minute ago (plus
    ``later_s``), in ``account``; SIP Call-IDs kept."""
    events = capture_events(capture)
    shift = int(time.time()) - 60 - int(events[0]["Event-Date-Timestamp"]) // 10**6
    return same_call_ids_elsewhere(events, tag, account, shift_s=shift + later_s)


def leg_ids(events: list[dict]) -> set[str]:
    return {e["Unique-ID"] for e in events}


@dataclass
class Ingested:
    rows: dict[str, dict]  # SQLite, by call_id
    pg: dict[str, dict]  # PostgreSQL, by call_id
    rejects: list[dict]  # PostgreSQL's collector_rejects
    daemon: DaemonProcess
    api_port: int
    dtmf_leg: str
    legs_a: set[str]
    legs_b: set[str]
    nul_json: set[str]
    nul_plain: set[str]
    reused: str  # the Unique-ID two legs had


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, pg_server):
    root: Path = tmp_path_factory.mktemp("hostile-ingest")
    dtmf_events, dtmf_leg = dtmf_flood(moved("S1_json.esl", "dtmf:"), FLOOD, digit="7")
    account_a = moved("S3_json.esl", "a:", ACCOUNT_A)
    account_b = moved("S3_json.esl", "b:", ACCOUNT_B, later_s=1)
    nul_json = [dict(e, **NUL_HEADERS) for e in moved("S1_json.esl", "nul-json:")]
    nul_plain = [dict(e, **NUL_HEADERS) for e in moved("S1_json.esl", "nul-plain:")]
    reused_first = moved("S1_json.esl", "reuse:", ACCOUNT_A, later_s=-300)
    reused_again, reused = reusing(reused_first, 120)
    expected_rows = 4 + 2 * ROW_COUNT["S3_json"] + 4 + 4 + 2 * 4

    as_json = FakeFreeSWITCH(events=StaticSource(dtmf_events + account_a + account_b + nul_json
                                                 + reused_first + reused_again), hold=True).start()
    as_plain = FakeFreeSWITCH(events=StaticSource(nul_plain), hold=True).start()
    (root / "tokens").write_text("%s *\n%s %s\n" % (TOKEN, TOKEN_A, ACCOUNT_A))
    ini = write_config(root, as_json.port, "json", extra="[esl:fs2]\nport = %d\nformat = plain\n" % as_plain.port)
    daemon = DaemonProcess(ini, root / "daemon.log")
    collector = None
    try:
        api_port = daemon.api_port()
        wait_rows(root / "cdrs.db", expected_rows, timeout=WAIT)
        assert as_json.wait_done(timeout=WAIT) and as_plain.wait_done(timeout=WAIT)
        rows = settle(root / "cdrs.db")
        assert len(rows) == expected_rows, daemon.log_path.read_text()[-3000:]
        with fresh_database(pg_server) as dsn:
            collector = CollectorProcess(root, dsn, {NODE: "http://127.0.0.1:%d" % api_port})
            collector.port()
            last = max(r["seq"] for r in rows)
            # Every record handled (stored, or kept in collector_rejects):
            # polled, not asserted here -- each test says what is missing.
            wait_until(lambda: node_after(dsn, NODE) >= last, timeout=WAIT)
            pg = {r["call_id"]: r for r in pg_rows(dsn)}
            rejects = pg_rows(dsn, "SELECT * FROM collector_rejects")
            assert collector.stop() == 0
            collector = None
        yield Ingested({r["call_id"]: r for r in rows}, pg, rejects, daemon, api_port, dtmf_leg,
                       leg_ids(account_a), leg_ids(account_b), leg_ids(nul_json), leg_ids(nul_plain), reused)
    finally:
        if collector is not None:
            collector.stop()
        daemon.stop()
        as_json.stop()
        as_plain.stop()


def test_a_dtmf_flood_is_stored_as_its_first_256_digits_and_logged(ingested):
    from eslcdr.ingest.legs import MAX_DTMF_DIGITS

    assert ingested.rows[ingested.dtmf_leg]["digits_dialed"] == "7" * MAX_DTMF_DIGITS == "7" * 256
    truncated = [e for e in ingested.daemon.log_events() if e["event"] == "dtmf_digits_truncated"]
    assert [(e["call_id"], e["received"], e["kept"]) for e in truncated] == [(ingested.dtmf_leg, FLOOD, 256)]
    # The collector took the row as the node wrote it.
    assert ingested.pg[ingested.dtmf_leg]["digits_dialed"] == "7" * 256
    assert_same_row(ingested.rows[ingested.dtmf_leg], ingested.pg[ingested.dtmf_leg])


def test_a_sip_call_id_in_two_accounts_links_nothing_across_them(ingested):
    rows, pg = ingested.rows, ingested.pg
    assert {rows[c]["account_id"] for c in ingested.legs_a} == {ACCOUNT_A}
    assert {rows[c]["account_id"] for c in ingested.legs_b} == {ACCOUNT_B}
    # Each account's two ends of a self-call still share an id (S3 links
    # them only through the Call-ID) ...
    for tag in ("a:", "b:"):
        assert all(len(ids) == 1 for ids in interaction_groups(rows, "S3_json", tag)), tag
    # ... and no id is in both accounts: not in SQLite, not in PostgreSQL.
    for stored in (rows, pg):
        ids_a = {stored[c]["interaction_id"] for c in ingested.legs_a}
        ids_b = {stored[c]["interaction_id"] for c in ingested.legs_b}
        assert len(ids_a) == len(ids_b) == len(INTERACTIONS["S3_json"])
        assert not ids_a & ids_b
    for call_id in ingested.legs_a | ingested.legs_b:
        assert_same_row(rows[call_id], pg[call_id])
    # Account A's API lists, under each of its interactions, its own legs only.
    by_interaction: dict[str, set[str]] = {}
    for call_id in ingested.legs_a:
        by_interaction.setdefault(rows[call_id]["interaction_id"], set()).add(call_id)
    for interaction_id, legs in by_interaction.items():
        response = get(ingested.api_port, "/v2/accounts/%s/cdrs/legs/%s" % (ACCOUNT_A, interaction_id),
                       b"X-Auth-Token: %s\r\n" % TOKEN_A.encode(), version=b"HTTP/1.0")  # not chunked
        assert status_of(response) == 200, response[:300]
        listed = {record["call_id"] for record in envelope_of(response)["data"]}
        assert listed == legs and not listed & ingested.legs_b


@pytest.mark.parametrize("fmt", ["json", "plain"])
def test_nul_is_stored_as_u_fffd_by_the_daemon_and_the_collector(ingested, fmt):
    legs = ingested.nul_json if fmt == "json" else ingested.nul_plain
    assert len(legs) == 4
    assert {ingested.rows[c]["node"] for c in legs} == {"fs-test" if fmt == "json" else "fs2"}
    for call_id in legs:
        row = ingested.rows[call_id]
        assert nul_free(row), row
        assert row["caller_id_name"] == "Al\ufffdice"
        assert json.loads(row["custom_sip_headers"])["x_tenant"] == "t\ufffdenant"
        assert json.loads(row["custom_channel_vars"]) == {"note": "n\ufffdote", "bad\ufffdkey": "v\ufffd"}
    # PostgreSQL (text and jsonb) holds every such record, none refused.
    assert [(r["call_id"], r["reason"], r["error"]) for r in ingested.rejects if r["call_id"] in legs] == []
    for call_id in legs:
        row = ingested.pg.get(call_id)
        assert row is not None, call_id
        assert row["caller_id_name"] == "Al\ufffdice"
        assert row["custom_sip_headers"]["x_tenant"] == "t\ufffdenant"
        assert row["custom_channel_vars"] == {"note": "n\ufffdote", "bad\ufffdkey": "v\ufffd"}
        assert_same_row(ingested.rows[call_id], row)


def test_a_unique_id_taken_again_by_a_new_channel_is_a_second_cdr(ingested):
    # Before, the second leg was a "duplicate": no CDR, nowhere.
    twice = sorted((r for r in ingested.rows.values() if r["call_id"].split("~")[0] == ingested.reused),
                   key=lambda r: r["created_us"])
    assert [r["call_id"] for r in twice] == [ingested.reused, "%s~%d" % (ingested.reused, twice[1]["created_us"])]
    assert twice[1]["created_us"] - twice[0]["created_us"] == 120_000_000
    assert twice[0]["interaction_id"] != twice[1]["interaction_id"]
    for row in twice:
        assert_same_row(row, ingested.pg[row["call_id"]])
        response = get(ingested.api_port, "/v2/accounts/%s/cdrs/%s" % (ACCOUNT_A, row["id"]),
                       b"X-Auth-Token: %s\r\n" % TOKEN_A.encode(), version=b"HTTP/1.0")
        assert envelope_of(response)["data"]["channel_created_time"] == row["created_us"], response[:300]
    assert [e["stored_as"] for e in ingested.daemon.log_events() if e["event"] == "cdr_call_id_reused"] \
        == [twice[1]["call_id"]]


def test_nothing_was_refused_or_lost_on_the_way(ingested):
    assert ingested.rejects == []
    assert set(ingested.pg) == set(ingested.rows)
    assert all(r["source"] == NODE for r in ingested.pg.values())
