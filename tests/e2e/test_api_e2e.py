"""The API end to end: a real gevent WSGIServer (api.make_server) on 127.0.0.1,
real sockets, http.client, and a writer committing CDRs while clients read.

The server runs in its own OS thread (with its own hub), the writer in
another: nothing monkey-patches the test process.
"""

from __future__ import annotations

import csv
import http.client
import io
import json
import threading
import time
from typing import Callable

import pytest

from eslcdr.api import app as api
from eslcdr.store import db as store
from eslcdr.config import from_mapping
from eslcdr.api.tokens import TokenStore

from tests.harness import exchange, wait_until
from tests.unit.api.test_api import A, ACC_A, COLLECTOR, NOW_G, TOKENS, leg


class LogLines:
    """A file-like access/error log sink (what the daemon passes as ``log``)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, text: str) -> None:
        self.lines.append(text)

    def flush(self) -> None:
        pass


class Worker(threading.Thread):
    """``target`` in a (daemon) OS thread, started at once; join() is bounded
    and fails when the thread has not finished."""

    def __init__(self, target: Callable[[], None]) -> None:
        super().__init__(target=target, daemon=True)
        self.start()

    def join(self, timeout: float = 30) -> None:
        super().join(timeout)
        assert not self.is_alive(), "thread did not finish"


class ServerThread:
    """The API served by api.make_server in its own thread (with its own hub)."""

    def __init__(self, app, log: LogLines) -> None:
        self._app = app
        self._log = log
        self._ready = threading.Event()
        self._thread = Worker(self._run)
        assert self._ready.wait(timeout=10)

    def _run(self) -> None:
        import gevent

        self.server = api.make_server(self._app, "127.0.0.1", 0, log=self._log, error_log=self._log)
        self.server.start()
        self.port = self.server.server_port
        self.hub = gevent.get_hub()
        self._ready.set()
        self.server.serve_forever()
        self.hub.destroy(destroy_loop=True)

    def stop(self) -> None:
        import gevent

        # server.stop() waits for handlers: run it in a greenlet of that hub.
        self.hub.loop.run_callback_threadsafe(lambda: gevent.spawn(self.server.stop, 2))
        self._thread.join(10)

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)


@pytest.fixture
def served(tmp_path):
    path = tmp_path / "cdrs.db"
    writer = store.connect_writer(path)
    tokens = tmp_path / "tokens"
    tokens.write_text("".join("%s %s\n" % item for item in TOKENS.items()))
    config = from_mapping({"store": {"path": str(path)}, "api": {"tokens_file": str(tokens)}})
    log = LogLines()
    # Default runner: SQLite calls in the server hub's thread pool, as in the daemon.
    app = api.create_app(config, tokens=TokenStore(tokens), clock=lambda: NOW_G - 62167219200)
    server = ServerThread(app, log)
    yield server, writer, path, log
    server.stop()
    app.close()
    writer.close()


def get(conn: http.client.HTTPConnection, url: str, headers: dict | None = None):
    conn.request("GET", url, headers=A if headers is None else headers)
    response = conn.getresponse()
    return response, response.read()


def test_routes_over_a_real_socket(served):
    server, writer, _, _ = served
    records = [leg(NOW_G - i, caller_id_name='O\'Brien, "Mary"\n渡辺') for i in range(1234)]
    store.insert_records(writer, records)
    conn = server.connection()
    response, body = get(conn, "/v2/accounts/%s/cdrs?page_size=7" % ACC_A)
    page = json.loads(body)
    assert response.status == 200 and response.getheader("Content-Type") == "application/json"
    assert [r["call_id"] for r in page["data"]] == [r["call_id"] for r in records[:7]]
    assert "next_start_key" in page

    # A streamed CSV export: chunked, and the same rows as the JSON export.
    response, body = get(conn, "/v2/accounts/%s/cdrs?accept=csv&file_name=all.csv" % ACC_A)
    assert response.status == 200 and response.getheader("Transfer-Encoding") == "chunked"
    assert response.getheader("Content-Disposition") == 'attachment; filename="all.csv"'
    table = list(csv.reader(io.StringIO(body.decode("utf-8"), newline="")))
    response, body = get(conn, "/v2/accounts/%s/cdrs?paginate=false" % ACC_A)
    assert response.getheader("Transfer-Encoding") == "chunked"
    everything = json.loads(body)["data"]
    assert len(table) == 1 + len(everything) == 1 + len(records)
    assert [row[3] for row in table[1:]] == [r["caller_id_name"] for r in everything]

    response, body = get(conn, "/v2/accounts/%s/cdrs" % ACC_A, headers={})
    assert response.status == 401 and json.loads(body)["message"] == "invalid_credentials"
    conn.request("DELETE", "/v2/accounts/%s/cdrs" % ACC_A, headers=A)
    response = conn.getresponse()
    assert response.status == 405 and json.loads(response.read())["error"] == "405"
    response, body = get(conn, "/health", headers={})
    assert response.status == 200 and json.loads(body) == {"status": "ok"}
    response, body = get(conn, "/metrics", headers={})
    assert b"eslcdr_api_requests_total" in body


def raw_exchange(port: int, request: bytes) -> tuple[int, dict]:
    head, _, body = exchange(port, request).partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def test_server_level_errors_are_envelopes(served):
    server = served[0]
    status, body = raw_exchange(server.port, b"GET /v2/accounts/x/cdrs?" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n")
    assert status == 414 and body["status"] == "error" and body["error"] == "414"
    status, body = raw_exchange(server.port, b"NOT A REQUEST LINE\r\n\r\n")
    assert status == 400 and body["error"] == "400"
    # Long but acceptable URLs reach the app, which answers in the envelope.
    conn = server.connection()
    response, raw = get(conn, "/v2/accounts/%s/cdrs?filter_caller_id_name=%s" % (ACC_A, "x" * 7000))
    assert response.status == 400 and json.loads(raw)["message"] == "validation error"


def test_access_log_never_holds_the_token(served):
    server, _, _, log = served
    conn = server.connection()
    response, _ = get(conn, "/v2/accounts/%s/cdrs?auth_token=token-a&page_size=2" % ACC_A, headers={})
    assert response.status == 200
    conn.close()
    # The access log line is written after the response: wait for it.
    assert wait_until(lambda: "auth_token=[redacted]&page_size=2" in "".join(log.lines), timeout=10)
    assert "token-a" not in "".join(log.lines)


def test_access_log_redacts_a_token_no_tokens_file_holds(served):
    """A revoked token (or another server's) pasted into a path goes by its
    shape; the ids the paths carry stay readable."""
    server, _, _, log = served
    revoked = "Hq8_tR2-wPx5KmB9vLs3nDy6cFj1gZe4uAo7iNk0bVt"
    cdr = "/v2/accounts/%s/cdrs/202612-5b2c0f7e-8a1d-4c3e-9f6b-2d7a1e0c4b9f" % ACC_A
    conn = server.connection()
    assert get(conn, "/v2/accounts/%s/cdrs" % revoked)[0].status == 403
    assert get(conn, cdr)[0].status == 404
    conn.close()
    assert wait_until(lambda: len(log.lines) >= 2, timeout=10)
    assert revoked not in "".join(log.lines)
    assert '"GET /v2/accounts/[redacted]/cdrs HTTP/1.1" 403' in "".join(log.lines)
    assert '"GET %s HTTP/1.1" 404' % cdr in "".join(log.lines)


def test_feed_and_paging_while_a_writer_commits(served):
    """Pulling with the returned cursors while CDRs keep arriving yields every
    record exactly once; paging a listing skips and repeats nothing."""
    server, writer, _, _ = served
    existing = [leg(NOW_G - 3000 + i // 4) for i in range(400)]
    store.insert_records(writer, existing)
    committed: list[dict] = list(existing)
    finished: list[bool] = []

    def write_more() -> None:
        for n in range(60):
            batch = [leg(NOW_G - 3000 + (n * 7 + i) % 500) for i in range(1 + n % 5)]
            store.insert_records(writer, batch)
            committed.extend(batch)
            time.sleep(0.005)
        finished.append(True)

    thread = Worker(write_more)
    feed_conn, list_conn = server.connection(), server.connection()
    pulled, after = [], 0
    listed, url = [], "/v2/accounts/%s/cdrs?page_size=9" % ACC_A
    while url or not finished:
        _, body = get(feed_conn, "/v2/feed/cdrs?limit=7&after=%d" % after, headers=COLLECTOR)
        page = json.loads(body)
        pulled += [r["call_id"] for r in page["data"]]
        after = page["next_after"]
        if url:
            _, body = get(list_conn, url)
            listing = json.loads(body)
            listed += [r["call_id"] for r in listing["data"]]
            key = listing.get("next_start_key")
            url = "/v2/accounts/%s/cdrs?page_size=9&start_key=%s" % (ACC_A, key) if key else None
    thread.join(30)
    response, body = get(feed_conn, "/v2/feed/cdrs?after=%d" % after,
                         headers={**COLLECTOR, "Accept": "application/x-ndjson"})
    assert response.getheader("Content-Type") == "application/x-ndjson"
    pulled += [json.loads(line)["call_id"] for line in body.decode().splitlines()]
    assert pulled == [r["call_id"] for r in committed]
    assert len(listed) == len(set(listed))
    assert {r["call_id"] for r in existing} <= set(listed)


def test_full_records_carry_the_legs_sip_call_id(served, events_of):
    # S4's legs (two loopback, the two ends of one SIP hop) built from the
    # real capture, stored, and read back over a real socket: the detail,
    # the legs CSV and the feed give each SIP leg its Call-ID as the capture
    # has it (the oracle); a leg without SIP has none.
    from tests.expected_cdrs import EXPECTED
    from tests.unit.ingest.test_cdr import run_capture

    server, writer, _, _ = served
    records, _ = run_capture(events_of("S4_json"))
    for record in records.values():
        record["account_id"] = ACC_A
    store.insert_records(writer, records.values())
    want = {call_id: leg.get("sip_call_id") for call_id, leg in EXPECTED["S4_json"].items()}
    assert sorted(map(bool, want.values())) == [False, False, True, True]
    assert len(set(filter(None, want.values()))) == 1  # one SIP hop, one Call-ID
    conn = server.connection()
    for record in records.values():
        _, body = get(conn, "/v2/accounts/%s/cdrs/%s" % (ACC_A, record["id"]))
        assert json.loads(body)["data"].get("sip_call_id") == want[record["call_id"]]
    _, body = get(conn, "/v2/accounts/%s/cdrs/legs/%s" % (ACC_A, next(iter(records.values()))["interaction_id"]),
                  headers={**A, "Accept": "text/csv"})
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert {r["call_id"]: r["sip_call_id"] or None for r in rows} == want
    _, body = get(conn, "/v2/feed/cdrs", headers=COLLECTOR)
    assert {r["call_id"]: r.get("sip_call_id") for r in json.loads(body)["data"]} == want
