"""The central read side answers exactly as a node's (issue 17.1, DESIGN 3.8), a property.

Hypothesis draws a few CDR records -- real legs (the FreeSWITCH captures of tests/data
through the leg tracker and the CDR builder), their fields varied where SQLite and
PostgreSQL differ: NULL ordering, text collation, ties on the hangup second, fax_success
(INTEGER / boolean), JSON text / jsonb (key order, unicode, numbers), empty strings /
NULL, odd caller names (CSV quoting, formula escaping), no owner, legs of one interaction
-- and stores them on one or two nodes (the node's writer, ``store.db.insert_records``)
and, through each node's feed, in the collector's PostgreSQL (``PgStore.store_batch``).
Then both APIs (webtest, in-process) answer the same random requests: listings (every
page, the pages' concatenation, ``paginate=false``, CSV), records, legs, stats, worst.
Allowed differences only (docs/api.md "What differs there"): the envelope's
``request_id``, ``timestamp``, ``node``; ``source`` (and the record's ``revision``);
``mos_avg``'s last digits.  With two nodes, each node's answer is the central one for
``filter_node`` of it, and the central listing is the rows of both, each once, by page;
an interaction on both nodes (one id, the propagated header) is answered as one node
holding both nodes' rows answers it (listings, legs but for seqs, stats).
"""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import tempfile
import urllib.parse
from functools import lru_cache
from pathlib import Path

import psycopg
import pytest
import webtest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from eslcdr.api import app as api
from eslcdr.collector import pgmigrations
from eslcdr.collector.feed import parse_record
from eslcdr.collector.pgstore import PgStore
from eslcdr.collector.readside import PgReadSide
from eslcdr.query.params import FeedQuery
from eslcdr.query.sql import feed_sql

from tests.conftest import capture_events
from tests.e2e.test_central_api import mos_rounded
from tests.unit.api.test_api import ACC_A, ACC_B, G, HARD_NAMES, NOW_G, Env, emptied
from tests.unit.ingest.test_cdr import run_capture

CAPTURES = ("S1_json", "S2_json", "S3_json", "S4_json", "S5_json", "S6_json")
NODES = ("fs-a", "fs-b")
TOKEN_HEADERS = {"X-Auth-Token": "token-collector"}
ENVELOPE_ONLY = ("request_id", "timestamp", "node")
OWNERS = (None, "user-1", "user-2", "", "üser 3")


@lru_cache(maxsize=1)
def real_legs() -> tuple[dict, ...]:
    """The captures' legs as the pipeline builds them (each call's legs in order)."""
    legs = []
    for name in CAPTURES:
        records, _ = run_capture(capture_events(name + ".esl"))
        legs += records.values()
    return tuple(legs)


# ------------------------------------------------------------------ the records
# Numbers: what jsonb gives back as the node wrote them.  Not a float Python writes
# with an exponent (1e+20: jsonb keeps 100000000000000000000, which a node writes for
# the integer) nor -0.0 (jsonb: 0.0): the central record cannot tell them apart.  A
# node's pipeline writes strings only there (ingest/cdr.py, _custom_fields).  No
# null inside: the feed's records carry none (DESIGN 3.4, "JSON documents carry no
# null values"), so a node's CSV record may show one the collector never got.
json_scalars = st.one_of(
    # Integers: orjson (the collector's feed) reads one outside 64 bits as a float.
    st.booleans(), st.integers(-2**63, 2**64 - 1), st.sampled_from([0.1 + 0.2, 1.5, 2.0, 123456.75, -3.25]),
    st.sampled_from(["", "x", "250", "per_minute", "渡辺", "\u00e6\t@SUM(A1)", "=1+2", 'a "q", b', "12:30"]))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["b", "aa", "c", "é", "Z"]), inner, max_size=3)),
    max_leaves=6)
VAR_KEYS = ["rate", "rate_name", "account_billing", "bridge_id", "call_priority", "owner_id", "é", "aa", "b"]
custom_vars = st.one_of(st.none(), st.dictionaries(st.sampled_from(VAR_KEYS), json_values, max_size=4))
texts = st.one_of(st.sampled_from(HARD_NAMES + [None, "Alice", "alice", "Bob", "Ökonom", "-1", "+1555", "@x"]),
                  st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=6))
