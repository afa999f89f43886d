"""The API against hostile clients, end to end: a real ``eslcdr run``, real
sockets, the stand-in feeding it; what the daemon writes to stdout/stderr is
read back whole.

- no spelling of a token in a request (query, path, headers, broken request
  lines, undecodable bytes, too many headers) ever reaches the log;
- undecodable headers are a 400 with one warning line, never a 500;
- slow and idle connections are closed after the configured time while normal
  requests keep being served; the connection cap is enforced;
- a CSV reader that stops reading pins no snapshot: the WAL is checkpointed
  while calls keep arriving, every CDR is stored, the reader is dropped.
"""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.parse

import gevent
import pytest

from eslcdr.fakefs import FakeFreeSWITCH
from eslcdr.tokens import add_token

from .e2e import DaemonProcess, exchange, wait_until, write_config

ACCOUNT = "4b0cd3c1e0a2f2c6a8d9e1f20a3b4c5d"


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:200]
    return int(response.split(b" ", 2)[1])


def envelope_of(response: bytes) -> dict:
    return json.loads(response.partition(b"\r\n\r\n")[2])


def get(port: int, target: str | bytes, headers: bytes = b"", version: bytes = b"HTTP/1.1") -> bytes:
    target = target.encode("latin-1") if isinstance(target, str) else target
    return exchange(port, b"GET " + target + b" " + version + b"\r\nHost: x\r\nConnection: close\r\n"
                    + headers + b"\r\n")


@pytest.fixture
def start_daemon(tmp_path, monkeypatch):
    """``start_daemon(**api_keys)``: ``eslcdr run`` against a stand-in without
    calls, ``[api]`` keys set through the environment; returns (process, api port, token)."""
    started = []

    def start(**api_keys: object):
        for key, value in api_keys.items():
            monkeypatch.setenv("ESLCDR_API_%s" % key.upper(), str(value))
        fake = FakeFreeSWITCH(events=None)
        fake.start()
        token = add_token(tmp_path / "tokens", ACCOUNT)
        process = DaemonProcess(write_config(tmp_path, fake.port), tmp_path / "daemon.log")
        started.append((process, fake))
        return process, process.api_port(), token

    yield start
    for process, fake in started:
        process.stop()
        fake.stop()


@pytest.fixture
def daemon(start_daemon):
    return start_daemon()


