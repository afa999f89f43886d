"""collector.ini, the NDJSON line splitter and the record checks."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eslcdr.collector import config as cc
from eslcdr.collector.feed import FeedProtocolError, LineSplitter, RecordTooLarge, parse_record
from eslcdr.collector.pgrecords import FeedRecord, Rejected
from eslcdr.config import ConfigError, ServerLimits

ROOT = Path(__file__).resolve().parents[3]
NODE = {"url": "http://10.0.0.5:8080", "token": "t0k3n"}


def test_defaults_and_nodes():
    cfg = cc.from_mapping({"node:fs1": NODE, "node:fs-2": {"url": "https://fs2.example.com:8443/", "token": "x"}})
    assert (cfg.dsn, cfg.api.host, cfg.api.port, cfg.batch_size, cfg.poll_interval) == (
        "postgresql:///eslcdr", "127.0.0.1", 8090, 5000, 1.0)
    assert [(n.name, n.url) for n in cfg.nodes] == [("fs1", "http://10.0.0.5:8080"), ("fs-2", "https://fs2.example.com:8443")]
    assert "t0k3n" not in repr(cfg) and "t0k3n" not in repr(cfg.nodes[0])


def test_environment_overrides_dsn_and_tokens():
    cfg = cc.from_mapping(
        {"collector": {"dsn": "postgresql:///x"}, "node:fs-2": {"url": "http://h:1"}},
        environ={"ESLCDR_COLLECTOR_DSN": "postgresql://u:secret@db/cdrs", "ESLCDR_NODE_FS_2_TOKEN": "from-env",
                 "ESLCDR_COLLECTOR_BATCH_SIZE": "7"},
    )
    assert (cfg.dsn, cfg.nodes[0].token, cfg.batch_size) == ("postgresql://u:secret@db/cdrs", "from-env", 7)
    assert "secret" not in repr(cfg)


@pytest.mark.parametrize(
    "sections, message",
    [
        ({}, "no [node:NAME]"),
        ({"node:fs1": {"url": "ftp://x", "token": "t"}}, "[node:fs1] url"),
        ({"node:fs1": {"url": "http://x:1?a=b", "token": "t"}}, "[node:fs1] url"),
        ({"node:fs1": {"url": "http://x:1"}}, "[node:fs1] token"),
        ({"node:bad name": NODE}, "node name"),
        ({"node:fs1": NODE, "collector": {"batch_size": "0"}}, "[collector] batch_size"),
        ({"node:fs1": NODE, "collector": {"timeout": "soon"}}, "[collector] timeout"),
        ({"node:fs1": NODE, "collector": {"listen": "nowhere"}}, "[collector] listen"),
        ({"node:fs1": NODE, "collector": {"max_body_bytes": "10"}}, "[collector] max_body_bytes"),
        ({"node:fs1": NODE, "collector": {"colour": "red"}}, "unknown key"),
        ({"node:fs1": NODE, "esl": {"host": "x"}}, "unknown section"),
        ({"node:fs1": NODE, "log": {"level": "loud"}}, "[log] level"),
        ({"node:fs1": NODE, "node": {"url": "http://x:1"}}, "unknown section [node]"),
        ({"node:fs1": NODE, "log:x": {"level": "info"}}, "unknown section [log:x]"),
        ({"node: fs1": NODE}, "node name"),
        ({"node:fs1": NODE, "collector": {"dsn": " "}}, "[collector] dsn: empty"),
        ({"node:fs1": NODE, "collector": {"poll_interval": "0.001"}}, "[collector] poll_interval: '0.001' is out of range"),
        ({"node:fs1": NODE, "collector": {"default_page_size": "20", "max_page_size": "10"}},
         "[collector] max_page_size: '10' is out of range"),
        ({"node:fs1": NODE, "collector": {"cors_origins": "ui.example.com"}}, "[collector] cors_origins"),
        # a section copied for a new media server, its url left as it was (one URL spelled two ways)
        ({"node:fs1": {"url": "http://10.0.0.11:8080", "token": "t"},
          "node:fs2": {"url": "http://10.0.0.12:8080", "token": "t"},
          "node:fs3": {"url": "HTTP://10.0.0.11:8080/", "token": "u"}}, "[node:fs3] url is [node:fs1]'s too"),
        ({"node:fs1": {"url": "http://pbx.example.com", "token": "t"},
          "node:fs2": {"url": "http://PBX.example.com:80", "token": "t"}}, "[node:fs2] url is [node:fs1]'s too"),
    ],
)
def test_bad_config_names_section_and_key(sections, message):
    with pytest.raises(ConfigError) as err:
        cc.from_mapping(sections)
    assert message in str(err.value)


@pytest.mark.parametrize("url", [
    "http://admin:s3cret@10.0.0.5:8080",  # credentials
    "http://:s3cret@10.0.0.5:8080",  # a password with no user name
    "http://10.0.0.5:8080/v2?auth_token=s3cret",  # a node's token where a Kazoo client puts it
    "http://10.0.0.5:8080#s3cret",
    "ftp://admin:s3cret@10.0.0.5",  # not http(s)
    "http://admin:s3cret@10.0.0.5:port",  # a bad port
    "http://admin:s3cret@[::1:8080",  # a broken IPv6 host
])
def test_a_refused_node_url_is_named_without_the_secret_in_it(url):
    for sections, environ, where in (
            ({"node:fs1": {"url": url, "token": "t"}}, {}, "[node:fs1] url: "),
            ({"node:fs1": NODE}, {"ESLCDR_NODE_FS1_URL": url}, "ESLCDR_NODE_FS1_URL (overrides [node:fs1] url): ")):
        with pytest.raises(ConfigError) as err:
            cc.from_mapping(sections, environ)
        message = str(err.value)
        assert message.startswith(where) and "[redacted]" in message and "s3cret" not in message


def test_the_http_limits_are_the_daemons_keys():
    cfg = cc.from_mapping({"node:fs1": NODE, "collector": {"max_connections": "7", "request_timeout": "4"}})
    assert (cfg.api.limits.max_connections, cfg.api.limits.request_timeout) == (7, 4.0)
    assert cfg.api.limits.max_head_bytes == ServerLimits.default().max_head_bytes


def test_the_central_api_takes_the_api_keys_of_the_daemon_from_collector(tmp_path):
    """[api]'s answer settings, set in [collector] (or ESLCDR_COLLECTOR_<KEY>), change the
    central API's answers: a range, a page size, CORS (no query reaches PostgreSQL)."""
    import webtest
    from prometheus_client import CollectorRegistry

    from eslcdr.collector.service import make_app
    from eslcdr.config import API_ANSWER_SETTINGS, SETTINGS

    assert set(API_ANSWER_SETTINGS) < set(cc.SETTINGS["collector"]) and set(API_ANSWER_SETTINGS) < set(SETTINGS["api"])
    (tmp_path / "tokens").write_text("tok-a acct-a\n")
    cfg = cc.from_mapping({"node:fs1": NODE, "collector": {
        "dsn": "postgresql://127.0.0.1:1/none", "tokens_file": str(tmp_path / "tokens"), "max_range": "3600",
        "max_page_size": "5", "default_page_size": "5", "cors_origins": "https://ops.example.com",
        "session_ttl": "60"}}, environ={"ESLCDR_COLLECTOR_STATEMENT_TIMEOUT": "2.5"})
    assert (cfg.api.max_range, cfg.api.default_page_size, cfg.api.max_page_size, cfg.api.session_ttl,
            cfg.api.statement_timeout, cfg.api.cors_origins) == (3600, 5, 5, 60.0, 2.5, ("https://ops.example.com",))
    defaults = cc.from_mapping({"node:fs1": NODE}).api
    assert (defaults.max_range, defaults.max_page_size, defaults.cors_origins) == (2682000, 1000, ("*",))
    app = make_app(cfg, lambda: {"status": "ok"}, CollectorRegistry())
    try:
        web = webtest.TestApp(app)
        head = {"X-Auth-Token": "tok-a", "Origin": "https://ops.example.com"}
        body = web.get("/v2/accounts/acct-a/cdrs?created_from=63900000000&created_to=63900003601", headers=head,
                       status=400).json
        assert "more than 3600 seconds" in body["data"]["created_from"]["date_range"]["message"]
        body = web.get("/v2/accounts/acct-a/cdrs?page_size=6", headers=head, status=400).json
        assert "page_size" in body["data"]
        response = web.get("/v2/accounts/acct-b/cdrs", headers=head, status=403)
        assert response.headers["Access-Control-Allow-Origin"] == "https://ops.example.com"
        other = web.get("/v2/accounts/acct-b/cdrs", headers={**head, "Origin": "https://evil.example"}, status=403)
        assert "Access-Control-Allow-Origin" not in other.headers
    finally:
        app.close()


