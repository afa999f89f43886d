"""Real Kazoo client libraries from the package index against ``eslcdr run``.

kazoo-sdk (``kazoo.Client``: api_auth login, re-login on 401, its own error
classes) and PyKazoo (``PyKazooClient``: api_auth, ``RestRequest`` raising
ValueError / PermissionError) talk HTTP to a real daemon subprocess that
ingests generated calls from the FreeSWITCH stand-in over the Event Socket;
every test (``server``) also to ``eslcdr collect`` over the same rows, logins,
session expiry and re-login included.
Neither library is patched: what they do is what users of them get.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3

import gevent
import pytest
import requests

from eslcdr.fakefs import FakeFreeSWITCH, GeneratedSource

from tests.harness import DaemonProcess, settle, write_config

# kazoo-sdk's __init__ swaps json's default decoder for the whole process
# (objects become OrderedDicts, whose == minds key order): put it back so
# the rest of the suite is unaffected.  The client works either way.
_JSON_DECODER = json._default_decoder
import kazoo.client as kazoo_sdk  # noqa: E402 -- a test dependency (setup.cfg [test]): missing fails, never skips
json._default_decoder = _JSON_DECODER
from kazoo.exceptions import KazooApiAuthenticationError, KazooApiBadDataError, KazooApiError  # noqa: E402
from kazoo.request_objects import KazooRequest  # noqa: E402
from kazoo.rest_resources import RestResource  # noqa: E402
from pykazoo.client import PyKazooClient  # noqa: E402

ACCOUNT = "9a8b7c6d5e4f30211203f4e5d6c7b8a9"
OTHER = "1f2e3d4c5b6a79880897a6b5c4d3e2f1"
KEY = "kazoo-client-key-0123456789"
OTHER_KEY = "other-account-key-0123456789"
COLLECTOR_KEY = "collector-key-0123456789"
SESSION_TTL = 2.0


class CdrClient(kazoo_sdk.Client):
    """kazoo-sdk's own way to add a resource: a RestResource class field
    gives ``get_cdrs(account_id)`` and ``get_cdr(account_id, cdr_id)``."""

    _cdrs_resource = RestResource("cdr", "/accounts/{account_id}/cdrs/{cdr_id}", methods=["list", "detail"])

    def request(self, path: str, **params):
        """A GET the library's way (auth header, re-login and retry on 401)."""
        return self._execute_request(KazooRequest(path, get_params=params or None))


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kazoo-clients")
    (tmp / "tokens").write_text("%s %s\n%s %s\n%s *\n" % (KEY, ACCOUNT, OTHER_KEY, OTHER, COLLECTOR_KEY))
    fake = FakeFreeSWITCH(events=GeneratedSource(calls=40, seed=11, accounts=[ACCOUNT, OTHER]), hold=True)
    fake.start()
    ini = write_config(tmp, fake.port)
    ini.write_text(ini.read_text().replace("[api]\n", "[api]\nsession_ttl = %s\n" % SESSION_TTL))
    process = DaemonProcess(ini, tmp / "daemon.log")
    try:
        port = process.api_port()
        assert fake.wait_done(timeout=30)
        settle(tmp / "cdrs.db", 1.0)
        yield "http://127.0.0.1:%d/v2" % port, tmp, tmp / "daemon.log"
    finally:
        code = process.stop()
        fake.stop()
    assert code == 0
    log = (tmp / "daemon.log").read_text()
    for secret in (KEY, OTHER_KEY, COLLECTOR_KEY):
        assert secret not in log  # keys never logged (session tokens: see the tests below)


@pytest.fixture(scope="module", params=["node", "central"])
def server(request, daemon, tmp_path_factory):
    """The daemon's API, and (issue 17.1) ``eslcdr collect``'s central API over
    the same rows pulled into a real PostgreSQL (its ``session_ttl`` the node's):
    (base URL, the node's folder, the answering server's log)."""
    if request.param == "node":
        yield daemon
        return
    from tests.conftest import fresh_database
    from tests.e2e.test_collect_e2e import CollectorProcess, pg_rows, wait_for

    base, tmp, _ = daemon
    root = tmp_path_factory.mktemp("kazoo-central")
    (root / "tokens").write_text((tmp / "tokens").read_text())
    want = {r[0] for r in rows(tmp, "SELECT call_id FROM cdrs")}
    with fresh_database(request.getfixturevalue("pg_server")) as dsn:
        process = CollectorProcess(root, dsn, {"fs-test": (base[: -len("/v2")], COLLECTOR_KEY)},
                                   extra="tokens_file = %s\nsession_ttl = %s" % (root / "tokens", SESSION_TTL))
        try:
            port = process.port()
            wait_for(lambda: {r["call_id"] for r in pg_rows(dsn)} == want, what="the central copy")
            yield "http://127.0.0.1:%d/v2" % port, tmp, process.log_path
        finally:
            assert process.stop() == 0


