"""The collector against hostile or broken media servers: a real ``eslcdr
collect`` process, a real PostgreSQL (pgserver), real ``eslcdr run`` nodes and
fake nodes (tests/feed_node.py, a real HTTP server in its own process) that
send what a broken or malicious node could."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from eslcdr.query.params import FeedQuery
from eslcdr.query.sql import feed_sql
from eslcdr.store import db as store
from eslcdr.collector import pgschema

from tests.harness import ROOT
from tests.unit.api.test_api import G, leg
from tests.e2e.test_collect_e2e import collector, http_get, media, pg_rows, wait_collected, wait_for  # noqa: F401

UTC = dt.timezone.utc
DAY_US = 86_400 * 10**6


class FeedNode:
    """tests/feed_node.py as a subprocess, driven by its plan file."""

    def __init__(self, root: Path, name: str, **plan) -> None:
        self.root = root / name
        self.root.mkdir(parents=True, exist_ok=True)
        self.plan_path = self.root / "plan.json"
        self.requests_path = self.root / "requests.ndjson"
        self.plan = {"requests": str(self.requests_path), "db_id": "db-" + name}
        self.set(**plan)
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "feed_node.py"), str(self.plan_path)],
                                     stdout=subprocess.PIPE, stderr=open(self.root / "stderr", "wb"))
        line = self.proc.stdout.readline().decode()
        assert line.startswith("feed node on "), line
        self.started = time.time()
        self.port = int(line.split()[3])

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self.port

    def set(self, records: list[dict] | None = None, **plan) -> None:
        if records is not None:
            path = self.root / ("lines-%d.ndjson" % time.monotonic_ns())
            path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in records))
            plan["lines"] = str(path)
        self.plan.update(plan)
        tmp = self.plan_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.plan))
        tmp.replace(self.plan_path)

    def requests(self) -> list[dict]:
        if not self.requests_path.exists():
            return []
        return [json.loads(line) for line in self.requests_path.read_text().splitlines() if line]

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self.proc.stdout.close()


@pytest.fixture
def feed_node(tmp_path):
    started: list[FeedNode] = []

    def make(name: str, **plan) -> FeedNode:
        node = FeedNode(tmp_path, name, **plan)
        started.append(node)
        return node

    yield make
    for node in started:
        node.stop()


def feed_docs(db: Path) -> list[dict]:
    """A node database's records as its feed renders them."""
    conn = store.connect_writer(db)
    try:
        sql, args = feed_sql(FeedQuery(0, None))
        return [json.loads(row[0]) for row in conn.execute(sql, args)]
    finally:
        conn.close()


def rendered(tmp_path: Path, records: list[dict], first_seq: int = 1) -> list[dict]:
    """Records -> feed documents through a real node database, seq from first_seq."""
    db = tmp_path / ("render-%d.db" % time.monotonic_ns())
    conn = store.connect_writer(db)
    store.insert_records(conn, records)
    conn.close()
    docs = feed_docs(db)
    for offset, doc in enumerate(docs):
        doc["seq"] = first_seq + offset
    return docs


def at(when: dt.datetime) -> int:
    return int(when.timestamp()) + G


def node_after(dsn: str, node: str) -> int:
    got = pg_rows(dsn, "SELECT after FROM collector_nodes WHERE node = %s", (node,))
    return got[0]["after"] if got else 0


def health(port: int) -> dict:
    return json.loads(http_get(port, "/health")[1])


def test_a_node_cannot_replace_or_delete_another_nodes_rows(media, collector, pg_dsn, tmp_path, feed_node):
    good = media("fs-a", calls=30, seed=21)
    good.settled_rows(30)
    evil = feed_node("evil")  # nothing to send yet
    process = collector({"fs-a": good.url, "evil": evil.url})
    process.port()
    wait_collected(pg_dsn, [good])
    before = {r["call_id"]: r for r in pg_rows(pg_dsn)}
    # evil replays fs-a's call_ids, billed 99999 s; every other one hung
    # up a day earlier (a new hangup time used to delete the stored row
    # from its partition); then five calls of its own.
    stolen = feed_docs(good.db)
    for seq, doc in enumerate(stolen, 1):
        doc.update(seq=seq, billing_seconds=99999)
        if seq % 2:
            doc["hangup_us"] -= DAY_US
            doc["timestamp"] -= 86_400
    now = dt.datetime.now(UTC)
    own = rendered(tmp_path, [leg(at(now)) for _ in range(5)], first_seq=len(stolen) + 1)
    evil.set(records=stolen + own)
    wait_for(lambda: node_after(pg_dsn, "evil") == own[-1]["seq"], what="evil's records handled")

    after = {r["call_id"]: r for r in pg_rows(pg_dsn)}
    assert {k: v for k, v in after.items() if v["source"] == "fs-a"} == before  # not one byte changed
    assert {k for k, v in after.items() if v["source"] == "evil"} == {d["call_id"] for d in own}
    assert pg_rows(pg_dsn, "SELECT count(*) AS n FROM cdr_keys")[0]["n"] == len(before) + len(own)
    rejects = pg_rows(pg_dsn, "SELECT node, seq, call_id, reason, error, record FROM collector_rejects ORDER BY seq")
    assert [(r["node"], r["seq"], r["call_id"]) for r in rejects] == [("evil", d["seq"], d["call_id"]) for d in stolen]
    assert {r["reason"] for r in rejects} == {"other_node"}
    assert all("fs-a" in r["error"] for r in rejects)
    assert [json.loads(r["record"]) for r in rejects] == stolen  # kept whole
    assert process.stop() == 0


