"""The HTTP API through WSGI (webtest): routes, shapes, auth, errors, CSV, paging.

End-to-end tests against a real gevent WSGIServer are in test_api_e2e.py.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import webtest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from eslcdr.api import app as api
from eslcdr.query import kazoo
from eslcdr.store import db as store
from eslcdr.config import from_mapping
from eslcdr.ingest.legs import GREGORIAN_OFFSET
from eslcdr.query.reader import InlineRunner
from eslcdr.store.schema import COLUMN_NAMES
from eslcdr.api.sessions import SessionStore
from eslcdr.api.tokens import TokenStore

from tests import kazoo_shapes
from tests.conftest import fresh_database

G = GREGORIAN_OFFSET
NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z, the app's clock in these tests
NOW_G = int(NOW) + G
ACC_A = "4b0cd3c1e0a2f2c6a8d9e1f20a3b4c5d"
ACC_B = "7e1f3a9b2c4d5e6f708192a3b4c5d6e7"
TOKENS = {"token-a": ACC_A, "token-b": ACC_B, "token-collector": "*"}
A = {"X-Auth-Token": "token-a"}
B = {"X-Auth-Token": "token-b"}
COLLECTOR = {"X-Auth-Token": "token-collector"}
HARD_NAMES = ['Smith, John', 'Bob "The Builder"', "Line\nBreak", "CR\r\nLF", "Ærøskøbing, ApS",
              "渡辺 健", "=cmd|' /C calc'!A0", "", "tab\tand ,\"all\"\n"]


def interaction_id(start_g: int) -> str:
    return "%d-%s" % (start_g, uuid.uuid4().hex[:8])


def leg(ts_g: int, *, account: str = ACC_A, owner: str | None = "user-1", interaction: str | None = None,
        created_g: int | None = None, duration: int = 60, **fields) -> dict:
    """A realistic CDR record (what the writer stores), hung up at ``ts_g``."""
    call_id = str(uuid.uuid4())
    created_g = created_g if created_g is not None else ts_g - duration
    record = {
        "id": time.strftime("%Y%m", time.gmtime(ts_g - G)) + "-" + call_id,
        "call_id": call_id,
        "interaction_id": interaction or interaction_id(created_g),
        "account_id": account,
        "owner_id": owner,
        "authorizing_id": "dev-%s" % call_id[:4],
        "app_name": "eslcdr",
        "app_version": "0.1.0",
        "node": "fs1",
        "media_server": "fs1.example.com",
        "channel_name": "sofia/internal/1000@example.com",
        "call_direction": "inbound",
        "caller_id_name": "Alice",
        "caller_id_number": "+15551230001",
        "callee_id_name": "Bob",
        "callee_id_number": "2000",
        "request": "2000@example.com",
        "from": "1000@example.com",
        "from_uri": "1000@example.com",
        "to": "2000@example.com",
        "to_uri": "2000@example.com",
        "presence_id": "1000@example.com",
        "user_agent": "Yealink SIP-T46S",
        "created_us": (created_g - G) * 10**6,
        "answered_us": (created_g - G + 5) * 10**6,
        "hangup_us": (ts_g - G) * 10**6,
        "timestamp": ts_g,
        "duration_seconds": duration,
        "billing_seconds": max(duration - 5, 0),
        "ringing_seconds": 5,
        "hangup_cause": "NORMAL_CLEARING",
        "hangup_code": "sip:200",
        "disposition": "recv_bye",
        "digits_dialed": "",
        "custom_channel_vars": {"account_id": account, "owner_id": owner, "bridge_id": call_id,
                                "account_billing": "per_minute", "rate": "100", "rate_name": "US-48"},
        "custom_sip_headers": {"x_customer": "c42"},
        "local_sdp": "v=0\r\no=FreeSWITCH 1 2 IN IP4 10.0.0.5\r\n",
        "remote_sdp": "v=0\r\no=- 3 4 IN IP4 192.0.2.7\r\n",
    }
    record.update(fields)
    return record


class Env:
    """A database, a tokens file and the app over them (webtest)."""

    def __init__(self, root: Path, sessions: SessionStore | None = None, reread_tokens: bool = False,
                 **api_settings: str) -> None:
        """``sessions``: the login sessions (default: ``[api] session_ttl``'s);
        ``reread_tokens``: the tokens file is read again at each use (an edit applies at once)."""
        self.path = root / "cdrs.db"
        self.writer = store.connect_writer(self.path)
        self.tokens_file = root / "tokens"
        self.tokens_file.write_text("".join("%s %s\n" % item for item in TOKENS.items()))
        self.config = from_mapping({"store": {"path": str(self.path)},
                                    "api": {"tokens_file": str(self.tokens_file), **api_settings}})
        self.options = {"tokens": TokenStore(self.tokens_file, check_interval=0, settle=0) if reread_tokens
                        else TokenStore(self.tokens_file), "sessions": sessions, "clock": lambda: NOW}
        self.registry = CollectorRegistry()
        self.health = {"status": "ok", "nodes": {"fs1": {"state": "connected"}}, "writer": {"backlog": 0}}
        self.app = api.create_app(self.config, health=lambda: self.health, registry=self.registry,
                                  runner=InlineRunner(), **self.options)
        self.web = webtest.TestApp(self.app)

    def insert(self, records: list[dict]) -> list[dict]:
        store.insert_records(self.writer, records)
        return records

    def record_keys(self, rec: dict) -> list[str]:
        """The keys of a full record's JSON here (centrally: then its node, ``source``)."""
        return record_keys(rec)

    def row_keys(self, columns: list[str]) -> list[str]:
        """The keys of a listing row's JSON here (centrally: then its node, ``source``)."""
        return list(columns)

    def get(self, url: str, headers: dict | None = None, status: int | str = 200, **kwargs):
        return self.web.get(url, headers=A if headers is None else headers, status=status, **kwargs)

    def close(self) -> None:
        self.app.close()
        self.writer.close()


class CentralEnv(Env):
    """The same database's rows in the collector's PostgreSQL (pulled through
    the real feed and ``PgStore``) and the central API over them (issue 17.1):
    a test written for a node's ``env`` runs unchanged against ``eslcdr collect``."""

    def __init__(self, root: Path, dsn: str, **settings) -> None:
        import psycopg

        from eslcdr.collector import pgmigrations
        from eslcdr.collector.pgstore import PgStore
        from eslcdr.collector.readside import PgReadSide

        super().__init__(root, **settings)
        self.node_app = self.app
        conn = psycopg.connect(dsn)
        pgmigrations.migrate(conn)
        self.pg = PgStore(conn)
        self.pg.node_state("fs1", "http://127.0.0.1:1")
        self.after = 0
        cfg = self.config.api
        self.app = api.assemble(cfg, "central", PgReadSide(dsn, cfg.statement_timeout, heavy_slots=cfg.heavy_queries),
                                health=lambda: self.health, registry=CollectorRegistry(), **self.options)
        self.web = webtest.TestApp(self.app)

    def sync(self) -> None:
        """Pull what the node's feed holds after the last pull into PostgreSQL."""
        from eslcdr.collector.feed import parse_record
        from eslcdr.query.params import FeedQuery
        from eslcdr.query.sql import feed_sql

        items, previous = [], self.after
        for text, _seq in self.writer.execute(*feed_sql(FeedQuery(self.after, None))).fetchall():
            items.append(parse_record(text.encode(), previous))
            previous = items[-1].seq
        if items:
            self.after = self.pg.store_batch("fs1", "db-1", self.after, items).after

    def insert(self, records: list[dict]) -> list[dict]:
        super().insert(records)
        self.sync()
        return records

    def record_keys(self, rec: dict) -> list[str]:
        return record_keys(rec) + ["source"]

    def row_keys(self, columns: list[str]) -> list[str]:
        return list(columns) + ["source"]

    def get(self, url: str, headers: dict | None = None, status: int | str = 200, **kwargs):
        self.sync()
        return super().get(url, headers, status, **kwargs)

    def close(self) -> None:
        super().close()
        self.node_app.close()
        self.pg.close()


def emptied(dsn: str) -> str:
    """``dsn``, its collector tables emptied (the schema and its partitions kept):
    a fresh start that costs less than a new database."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        names = [name for name, in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace"
            " WHERE s.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
            " AND c.relname NOT IN ('eslcdr_schema', 'collector_partitions')")]
        if names:
            conn.execute("TRUNCATE %s" % ", ".join('"%s"' % name for name in names))
    return dsn


@contextlib.contextmanager
def opened_env(server: str, root: Path, request, dsn: str | None = None, **settings) -> Iterator[Env]:
    """An ``Env`` (``server`` "node") or a ``CentralEnv`` ("central") on a fresh
    database of the session's PostgreSQL (or on ``dsn``'s, emptied), closed after;
    ``settings`` as ``Env``'s."""
    with contextlib.ExitStack() as stack:
        if server == "central":
            dsn = emptied(dsn) if dsn else stack.enter_context(fresh_database(request.getfixturevalue("pg_server")))
            environment = CentralEnv(root, dsn, **settings)
        else:
            environment = Env(root, **settings)
        try:
            yield environment
        finally:
            environment.close()


