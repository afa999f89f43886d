"""The live regime: CDRs trickling in as a media server sends them (the
stand-in paced in real time) into a real ``eslcdr run``.  They are committed
a window at a time -- a few transactions a second, not one per leg -- and
none waits longer than the window: the last legs, with nothing after them,
are committed on their own."""

from __future__ import annotations

import time
from datetime import datetime

import gevent

from eslcdr.fakefs import FakeFreeSWITCH, GeneratedSource, call_template, template_documents

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