def months_from(now: dt.datetime, offset: int) -> dt.datetime:
    index = now.year * 12 + now.month - 1 + offset
    return dt.datetime(index // 12, index % 12 + 1, 10, 12, tzinfo=UTC)


def test_a_node_cannot_create_a_partition_per_month(collector, pg_dsn, tmp_path, feed_node):
    now = dt.datetime.now(UTC)
    # One call in each of 600 months, 25 years back to 25 years ahead, and one now.
    records = [leg(at(months_from(now, offset))) for offset in range(-300, 300)] + [leg(at(now))]
    docs = rendered(tmp_path, records)
    evil = feed_node("evil", records=docs)
    process = collector({"evil": evil.url})
    process.port()
    wait_for(lambda: node_after(pg_dsn, "evil") == docs[-1]["seq"], what="evil's records handled")
    with psycopg.connect(pg_dsn) as conn:
        partitions = pgschema.existing_partitions(conn)
    assert len(partitions) <= 6, sorted(partitions)
    stored = pg_rows(pg_dsn, "SELECT seq, hangup_at FROM cdrs")
    rejects = pg_rows(pg_dsn, "SELECT seq, reason FROM collector_rejects")
    assert len(stored) + len(rejects) == len(docs)  # every record: a row or a reject
    oldest, newest = now - dt.timedelta(days=400), now + dt.timedelta(days=1)
    assert all(oldest <= r["hangup_at"] <= newest for r in stored)
    reasons = {r["seq"]: r["reason"] for r in rejects}
    assert reasons[docs[0]["seq"]] == reasons[docs[-2]["seq"]] == "hangup_out_of_window"
    assert reasons[docs[301]["seq"]] == "hangup_out_of_window"  # next month: later than now + 1 day
    assert set(reasons.values()) == {"hangup_out_of_window", "partition_limit"}
    assert docs[-1]["seq"] in {r["seq"] for r in stored}  # the call of today
    assert process.stop() == 0


def test_a_node_sending_one_byte_at_a_time_does_not_hold_back_a_good_one(collector, pg_dsn, tmp_path, feed_node):
    rate, total = 200, 4000  # the good node takes 200 calls a second for 20 s
    now = dt.datetime.now(UTC)
    docs = rendered(tmp_path, [leg(at(now)) for _ in range(total)])
    good = feed_node("good", records=docs, rate=rate)
    slow = feed_node("slow", records=[], tail="onebyte")
    process = collector({"good": good.url, "slow": slow.url})
    port = process.port()
    worst = 0.0
    while True:
        visible = min(total, (time.time() - good.started) * rate)
        stored = node_after(pg_dsn, "good")
        worst = max(worst, (visible - stored) / rate)  # seconds behind the good node
        if stored == total:
            break
        assert worst < 15, "the good node is %.1f s behind (%d of %d stored)" % (worst, stored, int(visible))
        time.sleep(0.5)
    assert len(slow.requests()) >= 1
    nodes = health(port)["nodes"]
    assert nodes["slow"]["state"] == "error" and nodes["slow"]["last_error"]
    assert nodes["good"]["state"] != "error"
    assert process.stop() == 0


def test_a_node_that_never_ends_its_answer_shows_as_an_error(collector, pg_dsn, tmp_path, feed_node):
    now = dt.datetime.now(UTC)
    docs = rendered(tmp_path, [leg(at(now))])
    trickle = feed_node("trickle", records=docs, tail="trickle")  # one byte a second
    drip = feed_node("drip", records=[], tail="drip")  # 10 KiB/s of empty lines, forever
    process = collector({"trickle": trickle.url, "drip": drip.url}, extra="max_pull_seconds = 4\n")
    port = process.port()
    nodes = wait_for(lambda: (lambda n: n if all(v["state"] == "error" for v in n.values()) else None)(
        health(port)["nodes"]), timeout=30, what="both nodes shown as failing")
    assert "bytes/s" in nodes["trickle"]["last_error"]
    assert "4 s" in nodes["drip"]["last_error"]
    # The record before the trickle was stored all the same.
    assert node_after(pg_dsn, "trickle") == docs[-1]["seq"]
    assert process.stop() == 0


def test_a_node_changing_its_db_id_at_every_request_is_slowed_and_named(collector, pg_dsn, tmp_path, feed_node):
    now = dt.datetime.now(UTC)
    docs = rendered(tmp_path, [leg(at(now)) for _ in range(5)])
    flapping = feed_node("flap", records=docs, db_id="flap")
    process = collector({"flap": flapping.url})
    port = process.port()
    first = wait_for(lambda: flapping.requests(), what="a first pull")[0]["t"]
    time.sleep(max(0.0, first + 10 - time.time()))
    pulls = [r for r in flapping.requests() if r["t"] <= first + 10]
    assert len(pulls) < 50, len(pulls)
    warned = process.events_named("collect_node_db_id_flapping")
    assert warned and warned[0]["node"] == "flap" and warned[0]["level"] == "warning"
    node = health(port)["nodes"]["flap"]
    assert node["state"] == "error" and "db_id" in node["last_error"]
    # Its records were stored all the same, once.
    assert sorted(r["call_id"] for r in pg_rows(pg_dsn)) == sorted(d["call_id"] for d in docs)
    assert process.stop() == 0
