"""What Kazoo clients rely on around the data (issue 7), through WSGI:
login (api_auth / user_auth, sessions), CORS, no nulls in any JSON answer,
CSV content types and header, the envelope (auth_token, revision).

Real Kazoo client libraries against a running daemon: test_kazoo_clients.py.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eslcdr.config import from_mapping
from eslcdr.api.sessions import SessionStore

from tests import kazoo_shapes
from tests.unit.api.test_api import A, ACC_A, ACC_B, COLLECTOR, NOW, NOW_G, TOKENS, Env, interaction_id, leg
from tests.unit.api.test_api import CENTRAL_TOO, env  # noqa: F401 (a fixture: a node's API, or the central one)
from tests.unit.api.test_api import BOTH_SERVERS, CentralEnv, opened_env
from tests.e2e.test_hostile_e2e import start_daemon  # noqa: F401 (a fixture)


def login(web, key, status=201, headers=None):
    return web.put("/v2/api_auth", json.dumps({"data": {"api_key": key}}), status=status,
                   headers={"Content-Type": "application/json", **(headers or {})})


def assert_kazoo_error(response, status: int, message: str) -> dict:
    assert response.status_int == status and response.content_type == "application/json"
    body = response.json
    assert body["status"] == "error" and body["error"] == str(status) and body["message"] == message
    assert isinstance(body["data"], dict)
    return body


# ------------------------------------------------------------------ login


@CENTRAL_TOO
def test_api_auth_answers_a_session_token_for_the_keys_account(env):
    rec = env.insert([leg(NOW_G - 5)])[0]
    response = login(env.web, "token-a", headers={"X-Request-ID": "login-1"})
    body = response.json
    assert response.status_int == 201 and body["status"] == "success"
    assert body["data"] == {"account_id": ACC_A}  # no owner_id: no user logged in
    token = body["auth_token"]
    assert isinstance(token, str) and len(token) >= 40 and token != "token-a"
    assert body["request_id"] == "login-1" and body["revision"]
    # The session token reads the account like the key does, and is echoed back.
    listing = env.get("/v2/accounts/%s/cdrs" % ACC_A, headers={"X-Auth-Token": token}).json
    assert [r["id"] for r in listing["data"]] == [rec["id"]] and listing["auth_token"] == token
    assert env.get("/v2/accounts/%s/cdrs" % ACC_B, headers={"X-Auth-Token": token}, status=403)
    # Each login is a new token; the key itself keeps working.
    assert login(env.web, "token-a").json["auth_token"] != token
    assert env.get("/v2/accounts/%s/cdrs" % ACC_A).json["auth_token"] == "token-a"


@CENTRAL_TOO
def test_a_collector_key_logs_in_too(env):
    env.insert([leg(NOW_G - 5, account=ACC_B)])
    body = login(env.web, "token-collector").json
    assert body["data"] == {"account_id": "*"}
    headers = {"X-Auth-Token": body["auth_token"]}
    assert len(env.get("/v2/accounts/%s/cdrs" % ACC_B, headers=headers).json["data"]) == 1
    if isinstance(env, CentralEnv):  # the collector serves no feed (docs/api.md)
        assert_kazoo_error(env.get("/v2/feed/cdrs", headers=headers, status=404), 404, "faulty_request")
        return
    assert len(env.get("/v2/feed/cdrs", headers=headers).json["data"]) == 1
    # Its feed pulls acknowledge as the API key (what retention counts), never as the session.
    env.get("/v2/feed/cdrs?after=1", headers=headers)
    import hashlib
    acks = dict(env.writer.execute("SELECT token_sha256, acked_seq FROM collector_acks").fetchall())
    assert acks == {hashlib.sha256(b"token-collector").hexdigest(): 1}


@pytest.mark.parametrize("body", [
    {"data": {"api_key": "wrong"}}, {"data": {"api_key": ""}}, {"data": {}}, {"data": {"api_key": 42}},
    {"data": {"api_key": None}}, {"data": {"api_key": ["token-a"]}}, {"data": {"credentials": "x"}},
    {"data": {"api_key": "TOKEN-A"}}, {"data": {"api_key": "token-a "}},
])
@CENTRAL_TOO
def test_api_auth_bad_or_missing_key_is_kazoos_401(env, body):
    response = env.web.put("/v2/api_auth", json.dumps(body), status="*")
    body = assert_kazoo_error(response, 401, "invalid_credentials")
    assert body["data"] == {"message": "invalid credentials"} and "auth_token" not in body


@pytest.mark.parametrize("raw, status, message", [
    (b"{not json", 400, "validation error"),
    (b"", 400, "validation error"),
    (b"\xff\xfe\x00garbage", 400, "validation error"),
    (b'{"data": "token-a"}', 400, "validation error"),
    (b'["token-a"]', 400, "validation error"),
    (b'{"api_key": "token-a"}', 400, "validation error"),
    (b"{}", 400, "validation error"),
    (b'{"data": {"api_key": "' + b"x" * 70000 + b'"}}', 413, "request entity too large"),
])
@CENTRAL_TOO
def test_api_auth_malformed_body_is_a_400(env, raw, status, message):
    body = assert_kazoo_error(env.web.put("/v2/api_auth", raw, status="*"), status, message)
    if status == 400:
        (param, detail), = body["data"].items()
        assert param in ("json", "data") and list(detail.values())[0]["target"] == "body"


@CENTRAL_TOO
def test_user_auth_is_kazoos_401_and_other_verbs_405(env):
    creds = {"data": {"credentials": "5f4dcc3b5aa765d61d8327deb882cf99", "account_name": "acme"}}
    assert_kazoo_error(env.web.put("/v2/user_auth", json.dumps(creds), status="*"), 401, "invalid_credentials")
    for url in ("/v2/api_auth", "/v2/user_auth"):
        response = env.web.get(url, status="*")
        assert_kazoo_error(response, 405, "invalid_method")
        assert "PUT" in response.headers["Allow"]


@BOTH_SERVERS
def test_sessions_expire_and_follow_the_tokens_file(server, request, tmp_path):
    now = [1000.0]
    with opened_env(server, tmp_path, request, sessions=SessionStore(60, clock=lambda: now[0]),
                    reread_tokens=True) as env:
        sessions_expire_and_follow_the_tokens_file(env.web, env.tokens_file, now)


def sessions_expire_and_follow_the_tokens_file(web, tokens, now: list[float]) -> None:
    url = "/v2/accounts/%s/cdrs" % ACC_A
    token = login(web, "token-a").json["auth_token"]
    web.get(url, headers={"X-Auth-Token": token})
    now[0] += 59.9
    web.get(url, headers={"X-Auth-Token": token})
    now[0] += 0.2  # past the expiry: Kazoo's 401, and the client logs in again
    assert_kazoo_error(web.get(url, headers={"X-Auth-Token": token}, status=401), 401, "invalid_credentials")
    fresh = login(web, "token-a").json["auth_token"]
    web.get(url, headers={"X-Auth-Token": fresh})
    # A key removed from the tokens file ends its sessions; the others live on.
    other = login(web, "token-b").json["auth_token"]
    tokens.write_text("token-b %s\n# token-a revoked\n" % ACC_B)
    assert_kazoo_error(web.get(url, headers={"X-Auth-Token": fresh}, status=401), 401, "invalid_credentials")
    web.get("/v2/accounts/%s/cdrs" % ACC_B, headers={"X-Auth-Token": other})
    assert_kazoo_error(login(web, "token-a", status=401), 401, "invalid_credentials")


def test_session_store_is_bounded():
    now = [0.0]
    store = SessionStore(100, max_sessions=5, max_per_key=3, clock=lambda: now[0])
    key_a, key_b = b"a" * 32, b"b" * 32
    valid = {key_a: "A", key_b: "B"}.get
    first_a = [store.create(key_a, "A") for _ in range(3)]
    fourth_a = store.create(key_a, "A")  # the key's oldest session goes
    assert store.lookup(first_a[0], valid) is None and store.lookup(fourth_a, valid) == "A"
    b_tokens = [store.create(key_b, "B") for _ in range(3)]
    assert len(store) == 5  # the oldest of all went to make room
    assert store.lookup(first_a[1], valid) is None and all(store.lookup(t, valid) == "B" for t in b_tokens)
    assert store.lookup("not-a-session", valid) is None
    now[0] = 100
    assert store.lookup(b_tokens[0], valid) is None
    store.create(key_a, "A")
    assert len(store) == 1  # expired sessions are dropped as new ones come


@CENTRAL_TOO
def test_tokens_never_reach_the_logs(env, capsys):
    import structlog
    from structlog.testing import capture_logs

    with capture_logs() as logs:
        token = login(env.web, "token-a").json["auth_token"]
        env.get("/v2/accounts/%s/cdrs?auth_token=%s" % (ACC_A, token), headers={})
        env.web.put("/v2/api_auth", json.dumps({"data": {"api_key": "token-b-wrong"}}), status=401)
    text = json.dumps(logs, default=str) + capsys.readouterr().out + capsys.readouterr().err
    for secret in ("token-a", token, "token-b-wrong"):
        assert secret not in text
    del structlog


# ------------------------------------------------------------------- CORS

PREFLIGHT = {"Origin": "https://ui.example.net", "Access-Control-Request-Method": "GET",
             "Access-Control-Request-Headers": "x-auth-token, content-type"}
@CENTRAL_TOO
def test_account_less_cdr_paths_are_the_tokens_account(env):
    mine = env.insert([leg(NOW_G - 5)])[0]
    theirs = env.insert([leg(NOW_G - 6, account=ACC_B)])[0]
    assert [r["id"] for r in env.get("/v2/cdrs").json["data"]] == [mine["id"]]
    assert [r["id"] for r in env.get("/v2/cdrs", headers={"X-Auth-Token": "token-b"}).json["data"]] == [
        theirs["id"]]
    assert env.get("/v2/cdrs/%s" % mine["id"]).json["data"]["call_id"] == mine["call_id"]
    assert env.get("/v2/cdrs/%s" % theirs["id"], status=404)
    assert [r["call_id"] for r in env.get("/v2/cdrs/legs/%s" % mine["id"]).json["data"]] == [mine["call_id"]]
    assert [r["id"] for r in env.get("/v2/cdrs/interaction").json["data"]] == [mine["id"]]
    assert_kazoo_error(env.get("/v2/cdrs", headers={}, status=401), 401, "invalid_credentials")
    assert_kazoo_error(env.get("/v2/cdrs", headers=COLLECTOR, status=404), 404, "faulty_request")


ROUTES = ["/v2/accounts/%s/cdrs" % ACC_A, "/v2/cdrs", "/v2/cdrs/interaction", "/v2/cdrs/x", "/v2/accounts/%s/cdrs/interaction" % ACC_A,
          "/v2/accounts/%s/cdrs/legs/x" % ACC_A, "/v2/accounts/%s/cdrs/202601-x" % ACC_A,
          "/v2/accounts/%s/users/u1/cdrs" % ACC_A, "/v2/accounts/%s/users/u1/cdrs/interaction" % ACC_A,
          "/v2/feed/cdrs", "/v2/api_auth", "/v2/user_auth"]


@pytest.mark.parametrize("url", ROUTES)
@CENTRAL_TOO
def test_cors_preflight_on_every_route(env, url):
    response = env.web.options(url, headers=PREFLIGHT, status="*")
    headers = response.headers
    if url == "/v2/feed/cdrs" and isinstance(env, CentralEnv):  # no feed centrally (docs/api.md): no route
        assert_kazoo_error(response, 404, "faulty_request")
        return
    assert response.status_int == 204 and response.body == b""
    assert headers["Access-Control-Allow-Origin"] == "*"
    method = "PUT" if url.endswith("_auth") else "GET"
    assert [m.strip() for m in headers["Access-Control-Allow-Methods"].split(",")] == [method, "OPTIONS"]
    allowed = {h.strip().lower() for h in headers["Access-Control-Allow-Headers"].split(",")}
    assert {"x-auth-token", "content-type", "x-request-id", "accept"} <= allowed
    exposed = {h.strip().lower() for h in headers["Access-Control-Expose-Headers"].split(",")}
    assert {"x-request-id", "content-type", "etag", "x-auth-token"} <= exposed
    assert headers["Access-Control-Max-Age"] == "86400"
    assert "Access-Control-Allow-Credentials" not in headers


@CENTRAL_TOO
def test_cross_origin_get_and_errors_carry_the_origin_header(env):
    env.insert([leg(NOW_G - 5)])
    origin = {"Origin": "https://ui.example.net"}
    ok = env.get("/v2/accounts/%s/cdrs" % ACC_A, headers={**A, **origin})
    assert ok.headers["Access-Control-Allow-Origin"] == "*"
    assert "x-request-id" in ok.headers["Access-Control-Expose-Headers"].lower()
    assert "Access-Control-Allow-Methods" not in ok.headers  # preflight only
    for url, headers, status in [("/v2/accounts/%s/cdrs" % ACC_A, origin, 401),
                                 ("/v2/accounts/%s/cdrs" % ACC_B, {**A, **origin}, 403),
                                 ("/v2/accounts/%s/cdrs?page_size=0" % ACC_A, {**A, **origin}, 400),
                                 ("/v2/nowhere", origin, 404),
                                 ("/v2/accounts/%s/cdrs/202601-none" % ACC_A, {**A, **origin}, 404)]:
        response = env.web.get(url, headers=headers, status=status)
        assert response.headers["Access-Control-Allow-Origin"] == "*", url
    post = env.web.post("/v2/accounts/%s/cdrs" % ACC_A, headers={**A, **origin}, status=405)
    assert post.headers["Access-Control-Allow-Origin"] == "*"
    csv_response = env.get("/v2/accounts/%s/cdrs?accept=csv" % ACC_A, headers={**A, **origin})
    assert csv_response.headers["Access-Control-Allow-Origin"] == "*"
    bad_login = env.web.put("/v2/api_auth", '{"data": {"api_key": "no"}}', headers=origin, status=401)
    assert bad_login.headers["Access-Control-Allow-Origin"] == "*"


@BOTH_SERVERS
def test_cors_with_a_list_of_origins_or_none(server, request, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with opened_env(server, tmp_path / "a", request, cors_origins="https://ui.example.net, https://ops.example.net") as listed:
        url = "/v2/accounts/%s/cdrs" % ACC_A
        good = listed.get(url, headers={**A, "Origin": "https://ops.example.net"})
        assert good.headers["Access-Control-Allow-Origin"] == "https://ops.example.net"
        assert good.headers["Vary"] == "Origin"
        bad = listed.get(url, headers={**A, "Origin": "https://evil.example.com"})
        assert "Access-Control-Allow-Origin" not in bad.headers and bad.headers["Vary"] == "Origin"
        pre = listed.web.options(url, headers={**PREFLIGHT, "Origin": "https://ui.example.net"}, status=204)
        assert pre.headers["Access-Control-Allow-Origin"] == "https://ui.example.net"
        assert pre.headers["Access-Control-Max-Age"] == "86400"
        pre_bad = listed.web.options(url, headers={**PREFLIGHT, "Origin": "https://evil.example.com"}, status=204)
        assert not any(h.startswith("Access-Control-") for h in pre_bad.headers)
        for path in ("/health", "/metrics"):  # not even for a listed origin
            for response in (listed.web.get(path, headers={"Origin": "https://ui.example.net"}),
                             listed.web.options(path, headers={**PREFLIGHT, "Origin": "https://ui.example.net"},
                                                status=204)):
                assert not any(h.startswith("Access-Control-") or h == "Vary" for h in response.headers), path
    with opened_env(server, tmp_path / "b", request, cors_origins="") as off:
        response = off.get("/v2/accounts/%s/cdrs" % ACC_A, headers={**A, "Origin": "https://ui.example.net"})
        assert not any(h.startswith("Access-Control-") for h in response.headers)


def test_health_and_metrics_carry_no_cors_headers_the_v2_routes_do(start_daemon):
    """/health and /metrics name the database file and FreeSWITCH's address:
    no web page of another origin may read them, whatever ``cors_origins``
    says -- no Access-Control-* header on GET nor on the OPTIONS preflight,
    from a real ``eslcdr run`` with ``cors_origins = *``.  Kazoo's routes keep theirs."""
    from tests.harness import exchange
    from tests.e2e.test_hostile_e2e import ACCOUNT, status_of

    _, port, token = start_daemon(cors_origins="*")
    origin = b"Host: x\r\nConnection: close\r\nOrigin: https://evil.example.com\r\n"
    preflight = origin + b"Access-Control-Request-Method: GET\r\nAccess-Control-Request-Headers: x-auth-token\r\n"

    def answer(method: bytes, target: str, headers: bytes) -> tuple[int, dict[str, str], bytes]:
        head, _, body = exchange(port, b"%s %s HTTP/1.1\r\n%s\r\n" % (method, target.encode(), headers)
                                 ).partition(b"\r\n\r\n")
        fields = dict(line.split(": ", 1) for line in head.decode("latin-1").split("\r\n")[1:])
        return status_of(head), {name.lower(): value for name, value in fields.items()}, body

    for target in ("/health", "/metrics", "/health/", "/metrics?x=1"):
        status, headers, body = answer(b"GET", target, origin)
        assert status == 200, (target, body[:200])
        assert b"eslcdr_api_requests" in body if target.startswith("/metrics") else json.loads(body)["status"] == "ok"
        assert not any(name.startswith("access-control-") for name in headers), (target, headers)
        status, headers, _ = answer(b"OPTIONS", target, preflight)
        assert status == 204 and headers["allow"] == "GET, OPTIONS"
        assert not any(name.startswith("access-control-") for name in headers), (target, headers)
    cdrs = "/v2/accounts/%s/cdrs" % ACCOUNT
    status, headers, body = answer(b"GET", cdrs, origin + b"X-Auth-Token: %s\r\n" % token.encode())
    assert status == 200 and json.loads(body)["status"] == "success"
    assert headers["access-control-allow-origin"] == "*" and "x-request-id" in headers[
        "access-control-expose-headers"].lower()
    status, headers, _ = answer(b"OPTIONS", cdrs, preflight)
    assert status == 204 and headers["access-control-allow-origin"] == "*"
    assert headers["access-control-allow-methods"] == "GET, OPTIONS"
    assert "x-auth-token" in headers["access-control-allow-headers"].lower()


