"""The server: FreeSWITCH's core as far as the Event Socket shows it.

:class:`FakeFreeSWITCH` listens (a gevent ``StreamServer``), gives each
connection a :class:`~.listener.Listener`, and runs one pump greenlet that
plays the source like FreeSWITCH's core: it keeps the table ``show channels``
reads and offers each event to every connection.  Events emitted while no
client is subscribed are lost, as with FreeSWITCH; by default the stream only
starts at the first subscription, and ``hold`` pauses it whenever nobody
listens (useful for exact tests).  Flow control, faults and json_cdr files:
the class's docstring.

The ``api`` commands answer as mod_commands does: ``status``, ``show
channels [count|as json|as csv|as delim X]``, ``uuid_dump <uuid> [json]``,
``uptime [unit]``, ``version``, ``hostname``.
"""

from __future__ import annotations

import socket
import sys
import time
import uuid
from typing import Union

import gevent
from gevent.event import Event as GeventEvent
from gevent.server import StreamServer

from ..esl.events import EventDecodeError
from .channels import ChannelTable, channels_delim, channels_json, dump_json, dump_text
from .generated import GeneratedSource
from .json_cdr import JsonCdrWriter
from .listener import MAX_QUEUE_LEN, QUEUE_DROP, QUEUE_SHUTDOWN, Listener
from .replay import ReplaySource, StaticSource
from .subscription import FORMATS
from .templates import Emission, derive_uuid

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8021
DEFAULT_PASSWORD = "ClueCon"

FS_VERSION_HUMAN = "1.10.12-release 64bit"
FS_VERSION_FULL = "1.10.12-release~64bit"
# With backpressure the source waits once a client is this far behind: frames
# are ~5 KiB, so this bounds the memory a slow reader costs.
BACKPRESSURE_LEVEL = 2_000

SHOW_SYNTAX = (
    "codec|endpoint|application|api|dialplan|file|timer|calls [count]|channels "
    "[count|like <match string>]|uuid_calls|uuid_channels|calls|detailed_calls|bridged_calls|"
    "detailed_bridged_calls|aliases|complete|chat|management|modules|nat_map|say|interfaces|"
    "interface_types|tasks|limits|status"
)
UPTIME_SYNTAX = "[us|ms|s|m|h|d|microseconds|milliseconds|seconds|minutes|hours|days]"
# ``uptime [unit]``: each unit in microseconds (no unit: seconds).
UPTIME_UNITS = {"us": 1, "microseconds": 1, "ms": 1_000, "milliseconds": 1_000, "": 1_000_000, "s": 1_000_000,
                "seconds": 1_000_000, "m": 60_000_000, "minutes": 60_000_000, "h": 3_600_000_000,
                "hours": 3_600_000_000, "d": 86_400_000_000, "days": 86_400_000_000}


Source = Union[ReplaySource, GeneratedSource, StaticSource]


class AlreadyStarted(Exception):
    """``start()`` on a stand-in that is already listening."""


def _as_source(events) -> Source | None:
    if events is None or isinstance(events, (ReplaySource, GeneratedSource, StaticSource)):
        return events
    return StaticSource(events)


