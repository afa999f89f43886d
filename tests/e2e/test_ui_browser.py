"""The /ui page in a real headless browser (Debian's chromium through
chromedriver, driven by selenium): the stand-in plays a day of generated
calls and then live ones into a real ``eslcdr run``; the page, loaded with a
token in its URL fragment, draws its charts from the API, lists the worst
legs and opens their records, shows the live channels, and logs no
JavaScript error.  A screenshot is written to the test's tmp folder.

Each test runs twice (``served``): on the node's API, and on the central API
of a real ``eslcdr collect`` (real PostgreSQL) fed by two such nodes plus a
node that never answers -- the page then shows the fleet: each live channel's
server (``source``) and the server that did not answer (``unreachable_nodes``).

``make test`` installs chromium and chromium-driver from Debian when
/usr/bin/chromium is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import gevent
import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from eslcdr.fakefs import FakeFreeSWITCH, GeneratedSource

from tests.harness import DaemonProcess, write_config
from tests.e2e.test_central_api import central_collector
from tests.e2e.test_collect_e2e import TOKEN, free_port, pg_rows

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ACCOUNT = "demo-account"
TOKENS = "token-demo %s\ntoken-collector *\n" % ACCOUNT
GREGORIAN = 62167219200
CHARTS = ("chart-calls", "chart-ratios", "chart-acd", "chart-pdd", "chart-mos")


def get_json(port: int, path: str, token: str = "token-collector") -> dict:
    request = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), headers={"X-Auth-Token": token})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def wait_until(check, what: str, timeout: float = 30.0):
    """Poll ``check()`` (cooperating with gevent, so the stand-in keeps
    playing) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        gevent.sleep(0.1)
    raise AssertionError("timed out waiting for %s" % what)


def browser(profile: Path) -> webdriver.Chrome:
    assert os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER), (
        "chromium and chromium-driver are missing: `make test` installs them (apt-get)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1500", "--user-data-dir=%s" % profile):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    return driver


def wait_for_page(driver, attribute: str, timeout: float = 30.0) -> None:
    wait_until(lambda: driver.execute_script("return document.body.getAttribute(arguments[0])", attribute) == "1",
               "the page's %s" % attribute, timeout)


def painted_pixels(driver, figure_id: str) -> int:
    """Non-transparent pixels of the figure's uPlot canvas (0: nothing drawn)."""
    return driver.execute_script(
        "var c = document.querySelector('#' + arguments[0] + ' canvas');"
        "if (!c) return -1;"
        "var d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data, n = 0;"
        "for (var i = 3; i < d.length; i += 4) if (d[i] > 0) n++;"
        "return n;", figure_id)


def severe(entries: list[dict]) -> list[dict]:
    return [e for e in entries if e.get("level") == "SEVERE"]


HISTORY_LEGS = 600  # at least, of the 300 calls of the day before


class LiveNode:
    """The stand-in (in this process) playing a day of calls, then live ones without
    end, and a real ``eslcdr run`` reading it (node_name ``name``)."""

    def __init__(self, root: Path, name: str, seed: int) -> None:
        self.name = name
        root.mkdir(exist_ok=True)
        self.db = root / "cdrs.db"
        self.fake = FakeFreeSWITCH(events=GeneratedSource(calls=None, cps=2.0, seed=seed, history_calls=300,
                                                          post_dial_delay=True))
        self.fake.start()
        (root / "tokens").write_text(TOKENS + "%s *\n" % TOKEN)  # TOKEN: the collector's
        ini = write_config(root, self.fake.port)
        ini.write_text(ini.read_text().replace("node_name = fs-test", "node_name = %s" % name))
        self.daemon = DaemonProcess(ini, root / "daemon.log")
        self.port = self.daemon.api_port()
        self.url = "http://127.0.0.1:%d" % self.port

    def call_ids(self, account: str) -> set[str]:
        """The call ids of ``account``'s CDRs written so far."""
        try:
            conn = sqlite3.connect("file:%s?mode=ro" % self.db, uri=True)
            try:
                return {r[0] for r in conn.execute("SELECT call_id FROM cdrs WHERE account_id = ?", (account,))}
            finally:
                conn.close()
        except sqlite3.Error:
            return set()

    def ready(self) -> None:
        """The day's CDRs written, live channels up."""
        def history_written():
            try:
                conn = sqlite3.connect("file:%s?mode=ro" % self.db, uri=True)
                try:
                    return conn.execute("SELECT count(*) FROM cdrs").fetchone()[0] >= HISTORY_LEGS
                finally:
                    conn.close()
            except sqlite3.Error:
                return False

        wait_until(history_written, "the history's CDRs of %s" % self.name, 120)
        wait_until(lambda: get_json(self.port, "/v2/channels")["data"], "live channels of %s" % self.name, 30)

    def close(self) -> None:
        self.daemon.stop()
        self.fake.stop()


