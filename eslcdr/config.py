"""Configuration: one frozen ``Config`` built once at start and passed down.

Sources, later ones winning: built-in defaults, the INI file, then the
environment, ``ESLCDR_<SECTION>_<KEY>`` (``env_name``).  Further FreeSWITCH
nodes are ``[esl:NAME]`` sections; each inherits the keys of ``[esl]`` it
does not set.

Every key is declared once, in ``SETTINGS``: its default (as the INI file
writes it), how its text becomes a value, when that value is valid and what
it is for.  ``DEFAULTS``, the checks of ``build`` and the keys the file may
hold derive from it; ``conf/eslcdr.ini`` lists every key with its default
under its help, docs/configuration.md names each (both tested).  The
collector's ``collector/config.py`` declares its keys with the same parts.
Bad values raise ``ConfigError`` naming section, key and reason (exit 2).
"""

from __future__ import annotations

import configparser
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Mapping, Sequence

DEFAULT_PATHS = (Path("/etc/eslcdr/eslcdr.ini"), Path("conf/eslcdr.ini"))


class ConfigError(ValueError):
    """The configuration is invalid; the message names section and key."""


class Invalid(ValueError):
    """Raised by a ``Setting``'s parser: why the text is refused (the error
    reads ``[section] key: <why>``)."""


@dataclass(frozen=True, slots=True)
class Setting:
    """One key of an INI section, declared once."""

    default: str  # as written in the INI file
    # text -> value; a ValueError reads "'x' is not a valid <parse's name>",
    # an Invalid gives its own reason
    parse: Callable[[str], Any]
    check: Callable[[Any], bool] | None = None  # the bounds: valid when true, else "out of range"
    help: str = ""  # what it is for: the comment above the key in conf/eslcdr.ini

    def value(self, values: Mapping[str, str], section: str, key: str) -> Any:
        """``values[key]`` parsed and checked."""
        raw = values[key]
        try:
            value = self.parse(raw)
        except Invalid as exc:
            raise ConfigError("[%s] %s: %s" % (section, key, exc)) from None
        except ValueError:
            raise ConfigError("[%s] %s: %r is not a valid %s" % (section, key, raw, self.parse.__name__)) from None
        if self.check is not None and not self.check(value):
            raise ConfigError("[%s] %s: %r is out of range" % (section, key, raw))
        return value


def text(raw: str) -> str:
    return raw.strip()


def names(raw: str) -> tuple[str, ...]:
    """Names separated by commas (or lines)."""
    return tuple(part.strip() for part in raw.replace("\n", ",").split(",") if part.strip())


def choice(*options: str) -> Callable[[str], str]:
    """One of ``options`` (case and surrounding blanks ignored)."""
    allowed = ", ".join(options[:-1]) + " or " + options[-1]

    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise Invalid("%r must be %s" % (value, allowed))
        return value

    return parse


def host_port(raw: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:8080`` for IPv6; no host = loopback) -> (host, port)."""
    host, sep, port = raw.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise Invalid("%r is not host:port" % raw)
    return host.strip("[]") or "127.0.0.1", int(port)


def parse_listen(raw: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:8080`` for IPv6) -> (host, port)."""
    try:
        return host_port(raw)
    except Invalid as exc:
        raise ConfigError("[api] listen: %s" % exc) from None


def _cors_origins(raw: str) -> tuple[str, ...]:
    """``*``, or origins (``https://ui.example.com``) separated by commas or spaces; empty = off."""
    origins = tuple(part for part in raw.replace(",", " ").split() if part)
    for origin in origins:
        if origin != "*" and (not origin.startswith(("http://", "https://")) or origin.endswith("/")):
            raise Invalid("%r is not * or an origin like https://ui.example.com" % origin)
    return ("*",) if "*" in origins else origins


def positive(value: float) -> bool:
    return value > 0


def non_negative(value: float) -> bool:
    return value >= 0