class FakeFreeSWITCH:
    """A FreeSWITCH Event Socket (inbound) on ``host:port``.

    ``events`` is a :class:`ReplaySource`, a :class:`GeneratedSource`, any
    iterable of decoded event dicts, or None (api only).  ``port=0`` picks a
    free port: read ``.port`` after :meth:`start`.  ``prerender="json"`` (or
    "plain") builds every frame of a finite source before listening.

    *Flow control.*  FreeSWITCH never waits for a client: a listener whose queue
    overflows loses events and is dropped.  The stand-in does that with
    ``backpressure=False``; by default it rather waits for slow clients, so that
    "as fast as possible" means as fast as the client reads.

    *Faults* are counted in events of the stream: close every connection after
    event N (``drop_after``), stop sending anything for S seconds after event N
    (``stall_after``), restart with a new ``Core-UUID`` after event N
    (``restart_after``: the shutdown notice, connections closed, the channel
    table emptied, the stream continuing where it was), and a malformed frame
    before every Nth event a connection receives (``malformed_every``).
    :meth:`freeze` ... :meth:`thaw` is SIGSTOP ... SIGCONT: sockets stay open, nothing is
    answered, sent or emitted; a new connection gets its ``auth/request`` only after.

    *Away* (``away_after`` N, ``away_events`` K): after event N every connection
    is closed without a word and connections are refused while the switch goes
    on with the next K events: nobody hears them, as when a network cut or a
    stopped daemon leaves FreeSWITCH without a listener (it queues nothing for
    a client that is not there).  Then connections are accepted again.  Tests
    that stop the daemon itself use ``pause_after`` N: the stream stops after
    event N until :meth:`resume`, which can first play K events away
    (``resume(away_events=K)``).  Calls go on on the stand-in's clock
    throughout: with ``cps`` > 0 an event is due at its time whether or not
    anybody listens.

    *json_cdr files* (``json_cdr_dir``): as mod_json_cdr does, the stand-in
    writes each leg's CDR file when it hangs up, heard or not (see
    :mod:`.json_cdr`).
    """

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = 0,
        password: str = DEFAULT_PASSWORD,
        events=None,
        *,
        core_uuid: str | None = None,
        hostname: str | None = None,
        wait_for_subscriber: bool = True,
        hold: bool = False,
        backpressure: bool = True,
        queue_limit: int = MAX_QUEUE_LEN,
        auth_timeout: float = 25.0,
        drop_after: int | None = None,
        stall_after: int | None = None,
        stall_seconds: float = 5.0,
        restart_after: int | None = None,
        restart_downtime: float = 0.0,
        malformed_every: int | None = None,
        prerender: str | None = None,
        away_after: int | None = None,
        away_events: int = 0,
        pause_after: int | None = None,
        json_cdr_dir: str | None = None,
        json_cdr_prefix_a_leg: bool = True,
        json_cdr_delay: float = 0.0,
        json_cdr_truncate_every: int | None = None,
    ):
        self.host = host
        self.port = port
        self.password = password
        self._source = _as_source(events)
        self.core_uuid = core_uuid or getattr(self._source, "core_uuid", None) or str(uuid.uuid4())
        self.hostname = hostname or getattr(self._source, "hostname", None) or "vm"
        self.wait_for_subscriber = wait_for_subscriber
        self.hold = hold
        self.backpressure = backpressure
        self.queue_limit = queue_limit
        self.auth_timeout = auth_timeout
        self.drop_after = drop_after
        self.stall_after = stall_after
        self.stall_seconds = stall_seconds
        self.restart_after = restart_after
        self.restart_downtime = restart_downtime
        self.malformed_every = malformed_every
        self.prerender = prerender
        self.away_after = away_after
        self.away_events = away_events
        self.pause_after = pause_after
        self.json_cdr = (
            JsonCdrWriter(
                json_cdr_dir,
                prefix_a_leg=json_cdr_prefix_a_leg,
                delay=json_cdr_delay,
                truncate_every=json_cdr_truncate_every,
            )
            if json_cdr_dir
            else None
        )
        self.unheard = 0  # events played away (offered to no connection)
        self._away_left = 0  # events still to play away
        self._resumed = GeventEvent()
        self._resumed.set()
        self._thawed = GeventEvent()
        self._thawed.set()
        self.position = 0  # events the stream has emitted so far
        self.restarts = 0
        self.error: Exception | None = None
        self._listeners: set[Listener] = set()
        self._channels = ChannelTable()
        self._subscribed = GeventEvent()
        self._source_done = self._source is None
        self._stopping = False
        self._down_until = 0.0
        self._started = 0.0
        self._server: StreamServer | None = None
        self._pump = None

    # -- public API

    def start(self) -> "FakeFreeSWITCH":
        """Listen (returns once the socket is bound) and start the pump."""
        if self._server is not None:
            raise AlreadyStarted("this FakeFreeSWITCH is already listening on port %d" % self.port)
        if self.prerender and self._source is not None:
            self._source = self._render_all(self._source, FORMATS[self.prerender])
        self._server = StreamServer((self.host, self.port), self._handle)
        self._server.start()
        self.port = self._server.server_port
        self._started = time.time()
        if self._source is not None:
            self._pump = gevent.spawn(self._run_source)
        return self

    def _render_all(self, source, ctype: str) -> list[Emission]:
        """Build every frame before serving, so that serving costs only the
        socket writes (benchmarks).  A restart then keeps the old Core-UUID
        in these frames."""
        if getattr(source, "calls", 0) is None:
            raise ValueError("cannot prerender an endless stream")
        emissions = list(source)
        for emission in emissions:
            emission.core = self.core_uuid
            emission.host = self.hostname
            emission.frame(ctype)
        return emissions

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        if self._server is not None:
            self._server.close()
        for listener in list(self._listeners):
            listener.abort()
        if self._pump is not None:
            self._pump.kill(block=True, timeout=timeout)
        if self.json_cdr is not None:
            self.json_cdr.cancel()
        if self._server is not None:
            self._server.stop(timeout=timeout)

    def __enter__(self) -> "FakeFreeSWITCH":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def done(self) -> bool:
        """The source is exhausted and every connection has been sent its share."""
        return self._source_done and all(listener.idle() for listener in list(self._listeners))

    def delivered(self) -> bool:
        """Every connection has been sent every event offered to it so far."""
        return all(listener.idle() for listener in list(self._listeners))

    def wait_done(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.done():
            if time.monotonic() >= deadline:
                return False
            gevent.sleep(0.005)
        return True

    def live_channels(self) -> list[dict[str, str]]:
        """The rows ``show channels`` would list now (copies)."""
        return [dict(row) for row in self._channels.rows.values()]

    def connections(self) -> int:
        return sum(1 for listener in list(self._listeners) if listener.alive)

    def restart(self) -> None:
        """Restart FreeSWITCH: notice and close every connection, new Core-UUID,
        empty channel table; the stream goes on where it was."""
        self.restarts += 1
        self.core_uuid = derive_uuid("restart:%d" % self.restarts, self.core_uuid)
        self._down_until = time.monotonic() + self.restart_downtime
        self._channels.clear()
        self._broadcast(QUEUE_SHUTDOWN)

    def drop_connections(self) -> None:
        """Close every connection after what is queued for it, without a word."""
        self._broadcast(QUEUE_DROP)

    def go_away(self, events: int) -> None:
        """Close every connection and refuse new ones while the stream plays
        its next ``events`` events (lost: nobody listens)."""
        if events <= 0:
            self.drop_connections()
            return
        self._away_left += events
        self.drop_connections()

    def paused(self) -> bool:
        """The stream waits for :meth:`resume` (``pause_after``)."""
        return not self._resumed.is_set()

    def resume(self, away_events: int = 0) -> None:
        """Continue a paused stream, its next ``away_events`` events unheard."""
        if away_events > 0:
            self.go_away(away_events)
        self._resumed.set()

    def freeze(self) -> None:
        """Stop as SIGSTOP does, until :meth:`thaw` (the class's docstring)."""
        self._thawed.clear()

    def thaw(self) -> None:
        self._thawed.set()

    def await_thaw(self) -> float:
        """Wait while frozen (or until stopped); the seconds waited."""
        return self._await(self._thawed)

    def api(self, name: str, args: str = "") -> str:
        """The text of an ``api`` command, as mod_commands writes it."""
        lower = name.lower()
        if lower == "status":
            return self._status()
        if lower == "show":
            return self._show(args)
        if lower == "uuid_dump":
            return self._uuid_dump(args)
        if lower == "uptime":  # whole units since the start
            scale = UPTIME_UNITS.get(args.strip().lower())
            if scale is None:
                return "-USAGE: %s\n" % UPTIME_SYNTAX
            return "%d\n" % (max(0.0, time.time() - self._started) * 1_000_000 // scale)
        if lower == "version":
            return "FreeSWITCH Version %s ( 64bit)\n" % FS_VERSION_FULL
        if lower in ("hostname", "switchname"):
            return self.hostname
        if lower == "global_getvar":  # the value alone, "" for an unknown name
            return self.core_uuid if args.strip() == "core_uuid" else ""
        return "-ERR %s Command not found!\n" % name

    # -- connections

    def note_subscription(self) -> None:
        """A connection turned events on (the stream may start)."""
        self._subscribed.set()

    def _handle(self, sock: socket.socket, address) -> None:
        self.await_thaw()  # a stopped process greets nobody
        if self._stopping or time.monotonic() < self._down_until or self._away_left:
            sock.close()  # the switch is down or out of reach: nothing answers
            return
        listener = Listener(self, sock)
        self._listeners.add(listener)
        try:
            listener.serve()
        finally:
            self._listeners.discard(listener)

    def _has_subscriber(self) -> bool:
        return any(listener.listening() for listener in list(self._listeners))

    def _broadcast(self, item) -> None:
        for listener in list(self._listeners):
            listener.control(item)

    # -- the stream

    def _run_source(self) -> None:
        try:
            if self.wait_for_subscriber:
                self._await_subscriber()
            self._play()
        except (OSError, ValueError, EventDecodeError) as exc:
            self.error = exc
            print("eslcdr fakefs: event source failed: %s" % exc, file=sys.stderr)
        finally:
            self._source_done = True

    def _play(self) -> None:
        started = time.monotonic()
        paused = 0.0
        for emission in self._source:
            if self._stopping:
                return
            if emission.due is not None:
                wait = started + paused + emission.due - time.monotonic()
                if wait > 0:
                    gevent.sleep(wait)
            if not self._away_left:
                if self.hold:
                    paused += self._await_subscriber()
                if self.backpressure:
                    self._throttle()
            if not self._thawed.is_set():
                paused += self.await_thaw()
            self._emit(emission)
            if not self._resumed.is_set():
                paused += self._await(self._resumed)
            if self.position % 64 == 0:
                gevent.sleep(0)  # let the writers run

    def _await(self, event: GeventEvent) -> float:
        """Wait until ``event`` is set or the server stops; the seconds waited."""
        began = time.monotonic()
        while not self._stopping and not event.wait(timeout=0.5):
            pass
        return time.monotonic() - began

    def _await_subscriber(self) -> float:
        began = time.monotonic()
        while not self._stopping:
            self._subscribed.clear()
            if self._has_subscriber():
                break
            self._subscribed.wait(timeout=0.5)
        return time.monotonic() - began

    def _throttle(self) -> None:
        level = min(BACKPRESSURE_LEVEL, self.queue_limit)
        for listener in list(self._listeners):
            while listener.alive and listener.queue.qsize() >= level and not self._stopping:
                listener.drained.clear()
                if listener.queue.qsize() >= level:
                    listener.drained.wait(timeout=0.5)

    def _emit(self, emission: Emission) -> None:
        self.position += 1
        emission.position = self.position
        emission.core = self.core_uuid
        emission.host = self.hostname
        self._channels.observe(emission)
        if self.json_cdr is not None and emission.template.event_id == "CHANNEL_HANGUP_COMPLETE":
            # mod_json_cdr writes the file before the core fires the event.
            self.json_cdr.hangup(emission.event())
        if self._away_left:
            self._away_left -= 1
            self.unheard += 1
        else:
            for listener in list(self._listeners):
                listener.offer(emission)
        self._inject_faults()

    def _inject_faults(self) -> None:
        position = self.position
        if position == self.drop_after:
            self.drop_connections()
        if position == self.stall_after:
            self._broadcast(("stall", self.stall_seconds))
        if position == self.restart_after:
            self.restart()
        if position == self.away_after:
            self.go_away(self.away_events)
        if position == self.pause_after:
            self._resumed.clear()

    # -- api commands

    def _uuid_dump(self, args: str) -> str:
        argv = args.split()
        if not argv:
            return "-USAGE: <uuid> [format]\n"
        event = self._channels.dump(argv[0])
        if event is None:
            return "-ERR No such channel!\n"
        if len(argv) > 1 and argv[1].lower() == "json":
            return dump_json(event)
        return dump_text(event)

    def _show(self, args: str) -> str:
        argv = [token for token in args.split(" ") if token]
        if not argv:
            return "-USAGE: %s\n" % SHOW_SYNTAX
        what = argv[0].lower()
        if what == "status":
            return self._status()
        if what != "channels":
            return "-USAGE: %s\n" % SHOW_SYNTAX
        rows = self.live_channels()
        if len(argv) > 1 and argv[1].lower() == "count":
            return "\n%d total.\n" % len(rows)
        form = argv[2].lower() if len(argv) > 2 and argv[1].lower() == "as" else "delim"
        if form == "json":
            return channels_json(rows)
        if form in ("delim", "csv"):
            return channels_delim(rows, argv[3] if form == "delim" and len(argv) > 3 else ",")
        return "-ERR Cannot find format %s\n" % form

    def _status(self) -> str:
        up = max(0.0, time.time() - self._started)
        micro = int(up * 1_000_000)
        parts = []
        for unit, size in (
            ("year", 365 * 86400_000_000),
            ("day", 86400_000_000),
            ("hour", 3600_000_000),
            ("minute", 60_000_000),
            ("second", 1_000_000),
            ("millisecond", 1_000),
            ("microsecond", 1),
        ):
            count, micro = divmod(micro, size)
            parts.append("%d %s%s" % (count, unit, "" if count == 1 else "s"))
        live = len(self._channels.rows)
        return (
            "UP %s\n" % ", ".join(parts)
            + "FreeSWITCH (Version %s) is ready\n" % FS_VERSION_HUMAN
            + "%d session(s) since startup\n" % self._channels.created
            + "%d session(s) - peak %d, last 5min %d \n"
            % (live, self._channels.peak, self._channels.peak)
            + "0 session(s) per Sec out of max 1000, peak 0, last 5min 0 \n"
            + "1000 session(s) max\n"
            + "min idle cpu 0.00/99.00\n"
            + "Current Stack Size/Max 240K/8192K\n"
        )