def test_shipped_collector_ini_parses_once_uncommented():
    # (every key with its default under its help: test_config.py)
    text = (ROOT / "conf" / "collector.ini").read_text()
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(re.sub(r"^;(\[?\w)", r"\1", text, flags=re.M))
    assert cc.build(parser, {}, "x").nodes[0].name == "fs1"


# ------------------------------------------------------------------ lines


def test_splitter_keeps_the_incomplete_tail():
    splitter = LineSplitter(100)
    assert splitter.feed(b'{"a":1}\n{"b"') == [b'{"a":1}']
    assert splitter.pending == 4
    assert splitter.feed(b':2}\n\n') == [b'{"b":2}']
    assert splitter.pending == 0


@given(st.lists(st.binary(max_size=30).filter(lambda b: b"\n" not in b and b.strip()), max_size=20),
       st.lists(st.integers(min_value=1, max_value=40), max_size=30))
def test_splitter_lines_survive_any_chunking(lines, cuts):
    data = b"".join(line + b"\n" for line in lines)
    splitter, out, pos = LineSplitter(64), [], 0
    for cut in cuts + [len(data)]:
        out += splitter.feed(data[pos:pos + cut])
        pos += cut
    out += splitter.feed(data[pos:])
    assert out == lines and splitter.pending == 0


