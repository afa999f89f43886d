"""Redaction of log text: decoded spellings, presented credentials, known tokens."""

from __future__ import annotations

import pytest

from eslcdr.web.redact import REDACTED, Redactor, candidates, presented_in_environ, scrub, secret_name

TOKEN = "Zq3_vK9-xYt2LmN0pQr5sTu7wXy1aBc3dEf5gHi7jKl"  # token_urlsafe(32) shape


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
