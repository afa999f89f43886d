"""One node's worker against a hostile feed: a real HTTP server that sends
what a broken or malicious node could, a real PostgreSQL behind."""

from __future__ import annotations

import dataclasses
import http.server
import json
import threading

import gevent.event
import psycopg
import pytest
from structlog.testing import capture_logs

from eslcdr.collector import pgmigrations
from eslcdr.collector import worker as worker_module
from eslcdr.collector.config import from_mapping
from eslcdr.collector.feed import FeedError, FeedProtocolError, RecordTooLarge
from eslcdr.collector.pgstore import NodeClaimed, PgStore
from eslcdr.collector.worker import NodeWorker

from tests.unit.api.test_api import leg
from tests.unit.collector.test_collector_store import feed_items, ts


class FeedServer:
    """Answers every request with ``self.body`` and ``self.headers``."""

    def __init__(self) -> None:
        self.body = b""
        self.status = 200
        self.headers = {"X-DB-ID": "db-1"}
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802 -- http.server's name
                outer.requests.append(self.path)
                self.send_response(outer.status)
                for name, value in outer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self.server.server_address[1]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def feed():
    server = FeedServer()
    yield server
    server.stop()


@pytest.fixture
def worker(feed, pg_dsn):
    with psycopg.connect(pg_dsn) as conn:
        pgmigrations.migrate(conn)
    cfg = from_mapping({"collector": {"dsn": pg_dsn, "timeout": "5", "max_record_bytes": "4096"},
                        "node:fs1": {"url": feed.url, "token": "t"}})
    node_worker = NodeWorker(cfg.nodes[0], cfg, gevent.event.Event(), connect=lambda: PgStore.connect(pg_dsn))
    yield node_worker
    node_worker.close()


def cursor(pg_dsn):
    with psycopg.connect(pg_dsn) as conn:
        return conn.execute("SELECT after, rows, db_id FROM collector_nodes WHERE node = 'fs1'").fetchone()


def lines(tmp_path, count):
    return [item.line for item in feed_items(tmp_path, [leg(ts(2026, 11)) for _ in range(count)])]


def test_an_endless_line_is_refused_and_stores_nothing(feed, worker, pg_dsn):
    feed.body = b'{"seq": 1, "call_id": "' + b"x" * 100_000
    with pytest.raises(RecordTooLarge):
        worker.pull_once()
    assert cursor(pg_dsn) == (0, 0, None)
    assert "after=0" in feed.requests[0] and "limit=10000" in feed.requests[0]


def test_lines_before_a_bad_one_are_stored_then_the_pull_stops(feed, worker, pg_dsn, tmp_path):
    good = lines(tmp_path, 2)
    feed.body = b"\n".join(good + [b'{"seq": 1, "call_id": "going-back"}']) + b"\n"
    with pytest.raises(FeedProtocolError):
        worker.pull_once()
    assert cursor(pg_dsn) == (2, 2, "db-1")
    # The next pull asks for what is after them.
    feed.body = b""
    assert worker.pull_once() is False
    assert "after=2" in feed.requests[-1]


def test_a_feed_without_db_id_is_an_error(feed, worker, pg_dsn, tmp_path):
    feed.headers = {}
    feed.body = b"\n".join(lines(tmp_path, 1)) + b"\n"
    with pytest.raises(FeedError):
        worker.pull_once()
    assert cursor(pg_dsn) == (0, 0, None)


def test_a_cut_inside_the_last_line_keeps_the_complete_ones(feed, worker, pg_dsn, tmp_path):
    good = lines(tmp_path, 3)
    feed.body = good[0] + b"\n" + good[1] + b"\n" + good[2][:50]
    with pytest.raises(FeedError):
        worker.pull_once()
    assert cursor(pg_dsn) == (2, 2, "db-1")


def test_more_records_than_asked_for_stop_the_pull(feed, worker, pg_dsn, tmp_path, monkeypatch):
    monkeypatch.setattr(worker_module, "FEED_LIMIT", 2)
    feed.body = b"\n".join(lines(tmp_path, 3)) + b"\n"
    with pytest.raises(FeedProtocolError) as err:
        worker.pull_once()
    assert "more than the 2 records" in str(err.value)
    assert cursor(pg_dsn) == (2, 2, "db-1")  # the two asked for are stored


