"""The command line: ``eslcdr fakefs``.

:func:`add_arguments` declares the options (event source, stream, fault
injection, mod_json_cdr files), :func:`source_from_args` builds the source
they describe, and :func:`run` serves it until SIGTERM / SIGINT (signal handlers only set an
event) or, with ``--exit-when-done``, until the stream has been delivered.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

import gevent
from gevent.event import Event as GeventEvent

from ..esl.events import EventDecodeError
from .generated import DEFAULT_ACCOUNTS, GeneratedSource
from .listener import MAX_QUEUE_LEN
from .replay import ReplaySource
from .server import DEFAULT_HOST, DEFAULT_PASSWORD, DEFAULT_PORT, FakeFreeSWITCH, Source

def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def port_number(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("must be 0 to 65535")
    return value


def _account_list(text: str) -> tuple[str, ...]:
    accounts = tuple(item.strip() for item in text.split(","))
    if not all(accounts):
        raise argparse.ArgumentTypeError("expected comma-separated account ids")
    return accounts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``eslcdr fakefs``."""
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help="address to listen on (default %(default)s)"
    )
    parser.add_argument(
        "--port",
        type=port_number,
        default=DEFAULT_PORT,
        help="port (default %(default)s, 0: any free one)",
    )
    parser.add_argument(
        "--password", default=DEFAULT_PASSWORD, help="auth password (default %(default)s)"
    )
    source = parser.add_argument_group("event source (generated calls unless --replay)")
    source.add_argument(
        "--replay", nargs="+", metavar="FILE", help="serve the events of raw Event Socket captures"
    )
    source.add_argument(
        "--repeat",
        type=positive_int,
        default=1,
        metavar="N",
        help="replay N times, each with new ids and later times",
    )
    source.add_argument(
        "--now", action="store_true", help="move replayed times so the first event is now"
    )
    source.add_argument(
        "--calls",
        type=non_negative_int,
        default=100,
        metavar="N",
        help="generated calls (default %(default)s, 0: no end)",
    )
    source.add_argument(
        "--cps",
        type=non_negative_float,
        default=0.0,
        metavar="R",
        help="calls per second, in real time (default 0: as fast as read)",
    )
    source.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="S",
        help="seed of the generated calls (default %(default)s)",
    )
    source.add_argument(
        "--max-talk",
        type=non_negative_int,
        default=GeneratedSource.MAX_TALK,
        metavar="S",
        help="longest talk time of a generated call, seconds (default %(default)s)",
    )
    source.add_argument(
        "--accounts",
        type=_account_list,
        default=DEFAULT_ACCOUNTS,
        metavar="A,B,C",
        help="Kazoo account ids the generated calls are spread over (default: %s)"
        % ",".join(DEFAULT_ACCOUNTS),
    )
    source.add_argument(
        "--hostname", help="FreeSWITCH-Hostname of the events (default: the captures')"
    )
    stream = parser.add_argument_group("stream")
    stream.add_argument(
        "--no-wait",
        action="store_true",
        help="start the stream at once, not at the first subscription",
    )
    stream.add_argument(
        "--hold",
        action="store_true",
        help="pause the stream while no client is subscribed (FreeSWITCH would lose the events)",
    )
    stream.add_argument(
        "--no-backpressure",
        action="store_true",
        help="never wait for slow clients: overflow their queue as FreeSWITCH does",
    )
    stream.add_argument(
        "--queue-limit",
        type=positive_int,
        default=MAX_QUEUE_LEN,
        metavar="N",
        help="events queued per client (default %(default)s)",
    )
    stream.add_argument(
        "--exit-when-done", action="store_true", help="exit once the stream has been delivered"
    )
    faults = parser.add_argument_group("fault injection (N counts events of the stream)")
    faults.add_argument(
        "--drop-after", type=positive_int, metavar="N", help="close every connection after event N"
    )
    faults.add_argument(
        "--stall-after",
        type=positive_int,
        metavar="N",
        help="send nothing for --stall-seconds after event N",
    )
    faults.add_argument(
        "--stall-seconds",
        type=non_negative_float,
        default=5.0,
        metavar="S",
        help="stall length (default %(default)s)",
    )
    faults.add_argument(
        "--restart-after",
        type=positive_int,
        metavar="N",
        help="restart with a new Core-UUID after event N",
    )
    faults.add_argument(
        "--restart-downtime",
        type=non_negative_float,
        default=0.0,
        metavar="S",
        help="refuse connections for S seconds after the restart",
    )
    faults.add_argument(
        "--away-after",
        type=positive_int,
        metavar="N",
        help="after event N close every connection and refuse new ones while the next "
        "--away-events events are played (lost, as FreeSWITCH loses them)",
    )
    faults.add_argument(
        "--away-events",
        type=non_negative_int,
        default=0,
        metavar="K",
        help="events played with nobody listening after --away-after (default %(default)s)",
    )
    faults.add_argument(
        "--malformed-every",
        type=positive_int,
        metavar="N",
        help="send a malformed frame before every Nth event of a connection",
    )


    files = parser.add_argument_group("mod_json_cdr files (one per leg, written at its hangup)")
    files.add_argument(
        "--json-cdr-dir",
        metavar="DIR",
        help="write each leg's mod_json_cdr file into DIR (an existing folder), heard or not",
    )
    files.add_argument(
        "--json-cdr-no-prefix",
        action="store_true",
        help="name every file <uuid>.cdr.json (default: a_<uuid>.cdr.json for A legs, "
        "as mod_json_cdr's prefix-a-leg)",
    )
    files.add_argument(
        "--json-cdr-delay",
        type=non_negative_float,
        default=0.0,
        metavar="S",
        help="fault: a file appears S seconds after its leg's hangup",
    )
    files.add_argument(
        "--json-cdr-truncate-every",
        type=positive_int,
        metavar="N",
        help="fault: every Nth file is cut in half (FreeSWITCH died mid-write)",
    )


