"""``collector.ini``: one frozen ``CollectorConfig`` built once at start.

Sources, later ones winning: built-in defaults, the INI file, then the
environment: ``ESLCDR_COLLECTOR_DSN`` (the DSN usually carries a password),
``ESLCDR_COLLECTOR_<KEY>`` for the other ``[collector]`` keys and
``ESLCDR_NODE_<NAME>_TOKEN`` / ``_URL`` for a node (NAME upper-cased, ``-``
as ``_``), so secrets can live in a systemd ``EnvironmentFile``.

Every key is declared once, in ``SETTINGS`` (``eslcdr/settings.py``'s
``Setting``: default, parser, bounds, help); ``DEFAULTS``, the checks of
``build`` and the keys the file may hold derive from it, and
``conf/collector.ini`` lists every key, commented out, with its default
under its help (a test checks it).  Bad values raise ``ConfigError`` naming
the section and key.
"""

from __future__ import annotations

import configparser
import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ..config import API_ANSWER_SETTINGS, LOG_SETTINGS, SERVER_LIMIT_SETTINGS, ApiConfig
from ..settings import (
    ConfigError, Invalid, Layout, Setting, at_least, check_sections, defaults, file_path, host_port,
    non_negative, parsed, read_config_file, section_values,
)
from ..web.redact import REDACTED

DEFAULT_PATHS = (Path("/etc/eslcdr/collector.ini"), Path("conf/collector.ini"))
_NODE_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
# A piece of a password shorter than this is not searched for in messages
# (it would match ordinary words); the whole password always is.
MIN_SECRET_PIECE = 3
_KEYWORD_PASSWORD = re.compile(r"(?:^|\s)password\s*=\s*('(?:\\.|[^'\\])*'?|\S+)")
_QUERY_PASSWORD = re.compile(r"(?:^|&)password=([^&#]*)")


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
    api: ApiConfig  # the central API: listen, tokens_file, the answer settings and server limits
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
    nodes: tuple[FeedNode, ...]
    log: LogConfig
    source: str

    def __repr__(self) -> str:  # the DSN may hold a password
        return "CollectorConfig(nodes=%r, listen=%s:%d)" % (self.nodes, self.api.host, self.api.port)

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


def pg_dsn(raw: str) -> str:
    """A libpq DSN, refused (``Invalid``, never naming its password) when
    empty or when libpq would read it other than written."""
    from psycopg import Error as PsycopgError
    from psycopg.conninfo import conninfo_to_dict

    dsn = raw.strip()
    if not dsn:
        raise Invalid("empty (a PostgreSQL URL, or ESLCDR_COLLECTOR_DSN)")
    if "://" in dsn:
        head = dsn.split("://", 1)[1].partition("?")[0]
        if "@" in head and any(c in head[: head.rindex("@")] for c in "@/#"):
            raise Invalid(
                "the user:password part holds an '@', '/' or '#': libpq would cut it there"
                " and take the rest for the host; percent-encode them (@ as %40, / as %2F, # as %23)")
    try:
        conninfo_to_dict(dsn)
    except (PsycopgError, ValueError) as exc:  # libpq cannot parse it; a lone surrogate (undecodable env bytes)
        message = redact_secrets(str(exc).strip().splitlines()[0], dsn_secrets(dsn))
        hint = " (a '%' in the password must be written %25)" if "percent" in message else ""
        raise Invalid("%s%s" % (message, hint)) from None
    return dsn


def feed_url(raw: str) -> str:
    """``http(s)://host:port`` of a node's API, without a trailing slash.  A refusal
    shows the URL without its credentials, query and fragment (``shown_url``)."""
    url = raw.strip().rstrip("/")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port
    except ValueError:  # a bad port, a broken [IPv6] host
        raise Invalid("%r has a bad host or port" % shown_url(url)) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid("%r must be http://host:port or https://host:port" % shown_url(url))
    if parts.query or parts.fragment or parts.username is not None:
        raise Invalid("%r must not carry a query, fragment or credentials" % shown_url(url))
    return url


def _server(url: str) -> tuple:
    """What names one node's API in a ``feed_url``: the scheme, the host in
    lower case, the port (the scheme's default made explicit) and the path."""
    parts = urllib.parse.urlsplit(url)
    return parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), parts.path


def shown_url(url: str) -> str:
    """``url`` as an error message may show it: a password (``user:password@``) or
    a token (``?auth_token=...``) a person put in it replaced by REDACTED."""
    rest, query, _ = url.partition("?")
    rest, fragment, _ = rest.partition("#")
    scheme, sep, rest = rest.partition("://") if "://" in rest else ("", "", rest)
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = REDACTED + "@" + authority.rpartition("@")[2]
    return scheme + sep + authority + slash + path + (query and "?" + REDACTED) + (fragment and "#" + REDACTED)


def token(raw: str) -> str:
    """A node's ``*`` token (never echoed)."""
    if not raw.strip():
        raise Invalid("a '*' token of that media server is required")
    return raw.strip()


