"""Writes an upgrade fixture with an old eslcdr (tests/data/upgrade/README.md).

Usage: python make_fixtures.py OLD_TREE OUT_DIR [--spool | --central DSN PG_DUMP]
OLD_TREE is a checkout of an old commit (git worktree add /tmp/old-X X); the
old code runs from it (PYTHONPATH), its own stand-in replays its own copies
of the FreeSWITCH captures into its own ``eslcdr run``, which is stopped with
SIGTERM.  With --spool, S5 and S6 arrive while another connection holds the
database's write lock, and the daemon is stopped before the lock goes: they
are left in the spool.  Needs git history and a few seconds; the tests only
read what it wrote.
"""

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(api: int, token: str, work: Path) -> None:
    """The old daemon's listings (every account, by CDR and by interaction)."""
    with sqlite3.connect("file:%s/cdrs.db?mode=ro" % work, uri=True) as conn:
        accounts = [r[0] for r in conn.execute("SELECT DISTINCT account_id FROM cdrs WHERE account_id IS NOT NULL")]
        low, high = conn.execute("SELECT min(timestamp) - 60, max(timestamp) + 60 FROM cdrs").fetchone()
    out = {}
    for account in sorted(accounts):
        for what in ("cdrs", "cdrs/interaction"):
            path = "/v2/accounts/%s/%s?paginate=false&created_from=%d&created_to=%d" % (account, what, low, high)
            req = urllib.request.Request("http://127.0.0.1:%d%s" % (api, path), headers={"X-Auth-Token": token})
            with urllib.request.urlopen(req, timeout=30) as answer:
                out[path] = json.load(answer)["data"]
    (work / "answers.json").write_text(json.dumps(out, indent=0, sort_keys=True) + "\n")


def main(tree: Path, out: Path, spool: bool) -> None:
    work = Path(os.environ.get("TMPDIR", "/tmp")) / ("fixture-%d" % os.getpid())
    work.mkdir()
    env = dict(os.environ, PYTHONPATH=str(tree))
    cli = [sys.executable, "-m", "eslcdr"]
    port, api = free_port(), free_port()
    ini = work / "eslcdr.ini"
    ini.write_text(
        "[esl]\nport = %d\nreconnect_max_delay = 1\n[store]\npath = %s/cdrs.db\n%s"
        "[api]\nlisten = 127.0.0.1:%d\ntokens_file = %s/tokens\n[cdr]\nnode_name = fs-old\n[log]\nformat = json\n"
        % (port, work, "queue_size = 1\nspool_path = %s/cdrs.db.spool\n" % work if spool else "", api, work))
    plain = []
    for account in ("*", "434d23e00e7f65e1ca9281d75dc8cade"):
        added = subprocess.run(cli + ["token", "add", "--account", account, "--tokens-file", str(work / "tokens")],
                               env=env, cwd=work, check=True, capture_output=True, text=True)
        plain.append("%s %s\n" % (added.stdout.split()[0], account))
    (work / "tokens.plain").write_text("".join(plain))
    captures = sorted(str(p) for p in (tree / "tests" / "data").glob("S[1-6]_json.esl"))
    daemon = subprocess.Popen(cli + ["run", "-c", str(ini)], env=env, cwd=work,
                              stdout=open(work / "run.log", "wb"), stderr=subprocess.STDOUT)
    # Real captures (fax, DTMF, transfers; no account) and generated calls
    # (accounts, users, quality); with --spool the last two captures go to the spool.
    phases = [["--replay", *captures[:4], "--now"], ["--calls", "8", "--cps", "8", "--seed", "3"]]
    phases.append(["--replay", *captures[4:], "--now"])
    locker = None
    for n, phase in enumerate(phases):
        if n == 2 and spool:
            locker = sqlite3.connect(work / "cdrs.db", isolation_level=None)
            locker.execute("BEGIN EXCLUSIVE")
        subprocess.run(cli + ["fakefs", "--port", str(port), *phase, "--exit-when-done"],
                       env=env, cwd=work, check=True, timeout=120, stdout=subprocess.DEVNULL)
        time.sleep(3)  # the daemon writes (or spools) what it was sent: a fixture, not a test
        if n == 1:
            answers(api, plain[0].split()[0], work)
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(60)
    if locker is not None:
        locker.execute("ROLLBACK")
        locker.close()
    with sqlite3.connect(work / "cdrs.db") as conn:  # the WAL's pages into the file we keep
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    out.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(work / "cdrs.db") as conn:  # a text dump, never a database file
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        (out / "cdrs.sql").write_text("PRAGMA user_version = %d;\n" % version
                                      + "\n".join(conn.iterdump()) + "\n")
    for name, kept in (("cdrs.db.spool", "spool.jsonl"), ("tokens", "tokens"), ("tokens.plain", "tokens.plain"),
                       ("answers.json", "answers.json")):
        if (work / name).exists():
            shutil.copy(work / name, out / kept)
    (out / "eslcdr.ini").write_text(ini.read_text().replace(str(work), "@DIR@"))
    if not os.environ.get("KEEP"):
        shutil.rmtree(work)


def central(tree: Path, out: Path, dsn: str, pg_dump: str) -> None:
    """The old collector's PostgreSQL database after pulling OUT_DIR's node
    (the old daemon serving a copy of its database): pg_dump as central.sql."""
    import psycopg

    work = Path(os.environ.get("TMPDIR", "/tmp")) / ("central-%d" % os.getpid())
    work.mkdir()
    env = dict(os.environ, PYTHONPATH=str(tree))
    cli = [sys.executable, "-m", "eslcdr"]
    with sqlite3.connect(work / "cdrs.db") as conn:
        conn.executescript((out / "cdrs.sql").read_text())
    api = free_port()
    ini = work / "eslcdr.ini"
    ini.write_text("[esl]\nport = %d\n[store]\npath = %s/cdrs.db\n[api]\nlisten = 127.0.0.1:%d\ntokens_file = %s\n"
                   "[cdr]\nnode_name = fs-old\n" % (free_port(), work, api, out / "tokens"))
    token = (out / "tokens.plain").read_text().split()[0]
    (work / "collector.ini").write_text("[collector]\ndsn = %s\nlisten = 127.0.0.1:%d\npoll_interval = 0.2\n"
                                        "[node:fs-old]\nurl = http://127.0.0.1:%d\ntoken = %s\n"
                                        % (dsn, free_port(), api, token))
    with sqlite3.connect(work / "cdrs.db") as conn:
        rows = conn.execute("SELECT count(*) FROM cdrs").fetchone()[0]
    logs = open(work / "processes.log", "wb")
    procs = [subprocess.Popen(cli + [cmd, "-c", str(work / conf)], env=env, cwd=work, stdout=logs,
                              stderr=subprocess.STDOUT) for cmd, conf in (("run", "eslcdr.ini"),
                                                                          ("collect", "collector.ini"))]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.5)
        with psycopg.connect(dsn) as conn:
            try:
                if conn.execute("SELECT count(*) FROM cdrs").fetchone()[0] == rows:
                    break
            except psycopg.Error:
                pass
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    dump = subprocess.run([pg_dump, "--no-owner", "--no-privileges", "--inserts", "-d", dsn],
                          check=True, capture_output=True, text=True).stdout
    (out / "central.sql").write_text(dump)
    if not os.environ.get("KEEP"):
        shutil.rmtree(work)


if __name__ == "__main__":
    if "--central" in sys.argv:  # OLD_TREE OUT_DIR --central DSN PG_DUMP
        central(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[4], sys.argv[5])
    else:
        main(Path(sys.argv[1]), Path(sys.argv[2]), "--spool" in sys.argv)
