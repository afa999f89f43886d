"""One client connection: a mod_event_socket listener.

:class:`Listener` reads commands in its connection's greenlet and runs them as
``parse_command`` does (``auth``, ``api``, ``exit``; ``event plain|json ...``,
``nixevent``, ``noevents`` and ``filter`` through its
:class:`~.subscription.Subscription`; ``-ERR command not found`` for the rest),
and writes events from its own queue in a second greenlet, as mod_event_socket
has a queue per listener.  The server *offers* each event (never blocking): the
listener takes it if its subscription wants it; a full queue loses the event
and, past ``MAX_MISSED`` losses, drops the listener as FreeSWITCH does.  Fault
markers (drop, shutdown, stall) travel through the same queue, behind the
events already queued; while the server is frozen nothing is run or sent.
Closing sends a FIN after the queued bytes, never a RST that would discard
events the client has received but not yet read.
"""

from __future__ import annotations

import hmac
import re
import socket
import time
from typing import TYPE_CHECKING

import gevent
from gevent.event import Event as GeventEvent
from gevent.lock import Semaphore
from gevent.queue import Empty, Full, Queue

from .subscription import Subscription
from .templates import Emission

if TYPE_CHECKING:
    from .server import FakeFreeSWITCH

AUTH_REQUEST = b"Content-Type: auth/request\n\n"
GOODBYE = "Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"
SHUTDOWN = "The system is being shut down.\n"
# mod_event_socket: listener queue length and how many lost events kill it.
MAX_QUEUE_LEN = 100_000
MAX_MISSED = 500


_COMMAND_END = re.compile(rb"\n\r?\n")
QUEUE_DROP, QUEUE_SHUTDOWN, QUEUE_CLOSE = "drop", "shutdown", "close"


def _reply(text: str) -> bytes:
    return b"Content-Type: command/reply\nReply-Text: %s\n\n" % text.encode("utf-8")


def _notice(message: str) -> bytes:
    data = message.encode("utf-8")
    return b"Content-Type: text/disconnect-notice\nContent-Length: %d\n\n" % len(data) + data


def _malformed_frame(count: int) -> bytes:
    """Three kinds of garbage in turn, each something a reader must survive."""
    kind = count % 3
    if kind == 1:
        return b"this line is not an ESL header\n\n"
    if kind == 2:
        return b"Content-Length: many\nContent-Type: text/event-plain\n\n"
    body = b'{"Event-Name": truncated'
    return b"Content-Length: %d\nContent-Type: text/event-json\n\n" % len(body) + body


