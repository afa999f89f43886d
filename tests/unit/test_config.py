"""Config: the shipped file documents every key with its default; bad values fail clearly."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import pytest

from eslcdr import config
from eslcdr.collector import config as collector_config
from eslcdr.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]


# Each shipped file with the keys it declares.  collector.ini shows its keys
# commented out (";key = default"); a commented-out [section:NAME] (eslcdr.ini's
# [esl:fs2], collector.ini's [node:fs1]) is an example, with example values.
SHIPPED = {"eslcdr.ini": config.SETTINGS, "collector.ini": collector_config.SETTINGS}
KEY_LINE = re.compile(r"^;?([a-z_]+) = ?(.*)$")
SECTION_LINE = re.compile(r"^;?\[([a-z]+(?::[\w.-]+)?)\]$")


def documented_keys(name: str) -> tuple[dict[str, dict[str, tuple[str, list[str]]]], set[str]]:
    """Section -> key -> (its value, the comment lines right above it) in the
    shipped file, and the sections shown only by an example ([node:fs1] ->
    node); a plain section wins over an example."""
    found: dict[str, dict[str, tuple[str, list[str]]]] = {}
    section, comments = None, []
    for line in (ROOT / "conf" / name).read_text().splitlines():
        if SECTION_LINE.match(line):
            section, comments = SECTION_LINE.match(line).group(1), []
        elif KEY_LINE.match(line) and section is not None:
            key, value = KEY_LINE.match(line).groups()
            found.setdefault(section, {})[key] = (value.strip(), comments)
            comments = []
        elif line.startswith(";"):
            comments.append(line[1:].strip())
        else:
            comments = []
    plain = {section: keys for section, keys in found.items() if ":" not in section}
    examples = {section.split(":")[0]: keys for section, keys in found.items() if ":" in section}
    return {**examples, **plain}, set(examples) - set(plain)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_ini_lists_every_declared_key_with_its_default(name):
    settings, (documented, examples) = SHIPPED[name], documented_keys(name)
    assert {section: sorted(keys) for section, keys in documented.items()} == {
        section: sorted(keys) for section, keys in settings.items()}
    wrong = {(section, key): documented[section][key][0] for section, keys in settings.items() if section not in examples
             for key, setting in keys.items() if documented[section][key][0] != setting.default}
    assert wrong == {}


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_ini_says_what_each_key_is_for_under_its_declared_help(name):
    documented, _ = documented_keys(name)
    wrong = {(section, key): documented.get(section, {}).get(key, (None, []))[1]
             for section, settings in SHIPPED[name].items() for key, setting in settings.items()
             if not setting.help or documented.get(section, {}).get(key, (None, []))[1][-len(setting.help.splitlines()):]
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


def test_a_node_name_becomes_an_environment_name_of_letters_digits_and_underscores(tmp_path):
    path = write(tmp_path, "[esl:fs-2.b]\nhost = 10.1.1.1\n")
    cfg = config.load(path, environ={"ESLCDR_ESL_FS_2_B_PORT": "9021"})
    assert (cfg.nodes[1].name, cfg.nodes[1].port) == ("fs-2.b", 9021)


def test_password_never_in_repr(tmp_path):
    cfg = config.load(write(tmp_path, "[esl]\npassword = s3cr3t-pw\n"), environ={})
    assert "s3cr3t-pw" not in repr(cfg)


@pytest.mark.parametrize(
    "text, message",
    [
        ("[esl]\nport = eighty\n", "[esl] port"),
        ("[esl]\nport = 70000\n", "[esl] port"),
        ("[esl]\nformat = xml\n", "[esl] format"),
        ("[store]\nbatch_size = 0\n", "[store] batch_size: '0' is out of range: more than 0"),
        ("[api]\nlisten = nowhere\n", "[api] listen"),
        ("[api]\nmax_head_bytes = 1000\n", "[api] max_head_bytes: '1000' is out of range: at least 8192"),
        ("[api]\nmin_receive_rate = -1\n", "[api] min_receive_rate: '-1' is out of range: 0 or more"),
        ("[bogus]\nx = 1\n", "unknown section"),
        ("[store:x]\nbatch_size = 0\n", "unknown section [store:x]"),
        ("[esl]\npasword = typo\n", "[esl] unknown key 'pasword' (did you mean 'password'?)"),
        ("[esl]\nnode_name = fs1\n", "[esl] unknown key 'node_name' (a key of [cdr])"),
        ("[ESL]\nhost = fs1\n", "unknown section [ESL] (did you mean [esl]?)"),
        ("[esl-fs2]\nhost = fs2\n", "unknown section [esl-fs2] (did you mean [esl:fs2]?)"),
        ("[cdr]\nnode_name = fs1\n[esl:fs1]\nhost = fs1\n", "[esl:fs1] names the node 'fs1', the name of [esl]"
         " ([cdr] node_name, or this host's name) too: give each node a name of its own"),
        ("[cdr]\nnode_name = a\n[esl:fs2]\n[esl: fs2]\n", "[esl: fs2] names the node 'fs2', the name of [esl:fs2] too"),
        ("[log]\nlevel = loud\n", "[log] level"),
        ("[api]\ndefault_page_size = 100\nmax_page_size = 99\n", "[api] max_page_size: '99' is out of range: at least default_page_size (100)"),
        ("[api]\ncors_origins = https://ui.example.com/\n", "[api] cors_origins: 'https://ui.example.com/' is not *"),
        ("[esl:fs2]\nport = 0\n", "[esl:fs2] port: '0' is out of range: 1 to 65535"),
        ("[store]\nretention_check_interval = 61\n", "[store] retention_check_interval: '61' is out of range: more than 0 and at most 60"),
        ("[log]\nsummary_interval = soon\n", "[log] summary_interval: 'soon' is not a valid float"),
        ("not an ini file", "eslcdr.ini"),
    ],
)
def test_bad_values_are_clear_errors(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, text), environ={})
    assert message in str(info.value)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_bound_says_itself(name):
    # An out-of-range value is refused with its bounds ('... is out of range: at least 8192').
    unsaid = [(section, key) for section, keys in SHIPPED[name].items() for key, setting in keys.items()
              if setting.check is not None and not getattr(setting.check, "text", "")]
    assert unsaid == []


@pytest.mark.parametrize(
    "collector, message",
    [
        ({"poll_interval": "0.001"}, "[collector] poll_interval: '0.001' is out of range: at least 0.01"),
        ({"min_pull_rate": "-5"}, "[collector] min_pull_rate: '-5' is out of range: 0 or more"),
        ({"default_page_size": "20", "max_page_size": "10"},
         "[collector] max_page_size: '10' is out of range: at least default_page_size (20)"),
    ],
)
def test_a_collector_value_out_of_range_is_refused_with_its_bounds(collector, message):
    with pytest.raises(ConfigError) as info:
        collector_config.from_mapping({"collector": collector, "node:fs1": {"url": "http://fs1:8080", "token": "t"}})
    assert str(info.value) == message


@pytest.mark.parametrize(
    "sections, message",
    [
        ({"node": {"url": "http://fs1:8080"}}, "unknown section [node] (did you mean [node:NAME]?)"),
        ({"nodes:fs1": {"url": "http://fs1:8080"}}, "unknown section [nodes:fs1] (did you mean [node:fs1]?)"),
        ({"collector": {"url": "http://fs1:8080"}}, "[collector] unknown key 'url' (a key of [node:NAME])"),
        ({"collector": {"batch_sise": "10"}}, "[collector] unknown key 'batch_sise' (did you mean 'batch_size'?)"),
    ],
)
def test_a_collector_section_or_key_mistyped_says_what_was_meant(sections, message):
    with pytest.raises(ConfigError) as info:
        collector_config.from_mapping(sections)
    assert str(info.value) == message


SECRET = "Zq9-s3cr3t-ClueCon"


@pytest.mark.parametrize(
    "text, environ, message",
    [
        ("", {"ESLCDR_API_LISTEN": "nope"}, "ESLCDR_API_LISTEN (overrides [api] listen): 'nope' is not host:port"),
        ("[esl:fs2]\nport = 9021\n", {"ESLCDR_ESL_FS2_PORT": "eighty"},
         "ESLCDR_ESL_FS2_PORT (overrides [esl:fs2] port): 'eighty' is not a valid int"),
        ("[api]\ndefault_page_size = 100\n", {"ESLCDR_API_MAX_PAGE_SIZE": "99"},
         "ESLCDR_API_MAX_PAGE_SIZE (overrides [api] max_page_size): '99' is out of range"),
        ("[log]\nlevel = loud\n", {"ESLCDR_API_LISTEN": "127.0.0.1:1"}, "[log] level: 'loud' must be"),
    ],
)
def test_a_bad_value_from_the_environment_names_the_variable(tmp_path, text, environ, message):
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, text), environ=environ)
    assert str(info.value).startswith(message), str(info.value)


def test_an_esl_node_names_the_variable_of_esl_it_inherits(tmp_path):
    # [esl:fs2] takes [esl]'s port, which ESLCDR_ESL_PORT set: that is what to fix.
    parser = configparser.ConfigParser()
    parser.read_string("[esl:fs2]\nhost = fs2\n")
    esl = config.section_values(parser, "esl", config.DEFAULTS["esl"], {"ESLCDR_ESL_PORT": "0"})
    fs2 = config.section_values(parser, "esl:fs2", config.DEFAULTS["esl"], {}, inherit=esl)
    with pytest.raises(ConfigError, match=r"^ESLCDR_ESL_PORT \(overrides \[esl\] port\): '0' is out of range"):
        config.parsed(config.SETTINGS["esl"], fs2, "esl:fs2")
    parser.read_string("[esl:fs3]\nport = 0\n")
    fs3 = config.section_values(parser, "esl:fs3", config.DEFAULTS["esl"], {}, inherit=esl)
    with pytest.raises(ConfigError, match=r"^\[esl:fs3\] port: '0' is out of range"):
        config.parsed(config.SETTINGS["esl"], fs3, "esl:fs3")


@pytest.mark.parametrize(
    "environ, message",
    [
        ({"ESLCDR_COLLECTOR_DSN": "postgresql://u:%s@x@db/cdrs" % SECRET}, "ESLCDR_COLLECTOR_DSN (overrides [collector] dsn): "),
        ({"ESLCDR_COLLECTOR_DSN": "host=db password='%s" % SECRET}, "ESLCDR_COLLECTOR_DSN (overrides [collector] dsn): "),
        ({"ESLCDR_NODE_FS1_URL": "http://u:%s@fs1:port" % SECRET}, "ESLCDR_NODE_FS1_URL (overrides [node:fs1] url): "),
        ({"ESLCDR_NODE_FS1_TOKEN": " "}, "ESLCDR_NODE_FS1_TOKEN (overrides [node:fs1] token): "),
        ({"ESLCDR_COLLECTOR_BATCH_SIZE": "0"}, "ESLCDR_COLLECTOR_BATCH_SIZE (overrides [collector] batch_size): '0'"),
    ],
)
def test_a_collector_value_from_the_environment_names_the_variable_never_a_secret(environ, message):
    with pytest.raises(ConfigError) as info:
        collector_config.from_mapping({"node:fs1": {"url": "http://fs1:8080", "token": "t"}}, environ)
    assert str(info.value).startswith(message) and "s3cr3t" not in str(info.value), str(info.value)


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
    for loader, name in ((config.load, "eslcdr.ini"), (collector_config.load, "collector.ini")):
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(ConfigError) as info:
            loader(path, environ={})
        message = str(info.value)
        assert str(path) in message and line in message, message
        assert SECRET not in message and "s3cr3t" not in repr(info.value), message


def test_a_byte_that_is_not_utf8_is_a_clear_error_naming_the_file_never_echoing_it(tmp_path):
    # An ini saved in Latin-1 (a password with an accent): a ConfigError
    # naming the file, not a UnicodeDecodeError's traceback quoting the bytes.
    text = ("[esl]\nhost = fs1\npassword = caf\xe9-%s\n" % SECRET).encode("latin-1")
    for loader, name in ((config.load, "eslcdr.ini"), (collector_config.load, "collector.ini")):
        path = tmp_path / name
        path.write_bytes(text)
        with pytest.raises(ConfigError) as info:
            loader(path, environ={})
        assert str(info.value) == "%s: not UTF-8 text" % path
        assert info.value.__cause__ is None and info.value.__suppress_context__


def test_a_file_path_that_is_a_folder_is_refused(tmp_path):
    # Before, eslcdr check said ok, run failed with no key named (or, for the
    # spool, at the first write SQLite refused), import with a traceback.
    for section, key, example in (("store", "path", "cdrs.db"), ("store", "spool_path", "cdrs.db.spool"),
                                  ("api", "tokens_file", "tokens")):
        with pytest.raises(ConfigError) as info:
            config.load(write(tmp_path, "[%s]\n%s = %s\n" % (section, key, tmp_path)), environ={})
        assert str(info.value) == "[%s] %s: %r is a folder, not a file: name one in it, e.g. %s" % (
            section, key, str(tmp_path), tmp_path / example)
    with pytest.raises(ConfigError) as info:
        collector_config.from_mapping({"collector": {"tokens_file": str(tmp_path)}, "node:fs1": {"url": "http://a:1"}})
    assert str(info.value).startswith("[collector] tokens_file: %r is a folder, not a file" % str(tmp_path))
    cfg = config.load(write(tmp_path, "[store]\npath = %s\n" % (tmp_path / "new" / "cdrs.db")), environ={})
    assert cfg.store.path == str(tmp_path / "new" / "cdrs.db")  # a file still to be made is fine


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "nope.ini", environ={})
    with pytest.raises(ConfigError, match="config file %s is not a file" % tmp_path):  # -c with a folder
        config.load(tmp_path, environ={})


def test_list_values_split_on_commas():
    cfg = config.from_mapping({"cdr": {"custom_vars": "a, b ,c", "account_id_vars": "x"}})
    assert cfg.cdr.custom_vars == ("a", "b", "c")
    assert cfg.cdr.account_id_vars == ("x",)
