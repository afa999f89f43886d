"""``collector.ini``: one frozen ``CollectorConfig`` built once at start.

Sources, later ones winning: built-in defaults, the INI file, then the
environment: ``ESLCDR_COLLECTOR_DSN`` (the DSN usually carries a password),
``ESLCDR_COLLECTOR_<KEY>`` for the other ``[collector]`` keys and
``ESLCDR_NODE_<NAME>_TOKEN`` / ``_URL`` for a node (NAME upper-cased, ``-``
as ``_``), so secrets can live in a systemd ``EnvironmentFile``.  Every key
is listed, commented, in ``conf/collector.ini``.  Bad values raise
``ConfigError`` naming the section and key.
"""

from __future__ import annotations

import configparser
import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ..config import SERVER_LIMITS, ConfigError, ServerLimits, parse_listen, read_config_file, server_limits

DEFAULT_PATHS = (Path("/etc/eslcdr/collector.ini"), Path("conf/collector.ini"))

DEFAULTS: dict[str, dict[str, str]] = {
    "collector": {
        "dsn": "postgresql:///eslcdr",
        "listen": "127.0.0.1:8090",
        "poll_interval": "1",
        "batch_size": "5000",
        "timeout": "30",
        "max_record_bytes": "1048576",
        "max_batch_bytes": "33554432",
        "retry_max_delay": "30",
        "max_pull_seconds": "300",
        "min_pull_rate": "1024",
        "max_record_age_days": "400",
        "max_new_partitions": "3",
        "channels_timeout": "2",
        "channels_max_bytes": "16777216",
        # the bounds of the /health and /metrics server, as [api]'s of eslcdr run
        **{key: default for key, (default, _, _) in SERVER_LIMITS.items()},
    },
    "node": {"url": "", "token": ""},
    "log": {"level": "info", "format": "auto"},
}
_NODE_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
# A piece of a password shorter than this is not searched for in messages
# (it would match ordinary words); the whole password always is.
MIN_SECRET_PIECE = 3
_KEYWORD_PASSWORD = re.compile(r"(?:^|\s)password\s*=\s*('(?:\\.|[^'\\])*'?|\S+)")
_QUERY_PASSWORD = re.compile(r"(?:^|&)password=([^&#]*)")
REDACTED = "[redacted]"


@dataclass(frozen=True, slots=True)
class FeedNode:
    name: str
    url: str  # http(s)://host:port, no trailing slash
    token: str

    def __repr__(self) -> str:  # never print the token
        return "FeedNode(name=%r, url=%r)" % (self.name, self.url)


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str
    format: str


@dataclass(frozen=True, slots=True)
class CollectorConfig:
    dsn: str
    host: str
    port: int
    poll_interval: float
    batch_size: int
    timeout: float
    max_record_bytes: int
    max_batch_bytes: int
    retry_max_delay: float
    max_pull_seconds: float
    min_pull_rate: int
    max_record_age_days: int
    max_new_partitions: int
    channels_timeout: float
    channels_max_bytes: int
    limits: ServerLimits
    nodes: tuple[FeedNode, ...]
    log: LogConfig
    source: str

    def __repr__(self) -> str:  # the DSN may hold a password
        return "CollectorConfig(nodes=%r, listen=%s:%d)" % (self.nodes, self.host, self.port)

    def redact(self, text: str) -> str:
        """``text`` (a psycopg/libpq or node message) without the DSN's
        password, any piece of it, or a node's token."""
        return redact_secrets(text, dsn_secrets(self.dsn) + tuple(n.token for n in self.nodes))


def dsn_secrets(dsn: str) -> tuple[str, ...]:
    """The password of a libpq DSN as written, decoded, and cut at the
    characters libpq may split it at (an unescaped ``@`` or ``/`` in a URL's
    password puts its tail in the host or port libpq then names in its
    error), longest first."""
    found: list[str] = []
    if "://" in dsn:
        rest = dsn.split("://", 1)[1]
        head, _, query = rest.partition("?")
        if "@" in head:
            userinfo = head[: head.rindex("@")]
            if ":" in userinfo:
                found.append(userinfo.split(":", 1)[1])
        found += _QUERY_PASSWORD.findall(query)
    else:
        found += [value.strip("'") for value in _KEYWORD_PASSWORD.findall(dsn)]
    secrets = set()
    for password in found:
        for form in (password, urllib.parse.unquote(password, errors="replace")):
            secrets.add(form)
            secrets.update(re.split(r"[@/:?#%]", form))
    return tuple(sorted((s for s in secrets if len(s) >= MIN_SECRET_PIECE), key=len, reverse=True))


def redact_secrets(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, REDACTED)
    return text


def check_dsn(dsn: str) -> None:
    """Refuse a DSN libpq would read other than written, without ever
    naming its password."""
    from psycopg.conninfo import conninfo_to_dict

    if "://" in dsn:
        head = dsn.split("://", 1)[1].partition("?")[0]
        if "@" in head and any(c in head[: head.rindex("@")] for c in "@/#"):
            raise ConfigError(
                "[collector] dsn: the user:password part holds an '@', '/' or '#': libpq would cut it there"
                " and take the rest for the host; percent-encode them (@ as %40, / as %2F, # as %23)")
    try:
        conninfo_to_dict(dsn)
    except Exception as exc:  # psycopg.ProgrammingError: libpq cannot parse it
        message = redact_secrets(str(exc).strip().splitlines()[0], dsn_secrets(dsn))
        hint = " (a '%' in the password must be written %25)" if "percent" in message else ""
        raise ConfigError("[collector] dsn: %s%s" % (message, hint)) from None


