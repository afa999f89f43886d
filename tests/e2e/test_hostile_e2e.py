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
import gevent.socket
import pytest

from eslcdr.fakefs import FakeFreeSWITCH
from eslcdr.api.tokens import add_token

from tests.harness import DaemonProcess, exchange, wait_until, write_config

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
        port = process.api_port()
        # /health is 503 until FreeSWITCH is connected: the tests count on 200s
        # (read from the log: an HTTP probe would take one of the slots they count).
        assert wait_until(lambda: any(e["event"] == "esl_connected" for e in process.log_events()), 30)
        return process, port, token

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
        assert status_of(response) in (400, 404, 414, 431), raw[:60]  # 404: the bad chunked body comes after
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
            "bad_number", "head_too_large"} <= reasons
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


def test_connections_past_the_cap_get_503_unless_a_holder_is_behind(start_daemon):
    """Keep-alive clients that keep asking hold the slots: a new client is
    answered 503.  Once they fall silent, a new client takes the slot of one of
    them (closed: an idle keep-alive) and is served; one that closes frees its slot."""
    process, port, token = start_daemon(max_connections=3, idle_timeout=60)
    held = [gevent.socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]
    asking = [True]
    answers: list[int] = []

    def keep_asking(sock) -> None:  # a request every 0.25 s on one connection
        for _ in range(200):
            if not asking[0]:
                return
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            answers.append(status_of(read_response(sock, 5.0)))
            gevent.sleep(0.25)

    senders = [gevent.spawn(keep_asking, sock) for sock in held]
    gevent.sleep(1.5)  # longer than EVICT_AFTER: they would be evicted if they were idle that long
    refused = gevent_get(port, "/health")
    assert status_of(refused) == 503
    assert envelope_of(refused)["message"] == "too_many_connections"
    asking[0] = False
    gevent.joinall(senders, timeout=5)
    assert len(answers) >= 6 and set(answers) == {200}
    gevent.sleep(1.5)  # silent now: idle longer than EVICT_AFTER
    assert status_of(gevent_get(port, "/health")) == 200
    evicted = [sock for sock in held if closed_by_server(sock, 0.5) is not None]
    assert len(evicted) == 1
    held.remove(evicted[0])
    held.pop().close()  # a slot freed: no one needs to go
    assert status_of(gevent_get(port, "/health")) == 200
    assert all(closed_by_server(sock, 0.2) is None for sock in held)
    for sock in held + evicted:
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
    from eslcdr.store import db as store
    from eslcdr.fakefs import GeneratedSource

    from tests.unit.api.test_api import leg

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
    from eslcdr.store import db as store

    from tests.unit.api.test_api import leg

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


# ---------------------------------------------------------------- issue 15: bodies, slow senders, heads, log floods
# Clients run on gevent sockets so that many of them (and the probes) proceed at once
# whatever the monkey patching of this process.

MiB = 1024 * 1024
LOGIN = b"PUT /v2/api_auth HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


def proc_figure(pid: int, name: str, field: str) -> int:
    """A figure of /proc/<pid>/<name>: ``io`` (bytes, e.g. wchar) or ``status`` (kB -> bytes)."""
    for line in open("/proc/%d/%s" % (pid, name)):
        key, _, value = line.partition(":")
        if key == field:
            number = int(value.split()[0])
            return number * 1024 if name == "status" else number
    raise AssertionError("no %s in /proc/%d/%s" % (field, pid, name))


def read_response(sock, timeout: float) -> bytes:
    """What the server sends until it closes, or until one whole response (head and
    Content-Length body) is there, or ``timeout`` passes (bounded)."""
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            if length and len(body) >= int(length.group(1)):
                return data
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except (socket.timeout, OSError):
            break
        if not chunk:
            break
        data += chunk
    return data


def gevent_get(port: int, target: str, timeout: float = 5.0) -> bytes:
    """GET on its own connection with gevent sockets (b"" when refused or no answer)."""
    try:
        with gevent.socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % target.encode())
            return read_response(sock, timeout)
    except OSError:
        return b""


def wait_healthy(port: int) -> None:
    deadline = time.monotonic() + 30
    while not gevent_get(port, "/health").startswith(b"HTTP/1.1 200"):
        assert time.monotonic() < deadline, "the daemon never got healthy"
        gevent.sleep(0.1)


