"""The Event Socket connection to one FreeSWITCH node.

``EslClient`` is greenswitch's ``InboundESL`` with its reading replaced:
greenswitch decodes a whole event block before splitting its lines (so an
encoded newline in a value breaks the event), cannot read JSON events and
waits forever on commands.  Here one reader greenlet feeds the sans-IO
``FrameParser``; command replies resolve the pending command (in order);
events are decoded and handed to ``on_event`` right there, in the reader, so
nothing queues between FreeSWITCH and the leg tracker.  Every command waits
at most ``command_timeout``.  The greenswitch internals it relies on are
pinned by tests/unit/esl/test_esl.py.

``NodeConnection`` supervises one node: connect, log in, subscribe, resync
the legs still up, declare a silent FreeSWITCH dead (liveness.py), reconnect
with capped, jittered backoff.  A refused password is fatal.
"""

from __future__ import annotations

import socket as stdlib_socket
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import gevent
import gevent.event
import gevent.socket
import structlog
from greenswitch.esl import InboundESL, NotConnectedError

from ..backoff import backoff_delay
from ..config import EslNode
from ..keepalive import keep_alive
from .errors import RETRYABLE, AuthenticationError, CommandFailed, CommandTimeout
from .events import EVENT_TYPES, Event, EventDecodeError, EventDecoder, parse_channel_rows, parse_dump
from .frames import Frame, FrameParser
from .liveness import IDLE_CHECK, watch

log = structlog.get_logger(__name__)

SUBSCRIBED_EVENTS = (
    "CHANNEL_CREATE",
    "CHANNEL_PROGRESS",
    "CHANNEL_PROGRESS_MEDIA",
    "CHANNEL_ANSWER",
    "CHANNEL_BRIDGE",
    # hold and unhold: the live channels show a held call as HELD
    "CHANNEL_HOLD",
    "CHANNEL_UNHOLD",
    "CHANNEL_HANGUP_COMPLETE",
    "DTMF",
    # CUSTOM must come last: FreeSWITCH reads every word after it as a subclass.
    "CUSTOM",
    "spandsp::txfaxresult",
    "spandsp::rxfaxresult",
)
# What one recv may take, into one buffer kept for the connection's life (a
# fresh bytes object per read faulted its pages in).  Less than a pass gathers:
# a full read means more is waiting, taken at once (after gevent.sleep(0)) a
# piece at a time, still in cache (2 MiB reads: a burst ~20 % dearer a leg).
READ_CHUNK = 512 * 1024
# After a read that took all there was the reader lets events gather (a pass):
# until GATHER_BYTES are there (SO_RCVLOWAT), at most as long as they took to
# come at the recent rate, never more than READ_PACE.  Every wake-up costs the
# same (mostly cold caches) however many events it brings: a trickle is read a
# few times a second, faster streams in passes of GATHER_BYTES (1 MiB rather
# than 256 KiB: ~15 % less CPU a leg at 10 calls/s, bench/README.md).  A CDR
# waits at most READ_PACE more (then the writer's window: well within the 1 s
# of docs/architecture.md).  The kernel sizes the receive buffer to match.
GATHER_BYTES = 1024 * 1024
READ_PACE = 0.4
# A read the reader waited this long for starts no pass (events come sparsely:
# the tail of long calls); the writer is told to commit once nothing more came
# within SETTLE: a call's legs hang up tens of ms apart (one transaction for
# them, not the first alone), and no setsockopt pair or failing recv.
SPARSE_AFTER = READ_PACE
SETTLE = 0.06
# No read waits longer than this (the socket's timeout): liveness asks a
# switch silent for IDLE_CHECK and its reply is a read, so only a watcher that
# is not running lets a healthy connection reach it; the socket is then closed
# like a dead one (the supervisor reconnects).  A backstop, never the rule.
READ_TIMEOUT = 4 * IDLE_CHECK
# uuid_dump costs one round trip per leg: bounded, so a reconnect to a node
# with thousands of channels stays a matter of seconds.
MAX_DUMPS = 2000


