"""Supervised greenlets: a crash is logged and the task restarted; stop ends it.
Blocking work in the thread pool: declared errors come back to the caller."""

from __future__ import annotations

import os
import threading

import gevent
import gevent.event
import pytest
import structlog.testing

from eslcdr.service import backfill
from eslcdr.supervise import in_thread, spawn_in_thread, spawn_supervised


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


def test_a_crash_of_a_task_given_redact_is_logged_without_the_secret_in_its_text():
    # The collector's greenlets: a libpq message may name a piece of the DSN's password.
    stop = gevent.event.Event()
    runs = []
    secret = "Sup3r" + "Secret"  # (the stack shows source lines: none may spell it)
    message = 'could not translate host name "%s@db" to address' % secret

    def task():
        runs.append(1)
        if len(runs) < 2:
            raise OSError(message)

    with structlog.testing.capture_logs() as logs:
        greenlet = spawn_supervised("join", task, stop, redact=lambda text: text.replace(secret, "[redacted]"))
        greenlet.join(timeout=10)
    assert greenlet.dead and len(runs) == 2  # restarted, as without redact
    [crash] = [e for e in logs if e["event"] == "greenlet_crashed"]
    assert crash["error"] == 'OSError: could not translate host name "[redacted]@db" to address'
    assert "in task" in crash["frames"] and "exc_info" not in crash  # the stack, not the raw traceback
    assert secret not in repr(crash)


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


def test_in_thread_runs_the_work_in_a_pool_thread_and_returns_its_value():
    def work(a, b):
        return a + b, threading.get_ident()

    value, ident = in_thread(work, 2, 3, errors=(OSError,))
    assert value == 5 and ident != threading.get_ident()
    job = spawn_in_thread(work, 4, 5, errors=(OSError,))
    assert job.get()[0] == 9 and job.ready()


def test_a_declared_error_is_raised_in_the_caller_and_gevent_prints_no_traceback(capfd):
    def fails():
        raise FileNotFoundError("gone")

    with pytest.raises(FileNotFoundError, match="gone"):
        in_thread(fails, errors=(OSError,))
    with pytest.raises(FileNotFoundError, match="gone"):
        spawn_in_thread(fails, errors=(OSError,)).get()
    assert "Traceback" not in capfd.readouterr().err


def test_an_undeclared_error_still_reaches_the_caller():
    def fails():
        raise KeyError("bug")

    with pytest.raises(KeyError):
        in_thread(fails, errors=(OSError,))


def test_backfill_thread_calls_raise_their_read_errors_without_a_trace(capfd, tmp_path):
    # backfill handles OSError / sqlite3.Error from its folder and database
    # reads itself (a log line, a retry): gevent must not also print a trace.
    with pytest.raises(FileNotFoundError):
        in_thread(os.stat, str(tmp_path / "missing"), errors=backfill.READ_ERRORS)
    assert "Traceback" not in capfd.readouterr().err
