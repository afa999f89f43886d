"""The central API (issue 17.1): ``eslcdr collect`` answers the Kazoo CDR routes
from PostgreSQL as a node answers them from SQLite.

Two real media servers (``eslcdr run`` on the stand-in, generated calls of the
same accounts), a real ``eslcdr collect`` on a real PostgreSQL (pgserver), real
HTTP.  For the same CDRs the node's answer and the central answer are equal
field by field -- only ``request_id``, the envelope's ``timestamp`` and ``node``
(the answering server) differ; an account's token on the central API sees that
account's CDRs of both nodes and nothing of another account's.
"""

from __future__ import annotations

import contextlib
import csv
import http.client
import io
import json
import time
import urllib.parse
from typing import Any, Callable, Iterator

import pytest

from eslcdr.ingest.legs import GREGORIAN_OFFSET

from tests.conftest import fresh_database
from tests.compat.test_kazoo_compat import null_paths
from tests.e2e.test_collect_e2e import TOKEN, CollectorProcess, MediaServer, wait_collected, wait_for

ACCOUNT_TOKENS = {"acct-token-demo": "demo-account", "acct-token-other": "434d23e00e7f65e1ca9281d75dc8cade"}
A, B = "demo-account", "434d23e00e7f65e1ca9281d75dc8cade"
TOKEN_A, TOKEN_B = "acct-token-demo", "acct-token-other"
# What may differ between a node's and the central answer (envelope fields).
ENVELOPE_ONLY = ("request_id", "timestamp", "node")


def request(port: int, path: str, token: str | None = None, method: str = "GET", body: bytes | None = None,
            headers: dict | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        sent = dict(headers or {})
        if token:
            sent["X-Auth-Token"] = token
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


class Fleet:
    def __init__(self, nodes: list[MediaServer], central_port: int, created_from: int, created_to: int) -> None:
        self.nodes = nodes
        self.central = central_port
        self.range = "created_from=%d&created_to=%d" % (created_from, created_to)

    def path(self, path: str, **params) -> str:
        query = self.range + "".join("&%s=%s" % (k, urllib.parse.quote(str(v))) for k, v in params.items())
        return "%s%s%s" % (path, "&" if "?" in path else "?", query)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, pg_server):
    root = tmp_path_factory.mktemp("central")
    tokens = "".join("%s %s\n" % pair for pair in ACCOUNT_TOKENS.items())
    nodes = [MediaServer(root, "fs-a", 40, 1), MediaServer(root, "fs-b", 40, 2)]
    try:
        for node in nodes:
            (node.root / "tokens").write_text("%s *\n%s" % (TOKEN, tokens))
        for node in nodes:
            node.settled_rows(40)
        with central_collector(root, pg_server, nodes, "%s *\n%s" % (TOKEN, tokens)) as port:
            stamps = [r["timestamp"] for n in nodes for r in n.rows()]
            yield Fleet(nodes, port, min(stamps) - 86400, max(stamps) + 86400)
    finally:
        for node in nodes:
            node.close()


@contextlib.contextmanager
def central_collector(root, pg_server, nodes, tokens: str,
                      collected: Callable[[str], Any] | None = None) -> Iterator[int]:
    """A real ``eslcdr collect`` on a fresh database pulling ``nodes`` (each
    with ``name``, ``url``; ``rows()`` for the default ``collected``), its API
    reading ``tokens``: its port, once ``collected(dsn)`` holds (default: once
    PostgreSQL holds every node's rows)."""
    (root / "central-tokens").write_text(tokens)
    process = None
    try:
        with fresh_database(pg_server) as dsn:
            process = CollectorProcess(root, dsn, {n.name: n.url for n in nodes},
                                       extra="tokens_file = %s" % (root / "central-tokens"))
            port = process.port()
            if collected is None:
                wait_collected(dsn, nodes)
            else:
                wait_for(lambda: collected(dsn), what="the collector to hold the nodes' rows")
            yield port
            assert process.stop() == 0
    finally:
        if process is not None and process.proc.poll() is None:
            process.stop()


def comparable(body: bytes, central: bool = False) -> dict:
    """A JSON answer without the fields that may differ: the envelope's, and a
    central record's or listing row's ``source`` (checked here: the node's name)."""
    doc = json.loads(body)
    for name in ENVELOPE_ONLY:
        doc.pop(name, None)
    data = doc.get("data")
    rows = [data] if isinstance(data, dict) else data if isinstance(data, list) else []
    records = [r for r in rows if isinstance(r, dict) and "channel_created_time" in r]  # full records
    if central:
        for record in records:
            assert record.pop("source") == record["node"]  # the harness names both alike
        for row in rows:  # listing rows: the node of their media server
            if isinstance(row, dict) and "media_server" in row and "channel_created_time" not in row:
                assert row.pop("source") + ".example.com" == row["media_server"]
    if isinstance(data, dict) and records:
        doc.pop("revision")  # the record's digest: with source centrally (its text is compared)
    return doc


