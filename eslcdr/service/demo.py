"""``eslcdr demo``: the embedded default.

Starts the FreeSWITCH stand-in with generated calls on a free loopback port,
runs the daemon against it with a database in the current folder, serves the
API on 127.0.0.1:8080, and prints a working token, the URL of the /ui page
(token in the fragment, which browsers never send) and curl commands.  The
stand-in first sends ``--history`` calls of the past 24 hours, so the page
has a day of KPIs to draw.  The token is created fresh for the run and kept
in ``<db>.tokens`` (hash only).

Rather than a log stream, stdout shows one live status line (``StatusLine``)
above the curl examples.  Only warnings and errors are logged (stderr),
unless ``--verbose`` brings the info log back (and the status line goes plain).
"""

from __future__ import annotations

import secrets
import shutil
import sys
import time
from collections import deque
from pathlib import Path
from typing import TextIO

import gevent

from .. import config
from . import logs
from ..config import parse_listen
from .daemon import Daemon
from ..fakefs import FakeFreeSWITCH, GeneratedSource
from .http import serve_api
from .status import DaemonStatus
from ..api.tokens import add_token

DEMO_ACCOUNT = "*"


def build_config(db: Path, tokens: Path, listen: str, esl_port: int, esl_password: str) -> config.Config:
    host, port = parse_listen(listen)
    return config.from_mapping(
        {
            "esl": {"host": "127.0.0.1", "port": str(esl_port), "password": esl_password},
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
            "  The page:  %s/ui#token=%s&account=demo-account" % (base, token),
            "",
            "  curl -s -H 'X-Auth-Token: %s' %s/health" % (token, base),
            "  curl -s -H 'X-Auth-Token: %s' '%s/v2/accounts/demo-account/cdrs?page_size=5'" % (token, base),
            "  curl -s -H 'X-Auth-Token: %s' '%s/v2/accounts/demo-account/cdrs/interaction?page_size=5'" % (token, base),
            "  curl -s -H 'X-Auth-Token: %s' '%s/v2/accounts/demo-account/cdrs?accept=csv' | head -20" % (token, base),
            "  curl -s -H 'X-Auth-Token: %s' '%s/v2/feed/cdrs?after=0&limit=3'" % (token, base),
            "",
            "  sqlite3 %s 'select call_id, caller_id_number, callee_id_number, hangup_cause, billing_seconds from cdrs order by seq desc limit 10'" % db,
            "",
            "Ctrl-C stops it.",
            "",
        ]
    )


TTY_REFRESH = 0.5
PLAIN_EVERY = 5.0
RATE_WINDOW = 5.0  # seconds the CDRs/s figure is averaged over


def line_text(status: DaemonStatus, rate: float) -> str:
    """The demo's status line (``rate``: CDRs per second)."""
    freeswitch = next((node.state for node in status.nodes if not node.connected), "connected")
    return "live legs %d | CDRs %d (%.1f/s) | backlog %d | FreeSWITCH %s" % (
        status.live_legs,
        status.written,
        rate,
        status.backlog,
        freeswitch,
    )


class StatusLine:
    """The status line: redrawn in place on a terminal, plain lines elsewhere.

    On a terminal it sits ``lines_below`` lines above the cursor (the curl
    examples were printed after it): move up, clear the line, write, move
    back down.  The text is cut to the terminal width so it never wraps.

    Redrawn every half second with ANSI cursor moves; elsewhere (a pipe, a
    file) a plain line is printed every few seconds.
    """

    def __init__(self, stream: TextIO, in_place: bool, lines_below: int = 0) -> None:
        self.stream = stream
        self.in_place = in_place
        self.lines_below = lines_below

    def show(self, text: str) -> None:
        if self.in_place:
            width = shutil.get_terminal_size((100, 24)).columns
            up = self.lines_below
            self.stream.write("\x1b[%dA\r\x1b[2K%s\x1b[%dB\r" % (up, text[: max(width - 1, 20)], up))
        else:
            self.stream.write("status: %s\n" % text)
        self.stream.flush()


class Rate:
    """CDRs per second over the last RATE_WINDOW seconds."""

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._samples: deque[tuple[float, int]] = deque()

    def update(self, written: int) -> float:
        now = self._clock()
        self._samples.append((now, written))
        while len(self._samples) > 2 and now - self._samples[0][0] > RATE_WINDOW:
            self._samples.popleft()
        first_at, first = self._samples[0]
        return (written - first) / (now - first_at) if now > first_at else 0.0


def show_status(daemon, line: StatusLine) -> None:
    """Until the daemon stops (a supervised greenlet); a last line at the end."""
    rate = Rate()
    every = TTY_REFRESH if line.in_place else PLAIN_EVERY
    while True:
        stopping = daemon.wait(timeout=every)
        status = daemon.status()
        line.show(line_text(status, rate.update(status.written)))
        if stopping:
            return


def run_demo(args) -> int:
    verbose = getattr(args, "verbose", False)
    logs.configure("info" if verbose else "warning", "auto")
    db = Path(args.db).resolve()
    tokens = db.with_name(db.name + ".tokens")
    try:
        token = add_token(str(tokens), DEMO_ACCOUNT)
    except OSError as exc:
        print("eslcdr demo: cannot start: %s" % exc, file=sys.stderr)
        return 1
    fake = FakeFreeSWITCH(
        host="127.0.0.1",
        port=0,
        # A seed repeats its calls, Unique-IDs included: a second run on the same
        # database with the seed of the first would record nothing new.
        events=GeneratedSource(calls=args.calls or None, cps=args.cps,
                               seed=args.seed if args.seed is not None else secrets.randbelow(2**31),
                               history_calls=args.history, post_dial_delay=True),
    )
    fake.start()
    cfg = build_config(db, tokens, args.listen, fake.port, fake.password)
    daemon = Daemon(cfg, api_factory=serve_api)
    try:
        daemon.start()
    except OSError as exc:
        print("eslcdr demo: cannot start: %s" % exc, file=sys.stderr)
        fake.stop()
        return 1
    text = instructions("http://%s:%d" % (cfg.api.host, daemon.http.port), token, db)
    out = sys.stdout
    in_place = not verbose and out.isatty()
    if in_place:
        head, _, rest = text.partition("\n\n")
        # The status line goes between the title and the token/curl block.
        out.write(head + "\n\nstarting...\n\n" + rest)
        # The cursor is now `lines_below` lines under the status line.
        line = StatusLine(out, True, lines_below=2 + rest.count("\n"))
    else:
        out.write(text)
        line = StatusLine(out, False)
    out.flush()
    daemon.supervise("demo-status", lambda: show_status(daemon, line))
    if args.duration:
        gevent.spawn_later(args.duration, daemon.request_stop)
    try:
        code = daemon.serve_forever()
    finally:
        fake.stop()
    return code
