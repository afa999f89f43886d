"""Supervised greenlets, and blocking work run in gevent's thread pool.

A long-lived task that crashes is logged and restarted after a capped,
jittered backoff, until its owner stops.  Both long-running processes
(``eslcdr run`` and ``eslcdr collect``) run every long-lived task through
here, so no task dies silently.

Blocking calls (SQLite, the file system) run in the hub's thread pool
through ``in_thread`` / ``spawn_in_thread`` (whose threads a long-running
process keeps, ``keep_pool_threads``), each naming the errors its
caller handles: those travel back as values and are raised in the calling
greenlet.  Raised in the pool thread, gevent would print each one's
traceback raw to stderr (a multi-line trace in the journal at each retry
while a disk is full), outside the structured log.  Any other exception is
a bug: gevent prints it, and it is raised in the caller too.
"""

from __future__ import annotations

import traceback
from typing import Any, Callable, Generic, TypeVar

import gevent
import gevent.event
import structlog

from .backoff import backoff_delay

log = structlog.get_logger(__name__)

T = TypeVar("T")

# A greenlet woken by what it waits for (an event set with its work) still
# looks this often: a timeout on every wait, and an idle daemon on a media
# server is not woken for nothing (each wake-up costs CPU there).
IDLE_WAKE = 30.0
MAX_FRAMES_CHARS = 4000  # of a stack in a log line (``frames``): its innermost calls
Errors = tuple[type[BaseException], ...]


def frames(tb: Any) -> str:
    """The stack of a traceback without the exception's message (which may hold a
    secret), for a log line: its last MAX_FRAMES_CHARS characters."""
    return "".join(traceback.format_tb(tb))[-MAX_FRAMES_CHARS:]


def spawn_supervised(name: str, target: Callable[[], None], stop: gevent.event.Event,
                     redact: Callable[[str], str] | None = None) -> gevent.Greenlet:
    """Run ``target`` in a greenlet named ``name``; when it raises, log the
    crash and run it again after a backoff, until ``stop`` is set.  A target
    that returns is done.  With ``redact`` (the collector's: its DSN's password,
    its nodes' tokens) the crash line holds the exception's redacted text and
    its ``frames``, not the raw traceback."""

    def supervised() -> None:
        attempt = 0
        while not stop.is_set():
            try:
                target()
                return
            except gevent.GreenletExit:
                raise
            except Exception as exc:  # noqa: BLE001 -- supervisor boundary: log, restart
                attempt += 1
                if redact is None:
                    log.exception("greenlet_crashed", greenlet=name, restart=attempt)
                else:
                    log.error("greenlet_crashed", greenlet=name, restart=attempt,
                              error=redact("%s: %s" % (type(exc).__name__, exc)), frames=frames(exc.__traceback__))
                stop.wait(timeout=backoff_delay(attempt, base=0.5, cap=30.0))

    greenlet = gevent.spawn(supervised)
    greenlet.name = name
    return greenlet


def _guarded(work: Callable[..., T], args: tuple, errors: Errors) -> Callable[[], tuple[Any, BaseException | None]]:
    def guarded() -> tuple[Any, BaseException | None]:
        try:
            return work(*args), None
        except errors as exc:
            return None, exc

    return guarded


def keep_pool_threads() -> None:
    """Keep the hub's pool threads for the life of the process: gevent lets
    one go after 5 s idle (``threadpool_idle_task_timeout``), and a trickle's
    transactions, seconds apart, then each started a thread of their own (a
    stack mapped, a thread state, cold caches).  Read once, when the pool is
    made: call it before the first ``in_thread``.  (gevent takes no -1, "for
    ever", there: a day idle.)"""
    gevent.config.threadpool_idle_task_timeout = 86400.0


def in_thread(work: Callable[..., T], *args: Any, errors: Errors) -> T:
    """``work(*args)`` run in the hub's thread pool; the calling greenlet
    waits for it (the hub keeps running).  ``errors`` (the ones the caller
    handles) are raised here, untraced by gevent."""
    value, error = gevent.get_hub().threadpool.apply(_guarded(work, args, errors))
    if error is not None:
        raise error
    return value


class ThreadJob(Generic[T]):
    """A call running in the thread pool (``spawn_in_thread``)."""

    def __init__(self, result: Any) -> None:
        self._result = result

    def get(self) -> T:
        """Wait (cooperatively) for the call: its value, or its error raised."""
        value, error = self._result.get()
        if error is not None:
            raise error
        return value

    def ready(self) -> bool:
        return self._result.ready()


def spawn_in_thread(work: Callable[..., T], *args: Any, errors: Errors) -> ThreadJob[T]:
    """Start ``work(*args)`` in the hub's thread pool without waiting;
    ``get()`` on the job waits, and raises ``errors`` as ``in_thread`` does."""
    return ThreadJob(gevent.get_hub().threadpool.spawn(_guarded(work, args, errors)))
