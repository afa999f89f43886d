"""``eslcdr demo`` as a person sees it: a live status line, not a log stream.

The demo runs as a real subprocess, once on a pseudo-terminal (the status
line is redrawn in place: the output is replayed through a small terminal
model) and once on pipes (plain status lines), and with ``--verbose``.
"""

from __future__ import annotations

import os
import pty
import re
import select
import sqlite3
import subprocess
import sys
import time

from eslcdr.service.demo import Rate, StatusLine

from tests.harness import ROOT

WAIT = 60.0
DEMO = [sys.executable, "-m", "eslcdr", "demo", "--listen", "127.0.0.1:0", "--duration", "3", "--cps", "20"]
ENV = dict(os.environ, PYTHONPATH=str(ROOT))
ANSI = re.compile(r"\x1b\[(\d*)([ABK])")


def screen(output: str) -> list[str]:
    """The lines a terminal shows after ``output`` (\\n, \\r, ESC[nA/B, ESC[2K)."""
    lines = [""]
    row = col = 0
    i = 0
    while i < len(output):
        match = ANSI.match(output, i)
        if match:
            count = int(match.group(1) or 1)
            if match.group(2) == "A":
                row = max(0, row - count)
            elif match.group(2) == "B":
                row += count
                while len(lines) <= row:
                    lines.append("")
            else:
                lines[row] = ""
                col = 0
            i = match.end()
            continue
        char = output[i]
        i += 1
        if char == "\n":
            row += 1
            col = 0
            while len(lines) <= row:
                lines.append("")
        elif char == "\r":
            col = 0
        else:
            line = lines[row].ljust(col)
            lines[row] = line[:col] + char + line[col + 1:]
            col += 1
    return lines


def test_screen_model():
    assert screen("a\nb\nc\n\x1b[3A\r\x1b[2Kxy\x1b[3B\r") == ["xy", "b", "c", ""]


def run_on_pty(args: list[str]) -> str:
    master, slave = pty.openpty()
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=ENV)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + WAIT
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
        code = proc.wait(timeout=10)
    assert code == 0, b"".join(chunks)[-2000:]
    return b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")


def test_demo_on_a_terminal_redraws_one_status_line_above_the_curl_examples(tmp_path):
    output = run_on_pty(DEMO + ["--db", str(tmp_path / "demo.db")])
    assert "\x1b[" in output  # redrawn in place
    lines = screen(output)
    title = next(i for i, line in enumerate(lines) if line.startswith("eslcdr demo is running"))
    status = lines[title + 2]
    assert re.fullmatch(r"live legs \d+ \| CDRs \d+ \(\d+\.\d/s\) \| backlog \d+ \| FreeSWITCH \w+", status), status
    written = int(re.search(r"CDRs (\d+)", status).group(1))
    assert written > 0  # the last redraw shows CDRs written
    curl_rows = [i for i, line in enumerate(lines) if line.lstrip().startswith("curl ")]
    assert len(curl_rows) >= 5 and min(curl_rows) > title + 2
    # Exactly one status line on screen, and no log stream.
    assert sum(1 for line in lines if line.startswith("live legs")) == 1
    assert "batch_written" not in output and "daemon_started" not in output and "http_request" not in output


def test_demo_on_a_pipe_prints_plain_status_lines_and_no_info_log(tmp_path):
    result = subprocess.run(
        DEMO + ["--db", str(tmp_path / "demo.db")], capture_output=True, text=True, timeout=WAIT, env=ENV
    )
    assert result.returncode == 0, result.stderr
    assert "\x1b[" not in result.stdout
    statuses = [line for line in result.stdout.splitlines() if line.startswith("status: live legs ")]
    assert statuses
    assert result.stdout.index("curl ") < result.stdout.index("status: ")
    assert "daemon_started" not in result.stderr and "batch_written" not in result.stderr


def test_a_second_demo_on_the_same_database_records_new_calls(tmp_path):
    # `make demo` twice: the second run's calls must not be the first run's
    # (stored already, so its status line said "CDRs 0" while calls played).
    command = DEMO + ["--db", str(tmp_path / "demo.db"), "--history", "40", "--calls", "1"]
    written = []
    for _ in range(2):
        result = subprocess.run(command, capture_output=True, text=True, timeout=WAIT, env=ENV)
        assert result.returncode == 0, result.stderr
        with sqlite3.connect(tmp_path / "demo.db") as conn:
            written.append(conn.execute("SELECT count(*) FROM cdrs").fetchone()[0])
    assert 0 < written[0] < written[1], written


def test_demo_verbose_brings_the_log_back(tmp_path):
    result = subprocess.run(
        DEMO + ["--db", str(tmp_path / "demo.db"), "--verbose"], capture_output=True, text=True, timeout=WAIT, env=ENV
    )
    assert result.returncode == 0, result.stderr
    assert "daemon_started" in result.stderr
    assert "curl " in result.stdout


def test_status_line_is_cut_to_the_terminal_width(monkeypatch):
    import io

    monkeypatch.setenv("COLUMNS", "30")
    stream = io.StringIO()
    StatusLine(stream, True, lines_below=4).show("x" * 100)
    assert screen("1\n2\n3\n4\n" + stream.getvalue())[0] == "x" * 29


def test_rate_over_a_window():
    now = [0.0]
    rate = Rate(clock=lambda: now[0])
    assert rate.update(0) == 0.0
    now[0] = 2.0
    assert rate.update(10) == 5.0
    now[0] = 20.0
    rate.update(100)
    now[0] = 21.0
    assert rate.update(110) == 10.0  # the old samples left the window