def test_bad_cors_config_is_a_config_error(tmp_path):
    from eslcdr.config import ConfigError

    for value in ("ui.example.net", "https://ui.example.net/"):
        with pytest.raises(ConfigError, match="cors_origins"):
            from_mapping({"api": {"cors_origins": value}})


# -------------------------------------------------------------------- CSV


@CENTRAL_TOO
def test_csv_content_type_accept_and_header(env):
    rec = env.insert([leg(NOW_G - 5, caller_id_name="Smith, John")])[0]
    url = "/v2/accounts/%s/cdrs" % ACC_A
    for accept in ("text/csv", "application/octet-stream", "text/comma-separated-values",
                   "application/octet-stream, */*", "application/json;q=0.5, text/csv"):
        response = env.get(url, headers={**A, "Accept": accept})
        assert response.headers["Content-Type"] == "text/csv", accept
        table = list(csv.reader(io.StringIO(response.body.decode("utf-8"), newline="")))
        assert table[0][0] == "ID" and table[0][1:] == kazoo_shapes.LIST_COLUMNS[1:]
        assert table[1][0] == rec["id"] and table[1][3] == "Smith, John"
    for accept in ("application/json", "*/*", "", "application/json, text/csv", "text/csv;q=0.2, application/json",
                   "text/html"):
        response = env.get(url, headers={**A, "Accept": accept})
        assert response.headers["Content-Type"] == "application/json", accept
        assert response.json["data"][0]["id"] == rec["id"]
    detail = "/v2/accounts/%s/cdrs/%s" % (ACC_A, rec["id"])
    for path in (detail, "/v2/accounts/%s/cdrs/legs/%s" % (ACC_A, rec["id"]),
                 "/v2/accounts/%s/cdrs/interaction" % ACC_A):
        response = env.get(path, headers={**A, "Accept": "application/octet-stream"})
        assert response.headers["Content-Type"] == "text/csv" and response.body.startswith(b'"ID",')
    empty = env.get("/v2/accounts/%s/cdrs?accept=csv" % ACC_B, headers={"X-Auth-Token": "token-b"})
    assert empty.headers["Content-Type"] == "text/csv" and empty.body.startswith(b'"ID","call_id"')


