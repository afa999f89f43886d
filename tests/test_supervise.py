"""Supervised greenlets: a crash is logged and the task restarted; stop ends it."""

from __future__ import annotations

import gevent
import gevent.event
import structlog.testing

from eslcdr.supervise import spawn_supervised


def test_a_crashing_task_is_restarted_until_it_returns():
    stop = gevent.event.Event()
    runs = []

    def task():
        runs.append(1)
        if len(runs) < 3:
            raise ValueError("boom")

    with structlog.testing.capture_logs() as logs:
        greenlet = spawn_supervised("task", task, stop)
        greenlet.join(timeout=10)
    assert greenlet.dead and len(runs) == 3
    crashes = [e for e in logs if e["event"] == "greenlet_crashed"]
    assert [e["restart"] for e in crashes] == [1, 2] and all(e["greenlet"] == "task" for e in crashes)


def test_stop_ends_the_restarts():
    stop = gevent.event.Event()
    runs = []

    def task():
        runs.append(1)
        stop.set()
        raise RuntimeError("always")

    greenlet = spawn_supervised("doomed", task, stop)
    greenlet.join(timeout=10)
    assert greenlet.dead and len(runs) == 1