@pytest.fixture
def env(request, tmp_path):
    """A node's API (SQLite); with ``CENTRAL_TOO``, also the collector's (PostgreSQL)."""
    with opened_env(getattr(request, "param", "node"), tmp_path, request) as environment:
        yield environment


SERVER_PARAMS = ["node", pytest.param("central", marks=pytest.mark.postgres)]
# A test run against a node and against the central API over the same rows.
CENTRAL_TOO = pytest.mark.parametrize("env", SERVER_PARAMS, indirect=True)
# The same for a test that opens its own ``opened_env(server, ...)``.
BOTH_SERVERS = pytest.mark.parametrize("server", SERVER_PARAMS)


def ids(response) -> list[str]:
    return [row["id"] for row in response.json["data"]]


def assert_error(response, status: int, message: str | None = None) -> dict:
    """Kazoo's error envelope, never HTML."""
    assert response.status_int == status
    assert response.content_type == "application/json"
    body = response.json
    assert body["status"] == "error" and body["error"] == str(status)
    # data is an object; Kazoo's one list is crossbar_util:response_bad_identifier/2's [id].
    assert isinstance(body["data"], dict) or (body["message"] == "bad identifier" and isinstance(body["data"], list))
    assert isinstance(body["message"], str)
    assert {"request_id", "node", "timestamp", "version"} <= set(body)
    if message is not None:
        assert body["message"] == message
    return body


# ------------------------------------------------------------------ shapes


@CENTRAL_TOO
def test_list_envelope_and_row_shape(env):
    records = env.insert([leg(NOW_G - 100 * i, caller_id_name=HARD_NAMES[i % len(HARD_NAMES)])
                          for i in range(5)])
    response = env.get("/v2/accounts/%s/cdrs" % ACC_A, headers={**A, "X-Request-ID": "req-123"})
    body = response.json
    assert response.content_type == "application/json"
    assert response.headers["X-Request-ID"] == "req-123"
    assert body["status"] == "success" and body["request_id"] == "req-123"
    assert body["page_size"] == 5 and "next_start_key" not in body and isinstance(body["start_key"], str)
    assert body["timestamp"] == "2026-01-01T00:00:00Z" and body["version"] and "node" in body
    assert ids(response) == [r["id"] for r in records]  # newest first
    row = body["data"][0]
    assert list(row) == env.row_keys(kazoo_shapes.LIST_COLUMNS)
    assert all(r.get("source", "fs1") == "fs1" for r in body["data"])  # centrally, the [node:NAME] it came from
    rec = records[0]
    start = rec["timestamp"] - rec["duration_seconds"]
    assert row["timestamp"] == str(start) and row["unix_timestamp"] == str(start - G)
    assert row["direction"] == "inbound" and row["dialed_number"] == "2000"
    assert row["calling_from"] == "+15551230001" and row["caller_id_name"] == rec["caller_id_name"]
    assert row["bridge_id"] == rec["call_id"] and row["rate"] == "0.01" and row["rate_name"] == "US-48"
    assert row["cost"] == "100" and row["media_recordings"] == [] and row["owner_id"] == "user-1"
    assert row["datetime"] == time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(start - G))
    assert row["iso_8601"] == time.strftime("%Y-%m-%d", time.gmtime(start - G))
    assert row["rfc_1036"] == time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(start - G))
    assert row["iso_8601_combined"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start - G))
    # A generated request id when the client sends none (or a bad one).
    other = env.get("/v2/accounts/%s/cdrs" % ACC_A, headers={**A, "X-Request-ID": "bad id\x7f"})
    assert other.json["request_id"] == other.headers["X-Request-ID"] != "bad id\x7f"


