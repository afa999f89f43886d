"""A call that crossed media servers is one interaction on the central API (real
PostgreSQL, the collector's write path, the API app): S4's call split across two
nodes as its SIP hop would be (``two_nodes``: the receiving sofia/external leg on
node 2), with the propagated header (one id on both) or without (each node its own
id; the SIP Call-ID within one account and SIP_LINK_WINDOW_US joins them)."""

from __future__ import annotations

import psycopg
import pytest
import webtest
from prometheus_client import CollectorRegistry

from eslcdr.api import app as api
from eslcdr.api.tokens import TokenStore
from eslcdr.collector import pgschema
from eslcdr.collector.pgstore import PgStore
from eslcdr.collector.readside import PgReadSide
from eslcdr.config import from_mapping
from eslcdr.ingest.interactions import SIP_LINK_WINDOW_US

from tests.unit.api.test_api import A, ACC_A, ACC_B, B, TOKENS
from tests.unit.collector.test_collector_store import feed_items
from tests.unit.ingest.test_cdr import run_capture, two_nodes

HEADER = "variable_sip_h_X-Call-Interaction-ID"
S4_SIP_CALL_ID = "9ee8c3dd-6481-1240-1998-fef378d51a2b"
CLOCK = 1_795_727_846.0 + 3600  # an hour after S4's call


@pytest.fixture
def central(tmp_path, pg_dsn):
    conn = psycopg.connect(pg_dsn)
    pgschema.migrate(conn)
    store = PgStore(conn)
    tokens = tmp_path / "tokens"
    tokens.write_text("".join("%s %s\n" % item for item in TOKENS.items()))
    cfg = from_mapping({"api": {"tokens_file": str(tokens)}}).api
    app = api.assemble(cfg, "central", PgReadSide(pg_dsn, cfg.statement_timeout, heavy_slots=1),
                       registry=CollectorRegistry(), tokens=TokenStore(tokens), clock=lambda: CLOCK)
    after: dict[str, int] = {}

    def store_node(name: str, records: list[dict]) -> None:
        node = "[node:%s]" % name  # the collector's source of a node
        store.node_state(node, "http://127.0.0.1:1")
        items = feed_items(tmp_path, records)
        store.store_batch(node, "db-" + node, after.get(node, 0), items)
        after[node] = items[-1].seq

    yield store_node, webtest.TestApp(app)
    app.close()
    store.close()


def renamed(events: list[dict], tag: str) -> list[dict]:
    """S4 as another call: every leg UUID and the SIP Call-ID changed (same
    length, same second)."""
    names = {e["Unique-ID"] for e in events if e.get("Unique-ID")} | {S4_SIP_CALL_ID}
    table = {name: tag + name[len(tag):] for name in names}

    def swap(value):
        if not isinstance(value, str):
            return value
        for old, new in table.items():
            value = value.replace(old, new)
        return value

    return [{k: swap(v) for k, v in e.items()} for e in events]


def halves(events, header: str | None, account: str = ACC_A, account2: str | None = None,
           shift_us: int = 0) -> tuple[list[dict], list[dict]]:
    """The records each node writes for its half of the call (node 2's legs
    created ``shift_us`` later, in ``account2``)."""
    node1, node2 = two_nodes(events, header)
    first, _ = run_capture(node1)
    second, _ = run_capture(node2)
    ones = [{**r, "account_id": account} for r in first.values()]
    twos = [{**r, "account_id": account2 or account} for r in second.values()]
    for r in twos:
        r["created_us"] += shift_us
        if r.get("interaction_created_us"):
            r["interaction_created_us"] += shift_us
    return ones, twos


def interactions(web, account=ACC_A, headers=A) -> list[str]:
    body = web.get("/v2/accounts/%s/cdrs/interaction" % account, headers=headers).json
    return [row["interaction_id"] for row in body["data"]]


def legs(web, leg_id: str, account=ACC_A, headers=A) -> list[dict]:
    return web.get("/v2/accounts/%s/cdrs/legs/%s" % (account, leg_id), headers=headers).json["data"]