# Interaction ids: Kazoo-shaped (a time prefix) and others, in byte order unlike any collation.
INTERACTIONS = ["%d-%s" % (NOW_G - 200, "0a1b"), "%d-%s" % (NOW_G - 200, "0A1c"), "%d-ff" % (NOW_G - 4000),
                "abc", "ABC", "Zed", "é-1", "a b", "00000000000-x", None]


@st.composite
def a_leg(draw, index: int) -> dict:
    record = copy.deepcopy(draw(st.sampled_from(real_legs())))
    record.pop("links", None)
    call_id = "call-%03d-%s" % (index, record["call_id"][:8])
    duration = draw(st.sampled_from([0, 1, 59, 60]))
    ts = NOW_G - draw(st.sampled_from([100, 100, 200, 3599, 3600, 7200, 86400 * 3]))
    created_g = ts - duration
    created_us = draw(st.sampled_from([(created_g - G) * 10**6, (created_g - G) * 10**6 + 1, None]))
    answered = draw(st.booleans())
    record.update(
        call_id=call_id, id="202512-" + call_id, timestamp=ts, duration_seconds=duration,
        hangup_us=(ts - G) * 10**6, created_us=created_us,
        answered_us=(created_us or 0) + 1000 if answered else draw(st.sampled_from([0, None])),
        billing_seconds=draw(st.sampled_from([0, 1, 30])) if answered else 0,
        account_id=draw(st.sampled_from([ACC_A, ACC_A, ACC_A, ACC_B])),
        owner_id=draw(st.sampled_from(OWNERS)),
        interaction_id=draw(st.sampled_from(INTERACTIONS)),
        caller_id_name=draw(texts), caller_id_number=draw(texts), callee_id_name=draw(texts),
        callee_id_number=draw(texts), authorizing_id=draw(texts), other_leg_call_id=draw(texts),
        **{"from": draw(texts), "to": draw(texts)},
        custom_channel_vars=draw(custom_vars),
        custom_sip_headers=draw(st.one_of(st.just({}), st.dictionaries(
            st.sampled_from(["x_account_id", "x_tenant", "x_é"]), texts.filter(lambda t: t is not None), max_size=2))),
        fax_success=draw(st.sampled_from([None, True, False, 1, 0])),
        hangup_cause=draw(st.sampled_from(["NORMAL_CLEARING", "USER_BUSY", "LOSE_RACE", "NO_ANSWER", "", None,
                                           "ORIGINATOR_CANCEL"])),
        call_direction=draw(st.sampled_from(["inbound", "outbound", "outbound", None])),
        channel_name=draw(st.sampled_from([record["channel_name"], "loopback/x-a", None])),
        audio_in_mos=draw(st.sampled_from([None, 4.5, 3.6, 3.59, 4.38, 1.0, 4.41])),
        pdd_ms=draw(st.sampled_from([None, 0, 120, 120, 3000])),
        no_rtp_in=draw(st.sampled_from([None, 0, 1])),
        sip_call_id=None,  # no crossing of nodes by Call-ID: not this test's (see the module's end)
    )
    return record


@st.composite
def fleet_records(draw) -> tuple[dict[str, list[dict]], bool]:
    """Records per node: all on one node, or split over two; with two, each
    interaction on one node, or (``shared``, True) an interaction id on both (the
    propagated header) -- then every leg has a creation time of its own (no tie
    for the first leg of an interaction across nodes: any of them, docs/api.md)."""
    count = draw(st.integers(1, 10))
    legs = [draw(a_leg(i)) for i in range(count)]
    nodes = NODES[:draw(st.integers(1, 2))]
    shared = len(nodes) > 1 and draw(st.booleans())
    per_node: dict[str, list[dict]] = {node: [] for node in nodes}
    for i, record in enumerate(legs):
        node = draw(st.sampled_from(nodes))
        if shared:
            record["created_us"] = (record["timestamp"] - record["duration_seconds"] - G) * 10**6 + i
        elif record["interaction_id"] is not None and len(nodes) > 1:
            record["interaction_id"] += "@" + node
        record["node"] = node
        per_node[node].append(record)
    # interaction_created_us: the earliest creation of the interaction's legs, as the writer keeps it.
    for records in per_node.values():
        first: dict[str, int | None] = {}
        for record in records:
            if record["interaction_id"] is not None and record["created_us"] is not None:
                known = first.get(record["interaction_id"])
                first[record["interaction_id"]] = min(known, record["created_us"]) if known else record["created_us"]
        for record in records:
            record["interaction_created_us"] = first.get(record["interaction_id"]) \
                if draw(st.booleans()) or record["interaction_id"] is None else None
    return per_node, shared