def data_text(body: bytes) -> str:
    """The text of an answer's ``data`` value as sent."""
    text = body.decode("utf-8")
    start = text.index('"data":') + len('"data":')
    return text[start:json.JSONDecoder().raw_decode(text, start)[1]]


def same_answer(fleet: Fleet, node: MediaServer, path: str, token: str = TOKEN, accept: str | None = None) -> bytes:
    """GET ``path`` on the node and centrally: the same status, type and body
    (JSON: field by field, but for ENVELOPE_ONLY; CSV: byte for byte)."""
    headers = {"Accept": accept} if accept else None
    status, head, body = request(node.api_port, path, token, headers=headers)
    c_status, c_head, c_body = request(fleet.central, path, token, headers=headers)
    assert (c_status, c_head.get("content-type")) == (status, head.get("content-type")), (path, c_body[:300])
    if head.get("content-type") == "application/json":
        assert comparable(c_body, central=True) == comparable(body), path
        # And the data as text, byte for byte (key order, number formats), but for source.
        assert data_text(c_body).replace(',"source":"%s"}' % node.name, "}") == data_text(body), path
        for field in ("request_id", "timestamp", "node"):
            assert field in json.loads(c_body) or status >= 400
    else:
        assert c_body == body, path
        assert c_head.get("content-disposition") == head.get("content-disposition")
    if "etag" in head:
        assert c_head.get("etag") and c_head["etag"] != head["etag"]  # the central record has source
    return body


def rows_of(node: MediaServer, account: str) -> list[dict]:
    return [r for r in node.rows() if r["account_id"] == account]


def test_listings_paged_and_whole_are_the_nodes_field_by_field(fleet):
    """A's CDRs of one node (``filter_node``): the same pages, keys, rows."""
    for node in fleet.nodes:
        assert rows_of(node, A), "the stand-in generated no call of %s on %s" % (A, node.name)
        for listing in ("cdrs", "cdrs/interaction"):
            for order in ("false", "true"):
                path = fleet.path("/v2/accounts/%s/%s" % (A, listing), filter_node=node.name, page_size=4,
                                  ascending=order)
                pages = 0
                while True:
                    doc = json.loads(same_answer(fleet, node, path))
                    pages += 1
                    if "next_start_key" not in doc:
                        break
                    path = fleet.path("/v2/accounts/%s/%s" % (A, listing), filter_node=node.name, page_size=4,
                                      ascending=order, start_key=doc["next_start_key"])
                assert pages > 1
            whole = json.loads(same_answer(fleet, node, fleet.path("/v2/accounts/%s/%s" % (A, listing),
                                                                   filter_node=node.name, paginate="false")))
            assert "page_size" not in whole and len(whole["data"]) > 0  # no paging keys (Kazoo)
            same_answer(fleet, node, fleet.path("/v2/accounts/%s/%s" % (A, listing), filter_node=node.name),
                        accept="text/csv")
        owner = next(r["owner_id"] for r in rows_of(node, A) if r["owner_id"])
        for listing in ("cdrs", "cdrs/interaction"):
            path = fleet.path("/v2/accounts/%s/users/%s/%s" % (A, owner, listing), filter_node=node.name)
            assert json.loads(same_answer(fleet, node, path))["data"]
            same_answer(fleet, node, path, accept="text/csv")


def test_detail_and_legs_are_the_nodes_byte_for_byte(fleet):
    for node in fleet.nodes:
        rows = rows_of(node, A)
        for row in rows:
            for key in (row["id"], row["call_id"]):
                doc = json.loads(same_answer(fleet, node, "/v2/accounts/%s/cdrs/%s" % (A, key)))
                assert doc["data"]["call_id"] == row["call_id"]
            same_answer(fleet, node, "/v2/accounts/%s/cdrs/%s" % (A, row["id"]), accept="text/csv")
        for iid in sorted({r["interaction_id"] for r in rows if r["interaction_id"]})[:10]:
            doc = json.loads(same_answer(fleet, node, "/v2/accounts/%s/cdrs/legs/%s" % (A, iid)))
            assert doc["data"] and all(leg["interaction_id"] == iid for leg in doc["data"])
            same_answer(fleet, node, "/v2/accounts/%s/cdrs/legs/%s" % (A, iid), accept="text/csv")
        # Own-account routes with the account's token.
        same_answer(fleet, node, "/v2/cdrs/%s" % rows[0]["id"], token=TOKEN_A)
        same_answer(fleet, node, fleet.path("/v2/cdrs", filter_node=node.name), token=TOKEN_A)


