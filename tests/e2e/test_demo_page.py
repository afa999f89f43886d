"""``eslcdr demo`` prints the /ui page's URL (token in the fragment) and
first plays a day of history, so the page has hours of KPIs to draw."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request

from tests.harness import ROOT

GREGORIAN = 62167219200


def get(url: str, token: str | None = None):
    headers = {"X-Auth-Token": token} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as response:
        return response.headers.get_content_type(), response.read()


def test_demo_prints_the_page_url_and_plays_a_day_of_history(tmp_path):
    command = [sys.executable, "-m", "eslcdr", "demo", "--listen", "127.0.0.1:0", "--db", str(tmp_path / "demo.db"),
               "--history", "300", "--calls", "20", "--cps", "5", "--duration", "60"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        url = None
        deadline = time.monotonic() + 30
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            found = re.search(r"The page:\s+(http://\S+)", line)
            url = found.group(1) if found else None
        assert url, "no page URL printed"
        parts = urllib.parse.urlsplit(url)
        assert parts.path == "/ui" and not parts.query  # the token is never a query value
        fragment = urllib.parse.parse_qs(parts.fragment)
        token, account = fragment["token"][0], fragment["account"][0]
        base = "%s://%s" % (parts.scheme, parts.netloc)
        content_type, body = get(base + "/ui")
        assert content_type == "text/html" and b"/ui/app.js" in body
        info = json.loads(get(base + "/v2/auth/tokeninfo", token)[1])
        assert info["data"]["account_id"] == "*"

        now_g = int(time.time()) + GREGORIAN
        stats_url = "%s/v2/accounts/%s/cdrs/stats?interval=3600&created_from=%d&created_to=%d" % (
            base, account, now_g - 86400, now_g + 60)

        def hours_with_calls() -> int:
            buckets = json.loads(get(stats_url, token)[1])["data"]["buckets"]
            return sum(1 for bucket in buckets if bucket["legs"] > 0)

        deadline = time.monotonic() + 30
        while hours_with_calls() < 12 and time.monotonic() < deadline:
            time.sleep(0.2)
        # ~300 calls over 24 h, a third of them on this account: most hours have some.
        assert hours_with_calls() >= 12
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        proc.stdout.close()


def test_demo_prints_a_working_token_and_curl_commands_that_work_as_printed(tmp_path):
    """DESIGN 3.1: the demo prints a working token and example curl commands --
    copied from the terminal as they are, each is answered (the page's URL holds
    the same token); nothing else it prints (its log, stderr) shows the token."""
    command = [sys.executable, "-m", "eslcdr", "demo", "--listen", "127.0.0.1:0", "--db", str(tmp_path / "demo.db"),
               "--history", "20", "--calls", "5", "--duration", "60"]
    with open(tmp_path / "stderr", "w") as stderr:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                env=dict(os.environ, PYTHONPATH=str(ROOT)))
    printed = []
    try:
        deadline = time.monotonic() + 30
        while not any(line.startswith("Ctrl-C") for line in printed) and time.monotonic() < deadline:
            if select.select([proc.stdout], [], [], 1)[0]:
                printed.append(proc.stdout.readline())
        text = "".join(printed)
        token = re.search(r"API token \(collector scope[^)]*\): (\S+)", text).group(1)
        url = re.search(r"The page:\s+(http://\S+)", text).group(1)
        assert urllib.parse.parse_qs(urllib.parse.urlsplit(url).fragment)["token"] == [token]
        curls = [line.strip() for line in printed if line.strip().startswith("curl ")]
        assert len(curls) == 5
        for line in curls:
            assert token in line
            done = subprocess.run(["sh", "-c", line], capture_output=True, text=True, timeout=30)
            assert done.returncode == 0 and done.stdout and "invalid_credentials" not in done.stdout, (line, done)
    finally:
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=30)[0]
    assert token not in rest + (tmp_path / "stderr").read_text()