def at_least(low: float) -> Callable[[float], bool]:
    """The check of a value that must be ``low`` or more."""
    return lambda value: value >= low


# The HTTP server's bounds (``ServerLimits``, used by ``server.make_server``): the
# same keys in ``[api]`` and in the collector's ``[collector]``.
SERVER_LIMIT_SETTINGS: dict[str, Setting] = {
    "header_timeout": Setting("10", float, positive, help=(
        "seconds a client has to send a whole request head (request line and headers) once it started")),
    "idle_timeout": Setting("15", float, positive, help=(
        "seconds a connection may stay silent (a new one, or keep-alive between requests) before it is closed")),
    "send_timeout": Setting("60", float, positive, help=(
        "seconds a response write may make no progress (a client that stopped reading) before the client is dropped")),
    "request_timeout": Setting("30", float, positive, help=(
        "seconds a client has to send a whole request (head and body) once it started; else 408")),
    "min_receive_rate": Setting("500", float, non_negative, help=(
        "bytes per second a request must average after its first 2 seconds (0 = off); a slower\n"
        "client gets 408, and at max_connections it is the first to make room for a new one")),
    "max_connections": Setting("256", int, positive, help=(
        "connections served at once; past them a new connection takes the slot of one that is idle\n"
        "or below min_receive_rate (for 1 s at least), or is answered 503 and closed")),
    # gevent's request line limit is 8192
    "max_head_bytes": Setting("65536", int, at_least(8192), help=(
        "bytes of a request head (request line and headers) before it is answered 431 (at least 8192)")),
    "max_body_bytes": Setting("65536", int, at_least(1024), help=(
        "bytes of a request body (the login's JSON); a larger Content-Length is answered 413 before\n"
        "a byte of the body is read, a chunked body as soon as it passes this (at least 1024)")),
}
# How the API answers (ranges, pages, query time, CORS, login sessions): the same
# keys in [api] and in the collector's [collector] (its central API; ``ApiConfig.taken_from``).
API_ANSWER_SETTINGS: dict[str, Setting] = {
    "max_range": Setting("2682000", int, positive, help=(
        "widest created_from..created_to range in seconds (Kazoo's default: 31 days)")),
    "default_page_size": Setting("50", int, positive, help="rows of a listing's page when the client names no page_size"),
    # and at least default_page_size (ApiConfig.taken_from)
    "max_page_size": Setting("1000", int, positive, help=(
        "largest page_size a client may ask for (at least default_page_size)")),
    "statement_timeout": Setting("10", float, positive, help="seconds a single query may run before it is aborted"),
    "heavy_queries": Setting("2", int, positive, help=(
        "filtered listings (the database may scan the whole range), stats and filtered worst legs run at most\n"
        "this many at once; the others wait up to statement_timeout for a slot (then 503), so a plain\n"
        "page stays fast while they run")),
    "cors_origins": Setting("*", _cors_origins, help=(
        "origins whose browser pages may call the API (CORS): * (any, as Kazoo), or a list\n"
        "like https://ui.example.com https://ops.example.com; empty = no CORS headers")),
    "session_ttl": Setting("3600", float, positive, help=(
        "seconds an auth_token from PUT /v2/api_auth stays valid (Kazoo's token_auth_expiry_s)")),
}
# The [log] keys of both eslcdr run and eslcdr collect.
LOG_SETTINGS: dict[str, Setting] = {
    "level": Setting("info", choice("debug", "info", "warning", "error"), help="debug, info, warning, error"),
    "format": Setting("auto", choice("json", "console", "auto"), help=(
        "json, console or auto (console on a terminal, json otherwise)")),
}

