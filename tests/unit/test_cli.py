"""The command line, run as users run it: ``python -m eslcdr ...``."""

from __future__ import annotations

import os
import resource
import select
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import gevent
import pytest

from eslcdr.fakefs import FakeFreeSWITCH

from tests.conftest import DATA, capture_events
from tests.harness import write_config

ROOT = Path(__file__).resolve().parents[2]
JSON_CDR = DATA / "json_cdr"


def eslcdr(*args: str, cwd: Path | None = None, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the CLI in a subprocess (``env``: further environment variables), letting
    gevent serve in-process peers meanwhile."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "eslcdr", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})),
        cwd=str(cwd or ROOT),
    )
    waited = 0.0
    while proc.poll() is None and waited < timeout:
        gevent.sleep(0.05)
        waited += 0.05
    if proc.poll() is None:
        proc.kill()
    out, err = proc.communicate(timeout=10)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out.decode(), err.decode())


@pytest.mark.subprocess
def test_importing_the_cli_patches_nothing_and_main_patches_first():
    # A test process (or a tool) importing eslcdr.cli keeps its own sockets
    # and threads; `eslcdr ...` patches before any command imports a socket.
    code = (
        "import sys, gevent.monkey as monkey\n"
        "import eslcdr.cli as cli\n"
        "print(monkey.is_module_patched('socket'), monkey.is_module_patched('threading'), 'socket' in sys.modules)\n"
        "try:\n"
        "    cli.main(['--version'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(monkey.is_module_patched('socket'), monkey.is_module_patched('threading'))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=str(ROOT))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["False False False", "eslcdr 0.1.0", "True True"], result.stdout


@pytest.mark.subprocess
def test_usage_error_exit_2():
    result = eslcdr("no-such-command")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def fakefs_output(*args: str) -> str:
    """What ``eslcdr fakefs --port 0 ARGS`` prints (stdout and stderr) until its
    banner is out and it is stopped (SIGTERM)."""
    proc = subprocess.Popen([sys.executable, "-m", "eslcdr", "fakefs", "--port", "0", "--calls", "1", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=str(ROOT))
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "no banner within 60 s"
        banner = proc.stdout.readline().decode()
    finally:
        proc.terminate()
        rest = proc.communicate(timeout=10)[0].decode()
    return banner + rest


@pytest.mark.subprocess
def test_the_stand_ins_banner_never_shows_its_password():
    output = fakefs_output("--password", "Zq9-s3cr3t")
    assert "FreeSWITCH stand-in on 127.0.0.1:" in output and "--password" in output
    assert "s3cr3t" not in output
    output = fakefs_output()  # FreeSWITCH's default, ClueCon: named as the default, not shown
    assert "--password's default" in output and "ClueCon" not in output


@pytest.mark.subprocess
def test_check_logs_in(tmp_path):
    fake = FakeFreeSWITCH().start()
    try:
        result = eslcdr("check", "-c", str(write_config(tmp_path, fake.port)))
    finally:
        fake.stop()
    assert result.returncode == 0, result.stderr
    # The switch's run, as FreeSWITCH's API answers it (global_getvar core_uuid).
    assert "login ok, Core-UUID %s\n" % fake.core_uuid in result.stdout, result.stdout


@pytest.mark.subprocess
def test_check_refuses_the_tokens_file_run_refuses(tmp_path):
    # eslcdr run will not start on a tokens file that does not parse (exit 2):
    # check says so with the same exit code, the line number and never the line.
    fake = FakeFreeSWITCH().start()
    try:
        ini = write_config(tmp_path, fake.port)
        (tmp_path / "tokens").write_text("good-token acct\nZq9-secret-token\n")
        result = eslcdr("check", "-c", str(ini))
    finally:
        fake.stop()
    assert result.returncode == 2, result.stdout + result.stderr
    assert "login ok" in result.stdout and "%s line 2" % (tmp_path / "tokens") in result.stdout, result.stdout
    assert "Zq9" not in result.stdout + result.stderr


@pytest.mark.subprocess
def test_check_wrong_password_exit_2(tmp_path):
    fake = FakeFreeSWITCH(password="right").start()
    try:
        result = eslcdr("check", "-c", str(write_config(tmp_path, fake.port, password="Zq9-bad")))
    finally:
        fake.stop()
    assert result.returncode == 2
    assert "refused the password" in result.stdout
    assert "Zq9-bad" not in result.stdout + result.stderr


@pytest.mark.subprocess
def test_check_nothing_listening_exit_1(tmp_path):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = eslcdr("check", "-c", str(write_config(tmp_path, port)))
    assert result.returncode == 1
    assert "cannot connect" in result.stdout


@pytest.mark.subprocess
def test_bad_config_exit_2(tmp_path):
    ini = tmp_path / "bad.ini"
    ini.write_text("[esl]\nport = lots\n")
    for command in ("run", "check"):
        result = eslcdr(command, "-c", str(ini))
        assert result.returncode == 2
        assert "[esl] port" in result.stderr


@pytest.mark.subprocess
def test_a_bad_environment_override_names_the_variable_for_every_command(tmp_path):
    ini = write_config(tmp_path, 8021)
    collector_ini = tmp_path / "collector.ini"
    collector_ini.write_text("[node:fs1]\nurl = http://127.0.0.1:1\ntoken = t\n")
    for args, variable, where in (
            (("run", "-c", str(ini)), "ESLCDR_API_LISTEN", "[api] listen"),
            (("check", "-c", str(ini)), "ESLCDR_API_LISTEN", "[api] listen"),
            (("import", "-c", str(ini), str(tmp_path)), "ESLCDR_API_LISTEN", "[api] listen"),
            (("token", "add", "-c", str(ini), "--account", "a1"), "ESLCDR_API_LISTEN", "[api] listen"),
            (("collect", "-c", str(collector_ini)), "ESLCDR_COLLECTOR_LISTEN", "[collector] listen")):
        result = eslcdr(*args, env={variable: "nope"})
        assert (result.returncode, result.stdout) == (2, ""), (args, result.stdout + result.stderr)
        assert result.stderr == "eslcdr: config error: %s (overrides %s): 'nope' is not host:port\n" % (
            variable, where), (args, result.stderr)


@pytest.mark.subprocess
def test_the_other_commands_config_is_named_as_such(tmp_path):
    # eslcdr run -c collector.ini, eslcdr collect -c eslcdr.ini: one line saying what the file is.
    collector_ini = tmp_path / "collector.ini"
    collector_ini.write_text("[collector]\nlisten = 127.0.0.1:0\n[node:fs1]\nurl = http://127.0.0.1:1\ntoken = t\n"
                             "[log]\nlevel = info\n")
    daemon_ini = write_config(tmp_path, 8021)
    for args, said in (
            (("run", "-c", str(collector_ini)), "%s looks like the config of eslcdr collect (collector.ini):"
             " unknown section [collector] for eslcdr run, whose config is eslcdr.ini" % collector_ini),
            (("check", "-c", str(collector_ini)), "%s looks like the config of eslcdr collect (collector.ini):"
             " unknown section [collector] for eslcdr check, whose config is eslcdr.ini" % collector_ini),
            (("collect", "-c", str(daemon_ini)), "%s looks like the config of eslcdr run (eslcdr.ini):"
             " unknown section [esl] for eslcdr collect, whose config is collector.ini" % daemon_ini)):
        result = eslcdr(*args)
        assert (result.returncode, result.stdout) == (2, ""), (args, result.stdout + result.stderr)
        assert result.stderr == "eslcdr: config error: %s\n" % said, result.stderr
    # A section neither command takes: the plain error, no guess.
    collector_ini.write_text(collector_ini.read_text() + "[esll]\nhost = x\n")
    result = eslcdr("run", "-c", str(collector_ini))
    assert (result.returncode, result.stderr) == (2, "eslcdr: config error: unknown section [collector]\n")


@pytest.mark.subprocess
def test_a_database_path_that_is_a_folder_is_one_config_error_line(tmp_path):
    # Before: import died with a traceback, check said ok, run 'cannot start ... Is a directory' (exit 1).
    ini = write_config(tmp_path, 8021)
    ini.write_text(ini.read_text().replace(str(tmp_path / "cdrs.db"), str(tmp_path)))
    for args in (("run", "-c", str(ini)), ("check", "-c", str(ini)), ("import", "-c", str(ini), str(tmp_path))):
        result = eslcdr(*args)
        assert (result.returncode, result.stdout) == (2, ""), (args, result.stdout + result.stderr)
        assert result.stderr == ("eslcdr: config error: [store] path: %r is a folder, not a file: name one in it,"
                                 " e.g. %s\n" % (str(tmp_path), tmp_path / "cdrs.db")), result.stderr


@pytest.mark.subprocess
def test_demo_refusals_name_the_option_typed_and_create_nothing(tmp_path):
    # Before: "eslcdr: config error: [store] path: ..." for --db (and [api] listen for
    # --listen), after the demo had written a tokens file beside the folder.
    folder = tmp_path / "folder"
    folder.mkdir()
    result = eslcdr("demo", "--db", str(folder), "--duration", "1")
    assert (result.returncode, result.stdout) == (2, ""), result.stderr
    assert "argument --db: %r is a folder, not a file: name one in it, e.g. %s\n" % (
        str(folder), folder / "eslcdr-demo.db") in result.stderr
    result = eslcdr("demo", "--listen", "nonsense", "--db", str(tmp_path / "d.db"), "--duration", "1")
    assert (result.returncode, result.stdout) == (2, ""), result.stderr
    assert "argument --listen: 'nonsense' is not host:port" in result.stderr and "[api]" not in result.stderr
    assert list(tmp_path.iterdir()) == [folder]


@pytest.mark.subprocess
def test_a_config_line_without_equals_is_not_echoed(tmp_path):
    # The password line lost its '=': the error names the file and line, not the secret.
    for command, name in (("run", "eslcdr.ini"), ("check", "eslcdr.ini"), ("collect", "collector.ini")):
        ini = tmp_path / name
        ini.write_text("[esl]\nhost = 127.0.0.1\npassword Zq9-s3cr3t\n")
        result = eslcdr(command, "-c", str(ini))
        assert result.returncode == 2, (command, result.stderr)
        assert "%s: line 3" % ini in result.stderr, result.stderr
        assert "s3cr3t" not in result.stdout + result.stderr


@pytest.mark.subprocess
def test_token_add_stores_only_the_hash(tmp_path):
    tokens = tmp_path / "tokens"
    result = eslcdr("token", "add", "--account", "acct1", "--tokens-file", str(tokens))
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert len(token) >= 32
    text = tokens.read_text()
    assert token not in text
    assert "sha256:" in text and "acct1" in text
    assert stat.S_IMODE(tokens.stat().st_mode) == 0o600


def token_add_on_a_full_disk(tokens: Path, room: int) -> subprocess.CompletedProcess:
    """``eslcdr token add`` with ``room`` bytes left for the tokens file: its
    file-size limit (RLIMIT_FSIZE) cuts a write there, as a full disk does
    (a short write, then EFBIG -- ENOSPC on a real disk)."""
    limit = tokens.stat().st_size + room

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return subprocess.run([sys.executable, "-m", "eslcdr", "token", "add", "--account", "acct1",
                           "--tokens-file", str(tokens)], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=str(ROOT), preexec_fn=small_disk)


@pytest.mark.subprocess
def test_token_add_on_a_full_disk_is_an_error_and_the_file_is_unchanged(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("first-token acct0\n")
    result = token_add_on_a_full_disk(tokens, 0)
    assert result.returncode == 1 and result.stdout == "", result
    assert result.stderr == "eslcdr: cannot write %s: File too large\n" % tokens
    assert tokens.read_text() == "first-token acct0\n"


@pytest.mark.subprocess
def test_token_add_cut_by_a_full_disk_mid_line_is_an_error_and_leaves_no_torn_line(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("first-token acct0\n")
    result = token_add_on_a_full_disk(tokens, 20)  # a line is ~80 bytes
    assert result.returncode == 1 and result.stdout == "", result  # no token shown that was not stored
    assert tokens.read_text() == "first-token acct0\n"


@pytest.mark.subprocess
def test_token_add_refusals_are_one_line_exit_2(tmp_path):
    # A bad --account, and a tokens file the daemon would refuse whole (the
    # token would never apply): one line naming the problem, the file untouched.
    tokens = tmp_path / "tokens"
    result = eslcdr("token", "add", "--account", "a b", "--tokens-file", str(tokens))
    assert (result.returncode, result.stdout) == (2, ""), result.stderr
    assert "invalid account id" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not tokens.exists()
    tokens.write_text("good-token acct\nnot a token line\n")
    result = eslcdr("token", "add", "--account", "acct", "--tokens-file", str(tokens))
    assert (result.returncode, result.stdout) == (2, ""), result.stderr
    assert "%s line 2" % tokens in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert tokens.read_text() == "good-token acct\nnot a token line\n"


@pytest.mark.subprocess
def test_demo_refusals_are_one_line(tmp_path):
    # Negative counts are usage errors (were a ValueError traceback from the
    # stand-in); a --db where no file can be made is one line, exit 1.
    for option in ("--calls", "--history", "--cps", "--duration"):
        result = eslcdr("demo", "--db", str(tmp_path / "demo.db"), "--listen", "127.0.0.1:0", option, "-1")
        assert result.returncode == 2, (option, result.stderr)
        assert "argument %s: must not be negative" % option in result.stderr, result.stderr
    (tmp_path / "a-file").write_text("")
    result = eslcdr("demo", "--db", str(tmp_path / "a-file" / "demo.db"), "--listen", "127.0.0.1:0")
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("eslcdr demo: cannot start:") and "Traceback" not in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == [tmp_path / "a-file"]


def imported_rows(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT call_id, interaction_id, hangup_cause, billing_seconds FROM cdrs ORDER BY seq").fetchall()


@pytest.mark.subprocess
def test_import_json_cdr_folders_idempotent(tmp_path):
    ini = write_config(tmp_path, 8021)
    result = eslcdr("import", "-c", str(ini), str(JSON_CDR / "J_plain"), str(JSON_CDR / "J_json"))
    assert result.returncode == 0, result.stderr
    assert "imported 24 new CDRs" in result.stdout
    rows = imported_rows(tmp_path / "cdrs.db")
    assert len(rows) == 24
    again = eslcdr("import", "-c", str(ini), str(JSON_CDR / "J_plain"))
    assert "imported 0 new CDRs (12 already present" in again.stdout
    assert imported_rows(tmp_path / "cdrs.db") == rows


@pytest.mark.parametrize("run", ["J_plain", "J_json"])
def test_import_matches_the_live_events_of_the_same_calls(tmp_path, run):
    from eslcdr import config
    from eslcdr.service.importer import build_records, load_events
    from eslcdr.ingest.legs import LegTracker
    from eslcdr.ingest.cdr import build_cdr

    cfg = config.from_mapping({"cdr": {"node_name": "vm"}})
    events, failed = load_events([JSON_CDR / run])
    assert failed == 0
    imported = {r["call_id"]: r for r in build_records(events, cfg, LegTracker(cfg.cdr.interaction_id_vars))}
    tracker, live = LegTracker(cfg.cdr.interaction_id_vars), {}
    for event in capture_events("json_cdr/%s.esl" % run):
        leg = tracker.feed(event, 0)
        if leg:
            live[leg.hangup["Unique-ID"]] = build_cdr(leg, cfg.cdr, "vm")
    assert set(imported) == set(live)
    fields = ("call_direction", "caller_id_number", "caller_id_name", "duration_seconds", "billing_seconds",
              "ringing_seconds", "hangup_cause", "hangup_code", "disposition", "account_id", "owner_id",
              "custom_sip_headers", "custom_channel_vars", "fax_success", "fax_total_pages", "other_leg_call_id",
              "created_us", "answered_us", "hangup_us", "timestamp")
    for call_id, record in live.items():
        for field in fields:
            assert imported[call_id][field] == record[field], (call_id, field)

    def groups(records):
        by_interaction = {}
        for r in records.values():
            by_interaction.setdefault(r["interaction_id"], set()).add(r["call_id"])
        return sorted(map(sorted, by_interaction.values()))

    assert groups(imported) == groups(live)


@pytest.mark.subprocess
def test_import_bad_file_reported_rest_imported(tmp_path):
    folder = tmp_path / "cdrs"
    folder.mkdir()
    good = next((JSON_CDR / "J_json").glob("*.json"))
    (folder / good.name).write_bytes(good.read_bytes())
    (folder / "broken.cdr.json").write_bytes(b"{not json")
    (folder / "empty.cdr.json").write_bytes(b"[]")
    result = eslcdr("import", "-c", str(write_config(tmp_path, 8021)), str(folder))
    assert result.returncode == 1
    assert "imported 1 new CDRs" in result.stdout and "2 files unreadable" in result.stdout
    assert "broken.cdr.json" in result.stderr


@pytest.mark.subprocess
def test_run_with_unwritable_database_fails_clearly(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the database folder should be")
    ini = write_config(tmp_path, 8021, extra="")
    text = ini.read_text().replace(str(tmp_path / "cdrs.db"), str(blocker / "cdrs.db"))
    ini.write_text(text)
    result = eslcdr("run", "-c", str(ini))
    assert result.returncode == 1
    assert "cannot start" in result.stderr and "not-a-dir" in result.stderr
    assert "Traceback" not in result.stderr
    assert "bytes free" not in result.stderr  # room enough: no word of it


@pytest.mark.subprocess
def test_run_on_a_full_file_system_says_so(tmp_path):
    # A database on a full file system: SQLite cannot grow its -shm file and says
    # 'disk I/O error' (seen with a full tmpfs), which reads like failing hardware.
    # The start fails here for another reason (its folder is a file); the file
    # system's free space is what statvfs says, made 0 in the child.
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    ini = write_config(tmp_path, 8021, extra="")
    ini.write_text(ini.read_text().replace(str(tmp_path / "cdrs.db"), str(blocker / "cdrs.db")))
    full = ("import os, sys; real = os.statvfs\n"
            "class Full:\n    f_bavail = 0\n    f_frsize = 4096\n"
            "os.statvfs = lambda p: Full() if p == %r else real(p)\n"
            "from eslcdr.cli import main; sys.exit(main(['run', '-c', %r]))" % (str(blocker), str(ini)))
    result = subprocess.run([sys.executable, "-c", full], capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=str(ROOT))
    assert result.returncode == 1, result.stderr
    assert result.stderr.rstrip().endswith("Not a directory: '%s'; its file system has 0 bytes free"
                                           % (blocker / "cdrs.db")), result.stderr


@pytest.mark.subprocess
def test_run_with_api_port_taken_fails_clearly(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        ini = write_config(tmp_path, 8021)
        ini.write_text(ini.read_text().replace("listen = 127.0.0.1:0", "listen = 127.0.0.1:%d" % port))
        result = eslcdr("run", "-c", str(ini))
    assert result.returncode == 1
    assert "cannot start" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.subprocess
def test_run_on_a_database_of_a_newer_eslcdr_exits_1_with_a_clear_error(tmp_path):
    from eslcdr.store.schema import SCHEMA_VERSION

    ini = write_config(tmp_path, 1)
    conn = sqlite3.connect(tmp_path / "cdrs.db")
    conn.execute("PRAGMA user_version = %d" % (SCHEMA_VERSION + 5))
    conn.close()
    result = eslcdr("run", "-c", str(ini), timeout=30)
    assert result.returncode == 1
    assert ("cannot start: %s: database schema version %d is newer than this eslcdr (%d): upgrade eslcdr"
            % (tmp_path / "cdrs.db", SCHEMA_VERSION + 5, SCHEMA_VERSION)) in result.stderr
    assert "Traceback" not in result.stderr
