"""The F set (tests/data/flows/): five real call flows -- blind and attended
transfer, SIP REFER, a ring group, call pickup -- recorded twice (plain and
json subscription), with each leg's mod_json_cdr file.

Every leg is checked against tests/data/flows/expected.json, derived from
the raw captures by derive_expected.py (no eslcdr code), on each path a leg
takes into the database: the tracker and builder, the importer, a replay
over TCP into a real ``eslcdr run``, and that daemon's backfill from the
json_cdr files.
Each flow's legs -- the consult call, the transfer targets and the
interceptor included -- must share one interaction id, five flows five ids.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest

from eslcdr import config
from eslcdr.service import importer
from eslcdr.fakefs import FakeFreeSWITCH
from eslcdr.ingest.legs import GREGORIAN_OFFSET, LegTracker

from tests.conftest import DATA
from tests.harness import DaemonProcess, settle, wait_rows, write_config
from tests.e2e.test_backfill_e2e import NOT_IN_FILES, backfill_config, groups
from tests.unit.ingest.test_cdr import run_capture
from tests.e2e.test_e2e_ingest import replay

FLOWS = DATA / "flows"
ORACLE: dict[str, dict[str, dict]] = json.loads((FLOWS / "expected.json").read_text())["runs"]
RUNS = sorted(ORACLE)
FLOW_NAMES = ("attended", "blind", "group", "pickup", "refer")
LABELS = {"flow", "role"}  # the oracle's own labels, not CDR fields
FIELDS = frozenset({
    "call_id", "channel_name", "call_direction", "caller_id_name", "caller_id_number", "callee_id_name",
    "callee_id_number", "duration_seconds", "billing_seconds", "ringing_seconds", "hangup_cause", "hangup_code",
    "disposition", "other_leg_call_id", "created_us", "answered_us", "hangup_us", "timestamp", "sip_call_id"})
CFG = config.from_mapping({"cdr": {"node_name": "fs1"}})
# What differs between the two recordings of the same flows: ids, times,
# media negotiated per call, and the caller number the driver gave each
# flow (normalised below, not skipped).
PER_RUN = {"call_id", "id", "links", "interaction_id", "interaction_created_us", "created_us",
           "answered_us", "hangup_us", "timestamp", "local_sdp", "remote_sdp", "remote_media_port", "pdd_ms",
           "sip_call_id"}


def flow_starts(run: str) -> dict[str, int]:
    """Each flow's start: the creation (µs) of its earliest leg."""
    starts: dict[str, int] = {}
    for leg in ORACLE[run].values():
        starts[leg["flow"]] = min(starts.get(leg["flow"], leg["created_us"]), leg["created_us"])
    return starts


