"""A call that crossed media servers is one interaction on the central API (real
PostgreSQL, the collector's write path, the API app): S4's call split across two
nodes as its SIP hop would be (``two_nodes``: the receiving sofia/external leg on
node 2), with the propagated header (one id on both) or without (each node its own
id; the SIP Call-ID within one account and SIP_LINK_WINDOW_US joins them)."""

from __future__ import annotations

import pytest
import webtest

from eslcdr.ingest.interactions import SIP_LINK_WINDOW_US

from tests.unit.api.test_api import A, ACC_A, ACC_B, B
from tests.unit.collector.test_central_readside import central_app
from tests.unit.collector.test_collector_store import feed_items
from tests.unit.ingest.test_cdr import run_capture, two_nodes

HEADER = "variable_sip_h_X-Call-Interaction-ID"
S4_SIP_CALL_ID = "9ee8c3dd-6481-1240-1998-fef378d51a2b"
CLOCK = 1_795_727_846.0 + 3600  # an hour after S4's call


@pytest.fixture
def central(tmp_path, pg_dsn):
    store, app = central_app(tmp_path, pg_dsn, CLOCK)
    after: dict[str, int] = {}

    def store_node(name: str, records: list[dict]) -> None:
        node = name  # the collector's source: its [node:NAME]
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
    assert {r["source"] for r in found} == {"fs-1", "fs-2"}
    assert all(r["interaction_id"] == "call-7f3a" and "central_interaction_id" not in r for r in found)
    detail = web.get("/v2/accounts/%s/cdrs/%s" % (ACC_A, twos[0]["id"]), headers=A).json["data"]
    assert detail["source"] == "fs-2" and "central_interaction_id" not in detail


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
    assert set(by_node) == {"fs-1", "fs-2"}
    for r in legs(web, own1):  # each record keeps its node's id, gains the central one where it differs
        own = own1 if r["source"] == "fs-1" else own2
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


def test_two_nodes_batches_of_one_call_at_once_still_join(tmp_path, pg_dsn, events_of, monkeypatch):
    # fs-1's batch has linked (found nothing: fs-2's rows are not there yet)
    # and holds its transaction open; fs-2's batch, writing the other half
    # meanwhile, must wait for it and then see its rows -- else neither
    # batch ever sees the other's legs.
    import threading
    import time

    import psycopg

    from eslcdr.collector import pginteractions
    from eslcdr.collector.pgstore import PgStore

    store1, app = central_app(tmp_path, pg_dsn, CLOCK)
    store2 = PgStore(psycopg.connect(pg_dsn))
    watcher = psycopg.connect(pg_dsn, autocommit=True)
    ones, twos = halves(events_of("S4_json"), None)
    batches = {"fs-1": (store1, feed_items(tmp_path, ones)), "fs-2": (store2, feed_items(tmp_path, twos))}
    for node, (store, _) in batches.items():
        store.node_state(node, "http://127.0.0.1:1")
    original, first_linked, second_linked = pginteractions.link_batch, threading.Event(), threading.Event()
    second_pid = store2.conn.info.backend_pid

    def second_waits() -> bool:
        return watcher.execute("SELECT count(*) FROM pg_locks WHERE pid = %s AND locktype = 'advisory'"
                               " AND NOT granted", (second_pid,)).fetchone()[0] > 0

    def link(cur, node):
        if node == "fs-1":
            found = original(cur, node)
            first_linked.set()
            deadline = time.monotonic() + 30
            while not (second_linked.is_set() or second_waits()) and time.monotonic() < deadline:
                time.sleep(0.02)
            return found
        try:
            return original(cur, node)
        finally:
            second_linked.set()

    monkeypatch.setattr(pginteractions, "link_batch", link)
    errors = []

    def run(node):
        store, items = batches[node]
        try:
            store.store_batch(node, "db-" + node, 0, items)
        except Exception as exc:  # reported below
            errors.append(exc)

    first = threading.Thread(target=run, args=("fs-1",))
    first.start()
    assert first_linked.wait(30)
    second = threading.Thread(target=run, args=("fs-2",))
    second.start()
    first.join(60)
    second.join(60)
    assert not errors and not first.is_alive() and not second.is_alive()
    web = webtest.TestApp(app)
    try:
        found = legs(web, ones[0]["interaction_id"])
        assert sorted(r["call_id"] for r in found) == sorted(r["call_id"] for r in ones + twos)
    finally:
        app.close()
        store1.close()
        store2.close()
        watcher.close()