# --------------------------------------------------------------- envelope


def test_detail_has_a_revision_that_follows_the_record(env):
    rec = env.insert([leg(NOW_G - 5)])[0]
    url = "/v2/accounts/%s/cdrs/%s" % (ACC_A, rec["id"])
    first = env.get(url)
    assert first.json["revision"] and first.headers["ETag"] == '"%s"' % first.json["revision"]
    assert env.get(url).json["revision"] == first.json["revision"]
    env.writer.execute("UPDATE cdrs SET hangup_cause = 'USER_BUSY' WHERE id = ?", (rec["id"],))
    assert env.get(url).json["revision"] != first.json["revision"]
    assert first.json["auth_token"] == "token-a"
    bearer = env.get(url, headers={"Authorization": "Bearer token-a"}).json
    assert bearer["auth_token"] == "token-a"


# ------------------------------------------------------------------ nulls

NULLABLE = ["owner_id", "authorizing_id", "caller_id_name", "caller_id_number", "callee_id_name",
            "callee_id_number", "hangup_cause", "hangup_code", "disposition", "other_leg_call_id", "to",
            "from", "request", "presence_id", "user_agent", "media_server", "local_sdp", "remote_sdp",
            "digits_dialed", "fax_success", "fax_result_code", "answered_us", "custom_sip_headers",
            "channel_name", "from_uri", "to_uri", "call_direction", "duration_seconds", "billing_seconds",
            "ringing_seconds", "node", "app_version", "created_us"]
