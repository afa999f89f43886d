"""Tokens file: parsing, errors that never show a token, reload, ``token add``."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest

from eslcdr.api.tokens import (
    COLLECTOR,
    TOKENS_SETTLE_SECONDS,
    TokenFileError,
    TokenStore,
    add_token,
    load_tokens,
    match,
    parse_tokens,
)

ACCOUNT = "4b0cd3c1e0a2f2c6a8d9e1f20a3b4c5d"


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_plain_hashed_comments_and_collector():
    text = (
        "# operators' tokens\n"
        "\n"
        "plain-token-1 %s   # trailing comment\n"
        "sha256:%s other-account\n"
        "SHA256:%s *\n" % (ACCOUNT, sha("hashed-token"), sha("collector-token").upper())
    )
    entries = parse_tokens(text)
    assert [e.account_id for e in entries] == [ACCOUNT, "other-account", COLLECTOR]
    assert [e.line for e in entries] == [3, 4, 5]
    assert match(entries, "plain-token-1") == ACCOUNT
    assert match(entries, "hashed-token") == "other-account"
    assert match(entries, "collector-token") == COLLECTOR
    assert match(entries, "plain-token-") is None
    assert match(entries, "sha256:" + sha("hashed-token")) is None  # the hash is not a token


@pytest.mark.parametrize(
    "line, reason",
    [
        ("only-one-field", "fields"),
        ("secret-token acc extra", "fields"),
        ("sha256:abcd acc", "64 hex"),
        ("sha256:%s acc" % ("z" * 64), "64 hex"),
    ],
)
def test_malformed_line_names_line_never_token(line, reason):
    text = "# header\nfine-token acc\n" + line + "\n"
    with pytest.raises(TokenFileError) as info:
        parse_tokens(text, "/etc/eslcdr/tokens")
    message = str(info.value)
    assert "/etc/eslcdr/tokens line 3" in message
    assert reason in message
    for secret in ("secret-token", "only-one-field", "fine-token"):
        assert secret not in message
    assert repr(parse_tokens("fine-token acc")[0]).count("fine-token") == 0


def test_entry_repr_hides_digest():
    entry = parse_tokens("tok acc")[0]
    assert entry.digest.hex() not in repr(entry) and "tok" not in repr(entry).replace("TokenEntry", "")


def test_store_reloads_on_change_and_keeps_last_good(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("first-token %s\n" % ACCOUNT)
    clock = FakeClock()
    store = TokenStore(path, check_interval=1.0, clock=clock)
    assert store.lookup("first-token") == ACCOUNT
    assert store.lookup(None) is None and store.lookup("") is None

    path.write_text("first-token %s\nadded-token %s\n" % (ACCOUNT, ACCOUNT))
    os.utime(path, ns=(1, 10**18))  # a different mtime, whatever the clock
    # Within the interval a known token is not re-checked, but an unknown one
    # looks at the file at once: an addition applies at its first use.
    assert store.lookup("first-token") == ACCOUNT
    assert store.lookup("added-token") == ACCOUNT
    clock.now += 1.5

    # A change that takes a token away applies once the file has read the
    # same for TOKENS_SETTLE_SECONDS.
    path.write_text("second-token %s\n" % ACCOUNT)
    os.utime(path, ns=(1, 2 * 10**18))
    clock.now += 1.5
    assert store.lookup("first-token") == ACCOUNT and store.lookup("second-token") is None
    clock.now += TOKENS_SETTLE_SECONDS
    assert store.lookup("second-token") == ACCOUNT
    assert store.lookup("first-token") is None

    path.write_text("broken line with too many fields\n")
    os.utime(path, ns=(1, 3 * 10**18))
    clock.now += 1.5 + TOKENS_SETTLE_SECONDS
    assert store.lookup("second-token") == ACCOUNT  # the last good set stays

    path.unlink()
    clock.now += 1.5
    assert store.lookup("second-token") == ACCOUNT
    clock.now += TOKENS_SETTLE_SECONDS
    assert store.lookup("second-token") is None
    assert store.count == 0


def test_store_strict_at_start_and_tolerates_missing_file(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("a b c\n")
    with pytest.raises(TokenFileError):
        TokenStore(path)
    missing = TokenStore(tmp_path / "absent")
    assert missing.lookup("anything") is None


def test_a_byte_that_is_not_utf8_fails_at_start_and_keeps_the_last_good_set_later(tmp_path):
    # A tokens file saved in Latin-1: at start a TokenFileError naming the
    # file (the daemon exits 2), later the last good set stays in force.
    path = tmp_path / "tokens"
    path.write_bytes(b"caf\xe9-token %s\n" % ACCOUNT.encode())
    with pytest.raises(TokenFileError) as info:
        TokenStore(path)
    assert str(info.value) == "%s: not UTF-8 text" % path and "caf" not in str(info.value)
    path.write_text("good-token %s\n" % ACCOUNT)
    clock = FakeClock()
    store = TokenStore(path, check_interval=1.0, clock=clock)
    assert store.lookup("good-token") == ACCOUNT
    path.write_bytes(b"good-token %s\ncaf\xe9-token %s\n" % (ACCOUNT.encode(), ACCOUNT.encode()))
    os.utime(path, ns=(1, 10**18))
    for _ in range(3):  # past the check interval and the settling time
        clock.now += 1.5 + TOKENS_SETTLE_SECONDS
        assert store.lookup("good-token") == ACCOUNT and store.count == 1


def test_add_token_appends_hash_with_mode_0600(tmp_path):
    path = tmp_path / "conf" / "tokens"
    token = add_token(path, ACCOUNT)
    assert len(token) >= 40 and " " not in token
    text = path.read_text()
    assert token not in text
    assert text == "sha256:%s %s\n" % (sha(token), ACCOUNT)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert match(load_tokens(path), token) == ACCOUNT

    # An existing file without a final newline, and with wider permissions:
    # others lose access, the group keeps read (the installed file is
    # 0640 root:eslcdr and the service reads it through its group).
    path.write_text("# tokens\nold-token other")
    path.chmod(0o666)
    second = add_token(path, "*")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    entries = load_tokens(path)
    assert match(entries, "old-token") == "other"
    assert match(entries, second) == COLLECTOR


@pytest.mark.parametrize("account", ["", "has space", "a#b", "x" * 300])
def test_add_token_rejects_bad_account(tmp_path, account):
    with pytest.raises(TokenFileError):
        add_token(tmp_path / "tokens", account)
    assert not (tmp_path / "tokens").exists()


def test_a_token_just_added_is_known_at_its_first_use(tmp_path):
    # `T=$(eslcdr token add ...); curl -H "X-Auth-Token: $T" ...` (docs/api.md's
    # example) on a daemon that checked the file less than a second ago.
    path = tmp_path / "tokens"
    add_token(path, "*")
    store = TokenStore(path, check_interval=1.0, clock=lambda: 100.0)
    assert store.lookup("not-a-token") is None  # the check of this second is spent
    token = add_token(path, ACCOUNT)
    assert store.lookup(token) == ACCOUNT


def test_add_token_leaves_a_file_that_does_not_parse_alone(tmp_path):
    # The daemon refuses such a file whole (the previous set stays), so a token
    # appended to it would never apply: say so, and change nothing.
    path = tmp_path / "tokens"
    path.write_text("good-token acct\nsha256:abc acct\n")
    path.chmod(0o644)
    with pytest.raises(TokenFileError, match="line 2"):
        add_token(path, ACCOUNT)
    assert path.read_text() == "good-token acct\nsha256:abc acct\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_reload_rereads_a_file_whose_mtime_and_size_did_not_change(tmp_path):
    # SIGHUP calls reload(): it must not trust the (mtime, size) stamp, which
    # an edit within the same timestamp granularity, or a restored mtime, hides.
    path = tmp_path / "tokens"
    path.write_text("token-aaa acct\n")
    stamp = path.stat()
    store = TokenStore(path, check_interval=0.0)
    assert store.lookup("token-aaa") == "acct"
    path.write_text("token-bbb acct\n")
    os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert store.lookup("token-bbb") is None  # the stamp looks unchanged
    store.reload()
    assert store.lookup("token-bbb") == "acct"
    assert store.lookup("token-aaa") is None
    # A broken file on reload keeps the previous set.
    path.write_text("one two three\n")
    store.reload()
    assert store.lookup("token-bbb") == "acct"


# ------------------------------------------------------------------ an edit in progress

FULL = "api-key-a %s\ncollector-key *\n" % ACCOUNT


def rewrite(path, text: str, n: int) -> None:
    path.write_text(text)
    os.utime(path, ns=(n, n * 10**12))  # each write its own mtime, whatever the clock


def test_a_file_emptied_or_half_written_during_an_edit_keeps_the_previous_set(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(FULL)
    clock = FakeClock()
    store = TokenStore(path, check_interval=0.25, clock=clock)
    collectors = {sha("collector-key")}
    # The editor truncates the file, then writes it back in pieces over 1.5 s
    # (a piece cutting the account id short: a valid line for the wrong account).
    for n, text in enumerate(["", "", "api-key-a %s" % ACCOUNT[:7], "api-key-a %s\ncoll" % ACCOUNT, FULL], 1):
        rewrite(path, text, n)
        for _ in range(2):
            clock.now += 0.3
            assert store.lookup("api-key-a") == ACCOUNT, text
            assert store.collector_keys() == collectors, text
    assert store.lookup("api-key-a") == ACCOUNT and store.count == 2
    clock.now += 2 * TOKENS_SETTLE_SECONDS  # nothing left pending
    assert store.lookup("api-key-a") == ACCOUNT and store.collector_keys() == collectors


def test_a_deliberately_emptied_file_applies_once_it_stays_empty_or_on_reload(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(FULL)
    clock = FakeClock()
    store = TokenStore(path, check_interval=0.25, clock=clock)
    rewrite(path, "", 1)
    clock.now += 0.3
    assert store.lookup("api-key-a") == ACCOUNT
    clock.now += TOKENS_SETTLE_SECONDS - 0.5
    assert store.lookup("api-key-a") == ACCOUNT  # not yet settled
    clock.now += 0.5
    assert store.lookup("api-key-a") is None and store.collector_keys() == frozenset()
    # SIGHUP (reload) applies at once what parses, also an empty file.
    rewrite(path, FULL, 2)
    clock.now += 0.3
    assert store.lookup("api-key-a") == ACCOUNT  # an addition: at once
    rewrite(path, "", 3)
    store.reload()
    assert store.lookup("api-key-a") is None and store.count == 0


def test_a_last_line_without_its_newline_waits_even_when_it_only_adds(tmp_path):
    # "api-key-b <account cut short>" is a valid line naming another account.
    path = tmp_path / "tokens"
    path.write_text(FULL)
    clock = FakeClock()
    store = TokenStore(path, check_interval=0.25, clock=clock)
    rewrite(path, FULL + "api-key-b 7e1f3a", 1)
    clock.now += 0.3
    assert store.lookup("api-key-b") is None
    rewrite(path, FULL + "api-key-b 7e1f3a9b\n", 2)  # complete: an addition, at once
    clock.now += 0.3
    assert store.lookup("api-key-b") == "7e1f3a9b"
    # A file written without a final newline on purpose applies once it settles.
    rewrite(path, FULL + "api-key-b 7e1f3a9b\napi-key-c 00c", 3)
    clock.now += 0.3
    assert store.lookup("api-key-c") is None
    clock.now += TOKENS_SETTLE_SECONDS
    assert store.lookup("api-key-c") == "00c"


@pytest.mark.subprocess
def test_eslcdr_run_rides_out_a_tokens_file_edit_and_applies_a_deliberate_one(tmp_path):
    # A real daemon; the tokens file is emptied for 1.5 s, then half written,
    # then complete again, while a client uses its login session and its API
    # key: no 401, the session lives on, and retention keeps the old rows the
    # collector has not pulled.  Emptied on purpose + SIGHUP: applies at once.
    import json
    import signal
    import time
    import urllib.error
    import urllib.request

    import gevent

    from eslcdr.store import db as store
    from eslcdr.fakefs import FakeFreeSWITCH

    from tests.harness import DaemonProcess, db_rows, write_config
    from tests.unit.api.test_api import G, leg

    tokens = tmp_path / "tokens"
    tokens.write_text(FULL)
    db = tmp_path / "cdrs.db"
    conn = store.connect_writer(db)
    olds = [leg(int(time.time()) + G - 3 * 86_400 + i, account=ACCOUNT) for i in range(5)]
    # The collector pulled once (after=0): it holds back every row.
    store.insert_records(conn, olds, acks={sha("collector-key"): (0, 1)})
    conn.close()
    fake = FakeFreeSWITCH().start()
    ini = write_config(tmp_path, fake.port)
    ini.write_text(ini.read_text().replace("[store]\n", "[store]\nretention_days = 1\nretention_check_interval = 0.2\n"))
    daemon = DaemonProcess(ini, tmp_path / "daemon.log")

    def call(method: str, path: str, token: str | None = None, body: dict | None = None):
        request = urllib.request.Request(
            "http://127.0.0.1:%d%s" % (port, path), method=method,
            data=json.dumps(body).encode() if body else None,
            headers={"Content-Type": "application/json", **({"X-Auth-Token": token} if token else {})})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, None

    url = "/v2/accounts/%s/cdrs" % ACCOUNT
    statuses: list[int] = []

    def use_for(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            statuses.append(call("GET", url, session)[0])
            statuses.append(call("GET", url, "api-key-a")[0])
            gevent.sleep(0.02)

    try:
        port = daemon.api_port()
        status, answer = call("PUT", "/v2/api_auth", body={"data": {"api_key": "api-key-a"}})
        assert status == 201
        session = answer["auth_token"]
        tokens.write_text("")  # the editor truncates the file ...
        use_for(1.5)
        tokens.write_text("api-key-a %s" % ACCOUNT[:9])  # ... writes part of it ...
        use_for(0.5)
        tokens.write_text(FULL)  # ... and the rest
        use_for(0.5)
        assert len(statuses) > 20 and statuses.count(401) == 0, statuses.count(401)
        assert call("GET", url, session)[0] == 200  # the login session lives on
        assert len(db_rows(db)) == 5  # retention still saw the collector

        tokens.write_text("")
        daemon.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while call("GET", url, "api-key-a")[0] != 401 and time.monotonic() < deadline:
            gevent.sleep(0.05)
        assert call("GET", url, "api-key-a")[0] == 401 and call("GET", url, session)[0] == 401
        while db_rows(db) and time.monotonic() < deadline:  # no collector now: age alone decides
            gevent.sleep(0.05)
        assert db_rows(db) == []
    finally:
        assert daemon.stop() == 0
        fake.stop()
