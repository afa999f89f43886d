"""Configuration: one frozen ``Config`` built once at start and passed down.

Sources, later ones winning: built-in defaults, the INI file, then
environment variables ``ESLCDR_<SECTION>_<KEY>`` (``ESLCDR_ESL_PASSWORD``,
``ESLCDR_API_LISTEN``...).  Further FreeSWITCH nodes are ``[esl:NAME]``
sections; each inherits the keys of ``[esl]`` it does not set.  Their
environment overrides are ``ESLCDR_ESL_<NAME>_<KEY>``.

Every key and its default is listed in ``conf/eslcdr.ini``; a test checks
that file and ``DEFAULTS`` agree.  Bad values raise ``ConfigError`` with the
section, key and reason, which the CLI turns into exit code 2.
"""

from __future__ import annotations

import configparser
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

DEFAULT_PATHS = (Path("/etc/eslcdr/eslcdr.ini"), Path("conf/eslcdr.ini"))

# The HTTP server's bounds (``ServerLimits``, used by ``server.make_server``): the
# same keys in ``[api]`` and in the collector's ``[collector]``.
# key: (default, type, valid when)
SERVER_LIMITS: dict[str, tuple[str, Callable, Callable]] = {
    "header_timeout": ("10", float, lambda v: v > 0),
    "idle_timeout": ("15", float, lambda v: v > 0),
    "send_timeout": ("60", float, lambda v: v > 0),
    "request_timeout": ("30", float, lambda v: v > 0),
    "min_receive_rate": ("500", float, lambda v: v >= 0),  # 0: off
    "max_connections": ("256", int, lambda v: v > 0),
    "max_head_bytes": ("65536", int, lambda v: v >= 8192),  # gevent's request line limit is 8192
    "max_body_bytes": ("65536", int, lambda v: v >= 1024),
}

DEFAULTS: dict[str, dict[str, str]] = {
    "esl": {
        "host": "127.0.0.1",
        "port": "8021",
        "password": "ClueCon",
        "format": "json",
        "connect_timeout": "5",
        "command_timeout": "5",
        "reconnect_max_delay": "30",
    },
    "store": {
        "path": "/var/lib/eslcdr/cdrs.db",
        "flush_interval": "0.2",
        "batch_size": "500",
        "retention_days": "0",
        "retention_check_interval": "60",
        "queue_size": "100000",
        "spool_path": "",
        "leg_ttl": "86400",
        "stall_timeout": "120",
    },
    "backfill": {"json_cdr_dir": ""},
    "api": {
        "listen": "127.0.0.1:8080",
        "tokens_file": "/etc/eslcdr/tokens",
        "max_range": "2682000",
        "default_page_size": "50",
        "max_page_size": "1000",
        "statement_timeout": "10",
        **{key: default for key, (default, _, _) in SERVER_LIMITS.items()},
        "heavy_queries": "2",
        "cors_origins": "*",
        "session_ttl": "3600",
    },
    "cdr": {
        "account_id_vars": "ecallmgr_Account-ID",
        "owner_id_vars": "ecallmgr_Owner-ID",
        "authorizing_id_vars": "ecallmgr_Authorizing-ID",
        "interaction_id_vars": "ecallmgr_Call-Interaction-ID, Call-Interaction-ID",
        "custom_var_prefixes": "ecallmgr_",
        "custom_vars": "",
        "node_name": "",
    },
    "log": {"level": "info", "format": "auto", "summary_interval": "60"},
}


class ConfigError(ValueError):
    """The configuration is invalid; the message names section and key."""


@dataclass(frozen=True, slots=True)
class EslNode:
    name: str
    host: str
    port: int
    password: str
    format: str
    connect_timeout: float
    command_timeout: float
    reconnect_max_delay: float

    def __repr__(self) -> str:  # never print the password
        return "EslNode(name=%r, host=%r, port=%r, format=%r)" % (
            self.name,
            self.host,
            self.port,
            self.format,
        )