def test_with_the_propagated_header_one_interaction_with_both_nodes_legs(central, events_of):
    store_node, web = central
    ones, twos = halves(events_of("S4_json"), HEADER)
    store_node("fs-1", ones)
    store_node("fs-2", twos)
    assert interactions(web) == ["call-7f3a"]
    found = legs(web, "call-7f3a")
    assert sorted(r["call_id"] for r in found) == sorted(r["call_id"] for r in ones + twos)
    assert {r["source"] for r in found} == {"[node:fs-1]", "[node:fs-2]"}
    assert all(r["interaction_id"] == "call-7f3a" and "central_interaction_id" not in r for r in found)
    detail = web.get("/v2/accounts/%s/cdrs/%s" % (ACC_A, twos[0]["id"]), headers=A).json["data"]
    assert detail["source"] == "[node:fs-2]" and "central_interaction_id" not in detail


@pytest.mark.parametrize("node2_first", [False, True])
def test_without_the_header_the_sip_call_id_joins_the_nodes_ids(central, events_of, node2_first):
    store_node, web = central
    ones, twos = halves(events_of("S4_json"), None)
    own1, own2 = ones[0]["interaction_id"], twos[0]["interaction_id"]
    assert own1 != own2 and twos[0]["sip_call_id"] == S4_SIP_CALL_ID
    for node, records in ([("fs-2", twos), ("fs-1", ones)] if node2_first else [("fs-1", ones), ("fs-2", twos)]):
        store_node(node, records)
    central_id = min(own1, own2)  # the group's least id: here the earlier second's
    assert interactions(web) == [central_id]
    every = sorted(r["call_id"] for r in ones + twos)
    for name in (own1, own2, ones[0]["id"], twos[0]["id"]):  # each node's id is an alias
        found = legs(web, name)
        assert sorted(r["call_id"] for r in found) == every, name
    by_node = {r["source"]: r for r in legs(web, own2)}
    assert set(by_node) == {"[node:fs-1]", "[node:fs-2]"}
    for r in legs(web, own1):  # each record keeps its node's id, gains the central one where it differs
        own = own1 if r["source"] == "[node:fs-1]" else own2
        assert r["interaction_id"] == own
        assert r.get("central_interaction_id") == (None if own == central_id else central_id)
        assert list(r)[-1] == "source"
    other = next(r for r in ones + twos if r["interaction_id"] != central_id)
    detail = web.get("/v2/accounts/%s/cdrs/%s" % (ACC_A, other["id"]), headers=A).json["data"]
    assert (detail["interaction_id"], detail["central_interaction_id"]) == (other["interaction_id"], central_id)


def test_two_calls_in_the_same_second_never_share_a_central_id(central, events_of):
    store_node, web = central
    ones, twos = halves(events_of("S4_json"), None)
    ones_b, twos_b = halves(renamed(events_of("S4_json"), "cafe"), None)
    assert ones_b[0]["created_us"] // 1_000_000 == ones[0]["created_us"] // 1_000_000
    store_node("fs-1", ones + ones_b)
    store_node("fs-2", twos + twos_b)
    listed = interactions(web)
    assert len(listed) == 2 and len(set(listed)) == 2
    calls = [sorted(r["call_id"] for r in legs(web, i)) for i in listed]
    assert sorted(calls) == sorted([sorted(r["call_id"] for r in ones + twos),
                                    sorted(r["call_id"] for r in ones_b + twos_b)])


def test_a_call_id_in_another_account_joins_nothing(central, events_of):
    store_node, web = central
    ones, twos = halves(events_of("S4_json"), None, account=ACC_A, account2=ACC_B)
    store_node("fs-1", ones)
    store_node("fs-2", twos)
    assert interactions(web) == [ones[0]["interaction_id"]]
    assert sorted(r["call_id"] for r in legs(web, ones[0]["interaction_id"])) == sorted(r["call_id"] for r in ones)
    assert interactions(web, ACC_B, B) == [twos[0]["interaction_id"]]
    assert [r["call_id"] for r in legs(web, twos[0]["interaction_id"], ACC_B, B)] == [twos[0]["call_id"]]
    assert not any("central_interaction_id" in r for r in legs(web, ones[0]["interaction_id"]))


@pytest.mark.parametrize("shift_us, joined", [(SIP_LINK_WINDOW_US, True), (SIP_LINK_WINDOW_US + 1, False)])
def test_a_call_id_reused_outside_the_window_joins_nothing(central, events_of, shift_us, joined):
    store_node, web = central
    ones, twos = halves(events_of("S4_json"), None, shift_us=shift_us)
    store_node("fs-1", ones)
    store_node("fs-2", twos)
    found = legs(web, ones[0]["interaction_id"])
    assert len(found) == (len(ones) + len(twos) if joined else len(ones))
    assert len(interactions(web)) == (1 if joined else 2)
