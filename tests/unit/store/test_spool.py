"""Nothing refused (DESIGN §3.5 Spool): what SQLite cannot take goes to the
spool file and is replayed into SQLite exactly once."""

from __future__ import annotations

import pytest
import json
import os
import random
import resource
import signal
import sqlite3
import time
import urllib.request

import gevent
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from eslcdr.service.status import WriterStatus
from eslcdr.store import db as store
from eslcdr.fakefs import FakeFreeSWITCH, ReplaySource, StaticSource
from eslcdr.store import spool as spool_module
from eslcdr.store.spool import Merge, Spool
from eslcdr.store.writer import MIN_OVERFLOW, Writer

from tests.conftest import DATA
from tests.harness import DaemonProcess, db_rows, wait_rows, wait_until, write_config
from tests.expected_cdrs import EXPECTED
from tests.unit.store.test_store import record

WAIT = 30.0


def stored(path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute("SELECT call_id FROM cdrs ORDER BY seq")]


def run_writer(writer: Writer) -> list[gevent.Greenlet]:
    return [gevent.spawn(writer.run), gevent.spawn(writer.run_spooler)]


def stop_writer(writer: Writer, greenlets) -> None:
    writer.stop()
    gevent.joinall(greenlets, timeout=10)
    assert all(g.dead for g in greenlets)


