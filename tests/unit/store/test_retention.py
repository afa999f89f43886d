"""Retention (DESIGN §3.5): old rows go, unless a registered collector has
not acknowledged them; the file gives the space back."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
import urllib.request

import gevent
import pytest

from eslcdr.store import db as store
from eslcdr.fakefs import FakeFreeSWITCH, ReplaySource
from eslcdr.ingest.legs import GREGORIAN_OFFSET as G
from eslcdr.api.tokens import TokenStore
from eslcdr.store import writer as writer_module
from eslcdr.store.retention import delete_expired
from eslcdr.store.writer import Writer

from tests.conftest import DATA
from tests.harness import DaemonProcess, db_rows, wait_until, write_config
from tests.expected_cdrs import EXPECTED
from tests.unit.api.test_api import leg

DAY = 86_400
NOW_G = int(time.time()) + G


def call_ids(path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute("SELECT call_id FROM cdrs")}


def old_and_new(conn, old: int, new: int) -> tuple[list[dict], list[dict]]:
    olds = [leg(NOW_G - 3 * DAY + i) for i in range(old)]
    news = [leg(NOW_G - 3600 + i) for i in range(new)]
    store.insert_records(conn, olds + news)
    return olds, news


# ----------------------------------------------------------------- store level


def test_without_collector_age_alone_decides(tmp_path):
    conn = store.connect_writer(tmp_path / "a.db")
    olds, news = old_and_new(conn, 25, 5)
    assert delete_expired(conn, NOW_G - DAY, [], limit=10) == 10
    assert delete_expired(conn, NOW_G - DAY, [], limit=10) == 10
    assert delete_expired(conn, NOW_G - DAY, [], limit=10) == 5
    assert delete_expired(conn, NOW_G - DAY, [], limit=10) == 0
    assert call_ids(tmp_path / "a.db") == {r["call_id"] for r in news}


def test_a_registered_collector_holds_back_what_it_has_not_acknowledged(tmp_path):
    conn = store.connect_writer(tmp_path / "a.db")
    olds, news = old_and_new(conn, 10, 2)
    store.insert_records(conn, [], acks={"c1": (4, 1), "c2": (7, 1), "gone": (0, 1)})
    # c1 and c2 are current collector tokens; "gone" was removed from the
    # tokens file and "never" never pulled: neither holds anything back.
    current = {"c1", "c2", "never"}
    assert delete_expired(conn, NOW_G - DAY, current) == 4
    assert call_ids(tmp_path / "a.db") == {r["call_id"] for r in olds[4:] + news}
    store.insert_records(conn, [], acks={"c1": (12, 2)})
    assert delete_expired(conn, NOW_G - DAY, current) == 3  # c2 still at 7
    store.insert_records(conn, [], acks={"c2": (12, 2)})
    assert delete_expired(conn, NOW_G - DAY, current) == 3
    assert call_ids(tmp_path / "a.db") == {r["call_id"] for r in news}


def test_links_of_deleted_rows_go_with_them(tmp_path):
    conn = store.connect_writer(tmp_path / "a.db")
    old = dict(leg(NOW_G - 3 * DAY, interaction="i-old"), links=["never-written-partner", "sip:abc"])
    new = dict(leg(NOW_G, interaction="i-new"), links=["live-partner"])
    store.insert_records(conn, [old, new])
    assert delete_expired(conn, NOW_G - DAY, []) == 1
    links = conn.execute("SELECT call_id, interaction_id FROM interaction_links").fetchall()
    assert links == [("live-partner", "i-new")]


def test_incremental_vacuum_shrinks_the_file(tmp_path):
    path = tmp_path / "a.db"
    conn = store.connect_writer(path)
    for _ in range(8):
        old_and_new(conn, 1000, 0)
    old_and_new(conn, 0, 100)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages_before, size_before = conn.execute("PRAGMA page_count").fetchone()[0], path.stat().st_size
    while delete_expired(conn, NOW_G - DAY, []) == 1000:
        pass
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages_after, size_after = conn.execute("PRAGMA page_count").fetchone()[0], path.stat().st_size
    assert len(call_ids(path)) == 100
    assert conn.execute("PRAGMA freelist_count").fetchone()[0] == 0
    assert pages_after * 10 < pages_before and size_after * 10 < size_before


def test_an_old_file_is_converted_to_incremental_auto_vacuum_once(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    store.migrate(conn)  # as an earlier eslcdr built it: auto_vacuum NONE
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    store.insert_records(conn, [leg(NOW_G)])
    conn.close()
    conn = store.connect_writer(path)
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == store.AUTO_VACUUM_INCREMENTAL
    assert len(call_ids(path)) == 1


def test_writer_deletes_between_insert_batches_once_ingest_has_caught_up(tmp_path, monkeypatch):
    path = tmp_path / "a.db"
    conn = store.connect_writer(path)
    old_and_new(conn, 2500, 0)
    writer = Writer(conn, batch_size=100, flush_interval=0.01, retention_batch=1000)
    work = []

    def recording(name, real):
        def call(*args, **kwargs):
            work.append((name, writer.backlog))
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(writer_module, "insert_records", recording("insert", store.insert_records))
    monkeypatch.setattr(writer_module, "delete_expired", recording("delete", delete_expired))
    for n in range(300):
        writer.submit(leg(NOW_G - n))
    writer.schedule_retention(NOW_G - DAY, frozenset())
    greenlet = gevent.spawn(writer.run)
    assert writer.wait_idle(timeout=10)
    waited = 0.0
    while writer.retention_running and waited < 10:
        gevent.sleep(0.01)
        waited += 0.01
    for n in range(300, 302):  # a trickle: each record, then one delete batch
        writer.submit(leg(NOW_G - n))
        writer.schedule_retention(NOW_G - DAY, frozenset())
        assert writer.wait_idle(timeout=10)
        while writer.retention_running and waited < 10:
            gevent.sleep(0.01)
            waited += 0.01
    writer.stop()
    greenlet.join(timeout=10)
    assert writer.deleted == 2500 and len(call_ids(path)) == 302
    # No delete while a whole batch was waiting; then batches of 1000.
    assert [name for name, _ in work] == ["insert"] * 3 + ["delete"] * 3 + ["insert", "delete"] * 2
    assert all(backlog < 100 for name, backlog in work if name == "delete")


def test_collector_keys_are_the_star_tokens_in_force(tmp_path):
    tokens = tmp_path / "tokens"
    store = TokenStore(tokens, check_interval=0)
    assert store.collector_keys() == frozenset()
    tokens.write_text("secret-one *\nsecret-two 4b0cd3c1e0a2f2c6a8d9e1f20a3b4c5d\nsha256:%s *\n" % ("ab" * 32))
    expected = {hashlib.sha256(b"secret-one").hexdigest(), "ab" * 32}
    assert store.collector_keys() == expected and store.error is None
    # A file that does not parse: the set in force stays, and says why.
    tokens.write_text("only-one-field\n")
    assert store.collector_keys() == expected
    assert "line 1" in store.error


def test_rows_simply_due_at_the_first_check_are_not_taken_for_a_collector_holding_them_back(tmp_path):
    # A first start with retention on: a month of rows due, a collector pulling
    # every second (a few recent rows not pulled yet). Before, the second check
    # judged on figures read right after the first one asked for the deletion
    # (the writer deletes later) and warned retention_held_back_by_collector
    # for rows already gone -- then stayed silent for an hour.
    from structlog.testing import capture_logs

    import gevent.event

    from eslcdr.config import from_mapping
    from eslcdr.store.retention import Retention

    path = tmp_path / "a.db"
    conn = store.connect_writer(path)
    olds, news = old_and_new(conn, 50, 5)
    collector = hashlib.sha256(b"collector-token").hexdigest()
    store.insert_records(conn, [], acks={collector: (len(olds) + 3, 1)})  # 2 recent rows unpulled

    class LaterWriter:
        """Deletes when told to, as the writer does between its batches."""
        deleted = 0
        asked = None

        def schedule_retention(self, cutoff, collectors):
            self.asked = (cutoff, collectors)

        @property
        def retention_running(self):
            return self.asked is not None

        def run(self):
            while self.asked and delete_expired(conn, *self.asked, limit=1000) == 1000:
                pass
            self.asked = None

    class Tokens:
        error = None

        def collector_keys(self):
            return frozenset({collector})

    writer = LaterWriter()
    config = from_mapping({"store": {"path": str(path), "retention_days": "1"}})
    retention = Retention(config, writer, gevent.event.Event(), Tokens())
    with capture_logs() as logs:
        retention.check()  # asks for the deletion
        writer.run()
        retention.check()
        writer.run()
        retention.check()
    assert call_ids(path) == {r["call_id"] for r in news}
    assert [e for e in logs if e["event"] == "retention_held_back_by_collector"] == []
    # A collector that stopped pulling: its old rows stay, and that is said once.
    olds_again = [leg(NOW_G - 3 * DAY + i) for i in range(100, 103)]  # written after its last pull
    store.insert_records(conn, olds_again)
    with capture_logs() as logs:
        retention.check()
        writer.run()
        retention.check()
        retention.check()
    held = [e for e in logs if e["event"] == "retention_held_back_by_collector"]
    assert len(held) == 1 and held[0]["oldest_timestamp"] == olds_again[0]["timestamp"]
    assert call_ids(path) == {r["call_id"] for r in news + olds_again}


# ------------------------------------------------------------ real daemon


def http_json(port: int, path: str, token: str | None = None) -> dict:
    headers = {"X-Auth-Token": token} if token else {}
    request = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:  # /health answers 503 while degraded
        return json.loads(exc.read())


RETENTION = "retention_days = 1\nretention_check_interval = 0.2\n"


def config_with(tmp_path, old_port: int, new_port: int):
    ini = write_config(tmp_path, old_port)
    text = ini.read_text().replace("[store]\n", "[store]\n" + RETENTION)
    ini.write_text(text + "[esl:recent]\nport = %d\n" % new_port)
    return ini


@pytest.mark.subprocess
def test_daemon_deletes_old_calls_without_collector_and_the_file_shrinks(tmp_path):
    db = tmp_path / "cdrs.db"
    conn = store.connect_writer(db)
    for _ in range(6):
        old_and_new(conn, 1000, 0)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size_before = db.stat().st_size
    conn.close()
    now = time.time()
    old = FakeFreeSWITCH(events=ReplaySource([DATA / "S1_json.esl"], time_base=now - 3 * DAY), hold=True).start()
    new = FakeFreeSWITCH(events=ReplaySource([DATA / "S2_json.esl"], time_base=now - 60), hold=True).start()
    daemon = DaemonProcess(config_with(tmp_path, old.port, new.port), tmp_path / "daemon.log")
    recent = set(EXPECTED["S2_json"])
    try:
        assert old.wait_done(timeout=30) and new.wait_done(timeout=30)
        assert wait_until(lambda: call_ids(db) == recent), call_ids(db)
        # The log line follows the commit: under load it can lag the rows.
        deleted = wait_until(lambda: (lambda n: n if n == 6000 + len(EXPECTED["S1_json"]) else 0)(
            sum(e.get("rows", 0) for e in daemon.log_events() if e["event"] == "retention_deleted")))
        assert deleted == 6000 + len(EXPECTED["S1_json"])
        # The figures of /health follow at the next check.
        cutoff = int(now) + G - DAY
        health = wait_until(lambda: (lambda h: h if (h["store"].get("oldest_timestamp") or 0) > cutoff else None)(
            http_json(daemon.api_port(), "/health")))
        rows = db_rows(db, "SELECT min(timestamp) AS t FROM cdrs")
        assert health["store"]["oldest_timestamp"] == rows[0]["t"]
        assert health["store"]["deleted"] == deleted and health["store"]["collectors"] == {}
    finally:
        assert daemon.stop() == 0
        old.stop()
        new.stop()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    assert db.stat().st_size * 5 < size_before


@pytest.mark.subprocess
def test_daemon_keeps_old_calls_until_the_collector_has_acknowledged_them(tmp_path):
    token = "collector-token-for-retention"
    (tmp_path / "tokens").write_text("%s *\n" % token)
    db = tmp_path / "cdrs.db"
    # The collector pulled this database before (after=0): it is registered.
    conn = store.connect_writer(db)
    store.insert_records(conn, [], acks={hashlib.sha256(token.encode()).hexdigest(): (0, 1)})
    conn.close()
    now = time.time()
    old = FakeFreeSWITCH(events=ReplaySource([DATA / "S1_json.esl"], time_base=now - 3 * DAY), hold=True).start()
    new = FakeFreeSWITCH(events=ReplaySource([DATA / "S2_json.esl"], time_base=now - 60), hold=True).start()
    daemon = DaemonProcess(config_with(tmp_path, old.port, new.port), tmp_path / "daemon.log")
    olds, recent = set(EXPECTED["S1_json"]), set(EXPECTED["S2_json"])
    try:
        port = daemon.api_port()
        assert wait_until(lambda: call_ids(db) == olds | recent)
        # Several retention checks pass; nothing acknowledged, nothing deleted.
        health = wait_until(lambda: (lambda h: h if h["store"].get("unpulled_max") == len(olds | recent) else None)(
            http_json(port, "/health")))
        gevent.sleep(1.0)
        assert call_ids(db) == olds | recent
        assert list(health["store"]["collectors"].values())[0]["unpulled"] == len(olds | recent)
        held = [e for e in daemon.log_events() if e["event"] == "retention_held_back_by_collector"]
        assert len(held) == 1 and list(held[0]["collectors"].values())[0]["acked_seq"] == 0
        # The collector pulls three rows, then acknowledges them with its next pull.
        first = http_json(port, "/v2/feed/cdrs?limit=3", token)
        pulled = [r["call_id"] for r in first["data"]]
        rest = http_json(port, "/v2/feed/cdrs?after=%d" % first["next_after"], token)
        gone = set(pulled) & olds
        assert wait_until(lambda: call_ids(db) == (olds | recent) - gone)
        gevent.sleep(0.5)
        assert call_ids(db) == (olds | recent) - gone
        # Everything acknowledged: the old calls go, the recent ones stay.
        http_json(port, "/v2/feed/cdrs?after=%d" % rest["next_after"], token)
        assert wait_until(lambda: call_ids(db) == recent)
        metrics = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10).read().decode()
        assert "eslcdr_db_bytes " in metrics and "eslcdr_feed_unpulled_rows_max" in metrics
    finally:
        assert daemon.stop() == 0
        old.stop()
        new.stop()


@pytest.mark.subprocess
def test_daemon_a_collector_removed_from_the_tokens_file_holds_nothing_back(tmp_path):
    (tmp_path / "tokens").write_text("still-here-but-never-pulled *\n")
    db = tmp_path / "cdrs.db"
    conn = store.connect_writer(db)
    # This collector pulled once (after=0), then its token was removed.
    store.insert_records(conn, [], acks={hashlib.sha256(b"removed-token").hexdigest(): (0, 1)})
    conn.close()
    now = time.time()
    old = FakeFreeSWITCH(events=ReplaySource([DATA / "S1_json.esl"], time_base=now - 3 * DAY), hold=True).start()
    new = FakeFreeSWITCH(events=ReplaySource([DATA / "S2_json.esl"], time_base=now - 60), hold=True).start()
    daemon = DaemonProcess(config_with(tmp_path, old.port, new.port), tmp_path / "daemon.log")
    try:
        assert old.wait_done(timeout=30) and new.wait_done(timeout=30)
        assert wait_until(lambda: call_ids(db) == set(EXPECTED["S2_json"])), call_ids(db)

        def deleted() -> int:
            return sum(e.get("rows", 0) for e in daemon.log_events() if e["event"] == "retention_deleted")

        # The log line follows the commit: under load it can lag the rows.
        assert wait_until(lambda: deleted() == len(EXPECTED["S1_json"])), deleted()
    finally:
        assert daemon.stop() == 0
        old.stop()
        new.stop()
