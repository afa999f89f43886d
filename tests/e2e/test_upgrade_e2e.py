"""An upgrade in place end to end: today's ``eslcdr run`` and ``eslcdr collect``
started on the files an old version left (tests/data/upgrade/v8-c655340: its
database, its spool holding CDRs, its tokens and config, and its collector's
PostgreSQL database, pg_dump'ed).  The old API answers are served again field
for field, the spool is replayed, the tokens still work, /health says ok, and
the collector goes on from its cursor: every row once, no gap, none repeated.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

import psycopg

from eslcdr.collector import pgschema
from eslcdr.fakefs import FakeFreeSWITCH, StaticSource

from tests.e2e.test_collect_e2e import CollectorProcess, pg_rows
from tests.harness import DaemonProcess, db_rows, wait_until
from tests.unit.store.test_upgrade import UPGRADE, raw_rows, unpack

FIXTURE = "v8-c655340"
OTHER_ACCOUNT = "7d55e8c9e89f7a344864ee58ae76cb7b"


def get(port: int, path: str, token: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path),
                                     headers={"X-Auth-Token": token} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def restore(dsn: str, dump: str) -> None:
    """The old collector's database, as pg_dump wrote it (plain SQL, INSERTs)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(dump)


def test_today_takes_over_an_old_node_and_its_collector(tmp_path, pg_dsn):
    db = unpack(FIXTURE, tmp_path)
    stored = raw_rows(db)
    spooled = (tmp_path / "cdrs.db.spool").read_text().count("\n")
    restore(pg_dsn, (UPGRADE / FIXTURE / "central.sql").read_text())
    central_before = {r["call_id"]: r for r in pg_rows(pg_dsn)}
    assert set(central_before) == set(stored)
    fake = FakeFreeSWITCH(events=StaticSource([]), hold=True).start()
    ini = tmp_path / "eslcdr.ini"  # the old config, on this test's ports
    ini.write_text(re.sub(r"listen = \S+", "listen = 127.0.0.1:0",
                          re.sub(r"port = \d+", "port = %d" % fake.port, ini.read_text())))
    daemon = DaemonProcess(ini, tmp_path / "daemon.log")
    collector = None
    try:
        port = daemon.api_port()
        # The spool the old version left is replayed once at start.
        rows = wait_until(lambda: len(db_rows(db)) == len(stored) + spooled and db_rows(db))
        assert rows and (tmp_path / "cdrs.db.spool").stat().st_size == 0
        assert wait_until(lambda: get(port, "/health")[0] == 200)
        assert get(port, "/health")[1]["status"] == "ok"
        # The old tokens: the collector's sees every account, an account's its own.
        (admin, _), (user, account) = [line.split() for line in (tmp_path / "tokens.plain").read_text().splitlines()]
        assert get(port, "/v2/accounts/%s/cdrs" % account, user)[0] == 200
        assert get(port, "/v2/accounts/%s/cdrs" % OTHER_ACCOUNT, user)[0] == 403
        # Every listing the old version answered, answered again: each field it had, the same.
        old_answers = json.loads((tmp_path / "answers.json").read_text())
        assert len(old_answers) >= 6
        for path, old in old_answers.items():
            status, body = get(port, path, admin)
            assert status == 200, path
            assert len(body["data"]) == len(old), path
            for was, now in zip(old, body["data"]):
                assert {k: now.get(k) for k in was} == was, path
        # Today's collector on the old collector's database: migrated, then on
        # from its cursor -- the replayed rows once, nothing twice, no gap.
        collector = CollectorProcess(tmp_path, pg_dsn, {"fs-old": ("http://127.0.0.1:%d" % port, admin)})
        want = sorted(r["seq"] for r in rows)
        assert wait_until(lambda: sorted(r["seq"] for r in pg_rows(pg_dsn)) == want, timeout=60)
        central = {r["call_id"]: r for r in pg_rows(pg_dsn)}
        assert len(central) == len(want)
        for call_id, row in central_before.items():
            if row["account_id"] is None:  # schema 4: a key column, never NULL (docs/collector.md)
                row["account_id"] = pgschema.NO_ACCOUNT
            assert {k: central[call_id][k] for k in row} == row, call_id
    finally:
        if collector is not None:
            assert collector.stop() == 0
        assert daemon.stop() == 0
        fake.stop()