def locked(path) -> sqlite3.Connection:
    """Another program holding the database's write lock."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    return other


def fast_failing(path) -> sqlite3.Connection:
    conn = store.connect_writer(path)
    conn.execute("PRAGMA busy_timeout=50")
    return conn


# ----------------------------------------------------------------- the file


def test_a_spool_that_cannot_be_written_is_known_at_start(tmp_path):
    # Before, the file was first opened for writing at the first outage: a
    # spool_path under a file (or a folder the unit does not let it write) was
    # accepted at start, and the CDRs it was there for were lost when SQLite failed.
    (tmp_path / "a-file").write_text("")
    with pytest.raises(OSError):
        Spool(tmp_path / "a-file" / "cdrs.spool")
    spool = Spool(tmp_path / "new" / "cdrs.spool")  # its folder made, as at the first append
    assert spool.path.stat().st_size == 0 and spool.path.stat().st_mode & 0o777 == 0o600
    assert spool.empty and spool.backlog == 0


def test_spool_appends_reads_and_empties_once_replayed(tmp_path):
    spool = Spool(tmp_path / "s.spool")
    assert spool.empty and spool.backlog == 0
    assert spool.append([record(1), dict(record(2), links=("a", "b"))]) == 2
    spool.append([record(3)])
    assert spool.backlog == 3
    records, _, offset = spool.read(2)
    assert [r["call_id"] for r in records] == ["call-000001", "call-000002"]
    assert records[1]["links"] == ["a", "b"] and records[0]["custom_channel_vars"] == {"k": 1}
    assert not spool.truncate_if_replayed()
    spool.committed(offset, 2)
    records, _, offset = spool.read(10)
    assert [r["call_id"] for r in records] == ["call-000003"]
    spool.committed(offset, 1)
    assert spool.empty and spool.truncate_if_replayed()
    assert (tmp_path / "s.spool").stat().st_size == 0 and spool.backlog == 0


def test_a_torn_last_line_is_skipped_with_a_warning(tmp_path):
    path = tmp_path / "s.spool"
    path.write_text(json.dumps(record(1)) + "\n" + json.dumps(record(2))[:25])
    with capture_logs() as logs:
        spool = Spool(path)
    assert [e["event"] for e in logs] == ["spool_torn_line_skipped", "spool_found"]
    assert spool.backlog == 1
    spool.append([record(3)])
    records, _, _ = spool.read(10)
    assert [r["call_id"] for r in records] == ["call-000001", "call-000003"]


def test_an_unreadable_line_in_the_middle_is_logged_and_skipped(tmp_path):
    path = tmp_path / "s.spool"
    path.write_bytes(json.dumps(record(1)).encode() + b"\n{\xff garbage\n" + json.dumps(record(2)).encode() + b"\n")
    spool = Spool(path)
    with capture_logs() as logs:
        records, _, _ = spool.read(10)
    assert [r["call_id"] for r in records] == ["call-000001", "call-000002"]
    assert [e["event"] for e in logs] == ["spool_line_unreadable"]


def test_merges_are_lines_of_their_own_counted_apart_from_records(tmp_path, monkeypatch):
    path = tmp_path / "s.spool"
    spool = Spool(path)
    assert spool.append([record(1), Merge("a", "b"), record(2), Merge("b", "c")]) == 4
    assert (spool.backlog, spool.merges) == (2, 2)
    with open(path, "a") as f:
        f.write('["merge","c","d"]\n["not a merge"]\n["merge","d"')  # a stray array, a torn merge
    # Counted at open whatever the chunks the file is read in (a line may
    # start at a chunk's first byte).
    for chunk in range(1, 40):
        monkeypatch.setattr(spool_module, "READ_CHUNK", chunk)
        reopened = Spool(path)
        assert (reopened.backlog, reopened.merges) == (2, 4), chunk  # the stray array counts as a merge
    with capture_logs() as logs:
        records, merges, offset = reopened.read(10)
    assert [r["call_id"] for r in records] == ["call-000001", "call-000002"]
    assert merges == [("a", "b"), ("b", "c"), ("c", "d")]
    assert [e["event"] for e in logs] == ["spool_line_unreadable"] and logs[0]["line"] == '["not a merge"]\n'
    reopened.committed(offset, len(records), len(merges) + 1)
    assert (reopened.backlog, reopened.merges) == (0, 0) and reopened.truncate_if_replayed()


# --------------------------------------------------------------- the writer


def test_locked_database_overflow_goes_to_the_spool_then_in_once(tmp_path, capfd):
    db = tmp_path / "a.db"
    conn = fast_failing(db)
    spool = Spool(tmp_path / "a.db.spool")
    writer = Writer(conn, batch_size=4, flush_interval=0.01, capacity=5, max_retry_delay=0.05, spool=spool)
    other = locked(db)
    greenlets = run_writer(writer)
    for n in range(40):
        assert writer.submit(record(n))
    # The overflow is on disk; after the first failed write the backlog too.
    assert wait_until(lambda: spool.backlog == 40 and writer.backlog == 0)
    assert writer.refused == 0 and stored(db) == []
    other.execute("ROLLBACK")
    other.close()
    assert wait_until(lambda: len(stored(db)) == 40)
    assert wait_until(lambda: writer.spool_backlog == 0 and (tmp_path / "a.db.spool").stat().st_size == 0)
    stop_writer(writer, greenlets)
    assert sorted(stored(db)) == ["call-%06d" % n for n in range(40)]
    # The failures are log lines, not tracebacks printed by the thread pool.
    assert "Traceback" not in capfd.readouterr().err


def test_full_disk_spools_and_replays_when_space_returns(tmp_path):
    db = tmp_path / "a.db"
    conn = store.connect_writer(db)
    store.insert_records(conn, [record(0)])
    # SQLITE_FULL, exactly as a full disk reports it.
    conn.execute("PRAGMA max_page_count = %d" % conn.execute("PRAGMA page_count").fetchone()[0])
    spool = Spool(tmp_path / "a.db.spool")
    writer = Writer(conn, batch_size=50, flush_interval=0.01, capacity=20, max_retry_delay=0.05, spool=spool)
    greenlets = run_writer(writer)
    for n in range(1, 301):
        assert writer.submit(record(n))
    # What fitted in the last free bytes of the file is written; the rest
    # waits in the spool.
    assert wait_until(lambda: writer.failures > 0 and spool.backlog + len(stored(db)) - 1 == 300)
    assert "full" in writer.last_error and spool.backlog >= 250
    conn.execute("PRAGMA max_page_count = 1073741823")
    assert wait_until(lambda: len(stored(db)) == 301 and writer.spool_backlog == 0)
    stop_writer(writer, greenlets)
    assert sorted(stored(db)) == ["call-%06d" % n for n in range(301)]


def test_spool_unwritable_too_logs_each_record_in_full(tmp_path):
    db = tmp_path / "a.db"
    conn = fast_failing(db)
    spool = Spool(tmp_path / "not-a-dir" / "a.spool")
    # Writable at start (else Spool() raises), unwritable once needed.
    spool.path.unlink()
    spool.path.parent.rmdir()
    (tmp_path / "not-a-dir").write_text("")
    writer = Writer(conn, batch_size=4, flush_interval=0.01, capacity=3, max_retry_delay=0.05, spool=spool)
    other = locked(db)
    with capture_logs() as logs:
        greenlets = run_writer(writer)
        for n in range(8):
            writer.submit(record(n))
        # The spool cannot take them: the overflow is logged, memory kept.
        assert wait_until(lambda: writer.lost == 5)
        other.execute("ROLLBACK")
        # What memory held is still written once SQLite is back.
        assert wait_until(lambda: len(stored(db)) == 3)
        stop_writer(writer, greenlets)
    lost = [e for e in logs if e["event"] == "cdr_lost_spool_unwritable"]
    assert sorted(e["record"]["call_id"] for e in lost) == ["call-%06d" % n for n in range(3, 8)]
    assert lost[0]["record"]["caller_id_name"] == record(3)["caller_id_name"]
    assert all(e["log_level"] == "error" for e in lost)
    assert sorted(stored(db)) == ["call-%06d" % n for n in range(3)]


def test_replay_at_start_is_idempotent_and_follows_merges(tmp_path):
    db = tmp_path / "a.db"
    conn = store.connect_writer(db)
    store.insert_records(conn, [record(1), record(2)])
    path = tmp_path / "a.db.spool"
    # A crash after replaying 1 and 2 but before the truncation: they are
    # in the spool and in SQLite.
    path.write_text("".join(json.dumps(record(n, "old")) + "\n" for n in range(1, 6)))
    spool = Spool(path)
    writer = Writer(conn, batch_size=2, flush_interval=0.01, spool=spool)
    writer.merge_interactions([("old", "new")])
    greenlets = run_writer(writer)
    assert wait_until(lambda: spool.backlog == 0 and path.stat().st_size == 0)
    stop_writer(writer, greenlets)
    # Each leg once (its seq depends on when the merge line lands: a row the
    # merge moves takes a new one); those first stored from the spool moved.
    assert sorted(stored(db)) == ["call-%06d" % n for n in range(1, 6)]
    assert {k: v for k, v in interaction_ids(db).items() if k > "call-000002"} == {
        "call-%06d" % n: "new" for n in range(3, 6)}
    assert writer.duplicates == 2


# ------------------------------------------- interaction merges in an outage


def merge_script(legs: int, seed: int = 7) -> list[tuple]:
    """Legs and merges as the interaction tracker hands them over: a leg
    carries its group's id at the time; a merge moves a group some leg was
    written with into another, whose id stays (a loser id is never seen again)."""
    rng = random.Random(seed)
    groups: list[str] = []
    script: list[tuple] = []
    for n in range(legs):
        if not groups or rng.random() < 0.5:
            groups.append("i-%d" % n)
        script.append(("leg", record(n, rng.choice(groups[-20:]))))
        if len(groups) > 1 and rng.random() < 0.4:
            loser, winner = rng.sample(groups[-20:], 2)
            groups.remove(loser)
            script.append(("merge", loser, winner))
    return script


def play(writer: Writer, script: list[tuple]) -> int:
    """Hand the script to the writer as the ESL readers do; the most merges
    the writer held in memory meanwhile."""
    most = 0
    for step in script:
        if step[0] == "leg":
            assert writer.submit(dict(step[1]))
        else:
            writer.merge_interactions([step[1:]])
        most = max(most, writer.merges_waiting)
    return most


def interaction_ids(path) -> dict[str, str]:
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT call_id, interaction_id FROM cdrs"))


def without_outage(tmp_path, script: list[tuple]) -> dict[str, str]:
    db = tmp_path / "reference.db"
    writer = Writer(store.connect_writer(db), batch_size=50, flush_interval=0.01)
    greenlets = run_writer(writer)
    play(writer, script)
    assert writer.wait_idle(timeout=WAIT)
    stop_writer(writer, greenlets)
    return interaction_ids(db)


def outage(tmp_path, script: list[tuple], bursts: int) -> tuple[Writer, list, sqlite3.Connection, int]:
    """A writer that stored the first tenth of ``script``, then lost SQLite
    (its lock held by another program) while the rest arrived in ``bursts``,
    each waited for until the spool holds it; returns the most merges held
    in memory at any time."""
    db = tmp_path / "a.db"
    spool = Spool(tmp_path / "a.db.spool")
    writer = Writer(fast_failing(db), batch_size=50, flush_interval=0.01, capacity=100, max_retry_delay=0.05,
                    spool=spool)
    greenlets = run_writer(writer)
    before = len(script) // 10
    play(writer, script[:before])
    assert wait_until(lambda: writer.spool_backlog == 0 and writer.wait_idle(1))
    other = locked(db)
    rest = script[before:]
    size = -(-len(rest) // bursts)
    most = legs = 0
    for start in range(0, len(rest), size):
        burst = rest[start : start + size]
        most = max(most, play(writer, burst))
        legs += sum(step[0] == "leg" for step in burst)
        # On disk: every leg of the outage, and the merges (none left in memory).
        assert wait_until(lambda: spool.backlog == legs and writer.backlog == 0,
                          timeout=10)
    assert writer.failures and not writer.lost and not interaction_ids(db).keys() - {
        step[1]["call_id"] for step in script[:before] if step[0] == "leg"}
    return writer, greenlets, other, most


def test_a_merge_line_moves_the_records_replayed_with_it_without_rewriting_their_rows(tmp_path):
    # A merge applied to rows just inserted rewrote each (a delete, an insert
    # and a new seq); the records read before the line take the new id as
    # they are read.
    db = tmp_path / "a.db"
    conn = store.connect_writer(db)
    store.insert_records(conn, [record(0, "a")])
    spool = Spool(tmp_path / "a.db.spool")
    spool.append([record(1, "a"), record(2, "c"), Merge("a", "b"), record(3, "b"), Merge("c", "b")])
    writer = Writer(conn, batch_size=50, flush_interval=0.01, spool=spool)
    greenlets = run_writer(writer)
    assert wait_until(lambda: spool.empty and spool.size == 0)
    stop_writer(writer, greenlets)
    with sqlite3.connect(db) as check:
        stored_rows = check.execute("SELECT seq, call_id, interaction_id FROM cdrs ORDER BY call_id").fetchall()
    # The row stored before moves (a new seq); the replayed ones are written once.
    assert stored_rows == [(5, "call-000000", "b"), (2, "call-000001", "b"), (3, "call-000002", "b"),
                           (4, "call-000003", "b")]


def test_a_long_outage_keeps_merges_on_disk_and_ids_right_once_sqlite_is_back(tmp_path):
    # Before, every merge of the outage stayed in memory (the writer's list
    # and the spool's map) until SQLite took writes again: without bound.
    script = merge_script(3000)
    merges = sum(step[0] == "merge" for step in script)
    expected = without_outage(tmp_path, script)
    writer, greenlets, other, most = outage(tmp_path, script, bursts=30)
    # At most about a burst's merges (~1/30 of them) in memory at any time.
    assert merges > 1000 and most <= merges // 20
    other.execute("ROLLBACK")
    assert wait_until(lambda: writer.spool_backlog == 0 and not writer.merges_waiting and writer.wait_idle(1))
    stop_writer(writer, greenlets)
    assert interaction_ids(tmp_path / "a.db") == expected


def test_a_crash_in_an_outage_loses_no_merge(tmp_path):
    # Before, the merges of the outage were only in memory: after a crash the
    # spool's legs came back with the ids they were built with, and the legs
    # stored before the outage kept theirs.
    script = merge_script(600, seed=11)
    expected = without_outage(tmp_path, script)
    writer, greenlets, other, _ = outage(tmp_path, script, bursts=3)
    gevent.killall(greenlets, timeout=10)  # a crash: nothing drained, nothing flushed
    other.execute("ROLLBACK")
    after = Writer(store.connect_writer(tmp_path / "a.db"), batch_size=50, flush_interval=0.01,
                   spool=Spool(tmp_path / "a.db.spool"))
    greenlets = run_writer(after)
    assert wait_until(lambda: after.spool_backlog == 0 and (tmp_path / "a.db.spool").stat().st_size == 0)
    stop_writer(after, greenlets)
    assert interaction_ids(tmp_path / "a.db") == expected


def test_a_stop_in_an_outage_leaves_the_merges_of_the_next_transaction_in_the_spool(tmp_path):
    # SIGTERM's drain gives up on SQLite after a few attempts and spills what
    # memory held; before, the merges its next transaction was to apply were
    # dropped there, and the rows stored before the outage kept their ids.
    db = tmp_path / "a.db"
    writer = Writer(fast_failing(db), batch_size=50, flush_interval=0.01, max_retry_delay=0.05,
                    spool=Spool(tmp_path / "a.db.spool"))
    greenlets = run_writer(writer)
    for n in range(4):
        assert writer.submit(record(n, "i-%d" % n))
    assert writer.wait_idle(timeout=WAIT)
    other = locked(db)
    writer.merge_interactions([("i-0", "i-1"), ("i-2", "i-3")])
    writer.merge_interactions([("i-1", "i-3")])
    stop_writer(writer, greenlets)
    assert writer.failures and not writer.merges_waiting
    other.execute("ROLLBACK")
    after = Writer(store.connect_writer(db), batch_size=50, flush_interval=0.01, spool=Spool(tmp_path / "a.db.spool"))
    greenlets = run_writer(after)
    assert wait_until(lambda: (tmp_path / "a.db.spool").stat().st_size == 0)
    stop_writer(after, greenlets)
    assert interaction_ids(db) == {"call-%06d" % n: "i-3" for n in range(4)}


def test_without_a_spool_merges_held_in_an_outage_are_capped_and_the_rest_logged(tmp_path):
    # Before, they piled up in memory for as long as SQLite refused writes.
    db = tmp_path / "a.db"
    writer = Writer(fast_failing(db), batch_size=50, flush_interval=0.01, capacity=10, max_retry_delay=0.05)
    greenlets = run_writer(writer)
    assert writer.submit(record(1, "i-0")) and writer.wait_idle(timeout=WAIT)
    other = locked(db)
    with capture_logs() as logs:
        for n in range(1, 1500):
            writer.merge_interactions([("i-%d" % (n - 1), "i-%d" % n)])
        assert wait_until(lambda: writer.failures >= 2)
    assert writer.merges_waiting == MIN_OVERFLOW and writer.merges_lost == 1499 - MIN_OVERFLOW
    lost = [e for e in logs if e["event"] == "interaction_merge_lost"]
    assert len(lost) == writer.merges_lost and lost[0]["old"] == "i-%d" % MIN_OVERFLOW
    assert all(e["log_level"] == "error" for e in lost)
    other.execute("ROLLBACK")
    assert wait_until(lambda: not writer.merges_waiting and writer.wait_idle(1))
    stop_writer(writer, greenlets)
    assert interaction_ids(db) == {"call-000001": "i-%d" % MIN_OVERFLOW}


def test_merges_the_spool_cannot_take_wait_for_sqlite_once_each(tmp_path):
    # SQLite locked and the spool unwritable: the merges that were on their
    # way to the spool come back to memory, each once, for the next transaction.
    db = tmp_path / "a.db"
    spool = Spool(tmp_path / "not-a-dir" / "a.spool")
    writer = Writer(fast_failing(db), batch_size=4, flush_interval=0.01, capacity=3, max_retry_delay=0.05,
                    spool=spool)
    greenlets = run_writer(writer)
    assert writer.submit(record(0, "m-0")) and writer.wait_idle(timeout=WAIT)
    spool.path.unlink()
    spool.path.parent.rmdir()
    (tmp_path / "not-a-dir").write_text("")
    other = locked(db)
    for n in range(1, 4):
        assert writer.submit(record(n, "other"))  # memory is full
    for n in range(30):
        assert writer.submit(record(10 + n, "other"))  # on its way to the spool: lost there
        writer.merge_interactions([("m-%d" % n, "m-%d" % (n + 1))])  # follows it
        assert wait_until(lambda: writer.lost == n + 1)  # (the merges back at the same moment)
    assert writer.merges_waiting == 30 and not writer.merges_lost
    other.execute("ROLLBACK")
    assert wait_until(lambda: not writer.merges_waiting and writer.wait_idle(1))
    stop_writer(writer, greenlets)
    assert interaction_ids(db) == {"call-000000": "m-30", **{"call-%06d" % n: "other" for n in range(1, 4)}}


def test_a_merge_is_in_one_place_and_applied_once(tmp_path):
    # Before, a merge waiting for the next transaction when the spool came
    # into use went to the spool and stayed in memory too: counted twice in
    # merges_waiting (/health), and applied twice (harmlessly).
    db = tmp_path / "a.db"
    spool = Spool(tmp_path / "a.db.spool")
    writer = Writer(store.connect_writer(db), batch_size=50, flush_interval=0.01, capacity=1, spool=spool)
    assert writer.submit(record(0, "a"))
    writer.merge_interactions([("a", "b")])  # for the next transaction
    assert writer.submit(record(1, "c"))  # memory is full: on its way to the spool
    writer.merge_interactions([("c", "d")])  # follows it there, after the one before
    assert writer.merges_waiting == 2
    with capture_logs() as logs:
        greenlets = run_writer(writer)
        assert wait_until(lambda: not writer.merges_waiting and spool.size == 0 and writer.wait_idle(1))
        stop_writer(writer, greenlets)
    assert sum(e.get("merges", 0) for e in logs if e["event"] in ("batch_written", "spool_batch_replayed")) == 2
    assert interaction_ids(db) == {"call-000000": "b", "call-000001": "d"}


def test_a_writer_stuck_with_only_merges_in_the_spool_is_seen_stalled(tmp_path):
    # The merges of an outage leave memory for the spool: the watchdog must
    # still see the writer that cannot store them (store/writer.py stalled_seconds).
    db = tmp_path / "a.db"
    writer = Writer(fast_failing(db), batch_size=50, flush_interval=0.01, max_retry_delay=0.05,
                    spool=Spool(tmp_path / "a.db.spool"))
    greenlets = run_writer(writer)
    assert writer.submit(record(1, "i-1")) and writer.wait_idle(timeout=WAIT)
    other = locked(db)
    writer.merge_interactions([("i-1", "i-2")])
    assert wait_until(lambda: writer.failures and not writer.merges_waiting)
    assert writer.spool_backlog == 0 and writer.backlog == 0
    assert wait_until(lambda: writer.stalled_seconds(time.monotonic()) > 0.5, timeout=10)
    # /health is degraded while the merge waits in the spool, though no CDR does.
    assert writer.spool_merges == 1 and not WriterStatus.of(writer).healthy
    other.execute("ROLLBACK")
    assert wait_until(lambda: writer.stalled_seconds(time.monotonic()) == 0 and interaction_ids(db) == {
        "call-000001": "i-2"})
    assert writer.spool_merges == 0 and WriterStatus.of(writer).healthy
    stop_writer(writer, greenlets)


# Steps of test_merges_in_any_outage_store_the_ids_of_a_run_without_one; MERGE_EXAMPLES=N:
# N random examples (a hunt), else the same 25 each run.
MERGE_EXAMPLES = os.environ.get("MERGE_EXAMPLES")
MERGE_STEP = st.tuples(st.sampled_from(["leg"] * 4 + ["merge"] * 3 + ["fail", "recover", "settle", "switch"]),
                       st.integers(0, 1 << 16))


def merge_steps(steps: list[tuple[str, int]]) -> list[tuple]:
    """``steps`` as a script of legs and merges as the tracker hands them over
    (merge_script's rules), with the outage's steps kept in place."""
    groups: list[str] = []
    script: list[tuple] = []
    for n, (kind, pick) in enumerate(steps):
        if kind == "leg":
            if not groups or pick % 2:
                groups.append("i-%d" % n)
            script.append(("leg", record(n, groups[-1 - (pick >> 1) % min(len(groups), 8)])))
        elif kind == "merge" and len(groups) > 1:
            recent = groups[-8:]
            loser = recent[pick % len(recent)]
            winner = recent[(pick // len(recent) + 1 + recent.index(loser)) % len(recent)]
            groups.remove(loser)
            script.append(("merge", loser, winner))
        elif kind != "merge":
            script.append((kind,))
    return script


@settings(max_examples=int(MERGE_EXAMPLES or 25), derandomize=not MERGE_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(steps=st.lists(MERGE_STEP, min_size=40, max_size=150))
def test_merges_in_any_outage_store_the_ids_of_a_run_without_one(tmp_path_factory, steps):
    # Legs and merges interleaved with SQLite failing (its lock held by another
    # program) and coming back, the writer and the spooler let run at any point
    # (a switch) or until memory holds nothing (settle): once SQLite is back and
    # the spool replayed, every leg has the id of the same run without an outage.
    script = merge_steps(steps)
    tmp = tmp_path_factory.mktemp("merges")
    expected = without_outage(tmp, [step for step in script if step[0] in ("leg", "merge")])
    db = tmp / "a.db"
    spool = Spool(tmp / "a.db.spool")
    writer = Writer(fast_failing(db), batch_size=4, flush_interval=0.01, capacity=3, max_retry_delay=0.05,
                    spool=spool)
    greenlets = run_writer(writer)
    other = None
    for step in script:
        if step[0] in ("leg", "merge"):
            play(writer, [step])
        elif step[0] == "fail" and other is None:
            other = locked(db)
        elif step[0] == "recover" and other is not None:
            other.execute("ROLLBACK")
            other = other.close()
        elif step[0] == "switch":
            gevent.sleep(0)  # (a switch to the writer and the spooler, not a wait)
        elif step[0] == "settle":
            # Memory holds nothing: written, or on disk (the spooler's queue empty).
            assert wait_until(lambda: not writer.backlog and not writer.merges_waiting
                              and writer.spool_backlog == spool.backlog, timeout=10)
    if other is not None:
        other.execute("ROLLBACK")
        other.close()
    assert wait_until(lambda: writer.spool_backlog == 0 and not writer.merges_waiting and writer.wait_idle(1)
                      and spool.empty, timeout=10)
    stop_writer(writer, greenlets)
    assert not writer.lost and not writer.merges_lost
    assert interaction_ids(db) == expected


# --------------------------------------------------------------- real daemon


def health(daemon: DaemonProcess) -> dict:
    url = "http://127.0.0.1:%d/health" % daemon.api_port()
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:  # 503 while degraded
        return json.loads(exc.read())


def prepared(tmp_path, fake_port: int, queue_size: int = 100000):
    db = tmp_path / "cdrs.db"
    store.connect_writer(db).close()  # an existing database: the daemon needs no write to open it
    ini = write_config(tmp_path, fake_port)
    ini.write_text(ini.read_text().replace("[store]\n", "[store]\nqueue_size = %d\n" % queue_size))
    return db, ini


@pytest.mark.subprocess
def test_daemon_write_lock_held_10s_while_calls_arrive(tmp_path):
    legs = set(EXPECTED["S1_json"]) | set(EXPECTED["S3_json"])
    fake = FakeFreeSWITCH(events=ReplaySource([DATA / "S1_json.esl", DATA / "S3_json.esl"]), hold=True)
    fake.start()
    db, ini = prepared(tmp_path, fake.port)
    other = locked(db)
    daemon = DaemonProcess(ini, tmp_path / "daemon.log")
    try:
        assert fake.wait_done(timeout=WAIT)
        started = time.monotonic()
        # Held 10 s in all; the daemon keeps taking calls meanwhile.
        assert wait_until(lambda: health(daemon)["writer"]["spool_backlog"] == len(legs), timeout=9)
        gevent.sleep(max(0.0, 10 - (time.monotonic() - started)))
        assert db_rows(db) == []
        other.execute("ROLLBACK")
        other.close()
        rows = wait_rows(db, len(legs))
        assert wait_until(lambda: health(daemon)["writer"]["spool_backlog"] == 0)
    finally:
        assert daemon.stop() == 0
        fake.stop()
    assert sorted(r["call_id"] for r in db_rows(db)) == sorted(legs) and len(rows) == len(legs)
    events = [e["event"] for e in daemon.log_events()]
    assert "sqlite_write_failed" in events and "backlog_spooled" in events and "spool_replayed" in events


@pytest.mark.subprocess
def test_daemon_sigkilled_with_a_full_spool_stores_every_cdr_once_after_restart(tmp_path):
    legs = set(EXPECTED["S2_json"]) | set(EXPECTED["S4_json"]) | set(EXPECTED["S5_json"])
    fake = FakeFreeSWITCH(
        events=ReplaySource([DATA / "S2_json.esl", DATA / "S4_json.esl", DATA / "S5_json.esl"]), hold=True)
    fake.start()
    db, ini = prepared(tmp_path, fake.port, queue_size=2)
    other = locked(db)
    daemon = DaemonProcess(ini, tmp_path / "daemon.log")
    spool = tmp_path / "cdrs.db.spool"
    try:
        assert fake.wait_done(timeout=WAIT)
        # Past queue_size at once (overflow), then the backlog after the
        # first failed write: every CDR on disk.
        assert wait_until(lambda: spool.exists() and spool.read_text().count("\n") == len(legs))
        daemon.proc.send_signal(signal.SIGKILL)
        assert daemon.wait_exit(10) == -signal.SIGKILL
    finally:
        daemon.stop()
        fake.stop()
    events = [e["event"] for e in daemon.log_events()]
    assert "cdrs_spooled" in events
    other.execute("ROLLBACK")
    other.close()
    assert db_rows(db) == []
    # A torn line, as if the kill had hit an append.
    with open(spool, "a") as f:
        f.write('{"call_id": "torn')
    fake = FakeFreeSWITCH(events=StaticSource([]), hold=True).start()
    daemon = DaemonProcess(write_config(tmp_path, fake.port), tmp_path / "daemon2.log")
    try:
        rows = wait_rows(db, len(legs))
        assert wait_until(lambda: spool.stat().st_size == 0)
        gevent.sleep(0.3)
    finally:
        assert daemon.stop() == 0
        fake.stop()
    rows = db_rows(db)
    assert sorted(r["call_id"] for r in rows) == sorted(legs)
    events = [e["event"] for e in daemon.log_events()]
    assert "spool_torn_line_skipped" in events and "spool_replayed" in events


@pytest.mark.subprocess
def test_daemon_disk_full_spools_then_stores_every_cdr_once_when_space_returns(tmp_path):
    """A real write failure in the daemon: its file-size limit (RLIMIT_FSIZE)
    stops the WAL from growing, as a full disk would; the small spool file
    still fits.  Raising the limit is the disk getting space back."""
    legs = set(EXPECTED["S1_json"]) | set(EXPECTED["S3_json"])
    fake = FakeFreeSWITCH(events=ReplaySource([DATA / "S1_json.esl", DATA / "S3_json.esl"]), hold=True)
    fake.start()
    db, ini = prepared(tmp_path, fake.port)
    ini.write_text(ini.read_text().replace("level = debug", "level = info"))
    # A WAL of ~600 kB that the daemon must append to (this connection stays
    # open, so nothing checkpoints it away); the limit sits just above it.
    holder = store.connect_writer(db)
    holder.execute("PRAGMA wal_autocheckpoint = 0")
    earlier = [dict(record(n), interaction_id="i-%d" % n, local_sdp="v=0 " * 200) for n in range(300)]
    store.insert_records(holder, earlier)
    limit = (tmp_path / "cdrs.db-wal").stat().st_size + 4096

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    daemon = DaemonProcess(ini, tmp_path / "daemon.log", preexec_fn=small_disk)
    try:
        assert fake.wait_done(timeout=WAIT)
        # Every CDR is either committed (before the limit was reached) or
        # in the spool, most of them in the spool.
        spooled = wait_until(lambda: (lambda backlog: backlog if backlog + len(db_rows(db)) - len(earlier) == len(legs)
                                      else None)(health(daemon)["writer"]["spool_backlog"]))
        assert spooled and spooled >= len(legs) // 2
        failures = [e for e in daemon.log_events() if e["event"] == "sqlite_write_failed"]
        assert failures and "disk" in failures[0]["error"]
        resource.prlimit(daemon.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        rows = wait_rows(db, len(earlier) + len(legs))
        assert wait_until(lambda: health(daemon)["writer"]["spool_backlog"] == 0)
    finally:
        assert daemon.stop() == 0
        fake.stop()
        holder.close()
    rows = db_rows(db)
    assert len(rows) == len(earlier) + len(legs)
    assert {r["call_id"] for r in rows} == legs | {r["call_id"] for r in earlier}
