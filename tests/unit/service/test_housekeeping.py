"""The daemon's housekeeping wakes for work, not every second: legs a resync
marked are looked at every second until written off; the tracker's memory of
finished calls is trimmed on the event path."""

from __future__ import annotations

import gevent

from eslcdr.config import from_mapping
from eslcdr.service import daemon as daemon_module
from eslcdr.ingest.legs import TRIM_EVERY
from eslcdr.service.daemon import Daemon, Pipeline
from eslcdr.service.notify import Notifier


def config(tmp_path):
    return from_mapping({
        "esl": {"host": "127.0.0.1", "port": "1", "reconnect_max_delay": "30"},
        "cdr": {"node_name": "fs1"},
        "store": {"path": str(tmp_path / "c.db")},
        "api": {"tokens_file": str(tmp_path / "tokens")},
    })


def wait_for(predicate, timeout: float = 15.0) -> bool:
    with gevent.Timeout(timeout, False):
        while not predicate():
            gevent.sleep(0.05)
    return predicate()


def test_an_idle_daemon_writes_off_only_after_a_resync(tmp_path, monkeypatch):
    looks = []
    write_off_lost = Pipeline.write_off_lost
    monkeypatch.setattr(Pipeline, "write_off_lost", lambda self: (looks.append(1), write_off_lost(self))[1])
    monkeypatch.setattr(daemon_module, "RESYNC_GRACE", 0.3)
    (tmp_path / "tokens").write_text("")
    daemon = Daemon(config(tmp_path), notifier=Notifier(None))
    daemon.start()
    try:
        gevent.sleep(2.5)
        # Nothing marked: no look every second (the sweep is 30 s away).
        assert looks == []
        pipeline = daemon.pipelines["fs1"]
        pipeline.on_event({"Event-Name": "CHANNEL_CREATE", "Unique-ID": "gone-leg", "Channel-Name": "sofia/a/1"})
        # FreeSWITCH, reconnected, no longer lists the leg: the resync marks
        # it and wakes the housekeeping, which writes it off after the grace.
        daemon.nodes["fs1"]._on_resync([])
        assert wait_for(lambda: pipeline.cdrs == 1), looks
        assert pipeline.tracker.suspected == 0
        assert len(looks) >= 1
        # Nothing marked any more: the looks stop.
        seen = len(looks)
        gevent.sleep(2.5)
        assert len(looks) <= seen + 1
    finally:
        daemon.shutdown()


class Writer:
    def submit(self, record: dict) -> bool:
        return True

    def merge_interactions(self, merges) -> None:
        pass


def test_finished_calls_are_trimmed_on_the_event_path(tmp_path):
    cfg = config(tmp_path)
    pipeline = Pipeline(cfg.nodes[0], cfg, Writer())
    pipeline.tracker._max_remembered = 10
    for n in range(3 * TRIM_EVERY):
        call_id = "leg-%05d" % n
        pipeline.on_event({"Event-Name": "CHANNEL_CREATE", "Unique-ID": call_id, "Channel-Name": "sofia/a/1"})
        pipeline.on_event({"Event-Name": "CHANNEL_HANGUP_COMPLETE", "Unique-ID": call_id, "Channel-Name": "sofia/a/1"})
    # No housekeeping ran: the event path kept the memory of finished calls
    # within its cap and one trimming interval.
    assert len(pipeline.tracker._finished) <= 10 + TRIM_EVERY


def test_an_interaction_id_refused_from_an_invite_is_logged_once_per_leg(tmp_path):
    # The tracker refuses it (tests/unit/ingest/test_interactions.py); the
    # pipeline says so, once a leg, and what the CDR carries is derived.
    from structlog.testing import capture_logs

    cfg = config(tmp_path)
    records: list[dict] = []
    writer = Writer()
    writer.submit = lambda record: records.append(record) or True
    pipeline = Pipeline(cfg.nodes[0], cfg, writer)
    forged = {"Unique-ID": "leg-1", "Caller-Channel-Created-Time": "1765000000000000",
              "variable_sip_h_X-Call-Interaction-ID": "00000000001-0"}
    with capture_logs() as logs:
        for name in ("CHANNEL_CREATE", "CHANNEL_ANSWER", "CHANNEL_HANGUP_COMPLETE"):
            pipeline.on_event(dict(forged, **{"Event-Name": name}))
    refused = [e for e in logs if e["event"] == "interaction_id_refused"]
    assert [(e["call_id"], e["variable"], e["value"], e["reason"], e["log_level"]) for e in refused] == [
        ("leg-1", "sip_h_X-Call-Interaction-ID", "00000000001-0", "time", "warning")]
    assert [r["interaction_id"] for r in records] != ["00000000001-0"] and len(records) == 1
