"""Structured logging: configured once, at start, from ``[log]``.

Key/value events through structlog; JSON lines when stderr is not a TTY (a
systemd journal, a file), a readable console format on a terminal.  No
secret is ever passed to a logger: passwords and tokens stay out of events;
``redact.scrub_event`` still removes anything that reads like one.
"""

from __future__ import annotations

import logging
import sys

import structlog

from ..web.redact import scrub_event

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure(level: str = "info", fmt: str = "auto", stream=None) -> None:
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if getattr(stream, "isatty", lambda: False)() else "json"
    renderer = (
        structlog.dev.ConsoleRenderer(colors=False)
        if fmt == "console"
        else structlog.processors.JSONRenderer(sort_keys=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            scrub_event,  # last line of defence: no credential-looking text leaves
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    # greenswitch logs through the stdlib; keep its chatter at warning.
    logging.basicConfig(level=logging.WARNING, stream=stream, format="%(name)s %(levelname)s %(message)s")