# ------------------------------------------------------------------ the requests
FILTER_FIELDS = ["caller_id_name", "caller_id_number", "owner_id", "fax_success", "billing_seconds", "hangup_cause",
                 "custom_channel_vars.rate", "custom_channel_vars.b", "custom_channel_vars.é",
                 "custom_channel_vars.aa.b", "audio_in_mos", "call_direction", "duration_seconds"]
FILTER_VALUES = ["", "Alice", "true", "false", "1", "0", "1.0", "30", "250", "x", "4.5", "inbound", "渡辺", "null",
                 # Numbers as SQLite's affinity may or may not read them.
                 " 1", "1 ", "+1", "1e0", "01", "0x1", "-0", "30.0", "3e1", ".5", "1.", "4.50", "inf", "nan",
                 "9223372036854775808", "TRUE", "True", "3.6"]


@st.composite
def a_filter(draw) -> list[tuple[str, str]]:
    field = draw(st.sampled_from(FILTER_FIELDS))
    op = draw(st.sampled_from(["filter_", "filter_not_", "has_key", "key_missing", "has_value", "value_missing"]))
    if op.startswith("filter"):
        return [(op + field, draw(st.one_of(st.sampled_from(FILTER_VALUES), texts.filter(lambda t: t is not None))))]
    return [(op, field)]


@st.composite
def a_listing(draw) -> tuple[str, list[tuple[str, str]]]:
    path = draw(st.sampled_from(["cdrs", "cdrs/interaction", "users/%s/cdrs", "users/%s/cdrs/interaction"]))
    if "%s" in path:
        path = path % urllib.parse.quote(draw(st.sampled_from(["user-1", "user-2", "üser 3"])))
    params = [("ascending", draw(st.sampled_from(["true", "false"])))]
    window = draw(st.sampled_from([None, (NOW_G - 3600, NOW_G - 100), (NOW_G - 200, NOW_G - 200)]))
    if window:
        params += [("created_from", str(window[0])), ("created_to", str(window[1]))]
    params += draw(st.one_of(st.just([]), a_filter()))
    params += draw(st.sampled_from([[], [("utc_offset", "-3600")], [("utc_offset", "19800")]]))
    params.append(draw(st.sampled_from([("page_size", "1"), ("page_size", "2"), ("page_size", "3"),
                                        ("paginate", "false"), ("accept", "csv")])))
    return path, params


# ------------------------------------------------------------------ the stores
class Fleet:
    """Each node's API over its SQLite file and the central API over PostgreSQL."""

    def __init__(self, root: Path, dsn: str, central: webtest.TestApp, per_node: dict[str, list[dict]]) -> None:
        self.nodes: dict[str, Env] = {}
        # Two nodes: one node holding the rows of both (each node's in its order).
        self.merged: Env | None = None
        if len(per_node) > 1:
            (root / "merged").mkdir()
            self.merged = Env(root / "merged")
            for records in per_node.values():
                self.merged.insert(records)
        store = PgStore(psycopg.connect(dsn))
        try:
            for name, records in per_node.items():
                (root / name).mkdir()
                node = self.nodes[name] = Env(root / name)
                # Two transactions: seqs in two batches, as a live writer gives them.
                half = len(records) // 2
                for batch in (records[:half], records[half:]):
                    if batch:
                        node.insert(batch)
                store.node_state(name, "http://127.0.0.1:1")
                items, previous = [], 0
                for text, _seq in node.writer.execute(*feed_sql(FeedQuery(0, None))).fetchall():
                    items.append(parse_record(text.encode(), previous))
                    previous = items[-1].seq
                store.store_batch(name, "db-" + name, 0, items)
        finally:
            store.close()
        self.central = central

    def close(self) -> None:
        for node in list(self.nodes.values()) + [self.merged] * (self.merged is not None):
            node.close()


def get(web: webtest.TestApp, url: str) -> webtest.TestResponse:
    return web.get(url, headers=TOKEN_HEADERS, expect_errors=True)