@dataclass(frozen=True, slots=True)
class StoreConfig:
    path: str
    flush_interval: float
    batch_size: int
    retention_days: int
    retention_check_interval: float
    queue_size: int
    spool_path: str  # CDRs SQLite cannot take yet; default: the database path + ".spool"
    leg_ttl: float
    stall_timeout: float


@dataclass(frozen=True, slots=True)
class BackfillConfig:
    json_cdr_dir: str  # FreeSWITCH's mod_json_cdr log-dir; "" = off


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """How the HTTP server holds its clients to account (``SERVER_LIMITS``; the
    README's API section says what a client gets past each)."""

    header_timeout: float  # s from a request's first byte to the end of its head
    idle_timeout: float  # s a connection may send nothing (new, or between requests)
    send_timeout: float  # s a response write may make no progress
    request_timeout: float  # s from a request's first byte to the end of its body
    min_receive_rate: float  # bytes/s a request must average after its first seconds; 0: off
    max_connections: int
    max_head_bytes: int  # request line and headers together
    max_body_bytes: int

    @classmethod
    def default(cls) -> "ServerLimits":
        return server_limits({key: default for key, (default, _, _) in SERVER_LIMITS.items()}, "api")


@dataclass(frozen=True, slots=True)
class ApiConfig:
    host: str
    port: int
    tokens_file: str
    max_range: int
    default_page_size: int
    max_page_size: int
    statement_timeout: float
    limits: ServerLimits
    heavy_queries: int
    cors_origins: tuple[str, ...] = ("*",)  # () = no CORS headers
    session_ttl: float = 3600.0


@dataclass(frozen=True, slots=True)
class CdrConfig:
    account_id_vars: tuple[str, ...]
    owner_id_vars: tuple[str, ...]
    authorizing_id_vars: tuple[str, ...]
    interaction_id_vars: tuple[str, ...]
    custom_var_prefixes: tuple[str, ...]
    custom_vars: tuple[str, ...]
    node_name: str


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str
    format: str
    summary_interval: float = 60.0  # s between summary lines (the collector has none)


@dataclass(frozen=True, slots=True)
class Config:
    nodes: tuple[EslNode, ...]
    store: StoreConfig
    api: ApiConfig
    cdr: CdrConfig
    log: LogConfig
    backfill: BackfillConfig
    source: str  # the file it was read from, or "<defaults>"


def _get(values: Mapping[str, str], section: str, key: str, conv, check=None):
    raw = values[key]
    try:
        value = conv(raw)
    except ValueError:
        raise ConfigError("[%s] %s: %r is not a valid %s" % (section, key, raw, conv.__name__)) from None
    if check is not None and not check(value):
        raise ConfigError("[%s] %s: %r is out of range" % (section, key, raw))
    return value


def server_limits(values: Mapping[str, str], section: str) -> ServerLimits:
    """The ``SERVER_LIMITS`` keys of a section, checked."""
    return ServerLimits(**{key: _get(values, section, key, conv, check)
                           for key, (_, conv, check) in SERVER_LIMITS.items()})


def _names(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.replace("\n", ",").split(",") if part.strip())


def _cors_origins(raw: str) -> tuple[str, ...]:
    """``*``, or origins (``https://ui.example.com``) separated by commas or spaces; empty = off."""
    origins = tuple(part for part in raw.replace(",", " ").split() if part)
    for origin in origins:
        if origin != "*" and (not origin.startswith(("http://", "https://")) or origin.endswith("/")):
            raise ConfigError("[api] cors_origins: %r is not * or an origin like https://ui.example.com" % origin)
    return ("*",) if "*" in origins else origins