@dataclass(frozen=True, slots=True)
class Reply:
    """A command/reply or api/response, shaped like greenswitch's ESLEvent."""

    headers: dict[str, str]
    data: str


class EslClient(InboundESL):
    """greenswitch's ``InboundESL`` reading through ``FrameParser``.

    The reader pulls large chunks off the socket; once subscribed it lets
    events gather in the socket after a small read (``_gather``: until
    GATHER_BYTES wait or READ_PACE has passed), so a media server's steady
    trickle wakes the daemon a few times a second rather than once per event.
    """

    def __init__(
        self,
        node: EslNode,
        on_event: Callable[[Event], None],
        on_protocol_error: Callable[[str, bytes], None],
        decoder: EventDecoder | None = None,
        on_pause: Callable[[float], None] | None = None,
    ) -> None:
        super().__init__(node.host, node.port, node.password, timeout=node.connect_timeout)
        self._decode = (decoder or EventDecoder(fast=False)).decode
        self.command_timeout = node.command_timeout
        self._on_event = on_event
        self._on_protocol_error = on_protocol_error
        # Told, before the reader lets events gather, until when (monotonic)
        # it will hand over nothing: the writer then commits what it holds
        # rather than wake up again for it (docs/architecture.md).
        self._on_pause = on_pause
        self._parser = FrameParser()
        self._closed = gevent.event.Event()
        self._reader: gevent.Greenlet | None = None
        # Bytes read since the last pacing, and when that was.
        self._read_bytes = 0
        self._read_at = 0.0
        self.last_read = time.monotonic()  # when bytes last came (liveness.watch)
        self.rejection = ""
        self.sock = None
        self.read_timeout = READ_TIMEOUT
        # Set once subscribed (NodeConnection): reads are then paced.
        self.pace = False

    # -- connecting -------------------------------------------------------
    def connect(self) -> None:
        try:
            sock = gevent.socket.create_connection((self.host, self.port), timeout=self.timeout)
        except stdlib_socket.timeout:
            raise NotConnectedError("connection timed out after %ss" % self.timeout) from None
        sock.settimeout(self.read_timeout)  # liveness breaks a quiet switch's silence first
        keep_alive(sock)  # a dead host is noticed
        self.sock = sock
        self.connected = True
        self._reader = gevent.spawn(self._read_loop)
        if not self._auth_request_event.wait(timeout=self.command_timeout):
            raise CommandTimeout("no auth/request from FreeSWITCH within %ss" % self.command_timeout)
        if not self.connected:
            raise NotConnectedError("FreeSWITCH rejected the connection: %s" % (self.rejection or "closed"))
        self.authenticate()

    def authenticate(self) -> None:
        try:
            reply = self.send("auth %s" % self.password)
        except NotConnectedError:
            raise AuthenticationError("FreeSWITCH closed the socket after auth") from None
        if not reply.data.startswith("+OK"):
            raise AuthenticationError("FreeSWITCH refused the password (%s)" % reply.data.strip())

    # -- commands -----------------------------------------------------------
    def send(self, data: str) -> Reply:
        if not self.connected or self.sock is None:
            raise NotConnectedError("not connected (%s)" % getattr(self, "close_reason", "never connected"))
        pending = gevent.event.AsyncResult()
        self._commands_sent.append(pending)
        deadline = time.monotonic() + self.command_timeout  # sending and the reply, together
        timer = gevent.Timeout(self.command_timeout)
        timer.start()
        try:
            self.sock.sendall((data + "\n\n").encode("utf-8"))
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            self.connected = False  # part of it may have gone: the stream is out of step (close() skips "exit")
            raise CommandTimeout("%r: not sent within %ss" % (data.split(" ", 1)[0], self.command_timeout)) from None
        finally:
            timer.close()
        try:
            return pending.get(timeout=max(0.0, deadline - time.monotonic()))
        except gevent.Timeout:
            # The entry stays queued: a late reply must still pop it so the
            # following replies line up with their commands.
            raise CommandTimeout("%r: no reply within %ss" % (data.split(" ", 1)[0], self.command_timeout)) from None

    def command(self, data: str) -> Reply:
        """send() that raises CommandFailed on -ERR."""
        reply = self.send(data)
        if reply.data.startswith("-ERR"):
            raise CommandFailed("%s: %s" % (data.split(" ", 1)[0], reply.data.strip()))
        return reply

    # -- reading ------------------------------------------------------------
    def _read_loop(self) -> None:
        reason = "closed by FreeSWITCH"
        parser = self._parser
        chunk = bytearray(READ_CHUNK)
        view = memoryview(chunk)
        waited_from = None  # when the reader began to wait for the next read
        try:
            while True:
                if waited_from is None:
                    waited_from = time.monotonic()
                try:
                    size = self.sock.recv_into(chunk)
                except OSError as exc:
                    reason = "socket error: %s" % exc
                    break
                if not size:
                    break
                now = self.last_read = time.monotonic()
                waited, waited_from = now - waited_from, None
                self._read_bytes += size
                parser.feed(view[:size])
                self._take(parser)
                # A full chunk (more is waiting, recv never yields): let the
                # writer start its batch (in its thread).  A shorter read took
                # all there was: let the next events gather (a pass), unless
                # the socket had been silent (SPARSE_AFTER: ``_rest``).
                if size >= READ_CHUNK:
                    gevent.sleep(0)
                elif self.pace and not self._commands_sent:
                    try:
                        waited_from = self._gather() if waited < SPARSE_AFTER else self._rest()
                    except OSError as exc:  # closed meanwhile (close())
                        reason = "socket error: %s" % exc
                        break
            tail = parser.eof()
            if tail is not None:
                self._on_protocol_error(tail.reason, tail.skipped)
        finally:
            view.release()
            self._mark_closed(reason)

    def _take(self, parser: FrameParser) -> None:
        """The frames of one read, in order, each handed on as soon as it is
        cut (its bytes still in cache): events decoded here, in one loop
        (this runs for every event FreeSWITCH sends)."""
        decode = self._decode
        on_event = self._on_event
        next_item = parser.next_item
        while True:
            item = next_item()
            if item is None:
                return
            if item.__class__ is not Frame:
                self._on_protocol_error(item.reason, item.skipped)
            elif item.headers.get("Content-Type") in EVENT_TYPES:
                try:
                    event = decode(item)
                except EventDecodeError as exc:
                    self._on_protocol_error(str(exc), item.body[:200])
                    continue
                on_event(event)
            else:
                self._dispatch(item)

    def _gather(self) -> None:
        """After a small read: wait until GATHER_BYTES are in the socket, or
        as long as they took to come at the rate since the last pacing, at
        most READ_PACE (the next recv takes whatever is there, or waits for
        data as usual)."""
        now = time.monotonic()
        pace = min(READ_PACE, GATHER_BYTES * (now - self._read_at) / max(self._read_bytes, 1))
        self._read_at, self._read_bytes = now, 0
        sock = self.sock
        watcher = self._readable()
        if watcher is None:
            return
        if self._on_pause is not None:
            self._on_pause(now + pace)
        sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_RCVLOWAT, GATHER_BYTES)
        try:
            gevent.socket.wait(watcher, timeout=pace, timeout_exc=False)
        finally:
            sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_RCVLOWAT, 1)

    def _rest(self) -> float:
        """After a small read that came after a silence: what comes within
        SETTLE starts a pass (the next read); else the writer is told it may
        commit, and the reader waits for the next bytes (readable first: no
        recv that fails with EAGAIN).  Returns when the silence began.  The
        wait for the next bytes is bounded as the recv it replaces: a socket
        silent past liveness.IDLE_CHECK is probed, and closed if FreeSWITCH
        does not answer; past ``read_timeout`` it times out (either ends the
        wait with an OSError to the read loop)."""
        began = time.monotonic()
        watcher = self._readable()
        if watcher is None:
            return began
        gevent.socket.wait(watcher, timeout=SETTLE, timeout_exc=False)
        now = time.monotonic()
        if now - began >= SETTLE:
            if self._on_pause is not None:
                self._on_pause(now + READ_PACE)
            gevent.socket.wait(watcher, timeout=self.read_timeout)
        return began

    def _readable(self):
        """The gevent socket's own read watcher (waited on without a recv);
        None turns pacing off (a socket that is not gevent's: reads as they
        come)."""
        watcher = getattr(self.sock, "_read_event", None)
        if watcher is None:
            self.pace = False
        return watcher

    def _dispatch(self, frame: Frame) -> None:
        """A frame that is not an event (``_take`` hands on the events)."""
        ctype = frame.content_type
        if ctype == "command/reply":
            self._resolve(Reply(frame.headers, frame.headers.get("Reply-Text", "")))
        elif ctype == "api/response":
            self._resolve(Reply(frame.headers, frame.body.decode("utf-8", "replace")))
        elif ctype == "auth/request":
            self._auth_request_event.set()
        elif ctype == "text/disconnect-notice":
            if frame.headers.get("Content-Disposition") != "linger":
                self.connected = False
        elif ctype == "text/rude-rejection":
            self.rejection = frame.body.decode("utf-8", "replace").strip()
            self.connected = False
            self._auth_request_event.set()
        elif ctype != "log/data":
            self._on_protocol_error("unexpected frame type %r" % ctype, b"")

    def _resolve(self, reply: Reply) -> None:
        if self._commands_sent:
            self._commands_sent.pop(0).set(reply)
        else:
            self._on_protocol_error("reply without a command", reply.data.encode()[:200])

    def _mark_closed(self, reason: str) -> None:
        self.connected = False
        self.close_reason = reason
        while self._commands_sent:
            self._commands_sent.pop(0).set_exception(NotConnectedError(reason))
        self._auth_request_event.set()
        self._closed.set()

    def wait_closed(self, timeout: float) -> bool:
        return self._closed.wait(timeout=timeout)

    def close(self) -> None:
        """Say goodbye if we can, then close the socket."""
        if self.connected:
            try:
                self.send("exit")
            except RETRYABLE:
                pass
        self.connected = False
        if self.sock is not None:
            self.sock.close()
        if self._reader is not None:
            self._reader.join(timeout=self.command_timeout)
            if not self._reader.dead:
                self._reader.kill(block=True, timeout=1)

    stop = close