SETTINGS: dict[str, dict[str, Setting]] = {
    "collector": {
        "dsn": Setting("postgresql:///eslcdr", pg_dsn, help=(
            "PostgreSQL URL (libpq); keep a password out of this file: ESLCDR_COLLECTOR_DSN.")),
        "listen": Setting("127.0.0.1:8090", host_port, help=(
            "The central API (the Kazoo CDR routes of every node's rows, /ui), /health and /metrics.")),
        "tokens_file": Setting("/etc/eslcdr/collector-tokens", file_path("collector-tokens"), help=(
            "Tokens of the central API, as [api] tokens_file of eslcdr run: TOKEN ACCOUNT_ID or\n"
            "sha256:HEX ACCOUNT_ID per line ('*' reads every account); `eslcdr token add --tokens-file`.")),
        "poll_interval": Setting("1", float, at_least(0.01), help=(
            "Seconds between pulls of a node that had nothing new (at least 0.01).")),
        "batch_size": Setting("5000", int, at_least(1), help=(
            "Records per PostgreSQL transaction (rows + the node's cursor).")),
        "timeout": Setting("30", float, at_least(0.1), help=(
            "Seconds any HTTP connect/read or PostgreSQL connect may take (at least 0.1).")),
        "max_record_bytes": Setting("1048576", int, at_least(1024), help=(
            "A feed line longer than this is refused (memory stays bounded; at least 1024).")),
        "max_batch_bytes": Setting("33554432", int, at_least(1024), help=(
            "A batch is committed early once its records reach this many bytes (at least 1024).")),
        "retry_max_delay": Setting("30", float, at_least(0.1), help=(
            "Longest wait between retries of a failing node (capped, jittered backoff; at least 0.1).")),
        "max_pull_seconds": Setting("300", float, at_least(1), help=(
            "Longest a pull may wait for and read one answer of a node (seconds, at least 1); a\n"
            "node that never ends its answer is cut there and shown failing.")),
        "min_pull_rate": Setting("1024", int, non_negative, help=(
            "A pull older than `timeout` seconds receiving fewer bytes per second than\n"
            "this on average is cut (a node that trickles; 0 = off).")),
        "max_record_age_days": Setting("400", int, at_least(1), help=(
            "Records hung up more than this many days ago (or over a day ahead) are\n"
            "refused to collector_rejects (reason hangup_out_of_window).")),
        "max_new_partitions": Setting("3", int, non_negative, help=(
            "Monthly partitions a node's records may create in 24 hours; records of\n"
            "further new months go to collector_rejects (reason partition_limit).")),
        "channels_timeout": Setting("2", float, at_least(0.1), help=(
            "Live channels of the fleet: every node's channels route is asked at once;\n"
            "a node that has not answered within this many seconds is listed in\n"
            "unreachable_nodes and the answer goes out without it.")),
        "channels_max_bytes": Setting("16777216", int, at_least(1024), help=(
            "A node's channels answer larger than this many bytes is refused (that node\n"
            "is listed in unreachable_nodes); memory stays bounded.")),
        # how the central API answers, and the bounds of its server: [api]'s keys of eslcdr run
        **API_ANSWER_SETTINGS,
        **SERVER_LIMIT_SETTINGS,
    },
    # [node:NAME] sections, one per media server
    "node": {
        "url": Setting("", feed_url, help="http(s)://host:port of the media server's eslcdr API"),
        "token": Setting("", token, help=(
            "a '*' token there (`eslcdr token add --account '*'` on that server),\n"
            "or ESLCDR_NODE_<NAME>_TOKEN")),
    },
    "log": LOG_SETTINGS,
}
DEFAULTS: dict[str, dict[str, str]] = defaults(SETTINGS)
LAYOUT = Layout("collector.ini", "eslcdr collect", SETTINGS, plain=("collector", "log"), named=("node",))


def load(path: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None) -> CollectorConfig:
    environ = os.environ if environ is None else environ
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";", "#"))
    source = read_config_file(parser, path, DEFAULT_PATHS)
    return build(parser, environ, source)


def from_mapping(sections: Mapping[str, Mapping[str, str]], environ: Mapping[str, str] | None = None) -> CollectorConfig:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_dict({name: dict(values) for name, values in sections.items()})
    return build(parser, environ or {}, "<mapping>")


def build(parser: configparser.ConfigParser, environ: Mapping[str, str], source: str) -> CollectorConfig:
    check_sections(parser, LAYOUT, source)
    raw = section_values(parser, "collector", DEFAULTS["collector"], environ)
    values = parsed(SETTINGS["collector"], raw, "collector")
    api = ApiConfig.taken_from(values, raw, "collector")
    nodes = []
    for section in parser.sections():
        if not section.startswith("node:"):
            continue
        name = section.split(":", 1)[1]
        if not _NODE_NAME.fullmatch(name):
            raise ConfigError("[%s] node name must be 1-64 of A-Z a-z 0-9 . _ -" % section)
        node = parsed(SETTINGS["node"], section_values(parser, section, DEFAULTS["node"], environ), section)
        nodes.append(FeedNode(name=name, **node))
    if not nodes:
        raise ConfigError("no [node:NAME] section: nothing to collect")
    if len({n.name for n in nodes}) != len(nodes):
        raise ConfigError("two [node:...] sections share a name")
    seen: dict[tuple, str] = {}
    for node in nodes:
        # A section copied and its url left as it was: the second would pull the
        # same server again and every call it sends be refused (other_node).
        first = seen.setdefault(_server(node.url), node.name)
        if first != node.name:
            raise ConfigError("[node:%s] url is [node:%s]'s too: one media server, one section" % (node.name, first))
    # [log] takes no environment variable (docs/configuration.md)
    log = parsed(SETTINGS["log"], section_values(parser, "log", DEFAULTS["log"], {}), "log")
    return CollectorConfig(api=api, nodes=tuple(nodes), log=LogConfig(**log), source=source, **values)
