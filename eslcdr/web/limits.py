"""The limits of the hardened HTTP server, per connection and over all of them.

- ``Receiver``, a connection's read side: silent for ``idle_timeout``, it is
  closed; from a request's first byte the head must come within
  ``header_timeout``, the whole request within ``request_timeout``, and after
  RECEIVE_GRACE seconds at ``min_receive_rate`` bytes/s on average, else 408;
  the head's bytes count against ``max_head_bytes`` (431).
- ``read_body``: a body is read whole before the application runs, at most
  ``max_body_bytes`` (413; a broken chunked one 400): no route waits on a client.
- ``Slots``: at most ``max_connections`` hold a slot, PROBATION more are read on
  probation; one with its whole request takes the slot of the holder furthest
  behind (EVICT_AFTER at least), else 503.
Invariants: no read waits past the nearest deadline; a connection is in at most
one of ``holders`` and ``probation``; only a client being waited for is evicted.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from ..config import ServerLimits

__all__ = ["EVICT_AFTER", "FAULTS", "PROBATION", "RECEIVE_GRACE", "REJECT_SLACK", "ClientFault",
           "Receiver", "Slots", "fault_answer", "read_body"]

# Connections past the cap that are still accepted: on probation (they may
# take a slow holder's slot), then some more to be answered 503; beyond these
# the listener pauses (the kernel's backlog holds them).
PROBATION = 16
REJECT_SLACK = 16
RECEIVE_GRACE = 2.0  # seconds of a request before min_receive_rate applies
EVICT_AFTER = 1.0  # seconds a client must be behind before it may be evicted at the cap
RECV_SIZE = 16384  # bytes asked of one recv: a head or body overshoots its limit by this at most


class ClientFault(BaseException):
    """A client passed one of the limits while its request was read (``reason``:
    a key of ``FAULTS``): it gets that status, one warning line, and its
    connection is closed.  A BaseException, so that gevent's generic handlers
    between the read and ``handle_one_request`` do not take it for a parse error."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# reason -> (status, log event, envelope message, envelope detail; %d: the limit)
FAULTS = {
    "header_timeout": (408, "http_request_timeout", "request_timeout", "request head not received in time"),
    "request_timeout": (408, "http_request_timeout", "request_timeout", "request not received in time"),
    "min_receive_rate": (408, "http_request_timeout", "request_timeout", "request received too slowly"),
    "evicted": (408, "http_request_timeout", "request_timeout", "request received too slowly"),
    "head_too_large": (431, "http_bad_request", "request header fields too large",
                       "the request head is larger than %d bytes"),
    "body_too_large": (413, "http_bad_request", "request entity too large",
                       "the request body is larger than %d bytes"),
    "bad_body": (400, "http_bad_request", "bad_request", "the request body could not be read"),
    "no_slot": (503, "http_connections_refused", "too_many_connections", "too many connections"),
}


def fault_answer(reason: str, limits: ServerLimits) -> tuple[int, str, str, str]:
    """(status, log event, message, detail) of a ClientFault."""
    status, event, message, detail = FAULTS[reason]
    if "%d" in detail:
        detail %= limits.max_head_bytes if status == 431 else limits.max_body_bytes
    return status, event, message, detail
