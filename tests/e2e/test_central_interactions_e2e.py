"""A call that crossed media servers is one interaction on the central API, end to end:
two real ``eslcdr run`` nodes, each on a stand-in serving its half of S4's call (the
receiving SIP leg on node 2, ``two_nodes``), a real ``eslcdr collect`` on real PostgreSQL,
real HTTP.  Call 1 carries the propagated header; call 2 (S4 renamed: other UUIDs,
another SIP Call-ID, the same second) does not -- its SIP Call-ID joins the nodes' ids.
"""

from __future__ import annotations

import json

from eslcdr.fakefs import FakeFreeSWITCH, StaticSource

from tests.conftest import capture_events
from tests.e2e.test_central_api import central_collector, request
from tests.e2e.test_collect_e2e import TOKEN
from tests.harness import DaemonProcess, db_rows, wait_rows, write_config
from tests.unit.collector.test_central_interactions import HEADER, back_to_version_6, renamed
from tests.unit.ingest.test_cdr import two_nodes

ACCOUNT = "4b0cd3c1e0a2f2c6a8d9e1f20a3b4c5d"


def with_account(events: list[dict]) -> list[dict]:
    return [{**e, "variable_ecallmgr_Account-ID": ACCOUNT} if "Unique-ID" in e else e for e in events]


class Node:
    """A stand-in serving ``events`` and the ``eslcdr run`` reading it."""

    def __init__(self, root, name: str, events: list[dict]) -> None:
        self.name, self.root = name, root / name
        self.root.mkdir()
        (self.root / "tokens").write_text("%s *\n" % TOKEN)
        self.fake = FakeFreeSWITCH(events=StaticSource(events), hold=True)
        self.fake.start()
        ini = write_config(self.root, self.fake.port)
        ini.write_text(ini.read_text().replace("node_name = fs-test", "node_name = %s" % name))
        self.daemon = DaemonProcess(ini, self.root / "daemon.log")
        self.url = "http://127.0.0.1:%d" % self.daemon.api_port()

    def rows(self) -> list[dict]:
        return db_rows(self.root / "cdrs.db")

    def close(self) -> None:
        code = self.daemon.stop()
        self.fake.stop()
        assert code == 0, (self.root / "daemon.log").read_text()[-3000:]


def test_a_call_across_two_nodes_is_one_central_interaction(tmp_path, pg_server):
    header_call = two_nodes(capture_events("S4_json.esl"), HEADER)
    plain_call = two_nodes(renamed(capture_events("S4_json.esl"), "cafe"), None)
    halves = [with_account(header_call[i] + plain_call[i]) for i in (0, 1)]
    nodes: list[Node] = []
    try:
        for name, events in zip(("fs-1", "fs-2"), halves):
            nodes.append(Node(tmp_path, name, events))
        wait_rows(nodes[0].root / "cdrs.db", 6)
        wait_rows(nodes[1].root / "cdrs.db", 2)
        with central_collector(tmp_path, pg_server, nodes, "%s *\n" % TOKEN) as port:
            rows = [dict(r, node_name=n.name) for n in nodes for r in n.rows()]
            stamps = [r["timestamp"] for r in rows]
            span = "created_from=%d&created_to=%d" % (min(stamps) - 3600, max(stamps) + 3600)

            def get(path: str) -> dict:
                status, _, body = request(port, "/v2/accounts/%s/%s" % (ACCOUNT, path), TOKEN)
                assert status == 200, body[:300]
                return json.loads(body)

            listed = [r["interaction_id"] for r in get("cdrs/interaction?" + span)["data"]]
            assert len(listed) == len(set(listed)) == 2
            assert "call-7f3a" in listed
            header_legs = {r["call_id"] for r in rows if r["interaction_id"] == "call-7f3a"}
            plain = [r for r in rows if r["interaction_id"] != "call-7f3a"]
            own_ids = {r["interaction_id"] for r in plain}
            assert len(own_ids) == 2  # each node its own id for the call without the header
            (central_id,) = set(listed) - {"call-7f3a"}
            assert central_id in own_ids
            for leg_id, want in [("call-7f3a", header_legs)] + [(i, {r["call_id"] for r in plain}) for i in own_ids]:
                found = get("cdrs/legs/" + leg_id)["data"]
                assert {r["call_id"] for r in found} == want, leg_id
                assert {r["source"] for r in found} == {"fs-1", "fs-2"}
                for r in found:
                    differs = r["interaction_id"] != (central_id if leg_id in own_ids else "call-7f3a")
                    assert r.get("central_interaction_id") == (central_id if differs else None)
    finally:
        for node in nodes:
            node.close()


def test_the_collector_joins_the_legs_stored_before_schema_7_from_its_start(tmp_path, pg_server, monkeypatch):
    # A version-6 database whose three nodes' legs of one call were stored
    # without joining (as before the interactions schema): a real collector
    # migrates it and, beside its workers, joins them under one central id.
    import psycopg

    from eslcdr.collector import pginteractions, pgmigrations
    from eslcdr.collector.pgstore import PgStore
    from tests.conftest import fresh_database
    from tests.e2e.test_collect_e2e import CollectorProcess, wait_for
    from tests.unit.collector.test_central_interactions import three_nodes
    from tests.unit.collector.test_collector_store import feed_items

    (a, b, c), legs_of = three_nodes()
    with fresh_database(pg_server) as dsn:
        with psycopg.connect(dsn) as conn, monkeypatch.context() as patch:
            pgmigrations.migrate(conn)
            store = PgStore(conn)
            patch.setattr(pginteractions, "link_batch", lambda cur, node: 0)
            for node, records in legs_of.items():
                store.node_state(node, "http://127.0.0.1:1")
                store.store_batch(node, "db-" + node, 0, feed_items(tmp_path, records))
            back_to_version_6(conn)
            conn.commit()
        process = CollectorProcess(tmp_path, dsn, {"fs-9": "http://127.0.0.1:1"})  # a node that is down
        try:
            process.port()
            (done,) = wait_for(lambda: process.events_named("interactions_joined_existing"), what="the join")
            assert (done["ids"], done["done"]) == (2, True)  # b and c under a
            with psycopg.connect(dsn) as conn:
                assert sorted(conn.execute("SELECT interaction_id, central_id FROM cdrs").fetchall()) == [
                    (a, a), (b, a), (b, a), (c, a)]
                assert conn.execute("SELECT version, join_after FROM eslcdr_schema").fetchone() == (pgmigrations.SCHEMA_VERSION, None)
            assert process.proc.poll() is None
        finally:
            assert process.stop() == 0