def test_a_node_that_answers_again_is_logged_once_as_recovered(feed, worker, pg_dsn, tmp_path):
    feed.headers = {}  # no X-DB-ID: every pull fails
    waits: list[float] = []

    def wait(seconds):  # the backoff asked for, not slept
        waits.append(seconds)
        if len(waits) == 2:
            feed.headers, feed.body = {"X-DB-ID": "db-1"}, b"\n".join(lines(tmp_path, 2)) + b"\n"
        elif len(waits) == 3:  # the poll wait after the good pull
            worker._stop.set()

    worker._wait = wait
    with capture_logs() as logs:
        worker.run()
    events = [(e["event"], e.get("on"), e.get("attempt") or e.get("failed_attempts")) for e in logs
              if e["event"].startswith("collect_pull")]
    assert events == [("collect_pull_failed", "node", 1), ("collect_pull_failed", "node", 2),
                      ("collect_pull_recovered", None, 2)]
    recovered = [e for e in logs if e["event"] == "collect_pull_recovered"][0]
    assert recovered["node"] == "fs1" and recovered["after"] == 2 and recovered["failing_seconds"] >= 0
    assert "X-DB-ID" in recovered["last_error"] and cursor(pg_dsn) == (2, 2, "db-1")


def test_postgresql_down_is_named_in_the_log_and_last_error_then_recovered(feed, pg_dsn, tmp_path):
    with psycopg.connect(pg_dsn) as conn:
        pgmigrations.migrate(conn)
    cfg = from_mapping({"collector": {"dsn": pg_dsn, "timeout": "5"},
                        "node:fs1": {"url": feed.url, "token": "a-node-token"}})
    refused = ["postgresql://eslcdr@127.0.0.1:1/nothing"] * 2  # two connects refused, then the real one
    node_worker = NodeWorker(cfg.nodes[0], cfg, gevent.event.Event(),
                             connect=lambda: PgStore.connect(refused.pop() if refused else pg_dsn))
    feed.body = b"\n".join(lines(tmp_path, 1)) + b"\n"
    errors: list[str] = []

    def wait(seconds):
        errors.append(node_worker.health().get("last_error"))
        if len(errors) == 3:
            node_worker._stop.set()

    node_worker._wait = wait
    try:
        with capture_logs() as logs:
            node_worker.run()
    finally:
        node_worker.close()
    failed = [e for e in logs if e["event"] == "collect_pull_failed"]
    assert [e["on"] for e in failed] == ["postgresql", "postgresql"]
    assert errors[0].startswith("PostgreSQL: OperationalError: ")
    assert [e["failed_attempts"] for e in logs if e["event"] == "collect_pull_recovered"] == [2]
    assert node_worker.state == "caught_up" and node_worker.rows_stored == 1


def test_a_node_is_pulled_by_one_collector_at_a_time_and_the_second_names_the_first(feed, pg_dsn, tmp_path):
    # Two collectors configured for one node and one database (a copied config,
    # a second host): the second waits, saying who holds the node, and takes
    # over once the first stops -- it never pulls meanwhile.
    with psycopg.connect(pg_dsn) as conn:
        pgmigrations.migrate(conn)
    cfg = from_mapping({"collector": {"dsn": pg_dsn, "timeout": "5"},
                        "node:fs1": {"url": feed.url, "token": "a-node-token"}})
    feed.headers, feed.body = {"X-DB-ID": "db-1"}, b"\n".join(lines(tmp_path, 2)) + b"\n"
    first = NodeWorker(cfg.nodes[0], cfg, gevent.event.Event(),
                       connect=lambda: PgStore.connect(pg_dsn, application_name="collector-one"))
    second = NodeWorker(cfg.nodes[0], cfg, gevent.event.Event(), connect=lambda: PgStore.connect(pg_dsn))
    other = NodeWorker(dataclasses.replace(cfg.nodes[0], name="fs2"), cfg, gevent.event.Event(),
                       connect=lambda: PgStore.connect(pg_dsn))
    try:
        assert first.pull_once() is False and first.rows_stored == 2
        asked = len(feed.requests)
        with pytest.raises(NodeClaimed) as refused:
            second.pull_once()
        assert "node fs1 is pulled into this database by another collector (collector-one, " in str(refused.value)
        assert len(feed.requests) == asked  # the node was not asked
        other.pull_once()  # another node's claim is its own (its rows: fs1's calls, refused as such)
        assert other.after == 2
        waits: list[float] = []

        def wait(seconds):  # the first stops after the second's first refusal
            waits.append(seconds)
            if len(waits) == 1:
                first.close()
                feed.body = b""  # the node has nothing after seq 2
            else:
                second._stop.set()

        second._wait = wait
        with capture_logs() as logs:
            second.run()
        failed = [e for e in logs if e["event"] == "collect_pull_failed"]
        assert [(e["on"], e["attempt"]) for e in failed] == [("collector", 1)]
        assert failed[0]["error"].startswith("NodeClaimed: node fs1 is pulled into this database by another")
        assert second.last_error_kind == "collector:NodeClaimed"
        assert [e["failed_attempts"] for e in logs if e["event"] == "collect_pull_recovered"] == [1]
        assert second.state == "caught_up" and cursor(pg_dsn) == (2, 2, "db-1")
    finally:
        for node_worker in (first, second, other):
            node_worker.close()