def test_no_token_spelling_reaches_the_log(daemon):
    process, port, token = daemon
    cdrs = "/v2/accounts/%s/cdrs" % ACCOUNT
    encoded = "".join("%%%02X" % ord(c) for c in token)  # every character percent-encoded
    accepted = [
        cdrs + "?auth_token=" + token,
        cdrs + "?auth%5Ftoken=" + token,
        cdrs + "?auth_tok%65n=" + token,
        cdrs + "?%61uth_token=" + token + "&page_size=1",
        cdrs + "?auth_token=" + encoded,
    ]
    for target in accepted:  # each spelling is the token, and it works
        response = get(port, target)
        assert status_of(response) == 200, target
    refused = [
        cdrs + "?AUTH_TOKEN=" + token,
        cdrs + "?Auth%5FToken=" + token,
        cdrs + "?auth%255Ftoken=" + token,  # double-encoded
        cdrs + "?auth%255Ftoken=" + urllib.parse.quote(encoded),
        cdrs + "?auth+token=" + token,
        cdrs + "?auth_token=" + token[:20] + "+" + token[20:],
        "/v2/accounts/%s/cdrs" % token,  # the token where the account goes
        "/v2/accounts/%s/cdrs" % encoded,
        "/%s" % token,
        cdrs + "?" + token,
        cdrs + "?filter_caller_id_name=" + token,
        cdrs + "?filter_" + token + "=1",
        cdrs + "?start_key=" + token,
        cdrs + "?page_size=1;auth_token=" + token,
    ]
    for target in refused:
        assert status_of(get(port, target)) in (400, 401, 403, 404), target
    t = token.encode()
    header_cases = [
        (cdrs, b"Referer: http://evil.example/?auth_token=" + t + b"\r\n"),
        (cdrs, b"X-Request-ID: " + t + b"\r\n"),
        (cdrs, b"User-Agent: " + t + b"\r\n"),
        (cdrs, b"Authorization: Bearer " + t + b"\r\n"),
        (cdrs, b"Cookie: auth_token=" + t + b"\r\n"),
        (cdrs, b"X-" + t + b": 1\r\n"),
    ]
    for target, headers in header_cases:
        assert status_of(get(port, target, headers)) in (200, 401), headers
    # Undecodable bytes next to the token: 400, one warning, no repr of the bytes.
    for headers in (b"X-Auth-Token: " + t + b"\xff\r\n",
                    b"X-Auth-Token: \xfe" + t + b"\r\n",
                    b"Authorization: Bearer " + t + b"\xc3\x28\r\n",
                    b"X-Auth-Token: " + t + b"\r\nAccept: text/\xffcsv\r\n",
                    b"X-Auth-Token: " + t + b"\r\nX-File-Name: \xff" + t + b".csv\r\n",
                    b"X-Auth-Token: " + t + b"\r\nX-Whatever: \x80\x81\r\n"):
        response = get(port, cdrs + "?accept=csv", headers)
        assert status_of(response) == 400, headers
        body = envelope_of(response)
        assert body["status"] == "error" and body["error"] == "400" and t not in response
    # Request lines gevent cannot parse, each carrying the token.
    bad_lines = [
        b"GET " + cdrs.encode() + b"?auth_token=" + t + b"&filter_caller_id_name=a b HTTP/1.1\r\n\r\n",
        b"GET /?auth_token=" + t + b" HTTP/9.9\r\n\r\n",
        b"GET /?auth_token=" + t + b" HTTP/1.x\r\n\r\n",
        b"GET /?auth_token=" + t + b" FTP/1.1\r\n\r\n",
        b"BREW /?auth_token=" + t + b"\r\n\r\n",
        b"GET /%s HTTP/1.1\r\nHost: x\r\n" % t + b"Transfer-Encoding: chunked\r\n\r\nzz" + t + b"\r\n\r\n",
        b"GET /?auth_token=" + t + b" HTTP/1.1 extra " + t + b"\r\n\r\n",
        b"GET /?auth_token=" + t + b"&x=" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nX-Auth-Token: " + t + b"\r\nContent-Length: " + t + b"\r\n\r\n",
        b"GET / HTTP/1.1\r\nX-Auth-Token: " + t + b"x" * 70000 + b"\r\n\r\n",
        b"GET /?auth_token=" + t + b" HTTP/1.1\r\n"
        + b"".join(b"X-H%d: %s\r\n" % (i, t) for i in range(101)) + b"\r\n",
    ]
    for raw in bad_lines:
        response = exchange(port, raw)
        assert status_of(response) in (400, 404, 414), raw[:60]  # 404: the bad chunked body comes after
        assert envelope_of(response)["status"] == "error"
    # A client's word in place of the method: answered, and not logged.
    assert status_of(exchange(port, t + b" " + cdrs.encode() + b" HTTP/1.1\r\nConnection: close\r\n\r\n")) == 405
    # Still serving.
    assert status_of(get(port, cdrs, b"X-Auth-Token: " + t + b"\r\n")) == 200
    gevent.sleep(0.5)
    code = process.stop()
    assert code == 0
    text = process.log_path.read_text(errors="replace")
    raw = process.log_path.read_bytes()
    assert token not in text and t not in raw
    assert encoded not in text and encoded.lower() not in text
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines and all(line.startswith("{") for line in lines), [line for line in lines if not line.startswith("{")]
    events = [json.loads(line) for line in lines]
    assert not [e for e in events if e.get("level") == "error"]
    assert "Traceback" not in text
    bad = [e for e in events if e["event"] == "http_bad_request"]
    reasons = {e["reason"] for e in bad}
    assert {"bad_request_line", "bad_http_version", "too_many_headers", "request_line_too_long",
            "bad_number", "bad_header_line"} <= reasons
    assert all(e["level"] == "warning" for e in bad)
    undecodable = [e for e in events if e["event"] == "api_bad_header"]
    assert len(undecodable) == 6 and all(e["level"] == "warning" for e in undecodable)
    assert {e["header"] for e in undecodable} == {"X-Auth-Token", "Authorization", "Accept", "X-File-Name", "other"}
    served = [e for e in events if e["event"] == "http_request"]
    assert len(served) >= len(accepted) + len(refused) + len(header_cases)
    assert any("auth_token=[redacted]" in e["line"] for e in served)