class Receiver:
    """The read side of one connection (the handler's ``rfile``): its own buffer
    over the socket, and every wait for the client bounded.

    Between requests the client has ``idle_timeout`` for a first byte
    (``next_request``).  From that byte on, a request (head and body) must be
    complete within ``request_timeout``, its head within ``header_timeout``, and
    after RECEIVE_GRACE seconds its bytes must keep up with ``min_receive_rate``
    per second on average; past any of them a read raises ``ClientFault`` (408).
    The head's bytes count against ``max_head_bytes`` (431).  ``evict`` -- the
    server at its cap -- ends a wait at once.  Only a read that finds the buffer
    short waits (one ``recv`` at a time, its timeout the nearest deadline).
    """

    closed = False  # gevent asks

    def __init__(self, sock: Any, limits: ServerLimits) -> None:
        self._sock = sock
        self._limits = limits
        self._buf = bytearray()
        self.since = time.monotonic()  # start of the wait for a request, or of the request
        self.in_request = False
        self.received = 0  # bytes of the current request received so far
        self.head_left: int | None = None  # bytes its head may still take; None: not in a head
        self.waiting = False  # blocked on the client right now
        self.evicted = False

    def next_request(self) -> bool:
        """Wait for the first byte of the next request; False when the client
        closed, stayed silent for idle_timeout or was evicted."""
        self.since, self.in_request, self.head_left = time.monotonic(), False, None
        self.received = 0
        if not self._buf:
            try:
                if not self._fill(self.since + self._limits.idle_timeout, "idle_timeout"):
                    return False
            except (ClientFault, OSError):
                return False
            self.since = time.monotonic()
        self.in_request, self.received, self.head_left = True, len(self._buf), self._limits.max_head_bytes
        return True

    def head_read(self) -> None:
        self.head_left = None

    def deadline(self) -> tuple[float, str]:
        limits = self._limits
        at, why = self.since + limits.request_timeout, "request_timeout"
        if self.head_left is not None and self.since + limits.header_timeout < at:
            at, why = self.since + limits.header_timeout, "header_timeout"
        if limits.min_receive_rate:
            paced = self.since + RECEIVE_GRACE + self.received / limits.min_receive_rate
            if paced < at:
                at, why = paced, "min_receive_rate"
        return at, why

    def behind(self, now: float) -> float | None:
        """Seconds this client is behind: how long it has been waited for, less
        what its bytes earned at min_receive_rate; None unless it is waited for."""
        if not self.waiting or self.evicted:
            return None
        rate = self._limits.min_receive_rate
        earned = self.received / rate if rate and self.in_request else 0.0
        return now - self.since - earned

    def evict(self) -> None:
        self.evicted = True
        try:
            self._sock.shutdown(socket.SHUT_RD)  # gevent ends the pending recv with an error
        except OSError:
            pass

    def _fill(self, deadline: float, why: str) -> int:
        """One recv into the buffer (0: the client closed)."""
        if self.evicted:
            raise ClientFault("evicted")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ClientFault(why)
        self.waiting = True
        self._sock.settimeout(remaining)
        try:
            data = self._sock.recv(RECV_SIZE)
        except TimeoutError:
            raise ClientFault("evicted" if self.evicted else why) from None
        except OSError:
            if self.evicted:
                raise ClientFault("evicted") from None
            raise
        finally:
            self.waiting = False
            self._sock.settimeout(self._limits.send_timeout)  # for the answer's writes
        self._buf += data
        self.received += len(data)
        return len(data)

    def _take(self, size: int) -> bytes:
        data = bytes(self._buf[:size])
        del self._buf[:size]
        if self.head_left is not None:
            if len(data) > self.head_left:
                raise ClientFault("head_too_large")
            self.head_left -= len(data)
        return data

    def read(self, size: int = -1) -> bytes:
        size = -1 if size is None else size
        while (size < 0 or len(self._buf) < size) and self._fill(*self.deadline()):
            pass
        return self._take(len(self._buf) if size < 0 else size)

    def readline(self, limit: int | None = -1) -> bytes:
        limit = -1 if limit is None else limit
        if self.head_left is not None:  # one byte past the head's budget is enough to refuse it
            limit = self.head_left + 1 if limit < 0 else min(limit, self.head_left + 1)
        searched = 0
        while True:
            end = self._buf.find(b"\n", searched, None if limit < 0 else limit)
            if end >= 0:
                return self._take(end + 1)
            if 0 <= limit <= len(self._buf):
                return self._take(limit)
            searched = len(self._buf)
            if not self._fill(*self.deadline()):
                return self._take(len(self._buf))

    def close(self) -> None:
        self.closed = True


def read_body(given: Any, limit: int) -> bytes:
    """The whole body of a request from gevent's ``wsgi.input`` (Content-Length
    or chunked), at most ``limit`` bytes: one byte more is ClientFault(413); a
    broken chunked body is ClientFault(400)."""
    try:
        body = given.read(limit + 1)
    except OSError as exc:
        if type(exc).__name__ == "_InvalidClientInput" or str(exc).startswith("unexpected end of file"):
            raise ClientFault("bad_body") from None
        raise  # the connection itself failed
    if len(body) > limit:
        raise ClientFault("body_too_large")
    return body



class Slots:
    """At most ``max_connections`` connections hold a slot.  A new one past
    them is still accepted, on probation (at most PROBATION of them), and
    reads its request; with the whole request in hand it takes the slot of
    the holder furthest behind (see ``Receiver.behind``: idle, or receiving
    below ``min_receive_rate``, for EVICT_AFTER seconds at least), which is
    closed, or else it is answered 503.  Past PROBATION a newcomer replaces
    the probationer furthest behind, or is answered 503 at once.  So clients
    that send slowly, however many and however often they come back, keep
    neither the slots nor the probation places from a client that sends its
    request at once.  A member is anything with a ``receiver`` (a Receiver)."""

    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self.holders: set[Any] = set()
        self.probation: set[Any] = set()

    def place(self) -> set[Any] | None:
        """The group a new connection joins (a free slot, or probation), or None:
        refuse it."""
        if len(self.holders) < self.max_connections:
            return self.holders
        if len(self.probation) < PROBATION or self._evict_from(self.probation):
            return self.probation
        return None

    def take(self, member: Any) -> bool:
        """A member with its whole request keeps its slot, or takes a free one or
        a holder's; False: none to take."""
        if member in self.holders:
            return True
        if len(self.holders) >= self.max_connections and not self._evict_from(self.holders):
            return False
        self.probation.discard(member)
        self.holders.add(member)
        return True

    def release(self, member: Any) -> None:
        self.holders.discard(member)
        self.probation.discard(member)

    def close_idle(self) -> int:
        """Close every member waiting for its next request (a keep-alive
        client between two requests: the server stops); one in a request is
        left to finish.  Returns how many were closed."""
        idle = [m for m in self.holders | self.probation if m.receiver.waiting and not m.receiver.in_request]
        for member in idle:
            member.receiver.evict()
        return len(idle)

    def _evict_from(self, group: set[Any]) -> bool:
        """Close the member of ``group`` furthest behind (EVICT_AFTER at least)."""
        now = time.monotonic()
        victim, worst = None, EVICT_AFTER
        for member in group:
            behind = member.receiver.behind(now)
            if behind is not None and behind >= worst:
                victim, worst = member, behind
        if victim is None:
            return False
        victim.receiver.evict()
        group.discard(victim)
        return True