CCV = st.dictionaries(st.sampled_from(["owner_id", "bridge_id", "rate", "rate_name", "media_recordings",
                                       "account_billing", "recording_url", "call_priority", "x"]),
                      st.one_of(st.none(), st.text(max_size=5), st.integers(-5, 500),
                                st.lists(st.one_of(st.none(), st.text(max_size=3)), max_size=3),
                                st.dictionaries(st.text(max_size=3), st.none(), max_size=2)),
                      max_size=5)


def null_paths(value, path="$"):
    if value is None:
        yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from null_paths(item, "%s.%s" % (path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from null_paths(item, "%s[%d]" % (path, i))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    nulls=st.lists(st.sets(st.sampled_from(NULLABLE)), min_size=1, max_size=6),
    ccvs=st.lists(CCV, min_size=1, max_size=6),
    query=st.sampled_from(["", "?paginate=false", "?page_size=2", "?ascending=true&page_size=1",
                           "?filter_hangup_cause=NORMAL_CLEARING", "?has_value=owner_id",
                           "?value_missing=authorizing_id", "?filter_not_owner_id=user-1",
                           "?key_missing=custom_channel_vars.rate", "?utc_offset=3600"]),
    uuid_ids=st.booleans(),
)
def test_no_json_answer_holds_a_null(nulls, ccvs, query, uuid_ids):
    with tempfile.TemporaryDirectory() as tmp:
        env = Env(Path(tmp))
        try:
            records = []
            for i, absent in enumerate(nulls):
                iid = ("%s" % __import__("uuid").uuid4()) if uuid_ids and i % 2 else interaction_id(NOW_G - 900)
                rec = leg(NOW_G - 60 * i, interaction=iid, created_g=NOW_G - 900 + i,
                          custom_channel_vars=ccvs[i % len(ccvs)])
                rec.update({name: None for name in absent})
                records.append(rec)
            env.insert(records)
            base = "/v2/accounts/%s" % ACC_A
            urls = [base + "/cdrs" + query, base + "/cdrs/interaction" + query,
                    base + "/users/user-1/cdrs" + query, base + "/users/user-1/cdrs/interaction" + query,
                    "/v2/feed/cdrs", "/health", base + "/cdrs/202601-missing", base + "/cdrs?page_size=x",
                    "/v2/nowhere", "/v2/cdrs" + query, "/v2/cdrs/interaction",
                    base + "/cdrs/stats", base + "/cdrs/stats?interval=60", base + "/users/user-1/cdrs/stats",
                    base + "/cdrs/worst?by=mos", base + "/cdrs/worst?by=pdd", base + "/cdrs/worst?by=no_rtp",
                    base + "/users/user-1/cdrs/worst?by=mos", base + "/channels", base + "/users/user-1/channels",
                    "/v2/channels"]
            for rec in records:
                urls += [base + "/cdrs/%s" % rec["id"], base + "/cdrs/legs/%s" % rec["id"],
                         base + "/cdrs/legs/%s" % rec["interaction_id"]]
            for url in urls:
                headers = COLLECTOR if url.startswith(("/v2/feed", "/v2/channels")) else A
                response = env.web.get(url, headers=headers, status="*")
                assert response.content_type == "application/json", url
                assert list(null_paths(response.json)) == [], url
            login_answer = login(env.web, "token-a").json
            assert list(null_paths(login_answer)) == []
        finally:
            env.close()


def test_the_servers_own_errors_carry_the_origin_header(tmp_path):
    """Requests gevent cannot parse never reach the app: the server's own
    Kazoo envelope carries Access-Control-Allow-Origin too."""
    from tests.harness import exchange
    from tests.e2e.test_api_e2e import LogLines, ServerThread

    env = Env(tmp_path)
    server = ServerThread(env.app, LogLines())
    try:
        for raw in (b"GET /v2/accounts/x/cdrs HTTP/9.9\r\nOrigin: https://ui.example.net\r\n\r\n",
                    b"BREW /\r\n\r\n", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n"):
            head, _, body = exchange(server.port, raw).partition(b"\r\n\r\n")
            assert head.split(b" ")[1] in (b"400", b"414"), head
            assert b"\r\nAccess-Control-Allow-Origin: *" in head
            assert json.loads(body)["status"] == "error"
    finally:
        server.stop()
        env.close()