def comparable(response: webtest.TestResponse, central: bool) -> dict | list | bytes:
    """An answer without what may differ (docs/api.md): the envelope's request_id,
    timestamp, node; a central row's or record's ``source``, a record's ``revision``;
    ``mos_avg`` to 12 digits, JSON or CSV (the collector adds MOS values exactly, a
    node as floats)."""
    if response.content_type == "text/csv" and b'"mos_avg"' in response.body.split(b"\r\n", 1)[0]:
        rows = list(csv.reader(io.StringIO(response.body.decode("utf-8"), newline="")))
        at = rows[0].index("mos_avg")
        return [row[:at] + [float("%.12g" % float(row[at])) if row[at] else ""] + row[at + 1:] for row in rows[1:]] \
            + [rows[0]]  # type: ignore[return-value]
    if response.content_type != "application/json":
        return response.body
    doc = json.loads(response.body)
    for name in ENVELOPE_ONLY:
        doc.pop(name, None)
    data = doc.get("data")
    if central:
        for row in data if isinstance(data, list) else [data]:
            if isinstance(row, dict):
                row.pop("source", None)
    if isinstance(data, dict) and "call_id" in data:
        doc.pop("revision")  # the record's digest: with source centrally
    return mos_rounded(doc)


def without_seq(answer: dict | list | bytes) -> dict | list | bytes:
    """A record's ``seq`` left out (JSON and CSV): each node numbers its own rows."""
    if isinstance(answer, dict):
        data = answer.get("data")
        for row in data if isinstance(data, list) else [data]:
            if isinstance(row, dict):
                row.pop("seq", None)
        return answer
    if isinstance(answer, bytes):
        rows = list(csv.reader(io.StringIO(answer.decode("utf-8"), newline="")))
        if rows and "seq" in rows[0]:
            at = rows[0].index("seq")
            return [row[:at] + row[at + 1:] for row in rows]
    return answer


def same(node: webtest.TestApp, central: webtest.TestApp, url: str, merged: bool = False) -> webtest.TestResponse:
    """GET ``url`` on both: the same status, type, and body but for the allowed fields
    (``merged``: ``node`` holds two nodes' rows, and records' seqs are its own)."""
    want, got = get(node, url), get(central, url)
    assert (got.status_int, got.content_type) == (want.status_int, want.content_type), (url, got.body[:300])
    mine, theirs = comparable(got, True), comparable(want, False)
    if merged:
        mine, theirs = without_seq(mine), without_seq(theirs)
    if mine != theirs:
        print(url, first_difference(theirs, mine), sep="\n")
    assert mine == theirs, url
    return want


def first_difference(want, got) -> str:
    """Where two answers part (the node's, the central one): a few characters of each."""
    want, got = (json.dumps(x, ensure_ascii=False) if not isinstance(x, bytes) else x.decode("utf-8", "replace")
                 for x in (want, got))
    at = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
    return "node    %r\ncentral %r" % (want[max(0, at - 80):at + 80], got[max(0, at - 80):at + 80])


def query_string(params: list[tuple[str, str]]) -> str:
    return urllib.parse.urlencode(params)


def check_listing(node: webtest.TestApp, central: webtest.TestApp, base: str, params: list[tuple[str, str]]) -> None:
    """Every page (followed by next_start_key) the same; the pages' rows are the whole listing's."""
    url = "%s?%s" % (base, query_string(params))
    first = same(node, central, url)
    if first.status_int != 200 or first.content_type != "application/json" or "page_size" not in dict(params):
        return
    rows, doc, pages = [], first.json, 1
    while True:
        rows += doc["data"]
        key = doc.get("next_start_key")
        if key is None:
            break
        assert pages <= 30, url
        doc = same(node, central, "%s&%s" % (url, query_string([("start_key", key)]))).json
        pages += 1
    whole = [p for p in params if p[0] != "page_size"] + [("paginate", "false")]
    assert rows == get(node, "%s?%s" % (base, query_string(whole))).json["data"], url


# A collation where text does not sort in byte order (as a production database's may):
# used when the PostgreSQL server knows it (e.g. with LOCPATH naming a folder where
# ``localedef -i en_US -f UTF-8 <folder>/en_US.UTF-8`` wrote it), else the server's own.
COLLATION = "en_US.UTF-8"