def rows(tmp, sql, *args):
    conn = sqlite3.connect("file:%s?mode=ro" % (tmp / "cdrs.db"), uri=True)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def test_kazoo_sdk_login_list_paging_detail_legs(server):
    base, tmp, _ = server
    stored = rows(tmp, "SELECT id FROM cdrs WHERE account_id = ? ORDER BY timestamp DESC, seq DESC", ACCOUNT)
    assert len(stored) >= 20
    client = CdrClient(api_key=KEY, base_url=base)
    token = client.authenticate()
    assert token and token != KEY and client.auth_data["data"]["account_id"] == ACCOUNT
    assert "owner_id" not in client.auth_data["data"]

    listing = client.get_cdrs(ACCOUNT)
    assert listing["status"] == "success" and listing["auth_token"] == token
    assert [r["id"] for r in listing["data"]] == [r[0] for r in stored[:50]]

    # Paging with start_key until next_start_key is absent: every CDR once, in order.
    seen, params = [], {"page_size": 7}
    while True:
        page = client.request("/accounts/%s/cdrs" % ACCOUNT, **params)
        seen += [r["id"] for r in page["data"]]
        if "next_start_key" not in page:
            break
        params = {"page_size": 7, "start_key": page["next_start_key"]}
    assert seen == [r[0] for r in stored]

    detail = client.get_cdr(ACCOUNT, stored[0][0])
    assert detail["data"]["id"] == stored[0][0] and detail["revision"]
    assert isinstance(detail["data"]["channel_created_time"], int)

    interactions = client.request("/accounts/%s/cdrs/interaction" % ACCOUNT)["data"]
    stored_interactions = {r[0] for r in rows(tmp, "SELECT DISTINCT interaction_id FROM cdrs WHERE account_id = ?",
                                              ACCOUNT)}
    assert {r["interaction_id"] for r in interactions} == stored_interactions
    assert len(interactions) == len(stored_interactions)
    # Legs by interaction id and by CDR id: every leg of the interaction, and nothing else.
    some = interactions[0]
    expected_legs = {r[0] for r in rows(tmp, "SELECT id FROM cdrs WHERE interaction_id = ? AND account_id = ?",
                                        some["interaction_id"], ACCOUNT)}
    by_iid = client.request("/accounts/%s/cdrs/legs/%s" % (ACCOUNT, some["interaction_id"]))["data"]
    by_cdr = client.request("/accounts/%s/cdrs/legs/%s" % (ACCOUNT, some["id"]))["data"]
    assert {r["id"] for r in by_iid} == {r["id"] for r in by_cdr} == expected_legs
    for leg in by_iid:  # what the web UI reads on every leg
        assert "authorizing_id" not in leg or isinstance(leg["authorizing_id"], str)


def test_kazoo_sdk_user_cdrs_and_filters(server):
    base, tmp, _ = server
    client = CdrClient(api_key=KEY, base_url=base)
    client.authenticate()
    owner, count = rows(tmp, "SELECT owner_id, count(*) FROM cdrs WHERE account_id = ? AND owner_id != ''"
                             " GROUP BY 1 ORDER BY 2 DESC LIMIT 1", ACCOUNT)[0]
    mine = client.request("/accounts/%s/users/%s/cdrs" % (ACCOUNT, owner), paginate="false")["data"]
    assert len(mine) == count and {r["owner_id"] for r in mine} == {owner}
    user_interactions = client.request("/accounts/%s/users/%s/cdrs/interaction" % (ACCOUNT, owner))["data"]
    assert user_interactions and all(r["owner_id"] == owner for r in user_interactions)
    cause, cause_count = rows(tmp, "SELECT hangup_cause, count(*) FROM cdrs WHERE account_id = ?"
                                   " GROUP BY 1 ORDER BY 2 DESC LIMIT 1", ACCOUNT)[0]
    busy = client.request("/accounts/%s/cdrs" % ACCOUNT, filter_hangup_cause=cause, paginate="false")["data"]
    assert len(busy) == cause_count and {r["hangup_cause"] for r in busy} == {cause}
    not_busy = client.request("/accounts/%s/cdrs" % ACCOUNT, filter_not_hangup_cause=cause, paginate="false")
    assert cause not in {r["hangup_cause"] for r in not_busy["data"]}
    by_ccv = client.request("/accounts/%s/cdrs" % ACCOUNT, paginate="false",
                            **{"filter_custom_channel_vars.owner_id": owner})["data"]
    assert by_ccv and {r["owner_id"] for r in by_ccv} == {owner}


def test_kazoo_sdk_errors_are_its_own_exceptions(server):
    base, _, _ = server
    client = CdrClient(api_key=KEY, base_url=base)
    client.authenticate()
    with pytest.raises(KazooApiError):  # 404
        client.get_cdr(ACCOUNT, "202601-no-such-cdr")
    with pytest.raises(KazooApiBadDataError) as bad:  # 400 with Kazoo's field errors
        client.request("/accounts/%s/cdrs" % ACCOUNT, page_size="0")
    assert "page_size" in bad.value.field_errors
    with pytest.raises(KazooApiBadDataError) as wide:
        client.request("/accounts/%s/cdrs" % ACCOUNT, created_from="63800000000", created_to="63900000000")
    assert "date_range" in wide.value.field_errors["created_from"]
    with pytest.raises(KazooApiError):  # 403: another account
        client.get_cdrs(OTHER)
    bad_key = CdrClient(api_key="not-a-key", base_url=base)
    with pytest.raises(KazooApiAuthenticationError):  # the SDK's exception for a 401
        bad_key.authenticate()