def test_central_listing_is_every_nodes_rows_once(fleet):
    """Unfiltered, A's listing holds the rows of both nodes, each once, paged or whole."""
    expected = []
    for node in fleet.nodes:
        status, _, body = request(node.api_port, fleet.path("/v2/accounts/%s/cdrs" % A, paginate="false"), TOKEN_A)
        assert status == 200
        expected += json.loads(body)["data"]
    status, _, body = request(fleet.central, fleet.path("/v2/accounts/%s/cdrs" % A, paginate="false"), TOKEN_A)
    assert status == 200
    whole = json.loads(body)["data"]
    # Each row names the node it came from (source), the rest is the node's row.
    assert [row.pop("source") + ".example.com" for row in whole] == [row["media_server"] for row in whole]
    key = lambda row: json.dumps(row, sort_keys=True)  # noqa: E731
    assert sorted(whole, key=key) == sorted(expected, key=key)
    assert {r["media_server"] for r in whole} == {"fs-a.example.com", "fs-b.example.com"}
    # Newest first, as on a node (ties across nodes in any order).
    assert [int(r["timestamp"]) + r["duration_seconds"] for r in whole] == sorted(
        (int(r["timestamp"]) + r["duration_seconds"] for r in whole), reverse=True)
    seen, path = [], fleet.path("/v2/accounts/%s/cdrs" % A, page_size=3)
    while path:
        doc = json.loads(request(fleet.central, path, TOKEN_A)[2])
        seen += [r["id"] for r in doc["data"]]
        path = doc.get("next_start_key") and fleet.path("/v2/accounts/%s/cdrs" % A, page_size=3,
                                                         start_key=doc["next_start_key"])
    assert sorted(seen) == sorted(r["id"] for r in whole)
    status, head, body = request(fleet.central, fleet.path("/v2/accounts/%s/cdrs" % A), TOKEN_A,
                                 headers={"Accept": "text/csv"})
    assert status == 200 and head["content-type"] == "text/csv"
    assert len(list(csv.reader(io.StringIO(body.decode())))) == len(whole) + 1


def test_an_account_token_sees_its_account_of_every_node_and_nothing_else(fleet):
    b_rows = [r for n in fleet.nodes for r in rows_of(n, B)]
    a_rows = [r for n in fleet.nodes for r in rows_of(n, A)]
    assert b_rows and a_rows
    node = fleet.nodes[0]
    # Another account's routes: the node's answer (403), centrally too.
    for path in ("/v2/accounts/%s/cdrs" % B, "/v2/accounts/%s/cdrs/interaction" % B,
                 "/v2/accounts/%s/cdrs/%s" % (B, b_rows[0]["id"]), "/v2/accounts/%s/channels" % B):
        status, _, body = request(fleet.central, fleet.path(path), TOKEN_A)
        assert status == 403, (path, body[:200])
        assert request(node.api_port, fleet.path(path), TOKEN_A)[0] == 403
    # B's ids under A's account do not exist: 404 as on the node.
    for row in b_rows[:5]:
        for path in ("/v2/accounts/%s/cdrs/%s" % (A, row["id"]), "/v2/cdrs/%s" % row["id"],
                     "/v2/accounts/%s/cdrs/legs/%s" % (A, row["call_id"])):
            assert request(fleet.central, path, TOKEN_A)[0] == 404, path
    # The own-account listing: every A row of both nodes, no B row.
    status, _, body = request(fleet.central, fleet.path("/v2/cdrs", paginate="false"), TOKEN_A)
    ids = {r["id"] for r in json.loads(body)["data"]}
    assert status == 200 and ids == {r["id"] for r in a_rows}
    status, _, body = request(fleet.central, fleet.path("/v2/accounts/%s/cdrs" % B, paginate="false"), TOKEN_B)
    assert status == 200 and {r["id"] for r in json.loads(body)["data"]} == {r["id"] for r in b_rows}
    # No token, a wrong one, a node's token unknown here: 401.
    assert request(fleet.central, "/v2/accounts/%s/cdrs" % A)[0] == 401
    assert request(fleet.central, "/v2/accounts/%s/cdrs" % A, "not-a-token")[0] == 401
    assert request(fleet.central, "/v2/channels", TOKEN_A)[0] == 403


