"""One node's worker against a hostile feed: a real HTTP server that sends
what a broken or malicious node could, a real PostgreSQL behind."""

from __future__ import annotations

import http.server
import threading

import gevent.event
import psycopg
import pytest

from eslcdr.collector import pgschema
from eslcdr.collector.config import from_mapping
from eslcdr.collector.feed import FeedError, FeedProtocolError, RecordTooLarge
from eslcdr.collector.pgstore import PgStore
from eslcdr.collector.worker import NodeWorker

from .test_api import leg
from .test_collector_store import feed_items, ts


class FeedServer:
    """Answers every request with ``self.body`` and ``self.headers``."""

    def __init__(self) -> None:
        self.body = b""
        self.headers = {"X-DB-ID": "db-1"}
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802 -- http.server's name
                outer.requests.append(self.path)
                self.send_response(200)
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
        pgschema.migrate(conn)
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
