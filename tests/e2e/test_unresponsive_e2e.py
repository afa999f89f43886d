"""A FreeSWITCH that hangs with its socket open (the stand-in frozen as by
SIGSTOP) under a real ``eslcdr run``: after IDLE_CHECK seconds of silence and
an unanswered ping the node is declared dead -- ``/health`` degraded and
counting it, ``/metrics`` too, one log line -- and once FreeSWITCH answers
again the daemon is back and stores the CDRs of the calls that end after."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from eslcdr.esl.liveness import IDLE_CHECK
from eslcdr.fakefs import FakeFreeSWITCH, StaticSource

from tests.conftest import capture_events
from tests.e2e.test_channels_e2e import Pushed, wait_for
from tests.harness import WAIT, DaemonProcess, db_rows, write_config

COMMAND_TIMEOUT = 3  # write_config's


def health(port: int) -> dict:
    """``/health``'s body, 200 or 503."""
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/health" % port, timeout=5) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())


def metric(port: int, name: str) -> str:
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as response:
        lines = response.read().decode().splitlines()
    return next(line.split(" ")[-1] for line in lines if line.startswith(name + "{"))


def test_a_hung_freeswitch_is_declared_dead_and_the_calls_after_it_came_back_are_stored(tmp_path):
    call = capture_events("S1_json.esl")  # four legs: created and answered before the hang, hung up after
    later = capture_events("S3_json.esl")  # a call entirely after the reconnect
    legs = {e["Unique-ID"] for e in call + later}
    source = Pushed()
    fake = FakeFreeSWITCH(events=StaticSource(source), hold=False)
    fake.start()
    daemon = DaemonProcess(write_config(tmp_path, fake.port), tmp_path / "daemon.log")
    try:
        port = daemon.api_port()
        wait_for(lambda: health(port)["status"] == "ok", "connected")
        source.push(*call[:10])
        wait_for(lambda: health(port)["nodes"]["fs-test"]["live_legs"] == 4, "four live legs")

        fake.freeze()
        dead = wait_for(lambda: health(port)["nodes"]["fs-test"]["unresponsive"] == 1 and health(port),
                        "the hung FreeSWITCH declared dead", timeout=IDLE_CHECK + COMMAND_TIMEOUT + WAIT)
        assert dead["status"] == "degraded"
        assert dead["nodes"]["fs-test"]["state"] != "connected"
        assert dead["nodes"]["fs-test"]["reconnects"] == 1
        assert metric(port, "eslcdr_esl_unresponsive_total") == "1.0"
        assert metric(port, "eslcdr_connected") == "0.0"

        fake.thaw()
        wait_for(lambda: health(port)["status"] == "ok", "the reconnect once FreeSWITCH answers again")
        source.push(*call[10:], *later)
        rows = wait_for(lambda: legs <= {r["call_id"] for r in db_rows(tmp_path / "cdrs.db")}
                        and db_rows(tmp_path / "cdrs.db"), "every leg's CDR")
    finally:
        source.push(None)
        code = daemon.stop()
        fake.stop()
    assert code == 0
    assert len(rows) == len(legs)
    # Each leg's own hangup was heard: none stored as "hangup not seen".
    assert all(r["disposition"] != "eslcdr_hangup_not_seen" and r["hangup_cause"] for r in rows)
    events = [line["event"] for line in daemon.log_events()]
    assert events.count("esl_unresponsive") == 1
    assert "esl_disconnected" not in events
    assert events.count("esl_connected") == 2  # at the start and after the hang, no other reconnect