def test_central_login_tokeninfo_cors_page_and_the_rest(fleet):
    port = fleet.central
    status, _, body = request(port, "/v2/api_auth", method="PUT",
                              body=json.dumps({"data": {"api_key": TOKEN_A}}).encode(),
                              headers={"Content-Type": "application/json"})
    assert status == 201
    session = json.loads(body)["auth_token"]
    status, _, body = request(port, "/v2/auth/tokeninfo", session)
    assert status == 200 and json.loads(body)["data"]["account_id"] == A
    status, head, _ = request(port, fleet.path("/v2/accounts/%s/cdrs" % A), session, headers={"Origin": "https://ui.example"})
    assert status == 200 and head["access-control-allow-origin"] == "*"
    status, head, _ = request(port, "/v2/accounts/%s/cdrs" % A, method="OPTIONS",
                              headers={"Origin": "https://ui.example", "Access-Control-Request-Method": "GET"})
    assert status == 204 and "X-Auth-Token" in head["access-control-allow-headers"]
    status, head, body = request(port, "/ui")
    assert status == 200 and head["content-type"].startswith("text/html")
    # Not served centrally: the feed (404).
    assert request(port, "/v2/feed/cdrs", TOKEN)[0] == 404
    # Live channels: every node asked (none live now), none unreachable.
    status, _, body = request(port, "/v2/channels", TOKEN)
    doc = json.loads(body)
    assert status == 200 and doc["unreachable_nodes"] == [] and doc["page_size"] == len(doc["data"])
    status, _, body = request(port, "/health")
    health = json.loads(body)
    assert status == 200 and set(health["nodes"]) == {"fs-a", "fs-b"}
    # No null (a figure without a value is left out, as in every JSON answer): a node
    # that never failed has no last_error; the figures that always have one are there.
    assert list(null_paths(health)) == [] and "last_error" not in health["nodes"]["fs-a"]
    assert {"state", "url", "after", "rows_stored", "rows_per_second", "errors"} <= set(health["nodes"]["fs-a"])
    # A filter that matches nothing, a bad cursor: as on a node.
    node = fleet.nodes[0]
    same_answer(fleet, node, fleet.path("/v2/accounts/%s/cdrs" % A, filter_node="nowhere"))
    same_answer(fleet, node, fleet.path("/v2/accounts/%s/cdrs" % A, start_key="bad"))
    same_answer(fleet, node, "/v2/accounts/%s/cdrs/%s" % (A, "no-such-cdr"))
    now = int(time.time()) + GREGORIAN_OFFSET
    same_answer(fleet, node, "/v2/accounts/%s/cdrs?created_from=%d&created_to=%d" % (A, now - 10**8, now))


# The KPIs a bucket adds up over nodes (query/stats.py's counters).
ADDITIVE = ("legs", "attempts", "answered_attempts", "seizures", "answered", "user_outcomes", "failures",
            "pdd_legs", "mos_legs", "low_mos", "rtp_legs", "no_rtp")


def counted(node: MediaServer) -> list[dict]:
    """A's legs the KPIs count (loopback legs nowhere)."""
    return [r for r in rows_of(node, A) if not (r["channel_name"] or "").startswith("loopback/")]