def closed_by_server(sock: socket.socket, timeout: float) -> bytes | None:
    """What the server sent before closing (None if still open after timeout)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk
    except ConnectionResetError:
        return data
    except socket.timeout:
        return None


def health_ok(port: int) -> bool:
    return status_of(get(port, "/health")) in (200, 503)


def test_slow_idle_and_kept_alive_connections_are_closed_while_others_are_served(start_daemon):
    process, port, token = start_daemon(header_timeout=2, idle_timeout=2)
    silent = socket.create_connection(("127.0.0.1", port), timeout=10)
    slow = socket.create_connection(("127.0.0.1", port), timeout=10)
    kept = socket.create_connection(("127.0.0.1", port), timeout=10)
    kept.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += kept.recv(65536)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 ")
    length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))
    while len(body) < length:  # the body may come in a later segment
        body += kept.recv(65536)
    # A header line every half second: never a complete head.
    slow.sendall(b"GET /v2/accounts/%s/cdrs HTTP/1.1\r\n" % ACCOUNT.encode())
    slow_answer, served = None, 0
    for i in range(40):  # at most ~20 s
        try:
            slow.sendall(b"X-Slow-%d: still coming\r\n" % i)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert health_ok(port)  # others are served meanwhile
        served += 1
        slow_answer = closed_by_server(slow, 0.5)
        if slow_answer is not None:
            break
    assert slow_answer is not None, "slow-header connection still open"
    assert status_of(slow_answer) == 408 and envelope_of(slow_answer)["error"] == "408"
    assert served >= 2
    assert closed_by_server(silent, 15) == b""  # closed without a word
    assert closed_by_server(kept, 15) == b""
    assert health_ok(port)
    for sock in (silent, slow, kept):
        sock.close()
    process.stop()
    events = process.log_events()
    assert [e["level"] for e in events if e["event"] == "http_request_timeout"] == ["warning"]


def test_connections_past_the_cap_get_503_until_one_closes(start_daemon):
    process, port, token = start_daemon(max_connections=3, idle_timeout=60)
    held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]

    def refused_now() -> bytes | None:
        answer = get(port, "/health")
        return answer if status_of(answer) == 503 else None

    refused = wait_until(refused_now)  # once the server has accepted them, however long that takes
    assert refused is not None
    assert envelope_of(refused)["message"] == "too_many_connections"
    held.pop().close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and status_of(get(port, "/health")) == 503:
        gevent.sleep(0.1)
    assert status_of(get(port, "/health")) == 200
    for sock in held:
        sock.close()
    process.stop()
    assert any(e["event"] == "http_connections_refused" for e in process.log_events())


def generated_legs(source) -> set[str]:
    """Unique-IDs of the legs a generated source hangs up (one CDR each)."""
    legs = set()
    for emission in source:
        emission.core, emission.host = source.core_uuid, source.hostname
        event = emission.event()
        if event["Event-Name"] == "CHANNEL_HANGUP_COMPLETE":
            legs.add(event["Unique-ID"])
    return legs


def test_a_stalled_csv_reader_pins_no_snapshot_and_is_dropped(tmp_path, monkeypatch):
    """While a CSV reader stops reading, ~10,000 legs arrive: the WAL is
    checkpointed as usual (it stays small), every CDR is stored, and the
    reader is dropped after send_timeout."""
    from eslcdr import store
    from eslcdr.fakefs import GeneratedSource

    from .test_api import leg

    stall_seconds, send_timeout = 20.0, 25
    monkeypatch.setenv("ESLCDR_API_SEND_TIMEOUT", str(send_timeout))
    db = tmp_path / "cdrs.db"
    now_g = int(time.time()) + 62167219200
    existing = [leg(now_g - 60 - i % 3000, account=ACCOUNT, caller_id_name="n%05d " % i + "x" * 400)
                for i in range(20000)]  # a CSV far larger than the socket buffers
    writer = store.connect_writer(db)
    store.insert_records(writer, existing)
    writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    writer.close()
    source = GeneratedSource(calls=3000, seed=7)
    expected = generated_legs(GeneratedSource(calls=3000, seed=7))
    assert len(expected) > 9000
    token = add_token(tmp_path / "tokens", ACCOUNT)
    with socket.socket() as probe:  # a free port for the stand-in, started once the reader stalls
        probe.bind(("127.0.0.1", 0))
        esl_port = probe.getsockname()[1]
    fake = FakeFreeSWITCH(port=esl_port, events=source)
    process = None
    try:
        process = DaemonProcess(write_config(tmp_path, esl_port), tmp_path / "daemon.log")
        port = process.api_port()
        reader = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reader.settimeout(10)
        reader.connect(("127.0.0.1", port))
        reader.sendall(b"GET /v2/accounts/%s/cdrs?accept=csv&paginate=false HTTP/1.1\r\nHost: x\r\n"
                       b"X-Auth-Token: %s\r\n\r\n" % (ACCOUNT.encode(), token.encode()))
        head = reader.recv(1024)
        assert head.startswith(b"HTTP/1.1 200"), head
        fake.start()  # the daemon (re)connects within a second and the calls flow
        wal = db.with_name(db.name + "-wal")
        wal_sizes = []
        started = time.monotonic()
        while time.monotonic() - started < stall_seconds:  # not reading, calls arriving
            wal_sizes.append(wal.stat().st_size if wal.exists() else 0)
            gevent.sleep(0.2)
        assert fake.wait_done(timeout=120)
        waited = 0.0
        while waited < 60:
            stored = {row[0] for row in store_rows(db)}
            if expected <= stored:
                break
            gevent.sleep(0.5)
            waited += 0.5
        stored = {row[0] for row in store_rows(db)}
        assert expected <= stored and len(stored) == len(expected) + len(existing)
        # Dropped once send_timeout passed without progress.
        waited = 0.0
        while waited < 2 * send_timeout and not any(
                e.get("event") == "http_client_stalled" for e in process.log_events()):
            gevent.sleep(0.5)
            waited += 0.5
        stalled = [e for e in process.log_events() if e.get("event") == "http_client_stalled"]
        assert len(stalled) == 1 and stalled[0]["level"] == "warning"
        received = head + drain(reader)
        assert not received.endswith(b"0\r\n\r\n")  # the chunked body never completed
        reader.close()
        db_size = db.stat().st_size
        # Checkpoints went on: the WAL never held the ingest (tens of MB), only
        # the recent batches (a few MB at SQLite's 1000-page auto-checkpoint).
        assert max(wal_sizes) < 16 * 1024 * 1024, (max(wal_sizes), db_size)
        assert max(wal_sizes) > 0
    finally:
        if process is not None:
            process.stop()
        fake.stop()


def store_rows(db) -> list[tuple]:
    import sqlite3

    conn = sqlite3.connect("file:%s?mode=ro" % db, uri=True)
    try:
        return conn.execute("SELECT call_id FROM cdrs").fetchall()
    finally:
        conn.close()


def drain(sock: socket.socket) -> bytes:
    data = b""
    sock.settimeout(5)
    try:
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                return data
            data += chunk
    except (ConnectionResetError, socket.timeout):
        return data


def test_a_statement_timeout_is_one_structured_line(start_daemon, tmp_path):
    """Errors raised in SQLite's worker threads come back as 503s and
    structured lines, never as gevent's raw "failed with ..." on stderr."""
    from eslcdr import store

    from .test_api import leg

    writer = store.connect_writer(tmp_path / "cdrs.db")
    now_g = int(time.time()) + 62167219200
    store.insert_records(writer, [leg(now_g - 60 - i, account=ACCOUNT) for i in range(3000)])
    writer.close()
    process, port, token = start_daemon(statement_timeout="0.000001")
    auth = b"X-Auth-Token: " + token.encode() + b"\r\n"
    for target in ("/v2/accounts/%s/cdrs?filter_caller_id_name=nobody" % ACCOUNT,
                   "/v2/accounts/%s/cdrs?accept=csv&filter_caller_id_name=nobody" % ACCOUNT):
        response = get(port, target, auth)
        assert status_of(response) == 503 and envelope_of(response)["message"] == "datastore timeout"
    process.stop()
    text = process.log_path.read_text(errors="replace")
    lines = [line for line in text.splitlines() if line.strip()]
    assert all(line.startswith("{") for line in lines), [line for line in lines if not line.startswith("{")]
    assert len([e for e in process.log_events() if e["event"] == "api_statement_timeout"]) == 2
