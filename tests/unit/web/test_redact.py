"""Redaction of log text: decoded spellings, presented credentials, known tokens."""

from __future__ import annotations

import pytest

from eslcdr.ingest.cdr import cdr_id
from eslcdr.query.params import KIND_CDRS, Cursor, encode_cursor

from eslcdr.web.redact import (
    REDACTED, Redactor, candidates, looks_generated, presented_in_environ, scrub, secret_name,
)

TOKEN = "Zq3_vK9-xYt2LmN0pQr5sTu7wXy1aBc3dEf5gHi7jKl"  # token_urlsafe(32) shape
REVOKED = "Hq8_tR2-wPx5KmB9vLs3nDy6cFj1gZe4uAo7iNk0bVt"  # the same shape, in no tokens file


@pytest.mark.parametrize("name", ["auth_token", "auth%5Ftoken", "auth_tok%65n", "AUTH_TOKEN", "auth%255Ftoken",
                                  "auth+token", "Auth-Token", "api_key", "password", "x_secret"])
def test_secret_names_in_any_spelling(name):
    assert secret_name(name)


@pytest.mark.parametrize("name", ["page_size", "start_key", "filter_caller_id_name", "accept", "created_from"])
def test_ordinary_names_are_not_secret(name):
    assert not secret_name(name)


def test_target_redacts_secret_values_known_tokens_and_presented_credentials():
    redactor = Redactor(lambda text: text == TOKEN, presented=["presented-credential"])
    assert redactor.target("/a?auth%5Ftoken=abcdefgh&page_size=2") == "/a?auth%5Ftoken=" + REDACTED + "&page_size=2"
    assert redactor.target("/v2/accounts/%s/cdrs" % TOKEN) == "/v2/accounts/%s/cdrs" % REDACTED
    assert TOKEN not in redactor.target("/a?filter_%s=1&x=glued%s" % (TOKEN, TOKEN))
    encoded = "".join("%%%02X" % ord(c) for c in TOKEN)
    assert redactor.target("/a?filter_caller_id_name=" + encoded) == "/a?filter_caller_id_name=" + REDACTED
    assert redactor.target("/a?x=presented-credential") == "/a?x=" + REDACTED
    assert redactor.target("/a?page_size=2&ascending=true") == "/a?page_size=2&ascending=true"


@pytest.mark.parametrize("target", [
    "/v2/accounts/{t}/cdrs", "/v2/cdrs/{t}", "/v2/accounts/acct/cdrs/legs/{t}", "/{t}", "/v2/accounts/%20{t}/cdrs",
    "/v2/accounts/Bearer%20{t}/cdrs", "/v2/accounts/x_{t}/cdrs", "/v2/accounts/{t}%0A/cdrs",
    "/v2/accounts/" + "".join("%%%02X" % ord(c) for c in REVOKED) + "/cdrs",
])
def test_a_token_shaped_path_segment_is_redacted_also_when_no_tokens_file_knows_it(target):
    # A revoked token, or another server's, pasted into a path: the server does not know it.
    logged = Redactor(lambda text: False).target(target.format(t=REVOKED))
    assert REVOKED not in logged and REDACTED in logged


@pytest.mark.parametrize("path", [
    "/v2/accounts/434d23e00e7f65e1ca9281d75dc8cade/cdrs",
    "/v2/accounts/434d23e00e7f65e1ca9281d75dc8cade/users/8a3e6c1f0b2d4e5f9a7c3b1d2e4f6a8c/cdrs/interaction",
    "/v2/accounts/434D23E00E7F65E1CA9281D75DC8CADE/cdrs",
    "/v2/accounts/434d23e00e7f65e1ca9281d75dc8cade/cdrs/202612-0f1e2d3c4b5a69788796a5b4c3d2e1f0",
    "/v2/cdrs/" + cdr_id("5b2c0f7e-8a1d-4c3e-9f6b-2d7a1e0c4b9f", 1_796_000_000_000_000),  # 43 characters
    "/v2/cdrs/legs/" + cdr_id("5B2C0F7E-8A1D-4C3E-9F6B-2D7A1E0C4B9F", 1_796_000_000_000_000),
    "/v2/cdrs/legs/63842137800-6f1c9a2b3d4e5f60",  # Kazoo's interaction id
    "/v2/cdrs/legs/a84b4c76e66710@pc33.atlanta.com", "/ui/uPlot.iife.min.js", "/v2/channels", "/health",
])
def test_the_ids_the_api_paths_carry_stay_readable(path):
    assert Redactor(lambda text: False).target(path) == path


