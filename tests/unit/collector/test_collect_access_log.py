"""The central API's log lines never hold a token pasted into a path, known or
not: the collector's access log (its app served by ``web.server.make_server``
in its own thread, real sockets) and the fleet's channels line."""

from __future__ import annotations

import socket

import structlog
from prometheus_client import CollectorRegistry

from eslcdr.collector import config as cc
from eslcdr.collector.service import make_app

from tests.e2e.test_api_e2e import LogLines, ServerThread, get
from tests.harness import wait_until

REVOKED = "Hq8_tR2-wPx5KmB9vLs3nDy6cFj1gZe4uAo7iNk0bVt"  # token-shaped, in no tokens file
ACCOUNT = "434d23e00e7f65e1ca9281d75dc8cade"
CDR_ID = "202612-5b2c0f7e-8a1d-4c3e-9f6b-2d7a1e0c4b9f"  # as long as a token


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_collectors_logs_redact_a_token_shaped_path_segment(tmp_path):
    (tmp_path / "tokens").write_text("tok-a %s\ntok-all *\n" % ACCOUNT)
    node = {"url": "http://127.0.0.1:%d" % closed_port(), "token": "node-token"}
    cfg = cc.from_mapping({"node:fs1": node, "collector": {
        "dsn": "postgresql://127.0.0.1:%d/none" % closed_port(), "tokens_file": str(tmp_path / "tokens")}})
    app = make_app(cfg, lambda: {"status": "ok"}, CollectorRegistry())
    log = LogLines()
    server = ServerThread(app, log)
    try:
        conn = server.connection()
        with structlog.testing.capture_logs() as events:
            # Another account's path (403: no query reaches PostgreSQL), and the
            # fleet's channels of such an account (the node is down: a warning).
            response, _ = get(conn, "/v2/accounts/%s/cdrs" % REVOKED, headers={"X-Auth-Token": "tok-a"})
            assert response.status == 403
            response, _ = get(conn, "/v2/accounts/%s/channels" % REVOKED, headers={"X-Auth-Token": "tok-all"})
            assert response.status == 200
            # An id of the API's paths stays readable (401: no token).
            response, _ = get(conn, "/v2/accounts/%s/cdrs/%s" % (ACCOUNT, CDR_ID), headers={})
            assert response.status == 401
        conn.close()
        assert wait_until(lambda: len(log.lines) >= 3, timeout=10)  # written after each response
        access = "".join(log.lines)
        assert REVOKED not in access and "/v2/accounts/[redacted]/cdrs " in access
        assert "/v2/accounts/%s/cdrs/%s " % (ACCOUNT, CDR_ID) in access
        fleet = [e for e in events if e["event"] == "fleet_channels"]
        assert fleet and fleet[0]["path"] == "/v2/accounts/[redacted]/channels"
        assert REVOKED not in repr(events)
    finally:
        server.stop()
        app.close()