def parse_listen(raw: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:8080`` for IPv6) -> (host, port)."""
    host, sep, port = raw.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError("[api] listen: %r is not host:port" % raw)
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def _env_overrides(section: str, keys, environ: Mapping[str, str]) -> dict[str, str]:
    prefix = "ESLCDR_%s_" % section.upper().replace(":", "_").replace("-", "_")
    found = {}
    for key in keys:
        env_name = prefix + key.upper()
        if env_name in environ:
            found[key] = environ[env_name]
    return found


def _node(name: str, section: str, values: Mapping[str, str]) -> EslNode:
    fmt = values["format"].strip().lower()
    if fmt not in ("json", "plain"):
        raise ConfigError("[%s] format: %r must be json or plain" % (section, values["format"]))
    positive = lambda v: v > 0  # noqa: E731
    return EslNode(
        name=name,
        host=values["host"].strip(),
        port=_get(values, section, "port", int, lambda v: 0 < v < 65536),
        password=values["password"],
        format=fmt,
        connect_timeout=_get(values, section, "connect_timeout", float, positive),
        command_timeout=_get(values, section, "command_timeout", float, positive),
        reconnect_max_delay=_get(values, section, "reconnect_max_delay", float, positive),
    )


def read_config_file(
    parser: configparser.ConfigParser, path: str | os.PathLike | None, default_paths: Sequence[Path]
) -> str:
    """Read ``path`` (it must exist), or else the first of ``default_paths``
    that exists, into ``parser``; return what was read (``<defaults>`` when
    nothing was).  Shared by ``eslcdr run`` and ``eslcdr collect``."""
    source = "<defaults>"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError("config file %s does not exist" % path)
        candidates = [path]
    else:
        candidates = [p for p in default_paths if p.is_file()][:1]
    for candidate in candidates:
        try:
            with open(candidate, encoding="utf-8") as handle:
                parser.read_file(handle)
        except configparser.Error as exc:
            raise ConfigError("%s: %s" % (candidate, _parse_error(exc))) from None
        except UnicodeDecodeError:
            raise ConfigError("%s: not UTF-8 text" % candidate) from None
        except OSError as exc:
            raise ConfigError("cannot read %s: %s" % (candidate, exc.strerror)) from None
        source = str(candidate)
    return source


def _parse_error(exc: configparser.Error) -> str:
    """What is wrong with the file, by line number only: configparser's own
    message quotes the offending line, which may hold a password or token
    (a ``password`` line that lost its ``=``)."""
    if isinstance(exc, configparser.MissingSectionHeaderError):
        return "line %d: a line before the first [section] header" % exc.lineno
    if isinstance(exc, configparser.ParsingError):
        numbers = ", ".join(str(number) for number, _line in exc.errors)
        return "line %s: not a 'key = value' line, a [section] header or a comment" % numbers
    if isinstance(exc, configparser.DuplicateOptionError):
        return "line %s: [%s] %s is set twice" % (exc.lineno, exc.section, exc.option)
    if isinstance(exc, configparser.DuplicateSectionError):
        return "line %s: section [%s] appears twice" % (exc.lineno, exc.section)
    return "not a valid INI file (%s)" % type(exc).__name__


def load(path: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read the config file (or the first default path that exists)."""
    environ = os.environ if environ is None else environ
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";", "#"))
    source = read_config_file(parser, path, DEFAULT_PATHS)
    return build(parser, environ, source)


