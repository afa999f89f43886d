"""Supervised greenlets: a long-lived task that crashes is logged and
restarted after a capped, jittered backoff, until its owner stops.

Both long-running processes (``eslcdr run`` and ``eslcdr collect``) run
every long-lived task through here, so no task dies silently.
"""

from __future__ import annotations

from typing import Callable

import gevent
import gevent.event
import structlog

from .backoff import backoff_delay

log = structlog.get_logger("eslcdr.supervise")


def spawn_supervised(name: str, target: Callable[[], None], stop: gevent.event.Event) -> gevent.Greenlet:
    """Run ``target`` in a greenlet named ``name``; when it raises, log the
    crash and run it again after a backoff, until ``stop`` is set.  A target
    that returns is done."""

    def supervised() -> None:
        attempt = 0
        while not stop.is_set():
            try:
                target()
                return
            except gevent.GreenletExit:
                raise
            except Exception:  # noqa: BLE001 -- supervisor boundary: log, restart
                attempt += 1
                log.exception("greenlet_crashed", greenlet=name, restart=attempt)
                stop.wait(timeout=backoff_delay(attempt, base=0.5, cap=30.0))

    greenlet = gevent.spawn(supervised)
    greenlet.name = name
    return greenlet
