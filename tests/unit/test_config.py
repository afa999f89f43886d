"""Config: the shipped file documents every key with its default; bad values fail clearly."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

from eslcdr import config
from eslcdr.config import DEFAULTS, SETTINGS, ConfigError

ROOT = Path(__file__).resolve().parents[2]


def shipped() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";", "#"))
    parser.read(ROOT / "conf" / "eslcdr.ini")
    return parser


def test_shipped_ini_lists_every_key_with_its_default():
    parser = shipped()
    for section, settings in SETTINGS.items():
        assert parser.has_section(section), section
        assert dict(parser[section]) == {key: setting.default for key, setting in settings.items()}, section
    assert DEFAULTS == {section: dict(parser[section]) for section in SETTINGS}


def comments_above_each_key() -> dict[tuple[str, str], list[str]]:
    """(section, key) -> the comment lines right above the key in the shipped file."""
    found = {}
    section, comments = None, []
    for line in (ROOT / "conf" / "eslcdr.ini").read_text().splitlines():
        if line.startswith("["):
            section, comments = line.strip("[]"), []
        elif line.startswith(";"):
            comments.append(line[1:].strip())
        elif "=" in line and section is not None:
            found[(section, line.split("=", 1)[0].strip())] = comments
            comments = []
        else:
            comments = []
    return found


def test_shipped_ini_says_what_each_key_is_for_under_its_declared_help():
    comments = comments_above_each_key()
    wrong = {(section, key): comments.get((section, key))
             for section, settings in SETTINGS.items() for key, setting in settings.items()
             if not setting.help or comments.get((section, key), [])[-len(setting.help.splitlines()):]
             != setting.help.splitlines()}
    assert wrong == {}


def test_shipped_ini_loads(tmp_path):
    cfg = config.load(ROOT / "conf" / "eslcdr.ini", environ={})
    assert cfg.nodes[0].format == "json"
    assert (cfg.api.host, cfg.api.port) == ("127.0.0.1", 8080)


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "eslcdr.ini"
    path.write_text(text)
    return path


def test_environment_overrides_file(tmp_path):
    path = write(tmp_path, "[esl]\npassword = fromfile\n[esl:fs2]\nhost = 10.1.1.1\n")
    cfg = config.load(path, environ={"ESLCDR_ESL_PASSWORD": "fromenv", "ESLCDR_ESL_FS2_PORT": "9021", "ESLCDR_API_LISTEN": "0.0.0.0:9999"})
    assert cfg.nodes[0].password == "fromenv"
    fs2 = cfg.nodes[1]
    assert (fs2.name, fs2.host, fs2.port, fs2.password) == ("fs2", "10.1.1.1", 9021, "fromenv")
    assert (cfg.api.host, cfg.api.port) == ("0.0.0.0", 9999)


def test_password_never_in_repr(tmp_path):
    cfg = config.load(write(tmp_path, "[esl]\npassword = s3cr3t-pw\n"), environ={})
    assert "s3cr3t-pw" not in repr(cfg)


@pytest.mark.parametrize(
    "text, message",
    [
        ("[esl]\nport = eighty\n", "[esl] port"),
        ("[esl]\nport = 70000\n", "[esl] port"),
        ("[esl]\nformat = xml\n", "[esl] format"),
        ("[store]\nbatch_size = 0\n", "[store] batch_size"),
        ("[api]\nlisten = nowhere\n", "[api] listen"),
        ("[api]\nmax_head_bytes = 1000\n", "[api] max_head_bytes: '1000' is out of range"),
        ("[api]\nmin_receive_rate = -1\n", "[api] min_receive_rate"),
        ("[bogus]\nx = 1\n", "unknown section"),
        ("[esl]\npasword = typo\n", "unknown key"),
        ("[log]\nlevel = loud\n", "[log] level"),
        ("[api]\ndefault_page_size = 100\nmax_page_size = 99\n", "[api] max_page_size: '99' is out of range"),
        ("[api]\ncors_origins = https://ui.example.com/\n", "[api] cors_origins: 'https://ui.example.com/' is not *"),
        ("[esl:fs2]\nport = 0\n", "[esl:fs2] port: '0' is out of range"),
        ("[store]\nretention_check_interval = 61\n", "[store] retention_check_interval: '61' is out of range"),
        ("[log]\nsummary_interval = soon\n", "[log] summary_interval: 'soon' is not a valid float"),
        ("not an ini file", "eslcdr.ini"),
    ],
)
def test_bad_values_are_clear_errors(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, text), environ={})
    assert message in str(info.value)


SECRET = "Zq9-s3cr3t-ClueCon"


@pytest.mark.parametrize(
    "text, line",
    [
        # A password line that lost its '=' (or its ':'), a stray token
        # pasted at the top, a key given twice: configparser's message
        # quotes the line; ours names its number only.
        ("[esl]\nhost = fs1\npassword %s\n" % SECRET, "line 3"),
        ("%s\n[esl]\nhost = fs1\n" % SECRET, "line 1"),
        ("[esl]\npassword = a\npassword = %s\n" % SECRET, "line 3"),
        ("[esl]\n%s\nhost = fs1\n[api]\nlisten%s\n" % (SECRET, SECRET), "line 2, 5"),
    ],
)
def test_a_malformed_line_is_named_by_number_never_echoed(tmp_path, text, line):
    from eslcdr.collector import config as collector_config

    for loader, name in ((config.load, "eslcdr.ini"), (collector_config.load, "collector.ini")):
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(ConfigError) as info:
            loader(path, environ={})
        message = str(info.value)
        assert str(path) in message and line in message, message
        assert SECRET not in message and "s3cr3t" not in repr(info.value), message


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "nope.ini", environ={})


def test_list_values_split_on_commas():
    cfg = config.from_mapping({"cdr": {"custom_vars": "a, b ,c", "account_id_vars": "x"}})
    assert cfg.cdr.custom_vars == ("a", "b", "c")
    assert cfg.cdr.account_id_vars == ("x",)