def test_an_endless_line_is_refused_before_it_fills_memory():
    splitter = LineSplitter(1024)
    splitter.feed(b"x" * 1000)
    with pytest.raises(RecordTooLarge):
        splitter.feed(b"x" * 100)
    with pytest.raises(RecordTooLarge):
        LineSplitter(10).feed(b"y" * 20 + b"\n")


# ------------------------------------------------------------------ records


def line(**fields):
    import json

    base = {"seq": 5, "call_id": "abc", "hangup_us": 1_764_000_000_000_000, "timestamp": 63_931_219_200}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


def test_a_good_record():
    record = parse_record(line(), 4)
    assert isinstance(record, FeedRecord) and (record.seq, record.call_id) == (5, "abc")
    assert record.hangup_at.year == 2025


@pytest.mark.parametrize("raw, why", [
    (b"\xff\xfe", "not UTF-8 JSON"),
    (b"{not json", "not UTF-8 JSON"),
    (b"[1, 2]", "not a JSON object"),
    (line(seq="7"), "no integer seq"),
    (line(seq=...), "no integer seq"),
    (line(seq=4), "does not follow"),
    (line(seq=True), "no integer seq"),
])
def test_a_line_without_a_usable_seq_stops_the_pull(raw, why):
    with pytest.raises(FeedProtocolError) as err:
        parse_record(raw, 4)
    assert why in str(err.value)


@pytest.mark.parametrize("fields, why", [
    ({"call_id": ...}, "call_id"),
    ({"call_id": ""}, "call_id"),
    ({"call_id": 12}, "call_id"),
    ({"hangup_us": ..., "timestamp": ...}, "hangup"),
    ({"hangup_us": 0, "timestamp": "x"}, "hangup"),
])
def test_a_record_with_a_seq_but_a_bad_body_is_rejected_not_lost(fields, why):
    item = parse_record(line(**fields), 4)
    assert isinstance(item, Rejected) and item.seq == 5 and why in item.error
    assert item.line == line(**fields).decode()


