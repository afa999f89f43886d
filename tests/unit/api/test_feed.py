"""The collector feed contract (DESIGN §3.4): db_id, acknowledgements by
``after=``, and a rewritten row delivered again under a new seq."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import urllib.request

import gevent
import pytest

from eslcdr.store import db as store
from eslcdr.fakefs import FakeFreeSWITCH, ReplaySource, StaticSource
from eslcdr.store.writer import Writer

from tests.conftest import DATA
from tests.harness import DaemonProcess, db_rows, wait_rows, write_config
from tests.expected_cdrs import ROW_COUNT
from tests.unit.api.test_api import COLLECTOR, NOW, NOW_G, Env, leg
from tests.unit.store.test_store import record, rows


@pytest.fixture
def env(tmp_path):
    environment = Env(tmp_path)
    yield environment
    environment.close()


def acks(path) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "SELECT token_sha256, acked_seq, first_pull_us, last_pull_us FROM collector_acks"
        ).fetchall()


# ----------------------------------------------------------------- store level


def test_db_id_is_minted_once_per_file(tmp_path):
    first = store.connect_writer(tmp_path / "a.db")
    db_id = store.database_id(first)
    assert len(db_id) == 32 and int(db_id, 16) >= 0
    first.close()
    assert store.database_id(store.connect_writer(tmp_path / "a.db")) == db_id
    assert store.database_id(store.connect_writer(tmp_path / "b.db")) != db_id


def test_merge_gives_the_rewritten_rows_new_seqs(tmp_path):
    conn = store.connect_writer(tmp_path / "a.db")
    store.insert_records(conn, [record(1, "old"), record(2, "keep"), record(3, "old"), record(4, "other")])
    before = {r[1]: r[0] for r in rows(tmp_path / "a.db")}
    store.insert_records(conn, [], merges=[("old", "keep")])
    after = {r[1]: (r[0], r[2]) for r in rows(tmp_path / "a.db")}
    assert set(after) == set(before)
    # The two rewritten rows come after every other row, in their old order.
    assert after["call-000001"][0] > before["call-000004"]
    assert after["call-000003"][0] > after["call-000001"][0]
    assert after["call-000002"] == (before["call-000002"], "keep")
    assert after["call-000004"] == (before["call-000004"], "other")
    assert after["call-000001"][1] == after["call-000003"][1] == "keep"
    # Every other column survived the rewrite.
    with sqlite3.connect(tmp_path / "a.db") as check:
        name, cvars = check.execute(
            "SELECT caller_id_name, custom_channel_vars FROM cdrs WHERE call_id = 'call-000003'"
        ).fetchone()
    assert name == 'Caller, "3" é' and json.loads(cvars) == {"k": 3}


def test_rewrite_rows_and_replace_records_take_new_seqs(tmp_path):
    conn = store.connect_writer(tmp_path / "a.db")
    store.insert_records(conn, [record(n) for n in range(1, 4)])
    conn.execute("BEGIN IMMEDIATE")
    assert store.rewrite_rows(conn, "call_id = ?", ["call-000001"], {"hangup_cause": "NORMAL_CLEARING"}) == 1
    with pytest.raises(ValueError, match="seq"):
        store.rewrite_rows(conn, "1", [], {"seq": 1})
    conn.execute("COMMIT")
    replacement = dict(record(2), hangup_cause="USER_BUSY", custom_channel_vars={"from": "json_cdr"})
    store.insert_records(conn, [], replacements=[replacement])
    got = [(seq, call_id) for seq, call_id, _ in rows(tmp_path / "a.db")]
    assert got == [(3, "call-000003"), (4, "call-000001"), (5, "call-000002")]
    with sqlite3.connect(tmp_path / "a.db") as check:
        assert check.execute("SELECT hangup_cause, custom_channel_vars FROM cdrs ORDER BY seq").fetchall() == [
            (None, '{"k": 3}'), ("NORMAL_CLEARING", '{"k": 1}'), ("USER_BUSY", '{"from": "json_cdr"}')]


def test_ack_is_the_latest_pull_capped_at_the_highest_seq(tmp_path):
    path = tmp_path / "a.db"
    conn = store.connect_writer(path)
    store.insert_records(conn, [record(n) for n in range(5)])
    store.insert_records(conn, [], acks={"k1": (3, 100)})
    assert acks(path) == [("k1", 3, 100, 100)]
    # A cursor of another database (a replaced file) cannot acknowledge rows
    # that do not exist yet.
    store.insert_records(conn, [], acks={"k1": (9_999, 200), "k2": (0, 200)})
    assert sorted(acks(path)) == [("k1", 5, 100, 200), ("k2", 0, 200, 200)]
    # A collector that starts over (after=0) holds rows back again.
    store.record_ack(path, "k1", 0, 300)
    assert sorted(acks(path))[0] == ("k1", 0, 100, 300)


def test_writer_stores_acks_without_records(tmp_path):
    conn = store.connect_writer(tmp_path / "a.db")
    writer = Writer(conn, flush_interval=0.01)
    greenlet = gevent.spawn(writer.run)
    store.insert_records(conn, [record(1)])
    writer.acknowledge("k", 1, 42)
    assert writer.wait_idle(timeout=10)
    writer.stop()
    greenlet.join(timeout=10)
    assert acks(tmp_path / "a.db") == [("k", 1, 42, 42)]


# ------------------------------------------------------------------- API level


def test_feed_answers_db_id_and_stores_the_ack_by_token_hash(env):
    env.insert([leg(NOW_G - i) for i in range(5)])
    db_id = store.database_id(env.writer)
    first = env.get("/v2/feed/cdrs?limit=3", headers=COLLECTOR)
    assert first.json["db_id"] == db_id and first.headers["X-DB-ID"] == db_id
    key = hashlib.sha256(b"token-collector").hexdigest()
    assert acks(env.path) == [(key, 0, int(NOW * 1e6), int(NOW * 1e6))]
    second = env.get("/v2/feed/cdrs?after=%d" % first.json["next_after"], headers=COLLECTOR)
    assert second.json["db_id"] == db_id and len(second.json["data"]) == 2
    assert acks(env.path)[0][:2] == (key, 3)
    ndjson = env.get("/v2/feed/cdrs?accept=ndjson&after=5", headers=COLLECTOR)
    assert ndjson.headers["X-DB-ID"] == db_id and ndjson.body == b""
    assert acks(env.path)[0][:2] == (key, 5)
    # Never the token itself.
    raw = b"".join(p.read_bytes() for p in env.path.parent.glob("cdrs.db*"))
    assert b"token-collector" not in raw
    # Another account's token is refused before anything is acknowledged.
    env.get("/v2/feed/cdrs?after=1", headers={"X-Auth-Token": "token-a"}, status=403)
    assert [a[:2] for a in acks(env.path)] == [(key, 5)]


def test_a_merge_after_a_pull_delivers_the_rows_again_no_gap_no_repeat(env):
    legs = [leg(NOW_G - 10 + i, interaction=("old" if i % 2 else "keep")) for i in range(6)]
    env.insert(legs)
    seen: list[dict] = []
    after = 0

    def pull() -> list[dict]:
        nonlocal after
        got = []
        while True:
            body = env.get("/v2/feed/cdrs?limit=4&after=%d" % after, headers=COLLECTOR).json
            if not body["data"]:
                return got
            got += body["data"]
            after = body["next_after"]

    seen += pull()
    assert [r["call_id"] for r in seen] == [r["call_id"] for r in legs]
    later = [leg(NOW_G, interaction="other")]
    env.insert(later)
    store.insert_records(env.writer, [], merges=[("old", "keep")])
    again = pull()
    # The new row, then the three rewritten rows in their new version: none
    # of the unchanged rows is delivered twice.
    assert [r["call_id"] for r in again] == [later[0]["call_id"]] + [legs[i]["call_id"] for i in (1, 3, 5)]
    assert [r["interaction_id"] for r in again] == ["other", "keep", "keep", "keep"]
    # A collector upserting by call_id now holds exactly the database.
    upserted = {r["call_id"]: r for r in seen + again}
    with sqlite3.connect(env.path) as conn:
        stored = dict(conn.execute("SELECT call_id, interaction_id FROM cdrs").fetchall())
    assert {k: v["interaction_id"] for k, v in upserted.items()} == stored


# ------------------------------------------------------------ real daemon


def http_json(port: int, path: str, token: str) -> dict:
    request = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), headers={"X-Auth-Token": token})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def wait_for(predicate, timeout: float = 10.0):
    waited = 0.0
    while waited < timeout:
        value = predicate()
        if value:
            return value
        gevent.sleep(0.05)
        waited += 0.05
    return predicate()


@pytest.mark.subprocess
def test_daemon_feed_db_id_survives_a_restart_and_acks_persist(tmp_path):
    token = "collector-secret-0123456789"
    (tmp_path / "tokens").write_text("%s *\n" % token)
    db = tmp_path / "cdrs.db"
    capture = "S1_json"
    fake = FakeFreeSWITCH(events=ReplaySource([DATA / (capture + ".esl")]), hold=True).start()
    daemon = DaemonProcess(write_config(tmp_path, fake.port), tmp_path / "daemon.log")
    try:
        assert len(wait_rows(db, ROW_COUNT[capture])) == ROW_COUNT[capture]
        port = daemon.api_port()
        body = http_json(port, "/v2/feed/cdrs?after=0", token)
        db_id, last = body["db_id"], body["next_after"]
        assert len(body["data"]) == ROW_COUNT[capture]
        assert http_json(port, "/v2/feed/cdrs?after=%d" % last, token)["data"] == []
        # Through the writer, within moments.
        key = hashlib.sha256(token.encode()).hexdigest()
        assert wait_for(lambda: db_rows(db, "SELECT token_sha256, acked_seq FROM collector_acks")) == [
            {"token_sha256": key, "acked_seq": last}]
    finally:
        assert daemon.stop() == 0
        fake.stop()
    fake = FakeFreeSWITCH(events=StaticSource([]), hold=True).start()
    daemon = DaemonProcess(write_config(tmp_path, fake.port), tmp_path / "daemon2.log")
    try:
        port = daemon.api_port()
        assert db_rows(db, "SELECT acked_seq FROM collector_acks") == [{"acked_seq": last}]
        assert http_json(port, "/v2/feed/cdrs?after=%d" % last, token)["db_id"] == db_id
    finally:
        assert daemon.stop() == 0
    # Another database file: another db_id.
    other = tmp_path / "other"
    other.mkdir()
    (other / "tokens").write_text("%s *\n" % token)
    daemon = DaemonProcess(write_config(other, fake.port), other / "daemon.log")
    try:
        body = http_json(daemon.api_port(), "/v2/feed/cdrs", token)
        assert body["db_id"] != db_id and body["data"] == [] and body["next_after"] == 0
    finally:
        assert daemon.stop() == 0
        fake.stop()
