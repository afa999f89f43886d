"""Live channels of the whole fleet: every node asked at once, one answer.

``fleet_channels(nodes, path, timeout, max_bytes=...)`` sends ``GET path`` (a
node's channels route, from ``channels_path``) to every node at once: one
greenlet and one HTTP request each, with that node's ``*`` token.  The
channels are merged into one list, oldest first, each carrying ``source``:
the node's ``[node:NAME]``, as ``source`` names a central CDR's node (the
channel's own ``node``, the FreeSWITCH it is on, is kept).  A node that
refuses the connection, has not answered within ``timeout`` seconds (one
deadline for the whole fan-out, connect included), answers an HTTP error, a
body over ``max_bytes`` or anything but Kazoo's ``{"data": [channel, ...]}``
is left out and listed in ``unreachable`` with its reason: the answer never
waits past the timeout and a node never turns it into an error.  Tokens are
never logged (the path as the access log's target) nor put in a reason.
Sockets are gevent's, so the fan-out is cooperative with or without patching.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from typing import Sequence

import gevent
import gevent.socket
import gevent.ssl
import orjson
import structlog

from .. import __version__
from ..web.redact import Redactor
from .config import CollectorConfig, FeedNode, redact_secrets
from .feed import error_message

log = structlog.get_logger(__name__)

REASON_CHARS = 200  # the most of a node's own error message a reason quotes
# What a node's fetch is doing, named in the reason when the deadline cuts it.
CONNECTING, WAITING, READING = "connecting", "waiting for the answer", "reading the answer"


class NodeUnreachable(Exception):
    """A node's channels cannot be used; the message is the reason."""


@dataclass(frozen=True, slots=True)
class Unreachable:
    node: str  # the node's [node:NAME]
    reason: str


@dataclass(frozen=True, slots=True)
class FleetChannels:
    channels: tuple[dict, ...]  # each with "source": its node's [node:NAME]
    unreachable: tuple[Unreachable, ...]

    def fields(self) -> dict:
        """The envelope's fields beside ``data``: ``page_size`` and
        ``unreachable_nodes`` (``[{"node": NAME, "reason": ...}]``, [] when all answered)."""
        return {"page_size": len(self.channels),
                "unreachable_nodes": [{"node": u.node, "reason": u.reason} for u in self.unreachable]}

    def as_dict(self) -> dict:
        return {"data": list(self.channels), **self.fields()}


def channels_path(account_id: str | None = None, user_id: str | None = None) -> str:
    """A node's channels route: one account's, one user's, or every account's
    (``/v2/channels``, the ``*`` scope)."""
    if account_id is None:
        if user_id is not None:
            raise ValueError("a user's channels need its account")
        return "/v2/channels"
    path = "/v2/accounts/%s" % urllib.parse.quote(account_id, safe="")
    if user_id is not None:
        path += "/users/%s" % urllib.parse.quote(user_id, safe="")
    return path + "/channels"


