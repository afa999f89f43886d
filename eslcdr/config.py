"""Configuration: one frozen ``Config`` built once at start and passed down.

Sources, later ones winning: built-in defaults, the INI file, then the
environment, ``ESLCDR_<SECTION>_<KEY>`` (``env_name``).  Further FreeSWITCH
nodes are ``[esl:NAME]`` sections; each inherits the keys of ``[esl]`` it
does not set.

Every key is declared once, in ``SETTINGS``: its default (as the INI file
writes it), how its text becomes a value, when that value is valid and what
it is for.  ``DEFAULTS``, the checks of ``build`` and the keys the file may
hold derive from it; ``conf/eslcdr.ini`` lists every key with its default
under its help, docs/configuration.md names each (both tested); the collector's
``collector/config.py`` declares its keys alike.  How a ``Setting``'s text is read
and refused (``ConfigError``, exit 2): ``eslcdr/settings.py``.
"""

from __future__ import annotations

import configparser
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

# The machinery, importable from here as well (collector/config.py, tests).
from .settings import (  # noqa: F401
    ConfigError, Invalid, Layout, Setting, UnknownSection, above, at_least, check_sections, choice, defaults,
    env_name, file_path, host_port, names, non_negative, origin, out_of_range, parsed, positive,
    read_config_file, section_values, text, within,
)

DEFAULT_PATHS = (Path("/etc/eslcdr/eslcdr.ini"), Path("conf/eslcdr.ini"))


def parse_listen(raw: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:8080`` for IPv6) -> (host, port)."""
    try:
        return host_port(raw)
    except Invalid as exc:
        raise ConfigError("[api] listen: %s" % exc) from None


def _cors_origins(raw: str) -> tuple[str, ...]:
    """``*``, or origins (``https://ui.example.com``) separated by commas or spaces; empty = off."""
    origins = tuple(part for part in raw.replace(",", " ").split() if part)
    for one in origins:
        if one != "*" and (not one.startswith(("http://", "https://")) or one.endswith("/")):
            raise Invalid("%r is not * or an origin like https://ui.example.com" % one)
    return ("*",) if "*" in origins else origins


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
        "port": Setting("8021", int, within(1, 65535), help="its TCP port"),
        "password": Setting("ClueCon", str, help=(
            "Prefer ESLCDR_ESL_PASSWORD in the service environment over writing it here.")),
        "format": Setting("json", choice("json", "plain"), help="json (default: cheaper to decode) or plain"),
        "connect_timeout": Setting("5", float, positive, help="seconds to wait for the TCP connection"),
        "command_timeout": Setting("5", float, positive, help="seconds to wait for any command's reply"),
        "reconnect_max_delay": Setting("30", float, positive, help=(
            "cap (seconds) of the jittered exponential backoff between reconnects")),
    },
    "store": {
        "path": Setting("/var/lib/eslcdr/cdrs.db", file_path("cdrs.db"), help=(
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
        "retention_check_interval": Setting("60", float, above(0, up_to=60), help=(
            "seconds between two retention checks (also the refresh of the size, oldest row and\n"
            "unpulled rows shown by /health and /metrics); at most 60")),
        "queue_size": Setting("100000", int, positive, help=(
            "CDRs held in memory while SQLite cannot write (locked, disk full); past it they go to the spool")),
        # "" = the database path + ".spool" (build)
        "spool_path": Setting("", file_path("cdrs.db.spool"), help=(
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
        "tokens_file": Setting("/etc/eslcdr/tokens", file_path("tokens"), help=(
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

DEFAULTS: dict[str, dict[str, str]] = defaults(SETTINGS)
# [esl:NAME] sections take the keys of [esl]
LAYOUT = Layout("eslcdr.ini", "eslcdr run", SETTINGS, plain=tuple(SETTINGS), named=("esl",))


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
            raise out_of_range(origin(raw, section, "max_page_size"), raw["max_page_size"],
                               "at least default_page_size (%d)" % values["default_page_size"])
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


def _node(name: str, section: str, values: Mapping[str, str]) -> EslNode:
    return EslNode(name=name, **parsed(SETTINGS["esl"], values, section))


def load(path: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read the config file (or the first default path that exists)."""
    environ = os.environ if environ is None else environ
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";", "#"))
    source = read_config_file(parser, path, DEFAULT_PATHS)
    return build(parser, environ, source)


def build(parser: configparser.ConfigParser, environ: Mapping[str, str], source: str) -> Config:
    check_sections(parser, LAYOUT, source)

    def values(name: str, inherit: Mapping[str, str] | None = None) -> dict[str, str]:
        return section_values(parser, name, DEFAULTS[name.split(":", 1)[0]], environ, inherit)

    esl = values("esl")
    cdr = parsed(SETTINGS["cdr"], values("cdr"), "cdr")
    node_name = cdr["node_name"] or socket.gethostname()
    nodes, named = [_node(node_name, "esl", esl)], {node_name: "[esl] ([cdr] node_name, or this host's name)"}
    for section in parser.sections():
        if section.startswith("esl:"):
            name = section.split(":", 1)[1].strip()
            if not name:
                raise ConfigError("[%s] needs a node name after esl:" % section)
            if name in named:  # each node's CDRs are told apart by its name
                raise ConfigError("[%s] names the node %r, the name of %s too: give each node a name of its own"
                                  % (section, name, named[name]))
            named[name] = "[%s]" % section
            nodes.append(_node(name, section, values(section, inherit=esl)))

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
