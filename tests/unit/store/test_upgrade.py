"""An operator's upgrade in place: files an old eslcdr wrote, opened by today's.

The fixtures in tests/data/upgrade/ were written by real old versions (its
README says which commits and how): a database at schema version 2 (the first
release), one at version 8 with CDRs left in its spool, their tokens files and
configs.  Today's code must keep every stored CDR as it was, add the new
columns as docs/database.md says, keep the KPI roll-ups equal to a recount,
replay the spool once, accept the tokens and the config.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
from pathlib import Path

import gevent
import pytest

from eslcdr import config as config_module
from eslcdr.api import tokens
from eslcdr.store import db as store
from eslcdr.store import schema
from eslcdr.store.spool import Spool
from eslcdr.store.writer import Writer

from tests.conftest import DATA
from tests.harness import ROOT, wait_until

UPGRADE = DATA / "upgrade"
FIXTURES = sorted(p.name for p in UPGRADE.iterdir() if (p / "cdrs.sql").exists())


def load_sqlite(sql: str, db: Path) -> None:
    """A database file from its text dump (``PRAGMA user_version`` and the old
    version's ``.dump``: its schema, triggers and rows as that version wrote them),
    in WAL mode as the old daemon left it.  The repository keeps dumps, never
    database files."""
    conn = sqlite3.connect(db)
    try:
        conn.executescript(sql)
        conn.execute("PRAGMA journal_mode = WAL")
    finally:
        conn.close()


def unpack(name: str, into: Path) -> Path:
    """The fixture's files in ``into`` (the database made from its dump, @DIR@ in its config set)."""
    src = UPGRADE / name
    load_sqlite((src / "cdrs.sql").read_text(), into / "cdrs.db")
    # (spool.jsonl: .gitignore keeps *.db.spool out of the repository)
    for other, there in (("spool.jsonl", "cdrs.db.spool"), ("tokens", "tokens"), ("tokens.plain", "tokens.plain"),
                         ("answers.json", "answers.json")):
        if (src / other).exists():
            (into / there).write_bytes((src / other).read_bytes())
    (into / "eslcdr.ini").write_text((src / "eslcdr.ini").read_text().replace("@DIR@", str(into)))
    return into / "cdrs.db"


def raw_rows(path: Path) -> dict[str, dict]:
    """Every cdrs row as stored, read without today's code (no migration)."""
    conn = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return {r["call_id"]: dict(r) for r in conn.execute("SELECT * FROM cdrs")}
    finally:
        conn.close()


def user_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()


def rollups(conn: sqlite3.Connection) -> dict[str, list[tuple]]:
    return {t: sorted(conn.execute("SELECT * FROM %s" % t).fetchall()) for t in schema.ROLLUP_TABLES}


def recount(path: Path, tmp: Path) -> dict[str, list[tuple]]:
    """The roll-ups rebuilt from the rows alone (on a copy), as migration 6 builds them."""
    copy = sqlite3.connect(tmp / "recount.db", isolation_level=None)
    with sqlite3.connect(path) as src:
        src.backup(copy)
    for table in schema.ROLLUP_TABLES:
        copy.execute("DROP TABLE %s" % table)
    for (name,) in copy.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        copy.execute("DROP TRIGGER %s" % name)
    schema.add_stats_rollups(copy)
    out = rollups(copy)
    copy.close()
    return out


def same_rollups(stored: dict[str, list[tuple]], counted: dict[str, list[tuple]]) -> bool:
    """Equal cell by cell; REAL sums (mos_sum) to the last bits' rounding."""
    for table in schema.ROLLUP_TABLES:
        if len(stored[table]) != len(counted[table]):
            return False
        for a, b in zip(stored[table], counted[table]):
            if any(x != y and not (isinstance(x, float) and math.isclose(x, y, rel_tol=1e-9))
                   for x, y in zip(a, b)):
                return False
    return True


@pytest.mark.parametrize("name", FIXTURES)
def test_every_cdr_the_old_version_stored_is_kept_unchanged(tmp_path, name):
    path = unpack(name, tmp_path)
    before = raw_rows(path)
    found = user_version(path)
    assert before and found < schema.SCHEMA_VERSION
    store.connect_writer(path).close()
    assert user_version(path) == schema.SCHEMA_VERSION
    after = raw_rows(path)
    assert set(after) == set(before)
    for call_id, row in before.items():
        assert {k: after[call_id][k] for k in row} == row, call_id


@pytest.mark.parametrize("name", FIXTURES)
def test_new_columns_are_null_or_filled_as_the_docs_say(tmp_path, name):
    path = unpack(name, tmp_path)
    before = raw_rows(path)
    store.connect_writer(path).close()
    after = raw_rows(path)
    added = set(schema.COLUMN_NAMES) - set(next(iter(before.values())))
    assert added  # both fixtures predate sip_call_id
    earliest: dict[str, int] = {}
    for row in before.values():
        if row["interaction_id"] is not None and row["created_us"] is not None:
            iid = row["interaction_id"]
            earliest[iid] = min(earliest.get(iid, row["created_us"]), row["created_us"])
    for call_id, row in after.items():
        for column in added:
            if column == "interaction_created_us":
                # migration 7: the earliest creation of the interaction's written legs
                assert row[column] == earliest.get(row["interaction_id"]), call_id
            else:  # quality columns, sip_call_id: unknown for rows written before
                assert row[column] is None, (call_id, column)


@pytest.mark.parametrize("name", FIXTURES)
def test_kpi_rollups_equal_a_recount_after_the_upgrade_and_as_rows_go(tmp_path, name):
    path = unpack(name, tmp_path)
    conn = store.connect_writer(path)
    assert same_rollups(rollups(conn), recount(path, tmp_path))
    # The triggers an older eslcdr created (migration 6 ran in that version)
    # still take out what goes: retention's deletes, a person's UPDATE.
    with_account = [r[0] for r in conn.execute(
        "SELECT seq FROM cdrs WHERE account_id IS NOT NULL ORDER BY seq")]
    assert len(with_account) >= 4
    conn.execute("DELETE FROM cdrs WHERE seq IN (?, ?)", with_account[:2])
    conn.execute("UPDATE cdrs SET hangup_cause = 'USER_BUSY', billing_seconds = 0 WHERE seq = ?",
                 (with_account[2],))
    assert same_rollups(rollups(conn), recount(path, tmp_path))
    conn.close()


def test_an_old_spool_is_replayed_once_with_the_values_it_holds(tmp_path):
    path = unpack("v8-c655340", tmp_path)
    spooled = [json.loads(line) for line in (tmp_path / "cdrs.db.spool").read_text().splitlines()]
    before = raw_rows(path)
    assert spooled and not {r["call_id"] for r in spooled} & set(before)
    conn = store.connect_writer(path)
    spool = Spool(tmp_path / "cdrs.db.spool")
    writer = Writer(conn, batch_size=50, flush_interval=0.01, spool=spool)
    greenlets = [gevent.spawn(writer.run), gevent.spawn(writer.run_spooler)]
    try:
        assert wait_until(lambda: spool.backlog == 0 and (tmp_path / "cdrs.db.spool").stat().st_size == 0)
    finally:
        writer.stop()
        gevent.joinall(greenlets, timeout=10)
    conn.close()
    after = raw_rows(path)
    assert len(after) == len(before) + len(spooled)
    for call_id, row in before.items():
        assert {k: after[call_id][k] for k in row} == row
    for record in spooled:
        row = after[record["call_id"]]
        for key, value in record.items():
            if key in schema.JSON_COLUMNS:
                assert json.loads(row[key]) == value, key
            elif key in row:
                assert row[key] == (int(value) if isinstance(value, bool) else value), key
        assert row["sip_call_id"] is None  # the old version's records had no such field


@pytest.mark.parametrize("name", FIXTURES)
def test_the_old_tokens_file_still_grants_the_same_accounts(tmp_path, name):
    unpack(name, tmp_path)
    entries = tokens.load_tokens(tmp_path / "tokens")
    plain = [line.split() for line in (tmp_path / "tokens.plain").read_text().splitlines()]
    assert len(plain) == len(entries) == 2
    for token, account in plain:
        assert tokens.match(entries, token) == account
    assert tokens.match(entries, plain[0][0][:-1] + "x") is None


@pytest.mark.parametrize("name", FIXTURES)
def test_the_old_config_is_accepted(tmp_path, name):
    unpack(name, tmp_path)
    loaded = config_module.load(tmp_path / "eslcdr.ini", environ={})
    assert str(loaded.store.path) == str(tmp_path / "cdrs.db")
    shipped = UPGRADE / name / "eslcdr.ini.shipped"
    if shipped.exists():  # the conf/eslcdr.ini that version installed in /etc/eslcdr
        assert config_module.load(shipped, environ={}).api.tokens_file == "/etc/eslcdr/tokens"


def start_timeout_seconds(unit: Path) -> float:
    """The unit's TimeoutStartSec (systemd's default, 90 s, when it sets none)."""
    found = re.search(r"^TimeoutStartSec=(\d+)(min|h|s)?$", unit.read_text(), re.M)
    if found is None:
        return 90.0
    return int(found.group(1)) * {"min": 60, "h": 3600, "s": 1, None: 1}[found.group(2)]


def test_the_collector_unit_waits_for_the_migrations_of_a_big_central_database():
    # READY=1 follows the PostgreSQL migrations.  Measured in the trial: a
    # collector schema-2 database of 1 million legs took 121 s to reach the
    # current version -- past systemd's 90 s default, which killed the start
    # mid-migration (rolled back) and restarted it, a loop.  Allowed as the
    # node's unit allows its SQLite migration (15 min) and more: a fleet's
    # database is many nodes' rows.
    assert start_timeout_seconds(ROOT / "systemd" / "eslcdr-collect.service") >= 3600
    assert start_timeout_seconds(ROOT / "systemd" / "eslcdr.service") >= 15 * 60