def test_hangup_falls_back_to_the_gregorian_timestamp():
    record = parse_record(line(hangup_us=0, timestamp=1_764_028_800 + 62_167_219_200), 0)
    assert record.hangup_at.isoformat() == "2025-11-25T00:00:00+00:00"


# ------------------------------------------------------------------ the command


def run_collect(ini: Path, env: dict | None = None):
    import os
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "eslcdr", "collect", "-c", str(ini)], capture_output=True, text=True, timeout=60,
        env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})), cwd=str(ini.parent),
    )


@pytest.mark.subprocess
def test_collect_config_error_exits_2(tmp_path):
    ini = tmp_path / "collector.ini"
    ini.write_text("[collector]\nbatch_size = many\n[node:fs1]\nurl = http://127.0.0.1:1\ntoken = t\n")
    result = run_collect(ini)
    assert result.returncode == 2 and "[collector] batch_size" in result.stderr


@pytest.mark.subprocess
def test_unreachable_postgresql_exits_1_and_never_prints_the_password(tmp_path):
    ini = tmp_path / "collector.ini"
    ini.write_text("[collector]\nlisten = 127.0.0.1:0\ntimeout = 2\n[node:fs1]\nurl = http://127.0.0.1:1\ntoken = t\n")
    result = run_collect(ini, env={"ESLCDR_COLLECTOR_DSN": "postgresql://u:s3cr3t@/db?host=%s" % (tmp_path / "none")})
    assert result.returncode == 1
    assert "cannot start: PostgreSQL" in result.stderr and "s3cr3t" not in result.stderr + result.stdout


# ------------------------------------------------------------------ the DSN's password

# Passwords libpq reads other than written: an unescaped '@' makes it cut the
# password there and take the rest for the host (which it names in its
# error), a bad percent-escape makes it name the whole token.
BAD_DSNS = [
    ("postgresql://u:hunter2@s3cr3tpw@127.0.0.1:1/db", ("hunter2", "s3cr3tpw")),
    ("postgresql://u:s3cr3t%zzpw@127.0.0.1:1/db", ("s3cr3t", "zzpw")),
    ("postgresql://u:p@ss%zzword@/db?host=/nowhere", ("ss%zzword", "zzword")),
    ("postgresql://u:pa/ssw0rd@127.0.0.1:1/db", ("ssw0rd",)),
]


@pytest.mark.subprocess
@pytest.mark.parametrize("dsn, pieces", BAD_DSNS)
def test_a_dsn_libpq_would_misread_is_refused_without_its_password(tmp_path, dsn, pieces):
    ini = tmp_path / "collector.ini"
    ini.write_text("[collector]\nlisten = 127.0.0.1:0\ntimeout = 2\n[node:fs1]\nurl = http://127.0.0.1:1\ntoken = t\n")
    result = run_collect(ini, env={"ESLCDR_COLLECTOR_DSN": dsn})
    output = result.stderr + result.stdout
    assert result.returncode == 2 and "ESLCDR_COLLECTOR_DSN (overrides [collector] dsn):" in result.stderr, output
    for piece in pieces:
        assert piece not in output


@pytest.mark.parametrize("dsn", ["x=", "postgresql://[", "postgresql://u:%zz@h/db", "host=\udcff"])
def test_a_dsn_libpq_cannot_parse_is_a_named_config_error(dsn):
    # libpq's ProgrammingError, and the UnicodeEncodeError of a lone surrogate
    # (undecodable bytes in ESLCDR_COLLECTOR_DSN): both are Invalid.
    with pytest.raises(cc.Invalid):
        cc.pg_dsn(dsn)