def test_query_values_are_not_judged_by_shape():
    # A paging cursor (URL-safe base64) and a SIP Call-ID may look like a token:
    # only secret-named parameters and known or presented credentials go.
    cursor = encode_cursor(Cursor(kind=KIND_CDRS, key=63900000000, seq=123456, created_from=63899990000,
                                  created_to=63900003600))
    assert looks_generated(cursor)
    target = "/v2/cdrs?start_key=%s&filter_sip_call_id=%s" % (cursor, REVOKED)
    assert Redactor(lambda text: False).target(target) == target


def test_the_tokens_this_software_makes_look_generated(tmp_path):
    from eslcdr.api.sessions import SessionStore
    from eslcdr.api.tokens import add_token

    assert looks_generated(add_token(tmp_path / "tokens", "acct"))
    assert looks_generated(SessionStore(ttl=60).create(b"k" * 32, "acct"))
    # A CDR id of a FreeSWITCH call (its Unique-ID, a UUID) is as long as a token, but one case only.
    uuid_cdr_id = cdr_id("5b2c0f7e-8a1d-4c3e-9f6b-2d7a1e0c4b9f", 0)
    assert len(uuid_cdr_id) == len(REVOKED) and not looks_generated(uuid_cdr_id)


def test_candidates_find_a_token_behind_a_separator_or_glued():
    assert TOKEN in candidates("filter_" + TOKEN + "=1")
    assert TOKEN in candidates("abc" + TOKEN + "def")


def test_presented_credentials_include_printable_runs_of_a_broken_header():
    environ = {"HTTP_X_AUTH_TOKEN": TOKEN + "\xff", "QUERY_STRING": "auth%5Ftoken=other-secret&a=1"}
    found = presented_in_environ(environ)
    assert TOKEN in found and "other-secret" in found


@pytest.mark.parametrize("text", [
    "GET /x?auth_token=%s HTTP/1.1" % TOKEN, "auth%%5Ftoken=%s" % TOKEN, "auth_tok%%2565n=%s" % TOKEN,
    "X-Auth-Token: %s" % TOKEN, "Authorization: Bearer %s" % TOKEN, '{"auth_token": "%s"}' % TOKEN,
    "AUTH+TOKEN=%s" % TOKEN,
])
def test_scrub_removes_what_reads_like_a_credential(text):
    assert TOKEN not in scrub(text) and REDACTED in scrub(text)


def test_scrub_leaves_other_text_and_redacted_text_alone():
    assert scrub("caller 100%% sure, page_size=5") == "caller 100%% sure, page_size=5"
    assert scrub("/a?auth%5Ftoken=[redacted]") == "/a?auth%5Ftoken=[redacted]"


def test_an_unexpected_exception_logs_its_type_and_frames_never_its_text(tmp_path):
    import io

    import structlog

    from eslcdr.api import app as api
    from eslcdr.config import from_mapping
    from eslcdr.query.reader import InlineRunner

    tokens = tmp_path / "tokens"
    tokens.write_text("")

    def broken_health():
        raise UnicodeDecodeError("utf-8", b"header-bytes-" + TOKEN.encode() + b"\xff", 5, 6, "invalid start byte")

    config = from_mapping({"store": {"path": str(tmp_path / "x.db")}, "api": {"tokens_file": str(tokens)}})
    app = api.create_app(config, health=broken_health, runner=InlineRunner())
    errors = io.StringIO()
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/health", "QUERY_STRING": "x=1", "SERVER_NAME": "x",
               "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
               "wsgi.input": io.BytesIO(b""), "wsgi.errors": errors}
    statuses = []
    with structlog.testing.capture_logs() as logs:
        body = b"".join(app(environ, lambda status, headers, exc_info=None: statuses.append(status)))
    assert statuses[0].startswith("500") and b'"error":"500"' in body
    assert errors.getvalue() == ""  # Bottle's traceback never reaches wsgi.errors
    assert [entry["event"] for entry in logs] == ["api_unhandled_exception"]
    assert logs[0]["error"] == "UnicodeDecodeError" and "broken_health" in logs[0]["frames"]
    assert TOKEN not in repr(logs)