def build(parser: configparser.ConfigParser, environ: Mapping[str, str], source: str) -> Config:
    for section in parser.sections():
        base = section.split(":", 1)[0]
        if base not in DEFAULTS:
            raise ConfigError("unknown section [%s]" % section)
        known = DEFAULTS[base]
        for key in parser[section]:
            if key not in known:
                raise ConfigError("[%s] unknown key %r" % (section, key))

    def section_values(name: str, inherit: Mapping[str, str] | None = None) -> dict[str, str]:
        base = name.split(":", 1)[0]
        values = dict(DEFAULTS[base])
        if inherit:
            values.update(inherit)
        if parser.has_section(name):
            values.update(parser[name])
        values.update(_env_overrides(name, DEFAULTS[base], environ))
        return values

    esl = section_values("esl")
    cdr_values = section_values("cdr")
    node_name = cdr_values["node_name"].strip() or socket.gethostname()
    nodes = [_node(node_name, "esl", esl)]
    for section in parser.sections():
        if section.startswith("esl:"):
            name = section.split(":", 1)[1].strip()
            if not name:
                raise ConfigError("[%s] needs a node name after esl:" % section)
            nodes.append(_node(name, section, section_values(section, inherit=esl)))
    if len({node.name for node in nodes}) != len(nodes):
        raise ConfigError("two [esl] sections share the node name %r" % node_name)

    store = section_values("store")
    api = section_values("api")
    log = section_values("log")
    host, port = parse_listen(api["listen"])
    level = log["level"].strip().lower()
    if level not in ("debug", "info", "warning", "error"):
        raise ConfigError("[log] level: %r must be debug, info, warning or error" % level)
    log_format = log["format"].strip().lower()
    if log_format not in ("json", "console", "auto"):
        raise ConfigError("[log] format: %r must be json, console or auto" % log_format)
    default_page = _get(api, "api", "default_page_size", int, lambda v: v > 0)
    return Config(
        nodes=tuple(nodes),
        store=StoreConfig(
            path=store["path"].strip(),
            flush_interval=_get(store, "store", "flush_interval", float, lambda v: v > 0),
            batch_size=_get(store, "store", "batch_size", int, lambda v: v > 0),
            retention_days=_get(store, "store", "retention_days", int, lambda v: v >= 0),
            retention_check_interval=_get(store, "store", "retention_check_interval", float,
                                          lambda v: 0 < v <= 60),
            queue_size=_get(store, "store", "queue_size", int, lambda v: v > 0),
            spool_path=store["spool_path"].strip() or store["path"].strip() + ".spool",
            leg_ttl=_get(store, "store", "leg_ttl", float, lambda v: v > 0),
            stall_timeout=_get(store, "store", "stall_timeout", float, lambda v: v > 0),
        ),
        api=ApiConfig(
            host=host,
            port=port,
            tokens_file=api["tokens_file"].strip(),
            max_range=_get(api, "api", "max_range", int, lambda v: v > 0),
            default_page_size=default_page,
            max_page_size=_get(api, "api", "max_page_size", int, lambda v: v >= default_page),
            statement_timeout=_get(api, "api", "statement_timeout", float, lambda v: v > 0),
            limits=server_limits(api, "api"),
            heavy_queries=_get(api, "api", "heavy_queries", int, lambda v: v > 0),
            cors_origins=_cors_origins(api["cors_origins"]),
            session_ttl=_get(api, "api", "session_ttl", float, lambda v: v > 0),
        ),
        cdr=CdrConfig(
            account_id_vars=_names(cdr_values["account_id_vars"]),
            owner_id_vars=_names(cdr_values["owner_id_vars"]),
            authorizing_id_vars=_names(cdr_values["authorizing_id_vars"]),
            interaction_id_vars=_names(cdr_values["interaction_id_vars"]),
            custom_var_prefixes=_names(cdr_values["custom_var_prefixes"]),
            custom_vars=_names(cdr_values["custom_vars"]),
            node_name=node_name,
        ),
        log=LogConfig(
            level=level,
            format=log_format,
            summary_interval=_get(log, "log", "summary_interval", float, lambda v: v > 0),
        ),
        backfill=BackfillConfig(json_cdr_dir=section_values("backfill")["json_cdr_dir"].strip()),
        source=source,
    )


def from_mapping(sections: Mapping[str, Mapping[str, str]], environ: Mapping[str, str] | None = None) -> Config:
    """Build a Config from a dict of sections (tests, ``demo``)."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_dict({name: dict(values) for name, values in sections.items()})
    return build(parser, environ or {}, "<mapping>")
