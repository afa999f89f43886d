"""When a FreeSWITCH that still holds its Event Socket open is declared dead.

TCP keepalive (keepalive.py) notices a host gone; a FreeSWITCH alive at the TCP
level that answers nothing (stopped with SIGSTOP, its listener hung) would keep
the connection "connected" for ever.  ``watch`` waits on a live client until it
closes; once IDLE_CHECK seconds pass with nothing read it sends PING with the
command timeout, and no reply declares the connection dead (the supervisor then
reconnects and resyncs as after any disconnect).  Any reply proves life (even a
-ERR: an ACL refusing the command).  The reply resolves the pending command: it
never reaches the event path.  Cost: one wake-up per IDLE_CHECK; a command only
when nothing came during it.  mod_event_socket answers ``api`` in the listener's
own thread, so a deadlock confined to the core's event dispatch is not seen.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import gevent.event
from greenswitch.esl import NotConnectedError

from .errors import CommandTimeout

if TYPE_CHECKING:
    from .client import EslClient

# Seconds of silence on the socket before FreeSWITCH is asked whether it is
# there (the same quiet as TCP keepalive's first probe, keepalive.IDLE): a hung
# switch is declared dead within IDLE_CHECK + command_timeout (20 s by default).
IDLE_CHECK = 15.0
# mod_commands' ``uptime`` (FreeSWITCH >= 1.10): a number and a newline, read
# from the core's clock without a lock.
PING = "api uptime"


def watch(client: "EslClient", stop: gevent.event.Event, idle_check: float) -> str | None:
    """Wait until the client's socket closes or ``stop`` is set (None), or
    FreeSWITCH leaves PING unanswered after ``idle_check`` seconds of silence
    (the reason, the client then marked disconnected: no goodbye is waited for)."""
    while not stop.is_set():
        quiet = time.monotonic() - client.last_read
        if quiet < idle_check:
            if client.wait_closed(timeout=idle_check - quiet):
                return None
            continue
        try:
            client.send(PING)
        except CommandTimeout:
            client.connected = False
            return "no reply to %r within %ss after %ss of silence" % (PING, client.command_timeout, idle_check)
        except NotConnectedError:
            return None
    return None