class Listener:
    """One connection: command reader here, event writer in its own greenlet."""

    def __init__(self, server: "FakeFreeSWITCH", sock: socket.socket):
        self.server = server
        self.sock = sock
        self.authed = False
        self.subscription = Subscription(on_subscribe=server.note_subscription)
        self.queue: Queue = Queue(maxsize=server.queue_limit)
        self.drained = GeventEvent()  # the writer took from the queue
        self.alive = True
        self.closing = False  # told to go: takes no more events
        self.busy = False
        self.missed = 0
        self.sent = 0
        self.stall_until = 0.0
        self._lock = Semaphore()
        self._buf = bytearray()
        self._shut = False

    # -- lifecycle

    def serve(self) -> None:
        writer = gevent.spawn(self._write_loop)
        try:
            self._send(AUTH_REQUEST)
            last = self._command_loop()
            self._finish(last)
        except OSError:
            self.abort()
        finally:
            self.abort()
            writer.join(timeout=1.0)
            writer.kill(block=False)

    def abort(self) -> None:
        """Close without a word, as a broken connection does."""
        if self.alive:
            self.alive = False
            self._wake_writer()
        self._close_socket()

    def idle(self) -> bool:
        return not self.alive or (self.queue.empty() and not self.busy)

    def _finish(self, last: bytes) -> None:
        # mod_event_socket drops what is still queued and says goodbye.
        if not self.alive:
            return
        self.alive = False
        self._wake_writer()
        try:
            self._send(last + _notice(GOODBYE))
        except OSError:
            pass
        self._close_socket()

    def _wake_writer(self) -> None:
        try:
            self.queue.put_nowait(QUEUE_CLOSE)
        except Full:
            pass

    def _close_socket(self) -> None:
        # FIN first; the command reader goes on reading until the client
        # closes, and the second call closes for real.  Closing at once with
        # unread client bytes would make the kernel send a RST, which throws
        # away events the client has received but not read yet.
        if self._shut:
            self.sock.close()
            return
        self._shut = True
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.sock.close()
            return
        gevent.spawn_later(2.0, self.sock.close)  # a client that never closes

    def _send(self, data: bytes, events: bool = False) -> None:
        with self._lock:
            self.server.await_thaw()
            wait = self.stall_until - time.monotonic()
            if wait > 0:
                gevent.sleep(wait)  # a stalled switch answers nothing
            if events and not self.alive:
                return
            self.sock.sendall(data)

    # -- commands

    def _command_loop(self) -> bytes:
        """Read and run commands; returns the last reply before goodbye."""
        timeout = self.server.auth_timeout  # FreeSWITCH waits 25 s for the first
        while self.alive:
            command = self._read_command(timeout)
            timeout = None
            if command is None:
                return b""
            self.server.await_thaw()  # frozen: read (by the kernel), never run
            out, keep = self._execute(*command)
            if not keep:
                return out
            if out:
                self._send(out)
        return b""

    def _read_command(self, timeout: float | None) -> tuple[str, dict[str, str]] | None:
        while True:
            command = self._take_command()
            if command is not None:
                return command
            data = self._recv(timeout)
            if not data:
                return None
            self._buf += data

    def _take_command(self) -> tuple[str, dict[str, str]] | None:
        buf = self._buf
        while buf[:1] in (b"\r", b"\n"):  # read_packet skips stray line ends
            del buf[:1]
        match = _COMMAND_END.search(buf)
        if match is None:
            return None
        lines = bytes(buf[: match.start()]).decode("utf-8", "replace").split("\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.rstrip("\r").partition(":")
            headers[name.strip().lower()] = value.strip()
        length = (
            int(headers["content-length"]) if headers.get("content-length", "").isdigit() else 0
        )
        if len(buf) < match.end() + length:
            return None  # sendmsg/sendevent body not all here yet
        del buf[: match.end() + length]
        return lines[0].rstrip("\r"), headers

    def _recv(self, timeout: float | None) -> bytes:
        try:
            with gevent.Timeout(timeout, False):
                return self.sock.recv(65536)
        except OSError:
            return b""
        return b""  # timed out

    def _execute(self, command: str, headers: dict[str, str]) -> tuple[bytes, bool]:
        """Run one command as parse_command does; (output, keep the session)."""
        lower = command.lower()
        if lower.startswith("exit") or command.startswith("..."):
            return _reply("+OK bye"), False
        if not self.authed:
            return self._authenticate(command, lower)
        if lower.startswith("filter "):
            return _reply(self.subscription.filter(command[7:])), True
        if lower.startswith("api "):
            return self._api(command[4:]), True
        if lower.startswith("event"):
            return _reply(self.subscription.event(command)), True
        if lower.startswith("nixevent"):
            return _reply(self.subscription.nixevent(command)), True
        if lower.startswith("noevents"):
            self._drop_queued_events()
            return _reply(self.subscription.noevents()), True
        return _reply("-ERR command not found"), True

    def _authenticate(self, command: str, lower: str) -> tuple[bytes, bool]:
        if lower.startswith("auth "):
            # Constant time, as any secret here (FreeSWITCH compares with strcmp).
            if hmac.compare_digest(command[5:].encode(), self.server.password.encode()):
                self.authed = True
                return _reply("+OK accepted"), True
            return _reply("-ERR invalid"), False
        if lower.startswith("userauth "):
            return _reply("-ERR invalid"), False  # no directory users here
        return _reply("-ERR command not found"), True

    def _api(self, line: str) -> bytes:
        name, _, args = line.partition(" ")
        data = self.server.api(name, args).encode("utf-8") or b"-ERR no reply\n"
        return b"Content-Type: api/response\nContent-Length: %d\n\n" % len(data) + data

    # -- events

    def wants(self, emission: Emission) -> bool:
        return self.authed and self.subscription.wants(emission)

    def listening(self) -> bool:
        return self.alive and not self.closing and self.authed and self.subscription.events_on

    def offer(self, emission: Emission) -> None:
        """Queue an event if this connection wants it (never blocks)."""
        if self.closing or not self.alive or not self.wants(emission):
            return
        try:
            self.queue.put_nowait(emission)
        except Full:
            # mod_event_socket counts lost events and drops a listener that
            # cannot keep up.
            self.missed += 1
            if self.missed > MAX_MISSED:
                self.abort()

    def control(self, item) -> None:
        """Queue a fault marker behind the events already queued."""
        if not self.alive:
            return
        if item in (QUEUE_DROP, QUEUE_SHUTDOWN):
            self.closing = True
        try:
            self.queue.put(item, timeout=1.0)
        except Full:
            self.abort()

    def _drop_queued_events(self) -> None:
        kept = []
        while True:
            try:
                item = self.queue.get_nowait()
            except Empty:
                break
            if not isinstance(item, Emission):
                kept.append(item)
        for item in kept:
            self.queue.put_nowait(item)

    def _write_loop(self) -> None:
        while self.alive:
            try:
                item = self.queue.get(timeout=0.5)
            except Empty:
                continue
            batch = [item]
            while len(batch) < 256:
                try:
                    batch.append(self.queue.get_nowait())
                except Empty:
                    break
            self.drained.set()
            self.busy = True
            try:
                self._write_batch(batch)
            except OSError:
                self.abort()
            finally:
                self.busy = False

    def _write_batch(self, batch: list) -> None:
        out: list[bytes] = []
        every = self.server.malformed_every
        for item in batch:
            if isinstance(item, Emission):
                self.sent += 1
                if every and self.sent % every == 0:
                    out.append(_malformed_frame(self.sent // every))
                out.append(item.frame(self.subscription.ctype))
                continue
            if out:
                self._send(b"".join(out), events=True)
                out = []
            if not self._act(item):
                return
        if out:
            self._send(b"".join(out), events=True)

    def _act(self, item) -> bool:
        """Carry out a fault marker; False when the connection is gone."""
        if item == QUEUE_DROP:
            self.abort()
            return False
        if item == QUEUE_SHUTDOWN:
            if self.alive:
                self.alive = False
                self._send(_notice(SHUTDOWN))
                self._close_socket()
            return False
        if item == QUEUE_CLOSE:
            return False
        _, seconds = item  # ("stall", seconds)
        self.stall_until = time.monotonic() + seconds
        return True