def test_redact_hides_every_piece_of_the_password_in_real_libpq_messages():
    import psycopg

    for dsn, pieces in BAD_DSNS[:3]:  # (libpq names no piece of the fourth)
        cfg = cc.from_mapping({"node:fs1": NODE})
        cfg = __import__("dataclasses").replace(cfg, dsn=dsn)
        try:
            psycopg.connect(dsn, connect_timeout=1).close()
        except psycopg.Error as exc:
            message = str(exc)
        assert any(piece in message for piece in pieces), message  # libpq does name it
        assert not any(piece in cfg.redact(message) for piece in pieces), cfg.redact(message)
    cfg = cc.from_mapping({"node:fs1": NODE, "collector": {"dsn": "host=/x user=u password=Tr0ub4dor dbname=y"}})
    assert cfg.redact("missing '=' after 'Tr0ub4dor' ... t0k3n") == "missing '=' after '[redacted]' ... [redacted]"
    assert cfg.redact("connection to server on socket failed") == "connection to server on socket failed"


# ------------------------------------------------------------------ the hangup window


def test_a_hangup_outside_the_window_is_rejected_with_its_reason():
    from eslcdr.collector.feed import HangupWindow

    now = 1_764_000_000.0
    window = HangupWindow.around(now, 400)
    inside = parse_record(line(hangup_us=int(now * 1e6) - 399 * 86_400 * 10**6), 4, window)
    assert isinstance(inside, FeedRecord)
    for hangup_us, why in ((int(now * 1e6) - 401 * 86_400 * 10**6, "older"),
                           (int(now * 1e6) + 25 * 3600 * 10**6, "later"),
                           (int(now * 1e6) + 300 * 365 * 86_400 * 10**6, "later")):
        item = parse_record(line(hangup_us=hangup_us), 4, window)
        assert isinstance(item, Rejected) and item.reason == "hangup_out_of_window" and why in item.error
    # a day ahead is clock skew, not a lie
    assert isinstance(parse_record(line(hangup_us=int(now * 1e6) + 23 * 3600 * 10**6), 4, window), FeedRecord)


@pytest.mark.parametrize("key, value", [("max_pull_seconds", "0.5"), ("min_pull_rate", "-1"),
                                        ("max_record_age_days", "0"), ("max_new_partitions", "x")])
def test_the_hostile_node_bounds_are_checked(key, value):
    with pytest.raises(ConfigError) as err:
        cc.from_mapping({"node:fs1": NODE, "collector": {key: value}})
    assert "[collector] %s" % key in str(err.value)


def test_the_splitter_does_not_rescan_a_long_pending_line():
    # A line fed one byte at a time: each feed searches its own byte, never
    # the pending line again (which made a 1 MiB line cost 10^12 byte reads).
    searched = []

    class Tally(bytearray):
        def rfind(self, *args):
            searched.append(len(self))
            return super().rfind(*args)

        find = index = rindex = rfind

    splitter = LineSplitter(1 << 20)
    splitter._buf = Tally()
    for _ in range(2000):
        assert splitter.feed(b"x") == []
    assert splitter.feed(b"x\n{}\n") == [b"x" * 2001, b"{}"] and splitter.pending == 0
    assert sum(searched) < 10 * 2000


@pytest.mark.subprocess
def test_a_postgresql_schema_of_a_newer_eslcdr_exits_1_with_a_clear_error(tmp_path, pg_dsn):
    import psycopg

    from eslcdr.collector import pgmigrations
    from eslcdr.store.schema import SchemaTooNew

    with psycopg.connect(pg_dsn) as conn:
        pgmigrations.migrate(conn)
        conn.execute("UPDATE eslcdr_schema SET version = %s", (pgmigrations.SCHEMA_VERSION + 1,))
        conn.commit()
        with pytest.raises(SchemaTooNew):
            pgmigrations.migrate(conn)
    ini = tmp_path / "collector.ini"
    ini.write_text("[collector]\nlisten = 127.0.0.1:0\ntimeout = 2\n[node:fs1]\nurl = http://127.0.0.1:1\ntoken = t\n")
    result = run_collect(ini, env={"ESLCDR_COLLECTOR_DSN": pg_dsn})
    assert result.returncode == 1
    assert ("cannot start: PostgreSQL schema version %d is newer than this eslcdr (%d): upgrade eslcdr"
            % (pgmigrations.SCHEMA_VERSION + 1, pgmigrations.SCHEMA_VERSION)) in result.stderr
    assert "Traceback" not in result.stderr