class _Connection(http.client.HTTPConnection):
    """One request's connection on a gevent socket (TLS with ``tls``)."""

    def __init__(self, host: str, port: int, timeout: float, tls: ssl.SSLContext | None) -> None:
        super().__init__(host, port, timeout=timeout)
        self.tls = tls

    def connect(self) -> None:
        sock = gevent.socket.create_connection((self.host, self.port), self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = self.tls.wrap_socket(sock, server_hostname=self.host) if self.tls is not None else sock


def _channels_of(body: bytes) -> list[dict]:
    """The channels of a node's answer, checked: Kazoo's envelope with a list
    of objects, each with a string ``uuid``."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise NodeUnreachable("the answer is not JSON: %s" % str(exc)[:REASON_CHARS]) from None
    if type(doc) is not dict or type(doc.get("data")) is not list:
        raise NodeUnreachable('the answer is not Kazoo\'s {"data": [channels]}')
    for index, channel in enumerate(doc["data"]):
        if type(channel) is not dict or type(channel.get("uuid")) is not str:
            raise NodeUnreachable("channel %d of the answer is not an object with a uuid" % index)
    return doc["data"]


def _fetch(node: FeedNode, path: str, timeout: float, max_bytes: int, stage: list[str],
           tls: ssl.SSLContext | None) -> list[dict]:
    """One node's channels (``stage[0]`` says how far it got); raises
    ``NodeUnreachable``, ``OSError`` or ``http.client.HTTPException``."""
    parts = urllib.parse.urlsplit(node.url)
    https = parts.scheme == "https"
    conn = _Connection(parts.hostname or "127.0.0.1", parts.port or (443 if https else 80), timeout,
                       tls if https else None)
    try:
        conn.request("GET", parts.path.rstrip("/") + path, headers={
            "X-Auth-Token": node.token,
            "Accept": "application/json",
            "Connection": "close",
            "User-Agent": "eslcdr-collect/" + __version__,
        })
        stage[0] = WAITING
        resp = conn.getresponse()
        stage[0] = READING
        declared = resp.getheader("Content-Length")
        if declared is not None and declared.strip().isdigit() and int(declared) > max_bytes:
            raise NodeUnreachable("the answer of %s bytes is over channels_max_bytes (%d)" % (declared.strip(), max_bytes))
        if resp.status != 200:
            raise NodeUnreachable("HTTP %d: %s" % (resp.status, error_message(resp.read(4 * REASON_CHARS), REASON_CHARS)))
        body = resp.read() if resp.length is not None else resp.read(max_bytes + 1)
        if len(body) > max_bytes:
            raise NodeUnreachable("the answer is over channels_max_bytes (%d)" % max_bytes)
        return _channels_of(body)
    finally:
        conn.close()


def _reason(exc: BaseException, timeout: float, stage: str) -> str:
    if isinstance(exc, NodeUnreachable):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return "no answer within %g s (%s)" % (timeout, stage)
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return "host name not resolved: %s" % exc.strerror
    if isinstance(exc, ssl.SSLError):
        return "TLS: %s" % (exc.reason or exc.__class__.__name__)
    if isinstance(exc, OSError):
        return "connection failed (%s): %s" % (stage, exc.strerror or exc.__class__.__name__)
    if isinstance(exc, http.client.HTTPException):
        return "not an HTTP answer (%s): %s" % (stage, exc.__class__.__name__)
    return "internal error: %s" % exc.__class__.__name__


def _ask(node: FeedNode, path: str, timeout: float, max_bytes: int, stage: list[str],
         tls: ssl.SSLContext | None) -> list[dict] | str:
    """The node's channels, or the reason they are missing."""
    try:
        return _fetch(node, path, timeout, max_bytes, stage, tls)
    except (NodeUnreachable, OSError, http.client.HTTPException) as exc:
        return _reason(exc, timeout, stage[0])
    except Exception as exc:  # a bug here must cost this node, never the answer
        log.exception("fleet_channels_node_failed", node=node.name)
        return _reason(exc, timeout, stage[0])


def fleet_channels(nodes: Sequence[FeedNode], path: str, timeout: float, *, max_bytes: int,
                   known_missing: frozenset[str] = frozenset()) -> FleetChannels:
    """Every node's ``GET path`` at once; back within ``timeout`` seconds."""
    started = time.monotonic()
    stages = [[CONNECTING] for _ in nodes]
    # One TLS context per fan-out (the system's CAs, read when it is made), for the https nodes.
    tls = gevent.ssl.create_default_context() if any(n.url.startswith("https:") for n in nodes) else None
    jobs = [gevent.spawn(_ask, node, path, timeout, max_bytes, stage, tls) for node, stage in zip(nodes, stages)]
    gevent.joinall(jobs, timeout=timeout)
    gevent.killall([job for job in jobs if not job.ready()], block=False)  # their sockets close as they unwind
    tokens = tuple(node.token for node in nodes)
    channels: list[dict] = []
    unreachable: list[Unreachable] = []
    for node, job, stage in zip(nodes, jobs, stages):
        found = job.value if job.successful() else "no answer within %g s (%s)" % (timeout, stage[0])
        if isinstance(found, str):
            unreachable.append(Unreachable(node.name, redact_secrets(found, tokens)))
            continue
        for channel in found:
            channel["source"] = node.name
        channels.extend(found)
    # Oldest first (the stuck call is what an operator looks for), as on a node;
    # the sort is stable, so each node's own order stays.
    channels.sort(key=lambda c: c["timestamp"] if type(c.get("timestamp")) is int else float("inf"))
    result = FleetChannels(tuple(channels), tuple(unreachable))
    # A warning when a node is missing that was not already (``known_missing``).
    (log.warning if any(u.node not in known_missing for u in unreachable) else log.debug)(
        "fleet_channels", path=Redactor().target(path), nodes=len(nodes), channels=len(channels),
        unreachable=result.fields()["unreachable_nodes"], ms=round((time.monotonic() - started) * 1000, 1))
    return result


def ask_fleet(config: CollectorConfig, account_id: str | None = None, user_id: str | None = None,
              known_missing: frozenset[str] = frozenset()) -> FleetChannels:
    """The fleet's channels for one route of the central API, with the
    collector's ``channels_timeout`` and ``channels_max_bytes``."""
    return fleet_channels(config.nodes, channels_path(account_id, user_id), config.channels_timeout,
                          max_bytes=config.channels_max_bytes, known_missing=known_missing)


class Fleet:
    """``ask_fleet`` for the central API, which remembers the nodes missing
    from the last answer: the page asks every 5 s, so a node down for an hour
    is one warning (``fleet_channels``), then debug lines, and one info line,
    ``fleet_channels_nodes_back``, once it answers again."""

    def __init__(self, config: CollectorConfig) -> None:
        self._config = config
        self._missing: frozenset[str] = frozenset()

    def __call__(self, account_id: str | None = None, user_id: str | None = None) -> FleetChannels:
        result = ask_fleet(self._config, account_id, user_id, known_missing=self._missing)
        missing = frozenset(u.node for u in result.unreachable)
        if self._missing - missing:
            log.info("fleet_channels_nodes_back", nodes=sorted(self._missing - missing))
        self._missing = missing
        return result


__all__ = ["Fleet", "FleetChannels", "NodeUnreachable", "Unreachable", "ask_fleet", "channels_path", "fleet_channels"]