def push_body(port: int, head: bytes, piece: bytes, seconds: float) -> tuple[int, float | None, bytes]:
    """Send ``head``, then ``piece`` over and over (a small send buffer: what is sent
    is what the server took, plus its receive window) until the server answers or
    closes, or ``seconds`` pass.  Returns (body bytes sent, seconds until the first
    byte of the answer or None, the answer)."""
    sock = gevent.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    sent, answer, answered_after, pending = 0, b"", None, b""
    started = time.monotonic()
    try:
        sock.sendall(head)
        while time.monotonic() - started < seconds and sent < 300_000_000:
            sock.settimeout(0.02)
            try:
                data = sock.recv(65536)
            except socket.timeout:
                data = None
            except OSError:
                break
            if data is not None:
                if data and answered_after is None:
                    answered_after = time.monotonic() - started
                answer += data
                break
            pending = pending or piece  # whole pieces: a chunked body stays well formed
            try:
                taken = sock.send(pending)
                sent, pending = sent + taken, pending[taken:]
            except socket.timeout:
                pass
            except OSError:
                break
        answer += read_response(sock, 2.0)
        if answer and answered_after is None:
            answered_after = time.monotonic() - started
        return sent, answered_after, answer
    finally:
        sock.close()


def test_an_oversized_body_is_answered_413_without_being_read(start_daemon, tmp_path, monkeypatch):
    """Issue 15.1: a login announcing 300 MB gets 413 at once: a client that waits
    (as after ``Expect: 100-continue``) gets it before sending a byte of the body,
    one that sends anyway pushes less than 1 MiB before the answer, and nothing is
    written to disk; a chunked body is cut after max_body_bytes the same way."""
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))  # where Bottle used to spool bodies
    process, port, token = start_daemon(header_timeout=3, idle_timeout=5, send_timeout=5)
    pid = process.proc.pid
    wait_healthy(port)
    announced = LOGIN + b"Content-Length: 300000000\r\n\r\n"
    with gevent.socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(announced)
        started = time.monotonic()
        answer = read_response(sock, 2.0)
        waited = time.monotonic() - started
    assert status_of(answer) == 413 and waited < 2.0, (answer[:100], waited)
    assert envelope_of(answer)["error"] == "413"
    chunked = LOGIN + b"Transfer-Encoding: chunked\r\n\r\n"
    for head, piece in ((announced, b"x" * 65536), (chunked, b"10000\r\n" + b"x" * 65536 + b"\r\n")):
        written = proc_figure(pid, "io", "wchar")
        sent, answered_after, answer = push_body(port, head, piece, seconds=2.5)
        written = proc_figure(pid, "io", "wchar") - written
        assert answer and status_of(answer) == 413, (head[-40:], answer[:100], sent)
        assert answered_after is not None and answered_after < 2.0, (head[-40:], answered_after)
        assert sent < MiB, (head[-40:], sent)
        assert written < MiB, (head[-40:], written)
    assert [p.name for p in scratch.iterdir() if p.stat().st_size > MiB] == []
    assert status_of(get(port, "/health")) == 200
    process.stop()
    text = process.log_path.read_text(errors="replace")
    assert "Traceback" not in text
    assert not [e for e in process.log_events() if e.get("level") == "error"]


def test_slow_bodies_cannot_hold_the_connection_slots(start_daemon):
    """Issue 15.2: 40 clients (max_connections 32) each send a login body one byte
    every 2 s, reconnecting whenever they are dropped; /health probes keep being
    answered: a slow body is shed (min_receive_rate) and, at the cap, the client
    furthest behind makes room for a new one."""
    process, port, token = start_daemon(max_connections=32, header_timeout=3, idle_timeout=5, send_timeout=5)
    wait_healthy(port)
    stop_at = time.monotonic() + 10.0
    connections = [0]

    def slow_sender() -> None:
        while time.monotonic() < stop_at:
            try:
                sock = gevent.socket.create_connection(("127.0.0.1", port), timeout=5)
            except OSError:
                gevent.sleep(0.05)
                continue
            connections[0] += 1
            try:
                sock.sendall(LOGIN + b"Content-Length: 100\r\n\r\n")
                while time.monotonic() < stop_at:
                    sock.sendall(b"{")
                    sock.settimeout(2.0)
                    try:
                        sock.recv(4096)
                    except socket.timeout:
                        continue
                    break  # answered (408, 503) or closed: connect again
            except OSError:
                pass
            finally:
                sock.close()
            gevent.sleep(0.05)

    senders = [gevent.spawn(slow_sender) for _ in range(40)]
    gevent.sleep(1.0)  # the slots are taken
    probes = []
    while time.monotonic() < stop_at:
        answer = gevent_get(port, "/health", timeout=3)
        probes.append(status_of(answer) if answer else None)
        gevent.sleep(0.2)
    gevent.joinall(senders, timeout=15)
    assert all(s.dead for s in senders)
    answered = sum(1 for status in probes if status == 200)
    assert len(probes) >= 10 and answered >= 0.9 * len(probes), (answered, len(probes), probes)
    assert connections[0] > 40  # the slow ones were dropped and came back
    process.stop()
    events = process.log_events()
    assert not [e for e in events if e.get("level") == "error"]
    reasons = {e.get("reason") for e in events if e["event"] == "http_request_timeout"}
    assert reasons & {"min_receive_rate", "evicted"}, reasons


