"""The FreeSWITCH stand-in: a gevent server that speaks mod_event_socket.

``eslcdr fakefs``, ``eslcdr demo``, the tests and the benchmarks use it in
place of a real FreeSWITCH.  It speaks the inbound Event Socket protocol as
FreeSWITCH 1.10 does, byte for byte (``auth/request``, ``auth``, ``event
plain|json ...``, ``filter``, ``nixevent``, ``noevents``, ``api status|uptime``,
``api show channels [as json|count]``, ``exit`` and the disconnect notice,
``-ERR command not found`` for the rest).  Events are templates with slots,
encoded once (templates.py), so it stays much faster than the daemon it feeds.

Use: ``FakeFreeSWITCH(port=0, events=GeneratedSource(calls=50)).start()``,
then ``.port``, ``.wait_done(timeout)``, ``.live_channels()``, ``.stop()``;
``add_arguments`` / ``run`` are the ``eslcdr fakefs`` command.  Each module's
docstring says how its part works (the map: docs/architecture.md).
"""

from __future__ import annotations

from .capture import Pairs, event_pairs, extract_calls, read_capture
from .channels import CHANNEL_COLUMNS
from .cli import add_arguments, main, run, source_from_args
from .generated import (
    CALLER_NAMES,
    DEFAULT_ACCOUNTS,
    INTERACTION_SHARE,
    CallTemplate,
    GeneratedSource,
    call_template,
    template_documents,
)
from .listener import AUTH_REQUEST, GOODBYE, MAX_MISSED, MAX_QUEUE_LEN, SHUTDOWN
from .replay import ReplaySource, StaticSource
from .server import (
    BACKPRESSURE_LEVEL,
    DEFAULT_HOST,
    DEFAULT_PASSWORD,
    DEFAULT_PORT,
    FS_VERSION_FULL,
    FS_VERSION_HUMAN,
    SHOW_SYNTAX,
    UPTIME_SYNTAX,
    AlreadyStarted,
    FakeFreeSWITCH,
    Source,
)
from .subscription import EVENT_NAMES

__all__ = [
    "AUTH_REQUEST",
    "AlreadyStarted",
    "BACKPRESSURE_LEVEL",
    "CALLER_NAMES",
    "CHANNEL_COLUMNS",
    "CallTemplate",
    "DEFAULT_ACCOUNTS",
    "DEFAULT_HOST",
    "DEFAULT_PASSWORD",
    "DEFAULT_PORT",
    "EVENT_NAMES",
    "FS_VERSION_FULL",
    "FS_VERSION_HUMAN",
    "FakeFreeSWITCH",
    "GOODBYE",
    "GeneratedSource",
    "INTERACTION_SHARE",
    "MAX_MISSED",
    "MAX_QUEUE_LEN",
    "Pairs",
    "ReplaySource",
    "SHOW_SYNTAX",
    "SHUTDOWN",
    "Source",
    "StaticSource",
    "UPTIME_SYNTAX",
    "add_arguments",
    "call_template",
    "event_pairs",
    "extract_calls",
    "main",
    "read_capture",
    "run",
    "source_from_args",
    "template_documents",
]