def three_nodes() -> tuple[tuple[str, str, str], dict[str, list[dict]]]:
    """A call over three nodes: fs-1 -> fs-2 over SIP Call-ID X, fs-2 -> fs-3
    over Y; each node its own Kazoo-shaped id (a, b, c), all in one second."""
    from tests.unit.api.test_api import leg

    second = int(CLOCK) - 1800 + 62_167_219_200  # Gregorian
    a, b, c = ("%d-%s" % (second, tag * 16) for tag in "abc")
    hop = dict(created_us=(second - 60 - 62_167_219_200) * 1_000_000, interaction_created_us=None)  # Unix µs
    return (a, b, c), {
        "fs-3": [leg(second, interaction=c, sip_call_id="Y@fs2", **hop)],
        "fs-2": [leg(second, interaction=b, sip_call_id="X@fs1", **hop),
                 leg(second, interaction=b, sip_call_id="Y@fs2", **hop)],
        "fs-1": [leg(second, interaction=a, sip_call_id="X@fs1", **hop)],
    }


def one_group_under_a(web, ids: tuple[str, str, str], legs_of: dict[str, list[dict]]) -> None:
    """The three nodes' call is one interaction, a, found by each node's id."""
    a, b, c = ids
    every = sorted(r["call_id"] for records in legs_of.values() for r in records)
    assert interactions(web) == [a]
    for name in ids:
        found = legs(web, name)
        assert sorted(r["call_id"] for r in found) == every, name
        assert {r["interaction_id"]: r.get("central_interaction_id") for r in found} == {a: None, b: a, c: a}


def test_a_call_over_three_nodes_is_one_group_whichever_hop_comes_first(central):
    # fs-1 -> fs-2 over SIP Call-ID X, fs-2 -> fs-3 over Y; fs-3 is pulled
    # first, then fs-2 (joins fs-3: central b), then fs-1 (joins fs-2: the
    # group's central id becomes a, fs-3's alias moves along).
    store_node, web = central
    (a, b, c), legs_of = three_nodes()
    for node in ("fs-3", "fs-2", "fs-1"):
        store_node(node, legs_of[node])
    one_group_under_a(web, (a, b, c), legs_of)


def back_to_version_6(conn) -> None:
    """Undo what the migrations after version 6 add (the stored central id, the
    hour cells), so a test can start from a version-6 database."""
    conn.execute("ALTER TABLE cdrs DROP COLUMN central_id")
    conn.execute("ALTER TABLE eslcdr_schema DROP COLUMN join_after")
    conn.execute("DROP TABLE stats_hours")
    conn.execute("DROP TABLE stats_hour_causes")
    conn.execute("UPDATE eslcdr_schema SET version = 6")


def test_legs_stored_before_the_central_id_are_joined_by_migrating(central, pg_dsn, monkeypatch):
    # A version-6 database: fs-3's and fs-2's halves of a call joined (an
    # alias c -> b), fs-1's stored while the collector did not join (a call
    # collected before the interactions schema): two interactions.  Version 7
    # fills each row's central id (c's rows take b), the collector's one-off
    # step joins fs-1's legs by SIP Call-ID, in chunks: one interaction.
    import psycopg

    from eslcdr.collector import pginteractions, pgmigrations

    store_node, web = central
    (a, b, c), legs_of = three_nodes()
    store_node("fs-3", legs_of["fs-3"])
    store_node("fs-2", legs_of["fs-2"])
    with monkeypatch.context() as patch:
        patch.setattr(pginteractions, "link_batch", lambda cur, node: 0)
        store_node("fs-1", legs_of["fs-1"])
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        back_to_version_6(conn)
    with psycopg.connect(pg_dsn) as conn:
        assert pgmigrations.migrate(conn) == 6
        assert sorted(conn.execute("SELECT interaction_id, central_id FROM cdrs").fetchall()) == [
            (a, a), (b, b), (b, b), (c, b)]
        conn.commit()
        assert sorted(interactions(web)) == [a, b]
        assert pginteractions.join_existing(conn, chunk=1) == 1  # b's group moved under a
        assert conn.execute("SELECT join_after FROM eslcdr_schema").fetchone() == (None,)
        conn.commit()
        assert pginteractions.join_existing(conn) == 0  # done: nothing walked again
    one_group_under_a(web, (a, b, c), legs_of)


def test_a_sip_call_id_too_long_to_index_is_stored_and_joins_nothing(central, events_of, pg_dsn):
    # A caller's Call-ID of a few KB: PostgreSQL cannot index it (2,704 bytes
    # at most an index row).  Its legs are stored all the same -- before, each
    # was refused into collector_rejects: a caller could keep their calls out of
    # the central database -- and, being in no index, join no other node's.
    import base64
    import os

    import psycopg

    store_node, web = central
    ones, twos = halves(events_of("S4_json"), None)
    long_call_id = base64.b64encode(os.urandom(6000)).decode() + "@caller"
    for r in ones + twos:
        if r.get("sip_call_id"):
            r["sip_call_id"] = long_call_id
    store_node("fs-1", ones)
    store_node("fs-2", twos)
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM collector_rejects").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM cdrs WHERE sip_call_id = %s", (long_call_id,)).fetchone()[0] \
            == sum(1 for r in ones + twos if r.get("sip_call_id"))
    assert sorted(interactions(web)) == sorted({ones[0]["interaction_id"], twos[0]["interaction_id"]})