@contextlib.contextmanager
def live_node(root: Path, name: str, seed: int) -> Iterator[LiveNode]:
    node = None
    try:
        node = LiveNode(root, name, seed)
        yield node
    finally:
        if node is not None:
            node.close()


class Served(SimpleNamespace):
    """The API the page is loaded from (``port``) and the nodes behind it."""

    port: int
    nodes: list[LiveNode]
    central: bool

    def written(self, account: str) -> set[str]:
        return set().union(*(node.call_ids(account) for node in self.nodes))


@pytest.fixture(params=["node", pytest.param("central", marks=pytest.mark.postgres)])
def served(request, tmp_path):
    """A day of calls (and live ones, without end) through a real daemon; centrally
    through two, collected by a real ``eslcdr collect`` that also asks ``fs-gone``
    (nothing listens there) for its live channels."""
    with contextlib.ExitStack() as stack:
        if request.param == "node":
            node = stack.enter_context(live_node(tmp_path / "fs-test", "fs-test", 5))
            node.ready()
            yield Served(port=node.port, nodes=[node], central=False)
            return
        nodes = [stack.enter_context(live_node(tmp_path / name, name, seed)) for name, seed in (("fs-a", 5), ("fs-b", 6))]
        for node in nodes:
            node.ready()
        gone = SimpleNamespace(name="fs-gone", url="http://127.0.0.1:%d" % free_port())

        def histories_collected(dsn: str) -> bool:
            counts = {r["source"]: r["n"] for r in pg_rows(dsn, "SELECT source, count(*) AS n FROM cdrs GROUP BY 1")}
            return all(counts.get(node.name, 0) >= HISTORY_LEGS for node in nodes)

        port = stack.enter_context(central_collector(tmp_path, request.getfixturevalue("pg_server"), nodes + [gone],
                                                     TOKENS, collected=histories_collected))
        wait_until(lambda: {c["source"] for c in get_json(port, "/v2/channels")["data"]} == {"fs-a", "fs-b"},
                   "both nodes' live channels centrally", 30)
        yield Served(port=port, nodes=nodes, central=True)