@pytest.fixture(scope="module")
def central_dsn(pg_server):
    name = "equiv_%d" % os.getpid()
    with psycopg.connect(pg_server.get_uri(), autocommit=True) as conn:
        try:
            conn.execute("CREATE DATABASE %s TEMPLATE template0 LC_COLLATE '%s' LC_CTYPE '%s'"
                         % (name, COLLATION, COLLATION))
        except (psycopg.errors.WrongObjectType, psycopg.errors.InvalidParameterValue):  # not known there
            conn.execute("CREATE DATABASE %s" % name)
    try:
        dsn = pg_server.get_uri(name)
        with psycopg.connect(dsn) as conn:
            pgmigrations.migrate(conn)
        yield dsn
    finally:
        with psycopg.connect(pg_server.get_uri(), autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS %s WITH (FORCE)" % name)


@pytest.fixture(scope="module")
def central_web(central_dsn, tmp_path_factory):
    root = tmp_path_factory.mktemp("central")
    env = Env(root)  # its config and tokens: the central app reads the same
    app = api.assemble(env.config.api, "central", PgReadSide(central_dsn, env.config.api.statement_timeout,
                                                             heavy_slots=env.config.api.heavy_queries),
                       registry=CollectorRegistry(), **env.options)
    yield webtest.TestApp(app)
    app.close()
    env.close()


# 30 examples, the same each run (~20 s); EQUIV_EXAMPLES=N: N random ones (a hunt).  No
# shrinking: a failing example's records shrink slowly (minutes), and the first
# difference is printed (url, the node's and the central text around it).
EXAMPLES = os.environ.get("EQUIV_EXAMPLES")


@settings(max_examples=int(EXAMPLES or 30), derandomize=not EXAMPLES, deadline=None,
          phases=[Phase.explicit, Phase.reuse, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(fleet_legs=fleet_records(), listings=st.lists(a_listing(), min_size=3, max_size=6),
       interval=st.sampled_from(["60", "900", "3600", "86400"]),
       worst=st.sampled_from(["mos", "pdd", "no_rtp"]), stats_filter=st.one_of(st.just([]), a_filter()),
       key_op=st.sampled_from(["has_key", "key_missing", "has_value", "value_missing"]))
def test_the_central_api_answers_as_the_node(central_dsn, central_web, fleet_legs, listings, interval, worst,
                                            stats_filter, key_op):
    per_node, shared = fleet_legs
    emptied(central_dsn)
    with tempfile.TemporaryDirectory(prefix="w9-equiv-") as tmp:
        fleet = Fleet(Path(tmp), central_dsn, central_web, per_node)
        try:
            check_fleet(fleet, listings, interval, worst, stats_filter, key_op, shared)
        finally:
            fleet.close()


def probes(node: Env) -> list[tuple[str, str]]:
    """(filter field, a value it has on one of the node's legs, as SQLite's text of it)."""
    out = []
    for field in FILTER_FIELDS:
        column, _, path = field.partition(".")
        expr = '"%s"' % column if not path else "json_extract(\"%s\", '$.%s')" % (column, path)
        row = node.writer.execute("SELECT CAST(%s AS TEXT) FROM cdrs WHERE %s IS NOT NULL ORDER BY seq DESC LIMIT 1"
                                  % (expr, expr)).fetchone()
        if row is not None:
            out.append((field, row[0]))
    return out


def check_fleet(fleet: Fleet, listings, interval: str, worst: str, stats_filter, key_op: str,
                shared: bool) -> None:
    central = fleet.central
    several = len(fleet.nodes) > 1
    for name, node_env in fleet.nodes.items():
        node = node_env.web
        # With two nodes, each node's rows are the central answer filtered by its name.
        scope = [("filter_node", name)] if several else []
        for path, params in listings:
            if shared and "interaction" in path:
                continue  # an interaction of both nodes: checked against the merged node
            for account in (ACC_A, ACC_B):
                check_listing(node, central, "/v2/accounts/%s/%s" % (account, path), params + scope)
        # Each filter field with a value of a stored leg (the node's stored text of it).
        for field, value in probes(node_env):
            for params in ([("filter_" + field, value)], [("filter_not_" + field, value)],
                           [(key_op, field)]):
                check_listing(node, central, "/v2/accounts/%s/cdrs" % ACC_A, params + [("paginate", "false")] + scope)
        records = json.loads(get(node, "/v2/accounts/%s/cdrs?paginate=false" % ACC_A).body)["data"]
        for row in records:
            for key in (row["id"], row["call_id"]):
                same(node, central, "/v2/accounts/%s/cdrs/%s" % (ACC_A, urllib.parse.quote(key)))
            same(node, central, "/v2/accounts/%s/cdrs/%s?accept=csv" % (ACC_A, urllib.parse.quote(row["id"])))
            for key in {row["interaction_id"], row["call_id"]} - {None} if not shared else ():
                for fmt in ("", "?accept=csv"):
                    same(node, central, "/v2/accounts/%s/cdrs/legs/%s%s" % (ACC_A, urllib.parse.quote(key), fmt))
        stats = [("created_from", str(NOW_G - 86400 * 4)), ("created_to", str(NOW_G)), ("interval", interval)]
        for path in ("cdrs/stats", "users/user-1/cdrs/stats"):
            url = "/v2/accounts/%s/%s?%s" % (ACC_A, path, query_string(stats + stats_filter + scope))
            same(node, central, url)
            same(node, central, url + "&accept=csv")
        url = "/v2/accounts/%s/cdrs/worst?%s" % (ACC_A, query_string(
            [("by", worst), ("limit", "5"), ("created_from", str(NOW_G - 86400 * 4)), ("created_to", str(NOW_G))]
            + stats_filter + scope))
        same(node, central, url)
        same(node, central, url + "&accept=csv")
    if several:
        check_merged(fleet)
    if shared:
        check_shared(fleet, listings, interval, stats_filter)


def check_shared(fleet: Fleet, listings, interval: str, stats_filter) -> None:
    """Interactions on both nodes: the central answers are the merged node's
    (interaction listings, legs, stats over both nodes' legs, the worst legs
    but for the order of ties across nodes)."""
    merged, central = fleet.merged.web, fleet.central
    for path, params in listings:
        if "interaction" in path:
            check_listing(merged, central, "/v2/accounts/%s/%s" % (ACC_A, path), params)
    for row in get(merged, "/v2/accounts/%s/cdrs?paginate=false" % ACC_A).json["data"]:
        for key in {row["interaction_id"], row["call_id"]} - {None}:
            for fmt in ("", "?accept=csv"):
                same(merged, central, "/v2/accounts/%s/cdrs/legs/%s%s" % (ACC_A, urllib.parse.quote(key), fmt),
                     merged=True)
    stats = [("created_from", str(NOW_G - 86400 * 4)), ("created_to", str(NOW_G)), ("interval", interval)]
    for path in ("cdrs/stats", "users/user-1/cdrs/stats"):
        for filters in ([], stats_filter):
            url = "/v2/accounts/%s/%s?%s" % (ACC_A, path, query_string(stats + filters))
            same(merged, central, url)
            same(merged, central, url + "&accept=csv")
    for kind, value in (("mos", "audio_in_mos"), ("pdd", "pdd_ms"), ("no_rtp", "no_rtp_in")):
        url = "/v2/accounts/%s/cdrs/worst?by=%s&limit=500&%s" % (ACC_A, kind, query_string(stats[:2] + stats_filter))
        want, got = get(merged, url), get(central, url)
        assert got.status_int == want.status_int, url
        if want.status_int != 200:
            assert comparable(got, True) == comparable(want, False), url
            continue
        want, got = want.json["data"], got.json["data"]
        key = lambda row: json.dumps(row, sort_keys=True)  # noqa: E731
        assert sorted(got, key=key) == sorted(want, key=key), url
        assert [row.get(value) for row in got] == [row.get(value) for row in want], url


def check_merged(fleet: Fleet) -> None:
    """The central CDR listing of two nodes: every node's rows once, newest
    first (ties across nodes in any order, docs/api.md), also page by page."""
    for order in ("false", "true"):
        base = "/v2/accounts/%s/cdrs?ascending=%s" % (ACC_A, order)
        expected = [row for node in fleet.nodes.values()
                    for row in get(node.web, base + "&paginate=false").json["data"]]
        whole = get(fleet.central, base + "&paginate=false").json["data"]
        assert {row.pop("source") for row in whole} <= set(fleet.nodes)
        key = lambda row: json.dumps(row, sort_keys=True)  # noqa: E731
        assert sorted(whole, key=key) == sorted(expected, key=key)
        stamps = [int(row["timestamp"]) + row["duration_seconds"] for row in whole]
        assert stamps == sorted(stamps, reverse=order == "false")
        for size in (1, 2):
            seen, url = [], "%s&page_size=%d" % (base, size)
            while url:
                doc = get(fleet.central, url).json
                seen += [row["id"] for row in doc["data"]]
                assert len(seen) <= len(whole)
                key_ = doc.get("next_start_key")
                url = key_ and "%s&page_size=%d&start_key=%s" % (base, size, key_)
            assert seen == [row["id"] for row in whole]
        table = list(csv.reader(io.StringIO(get(fleet.central, base + "&accept=csv").body.decode())))
        assert len(table) == len(whole) + 1

