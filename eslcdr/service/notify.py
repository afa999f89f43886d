"""systemd's notify protocol (sd_notify), without a dependency.

Under ``Type=notify`` systemd passes ``$NOTIFY_SOCKET``: the path of a Unix
datagram socket (a leading ``@`` names an abstract socket).  Each
notification is one datagram of ``KEY=VALUE`` lines: ``READY=1`` once the
service is up, ``STATUS=...`` free text shown by ``systemctl status``,
``WATCHDOG=1`` to feed ``WatchdogSec=``, ``RELOADING=1`` / ``STOPPING=1``
around a reload or the shutdown.  With ``WatchdogSec=`` set systemd also
passes ``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``: the watchdog is meant for
that process only); it expects a ping at least that often, sd_notify(3)
recommends every half of it.

Outside systemd ``$NOTIFY_SOCKET`` is unset and every call is a no-op.  A
failed send is logged once and never raised: notifications must not take the
daemon down.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Mapping

import structlog

log = structlog.get_logger(__name__)

# The socket is non-blocking: a send either succeeds at once or fails
# (BlockingIOError when systemd has not read the datagrams queued before,
# max_dgram_qlen of them); a blocking send would wait there for ever.
SEND_ERRORS = (OSError,)


def socket_address(raw: str) -> str | None:
    """``$NOTIFY_SOCKET`` as an AF_UNIX address (abstract names start with NUL)."""
    if not raw:
        return None
    if raw.startswith("@"):
        return "\0" + raw[1:]
    if raw.startswith("/"):
        return raw
    return None  # vsock and other forms: not for us


def watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """Seconds between watchdog pings (half of ``WATCHDOG_USEC``), or None."""
    raw = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None  # meant for another process (e.g. a wrapper)
    if not raw.isdigit() or int(raw) == 0:
        return None
    return int(raw) / 1_000_000 / 2


class Notifier:
    def __init__(self, address: str | None, watchdog: float | None = None) -> None:
        self.address = address
        self.watchdog_interval = watchdog if address else None
        self._socket: socket.socket | None = None
        self._failed = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> "Notifier":
        environ = os.environ if environ is None else environ
        return cls(socket_address(environ.get("NOTIFY_SOCKET", "")), watchdog_interval(environ))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str | int) -> bool:
        """One datagram of ``KEY=value`` lines; True if it was sent."""
        if self.address is None:
            return False
        message = "\n".join("%s=%s" % (key, str(value).replace("\n", " ")) for key, value in fields.items())
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.setblocking(False)
            self._socket.sendto(message.encode("utf-8"), self.address)
        except SEND_ERRORS as exc:
            if not self._failed:
                log.warning("sd_notify_failed", socket=self.address.replace("\0", "@"), error=str(exc))
                self._failed = True
            return False
        self._failed = False
        return True

    def ready(self, status: str) -> bool:
        return self.send(READY=1, STATUS=status)

    def status(self, status: str) -> bool:
        return self.send(STATUS=status)

    def watchdog(self) -> bool:
        return self.send(WATCHDOG=1)

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets systemd (Type=notify-reload, v253+) match the
        # reload it asked for with this notification.
        return self.send(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)

    def stopping(self, status: str = "stopping") -> bool:
        return self.send(STOPPING=1, STATUS=status)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
