"""How soon a peer that vanished without a word is noticed (TCP keepalive).

A FreeSWITCH host or a PostgreSQL server that loses power or its network
sends no FIN/RST: a socket waiting to read would wait for ever (the kernel's
defaults probe after 2 hours).  Every long-lived connection of eslcdr (the
ESL socket, the collector's PostgreSQL connections) is probed after IDLE
seconds of silence, every INTERVAL seconds, and dropped after COUNT
unanswered probes (IDLE + INTERVAL x COUNT = 35 s), or once data sent has
gone USER_TIMEOUT seconds unacknowledged (60 s).  docs/architecture.md, docs/collector.md.
"""

from __future__ import annotations

import socket

IDLE = 15
INTERVAL = 5
COUNT = 4
USER_TIMEOUT = 60


def keep_alive(sock: socket.socket) -> None:
    """Turn on the probes above on a TCP socket (the options Linux lacks are skipped)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", IDLE), ("TCP_KEEPINTVL", INTERVAL), ("TCP_KEEPCNT", COUNT),
                        ("TCP_USER_TIMEOUT", USER_TIMEOUT * 1000)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


def postgres_server_keepalive() -> str:
    """The same probes asked of PostgreSQL's end (session settings, as libpq
    ``options``): the server drops the session of a collector host that
    vanished, and what it held (a node's claim), in a minute, not 2 hours."""
    return ("-c tcp_keepalives_idle=%d -c tcp_keepalives_interval=%d -c tcp_keepalives_count=%d"
            " -c tcp_user_timeout=%d" % (IDLE, INTERVAL, COUNT, USER_TIMEOUT * 1000))


def libpq_keepalive() -> dict[str, int]:
    """The same as libpq connection parameters."""
    return {"keepalives": 1, "keepalives_idle": IDLE, "keepalives_interval": INTERVAL,
            "keepalives_count": COUNT, "tcp_user_timeout": USER_TIMEOUT * 1000}
