"""SIGHUP's reload (``Daemon.reload``, not started: the config file and the
tokens file are real files) logs one line that says what applied and what
was refused, with the reason, at info only when everything applied."""

from __future__ import annotations

import structlog

from eslcdr.api.tokens import TokenStore
from eslcdr.config import load
from eslcdr.service.daemon import Daemon
from eslcdr.service.notify import Notifier

TOKEN = "Zq3_vK9-xYt2LmN0pQr5sTu7wXy1aBc3dEf5gHi7jKl"


def reloaded(tmp_path, ini_level: str, tokens_text: str) -> list[dict]:
    """The reload's lines (``log_level``: the level each was logged at, as capture_logs sets it)."""
    ini = tmp_path / "eslcdr.ini"
    ini.write_text("[esl]\nhost = 127.0.0.1\n[store]\npath = %s\n[api]\ntokens_file = %s\n[log]\nlevel = info\n"
                   % (tmp_path / "c.db", tmp_path / "tokens"))
    (tmp_path / "tokens").write_text("%s acct\n" % TOKEN)
    daemon = Daemon(load(ini), notifier=Notifier(None))
    daemon.tokens = TokenStore(tmp_path / "tokens")
    ini.write_text(ini.read_text().replace("level = info", "level = " + ini_level))
    (tmp_path / "tokens").write_text(tokens_text)
    with structlog.testing.capture_logs() as events:
        daemon.reload()
    return [e for e in events if e["event"].startswith("reload")]


def test_everything_applied_is_said_at_info(tmp_path):
    [line] = reloaded(tmp_path, "info", "")
    assert (line["event"], line["log_level"]) == ("reloaded", "info")
    assert (line["applied"], line["refused"], line["tokens"]) == (["log_level", "tokens_file"], [], 0)
    assert "config_error" not in line and "tokens_error" not in line


def test_an_invalid_config_is_named_refused_with_its_error_and_the_tokens_still_apply(tmp_path):
    [line] = reloaded(tmp_path, "loud", "")
    assert (line["event"], line["log_level"]) == ("reload_refused", "error")
    assert (line["applied"], line["refused"], line["tokens"]) == (["tokens_file"], ["log_level"], 0)
    assert "[log] level" in line["config_error"] and "loud" in line["config_error"]


def test_a_broken_tokens_file_is_named_refused_with_its_error(tmp_path):
    [line] = reloaded(tmp_path, "info", "a line without its account\n" + TOKEN + "\n")
    assert (line["event"], line["log_level"]) == ("reload_refused", "error")
    assert (line["applied"], line["refused"]) == (["log_level"], ["tokens_file"])
    assert line["tokens"] == 1 and "tokens_error" in line and "config_error" not in line
    assert TOKEN not in repr(line)