def test_a_huge_request_head_is_refused_at_max_head_bytes(start_daemon):
    """Issue 15.3: 64 clients each send 98 header lines of 64 KiB and hold the
    connection open: each is answered 431 once its head passes max_head_bytes, and
    the daemon's memory grows by less than 64 MB (it was 640 MB)."""
    process, port, token = start_daemon(max_connections=64, header_timeout=3, idle_timeout=5, send_timeout=5)
    pid = process.proc.pid
    wait_healthy(port)
    before = proc_figure(pid, "status", "RssAnon")
    filler = b"a" * (65536 - 100)

    def big_head() -> bytes:
        try:
            sock = gevent.socket.create_connection(("127.0.0.1", port), timeout=10)
        except OSError:
            return b""
        try:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            for n in range(98):
                sock.sendall(b"X-Big-%02d: %s\r\n" % (n, filler))
        except OSError:
            pass  # the server stopped reading and answered
        try:
            return read_response(sock, 10.0)
        finally:
            sock.close()

    clients = [gevent.spawn(big_head) for _ in range(64)]
    peak = before
    while not all(c.dead for c in clients):
        peak = max(peak, proc_figure(pid, "status", "RssAnon"))
        gevent.sleep(0.05)
    peak = max(peak, proc_figure(pid, "status", "RssAnon"))
    answers = [c.value for c in clients]
    assert all(a and status_of(a) == 431 for a in answers), {a[:40] for a in answers}
    assert envelope_of(answers[0])["error"] == "431"
    assert peak - before < 64 * MiB, (before, peak)
    assert status_of(get(port, "/health")) == 200
    process.stop()
    bad = [e for e in process.log_events() if e["event"] == "http_bad_request"]
    assert bad and {e["reason"] for e in bad} == {"head_too_large"} and len(bad) < 64  # aggregated


def test_client_mistakes_are_warnings_at_most_and_aggregated(start_daemon, monkeypatch):
    """Issue 15.4: two clients making mistakes for 3 s (wrong tokens: 401; broken
    chunked logins: 400, not 500) leave a handful of lines at the default level --
    no error, no traceback -- and one line per kind summing up the repeats."""
    monkeypatch.setenv("ESLCDR_LOG_LEVEL", "info")
    process, port, token = start_daemon(header_timeout=3, idle_timeout=5, send_timeout=5)
    wait_healthy(port)
    lines_before = len(process.log_path.read_text(errors="replace").splitlines())
    stop_at = time.monotonic() + 3.0
    statuses: dict[str, list[int | None]] = {"token": [], "chunked": []}
    wrong = b"GET /v2/accounts/%s/cdrs HTTP/1.1\r\nHost: x\r\nX-Auth-Token: wrong\r\nConnection: close\r\n\r\n" % (
        ACCOUNT.encode())
    broken = LOGIN + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\n{\"dat\r\nzz\r\n\r\n"

    def client(kind: str, request: bytes) -> None:
        while time.monotonic() < stop_at:
            try:
                with gevent.socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                    sock.sendall(request)
                    answer = read_response(sock, 5.0)
            except OSError:
                answer = b""
            statuses[kind].append(status_of(answer) if answer else None)

    gevent.joinall([gevent.spawn(client, "token", wrong), gevent.spawn(client, "chunked", broken)], timeout=30)
    requests = len(statuses["token"]) + len(statuses["chunked"])
    assert set(statuses["token"]) == {401}
    assert set(statuses["chunked"]) == {400}
    assert process.stop() == 0
    text = process.log_path.read_text(errors="replace")
    lines = text.splitlines()[lines_before:]
    assert "Traceback" not in text
    events = [json.loads(line) for line in lines]
    assert not [e for e in events if e["level"] in ("error", "critical")]
    assert len(lines) < 500 and len(lines) * 10 < requests, (len(lines), requests)
    repeated = [e for e in events if e["event"] == "http_repeated"]
    assert sum(e["repeated"] for e in repeated) + len(lines) >= requests * 0.9, (repeated, requests)