@CENTRAL_TOO
def test_interaction_listing(env):
    first_start = NOW_G - 1000
    iid = interaction_id(first_start)
    a_leg = leg(NOW_G - 500, interaction=iid, created_g=first_start, owner="user-1")
    b_leg = leg(NOW_G - 510, interaction=iid, created_g=first_start + 3, owner="user-2",
                call_direction="outbound", other_leg_call_id=a_leg["call_id"], authorizing_id=None)
    lone = leg(NOW_G - 100, owner="user-2", authorizing_id=None)
    env.insert([b_leg, a_leg, lone])  # the A-leg's CDR arrives last
    body = env.get("/v2/accounts/%s/cdrs/interaction" % ACC_A).json
    assert [r["call_id"] for r in body["data"]] == [lone["call_id"], a_leg["call_id"]]
    assert list(body["data"][0]) == env.row_keys(kazoo_shapes.INTERACTION_COLUMNS)
    assert [r["inception_direction"] for r in body["data"]] == ["termination", "origination"]
    user = env.get("/v2/accounts/%s/users/user-2/cdrs/interaction" % ACC_A).json["data"]
    assert [(r["call_id"], r["inception_direction"]) for r in user] == [
        (lone["call_id"], "origination"), (b_leg["call_id"], "termination")]


@CENTRAL_TOO
def test_user_listing_is_the_users_legs(env):
    mine = env.insert([leg(NOW_G - 10, owner="user-7"), leg(NOW_G - 20, owner="user-7")])
    env.insert([leg(NOW_G - 15, owner="user-8"), leg(NOW_G - 5, owner="user-7", account=ACC_B)])
    response = env.get("/v2/accounts/%s/users/user-7/cdrs" % ACC_A)
    assert ids(response) == [r["id"] for r in mine]


@CENTRAL_TOO
def test_cdr_detail_has_every_stored_field(env):
    rec = env.insert([leg(NOW_G - 10, fax_success=True, fax_result_code=0, caller_id_name=HARD_NAMES[0])])[0]
    env.insert([leg(NOW_G - 20, fax_success=False)])
    data = env.get("/v2/accounts/%s/cdrs/%s" % (ACC_A, rec["id"])).json["data"]
    # Every field that has a value, in column order; no nulls (Kazoo leaves them out).
    assert list(data) == env.record_keys(rec)
    assert data.get("source", "fs1") == "fs1"  # centrally, the [node:NAME] it was pulled from
    for name in COLUMN_NAMES:
        if name != "seq" and rec.get(name) is not None:
            assert data[name] == rec.get(name), name
    assert data["channel_created_time"] == rec["created_us"]
    assert data["fax_success"] is True and isinstance(data["custom_channel_vars"], dict)
    # The bare call id works too; other accounts' CDRs do not exist.
    assert env.get("/v2/accounts/%s/cdrs/%s" % (ACC_A, rec["call_id"])).json["data"]["id"] == rec["id"]
    # As Kazoo (cb_cdrs:load_cdr/2): a CDR id (YYYYMM-...) not in the path's account is
    # crossbar_doc's not_found -- bad_identifier, the id as cause; any other id cb_cdrs' message.
    for account, headers, cdr_id in ((ACC_B, B, rec["id"]), (ACC_A, A, "202601-nope")):
        body = assert_error(env.get("/v2/accounts/%s/cdrs/%s" % (account, cdr_id), headers=headers, status=404),
                            404, "bad_identifier")
        assert body["data"] == {"cause": cdr_id, "message": "bad identifier"}
    body = assert_error(env.get("/v2/accounts/%s/cdrs/nope" % ACC_A, status=404), 404,
                        "could not find cdr with supplied id")
    assert body["data"] == {}


@CENTRAL_TOO
def test_legs_by_interaction_or_cdr_id(env):
    iid = interaction_id(NOW_G - 900)
    legs = env.insert([leg(NOW_G - 100, interaction=iid, created_g=NOW_G - 900),
                       leg(NOW_G - 110, interaction=iid, created_g=NOW_G - 897, call_direction="outbound")])
    foreign = env.insert([leg(NOW_G - 105, interaction=iid, created_g=NOW_G - 898, account=ACC_B)])[0]
    env.insert([leg(NOW_G - 50)])
    for key in (iid, legs[1]["id"], legs[0]["call_id"]):
        body = env.get("/v2/accounts/%s/cdrs/legs/%s" % (ACC_A, key)).json
        assert [r["call_id"] for r in body["data"]] == [legs[0]["call_id"], legs[1]["call_id"]]
        assert body["page_size"] == 2 and list(body["data"][0]) == env.record_keys(legs[0])
    # Account B sees only its own leg of the shared interaction, and nothing by A's ids.
    assert [r["call_id"] for r in env.get("/v2/accounts/%s/cdrs/legs/%s" % (ACC_B, iid), headers=B)
            .json["data"]] == [foreign["call_id"]]
    assert_error(env.get("/v2/accounts/%s/cdrs/legs/%s" % (ACC_B, legs[0]["id"]), headers=B, status=404), 404,
                 "could not find legs for supplied id")
    # Under a user's path too, by id alone, whoever owns the legs (cb_cdrs:validate/2,3, as Kazoo).
    for key in (iid, legs[1]["id"]):
        body = env.get("/v2/accounts/%s/users/someone-else/cdrs/legs/%s" % (ACC_A, key)).json
        assert [r["call_id"] for r in body["data"]] == [legs[0]["call_id"], legs[1]["call_id"]]
    one = env.get("/v2/accounts/%s/users/someone-else/cdrs/%s" % (ACC_A, legs[1]["id"])).json
    assert one["data"]["call_id"] == legs[1]["call_id"] and one["revision"]
    assert_error(env.get("/v2/accounts/%s/users/u1/cdrs/%s" % (ACC_B, legs[0]["id"]), headers=B, status=404),
                 404, "bad_identifier")
    assert_error(env.get("/v2/accounts/%s/users/u1/cdrs/%s" % (ACC_A, legs[0]["id"]), headers=B, status=403),
                 403, "forbidden")
    # No legs, as Kazoo's cb_cdrs:load_legs/2 answers by the id's shape: a Kazoo interaction
    # id's is an empty list (a view with no rows), any other id's 404 bad identifier, [id].
    for account, headers in ((ACC_A, A), (ACC_B, B)):
        body = env.get("/v2/accounts/%s/cdrs/legs/%s" % (account, interaction_id(NOW_G - 5000)),
                       headers=headers).json
        assert body["status"] == "success" and body["data"] == [] and body["page_size"] == 0
    empty_csv = env.get("/v2/accounts/%s/cdrs/legs/%s?accept=csv" % (ACC_A, interaction_id(NOW_G - 5000)))
    assert empty_csv.content_type == "text/csv" and empty_csv.body.count(b"\r\n") == 1  # the header row
    for other in ("nope", str(uuid.uuid4())):
        response = env.get("/v2/accounts/%s/cdrs/legs/%s" % (ACC_A, other), status=404)
        body = response.json
        assert (body["status"], body["error"], body["message"], body["data"]) == (
            "error", "404", "bad identifier", [other])


