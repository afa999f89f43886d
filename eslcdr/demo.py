"""``eslcdr demo``: the embedded default.

Starts the FreeSWITCH stand-in with generated calls on a free loopback port,
runs the daemon against it with a database in the current folder, serves the
API on 127.0.0.1:8080, and prints a working token and curl commands.  The
token is created fresh for the run and kept in ``<db>.tokens`` (hash only).
"""

from __future__ import annotations

import sys
from pathlib import Path

import gevent
import structlog

from . import config, logs
from .config import parse_listen
from .daemon import Daemon
from .fakefs import FakeFreeSWITCH, GeneratedSource
from .http import serve_api
from .tokens import add_token

log = structlog.get_logger("eslcdr.demo")

DEMO_ACCOUNT = "*"


def build_config(db: Path, tokens: Path, listen: str, esl_port: int) -> config.Config:
    host, port = parse_listen(listen)
    return config.from_mapping(
        {
            "esl": {"host": "127.0.0.1", "port": str(esl_port), "password": "ClueCon"},
            "store": {"path": str(db)},
            "api": {"listen": "%s:%d" % (host, port), "tokens_file": str(tokens)},
            "cdr": {"node_name": "demo-fs"},
            "log": {"level": "info", "format": "auto"},
        }
    )


def instructions(base: str, token: str, db: Path) -> str:
    return "\n".join(
        [
            "",
            "eslcdr demo is running: generated FreeSWITCH calls -> %s" % db,
            "",
            "  API token (collector scope, valid for any account): %s" % token,
            "",
            "  curl -s -H 'X-Auth-Token: %s' %s/health" % (token, base),
            "  curl -s -H 'X-Auth-Token: %s' '%s/v2/accounts/demo-account/cdrs?page_size=5'" % (token, base),
            "  curl -s -H 'X-Auth-Token: %s' '%s/v2/accounts/demo-account/cdrs/interaction?page_size=5'" % (token, base),
            "  curl -s -H 'X-Auth-Token: %s' '%s/v2/accounts/demo-account/cdrs?accept=csv&page_size=20'" % (token, base),
            "  curl -s -H 'X-Auth-Token: %s' '%s/v2/feed/cdrs?after=0&limit=3'" % (token, base),
            "",
            "  sqlite3 %s 'select call_id, caller_id_number, callee_id_number, hangup_cause, billing_seconds from cdrs order by seq desc limit 10'" % db,
            "",
            "Ctrl-C stops it.",
            "",
        ]
    )


def run_demo(args) -> int:
    logs.configure("info", "auto")
    db = Path(args.db).resolve()
    tokens = db.with_name(db.name + ".tokens")
    fake = FakeFreeSWITCH(
        host="127.0.0.1",
        port=0,
        events=GeneratedSource(calls=args.calls, cps=args.cps, seed=args.seed),
    )
    fake.start()
    cfg = build_config(db, tokens, args.listen, fake.port)
    token = add_token(str(tokens), DEMO_ACCOUNT)
    daemon = Daemon(cfg, api_factory=serve_api)
    try:
        daemon.start()
    except OSError as exc:
        print("eslcdr demo: cannot start: %s" % exc, file=sys.stderr)
        fake.stop()
        return 1
    print(instructions("http://%s:%d" % (cfg.api.host, daemon.http.port), token, db), file=sys.stderr)
    if args.duration:
        gevent.spawn_later(args.duration, daemon.request_stop)
    try:
        code = daemon.serve_forever()
    finally:
        fake.stop()
    return code