SETTINGS: dict[str, dict[str, Setting]] = {
    # [esl:NAME] sections take the same keys.
    "esl": {
        "host": Setting("127.0.0.1", text, help="address of FreeSWITCH's mod_event_socket"),
        "port": Setting("8021", int, lambda v: 0 < v < 65536, help="its TCP port"),
        "password": Setting("ClueCon", str, help=(
            "Prefer ESLCDR_ESL_PASSWORD in the service environment over writing it here.")),
        "format": Setting("json", choice("json", "plain"), help="json (default: cheaper to decode) or plain"),
        "connect_timeout": Setting("5", float, positive, help="seconds to wait for the TCP connection"),
        "command_timeout": Setting("5", float, positive, help="seconds to wait for any command's reply"),
        "reconnect_max_delay": Setting("30", float, positive, help=(
            "cap (seconds) of the jittered exponential backoff between reconnects")),
    },
    "store": {
        "path": Setting("/var/lib/eslcdr/cdrs.db", text, help=(
            "the SQLite file (WAL mode; created with its folder if missing)")),
        "flush_interval": Setting("0.2", float, positive, help=(
            "most seconds a finished CDR waits for its transaction: CDRs arriving within it are committed\n"
            "together (a trickle costs a few commits a second, not one per leg); a full batch, or the\n"
            "last CDRs of a burst, go at once")),
        "batch_size": Setting("500", int, positive, help="CDRs per transaction"),
        "retention_days": Setting("0", int, non_negative, help=(
            "delete CDRs that hung up more than this many days ago (0 = keep everything), but never\n"
            "a row a registered collector (a '*' token of the tokens file that has pulled the feed)\n"
            "has not acknowledged yet; deleted in batches of 250 between insert batches, the file shrinks")),
        "retention_check_interval": Setting("60", float, lambda v: 0 < v <= 60, help=(
            "seconds between two retention checks (also the refresh of the size, oldest row and\n"
            "unpulled rows shown by /health and /metrics); at most 60")),
        "queue_size": Setting("100000", int, positive, help=(
            "CDRs held in memory while SQLite cannot write (locked, disk full); past it they go to the spool")),
        # "" = the database path + ".spool" (build)
        "spool_path": Setting("", text, help=(
            "append-only file (one JSON record per line, fsynced) for the CDRs SQLite cannot take yet:\n"
            "those past queue_size, and the whole backlog once a write has failed; replayed into SQLite\n"
            "exactly once at start and as soon as it takes writes again. Empty = the database path + .spool\n"
            "(elsewhere, the systemd unit must be allowed to write there: ReadWritePaths=)")),
        "leg_ttl": Setting("86400", float, positive, help="seconds after which a leg that never hung up is forgotten"),
        "stall_timeout": Setting("120", float, positive, help=(
            "seconds CDRs may wait with nothing committed before the writer counts as stuck:\n"
            "the systemd watchdog is then no longer fed and systemd restarts the service")),
    },
    "backfill": {
        "json_cdr_dir": Setting("", text, help=(
            "FreeSWITCH's mod_json_cdr log-dir (one <uuid>.cdr.json per leg; read only, never written).\n"
            "Legs whose hangup eslcdr did not hear (stopped, restarting, disconnected) are stored\n"
            "from their file. Empty = off.")),
    },
    "api": {
        "listen": Setting("127.0.0.1:8080", host_port, help="host:port of the HTTP API; loopback by default"),
        "tokens_file": Setting("/etc/eslcdr/tokens", text, help=(
            "one token per line: TOKEN ACCOUNT_ID or sha256:HEX ACCOUNT_ID ('*' = collector)")),
        **API_ANSWER_SETTINGS,
        **SERVER_LIMIT_SETTINGS,
    },
    "cdr": {
        "account_id_vars": Setting("ecallmgr_Account-ID", names, help=(
            "channel variables that name the account (first non-empty wins)")),
        "owner_id_vars": Setting("ecallmgr_Owner-ID", names, help=(
            "channel variables that name the owner (first non-empty wins)")),
        "authorizing_id_vars": Setting("ecallmgr_Authorizing-ID", names, help=(
            "channel variables that name the authorizing device (first non-empty wins)")),
        "interaction_id_vars": Setting(
            "ecallmgr_Call-Interaction-ID, Call-Interaction-ID, sip_h_X-Call-Interaction-ID", names, help=(
                "channel variables holding an explicit interaction id, first non-empty wins (otherwise one is\n"
                "derived); sip_h_X-Call-Interaction-ID is the header another node sets on a call it bridges here")),
        "custom_var_prefixes": Setting("ecallmgr_", names, help=(
            "variables starting with these prefixes go to custom_channel_vars (prefix removed)")),
        "custom_vars": Setting("", names, help="further variables copied to custom_channel_vars by exact name"),
        # "" = socket.gethostname() (build)
        "node_name": Setting("", text, help="node name of the [esl] connection (default: this host's name)"),
    },
    "log": {
        **LOG_SETTINGS,
        "summary_interval": Setting("60", float, positive, help=(
            "seconds between two info `summary` lines (events, CDRs, backlog, reconnects per node);\n"
            "per-batch lines are at debug level")),
    },
}