# ------------------------------------------------------- time and paging


def record_keys(rec: dict) -> list[str]:
    """The keys of a full record's JSON: the fields with a value, in order."""
    return [n for n in kazoo_shapes.RECORD_FIELDS
            if n in ("seq", "channel_created_time") or rec.get(n) is not None]


@CENTRAL_TOO
def test_time_range_defaults_bounds_and_order(env):
    inside = env.insert([leg(NOW_G), leg(NOW_G - 2682000), leg(NOW_G - 1000)])
    env.insert([leg(NOW_G - 2682001), leg(NOW_G + 1)])  # just outside the default range
    assert ids(env.get("/v2/accounts/%s/cdrs" % ACC_A)) == [inside[0]["id"], inside[2]["id"], inside[1]["id"]]
    asc = env.get("/v2/accounts/%s/cdrs?ascending=true" % ACC_A)
    assert ids(asc) == [inside[1]["id"], inside[2]["id"], inside[0]["id"]]
    # crossbar_view:direction/2: descending=true wins over ascending=true; descending=false changes nothing.
    newest_first = ids(env.get("/v2/accounts/%s/cdrs" % ACC_A))
    assert ids(env.get("/v2/accounts/%s/cdrs?ascending=true&descending=true" % ACC_A)) == newest_first
    assert ids(env.get("/v2/accounts/%s/cdrs?descending=false" % ACC_A)) == newest_first
    assert ids(env.get("/v2/accounts/%s/cdrs/interaction?ascending=true&descending=true" % ACC_A)) == ids(
        env.get("/v2/accounts/%s/cdrs/interaction" % ACC_A))
    exact = env.get("/v2/accounts/%s/cdrs?created_from=%d&created_to=%d" % (ACC_A, NOW_G - 1000, NOW_G - 1000))
    assert ids(exact) == [inside[2]["id"]]  # both bounds inclusive