def test_page_draws_kpis_worst_legs_and_live_channels(served, tmp_path):
    port = served.port
    now_g = int(time.time()) + GREGORIAN
    before = get_json(port, "/v2/accounts/%s/cdrs/stats?created_from=%d&created_to=%d"
                      % (ACCOUNT, now_g - 86400, now_g + 5))["data"]["totals"]
    assert before["mos_legs"] > 0 and before["seizures"] > 0
    driver = browser(tmp_path / "profile")
    try:
        # An account token in the fragment, no account: the page finds it.
        driver.get("http://127.0.0.1:%d/ui#token=token-demo" % port)
        wait_for_page(driver, "data-stats-loaded")
        wait_for_page(driver, "data-channels-loaded")
        assert driver.find_element(By.ID, "account").get_attribute("value") == ACCOUNT
        assert "token" not in driver.current_url  # taken out of the address bar
        assert driver.execute_script("return sessionStorage.getItem('eslcdr.token')") == "token-demo"

        for figure in CHARTS:
            points = int(driver.find_element(By.ID, figure).get_attribute("data-points"))
            assert points > 0, figure
            assert painted_pixels(driver, figure) > 500, figure

        tiles = {tile.find_element(By.CLASS_NAME, "label").text.lower(): tile.find_element(By.TAG_NAME, "strong").text
                 for tile in driver.find_elements(By.CSS_SELECTOR, "#kpis .tile")}
        after = get_json(port, "/v2/accounts/%s/cdrs/stats?created_from=%d&created_to=%d"
                         % (ACCOUNT, now_g - 86400, int(time.time()) + GREGORIAN + 5))["data"]["totals"]
        # Calls keep arriving: what the page shows lies between two reads of the API.
        assert before["legs"] <= int(tiles["legs"]) <= after["legs"]
        assert tiles["mos"] != "–" and 1.0 <= float(tiles["mos"]) <= 4.5

        causes = driver.find_elements(By.CSS_SELECTOR, "#causes li .cause")
        assert {c.text for c in causes} <= set(after["hangup_causes"]) and causes

        # Worst legs: a row of the lowest-MOS table opens its record.
        rows = driver.find_elements(By.CSS_SELECTOR, "#worst-mos tr")[1:]
        assert rows, "no lowest-MOS rows"
        shown_mos = rows[0].find_elements(By.TAG_NAME, "td")[4].text
        link = rows[0].find_element(By.TAG_NAME, "a")
        cdr_id = link.get_attribute("title")
        link.click()
        wait_until(lambda: driver.find_element(By.ID, "record").get_attribute("open") is not None, "the record")
        fields = {row.find_element(By.TAG_NAME, "th").text: row.find_element(By.TAG_NAME, "td").text
                  for row in driver.find_elements(By.CSS_SELECTOR, "#record-fields tr")}
        record = get_json(port, "/v2/accounts/%s/cdrs/%s" % (ACCOUNT, cdr_id), "token-demo")["data"]
        assert fields["id"] == cdr_id == record["id"]
        assert fields["call_id"] == record["call_id"]
        assert fields.get("source") == record.get("source") and ("source" in record) == served.central
        assert "%.2f" % record["audio_in_mos"] == shown_mos
        driver.find_element(By.ID, "record-close").click()

        # Live channels: every row is a leg the daemon follows (or has just written).
        wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, "#channels tr[title]"), "live channel rows")
        # One snapshot of the table (it is redrawn every 5 s): header, each row's uuid and source cell.
        headers, rows = driver.execute_script(
            "var t = document.getElementById('channels');"
            "return [Array.from(t.querySelectorAll('th')).map(function (h) { return h.textContent; }),"
            "        Array.from(t.querySelectorAll('tr[title]')).map(function (r) {"
            "          var s = r.querySelector('td.source'); return [r.title, s ? s.textContent : null]; })];")
        shown = [uuid for uuid, _ in rows]
        answer = get_json(port, "/v2/accounts/%s/channels" % ACCOUNT, "token-demo")
        live_now = {c["uuid"]: c for c in answer["data"]}
        assert shown and set(shown) <= set(live_now) | served.written(ACCOUNT)
        listed = int(driver.find_element(By.ID, "live-count").text[1:].split(",")[0])
        assert len(shown) == min(listed, 50)
        # Centrally, each row names its media server (source); the one that did not answer is named.
        unreachable = driver.find_element(By.ID, "channels-unreachable")
        if served.central:
            assert headers.index("source") == headers.index("node") - 1
            sources = [source for _, source in rows]
            assert set(sources) <= {"fs-a", "fs-b"}
            assert all(live_now[uuid]["source"] == source for uuid, source in zip(shown, sources) if uuid in live_now)
            # Both live nodes answer the fan-out (on a loaded machine one may miss its
            # short timeout once and be listed unreachable: that is the design, so ask again).
            def both_answer():
                again = get_json(port, "/v2/accounts/%s/channels" % ACCOUNT, "token-demo")
                sources_now = {c["source"] for c in again["data"]}
                return again if sources_now == {"fs-a", "fs-b"} else None

            answer = wait_until(both_answer, "both nodes' live channels of the account", 30)
            assert [u["node"] for u in answer["unreachable_nodes"]] == ["fs-gone"]
            assert unreachable.is_displayed() and "fs-gone (connection refused)" in unreachable.text
        else:
            assert "source" not in headers and "unreachable_nodes" not in answer
            assert not unreachable.is_displayed()

        screenshot = tmp_path / "ui.png"
        assert driver.save_screenshot(str(screenshot))
        assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 20_000
        assert severe(driver.get_log("browser")) == []
    finally:
        driver.quit()


def test_collector_token_and_a_refused_token(served, tmp_path):
    port = served.port
    driver = browser(tmp_path / "profile")
    try:
        driver.get("http://127.0.0.1:%d/ui#token=token-collector&account=%s" % (port, ACCOUNT))
        wait_for_page(driver, "data-stats-loaded")
        assert driver.find_element(By.ID, "account").get_attribute("value") == ACCOUNT
        assert int(driver.find_element(By.ID, "chart-calls").get_attribute("data-points")) > 0
        assert severe(driver.get_log("browser")) == []

        # A token the server does not know: a clear message, no script error.
        driver.execute_script("sessionStorage.clear()")
        driver.get("about:blank")  # else only the fragment changes: no reload
        driver.get("http://127.0.0.1:%d/ui#token=not-a-token" % port)
        try:
            wait_until(lambda: "refused" in driver.find_element(By.ID, "status").text, "the refusal", 15)
        except (TimeoutException, WebDriverException) as exc:  # pragma: no cover - diagnostics
            raise AssertionError(driver.find_element(By.ID, "status").text) from exc
        assert driver.find_element(By.ID, "dashboard").get_attribute("hidden") is not None
        errors = severe(driver.get_log("browser"))
        # The browser reports the 401 itself (a network entry); nothing else.
        assert all(e["source"] == "network" and " 401 " in e["message"] for e in errors), errors
    finally:
        driver.quit()