def source_from_args(args: argparse.Namespace) -> Source:
    if args.replay:
        return ReplaySource(
            args.replay, repeat=args.repeat, time_base=time.time() if args.now else None
        )
    return GeneratedSource(
        calls=args.calls or None, cps=args.cps, seed=args.seed, accounts=args.accounts,
        max_talk=args.max_talk,
    )


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted (or, with --exit-when-done, until delivered)."""
    if args.json_cdr_dir and not Path(args.json_cdr_dir).is_dir():
        print("eslcdr fakefs: --json-cdr-dir %s is not a folder" % args.json_cdr_dir, file=sys.stderr)
        return 2
    try:
        source = source_from_args(args)
    except (OSError, ValueError, EventDecodeError) as exc:
        print("eslcdr fakefs: %s" % exc, file=sys.stderr)
        return 2
    fake = FakeFreeSWITCH(
        args.host,
        args.port,
        args.password,
        source,
        hostname=args.hostname,
        wait_for_subscriber=not args.no_wait,
        hold=args.hold,
        backpressure=not args.no_backpressure,
        queue_limit=args.queue_limit,
        drop_after=args.drop_after,
        stall_after=args.stall_after,
        stall_seconds=args.stall_seconds,
        restart_after=args.restart_after,
        restart_downtime=args.restart_downtime,
        malformed_every=args.malformed_every,
        away_after=args.away_after,
        away_events=args.away_events,
        json_cdr_dir=args.json_cdr_dir,
        json_cdr_prefix_a_leg=not args.json_cdr_no_prefix,
        json_cdr_delay=args.json_cdr_delay,
        json_cdr_truncate_every=args.json_cdr_truncate_every,
    )
    try:
        fake.start()
    except OSError as exc:
        print(
            "eslcdr fakefs: cannot listen on %s:%s: %s" % (args.host, args.port, exc),
            file=sys.stderr,
        )
        return 1
    what = (
        "replaying %d event(s)" % len(source)
        if isinstance(source, ReplaySource)
        else ("%s generated call(s)" % (args.calls or "endless"))
    )
    # Never the password itself: where it is set.
    password = "--password's default, see --help" if args.password == DEFAULT_PASSWORD else "as set by --password"
    print("FreeSWITCH stand-in on %s:%d (ESL password %s), %s" % (args.host, fake.port, password, what), flush=True)
    stop = GeventEvent()
    handlers = [
        gevent.signal_handler(signal.SIGTERM, stop.set),
        gevent.signal_handler(signal.SIGINT, stop.set),
    ]
    try:
        while not stop.wait(timeout=0.5):
            if args.exit_when_done and fake.done() and fake.position:
                break
    except KeyboardInterrupt:
        pass
    finally:
        for handler in handlers:
            handler.cancel()
        fake.stop()
    return 1 if fake.error else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="eslcdr fakefs", description="FreeSWITCH Event Socket stand-in"
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