@CENTRAL_TOO
def test_pages_chain_with_next_start_key(env):
    records = env.insert([leg(NOW_G - 10 * (i // 3)) for i in range(23)])  # ties on timestamp
    seen, url = [], "/v2/accounts/%s/cdrs?page_size=5" % ACC_A
    while True:
        body = env.get(url).json
        seen += [r["id"] for r in body["data"]]
        assert body["page_size"] == len(body["data"]) <= 5
        if "next_start_key" not in body:
            break
        url = "/v2/accounts/%s/cdrs?page_size=5&start_key=%s" % (ACC_A, body["next_start_key"])
    by_position = sorted(records, key=lambda r: r["timestamp"], reverse=True)
    assert len(seen) == len(set(seen)) == 23
    assert [r["timestamp"] for r in by_position] == [env_ts(env, i) for i in seen]


def env_ts(env: Env, cdr_id: str) -> int:
    return env.writer.execute("SELECT timestamp FROM cdrs WHERE id = ?", (cdr_id,)).fetchone()[0]


@CENTRAL_TOO
def test_paginate_false_streams_everything(env):
    env.insert([leg(NOW_G - i) for i in range(130)])
    body = env.get("/v2/accounts/%s/cdrs?paginate=false&page_size=3" % ACC_A).json
    assert len(body["data"]) == 130
    # Kazoo's api_util:encode_start_keys/2 drops the paging keys when paginate=false.
    assert not {"page_size", "start_key", "next_start_key"} & set(body)
    assert body["status"] == "success" and body["auth_token"] == "token-a"


@CENTRAL_TOO
def test_utc_offset_shifts_only_datetime(env):
    rec = env.insert([leg(NOW_G - 60)])[0]
    start = rec["timestamp"] - rec["duration_seconds"] - G
    plain = env.get("/v2/accounts/%s/cdrs" % ACC_A).json["data"][0]
    shifted = env.get("/v2/accounts/%s/cdrs?utc_offset=-18000" % ACC_A).json["data"][0]
    assert shifted["datetime"] == time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(start - 18000))
    assert {k: v for k, v in shifted.items() if k != "datetime"} == {
        k: v for k, v in plain.items() if k != "datetime"}


@CENTRAL_TOO
def test_filters_over_http(env):
    a = env.insert([leg(NOW_G - 10, hangup_cause="USER_BUSY",
                        custom_channel_vars={"owner_id": "u1", "media_recordings": ["r1.mp3", "r2.mp3"]})])[0]
    b = env.insert([leg(NOW_G - 20, custom_channel_vars={"owner_id": "u2"}, digits_dialed="42")])[0]
    base = "/v2/accounts/%s/cdrs?" % ACC_A
    assert ids(env.get(base + "filter_hangup_cause=USER_BUSY")) == [a["id"]]
    assert ids(env.get(base + "filter_not_hangup_cause=USER_BUSY")) == [b["id"]]
    assert ids(env.get(base + "filter_custom_channel_vars.owner_id=u2")) == [b["id"]]
    assert ids(env.get(base + "has_key=custom_channel_vars.media_recordings")) == [a["id"]]
    assert ids(env.get(base + "key_missing=custom_channel_vars.media_recordings")) == [b["id"]]
    assert ids(env.get(base + "has_value=digits_dialed")) == [b["id"]]
    assert ids(env.get(base + "value_missing=digits_dialed")) == [a["id"]]
    assert ids(env.get(base + "filter_call_id=%s" % a["id"])) == [a["id"]]  # a CDR id works as call id
    assert env.get(base + "filter_hangup_cause=USER_BUSY").json["data"][0]["media_recordings"] == [
        "r1.mp3", "r2.mp3"]


# ------------------------------------------------------------------- CSV


def parse_csv(response) -> list[list[str]]:
    assert response.content_type == "text/csv"
    return list(csv.reader(io.StringIO(response.body.decode("utf-8"), newline="")))


def cell(value) -> str:
    """How a JSON value appears in our CSV."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    text = str(value)
    if re.match(r"[=@\t\r]|[+-](?![0-9]+(\.[0-9]+)?$)", text):
        return "'" + text  # neutralised for spreadsheets
    return text


@pytest.mark.parametrize("path, columns, kind", [
    ("/cdrs", kazoo_shapes.LIST_COLUMNS, "list"),
    ("/cdrs/interaction", kazoo_shapes.INTERACTION_COLUMNS, "list"),
    ("/users/user-1/cdrs", kazoo_shapes.LIST_COLUMNS, "list"),
])
@CENTRAL_TOO
def test_csv_parses_back_to_the_json_values(env, path, columns, kind):
    records = [leg(NOW_G - 7 * i, caller_id_name=name, callee_id_name=name[::-1], hangup_cause=name or None,
                   custom_channel_vars={"media_recordings": [name, "x,y"], "rate_name": name,
                                        "account_billing": "per_minute", "rate": "250"})
               for i, name in enumerate(HARD_NAMES * 3)]
    env.insert(records)
    url = "/v2/accounts/%s%s" % (ACC_A, path)
    as_json = env.get(url + "?paginate=false").json["data"]
    for response in (env.get(url + "?accept=csv"), env.get(url, headers={**A, "Accept": "text/csv"})):
        table = parse_csv(response)
        assert table[0] == ["ID"] + list(columns[1:])  # Kazoo's CSV writer names id "ID"
        assert len(table) == 1 + len(as_json)
        for row, expected in zip(table[1:], as_json):
            assert row == [cell(expected[name]) for name in columns]
    raw = env.get(url + "?accept=csv").body
    assert raw.count(b"\r\n") >= len(as_json) + 1 and raw.startswith(b'"ID",')


@CENTRAL_TOO
def test_csv_of_detail_and_legs(env):
    iid = interaction_id(NOW_G - 300)
    legs = env.insert([leg(NOW_G - 100, interaction=iid, created_g=NOW_G - 300, caller_id_name=HARD_NAMES[1],
                           fax_success=True),
                       leg(NOW_G - 110, interaction=iid, created_g=NOW_G - 299, caller_id_name=HARD_NAMES[2])])
    for url in ("/v2/accounts/%s/cdrs/%s" % (ACC_A, legs[0]["id"]), "/v2/accounts/%s/cdrs/legs/%s" % (ACC_A, iid)):
        json_rows = env.get(url).json["data"]
        json_rows = json_rows if isinstance(json_rows, list) else [json_rows]
        table = parse_csv(env.get(url + "?accept=csv"))
        assert table[0] == kazoo_shapes.csv_header(kazoo_shapes.RECORD_CSV_FIELDS)
        assert table[0][:3] == ["ID", "seq", "call_id"] and "Account ID" in table[0]
        assert [row for row in table[1:]] == [[cell(r.get(name)) for name in kazoo_shapes.RECORD_CSV_FIELDS]
                                             for r in json_rows]


def test_csv_file_name(env):
    env.insert([leg(NOW_G - 1)])
    url = "/v2/accounts/%s/cdrs?accept=csv" % ACC_A
    # Kazoo's default name of a CSV listing (api_util's ?DEFAULT_CSV_FILE_NAME), interactions too.
    assert env.get(url).headers["Content-Disposition"] == 'attachment; filename="result.csv"'
    assert env.get("/v2/accounts/%s/cdrs/interaction?accept=csv" % ACC_A).headers["Content-Disposition"] == (
        'attachment; filename="result.csv"')
    assert env.get(url + "&file_name=march.csv").headers["Content-Disposition"] == (
        'attachment; filename="march.csv"')
    header = env.get(url, headers={**A, "X-File-Name": "../../etc/x\";y.csv"}).headers["Content-Disposition"]
    assert header == 'attachment; filename="x__y.csv"'
    # Both given: the header wins, as Kazoo's api_util:csv_file_name/2 reads it first.
    both = env.get(url + "&file_name=query.csv", headers={**A, "X-File-Name": "header.csv"})
    assert both.headers["Content-Disposition"] == 'attachment; filename="header.csv"'
    unicode_name = env.get(url + "&file_name=%C3%A6r%C3%B8.csv").headers["Content-Disposition"]
    # RFC 6266: an ASCII fallback (each other character an underscore), then the UTF-8 name.
    assert unicode_name == "attachment; filename=\"_r_.csv\"; filename*=UTF-8''%C3%A6r%C3%B8.csv"


# ---------------------------------------------------------- auth, tenancy


@CENTRAL_TOO
def test_tokens_and_scopes(env):
    rec = env.insert([leg(NOW_G - 5)])[0]
    url = "/v2/accounts/%s/cdrs" % ACC_A
    assert_error(env.get(url, headers={}, status=401), 401, "invalid_credentials")
    assert_error(env.get(url, headers={"X-Auth-Token": "nope"}, status=401), 401, "invalid_credentials")
    assert_error(env.get(url, headers={"X-Auth-Token": ""}, status=401), 401)
    assert_error(env.get(url, headers=B, status=403), 403, "forbidden")
    assert ids(env.get(url + "?auth_token=token-a", headers={})) == [rec["id"]]
    assert ids(env.get(url, headers={"Authorization": "Bearer token-a"})) == [rec["id"]]
    assert ids(env.get(url, headers=COLLECTOR)) == [rec["id"]]  # the collector reads any account
    # /v2/cdrs is the token's own account: a '*' token has none, and the 404 says what to ask instead.
    own = assert_error(env.get("/v2/cdrs", headers=COLLECTOR, status=404), 404, "faulty_request")
    assert "/v2/accounts/{ACCOUNT_ID}/cdrs" in own["data"]["message"], own
    # Account B's own listing, filtered on A's data, shows nothing of A.
    assert ids(env.get("/v2/accounts/%s/cdrs?filter_account_id=%s" % (ACC_B, ACC_A), headers=B)) == []
    assert ids(env.get("/v2/accounts/%s/cdrs?filter_call_id=%s" % (ACC_B, rec["call_id"]), headers=B)) == []


# ----------------------------------------------------------------- errors

BAD_REQUESTS = [
    # (url suffix after /v2/accounts/ACC_A, status, message)
    ("/cdrs?created_from=abc", 400, "validation error"),
    ("/cdrs?created_to=12.5", 400, "validation error"),
    ("/cdrs?created_from=%d&created_to=%d" % (NOW_G, NOW_G - 1), 400, "validation error"),
    ("/cdrs?created_from=%d&created_to=%d" % (NOW_G - 2682001, NOW_G), 400, "validation error"),
    ("/cdrs?page_size=0", 400, "validation error"),
    ("/cdrs?page_size=-1", 400, "validation error"),
    ("/cdrs?page_size=100000000000000000000000", 400, "validation error"),
    ("/cdrs?page_size=fifty", 400, "validation error"),
    ("/cdrs?page_size=", 400, "validation error"),
    ("/cdrs?start_key=not-a-key", 400, "validation error"),
    ("/cdrs?start_key=W10", 400, "validation error"),
    ("/cdrs?filter_unknown_field=1", 400, "validation error"),
    ("/cdrs?has_key=nope", 400, "validation error"),
    ("/cdrs?filter_custom_channel_vars.a%22b=1", 400, "validation error"),
    ("/cdrs?utc_offset=east", 400, "validation error"),
    ("/cdrs?ascending=maybe", 400, "validation error"),
    ("/cdrs?descending=maybe", 400, "validation error"),
    ("/cdrs/interaction?created_from=1&created_to=0", 400, "validation error"),
    ("/cdrs/legs/", 404, "could not find cdr with supplied id"),  # as Kazoo: "legs" taken as a CDR id
    ("/cdrs/a/b/c", 404, "faulty_request"),
    ("/users/u1/cdrs/something", 404, "could not find cdr with supplied id"),  # a CDR id, as Kazoo
    ("/users/u1/cdrs/something/else", 404, "faulty_request"),
    ("/devices", 404, "faulty_request"),
]


@pytest.mark.parametrize("suffix, status, message", BAD_REQUESTS)
@CENTRAL_TOO
def test_bad_requests_get_kazoo_errors(env, suffix, status, message):
    response = env.get("/v2/accounts/%s%s" % (ACC_A, suffix), status="*")
    body = assert_error(response, status, message)
    if status == 400:
        (param, detail), = body["data"].items()
        (code, info), = detail.items()
        assert info["message"]


# A percent-escape that is not UTF-8 (Latin-1's é, a lone lead byte, 0xFF).
NOT_UTF8 = ["caf%E9", "%C3", "%FF%FE"]


@pytest.mark.parametrize("param", ["created_from", "page_size", "utc_offset", "ascending", "start_key"])
@pytest.mark.parametrize("value", NOT_UTF8)
def test_a_typed_parameter_that_is_not_utf8_is_a_validation_error_naming_it(env, param, value):
    env.insert([leg(NOW_G - 1)])
    body = assert_error(env.get("/v2/accounts/%s/cdrs?%s=%s" % (ACC_A, param, value), status=400), 400,
                        "validation error")
    assert list(body["data"]) == [param]


@pytest.mark.parametrize("param", ["filter_caller_id_name", "filter_not_caller_id_name",
                                   "filter_custom_channel_vars.rate_name"])
def test_a_text_parameter_that_is_not_utf8_is_a_validation_error_not_an_empty_answer(env, param):
    env.insert([leg(NOW_G - 1, caller_id_name="caf\xe9")])
    response = env.get("/v2/accounts/%s/cdrs?%s=caf%%E9" % (ACC_A, param), status="*")
    body = assert_error(response, 400, "validation error")
    assert list(body["data"]) == [param]


@CENTRAL_TOO
def test_date_range_error_is_kazoos(env):
    body = env.get("/v2/accounts/%s/cdrs?created_from=%d&created_to=%d" % (ACC_A, NOW_G - 2682001, NOW_G),
                   status=400).json
    assert body["data"] == {"created_from": {"date_range": {
        "message": "created_to %d is more than 2682000 seconds from created_from %d" % (NOW_G, NOW_G - 2682001),
        "cause": NOW_G}}}
    body = env.get("/v2/accounts/%s/cdrs?created_from=%d&created_to=%d" % (ACC_A, NOW_G, NOW_G - 5),
                   status=400).json
    assert body["data"]["created_from"]["date_range"]["message"] == (
        "created_to %d is prior to created_from %d" % (NOW_G - 5, NOW_G))


@pytest.mark.parametrize("method", ["post", "put", "delete", "patch"])
@CENTRAL_TOO
def test_other_verbs_are_405(env, method):
    response = getattr(env.web, method)("/v2/accounts/%s/cdrs" % ACC_A, status="*", headers=A)
    assert_error(response, 405, "invalid_method")
    assert "GET" in response.headers["Allow"]
    # Unknown paths stay 404 whatever the verb.
    assert_error(getattr(env.web, method)("/v3/nothing", status="*"), 404)


@CENTRAL_TOO
def test_trailing_slash_and_root(env):
    env.insert([leg(NOW_G - 1)])
    assert len(ids(env.get("/v2/accounts/%s/cdrs/" % ACC_A))) == 1
    assert_error(env.get("/", status=404), 404, "faulty_request")


INJECTIONS = ["' OR '1'='1", "1; DROP TABLE cdrs; --", "\") OR 1=1 --", "%' UNION SELECT * FROM cdrs --",
              "$.x') --", "\x00", "\u202e\ufeff", "*"]


@pytest.mark.parametrize("text", INJECTIONS)
@CENTRAL_TOO
def test_sql_looking_input_everywhere(env, text):
    a = env.insert([leg(NOW_G - 1)])[0]
    env.insert([leg(NOW_G - 2, account=ACC_B)])
    q = __import__("urllib.parse").parse.quote(text, safe="")
    urls = [
        "/v2/accounts/%s/cdrs" % q,
        "/v2/accounts/%s/cdrs/%s" % (ACC_A, q),
        "/v2/accounts/%s/cdrs/legs/%s" % (ACC_A, q),
        "/v2/accounts/%s/users/%s/cdrs" % (ACC_A, q),
        "/v2/accounts/%s/users/%s/cdrs/interaction" % (ACC_A, q),
    ] + ["/v2/accounts/%s/cdrs?%s=%s" % (ACC_A, name, q) for name in (
        "created_from", "created_to", "page_size", "start_key", "utc_offset", "ascending", "paginate",
        "filter_caller_id_name", "filter_not_call_id", "filter_custom_channel_vars.owner_id",
        "has_key", "key_missing", "has_value", "value_missing", "accept", "file_name", "auth_token")] + [
        "/v2/accounts/%s/cdrs?filter_%s=1" % (ACC_A, q),
        "/v2/accounts/%s/cdrs/interaction?start_key=%s" % (ACC_A, q),
        "/v2/feed/cdrs?after=%s" % q,
        "/v2/feed/cdrs?limit=%s" % q,
    ]
    for url in urls:
        for headers in (A, COLLECTOR):
            response = env.web.get(url, headers=headers, status="*")
            assert response.status_int in (200, 400, 403, 404), (url, response.status)
            if response.status_int != 200:
                assert_error(response, response.status_int)
            elif response.content_type == "application/json" and isinstance(response.json.get("data"), list):
                for row in response.json["data"]:
                    assert row.get("id") in (None, a["id"]) or headers is COLLECTOR
    count = sqlite3.connect(env.path).execute("SELECT count(*) FROM cdrs").fetchone()[0]
    assert count == 2


@CENTRAL_TOO
def test_very_long_urls(env):
    long_value = "x" * 6000
    body = assert_error(env.get("/v2/accounts/%s/cdrs?filter_caller_id_name=%s" % (ACC_A, long_value),
                                status=400), 400)
    assert "filter_caller_id_name" in body["data"]
    assert_error(env.get("/v2/accounts/%s/cdrs" % long_value, status=403), 403)
    assert env.get("/v2/accounts/%s/cdrs" % long_value, headers=COLLECTOR).json["data"] == []
    many = "&".join("has_key=id" for _ in range(300))
    assert_error(env.get("/v2/accounts/%s/cdrs?%s" % (ACC_A, many), status=400), 400)


def test_statement_timeout_answers_503(env):
    env.insert([leg(NOW_G - i, caller_id_name="n%d" % i) for i in range(3000)])
    env.app.pool.statement_timeout = 1e-9  # read by the connections it opens from now on
    body = assert_error(env.get("/v2/accounts/%s/cdrs?filter_caller_id_name=zzz" % ACC_A, status=503), 503)
    assert body["message"] == "datastore timeout"
    for reader in env.app.pool._idle:
        reader.timeout = 10
    assert env.get("/v2/accounts/%s/cdrs?filter_caller_id_name=zzz" % ACC_A).json["data"] == []


def test_missing_database_is_503(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("token-a %s\n" % ACC_A)
    config = from_mapping({"store": {"path": str(tmp_path / "absent.db")}, "api": {"tokens_file": str(tokens)}})
    web = webtest.TestApp(api.create_app(config, runner=InlineRunner()))
    assert_error(web.get("/v2/accounts/%s/cdrs" % ACC_A, headers=A, status=503), 503)


def test_unexpected_exception_is_a_json_500(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("")

    def broken_health():
        raise RuntimeError("boom")

    config = from_mapping({"store": {"path": str(tmp_path / "x.db")}, "api": {"tokens_file": str(tokens)}})
    web = webtest.TestApp(api.create_app(config, health=broken_health, runner=InlineRunner()))
    body = assert_error(web.get("/health", status=500, expect_errors=True), 500, "unspecified_fault")
    assert "boom" not in json.dumps(body)


# ------------------------------------------------------- collector feed


def test_feed_pages_in_insertion_order(env):
    first = env.insert([leg(NOW_G - i, account=[ACC_A, ACC_B][i % 2]) for i in range(7)])
    body = env.get("/v2/feed/cdrs?limit=3", headers=COLLECTOR).json
    assert body["status"] == "success" and [r["call_id"] for r in body["data"]] == [r["call_id"] for r in first[:3]]
    assert body["next_after"] == body["data"][-1]["seq"]
    record = body["data"][0]
    assert list(record) == record_keys(first[0])
    assert record["custom_channel_vars"] == first[0]["custom_channel_vars"] and record["local_sdp"] == first[0][
        "local_sdp"]
    rest = env.get("/v2/feed/cdrs?after=%d" % body["next_after"], headers=COLLECTOR).json
    assert [r["call_id"] for r in rest["data"]] == [r["call_id"] for r in first[3:]]
    empty = env.get("/v2/feed/cdrs?after=%d" % rest["next_after"], headers=COLLECTOR).json
    assert empty["data"] == [] and empty["next_after"] == rest["next_after"]


def test_feed_is_exactly_once_while_cdrs_arrive(env):
    inserted, pulled, after = [], [], 0
    for round_number in range(12):
        batch = [leg(NOW_G - round_number * 10 - i) for i in range(round_number % 4)]
        inserted += env.insert(batch)
        body = env.get("/v2/feed/cdrs?limit=2&after=%d" % after, headers=COLLECTOR).json
        pulled += [r["call_id"] for r in body["data"]]
        after = body["next_after"]
    while True:
        body = env.get("/v2/feed/cdrs?limit=5&after=%d" % after, headers=COLLECTOR).json
        if not body["data"]:
            break
        pulled += [r["call_id"] for r in body["data"]]
        after = body["next_after"]
    assert pulled == [r["call_id"] for r in inserted]


def test_feed_ndjson_and_scope(env):
    records = env.insert([leg(NOW_G - i) for i in range(1203)])
    response = env.get("/v2/feed/cdrs", headers={**COLLECTOR, "Accept": "application/x-ndjson"})
    assert response.content_type == "application/x-ndjson"
    lines = response.body.decode().splitlines()
    assert [json.loads(line)["call_id"] for line in lines] == [r["call_id"] for r in records]
    limited = env.get("/v2/feed/cdrs?accept=ndjson&limit=10&after=5", headers=COLLECTOR).body.decode().splitlines()
    assert [json.loads(line)["seq"] for line in limited] == list(range(6, 16))
    assert_error(env.get("/v2/feed/cdrs", headers=A, status=403), 403, "forbidden")
    assert_error(env.get("/v2/feed/cdrs", headers={}, status=401), 401)
    assert_error(env.get("/v2/feed/cdrs?limit=0", headers=COLLECTOR, status=400), 400)


# ----------------------------------------------------- health and metrics


def test_health_and_metrics(env):
    health = env.web.get("/health")
    assert health.json == env.health
    env.health = {"status": "degraded", "nodes": {"fs1": {"state": "reconnecting"}}}
    assert env.web.get("/health", status=503).json["status"] == "degraded"
    env.insert([leg(NOW_G - 1)])
    env.get("/v2/accounts/%s/cdrs" % ACC_A)
    env.get("/v2/accounts/%s/cdrs?page_size=0" % ACC_A, status=400)
    env.web.get("/nowhere", status=404)
    text = env.web.get("/metrics").text
    assert 'eslcdr_api_requests_total{route="/v2/accounts/<account_id>/cdrs",status="200"} 1.0' in text
    assert 'eslcdr_api_requests_total{route="/v2/accounts/<account_id>/cdrs",status="400"} 1.0' in text
    assert 'eslcdr_api_requests_total{route="unmatched",status="404"} 1.0' in text
    assert "eslcdr_api_request_duration_seconds_bucket" in text
    assert 'eslcdr_api_rows_total{format="json",route="/v2/accounts/<account_id>/cdrs"} 1.0' in text
    assert "token-a" not in text


def test_a_degraded_health_answer_is_no_failed_request_in_the_log(env):
    # Monitoring polls /health all through a FreeSWITCH outage (esl_disconnected and
    # esl_connected say when it starts and ends): its 503 is the state asked for, a
    # debug line as a 200; before, each poll was an info line like a failed request.
    from structlog.testing import capture_logs

    from eslcdr.web import server as srv
    from tests.harness import wait_until
    from tests.unit.web.test_server import LIMITS, ask, status

    server = srv.make_server(env.app, "127.0.0.1", 0, limits=LIMITS)
    server.start()
    try:
        with capture_logs() as logs:
            for health in ({"status": "degraded", "nodes": {"fs1": {"state": "disconnected"}}}, env.health):
                env.health = health
                answer = ask(server.server_port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert status(answer) in (200, 503)
            env.health = None  # the health function fails: a 500, a failure
            assert status(ask(server.server_port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")) == 500
            wait_until(lambda: len([e for e in logs if e["event"] == "http_request"]) == 3, timeout=5)
    finally:
        server.stop(timeout=1)
    lines = [(e["log_level"], e["line"].split('" ')[1][:3]) for e in logs if e["event"] == "http_request"]
    assert lines == [("debug", "503"), ("debug", "200"), ("info", "500")]


# ------------------------------------------------- paging property (hypothesis)

# Few distinct timestamps, so pages often split a run of equal keys.
STAMPS = st.integers(min_value=0, max_value=12).map(lambda i: NOW_G - 1000 - 37 * i)


@BOTH_SERVERS
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    initial=st.lists(STAMPS, min_size=0, max_size=30),
    arrivals=st.lists(st.lists(STAMPS, max_size=4), max_size=12),
    page_size=st.integers(min_value=1, max_value=7),
    ascending=st.booleans(),
    interactions=st.booleans(),
)
@pytest.mark.slow
def test_paging_returns_every_row_exactly_once(server, request, initial, arrivals, page_size, ascending,
                                               interactions):
    # One database for the examples, emptied for each (a new one for each: 149 s instead of 21 s).
    dsn = request.getfixturevalue("pg_dsn") if server == "central" else None
    with tempfile.TemporaryDirectory() as tmp, opened_env(server, Path(tmp), request, dsn) as environment:
        run_paging(environment, initial, arrivals, page_size, ascending, interactions)


def new_legs(stamps: list[int], interactions: bool) -> list[dict]:
    if not interactions:
        return [leg(ts) for ts in stamps]
    # Legs of a few interactions; later legs may start earlier than the
    # interaction's first CDR (an A-leg written after its B-leg).
    records = []
    for ts in stamps:
        start = ts - 300
        iid = "%d-%08x" % (start, ts % 3)  # shared by every leg of the same start
        records.append(leg(ts, interaction=iid, created_g=start + (ts % 5) - 2))
    return records


def run_paging(env: Env, initial, arrivals, page_size, ascending, interactions) -> None:
    kind = "/cdrs/interaction" if interactions else "/cdrs"
    key = "interaction_id" if interactions else "id"
    existing = env.insert(new_legs(initial, interactions))
    expected = {r[key] for r in existing}
    base = "/v2/accounts/%s%s?page_size=%d&ascending=%s" % (ACC_A, kind, page_size, str(ascending).lower())
    url, seen, arrived = base, [], set()
    for page in range(1000):
        body = env.get(url).json
        rows = body["data"]
        assert len(rows) <= page_size
        seen += [row[key] for row in rows]
        if page < len(arrivals):
            arrived |= {r[key] for r in env.insert(new_legs(arrivals[page], interactions))}
        if "next_start_key" not in body:
            break
        url = base + "&start_key=" + body["next_start_key"]
    assert len(seen) == len(set(seen)), "a row was repeated"
    assert expected <= set(seen), "a row that existed before paging was skipped"
    assert set(seen) <= expected | arrived
    positions = position_of(env, seen, interactions)
    assert positions == sorted(positions, reverse=not ascending)


def position_of(env: Env, keys: list[str], interactions: bool) -> list:
    if interactions:
        return list(keys)
    rows = dict((r[0], (r[1], r[2])) for r in env.writer.execute(
        'SELECT id, "timestamp", seq FROM cdrs'))
    return [rows[k] for k in keys]


def export_peak(env: Env, query: str) -> tuple[int, int]:
    """(bytes sent, peak Python memory) of one streamed export."""
    import tracemalloc

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/v2/accounts/%s/cdrs" % ACC_A, "QUERY_STRING": query,
               "HTTP_X_AUTH_TOKEN": "token-a", "wsgi.input": io.BytesIO(), "wsgi.errors": io.StringIO(),
               "SERVER_NAME": "t", "SERVER_PORT": "80", "wsgi.url_scheme": "http"}
    tracemalloc.start()
    body = env.app(environ, lambda status, headers, exc_info=None: None)
    total = sum(len(chunk) for chunk in body)
    body.close()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return total, peak


@pytest.mark.slow
@pytest.mark.parametrize("query", ["accept=csv", "paginate=false"])
@CENTRAL_TOO
def test_streaming_export_memory_does_not_grow_with_rows(env, query):
    # Small: already two whole chunks of the collector's CSV export (2,500 rows: one
    # rendered while the next is read), the most an export of any size holds.
    env.insert([leg(NOW_G - i % 2000, caller_id_name="x" * 300) for i in range(5000)])
    export_peak(env, query)  # warm caches and imports
    small_total, small_peak = export_peak(env, query)
    env.insert([leg(NOW_G - i % 2000, caller_id_name="y" * 300) for i in range(10000)])
    total, peak = export_peak(env, query)
    assert total > 2.5 * small_total
    assert peak < 1.5 * small_peak  # a batch at a time, whatever the export's size