@pytest.mark.parametrize("status, message, hint", [
    (401, "invalid_credentials: invalid credentials", "eslcdr token add --account '*'"),
    (403, "forbidden: forbidden", "not a '*' token on the node"),
])
def test_a_refused_token_is_one_short_line_saying_what_to_do(feed, worker, pg_dsn, status, message, hint):
    # A node's error answer is Kazoo's envelope: its message is what matters,
    # not its request_id, timestamp or echoed auth_token.
    code, text = message.split(": ")
    feed.status = status
    feed.body = json.dumps({"data": {"message": text}, "error": str(status), "message": code, "status": "error",
                            "request_id": "0dc6d8d4a377496ab4da36194b003356", "node": "fs2",
                            "timestamp": "2026-12-07T17:55:20Z", "version": "0.1.0", "auth_token": "t"}).encode()
    with pytest.raises(FeedError) as err:
        worker.pull_once()
    shown = str(err.value)
    assert shown.startswith("HTTP %d from the feed: %s (" % (status, message)) and hint in shown
    assert "request_id" not in shown and "auth_token" not in shown
    assert cursor(pg_dsn) == (0, 0, None)


def test_a_db_id_that_keeps_changing_backs_off_and_shows_as_an_error(feed, pg_dsn, tmp_path):
    with psycopg.connect(pg_dsn) as conn:
        pgmigrations.migrate(conn)
    cfg = from_mapping({"collector": {"dsn": pg_dsn, "timeout": "5"}, "node:fs1": {"url": feed.url, "token": "t"}})
    stop = gevent.event.Event()
    node_worker = NodeWorker(cfg.nodes[0], cfg, stop, connect=lambda: PgStore.connect(pg_dsn))
    waits = []
    node_worker._wait = waits.append  # the backoff asked for, not slept
    feed.body = b"\n".join(lines(tmp_path, 1)) + b"\n"
    try:
        with capture_logs() as logs:
            assert node_worker.pull_once() is False  # first contact: db-1
            for number in range(2, 7):
                feed.headers = {"X-DB-ID": "db-%d" % number}
                assert node_worker.pull_once() is True  # restarted from 0, after waits[-1]
    finally:
        node_worker.close()
    # 1 s, 2 s, 4 s, 8 s, 16 s ceilings (full jitter: half to whole)
    assert [round(w / c, 1) >= 0.5 and w <= c for w, c in zip(waits, (1, 2, 4, 8, 16))] == [True] * 5
    flapping = [e for e in logs if e["event"] == "collect_node_db_id_flapping"]
    assert [e["changes_last_hour"] for e in flapping] == [4, 5] and flapping[0]["log_level"] == "warning"
    health = node_worker.health()
    assert health["state"] == "error" and "db_id changed 5 times" in health["last_error"]
    assert health["db_id_changes_last_hour"] == 5 and health["db_restarts"] == 5


@pytest.mark.parametrize("dsn, pieces", [
    ("postgresql://u:hunter2@s3cr3tpw@127.0.0.1:1/db", ("s3cr3tpw",)),
    ("postgresql://u:s3cr3t%zzpw@127.0.0.1:1/db", ("s3cr3t", "zzpw")),
])
def test_the_dsn_password_never_reaches_health_logs_or_last_error(feed, pg_dsn, dsn, pieces):
    # collector.ini refuses these DSNs; a worker handed one must still hide it
    cfg = dataclasses.replace(from_mapping({"collector": {"dsn": pg_dsn, "timeout": "1"},
                                            "node:fs1": {"url": feed.url, "token": "t"}}), dsn=dsn)
    stop = gevent.event.Event()
    stop.set()  # no backoff sleep
    node_worker = NodeWorker(cfg.nodes[0], cfg, stop)
    with pytest.raises(psycopg.Error) as err:
        node_worker.pull_once()
    assert any(piece in str(err.value) for piece in pieces)  # libpq names it
    with capture_logs() as logs:
        node_worker._failed(err.value, 1)
    shown = json.dumps(node_worker.health()) + json.dumps(logs) + (node_worker.last_error or "")
    assert node_worker.state == "error" and "[redacted]" in node_worker.last_error
    assert not any(piece in shown for piece in pieces)


def test_workers_raise_the_young_gc_threshold_and_never_lower_it():
    """A batch's parsed records outlive many generation-0 collections, which
    pushed them towards full collections of the whole heap: a running worker
    raises the threshold (a higher one set by the operator stays)."""
    import gc

    saved = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        worker_module.fewer_young_collections()
        assert gc.get_threshold() == (worker_module.GC_YOUNG_THRESHOLD, 10, 10)
        gc.set_threshold(worker_module.GC_YOUNG_THRESHOLD * 2, 5, 5)
        worker_module.fewer_young_collections()
        assert gc.get_threshold() == (worker_module.GC_YOUNG_THRESHOLD * 2, 5, 5)
    finally:
        gc.set_threshold(*saved)
