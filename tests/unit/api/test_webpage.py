"""The /ui page's files and the token-info route, through WSGI (webtest).
The page itself runs in a real browser in test_ui_browser.py."""

from __future__ import annotations

import pytest
import webtest

from eslcdr.api import app as api
from eslcdr.store import db as store
from eslcdr.config import from_mapping
from eslcdr.query.reader import InlineRunner
from eslcdr.api.tokens import TokenStore
from eslcdr.api.ui import STATIC


@pytest.fixture
def web(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("token-a acc-a\ntoken-collector *\n")
    config = from_mapping({"store": {"path": str(tmp_path / "cdrs.db")}, "api": {"tokens_file": str(tokens)}})
    store.connect_writer(config.store.path).close()
    app = api.create_app(config, tokens=TokenStore(tokens), runner=InlineRunner())
    yield webtest.TestApp(app)
    app.close()


def test_page_and_files_need_no_token_and_carry_a_strict_policy(web):
    page = web.get("/ui")
    assert page.content_type == "text/html" and page.charset == "utf-8"
    assert '<script src="/ui/app.js"></script>' in page.text
    policy = page.headers["Content-Security-Policy"]
    assert "connect-src 'self'" in policy and "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert web.get("/ui/").text == page.text  # trailing slash: same page
    script = web.get("/ui/app.js")
    assert script.content_type == "text/javascript" and "X-Auth-Token" in script.text
    assert web.get("/ui/app.css").content_type == "text/css"
    chart = web.get("/ui/vendor/uPlot.iife.min.js")
    assert chart.body == (STATIC / "vendor" / "uPlot.iife.min.js").read_bytes()
    assert "MIT License" in web.get("/ui/vendor/LICENSE-uPlot").text


def test_page_refers_only_to_files_it_ships():
    html = (STATIC / "index.html").read_text()
    assert "http://" not in html and "https://" not in html  # no CDN
    for ref in ("/ui/vendor/uPlot.min.css", "/ui/app.css", "/ui/vendor/uPlot.iife.min.js", "/ui/app.js"):
        assert ref in html and (STATIC / ref[len("/ui/"):]).is_file()


@pytest.mark.parametrize("path", ["/ui/nothing.js", "/ui/vendor", "/ui/%2e%2e/api.py", "/ui/..%2fapi.py",
                                  "/ui/vendor/..%2f..%2fapi.py"])
def test_unknown_or_escaping_paths_are_kazoo_404s(web, path):
    response = web.get(path, status=404)
    assert response.json["error"] == "404"


def test_tokeninfo_says_the_tokens_account(web):
    assert web.get("/v2/auth/tokeninfo", headers={"X-Auth-Token": "token-a"}).json["data"] == {"account_id": "acc-a"}
    assert web.get("/v2/auth/tokeninfo", headers={"X-Auth-Token": "token-collector"}).json["data"] == {
        "account_id": "*"}
    assert web.get("/v2/auth/tokeninfo", status=401).json["error"] == "401"
    assert web.get("/v2/auth/tokeninfo", headers={"X-Auth-Token": "nope"}, status=401).json["error"] == "401"
