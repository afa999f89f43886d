"""Tokens file: parsing, errors that never show a token, reload, ``token add``."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest

from eslcdr.tokens import COLLECTOR, TokenFileError, TokenStore, add_token, load_tokens, match, parse_tokens

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

    path.write_text("second-token %s\n" % ACCOUNT)
    os.utime(path, ns=(1, 10**18))  # a different mtime, whatever the clock
    assert store.lookup("first-token") == ACCOUNT  # not re-checked within the interval
    clock.now += 1.5
    assert store.lookup("second-token") == ACCOUNT
    assert store.lookup("first-token") is None

    path.write_text("broken line with too many fields\n")
    os.utime(path, ns=(1, 2 * 10**18))
    clock.now += 1.5
    assert store.lookup("second-token") == ACCOUNT  # the last good set stays

    path.unlink()
    clock.now += 1.5
    assert store.lookup("second-token") is None
    assert store.count == 0


def test_store_strict_at_start_and_tolerates_missing_file(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("a b c\n")
    with pytest.raises(TokenFileError):
        TokenStore(path)
    missing = TokenStore(tmp_path / "absent")
    assert missing.lookup("anything") is None


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