def mos_rounded(value):
    """A stats answer with each ``mos_avg`` to 12 digits: the node adds MOS values as
    floating point, the collector exactly (docs/api.md); every other figure is compared as is."""
    if isinstance(value, dict):
        return {k: float("%.12g" % v) if k == "mos_avg" and isinstance(v, float) else mos_rounded(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [mos_rounded(v) for v in value]
    return value


def same_stats(fleet: Fleet, node: MediaServer, path: str, csv_too: bool = False) -> dict:
    """``same_answer`` for cdrs/stats: the same JSON and CSV but for mos_avg's last digits."""
    status, _, body = request(node.api_port, path, TOKEN)
    c_status, _, c_body = request(fleet.central, path, TOKEN)
    assert status == c_status == 200, c_body[:300]
    assert mos_rounded(comparable(c_body)) == mos_rounded(comparable(body)), path
    if csv_too:
        tables = []
        for port in (node.api_port, fleet.central):
            rows = list(csv.DictReader(io.StringIO(request(port, path, TOKEN, headers={"Accept": "text/csv"})[2].decode())))
            tables.append(mos_rounded([{k: float(v) if k == "mos_avg" and v else v for k, v in r.items()} for r in rows]))
        assert tables[0] == tables[1] and len(tables[0]) == len(json.loads(body)["data"]["buckets"]), path
    return json.loads(body)


def test_stats_and_worst_are_the_nodes(fleet):
    """One node's legs (``filter_node``): the node's KPIs and worst legs, JSON and
    CSV, every interval; unfiltered (the collector's roll-ups): each bucket's
    counts are the sum of the two nodes'."""
    for node in fleet.nodes:
        for interval in (60, 900, 3600, 86400):
            path = fleet.path("/v2/accounts/%s/cdrs/stats" % A, filter_node=node.name, interval=interval)
            doc = same_stats(fleet, node, path, csv_too=interval == 3600)
            assert doc["data"]["totals"]["legs"] == len(counted(node)) > 0
        owner = next(r["owner_id"] for r in rows_of(node, A) if r["owner_id"])
        same_stats(fleet, node, fleet.path("/v2/accounts/%s/users/%s/cdrs/stats" % (A, owner),
                                           filter_node=node.name, interval=1800))
        for kind in ("mos", "pdd", "no_rtp"):
            path = fleet.path("/v2/accounts/%s/cdrs/worst" % A, filter_node=node.name, by=kind, limit=500)
            same_answer(fleet, node, path)
            same_answer(fleet, node, path, accept="text/csv")
    for interval in (60, 3600):
        path = fleet.path("/v2/accounts/%s/cdrs/stats" % A, interval=interval)
        status, _, body = request(fleet.central, path, TOKEN_A)
        assert status == 200, body
        central = json.loads(body)["data"]
        per_node = [json.loads(request(node.api_port, path, TOKEN_A)[2])["data"] for node in fleet.nodes]
        assert central["totals"]["legs"] == sum(len(counted(node)) for node in fleet.nodes)
        for i, bucket in enumerate(central["buckets"] + [central["totals"]]):
            parts = [(doc["buckets"] + [doc["totals"]])[i] for doc in per_node]
            assert {k: bucket[k] for k in ADDITIVE} == {k: sum(p[k] for p in parts) for k in ADDITIVE}, i
            causes: dict[str, int] = {}
            for part in parts:
                for cause, n in part["hangup_causes"].items():
                    causes[cause] = causes.get(cause, 0) + n
            assert bucket["hangup_causes"] == causes, i
    # The worst legs of the fleet: every node's.
    path = fleet.path("/v2/accounts/%s/cdrs/worst" % A, by="mos", limit=500)
    central = json.loads(request(fleet.central, path, TOKEN_A)[2])["data"]
    nodes = [leg for node in fleet.nodes for leg in json.loads(request(node.api_port, path, TOKEN_A)[2])["data"]]
    assert sorted(leg["id"] for leg in central) == sorted(leg["id"] for leg in nodes) != []
    assert [leg["audio_in_mos"] for leg in central] == sorted(leg["audio_in_mos"] for leg in nodes)


def test_a_node_down_its_cdrs_are_still_served_and_channels_name_it(fleet):
    """Last in this file: it stops fs-b for good."""
    down = fleet.nodes[1]
    down_rows = rows_of(down, A)
    before = json.loads(request(fleet.central, fleet.path("/v2/accounts/%s/cdrs" % A, paginate="false"), TOKEN_A)[2])
    down.stop()
    started = time.monotonic()
    status, _, body = request(fleet.central, "/v2/accounts/%s/channels" % A, TOKEN_A)
    assert time.monotonic() - started < 10  # channels_timeout is 2 s
    doc = json.loads(body)
    assert status == 200 and [u["node"] for u in doc["unreachable_nodes"]] == [down.name], doc
    assert all(channel["source"] == fleet.nodes[0].name for channel in doc["data"])
    status, _, body = request(fleet.central, fleet.path("/v2/accounts/%s/cdrs" % A, paginate="false"), TOKEN_A)
    assert status == 200 and json.loads(body)["data"] == before["data"]
    assert {r["call_id"] for r in down_rows} <= {r["call_id"] for r in before["data"]}
    # /health: 503, the node's last_error once a pull failed, still no null.
    health = wait_for(lambda: (lambda got: got[0] == 503 and json.loads(got[2]))(request(fleet.central, "/health")),
                      what="the stopped node failing on /health")
    assert health["status"] == "degraded" and health["nodes"][down.name]["last_error"]
    assert list(null_paths(health)) == []