def check_legs(rows, run: str, skip: frozenset | set = frozenset(), exact_start: bool = True) -> None:
    """One row per leg, every oracle field; one interaction per flow, five
    flows five ids, each placed at its flow's start."""
    by_id = {r["call_id"]: r for r in rows}
    assert len(by_id) == len(rows)
    assert all(set(leg) == FIELDS | LABELS for leg in ORACLE[run].values())
    assert set(by_id) == set(ORACLE[run])
    wrong = {}
    for call_id, want in ORACLE[run].items():
        for field in FIELDS - set(skip):
            if by_id[call_id][field] != want[field]:
                wrong[want["flow"], want["role"], call_id, field] = (by_id[call_id][field], want[field])
    assert wrong == {}
    assert {"BLIND_TRANSFER", "LOSE_RACE", "PICKED_OFF", "ORIGINATOR_CANCEL"} <= {r["hangup_cause"] for r in rows}
    ids: dict[str, set] = {}
    for call_id, want in ORACLE[run].items():
        ids.setdefault(want["flow"], set()).add(by_id[call_id]["interaction_id"])
    assert {flow: len(found) for flow, found in ids.items()} == dict.fromkeys(FLOW_NAMES, 1)
    assert len(set.union(*ids.values())) == 5
    # The interaction list places a call by the time prefix of its
    # (derived, Kazoo-shaped) id: the second its first leg was created.
    starts = flow_starts(run)
    assert {flow: next(iter(found))[:12] for flow, found in ids.items()} == {
        flow: "%d-" % (start // 10**6 + GREGORIAN_OFFSET) for flow, start in starts.items()}
    if exact_start:
        assert {c: r["interaction_created_us"] for c, r in by_id.items()} == {
            c: starts[want["flow"]] for c, want in ORACLE[run].items()}


def live(events_of, run: str) -> dict[str, dict]:
    records, _ = run_capture(events_of("flows/%s.esl" % run))
    return records


def imported(run: str) -> dict[str, dict]:
    """The run's files through the importer, handed over newest leg first (a
    folder's order is not the calls'): a transfer target before its caller."""
    events, failed = importer.load_events([FLOWS / run])
    assert failed == 0
    events.sort(key=lambda e: -int(e["Caller-Channel-Created-Time"]))
    return {r["call_id"]: r for r in importer.build_records(events, CFG, LegTracker(CFG.cdr.interaction_id_vars))}


@pytest.mark.parametrize("run", RUNS)
def test_every_leg_of_every_flow(events_of, run):
    check_legs(live(events_of, run).values(), run)


@pytest.mark.parametrize("run", RUNS)
def test_json_cdr_files_give_the_fields_of_the_live_events(events_of, run):
    from_files, heard = imported(run), live(events_of, run)
    check_legs(from_files.values(), run, skip=NOT_IN_FILES)
    # Beyond the oracle: every field of the record, but what the files do
    # not hold; the interaction ids may differ (derived from another first
    # leg), the groups may not.
    assert set(from_files) == set(heard)
    for call_id, record in heard.items():
        differing = {f for f, v in record.items() if from_files[call_id][f] != v}
        assert differing <= NOT_IN_FILES | {"interaction_id"}, (call_id, differing)
    assert groups(from_files) == groups(heard)


def per_flow(run: str, records: dict[str, dict]) -> dict[str, list[str]]:
    """Each flow's legs without what differs between runs: ids become the
    role of the leg they name, the flow's own caller number a placeholder."""
    oracle = ORACLE[run]
    numbers = {leg["flow"]: leg["caller_id_number"] for leg in oracle.values() if leg["role"].endswith("(X)")}
    out: dict[str, list[str]] = {}
    for call_id, record in records.items():
        flow = oracle[call_id]["flow"]
        shape = {f: ("<flow number>" if v == numbers[flow] else v) for f, v in record.items() if f not in PER_RUN}
        partner = record["other_leg_call_id"]
        shape["other_leg_call_id"] = oracle[partner]["role"] if partner else None
        shape["role"] = oracle[call_id]["role"]
        out.setdefault(flow, []).append(json.dumps(shape, sort_keys=True))
    return {flow: sorted(shapes) for flow, shapes in out.items()}


def test_plain_and_json_runs_agree_flow_by_flow(events_of):
    plain, json_run = per_flow("F_plain", live(events_of, "F_plain")), per_flow("F_json", live(events_of, "F_json"))
    assert tuple(sorted(plain)) == FLOW_NAMES
    for flow in plain:
        assert plain[flow] == json_run[flow], flow
    # The files of the two runs agree the same way.
    assert per_flow("F_plain", imported("F_plain")) == per_flow("F_json", imported("F_json"))


# ----------------------------------------------------------- real daemon


@pytest.mark.parametrize("run", RUNS)
def test_replayed_over_tcp_into_the_daemon(tmp_path, run):
    # Served in the other format: the stand-in re-encodes as FreeSWITCH would.
    fmt = "plain" if run.endswith("_json") else "json"
    rows, _ = replay(tmp_path, ["flows/%s.esl" % run], fmt=fmt, expected_rows=len(ORACLE[run]))
    check_legs(rows, run)


@pytest.mark.subprocess
@pytest.mark.parametrize("run", RUNS)
def test_backfilled_by_the_daemon_from_the_json_cdr_files(tmp_path, run):
    folder = tmp_path / "json_cdr"
    shutil.copytree(FLOWS / run, folder)
    written = time.time() - 60  # as FreeSWITCH left them, a minute ago
    for path in folder.iterdir():
        os.utime(path, (written, written))
    fake = FakeFreeSWITCH().start()  # up, no call: every leg comes from its file
    daemon = DaemonProcess(write_config(tmp_path, fake.port, extra=backfill_config(folder)), tmp_path / "daemon.log")
    try:
        wait_rows(tmp_path / "cdrs.db", len(ORACLE[run]))
        rows = settle(tmp_path / "cdrs.db", 1.0)
    finally:
        code = daemon.stop()
        fake.stop()
    assert code == 0, (tmp_path / "daemon.log").read_text()[-3000:]
    # A leg first seen at its hangup carries the start known when its row
    # was written (schema: interaction_created_us); placement is checked.
    check_legs(rows, run, skip=NOT_IN_FILES, exact_start=False)
    scans = [e for e in daemon.log_events() if e.get("event") == "backfill_scan"]
    assert sum(s["backfilled"] for s in scans) == len(ORACLE[run])
