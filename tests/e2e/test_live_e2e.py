"""The live regime: CDRs trickling in as a media server sends them (the
stand-in paced in real time) into a real ``eslcdr run``.  They are committed
a window at a time -- a few transactions a second, not one per leg -- and
none waits longer than the window: the last legs, with nothing after them,
are committed on their own."""

from __future__ import annotations

import os
import time
from datetime import datetime

import gevent

from eslcdr.fakefs import FakeFreeSWITCH, GeneratedSource, StaticSource, call_template, template_documents

from tests.conftest import capture_events
from tests.harness import DaemonProcess, db_rows, write_config

FLUSH_INTERVAL = 0.2  # the default
CALLS, CPS, SEED = 60, 20.0, 5


def short_calls() -> list[dict]:
    """The call shapes that end within seconds: answered ones without their
    talk time (max_talk=0) and those never ringing; the fax call (34 s) and
    the ringing ones (up to 10 s more) are left out."""
    docs = []
    for doc in template_documents():
        template = call_template(doc)
        if template.pivot is None or (template.answered and template.name != "s6_fax"):
            docs.append(doc)
    return docs


def source() -> GeneratedSource:
    return GeneratedSource(calls=CALLS, cps=CPS, seed=SEED, templates=short_calls(), max_talk=0)


def legs_of_stream() -> set[str]:
    """The Unique-IDs of the stream's legs (the same for the same seed)."""
    stream = source()
    legs = set()
    for emission in stream:
        if emission.template.event_id == "CHANNEL_HANGUP_COMPLETE":
            emission.core, emission.host = stream.core_uuid, stream.hostname
            legs.add(emission.event()["Unique-ID"])
    return legs


def test_a_trickle_is_committed_a_window_at_a_time_and_the_last_legs_alone(tmp_path):
    legs = legs_of_stream()
    fake = FakeFreeSWITCH(events=source())
    fake.start()
    ini = write_config(tmp_path, fake.port)
    ini.write_text(ini.read_text().replace("flush_interval = 0.05", "flush_interval = %s" % FLUSH_INTERVAL))
    daemon = DaemonProcess(ini, tmp_path / "daemon.log")
    db = tmp_path / "cdrs.db"
    try:
        # The calls take ~3 s to start and ~5 s to end, in real time.
        assert fake.wait_done(timeout=60)
        # Nothing follows the last hangups: they are committed all the same,
        # within the window (flush_interval), not when more rows come.
        deadline = time.monotonic() + 10 * FLUSH_INTERVAL + 1.0
        while len(db_rows(db)) < len(legs) and time.monotonic() < deadline:
            gevent.sleep(0.02)
        rows = db_rows(db)
    finally:
        code = daemon.stop()
        fake.stop()
    assert code == 0
    assert {r["call_id"] for r in rows} == legs
    batches = [e for e in daemon.log_events() if e.get("event") == "batch_written" and e["rows"]]
    assert sum(b["rows"] for b in batches) == len(legs)
    # A window at a time: a transaction starts no sooner than flush_interval
    # after the one before (its log line comes ``ms`` after it started).
    # Before, each leg (or the legs of one hangup) had its own, ms apart.
    starts = [datetime.fromisoformat(b["timestamp"]).timestamp() - b["ms"] / 1000 for b in batches]
    gaps = [later - earlier for earlier, later in zip(starts, starts[1:])]
    assert len(batches) > 5 and min(gaps) >= 0.9 * FLUSH_INTERVAL, [round(g, 3) for g in gaps]
    # ...and no record waited for its transaction much longer than that.
    assert max(b["waited_ms"] for b in batches) <= 1000 * (FLUSH_INTERVAL + 0.5)


# docs/architecture.md: a hangup is queryable within 1 s (p99) at every rate.
LATENCY_BOUND = 1.0
SLOW_CALLS, SLOW_CPS, SLOW_SEED = 3, 0.2, 11  # one call every 5 s


class TimedFreeSWITCH(FakeFreeSWITCH):
    """Notes when each HANGUP_COMPLETE leaves the stand-in (monotonic)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.hangups: dict[str, float] = {}

    def _emit(self, emission) -> None:
        super()._emit(emission)
        if emission.template.event_id == "CHANNEL_HANGUP_COMPLETE":
            self.hangups[emission.event()["Unique-ID"]] = time.monotonic()


def test_at_one_call_every_5_s_each_cdr_is_visible_within_the_latency_bound(tmp_path):
    fake = TimedFreeSWITCH(events=GeneratedSource(
        calls=SLOW_CALLS, cps=SLOW_CPS, seed=SLOW_SEED, templates=short_calls(), max_talk=0))
    fake.start()
    ini = write_config(tmp_path, fake.port)
    ini.write_text(ini.read_text().replace("flush_interval = 0.05", "flush_interval = %s" % FLUSH_INTERVAL))
    daemon = DaemonProcess(ini, tmp_path / "daemon.log")
    db = tmp_path / "cdrs.db"
    visible: dict[str, float] = {}
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (fake.done() and fake.hangups and set(fake.hangups) <= set(visible)):
            for row in db_rows(db, "SELECT call_id FROM cdrs"):
                visible.setdefault(row["call_id"], time.monotonic())
            gevent.sleep(0.01)
    finally:
        code = daemon.stop()
        fake.stop()
    assert code == 0
    assert len(fake.hangups) >= SLOW_CALLS and set(fake.hangups) == set(visible)
    latencies = {call_id: visible[call_id] - sent for call_id, sent in fake.hangups.items()}
    assert max(latencies.values()) < LATENCY_BOUND, latencies
    # At this rate the reader lets events gather longer than the writer's
    # window: the writer commits when the reader pauses, in the same wake-up,
    # rather than waiting out flush_interval on a timer of its own (before:
    # every batch waited the whole window, ~200 ms).
    batches = [e for e in daemon.log_events() if e.get("event") == "batch_written" and e["rows"]]
    assert batches and max(b["waited_ms"] for b in batches) < 1000 * FLUSH_INTERVAL / 2, batches


def test_the_writer_keeps_its_thread_between_transactions_seconds_apart(tmp_path):
    # gevent lets an idle pool thread go after 5 s: a trickle's transactions,
    # seconds apart, each started a thread of its own (the tail of long calls).
    events = capture_events("S1_json.esl")
    hangup = next(e for e in events if e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE")
    late_leg = "00000000-0000-4000-8000-00000000abcd"

    def stream():
        yield from events
        gevent.sleep(6.5)  # past gevent's idle timeout, 5 s
        yield dict(hangup, **{"Unique-ID": late_leg})

    fake = FakeFreeSWITCH(events=StaticSource(stream()), hold=True)
    fake.start()
    daemon = DaemonProcess(write_config(tmp_path, fake.port), tmp_path / "daemon.log")
    db = tmp_path / "cdrs.db"
    tasks = "/proc/%d/task" % daemon.proc.pid
    try:
        deadline = time.monotonic() + 30
        while not db_rows(db) and time.monotonic() < deadline:
            gevent.sleep(0.05)
        first = set(os.listdir(tasks))
        while late_leg not in {r["call_id"] for r in db_rows(db)} and time.monotonic() < deadline:
            gevent.sleep(0.05)
        last = set(os.listdir(tasks))
        rows = {r["call_id"] for r in db_rows(db)}
    finally:
        code = daemon.stop()
        fake.stop()
    assert code == 0
    assert late_leg in rows
    # The late leg was committed by a thread that was there already.
    assert last <= first, (first, last)