class NodeConnection:
    """Keeps one FreeSWITCH node connected, for the life of the daemon.

    Connect, log in, subscribe (JSON by default, CUSTOM subclasses last), ask
    ``show channels as json`` which legs are still up, then wait for the
    socket to close and reconnect with capped, jittered backoff.  The resync
    callback names the listed legs it did not know (created while no socket
    listened); each is asked for with ``uuid_dump <uuid> json`` (at most
    ``MAX_DUMPS``), whose CHANNEL_DATA answer goes down the normal event path,
    so such a leg gets its account, owner and links like any other.
    """

    def __init__(
        self,
        node: EslNode,
        on_event: Callable[[Event], None],
        on_resync: Callable[[list[dict[str, str]]], Iterable[str] | None],
        on_protocol_error: Callable[[str, bytes], None] | None = None,
        decoder: EventDecoder | None = None,
        on_pause: Callable[[float], None] | None = None,
        on_subscribe: Callable[[], None] | None = None,
    ) -> None:
        self.node = node
        self._on_subscribe = on_subscribe  # told before each subscription (the resync's reference)
        self._decoder = decoder
        self._on_pause = on_pause
        self._on_event = on_event
        self._on_resync = on_resync
        self._on_protocol_error = on_protocol_error or self._log_protocol_error
        self._stop = gevent.event.Event()
        self.client: EslClient | None = None
        self.state = "starting"
        self.connected_since: float | None = None
        self.reconnects = 0
        self.unresponsive = 0  # connections declared dead: FreeSWITCH silent, the ping unanswered
        self.idle_check = IDLE_CHECK
        self.protocol_errors = 0
        self.fatal: str | None = None
        self.core_uuid: str | None = None
        self.last_error: str | None = None

    def _log_protocol_error(self, reason: str, skipped: bytes) -> None:
        self.protocol_errors += 1
        log.warning("esl_protocol_error", node=self.node.name, reason=reason, skipped_bytes=len(skipped))

    def connect_once(self) -> EslClient:
        """Connect, log in, subscribe and resync; return the live client."""
        client = EslClient(self.node, self._on_event, self._on_protocol_error, self._decoder, self._on_pause)
        self.client = client
        try:
            client.connect()
            if self._on_subscribe is not None:
                self._on_subscribe()
            client.command("event %s %s" % (self.node.format, " ".join(SUBSCRIBED_EVENTS)))
            core = client.command("api global_getvar core_uuid")
            channels = client.command("api show channels as json")
            unknown = self._on_resync(parse_channel_rows(channels.data))
            self._dump(client, list(unknown or ())[:MAX_DUMPS])
        except BaseException:
            client.close()
            raise
        # The switch's run (a new one each start), unless the API refused (-ERR).
        answer = core.data.strip()
        self.core_uuid = answer if answer[:1] not in ("", "-") else None
        client.pace = True
        return client

    def _dump(self, client: EslClient, call_ids: list[str]) -> None:
        """Feed ``uuid_dump`` of legs created while no socket listened."""
        for call_id in call_ids:
            try:
                reply = client.command("api uuid_dump %s json" % call_id)
            except CommandFailed:
                continue  # gone since, or a FreeSWITCH without uuid_dump
            event = parse_dump(reply.data)
            if event is not None:
                self._on_event(event)

    def run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            self.state = "connecting"
            try:
                client = self.connect_once()
            except AuthenticationError as exc:
                self.state = "auth_failed"
                self.fatal = str(exc)
                log.error("esl_auth_failed", node=self.node.name, host=self.node.host, port=self.node.port, error=str(exc))
                return
            except RETRYABLE as exc:
                attempt += 1
                self.last_error = str(exc)
                delay = backoff_delay(attempt, base=0.5, cap=self.node.reconnect_max_delay)
                self.state = "disconnected"
                # A state change is worth a warning; the retries while
                # FreeSWITCH stays away are debug (the minute summary
                # shows the node's state and last error).
                report = log.warning if attempt == 1 else log.debug
                report(
                    "esl_connect_failed",
                    node=self.node.name,
                    host=self.node.host,
                    port=self.node.port,
                    error=str(exc),
                    attempt=attempt,
                    retry_in=round(delay, 2),
                )
                self._stop.wait(timeout=delay)
                continue
            attempt = 0
            self.state = "connected"
            self.connected_since = time.time()
            log.info("esl_connected", node=self.node.name, host=self.node.host, port=self.node.port, format=self.node.format)
            # stop() closes the client: the wait ends at once either way.
            dead = watch(client, self._stop, self.idle_check)
            self.connected_since = None
            if self._stop.is_set():
                client.close()
                break
            self.reconnects += 1
            self.state = "disconnected"
            if dead:
                self.unresponsive, self.last_error = self.unresponsive + 1, dead
            reason = dead or getattr(client, "close_reason", "closed")
            log.warning("esl_unresponsive" if dead else "esl_disconnected", node=self.node.name, reason=reason)
            client.close()
            # Reconnect at once the first time: FreeSWITCH restarts quickly,
            # and every second away is events lost.
            attempt = 1
            self._stop.wait(timeout=backoff_delay(attempt, base=0.2, cap=self.node.reconnect_max_delay))
        self.state = "stopped"

    def stop(self) -> None:
        self._stop.set()
        if self.client is not None:
            self.client.close()