def defaults(settings: Mapping[str, Mapping[str, Setting]]) -> dict[str, dict[str, str]]:
    """Section -> key -> default, as the INI file writes it."""
    return {section: {key: setting.default for key, setting in keys.items()} for section, keys in settings.items()}


DEFAULTS: dict[str, dict[str, str]] = defaults(SETTINGS)


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
        return "EslNode(name=%r, host=%r, port=%r, format=%r)" % (self.name, self.host, self.port, self.format)


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
    """How the HTTP server holds its clients to account (each field's meaning:
    its help in ``SERVER_LIMIT_SETTINGS``; docs/api.md says what a client
    gets past each)."""

    header_timeout: float
    idle_timeout: float
    send_timeout: float
    request_timeout: float
    min_receive_rate: float
    max_connections: int
    max_head_bytes: int
    max_body_bytes: int

    @classmethod
    def default(cls) -> "ServerLimits":
        return cls(**parsed(SERVER_LIMIT_SETTINGS, DEFAULTS["api"], "api"))

    @classmethod
    def taken_from(cls, values: dict[str, Any]) -> "ServerLimits":
        """The limits among a section's parsed ``values``, removed from them."""
        return cls(**{key: values.pop(key) for key in SERVER_LIMIT_SETTINGS})


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
    cors_origins: tuple[str, ...]  # () = no CORS headers
    session_ttl: float

    @classmethod
    def taken_from(cls, values: dict[str, Any], raw: Mapping[str, str], section: str) -> "ApiConfig":
        """The API's keys among a section's parsed ``values`` (``[api]``, or the collector's
        ``[collector]``), removed from them; ``raw``: the section's text, for the error."""
        if values["max_page_size"] < values["default_page_size"]:
            raise ConfigError("[%s] max_page_size: %r is out of range" % (section, raw["max_page_size"]))
        host, port = values.pop("listen")
        return cls(host=host, port=port, tokens_file=values.pop("tokens_file"),
                   limits=ServerLimits.taken_from(values), **{key: values.pop(key) for key in API_ANSWER_SETTINGS})


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
    summary_interval: float  # s between summary lines (the collector has none)


@dataclass(frozen=True, slots=True)
class Config:
    nodes: tuple[EslNode, ...]
    store: StoreConfig
    api: ApiConfig
    cdr: CdrConfig
    log: LogConfig
    backfill: BackfillConfig
    source: str  # the file it was read from, or "<defaults>"


def parsed(settings: Mapping[str, Setting], values: Mapping[str, str], section: str) -> dict[str, Any]:
    """The keys of ``settings`` in a section's ``values``, parsed and checked."""
    return {key: setting.value(values, section, key) for key, setting in settings.items()}


def env_name(section: str, key: str) -> str:
    """The environment variable that overrides ``[section] key``:
    ``ESLCDR_<SECTION>_<KEY>``, upper case, any character but A-Z and 0-9 as
    ``_`` (``[esl:fs-2] host`` -> ``ESLCDR_ESL_FS_2_HOST``)."""
    return re.sub(r"[^A-Z0-9]", "_", "ESLCDR_%s_%s" % (section.upper(), key.upper()))