def _number(values: Mapping[str, str], section: str, key: str, conv, low):
    raw = values[key]
    try:
        value = conv(raw)
    except ValueError:
        raise ConfigError("[%s] %s: %r is not a valid %s" % (section, key, raw, conv.__name__)) from None
    if value < low:
        raise ConfigError("[%s] %s: %r is out of range (at least %s)" % (section, key, raw, low))
    return value


def _env_key(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def load(path: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None) -> CollectorConfig:
    environ = os.environ if environ is None else environ
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";", "#"))
    source = read_config_file(parser, path, DEFAULT_PATHS)
    return build(parser, environ, source)


def from_mapping(sections: Mapping[str, Mapping[str, str]], environ: Mapping[str, str] | None = None) -> CollectorConfig:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_dict({name: dict(values) for name, values in sections.items()})
    return build(parser, environ or {}, "<mapping>")


def _check_url(section: str, raw: str) -> str:
    url = raw.strip().rstrip("/")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("[%s] url: %r must be http://host:port or https://host:port" % (section, raw))
    try:
        parts.port
    except ValueError:
        raise ConfigError("[%s] url: %r has a bad port" % (section, raw)) from None
    if parts.query or parts.fragment or parts.username:
        raise ConfigError("[%s] url: %r must not carry a query, fragment or credentials" % (section, raw))
    return url


def build(parser: configparser.ConfigParser, environ: Mapping[str, str], source: str) -> CollectorConfig:
    for section in parser.sections():
        base = section.split(":", 1)[0]
        if base not in DEFAULTS or (base == "node") != (":" in section):
            raise ConfigError("unknown section [%s]" % section)
        for key in parser[section]:
            if key not in DEFAULTS[base]:
                raise ConfigError("[%s] unknown key %r" % (section, key))
    values = dict(DEFAULTS["collector"])
    if parser.has_section("collector"):
        values.update(parser["collector"])
    for key in DEFAULTS["collector"]:
        env = "ESLCDR_COLLECTOR_" + key.upper()
        if env in environ:
            values[key] = environ[env]
    try:
        host, port = parse_listen(values["listen"])
    except ConfigError:
        raise ConfigError("[collector] listen: %r is not host:port" % values["listen"]) from None

    nodes = []
    for section in parser.sections():
        if not section.startswith("node:"):
            continue
        name = section.split(":", 1)[1].strip()
        if not _NODE_NAME.fullmatch(name):
            raise ConfigError("[%s] node name must be 1-64 of A-Z a-z 0-9 . _ -" % section)
        node_values = dict(DEFAULTS["node"])
        node_values.update(parser[section])
        for key in ("url", "token"):
            env = "ESLCDR_NODE_%s_%s" % (_env_key(name), key.upper())
            if env in environ:
                node_values[key] = environ[env]
        token = node_values["token"].strip()
        if not token:
            raise ConfigError("[%s] token: a '*' token of that media server is required" % section)
        nodes.append(FeedNode(name=name, url=_check_url(section, node_values["url"]), token=token))
    if not nodes:
        raise ConfigError("no [node:NAME] section: nothing to collect")
    if len({n.name for n in nodes}) != len(nodes):
        raise ConfigError("two [node:...] sections share a name")

    log = dict(DEFAULTS["log"])
    if parser.has_section("log"):
        log.update(parser["log"])
    level = log["level"].strip().lower()
    if level not in ("debug", "info", "warning", "error"):
        raise ConfigError("[log] level: %r must be debug, info, warning or error" % level)
    fmt = log["format"].strip().lower()
    if fmt not in ("json", "console", "auto"):
        raise ConfigError("[log] format: %r must be json, console or auto" % fmt)
    dsn = values["dsn"].strip()
    if not dsn:
        raise ConfigError("[collector] dsn: empty (a PostgreSQL URL, or ESLCDR_COLLECTOR_DSN)")
    check_dsn(dsn)
    section = "collector"
    return CollectorConfig(
        dsn=dsn,
        host=host,
        port=port,
        poll_interval=_number(values, section, "poll_interval", float, 0.01),
        batch_size=_number(values, section, "batch_size", int, 1),
        timeout=_number(values, section, "timeout", float, 0.1),
        max_record_bytes=_number(values, section, "max_record_bytes", int, 1024),
        max_batch_bytes=_number(values, section, "max_batch_bytes", int, 1024),
        retry_max_delay=_number(values, section, "retry_max_delay", float, 0.1),
        max_pull_seconds=_number(values, section, "max_pull_seconds", float, 1),
        min_pull_rate=_number(values, section, "min_pull_rate", int, 0),
        max_record_age_days=_number(values, section, "max_record_age_days", int, 1),
        max_new_partitions=_number(values, section, "max_new_partitions", int, 0),
        channels_timeout=_number(values, section, "channels_timeout", float, 0.1),
        channels_max_bytes=_number(values, section, "channels_max_bytes", int, 1024),
        limits=server_limits(values, section),
        nodes=tuple(nodes),
        log=LogConfig(level=level, format=fmt),
        source=source,
    )