def test_kazoo_sdk_logs_in_again_after_a_401(server):
    base, tmp, log = server
    client = CdrClient(api_key=KEY, base_url=base)
    first_token = client.authenticate()
    assert client.get_cdrs(ACCOUNT)["auth_token"] == first_token
    gevent.sleep(SESSION_TTL + 0.3)  # the session expires: the next request answers 401
    expired = requests.get(base + "/accounts/%s/cdrs" % ACCOUNT, headers={"X-Auth-Token": first_token}, timeout=10)
    assert expired.status_code == 401 and expired.json()["error"] == "401"
    answer = client.get_cdrs(ACCOUNT)  # kazoo-sdk catches the 401, logs in, retries
    assert answer["status"] == "success" and client.auth_token != first_token
    assert answer["auth_token"] == client.auth_token
    assert first_token not in log.read_text()


def test_pykazoo_login_list_detail_errors_and_relogin(server):
    base, tmp, _ = server
    client = PyKazooClient(base)
    auth = client.authentication.api_auth(KEY)
    assert client.authentication.authenticated and client.authentication.account_id == ACCOUNT
    token = auth["auth_token"]
    rest = client.authentication.rest_request
    listing = rest.get("accounts/%s/cdrs" % ACCOUNT, {"page_size": 3})
    assert len(listing["data"]) == 3 and "next_start_key" in listing
    second = rest.get("accounts/%s/cdrs" % ACCOUNT, {"page_size": 3, "start_key": listing["next_start_key"]})
    assert not {r["id"] for r in second["data"]} & {r["id"] for r in listing["data"]}
    cdr_id = listing["data"][0]["id"]
    assert rest.get("accounts/%s/cdrs/%s" % (ACCOUNT, cdr_id))["data"]["call_id"] == listing["data"][0]["call_id"]
    legs = rest.get("accounts/%s/cdrs/legs/%s" % (ACCOUNT, cdr_id))["data"]
    assert cdr_id in {r["id"] for r in legs}
    with pytest.raises(ValueError, match="404"):
        rest.get("accounts/%s/cdrs/202601-nothing" % ACCOUNT)
    with pytest.raises(ValueError, match="400"):
        rest.get("accounts/%s/cdrs" % ACCOUNT, {"utc_offset": "east"})
    with pytest.raises(PermissionError):
        client.authentication.user_auth("alice", "secret", "acme")
    gevent.sleep(SESSION_TTL + 0.3)
    with pytest.raises(PermissionError, match="401"):
        rest.get("accounts/%s/cdrs" % ACCOUNT)
    client.authentication.api_auth(KEY)  # what a PyKazoo user does on PermissionError
    assert rest.auth_token != token and rest.get("accounts/%s/cdrs" % ACCOUNT)["status"] == "success"
    # CSV the way a browser download or a script asks for it.
    response = requests.get(base + "/accounts/%s/cdrs?paginate=false" % ACCOUNT,
                            headers={"X-Auth-Token": rest.auth_token, "Accept": "application/octet-stream"},
                            timeout=10)
    assert response.headers["Content-Type"] == "text/csv"
    table = list(csv.reader(io.StringIO(response.content.decode("utf-8"), newline="")))
    assert table[0][0] == "ID" and len(table) - 1 == len(rows(tmp, "SELECT 1 FROM cdrs WHERE account_id = ?",
                                                                   ACCOUNT))


def test_pykazoo_cdrs_api_reads_the_logged_in_account(server):
    base, tmp, _ = server
    client = PyKazooClient(base)
    client.authentication.api_auth(KEY)
    answer = client.cdrs.get_cdrs({"paginate": "false"})  # GET /v2/cdrs: no account in the path
    assert {r["id"] for r in answer["data"]} == {
        r[0] for r in rows(tmp, "SELECT id FROM cdrs WHERE account_id = ?", ACCOUNT)}
    collector = PyKazooClient(base)
    collector.authentication.api_auth(COLLECTOR_KEY)
    with pytest.raises(ValueError, match="404"):  # a collector names the account
        collector.cdrs.get_cdrs()


def test_collector_key_logs_in_and_reads_any_account(server):
    base, tmp, log = server
    client = PyKazooClient(base)
    client.authentication.api_auth(COLLECTOR_KEY)
    assert client.authentication.account_id == "*"
    rest = client.authentication.rest_request
    other = rest.get("accounts/%s/cdrs" % OTHER, {"paginate": "false"})["data"]
    assert len(other) == len(rows(tmp, "SELECT 1 FROM cdrs WHERE account_id = ?", OTHER))
    if log.name == "daemon.log":  # the node
        assert len(rest.get("feed/cdrs", {"limit": 5})["data"]) == 5
    else:  # the collector serves no feed (docs/api.md)
        with pytest.raises(ValueError, match="404"):
            rest.get("feed/cdrs", {"limit": 5})