def check_sections(parser: configparser.ConfigParser, settings: Mapping[str, Mapping[str, Setting]],
                   plain: Collection[str], named: Collection[str]) -> None:
    """Refuse a section or key ``settings`` does not declare: a section is
    ``[NAME]`` for NAME in ``plain`` or ``[NAME:...]`` for NAME in ``named``."""
    for section in parser.sections():
        base, colon, _ = section.partition(":")
        if base not in settings or base not in (named if colon else plain):
            raise ConfigError("unknown section [%s]" % section)
        for key in parser[section]:
            if key not in settings[base]:
                raise ConfigError("[%s] unknown key %r" % (section, key))


def section_values(parser: configparser.ConfigParser, section: str, defaults: Mapping[str, str],
                   environ: Mapping[str, str], inherit: Mapping[str, str] | None = None) -> dict[str, str]:
    """A section's text: its ``defaults``, then what it ``inherit``s, then the
    file's keys, then the environment's (``env_name``)."""
    values = {**defaults, **(inherit or {}), **(parser[section] if parser.has_section(section) else {})}
    values.update({key: environ[env_name(section, key)] for key in defaults if env_name(section, key) in environ})
    return values


def _node(name: str, section: str, values: Mapping[str, str]) -> EslNode:
    return EslNode(name=name, **parsed(SETTINGS["esl"], values, section))


def read_config_file(parser: configparser.ConfigParser, path: str | os.PathLike | None,
                     default_paths: Sequence[Path]) -> str:
    """Read ``path`` (it must exist), or else the first of ``default_paths``
    that exists, into ``parser``; return what was read (``<defaults>`` when
    nothing was).  Shared by ``eslcdr run`` and ``eslcdr collect``."""
    source = "<defaults>"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError("config file %s %s" % (path, "is not a file" if path.exists() else "does not exist"))
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
    check_sections(parser, SETTINGS, plain=SETTINGS, named=("esl",))

    def values(name: str, inherit: Mapping[str, str] | None = None) -> dict[str, str]:
        return section_values(parser, name, DEFAULTS[name.split(":", 1)[0]], environ, inherit)

    esl = values("esl")
    cdr = parsed(SETTINGS["cdr"], values("cdr"), "cdr")
    node_name = cdr["node_name"] or socket.gethostname()
    nodes = [_node(node_name, "esl", esl)]
    for section in parser.sections():
        if section.startswith("esl:"):
            name = section.split(":", 1)[1].strip()
            if not name:
                raise ConfigError("[%s] needs a node name after esl:" % section)
            nodes.append(_node(name, section, values(section, inherit=esl)))
    if len({node.name for node in nodes}) != len(nodes):
        raise ConfigError("two [esl] sections share the node name %r" % node_name)

    store = parsed(SETTINGS["store"], values("store"), "store")
    api_values = values("api")
    api = ApiConfig.taken_from(parsed(SETTINGS["api"], api_values, "api"), api_values, "api")
    return Config(
        nodes=tuple(nodes),
        store=StoreConfig(**{**store, "spool_path": store["spool_path"] or store["path"] + ".spool"}),
        api=api,
        cdr=CdrConfig(**{**cdr, "node_name": node_name}),
        log=LogConfig(**parsed(SETTINGS["log"], values("log"), "log")),
        backfill=BackfillConfig(**parsed(SETTINGS["backfill"], values("backfill"), "backfill")),
        source=source,
    )


def from_mapping(sections: Mapping[str, Mapping[str, str]], environ: Mapping[str, str] | None = None) -> Config:
    """Build a Config from a dict of sections (tests, ``demo``)."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_dict({name: dict(values) for name, values in sections.items()})
    return build(parser, environ or {}, "<mapping>")
